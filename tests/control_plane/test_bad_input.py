"""Bad input to the gRPC control plane (real server, embedded Postgres).

Every case checks the exact status code and the part of the message a person
acts on (the node, the path, the cycle, the current state), and that the
server keeps serving: a good run right after the bad request still succeeds.
"""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sp_testing import py

from statepipe.client import Client, StatepipeError
from statepipe_api.convert import json_to_value
from statepipe_api.v1 import statepipe_pb2 as pb
from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

Code = grpc.StatusCode
MiB = 1024 * 1024
STREAMS = ("WatchRun", "WatchRuns")
UNKNOWN_RUN = "run-that-does-not-exist"


# ------------------------------------------------------------------ helpers


def proto(spec: dict[str, Any]) -> pb.WorkflowSpec:
    """Any spec dict as a proto, without the client's own checks (missing name, ...)."""
    return json_format.ParseDict(spec, pb.WorkflowSpec())


def start(spec: dict[str, Any] | pb.WorkflowSpec, run_input: Any = None) -> pb.StartRunRequest:
    request = pb.StartRunRequest(spec=proto(spec) if isinstance(spec, dict) else spec)
    if run_input is not None:
        request.input.CopyFrom(json_to_value(run_input))
    return request


def start_ref(name: str, version: str = "", run_input: Any = None) -> pb.StartRunRequest:
    request = pb.StartRunRequest(ref=pb.WorkflowRef(name=name, version=version))
    if run_input is not None:
        request.input.CopyFrom(json_to_value(run_input))
    return request


def rpc_error(stub: pb_grpc.StatePipeStub, method: str, request: Any) -> grpc.RpcError:
    """The error `method` fails with; fails the test if it succeeds."""
    try:
        response = getattr(stub, method)(request, timeout=20 if method in STREAMS else 60)
        if method in STREAMS:
            next(iter(response), None)
    except grpc.RpcError as err:
        return err
    pytest.fail(f"{method} succeeded, but should have failed: {request}")


def expect(
    stub: pb_grpc.StatePipeStub, method: str, request: Any, code: grpc.StatusCode, *parts: str
) -> str:
    """Asserts `method` fails with `code` and a message holding every one of `parts`."""
    err = rpc_error(stub, method, request)
    details = err.details() or ""
    assert err.code() == code, f"{method}: expected {code.name}, got {err.code().name}: {details}"
    missing = [p for p in parts if p not in details]
    assert not missing, f"{method}: message {details!r} does not mention {missing}"
    return details


def assert_serves(client: Client, tag: str = "after") -> None:
    """A good run right after the bad request starts and succeeds."""
    run_id = client.start_run({"name": "still-serving", "nodes": [py("ok", args={"tag": tag})]})
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED", run.error
    assert run.output == {"ok": {"tag": tag}}


def settle(server: Any, run_id: str) -> None:
    """Waits until no actor holds the run (it is only in Postgres)."""
    deadline = time.monotonic() + 10
    while run_id in server.plane.scheduler.actors:
        assert time.monotonic() < deadline, f"run {run_id} still has an actor"
        time.sleep(0.02)


def run_in_state(client: Client, state: str) -> str:
    """A run that ended SUCCEEDED, FAILED or CANCELLED."""
    if state == "SUCCEEDED":
        run_id = client.start_run({"name": "fine", "nodes": [py("a"), py("b", after=["a"])]})
    elif state == "FAILED":
        run_id = client.start_run({"name": "broken", "nodes": [py("good"), py("bad", "boom")]})
    else:
        run_id = client.start_run(
            {"name": "stopped", "nodes": [py("s", "sleep", args={"seconds": 5})]}
        )
        client.cancel(run_id, "test")
    run = client.wait(run_id, timeout=30)
    assert run.status == state, run.error
    return run_id


def summary(run: Any) -> tuple[Any, ...]:
    return run.status, run.error, [(n.node_id, n.status, n.attempt) for n in run.nodes]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def token(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


@pytest.fixture
def stub(server: Any) -> Iterator[pb_grpc.StatePipeStub]:
    """A raw stub whose channel may send requests larger than the server accepts."""
    channel = grpc.insecure_channel(
        server.address,
        options=[
            ("grpc.max_send_message_length", 256 * MiB),
            ("grpc.max_receive_message_length", 256 * MiB),
        ],
    )
    yield pb_grpc.StatePipeStub(channel)
    channel.close()


# -------------------------------------------------------- malformed specs

SPEC_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "missing-name": ({"nodes": [py("a")]}, ("spec.name", "required")),
    "bad-name": ({"name": "my flow", "nodes": [py("a")]}, ("spec.name", "'my flow'")),
    "node-without-id": (
        {
            "name": "w",
            "nodes": [py("a"), {"kind": "python", "params": {"callable": "sp_nodes:echo"}}],
        },
        ("nodes[1].id", "required"),
    ),
    "node-without-kind": (
        {"name": "w", "nodes": [{"id": "a", "params": {"callable": "sp_nodes:echo"}}]},
        ("node 'a'", "kind", "known kinds:", "python"),
    ),
    "bad-node-id-chars": (
        {"name": "w", "nodes": [py("a"), py("fetch data")]},
        ("nodes[1].id", "'fetch data'", "letters, digits"),
    ),
    "unknown-kind": (
        {"name": "w", "nodes": [{"id": "a", "kind": "pythn"}]},
        ("node 'a'", "'pythn'", "known kinds:", "python", "noop"),
    ),
    "duplicate-node-id": (
        {"name": "w", "nodes": [py("a"), py("b"), py("a")]},
        ("duplicate", "'a'"),
    ),
    "unknown-dependency": (
        {"name": "w", "nodes": [py("a"), py("b", after=["a", "ghost"])]},
        ("node 'b'", "unknown node 'ghost'"),
    ),
    "self-dependency": ({"name": "w", "nodes": [py("a", after=["a"])]}, ("cycle", "a -> a")),
    "python-without-callable": (
        {"name": "w", "nodes": [{"id": "a", "kind": "python", "params": {"args": {}}}]},
        ("node 'a'", "params.callable", "package.module:function"),
    ),
    "bad-retry-strategy": (
        {"name": "w", "nodes": [py("a", retry={"strategy": "random"})]},
        ("node 'a'", "retry.strategy", "'random'", "fixed, linear or exponential"),
    ),
    "negative-retry-values": (
        {"name": "w", "nodes": [py("a", retry={"max_attempts": -1})]},
        ("node 'a'", "retry", "negative"),
    ),
    "negative-timeout": (
        {"name": "w", "nodes": [py("a", timeout_ms=-5)]},
        ("node 'a'", "timeout_ms", "negative"),
    ),
    "negative-cpus": (
        {"name": "w", "nodes": [py("a", resources={"cpus": -1})]},
        ("node 'a'", "resources.cpus", "not negative (got -1.0)"),
    ),
    "negative-custom-resource": (
        {"name": "w", "nodes": [py("a", resources={"custom": {"special": -2}})]},
        ("node 'a'", "resources.custom.special", "not negative"),
    ),
    "unnamed-custom-resource": (
        {"name": "w", "nodes": [py("a", resources={"custom": {"": 1}})]},
        ("node 'a'", "resources.custom names must not be empty"),
    ),
    "infinite-gpus": (
        {"name": "w", "nodes": [py("a", resources={"gpus": "Infinity"})]},
        ("node 'a'", "resources.gpus", "finite"),
    ),
    "jitter-above-1": (
        {"name": "w", "nodes": [py("a", retry={"jitter": 1.5})]},
        ("node 'a'", "retry.jitter", "between 0 and 1"),
    ),
    "invalid-input-schema": (
        {"name": "w", "input_schema": {"type": "nonsense"}, "nodes": [py("a")]},
        ("input_schema", "JSON Schema", "type", "'nonsense'"),
    ),
    "input-schema-bad-regex": (
        {"name": "w", "input_schema": {"properties": {"x": {"pattern": "["}}}, "nodes": [py("a")]},
        ("input_schema", "properties/x/pattern", "regex"),
    ),
    "input-schema-ref-to-nothing": (
        {
            "name": "w",
            "input_schema": {"properties": {"x": {"$ref": "#/$defs/nope"}}},
            "nodes": [py("a")],
        },
        ("input_schema", "'#/$defs/nope'", "points to nothing"),
    ),
    "input-schema-remote-ref": (
        {"name": "w", "input_schema": {"$ref": "https://example.com/s.json"}, "nodes": [py("a")]},
        ("input_schema", "points outside the schema", "local"),
    ),
    "template-not-an-ancestor": (
        {"name": "w", "nodes": [py("a"), py("b", args={"x": "{{ nodes.a.output }}"})]},
        ("node 'b'", "args.x", "node 'a'", "add 'a' to its 'after'"),
    ),
    "template-unknown-node": (
        {"name": "w", "nodes": [py("b", args={"x": "{{ nodes.zz.output }}"})]},
        ("node 'b'", "args.x", "unknown node 'zz'"),
    ),
    "template-syntax-error": (
        {"name": "w", "nodes": [py("b", args={"x": "{{ input.a + }}"})]},
        ("node 'b'", "args.x", "cannot parse", "input.a +"),
    ),
    "template-disallowed-call": (
        {"name": "w", "nodes": [py("b", args={"x": "{{ __import__('os') }}"})]},
        ("node 'b'", "args.x", "__import__", "not allowed"),
    ),
    "when-disallowed-call": (
        {"name": "w", "nodes": [py("b", when="__import__('os').system('true')")]},
        ("node 'b'", "__import__", "not allowed"),
    ),
    "unknown-hook": (
        {"name": "w", "hooks": {"on_whatever": "sp_nodes:hook_log"}, "nodes": [py("a")]},
        ("'on_whatever'", "on_init", "on_complete"),
    ),
    "hook-target-without-colon": (
        {"name": "w", "hooks": {"on_init": "sp_nodes.hook_log"}, "nodes": [py("a")]},
        ("hooks.on_init", "'sp_nodes.hook_log'", "package.module:function"),
    ),
    "per-key-limit-0": (
        {"name": "w", "concurrency": {"per_key": {"gpu": 0}}, "nodes": [py("a")]},
        ("concurrency.per_key.gpu", "at least 1", "0"),
    ),
    "negative-per-run-limit": (
        {"name": "w", "concurrency": {"per_run": -1}, "nodes": [py("a")]},
        ("concurrency", "negative"),
    ),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_malformed_spec_is_invalid_argument(
    case: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    spec, parts = SPEC_CASES[case]
    register = pb.RegisterWorkflowRequest(spec=proto(spec))
    expect(stub, "RegisterWorkflow", register, Code.INVALID_ARGUMENT, *parts)
    expect(stub, "StartRun", start(spec), Code.INVALID_ARGUMENT, *parts)
    assert client.list_workflows() == []  # nothing half-registered
    assert client.list_runs() == []  # and no run created
    assert_serves(client)


def test_a_cycle_is_shown_in_dependency_order(client: Client, stub: pb_grpc.StatePipeStub) -> None:
    spec = {
        "name": "loop",
        "nodes": [
            py("x"),
            py("a", after=["x", "c"]),
            py("b", after=["a"]),
            py("c", after=["b"]),
            py("d", after=["a"]),
        ],
    }
    edges = {(dep, n["id"]) for n in spec["nodes"] for dep in n.get("after", [])}
    for method, request in (
        ("RegisterWorkflow", pb.RegisterWorkflowRequest(spec=proto(spec))),
        ("StartRun", start(spec)),
    ):
        details = expect(stub, method, request, Code.INVALID_ARGUMENT, "cycle: ")
        shown = details.rsplit("cycle: ", 1)[1].split(" -> ")
        # Any rotation of a -> b -> c -> a, following the edges (dependency -> dependent),
        # with none of the nodes merely touching the cycle.
        assert shown[0] == shown[-1] and sorted(shown[:-1]) == ["a", "b", "c"], details
        assert all(pair in edges for pair in itertools.pairwise(shown)), details
    assert_serves(client)


# -------------------------------------------------------------- oversized


def test_more_than_100k_nodes_is_resource_exhausted(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    spec = pb.WorkflowSpec(name="too-many")
    spec.nodes.extend(pb.NodeSpec(id=f"n{i}", kind="noop") for i in range(100_001))
    for method, request in (
        ("RegisterWorkflow", pb.RegisterWorkflowRequest(spec=spec)),
        ("StartRun", pb.StartRunRequest(spec=spec)),
    ):
        expect(stub, method, request, Code.RESOURCE_EXHAUSTED, "100,001 nodes", "100,000")
    assert_serves(client)


def test_a_spec_over_16_mib_is_resource_exhausted(client: Client) -> None:
    spec = pb.WorkflowSpec(name="too-big")
    spec.nodes.add(id="a", kind="noop").metadata.update({"blob": "x" * (17 * MiB)})
    for call in (lambda: client.register_workflow(spec), lambda: client.start_run(spec)):
        with pytest.raises(StatepipeError) as err:
            call()
        assert err.value.code == Code.RESOURCE_EXHAUSTED, err.value
        assert "bytes" in err.value.message and "16,777,216" in err.value.message
    assert_serves(client)


def test_a_request_over_the_64_mib_message_limit_is_refused_by_grpc(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    request = start({"name": "huge-input", "nodes": [py("a")]})
    request.input.string_value = "x" * (70 * MiB)
    expect(stub, "StartRun", request, Code.RESOURCE_EXHAUSTED, "larger than max")
    assert client.list_runs() == []
    assert_serves(client)


# ------------------------------------------------------ input vs. schema

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"qty": {"type": "integer", "minimum": 1}},
                "required": ["qty"],
            },
        }
    },
    "required": ["items"],
}
ORDERS = {"name": "orders", "input_schema": ORDER_SCHEMA, "nodes": [py("a")]}
INPUT_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "nested-wrong-type": (
        {"items": [{"qty": 1}, {"qty": "two"}]},
        ("input.items[1].qty: ", "'two'", "integer"),
    ),
    "nested-below-minimum": ({"items": [{"qty": 0}]}, ("input.items[0].qty: ", "minimum of 1")),
    "nested-missing-required": (
        {"items": [{"qty": 1}, {}]},
        ("input.items[1]: ", "'qty' is a required property"),
    ),
    "missing-required": ({}, ("input: ", "'items' is a required property")),
    "wrong-top-level-type": ("hello", ("input: ", "'hello'", "'object'")),
    "no-input-at-all": (None, ("input: ", "'object'")),
}


@pytest.mark.parametrize("how", ["by-name", "inline"])
@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_input_breaking_the_schema_names_the_path(
    case: str, how: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    run_input, parts = INPUT_CASES[case]
    if how == "by-name":
        client.register_workflow(ORDERS)
        request = start_ref("orders", run_input=run_input)
    else:
        request = start(ORDERS, run_input)
    expect(stub, "StartRun", request, Code.INVALID_ARGUMENT, *parts)
    assert client.list_runs() == []
    good = client.start_run(ORDERS if how == "inline" else "orders", {"items": [{"qty": 2}]})
    assert client.wait(good, timeout=30).status == "SUCCEEDED"
    assert_serves(client)


# ------------------------------------------------------------- not found

UNKNOWN_RUN_REQUESTS: dict[str, Any] = {
    "GetRun": pb.GetRunRequest(run_id=UNKNOWN_RUN),
    "PauseRun": pb.RunControlRequest(run_id=UNKNOWN_RUN),
    "ResumeRun": pb.RunControlRequest(run_id=UNKNOWN_RUN),
    "InterruptRun": pb.RunControlRequest(run_id=UNKNOWN_RUN),
    "CancelRun": pb.RunControlRequest(run_id=UNKNOWN_RUN),
    "RetryNode": pb.RetryNodeRequest(run_id=UNKNOWN_RUN, node_id="a"),
    "ListEvents": pb.ListEventsRequest(run_id=UNKNOWN_RUN),
    "WatchRun": pb.WatchRunRequest(run_id=UNKNOWN_RUN),
}


@pytest.mark.parametrize("method", list(UNKNOWN_RUN_REQUESTS))
def test_unknown_run_id_is_not_found(
    method: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    expect(stub, method, UNKNOWN_RUN_REQUESTS[method], Code.NOT_FOUND, f"'{UNKNOWN_RUN}'")
    assert_serves(client)


def test_unknown_run_through_the_client_watch(client: Client) -> None:
    with pytest.raises(StatepipeError) as err:
        list(client.watch(UNKNOWN_RUN))
    assert err.value.code == Code.NOT_FOUND and UNKNOWN_RUN in err.value.message
    assert_serves(client)


@pytest.mark.parametrize(
    ("method", "name", "version", "parts"),
    [
        ("GetWorkflow", "ghost", "", ("workflow 'ghost'", "not registered")),
        ("GetWorkflow", "orders", "9", ("version '9'", "workflow 'orders'", "not registered")),
        ("StartRun", "ghost", "", ("workflow 'ghost'", "not registered")),
        ("StartRun", "orders", "9", ("version '9'", "workflow 'orders'", "not registered")),
    ],
)
def test_unknown_workflow_is_not_found(
    method: str,
    name: str,
    version: str,
    parts: tuple[str, ...],
    client: Client,
    stub: pb_grpc.StatePipeStub,
) -> None:
    client.register_workflow(ORDERS)  # version "1" exists
    request = (
        pb.GetWorkflowRequest(name=name, version=version)
        if method == "GetWorkflow"
        else start_ref(name, version, {"items": []})
    )
    expect(stub, method, request, Code.NOT_FOUND, *parts)
    assert client.list_runs() == []
    assert_serves(client)


@pytest.mark.parametrize("state", ["FAILED", "RUNNING"])
def test_retry_of_an_unknown_node_is_not_found(
    state: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    if state == "FAILED":
        run_id = run_in_state(client, "FAILED")
    else:
        run_id = client.start_run(
            {"name": "slow", "nodes": [py("s", "sleep", args={"seconds": 5})]}
        )
    expect(
        stub,
        "RetryNode",
        pb.RetryNodeRequest(run_id=run_id, node_id="ghost"),
        Code.NOT_FOUND,
        f"'{run_id}'",
        "no node 'ghost'",
    )
    if state == "RUNNING":
        assert client.cancel(run_id).status == "CANCELLED"
    assert_serves(client)


def test_retry_of_an_unknown_node_of_a_finished_run_is_not_found(
    server: Any, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    run_id = run_in_state(client, "SUCCEEDED")
    settle(server, run_id)
    expect(
        stub,
        "RetryNode",
        pb.RetryNodeRequest(run_id=run_id, node_id="ghost"),
        Code.NOT_FOUND,
        f"'{run_id}'",
        "no node 'ghost'",
    )


# ------------------------------------------------------ wrong-state controls


@pytest.mark.parametrize(
    ("state", "method", "verb"),
    [
        ("SUCCEEDED", "PauseRun", "pause"),
        ("SUCCEEDED", "ResumeRun", "resume"),
        ("SUCCEEDED", "InterruptRun", "interrupt"),
        ("FAILED", "InterruptRun", "interrupt"),
        ("FAILED", "PauseRun", "pause"),
        ("CANCELLED", "CancelRun", "cancel"),
        ("CANCELLED", "ResumeRun", "resume"),
    ],
)
def test_a_control_in_the_wrong_state_is_failed_precondition(
    state: str, method: str, verb: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    run_id = run_in_state(client, state)
    before = summary(client.get_run(run_id))
    expect(
        stub,
        method,
        pb.RunControlRequest(run_id=run_id, reason="test"),
        Code.FAILED_PRECONDITION,
        f"cannot {verb} run '{run_id}'",
        f"it is {state}",
    )
    assert summary(client.get_run(run_id)) == before  # untouched
    assert_serves(client)


def test_controls_on_a_running_run_that_do_not_apply(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    run_id = client.start_run({"name": "slow", "nodes": [py("s", "sleep", args={"seconds": 5})]})
    control = pb.RunControlRequest(run_id=run_id)
    expect(
        stub,
        "ResumeRun",
        control,
        Code.FAILED_PRECONDITION,
        f"cannot resume run '{run_id}'",
        "it is RUNNING",
    )
    assert client.pause(run_id).status == "PAUSED"
    expect(
        stub,
        "PauseRun",
        control,
        Code.FAILED_PRECONDITION,
        f"cannot pause run '{run_id}'",
        "it is PAUSED",
    )
    assert client.resume(run_id).status == "RUNNING"
    assert client.cancel(run_id, "done testing").status == "CANCELLED"
    expect(
        stub,
        "CancelRun",
        control,
        Code.FAILED_PRECONDITION,
        f"cannot cancel run '{run_id}'",
        "it is CANCELLED",
    )
    assert client.wait(run_id, timeout=30).status == "CANCELLED"
    assert_serves(client)


def test_retrying_a_succeeded_node_is_failed_precondition(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    failed = run_in_state(client, "FAILED")
    expect(
        stub,
        "RetryNode",
        pb.RetryNodeRequest(run_id=failed, node_id="good"),
        Code.FAILED_PRECONDITION,
        "node 'good' is SUCCEEDED",
    )
    succeeded = run_in_state(client, "SUCCEEDED")
    expect(
        stub,
        "RetryNode",
        pb.RetryNodeRequest(run_id=succeeded, node_id="a"),
        Code.FAILED_PRECONDITION,
        f"'{succeeded}'",
        "it is SUCCEEDED",
    )
    assert client.get_run(failed).node("good").attempt == 1
    assert_serves(client)


# ---------------------------------------------------------- registration


def test_same_version_with_another_spec_is_already_exists(client: Client) -> None:
    spec = {"name": "flow", "version": "1", "nodes": [py("a")]}
    assert client.register_workflow(spec).created is True
    assert client.register_workflow(spec).created is False  # the same spec again: OK
    changed = {**spec, "nodes": [py("a"), py("b", after=["a"])]}
    with pytest.raises(StatepipeError) as err:
        client.register_workflow(changed)
    assert err.value.code == Code.ALREADY_EXISTS, err.value
    assert "'flow'" in err.value.message and "'1'" in err.value.message
    assert "new version" in err.value.message
    assert [n.id for n in client.get_workflow("flow", "1").spec.nodes] == ["a"]
    assert client.register_workflow({**changed, "version": "2"}).created is True
    assert_serves(client)


# ------------------------------------------------- paging and required ids


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("ListWorkflows", pb.ListWorkflowsRequest(page_token="not-a-token")),
        ("ListRuns", pb.ListRunsRequest(page_token="not-a-token")),
    ],
)
def test_a_bad_page_token_is_invalid_argument(
    method: str, request_: Any, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    expect(stub, method, request_, Code.INVALID_ARGUMENT, "page_token", "'not-a-token'")
    assert_serves(client)


@pytest.mark.parametrize("method", ["ListWorkflows", "ListRuns", "ListEvents"])
def test_a_negative_page_size_is_invalid_argument(
    method: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    request = {
        "ListWorkflows": lambda: pb.ListWorkflowsRequest(page_size=-1),
        "ListRuns": lambda: pb.ListRunsRequest(page_size=-1),
        "ListEvents": lambda: pb.ListEventsRequest(
            run_id=run_in_state(client, "SUCCEEDED"), page_size=-1
        ),
    }[method]()
    expect(stub, method, request, Code.INVALID_ARGUMENT, "page_size", "-1")
    assert_serves(client)


@pytest.mark.parametrize("order_by", ["bogus", "-bogus"])
def test_an_unknown_order_by_is_invalid_argument(
    order_by: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    expect(
        stub,
        "ListRuns",
        pb.ListRunsRequest(order_by=order_by),
        Code.INVALID_ARGUMENT,
        f"'{order_by}'",
        "created_at",
        "updated_at",
        "finished_at",
    )
    assert_serves(client)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("PauseRun", pb.RunControlRequest(), "run_id"),
        ("ResumeRun", pb.RunControlRequest(), "run_id"),
        ("InterruptRun", pb.RunControlRequest(), "run_id"),
        ("CancelRun", pb.RunControlRequest(reason="why"), "run_id"),
        ("RetryNode", pb.RetryNodeRequest(node_id="a"), "run_id"),
        ("RetryNode", pb.RetryNodeRequest(run_id="some-run"), "node_id"),
        ("GetWorkflow", pb.GetWorkflowRequest(), "name"),
        ("StartRun", pb.StartRunRequest(ref=pb.WorkflowRef()), "name"),
        ("StartRun", pb.StartRunRequest(), "give a workflow"),
    ],
)
def test_a_missing_required_field_is_invalid_argument(
    method: str, request_: Any, field: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    expect(stub, method, request_, Code.INVALID_ARGUMENT, field)
    assert_serves(client)


# ----------------------------------------------------- known server bugs


@pytest.mark.parametrize(
    "which",
    [
        "runs-token-to-ListWorkflows",
        "workflows-token-to-ListRuns",
        "tampered-ListRuns-token",
        "tampered-ListWorkflows-token",
    ],
)
def test_a_page_token_of_the_wrong_shape_is_invalid_argument(
    which: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    for i in range(3):
        client.register_workflow({"name": f"w{i}", "nodes": [py("a")]})
        client.start_run({"name": "r", "nodes": [py("a")]})
    _, workflows_token = client.list_workflows_page(limit=1)
    _, runs_token = client.list_runs_page(limit=1)
    assert workflows_token and runs_token
    method, bad = {
        "runs-token-to-ListWorkflows": ("ListWorkflows", runs_token),
        "workflows-token-to-ListRuns": ("ListRuns", workflows_token),
        "tampered-ListRuns-token": ("ListRuns", token(["yesterday", "r1"])),
        "tampered-ListWorkflows-token": ("ListWorkflows", token("abc")),
    }[which]
    request = (
        pb.ListRunsRequest(page_token=bad)
        if method == "ListRuns"
        else pb.ListWorkflowsRequest(page_token=bad)
    )
    err = rpc_error(stub, method, request)
    assert_serves(client)
    assert err.code() == Code.INVALID_ARGUMENT, f"{err.code().name}: {err.details()}"
    assert "page_token" in err.details()


@pytest.mark.parametrize("ref", ["#/$defs/missing", "https://example.invalid/schema.json"])
def test_an_input_schema_with_an_unresolvable_ref_is_invalid_argument(
    ref: str, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    spec = {"name": "dangling", "input_schema": {"$ref": ref}, "nodes": [py("a")]}
    err = rpc_error(stub, "StartRun", start(spec, {"x": 1}))
    assert_serves(client)
    assert err.code() == Code.INVALID_ARGUMENT, f"{err.code().name}: {err.details()}"
    assert "input_schema" in err.details() and ref in err.details()


def test_too_deeply_nested_input_is_invalid_argument(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    err = rpc_error(stub, "StartRun", start({"name": "deep", "nodes": [py("a")]}, nested(60)))
    assert_serves(client)
    assert err.code() == Code.INVALID_ARGUMENT, f"{err.code().name}: {err.details()}"
    details = err.details().lower()
    assert "input" in details and any(w in details for w in ("deep", "depth", "nest")), details


def test_a_negative_snapshot_size_names_the_field(
    client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    details = expect(
        stub, "WatchRuns", pb.WatchRunsRequest(snapshot_size=-1), Code.INVALID_ARGUMENT, "-1"
    )
    assert_serves(client)
    assert "snapshot_size" in details


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetRun", pb.GetRunRequest()),
        ("ListEvents", pb.ListEventsRequest()),
        ("WatchRun", pb.WatchRunRequest()),
    ],
)
def test_an_empty_run_id_on_reads_is_invalid_argument(
    method: str, request_: Any, client: Client, stub: pb_grpc.StatePipeStub
) -> None:
    err = rpc_error(stub, method, request_)
    assert_serves(client)
    assert err.code() == Code.INVALID_ARGUMENT, f"{err.code().name}: {err.details()}"
    assert "run_id is required" in err.details()


# ------------------------------------------- bad and good, interleaved


def test_the_server_keeps_serving_through_interleaved_bad_and_good_requests(
    client: Client, stub: pb_grpc.StatePipeStub, server: Any
) -> None:
    client.register_workflow(ORDERS)
    finished = run_in_state(client, "SUCCEEDED")
    cycle = {"name": "loop", "nodes": [py("a", after=["b"]), py("b", after=["a"])]}
    big = pb.WorkflowSpec(name="too-big")
    big.nodes.add(id="a", kind="noop").metadata.update({"blob": "x" * (17 * MiB)})
    huge = start({"name": "huge-input", "nodes": [py("a")]})
    huge.input.string_value = "x" * (70 * MiB)
    # (method, request, code, part of the message); code None: a known bug (see the
    # xfails above), where only "it fails and the server survives" is checked here.
    bad: list[tuple[str, Any, grpc.StatusCode | None, str]] = [
        (
            "RegisterWorkflow",
            pb.RegisterWorkflowRequest(spec=proto(cycle)),
            Code.INVALID_ARGUMENT,
            "cycle",
        ),
        ("StartRun", start(cycle), Code.INVALID_ARGUMENT, "cycle"),
        (
            "StartRun",
            start({"name": "w", "nodes": [{"id": "a", "kind": "pythn"}]}),
            Code.INVALID_ARGUMENT,
            "'pythn'",
        ),
        (
            "StartRun",
            start_ref("orders", run_input={"items": [{"qty": "two"}]}),
            Code.INVALID_ARGUMENT,
            "input.items[0].qty",
        ),
        ("StartRun", start_ref("ghost"), Code.NOT_FOUND, "'ghost'"),
        ("StartRun", pb.StartRunRequest(spec=big), Code.RESOURCE_EXHAUSTED, "16,777,216"),
        ("StartRun", huge, Code.RESOURCE_EXHAUSTED, "larger than max"),
        (
            "RegisterWorkflow",
            pb.RegisterWorkflowRequest(spec=proto({**ORDERS, "nodes": [py("other")]})),
            Code.ALREADY_EXISTS,
            "'orders'",
        ),
        ("GetRun", pb.GetRunRequest(run_id=UNKNOWN_RUN), Code.NOT_FOUND, UNKNOWN_RUN),
        ("CancelRun", pb.RunControlRequest(run_id=UNKNOWN_RUN), Code.NOT_FOUND, UNKNOWN_RUN),
        ("WatchRun", pb.WatchRunRequest(run_id=UNKNOWN_RUN), Code.NOT_FOUND, UNKNOWN_RUN),
        (
            "PauseRun",
            pb.RunControlRequest(run_id=finished),
            Code.FAILED_PRECONDITION,
            "it is SUCCEEDED",
        ),
        (
            "RetryNode",
            pb.RetryNodeRequest(run_id=finished, node_id="a"),
            Code.FAILED_PRECONDITION,
            "it is SUCCEEDED",
        ),
        ("ListRuns", pb.ListRunsRequest(order_by="bogus"), Code.INVALID_ARGUMENT, "'bogus'"),
        (
            "ListWorkflows",
            pb.ListWorkflowsRequest(page_token="not-a-token"),
            Code.INVALID_ARGUMENT,
            "page_token",
        ),
        ("ListRuns", pb.ListRunsRequest(page_size=-5), Code.INVALID_ARGUMENT, "page_size"),
        ("ResumeRun", pb.RunControlRequest(), Code.INVALID_ARGUMENT, "run_id"),
        ("ListRuns", pb.ListRunsRequest(page_token=token(7)), None, ""),
        ("ListWorkflows", pb.ListWorkflowsRequest(page_token=token(["x", "y"])), None, ""),
        (
            "StartRun",
            start({"name": "dangling", "input_schema": {"$ref": "#/$defs/x"}, "nodes": [py("a")]}),
            None,
            "",
        ),
        ("StartRun", start({"name": "deep", "nodes": [py("a")]}, nested(60)), None, ""),
    ]

    def bad_call(method: str, request: Any, code: grpc.StatusCode | None, part: str) -> None:
        err = rpc_error(stub, method, request)
        if code is None:
            assert err.code() not in (Code.UNAVAILABLE, Code.CANCELLED), err.details()
            return
        assert err.code() == code, f"{method}: {err.code().name}: {err.details()}"
        assert part in (err.details() or ""), err.details()

    def good_run(n: int) -> str:
        run_id = client.start_run(
            {
                "name": "good",
                "nodes": [
                    py("a", "add", args={"a": "{{ input.n }}", "b": 1}),
                    py("b", "echo", ["a"], args={"sum": "{{ nodes.a.output }}"}),
                ],
            },
            {"n": n},
        )
        run = client.wait(run_id, timeout=60)
        assert run.status == "SUCCEEDED", run.error
        assert run.output == {"b": {"sum": n + 1}}
        return run_id

    jobs: list[tuple[str, Callable[[], Any]]] = []
    for round_ in range(3):
        jobs += [
            (
                f"bad {method} #{i}/{round_}",
                lambda m=method, r=request, c=code, p=part: bad_call(m, r, c, p),
            )
            for i, (method, request, code, part) in enumerate(bad)
            if round_ == 0 or request is not huge
        ]  # the 70 MiB one only once
        jobs += [(f"good #{round_}/{i}", lambda n=round_ * 10 + i: good_run(n)) for i in range(8)]
    random.Random(7).shuffle(jobs)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(fn): name for name, fn in jobs}
        failures = []
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except BaseException as err:  # pytest.fail is a BaseException
                failures.append(f"{futures[future]}: {err}")
    assert not failures, "\n".join(failures)

    good = client.list_runs(workflow="good", limit=None)
    assert len(good) == 24 and all(r.status == "SUCCEEDED" for r in good)
    # The refused StartRuns left no run behind (the finished one came before).
    assert {r.workflow_name for r in client.list_runs(limit=None)} == {"good", "fine"}
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="statepipe.v1.StatePipe"), timeout=10
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert_serves(client, "at the end")
