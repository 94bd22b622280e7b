"""The asyncio side of the event bus.

Waiting subscribers park no thread: each event loop gets one native
``Notifier`` whose descriptor the loop watches (``add_reader``). A subscription
with nothing to read parks a token on its topic; a publish (from any thread)
wakes the notifier, and the loop resolves the futures of the woken tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import AsyncIterator, Iterable

from core_rs import _core

Batch = list[tuple[int, bytes]]


class _LoopWaker:
    """Resolves the futures of the subscriptions parked by one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.notifier = _core.Notifier()
        self.futures: dict[int, asyncio.Future[None]] = {}
        self.tokens = itertools.count(1)
        loop.add_reader(self.notifier.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        futures = self.futures
        for token in self.notifier.take():
            future = futures.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)


def _waker_for(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = _LoopWaker(loop)
    return waker


class Subscription:
    """A reader of one topic, from a given seq on.

    Iterate it with ``async for batch in sub`` to receive lists of
    ``(seq, data)`` tuples in seq order; the iteration ends when the topic is
    closed and everything published before the close was read. Reading raises
    ``core_rs.Lagged`` when the subscriber fell behind the topic's ring: replay
    the missing seqs from elsewhere, then ``seek`` past them.
    """

    __slots__ = ("_native", "max_events")

    def __init__(self, native: _core.Subscription, max_events: int) -> None:
        self._native = native
        self.max_events = max_events

    @property
    def topic(self) -> str:
        return self._native.topic

    @property
    def position(self) -> int:
        """The last seq delivered."""
        return self._native.position

    def seek(self, after_seq: int) -> None:
        """Continue with the event after ``after_seq``."""
        self._native.seek(after_seq)

    def poll(self, max_events: int | None = None) -> Batch | None:
        """Reads without waiting: events, ``[]`` if nothing is new, ``None`` once closed."""
        return self._native.poll(self.max_events if max_events is None else max_events)

    def wait(self, timeout_ms: int) -> bool:
        """Blocks this thread (GIL released) until there is something to read."""
        return self._native.wait(timeout_ms)

    async def next_batch(self, max_events: int | None = None) -> Batch | None:
        """Waits for the next events; ``None`` once the topic is closed and drained."""
        limit = self.max_events if max_events is None else max_events
        loop = asyncio.get_running_loop()
        waker = _waker_for(loop)
        while True:
            token = next(waker.tokens)
            batch = self._native.poll_or_park(limit, waker.notifier, token)
            if batch is None or batch:
                return batch
            future = loop.create_future()
            waker.futures[token] = future
            try:
                await future
            except BaseException:
                # Cancelled or timed out: withdraw the parking, so idle topics
                # do not collect waiters that gave up.
                self._native.unpark(waker.notifier, token)
                raise
            finally:
                waker.futures.pop(token, None)

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self

    async def __anext__(self) -> Batch:
        batch = await self.next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch


class EventBus:
    """Topics of byte events with gap-free seqs, fanned out to subscribers.

    Each topic keeps its last ``capacity`` events in a ring; publishing never
    waits for a subscriber. Safe to publish from several threads.

    Args:
        capacity: events each topic keeps for subscribers that read late.
    """

    __slots__ = (
        "_native",
        "buffered",
        "close",
        "last_seq",
        "open",
        "publish",
        "publish_many",
        "topics",
    )

    def __init__(self, capacity: int = _core.DEFAULT_CAPACITY) -> None:
        self._native = _core.EventBus(capacity)
        native = self._native
        # Bound native methods: no Python frame on the hot path.
        self.publish = native.publish
        self.publish_many = native.publish_many
        self.open = native.open
        self.close = native.close
        self.last_seq = native.last_seq
        self.topics = native.topics
        self.buffered = native.buffered

    @property
    def capacity(self) -> int:
        return self._native.capacity

    def subscribe(self, topic: str, after_seq: int = 0, *, max_events: int = 1024) -> Subscription:
        """A subscription that starts with the event after ``after_seq``."""
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        return Subscription(self._native.subscribe(topic, after_seq), max_events)

    def publish_iter(self, topic: str, items: Iterable[bytes]) -> int:
        """Publishes every item of an iterable; returns the last seq."""
        return self._native.publish_many(topic, list(items))
