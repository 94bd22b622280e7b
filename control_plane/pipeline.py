"""The event pipeline: stamp, encode once, commit in batches, then fan out.

Every event gets its run's next seq, is encoded once to protobuf bytes and
queued with the row updates made alongside it. A writer task commits the
queue in one transaction every few milliseconds (COPY for events), then
publishes the committed events into the core_rs bus. Publishing only after
the commit means a live watcher never sees an event a crash could take back,
and replay-then-follow in WatchRun can never find a hole.

What can go wrong on the way, and what the writer does:

- A transient failure (connection lost, pool timeout, serialization failure,
  deadlock, admin shutdown, ...): the batch is kept and retried with backoff.
- A deterministic one (Postgres refuses the data: classes 22, 23 and 54, or
  psycopg cannot adapt a value): retrying cannot help. The batch is committed
  again run by run; a run whose part is still refused is tried once more with
  every value mended (`store.mend`), and if even that is refused the run is
  failed with a minimal update and an error event. Every other run commits
  as usual; waiters of `flush()` are released either way.
- A run whose lease another owner holds (with `set_owner`): nothing of it is
  written or published, and the scheduler hears of it (`on_lease_lost`).
- The writer task itself dies: `failure` says why, every `flush()` raises
  Unavailable at once, and `on_failure` tells the server (health NOT_SERVING).

Memory is bounded: past `max_pending_events` queued-but-uncommitted events,
`room()` waits and worker threads that emit block (`has_room`), until the
writer has caught up to half of that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from google.protobuf import struct_pb2

import core_rs
from control_plane.convert import run_to_proto
from control_plane.errors import Unavailable
from control_plane.store import Batch, EventRow, NodeRow, RunRow, Store, mend, now, storable
from statepipe_api.convert import json_depth_exceeds
from statepipe_api.v1 import statepipe_pb2 as pb

log = logging.getLogger(__name__)

RUNS_TOPIC = "runs"  # run summaries, for WatchRuns
BUSY_BATCH_EVENTS = 500  # a batch this large means events are pouring in
MAX_PAUSE_S = 0.02
DEFAULT_MAX_PENDING_EVENTS = 100_000
# Runs the pipeline writes nothing more for (lost or failed), remembered so that
# late writes for them are ignored; the oldest are forgotten past this many.
MAX_DROPPED_RUNS = 10_000
# SQLSTATE classes that say the data itself is refused: data exception,
# integrity constraint violation, program limit exceeded (index row too
# large, nesting too deep). The same batch would fail the same way forever.
DETERMINISTIC_SQLSTATE_CLASSES = ("22", "23", "54")
# Raised on our side while psycopg or json turns a value into SQL: the same
# value fails the same way again.
CLIENT_SIDE_DATA_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


def is_deterministic(err: BaseException) -> bool:
    """Whether committing the same batch again must fail the same way.

    Everything else (connection lost, pool timeout, serialization failure,
    deadlock, admin shutdown, disk full, ...) is worth retrying.
    """
    if isinstance(err, psycopg.Error):
        sqlstate = err.sqlstate
        if sqlstate:
            return sqlstate[:2] in DETERMINISTIC_SQLSTATE_CLASSES
        # Raised by psycopg itself, before anything reached the server: a
        # value it cannot adapt ("cannot adapt type", NUL in text).
        return isinstance(err, psycopg.DataError | psycopg.ProgrammingError)
    return isinstance(err, CLIENT_SIDE_DATA_ERRORS)


def db_message(err: BaseException) -> str:
    """One line for why Postgres (or psycopg) refused a write."""
    if isinstance(err, psycopg.Error) and err.diag.message_primary:
        text = err.diag.message_primary
        if err.diag.message_detail:
            text = f"{text} ({err.diag.message_detail})"
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(str(storable(text)).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _struct_bytes(data: dict[str, Any]) -> bytes:
    """`data` as an encoded Struct; mended (`storable`) only if protobuf refuses it.

    Mending every time would cost each event a walk of its data (a few tenths
    of a microsecond: measurable in dispatch latency); NaN and Infinity are
    valid protobuf doubles, and event bodies are bytes in Postgres, not jsonb.
    """
    struct = struct_pb2.Struct()
    if any(isinstance(v, dict | list | tuple) for v in data.values()) and json_depth_exceeds(data):
        # Deeper than the API's decoders read: cut it where it gets too deep.
        data = mend(data)
    try:
        struct.update(data)
    except (ValueError, TypeError):  # text that is not UTF-8 (a lone surrogate), ...
        struct.Clear()
        try:
            struct.update(storable(data))
        except (ValueError, TypeError) as err:
            struct.Clear()
            struct.update({"unserializable": repr(data)[:1000], "error": str(err)})
    return struct.SerializeToString()


def _text(value: Any) -> str:
    return storable(value if isinstance(value, str) else str(value))


class EventPipeline:
    """Stamps, encodes, commits and publishes events and row updates (module docstring).

    Args:
        flush_interval_ms: How long a batch may gather before it is written.
        max_batch_events: A batch this large is written without waiting.
        max_pending_events: Past this many events emitted but not committed
            yet, `room()` waits and `has_room` is cleared.
        on_failure: Called once, with the reason, if the writer task dies.
    """

    def __init__(
        self,
        store: Store,
        bus: core_rs.EventBus,
        *,
        flush_interval_ms: float = 2.0,
        max_batch_events: int = 20_000,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.flush_interval = flush_interval_ms / 1000
        self.max_batch_events = max_batch_events
        self.max_pending_events = max(1, max_pending_events)
        self.on_failure = on_failure
        self._batch = Batch()
        self._to_publish: list[tuple[str, bytes]] = []
        self._to_close: list[tuple[str, int]] = []
        self._waiters: list[asyncio.Future[None]] = []
        # Waiters of the batch being committed now.
        self._committing: list[asyncio.Future[None]] = []
        # The writer has taken a batch and not yet published it.
        self._in_flight = False
        self._seqs: dict[str, int] = {}
        # Open WatchRuns streams; run summaries are only built while there are some.
        self.summary_watchers = 0
        self._generation: dict[str, int] = {}
        # open_run calls so far, and the count at each run's last one: a run
        # opened again after a batch was taken is a new incarnation that the
        # batch's outcome (a lost lease) must not end.
        self._opens = 0
        self._opened_at: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Why the writer stopped, once it has (None while it runs).
        self.failure: str | None = None
        # Backpressure: events emitted and not committed yet. `has_room` is for
        # worker threads (NodeContext), `_room` the same for coroutines.
        self._pending = 0
        self.has_room = threading.Event()
        self.has_room.set()
        self._room = asyncio.Event()
        self._room.set()
        # Lease fencing (set_owner).
        self._owner: str | None = None
        self._on_lease_lost: Callable[[list[str]], None] | None = None
        self._dropped: dict[str, None] = {}
        # Runs the writer failed, for the next run summaries (WatchRuns).
        self._failed_rows: list[RunRow] = []

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-writer")
        self._task.add_done_callback(self._writer_ended)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            # A writer that died already said so (failure, on_failure).
            await asyncio.gather(self._task, return_exceptions=True)

    def set_owner(self, owner: str, on_lease_lost: Callable[[list[str]], None]) -> None:
        """Fences every later commit on `owner`'s leases (Store.commit).

        `on_lease_lost(run_ids)` is called once per batch, on the event loop,
        with the runs this pipeline will write nothing more for: their lease
        is held by another owner or by nobody, including runs the writer
        failed itself because their data could not be stored (that failure
        gives up the lease). Their queued rows and events are dropped, their
        live topics closed; later writes for them are ignored until the run
        is opened again (`open_run`).
        """
        self._owner = owner
        self._on_lease_lost = on_lease_lost

    # ----------------------------------------------------------------- input

    def open_run(self, run_id: str, last_seq: int) -> None:
        """Seqs of `run_id` continue after `last_seq` (the stored maximum)."""
        self._dropped.pop(run_id, None)
        self._seqs[run_id] = max(last_seq, self._seqs.get(run_id, 0))
        # A close requested before this (re)open must not end the new topic.
        self._generation[run_id] = self._generation.get(run_id, 0) + 1
        self._opens += 1
        self._opened_at[run_id] = self._opens
        self.bus.open(run_id, self._seqs[run_id])

    def is_open(self, run_id: str) -> bool:
        """Whether events can be emitted for the run (it was opened or created here)."""
        return run_id in self._seqs

    def last_seq(self, run_id: str) -> int:
        return self._seqs.get(run_id, 0)

    def emit(
        self,
        run_id: str,
        kind: str,
        *,
        node_id: str = "",
        attempt: int = 0,
        status: str = "",
        message: str = "",
        level: str = "",
        data: dict[str, Any] | None = None,
        ts: dt.datetime | None = None,
    ) -> int:
        """Queues an event; returns its seq (0: the run is lost or failed, ignored).

        Never blocks: a coroutine that emits a lot should `await room()` now
        and then; worker threads are held back by `has_room` (NodeContext).
        """
        if run_id in self._dropped:
            return 0
        seq = self._seqs[run_id] + 1
        ns = time.time_ns() if ts is None else int(ts.timestamp() * 1e6) * 1000
        body = _struct_bytes(data) if data else None
        try:
            frame, copy_row = core_rs.encode_event(
                run_id, seq, ns, kind, node_id, attempt, status, message, level, body
            )
        except (UnicodeEncodeError, TypeError):
            # Text that is not UTF-8 (a lone surrogate) or not text at all.
            frame, copy_row = core_rs.encode_event(
                run_id,
                seq,
                ns,
                _text(kind),
                _text(node_id),
                int(attempt),
                _text(status),
                _text(message),
                _text(level),
                body,
            )
        self._seqs[run_id] = seq
        self._batch.events.append(EventRow(run_id, seq, copy_row))
        self._to_publish.append((run_id, frame))
        self._pending += 1
        if self._pending >= self.max_pending_events and self.has_room.is_set():
            self.has_room.clear()
            self._room.clear()
        self._kick()
        return seq

    def new_run(self, run: RunRow, nodes: list[NodeRow]) -> None:
        self._dropped.pop(run.run_id, None)
        self._seqs.setdefault(run.run_id, 0)
        self._batch.new_runs.append(
            (dataclasses.replace(run), [dataclasses.replace(n) for n in nodes])
        )
        self._kick()

    def put_run(self, run: RunRow) -> None:
        if run.run_id in self._dropped:
            return
        run.updated_at = now()
        run.last_seq = self._seqs.get(run.run_id, run.last_seq)
        self._batch.runs[run.run_id] = run  # copied when the batch is taken
        self._kick()

    def put_node(self, node: NodeRow) -> None:
        if node.run_id in self._dropped:
            return
        self._batch.nodes[(node.run_id, node.node_id)] = node  # copied when the batch is taken
        self._kick()

    def close_run(self, run_id: str) -> None:
        """Ends the run's live topic once everything emitted so far is published."""
        self._to_close.append((run_id, self._generation.get(run_id, 0)))
        self._kick()

    async def flush(self) -> None:
        """Returns once everything queued so far is committed and published.

        Raises:
            Unavailable: the writer has stopped (`failure` says why).
        """
        if self.failure is not None:
            raise self._unavailable()
        future = asyncio.get_running_loop().create_future()
        if self._batch or self._to_close:
            self._waiters.append(future)
            self._kick()
        elif self._in_flight:
            # The writer took everything queued and is committing it now.
            self._committing.append(future)
        else:
            return
        await future

    async def room(self) -> None:
        """Returns at once while fewer than `max_pending_events` events wait for
        the writer; past that, once it has committed down to half of them.

        Only callers that await it are held back: worker threads wait on
        `has_room` (NodeContext does), but async node code that emits on the
        event loop without awaiting cannot be throttled here; what it queues
        is bounded by its own node. Returns at once if the writer has stopped
        (`flush()` then says so).
        """
        while not self.has_room.is_set() and self.failure is None:
            await self._room.wait()

    @property
    def pending_events(self) -> int:
        """Events emitted and not committed (or dropped) yet."""
        return self._pending

    def _kick(self) -> None:
        self._wake.set()

    def _unavailable(self) -> Unavailable:
        return Unavailable(f"the event writer stopped: {self.failure}")

    # ---------------------------------------------------------------- writer

    async def _run(self) -> None:
        pause = self.flush_interval
        while True:
            await self._wake.wait()
            if (
                len(self._batch.events) < self.max_batch_events
                and self.has_room.is_set()
                and not self._stopping
            ):
                # Let a burst accumulate: one transaction per few milliseconds,
                # a little longer while events pour in (fewer, larger commits).
                await asyncio.sleep(pause)
            self._wake.clear()
            batch, self._batch = self._batch, Batch()
            # Rows are queued by reference (a node changes state several times
            # per batch); the batch writes one copy of each, taken now.
            batch.runs = {k: dataclasses.replace(r) for k, r in batch.runs.items()}
            batch.nodes = {k: dataclasses.replace(n) for k, n in batch.nodes.items()}
            publish, self._to_publish = self._to_publish, []
            closing, self._to_close = self._to_close, []
            self._committing, self._waiters = self._waiters, []
            self._in_flight = True
            dropped: set[str] = set()
            if batch:
                dropped = await self._commit(batch, self._opens)
            self._committed(len(batch.events))
            if dropped:
                publish = [p for p in publish if p[0] not in dropped]
            busy = len(batch.events) >= BUSY_BATCH_EVENTS
            pause = min(pause * 2, MAX_PAUSE_S) if busy else self.flush_interval
            await self._publish(batch, publish, closing, dropped)
            waiters, self._committing = self._committing, []
            self._in_flight = False
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._stopping and not self._batch and not self._waiters:
                return

    def _committed(self, count: int) -> None:
        """`count` events left the queue (committed or dropped)."""
        self._pending -= count
        if not self.has_room.is_set() and self._pending <= self.max_pending_events // 2:
            self.has_room.set()
            self._room.set()

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            why = "its task was cancelled"
        elif task.exception() is not None:
            err = task.exception()
            why = f"{type(err).__name__}: {err}"
            log.error("the event writer died", exc_info=err)
        elif self._stopping:
            return  # stopped as asked, with nothing left to write
        else:
            why = "its task returned while the pipeline was running"
        self._fail(why)

    def _fail(self, why: str) -> None:
        """The writer is gone: nothing queued will be committed any more."""
        if self.failure is not None:
            return
        self.failure = why
        waiters, self._committing, self._waiters = self._committing + self._waiters, [], []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(self._unavailable())
        # Nobody may wait for room that will never come.
        self.has_room.set()
        self._room.set()
        if self.on_failure is not None and not self._stopping:
            try:
                self.on_failure(why)
            except Exception:
                log.exception("the event writer's on_failure hook failed")

    async def _commit(self, batch: Batch, opens: int) -> set[str]:
        """Commits the batch; returns the runs it wrote nothing (more) for: lost or
        failed. `opens`: the open_run count when the batch was taken."""
        try:
            lost = await self._write(batch)
            failed: list[str] = []
        except Exception as err:  # deterministic: _write retries the rest
            log.warning(
                "a batch of %d events for %d runs was refused (%s); committing it run by run",
                len(batch.events),
                len(batch.run_ids()),
                db_message(err),
            )
            lost, failed = await self._commit_by_run(batch)
        dropped = [*lost, *failed]
        # A run opened again since the batch was taken (its lease lost and
        # claimed back meanwhile) keeps its new state; only this batch's
        # writes for it are gone.
        ended = [run_id for run_id in dropped if self._opened_at.get(run_id, 0) <= opens]
        if ended:
            self._drop(ended)
            if self._on_lease_lost is not None:
                try:
                    self._on_lease_lost(ended)
                except Exception:
                    log.exception("the on_lease_lost hook failed for %s", ended[:10])
        return set(dropped)

    async def _write(self, batch: Batch) -> list[str]:
        """Store.commit, retried with backoff while failures are transient.

        Raises:
            Exception: a deterministic failure (is_deterministic).
        """
        delay = 0.05
        while True:
            try:
                return await self.store.commit(batch, self._owner)
            except Exception as err:
                if is_deterministic(err):
                    raise
                # Nothing is dropped: keep the batch and try again.
                log.exception(
                    "committing %d events failed; retrying in %.2fs", len(batch.events), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit_by_run(self, batch: Batch) -> tuple[list[str], list[str]]:
        """One transaction per run; returns the runs lost and the runs failed."""
        lost: list[str] = []
        failed: list[str] = []
        for run_id, part in batch.by_run().items():
            try:
                lost += await self._write(part)
                continue
            except Exception as err:
                first = err
            try:
                lost += await self._write(part.mended())
                log.warning("run %s: stored with values mended (%s)", run_id, db_message(first))
                continue
            except Exception as err:
                refused = err
            message = f"internal: the run's data could not be stored: {db_message(refused)}"
            log.error("run %s: failing it: %s", run_id, message)
            failed.append(run_id)
            try:
                failure = await self._failure(run_id, part, message)
                written = await self._write(failure)
            except Exception:
                log.exception("run %s: even its failure could not be stored", run_id)
                continue
            lost += written
            if not written and self.summary_watchers:  # WatchRuns: the run ended
                try:
                    row = await self.store.get_run(run_id)
                except Exception:
                    log.warning("run %s: no summary of its failure", run_id, exc_info=True)
                else:
                    if row is not None:
                        self._failed_rows.append(row)
        return lost, failed

    async def _failure(self, run_id: str, part: Batch, message: str) -> Batch:
        """The minimal write that fails a run: FAILED, the error, no lease, one event."""
        try:
            seq = await self.store.max_seq(run_id) + 1
        except Exception:
            seq = min((e.seq for e in part.events), default=1)
        _, copy_row = core_rs.encode_event(
            run_id, seq, time.time_ns(), "run_status", "", 0, "FAILED", message, "error", None
        )
        failure = Batch(events=[EventRow(run_id, seq, copy_row)])
        new = next((run for run, _ in part.new_runs), None)
        if new is None:
            failure.failures[run_id] = message
        else:
            # Never stored: the run row alone, with nothing that may have been refused.
            t = now()
            failure.new_runs.append(
                (
                    dataclasses.replace(
                        new,
                        status="FAILED",
                        input=None,
                        output=None,
                        error=message,
                        labels={},
                        idempotency_key=None,
                        node_counts={},
                        last_seq=seq,
                        lease_owner=None,
                        finished_at=t,
                        updated_at=t,
                    ),
                    [],
                )
            )
        return failure

    def _drop(self, run_ids: list[str]) -> None:
        """Forgets runs this pipeline writes nothing more for; closes their topics."""
        dropped = set(run_ids)
        for run_id in run_ids:
            self._seqs.pop(run_id, None)
            self._generation.pop(run_id, None)
            self._opened_at.pop(run_id, None)
            self.bus.close(run_id)
            self._dropped[run_id] = None
        while len(self._dropped) > MAX_DROPPED_RUNS:
            del self._dropped[next(iter(self._dropped))]
        # What was queued for them meanwhile goes too.
        queued = self._batch
        if any(run_id in dropped for run_id in queued.run_ids()):
            self._batch = queued.without(dropped)
            self._committed(len(queued.events) - len(self._batch.events))
            self._to_publish = [p for p in self._to_publish if p[0] not in dropped]

    async def _publish(
        self,
        batch: Batch,
        publish: list[tuple[str, bytes]],
        closing: list[tuple[str, int]],
        dropped: set[str],
    ) -> None:
        publish_event = self.bus.publish
        # A large batch goes out in slices with a pause between them, so live
        # subscribers on this loop read each slice before the ring wraps.
        slice_size = max(1, self.bus.capacity // 4)
        for start in range(0, len(publish), slice_size):
            if start:
                await asyncio.sleep(0)  # wakes parked subscribers
                await asyncio.sleep(0)  # lets them read
            for run_id, body in publish[start : start + slice_size]:
                publish_event(run_id, body)
        for run_id, generation in closing:
            if self._generation.get(run_id, 0) == generation:
                self.bus.close(run_id)
                self._seqs.pop(run_id, None)
                self._generation.pop(run_id, None)
                self._opened_at.pop(run_id, None)
        failed_rows, self._failed_rows = self._failed_rows, []
        if self.summary_watchers:  # build run summaries only for WatchRuns followers
            self._publish_summaries(batch, dropped, failed_rows)

    def _publish_summaries(
        self, batch: Batch, dropped: set[str], failed_rows: list[RunRow]
    ) -> None:
        last_seqs: dict[str, int] = {}
        for event in batch.events:
            last_seqs[event.run_id] = max(last_seqs.get(event.run_id, 0), event.seq)
        for run in [run for run, _ in batch.new_runs] + list(batch.runs.values()):
            if run.run_id in dropped:
                continue
            run.last_seq = max(run.last_seq, last_seqs.get(run.run_id, 0))
            self._publish_summary(run)
        for run in failed_rows:
            self._publish_summary(run)

    def _publish_summary(self, run: RunRow) -> None:
        try:
            message = run_to_proto(run)
        except Exception:  # a value protobuf refuses (text that is not UTF-8, ...)
            try:
                message = run_to_proto(_storable_run(run))
            except Exception:
                log.warning("run %s: no summary for WatchRuns", run.run_id, exc_info=True)
                return
        self.bus.publish(RUNS_TOPIC, pb.RunSummaryUpdate(run=message).SerializeToString())


def _storable_run(run: RunRow) -> RunRow:
    return dataclasses.replace(
        run,
        error=storable(run.error),
        input=storable(run.input),
        output=storable(run.output),
        labels=storable(run.labels),
        node_counts=storable(run.node_counts),
        usage=storable(run.usage),
    )
