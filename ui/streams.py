"""Server streams that survive a lost connection: reconnect with backoff and resume.

A page owns one :class:`Connection`; every stream it follows reports to it, so the
frame's banner shows while the control plane is unreachable and hides once each
stream is back. Resuming is the caller's part (WatchRun from the last seq seen).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from nicegui import binding

from statepipe.client import StatepipeError

log = logging.getLogger("statepipe.ui")
T = TypeVar("T")

# Codes that mean "try again later" rather than "this request is wrong".
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class Connection:
    """The page's view of the control plane: reachable or not, and why."""

    lost = binding.BindableProperty()
    message = binding.BindableProperty()

    def __init__(self) -> None:
        self.lost = False
        self.message = ""
        self._broken: set[str] = set()

    def broken(self, stream: str, err: BaseException) -> None:
        self._broken.add(stream)
        self.lost = True
        self.message = f"Lost the control plane ({_reason(err)}); reconnecting…"

    def healthy(self, stream: str) -> None:
        self._broken.discard(stream)
        if not self._broken:
            self.lost = False
            self.message = ""


def _reason(err: BaseException) -> str:
    if isinstance(err, StatepipeError):
        return err.code.name.lower()
    return type(err).__name__


def is_retryable(err: BaseException) -> bool:
    return isinstance(err, StatepipeError) and err.code in RETRYABLE


async def follow(
    name: str,
    connection: Connection,
    open_stream: Callable[[], AsyncIterator[T]],
    handle: Callable[[T], Awaitable[None] | None],
    *,
    probe: Callable[[], Awaitable[Any]] | None = None,
    max_backoff_s: float = 5.0,
) -> None:
    """Follows a server stream until it ends, reopening it after transient errors.

    ``open_stream`` is called again on each reconnect, so it must resume where the
    last one stopped (e.g. WatchRun with ``after_seq`` = the last seq handled).
    After a loss, ``probe`` (a cheap unary call) must succeed before the stream is
    reopened, and its success clears the banner even if the stream stays quiet.
    Non-retryable errors (NOT_FOUND, INVALID_ARGUMENT) propagate.
    """
    delay = 0.2
    failed = False
    while True:
        stream: AsyncIterator[T] | None = None
        try:
            if failed and probe is not None:
                await probe()
            stream = open_stream()
            if failed:
                connection.healthy(name)
                failed = False
                delay = 0.2
            async for item in stream:
                if connection.lost:
                    connection.healthy(name)
                await _maybe(handle(item))
            return
        except StatepipeError as err:
            if not is_retryable(err):
                raise
            failed = True
            connection.broken(name, err)
            log.info("stream %s lost (%s); retrying in %.1fs", name, err, delay)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        await asyncio.sleep(delay)
        delay = min(max_backoff_s, delay * 2)


async def _maybe(value: Awaitable[None] | Any | None) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        await value


class Coalescer:
    """Runs ``callback`` once, ``delay_s`` after the first of a burst of pokes.

    Changes arrive one event at a time; the browser needs them a few times a second.
    This is a delay after a pushed change, not a timer that asks the server.
    """

    def __init__(
        self, callback: Callable[[], None], delay_s: float = 0.05, scope: Any = None
    ) -> None:
        self._callback = callback
        self._delay_s = delay_s
        # The element whose slot the callback runs in (it runs outside any event
        # handler); by default the one current when the coalescer was made.
        self._scope = scope if scope is not None else _current_slot_parent()
        self._handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._delay_s, self._run)

    def _run(self) -> None:
        self._handle = None
        try:
            if self._scope is None or getattr(self._scope, "is_deleted", False):
                if self._scope is not None:
                    return  # the page is gone
                self._callback()
                return
            with self._scope:
                self._callback()
        except Exception:  # a view's bug must not stop the stream feeding it
            log.exception("console update failed")

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _current_slot_parent() -> Any:
    from nicegui import context

    try:
        return context.slot.parent
    except RuntimeError:
        return None


def page_task(coro: Awaitable[None], name: str = "", client: Any = None) -> asyncio.Task[None]:
    """Runs ``coro`` for as long as the page's browser tab lives (the current page's,
    unless ``client`` is given)."""
    from nicegui import context

    client = client if client is not None else context.client
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    task.set_name(name or "statepipe-ui")

    def done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("console stream %s failed", name, exc_info=t.exception())

    task.add_done_callback(done)
    client.on_delete(task.cancel)
    return task


class IdBatcher:
    """Collects ids (of changed nodes) and hands them to ``callback`` at most once per
    ``delay_s``: for views whose every update re-sends a whole series."""

    def __init__(self, callback: Callable[[list[str]], None], delay_s: float) -> None:
        self._ids: dict[str, None] = {}
        self._callback = callback
        self._push = Coalescer(self._send, delay_s=delay_s)

    def add(self, ids: Iterable[str]) -> None:
        self._ids.update(dict.fromkeys(ids))
        self._push.poke()

    def _send(self) -> None:
        ids, self._ids = list(self._ids), {}
        self._callback(ids)
