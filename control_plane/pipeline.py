"""The event pipeline: stamp, encode once, commit in batches, then fan out.

Every event gets its run's next seq, is encoded once to protobuf bytes and
queued with the row updates made alongside it. A writer task commits the
queue in one transaction every few milliseconds (COPY for events), then
publishes the committed events into the core_rs bus. Publishing only after
the commit means a live watcher never sees an event a crash could take back,
and replay-then-follow in WatchRun can never find a hole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any

from google.protobuf import struct_pb2

import core_rs
from control_plane.convert import run_to_proto
from control_plane.store import Batch, EventRow, NodeRow, RunRow, Store, now
from statepipe_api.v1 import statepipe_pb2 as pb

log = logging.getLogger(__name__)

RUNS_TOPIC = "runs"  # run summaries, for WatchRuns
BUSY_BATCH_EVENTS = 500  # a batch this large means events are pouring in
MAX_PAUSE_S = 0.02


def _struct_bytes(data: dict[str, Any]) -> bytes:
    struct = struct_pb2.Struct()
    try:
        struct.update(data)
    except (ValueError, TypeError) as err:
        struct.Clear()
        struct.update({"unserializable": repr(data)[:1000], "error": str(err)})
    return struct.SerializeToString()


class EventPipeline:
    def __init__(
        self,
        store: Store,
        bus: core_rs.EventBus,
        *,
        flush_interval_ms: float = 2.0,
        max_batch_events: int = 20_000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.flush_interval = flush_interval_ms / 1000
        self.max_batch_events = max_batch_events
        self._batch = Batch()
        self._to_publish: list[tuple[str, bytes]] = []
        self._to_close: list[tuple[str, int]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._seqs: dict[str, int] = {}
        # Open WatchRuns streams; run summaries are only built while there are some.
        self.summary_watchers = 0
        self._generation: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-writer")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task

    # ----------------------------------------------------------------- input

    def open_run(self, run_id: str, last_seq: int) -> None:
        """Seqs of `run_id` continue after `last_seq` (the stored maximum)."""
        self._seqs[run_id] = max(last_seq, self._seqs.get(run_id, 0))
        # A close requested before this (re)open must not end the new topic.
        self._generation[run_id] = self._generation.get(run_id, 0) + 1
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
        seq = self._seqs[run_id] + 1
        self._seqs[run_id] = seq
        ns = time.time_ns() if ts is None else int(ts.timestamp() * 1e6) * 1000
        frame, copy_row = core_rs.encode_event(
            run_id,
            seq,
            ns,
            kind,
            node_id,
            attempt,
            status,
            message,
            level,
            _struct_bytes(data) if data else None,
        )
        self._batch.events.append(EventRow(run_id, seq, copy_row))
        self._to_publish.append((run_id, frame))
        self._kick()
        return seq

    def new_run(self, run: RunRow, nodes: list[NodeRow]) -> None:
        self._seqs.setdefault(run.run_id, 0)
        self._batch.new_runs.append(
            (dataclasses.replace(run), [dataclasses.replace(n) for n in nodes])
        )
        self._kick()

    def put_run(self, run: RunRow) -> None:
        run.updated_at = now()
        run.last_seq = self._seqs.get(run.run_id, run.last_seq)
        self._batch.runs[run.run_id] = run  # copied when the batch is taken
        self._kick()

    def put_node(self, node: NodeRow) -> None:
        self._batch.nodes[(node.run_id, node.node_id)] = node  # copied when the batch is taken
        self._kick()

    def close_run(self, run_id: str) -> None:
        """Ends the run's live topic once everything emitted so far is published."""
        self._to_close.append((run_id, self._generation.get(run_id, 0)))
        self._kick()

    async def flush(self) -> None:
        """Returns once everything queued so far is committed and published."""
        if not (self._batch or self._to_close):
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._kick()
        await future

    def _kick(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- writer

    async def _run(self) -> None:
        pause = self.flush_interval
        while True:
            await self._wake.wait()
            if len(self._batch.events) < self.max_batch_events and not self._stopping:
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
            waiters, self._waiters = self._waiters, []
            if batch:
                await self._commit(batch)
            busy = len(batch.events) >= BUSY_BATCH_EVENTS
            pause = min(pause * 2, MAX_PAUSE_S) if busy else self.flush_interval
            await self._publish(batch, publish, closing)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._stopping and not self._batch and not self._waiters:
                return

    async def _commit(self, batch: Batch) -> None:
        delay = 0.05
        while True:
            try:
                await self.store.commit(batch)
                return
            except Exception:
                # Nothing is dropped: keep the batch and try again.
                log.exception(
                    "committing %d events failed; retrying in %.2fs", len(batch.events), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _publish(
        self, batch: Batch, publish: list[tuple[str, bytes]], closing: list[tuple[str, int]]
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
        if self.summary_watchers:  # build run summaries only for WatchRuns followers
            self._publish_summaries(batch)

    def _publish_summaries(self, batch: Batch) -> None:
        last_seqs: dict[str, int] = {}
        for event in batch.events:
            last_seqs[event.run_id] = max(last_seqs.get(event.run_id, 0), event.seq)
        for run in [run for run, _ in batch.new_runs] + list(batch.runs.values()):
            run.last_seq = max(run.last_seq, last_seqs.get(run.run_id, 0))
            update = pb.RunSummaryUpdate(run=run_to_proto(run))
            self.bus.publish(RUNS_TOPIC, update.SerializeToString())
