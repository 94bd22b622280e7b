"""The run's waterfall: every attempt of every node on one time axis.

Why it is built this way:

* One ``ui.echart`` with a ``custom`` series whose ``renderItem`` (a JavaScript function
  string under the ``':renderItem'`` key, which NiceGUI turns into a function in the
  browser) draws a rectangle per segment. One series of plain numbers stays small and
  fast where a bar series per phase would need transparent offset bars.
* Live changes never re-send the element: :meth:`TimelineView.nodes_changed` pushes only
  the series data (and the row names when rows were added) through
  ``run_chart_method('setOption', ...)``, which ECharts merges by series id, while the
  server copy of the options is kept in step under ``props.suspend_updates()``.
* No server timer: the page already coalesces model changes to a few flushes a second,
  and each flush recomputes the open segments (a running attempt reaches "now").
* At most :data:`MAX_ROWS` rows, the first ones by start time, so a 10,000-node run
  does not freeze the browser; dataZoom scrolls rows and zooms time.
* The pure functions (:func:`segments_of`, :func:`timeline_rows`, :func:`segment_datum`)
  hold the logic and are unit-tested without a browser.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nicegui import events, ui

from statepipe_api.lifecycle import FINAL_RUN
from ui.format import format_duration, now_ms, parse_ms
from ui.run_model import Attempt, RunModel
from ui.streams import IdBatcher
from ui.theme import STATUS_COLORS, status_color

MAX_ROWS = 500
HEIGHT = "480px"


def chart_height(rows: int) -> str:
    """Room for the rows (about 30 px each, plus the axes), at most HEIGHT."""
    return f"{min(480, max(160, 90 + 30 * rows))}px"


VISIBLE_ROWS = 24  # rows in the initial y window; the slider scrolls the rest
LABEL_CHARS = 20

QUEUED, RUNNING, RETRY_WAIT = "queued", "running", "retry wait"
PHASES = (QUEUED, RUNNING, RETRY_WAIT)  # the index travels to the browser
QUEUED_COLOR = "#b8bec9"
RETRY_COLOR = STATUS_COLORS["RETRY_WAIT"]

# Draws one segment: value = [row, start_ms, end_ms, attempt, phase index]. The running
# phase is the thickest; queued and retry wait are thinner and paler. Clipped to the grid
# by hand so zooming never draws over the axes.
_RENDER_ITEM = """
function (params, api) {
  const row = api.value(0), phase = api.value(4);
  const a = api.coord([api.value(1), row]);
  const b = api.coord([api.value(2), row]);
  const band = api.size([0, 1])[1];
  const h = Math.max(2, phase === 1 ? Math.min(band * 0.62, 16) : Math.min(band * 0.36, 8));
  const cs = params.coordSys;
  const x0 = Math.max(a[0], cs.x);
  const x1 = Math.min(Math.max(b[0], a[0] + 1.5), cs.x + cs.width);
  const y = a[1] - h / 2;
  if (x1 <= x0 || y + h < cs.y || y > cs.y + cs.height) return null;
  return {
    type: 'rect',
    shape: {x: x0, y: y, width: x1 - x0, height: h, r: 2},
    style: {fill: api.visual('color'), opacity: phase === 0 ? 0.7 : 1,
            stroke: phase === 0 ? 'rgba(127,127,127,.55)' : null, lineWidth: 1},
  };
}
"""
_LABEL_FORMATTER = f"v => v.length > {LABEL_CHARS} ? v.slice(0, {LABEL_CHARS - 1}) + '\u2026' : v"
_TOOLTIP_FORMATTER = "p => (p.data && p.data.tip) || ''"


# -- time


def run_clock(run: Mapping[str, Any]) -> float:
    """Where open segments end: now, or the run's end once it is over (a node left
    RUNNING by a run that finished must not grow forever)."""
    finished = parse_ms(run.get("finished_at")) if run.get("status") in FINAL_RUN else None
    return now_ms() if finished is None else finished


# -- segments


@dataclasses.dataclass(frozen=True)
class Segment:
    """One phase of one attempt, ``start``/``end`` in epoch milliseconds."""

    phase: str
    start: float
    end: float
    attempt: int
    status: str
    # Still going: ``end`` is "now" and moves on the next recompute.
    open: bool = False
    error: str = ""

    @property
    def color(self) -> str:
        if self.phase == QUEUED:
            return QUEUED_COLOR
        if self.phase == RETRY_WAIT:
            return RETRY_COLOR
        # A running phase that ended in a retry wait failed.
        return status_color("FAILED" if self.status == "RETRY_WAIT" else self.status)


def segments_of(attempts: Iterable[Attempt], now: float) -> list[Segment]:
    """The queued, running and retry-wait segments of a node's attempts, in order.

    Args:
        attempts: The node's attempts, oldest first.
        now: Epoch milliseconds where open segments end.

    Returns:
        Segments with ``end >= start``; an empty queued phase (a node that started the
        moment it was queued) is left out.
    """
    out: list[Segment] = []
    for a in attempts:
        queued, started = parse_ms(a.queued_at), parse_ms(a.started_at)
        finished, retry_until = parse_ms(a.finished_at), parse_ms(a.retry_until)
        first_line = a.error.strip().splitlines()[0] if a.error.strip() else ""
        if queued is not None:
            end = started if started is not None else finished
            is_open = end is None
            end = now if end is None else end
            if end > queued or is_open:
                out.append(Segment(QUEUED, queued, max(end, queued), a.attempt, a.status, is_open))
        if started is not None:
            is_open = finished is None
            end = now if finished is None else finished
            out.append(
                Segment(
                    RUNNING, started, max(end, started), a.attempt, a.status, is_open, first_line
                )
            )
        if finished is not None and (a.status == "RETRY_WAIT" or retry_until is not None):
            is_open = retry_until is None
            end = now if retry_until is None else retry_until
            out.append(
                Segment(
                    RETRY_WAIT,
                    finished,
                    max(end, finished),
                    a.attempt,
                    a.status,
                    is_open,
                    first_line,
                )
            )
    return out


def attempts_for(node: Mapping[str, Any], attempts: Sequence[Attempt]) -> Sequence[Attempt]:
    """The node's attempts, or one made from the node's own times when no event told
    of any (a snapshot loaded without its history)."""
    if attempts or not (node.get("queued_at") or node.get("started_at")):
        return attempts
    return [
        Attempt(
            attempt=node.get("attempt") or 1,
            status=node.get("status") or "QUEUED",
            queued_at=node.get("queued_at"),
            started_at=node.get("started_at"),
            finished_at=node.get("finished_at"),
            error=node.get("error") or "",
        )
    ]


def timeline_rows(first_times: Mapping[str, float], limit: int = MAX_ROWS) -> tuple[list[str], int]:
    """Node ids in the order they were first queued, cut at ``limit``.

    Args:
        first_times: Epoch milliseconds each node was first queued (only nodes that
            have been, in spec order so ties keep it).
        limit: The most rows to draw.

    Returns:
        The rows to draw and how many nodes have a row at all.
    """
    ordered = sorted(first_times, key=first_times.__getitem__)
    return ordered[:limit], len(ordered)


def segment_datum(node_id: str, row: int, segment: Segment) -> dict[str, Any]:
    """The custom series data item of one segment (tooltip text included)."""
    phase = PHASES.index(segment.phase)
    duration = format_duration(segment.end - segment.start, empty="")
    if segment.open:
        duration += " so far"
    lines = [
        f"<b>{html.escape(node_id)}</b>",
        f"attempt {segment.attempt} · {segment.phase}",
        duration,
    ]
    if segment.error and segment.phase != QUEUED:
        error = html.escape(segment.error[:200])
        lines.append(f'<span style="color:{status_color("FAILED")}">{error}</span>')
    return {
        "name": node_id,
        "value": [row, segment.start, segment.end, segment.attempt, phase],
        "itemStyle": {"color": segment.color},
        "tip": "<br>".join(lines),
    }


def timeline_options(rows: Sequence[str], data: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's full options (sent once; later changes go through setOption)."""
    return {
        "backgroundColor": "transparent",
        "animation": False,
        "grid": {"left": 150, "right": 40, "top": 12, "bottom": 52},
        "tooltip": {"trigger": "item", "confine": True, ":formatter": _TOOLTIP_FORMATTER},
        "xAxis": {
            "type": "time",
            "axisLabel": {"color": "#8a8f98", "hideOverlap": True},
            "splitLine": {"show": True, "lineStyle": {"color": "rgba(127,127,127,.18)"}},
        },
        "yAxis": {
            "id": "rows",
            "type": "category",
            "inverse": True,
            "data": list(rows),
            "axisTick": {"show": False},
            "axisLabel": {"color": "#8a8f98", "fontSize": 11, ":formatter": _LABEL_FORMATTER},
            "splitLine": {"show": False},
        },
        "dataZoom": [
            {
                "type": "inside",
                "xAxisIndex": 0,
                "filterMode": "weakFilter",
                "zoomOnMouseWheel": "ctrl",
                "moveOnMouseWheel": False,
            },
            {
                "type": "slider",
                "xAxisIndex": 0,
                "filterMode": "weakFilter",
                "height": 14,
                "bottom": 10,
                "showDetail": False,
            },
            {
                "type": "slider",
                "yAxisIndex": 0,
                "filterMode": "weakFilter",
                "width": 12,
                "right": 10,
                "startValue": 0,
                "endValue": VISIBLE_ROWS - 1,
                "showDetail": False,
            },
            {
                "type": "inside",
                "yAxisIndex": 0,
                "filterMode": "weakFilter",
                "zoomOnMouseWheel": False,
                "moveOnMouseWheel": True,
            },
        ],
        "series": [
            {
                "id": "attempts",
                "type": "custom",
                ":renderItem": _RENDER_ITEM,
                "encode": {"x": [1, 2], "y": 0},
                "data": data,
            }
        ],
    }


# -- the view


class TimelineView:
    """The waterfall of a run's attempts, kept current from the model.

    Attributes:
        chart: The ``ui.echart``.
        note: The label saying rows were cut (or that nothing has been queued yet).
    """

    def __init__(self, model: RunModel, on_select: Callable[[str], Any]) -> None:
        self.model = model
        self._on_select = on_select
        self._segments: dict[str, list[Segment]] = {}
        self._first: dict[str, float] = {}
        self._open: set[str] = set()
        now = run_clock(model.run)
        for node_id in model.nodes:
            self._compute(node_id, now)
        self._rows, self._total = self._order()
        with ui.column().classes("w-full gap-1"):
            self.note = ui.label(self._note_text()).classes("text-xs sp-muted")
            self.note.set_visibility(bool(self.note.text))
            self.chart = (
                ui.echart(timeline_options(self._rows, self._data()), on_point_click=self._clicked)
                .classes("w-full")
                .style(f"height: {chart_height(len(model.nodes))}")
                .mark("run-timeline")
            )
        # Each update re-sends the series (ECharts replaces data whole): at most 4/s.
        model.on_nodes(IdBatcher(self.nodes_changed, delay_s=0.25).add)

    @property
    def rows(self) -> list[str]:
        """The node ids drawn, top to bottom."""
        return list(self._rows)

    def nodes_changed(self, node_ids: Iterable[str]) -> None:
        """Recomputes the changed nodes and every open segment, then sends the series
        data (and the rows, if they changed) as one partial ``setOption``."""
        if self.chart.is_deleted:
            return
        now = run_clock(self.model.run)
        for node_id in {*node_ids, *self._open}:
            if node_id in self.model.nodes:
                self._compute(node_id, now)
        rows, self._total = self._order()
        update: dict[str, Any] = {"series": [{"id": "attempts", "data": self._data(rows)}]}
        if rows != self._rows:
            update["yAxis"] = [{"id": "rows", "data": rows}]
            self._rows = rows
        with self.chart.props.suspend_updates():
            self.chart.options["series"][0]["data"] = update["series"][0]["data"]
            if "yAxis" in update:
                self.chart.options["yAxis"]["data"] = rows
        self.chart.run_chart_method("setOption", update)
        text = self._note_text()
        if text != self.note.text:
            self.note.set_text(text)
            self.note.set_visibility(bool(text))

    def _compute(self, node_id: str, now: float) -> None:
        attempts = attempts_for(self.model.nodes[node_id], self.model.attempts.get(node_id, []))
        segments = segments_of(attempts, now)
        self._segments[node_id] = segments
        if segments:
            self._first[node_id] = min(s.start for s in segments)
        else:
            self._first.pop(node_id, None)
        if any(s.open for s in segments):
            self._open.add(node_id)
        else:
            self._open.discard(node_id)

    def _order(self) -> tuple[list[str], int]:
        # Spec order first, so nodes queued at the same moment keep it.
        firsts = {n: self._first[n] for n in self.model.nodes if n in self._first}
        return timeline_rows(firsts)

    def _data(self, rows: Sequence[str] | None = None) -> list[dict[str, Any]]:
        rows = self._rows if rows is None else rows
        return [
            segment_datum(node_id, row, segment)
            for row, node_id in enumerate(rows)
            for segment in self._segments.get(node_id, ())
        ]

    def _note_text(self) -> str:
        if not self._total:
            return "No node has been queued yet."
        if self._total > len(self._rows):
            return (
                f"Showing the first {len(self._rows)} of {self._total} nodes by start time; "
                "open the Nodes tab for the rest."
            )
        return ""

    def _clicked(self, e: events.EChartPointClickEventArguments) -> Any:
        # Returned, so NiceGUI awaits an async on_select (the page's select is one).
        if e.name in self.model.nodes:
            return self._on_select(e.name)
        return None
