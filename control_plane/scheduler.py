"""The scheduler: owns runs, dispatches ready nodes, applies run controls.

Each active run has a `RunActor` (one asyncio task) that holds the run's
frontier, rebuilt from the nodes' stored statuses: a fresh start, a resume and
crash recovery are one code path. The control plane is the only writer of run
state; every transition is a row update and an event, queued on the event
pipeline and committed in batches.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import random
import socket
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import core_rs
from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound
from control_plane.expressions import ExpressionError, evaluate, render
from control_plane.hooks import Hooks
from control_plane.pipeline import EventPipeline
from control_plane.plan import Plan, compile_spec, retry_delay_ms
from control_plane.store import NodeRow, RunRow, Store, now, without_nul
from executors.base import Executor, NodeContext, NodeTask, describe_error
from executors.runners import RunnerRegistry
from statepipe_api.v1 import statepipe_pb2 as pb

log = logging.getLogger(__name__)

FINAL_RUN = {"SUCCEEDED", "FAILED", "CANCELLED"}
FINAL_NODE = {"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"}
IN_FLIGHT_NODE = {"QUEUED", "RUNNING", "RETRY_WAIT"}


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True for an owner on this host whose process is gone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def json_safe(value: Any, what: str) -> Any:
    """The value as plain JSON, or a clear error."""
    try:
        return without_nul(json.loads(json.dumps(value)))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serializable: {err}") from None


class Limits:
    """Concurrency slots: global, per workflow, per run, per concurrency key."""

    def __init__(self, global_max: int) -> None:
        self.global_max = global_max
        self.running = 0
        self.per_workflow: collections.Counter[str] = collections.Counter()
        self.per_run: collections.Counter[str] = collections.Counter()
        self.per_key: collections.Counter[tuple[str, str]] = collections.Counter()
        self._blocked: set[RunActor] = set()

    def why_not(self, plan: Plan, run_id: str, key: str) -> str | None:
        """None when a node may start, else which limit is full ("key" or "run")."""
        limits = plan.spec.concurrency
        if self.global_max and self.running >= self.global_max:
            return "run"
        if limits.per_workflow and self.per_workflow[plan.name] >= limits.per_workflow:
            return "run"
        if limits.per_run and self.per_run[run_id] >= limits.per_run:
            return "run"
        if key and self.per_key[(plan.name, key)] >= limits.per_key.get(key, 1):
            return "key"
        return None

    def acquire(self, plan: Plan, run_id: str, key: str) -> None:
        self.running += 1
        self.per_workflow[plan.name] += 1
        self.per_run[run_id] += 1
        if key:
            self.per_key[(plan.name, key)] += 1

    def release(self, plan: Plan, run_id: str, key: str) -> None:
        self.running -= 1
        self.per_workflow[plan.name] -= 1
        self.per_run[run_id] -= 1
        if not self.per_run[run_id]:
            del self.per_run[run_id]
        if key:
            self.per_key[(plan.name, key)] -= 1
        blocked, self._blocked = self._blocked, set()
        for actor in blocked:
            actor.wake.set()

    def wait_for_slot(self, actor: RunActor) -> None:
        self._blocked.add(actor)


@dataclasses.dataclass
class Settings:
    max_concurrency: int = 256
    lease_ms: int = 15_000


class Scheduler:
    """Owns runs through leases and drives them with one actor each."""

    def __init__(
        self,
        store: Store,
        pipeline: EventPipeline,
        executor: Executor,
        runners: RunnerRegistry,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.executor = executor
        self.runners = runners
        self.settings = settings or Settings()
        self.owner = owner_id()
        self.limits = Limits(self.settings.max_concurrency)
        self.hooks = Hooks(pipeline)
        self.actors: dict[str, RunActor] = {}
        self._plans: dict[bytes, Plan] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._stopping = False

    # ------------------------------------------------------------- lifecycle

    async def start(self, *, take_over: bool = True) -> list[str]:
        """Takes over runs left active by a dead or expired owner; starts leasing."""
        claimed: list[str] = []
        if take_over:
            dead = [o for o in await self.store.lease_owners() if owner_is_dead(o)]
            claimed = await self.store.claim_runs(self.owner, self.settings.lease_ms, dead)
        for run_id in claimed:
            await self._activate(run_id, recovering=True)
        self._lease_task = asyncio.create_task(self._renew_leases(), name="lease-renewal")
        if claimed:
            log.info("took over %d runs: %s", len(claimed), claimed[:10])
        return claimed

    async def stop(self) -> None:
        """Stops dispatching; in-flight nodes are interrupted and left for recovery."""
        self._stopping = True
        if self._lease_task:
            self._lease_task.cancel()
        actors = list(self.actors.values())
        for actor in actors:
            actor.shutdown()
        await asyncio.gather(*(a.task for a in actors if a.task), return_exceptions=True)
        await self.pipeline.flush()
        for actor in actors:
            await self.store.release_lease(actor.run.run_id, self.owner)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ms / 3000)
            try:
                await self.store.renew_leases(self.owner, self.settings.lease_ms)
            except Exception:
                log.exception("renewing leases failed")

    # ----------------------------------------------------------------- plans

    def plan_for(self, spec: pb.WorkflowSpec | bytes) -> Plan:
        data = spec if isinstance(spec, bytes) else spec.SerializeToString(deterministic=True)
        plan = self._plans.get(data)
        if plan is None:
            message = pb.WorkflowSpec.FromString(data) if isinstance(spec, bytes) else spec
            plan = compile_spec(message, self.runners)
            if len(self._plans) > 1024:
                self._plans.clear()
            self._plans[data] = self._plans[plan.spec_bytes] = plan
        return plan

    # ------------------------------------------------------------------ runs

    async def start_run(
        self,
        plan: Plan,
        run_input: Any,
        *,
        idempotency_key: str = "",
        labels: dict[str, str] | None = None,
    ) -> tuple[RunRow, bool]:
        run_input = without_nul(run_input)
        labels = without_nul(labels) if labels else labels
        idempotency_key = without_nul(idempotency_key)
        plan.validate_input(run_input)
        if idempotency_key:
            async with self._locks[f"key:{idempotency_key}"]:
                existing = await self.store.find_run_by_key(idempotency_key)
                if existing is not None:
                    return existing, False
                run = await self._create_run(plan, run_input, idempotency_key, labels)
            self._locks.pop(f"key:{idempotency_key}", None)
            return run, True
        return await self._create_run(plan, run_input, None, labels), True

    async def _create_run(
        self, plan: Plan, run_input: Any, key: str | None, labels: dict[str, str] | None
    ) -> RunRow:
        run_id = uuid.uuid4().hex
        created = now()
        run = RunRow(
            run_id=run_id,
            workflow_name=plan.name,
            workflow_version=plan.version,
            spec=plan.spec_bytes,
            status="RUNNING",
            input=run_input,
            labels=dict(labels or {}),
            idempotency_key=key,
            node_counts={"PENDING": len(plan.nodes)} if plan.nodes else {},
            lease_owner=self.owner,
            created_at=created,
            started_at=created,
            updated_at=created,
        )
        nodes = [
            NodeRow(run_id=run_id, node_id=n.spec.id, position=n.position, kind=n.spec.kind)
            for n in plan.nodes.values()
        ]
        self.pipeline.new_run(run, nodes)
        self.pipeline.emit(
            run_id,
            "run_status",
            status="RUNNING",
            ts=created,
            data={"workflow": plan.name, "version": plan.version},
        )
        actor = RunActor(self, plan, run, {n.node_id: n for n in nodes})
        self.actors[run_id] = actor
        await self.pipeline.flush()  # durable before StartRun returns
        actor.begin(first_time=True)
        return run

    async def _activate(
        self, run_id: str, *, recovering: bool = False, start: bool = True
    ) -> RunActor:
        """Loads a stored run into an actor; `start=False` leaves it idle (for a
        control such as cancel that needs its state but must not dispatch)."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        nodes = await self.store.get_nodes(run_id)
        plan = self.plan_for(run.spec)
        self.pipeline.open_run(run_id, max(run.last_seq, await self.store.max_seq(run_id)))
        actor = RunActor(self, plan, run, {n.node_id: n for n in nodes})
        self.actors[run_id] = actor
        if recovering:
            self.pipeline.emit(
                run_id,
                "log",
                level="warning",
                message=f"run taken over by {self.owner} after its owner stopped",
            )
        if start:
            actor.begin(first_time=False)
        return actor

    async def run_snapshot(self, run_id: str) -> tuple[RunRow, list[NodeRow]]:
        actor = self.actors.get(run_id)
        if actor is not None:
            return (
                dataclasses.replace(actor.run),
                [dataclasses.replace(n) for n in actor.nodes.values()],
            )
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        return run, await self.store.get_nodes(run_id)

    # -------------------------------------------------------------- controls

    async def control(
        self, run_id: str, action: str, *, node_id: str = "", reason: str = ""
    ) -> RunRow:
        async with self._locks[run_id]:
            actor = self.actors.get(run_id)
            if actor is None:
                run = await self.store.get_run(run_id)
                if run is None:
                    raise NotFound(f"run {run_id!r} not found")
                if action == "retry_node":
                    await self._check_retry_node(run_id, node_id, run.status)
                if action in ("resume", "retry_node") and run.status in (
                    "INTERRUPTED",
                    "FAILED",
                    "PAUSED",
                ):
                    if not await self.store.lease_run(run_id, self.owner, self.settings.lease_ms):
                        raise FailedPrecondition(f"run {run_id!r} is owned by another server")
                    actor = await self._activate(run_id)
                elif action == "cancel" and run.status not in FINAL_RUN:
                    # A paused or interrupted run that no actor holds.
                    actor = await self._activate(run_id, start=False)
                else:
                    raise FailedPrecondition(_refusal(run_id, action, run.status))
            await actor.apply(action, node_id=node_id, reason=reason)
            # The run as the control left it (nodes may move on during the flush).
            snapshot = dataclasses.replace(actor.run, node_counts=dict(actor.run.node_counts))
            await self.pipeline.flush()
            return snapshot

    async def _check_retry_node(self, run_id: str, node_id: str, run_status: str) -> None:
        nodes = {n.node_id: n for n in await self.store.get_nodes(run_id)}
        if node_id not in nodes:
            raise NotFound(f"run {run_id!r} has no node {node_id!r}")
        if run_status not in ("RUNNING", "PAUSED", "INTERRUPTED", "FAILED"):
            raise FailedPrecondition(_refusal(run_id, "retry_node", run_status))
        if nodes[node_id].status not in ("FAILED", "CANCELLED", "SKIPPED"):
            raise FailedPrecondition(
                f"node {node_id!r} is {nodes[node_id].status}; only a FAILED, CANCELLED or "
                "SKIPPED node can be retried"
            )

    def actor_done(self, actor: RunActor) -> None:
        if self.actors.get(actor.run.run_id) is actor:
            del self.actors[actor.run.run_id]
        if not self._stopping:
            # Give up the lease in the run's next batched write, not a query of its own.
            actor.run.lease_owner = None
            self.pipeline.put_run(actor.run)


def _refusal(run_id: str, action: str, status: str) -> str:
    allowed = {
        "pause": "RUNNING",
        "resume": "PAUSED, INTERRUPTED or FAILED",
        "interrupt": "RUNNING or PAUSED",
        "cancel": "not finished",
        "retry_node": "RUNNING, PAUSED, INTERRUPTED or FAILED",
    }[action]
    verb = action.replace("_", " ")
    return f"cannot {verb} run {run_id!r}: it is {status} (allowed when {allowed})"


class RunActor:
    """Drives one run: dispatch, node results, retries, controls."""

    def __init__(
        self, scheduler: Scheduler, plan: Plan, run: RunRow, nodes: dict[str, NodeRow]
    ) -> None:
        self.scheduler = scheduler
        self.plan = plan
        self.run = run
        self.nodes = nodes
        self.pipeline = scheduler.pipeline
        self.limits = scheduler.limits
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.queued: list[str] = []  # handed out by the frontier, waiting for a slot
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[str, NodeContext] = {}
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.frontier: core_rs.Frontier | None = None
        self._stop = False

    def __hash__(self) -> int:
        return id(self)

    # ---------------------------------------------------------------- set-up

    def begin(self, *, first_time: bool) -> None:
        self.rebuild()
        self.task = asyncio.get_running_loop().create_task(
            self.main(first_time), name=f"run-{self.run.run_id}"
        )

    def rebuild(self) -> None:
        """The frontier from stored statuses; queued/running nodes become ready again."""
        statuses = {n.node_id: n.status for n in self.nodes.values()}
        keep_going = [n for n, p in self.plan.nodes.items() if p.spec.continue_on_failure]
        self.frontier = core_rs.Frontier(self.plan.dag, statuses, keep_going)
        for node_id in self.frontier.blocked():
            node = self.nodes[node_id]
            if node.status != "SKIPPED":
                self._set_node(node, "SKIPPED", error="an upstream node failed")
        self.queued = []
        self._enqueue(self.frontier.pop_ready())

    async def main(self, first_time: bool) -> None:
        try:
            if first_time:
                await self.scheduler.hooks.call(
                    self.plan, "on_init", self._hook_ctx(), self.plan.metadata
                )
            while not self._stop:
                self.wake.clear()
                if self.run.status == "RUNNING":
                    self.dispatch()
                if self.run.status == "RUNNING" and self._finished():
                    await self.finish()
                    return
                if self.run.status in FINAL_RUN or self.run.status == "INTERRUPTED":
                    return
                await self.wake.wait()
        except Exception:
            log.exception("run %s: scheduler error", self.run.run_id)
            self.run.status = "FAILED"
            self.run.error = "internal scheduler error:\n" + traceback.format_exc(limit=5)
            self.run.finished_at = now()
            self._put_run(emit=True)
            self.pipeline.close_run(self.run.run_id)
        finally:
            self.scheduler.actor_done(self)

    def shutdown(self) -> None:
        """Server stop: abandon in-flight work (recovery re-runs it), keep state."""
        self._stop = True
        for timer in self.retry_timers.values():
            timer.cancel()
        for task in self.inflight.values():
            task.cancel()
        self.wake.set()

    def _finished(self) -> bool:
        assert self.frontier is not None
        return (
            self.frontier.is_finished()
            and not self.inflight
            and not self.queued
            and not self.retry_timers
        )

    # -------------------------------------------------------------- dispatch

    def dispatch(self) -> None:
        assert self.frontier is not None
        self._enqueue(self.frontier.pop_ready())
        if not self.queued:
            return
        waiting: list[str] = []
        for i, node_id in enumerate(self.queued):
            key = self.plan.nodes[node_id].spec.concurrency_key
            blocked = self.limits.why_not(self.plan, self.run.run_id, key)
            if blocked == "run":
                waiting.extend(self.queued[i:])
                self.limits.wait_for_slot(self)
                break
            if blocked == "key":
                waiting.append(node_id)
                self.limits.wait_for_slot(self)
                continue
            self.limits.acquire(self.plan, self.run.run_id, key)
            self.inflight[node_id] = asyncio.get_running_loop().create_task(
                self.execute(node_id, self._start(node_id)),
                name=f"node-{self.run.run_id}-{node_id}",
            )
        self.queued = waiting

    def _enqueue(self, ready: list[str]) -> None:
        """Nodes the frontier handed out wait for a concurrency slot as QUEUED."""
        t = now()
        for node_id in ready:
            if node_id in self.inflight or node_id in self.retry_timers:
                continue  # still running or waiting to retry (a rebuild mid-run)
            node = self.nodes[node_id]
            if node.status != "QUEUED":
                node.queued_at = t
                self._set_node(node, "QUEUED")
            self.queued.append(node_id)

    def _scope(self, node_ids: Iterable[str]) -> dict[str, Any]:
        """What templates and conditions may read: the input and the named nodes."""
        nodes = {}
        for node_id in node_ids:
            n = self.nodes[node_id]
            if n.status in FINAL_NODE:
                nodes[node_id] = {
                    "output": n.output,
                    "status": n.status,
                    "attempt": n.attempt,
                    "error": n.error,
                }
        return {"input": self.run.input, "nodes": nodes}

    def _start(self, node_id: str) -> tuple[NodeTask, NodeContext] | str | _NodeFailure:
        """Runs synchronously as a node gets its slot: the condition, the params,
        and the RUNNING transition, so ready-to-running costs no loop round trip.

        Returns the task and its context, "skip" (the condition is false), or
        the failure to report.
        """
        node = self.nodes[node_id]
        node_plan = self.plan.nodes[node_id]
        spec = node_plan.spec
        scope = self._scope(node_plan.referenced)
        if node_plan.when is not None:
            try:
                if not evaluate(node_plan.when, scope, spec.when):
                    return "skip"
            except ExpressionError as err:
                return _NodeFailure(f"when: {err}", retry=False)
        try:
            params = render(node_plan.params, scope) if node_plan.refs else node_plan.params
        except ExpressionError as err:
            return _NodeFailure(f"params: {err}", retry=False)
        node.attempt += 1
        node.input = params
        node.finished_at = None
        node.error = ""
        task = NodeTask(
            run_id=self.run.run_id,
            node_id=node_id,
            kind=spec.kind,
            params=params,
            attempt=node.attempt,
            run_input=self.run.input,
            timeout_ms=spec.timeout_ms,
            resources={
                "cpus": spec.resources.cpus,
                "gpus": spec.resources.gpus,
                "memory": spec.resources.memory,
                "custom": dict(spec.resources.custom),
            },
            metadata=node_plan.metadata,
            labels=dict(spec.labels),
        )
        ctx = NodeContext(task, self._sink(node_id, node), asyncio.get_running_loop())
        self.contexts[node_id] = ctx
        if not getattr(self.scheduler.executor, "places_nodes", False):
            self._running(node, {})
        # else the node stays QUEUED until the executor has a place for it
        # (a Ray actor with the node's resources) and calls ctx.running().
        return task, ctx

    def _running(self, node: NodeRow, placement: dict[str, Any]) -> None:
        node.started_at = now()
        self._set_node(
            node, "RUNNING", data={"executor": self.scheduler.executor.name, **placement}
        )

    async def execute(
        self, node_id: str, start: tuple[NodeTask, NodeContext] | str | _NodeFailure
    ) -> None:
        node = self.nodes[node_id]
        node_plan = self.plan.nodes[node_id]
        spec = node_plan.spec
        key = spec.concurrency_key
        ctx: NodeContext | None = None
        try:
            if start == "skip":
                node.finished_at = now()
                self._set_node(node, "SKIPPED", error="", message=f"when is false: {spec.when}")
                self.frontier.skip(node_id)  # type: ignore[union-attr]
                return
            if isinstance(start, _NodeFailure):
                raise start
            assert not isinstance(start, str)
            task, ctx = start
            try:
                # The timeout counts from RUNNING, not from the wait for a place.
                async with asyncio.timeout(None) as deadline:
                    started = self._started(node, spec.timeout_ms, deadline)
                    if node.status == "RUNNING":
                        started({})
                    else:
                        ctx.on_running(started)
                    result = await self.scheduler.executor.run(task, ctx)
                    ctx.running({})  # an executor that never said where it ran
            except TimeoutError:
                ctx.cancel()
                ctx.flush()
                raise _NodeFailure(f"timed out after {spec.timeout_ms} ms", retry=True) from None
            except Exception:
                ctx.flush()
                raise
            ctx.flush()
            output = json_safe(result, f"the output of node {node_id!r}")
            node.output = output
            node.usage = dict(ctx.usage) or node.usage
            node.finished_at = now()
            if output is not None:
                self.pipeline.emit(
                    self.run.run_id,
                    "output",
                    node_id=node_id,
                    attempt=node.attempt,
                    data={"output": output},
                )
            self._set_node(node, "SUCCEEDED")
            self.frontier.complete(node_id)  # type: ignore[union-attr]
            await self.scheduler.hooks.call(
                self.plan, "on_success", self._hook_ctx(node), node_plan.metadata
            )
        except asyncio.CancelledError:
            if ctx is not None:
                ctx.cancel()
            raise  # interrupt, cancel or shutdown: the control decides the status
        except Exception as err:
            retry = not isinstance(err, _NodeFailure) or err.retry
            message = str(err) if isinstance(err, _NodeFailure) else describe_error(err)
            await self._failed(node, message, retry)
        finally:
            self.contexts.pop(node_id, None)
            if self.inflight.pop(node_id, None) is not None:
                self.limits.release(self.plan, self.run.run_id, key)
            self.wake.set()

    def _started(
        self, node: NodeRow, timeout_ms: int, deadline: asyncio.Timeout
    ) -> Callable[[dict[str, Any]], None]:
        def started(placement: dict[str, Any]) -> None:
            if node.status != "RUNNING":
                self._running(node, placement)
            if timeout_ms:
                deadline.reschedule(asyncio.get_running_loop().time() + timeout_ms / 1000)

        return started

    async def _failed(self, node: NodeRow, message: str, retry: bool) -> None:
        spec = self.plan.nodes[node.node_id].spec
        node.error = without_nul(message)
        node.finished_at = now()
        if retry and node.attempt < spec.retry.max_attempts and self.run.status != "CANCELLED":
            delay_ms = retry_delay_ms(spec.retry, node.attempt, random.random())
            self._set_node(
                node,
                "RETRY_WAIT",
                level="warning",
                data={
                    "retry_in_ms": delay_ms,
                    "next_attempt": node.attempt + 1,
                    "max_attempts": spec.retry.max_attempts,
                },
            )
            self.retry_timers[node.node_id] = asyncio.get_running_loop().call_later(
                delay_ms / 1000, self._retry_now, node.node_id
            )
            await self.scheduler.hooks.call(
                self.plan, "on_retry", self._hook_ctx(node), self.plan.nodes[node.node_id].metadata
            )
            return
        self._set_node(node, "FAILED", level="error")
        skipped = self.frontier.fail(node.node_id)  # type: ignore[union-attr]
        for other in skipped:
            self._set_node(
                self.nodes[other], "SKIPPED", error=f"upstream node {node.node_id!r} failed"
            )
        await self.scheduler.hooks.call(
            self.plan, "on_error", self._hook_ctx(node), self.plan.nodes[node.node_id].metadata
        )

    def _retry_now(self, node_id: str) -> None:
        self.retry_timers.pop(node_id, None)
        node = self.nodes[node_id]
        if node.status != "RETRY_WAIT":
            return
        self.frontier.requeue(node_id)  # type: ignore[union-attr]
        self.wake.set()

    # ----------------------------------------------------------------- state

    def _set_node(
        self,
        node: NodeRow,
        status: str,
        *,
        error: str | None = None,
        message: str = "",
        level: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        old = node.status
        node.status = status
        if error is not None:
            node.error = error
        counts = self.run.node_counts
        if old != status:
            counts[old] = counts.get(old, 0) - 1
            if counts[old] <= 0:
                counts.pop(old)
            counts[status] = counts.get(status, 0) + 1
        self.pipeline.put_node(node)
        self.pipeline.emit(
            self.run.run_id,
            "node_status",
            node_id=node.node_id,
            attempt=node.attempt,
            status=status,
            message=message
            or (node.error if status in ("FAILED", "RETRY_WAIT", "SKIPPED") else ""),
            level=level,
            data=data,
        )
        self._put_run(emit=False)

    def _put_run(self, *, emit: bool, message: str = "") -> None:
        if emit:
            self.pipeline.emit(
                self.run.run_id,
                "run_status",
                status=self.run.status,
                message=message or self.run.error,
            )
        self.pipeline.put_run(self.run)

    def _sink(self, node_id: str, node: NodeRow):
        run_id = self.run.run_id

        def sink(kind: str, fields: dict[str, Any]) -> None:
            if node.status != "RUNNING":
                return  # late events from an abandoned thread
            self.pipeline.emit(
                run_id,
                kind,
                node_id=node_id,
                attempt=node.attempt,
                message=str(fields.get("message", "")),
                level=fields.get("level", ""),
                data=fields.get("data") or None,
            )
            if kind == "progress" and "on_progress" in self.plan.spec.hooks:
                asyncio.get_running_loop().create_task(
                    self.scheduler.hooks.call(
                        self.plan,
                        "on_progress",
                        self._hook_ctx(node, progress=fields.get("data")),
                        self.plan.nodes[node_id].metadata,
                    )
                )

        return sink

    def _hook_ctx(self, node: NodeRow | None = None, **extra: Any) -> dict[str, Any]:
        ctx = {
            "run_id": self.run.run_id,
            "workflow": self.plan.name,
            "run_status": self.run.status,
            "input": self.run.input,
        }
        if node is not None:
            ctx.update(
                node_id=node.node_id,
                attempt=node.attempt,
                status=node.status,
                error=node.error,
                output=node.output,
            )
        ctx.update(extra)
        return ctx

    async def finish(self) -> None:
        failed = [
            n
            for n in self.nodes.values()
            if n.status in ("FAILED", "CANCELLED")
            and not self.plan.nodes[n.node_id].spec.continue_on_failure
        ]
        self.run.finished_at = now()
        if failed:
            self.run.status = "FAILED"
            names = ", ".join(repr(n.node_id) for n in failed[:5])
            self.run.error = f"{len(failed)} node(s) failed: {names}"
        else:
            self.run.status = "SUCCEEDED"
            self.run.error = ""
        # Each sink node's output; null when no sink succeeded.
        self.run.output = {
            node_id: self.nodes[node_id].output
            for node_id in self.plan.sinks
            if self.nodes[node_id].status == "SUCCEEDED"
        } or None
        self._put_run(emit=True)
        await self.scheduler.hooks.call(
            self.plan, "on_complete", self._hook_ctx(), self.plan.metadata
        )
        self.pipeline.close_run(self.run.run_id)

    # -------------------------------------------------------------- controls

    async def apply(self, action: str, *, node_id: str = "", reason: str = "") -> None:
        status = self.run.status
        note = f": {reason}" if reason else ""
        if action == "pause":
            if status != "RUNNING":
                raise FailedPrecondition(_refusal(self.run.run_id, action, status))
            self.run.status = "PAUSED"
            self._put_run(emit=True, message=f"paused{note}")
        elif action == "resume":
            if status not in ("PAUSED", "INTERRUPTED", "FAILED"):
                raise FailedPrecondition(_refusal(self.run.run_id, action, status))
            if status == "FAILED":
                for node in self.nodes.values():
                    if node.status in ("FAILED", "SKIPPED", "CANCELLED"):
                        self._reset(node)
            if status != "PAUSED":
                self.rebuild()
            self.run.status = "RUNNING"
            self.run.finished_at = None
            self.run.error = ""
            self._put_run(emit=True, message=f"resumed{note}")
            self._ensure_task()
        elif action in ("interrupt", "cancel"):
            if action == "interrupt" and status not in ("RUNNING", "PAUSED"):
                raise FailedPrecondition(_refusal(self.run.run_id, action, status))
            if action == "cancel" and status in FINAL_RUN:
                raise FailedPrecondition(_refusal(self.run.run_id, action, status))
            await self._stop_inflight()
            final = "CANCELLED" if action == "cancel" else "PENDING"
            for node in self.nodes.values():
                if node.status in IN_FLIGHT_NODE or (
                    action == "cancel" and node.status == "PENDING"
                ):
                    if node.status in ("RUNNING", "RETRY_WAIT"):
                        node.finished_at = now()
                    self._set_node(node, final, message=f"{action}ed{note}")
            self.run.status = "CANCELLED" if action == "cancel" else "INTERRUPTED"
            if action == "cancel":
                self.run.finished_at = now()
            self._put_run(emit=True, message=f"{action}ed{note}")
            self.queued = []  # resume rebuilds the frontier from the nodes' statuses
            if action == "cancel":
                self.pipeline.close_run(self.run.run_id)
            self.wake.set()
        elif action == "retry_node":
            node = self.nodes.get(node_id)
            if node is None:
                raise NotFound(f"run {self.run.run_id!r} has no node {node_id!r}")
            if status not in ("RUNNING", "PAUSED", "INTERRUPTED", "FAILED"):
                raise FailedPrecondition(_refusal(self.run.run_id, action, status))
            if node.status not in ("FAILED", "CANCELLED", "SKIPPED"):
                raise FailedPrecondition(
                    f"node {node_id!r} is {node.status}; only a FAILED, CANCELLED or SKIPPED "
                    "node can be retried"
                )
            self._reset(node)
            for other in self.plan.dag.descendants(node_id):
                if self.nodes[other].status == "SKIPPED":
                    self._reset(self.nodes[other])
            self.rebuild()
            if status in ("FAILED", "INTERRUPTED"):
                self.run.status = "RUNNING"
                self.run.finished_at = None
                self.run.error = ""
                self._put_run(emit=True, message=f"node {node_id!r} retried")
            self._ensure_task()
        else:
            raise InvalidArgument(f"unknown action {action!r}")
        self.wake.set()

    def _reset(self, node: NodeRow) -> None:
        node.output = None
        node.finished_at = None
        self._set_node(node, "PENDING", error="")

    def _ensure_task(self) -> None:
        if self.task is None or self.task.done():
            self.scheduler.actors[self.run.run_id] = self
            self.task = asyncio.get_running_loop().create_task(
                self.main(False), name=f"run-{self.run.run_id}"
            )

    async def _stop_inflight(self) -> None:
        for timer in self.retry_timers.values():
            timer.cancel()
        self.retry_timers.clear()
        tasks = list(self.inflight.values())
        for ctx in self.contexts.values():
            ctx.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class _NodeFailure(Exception):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry
