"""The executor contract: run a node task, stream its events, return its output.

Executors never touch the database: everything a node reports goes through
an `EventSink` the control plane provides.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import os
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

# (kind, fields) -> None. Fields: message, level, data (dict), status.
EventSink = Callable[[str, dict[str, Any]], None]


DRAIN_SLICE = 2000  # events from worker threads handled per event-loop callback
# A worker thread that emits waits while this many of its events wait for the loop.
OUTBOX_LIMIT = 5 * DRAIN_SLICE
ROOM_POLL_S = 0.1  # how often a waiting worker thread looks for cancellation


class NodeError(Exception):
    """A node failed in a way worth a clear one-line error (not a traceback).

    Args:
        message: the error, one line a person can act on.
        retryable: False for a failure another attempt cannot mend (the
            callable cannot be imported, its arguments do not bind): the node
            fails at once instead of following its retry policy.
        traceback: the node code's traceback, when it came from one (crosses
            process boundaries, e.g. from a Ray worker).
        retry_after_ms: the least wait before another attempt, when the
            failure says so (an HTTP 429 or 503 with Retry-After): the retry
            policy's delay is raised to it, never lowered.
    """

    def __init__(
        self,
        message: str = "",
        *,
        retryable: bool = True,
        traceback: str = "",
        retry_after_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.traceback = traceback
        self.retry_after_ms = max(0, int(retry_after_ms))

    def __reduce__(self) -> Any:
        return (_node_error, (str(self), self.retryable, self.traceback, self.retry_after_ms))


def _node_error(
    message: str, retryable: bool, traceback: str, retry_after_ms: int = 0
) -> NodeError:
    return NodeError(
        message, retryable=retryable, traceback=traceback, retry_after_ms=retry_after_ms
    )


def describe_error(err: BaseException) -> str:
    """One line for a node's failure: a NodeError's text, else 'Type: text'."""
    text = str(err)
    name = type(err).__name__
    if name == "NodeError":
        return text
    return f"{name}: {text}" if text else name


# Frames of these directories are statepipe's or the standard library's
# plumbing between a node's code and its failure, not the user's code.
_PLUMBING = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(asyncio.__file__)),
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)),
)
TRACEBACK_LIMIT = 16_384  # characters kept of a traceback (its end)


def error_traceback(err: BaseException, plumbing: tuple[str, ...] = ()) -> str:
    """The traceback of a failure in node code, without the executor's frames
    (nor those under the `plumbing` folders of the caller); "" for a NodeError
    (its message says it all) unless it carries one."""
    if isinstance(err, NodeError):
        return err.traceback
    skip = _PLUMBING + plumbing
    frames = [
        frame
        for frame in traceback.extract_tb(err.__traceback__)
        if not os.path.abspath(frame.filename).startswith(skip)
    ]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(err), err)
    text = "".join(lines)
    return text if len(text) <= TRACEBACK_LIMIT else "...\n" + text[-TRACEBACK_LIMIT:]


def merge_usage(usage: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Adds `more` into `usage`: numbers add up; anything else (a model's
    name, a list of finish reasons) replaces what was there."""
    for key, value in more.items():
        old = usage.get(key)
        if _is_number(value) and _is_number(old):
            usage[key] = old + value
        else:
            usage[key] = value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ChildRuns(Protocol):
    """Starts child runs for one node; the control plane provides it
    (NodeContext.children, control_plane/children.py)."""

    async def run_workflow(self, workflow: str, input: Any, version: str, key: str) -> Any:
        """Runs a registered workflow as a child run; its output (see
        NodeContext.run_workflow)."""
        ...

    async def run_item(self, index: int, item: Any) -> dict[str, Any]:
        """Item `index` of a map node as a child run "<map>[<index>]"; when it
        ended: {"run_id", "status", "output", "error"}."""
        ...


class Cancelled(Exception):
    """Raised inside a sync node function by `ctx.raise_if_cancelled()`."""


@dataclasses.dataclass
class NodeTask:
    run_id: str
    node_id: str
    kind: str
    params: dict[str, Any]
    attempt: int
    run_input: Any
    timeout_ms: int = 0
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


class NodeContext:
    """What a node function receives as `ctx`.

    Every method may be called from the event loop or from a worker thread.

    Backpressure: a worker thread that emits (a sync node function) blocks
    while the consumer is over its limit (`has_room` cleared) or while
    OUTBOX_LIMIT of its events wait for the event loop; it wakes early when
    the node is cancelled. Code on the event loop (async node functions)
    cannot be blocked: its events are queued at once, bounded only by what
    its own node emits; it may `await ctx.room()` to cooperate.

    Args:
        has_room: Set while the consumer of the events takes more.
        room: Awaits that (for code on the event loop, `room()`).
    """

    def __init__(
        self,
        task: NodeTask,
        sink: EventSink,
        loop: asyncio.AbstractEventLoop,
        *,
        has_room: threading.Event | None = None,
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.run_id = task.run_id
        self.node_id = task.node_id
        self.attempt = task.attempt
        self.input = task.run_input
        self.params = task.params
        self.metadata = task.metadata
        self._sink = sink
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._cancelled = threading.Event()
        # Events from worker threads wait here; one loop callback drains a burst.
        self._outbox: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._drain_scheduled = False
        # Backpressure from whoever consumes the events (the control plane's
        # event pipeline): set while it has room, cleared while it is over its
        # limit. Worker threads that emit wait for it; so they do for the
        # outbox itself while the loop has not drained it.
        self._has_room = has_room
        self._room = room
        # Made when a thread first fills the outbox (most nodes never do, and
        # creating an Event per node would slow dispatch down).
        self._outbox_room: threading.Event | None = None
        self._on_running: Callable[[dict[str, Any]], None] | None = None
        self.usage: dict[str, Any] = {}
        # Starts child runs (the control plane sets it; the Ray worker a bridge).
        self.children: ChildRuns | None = None

    # -- placement (executors call these on the event loop)
    def on_running(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """The control plane's callback for `running` (set before `Executor.run`)."""
        self._on_running = callback

    def running(self, placement: dict[str, Any]) -> None:
        """The node has a place and starts now; `placement` says where (node, actor,
        pid). Executors with `places_nodes = True` call this once; later calls are
        ignored."""
        callback, self._on_running = self._on_running, None
        if callback is not None:
            callback(placement)

    def relay(self, kind: str, fields: dict[str, Any]) -> None:
        """Delivers an event the node produced elsewhere (another process or
        machine), in order with the others. On the event loop only."""
        self._sink(kind, fields)

    async def room(self) -> None:
        """Returns once the consumer of the events has room for more (at once
        while it has). On the event loop, e.g. before relaying more events."""
        if self._room is not None:
            await self._room()

    # -- child runs
    async def run_workflow(
        self, workflow: str, input: Any = None, *, version: str = "", key: str = ""
    ) -> Any:
        """Runs a registered workflow as a child run of this node and returns
        its output (on the event loop).

        The child records this run and node as its parent; an interrupt,
        pause or cancel of this run reaches it. `key` tells apart several
        children of one attempt (an agent's tool-call id): the same key in the
        same attempt finds the same child instead of starting another.

        Raises:
            NodeError: the child failed or was cancelled (its error), or the
                workflow is unknown or refuses the input (not retryable).
        """
        if self.children is None:
            raise NodeError(
                "child workflows cannot be started where this node runs", retryable=False
            )
        return await self.children.run_workflow(workflow, input, version, key)

    # -- cancellation
    @property
    def cancelled(self) -> bool:
        """True once the node was interrupted, cancelled or timed out."""
        return self._cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled(f"node {self.node_id!r} was cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleeps up to `timeout` seconds, waking early on cancellation (sync code)."""
        return self._cancelled.wait(timeout)

    def cancel(self) -> None:
        self._cancelled.set()

    # -- events
    def emit(self, kind: str, message: str = "", **data: Any) -> None:
        """Emits an event of any kind (output, metric, custom ones) with a JSON `data`."""
        self._send(kind, {"message": message, "data": data})

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self._send("log", {"message": str(message), "level": level, "data": data})

    def progress(
        self, current: float | None = None, total: float | None = None, message: str = ""
    ) -> None:
        data: dict[str, Any] = {}
        if current is not None:
            data["current"] = current
        if total is not None:
            data["total"] = total
            if current is not None and total:
                data["fraction"] = current / total
        self._send("progress", {"message": message, "data": data})

    def token(self, text: str, **data: Any) -> None:
        """One piece of streamed LLM output."""
        self._send("token", {"message": text, "data": data})

    def tool_call(self, name: str, arguments: Any = None, result: Any = None, **data: Any) -> None:
        self._send(
            "tool_call",
            {
                "message": name,
                "data": {"name": name, "arguments": arguments, "result": result, **data},
            },
        )

    def metric(self, name: str, value: float, **tags: Any) -> None:
        self._send("metric", {"message": name, "data": {"name": name, "value": value, **tags}})

    def add_usage(self, **counts: Any) -> None:
        """Adds to the node's usage (tokens, cost, ...), stored with the node.
        Numbers add up; other values (the model's name) replace the old one."""
        merge_usage(self.usage, counts)

    def set_usage(self, **values: Any) -> None:
        """Sets usage values that do not add up (time to first token, tokens/s)."""
        self.usage.update(values)

    def _send(self, kind: str, fields: dict[str, Any]) -> None:
        if threading.get_ident() == self._loop_thread:
            self._sink(kind, fields)
            return
        has_room = self._has_room
        if has_room is not None and not has_room.is_set():
            self._wait(has_room)
        with self._outbox_lock:
            self._outbox.append((kind, fields))
            outbox_room = None
            if len(self._outbox) >= OUTBOX_LIMIT:
                if self._outbox_room is None:
                    self._outbox_room = threading.Event()
                outbox_room = self._outbox_room
                outbox_room.clear()
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
        if schedule:
            # One wake-up per burst, not per token. The scheduler calls flush()
            # when the node returns, so every event lands before its final status.
            self._loop.call_soon_threadsafe(self._drain)
        if outbox_room is not None:
            self._wait(outbox_room)

    def _wait(self, room: threading.Event) -> None:
        """Blocks this worker thread until `room` is set or the node is cancelled."""
        while not room.wait(ROOM_POLL_S):
            if self._cancelled.is_set():
                return

    def flush(self) -> None:
        """Delivers every event still waiting from worker threads (on the loop)."""
        with self._outbox_lock:
            events = list(self._outbox)
            self._outbox.clear()
            if self._outbox_room is not None:
                self._outbox_room.set()
        for kind, fields in events:
            self._sink(kind, fields)

    def _drain(self) -> None:
        # A bounded slice per callback, so a flood from one node cannot hold
        # the event loop (and the batch writer) for long.
        with self._outbox_lock:
            count = min(len(self._outbox), DRAIN_SLICE)
            events = [self._outbox.popleft() for _ in range(count)]
            more = bool(self._outbox)
            self._drain_scheduled = more
            if self._outbox_room is not None and len(self._outbox) <= OUTBOX_LIMIT // 2:
                self._outbox_room.set()
        for kind, fields in events:
            self._sink(kind, fields)
        if more:
            self._loop.call_soon(self._drain)


class Runner(Protocol):
    """Runs one kind of node. `validate` checks params at registration time."""

    kind: str

    def validate(self, params: Mapping[str, Any]) -> None: ...

    def run(self, task: NodeTask, ctx: NodeContext) -> Awaitable[Any]: ...


class Executor(Protocol):
    """Where nodes run. `run` obeys asyncio cancellation (interrupts, timeouts).

    With `places_nodes = True` the node stays QUEUED until `run` calls
    `ctx.running(placement)`: its RUNNING event then says where it runs, and
    its timeout counts from there. Otherwise it is RUNNING as `run` is called.
    """

    name: str
    places_nodes: bool

    async def start(self) -> None: ...

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any: ...

    async def close(self) -> None: ...
