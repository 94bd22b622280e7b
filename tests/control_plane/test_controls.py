"""Pause, resume, interrupt, cancel and retry a node, against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from sp_testing import py, wait_for

from statepipe.client import Client, StatepipeError

# Executor-level behaviour: each test runs on the local and on the Ray executor.
pytestmark = pytest.mark.both_executors


def runs_of(marker_dir: Path, node_id: str) -> int:
    path = marker_dir / f"{node_id}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_pause_lets_inflight_finish_and_starts_nothing_new(client: Client, tmp_path: Path) -> None:
    marks = str(tmp_path)
    run_id = client.start_run(
        {
            "name": "pausable",
            "nodes": [
                py("a", "record", args={"marker_dir": marks, "seconds": 0.4}),
                py("b", "record", ["a"], args={"marker_dir": marks}),
            ],
        }
    )
    wait_for(lambda: runs_of(tmp_path, "a"))
    paused = client.pause(run_id)
    assert paused.status == "PAUSED"
    wait_for(lambda: client.get_run(run_id).node("a").status == "SUCCEEDED")
    time.sleep(0.3)
    run = client.get_run(run_id)
    assert run.status == "PAUSED"
    assert run.node("b").status in ("PENDING", "QUEUED")
    assert runs_of(tmp_path, "b") == 0
    assert client.resume(run_id).status == "RUNNING"
    done = client.wait(run_id, timeout=30)
    assert done.status == "SUCCEEDED"
    assert runs_of(tmp_path, "a") == 1 and runs_of(tmp_path, "b") == 1
    kinds = [(e.kind, e.status) for e in client.watch(run_id) if e.kind == "run_status"]
    assert kinds == [
        ("run_status", "RUNNING"),
        ("run_status", "PAUSED"),
        ("run_status", "RUNNING"),
        ("run_status", "SUCCEEDED"),
    ]


def test_interrupt_cancels_an_async_node_within_100ms_and_resume_reruns_it(
    client: Client, tmp_path: Path
) -> None:
    run_id = client.start_run(
        {
            "name": "interruptible",
            "nodes": [
                py(
                    "long", "async_sleep_marking", args={"seconds": 30, "marker_dir": str(tmp_path)}
                ),
                py("done", "echo", args={"v": 1}),
            ],
        }
    )
    wait_for(lambda: (tmp_path / "long.started").exists())
    wait_for(lambda: client.get_run(run_id).node("done").status == "SUCCEEDED")
    asked = time.time()
    run = client.interrupt(run_id, reason="operator")
    cancelled_at = float(
        wait_for(
            lambda: (
                (tmp_path / "long.cancelled").exists() and (tmp_path / "long.cancelled").read_text()
            )
        )
    )
    assert cancelled_at - asked < 0.1
    assert run.status == "INTERRUPTED"
    run = client.get_run(run_id)
    assert run.node("long").status == "PENDING" and run.node("long").attempt == 1
    assert run.node("done").status == "SUCCEEDED"
    # Resumable: the interrupted node runs again, the finished one does not.
    (tmp_path / "long.started").unlink()
    with pytest.raises(StatepipeError) as err:
        client.interrupt(run_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "INTERRUPTED" in err.value.message
    client.resume(run_id)
    wait_for(lambda: (tmp_path / "long.started").exists())
    run = client.get_run(run_id)
    assert run.status == "RUNNING" and run.node("long").attempt == 2
    client.cancel(run_id)


def test_cancel_is_final(client: Client, tmp_path: Path) -> None:
    run_id = client.start_run(
        {
            "name": "cancellable",
            "nodes": [
                py("long", "sleep", args={"seconds": 30}),
                py("next", "echo", ["long"]),
            ],
        }
    )
    wait_for(lambda: client.get_run(run_id).node("long").status == "RUNNING")
    started = time.monotonic()
    run = client.cancel(run_id)
    assert time.monotonic() - started < 2  # a sync node is told, not waited for
    assert run.status == "CANCELLED"
    run = client.get_run(run_id)
    assert run.node("long").status == "CANCELLED"
    assert run.node("next").status == "CANCELLED"
    assert run.finished_at is not None
    for action in (client.resume, client.pause, client.interrupt, client.cancel):
        with pytest.raises(StatepipeError) as err:
            action(run_id)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "CANCELLED" in err.value.message
    events = list(client.watch(run_id))  # the stream ends for a final run
    assert events[-1].kind == "run_status" and events[-1].status == "CANCELLED"


def test_resume_after_failure_reruns_only_failed_and_skipped_nodes(
    client: Client, tmp_path: Path
) -> None:
    marks = str(tmp_path)
    flag = tmp_path / "allow"
    spec = {
        "name": "fix-and-resume",
        "nodes": [
            py("ok", "record", args={"marker_dir": marks}),
            {
                "id": "gate",
                "kind": "python",
                "after": ["ok"],
                "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
            },
            py("after_gate", "record", ["gate"], args={"marker_dir": marks}),
        ],
    }
    run_id = client.start_run(spec)
    run = client.wait(run_id, timeout=30)
    assert run.status == "FAILED"
    assert run.node("after_gate").status == "SKIPPED"
    assert run.node("ok").output == "ok"
    resumed = client.resume(run_id)
    assert resumed.status == "RUNNING"
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED"
    assert run.node("gate").attempt == 2 and run.node("gate").output == 2
    assert runs_of(tmp_path, "ok") == 1  # succeeded outputs are kept
    assert runs_of(tmp_path, "after_gate") == 1
    assert not flag.exists()


def test_retry_node_on_a_failed_run(client: Client, tmp_path: Path) -> None:
    marks = str(tmp_path)
    run_id = client.start_run(
        {
            "name": "retry-one",
            "nodes": [
                {
                    "id": "gate",
                    "kind": "python",
                    "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
                },
                py("child", "record", ["gate"], args={"marker_dir": marks}),
                py("other", "record", args={"marker_dir": marks}),
            ],
        }
    )
    assert client.wait(run_id, timeout=30).status == "FAILED"
    with pytest.raises(StatepipeError) as err:
        client.retry_node(run_id, "other")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "SUCCEEDED" in err.value.message
    assert client.retry_node(run_id, "gate").status == "RUNNING"
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED"
    assert runs_of(tmp_path, "child") == 1 and runs_of(tmp_path, "other") == 1


def test_retry_node_while_the_run_is_still_running(client: Client, tmp_path: Path) -> None:
    run_id = client.start_run(
        {
            "name": "retry-live",
            "nodes": [
                {
                    "id": "gate",
                    "kind": "python",
                    "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
                },
                py("slow", "sleep", args={"seconds": 1.0, "value": "slept"}),
            ],
        }
    )
    wait_for(lambda: client.get_run(run_id).node("gate").status == "FAILED")
    run = client.retry_node(run_id, "gate")
    assert run.status == "RUNNING"
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED"
    assert run.node("gate").attempt == 2
    assert run.node("slow").attempt == 1 and run.node("slow").output == "slept"


def test_pause_of_a_paused_run_names_the_state(client: Client) -> None:
    run_id = client.start_run(
        {"name": "twice", "nodes": [py("long", "sleep", args={"seconds": 30})]}
    )
    client.pause(run_id)
    with pytest.raises(StatepipeError) as err:
        client.pause(run_id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "PAUSED" in err.value.message
    client.cancel(run_id)
