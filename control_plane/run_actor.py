"""RunActor: the one asyncio task that drives one run.

An actor holds the run's rows and its frontier (rebuilt from the nodes' stored
statuses: a fresh start, a resume and crash recovery are one code path). Its
parts live in modules named after what they do:

- control_plane/dispatch.py    ready nodes → QUEUED → a slot → a node task
- control_plane/execution.py   one node task: run it, its events, its output
- control_plane/retries.py     a failed attempt: wait and queue again, or FAILED
- control_plane/controls.py    pause, resume, interrupt, cancel, retry a node

This module holds the state they share, every status change (each checked
against statepipe_api.lifecycle, each a row update and an event), the main
loop, and the actor's registration: an actor is registered with its scheduler
while its run needs one (lifecycle.run_needs_actor) and released on every path
that leaves such a status, so no ended run stays registered.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import core_rs
from control_plane.controls import ControlsMixin
from control_plane.dispatch import DispatchMixin
from control_plane.execution import ExecutionMixin
from control_plane.plan import Plan
from control_plane.retries import RetryMixin
from control_plane.store import NodeRow, RunRow, now
from control_plane.usage import adjusted
from executors.base import NodeContext
from statepipe_api.lifecycle import (
    FINAL_RUN,
    check_node_transition,
    check_run_transition,
    run_needs_actor,
)

if TYPE_CHECKING:
    from control_plane.scheduler import Scheduler

log = logging.getLogger(__name__)


class RunActor(DispatchMixin, ExecutionMixin, RetryMixin, ControlsMixin):
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
        self.hooks = scheduler.hooks
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.queued: list[str] = []  # handed out by the frontier, waiting for a slot
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[str, NodeContext] = {}
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.frontier: core_rs.Frontier | None = None
        # Hook calls and other side tasks started by this actor (kept referenced).
        self.side_tasks: set[asyncio.Task[Any]] = set()
        self.registered = False
        # Another control plane holds the run now: write nothing more.
        self.lost = False
        # An interrupt or cancel is stopping in-flight nodes: start no new one.
        self.halting = False
        self._stop = False

    def __hash__(self) -> int:
        return id(self)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    # ---------------------------------------------------------- registration

    def register(self) -> None:
        """The scheduler routes controls, GetRun and leases for the run to this actor."""
        self.scheduler.actors[self.run_id] = self
        self.registered = True

    def release(self) -> None:
        """Unregisters and gives up the lease (in the run's next batched write)."""
        if not self.registered:
            return
        self.registered = False
        if self.scheduler.actors.get(self.run_id) is self:
            del self.scheduler.actors[self.run_id]
        if not self.scheduler.stopping and not self.lost:
            self.run.lease_owner = None
            self.pipeline.put_run(self.run)

    def _release_if_idle(self) -> None:
        """Releases now when the run needs no actor and no task will release it."""
        if not run_needs_actor(self.run.status) and (self.task is None or self.task.done()):
            self.release()

    # ----------------------------------------------------------------- loop

    def begin(self, *, first_time: bool) -> None:
        """Rebuilds the frontier and starts the main loop (start and takeover)."""
        self.rebuild()
        self._start_task(first_time)

    def ensure_task(self) -> None:
        """Starts the main loop if it is not running (a control brought the run back)."""
        if self.task is None or self.task.done():
            if not self.registered:
                self.register()
            self._start_task(False)

    def _start_task(self, first_time: bool) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self.main(first_time), name=f"run-{self.run_id}"
        )

    async def main(self, first_time: bool) -> None:
        try:
            if first_time:
                await self.hooks.call(self.plan, "on_init", self.hook_ctx(), self.plan.metadata)
            while not self._stop:
                self.wake.clear()
                if self.run.status == "RUNNING":
                    self.dispatch()
                    if self._finished():
                        await self.finish()
                        continue  # a control may have brought the run back meanwhile
                if not run_needs_actor(self.run.status):
                    return
                await self.wake.wait()
        except Exception:
            log.exception("run %s: scheduler error", self.run_id)
            # A run that already ended keeps its outcome; any other fails.
            if not self.lost and self.run.status not in FINAL_RUN:
                self.run.error = "internal scheduler error:\n" + traceback.format_exc(limit=5)
                self.run.finished_at = now()
                self.set_run_status("FAILED")
                self.pipeline.close_run(self.run_id)
        finally:
            self.release()

    def shutdown(self) -> None:
        """Server stop or a lost lease: abandon in-flight work (whoever holds the
        run next re-runs it), keep state."""
        self._stop = True
        for timer in self.retry_timers.values():
            timer.cancel()
        for task in self.inflight.values():
            task.cancel()
        for task in self.side_tasks:
            task.cancel()
        self.wake.set()

    def lose_lease(self) -> None:
        """Another control plane owns the run now: stop at once, write nothing."""
        if self.lost:
            return
        self.lost = True
        for ctx in self.contexts.values():
            ctx.cancel()
        self.shutdown()
        if self.task is None or self.task.done():
            self.release()

    def _finished(self) -> bool:
        assert self.frontier is not None
        return (
            self.frontier.is_finished()
            and not self.inflight
            and not self.queued
            and not self.retry_timers
        )

    async def finish(self) -> None:
        failed = [
            n
            for n in self.nodes.values()
            if n.status in ("FAILED", "CANCELLED")
            and not self.plan.nodes[n.node_id].spec.continue_on_failure
        ]
        self.run.finished_at = now()
        if failed:
            names = ", ".join(repr(n.node_id) for n in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            self.run.error = f"{len(failed)} node(s) failed: {names}{more}"
        else:
            self.run.error = ""
        # Each sink node's output; null when no sink succeeded.
        self.run.output = {
            node_id: self.nodes[node_id].output
            for node_id in self.plan.sinks
            if self.nodes[node_id].status == "SUCCEEDED"
        } or None
        self.set_run_status("FAILED" if failed else "SUCCEEDED")
        if self.side_tasks:  # node hooks still running come before on_complete
            await asyncio.gather(*self.side_tasks, return_exceptions=True)
        await self.hooks.call(self.plan, "on_complete", self.hook_ctx(), self.plan.metadata)
        self.pipeline.close_run(self.run_id)

    # ---------------------------------------------------------------- state

    def emit(self, kind: str, **fields: Any) -> None:
        """An event of this run (nothing once the lease is lost)."""
        if not self.lost:
            self.pipeline.emit(self.run_id, kind, **fields)

    def set_node(
        self,
        node: NodeRow,
        status: str,
        *,
        error: str | None = None,
        message: str = "",
        level: str = "",
        data: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> None:
        """A node's status change: checked, counted, written, and an event
        (numbered with the node's attempt unless `attempt` says otherwise)."""
        if self.lost:
            return
        old = node.status
        check_node_transition(old, status)
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
        self.emit(
            "node_status",
            node_id=node.node_id,
            attempt=node.attempt if attempt is None else attempt,
            status=status,
            message=message
            or (node.error if status in ("FAILED", "RETRY_WAIT", "SKIPPED") else ""),
            level=level,
            data=data,
        )
        self.put_run()

    def set_usage(self, node: NodeRow, usage: dict[str, Any] | None) -> None:
        """Stores a node's usage and moves the run's total by the change (both
        written with the node's next status change): a node run again counts
        with its latest usage only."""
        old = node.usage
        node.usage = usage
        if old != usage:
            others = (n.usage for n in self.nodes.values() if n is not node)
            self.run.usage = adjusted(self.run.usage, old, usage, others)

    def set_run_status(self, status: str, *, message: str = "") -> None:
        """The run's status change: checked, written, an event; an actor the
        new status does not need is released."""
        if self.lost:
            return
        check_run_transition(self.run.status, status)
        self.run.status = status
        self.emit("run_status", status=status, message=message or self.run.error)
        self.put_run()
        if status in FINAL_RUN:
            self.scheduler.waiters.ended(self.run_id)
        self._release_if_idle()

    def put_run(self) -> None:
        if not self.lost:
            self.pipeline.put_run(self.run)

    def hook_ctx(self, node: NodeRow | None = None, **extra: Any) -> dict[str, Any]:
        ctx = {
            "run_id": self.run_id,
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

    def side_task(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Starts `coro` beside the run, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.run_id}")
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    def node_hook(self, hook: str, node: NodeRow, **extra: Any) -> None:
        """Calls a node hook beside the run: a slow hook holds up neither the
        node's slot nor its retry; on_complete waits for every one."""
        if self.hooks.wants(self.plan, hook):
            self.side_task(
                self.hooks.call(
                    self.plan,
                    hook,
                    self.hook_ctx(node, **extra),
                    self.plan.nodes[node.node_id].metadata,
                ),
                hook,
            )
