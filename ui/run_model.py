"""One run as the detail page sees it: the run, its nodes, their attempts and calls,
kept current from the run's event stream.

The page loads the run once (GetRun: nodes with inputs, outputs, usage), then feeds
every event of WatchRun to :meth:`RunModel.apply`; views read the model and are told
what changed (node ids, new events) at most a few times a second.
All values are in ``statepipe_api.convert``'s JSON shapes (``run_to_dict``,
``node_to_dict``, ``event_to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from statepipe_api.lifecycle import FINAL_NODE, FINAL_RUN

# Kinds that describe an invocation the trace shows under its attempt.
CALL_KINDS = frozenset({"tool_call", "api_call"})


@dataclasses.dataclass
class Attempt:
    """One attempt of a node, from its node_status events."""

    attempt: int
    status: str = "QUEUED"
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # When a failed attempt waits for the next: from finished_at until the next queue.
    retry_until: str | None = None
    error: str = ""
    traceback: str = ""
    placement: dict[str, Any] = dataclasses.field(default_factory=dict)
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class RunModel:
    """The run and its nodes, derived state and change listeners."""

    def __init__(self, run: dict[str, Any]) -> None:
        nodes = run.get("nodes") or []
        # Statuses in `run` are as of this seq: replaying older events fills in the
        # attempts and the log but must not move a node back to an old status.
        self.snapshot_seq: int = run.get("last_seq") or 0
        # Seq of the run_status event that last made the run final (0: none seen live).
        self.final_seq = 0
        self.run: dict[str, Any] = {k: v for k, v in run.items() if k != "nodes"}
        self.nodes: dict[str, dict[str, Any]] = {n["node_id"]: n for n in nodes}
        self.attempts: dict[str, list[Attempt]] = {n: [] for n in self.nodes}
        self.levels: list[list[str]] = levels_of(self.nodes)
        self.level_of: dict[str, int] = {n: i for i, lvl in enumerate(self.levels) for n in lvl}
        self.children: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in nodes:
            for parent in node.get("after") or ():
                if parent in self.children:
                    self.children[parent].append(node["node_id"])
        # A one-line summary of the child runs a node started ("8 items · 7 ✓ 1 ✗"),
        # by node id; kept by ui.child_runs.ChildRuns once the page follows children.
        self.child_summaries: dict[str, str] = {}
        # Every event kept, for the log and the timeline (seq -> event is seq - 1).
        self.events: list[dict[str, Any]] = []
        self.last_seq = 0
        self._node_listeners: list[Callable[[list[str]], None]] = []
        self._event_listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self._run_listeners: list[Callable[[], None]] = []
        self._changed_nodes: dict[str, None] = {}
        self._new_events: list[dict[str, Any]] = []
        self._run_changed = False

    # -- listening

    def on_nodes(self, callback: Callable[[list[str]], None]) -> None:
        """``callback(node_ids)`` after nodes changed (status, attempt, times, output)."""
        self._node_listeners.append(callback)

    def on_events(self, callback: Callable[[list[dict[str, Any]]], None]) -> None:
        """``callback(events)`` with the events that arrived since the last flush."""
        self._event_listeners.append(callback)

    def off_events(self, callback: Callable[[list[dict[str, Any]]], None]) -> None:
        """Stops calling ``callback`` (a view that was removed)."""
        if callback in self._event_listeners:
            self._event_listeners.remove(callback)

    def on_run(self, callback: Callable[[], None]) -> None:
        """``callback()`` after the run's own fields changed (status, error, output)."""
        self._run_listeners.append(callback)

    @property
    def pending(self) -> bool:
        return bool(self._changed_nodes or self._new_events or self._run_changed)

    def flush(self) -> None:
        """Tells the listeners what changed since the last flush."""
        nodes, self._changed_nodes = list(self._changed_nodes), {}
        events, self._new_events = self._new_events, []
        run_changed, self._run_changed = self._run_changed, False
        if run_changed:
            for cb in self._run_listeners:
                cb()
        if nodes:
            for cb in self._node_listeners:
                cb(nodes)
        if events:
            for cb in self._event_listeners:
                cb(events)

    # -- updating

    def replace_run(self, run: dict[str, Any]) -> None:
        """A fresh GetRun result: fields the events do not carry (inputs, usage, ...)."""
        self.run.update({k: v for k, v in run.items() if k != "nodes"})
        self._run_changed = True
        for node in run.get("nodes") or ():
            node_id = node["node_id"]
            if node_id in self.nodes and self.nodes[node_id] != node:
                # Keep a status the stream already moved past the snapshot.
                self.nodes[node_id].update(node)
                self._changed_nodes[node_id] = None

    def children_changed(self, summaries: dict[str, str]) -> None:
        """The child runs of these nodes changed; ``summaries`` has each node's new
        one-line summary. The nodes count as changed (their views redraw them)."""
        for node_id, summary in summaries.items():
            if node_id not in self.nodes:
                continue
            if summary:
                self.child_summaries[node_id] = summary
            else:
                self.child_summaries.pop(node_id, None)
            self._changed_nodes[node_id] = None

    def apply(self, events: Iterable[dict[str, Any]]) -> None:
        """Applies events in seq order; ones at or before ``last_seq`` are ignored, so a
        replay that overlaps what was seen doubles nothing."""
        for event in events:
            if event["seq"] <= self.last_seq:
                continue
            self.last_seq = event["seq"]
            self.events.append(event)
            self._new_events.append(event)
            kind = event["kind"]
            if event["seq"] <= self.snapshot_seq:
                # History: attempts and calls change (views that show them redraw),
                # statuses stay as the snapshot has them.
                if kind == "node_status":
                    self._attempt_status(event)
                elif kind in CALL_KINDS and event["node_id"] in self.nodes:
                    self._attempt(event["node_id"], event["attempt"]).calls.append(event)
                else:
                    continue
                if event["node_id"] in self.nodes:
                    self._changed_nodes[event["node_id"]] = None
                continue
            if kind == "node_status":
                self._node_status(event)
            elif kind == "run_status":
                self._run_status(event)
            elif kind == "output" and event["node_id"] in self.nodes:
                node = self.nodes[event["node_id"]]
                node["output"] = (event["data"] or {}).get("output")
                self._changed_nodes[event["node_id"]] = None
            elif kind in CALL_KINDS and event["node_id"] in self.nodes:
                self._attempt(event["node_id"], event["attempt"]).calls.append(event)
                self._changed_nodes[event["node_id"]] = None
        self.run["last_seq"] = max(self.run.get("last_seq") or 0, self.last_seq)

    def _attempt(self, node_id: str, number: int) -> Attempt:
        attempts = self.attempts.setdefault(node_id, [])
        for a in reversed(attempts):
            if a.attempt == number:
                return a
        attempt = Attempt(attempt=number)
        attempts.append(attempt)
        return attempt

    def _node_status(self, event: dict[str, Any]) -> None:
        node_id, status, ts = event["node_id"], event["status"], event["ts"]
        node = self.nodes.get(node_id)
        if node is None:
            return
        data = event["data"] or {}
        if status == "PENDING":  # a reset (retry of a failed node, resume)
            self._count(node, status)
            node.update(status="PENDING", error="", traceback="")
            self._changed_nodes[node_id] = None
            return
        self._attempt_status(event)
        self._count(node, status)
        node["status"] = status
        if event["attempt"]:
            node["attempt"] = event["attempt"]
        if status == "QUEUED":
            node["queued_at"] = ts
            node["finished_at"] = None
        elif status == "RUNNING":
            node["started_at"] = ts
            node["finished_at"] = None
        elif status in FINAL_NODE:
            node["finished_at"] = ts
        if status in ("FAILED", "RETRY_WAIT"):
            node["error"] = event["message"]
            node["traceback"] = data.get("traceback", "")
        elif status == "SUCCEEDED":
            node["error"] = ""
            node["traceback"] = ""
        self._changed_nodes[node_id] = None

    def _attempt_status(self, event: dict[str, Any]) -> None:
        """Records a node_status event in the node's attempt history."""
        node_id, status, ts = event["node_id"], event["status"], event["ts"]
        if node_id not in self.nodes or status == "PENDING":
            return
        data = event["data"] or {}
        attempts = self.attempts.setdefault(node_id, [])
        if status in ("QUEUED", "RUNNING") and attempts and attempts[-1].status == "RETRY_WAIT":
            attempts[-1].retry_until = ts
        attempt = self._attempt(node_id, event["attempt"]) if event["attempt"] else None
        if attempt is not None:
            attempt.status = status
            if status == "QUEUED":
                attempt.queued_at = ts
            elif status == "RUNNING":
                attempt.started_at = ts
                attempt.queued_at = attempt.queued_at or ts
                attempt.placement = {k: v for k, v in data.items() if k != "traceback"}
            elif status == "RETRY_WAIT" or status in FINAL_NODE:
                attempt.finished_at = ts
                attempt.error = event["message"] if status in ("FAILED", "RETRY_WAIT") else ""
                attempt.traceback = data.get("traceback", "")

    def _count(self, node: dict[str, Any], status: str) -> None:
        counts = self.run.setdefault("node_counts", {})
        old = node["status"]
        if old == status:
            return
        counts[old] = counts.get(old, 0) - 1
        if counts[old] <= 0:
            counts.pop(old, None)
        counts[status] = counts.get(status, 0) + 1
        self._run_changed = True

    def _run_status(self, event: dict[str, Any]) -> None:
        status, ts = event["status"], event["ts"]
        self.run["status"] = status
        self.run["updated_at"] = ts
        if status == "RUNNING" and not self.run.get("started_at"):
            self.run["started_at"] = ts
        if status in FINAL_RUN:
            self.run["finished_at"] = ts
            self.final_seq = event["seq"]
        else:
            self.run["finished_at"] = None
        if status == "FAILED":
            self.run["error"] = event["message"]
        elif status in ("RUNNING", "SUCCEEDED"):
            self.run["error"] = ""
        self._run_changed = True


def levels_of(nodes: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Nodes grouped by depth (level 0 has no dependencies), in spec order per level."""
    parents = {n: [p for p in node.get("after") or () if p in nodes] for n, node in nodes.items()}
    level: dict[str, int] = {}
    for root in nodes:
        stack = [root]
        while stack:  # iterative, so a 10,000-node chain does not hit the recursion limit
            node_id = stack[-1]
            if node_id in level:
                stack.pop()
                continue
            todo = [p for p in parents[node_id] if p not in level]
            if todo:
                stack.extend(todo)
                continue
            level[node_id] = 1 + max((level[p] for p in parents[node_id]), default=-1)
            stack.pop()
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for node_id in nodes:
        out[level[node_id]].append(node_id)
    return out
