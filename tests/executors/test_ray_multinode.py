"""A real two-node Ray cluster on this machine (`ray start --head` plus a second
`ray start --address=...` node with a custom resource), a control plane joining
it through RAY_ADDRESS, and a Ray node killed mid-run.

Every Ray process the test starts is stopped (tests/support/sp_ray.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sp_ray import RayCluster
from sp_testing import py, spawn_server, wait_for

from statepipe.client import Client


class Server:
    """`statepipe server` in a child process; RAY_ADDRESS selects the Ray executor."""

    def __init__(self, env: dict[str, str], database_url: str, log: Path) -> None:
        self.log = log.open("w")
        args = ["--database-url", database_url, "--log-level", "warning"]
        try:
            self.proc, self.address = spawn_server(args, env, stderr=self.log)
        except AssertionError as err:
            raise AssertionError(f"{err} {log.read_text()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    with RayCluster() as ray_cluster:
        yield ray_cluster
    marked = []
    for proc in psutil.process_iter():
        try:
            if "SP_RAY_NODE" in proc.environ() and proc.environ().get("SP_RAY_OWNER") == str(
                os.getpid()
            ):
                marked.append(proc)
        except (psutil.Error, OSError):
            continue
    assert not marked, f"Ray processes left behind: {marked}"


def running(client: Client, run_id: str, node_id: str, attempt: int) -> dict[str, Any]:
    return next(
        e.data
        for e in client.list_events(run_id)
        if e.kind == "node_status"
        and e.status == "RUNNING"
        and e.node_id == node_id
        and e.attempt == attempt
    )


@pytest.mark.timeout(240)
def test_losing_the_ray_node_with_the_resource_retries_elsewhere_or_fails_cleanly(
    cluster: RayCluster, database_url: str, tmp_path: Path
) -> None:
    cluster.start_head(num_cpus=1)
    second = cluster.add_node(num_cpus=1, resources={"special": 2})
    env = cluster.driver_env()  # RAY_ADDRESS points at the head
    env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.pop("STATEPIPE_EXECUTOR", None)
    server = Server(env, database_url, tmp_path / "server.log")
    try:
        with Client(server.address) as client:
            marks = tmp_path / "marks"
            marks.mkdir()
            special = py(
                "special",
                "first_attempt_hangs",
                args={"marker_dir": str(marks)},
                resources={"custom": {"special": 1}},
                retry={"max_attempts": 3, "backoff_ms": 200},
            )
            spec = {
                "name": "two-nodes",
                "nodes": [py("prep", "where"), {**special, "after": ["prep"]},
                          py("done", "echo", ["special"], args={"ok": True})],
            }  # fmt: skip
            run_id = client.start_run(spec)
            pid = int(wait_for(lambda: _read(marks / "special.1.pid"), timeout=60))
            first = running(client, run_id, "special", 1)
            assert first["executor"] == "ray"
            assert first["ray_node_id"] == second.node_id  # only that node has "special"
            assert first["worker_pid"] == pid

            cluster.kill_node(second)
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            # The retry waits (QUEUED) for a place; a new node with the resource joins.
            third = cluster.add_node(num_cpus=1, resources={"special": 2})
            run = client.wait(run_id, timeout=120)
            assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
            assert run.node("special").attempt == 2
            assert running(client, run_id, "special", 2)["ray_node_id"] == third.node_id
            retry = next(e for e in client.list_events(run_id) if e.status == "RETRY_WAIT")
            assert "died" in retry.message, retry.message

            # No retries left: losing the node fails the node and the run cleanly.
            once = {**special, "retry": {"max_attempts": 1}, "id": "once"}
            run_id = client.start_run({"name": "one-shot", "nodes": [once]})
            wait_for(lambda: _read(marks / "once.1.pid"), timeout=60)
            assert running(client, run_id, "once", 1)["ray_node_id"] == third.node_id
            cluster.kill_node(third)
            run = client.wait(run_id, timeout=60)
            assert run.status == "FAILED"
            assert run.node("once").status == "FAILED"
            assert "the Ray actor" in run.node("once").error
            assert "died" in run.node("once").error
            # The control plane still serves and still runs nodes (on the head).
            again = client.wait(client.start_run({"name": "after", "nodes": [py("w", "where")]}))
            assert again.status == "SUCCEEDED"
    finally:
        server.stop()


def _stored_running(client: Client, run_id: str) -> int:
    """How many RUNNING node events of the run are in Postgres (ListEvents reads it)."""
    events = client.list_events(run_id, kinds=["node_status"], limit=None)
    return sum(1 for e in events if e.status == "RUNNING")


def _read(path: Path) -> str:
    return path.exists() and path.read_text()


@pytest.mark.timeout(240)
def test_a_control_plane_killed_mid_run_takes_its_actors_along_and_the_next_finishes(
    cluster: RayCluster, database_url: str, tmp_path: Path
) -> None:
    cluster.start_head(num_cpus=2)
    env = cluster.driver_env()
    env.pop("STATEPIPE_EXECUTOR", None)
    marks = tmp_path / "marks"
    marks.mkdir()
    nodes = [py(f"n{i}", "first_attempt_hangs", args={"marker_dir": str(marks)}) for i in range(4)]
    first = Server(env, database_url, tmp_path / "first.log")
    try:
        with Client(first.address) as client:
            run_id = client.start_run({"name": "crash", "nodes": nodes})
            pids = [
                int(wait_for(lambda i=i: _read(marks / f"n{i}.1.pid"), timeout=60))
                for i in range(4)
            ]
            # Stored, not only begun: a node killed before its RUNNING commit
            # lands runs again with the same attempt number (by design).
            wait_for(lambda: _stored_running(client, run_id) == 4, timeout=30)
        first.proc.kill()  # SIGKILL: no graceful anything
        first.proc.wait(10)
    finally:
        first.stop()
    # Ray ends the dead driver's actors, and with them the nodes it ran.
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=60)
    second = Server(env, database_url, tmp_path / "second.log")
    try:
        with Client(second.address) as client:
            run = client.wait(run_id, timeout=120)
            assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
            attempts = [(n.node_id, n.attempt, n.output["attempt"]) for n in run.nodes]
            assert all(a == b == 2 for _, a, b in attempts), attempts
            assert not {n.output["pid"] for n in run.nodes} & set(pids)
            seqs = [e.seq for e in client.list_events(run_id)]
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        second.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
