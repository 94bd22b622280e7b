"""The child runs of one run, as the run page sees them: loaded once, then kept live.

A ``workflow`` node runs a registered workflow as a child run, an ``agent`` node's
workflow tools start child runs, and a ``map`` node runs each item as a child run
whose ``parent_node_id`` is ``"<map>[<i>]"``. :class:`ChildRuns` lists them with
ListRuns(parent) when a view first needs them (:meth:`ChildRuns.start`) and follows
WatchRuns(parent) from then on, so every status change of a child is pushed, never
polled. Children are grouped under the node that started them (the map node for its
items, ordered by item index), each node's one-line summary ("8 items · 7 ✓ 1 ✗") is
handed to the :class:`~ui.run_model.RunModel` (its views redraw that node), and
listeners get the ids of the children that changed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from statepipe.client import Run, StatepipeError
from ui.console import Console, probe
from ui.format import parse_ms
from ui.run_model import RunModel
from ui.streams import Coalescer, Connection, follow, is_retryable, page_task

log = logging.getLogger("statepipe.ui")

# Node kinds that start child runs.
CHILD_KINDS = frozenset({"workflow", "map", "agent"})
# The most children one page keeps (a map of more items shows the first ones).
MAX_CHILDREN = 10_000

_ITEM = re.compile(r"^(?P<node>.+)\[(?P<index>\d+)\]$")


def run_href(run_id: str, node_id: str | None = None) -> str:
    """The console address of a run (or of one of its nodes)."""
    path = f"/runs/{quote(run_id, safe='')}"
    return f"{path}/nodes/{quote(node_id, safe='')}" if node_id else path


def split_parent_node(parent_node_id: str) -> tuple[str, int | None]:
    """``"summarize[3]"`` -> ``("summarize", 3)``; a node id without an item index
    (a workflow or agent node) -> ``(node_id, None)``."""
    match = _ITEM.match(parent_node_id)
    if match is None:
        return parent_node_id, None
    return match["node"], int(match["index"])


def group_of(child: dict[str, Any], nodes: Iterable[str] | None = None) -> tuple[str, int | None]:
    """The node of the parent run a child belongs under, and its item index.

    A ``"<node>[<i>]"`` that names no node of ``nodes`` (when given) is a node id of
    its own, brackets and all.
    """
    parent_node = child.get("parent_node_id") or ""
    node_id, index = split_parent_node(parent_node)
    if index is not None and nodes is not None and node_id not in nodes:
        return parent_node, None
    return node_id, index


def order_key(child: dict[str, Any], index: int | None) -> list[Any]:
    """Items by index, other children by when they were created (a list: it goes to
    the browser with the trace's rows)."""
    return [1, -1 if index is None else index, child.get("created_at") or "", child["run_id"]]


def children_summary(
    children: list[dict[str, Any]], *, items: bool, total: int | None = None
) -> str:
    """One line about a node's children: ``"8 items · 7 ✓ 1 ✗"``,
    ``"child run · succeeded"``, ``"3 child runs · 2 ✓ 1 running"``.

    Args:
        children: The children's run dicts.
        items: Whether they are a map node's items.
        total: How many items the map has (its progress says so before all started).
    """
    counts: dict[str, int] = {}
    for child in children:
        counts[child["status"]] = counts.get(child["status"], 0) + 1
    n = max(total or 0, len(children))
    if not items and len(children) == 1:
        return f"child run · {children[0]['status'].lower()}"
    noun = ("item" if items else "child run") + ("" if n == 1 else "s")
    parts = []
    for status, mark in (("SUCCEEDED", "✓"), ("FAILED", "✗")):
        if counts.get(status):
            parts.append(f"{counts[status]} {mark}")
    for status in ("RUNNING", "PAUSED", "INTERRUPTED", "CANCELLED", "PENDING"):
        if counts.get(status):
            parts.append(f"{counts[status]} {status.lower()}")
    if n > len(children):
        parts.append(f"{n - len(children)} not started")
    return f"{n} {noun}" + (" · " + " ".join(parts) if parts else "")


class ChildRuns:
    """The children of ``model``'s run for one browser tab.

    Args:
        console: For ListRuns and WatchRuns.
        model: The page's run model; it gets each node's children summary.
        connection: The page's connection (the banner shows while the stream is down).
        client: The page's NiceGUI client (the stream lives as long as its tab).
    """

    def __init__(
        self, console: Console, model: RunModel, connection: Connection, client: Any
    ) -> None:
        self.console = console
        self.model = model
        self.connection = connection
        self.client = client
        self.run_id: str = model.run["run_id"]
        self.runs: dict[str, dict[str, Any]] = {}  # child run id -> run dict
        self.loaded = asyncio.Event()
        self.truncated = False  # more children than MAX_CHILDREN
        self._groups: dict[str, dict[str, int | None]] = {}  # node -> {child id: index}
        self._group: dict[str, str] = {}  # child id -> node
        self._totals: dict[str, int] = {}  # map node -> its item count (from progress)
        self._listeners: list[Callable[[list[str]], None]] = []
        self._changed: dict[str, None] = {}
        self._touched: dict[str, None] = {}  # nodes whose summary to recompute
        self._push = Coalescer(self._send, delay_s=0.1)
        self._task: asyncio.Task[None] | None = None
        model.on_events(self._events)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Loads the children and follows them (once; later calls do nothing)."""
        if self._task is None:
            self._task = page_task(self._follow(), "run-children", client=self.client)

    def on_change(self, callback: Callable[[list[str]], None]) -> None:
        """``callback(child_run_ids)`` after children appeared or changed."""
        self._listeners.append(callback)

    def node_of(self, child_id: str) -> str | None:
        """The node of the parent run a child is under."""
        return self._group.get(child_id)

    def index_of(self, child_id: str) -> int | None:
        """A map item's index (None for other children)."""
        node_id = self._group.get(child_id)
        return None if node_id is None else self._groups[node_id].get(child_id)

    def of_node(self, node_id: str) -> list[dict[str, Any]]:
        """The children under ``node_id``: items by index, others by creation."""
        group = self._groups.get(node_id) or {}
        ids = sorted(group, key=lambda c: order_key(self.runs[c], group[c]))
        return [self.runs[c] for c in ids]

    def count(self, node_id: str) -> int:
        return len(self._groups.get(node_id) or ())

    def nodes(self) -> list[str]:
        """The nodes that have children."""
        return list(self._groups)

    def is_map(self, node_id: str) -> bool:
        node = self.model.nodes.get(node_id) or {}
        if node.get("kind") == "map":
            return True
        return any(i is not None for i in (self._groups.get(node_id) or {}).values())

    def summary(self, node_id: str) -> str:
        children = [self.runs[c] for c in self._groups.get(node_id) or ()]
        if not children:
            return ""
        items = self.is_map(node_id)
        return children_summary(children, items=items, total=self._totals.get(node_id))

    # -- loading and following

    async def _follow(self) -> None:
        await self.client.connected()
        loading: asyncio.Future[None] | None = None

        def opened() -> Any:
            nonlocal loading
            # Each open lists the children again: after a lost stream, what changed
            # meanwhile is in the new list (older states than those shown are ignored).
            if loading is not None and not loading.done():
                loading.cancel()
            loading = asyncio.ensure_future(self._load())
            return self.console.client.watch_runs(parent=self.run_id, snapshot_size=1)

        async def handle(update: tuple[Run, bool]) -> None:
            run, _snapshot = update
            self._merge(run.to_dict())

        try:
            await follow(
                "children", self.connection, opened, handle, probe=lambda: probe(self.console)
            )
        finally:
            if loading is not None and not loading.done():
                loading.cancel()

    async def _load(self) -> None:
        try:
            found = await self.console.client.list_runs(
                parent=self.run_id, limit=MAX_CHILDREN + 1, order_by="created_at"
            )
        except StatepipeError as err:
            if not is_retryable(err):
                log.warning("children of run %s: %s", self.run_id, err.message)
            return  # a lost control plane: the watch reconnects and loads again
        if len(found) > MAX_CHILDREN:
            self.truncated = True
            found = found[:MAX_CHILDREN]
        for run in found:
            self._merge(run.to_dict())
        self.loaded.set()
        self._push.poke()

    def _merge(self, child: dict[str, Any]) -> None:
        child_id = child["run_id"]
        if child.get("parent_run_id") not in (None, self.run_id):
            return
        known = self.runs.get(child_id)
        if known is not None and _newer(known, child):
            return  # an older update than the one shown
        if known is None and len(self.runs) >= MAX_CHILDREN:
            self.truncated = True
            return
        child = {k: v for k, v in child.items() if k != "nodes"}
        self.runs[child_id] = child
        if known is None:
            node_id, index = group_of(child, self.model.nodes)
            self._groups.setdefault(node_id, {})[child_id] = index
            self._group[child_id] = node_id
        self._changed[child_id] = None
        self._touched[self._group[child_id]] = None
        self._push.poke()

    def _events(self, events: list[dict[str, Any]]) -> None:
        # A map node says how many items it has in its progress ("0 of 8 items").
        for event in events:
            if event["kind"] != "progress":
                continue
            total = (event.get("data") or {}).get("total")
            node_id = event.get("node_id") or ""
            if (
                isinstance(total, int | float)
                and (self.model.nodes.get(node_id) or {}).get("kind") == "map"
            ):
                if self._totals.get(node_id) != int(total):
                    self._totals[node_id] = int(total)
                    if node_id in self._groups:
                        self._touched[node_id] = None
                        self._push.poke()

    def _send(self) -> None:
        changed, self._changed = list(self._changed), {}
        touched, self._touched = list(self._touched), {}
        for callback in self._listeners:
            callback(changed)
        if touched:
            self.model.children_changed({n: self.summary(n) for n in touched})
            self.model.flush()


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether run dict ``a`` is a later state than ``b`` (by updated_at)."""
    ta, tb = parse_ms(a.get("updated_at")), parse_ms(b.get("updated_at"))
    return ta is not None and tb is not None and ta > tb
