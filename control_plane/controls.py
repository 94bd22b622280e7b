"""Run controls: pause, resume, interrupt, cancel, retry a node.

Part of RunActor (control_plane/run_actor.py). Which control a run accepts in
which status is statepipe_api.lifecycle's table; a refused one is
FAILED_PRECONDITION with the run's status in the message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound
from control_plane.store import NodeRow, now
from statepipe_api.lifecycle import (
    CONTROLS,
    IN_FLIGHT_NODE,
    RESETTABLE_NODE,
    control_refusal,
    node_retry_refusal,
)

if TYPE_CHECKING:
    from control_plane.run_actor import RunActor


def check_control(
    run_id: str,
    action: str,
    status: str,
    *,
    node_id: str = "",
    nodes: dict[str, NodeRow] | None = None,
) -> None:
    """Raises the error a client should get for `action` on a run in `status`
    (for retry_node, of node `node_id` among `nodes`): an unknown node first,
    then the run's status, then the node's."""
    if action not in CONTROLS:
        raise InvalidArgument(f"unknown action {action!r}")
    if action == "retry_node" and nodes is not None and node_id not in nodes:
        raise NotFound(f"run {run_id!r} has no node {node_id!r}")
    refusal = control_refusal(run_id, action, status)
    if refusal is None and action == "retry_node" and nodes is not None:
        refusal = node_retry_refusal(node_id, nodes[node_id].status)
    if refusal is not None:
        raise FailedPrecondition(refusal)


class ControlsMixin:
    """Applies a control to the run this actor drives."""

    async def apply(self: RunActor, action: str, *, node_id: str = "", reason: str = "") -> None:
        status = self.run.status
        check_control(self.run_id, action, status, node_id=node_id, nodes=self.nodes)
        note = f": {reason}" if reason else ""
        if action == "pause":
            self.set_run_status("PAUSED", message=f"paused{note}")
        elif action == "resume":
            if status == "FAILED":
                for node in self.nodes.values():
                    if node.status in RESETTABLE_NODE:
                        self._reset(node)
            if status != "PAUSED" or self.frontier is None:
                self.rebuild()
            self.run.finished_at = None
            self.run.error = ""
            self.set_run_status("RUNNING", message=f"resumed{note}")
            self.ensure_task()
        elif action in ("interrupt", "cancel"):
            # Nothing waiting for a slot may start while in-flight nodes stop
            # (resume rebuilds the frontier from the nodes' statuses).
            self.queued = []
            self.halting = True
            try:
                await self._stop_inflight()
            finally:
                self.halting = False
            final = "CANCELLED" if action == "cancel" else "PENDING"
            for node in self.nodes.values():
                if node.status in IN_FLIGHT_NODE or (
                    action == "cancel" and node.status == "PENDING"
                ):
                    if node.status in ("RUNNING", "RETRY_WAIT"):
                        node.finished_at = now()
                    self.set_node(node, final, message=f"{action}ed{note}")
            if action == "cancel":
                self.run.finished_at = now()
            self.set_run_status(
                "CANCELLED" if action == "cancel" else "INTERRUPTED", message=f"{action}ed{note}"
            )
            if action == "cancel":
                self.pipeline.close_run(self.run_id)
        elif action == "retry_node":
            self._reset(self.nodes[node_id])
            for other in self.plan.dag.descendants(node_id):
                if self.nodes[other].status == "SKIPPED":
                    self._reset(self.nodes[other])
            self.rebuild()
            if status in ("FAILED", "INTERRUPTED"):
                self.run.finished_at = None
                self.run.error = ""
                self.set_run_status("RUNNING", message=f"node {node_id!r} retried")
            self.ensure_task()
        self.wake.set()

    def _reset(self: RunActor, node: NodeRow) -> None:
        node.output = None
        node.finished_at = None
        node.traceback = ""
        self.set_node(node, "PENDING", error="")

    async def _stop_inflight(self: RunActor) -> None:
        self.cancel_retry_timers()
        tasks = list(self.inflight.values())
        for ctx in self.contexts.values():
            ctx.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
