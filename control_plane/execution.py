"""Node execution: one node task, from RUNNING to its output or its failure.

Part of RunActor (control_plane/run_actor.py). The executor runs the node
(executors/); its events come back through the node's sink; a timeout counts
from RUNNING, not from the wait for a place; the output must be JSON. A
failure goes to control_plane/retries.py; a cancellation (interrupt, cancel,
shutdown) leaves the status to whoever cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from control_plane.store import NodeRow, now, storable
from executors.base import EventSink, NodeContext, NodeTask, describe_error, error_traceback
from statepipe_api.convert import MAX_JSON_DEPTH, json_depth_exceeds

if TYPE_CHECKING:
    from control_plane.run_actor import RunActor


# The control plane's own frames are left out of node tracebacks too.
_HERE = os.path.dirname(os.path.abspath(__file__))


class NodeFailure(Exception):
    """A node failure with its message and whether the retry policy applies."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


# What dispatch hands a node task: the task and its context, "skip" (its
# condition is false), or the failure found before it could start.
NodeStart = tuple[NodeTask, NodeContext] | str | NodeFailure


def json_safe(value: Any, what: str) -> Any:
    """The value as plain, storable JSON, or a NodeFailure saying why not.

    NaN and infinities are refused (JSON has no such numbers and PostgreSQL's
    jsonb rejects them), and so is nesting deeper than MAX_JSON_DEPTH (the API's
    decoders could not read the run back); NUL characters and lone surrogates,
    which PostgreSQL text cannot hold, become U+FFFD (control_plane.store.storable).
    """
    try:
        plain = storable(json.loads(json.dumps(value, allow_nan=False)))
    except (TypeError, ValueError, RecursionError) as err:
        raise NodeFailure(f"{what} is not JSON-serializable: {err}", retry=False) from None
    if json_depth_exceeds(plain):
        raise NodeFailure(
            f"{what} nests objects and arrays more than {MAX_JSON_DEPTH} levels deep,"
            " more than the API can carry",
            retry=False,
        )
    return plain


class ExecutionMixin:
    """Runs one node task and records its outcome."""

    def node_running(self: RunActor, node: NodeRow, placement: dict[str, Any]) -> None:
        node.started_at = now()
        self.set_node(node, "RUNNING", data={"executor": self.scheduler.executor.name, **placement})

    async def execute(self: RunActor, node_id: str, start: NodeStart) -> None:
        node = self.nodes[node_id]
        node_plan = self.plan.nodes[node_id]
        spec = node_plan.spec
        key = spec.concurrency_key
        ctx: NodeContext | None = None
        try:
            if start == "skip":
                node.finished_at = now()
                self.set_node(node, "SKIPPED", error="", message=f"when is false: {spec.when}")
                self.frontier.skip(node_id)  # type: ignore[union-attr]
                return
            if isinstance(start, NodeFailure):
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
                    if node_plan.in_control_plane:
                        # workflow and map: they start child runs, whose nodes
                        # go to the executor.
                        runner = self.scheduler.runners.get(spec.kind)
                        result = await runner.run(task, ctx)  # type: ignore[union-attr]
                    else:
                        result = await self.scheduler.executor.run(task, ctx)
                    ctx.running({})  # an executor that never said where it ran
            except TimeoutError:
                if not deadline.expired():
                    raise  # the node's own TimeoutError: a failure like any other
                ctx.cancel()
                ctx.flush()
                raise NodeFailure(f"timed out after {spec.timeout_ms} ms", retry=True) from None
            except Exception:
                ctx.flush()
                raise
            ctx.flush()
            output = json_safe(result, f"the output of node {node_id!r}")
            node.output = output
            self.set_usage(node, dict(ctx.usage) or node.usage)
            node.finished_at = now()
            if output is not None:
                self.emit("output", node_id=node_id, attempt=node.attempt, data={"output": output})
            # The final event carries the usage (tokens, time to first token, cost).
            self.set_node(node, "SUCCEEDED", data={"usage": node.usage} if node.usage else None)
            self.frontier.complete(node_id)  # type: ignore[union-attr]
            await self.hooks.call(self.plan, "on_success", self.hook_ctx(node), node_plan.metadata)
        except asyncio.CancelledError:
            if ctx is not None:
                ctx.cancel()
            raise  # interrupt, cancel or shutdown: the control decides the status
        except Exception as err:
            if isinstance(err, NodeFailure):
                self.attempt_failed(node, str(err), err.retry)
            else:
                retry = getattr(err, "retryable", True)
                trace = error_traceback(err, plumbing=(_HERE,))
                wait_ms = getattr(err, "retry_after_ms", 0)
                self.attempt_failed(node, describe_error(err), retry, trace, wait_ms)
        finally:
            self.contexts.pop(node_id, None)
            if self.inflight.pop(node_id, None) is not None:
                self.limits.release(self.plan, self.run_id, key)
            self.wake.set()

    def _started(
        self: RunActor, node: NodeRow, timeout_ms: int, deadline: asyncio.Timeout
    ) -> Callable[[dict[str, Any]], None]:
        def started(placement: dict[str, Any]) -> None:
            if node.status != "RUNNING":
                self.node_running(node, placement)
            if timeout_ms:
                deadline.reschedule(asyncio.get_running_loop().time() + timeout_ms / 1000)

        return started

    def node_sink(self: RunActor, node_id: str, node: NodeRow) -> EventSink:
        """Where the node's own events (logs, tokens, progress, ...) go."""

        def sink(kind: str, fields: dict[str, Any]) -> None:
            if node.status != "RUNNING" or self.lost:
                return  # late events from an abandoned thread
            self.emit(
                kind,
                node_id=node_id,
                attempt=node.attempt,
                message=str(fields.get("message", "")),
                level=fields.get("level", ""),
                data=fields.get("data") or None,
            )
            if kind == "progress":
                self.node_hook("on_progress", node, progress=fields.get("data"))

        return sink
