"""The StatePipe gRPC servicer: requests in, domain calls, messages out."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

import core_rs
from control_plane.convert import RUN_STATUS_NAME, from_struct, node_to_proto, run_to_proto
from control_plane.errors import AlreadyExists, InvalidArgument, NotFound, status_of
from control_plane.pipeline import RUNS_TOPIC, EventPipeline
from control_plane.scheduler import Scheduler
from control_plane.store import (
    NULLS_LAST,
    Conflict,
    RunFilter,
    RunRow,
    Store,
    order_column,
    order_value,
)
from control_plane.watch import watch_run
from statepipe_api.v1 import statepipe_pb2 as pb
from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "statepipe.v1.StatePipe"
MAX_PAGE = 1000
LATEST_TTL_S = 1.0


class _Undecodable:
    """Stands in for a request protobuf could not decode (e.g. nested too deeply)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the request could not be decoded: {request.error} (is a value such as the input, "
            "params or metadata nested more than about 50 levels deep?)"
        )


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as err:
            return _Undecodable(err)

    return decode


async def _abort(err: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    code, message = status_of(err)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method)
    await context.abort(code, message)


def _unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turns domain errors into gRPC statuses with a message a person can act on."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _refuse_undecodable(request)
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as err:
            await _abort(err, context, method.__name__)

    return wrapper


def _stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            _refuse_undecodable(request)
            async for item in method(self, request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as err:
            await _abort(err, context, method.__name__)

    return wrapper


class _AfterLists:
    """Each node's `after` list, read from a run's stored spec as it is.

    Never compiled against the runners installed now: a run stays readable
    after the plugin of one of its node kinds is gone. Cached by the spec's
    bytes (runs of one workflow share them), at most `budget_bytes` of specs;
    callers must not mutate what they get.
    """

    def __init__(self, budget_bytes: int = 32 << 20) -> None:
        self.budget_bytes = budget_bytes
        self._cache: dict[bytes, dict[str, list[str]]] = {}
        self._cached_bytes = 0

    def __call__(self, spec: bytes) -> dict[str, list[str]]:
        after = self._cache.get(spec)
        if after is None:
            after = {node.id: list(node.after) for node in pb.WorkflowSpec.FromString(spec).nodes}
            if self._cached_bytes + len(spec) > self.budget_bytes:
                self._cache.clear()
                self._cached_bytes = 0
            if len(spec) <= self.budget_bytes:
                self._cache[spec] = after
                self._cached_bytes += len(spec)
        return after


def _python(value: Any, present: bool) -> Any:
    return from_struct(value) if present else None


def _page_size(requested: int, default: int = 100, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument(f"{field} must not be negative, got {requested}")
    return min(requested or default, MAX_PAGE)


def _encode_token(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _decode_token(token: str, shape: Callable[[Any], Any]) -> Any:
    """Decodes a page token and checks its shape; any mismatch is the caller's mistake."""
    try:
        return shape(json.loads(base64.urlsafe_b64decode(token.encode())))
    except (ValueError, TypeError, KeyError, IndexError):
        raise InvalidArgument(f"page_token {token!r} is not one this server issued") from None


def _workflow_cursor(data: Any) -> int:
    if not isinstance(data, int) or isinstance(data, bool):
        raise TypeError("not a workflow cursor")
    return data


def _run_cursor(column: str) -> Callable[[Any], tuple[Any, str]]:
    """The decoder of a ListRuns page token issued for an order by `column`."""

    def decode(data: Any) -> tuple[Any, str]:
        value, run_id = data
        if not isinstance(run_id, str):
            raise TypeError("not a run cursor")
        if value is None and column in NULLS_LAST:
            return None, run_id
        if column == "duration_ms":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError("not a duration cursor")
            return dt.timedelta(microseconds=value), run_id
        if not isinstance(value, str):
            raise TypeError("not a run cursor")
        if column in ("status", "workflow_name"):
            return value, run_id
        return dt.datetime.fromisoformat(value), run_id

    return decode


def _encode_run_cursor(run: RunRow, order_by: str) -> str:
    value = order_value(run, order_by)
    if isinstance(value, dt.timedelta):
        value = value // dt.timedelta(microseconds=1)
    elif isinstance(value, dt.datetime):
        value = value.isoformat()
    return _encode_token([value, run.run_id])


def _order_by(requested: str) -> str:
    order_by = requested or "-created_at"
    try:
        order_column(order_by)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None
    return order_by


def _run_filter(request: pb.ListRunsRequest | pb.WatchRunsRequest) -> RunFilter:
    return RunFilter(
        statuses=[RUN_STATUS_NAME[s] for s in request.statuses if s in RUN_STATUS_NAME],
        workflow_name=request.workflow_name,
        labels=dict(request.labels),
        created_after=(
            request.created_after.ToDatetime(dt.UTC) if request.HasField("created_after") else None
        ),
        created_before=(
            request.created_before.ToDatetime(dt.UTC)
            if request.HasField("created_before")
            else None
        ),
        text=request.text,
        parent_run_id=request.parent_run_id,
        roots_only=request.roots_only,
    )


def _matches(flt: RunFilter, statuses: set[int], run: pb.Run) -> bool:
    """Whether a live run summary passes the filter, as the store's SQL decides
    (control_plane.store._run_filter_sql) for the snapshot."""
    if statuses and run.status not in statuses:
        return False
    if flt.workflow_name and run.workflow_name != flt.workflow_name:
        return False
    if flt.labels:
        labels = run.labels
        if any(labels.get(k) != v for k, v in flt.labels.items()):
            return False
    if flt.parent_run_id and run.parent_run_id != flt.parent_run_id:
        return False
    if flt.roots_only and run.parent_run_id:
        return False
    if flt.created_after or flt.created_before:
        created = run.created_at.ToDatetime(dt.UTC)
        if flt.created_after and created < flt.created_after:
            return False
        if flt.created_before and created >= flt.created_before:
            return False
    if flt.text:
        text = flt.text
        return text in run.run_id or text in run.workflow_name or text.lower() in run.error.lower()
    return True


def _require_run_id(run_id: str) -> str:
    if not run_id:
        raise InvalidArgument("run_id is required")
    return run_id


class Servicer(pb_grpc.StatePipeServicer):
    def __init__(
        self, store: Store, scheduler: Scheduler, pipeline: EventPipeline, bus: core_rs.EventBus
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.pipeline = pipeline
        self.bus = bus
        self._workflows: dict[tuple[str, str], tuple[float, pb.Workflow]] = {}
        self._after_lists = _AfterLists()
        # A run another replica holds is not held here: WatchRun ends once its status is final.
        self._is_held: Callable[[str], bool] = lambda run_id: run_id in scheduler.actors

    # ------------------------------------------------------------- workflows

    @_unary
    async def RegisterWorkflow(
        self, request: pb.RegisterWorkflowRequest, context: Any
    ) -> pb.RegisterWorkflowResponse:
        plan = self.scheduler.plan_for(request.spec)
        try:
            row, created = await self.store.put_workflow(
                plan.name, plan.version, plan.spec_bytes, json_format.MessageToDict(plan.spec)
            )
        except Conflict as err:
            raise AlreadyExists(str(err)) from None
        workflow = pb.Workflow(spec=plan.spec)
        workflow.created_at.FromDatetime(row.created_at)
        self._workflows.pop((plan.name, ""), None)  # "latest" may have changed
        return pb.RegisterWorkflowResponse(workflow=workflow, created=created)

    async def _workflow(self, name: str, version: str) -> pb.Workflow:
        if not name:
            raise InvalidArgument("workflow name is required")
        # A registered version never changes: cache it. "Latest" is cached
        # briefly (another replica may register a newer one).
        cached = self._workflows.get((name, version))
        if cached is not None and (version or time.monotonic() - cached[0] < LATEST_TTL_S):
            return cached[1]
        row = await self.store.get_workflow(name, version)
        if row is None:
            which = f"version {version!r} of " if version else ""
            raise NotFound(f"{which}workflow {name!r} is not registered")
        workflow = pb.Workflow(spec=pb.WorkflowSpec.FromString(row.spec))
        workflow.created_at.FromDatetime(row.created_at)
        if len(self._workflows) > 4096:
            self._workflows.clear()
        self._workflows[(name, version)] = (time.monotonic(), workflow)
        return workflow

    @_unary
    async def GetWorkflow(self, request: pb.GetWorkflowRequest, context: Any) -> pb.Workflow:
        return await self._workflow(request.name, request.version)

    @_unary
    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Any
    ) -> pb.ListWorkflowsResponse:
        limit = _page_size(request.page_size)
        after = _decode_token(request.page_token, _workflow_cursor) if request.page_token else 0
        rows = await self.store.list_workflows(
            name_contains=request.name_contains, limit=limit + 1, after=after
        )
        response = pb.ListWorkflowsResponse()
        for registered, row in rows[:limit]:
            workflow = response.workflows.add(spec=pb.WorkflowSpec.FromString(row.spec))
            workflow.created_at.FromDatetime(row.created_at)
            after = registered
        if len(rows) > limit:
            response.next_page_token = _encode_token(after)
        return response

    # ------------------------------------------------------------------ runs

    @_unary
    async def StartRun(self, request: pb.StartRunRequest, context: Any) -> pb.StartRunResponse:
        which = request.WhichOneof("workflow")
        if which == "spec":
            plan = self.scheduler.plan_for(request.spec)
        elif which == "ref":
            workflow = await self._workflow(request.ref.name, request.ref.version)
            plan = self.scheduler.plan_for(workflow.spec)
        else:
            raise InvalidArgument("give a workflow: ref (name and version) or an inline spec")
        run_input = _python(request.input, request.HasField("input"))
        run, created = await self.scheduler.start_run(
            plan, run_input, idempotency_key=request.idempotency_key, labels=dict(request.labels)
        )
        return pb.StartRunResponse(run=run_to_proto(run), created=created)

    @_unary
    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.Run:
        run, nodes = await self.scheduler.run_snapshot(_require_run_id(request.run_id))
        message = run_to_proto(run)
        after = self._after_lists(run.spec)
        for node in nodes:
            message.nodes.append(node_to_proto(node, after.get(node.node_id)))
        return message

    @_unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        limit = _page_size(request.page_size)
        flt = _run_filter(request)
        order_by = _order_by(request.order_by)
        cursor = None
        if request.page_token:
            cursor = _decode_token(request.page_token, _run_cursor(order_column(order_by)))
        rows = await self.store.list_runs(flt, order_by=order_by, limit=limit + 1, cursor=cursor)
        response = pb.ListRunsResponse(runs=[run_to_proto(r) for r in rows[:limit]])
        if len(rows) > limit:
            response.next_page_token = _encode_run_cursor(rows[limit - 1], order_by)
        return response

    async def _control(self, run_id: str, action: str, **kwargs: Any) -> pb.RunControlResponse:
        _require_run_id(run_id)
        run = await self.scheduler.control(run_id, action, **kwargs)
        return pb.RunControlResponse(run=run_to_proto(run))

    @_unary
    async def PauseRun(self, request: pb.RunControlRequest, context: Any) -> pb.RunControlResponse:
        return await self._control(request.run_id, "pause", reason=request.reason)

    @_unary
    async def ResumeRun(self, request: pb.RunControlRequest, context: Any) -> pb.RunControlResponse:
        return await self._control(request.run_id, "resume", reason=request.reason)

    @_unary
    async def InterruptRun(
        self, request: pb.RunControlRequest, context: Any
    ) -> pb.RunControlResponse:
        return await self._control(request.run_id, "interrupt", reason=request.reason)

    @_unary
    async def CancelRun(self, request: pb.RunControlRequest, context: Any) -> pb.RunControlResponse:
        return await self._control(request.run_id, "cancel", reason=request.reason)

    @_unary
    async def RetryNode(self, request: pb.RetryNodeRequest, context: Any) -> pb.RunControlResponse:
        if not request.node_id:
            raise InvalidArgument("node_id is required")
        return await self._control(request.run_id, "retry_node", node_id=request.node_id)

    # ---------------------------------------------------------------- events

    @_unary
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Any
    ) -> pb.ListEventsResponse:
        if await self.store.get_run(_require_run_id(request.run_id)) is None:
            raise NotFound(f"run {request.run_id!r} not found")
        if request.after_seq < 0:
            raise InvalidArgument("after_seq must not be negative")
        limit = _page_size(request.page_size)
        rows = await self.store.list_events(
            request.run_id,
            after_seq=request.after_seq,
            limit=limit,
            kinds=list(request.kinds),
            node_id=request.node_id,
        )
        response = pb.ListEventsResponse(events=[pb.Event.FromString(body) for _, body in rows])
        if len(rows) == limit:
            response.next_after_seq = rows[-1][0]
        return response

    @_stream
    async def WatchRun(self, request: pb.WatchRunRequest, context: Any) -> AsyncIterator[bytes]:
        """Replays from Postgres, then follows the live bus: no gap, no duplicate
        (control_plane.watch). Yields encoded EventBatch messages built from the
        stored event bytes without decoding them (the serializer passes bytes through)."""
        async for message in watch_run(self.store, self.bus, self._is_held, request):
            yield message

    @_stream
    async def WatchRuns(
        self, request: pb.WatchRunsRequest, context: Any
    ) -> AsyncIterator[pb.RunSummaryUpdate]:
        flt = _run_filter(request)
        order_by = _order_by(request.order_by)
        size = _page_size(request.snapshot_size or 100, field="snapshot_size")
        self.pipeline.summary_watchers += 1
        try:
            async for update in self._watch_runs(flt, set(request.statuses), order_by, size):
                yield update
        finally:
            self.pipeline.summary_watchers -= 1

    async def _watch_runs(
        self, flt: RunFilter, statuses: set[int], order_by: str, size: int
    ) -> AsyncIterator[pb.RunSummaryUpdate]:
        sub = self.bus.subscribe(RUNS_TOPIC, self.bus.last_seq(RUNS_TOPIC) or 0)
        for row in await self.store.list_runs(flt, order_by=order_by, limit=size):
            yield pb.RunSummaryUpdate(run=run_to_proto(row), snapshot=True)
        while True:
            try:
                batch = await sub.next_batch()
            except core_rs.Lagged as lag:
                sub.seek(lag.oldest_seq - 1)  # summaries supersede each other: skip ahead
                continue
            if batch is None:
                return
            for _, body in batch:
                update = pb.RunSummaryUpdate.FromString(body)
                if _matches(flt, statuses, update.run):
                    yield update


def add_to_server(servicer: Servicer, server: grpc.aio.Server) -> None:
    """Registers the servicer; WatchRun streams pre-encoded events as they are."""

    class _Capture:
        """Stands in for a server to collect the generated handlers."""

        def __init__(self) -> None:
            self.handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            return None

        def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
            self.handlers = handlers

    capture = _Capture()
    pb_grpc.add_StatePipeServicer_to_server(servicer, capture)
    handlers = {
        name: handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        for name, handler in capture.handlers.items()
    }
    handlers["WatchRun"] = handlers["WatchRun"]._replace(response_serializer=bytes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
