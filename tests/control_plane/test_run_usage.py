"""A run's usage: the sum of its nodes' numeric usage, in GetRun, ListRuns and
WatchRuns, stored with the run (it survives a restart and a takeover)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest
from sp_testing import py, wait_for

from statepipe.client import Client, Run

IN, OUT, COST = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "cost_usd"


def assert_usage(usage: dict[str, Any] | None, nodes: int) -> None:
    """`usage` is `nodes` times sp_nodes:metered's (10 in, 5 out, $0.001)."""
    assert usage is not None
    assert set(usage) == {IN, OUT, COST}
    assert (usage[IN], usage[OUT]) == (10 * nodes, 5 * nodes)
    assert isinstance(usage[IN], int) and isinstance(usage[OUT], int)
    assert usage[COST] == pytest.approx(0.001 * nodes)


def collect(stream: Any, until: Any, timeout: float = 30.0) -> list[Run]:
    """Runs from a watch_runs stream, read on a thread, up to the first `until(run)`."""
    items: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for run, _snapshot in stream:
                items.put(run)
                if until(run):
                    return
        except BaseException as err:
            items.put(err)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    runs: list[Run] = []
    while True:
        try:
            item = items.get(timeout=timeout)
        except queue.Empty:
            stream.close()
            raise AssertionError(f"no matching run within {timeout}s: {runs}") from None
        if isinstance(item, BaseException):
            raise item
        runs.append(item)
        if until(item):
            stream.close()
            thread.join(5)
            return runs


def test_a_runs_usage_sums_its_nodes_in_get_run_list_runs_and_watch_runs(client: Client) -> None:
    stream = client.watch_runs(workflow="metered")
    spec = {"name": "metered", "nodes": [py("a", "metered"), py("b", "metered", ["a"])]}
    run_id = client.start_run(spec)
    updates = collect(stream, lambda r: r.run_id == run_id and r.is_final)
    assert updates[-1].status == "SUCCEEDED"
    assert updates[-1].nodes == []
    assert_usage(updates[-1].usage, 2)
    assert_usage(updates[-1].to_dict()["usage"], 2)
    # Summaries before the end carry the total so far: never more, never less.
    assert {(r.usage or {}).get(IN) for r in updates if r.run_id == run_id} <= {None, 10, 20}

    run = client.get_run(run_id)
    assert_usage(run.usage, 2)
    assert [n.usage for n in run.nodes] == [{IN: 10, OUT: 5, COST: 0.001}] * 2
    shape = run.to_dict()
    assert list(shape).index("usage") == list(shape).index("node_counts") + 1
    assert_usage(shape["usage"], 2)

    (listed,) = client.list_runs(workflow="metered")
    assert listed.run_id == run_id and listed.nodes == []
    assert_usage(listed.usage, 2)
    assert_usage(listed.to_dict()["usage"], 2)


def test_a_run_whose_nodes_report_no_usage_has_none(client: Client) -> None:
    run = client.wait(
        client.start_run({"name": "plain", "nodes": [py("a", "echo"), py("b", "echo", ["a"])]}),
        timeout=30,
    )
    assert run.status == "SUCCEEDED"
    assert run.usage is None and not run.proto.HasField("usage")
    assert run.to_dict()["usage"] is None
    (listed,) = client.list_runs(workflow="plain")
    assert listed.usage is None and listed.to_dict()["usage"] is None


def test_a_node_retried_after_a_failure_counts_once(client: Client) -> None:
    spec = {
        "name": "flaky",
        "nodes": [
            py("a", "metered", args={"succeed_on": 2}, retry={"max_attempts": 3, "backoff_ms": 10}),
            py("b", "metered"),
        ],
    }
    run = client.wait(client.start_run(spec), timeout=30)
    assert run.status == "SUCCEEDED"
    assert run.node("a").attempt == 2
    assert run.node("a").usage == {IN: 10, OUT: 5, COST: 0.001}
    assert_usage(run.usage, 2)
    assert_usage(client.list_runs(workflow="flaky")[0].usage, 2)


def test_the_total_survives_a_restart_and_a_takeover_adds_to_it(make_server: Any) -> None:
    spec = {
        "name": "restarted",
        "nodes": [
            py("a", "metered"),
            py("s", "sleep", ["a"], args={"seconds": 1.0}),
            py("b", "metered", ["s"]),
        ],
    }
    first = make_server()
    with Client(first.address) as client:
        run_id = client.start_run(spec)
        wait_for(lambda: client.get_run(run_id).node("a").status == "SUCCEEDED", timeout=30)
        client.pause(run_id)  # b does not start
        wait_for(lambda: client.get_run(run_id).node("s").status == "SUCCEEDED", timeout=30)
        assert_usage(client.get_run(run_id).usage, 1)
    first.stop()

    second = make_server()
    with Client(second.address) as client:
        stored = client.get_run(run_id)  # read from the database: no actor holds it
        assert stored.status == "PAUSED"
        assert run_id not in second.plane.scheduler.actors
        assert_usage(stored.usage, 1)
        assert_usage(client.list_runs(workflow="restarted")[0].usage, 1)
        client.resume(run_id)
        run = client.wait(run_id, timeout=30)
        assert run.status == "SUCCEEDED"
        assert_usage(run.usage, 2)
    second.stop()

    third = make_server()
    with Client(third.address) as client:
        assert_usage(client.get_run(run_id).usage, 2)


def test_the_total_moves_by_a_nodes_old_and_new_usage() -> None:
    from control_plane.usage import adjusted, total

    nodes = [{IN: 10, "model": "x", "ok": True, "nested": {"n": 1}}, {IN: 5, COST: 0.5}, None]
    assert total(nodes) == {IN: 15, COST: 0.5}
    assert total([None, {}, {"model": "x"}]) is None
    run = total(nodes)
    # A node's usage replaced: the total moves by the difference, ints stay ints.
    run = adjusted(run, {IN: 5, COST: 0.5}, {IN: 7, COST: 0.25, OUT: 3}, [nodes[0]])
    assert run == {IN: 17, COST: 0.25, OUT: 3} and isinstance(run[IN], int)
    # A key no node reports any more leaves the total; one another node reports stays.
    assert adjusted(run, {IN: 7, COST: 0.25, OUT: 3}, {IN: 1}, [nodes[0]]) == {IN: 11}
    assert adjusted({IN: 10}, {IN: 10}, None, [{}]) is None
    assert adjusted({IN: 10, OUT: 0}, {IN: 10}, None, [{IN: 0}]) == {IN: 0, OUT: 0}


async def test_migration_0004_gives_runs_stored_before_it_their_nodes_total(
    database_url: str,
) -> None:
    from control_plane.store import Batch, NodeRow, RunRow, Store

    store = await Store.open(database_url)
    try:
        run = RunRow(
            run_id="old", workflow_name="w", workflow_version="1", spec=b"", status="RUNNING"
        )
        nodes = [
            NodeRow(run_id="old", node_id=f"n{i}", position=i, kind="python", usage=usage)
            for i, usage in enumerate(
                [{IN: 10, COST: 0.001, "model": "x"}, {IN: 5, COST: 0.001}, None]
            )
        ]
        bare = RunRow(
            run_id="bare", workflow_name="w", workflow_version="1", spec=b"", status="RUNNING"
        )
        await store.commit(Batch(new_runs=[(run, nodes), (bare, [])]))
        async with store.pool.connection() as conn:  # the database as 0003 left it
            await conn.execute("ALTER TABLE runs DROP COLUMN usage")
            await conn.execute("DELETE FROM schema_migrations WHERE version = 4")
        assert await store.migrate() == [4]
        old, none = await store.get_run("old"), await store.get_run("bare")
        assert old is not None and none is not None
        assert old.usage == {IN: 15, COST: 0.002} and isinstance(old.usage[IN], int)
        assert none.usage is None
    finally:
        await store.close()


@pytest.mark.both_executors
def test_a_nodes_final_event_carries_its_usage(client: Client) -> None:
    run = client.wait(
        client.start_run({"name": "final-usage", "nodes": [py("m", "metered", args={})]}),
        timeout=60,
    )
    assert run.status == "SUCCEEDED"
    [done] = [
        e for e in client.watch(run.run_id) if e.kind == "node_status" and e.status == "SUCCEEDED"
    ]
    assert done.data is not None
    assert_usage(done.data["usage"], 1)
    assert done.data["usage"] == run.node("m").usage
