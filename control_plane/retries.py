"""Retries: a failed attempt waits (RETRY_WAIT) and is queued again, or the
node is FAILED and the nodes below it are SKIPPED.

Part of RunActor (control_plane/run_actor.py). The delay comes from the
node's retry policy (control_plane/plan.py retry_delay_ms: fixed, linear or
exponential, capped, with jitter); the wait is a loop timer, not a task.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from control_plane.plan import retry_delay_ms
from control_plane.store import NodeRow, now, storable

if TYPE_CHECKING:
    from control_plane.run_actor import RunActor


class RetryMixin:
    """What happens after a failed attempt."""

    def attempt_failed(
        self: RunActor,
        node: NodeRow,
        message: str,
        retry: bool,
        traceback: str = "",
        retry_after_ms: int = 0,
    ) -> None:
        """Another attempt after the policy's delay, or FAILED. `retry` False:
        another attempt cannot mend it (the retry policy does not apply).
        `retry_after_ms`: the failure's own least wait (an HTTP Retry-After);
        the delay is the larger of it and the policy's."""
        spec = self.plan.nodes[node.node_id].spec
        node.error = storable(message)
        node.traceback = storable(traceback)
        node.finished_at = now()
        extra = {"traceback": node.traceback} if node.traceback else {}
        if retry and node.attempt < spec.retry.max_attempts and self.run.status != "CANCELLED":
            delay_ms = max(
                retry_delay_ms(spec.retry, node.attempt, random.random()), retry_after_ms
            )
            self.set_node(
                node,
                "RETRY_WAIT",
                level="warning",
                data={
                    "retry_in_ms": delay_ms,
                    "next_attempt": node.attempt + 1,
                    "max_attempts": spec.retry.max_attempts,
                    **extra,
                },
            )
            self.retry_timers[node.node_id] = asyncio.get_running_loop().call_later(
                delay_ms / 1000, self._retry_now, node.node_id
            )
            self.node_hook("on_retry", node)
            return
        self.set_node(node, "FAILED", level="error", data=extra or None)
        skipped = self.frontier.fail(node.node_id)  # type: ignore[union-attr]
        for other in skipped:
            self.set_node(
                self.nodes[other], "SKIPPED", error=f"upstream node {node.node_id!r} failed"
            )
        self.node_hook("on_error", node)

    def _retry_now(self: RunActor, node_id: str) -> None:
        self.retry_timers.pop(node_id, None)
        node = self.nodes[node_id]
        if node.status != "RETRY_WAIT":
            return
        self.frontier.requeue(node_id)  # type: ignore[union-attr]
        self.wake.set()

    def cancel_retry_timers(self: RunActor) -> None:
        for timer in self.retry_timers.values():
            timer.cancel()
        self.retry_timers.clear()
