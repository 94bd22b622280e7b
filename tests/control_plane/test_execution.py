"""Executor details: process isolation, cancellation of sync code, plugins,
lagging watchers, health and reflection, indexes behind every query."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sp_testing import py, wait_for

from statepipe.client import Client


@pytest.mark.both_executors
def test_a_sync_node_in_a_worker_process(client: Client) -> None:
    run = client.wait(
        client.start_run(
            {
                "name": "isolated",
                "nodes": [
                    py("p", "in_process", args={"value": 21}, params={"isolation": "process"})
                ],
            }
        ),
        timeout=60,
    )
    assert run.status == "SUCCEEDED", run.node("p").error
    import os

    assert run.node("p").output["value"] == 42
    assert run.node("p").output["pid"] != os.getpid()
    logs = [e.message for e in client.watch(run.run_id) if e.kind == "log"]
    assert logs == ["from a worker process"]


@pytest.mark.both_executors
def test_a_sync_node_is_told_it_was_cancelled(client: Client, tmp_path: Path) -> None:
    run_id = client.start_run(
        {
            "name": "polite",
            "nodes": [py("poll", "loop_until_cancelled", args={"marker_dir": str(tmp_path)})],
        }
    )
    wait_for(lambda: (tmp_path / "poll.started").exists())
    asked = time.time()
    client.interrupt(run_id)
    noticed = float(
        wait_for(
            lambda: (tmp_path / "poll.noticed").exists() and (tmp_path / "poll.noticed").read_text()
        )
    )
    assert noticed - asked < 1.0
    client.cancel(run_id)


def test_plugins_from_entry_points_get_every_hook(
    make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real installed distribution: a dist-info folder with entry points.
    site = tmp_path / "site"
    dist = site / "sp_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sp-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[statepipe.plugins]\nrecorder = sp_nodes:Plugin\n")
    monkeypatch.syspath_prepend(str(site))
    log = tmp_path / "plugin.log"
    monkeypatch.setenv("SP_PLUGIN_LOG", str(log))
    server = make_server()
    with Client(server.address) as client:
        run = client.wait(
            client.start_run(
                {"name": "plugged", "nodes": [py("a", "echo"), py("b", "echo", ["a"])]}
            ),
            timeout=30,
        )
    assert run.status == "SUCCEEDED"
    assert log.read_text().splitlines() == [
        "on_init ",
        "on_success a",
        "on_success b",
        "on_complete ",
    ]


def test_a_watcher_that_falls_behind_the_bus_is_replayed_from_postgres(make_server: Any) -> None:
    server = make_server(bus_capacity=8)
    with Client(server.address) as client:
        run_id = client.start_run(
            {
                "name": "firehose",
                "nodes": [
                    py("spam", "many_tokens", args={"n": 3000}),
                    py("more", "many_tokens", ["spam"], args={"n": 3000}),
                ],
            }
        )
        slow: list[int] = []

        def watch_slowly() -> None:
            for i, event in enumerate(client.watch(run_id)):
                slow.append(event.seq)
                if i < 50:
                    time.sleep(0.01)  # fall far behind an 8-event ring

        watcher = threading.Thread(target=watch_slowly)
        watcher.start()
        watcher.join(60)
        run = client.wait(run_id, timeout=30)
        assert run.status == "SUCCEEDED"
        assert slow == list(range(1, run.last_seq + 1))
        assert run.last_seq > 6000


def test_health_and_reflection(server: Any) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "statepipe.v1.StatePipe"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]))))
        names = {s.name for s in response.list_services_response.service}
        assert {"statepipe.v1.StatePipe", "grpc.health.v1.Health"} <= names


QUERIES = {
    "get run": ("SELECT * FROM runs WHERE run_id = 'x'", "runs_pkey"),
    "idempotency key": ("SELECT * FROM runs WHERE idempotency_key = 'k'", "runs_idempotency_key"),
    "list newest": (
        "SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_created",
    ),
    # Several statuses: either status index (neither gives the created order).
    "list by status": (
        "SELECT * FROM runs WHERE status = ANY(ARRAY['RUNNING', 'FAILED']) "
        "ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_status",
    ),
    # One status is an equality (store.list_runs): the index gives the order.
    "list by one status": (
        "SELECT * FROM runs WHERE status = 'RUNNING' "
        "ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_status_created",
    ),
    "list by workflow": (
        "SELECT * FROM runs WHERE workflow_name = 'w' "
        "ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_workflow_created",
    ),
    "list by label": ('SELECT * FROM runs WHERE labels @> \'{"a": "b"}\' LIMIT 10', "runs_labels"),
    "by updated": (
        "SELECT * FROM runs ORDER BY updated_at DESC, run_id DESC LIMIT 10",
        "runs_updated",
    ),
    # Every other ListRuns order (migration 0003), each direction, after a page token.
    "by started": (
        "SELECT * FROM runs WHERE started_at IS NOT NULL"
        " AND (started_at, run_id) > ('2026-01-01', 'x') ORDER BY started_at, run_id LIMIT 10",
        "runs_started",
    ),
    "by started, descending": (
        "SELECT * FROM runs WHERE started_at IS NOT NULL"
        " ORDER BY started_at DESC, run_id DESC LIMIT 10",
        "runs_started",
    ),
    "not started, last": (
        "SELECT * FROM runs WHERE started_at IS NULL AND run_id < 'x'"
        " ORDER BY run_id DESC LIMIT 10",
        "runs_unstarted",
    ),
    "by finished": (
        "SELECT * FROM runs WHERE finished_at IS NOT NULL"
        " AND (finished_at, run_id) > ('2026-01-01', 'x') ORDER BY finished_at, run_id LIMIT 10",
        "runs_finished",
    ),
    "by status": (
        "SELECT * FROM runs WHERE (status, run_id) > ('FAILED', 'x')"
        " ORDER BY status, run_id LIMIT 10",
        "runs_status",
    ),
    "by status, descending": (
        "SELECT * FROM runs ORDER BY status DESC, run_id DESC LIMIT 10",
        "runs_status",
    ),
    "by workflow name": (
        "SELECT * FROM runs WHERE (workflow_name, run_id) > ('w', 'x')"
        " ORDER BY workflow_name, run_id LIMIT 10",
        "runs_workflow",
    ),
    "by workflow name, descending": (
        "SELECT * FROM runs ORDER BY workflow_name DESC, run_id DESC LIMIT 10",
        "runs_workflow",
    ),
    "by duration": (
        "SELECT * FROM runs WHERE (finished_at - started_at) IS NOT NULL"
        " AND ((finished_at - started_at), run_id) > ('1 second'::interval, 'x')"
        " ORDER BY (finished_at - started_at), run_id LIMIT 10",
        "runs_duration",
    ),
    "by duration, descending": (
        "SELECT * FROM runs WHERE (finished_at - started_at) IS NOT NULL"
        " ORDER BY (finished_at - started_at) DESC, run_id DESC LIMIT 10",
        "runs_duration",
    ),
    "no duration, last": (
        "SELECT * FROM runs WHERE (finished_at - started_at) IS NULL AND run_id > 'x'"
        " ORDER BY run_id LIMIT 10",
        "runs_undurated",
    ),
    # Filters ListRuns and WatchRuns' snapshot apply: created_* bound the order's
    # index; text cannot be indexed (substrings): it filters the order's index
    # walk, which stops at the page's last row.
    "created between": (
        "SELECT * FROM runs WHERE created_at >= '2026-01-01' AND created_at < '2026-02-01'"
        " ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_created",
    ),
    "text": (
        "SELECT * FROM runs WHERE (strpos(run_id, 'ab') > 0 OR strpos(workflow_name, 'ab') > 0"
        " OR strpos(lower(error), lower('ab')) > 0) ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_created",
    ),
    "label, newest first": (
        'SELECT * FROM runs WHERE labels @> \'{"a": "b"}\''
        " ORDER BY created_at DESC, run_id DESC LIMIT 10",
        "runs_labels",
    ),
    "nodes of a run": ("SELECT * FROM nodes WHERE run_id = 'x' ORDER BY position", "nodes_pkey"),
    "replay": (
        "SELECT seq, body FROM events WHERE run_id = 'x' AND seq > 5 ORDER BY seq LIMIT 100",
        "events_pkey",
    ),
    "replay a node": (
        "SELECT seq, body FROM events WHERE run_id = 'x' AND seq > 0 "
        "AND node_id = 'n' ORDER BY seq LIMIT 100",
        "events_pkey",
    ),
    "expired leases": (
        "SELECT run_id FROM runs WHERE status = ANY(ARRAY['PENDING','RUNNING']) "
        "AND lease_expires_at < now()",
        "runs_",
    ),
    "latest workflow": (
        "SELECT * FROM workflows WHERE name = 'w' ORDER BY registered DESC LIMIT 1",
        "workflows_latest",
    ),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_api_query_has_an_index(server: Any, database_url: str, name: str) -> None:
    sql, index = QUERIES[name]
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
    assert index in plan and "Seq Scan" not in plan, plan


def test_start_up_objects_are_frozen_out_of_the_garbage_collectors_walks(server: Any) -> None:
    import gc

    from control_plane.server import GC_GEN0_THRESHOLD

    # What start-up allocated is never walked again (bench_control_plane
    # --only latency: no 20 ms full collections in the middle of a dispatch).
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] >= GC_GEN0_THRESHOLD


def test_a_timeout_error_raised_by_node_code_is_its_own_failure_not_the_node_timeout(
    client: Client,
) -> None:
    node = {
        "id": "t",
        "kind": "python",
        "params": {"callable": "sp_ui:raises_timeout"},
        "timeout_ms": 60_000,
    }
    run = client.wait(client.start_run({"name": "own-timeout", "nodes": [node]}), timeout=60)
    assert run.status == "FAILED"
    error = run.node("t").error
    assert "the upstream call timed out" in error and "timed out after" not in error
    assert "TimeoutError: the upstream call timed out" in run.node("t").traceback
