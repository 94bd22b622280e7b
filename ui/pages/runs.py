"""The runs dashboard (``/``): every run a client started, live.

Paging, filtering and sorting happen on the server (ListRuns, keyset pages); the
browser holds one page of rows in an AG Grid. Changes come from WatchRuns and reach
the grid as AG Grid transactions (add / update / remove by run id), so nothing is
re-sent or rebuilt when one run changes. The filter and sort live in the URL.

Child runs (of workflow, map and agent nodes; a map of 100 items makes 100) are left
out unless ``children=1`` asks for them: ListRuns and WatchRuns get ``roots_only``, and
a live change of a run with a parent is dropped. Shown, a child's row says whose child
it is under its workflow ("↳ summarize[3]", a link to the parent run).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

from nicegui import ui

from statepipe.client import Run, StatepipeError
from statepipe_api.lifecycle import RUN_STATUSES
from ui.console import Console, probe
from ui.format import cost_of, one_line, tokens_of
from ui.frame import frame
from ui.grid import STATUS_CELL, TIME_CELL
from ui.streams import Coalescer, Connection, follow, is_retryable, page_task
from ui.theme import STATUS_COLORS

log = logging.getLogger("statepipe.ui")

PAGE_SIZE = 50
DEFAULT_SORT = "-created_at"
# Grid column -> ListRuns order_by; the other columns do not sort.
SORTABLE = {
    "status": "status",
    "workflow": "workflow_name",
    "created_at": "created_at",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "duration": "duration_ms",
}
ORDER_TO_COLUMN = {v: k for k, v in SORTABLE.items()}


class Filters:
    """The dashboard's view: filters, sort and page, as in the URL."""

    def __init__(
        self,
        status: str = "",
        workflow: str = "",
        label: str = "",
        q: str = "",
        sort: str = "",
        children: str | bool = "",
    ) -> None:
        given = [s.strip() for s in status.upper().split(",") if s.strip()]
        self.statuses = [s for s in given if s in RUN_STATUSES]
        # What the address asked for that is not a filter or sort: said, not hidden.
        self.ignored = [f"status {s.lower()!r}" for s in given if s not in RUN_STATUSES]
        self.workflow = workflow.strip()
        self.labels = parse_labels(label)
        self.text = q.strip()
        # Child runs too ("1", "true", "yes"); by default only runs a client started.
        self.children = (
            children
            if isinstance(children, bool)
            else children.strip().lower() in ("1", "true", "yes", "on")
        )
        key = sort.lstrip("-")
        self.sort = sort if key in SORTABLE.values() else DEFAULT_SORT
        if sort and key not in SORTABLE.values():
            self.ignored.append(f"sort {sort!r}")
        self.ignored += [f"label {p.strip()!r} (not key=value)" for p in label.split(",")
                         if p.strip() and "=" not in p]  # fmt: skip

    def query(self) -> str:
        params = {
            "status": ",".join(self.statuses),
            "workflow": self.workflow,
            "label": ",".join(f"{k}={v}" for k, v in self.labels.items()),
            "q": self.text,
            "sort": "" if self.sort == DEFAULT_SORT else self.sort,
            "children": "1" if self.children else "",
        }
        text = urlencode({k: v for k, v in params.items() if v})
        return f"?{text}" if text else ""

    def list_args(self) -> dict[str, Any]:
        return {
            "status": self.statuses or None,
            "workflow": self.workflow or None,
            "labels": self.labels or None,
            "text": self.text or None,
            "order_by": self.sort,
            "roots_only": not self.children,
        }

    def watch_args(self) -> dict[str, Any]:
        # Statuses are checked here, not by the server, so a run that leaves the
        # filter (RUNNING -> SUCCEEDED under "running") is seen and removed.
        return {
            "workflow": self.workflow or None,
            "labels": self.labels or None,
            "text": self.text or None,
            "roots_only": not self.children,
        }

    def matches(self, run: dict[str, Any]) -> bool:
        if not self.children and run.get("parent_run_id"):
            return False
        return not self.statuses or run["status"] in self.statuses

    @property
    def newest_first(self) -> bool:
        return self.sort == DEFAULT_SORT


def parse_labels(text: str) -> dict[str, str]:
    """``"env=prod,team=ml"`` -> ``{"env": "prod", "team": "ml"}``; parts without ``=``
    are ignored."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            labels[key.strip()] = value.strip()
    return labels


def summary_of(run: dict[str, Any]) -> str:
    """One line: the error of a failed run, else its output."""
    if run["error"]:
        return run["error"].splitlines()[0][:200]
    return "" if run["output"] is None else one_line(run["output"], 200)


def row_of(run: dict[str, Any]) -> dict[str, Any]:
    """A grid row from a run in ``run_to_dict``'s shape."""
    usage = run.get("usage")
    return {
        "id": run["run_id"],
        "status": run["status"],
        "workflow": run["workflow_name"],
        "version": run["workflow_version"],
        "labels": run["labels"],
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "updated_at": run["updated_at"],
        "counts": run["node_counts"],
        "summary": summary_of(run),
        "failed": bool(run["error"]),
        "tokens": tokens_of(usage),
        "cost": cost_of(usage),
        "parent_run_id": run.get("parent_run_id"),
        "parent_node_id": run.get("parent_node_id"),
    }


_COLORS = json.dumps(STATUS_COLORS)

_ID_RENDERER = """(p) => `<a class="sp-mono" href="/runs/${encodeURIComponent(p.value)}"
  title="${sp.esc(p.value)}" onclick="event.stopPropagation()">${sp.esc(p.value.slice(0, 8))}</a>
  <span class="material-icons sp-copy" title="copy run id"
    style="font-size:14px;cursor:pointer;opacity:.5;vertical-align:middle">content_copy</span>`"""

# A child run says whose child it is under its workflow: "↳ <parent node>", a link to
# the parent run.
_WORKFLOW_RENDERER = """(p) => {
  const name = `${sp.esc(p.value)} <span style="opacity:.55">v${sp.esc(p.data.version)}</span>`;
  if (!p.data.parent_run_id) return name;
  const parent = p.data.parent_run_id;
  return `<div class="sp-child-cell">${name}<br><a class="sp-mono sp-child-of"
    href="/runs/${encodeURIComponent(parent)}" title="child of run ${sp.esc(parent)}"
    onclick="event.stopPropagation()">↳ ${sp.esc(p.data.parent_node_id || parent.slice(0, 8))}</a>
    </div>`;
}"""

_LABELS_RENDERER = """(p) => Object.entries(p.value || {}).map(([k, v]) =>
  `<span class="sp-mono" title="${sp.esc(k)}=${sp.esc(v)}"`
  + ` style="border:1px solid rgba(127,127,127,.4);border-radius:4px;`
  + `padding:0 4px;margin-right:3px;font-size:11px">${sp.esc(k)}=${sp.esc(v)}</span>`).join('')"""

# Ticks in the browser for a running run (the grid refreshes this column each second).
_DURATION_RENDERER = """(p) => {
  const s = p.data.started_at, f = p.data.finished_at;
  if (!s) return '';
  const ms = (f ? Date.parse(f) : Date.now()) - Date.parse(s);
  return f ? sp.fmtDuration(ms) : `<span style="color:#2196f3">${sp.fmtDuration(ms)}</span>`;
}"""

_COUNTS_RENDERER = f"""(p) => {{
  const counts = p.value || {{}};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (!total) return '';
  const order = ['SUCCEEDED', 'FAILED', 'RUNNING', 'RETRY_WAIT', 'QUEUED', 'CANCELLED',
                 'SKIPPED', 'PENDING'];
  const colors = {_COLORS};
  const title = order.filter(s => counts[s])
    .map(s => `${{s.toLowerCase()}}: ${{counts[s]}}`).join(', ');
  return `<div class="sp-bar" title="${{title}}">` + order.filter(s => counts[s]).map(s =>
    `<span style="width:${{100 * counts[s] / total}}%;background:${{colors[s]}}"></span>`).join('')
    + '</div>';
}}"""

_SUMMARY_RENDERER = """(p) => {
  const text = sp.esc(p.value);
  return p.data.failed
    ? `<span style="color:#e53935" title="${text}">${text}</span>`
    : `<span class="sp-mono" style="opacity:.8" title="${text}">${text}</span>`;
}"""

_USAGE_RENDERER = """(p) => {
  const parts = [];
  if (p.data.tokens) parts.push(`${p.data.tokens.toLocaleString()} tok`);
  if (p.data.cost !== null && p.data.cost !== undefined) parts.push('$' + p.data.cost.toFixed(4));
  return parts.join(' · ');
}"""

# Client-side sorting would reorder one page of a server-sorted list: keep server order.
_KEEP_ORDER = "() => 0"


def _column(field: str, header: str, renderer: str | None = None, **extra: Any) -> dict[str, Any]:
    column = {
        "field": field,
        "colId": field,
        "headerName": header,
        "sortable": field in SORTABLE,
        ":comparator": _KEEP_ORDER,
    }
    if renderer is not None:
        column[":cellRenderer"] = renderer
    column.update(extra)
    return column


def grid_options(filters: Filters) -> dict[str, Any]:
    sort_key = filters.sort.lstrip("-")
    direction = "desc" if filters.sort.startswith("-") else "asc"
    columns = [
        _column("status", "Status", STATUS_CELL, width=122),
        _column("id", "Run", _ID_RENDERER, width=112),
        _column("workflow", "Workflow", _WORKFLOW_RENDERER, width=158),
        _column("labels", "Labels", _LABELS_RENDERER, width=118, cellDataType=False),
        _column("created_at", "Created", TIME_CELL, width=128),
        _column("started_at", "Started", TIME_CELL, width=100),
        _column("duration", "Duration", _DURATION_RENDERER, width=98),
        _column("counts", "Nodes", _COUNTS_RENDERER, width=96, cellDataType=False),
        _column("summary", "Summary", _SUMMARY_RENDERER, flex=1, minWidth=150),
        _column("tokens", "Usage", _USAGE_RENDERER, width=118, type="rightAligned"),
    ]
    for column in columns:
        if ORDER_TO_COLUMN.get(sort_key) == column["field"]:
            column["sort"] = direction
    return {
        "columnDefs": columns,
        "rowData": [],
        ":getRowId": "(p) => p.data.id",
        "rowHeight": 36,
        "headerHeight": 36,
        "animateRows": False,
        "suppressCellFocus": True,
        "overlayNoRowsTemplate": "No runs match. Start one from Workflows or with `statepipe run`.",
        # Running durations tick in the browser; no request is made for them.
        ":onGridReady": """(p) => { setInterval(() => p.api.refreshCells({columns: ['duration'],
            force: true}), 1000); }""",
    }


class Dashboard:
    """One browser tab's dashboard: the grid, its page of rows and the live feed."""

    def __init__(self, console: Console, filters: Filters, connection: Connection) -> None:
        self.console = console
        self.filters = filters
        self.connection = connection
        self.rows: dict[str, dict[str, Any]] = {}  # the page, in grid order
        self.tokens: list[str | None] = [None]  # page tokens: [first, second, ...]
        self.page = 0
        self.next_token: str | None = None
        self.loaded = asyncio.Event()
        self.early: list[dict[str, Any]] = []  # updates that came before the page
        self.pending: dict[str, dict[str, Any]] = {}  # run id -> newest update to send
        self.push = Coalescer(self._send)
        self.error: str = ""
        self.reload_task: asyncio.Future[None] | None = None
        self.stale_token = False

    # -- building

    def build(self) -> None:
        self._filter_bar()
        if self.filters.ignored:
            ui.label(
                "Ignored from the address: " + ", ".join(self.filters.ignored)
                + f". Statuses are {', '.join(s.lower() for s in RUN_STATUSES)}; sorts are "
                + ", ".join(sorted(SORTABLE.values())) + "."
            ).classes("text-sm text-amber-700").mark("runs-ignored")  # fmt: skip
        with ui.row().classes("w-full items-center gap-2 text-sm"):
            self.status_line = ui.label().classes("sp-muted").mark("runs-status-line")
            ui.space()
            self.new_runs = ui.button("new runs: show", on_click=self._first_page).props(
                "flat dense no-caps color=primary"
            )
            self.new_runs.visible = False
            self.prev_button = (
                ui.button(icon="chevron_left", on_click=self._prev)
                .props("flat dense round")
                .mark("runs-prev")
            )
            self.page_label = ui.label().classes("sp-muted")
            self.next_button = (
                ui.button(icon="chevron_right", on_click=self._next)
                .props("flat dense round")
                .mark("runs-next")
            )
        self.grid = (
            ui.aggrid(grid_options(self.filters), theme="quartz", auto_size_columns=False)
            .classes("w-full")
            .style("height: calc(100vh - 230px); min-height: 360px")
            .mark("runs-grid")
        )
        self.grid.on("cellClicked", self._clicked)
        self.grid.on("sortChanged", self._sort_changed)

    def _filter_bar(self) -> None:
        f = self.filters
        with ui.row().classes("w-full items-end gap-3 no-wrap"):
            self.status_select = (
                ui.select(
                    {s: s.lower() for s in RUN_STATUSES},
                    multiple=True,
                    value=list(f.statuses),
                    label="Status",
                    on_change=lambda e: self._apply(status=e.value),
                )
                .props("use-chips dense outlined clearable")
                .classes("min-w-[220px]")
                .mark("filter-status")
            )
            self.workflow_input = (
                ui.input("Workflow", value=f.workflow)
                .props("dense outlined clearable debounce=400")
                .classes("w-48")
                .mark("filter-workflow")
            )
            self.workflow_input.on_value_change(lambda e: self._apply(workflow=e.value or ""))
            self.label_input = (
                ui.input("Label", value=",".join(f"{k}={v}" for k, v in f.labels.items()),
                         placeholder="key=value")
                .props("dense outlined clearable debounce=400")
                .classes("w-48")
                .mark("filter-label")
            )  # fmt: skip
            self.label_input.on_value_change(lambda e: self._apply(label=e.value or ""))
            self.text_input = (
                ui.input("Search", value=f.text, placeholder="run id, workflow, error")
                .props("dense outlined clearable debounce=400")
                .classes("flex-grow")
                .mark("filter-text")
            )
            self.text_input.on_value_change(lambda e: self._apply(q=e.value or ""))
            self.children_switch = (
                ui.switch("include child runs", value=f.children)
                .props("dense")
                .classes("whitespace-nowrap self-center")
                .tooltip("runs started by workflow, map and agent nodes")
                .mark("filter-children")
            )
            self.children_switch.on_value_change(lambda e: self._apply(children=bool(e.value)))

    # -- view changes: each one is a new URL (shareable, survives a reload)

    def _apply(self, **change: Any) -> None:
        f = self.filters
        status = ",".join(change.get("status", f.statuses))
        new = Filters(
            status=status,
            workflow=change.get("workflow", f.workflow),
            label=change.get("label", ",".join(f"{k}={v}" for k, v in f.labels.items())),
            q=change.get("q", f.text),
            sort=change.get("sort", f.sort),
            children=change.get("children", f.children),
        )
        if new.query() != f.query():
            ui.navigate.to(f"/{new.query()}")

    async def _sort_changed(self, _: Any) -> None:
        try:
            state = await self.grid.run_grid_method("getColumnState", timeout=2)
        except TimeoutError:
            return
        for column in state or ():
            if column.get("sort") and column.get("colId") in SORTABLE:
                order = SORTABLE[column["colId"]]
                self._apply(sort=order if column["sort"] == "asc" else f"-{order}")
                return
        self._apply(sort=DEFAULT_SORT)

    def _clicked(self, event: Any) -> None:
        args = event.args or {}
        run_id = (args.get("data") or {}).get("id")
        if not run_id:
            return
        if args.get("colId") == "id":
            ui.clipboard.write(run_id)
            ui.notify(f"copied {run_id}", type="info", timeout=1200)
            return
        ui.navigate.to(f"/runs/{run_id}")

    # -- pages

    async def load(self) -> None:
        """Loads the current page from ListRuns and shows it."""
        try:
            runs, self.next_token = await self.console.client.list_runs_page(
                **self.filters.list_args(), limit=PAGE_SIZE, page_token=self.tokens[self.page]
            )
        except StatepipeError as err:
            if is_retryable(err):
                self.connection.broken("list", err)
                raise
            self.error = err.message
            self.status_line.set_text(f"The control plane refused this view: {err.message}")
            self.status_line.classes(add="text-red-600")
            return
        self.connection.healthy("list")
        self.stale_token = False
        self.rows = {r.run_id: row_of(r.to_dict()) for r in runs}
        with self.grid.props.suspend_updates():
            self.grid.options["rowData"] = list(self.rows.values())
        self.grid.run_grid_method("setGridOption", "rowData", list(self.rows.values()))
        self._update_paging()
        self.loaded.set()
        for update in self.early:
            self._on_update(update)
        self.early.clear()

    def _update_paging(self) -> None:
        n = len(self.rows)
        start = self.page * PAGE_SIZE
        order = "newest first" if self.filters.newest_first else f"sorted by {self.filters.sort}"
        self.status_line.set_text(
            f"{start + 1}-{start + n} · {order}" if n else "no runs match this view"
        )
        self.page_label.set_text(f"page {self.page + 1}")
        self.prev_button.set_enabled(self.page > 0)
        self.next_button.set_enabled(self.next_token is not None or self.stale_token)

    async def _next(self) -> None:
        if self.stale_token:
            self.stale_token = False
            _, self.next_token = await self.console.client.list_runs_page(
                **self.filters.list_args(), limit=PAGE_SIZE, page_token=self.tokens[self.page]
            )
        if self.next_token is None:
            return
        page, tokens = self.page, list(self.tokens)
        self.page += 1
        del self.tokens[self.page :]
        self.tokens.append(self.next_token)
        if not await self._reload():
            self.page, self.tokens = page, tokens  # stay where the person was

    async def _prev(self) -> None:
        if self.page == 0:
            return
        self.page -= 1
        if not await self._reload():
            self.page += 1

    async def _first_page(self) -> None:
        self.page = 0
        self.new_runs.visible = False
        await self._reload()

    async def _reload(self) -> bool:
        try:
            await self.load()
        except StatepipeError as err:
            ui.notify(f"could not load runs: {err.message}", type="negative")
            return False
        return True

    # -- live

    async def watch(self) -> None:
        """Follows WatchRuns for as long as the tab is open; reloads the page after a
        reconnect (what changed while away is in the new page)."""
        reconnects = 0

        def opened() -> Any:
            nonlocal reconnects
            reconnects += 1
            if reconnects > 1:
                self.loaded.clear()
                self.reload_task = asyncio.ensure_future(self._reload_quietly())
            return self.console.client.watch_runs(**self.filters.watch_args(), snapshot_size=1)

        async def handle(update: tuple[Run, bool]) -> None:
            run, snapshot = update
            if snapshot:
                return
            data = run.to_dict()
            if not self.loaded.is_set():
                self.early.append(data)
            else:
                self._on_update(data)

        await follow("runs", self.connection, opened, handle, probe=lambda: probe(self.console))

    async def _reload_quietly(self) -> None:
        try:
            await self.load()
        except StatepipeError:
            pass

    def _on_update(self, run: dict[str, Any]) -> None:
        run_id = run["run_id"]
        known = self.rows.get(run_id) or self.pending.get(run_id)
        if known is not None and (known.get("updated_at") or "") > (run["updated_at"] or ""):
            return  # an older update than the page already shows
        if known is None and not self.filters.matches(run):
            return
        if known is None and not (self.page == 0 and self.filters.newest_first):
            # A new run belongs somewhere on another page or order: offer to show it.
            self.new_runs.visible = True
            return
        self.pending[run_id] = row_of(run)
        self.push.poke()

    def _send(self) -> None:
        pending, self.pending = self.pending, {}
        add, update, remove = [], [], []
        for run_id, row in pending.items():
            present = run_id in self.rows
            if not self.filters.matches(row):
                if present:
                    remove.append({"id": run_id})
                    del self.rows[run_id]
            elif present:
                update.append(row)
                self.rows[run_id] = row
            else:
                add.append(row)
        if add:
            # Newest first: new runs go on top; the page keeps its size.
            add.sort(key=lambda r: r["created_at"] or "", reverse=True)
            self.rows = {r["id"]: r for r in add} | self.rows
            overflow = list(self.rows)[PAGE_SIZE:]
            for run_id in overflow:
                remove.append({"id": run_id})
                del self.rows[run_id]
            if overflow:
                self.stale_token = True  # rows moved to the next page: its token changed
        transaction: dict[str, Any] = {}
        if add:
            transaction["add"] = add
            transaction["addIndex"] = 0
        if update:
            transaction["update"] = update
        if remove:
            transaction["remove"] = remove
        if transaction:
            with self.grid.props.suspend_updates():
                self.grid.options["rowData"] = list(self.rows.values())
            self.grid.run_grid_method("applyTransaction", transaction)
            if add or remove:
                self._update_paging()


def register(console: Console) -> None:
    @ui.page("/")
    async def runs_page(
        status: str = "",
        workflow: str = "",
        label: str = "",
        q: str = "",
        sort: str = "",
        children: str = "",
    ) -> None:
        filters = Filters(status, workflow, label, q, sort, children)
        with frame(console, "Runs", active="Runs") as connection:
            dashboard = Dashboard(console, filters, connection)
            dashboard.build()
        page_task(dashboard.watch(), "runs-watch")
        try:
            await dashboard.load()
        except StatepipeError:
            pass  # the banner says so; the watch reloads once it is back
