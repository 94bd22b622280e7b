"""The trace of a run: run → nodes → attempts → tool/API calls, as one expandable list.

The tree is a flattened AG Grid (client-side row model, virtualized): a row per
visible entry, indented by its depth, with a caret the name cell's renderer draws.
Children are built only when their parent is expanded, and every change reaches the
browser as a row transaction (``add`` at an index, ``update``, ``remove``) on stable
row ids, so neither expanding nor a live status change re-sends the grid. The Python
copy of the rows (``grid.options['rowData']``) is kept in step with updates
suspended, so a later full render shows the same tree.

Row ids: ``r`` (the run), ``n:<node>``, ``a:<node>:<attempt>``, ``c:<seq>`` (a call).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, MutableSequence
from typing import Any

from nicegui import events

from statepipe.client import StatepipeError
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
    node = model.nodes[node_id]
    return {
        "id": f"n:{node_id}",
        "parent": RUN_ROW_ID,
        "depth": 1,
        "expandable": bool(node.get("attempt") or model.attempts.get(node_id)),
        "expanded": False,
        "name": node_id,
        "kind": node.get("kind", ""),
        "status": node.get("status", ""),
        "start": node.get("started_at") or node.get("queued_at"),
        "duration_ms": duration_ms(node.get("started_at"), node.get("finished_at")),
        "detail": first_line(node.get("error")),
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


def children_of(
    model: RunModel,
    row: Row,
    fetched_calls: dict[tuple[str, int], list[dict[str, Any]]] | None = None,
    childless: set[str] | frozenset[str] = frozenset(),
) -> list[Row]:
    """The rows right under ``row``: a run's nodes, a node's attempts, an attempt's calls
    (the model's merged with ``fetched_calls``, keyed by (node id, attempt))."""
    if row["id"] == RUN_ROW_ID:
        return [node_row(model, n) for n in model.nodes]
    node_id = row.get("node_id")
    if node_id is None or node_id not in model.nodes:
        return []
    if row["depth"] == 1:
        return [
            attempt_row(node_id, a, expandable=f"a:{node_id}:{a.attempt}" not in childless)
            for a in attempts_of(model, node_id)
        ]
    if row["depth"] == 2:
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
        """Appends ``child`` as the last child of an expanded row; returns its index and
        the row as stored."""
        end = self._end_of_subtree(self.index(parent_id))
        return end, self._insert(end, [child])[0]

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
        console: For fetching the calls of attempts the model has none of.
        on_select: Called with a node id when a node's row (or a row under it) is
            clicked outside its caret; may be a coroutine function.
    """

    def __init__(
        self,
        model: RunModel,
        console: Console,
        on_select: Callable[[str], Any],
    ) -> None:
        self.model = model
        self.console = console
        self.on_select = on_select
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

    # -- browser

    def _send(self, transaction: dict[str, Any]) -> None:
        self.grid.run_grid_method("applyTransaction", transaction)

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
        if row["depth"] == 2:
            await self._fetch_calls(row["node_id"], row["attempt"])
            row = self.tree.row(row_id)  # collapsed away while fetching?
            if row is None or row["expanded"]:
                return
        children = children_of(self.model, row, self.fetched_calls, self.childless)
        with self.grid.props.suspend_updates():
            if not children:
                if row["depth"] == 2:
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
        for index, row in added:  # in the order they went into the Python copy
            self._send({"add": [dict(row)], "addIndex": index})

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
