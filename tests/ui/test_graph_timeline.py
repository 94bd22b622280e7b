"""The run graph and the timeline: their pure layout / segment functions, then both
views in NiceGUI's simulated browser, fed by a hand-made run and live events."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from nicegui import ui
from nicegui.testing.user_simulation import user_simulation

from ui.run_model import Attempt, RunModel
from ui.theme import STATUS_COLORS
from ui.views.graph import (
    ANCHOR_PREFIX,
    MAX_GRAPH_NODES,
    GraphView,
    graph_options,
    layout,
    level_summary,
    uses_level_summary,
)
from ui.views.timeline import (
    QUEUED,
    QUEUED_COLOR,
    RETRY_COLOR,
    RETRY_WAIT,
    RUNNING,
    TimelineView,
    parse_ms,
    segments_of,
    timeline_rows,
)


def ts(seconds: float) -> str:
    whole, frac = divmod(seconds, 1)
    return f"2025-01-01T12:{int(whole) // 60:02d}:{int(whole) % 60:02d}.{round(frac * 1000):03d}Z"


def ms(seconds: float) -> float:
    return parse_ms(ts(seconds))  # type: ignore[return-value]


def node(node_id: str, *after: str, status: str = "PENDING", kind: str = "python") -> dict:
    return {
        "node_id": node_id,
        "kind": kind,
        "status": status,
        "attempt": 0,
        "input": None,
        "output": None,
        "error": "",
        "traceback": "",
        "queued_at": None,
        "started_at": None,
        "finished_at": None,
        "usage": None,
        "after": list(after),
    }


def diamond_run() -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "workflow": "diamond",
        "status": "RUNNING",
        "node_counts": {"PENDING": 4},
        "nodes": [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")],
    }


class Events:
    """node_status events with rising seq and a clock in seconds after T0."""

    def __init__(self) -> None:
        self.seq = 0

    def status(
        self, node_id: str, status: str, at: float, attempt: int = 1, message: str = ""
    ) -> dict[str, Any]:
        self.seq += 1
        return {
            "run_id": "run-1",
            "seq": self.seq,
            "ts": ts(at),
            "kind": "node_status",
            "node_id": node_id,
            "attempt": attempt,
            "status": status,
            "message": message,
            "level": "",
            "data": {},
        }


# -- pure functions


def test_diamond_layout_puts_b_and_c_in_level_1_and_d_in_level_2():
    run = diamond_run()
    model = RunModel(run)
    assert model.levels == [["a"], ["b", "c"], ["d"]]
    placed = layout(model.nodes, model.levels)
    xs = {n: x for n, (x, _) in placed.positions.items()}
    ys = {n: y for n, (_, y) in placed.positions.items()}
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"]
    assert ys["b"] != ys["c"]
    assert ys["a"] == ys["d"] == (ys["b"] + ys["c"]) / 2  # centred between its parents
    assert sorted(placed.edges) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]

    series = graph_options(model.nodes, model.levels, model.attempts, ms(0))["series"][0]
    assert series["type"] == "graph" and series["layout"] == "none" and series["roam"]
    drawn = [d for d in series["data"] if not d["name"].startswith(ANCHOR_PREFIX)]
    assert [d["name"] for d in drawn] == ["a", "b", "c", "d"]
    assert {(link["source"], link["target"]) for link in series["links"]} == set(placed.edges)
    assert {d["itemStyle"]["color"] for d in drawn} == {STATUS_COLORS["PENDING"]}
    assert all("value" in d for d in drawn)  # NiceGUI's on_point_click needs one
    # Two invisible corners keep the box from being flat: a chain has one row.
    chain = {n["node_id"]: n for n in [node("x"), node("y", "x")]}
    x0, y0, x1, y1 = layout(chain, [["x"], ["y"]]).bounds
    assert x0 < 0 < 1 < x1 and y0 < 0 < y1


def test_layout_orders_a_level_by_its_parents():
    # x1 hangs under the second root, x0 under the first: the children follow them.
    nodes = {n["node_id"]: n for n in [node("r0"), node("r1"), node("x1", "r1"), node("x0", "r0")]}
    placed = layout(nodes, [["r0", "r1"], ["x1", "x0"]])
    assert placed.positions["x0"][1] < placed.positions["x1"][1]


def test_segments_of_a_retried_attempt():
    first = Attempt(
        attempt=1,
        status="RETRY_WAIT",
        queued_at=ts(0),
        started_at=ts(1),
        finished_at=ts(3),
        retry_until=ts(8),
        error="ValueError: boom\n  at line 3",
    )
    second = Attempt(attempt=2, status="RUNNING", queued_at=ts(8), started_at=ts(8.5))
    segments = segments_of([first, second], now=ms(10))
    got = [(s.phase, s.attempt, s.start, s.end, s.open) for s in segments]
    assert got == [
        (QUEUED, 1, ms(0), ms(1), False),
        (RUNNING, 1, ms(1), ms(3), False),
        (RETRY_WAIT, 1, ms(3), ms(8), False),
        (QUEUED, 2, ms(8), ms(8.5), False),
        (RUNNING, 2, ms(8.5), ms(10), True),  # still running: reaches "now"
    ]
    colors = [s.color for s in segments]
    assert colors[0] == QUEUED_COLOR
    assert colors[1] == STATUS_COLORS["FAILED"]  # the run that ended in a retry wait
    assert colors[2] == RETRY_COLOR
    assert colors[4] == STATUS_COLORS["RUNNING"]
    assert segments[1].error == "ValueError: boom"


def test_segments_of_an_open_retry_wait_and_a_success():
    waiting = Attempt(
        attempt=1, status="RETRY_WAIT", queued_at=ts(0), started_at=ts(0), finished_at=ts(2)
    )
    segments = segments_of([waiting], now=ms(5))
    # Started the moment it was queued: no empty queued segment.
    assert [(s.phase, s.end, s.open) for s in segments] == [
        (RUNNING, ms(2), False),
        (RETRY_WAIT, ms(5), True),
    ]
    done = Attempt(
        attempt=1, status="SUCCEEDED", queued_at=ts(0), started_at=ts(1), finished_at=ts(4)
    )
    assert segments_of([done], now=ms(9))[-1].color == STATUS_COLORS["SUCCEEDED"]


def test_timeline_rows_follow_first_queue_time_and_are_capped():
    first = {"late": ms(5), "early": ms(1), "tie_a": ms(3), "tie_b": ms(3)}
    assert timeline_rows(first) == (["early", "tie_a", "tie_b", "late"], 4)
    assert timeline_rows(first, limit=2) == (["early", "tie_a"], 4)


def test_more_than_1000_nodes_switch_to_the_level_summary():
    assert not uses_level_summary(MAX_GRAPH_NODES)
    assert uses_level_summary(MAX_GRAPH_NODES + 1)
    nodes = [node("root", status="SUCCEEDED")] + [
        node(f"n{i}", "root", status="FAILED" if i % 10 == 0 else "SUCCEEDED")
        for i in range(MAX_GRAPH_NODES)
    ]
    model = RunModel({"run_id": "big", "nodes": nodes})
    summary = level_summary(model.levels, model.nodes)
    assert [(s.level, s.total) for s in summary] == [(0, 1), (1, MAX_GRAPH_NODES)]
    assert summary[1].counts == {"SUCCEEDED": 900, "FAILED": 100}


# -- in the simulated browser


async def test_views_show_the_run_and_follow_its_events():
    views: dict[str, Any] = {}
    selected: list[str] = []

    async def select_later(node_id: str) -> None:
        await asyncio.sleep(0)
        selected.append(node_id)

    def root() -> None:
        model = RunModel(diamond_run())
        views["model"] = model
        views["graph"] = GraphView(model, select_later)  # the page's select is async
        views["timeline"] = TimelineView(model, selected.append)

    async with user_simulation(root) as user:
        await user.open("/")
        # The JavaScript the server sends (partial chart updates are fire-and-forget).
        sent: list[str] = []
        emit = user.client.outbox._emit

        async def recording_emit(message: Any) -> None:
            _, kind, data = message
            if kind == "run_javascript":
                sent.append(data["code"])
            await emit(message)

        user.client.outbox._emit = recording_emit
        graph: GraphView = views["graph"]
        timeline: TimelineView = views["timeline"]
        model: RunModel = views["model"]
        charts = user.find(ui.echart).elements
        assert charts == {graph.chart, timeline.chart}
        data = graph.chart.options["series"][0]["data"]
        assert [d["name"] for d in data][:4] == ["a", "b", "c", "d"]
        assert timeline.rows == []
        await user.should_see("No node has been queued yet.")

        full_updates: list[str] = []
        for chart in charts:
            original = chart.update
            chart.update = lambda c=chart, o=original: (full_updates.append(c.id), o())[1]

        ev = Events()
        model.apply(
            [
                ev.status("a", "QUEUED", 0),
                ev.status("a", "RUNNING", 1),
                ev.status("a", "SUCCEEDED", 2),
                ev.status("b", "QUEUED", 2),
                ev.status("b", "RUNNING", 3),
                ev.status("b", "RETRY_WAIT", 4, message="TimeoutError: slow\nmore"),
                ev.status("c", "QUEUED", 2.5),
                ev.status("c", "RUNNING", 3),
            ]
        )
        model.flush()
        await asyncio.sleep(0.4)  # the views send at most 4 updates a second

        colors = {
            d["name"]: d["itemStyle"]["color"]
            for d in graph.chart.options["series"][0]["data"]
            if not d["name"].startswith(ANCHOR_PREFIX)
        }
        assert colors == {
            "a": STATUS_COLORS["SUCCEEDED"],
            "b": STATUS_COLORS["RETRY_WAIT"],
            "c": STATUS_COLORS["RUNNING"],
            "d": STATUS_COLORS["PENDING"],
        }
        b = graph.chart.options["series"][0]["data"][1]
        assert "TimeoutError: slow" in b["tip"] and "more" not in b["tip"]
        assert timeline.rows == ["a", "b", "c"]
        phases = [(d["name"], d["value"][4]) for d in timeline.chart.options["series"][0]["data"]]
        # a: queued, running; b: queued, running, retry wait; c: queued, running
        assert phases == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("c", 0), ("c", 1)]
        assert timeline.chart.options["yAxis"]["data"] == ["a", "b", "c"]

        # Only partial setOption calls went out; neither chart was re-sent.
        await asyncio.sleep(0.2)
        assert full_updates == []
        graph_call = next(c for c in sent if f"runMethod({graph.chart.id}," in c)
        method, args = re.search(r"runMethod\(\d+, (\".*?\"), (.*)\)$", graph_call, re.S).groups()
        name, update = json.loads(args)
        assert (json.loads(method), name) == ("run_chart_method", "setOption")
        assert list(update) == ["series"] and list(update["series"][0]) == ["id", "data"]
        assert update["series"][0]["data"][0]["itemStyle"]["color"] == STATUS_COLORS["SUCCEEDED"]
        timeline_call = [c for c in sent if f"runMethod({timeline.chart.id}," in c][-1]
        assert '"yAxis"' in timeline_call and '"links"' not in graph_call

        # A change that shows nothing new sends nothing to the graph.
        before = len([c for c in sent if f"runMethod({graph.chart.id}," in c])
        graph.nodes_changed(["a"])
        await asyncio.sleep(0.1)
        assert len([c for c in sent if f"runMethod({graph.chart.id}," in c]) == before

        # A click on a node or on a segment selects the node; one on an edge does not.
        def click(item: dict[str, Any], data_type: str | None) -> dict[str, Any]:
            return {
                "componentType": "series",
                "seriesType": "graph",
                "seriesIndex": 0,
                "seriesName": "",
                "name": item["name"],
                "dataIndex": 0,
                "data": item,
                "dataType": data_type,
                "value": item["value"],
            }

        nodes_data = graph.chart.options["series"][0]["data"]
        segment = timeline.chart.options["series"][0]["data"][2]
        user.find(marker="run-graph").trigger("componentClick", click(nodes_data[2], "node"))
        edge = {"name": "a > b", "source": "a", "target": "b", "value": None}
        user.find(marker="run-graph").trigger("componentClick", click(edge, "edge"))
        user.find(marker="run-timeline").trigger("componentClick", click(segment, None))
        await asyncio.sleep(0.05)
        assert sorted(selected) == ["b", "c"]  # the edge click selected nothing


async def test_graph_of_many_nodes_shows_the_level_summary():
    nodes = [node("root")] + [node(f"n{i}", "root") for i in range(MAX_GRAPH_NODES + 5)]
    views: dict[str, Any] = {}

    def root() -> None:
        model = RunModel({"run_id": "big", "nodes": nodes})
        views["model"] = model
        views["graph"] = GraphView(model, lambda _: None)

    async with user_simulation(root) as user:
        await user.open("/")
        graph: GraphView = views["graph"]
        assert graph.summary_mode
        await user.should_not_see(ui.echart)
        await user.should_see(f"{MAX_GRAPH_NODES + 6} nodes: showing levels")
        assert "1005 pending" in graph.summary_rows[1].content
        model: RunModel = views["model"]
        ev = Events()
        model.apply([ev.status("n3", "RUNNING", 1), ev.status("n4", "FAILED", 2)])
        model.flush()
        await asyncio.sleep(0.4)  # the views send at most 4 updates a second
        row = graph.summary_rows[1].content
        assert "1 failed" in row and "1 running" in row and "1003 pending" in row
        assert STATUS_COLORS["FAILED"] in row
