"""The node table of a run: every node, sortable and filterable in the browser.

A run's nodes are all in the page (GetRun), so AG Grid sorts and filters them itself
(virtualized: 10,000 rows cost what is on screen). Live changes are row transactions.
A node that starts child runs (workflow, map, agent) shows their summary ("8 items ·
7 ✓ 1 ✗"), which follows the children's pushed changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nicegui import ui

from ui.child_runs import CHILD_KINDS, ChildRuns
from ui.format import tokens_of
from ui.grid import DURATION_VALUE, STATUS_CELL, TIME_CELL, RowGrid
from ui.run_model import RunModel
from ui.streams import Coalescer

_DURATION = f"""(p) => {{
  const ms = ({DURATION_VALUE})(p);
  return ms === null ? '' : sp.fmtDuration(ms);
}}"""
_ERROR = """(p) => p.value
  ? `<span style="color:#e53935" title="${sp.esc(p.value)}">${sp.esc(p.value)}</span>` : ''"""


def node_row(node: dict[str, Any], children: str = "") -> dict[str, Any]:
    """A grid row of a node; ``children`` is the summary of its child runs."""
    return {
        "id": node["node_id"],
        "kind": node["kind"],
        "status": node["status"],
        "attempt": node["attempt"],
        "started_at": node["started_at"],
        "finished_at": node["finished_at"],
        "tokens": tokens_of(node.get("usage")),
        "error": (node["error"] or "").splitlines()[0][:300] if node["error"] else "",
        "children": children,
    }


class NodeTable:
    """All nodes of ``model``; clicking a row calls ``on_select(node_id)``.

    Given ``children``, a run with nodes that start child runs loads them (once per
    page) for the Children column.
    """

    def __init__(
        self,
        model: RunModel,
        on_select: Callable[[str], Any],
        children: ChildRuns | None = None,
    ) -> None:
        self.model = model
        self.on_select = on_select
        self.changed: dict[str, None] = {}
        self.push = Coalescer(self._send, delay_s=0.1)
        # The grid's rowData holds these same dicts: updating one in place keeps the
        # server copy in step without re-sending the grid.
        self.rows = {
            n: node_row(node, model.child_summaries.get(n, "")) for n, node in model.nodes.items()
        }
        has_children = any(n.get("kind") in CHILD_KINDS for n in model.nodes.values())
        with ui.row().classes("w-full items-center gap-2"):
            ui.input(placeholder="filter nodes").props(
                "dense outlined clearable debounce=250"
            ).classes("w-64").on_value_change(
                lambda e: self.grid.run_grid_method(
                    "setGridOption", "quickFilterText", e.value or ""
                )
            ).mark("nodes-filter")
            ui.label(f"{len(model.nodes):,} nodes").classes("sp-muted text-xs")
        self.grid = (
            RowGrid(
                {
                    "columnDefs": [
                        {
                            "field": "id",
                            "headerName": "Node",
                            "flex": 2,
                            "minWidth": 140,
                            "cellClass": "sp-mono",
                        },
                        {"field": "kind", "headerName": "Kind", "width": 95},
                        {
                            "field": "status",
                            "headerName": "Status",
                            "width": 120,
                            ":cellRenderer": STATUS_CELL,
                        },
                        {
                            "field": "attempt",
                            "headerName": "Attempt",
                            "width": 110,
                            "filter": "agNumberColumnFilter",
                        },
                        {
                            "field": "started_at",
                            "headerName": "Started",
                            "width": 120,
                            ":cellRenderer": TIME_CELL,
                        },
                        {
                            "colId": "duration",
                            "headerName": "Duration",
                            "width": 105,
                            ":valueGetter": DURATION_VALUE,
                            ":cellRenderer": _DURATION,
                            "filter": "agNumberColumnFilter",
                        },
                        {
                            "field": "tokens",
                            "headerName": "Tokens",
                            "width": 110,
                            "filter": "agNumberColumnFilter",
                        },
                        {
                            "field": "children",
                            "headerName": "Children",
                            "width": 170,
                            "hide": not has_children,
                            "tooltipField": "children",
                        },
                        {
                            "field": "error",
                            "headerName": "Error",
                            "flex": 3,
                            "minWidth": 160,
                            ":cellRenderer": _ERROR,
                        },
                    ],
                    "defaultColDef": {"sortable": True, "filter": True, "resizable": True},
                    "rowData": list(self.rows.values()),
                    ":getRowId": "(p) => p.data.id",
                    "rowHeight": 32,
                    "animateRows": False,
                    "suppressCellFocus": True,
                },
                theme="quartz",
                auto_size_columns=False,
            )
            .classes("w-full")
            .style("height: calc(100vh - 340px); min-height: 320px")
            .mark("nodes-grid")
        )
        self.grid.on("cellClicked", self._clicked)
        model.on_nodes(self.nodes_changed)
        if children is not None and has_children:
            children.start()

    async def _clicked(self, event: Any) -> None:
        node_id = ((event.args or {}).get("data") or {}).get("id")
        if node_id:
            result = self.on_select(node_id)
            if inspect.isawaitable(result):
                await result

    def nodes_changed(self, node_ids: list[str]) -> None:
        self.changed.update(dict.fromkeys(node_ids))
        self.push.poke()

    def _send(self) -> None:
        changed, self.changed = list(self.changed), {}
        rows = []
        for node_id in changed:
            if node_id in self.rows:
                self.rows[node_id].update(
                    node_row(self.model.nodes[node_id], self.model.child_summaries.get(node_id, ""))
                )
                rows.append(self.rows[node_id])
        if rows:
            self.grid.run_grid_method("applyTransactionAsync", {"update": rows})
