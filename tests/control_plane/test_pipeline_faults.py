"""The event writer under bad data, a dead writer task, backpressure and lost leases.

Real things throughout: the embedded Postgres, the real Store and
EventPipeline (driven directly where a fault must reach the writer itself),
real control planes on port 0 with the real gRPC client. Postgres itself
holds the writer back where a test needs it to (a table lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sp_testing import py, wait_for

import core_rs
from control_plane.pipeline import EventPipeline, is_deterministic
from control_plane.store import NodeRow, RunRow, Store, storable
from executors.base import DRAIN_SLICE, OUTBOX_LIMIT, NodeContext, NodeTask
from statepipe.client import Client, StatepipeError
from statepipe_api.v1 import statepipe_pb2 as pb

THIS = __name__  # node functions below are `test_pipeline_faults:<name>`
SERVICE = "statepipe.v1.StatePipe"
REFUSED = "internal: the run's data could not be stored: "


# ------------------------------------------------- node functions (run by servers)


def lone_surrogate(ctx: Any) -> str:
    """What a model's output cut in the middle of a UTF-16 pair looks like."""
    return "half \ud800 a pair"


def not_a_number(ctx: Any) -> dict[str, Any]:
    return {"score": float("nan"), "ok": 1}


def logs_a_lone_surrogate(ctx: Any) -> str:
    ctx.log("model said \udfff here", note="and \ud800 here")
    return "logged"


# ------------------------------------------------------------------- helpers


def node(node_id: str, fn: str) -> dict[str, Any]:
    return {"id": node_id, "kind": "python", "params": {"callable": f"{THIS}:{fn}"}}


def run_row(run_id: str, owner: str | None = None) -> RunRow:
    return RunRow(
        run_id=run_id,
        workflow_name="faults",
        workflow_version="1",
        spec=b"",
        status="RUNNING",
        lease_owner=owner,
    )


def node_row(run_id: str, node_id: str = "a") -> NodeRow:
    return NodeRow(run_id=run_id, node_id=node_id, position=0, kind="python")


async def stored_events(store: Store, run_id: str) -> list[pb.Event]:
    rows = await store.list_events(run_id, limit=1_000_000, up_to_seq=10**9)
    return [pb.Event.FromString(body) for _, body in rows]


async def stored_seqs(store: Store, run_id: str) -> list[int]:
    return [seq for seq, _ in await store.list_events(run_id, limit=1_000_000, up_to_seq=10**9)]


@contextlib.asynccontextmanager
async def events_locked(database_url: str) -> AsyncIterator[None]:
    """Holds a lock that makes every COPY into events wait: the writer stalls."""
    conn = await psycopg.AsyncConnection.connect(database_url)
    try:
        await conn.execute("LOCK TABLE events IN SHARE MODE")
        yield
    finally:
        await conn.rollback()
        await conn.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def make_pipeline(store: Store) -> AsyncIterator[Any]:
    """Started pipelines on the real store; stopped at teardown."""
    made: list[EventPipeline] = []

    def make(**options: Any) -> EventPipeline:
        pipeline = EventPipeline(store, core_rs.EventBus(4096), **options)
        pipeline.start()
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.stop()


# ----------------------------------------------------------------- sanitizing


def test_storable_mends_what_postgres_refuses_and_keeps_the_rest() -> None:
    assert storable("plain") == "plain"
    assert storable("é ü 😀") == "é ü 😀"
    assert storable("a\x00b") == "a\ufffdb"
    assert storable("x\ud800y") == "x\ufffdy"
    assert storable("\ud83d\ude00") == "😀"  # a pair written as two halves joins
    assert storable({"k\udfff": ["\x00", 1.5, math.inf, -math.inf, math.nan, (1, "\ud800")]}) == {
        "k\ufffd": ["\ufffd", 1.5, None, None, None, [1, "\ufffd"]]
    }
    assert storable(None) is None and storable(True) is True and storable(7) == 7


def test_failures_are_sorted_into_transient_and_deterministic() -> None:
    transient = [
        psycopg.OperationalError("connection lost"),
        psycopg.errors.SerializationFailure(),
        psycopg.errors.DeadlockDetected(),
        psycopg.errors.AdminShutdown(),
        OSError("reset by peer"),
    ]
    deterministic = [
        psycopg.errors.InvalidTextRepresentation(),
        psycopg.errors.UniqueViolation(),
        psycopg.errors.ProgramLimitExceeded(),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        ValueError("Exceeds the limit (4300 digits) for integer string conversion"),
    ]
    assert [is_deterministic(e) for e in transient] == [False] * len(transient)
    assert [is_deterministic(e) for e in deterministic] == [True] * len(deterministic)


# --------------------------------------------- regression: one bad value, whole server


@pytest.mark.parametrize("fn", ["lone_surrogate", "not_a_number", "logs_a_lone_surrogate"])
def test_a_value_postgres_refuses_ends_its_run_and_the_server_keeps_serving(
    server: Any, fn: str
) -> None:
    with Client(server.address, timeout=10) as client:
        run_id = client.start_run({"name": f"bad-{fn}", "nodes": [node("bad", fn)]})
        run = client.wait(run_id, timeout=15)
        bad = run.node("bad")
        if fn == "lone_surrogate":
            assert run.status == "SUCCEEDED", run.error
            assert bad.output == "half \ufffd a pair"
        elif fn == "not_a_number":
            # Stored as null, or refused with a clear error: never a stuck writer.
            if bad.status == "SUCCEEDED":
                assert bad.output == {"score": None, "ok": 1}
            else:
                assert run.status == "FAILED" and "JSON" in bad.error, bad.error
        else:
            assert run.status == "SUCCEEDED", run.error
            [line] = [e for e in client.list_events(run_id) if e.kind == "log"]
            assert line.message == "model said \ufffd here"
            assert line.data == {"note": "and \ufffd here"}
        events = list(client.list_events(run_id, limit=None))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))

        started = time.monotonic()
        good = client.start_run({"name": "after", "nodes": [py("ok", args={"v": 1})]})
        assert client.wait(good, timeout=5).status == "SUCCEEDED"
        assert time.monotonic() - started < 5


# ------------------------------------------ a deterministic failure at the writer


@pytest.mark.parametrize("refusal", ["seq collision", "index row too large"])
async def test_a_refused_run_fails_alone_and_the_rest_of_its_batch_commits(
    store: Store, make_pipeline: Any, refusal: str
) -> None:
    lost: list[list[str]] = []
    pipeline = make_pipeline()
    pipeline.set_owner("A", lost.append)
    bad, good = run_row("bad", "A"), run_row("good", "A")
    for run in (bad, good):
        pipeline.new_run(run, [node_row(run.run_id)])
        pipeline.emit(run.run_id, "run_status", status="RUNNING")
    await pipeline.flush()

    if refusal == "seq collision":
        # Another writer stored seqs 2 and 3 of the run meanwhile.
        async with store.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO events (run_id, seq, ts, kind, body)"
                " VALUES ('bad', 2, now(), 'log', ''), ('bad', 3, now(), 'log', '')"
            )
    else:
        # Text no sanitizer can shorten, too large for the status index.
        bad.status = secrets.token_urlsafe(6000)
        pipeline.put_run(bad)
    pipeline.summary_watchers = 1  # as while a WatchRuns stream is open
    summaries = pipeline.bus.subscribe("runs", pipeline.bus.last_seq("runs") or 0)
    # One batch: both runs' events and rows.
    for i in range(5):
        pipeline.emit("bad", "log", message=f"bad {i}")
        pipeline.emit("good", "log", message=f"good {i}")
    running = node_row("good")
    running.status = "RUNNING"
    pipeline.put_node(running)
    good.output = {"fine": True}
    pipeline.put_run(good)
    await asyncio.wait_for(pipeline.flush(), 10)  # released, not retried forever

    assert await stored_seqs(store, "good") == list(range(1, 7))
    assert [n.status for n in await store.get_nodes("good")] == ["RUNNING"]
    stored_good = await store.get_run("good")
    assert stored_good is not None and stored_good.output == {"fine": True}

    failed = await store.get_run("bad")
    assert failed is not None and failed.status == "FAILED"
    assert failed.error.startswith(REFUSED), failed.error
    expected = "duplicate key" if refusal == "seq collision" else "index row size"
    assert expected in failed.error
    assert failed.lease_owner is None and failed.finished_at is not None
    seqs = await stored_seqs(store, "bad")
    assert seqs == list(range(1, len(seqs) + 1))
    events = await stored_events(store, "bad")
    last = events[-1]
    assert last.seq == seqs[-1]
    assert (last.kind, last.status, last.level, last.message) == (
        "run_status",
        "FAILED",
        "error",
        failed.error,
    )
    assert failed.last_seq == last.seq
    assert not [e for e in events if e.message.startswith("bad ")]  # refused, not half-written

    # Dashboards hear that it ended.
    updates = [pb.RunSummaryUpdate.FromString(body).run for _, body in summaries.poll(100) or []]
    assert [(r.run_id, r.status) for r in updates if r.run_id == "bad"] == [
        ("bad", pb.RunStatus.RUN_FAILED)
    ]
    assert [r.error for r in updates if r.run_id == "bad"] == [failed.error]

    # The pipeline writes nothing more for the failed run, and tells its owner once.
    assert lost == [["bad"]]
    assert not pipeline.is_open("bad") and pipeline.emit("bad", "log", message="late") == 0
    pipeline.emit("good", "log", message="later")
    await asyncio.wait_for(pipeline.flush(), 5)
    assert await stored_seqs(store, "good") == list(range(1, 8))
    assert len(await stored_events(store, "bad")) == len(events)


# ---------------------------------------------------------- a dead writer task


def test_a_dead_writer_makes_the_server_unavailable_at_once(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {"name": "serving", "nodes": [py("ok", args={"v": 1})]}
    with Client(server.address, timeout=10) as client:
        assert client.wait(client.start_run(spec), timeout=15).status == "SUCCEEDED"
        pipeline = server.plane.pipeline
        server.loop.call_soon_threadsafe(pipeline._task.cancel)
        wait_for(lambda: pipeline.failure is not None, timeout=2)
        assert pipeline.failure == "its task was cancelled"

        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE):
                response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING, service

        started = time.monotonic()
        with pytest.raises(StatepipeError) as refused:
            client.start_run(spec)
        assert time.monotonic() - started < 1
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "the event writer stopped: its task was cancelled" in refused.value.message
    assert any(
        r.levelname == "ERROR" and "event writer stopped" in r.getMessage() for r in caplog.records
    )


async def test_flush_waiting_on_a_writer_that_dies_raises(
    make_pipeline: Any, database_url: str
) -> None:
    from control_plane.errors import Unavailable

    pipeline = make_pipeline()
    pipeline.new_run(run_row("r"), [])
    async with events_locked(database_url):
        pipeline.emit("r", "log", message="stuck behind the lock")
        waiting = asyncio.create_task(pipeline.flush())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        pipeline._task.cancel()
        with pytest.raises(Unavailable, match="the event writer stopped: its task was cancelled"):
            await asyncio.wait_for(waiting, 1)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(pipeline.flush(), 1)


# ---------------------------------------------------------------- backpressure


async def test_room_waits_while_the_writer_is_behind(
    store: Store, make_pipeline: Any, database_url: str
) -> None:
    pipeline = make_pipeline(max_pending_events=10)
    pipeline.new_run(run_row("r"), [])
    await pipeline.flush()
    await asyncio.wait_for(pipeline.room(), 0.01)  # under the limit: at once
    async with events_locked(database_url):
        for i in range(12):
            pipeline.emit("r", "log", message=f"line {i}")
        assert not pipeline.has_room.is_set()
        waiting = asyncio.create_task(pipeline.room())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # nothing commits while the lock is held
    await asyncio.wait_for(waiting, 5)
    assert pipeline.has_room.is_set()
    await pipeline.flush()
    assert pipeline.pending_events == 0
    assert await stored_seqs(store, "r") == list(range(1, 13))


async def test_a_thread_that_emits_is_held_back_and_loses_nothing(
    store: Store, make_pipeline: Any, database_url: str
) -> None:
    limit, total = 100, 50_000
    pipeline = make_pipeline(max_pending_events=limit)
    pipeline.new_run(run_row("chatty"), [])
    await pipeline.flush()

    def sink(kind: str, fields: dict[str, Any]) -> None:
        pipeline.emit("chatty", kind, node_id="n", message=fields["message"])

    ctx = NodeContext(
        NodeTask("chatty", "n", "python", {}, 1, None),
        sink,
        asyncio.get_running_loop(),
        has_room=pipeline.has_room,
        room=pipeline.room,
    )
    sent = 0

    def work() -> None:
        nonlocal sent
        for i in range(total):
            ctx.token(f"{i} ")
            sent += 1

    worker = threading.Thread(target=work)
    async with events_locked(database_url):
        worker.start()
        await asyncio.sleep(0.5)
        assert not pipeline.has_room.is_set()
        held_at = sent
        await asyncio.sleep(0.3)
        assert sent == held_at < total  # the thread waits while nothing commits
        assert pipeline.pending_events < limit + OUTBOX_LIMIT + DRAIN_SLICE
    while worker.is_alive():
        await asyncio.sleep(0.01)
    ctx.flush()
    await asyncio.wait_for(pipeline.flush(), 30)
    assert await stored_seqs(store, "chatty") == list(range(1, total + 1))


def test_a_small_event_limit_slows_a_chatty_run_without_losing_events(server: Any) -> None:
    server.plane.pipeline.max_pending_events = 50
    with Client(server.address, timeout=10) as client:
        run_id = client.start_run(
            {"name": "chatty", "nodes": [py("talk", "many_tokens", args={"n": 3000})]}
        )
        assert client.wait(run_id, timeout=60).status == "SUCCEEDED"
        events = list(client.list_events(run_id, limit=None))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.message for e in events if e.kind == "token"] == [f"{i} " for i in range(3000)]
        good = client.start_run({"name": "after", "nodes": [py("ok", args={"v": 1})]})
        assert client.wait(good, timeout=5).status == "SUCCEEDED"


# ------------------------------------------------------------------- fencing


async def test_a_batch_writes_nothing_for_a_run_whose_lease_moved(
    store: Store, make_pipeline: Any
) -> None:
    lost_a: list[list[str]] = []
    lost_b: list[list[str]] = []
    a = make_pipeline()
    a.set_owner("A", lost_a.append)
    b = make_pipeline()
    b.set_owner("B", lost_b.append)
    taken, kept, finishing = run_row("taken", "A"), run_row("kept", "A"), run_row("finishing", "A")
    for run in (taken, kept, finishing):
        a.new_run(run, [node_row(run.run_id)])
        a.emit(run.run_id, "run_status", status="RUNNING")
    await a.flush()
    assert lost_a == []

    # B takes "taken" over (as claim_runs does once A's lease has expired).
    async with store.pool.connection() as conn:
        await conn.execute("UPDATE runs SET lease_owner = 'B' WHERE run_id = 'taken'")

    # A, not knowing yet, queues writes for all three runs in one batch.
    for run in (taken, kept):
        a.emit(run.run_id, "log", message="from A")
        row = node_row(run.run_id)
        row.status = "RUNNING"
        a.put_node(row)
        run.output = {"by": "A"}
        a.put_run(run)
    # A run's final write gives its lease up in the same update.
    finishing.status = "SUCCEEDED"
    finishing.lease_owner = None
    a.emit("finishing", "run_status", status="SUCCEEDED")
    a.put_run(finishing)
    await asyncio.wait_for(a.flush(), 5)

    assert lost_a == [["taken"]]
    stored = await store.get_run("taken")
    assert stored is not None
    assert (stored.status, stored.output, stored.lease_owner) == ("RUNNING", None, "B")
    assert [n.status for n in await store.get_nodes("taken")] == ["PENDING"]
    assert await stored_seqs(store, "taken") == [1]
    assert "taken" not in a.bus.topics()
    assert not a.is_open("taken") and a.emit("taken", "log", message="late") == 0

    stored = await store.get_run("kept")
    assert stored is not None and stored.output == {"by": "A"}
    assert [n.status for n in await store.get_nodes("kept")] == ["RUNNING"]
    assert await stored_seqs(store, "kept") == [1, 2]
    stored = await store.get_run("finishing")
    assert stored is not None
    assert (stored.status, stored.lease_owner) == ("SUCCEEDED", None)
    assert await stored_seqs(store, "finishing") == [1, 2]

    # B's writes land.
    b.open_run("taken", await store.max_seq("taken"))
    b.emit("taken", "log", message="from B")
    by_b = await store.get_run("taken")
    assert by_b is not None
    by_b.output = {"by": "B"}
    b.put_run(by_b)
    await asyncio.wait_for(b.flush(), 5)
    assert lost_b == []
    assert [e.message for e in await stored_events(store, "taken")] == ["", "from B"]
    stored = await store.get_run("taken")
    assert stored is not None and stored.output == {"by": "B"}

    # Once its lease is given up, a late write for the finished run is fenced off too.
    a.emit("finishing", "log", message="after the end")
    await asyncio.wait_for(a.flush(), 5)
    assert lost_a == [["taken"], ["finishing"]]
    assert await stored_seqs(store, "finishing") == [1, 2]


async def test_a_run_claimed_back_while_a_fenced_batch_commits_keeps_going(
    store: Store, make_pipeline: Any, database_url: str
) -> None:
    """The lease moves away and back while a batch is in flight: that batch's
    writes for the run are gone, the run's new incarnation is not ended."""
    lost: list[list[str]] = []
    a = make_pipeline()
    a.set_owner("A", lost.append)
    for run_id in ("r", "other"):
        a.new_run(run_row(run_id, "A"), [])
    await a.flush()
    async with store.pool.connection() as conn:
        await conn.execute("UPDATE runs SET lease_owner = 'B' WHERE run_id = 'r'")
    async with events_locked(database_url):
        a.emit("r", "log", message="stale")
        a.emit("other", "log", message="held up by the lock")
        in_flight = asyncio.create_task(a.flush())
        await asyncio.sleep(0.3)  # fenced (r lost), now waiting to COPY other's event
        assert not in_flight.done()
        async with store.pool.connection() as conn:
            await conn.execute("UPDATE runs SET lease_owner = 'A' WHERE run_id = 'r'")
        a.open_run("r", await store.max_seq("r"))  # claimed back: a new incarnation
        a.emit("r", "log", message="fresh")
    await asyncio.wait_for(in_flight, 5)
    await asyncio.wait_for(a.flush(), 5)
    assert lost == []
    assert a.is_open("r")
    assert [e.message for e in await stored_events(store, "r")] == ["fresh"]
    assert [e.message for e in await stored_events(store, "other")] == ["held up by the lock"]


# ---------------------------------------------------------------- nesting


def test_values_too_deep_for_the_api_never_make_a_run_unreadable(server: Any) -> None:
    """Protobuf's decoders stop at 100 message levels (about 33 JSON objects):
    a value that deep is refused or cut where it enters, never stored."""
    from statepipe_api.convert import MAX_JSON_DEPTH

    with Client(server.address) as client:
        run_id = client.start_run(
            {
                "name": "deep",
                "nodes": [
                    py("lists", "deep", args={"depth": 200}, retry={"max_attempts": 3}),
                    py("objects", "deep", args={"depth": 40, "kind": "dict"}),
                    py("fits", "deep", args={"depth": MAX_JSON_DEPTH, "kind": "dict"}),
                    py("logs", "deep_log", args={"depth": 100}),
                ],
            }
        )
        run = client.wait(run_id, timeout=30)  # readable: wait decodes it
        assert run.status == "FAILED"
        for node_id in ("lists", "objects"):
            node = run.node(node_id)
            assert node.status == "FAILED" and node.attempt == 1  # not retried
            assert f"more than {MAX_JSON_DEPTH} levels deep" in node.error
        assert run.node("fits").status == "SUCCEEDED"
        assert run.node("logs").status == "SUCCEEDED"
        events = list(client.list_events(run_id, limit=None))
        logged = next(e for e in events if e.kind == "log" and e.message == "deep data")
        text = json.dumps(logged.data)
        assert f"<nested deeper than {MAX_JSON_DEPTH} levels>" in text
        assert len(list(client.watch(run_id))) == len(events)
        # A run input that deep is refused before anything is stored.
        with pytest.raises(StatepipeError) as refused:
            client.start_run({"name": "deep-in", "nodes": [py("a")]}, _nested_input(30))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"input nests objects and arrays more than {MAX_JSON_DEPTH}" in str(refused.value)
        # So are params that deep (they come back as the node's input).
        with pytest.raises(StatepipeError) as refused:
            client.start_run(
                {"name": "deep-params", "nodes": [py("a", "echo", args={"x": _nested_input(30)})]}
            )
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "params nest objects and arrays" in str(refused.value)
        # And the server goes on.
        ok = client.start_run({"name": "after", "nodes": [py("a")]})
        assert client.wait(ok, timeout=10).status == "SUCCEEDED"


def _nested_input(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value
