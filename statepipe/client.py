"""Python clients of the statepipe control plane: :class:`Client` and :class:`AsyncClient`.

:class:`AsyncClient` speaks the gRPC API in proto/statepipe/v1/statepipe.proto
(grpc.aio); :class:`Client` is its blocking facade, which runs the same
coroutines on a private event-loop thread. Both return thin wrappers
(:class:`Run`, :class:`NodeState`, :class:`Event`, :class:`Workflow`) that hold
the protobuf message as ``.proto`` and give it as plain Python values, or as
the stable JSON shapes of docs/json-shapes.md through ``.to_dict()``.

Every failed call raises :class:`StatepipeError`, with the gRPC status code::

    with Client("localhost:50051") as client:
        run_id = client.start_run("summarize", {"url": "https://example.com"})
        for event in client.watch(run_id):
            print(event.seq, event.kind, event.message)
        print(client.wait(run_id).output)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import inspect
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import grpc
import grpc.aio

from statepipe import __version__
from statepipe_api.convert import (
    FINAL_RUN_STATUSES,
    SpecError,
    event_to_dict,
    json_to_value,
    node_to_dict,
    parse_run_status,
    run_to_dict,
    spec_to_proto,
    status_name,
    struct_to_python,
    timestamp_to_datetime,
    value_to_python,
    workflow_to_dict,
)
from statepipe_api.v1 import statepipe_pb2 as pb
from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "AsyncClient",
    "AsyncStream",
    "Client",
    "Event",
    "NodeState",
    "Run",
    "SpecError",
    "StatepipeError",
    "Stream",
    "Workflow",
]

T = TypeVar("T")
M = TypeVar("M")
R = TypeVar("R")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

_MiB = 1024 * 1024

#: Channel options both clients use; ``options=`` adds to or overrides them.
#: Keepalive: a ping after 5 idle minutes (the least a gRPC server accepts by
#: default, see grpc.http2.min_ping_interval_without_data_ms), and only while a
#: call is open, so a watch over a quiet run notices a dead connection.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 64 * _MiB),
    ("grpc.max_receive_message_length", 64 * _MiB),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.primary_user_agent", f"statepipe-python/{__version__}"),
)

# Largest page asked for in one call when collecting several pages.
_PAGE = 1000
# Pause before watching again when a stream ended but the run is not final.
_REWATCH_DELAY = 0.2
# Most seconds Client.close waits for its event-loop thread to end.
_STOP_TIMEOUT = 5.0


# -------------------------------------------------------------------- errors


class StatepipeError(Exception):
    """A failed call to the control plane.

    ``str(err)`` is ``"<CODE>: <message>"``, e.g. ``"NOT_FOUND: run r-42 not found"``.

    Attributes:
        code: The gRPC status code (``grpc.StatusCode.NOT_FOUND``, ...).
            Connection failures are ``UNAVAILABLE`` with the address in the message.
        message: The server's (or gRPC's) explanation.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(err, "code", None)
    result = code() if callable(code) else None
    return result if isinstance(result, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _wrap(err: grpc.RpcError, address: str) -> StatepipeError:
    code = _code(err)
    details = getattr(err, "details", None)
    message = (details() if callable(details) else None) or str(code.value[1])
    if code is grpc.StatusCode.UNAVAILABLE:
        message = f"statepipe server at {address} is unavailable: {message}"
    return StatepipeError(code, message)


def _wait_timeout(run_id: str, timeout: float | None, status: str) -> StatepipeError:
    return StatepipeError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"run {run_id} is still {status} after {timeout or 0:g}s",
    )


# ------------------------------------------------------------------ wrappers


def _dt_or_none(message: Any, field: str) -> _dt.datetime | None:
    return timestamp_to_datetime(getattr(message, field)) if message.HasField(field) else None


class _Wrapper(Generic[M]):
    __slots__ = ("proto",)

    def __init__(self, proto: M) -> None:
        self.proto: M = proto

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Wrapper) and type(other) is type(self) and self.proto == other.proto
        )

    __hash__ = None  # type: ignore[assignment]  # mutable protos are not hashable


class NodeState(_Wrapper[pb.NodeState]):
    """One node of a run (``.proto`` is the ``pb.NodeState``)."""

    __slots__ = ()

    @property
    def node_id(self) -> str:
        """The node's id in the workflow."""
        return self.proto.node_id

    @property
    def kind(self) -> str:
        """The runner kind ("python", "llm", ...)."""
        return self.proto.kind

    @property
    def status(self) -> str:
        """Status name: "PENDING", "QUEUED", "RUNNING", "RETRY_WAIT", "SUCCEEDED", ..."""
        return status_name(self.proto.status, "node")

    @property
    def attempt(self) -> int:
        """Attempts started so far (1 on the first run)."""
        return self.proto.attempt

    @property
    def input(self) -> Any:
        """Resolved params of the last attempt (None when unset)."""
        return value_to_python(self.proto.input) if self.proto.HasField("input") else None

    @property
    def output(self) -> Any:
        """The node's output (None when unset)."""
        return value_to_python(self.proto.output) if self.proto.HasField("output") else None

    @property
    def error(self) -> str:
        """Error text, "" when none."""
        return self.proto.error

    @property
    def traceback(self) -> str:
        """The traceback of the last failure in the node's own code, "" when none."""
        return self.proto.traceback

    @property
    def queued_at(self) -> _dt.datetime | None:
        """When the node was last queued (UTC)."""
        return _dt_or_none(self.proto, "queued_at")

    @property
    def started_at(self) -> _dt.datetime | None:
        """When the last attempt started (UTC)."""
        return _dt_or_none(self.proto, "started_at")

    @property
    def finished_at(self) -> _dt.datetime | None:
        """When the node finished (UTC)."""
        return _dt_or_none(self.proto, "finished_at")

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token counts, cost, ... as the runner reported them."""
        return struct_to_python(self.proto.usage) if self.proto.HasField("usage") else None

    @property
    def after(self) -> list[str]:
        """Ids of the nodes this one depends on."""
        return list(self.proto.after)

    def to_dict(self) -> dict[str, Any]:
        """The node's JSON shape (docs/json-shapes.md)."""
        return node_to_dict(self.proto)

    def __repr__(self) -> str:
        return f"NodeState(node_id={self.node_id!r}, status={self.status!r})"


class Run(_Wrapper[pb.Run]):
    """A run (``.proto`` is the ``pb.Run``). ``nodes`` is empty in listings."""

    __slots__ = ()

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.proto.run_id

    @property
    def workflow_name(self) -> str:
        """Name of the workflow it runs."""
        return self.proto.workflow_name

    @property
    def workflow_version(self) -> str:
        """Version of the workflow it runs."""
        return self.proto.workflow_version

    @property
    def status(self) -> str:
        """Status name: "PENDING", "RUNNING", "PAUSED", "INTERRUPTED", "SUCCEEDED", ..."""
        return status_name(self.proto.status, "run")

    @property
    def is_final(self) -> bool:
        """True when SUCCEEDED, FAILED or CANCELLED."""
        return self.status in FINAL_RUN_STATUSES

    @property
    def input(self) -> Any:
        """The run's input (None when unset)."""
        return value_to_python(self.proto.input) if self.proto.HasField("input") else None

    @property
    def output(self) -> Any:
        """The run's output (None when unset)."""
        return value_to_python(self.proto.output) if self.proto.HasField("output") else None

    @property
    def error(self) -> str:
        """Error text, "" when none."""
        return self.proto.error

    @property
    def labels(self) -> dict[str, str]:
        """The run's labels."""
        return dict(self.proto.labels)

    @property
    def idempotency_key(self) -> str:
        """The key given at start, "" when none."""
        return self.proto.idempotency_key

    @property
    def created_at(self) -> _dt.datetime | None:
        """When the run was created (UTC)."""
        return _dt_or_none(self.proto, "created_at")

    @property
    def started_at(self) -> _dt.datetime | None:
        """When the run started (UTC)."""
        return _dt_or_none(self.proto, "started_at")

    @property
    def finished_at(self) -> _dt.datetime | None:
        """When the run finished (UTC)."""
        return _dt_or_none(self.proto, "finished_at")

    @property
    def updated_at(self) -> _dt.datetime | None:
        """When the run last changed (UTC)."""
        return _dt_or_none(self.proto, "updated_at")

    @property
    def last_seq(self) -> int:
        """Seq of the run's last event."""
        return self.proto.last_seq

    @property
    def node_counts(self) -> dict[str, int]:
        """Node counts by status name, e.g. ``{"SUCCEEDED": 3}``."""
        return {k.removeprefix("NODE_"): v for k, v in self.proto.node_counts.items()}

    @property
    def parent_run_id(self) -> str | None:
        """The run that started this one (a child run), else None."""
        return self.proto.parent_run_id or None

    @property
    def parent_node_id(self) -> str | None:
        """The node of the parent run that started this one ("<map>[<i>]" for a
        map item), else None."""
        return self.proto.parent_node_id or None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The sum over the run's nodes of each numeric key of their usage
        (tokens, cost, ...), None when no node reported any; in listings too."""
        return struct_to_python(self.proto.usage) if self.proto.HasField("usage") else None

    @property
    def nodes(self) -> list[NodeState]:
        """The run's nodes (filled by get_run, empty in listings)."""
        return [NodeState(node) for node in self.proto.nodes]

    def node(self, node_id: str) -> NodeState:
        """The node with this id.

        Raises:
            KeyError: No such node in this run (or a listing, which has no nodes).
        """
        for node in self.proto.nodes:
            if node.node_id == node_id:
                return NodeState(node)
        raise KeyError(node_id)

    def to_dict(self) -> dict[str, Any]:
        """The run's JSON shape (docs/json-shapes.md)."""
        return run_to_dict(self.proto)

    def __repr__(self) -> str:
        workflow = f"{self.workflow_name}@{self.workflow_version}"
        return f"Run(run_id={self.run_id!r}, workflow={workflow!r}, status={self.status!r})"


class Event(_Wrapper[pb.Event]):
    """One event of a run (``.proto`` is the ``pb.Event``)."""

    __slots__ = ()

    @property
    def run_id(self) -> str:
        """The run it belongs to."""
        return self.proto.run_id

    @property
    def seq(self) -> int:
        """Gap-free per run, from 1."""
        return self.proto.seq

    @property
    def ts(self) -> _dt.datetime | None:
        """When it happened (UTC)."""
        return _dt_or_none(self.proto, "ts")

    @property
    def kind(self) -> str:
        """run_status, node_status, log, progress, output, token, tool_call, metric, hook_error."""
        return self.proto.kind

    @property
    def node_id(self) -> str:
        """The node it is about, "" for run-level events."""
        return self.proto.node_id

    @property
    def attempt(self) -> int:
        """The node's attempt, 0 for run-level events."""
        return self.proto.attempt

    @property
    def status(self) -> str:
        """New status name for run_status / node_status events, else ""."""
        return self.proto.status.removeprefix("RUN_").removeprefix("NODE_")

    @property
    def message(self) -> str:
        """Log text, token text, error text, ..."""
        return self.proto.message

    @property
    def level(self) -> str:
        """Log level: "debug", "info", "warning" or "error"."""
        return self.proto.level

    @property
    def data(self) -> dict[str, Any] | None:
        """Structured payload (None when unset)."""
        return struct_to_python(self.proto.data) if self.proto.HasField("data") else None

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON shape (docs/json-shapes.md)."""
        return event_to_dict(self.proto)

    def __repr__(self) -> str:
        return f"Event(run_id={self.run_id!r}, seq={self.seq}, kind={self.kind!r})"


class Workflow(_Wrapper[pb.Workflow]):
    """A registered workflow (``.proto`` is the ``pb.Workflow``).

    Attributes:
        created: From register_workflow: False when the same name, version and
            spec were already registered. None otherwise.
    """

    __slots__ = ("created",)

    def __init__(self, proto: pb.Workflow, created: bool | None = None) -> None:
        super().__init__(proto)
        self.created = created

    @property
    def spec(self) -> pb.WorkflowSpec:
        """The workflow's spec (``spec_to_dict`` gives it as a dict)."""
        return self.proto.spec

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self.proto.spec.name

    @property
    def version(self) -> str:
        """The workflow's version."""
        return self.proto.spec.version

    @property
    def description(self) -> str:
        """The workflow's description."""
        return self.proto.spec.description

    @property
    def created_at(self) -> _dt.datetime | None:
        """When it was registered (UTC)."""
        return _dt_or_none(self.proto, "created_at")

    def to_dict(self) -> dict[str, Any]:
        """``{"spec": {...}, "created_at": "..."}`` (docs/json-shapes.md)."""
        return workflow_to_dict(self.proto)

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, version={self.version!r})"


# ------------------------------------------------------------------- streams


def _batch_events(batch: pb.EventBatch) -> Iterable[pb.Event]:
    return batch.events


class AsyncStream(AsyncIterator[T]):
    """An async iterator over a server stream. ``aclose()`` (or ``async with``) cancels it."""

    def __init__(
        self,
        call: Any,
        convert: Callable[[Any], T],
        address: str,
        expand: Callable[[Any], Iterable[Any]] | None = None,
    ) -> None:
        self._call = call
        self._convert = convert
        self._expand = expand
        self._pending: collections.deque[Any] = collections.deque()
        self._address = address
        self._closed = False

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        while not self._pending:
            try:
                item = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as err:
                if self._closed and _code(err) is grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                raise _wrap(err, self._address) from err
            if item is grpc.aio.EOF:
                raise StopAsyncIteration
            if self._expand is None:
                return self._convert(item)
            self._pending.extend(self._expand(item))
        return self._convert(self._pending.popleft())

    async def _next_batch(self) -> list[T]:
        """The next item and the rest of its message's batch; [] at the end.

        :class:`Stream` reads through this, so it crosses threads once a
        message, not once an item (an ``EventBatch`` holds many events).
        """
        try:
            batch = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        while self._pending:
            batch.append(self._convert(self._pending.popleft()))
        return batch

    def close(self) -> None:
        """Cancels the call; iteration then stops."""
        self._closed = True
        self._pending.clear()
        self._call.cancel()

    async def aclose(self) -> None:
        """Cancels the call (the async-iterator protocol's name for close)."""
        self.close()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Stream(Iterator[T]):
    """An iterator over a server stream. Closing it (or leaving a ``with``) cancels the call.

    :class:`Client`'s view of an :class:`AsyncStream` that lives on the
    client's event-loop thread; ``close()`` may come from any thread, and
    ends an iteration blocked in another one.
    """

    def __init__(self, source: AsyncStream[T], loop: _LoopThread, owner: object = None) -> None:
        self._source = source
        self._loop = loop
        self._owner = owner  # the Client: its loop thread lives as long as its streams
        self._items: collections.deque[T] = collections.deque()
        self._closed = False

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if not self._items:
            batch = self._loop.run(self._source._next_batch())
            if not batch:
                raise StopIteration
            self._items.extend(batch)
        try:
            return self._items.popleft()
        except IndexError:  # closed by another thread meanwhile
            raise StopIteration from None

    def close(self) -> None:
        """Cancels the call; iteration then stops."""
        self._closed = True
        self._items.clear()
        self._loop.call(self._source.close)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._loop.call_soon(self._source.close)


# ---------------------------------------------------------- request building


def _channel_options(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    options = dict(CHANNEL_OPTIONS)
    options.update(extra or ())
    return list(options.items())


def _strings(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _statuses(status: str | int | Iterable[str | int] | None) -> list[pb.RunStatus]:
    if status is None:
        values: list[int] = []
    elif isinstance(status, str | int):
        values = [parse_run_status(status)]
    else:
        values = [parse_run_status(s) for s in status]
    return cast("list[pb.RunStatus]", values)  # the stubs type enum fields as RunStatus


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def _page_size(limit: int | None, have: int) -> int:
    return _PAGE if limit is None else min(limit - have, _PAGE)


def _timestamp_field(request: Any, field: str, value: _dt.datetime | None) -> None:
    if value is None:
        return
    if not isinstance(value, _dt.datetime):
        raise TypeError(f"{field} must be a datetime, got {type(value).__name__}")
    getattr(request, field).FromDatetime(value)  # naive datetimes are taken as UTC


def _register_request(spec: Mapping[str, Any] | pb.WorkflowSpec) -> pb.RegisterWorkflowRequest:
    return pb.RegisterWorkflowRequest(spec=spec_to_proto(spec))


def _start_request(
    workflow: str | Mapping[str, Any] | pb.WorkflowSpec,
    input: Any,
    version: str | None,
    idempotency_key: str | None,
    labels: Mapping[str, str] | None,
) -> pb.StartRunRequest:
    request = pb.StartRunRequest(idempotency_key=idempotency_key or "", labels=labels or {})
    if isinstance(workflow, str):
        request.ref.name = workflow
        request.ref.version = version or ""
    else:
        if version is not None:
            raise ValueError("version applies to a registered workflow name, not an inline spec")
        request.spec.CopyFrom(spec_to_proto(workflow))
    if input is not None:
        request.input.CopyFrom(json_to_value(input, "input"))
    return request


def _list_runs_request(
    status: str | int | Iterable[str | int] | None,
    workflow: str | None,
    labels: Mapping[str, str] | None,
    text: str | None,
    created_after: _dt.datetime | None,
    created_before: _dt.datetime | None,
    order_by: str | None,
    page_size: int,
    page_token: str | None,
) -> pb.ListRunsRequest:
    request = pb.ListRunsRequest(
        statuses=_statuses(status),
        workflow_name=workflow or "",
        labels=labels or {},
        text=text or "",
        order_by=order_by or "",
        page_size=page_size,
        page_token=page_token or "",
    )
    _timestamp_field(request, "created_after", created_after)
    _timestamp_field(request, "created_before", created_before)
    return request


def _watch_request(
    run_id: str, after_seq: int, kinds: str | Iterable[str] | None, follow_forever: bool
) -> pb.WatchRunRequest:
    return pb.WatchRunRequest(
        run_id=run_id, after_seq=after_seq, kinds=_strings(kinds), follow_forever=follow_forever
    )


def _events_request(
    run_id: str,
    after_seq: int,
    kinds: str | Iterable[str] | None,
    node_id: str | None,
    page_size: int,
) -> pb.ListEventsRequest:
    return pb.ListEventsRequest(
        run_id=run_id,
        after_seq=after_seq,
        kinds=_strings(kinds),
        node_id=node_id or "",
        page_size=page_size,
    )


def _watch_runs_request(
    status: str | int | Iterable[str | int] | None,
    workflow: str | None,
    snapshot_size: int,
    labels: Mapping[str, str] | None,
    text: str | None,
    created_after: _dt.datetime | None,
    created_before: _dt.datetime | None,
    order_by: str | None,
) -> pb.WatchRunsRequest:
    request = pb.WatchRunsRequest(
        statuses=_statuses(status),
        workflow_name=workflow or "",
        snapshot_size=snapshot_size,
        labels=labels or {},
        text=text or "",
        order_by=order_by or "",
    )
    _timestamp_field(request, "created_after", created_after)
    _timestamp_field(request, "created_before", created_before)
    return request


def _run_update(update: pb.RunSummaryUpdate) -> tuple[Run, bool]:
    return Run(update.run), update.snapshot


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


# ------------------------------------------------------------- async client


class AsyncClient:
    """An asyncio client of the statepipe control plane (grpc.aio).

    The one implementation of every call; :class:`Client` is its blocking
    facade. ``watch`` and ``watch_runs`` return :class:`AsyncStream`
    iterators. The channel is opened on the first call, in the running event
    loop; a server that cannot be reached makes that call raise
    :class:`StatepipeError` with code ``UNAVAILABLE``. Use ``async with`` or
    ``await client.close()``.

    Args:
        address: ``host:port`` of the control plane (any gRPC target).
        timeout: Deadline in seconds for each unary call (None: no deadline).
            Streams (watch, watch_runs) have no deadline.
        credentials: TLS channel credentials; None for a plaintext channel.
        metadata: Sent with every call (e.g. ``[("authorization", "Bearer ...")]``).
        options: Extra gRPC channel options, added to :data:`CHANNEL_OPTIONS`.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = tuple(metadata or ())
        self._credentials = credentials
        self._options = _channel_options(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.StatePipeStub | None = None

    @property
    def _stub(self) -> pb_grpc.StatePipeStub:
        if self._stub_ is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, self._options
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.address, self._options)
            self._stub_ = pb_grpc.StatePipeStub(self._channel)
        return self._stub_

    async def close(self) -> None:
        """Closes the channel; open streams are cancelled."""
        if self._channel is not None:
            channel, self._channel, self._stub_ = self._channel, None, None
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.address!r})"

    async def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        call = getattr(self._stub, method)
        try:
            return await call(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise _wrap(err, self.address) from err

    def _stream(
        self,
        method: str,
        request: Any,
        convert: Callable[[Any], T],
        timeout: float | None = None,
        expand: Callable[[Any], Iterable[Any]] | None = None,
    ) -> AsyncStream[T]:
        call = getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        return AsyncStream(call, convert, self.address, expand)

    # workflows

    async def register_workflow(self, spec: Mapping[str, Any] | pb.WorkflowSpec) -> Workflow:
        """Registers a workflow (name + version); registering the same spec again is a no-op.

        Args:
            spec: A spec dict (see ``spec_to_proto``) or a ``pb.WorkflowSpec``.

        Returns:
            The registered workflow; ``.created`` is False if it already existed.

        Raises:
            SpecError: The spec dict is malformed (checked before sending).
            StatepipeError: The server refused it (INVALID_ARGUMENT: a cycle, an
                unknown dependency, ...; ALREADY_EXISTS: same version, other spec).
        """
        response = await self._unary("RegisterWorkflow", _register_request(spec))
        return Workflow(response.workflow, created=response.created)

    async def get_workflow(self, name: str, version: str | None = None) -> Workflow:
        """A registered workflow; the latest version when ``version`` is None.

        Raises:
            StatepipeError: NOT_FOUND, ...
        """
        request = pb.GetWorkflowRequest(name=name, version=version or "")
        return Workflow(await self._unary("GetWorkflow", request))

    async def list_workflows_page(
        self,
        name_contains: str | None = None,
        *,
        limit: int = 100,
        page_token: str | None = None,
    ) -> tuple[list[Workflow], str | None]:
        """One page of registered workflows.

        Returns:
            The workflows and the token of the next page (None on the last page).
        """
        _check_limit(limit)
        request = pb.ListWorkflowsRequest(
            page_size=limit, page_token=page_token or "", name_contains=name_contains or ""
        )
        response = await self._unary("ListWorkflows", request)
        return [Workflow(w) for w in response.workflows], response.next_page_token or None

    async def list_workflows(
        self,
        name_contains: str | None = None,
        *,
        limit: int | None = 100,
        page_token: str | None = None,
    ) -> list[Workflow]:
        """Registered workflows, following pages until ``limit`` (None: all).

        Args:
            name_contains: Only names containing this substring.
            limit: Most workflows to return; None for all.
            page_token: Start from this page (from ``list_workflows_page``).
        """
        _check_limit(limit)
        workflows: list[Workflow] = []
        token = page_token
        while limit is None or len(workflows) < limit:
            page, token = await self.list_workflows_page(
                name_contains, limit=_page_size(limit, len(workflows)), page_token=token
            )
            workflows.extend(page)
            if not token or not page:
                break
        return workflows[:limit] if limit is not None else workflows

    # runs

    async def start_run(
        self,
        workflow: str | Mapping[str, Any] | pb.WorkflowSpec,
        input: Any = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Starts a run.

        Args:
            workflow: A registered workflow's name, or an inline spec (dict or
                ``pb.WorkflowSpec``).
            input: The run input, any JSON value (checked against the workflow's
                input schema by the server).
            version: Version of a registered workflow (None: the latest).
            idempotency_key: Starting again with the same key returns the same run.
            labels: Labels of the run.

        Returns:
            The run id.

        Raises:
            SpecError: Malformed inline spec, or an input that is not JSON.
            ValueError: ``version`` given with an inline spec.
            StatepipeError: NOT_FOUND (no such workflow), INVALID_ARGUMENT (bad
                spec or input), ...
        """
        request = _start_request(workflow, input, version, idempotency_key, labels)
        return str((await self._unary("StartRun", request)).run.run_id)

    async def get_run(self, run_id: str) -> Run:
        """A run with its nodes.

        Raises:
            StatepipeError: NOT_FOUND, ...
        """
        return Run(await self._unary("GetRun", pb.GetRunRequest(run_id=run_id)))

    async def list_runs_page(
        self,
        status: str | int | Iterable[str | int] | None = None,
        workflow: str | None = None,
        labels: Mapping[str, str] | None = None,
        text: str | None = None,
        created_after: _dt.datetime | None = None,
        created_before: _dt.datetime | None = None,
        order_by: str | None = None,
        limit: int = 100,
        page_token: str | None = None,
        *,
        parent: str | None = None,
        roots_only: bool = False,
    ) -> tuple[list[Run], str | None]:
        """One page of runs (arguments as :meth:`list_runs`; ``limit`` is the page size).

        Returns:
            The runs and the token of the next page (None on the last page).
        """
        _check_limit(limit)
        request = _list_runs_request(
            status, workflow, labels, text, created_after, created_before, order_by,
            limit, page_token,
        )  # fmt: skip
        request.parent_run_id = parent or ""
        request.roots_only = roots_only
        response = await self._unary("ListRuns", request)
        return [Run(r) for r in response.runs], response.next_page_token or None

    async def list_runs(
        self,
        status: str | int | Iterable[str | int] | None = None,
        workflow: str | None = None,
        labels: Mapping[str, str] | None = None,
        text: str | None = None,
        created_after: _dt.datetime | None = None,
        created_before: _dt.datetime | None = None,
        order_by: str | None = None,
        limit: int | None = 100,
        page_token: str | None = None,
        *,
        parent: str | None = None,
        roots_only: bool = False,
    ) -> list[Run]:
        """Runs matching every filter given, newest first by default (without nodes).

        Args:
            status: A status name ("running", "RUN_FAILED", ...) or a list of them.
            workflow: Only runs of this workflow name.
            labels: Only runs having all these labels.
            text: Substring of the run id, workflow name or error.
            created_after: Only runs created after this time (naive means UTC).
            created_before: Only runs created before this time (naive means UTC).
            order_by: "created_at" (default), "updated_at", "finished_at",
                "started_at", "status", "workflow_name" or "duration_ms"
                (finished_at - started_at); prefix "-" for descending.
                Ties go by run id; "finished_at" leaves out unfinished runs,
                "started_at" and "duration_ms" put runs without a value last
                in both directions.
            limit: Most runs to return, following pages as needed; None for all.
            page_token: Start from this page (from ``list_runs_page``).
            parent: Only the child runs of this run (started by its workflow,
                map and agent nodes).
            roots_only: Only runs a client started (no child runs).

        Raises:
            ValueError: Unknown status name.
            StatepipeError: INVALID_ARGUMENT (bad order_by), ...
        """
        _check_limit(limit)
        runs: list[Run] = []
        token = page_token
        while limit is None or len(runs) < limit:
            page, token = await self.list_runs_page(
                status, workflow, labels, text, created_after, created_before, order_by,
                _page_size(limit, len(runs)), token, parent=parent, roots_only=roots_only,
            )  # fmt: skip
            runs.extend(page)
            if not token or not page:
                break
        return runs[:limit] if limit is not None else runs

    async def pause(self, run_id: str, reason: str = "") -> Run:
        """Pauses a running run: no new node starts, in-flight nodes finish.

        Raises:
            StatepipeError: FAILED_PRECONDITION when the run cannot be paused.
        """
        return await self._control("PauseRun", run_id, reason)

    async def resume(self, run_id: str, reason: str = "") -> Run:
        """Resumes a paused, interrupted or failed run.

        Raises:
            StatepipeError: FAILED_PRECONDITION when the run cannot be resumed.
        """
        return await self._control("ResumeRun", run_id, reason)

    async def interrupt(self, run_id: str, reason: str = "") -> Run:
        """Interrupts a run: in-flight nodes are cancelled now; resume queues them again.

        Raises:
            StatepipeError: FAILED_PRECONDITION when the run cannot be interrupted.
        """
        return await self._control("InterruptRun", run_id, reason)

    async def cancel(self, run_id: str, reason: str = "") -> Run:
        """Cancels a run for good.

        Raises:
            StatepipeError: FAILED_PRECONDITION when the run is already final.
        """
        return await self._control("CancelRun", run_id, reason)

    async def _control(self, method: str, run_id: str, reason: str) -> Run:
        request = pb.RunControlRequest(run_id=run_id, reason=reason)
        return Run((await self._unary(method, request)).run)

    async def retry_node(self, run_id: str, node_id: str) -> Run:
        """Runs a failed node of a run again.

        Raises:
            StatepipeError: NOT_FOUND, FAILED_PRECONDITION, ...
        """
        request = pb.RetryNodeRequest(run_id=run_id, node_id=node_id)
        return Run((await self._unary("RetryNode", request)).run)

    # events

    def watch(
        self,
        run_id: str,
        after_seq: int = 0,
        kinds: str | Iterable[str] | None = None,
        follow_forever: bool = False,
    ) -> AsyncStream[Event]:
        """The run's events: a replay from ``after_seq``, then live ones.

        Ends once the run is final and every event was sent, unless
        ``follow_forever``. Close the returned stream (``aclose()``, or use
        ``async with``; ``close()`` or ``with`` on :class:`Client`) to stop
        early; that cancels the call.

        Args:
            run_id: The run.
            after_seq: Start with the event after this seq (0: from the start).
            kinds: Only these event kinds ("log", "token", ...).
            follow_forever: Keep following after the run ends (it may be resumed).

        Returns:
            A stream of :class:`Event` (an :class:`AsyncStream`; a :class:`Stream`
            on :class:`Client`); errors surface while iterating, as
            :class:`StatepipeError`.
        """
        request = _watch_request(run_id, after_seq, kinds, follow_forever)
        return self._stream("WatchRun", request, Event, expand=_batch_events)

    async def list_events(
        self,
        run_id: str,
        after_seq: int = 0,
        kinds: str | Iterable[str] | None = None,
        node_id: str | None = None,
        limit: int | None = 1000,
    ) -> list[Event]:
        """Stored events of a run, in seq order, following pages until ``limit``.

        Args:
            run_id: The run.
            after_seq: Events after this seq.
            kinds: Only these event kinds.
            node_id: Only events of this node.
            limit: Most events to return; None for all.
        """
        _check_limit(limit)
        events: list[Event] = []
        after = after_seq
        while limit is None or len(events) < limit:
            request = _events_request(run_id, after, kinds, node_id, _page_size(limit, len(events)))
            response = await self._unary("ListEvents", request)
            events.extend(Event(e) for e in response.events)
            if not response.events or response.next_after_seq <= after:
                break
            after = response.next_after_seq
        return events[:limit] if limit is not None else events

    def watch_runs(
        self,
        status: str | int | Iterable[str | int] | None = None,
        workflow: str | None = None,
        snapshot_size: int = 100,
        labels: Mapping[str, str] | None = None,
        text: str | None = None,
        created_after: _dt.datetime | None = None,
        created_before: _dt.datetime | None = None,
        order_by: str | None = None,
        *,
        parent: str | None = None,
        roots_only: bool = False,
    ) -> AsyncStream[tuple[Run, bool]]:
        """Run summaries for a dashboard: a snapshot of current runs, then every change.

        The filters apply to the snapshot and to every live change, as in
        :meth:`list_runs`.

        Args:
            status: Only runs in this status (name or list of names).
            workflow: Only runs of this workflow.
            snapshot_size: How many current runs to send first.
            labels: Only runs having all these labels.
            text: Substring of the run id, workflow name or error.
            created_after: Only runs created after this time (naive means UTC).
            created_before: Only runs created before this time (naive means UTC).
            order_by: The snapshot's order, as in :meth:`list_runs` (default
                newest first).
            parent: Only the child runs of this run.
            roots_only: Only runs a client started (no child runs).

        Returns:
            A stream (an :class:`AsyncStream`; a :class:`Stream` on
            :class:`Client`) of ``(run, snapshot)``; ``snapshot`` is True for
            the initial entries. Runs have ``node_counts`` but no nodes.
        """
        request = _watch_runs_request(
            status, workflow, snapshot_size, labels, text, created_after, created_before, order_by
        )
        request.parent_run_id = parent or ""
        request.roots_only = roots_only
        return self._stream("WatchRuns", request, _run_update)

    async def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Waits until the run is SUCCEEDED, FAILED or CANCELLED and returns it.

        A paused or interrupted run keeps this waiting (until resumed and
        finished, or the timeout).

        Args:
            run_id: The run.
            timeout: Most seconds to wait; None for no limit.

        Returns:
            The final run, with its nodes.

        Raises:
            StatepipeError: DEADLINE_EXCEEDED on timeout; NOT_FOUND, ...
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        run = await self.get_run(run_id)
        after = run.last_seq
        while not run.is_final:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise _wait_timeout(run_id, timeout, run.status)
            saw_final = False
            stream = self._stream(
                "WatchRun",
                _watch_request(run_id, after, ["run_status"], True),
                Event,
                expand=_batch_events,
                timeout=remaining,
            )
            try:
                async for event in stream:
                    after = max(after, event.seq)
                    if event.status in FINAL_RUN_STATUSES:
                        saw_final = True
                        break
            except StatepipeError as err:
                if err.code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise _wait_timeout(run_id, timeout, run.status) from None
                raise
            finally:
                stream.close()
            run = await self.get_run(run_id)
            if not run.is_final and not saw_final:
                delay = _remaining(deadline)
                await asyncio.sleep(max(0.0, min(_REWATCH_DELAY, delay or _REWATCH_DELAY)))
        return run


# -------------------------------------------------------------- sync client


def _closed_error() -> StatepipeError:
    return StatepipeError(grpc.StatusCode.CANCELLED, "the client was closed")


async def _invoke(fn: Callable[[], object]) -> None:
    fn()


class _Handoff(Generic[R]):
    """A coroutine handed to a :class:`_LoopThread`, and the lock its caller waits on.

    Lighter than ``asyncio.run_coroutine_threadsafe``, whose
    ``concurrent.futures.Future`` wakes the caller through a Condition whose
    lock the loop thread still holds: one more thread switch per call, 10-40 us
    on a busy 2-core machine.
    """

    __slots__ = ("coro", "finished", "task")

    def __init__(self, coro: Coroutine[Any, Any, R]) -> None:
        self.coro = coro
        self.task: asyncio.Task[R] | None = None
        self.finished = threading.Lock()
        self.finished.acquire()

    def start(self) -> None:
        """On the loop: starts the coroutine as a task."""
        self.task = asyncio.get_running_loop().create_task(self.coro)
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[R]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's error is not logged as unseen
        self.finished.release()

    def cancel(self) -> None:
        """On the loop, after start: cancels the task (its call with it)."""
        if self.task is not None:
            self.task.cancel()


class _LoopThread:
    """A private event loop on a daemon thread of its own: where a Client runs AsyncClient calls.

    ``run`` may be called from any number of threads (but not from the loop's
    own), including from inside another running event loop, which it blocks
    like any blocking call.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="statepipe-client", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with self._lock:
                self._stopped = True
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Runs ``coro`` on the loop and waits for its result.

        Raises:
            StatepipeError: CANCELLED when the loop stopped (the client was closed).
            RuntimeError: Called from the loop's own thread, which would wait forever.
        """
        call = _Handoff(coro)
        with self._lock:  # no new work once stop() began, so none is left unfinished
            if self._stopped or self._on_loop():
                coro.close()
                if self._stopped:
                    raise _closed_error()
                raise RuntimeError("a Client cannot be called from its own event-loop thread")
            self._loop.call_soon_threadsafe(call.start)
        try:
            call.finished.acquire()
        except BaseException:  # Ctrl-C while waiting cancels the call too
            self._loop.call_soon_threadsafe(call.cancel)
            raise
        task = cast("asyncio.Task[R]", call.task)
        if task.cancelled():
            raise _closed_error()
        return task.result()

    def call(self, fn: Callable[[], object]) -> None:
        """Runs ``fn`` on the loop and waits for it; nothing once the loop has stopped."""
        if self._on_loop():
            fn()
            return
        with contextlib.suppress(StatepipeError):
            self.run(_invoke(fn))

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Schedules ``fn`` on the loop without waiting (safe in ``__del__``)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(fn)

    def stop(self, client: AsyncClient) -> None:
        """Closes ``client`` on the loop (cancelling its calls), then ends the loop and thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        closing = self._close(client)
        if self._on_loop():  # the last reference went on the loop thread: end there
            self._loop.create_task(closing)
            return
        try:
            asyncio.run_coroutine_threadsafe(closing, self._loop)
        except RuntimeError:  # the loop is closed already
            closing.close()
        self._thread.join(_STOP_TIMEOUT)

    async def _close(self, client: AsyncClient) -> None:
        try:
            await client.close()
        finally:
            asyncio.get_running_loop().stop()


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    """The Client method of an AsyncClient coroutine method: runs it and waits for it."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._async, *args, **kwargs))

    return _mirror(call, method)


def _blocking_stream(
    method: Callable[Concatenate[AsyncClient, P], AsyncStream[T]],
) -> Callable[Concatenate[Client, P], Stream[T]]:
    """The Client method of an AsyncClient method that opens an AsyncStream."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Stream[T]:
        async def open_on_loop() -> AsyncStream[T]:  # a grpc.aio call belongs to its loop
            return method(self._async, *args, **kwargs)

        loop = self._loop_thread or self._start()
        return Stream(loop.run(open_on_loop()), loop, self)

    return _mirror(call, method, stream=True)


def _mirror(call: F, method: Callable[..., Any], stream: bool = False) -> F:
    """Gives ``call`` the name, docstring and signature of the AsyncClient ``method`` it runs."""
    call.__name__ = method.__name__
    call.__qualname__ = f"Client.{method.__name__}"
    call.__doc__ = method.__doc__
    returns = method.__annotations__["return"]
    if stream:  # "AsyncStream[Event]" -> "Stream[Event]"
        returns = str(returns).removeprefix("Async")
    call.__annotations__ = {**method.__annotations__, "return": returns}
    signature = inspect.signature(method).replace(return_annotation=returns)
    call.__signature__ = signature  # type: ignore[attr-defined]
    return call


class Client:
    """A blocking client of the statepipe control plane.

    A facade over :class:`AsyncClient`, with the same methods: each one runs
    the AsyncClient's coroutine on a private event loop, in a background
    thread that the client starts on its first call and stops in
    :meth:`close` (or when it is garbage-collected), and waits for it. It may
    be called from several threads at once, and from inside a running event
    loop (which the call blocks, as any blocking call does). ``watch`` and
    ``watch_runs`` return :class:`Stream` iterators.

    The connection is made on the first call; a server that cannot be reached
    makes that call raise :class:`StatepipeError` with code ``UNAVAILABLE``.
    Use it as a context manager, or call :meth:`close`.

    Args:
        address: ``host:port`` of the control plane (any gRPC target).
        timeout: Deadline in seconds for each unary call (None: no deadline).
            Streams (watch, watch_runs) have no deadline.
        credentials: TLS channel credentials; None for a plaintext channel.
        metadata: Sent with every call (e.g. ``[("authorization", "Bearer ...")]``).
        options: Extra gRPC channel options, added to :data:`CHANNEL_OPTIONS`.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self._async = AsyncClient(
            address, timeout=timeout, credentials=credentials, metadata=metadata, options=options
        )
        self._loop_thread: _LoopThread | None = None
        self._stop_loop: weakref.finalize | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` of the control plane."""
        return self._async.address

    @property
    def timeout(self) -> float | None:
        """Deadline in seconds for each unary call (None: no deadline)."""
        return self._async.timeout

    @timeout.setter
    def timeout(self, timeout: float | None) -> None:
        self._async.timeout = timeout

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return (self._loop_thread or self._start()).run(coro)

    def _start(self) -> _LoopThread:
        with self._lock:
            if self._loop_thread is None:
                loop = _LoopThread()
                # Also ends the thread when the client is garbage-collected, or at exit.
                self._stop_loop = weakref.finalize(self, loop.stop, self._async)
                self._loop_thread = loop
            return self._loop_thread

    def close(self) -> None:
        """Closes the channel and stops the client's thread; open streams are cancelled.

        A call after that connects again.
        """
        with self._lock:
            stop, self._stop_loop, self._loop_thread = self._stop_loop, None, None
        if stop is not None:
            stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    # Every call is AsyncClient's, run by the blocking wrappers above; the
    # signatures and docstrings are AsyncClient's too.

    register_workflow = _blocking(AsyncClient.register_workflow)
    get_workflow = _blocking(AsyncClient.get_workflow)
    list_workflows_page = _blocking(AsyncClient.list_workflows_page)
    list_workflows = _blocking(AsyncClient.list_workflows)

    start_run = _blocking(AsyncClient.start_run)
    get_run = _blocking(AsyncClient.get_run)
    list_runs_page = _blocking(AsyncClient.list_runs_page)
    list_runs = _blocking(AsyncClient.list_runs)
    pause = _blocking(AsyncClient.pause)
    resume = _blocking(AsyncClient.resume)
    interrupt = _blocking(AsyncClient.interrupt)
    cancel = _blocking(AsyncClient.cancel)
    retry_node = _blocking(AsyncClient.retry_node)

    watch = _blocking_stream(AsyncClient.watch)
    list_events = _blocking(AsyncClient.list_events)
    watch_runs = _blocking_stream(AsyncClient.watch_runs)
    wait = _blocking(AsyncClient.wait)
