"""Child runs: a node starts a run and waits for its result.

A `workflow` node, an agent's workflow tool and each item of a `map` node run
as child runs of the node's run. A child records its parent run and node
(`parent_run_id`, `parent_node_id`; a map item's node id is "<map>[<i>]"), so
ListRuns(parent_run_id) lists a run's children and the console nests them in
the trace.

A child is found again by (parent run, parent node, key): a node that runs
again after a crash, a takeover, an interrupt or a failure reattaches to its
child instead of starting a second one. A SUCCEEDED child gives its output
without running again; a RUNNING or PAUSED one is waited for; an INTERRUPTED
or FAILED one is resumed (its succeeded nodes are kept, as a resume keeps
them); a CANCELLED one is replaced by a new child.

Controls on a parent (pause, resume, interrupt, cancel) reach its children:
Scheduler.control passes them on (`propagate`). A node's own end that no
control caused (its timeout) cancels the child it waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from control_plane.errors import FailedPrecondition, InvalidArgument, NotFound
from control_plane.plan import Plan
from control_plane.store import RunRow
from executors.base import NodeError

if TYPE_CHECKING:
    from control_plane.run_actor import RunActor
    from control_plane.scheduler import Scheduler

# The label that tells apart several children of one node (an agent's tool calls).
CHILD_KEY_LABEL = "statepipe.child_key"
# How often a wait looks at the stored run when no actor here drives the child
# (another control plane took it over, or it is paused).
POLL_S = 1.0
# Controls a parent passes to its children, and the child statuses each applies to.
PROPAGATED = {
    "pause": ("RUNNING",),
    "resume": ("PAUSED",),
    "interrupt": ("RUNNING", "PAUSED"),
    "cancel": ("PENDING", "RUNNING", "PAUSED", "INTERRUPTED"),
}


class NodeChildren:
    """executors.base.ChildRuns for one node of one run."""

    def __init__(self, actor: RunActor, node_id: str) -> None:
        self.actor = actor
        self.scheduler: Scheduler = actor.scheduler
        self.node_id = node_id
        self._scope: dict[str, Any] | None = None

    async def run_workflow(self, workflow: str, run_input: Any, version: str, key: str) -> Any:
        """A child run of a registered workflow; its output."""
        try:
            plan = await self.scheduler.registered_plan(workflow, version)
        except (NotFound, InvalidArgument) as err:
            raise NodeError(str(err), retryable=False) from None
        child = await self.run_plan(plan, run_input, self.node_id, key)
        return child.output

    async def run_item(self, index: int, item: Any) -> dict[str, Any]:
        """Item `index` of this map node as a child run "<map>[<index>]" of its
        item plan (plan.item_spec); the ended child: run_id, status, output
        (the item node's output) and error."""
        node_plan = self.actor.plan.nodes[self.node_id]
        assert node_plan.item_plan is not None
        if self._scope is None:
            # What the template may read of the parent: its input and the
            # nodes it references (done before the map node started).
            self._scope = self.actor.scope_of(node_plan.referenced)
        run_input = {"item": item, "index": index, **self._scope}
        item_id = f"{self.node_id}[{index}]"
        ended = await self.run_plan(
            node_plan.item_plan, run_input, item_id, "", raise_on_failure=False
        )
        output = ended.output.get(self.node_id) if isinstance(ended.output, dict) else None
        error = ended.error
        if ended.status == "FAILED":
            _, nodes = await self.scheduler.run_snapshot(ended.run_id)
            error = next((n.error for n in nodes if n.error), error)
        return {"run_id": ended.run_id, "status": ended.status, "output": output, "error": error}

    async def run_plan(
        self,
        plan: Plan,
        run_input: Any,
        parent_node_id: str,
        key: str,
        *,
        raise_on_failure: bool = True,
    ) -> RunRow:
        """Finds or starts the child, waits until it ends, returns it."""
        child = await self._attach(plan, run_input, parent_node_id, key)
        try:
            ended = await self.scheduler.wait_ended(child.run_id)
        except asyncio.CancelledError:
            self._node_stopped(child.run_id)
            raise
        if raise_on_failure and ended.status != "SUCCEEDED":
            what = ended.error or ended.status.lower()
            raise NodeError(
                f"child run {ended.run_id} of workflow {ended.workflow_name!r} is"
                f" {ended.status}: {what}"
            )
        return ended

    async def _attach(self, plan: Plan, run_input: Any, parent_node_id: str, key: str) -> RunRow:
        scheduler = self.scheduler
        parent_id = self.actor.run_id
        async with scheduler.child_lock(parent_id, parent_node_id, key):
            found = await scheduler.store.find_child(parent_id, parent_node_id, key)
            if found is not None and found.status != "CANCELLED":
                if found.status in ("INTERRUPTED", "FAILED"):
                    try:
                        await scheduler.control(
                            found.run_id, "resume", reason=f"node {parent_node_id!r} runs again"
                        )
                    except FailedPrecondition:
                        pass  # someone resumed or ended it meanwhile: wait for it
                return found
            labels = {CHILD_KEY_LABEL: key} if key else {}
            try:
                child, _ = await scheduler.start_run(
                    plan, run_input, labels=labels, parent=(parent_id, parent_node_id)
                )
            except InvalidArgument as err:
                # The child's input breaks its schema: another attempt cannot mend it.
                raise NodeError(
                    f"cannot start workflow {plan.name!r}: {err}", retryable=False
                ) from None
            return child

    def _node_stopped(self, child_id: str) -> None:
        """The node waiting for `child_id` was cancelled. A control on the
        parent passes itself on; a server stop or a lost lease leaves the child
        to whoever drives it next; anything else (the node's timeout) ends the
        child with the node's attempt."""
        actor = self.actor
        if actor.halting or actor.lost or self.scheduler.stopping:
            return
        self.scheduler.in_background(
            self.scheduler.control_quietly(
                child_id, "cancel", reason=f"node {self.node_id!r} of its parent stopped"
            )
        )


@dataclasses.dataclass
class Waiters:
    """Futures for runs ending, resolved by the actor's status change."""

    futures: dict[str, set[asyncio.Future[None]]] = dataclasses.field(default_factory=dict)

    def add(self, run_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.setdefault(run_id, set()).add(future)
        return future

    def discard(self, run_id: str, future: asyncio.Future[None]) -> None:
        waiting = self.futures.get(run_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self.futures[run_id]

    def ended(self, run_id: str) -> None:
        for future in self.futures.pop(run_id, ()):
            if not future.done():
                future.set_result(None)
