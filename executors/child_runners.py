"""Runners that start child runs: ``workflow`` and ``map``.

They run in the control plane (``in_control_plane``), not on the executor:
each starts child runs (control_plane/children.py), whose own nodes go to the
executor, local or Ray. A child records its parent run and node; controls on
the parent reach it; a node that runs again finds its children again instead
of starting new ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from executors.base import NodeContext, NodeError, NodeTask

DEFAULT_MAX_CONCURRENCY = 16
# Failed items named in a map's error.
ERRORS_SHOWN = 3


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


class WorkflowRunner:
    """``kind: workflow``: runs a registered workflow as a child run and
    returns its output (the run's output: each sink node's output by id).

    Params: ``workflow`` (name, required), ``version`` (default: the latest
    at the time the node runs), ``input`` (templated; default null).
    """

    kind = "workflow"
    in_control_plane = True

    def validate(self, params: Mapping[str, Any]) -> None:
        workflow = params.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            raise ValueError("params.workflow (the name of a registered workflow) is required")
        version = params.get("version", "")
        if not isinstance(version, str | int) or isinstance(version, bool):
            raise ValueError("params.version must be a string")

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        workflow = task.params["workflow"]
        if not isinstance(workflow, str) or not workflow:
            raise NodeError(
                f"params.workflow resolved to {workflow!r}, not a name", retryable=False
            )
        version = str(task.params.get("version") or "")
        return await ctx.run_workflow(workflow, task.params.get("input"), version=version)


class MapRunner:
    """``kind: map``: runs the node template ``params.node`` once per item of
    ``params.items``, each as a child run "<map>[<i>]" with its own status,
    attempts (the template's retry policy) and events; returns the items'
    outputs in input order.

    Params:
        items: a list, or a template giving one (``{{ nodes.plan.output.urls }}``).
        node: the template: ``kind``, ``params``, ``retry``, ``timeout_ms``,
            ``resources``, ``concurrency_key``, ``when``, ... as a node of a
            spec has. Its templates may read ``item`` and ``index`` as well as
            ``input`` and ``nodes``.
        max_concurrency: most items running at once (default 16).
        continue_on_failure: a failed item gives null in the output and the
            map succeeds (default false: the map fails once every item ended,
            naming the failed ones; the succeeded ones are kept for a retry).
    """

    kind = "map"
    in_control_plane = True
    item_template = "node"

    def validate(self, params: Mapping[str, Any]) -> None:
        items = params.get("items")
        if items is None:
            raise ValueError("params.items is required: a list, or a template giving one")
        if not isinstance(items, list) and not _templated(items):
            raise ValueError(
                f"params.items must be a list or a template giving one, not {type(items).__name__}"
            )
        node = params.get("node")
        if not isinstance(node, Mapping):
            raise ValueError("params.node is required: the node template each item runs")
        if not isinstance(node.get("kind"), str) or not node.get("kind"):
            raise ValueError("params.node.kind is required")
        limit = params.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("params.max_concurrency must be a positive integer")
        if not isinstance(params.get("continue_on_failure", False), bool):
            raise ValueError("params.continue_on_failure must be true or false")

    async def run(self, task: NodeTask, ctx: NodeContext) -> list[Any]:
        items = task.params["items"]
        if not isinstance(items, list):
            raise NodeError(
                f"params.items resolved to {type(items).__name__}, not a list", retryable=False
            )
        if ctx.children is None:
            raise NodeError("map items cannot be started where this node runs", retryable=False)
        children = ctx.children
        total = len(items)
        slots = asyncio.Semaphore(task.params.get("max_concurrency", DEFAULT_MAX_CONCURRENCY))
        ended: list[dict[str, Any] | None] = [None] * total
        done = 0
        ctx.progress(0, total, f"0 of {total} items")

        async def one(index: int, item: Any) -> None:
            nonlocal done
            async with slots:
                ended[index] = result = await children.run_item(index, item)
            done += 1
            if result["status"] != "SUCCEEDED":
                ctx.log(
                    f"{task.node_id}[{index}] {result['status']}: {result['error']}",
                    "warning",
                    index=index,
                    run_id=result["run_id"],
                )
            ctx.progress(done, total, f"{done} of {total} items")

        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        results = [r for r in ended if r is not None]
        failed = [(i, r) for i, r in enumerate(results) if r["status"] != "SUCCEEDED"]
        if failed and not task.params.get("continue_on_failure", False):
            shown = "; ".join(
                f"[{i}] {r['error'] or r['status']}" for i, r in failed[:ERRORS_SHOWN]
            )
            more = f" and {len(failed) - ERRORS_SHOWN} more" if len(failed) > ERRORS_SHOWN else ""
            raise NodeError(f"{len(failed)} of {total} items failed: {shown}{more}")
        return [r["output"] if r["status"] == "SUCCEEDED" else None for r in results]
