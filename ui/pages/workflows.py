"""The Workflows page (``/workflows``, ``/workflows/{name}?version=``).

On the left, the registered workflows (ListWorkflows gives each version as its own
entry; the page groups them by name). On the right, the selected workflow: its
versions, description, labels, nodes and full spec, and a form generated from its
input schema that starts a run and opens it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

import grpc
from nicegui import ui

from statepipe.client import SpecError, StatepipeError, Workflow
from statepipe_api.convert import workflow_to_dict
from ui.console import Console
from ui.frame import frame
from ui.schema_form import SchemaForm
from ui.streams import Connection, is_retryable, page_task
from ui.theme import time_label

log = logging.getLogger("statepipe.ui")

# Registrations the list asks for per call; "Load more" asks for the next ones.
LIST_PAGE = 500
# Registrations of one name the versions list reads at most.
VERSIONS_LIMIT = 1000
# The first load gets this long before the page is served and loading goes on behind it.
FIRST_LOAD_S = 2.0
# Nodes shown in the table at most (the spec below has them all).
MAX_TABLE_NODES = 2000
# The spec is highlighted up to this size; bigger ones are shown as plain text.
MAX_HIGHLIGHT_CHARS = 200_000
_STREAM = "workflows"
_ITEM_CLASSES = "w-full no-underline text-inherit block rounded px-3 py-2 sp-card"
_SELECTED_STYLE = "background: rgba(33, 150, 243, .14)"


def workflow_url(name: str, version: str | None = None, search: str = "") -> str:
    """The page of one workflow (``version`` None: the latest), keeping the list's search."""
    query = {k: v for k, v in (("version", version), ("q", search)) if v}
    return f"/workflows/{quote(name, safe='/')}" + (f"?{urlencode(query)}" if query else "")


def parse_labels(text: str) -> dict[str, str]:
    """``"team=ml, env=dev"`` as a dict.

    Raises:
        ValueError: A part without ``=`` or a key, or a key given twice.
    """
    labels: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{part!r}: write labels as key=value, separated by commas")
        if key in labels:
            raise ValueError(f"label {key!r} is given twice")
        labels[key] = value.strip()
    return labels


def refusal_text(err: StatepipeError) -> str:
    """What a failed call shows the person."""
    if err.code is grpc.StatusCode.UNAVAILABLE:
        return f"control plane unreachable: {err.message}"
    return f"{err.code.name}: {err.message}"


def _duration(ms: int | float | None) -> str:
    if not ms:
        return "—"
    if ms < 1000:
        return f"{ms:g} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:g} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.3g} min"
    return f"{minutes / 60:.3g} h"


def _retry_text(retry: dict[str, Any] | None) -> str:
    if not retry or int(retry.get("max_attempts", 0)) <= 1:
        return "—"
    parts = [f"{retry['max_attempts']} attempts"]
    if retry.get("backoff_ms"):
        parts.append(f"{retry.get('strategy') or 'fixed'} from {_duration(retry['backoff_ms'])}")
    if retry.get("max_backoff_ms"):
        parts.append(f"≤ {_duration(retry['max_backoff_ms'])}")
    return ", ".join(parts)


class _Listing:
    """The workflows the list has loaded, grouped by name (versions in registration order)."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[dict[str, Any]]] = {}
        self.next_token: str | None = None
        self.loaded = 0

    def add(self, workflows: list[Workflow]) -> None:
        for workflow in workflows:
            shape = workflow_to_dict(workflow.proto)
            self.by_name.setdefault(shape["spec"]["name"], []).append(shape)
        self.loaded += len(workflows)


class _WorkflowsView:
    """One browser tab's Workflows page: the list, the selected workflow, the start form."""

    def __init__(
        self,
        console: Console,
        connection: Connection,
        name: str | None,
        version: str | None,
        search: str,
    ) -> None:
        self.console = console
        self.connection = connection
        self.name = name
        self.version = version
        self.search = search
        self.listing = _Listing()
        self._search_generation = 0

    # ----------------------------------------------------------- layout

    def build(self) -> None:
        with ui.element("div").classes("w-full flex flex-col md:flex-row items-start gap-4"):
            with ui.column().classes(
                "w-full md:w-[30%] md:min-w-[260px] md:max-w-[440px] shrink-0 gap-2 min-w-0"
            ):
                with ui.row().classes("w-full items-center no-wrap gap-2"):
                    ui.label("Workflows").classes("text-xl font-semibold")
                    ui.space()
                    self.count_label = ui.label().classes("text-xs sp-muted")
                self.search_input = (
                    ui.input(
                        placeholder="search names",
                        value=self.search,
                        on_change=lambda e: self._search_changed(e.value),
                    )
                    .props("dense outlined clearable debounce=300")
                    .classes("w-full")
                    .mark("workflow-search")
                )
                with self.search_input.add_slot("prepend"):
                    ui.icon("search")
                self.list_box = (
                    ui.column()
                    .classes("w-full gap-1 md:max-h-[calc(100vh-190px)] overflow-y-auto")
                    .mark("workflow-list")
                )
                with self.list_box:
                    ui.spinner()
                self.more_box = ui.row().classes("w-full justify-center")
            self.detail_box = (
                ui.column().classes("w-full md:flex-1 min-w-0 gap-4").mark("workflow-detail")
            )
            with self.detail_box:
                if self.name is not None:
                    ui.spinner()

    # ---------------------------------------------------------- loading

    async def first_load(self) -> None:
        """Loads while the page is built; an unreachable control plane is retried behind it."""
        try:
            await asyncio.wait_for(self._load(), FIRST_LOAD_S)
        except (StatepipeError, TimeoutError) as err:
            if isinstance(err, StatepipeError) and not is_retryable(err):
                self._show_failure(err)
                return
            self._unreachable(err)
            page_task(self._keep_loading(), "workflows-load")

    async def _keep_loading(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
            try:
                await self._load()
            except StatepipeError as err:
                if not is_retryable(err):
                    self._show_failure(err)
                    return
                self._unreachable(err)
                continue
            return

    async def _load(self) -> None:
        listing = _Listing()
        page, token = await self.console.client.list_workflows_page(
            self.search or None, limit=LIST_PAGE
        )
        listing.add(page)
        listing.next_token = token
        detail = await self._fetch_detail() if self.name is not None else None
        self.connection.healthy(_STREAM)
        self.listing = listing
        self._render_list()
        if self.name is not None:
            self._render_detail(detail)
        else:
            self._render_nothing_selected()

    def _unreachable(self, err: BaseException) -> None:
        if isinstance(err, TimeoutError):
            err = StatepipeError(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time")
        self.connection.broken(_STREAM, err)
        text = refusal_text(err) if isinstance(err, StatepipeError) else str(err)
        self.list_box.clear()
        with self.list_box:
            with ui.row().classes("items-center gap-2 no-wrap").mark("list-unreachable"):
                ui.spinner(size="sm")
                ui.label(f"{text}; retrying…").classes("text-sm text-negative break-all")

    def _show_failure(self, err: StatepipeError) -> None:
        self.list_box.clear()
        with self.list_box:
            ui.label(refusal_text(err)).classes("text-sm text-negative break-all")

    # -------------------------------------------------------------- list

    async def _search_changed(self, value: str | None) -> None:
        self.search = (value or "").strip()
        self._search_generation += 1
        generation = self._search_generation
        try:
            page, token = await self.console.client.list_workflows_page(
                self.search or None, limit=LIST_PAGE
            )
        except StatepipeError as err:
            if generation == self._search_generation:
                self._show_failure(err)
            return
        if generation != self._search_generation:
            return  # a later search is under way
        listing = _Listing()
        listing.add(page)
        listing.next_token = token
        self.listing = listing
        self._render_list()

    async def _load_more(self) -> None:
        token = self.listing.next_token
        if not token:
            return
        generation = self._search_generation
        try:
            page, next_token = await self.console.client.list_workflows_page(
                self.search or None, limit=LIST_PAGE, page_token=token
            )
        except StatepipeError as err:
            ui.notify(refusal_text(err), type="negative")
            return
        if generation != self._search_generation:
            return
        self.listing.add(page)
        self.listing.next_token = next_token
        self._render_list()

    def _render_list(self) -> None:
        names = sorted(self.listing.by_name)
        more = " +" if self.listing.next_token else ""
        self.count_label.text = f"{len(names)}{more} workflow{'s' if len(names) != 1 else ''}"
        self.list_box.clear()
        with self.list_box:
            if not names:
                self._render_empty()
            for name in names:
                self._render_item(name, self.listing.by_name[name])
        self.more_box.clear()
        if self.listing.next_token:
            with self.more_box:
                ui.button(
                    f"Load more (after {self.listing.loaded} registrations)",
                    on_click=self._load_more,
                ).props("flat dense no-caps").mark("load-more")

    def _render_empty(self) -> None:
        if self.search:
            ui.label(f"No workflow name contains “{self.search}”.").classes("text-sm sp-muted")
            return
        with ui.column().classes("w-full gap-2 p-4 sp-card").mark("workflows-empty"):
            ui.label("No workflows registered yet").classes("text-lg font-semibold")
            with ui.row().classes("items-baseline gap-1"):
                ui.label("statepipe run FILE").classes("sp-mono")
                ui.label("registers the workflow in FILE (YAML or JSON) and starts a run;")
            with ui.row().classes("items-baseline gap-1"):
                ui.label("statepipe up").classes("sp-mono")
                ui.label("registers the examples.")
            ui.label("Registered workflows show up here.").classes("text-sm sp-muted")

    def _render_item(self, name: str, versions: list[dict[str, Any]]) -> None:
        latest = versions[-1]
        spec = latest["spec"]
        selected = name == self.name
        with (
            ui.link(target=workflow_url(name, search=self.search))
            .classes(_ITEM_CLASSES)
            .style(_SELECTED_STYLE if selected else "")
            .mark(f"workflow-{name}")
        ):
            with ui.row().classes("w-full items-baseline no-wrap gap-2"):
                ui.label(name).classes("sp-mono font-semibold truncate min-w-0")
                ui.space()
                ui.label(f"v{spec.get('version', '')}").classes("sp-mono text-xs sp-muted")
            if spec.get("description"):
                ui.label(spec["description"]).classes("text-xs sp-muted line-clamp-2")
            with ui.row().classes("w-full items-center gap-2 text-xs sp-muted no-wrap"):
                count = len(spec.get("nodes", []))
                ui.label(f"{count} node{'s' if count != 1 else ''}")
                if len(versions) > 1:
                    ui.label(f"· {len(versions)} versions")
                ui.space()
                time_label(latest.get("created_at"))

    # ------------------------------------------------------------ detail

    async def _fetch_detail(self) -> dict[str, Any]:
        """The selected workflow and every version of its name; ``found`` False if unknown."""
        assert self.name is not None
        versions: list[dict[str, Any]] = []
        try:
            workflow = await self.console.client.get_workflow(self.name, self.version)
        except StatepipeError as err:
            if err.code is not grpc.StatusCode.NOT_FOUND:
                raise
            if self.version is not None:
                versions = await self._versions()
            return {"found": False, "message": err.message, "versions": versions}
        versions = await self._versions()
        return {"found": True, "workflow": workflow_to_dict(workflow.proto), "versions": versions}

    async def _versions(self) -> list[dict[str, Any]]:
        assert self.name is not None
        workflows = await self.console.client.list_workflows(self.name, limit=VERSIONS_LIMIT)
        # name_contains is a substring match; registration order is kept.
        return [workflow_to_dict(w.proto) for w in workflows if w.name == self.name]

    def _render_nothing_selected(self) -> None:
        self.detail_box.clear()
        if not self.listing.by_name:
            return
        with self.detail_box:
            with ui.column().classes("w-full items-center mt-16 gap-2 sp-muted"):
                ui.icon("account_tree", size="48px")
                ui.label("Select a workflow to see its nodes and spec and to start a run.")

    def _render_detail(self, detail: dict[str, Any] | None) -> None:
        self.detail_box.clear()
        assert detail is not None and self.name is not None
        with self.detail_box:
            if not detail["found"]:
                self._render_not_found(detail)
                return
            shape = detail["workflow"]
            _WorkflowDetail(self.console, shape, detail["versions"], self.search).build()

    def _render_not_found(self, detail: dict[str, Any]) -> None:
        assert self.name is not None
        what = f"workflow {self.name}"
        if self.version is not None:
            what += f" version {self.version}"
        with ui.column().classes("w-full items-center mt-12 gap-2").mark("workflow-not-found"):
            ui.icon("search_off", size="64px").classes("sp-muted")
            ui.label(f"{what} not found").classes("text-2xl font-semibold break-all")
            ui.label(detail["message"]).classes("sp-muted sp-mono text-sm break-all")
            if detail["versions"]:
                with ui.row().classes("items-baseline gap-2"):
                    ui.label("Registered versions:").classes("sp-muted")
                    for shape in reversed(detail["versions"]):
                        version = shape["spec"].get("version", "")
                        ui.link(version, workflow_url(self.name, version, self.search)).classes(
                            "sp-mono"
                        )
            ui.link("← all workflows", "/workflows").classes("mt-2").mark("back-to-workflows")


class _WorkflowDetail:
    """The selected workflow: summary, versions, the start form, nodes, spec."""

    def __init__(
        self,
        console: Console,
        shape: dict[str, Any],
        versions: list[dict[str, Any]],
        search: str,
    ) -> None:
        self.console = console
        self.shape = shape
        self.spec: dict[str, Any] = shape["spec"]
        self.name: str = self.spec["name"]
        self.version: str = self.spec.get("version", "")
        self.versions = versions
        self.search = search
        self.busy = False

    def build(self) -> None:
        self._summary()
        self._start_form()
        self._nodes()
        self._spec_json()

    def _summary(self) -> None:
        latest = self.versions[-1]["spec"].get("version") if self.versions else self.version
        with ui.column().classes("w-full gap-1"):
            with ui.row().classes("w-full items-baseline gap-3"):
                ui.label(self.name).classes("text-2xl font-semibold font-mono break-all").mark(
                    "workflow-name"
                )
                ui.badge(f"version {self.version}").props("outline").mark("workflow-version")
                if self.version == latest:
                    ui.badge("latest").props("outline color=positive")
                ui.space()
                with ui.row().classes("items-baseline gap-1 text-xs sp-muted"):
                    ui.label("registered")
                    time_label(self.shape.get("created_at"))
            if self.spec.get("description"):
                ui.label(self.spec["description"]).classes("text-sm")
            labels = self.spec.get("labels") or {}
            if labels:
                with ui.row().classes("gap-1").mark("workflow-labels"):
                    for key, value in sorted(labels.items()):
                        ui.badge(f"{key}={value}").props("outline").classes("sp-mono")
            if self.versions:
                with (
                    ui.row()
                    .classes("items-baseline gap-x-3 gap-y-1 text-sm")
                    .mark("workflow-versions")
                ):
                    count = len(self.versions)
                    ui.label(f"{count} version{'s' if count != 1 else ''}:").classes("sp-muted")
                    for shape in reversed(self.versions):  # newest first
                        version = shape["spec"].get("version", "")
                        link = ui.link(version, workflow_url(self.name, version, self.search))
                        link.classes("sp-mono").mark(f"version-{version}")
                        if version == self.version:
                            link.classes("font-semibold no-underline")
                        link.tooltip(shape.get("created_at") or "")

    # ------------------------------------------------------------- start

    def _start_form(self) -> None:
        with ui.column().classes("w-full gap-2 p-4 sp-card").mark("start-run-card"):
            with ui.row().classes("w-full items-baseline gap-2"):
                ui.label("Start a run").classes("text-lg font-semibold")
                ui.label(f"{self.name} · version {self.version}").classes(
                    "text-xs sp-muted sp-mono break-all"
                )
            schema = self.spec.get("input_schema")
            self.form = SchemaForm(schema, on_change=self._update)
            with ui.element("div").classes("w-full grid grid-cols-1 sm:grid-cols-2 gap-2"):
                self.labels_input = (
                    ui.input(
                        "labels",
                        placeholder="key=value, team=ml",
                        on_change=self._update,
                    )
                    .classes("w-full")
                    .mark("run-labels")
                    .without_auto_validation()
                )
                self.key_input = (
                    ui.input("idempotency key", placeholder="optional", on_change=self._update)
                    .classes("w-full")
                    .mark("run-idempotency-key")
                    .tooltip("starting again with the same key opens the run it started")
                )
            with ui.row().classes("items-center gap-3"):
                self.start_button = (
                    ui.button("Start run", icon="play_arrow", on_click=self._start)
                    .props("no-caps")
                    .mark("start-run")
                )
                self.spinner = ui.spinner(size="sm")
                self.spinner.set_visibility(False)
                self.invalid_hint = ui.label().classes("text-xs sp-muted").mark("start-hint")
            self.start_error = (
                ui.label()
                .classes("text-sm text-negative whitespace-pre-wrap break-all")
                .mark("start-error")
            )
            self.start_error.set_visibility(False)
        self._update()

    def _labels(self) -> tuple[dict[str, str], str | None]:
        try:
            return parse_labels(self.labels_input.value), None
        except ValueError as err:
            return {}, str(err)

    def _update(self) -> None:
        _, labels_error = self._labels()
        self.labels_input.error = labels_error
        ready = self.form.valid and labels_error is None
        self.start_button.enabled = ready and not self.busy
        missing = self.form.missing_required
        self.invalid_hint.text = (
            f"required: {', '.join(missing)}" if missing else "fix the input first"
        )
        self.invalid_hint.set_visibility(not ready)

    async def _start(self) -> None:
        labels, labels_error = self._labels()
        if self.busy or not self.form.valid or labels_error is not None:
            return
        self.busy = True
        self.spinner.set_visibility(True)
        self.start_error.set_visibility(False)
        self._update()
        try:
            run_id = await self.console.client.start_run(
                self.name,
                self.form.value,
                version=self.version,
                labels=labels or None,
                idempotency_key=(self.key_input.value or "").strip() or None,
            )
        except StatepipeError as err:
            self._refused(refusal_text(err))
        except (SpecError, ValueError) as err:  # refused before it was sent
            self._refused(str(err))
        else:
            log.info("started run %s of %s@%s", run_id, self.name, self.version)
            ui.navigate.to(f"/runs/{quote(run_id, safe='')}")
            return  # stays busy: the page is going away
        finally:
            self.spinner.set_visibility(False)
        self.busy = False
        self._update()

    def _refused(self, text: str) -> None:
        self.start_error.text = text
        self.start_error.set_visibility(True)

    # ------------------------------------------------------------- nodes

    def _nodes(self) -> None:
        nodes = self.spec.get("nodes") or []
        columns = [
            {"name": "id", "label": "id", "field": "id", "align": "left", "classes": "sp-mono"},
            {"name": "kind", "label": "kind", "field": "kind", "align": "left"},
            {
                "name": "after",
                "label": "after",
                "field": "after",
                "align": "left",
                "classes": "sp-mono",
                "style": "white-space: normal; min-width: 8rem",
            },
            {"name": "retry", "label": "retry", "field": "retry", "align": "left"},
            {"name": "timeout", "label": "timeout", "field": "timeout", "align": "left"},
        ]
        rows = [
            {
                "id": node.get("id", ""),
                "kind": node.get("kind", ""),
                "after": ", ".join(node.get("after", [])) or "—",
                "retry": _retry_text(node.get("retry")),
                "timeout": _duration(node.get("timeout_ms")),
                "when": node.get("when", ""),
            }
            for node in nodes[:MAX_TABLE_NODES]
        ]
        with ui.column().classes("w-full gap-1"):
            ui.label(f"Nodes ({len(nodes)})").classes("text-lg font-semibold")
            pagination = {"rowsPerPage": 25} if len(rows) > 25 else None
            ui.table(columns=columns, rows=rows, row_key="id", pagination=pagination).props(
                "dense flat bordered"
            ).classes("w-full").mark("node-table")
            if len(nodes) > MAX_TABLE_NODES:
                ui.label(
                    f"The table shows the first {MAX_TABLE_NODES}; the spec below has all."
                ).classes("text-xs sp-muted")

    # -------------------------------------------------------------- spec

    def _spec_json(self) -> None:
        text = json.dumps(self.spec, indent=2, ensure_ascii=False)
        with (
            ui.expansion("Spec (JSON)", icon="data_object", value=True)
            .classes("w-full sp-card")
            .props("dense header-class=text-lg")
        ):
            with ui.row().classes("w-full justify-end"):
                ui.button(
                    "Copy JSON",
                    icon="content_copy",
                    on_click=lambda: _copy(text),
                ).props("flat dense no-caps size=sm").mark("copy-spec")
            language = "json" if len(text) <= MAX_HIGHLIGHT_CHARS else None
            code = ui.code(text, language=language).classes("w-full").mark("workflow-spec")
            code.style("max-height: 560px; overflow: auto")
            code.markdown.classes("sp-mono")  # not the copy button: its icon is a font too


def _copy(text: str) -> None:
    ui.clipboard.write(text)
    ui.notify("spec copied")


async def _show(console: Console, name: str | None, version: str | None, search: str) -> None:
    with frame(console, name or "Workflows", active="Workflows") as connection:
        view = _WorkflowsView(console, connection, name, version, search.strip())
        view.build()
    await view.first_load()


def register(console: Console) -> None:
    @ui.page("/workflows")
    async def workflows_page(q: str = "") -> None:
        await _show(console, None, None, q)

    @ui.page("/workflows/{name:path}")
    async def workflow_page(name: str, version: str = "", q: str = "") -> None:
        await _show(console, name, version or None, q)
