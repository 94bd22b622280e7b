"""Runs end to end against a real server (gRPC on port 0, embedded Postgres)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from sp_testing import py

from statepipe.client import Client, StatepipeError

# Executor-level behaviour: each test runs on the local and on the Ray executor.
pytestmark = pytest.mark.both_executors


def test_a_run_executes_in_dependency_order_and_is_persisted(client: Client) -> None:
    client.register_workflow(
        {
            "name": "sum",
            "version": "1",
            "input_schema": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
            },
            "nodes": [
                py("a", "add", args={"a": "{{ input.x }}", "b": 1}),
                py("b", "add", ["a"], args={"a": "{{ nodes.a.output }}", "b": 10}),
                py("c", "add", ["a"], args={"a": "{{ nodes.a.output }}", "b": 100}),
                py(
                    "d",
                    "echo",
                    ["b", "c"],
                    args={"total": "{{ nodes.b.output }}", "text": "b={{ nodes.b.output }}"},
                ),
            ],
        }
    )
    run_id = client.start_run("sum", {"x": 1})
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED"
    nodes = {n.node_id: n for n in run.nodes}
    assert nodes["a"].output == 2 and isinstance(nodes["a"].output, int)
    assert nodes["b"].output == 12 and nodes["c"].output == 102
    # A whole-string template keeps the type; an embedded one becomes text.
    assert nodes["d"].output == {"total": 12, "text": "b=12"}
    assert nodes["d"].input == {"callable": "sp_nodes:echo", "args": {"total": 12, "text": "b=12"}}
    assert all(n.status == "SUCCEEDED" and n.attempt == 1 for n in run.nodes)
    assert run.output == {"d": {"total": 12, "text": "b=12"}}
    assert run.started_at and run.finished_at and run.finished_at >= run.started_at
    for n in run.nodes:
        assert n.started_at and n.finished_at and n.started_at <= n.finished_at
    events = list(client.watch(run_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    order = [e.node_id for e in events if e.kind == "node_status" and e.status == "SUCCEEDED"]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    assert run.last_seq == events[-1].seq
    assert events[-1].kind == "run_status" and events[-1].status == "SUCCEEDED"
    assert [e.message for e in events if e.kind == "log" and e.node_id == "a"] == ["adding 1 and 1"]


def test_inline_spec_labels_and_listing(client: Client) -> None:
    spec = {"name": "inline", "nodes": [py("only", "echo", args={"v": 1})]}
    ids = [client.start_run(spec, labels={"team": "a" if i % 2 else "b"}) for i in range(5)]
    for run_id in ids:
        assert client.wait(run_id, timeout=30).status == "SUCCEEDED"
    listed = client.list_runs(workflow="inline")
    assert [r.run_id for r in listed] == ids[::-1]  # newest first
    team_a = client.list_runs(labels={"team": "a"})
    assert sorted(r.run_id for r in team_a) == sorted(ids[1::2])
    assert client.list_runs(status="FAILED") == []
    page, token = client.list_runs_page(workflow="inline", limit=2)
    assert len(page) == 2 and token
    rest, _ = client.list_runs_page(workflow="inline", limit=10, page_token=token)
    assert [r.run_id for r in page + rest] == ids[::-1]
    assert client.list_runs(text=ids[0][:12])[0].run_id == ids[0]


def test_idempotency_key_returns_the_same_run(client: Client) -> None:
    spec = {"name": "idem", "nodes": [py("n", "echo")]}
    first = client.start_run(spec, idempotency_key="order-42")
    second = client.start_run(spec, idempotency_key="order-42")
    assert first == second
    assert len(client.list_runs(workflow="idem")) == 1
    assert client.start_run(spec, idempotency_key="order-43") != first


def test_retries_with_backoff_are_counted_and_shown(client: Client) -> None:
    spec = {
        "name": "retry",
        "nodes": [
            py(
                "flaky",
                "fail_until",
                args={"succeed_on": 3},
                retry={"max_attempts": 3, "backoff_ms": 50, "strategy": "exponential"},
            ),
            py("after", "echo", ["flaky"], args={"got": "{{ nodes.flaky.output }}"}),
        ],
    }
    started = time.monotonic()
    run = client.wait(client.start_run(spec), timeout=30)
    elapsed = time.monotonic() - started
    assert run.status == "SUCCEEDED"
    assert run.node("flaky").attempt == 3 and run.node("flaky").output == 3
    assert run.node("after").output == {"got": 3}
    assert elapsed >= 0.15  # 50 ms, then 100 ms of backoff
    statuses = [
        (e.status, e.attempt)
        for e in client.watch(run.run_id)
        if e.kind == "node_status" and e.node_id == "flaky"
    ]
    assert ("RETRY_WAIT", 1) in statuses and ("RETRY_WAIT", 2) in statuses
    assert statuses[-1] == ("SUCCEEDED", 3)


def test_spent_retries_fail_the_node_and_skip_its_descendants(client: Client) -> None:
    spec = {
        "name": "failing",
        "nodes": [
            py("bad", "boom", args={"message": "no luck"}, retry={"max_attempts": 2}),
            py("child", "echo", ["bad"]),
            py("grandchild", "echo", ["child"]),
            py("independent", "echo"),
        ],
    }
    run = client.wait(client.start_run(spec), timeout=30)
    assert run.status == "FAILED"
    assert "bad" in run.error
    bad = run.node("bad")
    assert bad.status == "FAILED" and bad.attempt == 2
    assert bad.error == "ValueError: no luck"
    assert run.node("child").status == "SKIPPED"
    assert run.node("grandchild").status == "SKIPPED"
    assert run.node("independent").status == "SUCCEEDED"


def test_continue_on_failure_lets_dependents_run(client: Client) -> None:
    spec = {
        "name": "tolerant",
        "nodes": [
            py("optional", "boom", continue_on_failure=True),
            py("next", "echo", ["optional"], args={"status": "{{ nodes.optional.status }}"}),
        ],
    }
    run = client.wait(client.start_run(spec), timeout=30)
    assert run.node("optional").status == "FAILED"
    assert run.node("next").output == {"status": "FAILED"}
    assert run.status == "SUCCEEDED"


def test_when_conditions_choose_a_branch(client: Client) -> None:
    spec = {
        "name": "branch",
        "nodes": [
            py("route", "echo", args={"kind": "{{ input.kind }}"}),
            py("search", "echo", ["route"], when="nodes.route.output.kind == 'search'"),
            py("answer", "echo", ["route"], when="{{ nodes.route.output.kind == 'answer' }}"),
            py(
                "join",
                "echo",
                ["search", "answer"],
                args={"searched": "{{ nodes.search.status == 'SUCCEEDED' }}"},
            ),
        ],
    }
    run = client.wait(client.start_run(spec, {"kind": "search"}), timeout=30)
    assert run.status == "SUCCEEDED"
    assert run.node("search").status == "SUCCEEDED"
    assert run.node("answer").status == "SKIPPED"
    assert run.node("join").output == {"searched": True}


def test_timeouts_fail_a_node_and_retry_it(client: Client) -> None:
    spec = {
        "name": "slow",
        "nodes": [
            py(
                "sync_slow",
                "sleep",
                args={"seconds": 5},
                timeout_ms=100,
                retry={"max_attempts": 2, "backoff_ms": 10},
            ),
            py("async_slow", "async_sleep", args={"seconds": 5}, timeout_ms=100),
        ],
    }
    started = time.monotonic()
    run = client.wait(client.start_run(spec), timeout=30)
    assert time.monotonic() - started < 4
    assert run.status == "FAILED"
    assert run.node("sync_slow").attempt == 2
    assert run.node("sync_slow").error == "timed out after 100 ms"
    assert run.node("async_slow").error == "timed out after 100 ms"


def test_node_context_events_stream_and_usage_is_stored(client: Client) -> None:
    run = client.wait(
        client.start_run({"name": "chat", "nodes": [py("talk", "chatty", args={"tokens": 4})]}),
        timeout=30,
    )
    events = list(client.watch(run.run_id))
    tokens = [e.message for e in events if e.kind == "token"]
    assert tokens == ["t0 ", "t1 ", "t2 ", "t3 "]
    progress = [e.data for e in events if e.kind == "progress"]
    assert progress[0]["fraction"] == 0.5 and progress[-1]["fraction"] == 1
    tool = next(e for e in events if e.kind == "tool_call")
    assert tool.data["name"] == "search" and tool.data["result"] == ["a"]
    metric = next(e for e in events if e.kind == "metric")
    assert metric.data == {"name": "latency_ms", "value": 12.5}
    assert run.node("talk").usage == {"input_tokens": 3, "output_tokens": 4}
    only_tokens = list(client.watch(run.run_id, kinds=["token"]))
    assert [e.message for e in only_tokens] == tokens


def test_a_callable_that_cannot_be_imported_fails_the_node_clearly(client: Client) -> None:
    run = client.wait(
        client.start_run(
            {
                "name": "missing",
                "nodes": [
                    {"id": "x", "kind": "python", "params": {"callable": "no_such_module:fn"}},
                    {"id": "y", "kind": "python", "params": {"callable": "sp_nodes:no_such_fn"}},
                    py("z", "not_json"),
                ],
            }
        ),
        timeout=30,
    )
    assert run.status == "FAILED"
    assert run.node("x").error.startswith("cannot import 'no_such_module:fn': ModuleNotFound")
    assert run.node("y").error == (
        "cannot import 'sp_nodes:no_such_fn': module 'sp_nodes' has no attribute 'no_such_fn'"
    )
    assert "not JSON-serializable" in run.node("z").error


def test_hooks_run_and_a_failing_hook_is_an_event(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "hooks.log"
    monkeypatch.setenv("SP_HOOK_LOG", str(log))
    spec = {
        "name": "hooked",
        "hooks": {
            "on_init": "sp_nodes:hook_log",
            "on_success": "sp_nodes:hook_log",
            "on_retry": "sp_nodes:hook_log",
            "on_error": "sp_nodes:hook_raises",
            "on_complete": "sp_nodes:hook_log",
            "on_progress": "sp_nodes:hook_log",
        },
        "nodes": [
            py("ok", "chatty", args={"tokens": 1}),
            py("flaky", "fail_until", args={"succeed_on": 2}, retry={"max_attempts": 2}),
            py("bad", "boom"),
        ],
    }
    run = client.wait(client.start_run(spec), timeout=30)
    assert run.status == "FAILED"  # from the node, not from the hook
    lines = log.read_text().splitlines()
    assert lines[0] == "on_init "
    assert lines[-1] == "on_complete "
    assert "on_success ok" in lines and "on_success flaky" in lines
    assert "on_retry flaky" in lines
    assert lines.count("on_progress ok") == 2
    hook_errors = [e for e in client.watch(run.run_id) if e.kind == "hook_error"]
    assert len(hook_errors) == 1 and hook_errors[0].node_id == "bad"
    assert "hook exploded" in hook_errors[0].message


def test_concurrency_key_limits_parallel_nodes(client: Client, tmp_path: Path) -> None:
    nodes = [
        py(f"p{i}", "concurrency_probe", args={"marker_dir": str(tmp_path)}, concurrency_key="gpu")
        for i in range(6)
    ]
    spec = {"name": "keyed", "concurrency": {"per_key": {"gpu": 2}}, "nodes": nodes}
    assert client.wait(client.start_run(spec), timeout=30).status == "SUCCEEDED"
    assert int((tmp_path / "max").read_text()) == 2


def test_per_run_limit(client: Client, tmp_path: Path) -> None:
    nodes = [
        py(f"p{i}", "concurrency_probe", args={"marker_dir": str(tmp_path), "seconds": 0.1})
        for i in range(6)
    ]
    spec = {"name": "per-run", "concurrency": {"per_run": 1}, "nodes": nodes}
    assert client.wait(client.start_run(spec), timeout=30).status == "SUCCEEDED"
    assert int((tmp_path / "max").read_text()) == 1


def test_parallel_nodes_do_run_in_parallel(client: Client, tmp_path: Path) -> None:
    nodes = [
        py(f"p{i}", "concurrency_probe", args={"marker_dir": str(tmp_path), "seconds": 0.3})
        for i in range(4)
    ]
    assert (
        client.wait(client.start_run({"name": "wide", "nodes": nodes}), timeout=30).status
        == "SUCCEEDED"
    )
    assert int((tmp_path / "max").read_text()) == 4


def test_unknown_run_is_not_found(client: Client) -> None:
    with pytest.raises(StatepipeError) as err:
        client.get_run("does-not-exist")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "does-not-exist" in err.value.message


def test_many_watchers_see_identical_streams(client: Client) -> None:
    spec = {
        "name": "watched",
        "nodes": [
            py(f"n{i}", "chatty", [f"n{i - 1}"] if i else None, args={"tokens": 20})
            for i in range(5)
        ],
    }
    run_id = client.start_run(spec)
    streams: list[list[tuple[int, str]]] = [[] for _ in range(8)]

    def watch(i: int) -> None:
        if i % 2:
            time.sleep(0.05 * i)  # some join mid-run
        streams[i] = [(e.seq, e.kind) for e in client.watch(run_id)]

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.wait(run_id, timeout=30)
    late = [(e.seq, e.kind) for e in client.watch(run_id)]  # after the run
    assert all(s == late for s in streams)
    assert [seq for seq, _ in late] == list(range(1, len(late) + 1))
    middle = late[len(late) // 2][0]
    assert [(e.seq, e.kind) for e in client.watch(run_id, after_seq=middle)] == late[middle:]


def test_list_events_pages(client: Client) -> None:
    run = client.wait(
        client.start_run({"name": "paged", "nodes": [py("talk", "chatty", args={"tokens": 30})]}),
        timeout=30,
    )
    events = client.list_events(run.run_id, limit=10)
    assert [e.seq for e in events] == list(range(1, 11))
    tokens = client.list_events(run.run_id, kinds=["token"], limit=1000)
    assert len(tokens) == 30
    everything = client.list_events(run.run_id, limit=1000)
    assert everything[-1].seq == run.last_seq


def test_global_and_per_workflow_limits(make_server: Any, tmp_path: Path) -> None:
    server = make_server(max_concurrency=2)
    with Client(server.address) as client:
        marks = tmp_path / "global"
        marks.mkdir()
        nodes = [
            py(f"p{i}", "concurrency_probe", args={"marker_dir": str(marks), "seconds": 0.1})
            for i in range(5)
        ]
        ids = [client.start_run({"name": f"g{i}", "nodes": nodes}) for i in range(2)]
        assert all(client.wait(r, timeout=30).status == "SUCCEEDED" for r in ids)
        assert int((marks / "max").read_text()) == 2
    server = make_server()
    with Client(server.address) as client:
        marks = tmp_path / "workflow"
        marks.mkdir()
        nodes = [
            py(f"p{i}", "concurrency_probe", args={"marker_dir": str(marks), "seconds": 0.1})
            for i in range(3)
        ]
        spec = {"name": "limited", "concurrency": {"per_workflow": 2}, "nodes": nodes}
        ids = [client.start_run(spec) for _ in range(3)]
        assert all(client.wait(r, timeout=30).status == "SUCCEEDED" for r in ids)
        assert int((marks / "max").read_text()) == 2


def test_a_function_without_ctx(client: Client) -> None:
    node = py("plain", "no_ctx", args={"a": 6, "b": 7}, params={"pass_ctx": False})
    run = client.wait(client.start_run({"name": "plain", "nodes": [node]}), timeout=30)
    assert run.status == "SUCCEEDED" and run.node("plain").output == 42


def test_nul_characters_do_not_wedge_the_writer(client: Client) -> None:
    run = client.wait(
        client.start_run(
            {"name": "nul", "nodes": [py("out", "nul_output"), py("err", "nul_error")]},
            {"note": "x\x00y"},
        ),
        timeout=30,
    )
    assert run.status == "FAILED"
    assert run.node("out").status == "SUCCEEDED"
    assert run.node("out").output == {"text": "a\ufffdb", "k\ufffd": "v"}
    assert run.node("err").error == "ValueError: bad\ufffdbyte"
    # The server still commits and serves.
    again = client.wait(client.start_run({"name": "after-nul", "nodes": [py("ok")]}), timeout=30)
    assert again.status == "SUCCEEDED"


def test_a_version_with_control_characters_is_refused(client: Client) -> None:
    with pytest.raises(StatepipeError) as err:
        client.register_workflow({"name": "v", "version": "1\x00", "nodes": [py("a")]})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.version" in err.value.message
    workflow = client.register_workflow(
        {"name": "v", "nodes": [py("a")], "metadata": {"note": "x\x00y"}}
    )
    assert workflow.version == "1"
