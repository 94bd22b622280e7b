"""The scheduler: owns runs through leases and drives each with a RunActor.

Every active run this control plane holds has a RunActor
(control_plane/run_actor.py). The scheduler creates runs, loads stored runs
into actors (start, takeover, a control on a run nobody drives), routes
controls to them, and keeps their leases (control_plane/leases.py). The
control plane is the only writer of run state; every transition is a row
update and an event, queued on the event pipeline and committed in batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import uuid
from typing import Any

from control_plane.children import POLL_S as CHILD_POLL_S
from control_plane.children import PROPAGATED, Waiters
from control_plane.controls import check_control
from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound
from control_plane.hooks import Hooks
from control_plane.leases import LeaseKeeper, dead_owners, owner_id
from control_plane.limits import Limits
from control_plane.pipeline import EventPipeline
from control_plane.plan import Plan, compile_spec
from control_plane.run_actor import RunActor
from control_plane.store import NodeRow, RunFilter, RunRow, Store, now, storable
from executors.base import Executor
from executors.runners import RunnerRegistry
from statepipe_api.convert import MAX_JSON_DEPTH, json_depth_exceeds
from statepipe_api.lifecycle import FINAL_RUN
from statepipe_api.v1 import statepipe_pb2 as pb

log = logging.getLogger(__name__)


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
        # Nodes waiting for child runs to end (control_plane/children.py).
        self.waiters = Waiters()
        self._background: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self._plans: dict[bytes, Plan] = {}
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.leases = LeaseKeeper(
            store,
            self.owner,
            self.settings.lease_ms,
            held=lambda: list(self.actors),
            on_lost=self.lease_lost,
            on_claimed=self._take_over,
        )
        # Every write the pipeline commits is fenced on this owner's leases.
        pipeline.set_owner(self.owner, self.lease_lost)

    # ------------------------------------------------------------- lifecycle

    async def start(self, *, take_over: bool = True) -> list[str]:
        """Takes over runs left active by a dead or expired owner; starts leasing
        (and, with `take_over`, claiming such runs every lease period)."""
        await self.hooks.load_plugins()
        claimed = await self.leases.claim() if take_over else []
        await self._take_over(claimed)
        self.leases.claim_orphans = take_over
        self.leases.start()
        if claimed:
            log.info("took over %d runs: %s", len(claimed), claimed[:10])
        return claimed

    async def stop(self) -> None:
        """Stops dispatching; in-flight nodes are interrupted and left for recovery."""
        self.stopping = True
        await self.leases.stop()
        actors = list(self.actors.values())
        for actor in actors:
            actor.shutdown()
        await asyncio.gather(*(a.task for a in actors if a.task), return_exceptions=True)
        await self.pipeline.flush()
        for actor in actors:
            if not actor.lost:
                await self.store.release_lease(actor.run_id, self.owner)

    def lease_lost(self, run_ids: list[str]) -> None:
        """This owner may write no more for these runs (another control plane
        holds them, or the writer failed them): their actors stop at once."""
        for run_id in run_ids:
            actor = self.actors.get(run_id)
            if actor is not None:
                log.warning("run %s: no longer held by this control plane; stopping", run_id)
                actor.lose_lease()

    async def _take_over(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            async with self._locks[run_id]:
                if run_id in self.actors:
                    continue
                try:
                    actor = await self._activate(run_id)
                except Exception:
                    log.exception("run %s: cannot take it over", run_id)
                    continue
                actor.emit(
                    "log",
                    level="warning",
                    message=f"run taken over by {self.owner} after its owner stopped",
                )
                actor.begin(first_time=False)

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

    async def registered_plan(self, name: str, version: str = "") -> Plan:
        """The plan of a registered workflow (the latest version when none is given)."""
        row = await self.store.get_workflow(name, version)
        if row is None:
            which = f"version {version!r} of " if version else ""
            raise NotFound(f"{which}workflow {name!r} is not registered")
        return self.plan_for(row.spec)

    # ------------------------------------------------------------------ runs

    async def start_run(
        self,
        plan: Plan,
        run_input: Any,
        *,
        idempotency_key: str = "",
        labels: dict[str, str] | None = None,
        parent: tuple[str, str] | None = None,
    ) -> tuple[RunRow, bool]:
        """Creates a run and starts driving it; `parent` (run id, node id) makes
        it a child run (control_plane/children.py)."""
        run_input = storable(run_input)
        labels = storable(labels) if labels else labels
        idempotency_key = storable(idempotency_key)
        if json_depth_exceeds(run_input):
            raise InvalidArgument(
                f"input nests objects and arrays more than {MAX_JSON_DEPTH} levels deep,"
                " more than the API can carry back"
            )
        plan.validate_input(run_input)
        await self.pipeline.room()  # backpressure while Postgres falls behind
        if idempotency_key:
            async with self._locks[f"key:{idempotency_key}"]:
                existing = await self.store.find_run_by_key(idempotency_key)
                if existing is not None:
                    return existing, False
                run = await self._create_run(plan, run_input, idempotency_key, labels, parent)
            self._locks.pop(f"key:{idempotency_key}", None)
            return run, True
        return await self._create_run(plan, run_input, None, labels, parent), True

    async def _create_run(
        self,
        plan: Plan,
        run_input: Any,
        key: str | None,
        labels: dict[str, str] | None,
        parent: tuple[str, str] | None = None,
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
            parent_run_id=parent[0] if parent else None,
            parent_node_id=parent[1] if parent else None,
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
        actor.register()
        await self.pipeline.flush()  # durable before StartRun returns
        actor.begin(first_time=True)
        return run

    async def _activate(self, run_id: str) -> RunActor:
        """Loads a stored run, whose lease this owner holds, into a registered
        actor that does not run yet (the caller begins it or applies a control)."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        nodes = await self.store.get_nodes(run_id)
        plan = self.plan_for(run.spec)
        self.pipeline.open_run(run_id, max(run.last_seq, await self.store.max_seq(run_id)))
        actor = RunActor(self, plan, run, {n.node_id: n for n in nodes})
        actor.register()
        return actor

    async def wait_ended(self, run_id: str) -> RunRow:
        """The run once it is SUCCEEDED, FAILED or CANCELLED, durably so."""
        while True:
            future = self.waiters.add(run_id)
            try:
                actor = self.actors.get(run_id)
                run = actor.run if actor is not None else await self.store.get_run(run_id)
                if run is None:
                    raise NotFound(f"run {run_id!r} not found")
                if run.status in FINAL_RUN:
                    await self.pipeline.flush()
                    return dataclasses.replace(run)
                # Driven here: its actor resolves the future as it ends. Else
                # (paused, or driven by another control plane) look again soon.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(future), None if actor is not None else CHILD_POLL_S
                    )
            finally:
                self.waiters.discard(run_id, future)

    def child_lock(self, parent_run_id: str, parent_node_id: str, key: str) -> asyncio.Lock:
        return self._locks[f"child:{parent_run_id}:{parent_node_id}:{key}"]

    def in_background(self, coro: Any) -> None:
        """Runs `coro` beside everything else, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                actor = await self._hold(run_id, action, node_id)
            await actor.apply(action, node_id=node_id, reason=reason)
            # The run as the control left it (nodes may move on during the flush).
            snapshot = dataclasses.replace(actor.run, node_counts=dict(actor.run.node_counts))
            await self.pipeline.flush()
        if action in PROPAGATED:
            await self._propagate(run_id, action)
        return snapshot

    async def _propagate(self, run_id: str, action: str) -> None:
        """Passes a control on to the run's children it applies to (and theirs)."""
        children = await self.store.list_runs(
            RunFilter(statuses=PROPAGATED[action], parent_run_id=run_id), limit=10_000
        )
        reason = f"parent run {run_id} {action}"
        await asyncio.gather(
            *(self.control_quietly(child.run_id, action, reason=reason) for child in children)
        )

    async def control_quietly(self, run_id: str, action: str, *, reason: str = "") -> None:
        """A control on a child run; a child that ended or moved on meanwhile is left be."""
        try:
            await self.control(run_id, action, reason=reason)
        except (FailedPrecondition, NotFound):
            pass
        except Exception:
            log.exception("run %s: cannot %s it", run_id, action)

    async def _hold(self, run_id: str, action: str, node_id: str) -> RunActor:
        """An actor for a control on a run no actor here drives (paused,
        interrupted or failed, or left by a stopped server): checks the control
        against the stored run first, then takes the run's lease."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        nodes = None
        if action == "retry_node":
            nodes = {n.node_id: n for n in await self.store.get_nodes(run_id)}
        check_control(run_id, action, run.status, node_id=node_id, nodes=nodes)
        dead = await dead_owners(self.store)
        if not await self.store.lease_run(run_id, self.owner, self.settings.lease_ms, dead):
            raise FailedPrecondition(
                f"run {run_id!r} is {run.status} on another control plane ({run.lease_owner});"
                " send the control to that server"
            )
        return await self._activate(run_id)
