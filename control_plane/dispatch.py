"""Dispatch: ready nodes become QUEUED, then get a concurrency slot and a task.

Part of RunActor (control_plane/run_actor.py). The frontier hands out nodes
whose dependencies are done; each waits as QUEUED for a slot (control_plane/
limits.py); as it gets one, its condition and params are evaluated and it
becomes a node task (control_plane/execution.py) in the same loop turn, so
ready-to-running costs no loop round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import core_rs
from control_plane.children import NodeChildren
from control_plane.execution import NodeFailure, NodeStart
from control_plane.expressions import ExpressionError, evaluate, render
from control_plane.store import now
from executors.base import NodeContext, NodeTask
from statepipe_api.lifecycle import FINAL_NODE

if TYPE_CHECKING:
    from control_plane.run_actor import RunActor


class DispatchMixin:
    """Frontier → QUEUED → slot → node task."""

    def rebuild(self: RunActor) -> None:
        """The frontier from stored statuses; queued/running nodes become ready again."""
        statuses = {n.node_id: n.status for n in self.nodes.values()}
        keep_going = [n for n, p in self.plan.nodes.items() if p.spec.continue_on_failure]
        self.frontier = core_rs.Frontier(self.plan.dag, statuses, keep_going)
        for node_id in self.frontier.blocked():
            node = self.nodes[node_id]
            if node.status != "SKIPPED":
                self.set_node(node, "SKIPPED", error="an upstream node failed")
        self.queued = []
        self._enqueue(self.frontier.pop_ready())

    def dispatch(self: RunActor) -> None:
        assert self.frontier is not None
        if self.halting:
            return  # an interrupt or cancel is stopping the in-flight nodes
        self._enqueue(self.frontier.pop_ready())
        if not self.queued:
            return
        waiting: list[str] = []
        for i, node_id in enumerate(self.queued):
            key = self.plan.nodes[node_id].spec.concurrency_key
            blocked = self.limits.why_not(self.plan, self.run_id, key)
            if blocked == "run":
                waiting.extend(self.queued[i:])
                self.limits.wait_for_slot(self.wake)
                break
            if blocked == "key":
                waiting.append(node_id)
                self.limits.wait_for_slot(self.wake)
                continue
            self.limits.acquire(self.plan, self.run_id, key)
            self.inflight[node_id] = asyncio.get_running_loop().create_task(
                self.execute(node_id, self._prepare(node_id)),
                name=f"node-{self.run_id}-{node_id}",
            )
        self.queued = waiting

    def _enqueue(self: RunActor, ready: list[str]) -> None:
        """Nodes the frontier handed out wait for a concurrency slot as QUEUED."""
        t = now()
        for node_id in ready:
            if node_id in self.inflight or node_id in self.retry_timers:
                continue  # still running or waiting to retry (a rebuild mid-run)
            node = self.nodes[node_id]
            if node.status != "QUEUED":
                node.queued_at = t
                # Numbered as the attempt it waits to become (it counts on RUNNING).
                self.set_node(node, "QUEUED", attempt=node.attempt + 1)
            self.queued.append(node_id)

    def scope_of(self: RunActor, node_ids: Iterable[str]) -> dict[str, Any]:
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

    def _prepare(self: RunActor, node_id: str) -> NodeStart:
        """Runs synchronously as a node gets its slot: the condition, the params,
        and (on executors that do not place nodes) the RUNNING transition.

        Returns the task and its context, "skip" (the condition is false), or
        the failure to report.
        """
        node = self.nodes[node_id]
        node_plan = self.plan.nodes[node_id]
        spec = node_plan.spec
        scope = self.scope_of(node_plan.referenced)
        if node_plan.when is not None:
            try:
                if not evaluate(node_plan.when, scope, spec.when):
                    return "skip"
            except ExpressionError as err:
                return NodeFailure(f"when: {err}", retry=False)
        try:
            if node_plan.item_template:
                # A map's item template is rendered per item, in the item's child run.
                template = node_plan.item_template
                own = {k: v for k, v in node_plan.params.items() if k != template}
                params = {**render(own, scope), template: node_plan.params[template]}
            else:
                params = render(node_plan.params, scope) if node_plan.refs else node_plan.params
        except ExpressionError as err:
            return NodeFailure(f"params: {err}", retry=False)
        node.attempt += 1
        node.input = params
        node.finished_at = None
        node.error = ""
        node.traceback = ""
        task = NodeTask(
            run_id=self.run_id,
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
        ctx = NodeContext(
            task,
            self.node_sink(node_id, node),
            asyncio.get_running_loop(),
            has_room=self.pipeline.has_room,
            room=self.pipeline.room,
        )
        ctx.children = NodeChildren(self, node_id)
        self.contexts[node_id] = ctx
        if node_plan.in_control_plane or not getattr(
            self.scheduler.executor, "places_nodes", False
        ):
            self.node_running(node, {})
        # else the node stays QUEUED until the executor has a place for it
        # (a Ray actor with the node's resources) and calls ctx.running().
        return task, ctx
