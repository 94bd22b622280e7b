"""Run detail (``/runs/{run_id}``, ``/runs/{run_id}/nodes/{node_id}``).

GetRun gives the run and its nodes once; WatchRun then replays the run's events from
seq 1 and continues live (``follow_forever``, so a resumed run is seen too) into one
:class:`RunModel`, which the header and the views (graph, timeline, node table,
trace, log, node panel) read. A lost stream resumes after the last seq the model
has, so nothing is missed or doubled. Only the visible tab is built; the others are
built the first time they are opened.

Child runs: the header of a child says whose child it is ("child of <run> · node
<node>"); the run's own children (:class:`~ui.child_runs.ChildRuns`: ListRuns(parent),
then WatchRuns(parent) pushes their changes) are loaded when the trace is first shown,
or by a view that shows their summary on a run with workflow, map or agent nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from nicegui import context, ui

from statepipe.client import StatepipeError
from statepipe_api.lifecycle import CONTROLS, FINAL_RUN
from ui.child_runs import ChildRuns, run_href, split_parent_node
from ui.console import Console, probe
from ui.format import cost_of, duration_ms, format_duration, one_line, since_ms
from ui.frame import frame
from ui.pages.not_found import not_found
from ui.run_model import RunModel
from ui.streams import Coalescer, Connection, follow, page_task
from ui.theme import status_chip, time_label
from ui.views.graph import GraphView
from ui.views.json_view import json_view
from ui.views.log import LogView
from ui.views.node_panel import NodePanel
from ui.views.node_table import NodeTable
from ui.views.timeline import TimelineView
from ui.views.trace import TraceView

TABS = ("graph", "timeline", "nodes", "trace", "log")
# Above this many nodes the page opens on the table rather than the graph.
GRAPH_DEFAULT_MAX = 1000

_CONTROL_LABELS = {
    "pause": ("Pause", "pause"),
    "resume": ("Resume", "play_arrow"),
    "interrupt": ("Interrupt", "front_hand"),
    "cancel": ("Cancel", "cancel"),
}


def preview(value: Any, limit: int = 90) -> str:
    """A one-line preview of a JSON value for a collapsed section."""
    return "—" if value is None else one_line(value, limit, separators=(", ", ": "))


def format_usage(totals: dict[str, float]) -> str:
    parts = []
    inp = totals.get("gen_ai.usage.input_tokens")
    out = totals.get("gen_ai.usage.output_tokens")
    if inp is not None or out is not None:
        parts.append(f"{int(inp or 0):,} in / {int(out or 0):,} out tokens")
    cost = cost_of(totals)
    if cost is not None:
        parts.append(f"${cost:.4f}")
    cpu = totals.get("cpu_time_ms") or totals.get("cpu_ms")
    if cpu is not None:
        parts.append(f"{cpu / 1000:.2f} s CPU")
    return " · ".join(parts)


class RunPage:
    """One browser tab's run page."""

    def __init__(self, console: Console, model: RunModel, connection: Connection, tab: str) -> None:
        self.console = console
        self.model = model
        self.connection = connection
        self.run_id = model.run["run_id"]
        self.tab = tab
        self.path = f"/runs/{self.run_id}"
        self.built: set[str] = set()
        self.views: dict[str, Any] = {}  # tab -> its view, once built
        self.flush = Coalescer(model.flush, delay_s=0.05)
        self.refetch_pending = False
        self.fetched_final_seq = 0  # the final status whose output was fetched

    # -- layout

    def build(self) -> None:
        self.client = context.client
        # Dialogs go here: the header that opens them is rebuilt on every status change.
        self.root = context.slot.parent
        self.children = ChildRuns(self.console, self.model, self.connection, self.client)
        self.panel = NodePanel(self.model, self.console, children=self.children)
        with ui.card().classes("w-full sp-card gap-2").props("flat"):
            self.header = ui.refreshable(self._header)
            self.header()
            self.payloads = ui.refreshable(self._payloads)
            self.payloads()
        self.model.on_run(self._run_changed)
        with (
            ui.tabs(value=self.tab, on_change=lambda e: self._open_tab(e.value))
            .classes("w-full")
            .props("dense align=left inline-label no-caps")
            # The tab is in the address (a reload or a shared link opens it); set in the
            # browser, where the click is (a server-sent replaceState lagged one click).
            .on(
                "update:model-value",
                js_handler="(v) => history.replaceState(history.state, '', "
                "location.pathname + '?tab=' + encodeURIComponent(v))",
            )
        ):
            ui.tab("graph", "Graph", icon="account_tree")
            ui.tab("timeline", "Timeline", icon="view_timeline")
            ui.tab("nodes", f"Nodes ({len(self.model.nodes):,})", icon="table_rows")
            ui.tab("trace", "Trace", icon="segment")
            ui.tab("log", "Live log", icon="terminal")
        # Panels stay mounted and keep their size when hidden (moved off-screen, not
        # display:none): charts and grids are never torn down or resized to zero.
        with ui.element("div").classes("w-full relative sp-tab-panels"):
            self.panels = {}
            for name in TABS:
                panel = ui.element("div").classes("w-full pt-2").mark(f"panel-{name}")
                if name != self.tab:
                    panel.classes("sp-tab-hidden")
                self.panels[name] = panel
        self._open_tab(self.tab)

    def _open_tab(self, name: str) -> None:
        self.tab = name
        for other, panel in self.panels.items():
            if other == name:
                panel.classes(remove="sp-tab-hidden")
            else:
                panel.classes(add="sp-tab-hidden")
        if name in self.built:
            return
        self.built.add(name)
        select: Callable[[str], Any] = self.select
        with self.panels[name]:
            if name == "graph":
                self.views[name] = GraphView(self.model, select, self.children)
            elif name == "timeline":
                self.views[name] = TimelineView(self.model, select)
            elif name == "nodes":
                self.views[name] = NodeTable(self.model, select, self.children)
            elif name == "trace":
                self.views[name] = TraceView(self.model, self.console, select, self.children)
            elif name == "log":
                self.views[name] = LogView(self.model)

    async def select(self, node_id: str) -> None:
        await self.panel.open(node_id)

    def _header(self) -> None:
        run = self.model.run
        with ui.row().classes("w-full items-center gap-3 no-wrap"):
            status_chip(run["status"]).classes("text-sm").mark("run-status")
            with (
                ui.link(target=f"/workflows/{run['workflow_name']}")
                .classes("text-xl font-semibold no-underline truncate min-w-0")
                .tooltip(run["workflow_name"])
            ):
                ui.label(run["workflow_name"])
            ui.label(f"v{run['workflow_version']}").classes("sp-muted")
            ui.label(self.run_id).classes("sp-mono sp-muted text-xs")
            ui.button(
                icon="content_copy",
                on_click=lambda: (ui.clipboard.write(self.run_id), ui.notify("run id copied")),
            ).props("flat dense round size=sm").tooltip("copy run id")
            ui.space()
            self._controls(run["status"])
        if run.get("parent_run_id"):
            self._parent_line(run["parent_run_id"], run.get("parent_node_id") or "")
        with ui.row().classes("w-full items-center gap-6 text-sm"):
            for name, key in (("created", "created_at"), ("started", "started_at"),
                              ("finished", "finished_at")):  # fmt: skip
                with ui.column().classes("gap-0"):
                    ui.label(name).classes("sp-muted text-xs")
                    time_label(run.get(key))
            with ui.column().classes("gap-0"):
                ui.label("duration").classes("sp-muted text-xs")
                if run.get("started_at") and not run.get("finished_at"):
                    # Ticks in the browser (theme.py's sp.tickDurations).
                    ui.label(format_duration(since_ms(run["started_at"]))).classes(
                        "sp-ticking"
                    ).props(f'data-start="{run["started_at"]}"')
                else:
                    ui.label(
                        format_duration(duration_ms(run.get("started_at"), run.get("finished_at")))
                    )
            with ui.column().classes("gap-0"):
                ui.label("nodes").classes("sp-muted text-xs")
                counts = run.get("node_counts") or {}
                ui.label(
                    " · ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "—"
                ).mark("run-counts")
            # The server's total over the nodes (Run.usage), fetched with the run.
            usage = format_usage(run.get("usage") or {})
            if usage:
                with ui.column().classes("gap-0"):
                    ui.label("usage").classes("sp-muted text-xs")
                    ui.label(usage)
            if run.get("labels"):
                with ui.row().classes("gap-1"):
                    for k, v in run["labels"].items():
                        ui.badge(f"{k}={v}").props("outline").classes("sp-mono")
        if run.get("error"):
            ui.label(run["error"]).classes("sp-mono text-red-600 w-full").style(
                "white-space: pre-wrap"
            ).mark("run-error")

    @staticmethod
    def _parent_line(parent_id: str, parent_node: str) -> None:
        """ "child of <parent run> · node <node>" (a map item's node is "<map>[<i>]")."""
        node_id, _ = split_parent_node(parent_node)
        with ui.row().classes("items-center gap-1 text-sm").mark("run-parent"):
            ui.icon("subdirectory_arrow_right", size="18px").classes("sp-muted")
            ui.label("child of").classes("sp-muted")
            ui.link(parent_id[:8], run_href(parent_id)).classes("sp-mono").tooltip(parent_id).mark(
                "run-parent-link"
            )
            if parent_node:
                ui.label("· node").classes("sp-muted")
                ui.link(parent_node, run_href(parent_id, node_id)).classes("sp-mono").mark(
                    "run-parent-node"
                )

    def _payloads(self) -> None:
        run = self.model.run
        with ui.row().classes("w-full gap-4 no-wrap"):
            for name, icon, value in (("Input", "input", run.get("input")),
                                      ("Output", "output", run.get("output"))):  # fmt: skip
                expansion = (
                    ui.expansion(name, icon=icon, caption=preview(value))
                    .classes("w-1/2 sp-card")
                    .props("dense header-class=text-sm")
                    .mark(f"run-{name.lower()}")
                )
                # Built when first opened: a large payload costs nothing until asked for.
                expansion.on_value_change(
                    lambda e, box=expansion, v=value, n=name: (
                        self._fill(box, v, n) if e.value else None
                    )
                )

    @staticmethod
    def _fill(box: ui.expansion, value: Any, name: str) -> None:
        if getattr(box, "_filled", False):
            return
        box._filled = True  # type: ignore[attr-defined]
        with box:
            json_view(value, label=name.lower())

    def _controls(self, status: str) -> None:
        for action, (label, icon) in _CONTROL_LABELS.items():
            if status not in CONTROLS[action]:
                continue
            color = "negative" if action == "cancel" else "primary"
            ui.button(label, icon=icon, on_click=lambda a=action: self.control(a)).props(
                f"outline dense no-caps no-wrap color={color}"
            ).classes("shrink-0").mark(f"control-{action}")

    # -- controls

    async def control(self, action: str) -> None:
        if action == "cancel" and not await self._confirm_cancel():
            return
        method = {"pause": "pause", "resume": "resume", "interrupt": "interrupt",
                  "cancel": "cancel"}[action]  # fmt: skip
        try:
            await getattr(self.console.client, method)(self.run_id, reason="from the console")
        except StatepipeError as err:
            refused = err.code == grpc.StatusCode.FAILED_PRECONDITION
            ui.notify(
                err.message if refused else f"{action} failed: {err.message}",
                type="warning" if refused else "negative",
                multi_line=True,
            )
            return
        ui.notify(f"{action} sent", type="info", timeout=1500)
        # The new status arrives through the stream, like everyone else's.

    async def _confirm_cancel(self) -> bool:
        with self.root, ui.dialog() as dialog, ui.card():
            ui.label(f"Cancel run {self.run_id[:8]}?").classes("text-lg font-semibold")
            ui.label("In-flight nodes are stopped and the run cannot be resumed.")
            with ui.row().classes("w-full justify-end"):
                ui.button("Keep running", on_click=lambda: dialog.submit(False)).props("flat")
                ui.button("Cancel run", on_click=lambda: dialog.submit(True)).props(
                    "color=negative"
                ).mark("confirm-cancel")
        result = await dialog
        dialog.delete()
        return bool(result)

    # -- live

    def _run_changed(self) -> None:
        self.header.refresh()
        final = self.model.run["status"] in FINAL_RUN
        if final and self.model.final_seq > self.fetched_final_seq:
            # Each time the run ends (again, after a resume or a node retry), fetch what
            # events do not carry: the output, usage and node inputs.
            self.fetched_final_seq = self.model.final_seq
            page_task(self._refetch(), "run-refetch", client=self.client)

    async def _refetch(self) -> None:
        try:
            run = await self.console.client.get_run(self.run_id)
        except StatepipeError:
            return
        self.model.replace_run(run.to_dict())
        self.payloads.refresh()
        self.model.flush()

    async def watch(self) -> None:
        # The page (10,000 rows for a big run) goes out first; the replay follows.
        await self.client.connected()

        def opened() -> Any:
            return self.console.client.watch(
                self.run_id, after_seq=self.model.last_seq, follow_forever=True
            )

        def handle(event: Any) -> None:
            self.model.apply((event.to_dict(),))
            self.flush.poke()

        await follow("run", self.connection, opened, handle, probe=lambda: probe(self.console))


def register(console: Console) -> None:
    async def show(run_id: str, node_id: str | None, tab: str) -> None:
        try:
            run = await console.client.get_run(run_id)
        except StatepipeError as err:
            if err.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                not_found(console, "Run", f"no run has the id {run_id!r}")
                return
            with frame(console, "Run"):
                ui.label(f"Could not load run {run_id}: {err.message}").classes("text-red-600")
                ui.button("Retry", on_click=ui.navigate.reload)
            return
        data = run.to_dict()
        model = RunModel(data)
        if tab not in TABS:
            tab = "graph" if len(model.nodes) <= GRAPH_DEFAULT_MAX else "nodes"
        with frame(console, f"Run {run_id[:8]}", active="Runs") as connection:
            page = RunPage(console, model, connection, tab)
            page.build()
        # Tests (and a debugger) reach a tab's model through its client.
        context.client._statepipe_run_page = page  # type: ignore[attr-defined]
        page_task(page.watch(), "run-watch")
        if node_id is not None:
            if node_id in model.nodes:
                await page.select(node_id)
            else:
                ui.notify(f"run {run_id[:8]} has no node {node_id!r}", type="warning")

    @ui.page("/runs/{run_id}")
    async def run_page(run_id: str, tab: str = "") -> None:
        await show(run_id, None, tab)

    @ui.page("/runs/{run_id}/nodes/{node_id}")
    async def node_page(run_id: str, node_id: str, tab: str = "") -> None:
        await show(run_id, node_id, tab)
