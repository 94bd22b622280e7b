"""The run's DAG: one column per level, left to right, coloured by node status.

Why it is built this way:

* ``ui.echart`` with a ``graph`` series and ``layout: 'none'``: the positions come from
  :func:`layout` (level = column, nodes of a level stacked and ordered by the mean
  height of their parents, so edges cross less), never from a force simulation that
  moves under the reader's eyes. Roam pans and zooms; labels hide when crowded and show
  on hover.
* Live changes never re-send the element (``update()`` would re-send every node and
  edge): :meth:`GraphView.nodes_changed` pushes only the series data through
  ``run_chart_method('setOption', ...)``, which ECharts merges by series id (the edges
  stay), and keeps the server copy of the options in step under
  ``props.suspend_updates()``. Nothing is sent when no colour or tooltip changed.
* No server timer: the page already coalesces model changes to a few flushes a second.
* Past :data:`MAX_GRAPH_NODES` nodes a drawing tells nothing, so a level summary (one
  coloured bar of status counts per level) takes its place; each row is its own small
  element and only rows of changed levels are re-sent.
* The pure functions (:func:`layout`, :func:`graph_options`, :func:`level_summary`, ...)
  hold the logic and are unit-tested without a browser.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nicegui import events, ui

from ui.child_runs import CHILD_KINDS, ChildRuns
from ui.format import format_duration, parse_ms
from ui.run_model import Attempt, RunModel
from ui.streams import IdBatcher
from ui.theme import status_color
from ui.views.timeline import run_clock

MAX_GRAPH_NODES = 1000
MAX_SUMMARY_LEVELS = 500
HEIGHT = "480px"
# Names of the invisible corner items; no node id starts with a NUL.
ANCHOR_PREFIX = "\u0000anchor"
VIEW_ASPECT = 2.5  # width / height of the chart on a 1280 x 800 screen
LABEL_CHARS = 18
LABELS_UP_TO = 120  # more nodes than this: labels on hover only
# A mid grey that reads on white and on Quasar's dark background.
TEXT_COLOR = "#8a8f98"
EDGE_COLOR = "#8a8f98"
# Bar order: finished first, then what is in flight, then what waits.
STATUS_ORDER = (
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "SKIPPED",
    "INTERRUPTED",
    "PAUSED",
    "RETRY_WAIT",
    "RUNNING",
    "QUEUED",
    "PENDING",
)

_LABEL_FORMATTER = (
    f"p => p.name.length > {LABEL_CHARS} ? p.name.slice(0, {LABEL_CHARS - 1}) + '\u2026' : p.name"
)
_ESCAPE = "s => String(s).replace(/[&<>\"']/g, c => '&#' + c.charCodeAt(0) + ';')"
_TOOLTIP_FORMATTER = (
    f"p => p.dataType === 'edge' ? ({_ESCAPE})(p.data.source) + ' \u2192 ' + "
    f"({_ESCAPE})(p.data.target) : (p.data && p.data.tip) || ''"
)


# -- pure parts


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each node is drawn and the edges (parent, child) between them."""

    positions: dict[str, tuple[float, float]]
    edges: list[tuple[str, str]]
    # (x0, y0, x1, y1) around every node with half a gap to spare, never flat.
    bounds: tuple[float, float, float, float] = (-0.5, -0.5, 0.5, 0.5)


def layout(
    nodes: Mapping[str, Mapping[str, Any]],
    levels: Sequence[Sequence[str]],
    aspect: float = VIEW_ASPECT,
) -> Layout:
    """Positions by level: x is the level's column, y the place in it, centred on 0.

    Within a level, nodes are ordered by the mean y of their parents (stable, so ties
    keep spec order), which untangles most fan-out / fan-in shapes in one pass. Columns
    are one unit apart; the row gap makes the drawing about as wide as ``aspect`` times
    its height, so ECharts (which keeps the aspect ratio, circles stay round) fills the
    chart instead of drawing a thin strip.

    Args:
        nodes: ``{node_id: node}`` with each node's ``after`` list.
        levels: Node ids per depth (``RunModel.levels``).
        aspect: The chart's width over its height.

    Returns:
        The positions and the edges, parents first, in spec order.
    """
    columns = max(len(levels) - 1, 1)
    rows = max((len(level) for level in levels), default=1) - 1
    row_gap = min(max(columns / rows / aspect, 0.05), 6.0) if rows else 1.0
    positions: dict[str, tuple[float, float]] = {}
    for depth, level in enumerate(levels):

        def barycentre(node_id: str) -> float:
            ys = [positions[p][1] for p in nodes[node_id].get("after") or () if p in positions]
            return sum(ys) / len(ys) if ys else 0.0

        order = list(level) if depth == 0 else sorted(level, key=barycentre)
        top = -(len(order) - 1) / 2
        for row, node_id in enumerate(order):
            positions[node_id] = (float(depth), (top + row) * row_gap)
    edges = [
        (parent, node_id)
        for node_id, node in nodes.items()
        if node_id in positions
        for parent in node.get("after") or ()
        if parent in positions
    ]
    ys = [y for _, y in positions.values()] or [0.0]
    pad = row_gap / 2
    bounds = (-0.5, min(ys) - pad, len(levels) - 0.5, max(ys) + pad)
    return Layout(positions, edges, bounds)


def uses_level_summary(node_count: int) -> bool:
    """Whether the view shows the level summary instead of the drawing."""
    return node_count > MAX_GRAPH_NODES


def symbol_size(node_count: int) -> int:
    """Node size in pixels: big enough to click, small enough for a thousand."""
    if node_count <= 40:
        return 26
    if node_count <= 150:
        return 18
    if node_count <= 400:
        return 12
    return 8


def node_tooltip(
    node: Mapping[str, Any], attempts: Sequence[Attempt], now: float, children: str = ""
) -> str:
    """HTML of a node's tooltip: id, kind, status, attempt, duration, the summary of its
    child runs (``children``), error's first line."""
    status = node.get("status") or "PENDING"
    last = attempts[-1] if attempts else None
    started = parse_ms(last.started_at if last else node.get("started_at"))
    finished = parse_ms(last.finished_at if last else node.get("finished_at"))
    duration = ""
    if started is not None:
        if finished is not None:
            duration = format_duration(finished - started, empty="")
        elif status == "RUNNING":
            duration = format_duration(now - started, empty="") + " so far"
    error = (node.get("error") or "").strip()
    lines = [
        f"<b>{html.escape(node['node_id'])}</b>",
        f"kind: {html.escape(node.get('kind') or '—')}",
        f'status: <span style="color:{status_color(status)}">{html.escape(status)}</span>'
        + (f" · attempt {node['attempt']}" if node.get("attempt") else ""),
    ]
    if duration:
        lines.append(f"duration: {duration}")
    if children:
        lines.append(html.escape(children))
    if error:
        first = html.escape(error.splitlines()[0][:200])
        lines.append(f'<span style="color:{status_color("FAILED")}">{first}</span>')
    return "<br>".join(lines)


def node_datum(
    node: Mapping[str, Any],
    attempts: Sequence[Attempt],
    position: tuple[float, float],
    now: float,
    children: str = "",
) -> dict[str, Any]:
    """The graph series data item of one node (``children``: its child runs' summary)."""
    status = node.get("status") or "PENDING"
    return {
        "name": node["node_id"],
        "x": position[0],
        "y": position[1],
        # NiceGUI's on_point_click reads the clicked item's value: without one, a click
        # raises KeyError on the server and never selects.
        "value": status,
        "itemStyle": {"color": status_color(status)},
        "tip": node_tooltip(node, attempts, now, children),
    }


def graph_options(
    nodes: Mapping[str, Mapping[str, Any]],
    levels: Sequence[Sequence[str]],
    attempts: Mapping[str, Sequence[Attempt]],
    now: float,
    summaries: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The chart's full options (sent once; later changes go through setOption);
    ``summaries`` are the nodes' child-run summaries for their tooltips."""
    placed = layout(nodes, levels)
    level_of = {n: depth for depth, level in enumerate(levels) for n in level}
    count = len(placed.positions)
    size = symbol_size(count)
    crowded = count > LABELS_UP_TO
    links = []
    for parent, child in placed.edges:
        link: dict[str, Any] = {"source": parent, "target": child}
        if level_of[child] - level_of[parent] > 1:  # would run through the columns between
            link["lineStyle"] = {"curveness": 0.2}
        links.append(link)
    return {
        "backgroundColor": "transparent",
        "animation": False,  # a live graph recolours often; a tween per change only lags
        "tooltip": {"trigger": "item", "confine": True, ":formatter": _TOOLTIP_FORMATTER},
        "series": [
            {
                "id": "nodes",
                "type": "graph",
                "layout": "none",
                "roam": True,
                # No left/right/top/bottom: ECharts then keeps the layout's aspect ratio
                # (all four would stretch it, and the circles into ellipses).
                "symbolSize": size,
                "edgeSymbol": ["none", "arrow"],
                "edgeSymbolSize": [0, max(5, size // 3)],
                "itemStyle": {"borderColor": "rgba(127,127,127,.6)", "borderWidth": 1},
                # A hair of curveness: the straight edges of ECharts 6 (as bundled with
                # NiceGUI 3.18) draw a horizontal edge at the wrong height, a curve does not.
                "lineStyle": {"color": EDGE_COLOR, "opacity": 0.55, "width": 1, "curveness": 0.001},
                "label": {
                    "show": not crowded,
                    "position": "bottom",
                    "color": TEXT_COLOR,
                    "fontSize": 11,
                    ":formatter": _LABEL_FORMATTER,
                },
                "labelLayout": {"hideOverlap": True},
                "emphasis": {
                    "focus": "adjacency",
                    "label": {"show": True},
                    "lineStyle": {"width": 2, "opacity": 0.9},
                },
                "data": [
                    node_datum(
                        nodes[n],
                        attempts.get(n, ()),
                        placed.positions[n],
                        now,
                        (summaries or {}).get(n, ""),
                    )
                    for n in nodes
                    if n in placed.positions
                ]
                + anchors(placed.bounds),
                "links": links,
            }
        ],
    }


def anchors(bounds: tuple[float, float, float, float]) -> list[dict[str, Any]]:
    """Two invisible data items at opposite corners of ``bounds``.

    ECharts fits the bounding box of the nodes into the chart; a single node, a chain
    (one row) or a single level (one column) has a flat box, which ECharts cannot scale
    (nodes land at the edge and edges drift away from them). The anchors give the box
    an area and a margin. They come after the nodes, so node indexes are unchanged.
    """
    x0, y0, x1, y1 = bounds
    hidden = {
        "symbolSize": 0,
        "label": {"show": False},
        "tooltip": {"show": False},
        "emphasis": {"disabled": True},
        "silent": True,
    }
    return [
        {"name": ANCHOR_PREFIX + "0", "x": x0, "y": y0, **hidden},
        {"name": ANCHOR_PREFIX + "1", "x": x1, "y": y1, **hidden},
    ]


@dataclasses.dataclass(frozen=True)
class LevelCounts:
    """How many nodes of one level are in each status (in :data:`STATUS_ORDER`)."""

    level: int
    total: int
    counts: dict[str, int]


def level_counts(
    level: int, node_ids: Iterable[str], nodes: Mapping[str, Mapping[str, Any]]
) -> LevelCounts:
    tally: dict[str, int] = {}
    total = 0
    for node_id in node_ids:
        status = nodes[node_id].get("status") or "PENDING"
        tally[status] = tally.get(status, 0) + 1
        total += 1
    order = [s for s in STATUS_ORDER if s in tally] + sorted(set(tally) - set(STATUS_ORDER))
    return LevelCounts(level, total, {s: tally[s] for s in order})


def level_summary(
    levels: Sequence[Sequence[str]], nodes: Mapping[str, Mapping[str, Any]]
) -> list[LevelCounts]:
    """Status counts per level, level 0 first."""
    return [level_counts(depth, level, nodes) for depth, level in enumerate(levels)]


def level_row_html(counts: LevelCounts) -> str:
    """One summary row: the level, its node count, a bar of status shares, the counts.
    Styles are inline so the row looks the same wherever it is shown."""
    spans = "".join(
        f'<span style="display:block;height:100%;width:{100 * n / counts.total:.3f}%;'
        f'background:{status_color(s)}" title="{html.escape(s.lower())}: {n}"></span>'
        for s, n in counts.counts.items()
    )
    text = " · ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in counts.counts.items())
    return (
        '<div style="display:flex;align-items:center;gap:10px;width:100%;font-size:12.5px">'
        f'<span class="sp-mono" style="width:4.5em">L{counts.level}</span>'
        f'<span class="sp-mono" style="width:4em;text-align:right">{counts.total}</span>'
        '<div style="display:flex;flex:1;height:8px;min-width:60px;border-radius:4px;'
        f'overflow:hidden;background:rgba(127,127,127,.15)">{spans}</div>'
        f'<span class="sp-muted" style="width:24em;font-size:12px">{html.escape(text)}</span>'
        "</div>"
    )


# -- the view


class GraphView:
    """The DAG of a run (or, past :data:`MAX_GRAPH_NODES` nodes, its level summary).

    Attributes:
        chart: The ``ui.echart``, or ``None`` when the level summary is shown.
        summary_rows: ``{level: ui.html}`` of the level summary (empty with a chart).
    """

    def __init__(
        self,
        model: RunModel,
        on_select: Callable[[str], Any],
        children: ChildRuns | None = None,
    ) -> None:
        self.model = model
        self._on_select = on_select
        self.chart: ui.echart | None = None
        self.summary_rows: dict[int, ui.html] = {}
        self._positions: dict[str, tuple[float, float]] = {}
        self._index: dict[str, int] = {}
        # Plain copy of the series data, what the browser has (the options hold observables).
        self._data: list[dict[str, Any]] = []
        if uses_level_summary(len(model.nodes)):
            self._build_summary()
        else:
            self._build_chart()
        # Each update re-sends the series (ECharts replaces data whole): at most 4/s.
        model.on_nodes(IdBatcher(self.nodes_changed, delay_s=0.25).add)
        # Tooltips of workflow, map and agent nodes summarize their child runs.
        if children is not None and any(n.get("kind") in CHILD_KINDS for n in model.nodes.values()):
            children.start()

    @property
    def summary_mode(self) -> bool:
        """Whether the level summary is shown instead of the drawing."""
        return self.chart is None

    def _build_chart(self) -> None:
        model = self.model
        options = graph_options(
            model.nodes, model.levels, model.attempts, run_clock(model.run), model.child_summaries
        )
        data = self._data = options["series"][0]["data"]
        self._index = {d["name"]: i for i, d in enumerate(data)}
        self._positions = {d["name"]: (d["x"], d["y"]) for d in data}
        self.chart = (
            ui.echart(options, on_point_click=self._clicked)
            .classes("w-full")
            .style(f"height: {HEIGHT}")
            .mark("run-graph")
        )

    def _build_summary(self) -> None:
        levels = self.model.levels
        with ui.column().classes("w-full gap-1").mark("run-graph-levels"):
            self.note = ui.label(
                f"{len(self.model.nodes)} nodes: showing levels; open the Nodes tab for the table"
            ).classes("text-sm sp-muted")
            if len(levels) > MAX_SUMMARY_LEVELS:
                ui.label(f"First {MAX_SUMMARY_LEVELS} of {len(levels)} levels.").classes(
                    "text-xs sp-muted"
                )
            with ui.scroll_area().classes("w-full").style(f"height: {HEIGHT}"):
                for counts in level_summary(levels[:MAX_SUMMARY_LEVELS], self.model.nodes):
                    self.summary_rows[counts.level] = ui.html(
                        level_row_html(counts), sanitize=False
                    ).classes("w-full")

    def nodes_changed(self, node_ids: Iterable[str]) -> None:
        """Updates the colours and tooltips of changed nodes with one partial
        ``setOption`` (or the rows of their levels in the summary)."""
        if self.chart is None:
            self._summary_changed(node_ids)
            return
        if self.chart.is_deleted:
            return
        now = run_clock(self.model.run)
        changed: dict[int, dict[str, Any]] = {}
        for node_id in node_ids:
            i = self._index.get(node_id)
            if i is None:
                continue
            datum = node_datum(
                self.model.nodes[node_id],
                self.model.attempts.get(node_id, ()),
                self._positions[node_id],
                now,
                self.model.child_summaries.get(node_id, ""),
            )
            if datum != self._data[i]:
                changed[i] = datum
        if not changed:
            return
        series = self.chart.options["series"][0]
        with self.chart.props.suspend_updates():  # the server copy, without a re-send
            for i, datum in changed.items():
                self._data[i] = datum
                series["data"][i] = datum
        # ECharts replaces a series' data as a whole; the links and styles stay.
        self.chart.run_chart_method("setOption", {"series": [{"id": "nodes", "data": self._data}]})

    def _summary_changed(self, node_ids: Iterable[str]) -> None:
        levels = {self.model.level_of[n] for n in node_ids if n in self.model.level_of}
        for depth in levels:
            row = self.summary_rows.get(depth)
            if row is None or row.is_deleted:
                continue
            content = level_row_html(
                level_counts(depth, self.model.levels[depth], self.model.nodes)
            )
            if content != row.content:
                row.set_content(content)

    def _clicked(self, e: events.EChartPointClickEventArguments) -> Any:
        # Returned, so NiceGUI awaits an async on_select (the page's select is one).
        if e.data_type != "edge" and e.name in self.model.nodes:
            return self._on_select(e.name)
        return None
