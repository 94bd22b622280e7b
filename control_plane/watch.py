"""WatchRun: one run's events from any seq on, with no gap and no duplicate.

The same events live in two places: PostgreSQL holds all of them, the core_rs
bus only each run's last `capacity` ones, but it has them the moment they are
committed. A watch reads the first to catch up and the second to follow, as a
small state machine:

    REPLAY ──► LIVE ⇄ CATCH_UP          (LIVE ──► REPLAY when the topic ends)
       └──► DONE                        (the run is over: nothing more will come)

- REPLAY: subscribe to the bus *first*, then send the stored events up to the
  run's committed last seq, page by page, then go LIVE. If the run is over
  (final, and no actor holds it) and the watch does not follow forever, send
  what is stored and be DONE, without subscribing.
- LIVE: send what the bus delivers after the last seq sent. A subscriber that
  fell behind the ring (``core_rs.Lagged``) goes to CATCH_UP. When the topic
  closes (the run finished here), or nothing arrived for `IDLE_RECHECK_S` and
  the run is over, back to REPLAY, which sends what is left and decides
  between DONE and following again (a resumed run).
- CATCH_UP: send the gap from PostgreSQL, move the subscription past it, LIVE.

No gap: the bus publishes an event only once it is committed, and a run's
last seq is committed with its events, so everything after the last seq
read at REPLAY/CATCH_UP reaches the subscription made before that read (or
raises Lagged). No duplicate: the last seq sent only grows, and anything at or
below it is dropped. Memory stays bounded: one replay page or one bus read is
in hand at a time, and a lagging watcher costs a replay, not a buffer.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Iterable

import core_rs
from control_plane.errors import InvalidArgument, NotFound
from control_plane.store import Store
from statepipe_api.lifecycle import FINAL_RUN
from statepipe_api.v1 import statepipe_pb2 as pb

REPLAY_PAGE = 2000  # stored events read per query
IDLE_RECHECK_S = 5.0  # how often an idle live watch checks whether the run is over


class State(enum.Enum):
    REPLAY = "replay"
    LIVE = "live"
    CATCH_UP = "catch-up"
    DONE = "done"


async def watch_run(
    store: Store,
    bus: core_rs.EventBus,
    is_held: Callable[[str], bool],
    request: pb.WatchRunRequest,
) -> AsyncIterator[bytes]:
    """Serves one WatchRun request: encoded ``EventBatch`` messages.

    Args:
        store: Where the events are stored.
        bus: Where committed events are published live.
        is_held: Whether an actor of this control plane holds a run (it may
            still emit events, even if the run's status is final).
        request: The run, the seq to start after, the kinds, follow_forever.

    Raises:
        InvalidArgument: No run_id, or a negative after_seq.
        NotFound: The run does not exist.
    """
    if not request.run_id:
        raise InvalidArgument("run_id is required")
    if await store.get_run(request.run_id) is None:
        raise NotFound(f"run {request.run_id!r} not found")
    if request.after_seq < 0:
        raise InvalidArgument("after_seq must not be negative")
    watch = RunWatch(
        store,
        bus,
        is_held,
        request.run_id,
        after_seq=request.after_seq,
        kinds=request.kinds,
        follow_forever=request.follow_forever,
    )
    async for message in watch.messages():
        yield message


class RunWatch:
    """One watcher of one run (see the module's docstring for its states).

    Args:
        run_id: The run; it must exist.
        after_seq: Start with the event after this seq.
        kinds: Only events of these kinds; all when empty.
        follow_forever: Keep following after the run is over (it may resume).
    """

    def __init__(
        self,
        store: Store,
        bus: core_rs.EventBus,
        is_held: Callable[[str], bool],
        run_id: str,
        *,
        after_seq: int = 0,
        kinds: Iterable[str] = (),
        follow_forever: bool = False,
    ) -> None:
        self.store = store
        self.bus = bus
        self.is_held = is_held
        self.run_id = run_id
        self.kinds = frozenset(kinds)
        self.follow_forever = follow_forever
        self.state = State.REPLAY
        # The last seq sent, or passed over by the kinds filter: where the
        # watch continues, from either source.
        self.last_seq = after_seq
        self._sub: core_rs.Subscription | None = None

    async def messages(self) -> AsyncIterator[bytes]:
        """Encoded ``EventBatch`` messages of at most about 1 MiB, in seq order,
        built from the stored (or published) event bytes without decoding them."""
        steps = {
            State.REPLAY: self._replay,
            State.LIVE: self._live,
            State.CATCH_UP: self._catch_up,
        }
        while self.state is not State.DONE:
            async for message in steps[self.state]():
                yield message

    # ---------------------------------------------------------------- states

    async def _replay(self) -> AsyncIterator[bytes]:
        if not self.follow_forever and await self._run_is_over():
            # Nothing more will be published: what is stored is all there is.
            async for message in self._stored():
                yield message
            self.state = State.DONE
            return
        # Subscribe before reading, so nothing published meanwhile is missed.
        self._sub = self.bus.subscribe(self.run_id, self.last_seq)
        async for message in self._stored():
            yield message
        self._sub.seek(self.last_seq)
        self.state = State.LIVE

    async def _live(self) -> AsyncIterator[bytes]:
        sub = self._sub
        assert sub is not None, "LIVE comes after REPLAY subscribed"
        while True:
            try:
                async with asyncio.timeout(IDLE_RECHECK_S):
                    batch = await sub.next_batch()
            except TimeoutError:
                if not self.follow_forever and await self._run_is_over():
                    self.state = State.REPLAY  # sends what is left, then DONE
                    return
                continue
            except core_rs.Lagged:
                self.state = State.CATCH_UP
                return
            if batch is None:  # the topic closed: the run finished (or stopped) here
                self.state = State.REPLAY
                return
            frames = self._fresh(batch)
            if frames:
                for message in core_rs.join_event_batches(frames):
                    yield message

    async def _catch_up(self) -> AsyncIterator[bytes]:
        assert self._sub is not None, "CATCH_UP comes after LIVE"
        async for message in self._stored():
            yield message
        self._sub.seek(self.last_seq)
        self.state = State.LIVE

    # --------------------------------------------------------------- helpers

    async def _stored(self) -> AsyncIterator[bytes]:
        """The stored events after `last_seq`, up to the run's committed last
        seq, by seq range (seqs have no gaps: each page is one index range)."""
        run = await self.store.get_run(self.run_id)
        target = run.last_seq if run is not None else self.last_seq
        kinds = sorted(self.kinds)
        while self.last_seq < target:
            upper = min(self.last_seq + REPLAY_PAGE, target)
            rows = await self.store.list_events(
                self.run_id,
                after_seq=self.last_seq,
                up_to_seq=upper,
                limit=REPLAY_PAGE,
                kinds=kinds,
            )
            self.last_seq = upper
            if rows:
                for message in core_rs.frame_event_batches([body for _, body in rows]):
                    yield message

    def _fresh(self, batch: list[tuple[int, bytes]]) -> list[bytes]:
        """The frames of a bus read that were not sent yet and pass the kinds
        filter; moves `last_seq` past the whole read."""
        if not batch:
            return []
        if batch[0][0] <= self.last_seq:  # seqs ascend: only a replay's overlap
            batch = [item for item in batch if item[0] > self.last_seq]
            if not batch:
                return []
        self.last_seq = batch[-1][0]
        if self.kinds:
            return [frame for _, frame in batch if _kind_of(frame) in self.kinds]
        return [frame for _, frame in batch]

    async def _run_is_over(self) -> bool:
        """Final, and no actor here holds it: no event will be published any more."""
        run = await self.store.get_run(self.run_id)
        return run is not None and run.status in FINAL_RUN and not self.is_held(self.run_id)


def _kind_of(frame: bytes) -> str:
    return pb.EventBatch.FromString(frame).events[0].kind
