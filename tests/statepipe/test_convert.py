"""Tests for ``statepipe_api.convert`` (no server needed) and StatepipeError on a dead address."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import struct_pb2, timestamp_pb2

from statepipe_api.convert import (
    FINAL_RUN_STATUSES,
    SpecError,
    event_to_dict,
    format_timestamp,
    json_to_value,
    load_spec_file,
    parse_node_status,
    parse_run_status,
    run_to_dict,
    spec_to_dict,
    spec_to_proto,
    status_name,
    workflow_to_dict,
)
from statepipe_api.v1 import statepipe_pb2 as pb

# --------------------------------------------------------------------------- helpers

FULL_SPEC: dict[str, Any] = {
    "name": "summarize",
    "version": "1.2",
    "description": "Fetch a page and summarize it.",
    "input_schema": {
        "type": "object",
        "properties": {"url": {"type": "string"}},
        "required": ["url"],
    },
    "nodes": [
        {
            "id": "fetch",
            "kind": "http",
            "params": {"url": "{{ input.url }}", "method": "GET", "headers": {}},
            "retry": {
                "max_attempts": 3,
                "backoff_ms": 500,
                "strategy": "exponential",
                "max_backoff_ms": 10_000,
                "jitter": 0.25,
            },
            "timeout_ms": 30_000,
            "labels": {"team": "search"},
        },
        {
            "id": "summarize",
            "kind": "llm",
            "params": {
                "model": "gpt-4o-mini",
                "temperature": 0.2,
                "max_tokens": 512,
                "messages": [{"role": "user", "content": "{{ nodes.fetch.output.body }}"}],
                "stream": True,
                "stop": None,
            },
            "after": ["fetch"],
            "when": "{{ nodes.fetch.output.ok }}",
            "resources": {"cpus": 0.5, "gpus": 1.0, "memory": 2**31, "custom": {"tpu": 2.0}},
            "concurrency_key": "openai",
            "metadata": {"owner": "ana", "tags": ["a", "b"]},
            "continue_on_failure": True,
        },
    ],
    "hooks": {"on_success": "hooks.notify:done", "on_error": "hooks.notify:failed"},
    "concurrency": {"per_run": 4, "per_workflow": 16, "per_key": {"openai": 2}},
    "labels": {"env": "prod"},
    "metadata": {"ticket": 42},
}

TS_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def spec_error(spec: Any) -> str:
    with pytest.raises(SpecError) as info:
        spec_to_proto(spec)
    return str(info.value)


def node(**fields: Any) -> dict[str, Any]:
    return {"id": "a", "kind": "python", **fields}


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# --------------------------------------------------------------------------- specs


def test_full_spec_round_trips() -> None:
    proto = spec_to_proto(FULL_SPEC)
    assert isinstance(proto, pb.WorkflowSpec)
    assert proto.nodes[1].retry.max_attempts == 0
    assert proto.nodes[0].retry.max_attempts == 3
    assert proto.nodes[1].resources.memory == 2**31
    assert proto.nodes[1].params["messages"][0]["role"] == "user"
    back = spec_to_dict(proto)
    assert back == FULL_SPEC
    # int64 fields come back as numbers (not proto3 JSON strings), ints as ints.
    assert back["nodes"][0]["timeout_ms"] == 30_000
    assert isinstance(back["nodes"][0]["timeout_ms"], int)
    assert isinstance(back["nodes"][1]["params"]["max_tokens"], int)
    assert isinstance(back["metadata"]["ticket"], int)
    # and it survives JSON, and a second trip.
    assert spec_to_proto(json.loads(json.dumps(back))) == proto


def test_spec_to_dict_omits_defaults() -> None:
    proto = spec_to_proto({"name": "w", "nodes": [node(timeout_ms=0, after=[], when="")]})
    assert spec_to_dict(proto) == {"name": "w", "nodes": [{"id": "a", "kind": "python"}]}
    assert spec_to_dict(pb.WorkflowSpec()) == {}


def test_spec_to_proto_accepts_a_proto() -> None:
    proto = pb.WorkflowSpec(name="w", nodes=[pb.NodeSpec(id="a", kind="python")])
    assert spec_to_proto(proto) is proto
    with pytest.raises(SpecError, match=r"^nodes\[0\]\.kind: "):
        spec_to_proto(pb.WorkflowSpec(name="w", nodes=[pb.NodeSpec(id="a")]))
    with pytest.raises(SpecError, match=r"^name: "):
        spec_to_proto(pb.WorkflowSpec())


def test_after_may_be_a_single_string() -> None:
    proto = spec_to_proto({"name": "w", "nodes": [node(id="b", after="a")]})
    assert list(proto.nodes[0].after) == ["a"]


@pytest.mark.parametrize(("given", "expected"), [(3, "3"), (1.5, "1.5"), ("2.0.1", "2.0.1")])
def test_version_may_be_a_number(given: Any, expected: str) -> None:
    assert spec_to_proto({"name": "w", "version": given}).version == expected


def test_proto3_json_forms_are_accepted() -> None:
    proto = spec_to_proto(
        {
            "name": "w",
            "inputSchema": {"type": "object"},
            "nodes": [node(timeoutMs="1500", retry={"maxAttempts": "2", "jitter": "0.5"})],
        }
    )
    assert proto.nodes[0].timeout_ms == 1500
    assert proto.nodes[0].retry.max_attempts == 2
    assert proto.nodes[0].retry.jitter == 0.5
    assert proto.input_schema["type"] == "object"


def test_null_means_unset() -> None:
    proto = spec_to_proto({"name": "w", "description": None, "nodes": [node(retry=None)]})
    assert not proto.nodes[0].HasField("retry")
    assert proto.description == ""


def test_integral_floats_are_integers() -> None:
    assert spec_to_proto({"name": "w", "nodes": [node(timeout_ms=10.0)]}).nodes[0].timeout_ms == 10


# ---- errors: every message names its path


def test_unknown_field_names_its_path() -> None:
    spec = {"name": "w", "nodes": [node(afer=["b"])]}
    assert spec_error(spec) == 'nodes[0]: unknown field "afer" (did you mean "after"?)'
    assert spec_error({"name": "w", "nodez": []}).startswith('unknown field "nodez"')
    assert spec_error({"name": "w", "nodes": [node(retry={"tries": 3})]}) == (
        'nodes[0].retry: unknown field "tries"'
    )
    assert spec_error({"name": "w", "concurrency": {"per_runs": 1}}) == (
        'concurrency: unknown field "per_runs" (did you mean "per_run"?)'
    )


def test_wrong_types_name_their_path() -> None:
    nodes = [node(id="a"), node(id="b"), node(id="c", retry={"max_attempts": "three"})]
    assert spec_error({"name": "w", "nodes": nodes}) == (
        'nodes[2].retry.max_attempts: expected an integer, got "three"'
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": 7}, "name: expected a string, got 7"),
        ({"name": "w", "nodes": {"a": {}}}, "nodes: expected a list, got an object"),
        ({"name": "w", "nodes": [None]}, "nodes[0]: expected an object, got null"),
        ({"name": "w", "nodes": ["a"]}, 'nodes[0]: expected an object, got "a"'),
        (
            {"name": "w", "nodes": [node(retry={"max_attempts": 1.5})]},
            "nodes[0].retry.max_attempts: expected an integer, got 1.5",
        ),
        (
            {"name": "w", "nodes": [node(retry={"max_attempts": True})]},
            "nodes[0].retry.max_attempts: expected an integer, got true",
        ),
        (
            {"name": "w", "nodes": [node(retry={"max_attempts": 2**40})]},
            f"nodes[0].retry.max_attempts: {2**40} is out of range for a 32-bit integer",
        ),
        ({"name": "w", "nodes": [node(retry=3)]}, "nodes[0].retry: expected an object, got 3"),
        (
            {"name": "w", "nodes": [node(retry={"jitter": "lots"})]},
            'nodes[0].retry.jitter: expected a number, got "lots"',
        ),
        (
            {"name": "w", "nodes": [node(continue_on_failure="yes")]},
            'nodes[0].continue_on_failure: expected true or false, got "yes"',
        ),
        (
            {"name": "w", "nodes": [node(params=[1])]},
            "nodes[0].params: expected an object, got a list",
        ),
        (
            {"name": "w", "nodes": [node(params={"when": {"at": {1, 2}}})]},
            "nodes[0].params.when.at: expected a JSON value, got a set",
        ),
        (
            {"name": "w", "nodes": [node(params={"x": [1, float("nan")]})]},
            "nodes[0].params.x[1]: expected a finite number, got nan",
        ),
        (
            {"name": "w", "nodes": [node(after=["a", 3])]},
            "nodes[0].after[1]: expected a string, got 3",
        ),
        (
            {"name": "w", "nodes": [node(labels={"cost center": 12})]},
            'nodes[0].labels["cost center"]: expected a string, got 12',
        ),
        (
            {"name": "w", "nodes": [node(resources={"custom": {"tpu": "two"}})]},
            'nodes[0].resources.custom.tpu: expected a number, got "two"',
        ),
        (
            {"name": "w", "concurrency": {"per_key": {"openai": "2x"}}},
            'concurrency.per_key.openai: expected an integer, got "2x"',
        ),
        ({"name": "w", "labels": {1: "x"}}, "labels: keys must be strings, got 1"),
        (
            {"name": "w", "timeout_ms": 5},
            'unknown field "timeout_ms"',
        ),
        (
            {"name": "w", "input_schema": {}, "inputSchema": {}},
            'field "input_schema" is given twice ("input_schema" and "inputSchema")',
        ),
    ]
    for spec, message in cases:
        assert spec_error(spec) == message


def test_missing_name_id_and_kind() -> None:
    assert spec_error({"nodes": []}) == "name: required field is missing"
    assert spec_error({"name": ""}) == "name: must not be empty"
    assert spec_error({"name": "  "}) == "name: must not be empty"
    assert spec_error({"name": "w", "nodes": [node(), {"kind": "python"}]}) == (
        "nodes[1].id: required field is missing"
    )
    assert spec_error({"name": "w", "nodes": [{"id": "a"}]}) == (
        "nodes[0].kind: required field is missing"
    )
    assert spec_error({"name": "w", "nodes": [{"id": "a", "kind": ""}]}) == (
        "nodes[0].kind: must not be empty"
    )


def test_spec_must_be_a_mapping() -> None:
    assert spec_error([{"name": "w"}]) == "a workflow spec must be a mapping, got a list"


def test_spec_error_attributes() -> None:
    with pytest.raises(SpecError) as info:
        spec_to_proto({"name": "w", "nodes": [node(retry={"max_attempts": "x"})]})
    assert isinstance(info.value, ValueError)
    assert info.value.path == "nodes[0].retry.max_attempts"
    assert info.value.problem == 'expected an integer, got "x"'


def test_semantics_are_left_to_the_server() -> None:
    # A cycle and an unknown dependency are the server's to report.
    spec = {"name": "w", "nodes": [node(id="a", after="b"), node(id="b", after=["a", "zz"])]}
    assert len(spec_to_proto(spec).nodes) == 2


# ---- files


YAML_SPEC = """\
# a comment
name: summarize
version: 1.10
nodes:
  - id: fetch
    kind: http
    params: {url: "{{ input.url }}", since: 2024-01-01}
    timeout_ms: 30000
  - id: summarize
    kind: llm
    after: fetch
    retry: {max_attempts: 3, jitter: 0.5}
"""

JSON_SPEC = """\
{
  "name": "summarize",
  "version": 1.10,
  "nodes": [
    {"id": "fetch", "kind": "http",
     "params": {"url": "{{ input.url }}", "since": "2024-01-01"}, "timeout_ms": 30000},
    {"id": "summarize", "kind": "llm", "after": "fetch",
     "retry": {"max_attempts": 3, "jitter": 0.5}}
  ]
}
"""


def test_yaml_and_json_files_load_identically(tmp_path: Path) -> None:
    yaml_file = tmp_path / "flow.yaml"
    yaml_file.write_text(YAML_SPEC)
    yml_file = tmp_path / "flow.YML"
    yml_file.write_text(YAML_SPEC)
    json_file = tmp_path / "flow.json"
    json_file.write_text(JSON_SPEC)
    from_yaml = load_spec_file(yaml_file)
    assert from_yaml == load_spec_file(json_file) == load_spec_file(str(yml_file))
    # Unquoted YAML dates stay strings; a numeric version keeps its text.
    assert from_yaml["nodes"][0]["params"]["since"] == "2024-01-01"
    assert from_yaml["version"] == "1.10"
    assert type(from_yaml["nodes"][1]["retry"]["jitter"]) is float
    proto = spec_to_proto(from_yaml)
    assert proto.version == "1.10"
    assert list(proto.nodes[1].after) == ["fetch"]


def test_file_errors_name_file_and_line(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: w\nnodes:\n  - id: a\n    kind: [python\n")
    with pytest.raises(SpecError, match=r"^.*bad\.yaml:\d+:\d+: invalid YAML: ") as info:
        load_spec_file(bad_yaml)
    assert str(bad_yaml) in str(info.value)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n  "name": "w",\n  "nodes": [,]\n}\n')
    with pytest.raises(SpecError) as info:
        load_spec_file(bad_json)
    assert str(info.value).startswith(f"{bad_json}:3:")
    assert "invalid JSON" in str(info.value)

    dup = tmp_path / "dup.yaml"
    dup.write_text("name: w\nnodes:\n  - id: a\n    kind: python\n    kind: shell\n")
    with pytest.raises(SpecError, match=r'dup\.yaml:5:5: invalid YAML: duplicate key "kind"'):
        load_spec_file(dup)

    dup_json = tmp_path / "dup.json"
    dup_json.write_text('{"name": "a", "name": "b"}')
    with pytest.raises(SpecError, match=r'dup\.json: duplicate key "name"'):
        load_spec_file(dup_json)

    listing = tmp_path / "list.yaml"
    listing.write_text("- name: w\n")
    with pytest.raises(SpecError, match="expected a mapping at the top level, got a list"):
        load_spec_file(listing)

    empty = tmp_path / "empty.yml"
    empty.write_text("# nothing\n")
    with pytest.raises(SpecError, match=r"empty\.yml: "):
        load_spec_file(empty)

    text = tmp_path / "flow.txt"
    text.write_text("name: w\n")
    with pytest.raises(SpecError, match=r'unsupported file type "\.txt"'):
        load_spec_file(text)

    with pytest.raises(OSError):
        load_spec_file(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- statuses


def test_status_name() -> None:
    assert status_name(pb.RUN_RUNNING) == "RUNNING"
    assert status_name(pb.RUN_SUCCEEDED, "run") == "SUCCEEDED"
    assert status_name(pb.NODE_RETRY_WAIT, "node") == "RETRY_WAIT"
    assert status_name(pb.NODE_QUEUED, "node") == "QUEUED"  # same number as RUN_RUNNING
    assert status_name(0) == "UNSPECIFIED"
    assert status_name(99) == "UNKNOWN_99"
    with pytest.raises(ValueError, match="kind"):
        status_name(1, "job")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["running", "RUNNING", "RUN_RUNNING", " Running ", "run_running"])
def test_parse_run_status(name: str) -> None:
    assert parse_run_status(name) == pb.RUN_RUNNING


def test_parse_run_status_errors_list_valid_names() -> None:
    for bad in ["runnin", "UNSPECIFIED", "RUN_STATUS_UNSPECIFIED", "NODE_RUNNING", "", 0, 42]:
        with pytest.raises(ValueError) as info:
            parse_run_status(bad)  # type: ignore[arg-type]
        assert "PENDING, RUNNING, PAUSED, INTERRUPTED, SUCCEEDED, FAILED, CANCELLED" in str(
            info.value
        )
    assert parse_run_status(pb.RUN_FAILED) == pb.RUN_FAILED
    with pytest.raises(ValueError, match='unknown run status "runnin"'):
        parse_run_status("runnin")


def test_parse_node_status() -> None:
    assert parse_node_status("retry-wait") == pb.NODE_RETRY_WAIT
    assert parse_node_status("NODE_SKIPPED") == pb.NODE_SKIPPED
    with pytest.raises(ValueError, match="RETRY_WAIT"):
        parse_node_status("waiting")


def test_final_statuses() -> None:
    assert {"SUCCEEDED", "FAILED", "CANCELLED"} == FINAL_RUN_STATUSES


# --------------------------------------------------------------------------- runs and events

RUN_KEYS = [
    "run_id",
    "workflow_name",
    "workflow_version",
    "status",
    "input",
    "output",
    "error",
    "labels",
    "idempotency_key",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "last_seq",
    "node_counts",
    "usage",
    "parent_run_id",
    "parent_node_id",
    "nodes",
]
NODE_KEYS = [
    "node_id",
    "kind",
    "status",
    "attempt",
    "input",
    "output",
    "error",
    "traceback",
    "queued_at",
    "started_at",
    "finished_at",
    "usage",
    "after",
]
EVENT_KEYS = [
    "run_id",
    "seq",
    "ts",
    "kind",
    "node_id",
    "attempt",
    "status",
    "message",
    "level",
    "data",
]


def full_run() -> pb.Run:
    run = pb.Run(
        run_id="r-1",
        workflow_name="summarize",
        workflow_version="1",
        status=pb.RUN_SUCCEEDED,
        error="",
        labels={"env": "prod"},
        idempotency_key="k-1",
        created_at=ts(1_795_482_123, 456_789_000),  # 2026-11-24T01:02:03.456789Z
        started_at=ts(1_795_482_124, 0),
        finished_at=ts(1_795_482_125, 999_999_999),
        updated_at=ts(1_795_482_125, 1_000_000),
        last_seq=17,
        node_counts={"SUCCEEDED": 1, "SKIPPED": 1},
    )
    run.usage.update({"input_tokens": 10, "cost": 0.01})
    run.input.CopyFrom(json_to_value({"url": "https://example.com", "n": 3}))
    run.output.CopyFrom(json_to_value({"summary": "ok", "score": 0.5, "tags": []}))
    done = run.nodes.add(
        node_id="fetch",
        kind="http",
        status=pb.NODE_SUCCEEDED,
        attempt=2,
        queued_at=ts(1_795_482_124),
        started_at=ts(1_795_482_124, 10_000_000),
        finished_at=ts(1_795_482_125),
        after=[],
    )
    done.input.CopyFrom(json_to_value({"url": "https://example.com"}))
    done.output.CopyFrom(json_to_value("<html>"))
    done.usage.update({"input_tokens": 10, "cost": 0.01})
    run.nodes.add(node_id="summarize", kind="llm", status=pb.NODE_SKIPPED, after=["fetch"])
    return run


def test_run_to_dict_shape_and_formats() -> None:
    out = run_to_dict(full_run())
    assert list(out) == RUN_KEYS
    assert out["status"] == "SUCCEEDED"
    assert out["input"] == {"url": "https://example.com", "n": 3}
    assert isinstance(out["input"]["n"], int)
    assert out["output"] == {"summary": "ok", "score": 0.5, "tags": []}
    assert out["created_at"] == "2026-11-24T01:02:03.456Z"
    assert out["started_at"] == "2026-11-24T01:02:04.000Z"
    assert out["finished_at"] == "2026-11-24T01:02:05.999Z"  # truncated, not rounded
    assert out["updated_at"] == "2026-11-24T01:02:05.001Z"
    assert out["labels"] == {"env": "prod"}
    assert out["node_counts"] == {"SUCCEEDED": 1, "SKIPPED": 1}
    assert out["last_seq"] == 17
    assert out["usage"] == {"input_tokens": 10, "cost": 0.01}
    assert isinstance(out["usage"]["input_tokens"], int)
    assert [list(n) for n in out["nodes"]] == [NODE_KEYS, NODE_KEYS]
    fetch, summarize = out["nodes"]
    assert fetch["status"] == "SUCCEEDED"
    assert fetch["attempt"] == 2
    assert fetch["output"] == "<html>"
    assert fetch["usage"] == {"input_tokens": 10, "cost": 0.01}
    assert fetch["started_at"] == "2026-11-24T01:02:04.010Z"
    assert summarize["status"] == "SKIPPED"
    assert summarize["after"] == ["fetch"]
    for key in ("input", "output", "usage", "queued_at", "started_at", "finished_at"):
        assert summarize[key] is None, key
    assert json.loads(json.dumps(out)) == out


def test_run_to_dict_of_an_empty_run_has_every_key() -> None:
    out = run_to_dict(pb.Run())
    assert list(out) == RUN_KEYS
    assert out == {
        "run_id": "",
        "workflow_name": "",
        "workflow_version": "",
        "status": "UNSPECIFIED",
        "input": None,
        "output": None,
        "error": "",
        "labels": {},
        "idempotency_key": "",
        "created_at": None,
        "started_at": None,
        "finished_at": None,
        "updated_at": None,
        "last_seq": 0,
        "node_counts": {},
        "usage": None,
        "parent_run_id": None,
        "parent_node_id": None,
        "nodes": [],
    }


def test_null_and_set_values_are_told_apart_only_by_being_set() -> None:
    run = pb.Run()
    run.output.null_value = struct_pb2.NULL_VALUE
    assert run_to_dict(run)["output"] is None
    run.output.CopyFrom(json_to_value(0))
    assert run_to_dict(run)["output"] == 0
    run.output.CopyFrom(json_to_value(False))
    assert run_to_dict(run)["output"] is False
    run.output.CopyFrom(json_to_value({}))
    assert run_to_dict(run)["output"] == {}


def test_event_to_dict_shape_and_formats() -> None:
    event = pb.Event(
        run_id="r-1",
        seq=5,
        ts=ts(1_795_482_123, 456_000_000),
        kind="node_status",
        node_id="fetch",
        attempt=1,
        status="RUNNING",
        message="",
        level="",
    )
    out = event_to_dict(event)
    assert list(out) == EVENT_KEYS
    assert out == {
        "run_id": "r-1",
        "seq": 5,
        "ts": "2026-11-24T01:02:03.456Z",
        "kind": "node_status",
        "node_id": "fetch",
        "attempt": 1,
        "status": "RUNNING",
        "message": "",
        "level": "",
        "data": None,
    }
    event.data.update({"tokens": 3, "nested": {"x": [1, 2.5, None, True]}})
    event.status = "NODE_RUNNING"  # a prefixed status is shown plain
    out = event_to_dict(event)
    assert out["data"] == {"tokens": 3, "nested": {"x": [1, 2.5, None, True]}}
    assert out["status"] == "RUNNING"
    assert list(event_to_dict(pb.Event())) == EVENT_KEYS
    assert event_to_dict(pb.Event())["ts"] is None


def test_timestamp_format() -> None:
    assert format_timestamp(ts(0)) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(ts(-1, 500_000_000)) == "1969-12-31T23:59:59.500Z"
    assert format_timestamp(None) is None
    assert TS_RE.match(format_timestamp(ts(1_795_482_123, 7)) or "")


def test_workflow_to_dict() -> None:
    workflow = pb.Workflow(spec=spec_to_proto(FULL_SPEC), created_at=ts(1_795_482_123))
    assert workflow_to_dict(workflow) == {
        "spec": FULL_SPEC,
        "created_at": "2026-11-24T01:02:03.000Z",
    }


def test_json_to_value_rejects_non_json() -> None:
    with pytest.raises(SpecError, match=r"^input\.when: expected a JSON value, got a date"):
        import datetime

        json_to_value({"when": datetime.date(2024, 1, 1)}, "input")
    assert json_to_value((1, "a")).list_value.values[1].string_value == "a"


# --------------------------------------------------------------------------- client errors


def test_import_statepipe_is_cheap() -> None:
    code = "import sys, statepipe; print('grpc' in sys.modules, 'google.protobuf' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_statepipe_error_unavailable() -> None:
    from statepipe import Client, StatepipeError

    address = f"127.0.0.1:{closed_port()}"
    with Client(address, timeout=10) as client, pytest.raises(StatepipeError) as info:
        client.get_run("r-1")
    err = info.value
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert address in err.message
    assert str(err) == f"UNAVAILABLE: {err.message}"
    assert isinstance(err.__cause__, grpc.RpcError)


def test_unreachable_server_async() -> None:
    from statepipe import AsyncClient, StatepipeError

    address = f"127.0.0.1:{closed_port()}"

    async def main() -> StatepipeError:
        async with AsyncClient(address, timeout=10) as client:
            try:
                await client.list_runs(status="running")
            except StatepipeError as err:
                return err
        raise AssertionError("no error")

    err = asyncio.run(main())
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert address in str(err)


def test_unreachable_server_in_a_stream() -> None:
    from statepipe import Client, StatepipeError

    address = f"127.0.0.1:{closed_port()}"
    with Client(address) as client, pytest.raises(StatepipeError) as info:
        list(client.watch("r-1"))
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert address in info.value.message


def test_yaml_dump_of_spec_dict_is_loadable(tmp_path: Path) -> None:
    path = tmp_path / "out.yaml"
    path.write_text(yaml.safe_dump(spec_to_dict(spec_to_proto(FULL_SPEC)), sort_keys=False))
    assert load_spec_file(path) == FULL_SPEC
