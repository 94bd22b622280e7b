"""The trace of a run: run → nodes → attempts → tool/API calls, and the child runs a
node started (a workflow node's child, a map node's items, an agent's workflow tools)
→ their nodes, as one expandable list.

The tree is a flattened AG Grid (client-side row model, virtualized): a row per
visible entry, indented by its depth, with a caret the name cell's renderer draws.
Children are built only when their parent is expanded, and every change reaches the
browser as a row transaction (``add`` at an index, ``update``, ``remove``) on stable
row ids, so neither expanding nor a live status change re-sends the grid. The Python
copy of the rows (``grid.options['rowData']``) is kept in step with updates
suspended, so a later full render shows the same tree.

Row ids: ``r`` (the run), ``n:<node>``, ``a:<node>:<attempt>``, ``c:<seq>`` (a call),
``k:<child run>`` (a child run, under its node after the attempts; map items by index)
and ``kn:<child run>:<node>`` (a node of a child run, fetched with GetRun when the child
is first expanded and again when a pushed change of the child arrives while it is open).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, MutableSequence
from typing import Any

from nicegui import background_tasks, events

from statepipe.client import StatepipeError
from ui.child_runs import ChildRuns, order_key, run_href
from ui.console import Console
from ui.format import duration_ms
from ui.grid import RowGrid
from ui.run_model import CALL_KINDS, Attempt, RunModel
from ui.theme import STATUS_COLORS

log = logging.getLogger("statepipe.ui")

Row = dict[str, Any]

RUN_ROW_ID = "r"
# Fields a live change may alter; the rest (id, depth, parent, expanded) are the tree's.
_LIVE_FIELDS = ("name", "kind", "status", "start", "duration_ms", "detail", "expandable")

# -- browser-side rendering (AG Grid turns ':key' options into JS functions)

_NAME = """(p) => {
  const d = p.data || {};
  const el = document.createElement('span');
  el.style.paddingLeft = (16 * (d.depth || 0)) + 'px';
  el.style.whiteSpace = 'nowrap';
  const caret = document.createElement('span');
  caret.className = 'sp-trace-caret';
  caret.textContent = d.expandable ? (d.expanded ? '▾' : '▸') : '';
  caret.style.display = 'inline-block';
  caret.style.width = '1.3em';
  caret.style.cursor = d.expandable ? 'pointer' : 'default';
  el.appendChild(caret);
  el.appendChild(document.createTextNode(d.name == null ? '' : String(d.name)));
  if (d.href) {  // a child run (or one of its nodes): a link that opens its page
    const a = document.createElement('a');
    a.href = d.href;
    a.className = 'sp-trace-open';
    a.title = d.href_title || 'open';
    a.style.marginLeft = '6px';
    const icon = document.createElement('span');
    icon.className = 'material-icons';
    icon.textContent = 'open_in_new';
    icon.style.fontSize = '14px';
    icon.style.verticalAlign = 'middle';
    a.appendChild(icon);
    a.addEventListener('click', (e) => e.stopPropagation());  // not a row click
    el.appendChild(a);
  }
  return el;
}"""
# The cell's value carries the caret state, so an update of only `expanded` re-renders it
# (AG Grid refreshes a cell when its value changes).
_NAME_VALUE = """(p) => p.data
  ? (p.data.expandable ? (p.data.expanded ? '- ' : '+ ') : '  ') + p.data.name : ''"""
_STATUS = f"""(p) => {{
  if (!p.value) return '';
  const el = document.createElement('span');
  el.className = 'sp-status';
  el.style.color = '#fff';
  el.style.background = {json.dumps(STATUS_COLORS)}[p.value] || '#9e9e9e';
  el.textContent = p.value.toLowerCase().replace('_', ' ');
  return el;
}}"""
_TIME = "(p) => p.value ? (window.sp ? sp.fmtTime(p.value) : p.value) : ''"
_TIME_TOOLTIP = "(p) => p.value ? (window.sp ? sp.utc(p.value) : p.value) : ''"
_DURATION = """(p) => {
  let ms = p.value;
  if (ms == null && p.data && p.data.status === 'RUNNING' && p.data.start)
    ms = Date.now() - Date.parse(p.data.start);
  if (ms == null) return '';
  return window.sp ? sp.fmtDuration(ms) : Math.round(ms) + ' ms';
}"""


def _column(field: str, header: str, flex: int, min_width: int, **extra: Any) -> dict[str, Any]:
    return {"field": field, "headerName": header, "flex": flex, "minWidth": min_width, **extra}


def grid_options(rows: list[Row]) -> dict[str, Any]:
    """The AG Grid options of the trace with ``rows`` as its first rows."""
    return {
        "columnDefs": [
            _column(
                "name", "Name", 3, 240, **{":cellRenderer": _NAME, ":valueGetter": _NAME_VALUE}
            ),
            _column("kind", "Kind", 1, 90),
            _column("status", "Status", 1, 130, **{":cellRenderer": _STATUS}),
            _column(
                "start",
                "Start",
                1,
                110,
                **{":valueFormatter": _TIME, ":tooltipValueGetter": _TIME_TOOLTIP},
            ),
            _column(
                "duration_ms",
                "Duration",
                1,
                90,
                **{":valueFormatter": _DURATION, "type": "rightAligned"},
            ),
            _column("detail", "Detail", 4, 160, tooltipField="detail", cellClass="sp-mono"),
        ],
        "defaultColDef": {"sortable": False, "resizable": True, "suppressMovable": True},
        "rowData": rows,
        ":getRowId": "(params) => params.data.id",
        "animateRows": False,
        "suppressCellFocus": True,
        "rowHeight": 30,
        "tooltipShowDelay": 500,
    }


# -- rows (pure: a model in, row dicts out)


def first_line(text: str | None, limit: int = 300) -> str:
    return (text or "").strip().split("\n", 1)[0][:limit]


def run_row(model: RunModel) -> Row:
    run = model.run
    return {
        "id": RUN_ROW_ID,
        "parent": None,
        "depth": 0,
        "expandable": True,
        "expanded": True,
        "name": run.get("run_id", ""),
        "kind": "run",
        "status": run.get("status", ""),
        "start": run.get("started_at") or run.get("created_at"),
        "duration_ms": duration_ms(run.get("started_at"), run.get("finished_at")),
        "detail": first_line(run.get("error"))
        or f"{run.get('workflow_name', '')} v{run.get('workflow_version', '')}",
        "node_id": None,
    }


def attempts_of(model: RunModel, node_id: str) -> list[Attempt]:
    """The node's attempts from its events; when the model saw none although the node
    ran (its events were not replayed), one attempt made from the node itself."""
    attempts = model.attempts.get(node_id) or []
    if attempts:
        return attempts
    node = model.nodes.get(node_id)
    if not node or not node.get("attempt"):
        return []
    return [
        Attempt(
            attempt=node["attempt"],
            status=node["status"],
            queued_at=node.get("queued_at"),
            started_at=node.get("started_at"),
            finished_at=node.get("finished_at"),
            error=node.get("error") or "",
            traceback=node.get("traceback") or "",
        )
    ]


def node_row(model: RunModel, node_id: str) -> Row:
    """A node's row; its detail is its error, else the summary of its child runs."""
    node = model.nodes[node_id]
    summary = model.child_summaries.get(node_id, "")
    return {
        "id": f"n:{node_id}",
        "parent": RUN_ROW_ID,
        "depth": 1,
        "expandable": bool(node.get("attempt") or model.attempts.get(node_id) or summary),
        "expanded": False,
        "name": node_id,
        "kind": node.get("kind", ""),
        "status": node.get("status", ""),
        "start": node.get("started_at") or node.get("queued_at"),
        "duration_ms": duration_ms(node.get("started_at"), node.get("finished_at")),
        "detail": first_line(node.get("error")) or summary,
        "node_id": node_id,
    }


def _placement_summary(placement: dict[str, Any]) -> str:
    parts = [str(placement["executor"])] if placement.get("executor") else []
    pid = placement.get("worker_pid") or placement.get("pid")
    if pid:
        parts.append(f"pid {pid}")
    if placement.get("ray_node_id"):
        parts.append(f"ray node {str(placement['ray_node_id'])[:12]}")
    return " · ".join(parts)


def attempt_row(node_id: str, attempt: Attempt, *, expandable: bool = True) -> Row:
    """A row for one attempt; ``expandable`` is False once it is known to have no calls."""
    end = attempt.finished_at
    return {
        "id": f"a:{node_id}:{attempt.attempt}",
        "parent": f"n:{node_id}",
        "depth": 2,
        "expandable": expandable or bool(attempt.calls),
        "expanded": False,
        "name": f"attempt {attempt.attempt}",
        "kind": "attempt",
        "status": attempt.status,
        "start": attempt.started_at or attempt.queued_at,
        "duration_ms": duration_ms(attempt.started_at, end),
        "detail": first_line(attempt.error) or _placement_summary(attempt.placement),
        "node_id": node_id,
        "attempt": attempt.attempt,
        "order": [0, attempt.attempt, "", ""],  # before the node's child runs
    }


def child_row(child: dict[str, Any], node_id: str, index: int | None) -> Row:
    """A child run under the node ``node_id`` that started it (``index``: a map item's)."""
    child_id = child["run_id"]
    if index is not None:
        # An item's workflow is "<parent workflow>/<map node>" for all of them: its
        # output says more (the item node's, keyed by the map node's id).
        output = child.get("output")
        if isinstance(output, dict) and node_id in output:
            output = output[node_id]
        detail = f"run {child_id[:8]}" + (f" · {_preview(output)}" if output is not None else "")
    else:
        version = child.get("workflow_version") or ""
        detail = f"{child.get('workflow_name', '')}{f' v{version}' if version else ''}"
        detail += f" · run {child_id[:8]}"
    return {
        "id": f"k:{child_id}",
        "parent": f"n:{node_id}",
        "depth": 2,
        "expandable": True,
        "expanded": False,
        "name": child.get("parent_node_id") if index is not None else child.get("workflow_name"),
        "kind": "map item" if index is not None else "child run",
        "status": child.get("status", ""),
        "start": child.get("started_at") or child.get("created_at"),
        "duration_ms": duration_ms(child.get("started_at"), child.get("finished_at")),
        "detail": first_line(child.get("error")) or detail,
        "node_id": node_id,
        "child_run_id": child_id,
        "href": run_href(child_id),
        "href_title": f"open child run {child_id}",
        "order": order_key(child, index),
    }


def child_node_row(child_id: str, node: dict[str, Any], parent_node_id: str) -> Row:
    """A node of child run ``child_id`` (a ``node_to_dict`` dict), under the child's row;
    ``parent_node_id`` is the node of the parent run the child is under."""
    node_id = node["node_id"]
    return {
        "id": f"kn:{child_id}:{node_id}",
        "parent": f"k:{child_id}",
        "depth": 3,
        "expandable": False,
        "expanded": False,
        "name": node_id,
        "kind": node.get("kind", ""),
        "status": node.get("status", ""),
        "start": node.get("started_at") or node.get("queued_at"),
        "duration_ms": duration_ms(node.get("started_at"), node.get("finished_at")),
        "detail": first_line(node.get("error")),
        "node_id": parent_node_id,
        "child_run_id": child_id,
        "href": run_href(child_id, node_id),
        "href_title": f"open node {node_id} of child run {child_id}",
    }


def call_duration_ms(data: dict[str, Any]) -> float | None:
    """A call's duration from its event data, under the names runners use for it."""
    for key in ("duration_ms", "elapsed_ms", "latency_ms"):
        if isinstance(data.get(key), int | float):
            return float(data[key])
    for key in ("duration_s", "duration", "elapsed_s", "elapsed"):
        if isinstance(data.get(key), int | float):
            return float(data[key]) * 1000
    return duration_ms(data.get("started_at"), data.get("finished_at"))


def call_status(data: dict[str, Any]) -> str:
    status = data.get("status")
    if isinstance(status, str) and status:
        return status.upper()
    return "FAILED" if data.get("error") else ""


def call_name(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    return str(data.get("name") or data.get("tool") or event.get("message") or event["kind"])


def _preview(value: Any, limit: int = 160) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_row(node_id: str, event: dict[str, Any]) -> Row:
    data = event.get("data") or {}
    error = data.get("error")
    return {
        "id": f"c:{event['seq']}",
        "parent": f"a:{node_id}:{event['attempt']}",
        "depth": 3,
        "expandable": False,
        "expanded": False,
        "name": call_name(event),
        "kind": event["kind"],
        "status": call_status(data),
        "start": data.get("started_at") or event.get("ts"),
        "duration_ms": call_duration_ms(data),
        "detail": first_line(error if isinstance(error, str) else _preview(error))
        or _preview(data.get("arguments")),
        "node_id": node_id,
        "seq": event["seq"],
    }


def initial_rows(model: RunModel) -> list[Row]:
    """The run row (expanded) and one collapsed row per node, in spec order."""
    return [run_row(model), *(node_row(model, n) for n in model.nodes)]


def merge_calls(known: list[dict[str, Any]], fetched: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls of both lists, each seq once, in seq order."""
    by_seq = {e["seq"]: e for e in fetched}
    by_seq.update((e["seq"], e) for e in known)
    return [by_seq[s] for s in sorted(by_seq)]


def child_rows(children: ChildRuns | None, node_id: str) -> list[Row]:
    """The rows of the child runs under ``node_id``, in order."""
    if children is None:
        return []
    return [
        child_row(c, node_id, children.index_of(c["run_id"])) for c in children.of_node(node_id)
    ]


def children_of(
    model: RunModel,
    row: Row,
    fetched_calls: dict[tuple[str, int], list[dict[str, Any]]] | None = None,
    childless: set[str] | frozenset[str] = frozenset(),
    children: ChildRuns | None = None,
    child_nodes: dict[str, list[dict[str, Any]]] | None = None,
) -> list[Row]:
    """The rows right under ``row``: a run's nodes; a node's attempts, then its child
    runs (from ``children``); an attempt's calls (the model's merged with
    ``fetched_calls``, keyed by (node id, attempt)); a child run's nodes (from
    ``child_nodes``, by child run id)."""
    row_id = row["id"]
    if row_id == RUN_ROW_ID:
        return [node_row(model, n) for n in model.nodes]
    node_id = row.get("node_id")
    if node_id is None or node_id not in model.nodes:
        return []
    if row_id.startswith("k:"):
        child_id = row["child_run_id"]
        return [child_node_row(child_id, n, node_id) for n in (child_nodes or {}).get(child_id, [])]
    if row_id.startswith("n:"):
        return [
            attempt_row(node_id, a, expandable=f"a:{node_id}:{a.attempt}" not in childless)
            for a in attempts_of(model, node_id)
        ] + child_rows(children, node_id)
    if row_id.startswith("a:"):
        number = row["attempt"]
        attempt = next((a for a in attempts_of(model, node_id) if a.attempt == number), None)
        known = attempt.calls if attempt is not None else []
        extra = (fetched_calls or {}).get((node_id, row["attempt"]), [])
        return [call_row(node_id, e) for e in merge_calls(known, extra) if e["kind"] in CALL_KINDS]
    return []


class TraceTree:
    """The visible rows of the trace, in display order, and the bookkeeping of expanding
    and collapsing them. Works on any mutable list of row dicts (the grid's rowData)."""

    def __init__(self, rows: MutableSequence[Row]) -> None:
        self.rows = rows
        self._by_id: dict[str, Row] = {r["id"]: r for r in rows}

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._by_id

    def row(self, row_id: str) -> Row | None:
        return self._by_id.get(row_id)

    def index(self, row_id: str) -> int:
        target = self._by_id[row_id]
        return next(i for i, r in enumerate(self.rows) if r is target)

    def _end_of_subtree(self, index: int) -> int:
        """The index after the last descendant of the row at ``index``."""
        depth = self.rows[index]["depth"]
        end = index + 1
        while end < len(self.rows) and self.rows[end]["depth"] > depth:
            end += 1
        return end

    def _insert(self, index: int, new: list[Row]) -> list[Row]:
        self.rows[index:index] = new
        stored = list(self.rows[index : index + len(new)])  # the list may wrap what it holds
        for r in stored:
            self._by_id[r["id"]] = r
        return stored

    def expand(self, row_id: str, children: list[Row]) -> tuple[int, list[Row]]:
        """Marks the row expanded and puts ``children`` right after it.

        Returns:
            The index of the first child and the children as stored.
        """
        index = self.index(row_id)
        self.rows[index]["expanded"] = True
        new = [c for c in children if c["id"] not in self._by_id]
        return index + 1, self._insert(index + 1, new)

    def collapse(self, row_id: str) -> list[Row]:
        """Marks the row collapsed and removes its descendants; returns them."""
        index = self.index(row_id)
        self.rows[index]["expanded"] = False
        end = self._end_of_subtree(index)
        removed = list(self.rows[index + 1 : end])
        if removed:
            del self.rows[index + 1 : end]
        for r in removed:
            self._by_id.pop(r["id"], None)
        return removed

    def add_child(self, parent_id: str, child: Row) -> tuple[int, Row]:
        """Puts ``child`` under an expanded row: before the first sibling with a greater
        ``order`` if it has one, else last. Returns its index and the row as stored."""
        index = self.index(parent_id)
        depth = self.rows[index]["depth"]
        at = self._end_of_subtree(index)
        order = child.get("order")
        if order is not None:
            # From the end: children mostly come in order, so this stops at once.
            for i in range(at - 1, index, -1):
                sibling = self.rows[i]
                if sibling["depth"] != depth + 1:
                    continue
                if sibling.get("order") is None or sibling["order"] <= order:
                    break
                at = i
        return at, self._insert(at, [child])[0]

    def update(self, row_id: str, fresh: Row) -> Row | None:
        """Copies the live fields of ``fresh`` into the row; returns it if any changed."""
        row = self._by_id.get(row_id)
        if row is None:
            return None
        changed = {k: fresh[k] for k in _LIVE_FIELDS if k in fresh and row.get(k) != fresh[k]}
        if not changed:
            return None
        row.update(changed)
        return row


class TraceView:
    """The run's trace as an expandable, virtualized grid.

    Args:
        model: The page's run model.
        console: For fetching the calls of attempts the model has none of, and the
            nodes of child runs.
        on_select: Called with a node id when a node's row (or a row under it) is
            clicked outside its caret; may be a coroutine function.
        children: The run's child runs; given, they are loaded now and nest under
            the nodes that started them.
    """

    def __init__(
        self,
        model: RunModel,
        console: Console,
        on_select: Callable[[str], Any],
        children: ChildRuns | None = None,
    ) -> None:
        self.model = model
        self.console = console
        self.on_select = on_select
        self.children = children
        # Nodes of child runs (GetRun), by child run id, for the children expanded.
        self.child_nodes: dict[str, list[dict[str, Any]]] = {}
        self._child_fetches: dict[str, asyncio.Task[None]] = {}
        self._child_stale: set[str] = set()  # changed while its nodes were being fetched
        self._child_version: dict[str, str | None] = {}  # updated_at of what was fetched
        # Calls fetched with ListEvents, by (node id, attempt), for nodes whose call
        # events the model did not get; fetched once per node.
        self.fetched_calls: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        # Attempts that were expanded and turned out to have no calls.
        self.childless: set[str] = set()
        self.grid = (
            RowGrid(grid_options(initial_rows(model)))
            .classes("w-full sp-trace")
            .style("height: 70vh; min-height: 360px")
            .mark("trace-grid")
        )
        self.tree = TraceTree(self.grid.options["rowData"])
        self.grid.on("cellClicked", self._clicked, ["colId", "rowId"])
        model.on_nodes(self._nodes_changed)
        model.on_run(self._run_changed)
        if children is not None:
            children.on_change(self._children_changed)
            children.start()

    # -- browser

    def _send(self, transaction: dict[str, Any]) -> None:
        self.grid.run_grid_method("applyTransaction", transaction)

    def _send_added(self, added: list[tuple[int, Row]]) -> None:
        """Adds rows in the order they went into the Python copy; rows that went in one
        after another go out as one transaction (a burst of new map items)."""
        batch: list[Row] = []
        start = 0
        for index, row in added:
            if batch and index != start + len(batch):
                self._send({"add": batch, "addIndex": start})
                batch = []
            if not batch:
                start = index
            batch.append(dict(row))
        if batch:
            self._send({"add": batch, "addIndex": start})

    @staticmethod
    def _plain(rows: list[Row]) -> list[Row]:
        return [dict(r) for r in rows]

    # -- clicks

    async def _clicked(self, e: events.GenericEventArguments) -> None:
        args = e.args or {}
        row = self.tree.row(str(args.get("rowId") or ""))
        if row is None:
            return
        if args.get("colId") == "name" and row["expandable"]:
            await self.toggle(row["id"])
        elif row.get("node_id"):
            result = self.on_select(row["node_id"])
            if inspect.isawaitable(result):
                await result

    async def toggle(self, row_id: str) -> None:
        """Expands a collapsed row or collapses an expanded one."""
        row = self.tree.row(row_id)
        if row is None:
            return
        if row["expanded"]:
            self.collapse(row_id)
        else:
            await self.expand(row_id)

    async def expand(self, row_id: str) -> None:
        """Shows the row's children, fetching an attempt's calls first if need be."""
        row = self.tree.row(row_id)
        if row is None or row["expanded"] or not row["expandable"]:
            return
        if row_id.startswith(("a:", "k:")):
            if row_id.startswith("a:"):
                await self._fetch_calls(row["node_id"], row["attempt"])
            else:
                await self._fetch_child_nodes(row["child_run_id"])
            row = self.tree.row(row_id)  # collapsed away while fetching?
            if row is None or row["expanded"]:
                return
        children = children_of(
            self.model, row, self.fetched_calls, self.childless, self.children, self.child_nodes
        )
        with self.grid.props.suspend_updates():
            if not children:
                if row_id.startswith("a:"):
                    self.childless.add(row_id)
                row["expandable"] = False
                self._send({"update": self._plain([row])})
                return
            index, stored = self.tree.expand(row_id, children)
        self._send({"update": self._plain([row])})
        self._send({"add": self._plain(stored), "addIndex": index})

    def collapse(self, row_id: str) -> None:
        """Hides the row's descendants."""
        if row_id not in self.tree:
            return
        with self.grid.props.suspend_updates():
            removed = self.tree.collapse(row_id)
            row = self.tree.row(row_id)
        if removed:
            self._send({"remove": [{"id": r["id"]} for r in removed]})
        if row is not None:
            self._send({"update": self._plain([row])})

    async def _fetch_calls(self, node_id: str, attempt: int) -> None:
        """Fetches the node's calls once if the model has none for this attempt."""
        if any(a.attempt == attempt and a.calls for a in attempts_of(self.model, node_id)):
            return
        task = self._fetches.get(node_id)
        if task is None:
            task = self._fetches[node_id] = asyncio.ensure_future(self._load_calls(node_id))
        await asyncio.shield(task)

    async def _load_calls(self, node_id: str) -> None:
        try:
            found = await self.console.client.list_events(
                self.model.run["run_id"], kinds=sorted(CALL_KINDS), node_id=node_id, limit=None
            )
        except StatepipeError as err:
            log.warning("calls of node %s: %s", node_id, err)
            self._fetches.pop(node_id, None)  # try again on the next expand
            return
        for event in found:
            d = event.to_dict()
            self.fetched_calls.setdefault((node_id, d["attempt"]), []).append(d)

    async def _fetch_child_nodes(self, child_id: str) -> None:
        """Fetches a child run's nodes once (a pushed change of the child while it is
        expanded fetches them again: :meth:`_children_changed`)."""
        if child_id in self.child_nodes and self._child_version.get(child_id) == self._version(
            child_id
        ):
            return  # nothing changed since they were fetched
        task = self._child_fetches.get(child_id)
        if task is None:
            task = self._child_fetches[child_id] = asyncio.ensure_future(
                self._load_child_nodes(child_id)
            )
        await asyncio.shield(task)

    async def _load_child_nodes(self, child_id: str) -> None:
        try:
            while True:
                self._child_stale.discard(child_id)
                version = self._version(child_id)
                try:
                    run = (await self.console.client.get_run(child_id)).to_dict()
                except StatepipeError as err:
                    log.warning("nodes of child run %s: %s", child_id, err)
                    return
                self.child_nodes[child_id] = run["nodes"]
                self._child_version[child_id] = version
                if child_id not in self._child_stale:
                    return
        finally:
            self._child_fetches.pop(child_id, None)

    def _version(self, child_id: str) -> str | None:
        """The child's updated_at as its summary last came (None: not known)."""
        child = self.children.runs.get(child_id) if self.children is not None else None
        return None if child is None else child.get("updated_at")

    async def _refresh_child_nodes(self, child_id: str) -> None:
        """Fetches an expanded child's nodes again and shows what changed."""
        if child_id in self._child_fetches:
            self._child_stale.add(child_id)  # the fetch under way goes again
            return
        self._child_fetches[child_id] = task = asyncio.ensure_future(
            self._load_child_nodes(child_id)
        )
        await asyncio.shield(task)
        row = self.tree.row(f"k:{child_id}")
        if row is None or not row["expanded"]:
            return
        updated: list[Row] = []
        added: list[tuple[int, Row]] = []
        with self.grid.props.suspend_updates():
            for fresh in children_of(self.model, row, child_nodes=self.child_nodes):
                if fresh["id"] not in self.tree:
                    added.append(self.tree.add_child(row["id"], fresh))
                elif (stored := self.tree.update(fresh["id"], fresh)) is not None:
                    updated.append(stored)
        if updated:
            self._send({"update": self._plain(updated)})
        self._send_added(added)

    # -- live

    def _run_changed(self) -> None:
        with self.grid.props.suspend_updates():
            row = self.tree.update(RUN_ROW_ID, run_row(self.model))
        if row is not None:
            self._send({"update": self._plain([row])})

    def _nodes_changed(self, node_ids: list[str]) -> None:
        updated: dict[str, Row] = {}
        added: list[tuple[int, Row]] = []
        with self.grid.props.suspend_updates():
            for node_id in node_ids:
                row_id = f"n:{node_id}"
                node = self.tree.row(row_id)
                if node is None or node_id not in self.model.nodes:
                    continue
                if self.tree.update(row_id, node_row(self.model, node_id)) is not None:
                    updated[row_id] = node
                if node["expanded"]:
                    self._attempts_changed(node_id, updated, added)
        if updated:
            self._send({"update": self._plain(list(updated.values()))})
        self._send_added(added)

    def _children_changed(self, child_ids: list[str]) -> None:
        """Child runs appeared or changed: their rows under expanded nodes follow
        (node rows themselves follow the model: their summary is a node change)."""
        children = self.children
        if children is None:
            return
        updated: list[Row] = []
        added: list[tuple[int, Row]] = []
        refresh: list[str] = []
        with self.grid.props.suspend_updates():
            for child_id in child_ids:
                node_id = children.node_of(child_id)
                if node_id is None or node_id not in self.model.nodes:
                    continue
                fresh = child_row(children.runs[child_id], node_id, children.index_of(child_id))
                row = self.tree.row(fresh["id"])
                if row is not None:
                    if self.tree.update(fresh["id"], fresh) is not None:
                        updated.append(row)
                    if row["expanded"]:
                        refresh.append(child_id)
                    continue
                parent = self.tree.row(f"n:{node_id}")
                if parent is not None and parent["expanded"]:
                    added.append(self.tree.add_child(parent["id"], fresh))
        if updated:
            self._send({"update": self._plain(updated)})
        self._send_added(added)
        for child_id in refresh:
            background_tasks.create(self._refresh_child_nodes(child_id), name="trace-child-nodes")

    def _attempts_changed(
        self, node_id: str, updated: dict[str, Row], added: list[tuple[int, Row]]
    ) -> None:
        for attempt in attempts_of(self.model, node_id):
            row_id = f"a:{node_id}:{attempt.attempt}"
            if attempt.calls:
                self.childless.discard(row_id)
            fresh = attempt_row(node_id, attempt, expandable=row_id not in self.childless)
            row = self.tree.row(row_id)
            if row is None:
                added.append(self.tree.add_child(f"n:{node_id}", fresh))
                continue
            if self.tree.update(row_id, fresh) is not None:
                updated[row_id] = row
            if row["expanded"]:
                for call in children_of(self.model, row, self.fetched_calls):
                    if call["id"] not in self.tree:
                        added.append(self.tree.add_child(row_id, call))
