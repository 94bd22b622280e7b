"""The Ray executor against a real local Ray cluster: placement, resources,
streaming, cancellation, dead workers, infeasible requests, selection."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sp_testing import py, wait_for

from control_plane.server import executor_name
from statepipe.client import Client


@pytest.fixture
def executor(ray_session: None) -> str:
    return "ray"  # every server of this module runs nodes on Ray


def running_event(client: Client, run_id: str, node_id: str, attempt: int = 1) -> Any:
    return next(
        e
        for e in client.list_events(run_id)
        if e.kind == "node_status"
        and e.status == "RUNNING"
        and e.node_id == node_id
        and e.attempt == attempt
    )


def test_the_running_event_says_where_the_node_runs(client: Client) -> None:
    import ray

    run = client.wait(client.start_run({"name": "where", "nodes": [py("w", "where")]}), timeout=60)
    assert run.status == "SUCCEEDED", run.node("w").error
    out = run.node("w").output
    data = running_event(client, run.run_id, "w").data
    assert data["executor"] == "ray"
    assert data["worker_pid"] == out["pid"] != os.getpid()
    assert data["ray_actor_id"] == out["ray_actor_id"]
    assert data["ray_node_id"] == out["ray_node_id"] == ray.get_runtime_context().get_node_id()


def test_resources_become_ray_resource_requests(client: Client) -> None:
    nodes = [
        py("plain", "where"),
        py("cpu", "where", resources={"cpus": 1}),
        py("slot", "where", resources={"custom": {"sp_slot": 1}}),
        py("both", "where", resources={"cpus": 0.5, "custom": {"sp_slot": 0.5}}),
        py("gpu", "where", resources={"gpus": 1}),
        py("mem", "where", resources={"memory": 64 * 1024 * 1024}),
    ]
    run = client.wait(client.start_run({"name": "shapes", "nodes": nodes}), timeout=60)
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    out = {n.node_id: n.output for n in run.nodes}
    assert out["plain"]["resources"] == {}
    assert out["cpu"]["resources"] == {"CPU": 1.0}
    assert out["slot"]["resources"] == {"sp_slot": 1.0}
    assert out["both"]["resources"] == {"CPU": 0.5, "sp_slot": 0.5}
    assert out["gpu"]["resources"] == {"GPU": 1.0}
    assert out["mem"]["resources"] == {"memory": 64.0 * 1024 * 1024}
    # Each shape has actors of its own.
    assert len({o["ray_actor_id"] for o in out.values()}) == len(nodes)


def test_a_resource_the_cluster_has_twice_runs_two_nodes_at_a_time(
    client: Client, tmp_path: Path
) -> None:
    nodes = [
        py(
            f"n{i}",
            "concurrency_probe",
            args={"marker_dir": str(tmp_path), "seconds": 1.5},
            resources={"custom": {"sp_slot": 1}},
        )
        for i in range(4)
    ]
    run = client.wait(client.start_run({"name": "slots", "nodes": nodes}), timeout=60)
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    assert (tmp_path / "max").read_text() == "2"  # the session cluster has sp_slot: 2


def test_events_stream_back_while_the_node_runs(client: Client, tmp_path: Path) -> None:
    run_id = client.start_run(
        {
            "name": "live",
            "nodes": [py("s", "stream_then_wait", args={"marker_dir": str(tmp_path), "tokens": 3})],
        }
    )
    seen: list[str] = []
    for event in client.watch(run_id):
        if event.kind == "token":
            seen.append(event.message)
            if len(seen) == 3:
                # The node is still waiting for this file: the tokens came live.
                assert not (tmp_path / "s.go").exists()
                (tmp_path / "s.go").write_text("go")
    assert seen == ["t0", "t1", "t2", "after"]
    assert client.get_run(run_id).status == "SUCCEEDED"


@pytest.mark.parametrize("action", ["cancel", "interrupt"])
def test_cancel_and_interrupt_reach_the_ray_actor_within_a_second(
    client: Client, tmp_path: Path, action: str
) -> None:
    run_id = client.start_run(
        {
            "name": "stop-me",
            "nodes": [
                py("a", "async_sleep_marking", args={"seconds": 60, "marker_dir": str(tmp_path)})
            ],
        }
    )
    wait_for(lambda: (tmp_path / "a.started").exists(), timeout=30)
    asked = time.time()
    getattr(client, action)(run_id)
    expected = "CANCELLED" if action == "cancel" else "PENDING"
    wait_for(lambda: client.get_run(run_id).node("a").status == expected, timeout=1)
    noticed = float(wait_for(lambda: _read(tmp_path / "a.cancelled"), timeout=5))
    assert noticed - asked < 1.0


def _read(path: Path) -> str:
    return path.exists() and path.read_text()


@pytest.mark.parametrize("how", ["sigkill-worker", "ray-kill-actor"])
@pytest.mark.parametrize(
    "resources", [{}, {"custom": {"sp_slot": 1}}], ids=["shared-actor", "own-actor"]
)
def test_a_killed_worker_is_retried_on_a_fresh_actor(
    client: Client, tmp_path: Path, resources: dict[str, Any], how: str
) -> None:
    fn = "first_attempt_hangs" if how == "sigkill-worker" else "first_attempt_kills_its_actor"
    node = py(
        "k",
        fn,
        args={"marker_dir": str(tmp_path)},
        retry={"max_attempts": 3, "backoff_ms": 10},
        resources=resources,
    )
    run_id = client.start_run({"name": "kill", "nodes": [node]})
    pid = int(wait_for(lambda: _read(tmp_path / "k.1.pid"), timeout=30))
    if how == "sigkill-worker":
        os.kill(pid, signal.SIGKILL)
    run = client.wait(run_id, timeout=60)
    assert run.status == "SUCCEEDED", run.node("k").error
    out = run.node("k").output
    assert run.node("k").attempt == 2 and out["attempt"] == 2
    assert out["pid"] != pid
    first, second = running_event(client, run_id, "k", 1), running_event(client, run_id, "k", 2)
    assert first.data["worker_pid"] == pid
    assert second.data["ray_actor_id"] != first.data["ray_actor_id"]
    retry = next(e for e in client.list_events(run_id) if e.status == "RETRY_WAIT")
    assert "died" in retry.message and first.data["ray_actor_id"] in retry.message


def test_a_killed_worker_with_no_retries_left_fails_the_run_cleanly(
    client: Client, tmp_path: Path
) -> None:
    node = py("k", "first_attempt_hangs", args={"marker_dir": str(tmp_path)})
    run_id = client.start_run({"name": "kill-once", "nodes": [node, py("after", after=["k"])]})
    pid = int(wait_for(lambda: _read(tmp_path / "k.1.pid"), timeout=30))
    os.kill(pid, signal.SIGKILL)
    run = client.wait(run_id, timeout=60)
    assert run.status == "FAILED"
    assert run.node("k").status == "FAILED" and "Ray actor" in run.node("k").error
    assert run.node("after").status == "SKIPPED"
    # The executor replaced the dead actor: the next run works.
    again = client.wait(client.start_run({"name": "next", "nodes": [py("w", "where")]}), 60)
    assert again.status == "SUCCEEDED"


def test_a_request_no_ray_node_can_hold_fails_with_a_clear_error(make_server: Any) -> None:
    server = make_server(ray={"infeasible_s": 0.5})
    with Client(server.address) as client:
        node = py("big", "where", resources={"custom": {"unobtainium": 1}})
        run = client.wait(client.start_run({"name": "infeasible", "nodes": [node]}), timeout=30)
    assert run.status == "FAILED"
    assert run.node("big").error == (
        "no node of the Ray cluster offers unobtainium=1 (waited 0.5 s for one)"
    )


def test_the_executor_is_chosen_by_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEPIPE_EXECUTOR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert executor_name() == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert executor_name() == "ray"
    monkeypatch.setenv("STATEPIPE_EXECUTOR", "local")
    assert executor_name() == "local"
    assert executor_name("ray") == "ray"
    monkeypatch.delenv("STATEPIPE_EXECUTOR")
    monkeypatch.delenv("RAY_ADDRESS")
    assert executor_name(None, "10.0.0.5:6379") == "ray"  # a configured address alone
    assert executor_name("local", "10.0.0.5:6379") == "local"
    with pytest.raises(ValueError, match="unknown executor 'dask'; choose one of: local, ray"):
        executor_name("dask")


def test_a_timeout_counts_from_running_not_from_the_wait_for_a_place(client: Client) -> None:
    # Each node needs both sp_slot units of the cluster, so they run one after
    # the other; each sleeps 1 s under a 1.8 s timeout, which the second would
    # exceed if the wait for its place counted.
    nodes = [
        py(
            name,
            "sleep",
            args={"seconds": 1.0, "value": name},
            resources={"custom": {"sp_slot": 2}},
            timeout_ms=1800,
        )
        for name in ("one", "two")
    ]
    run_id = client.start_run({"name": "queue-then-run", "nodes": nodes})
    run = client.wait(run_id, timeout=60)
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    assert all(n.attempt == 1 for n in run.nodes)
    statuses = [
        (e.node_id, e.status) for e in client.list_events(run_id) if e.kind == "node_status"
    ]
    first, second = sorted(["one", "two"], key=lambda n: statuses.index((n, "RUNNING")))
    # The second stayed QUEUED until the first gave the slots back.
    assert statuses.index((first, "SUCCEEDED")) < statuses.index((second, "RUNNING"))


def test_an_actor_whose_node_ignores_a_cancel_is_killed_after_the_grace(
    make_server: Any, tmp_path: Path
) -> None:
    import psutil

    server = make_server(ray={"cancel_grace_s": 0.5})
    stubborn = py("s", "ignores_cancel", args={"marker_dir": str(tmp_path)}, resources={"cpus": 1})
    with Client(server.address) as client:
        run_id = client.start_run({"name": "stubborn", "nodes": [stubborn]})
        pid = int(wait_for(lambda: _read(tmp_path / "s.pid"), timeout=30))
        client.cancel(run_id)
        assert client.get_run(run_id).node("s").status == "CANCELLED"
        # The actor held a CPU for a function that never stops: it is killed,
        # so the CPU goes back to the cluster.
        wait_for(lambda: not psutil.pid_exists(pid), timeout=15)
        again = py("again", "where", resources={"cpus": 1})
        run = client.wait(client.start_run({"name": "after", "nodes": [again]}), timeout=60)
        assert run.status == "SUCCEEDED" and run.node("again").output["pid"] != pid


def test_on_ray_a_failure_keeps_its_traceback_and_an_import_error_is_not_retried(
    client: Client,
) -> None:
    retry = {"max_attempts": 3, "backoff_ms": 10}
    nodes = [
        py("bad", "boom", args={"message": "kaboom"}, retry=retry),
        {"id": "typo", "kind": "python", "params": {"callable": "sp_nodes:nope"}, "retry": retry},
    ]
    run = client.wait(client.start_run({"name": "ray-fails", "nodes": nodes}), timeout=60)
    bad, typo = run.node("bad").to_dict(), run.node("typo").to_dict()
    assert bad["attempt"] == 3  # a failure of the node's code follows the policy
    assert bad["error"] == "ValueError: kaboom"
    assert "sp_nodes.py" in bad["traceback"] and "ray_executor" not in bad["traceback"]
    assert bad["traceback"].rstrip().endswith("ValueError: kaboom")
    assert typo["attempt"] == 1 and typo["status"] == "FAILED"
    assert "has no attribute 'nope'" in typo["error"] and typo["traceback"] == ""
