"""The node panel: everything about one node in a drawer on the right of the run page.

Status, times, error and traceback, resolved input and output, the child runs the
node started (a workflow node's child, a map node's items, with links), every attempt, the
node's retry policy and resources (from the workflow spec, fetched once), where the
last attempt ran, usage, and the tool/API calls of each attempt. It follows the
model: a change of the open node re-renders the panel's body (one refreshable), and
when the node reaches a final status the run is fetched again once, because output,
input and usage are not carried by events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from nicegui import background_tasks, context, ui
from nicegui.elements.mixins.text_element import TextElement

from statepipe.client import StatepipeError
from statepipe_api.convert import spec_to_dict
from statepipe_api.lifecycle import CONTROLS, FINAL_NODE, RESETTABLE_NODE
from ui.child_runs import CHILD_KINDS, ChildRuns, run_href
from ui.console import Console
from ui.format import duration_ms, format_duration
from ui.run_model import CALL_KINDS, Attempt, RunModel
from ui.theme import status_chip, time_label
from ui.views.json_view import json_view
from ui.views.log import LogView
from ui.views.trace import attempts_of, call_duration_ms, call_name, merge_calls

log = logging.getLogger("statepipe.ui")

# A panel re-renders at most this often while its node changes (a node streaming
# calls changes with every flush of the model).
MIN_REFRESH_S = 0.25
# Calls listed per attempt; the trace shows all of them.
MAX_CALLS_SHOWN = 200
# Child runs listed for a node; the trace shows all of them.
MAX_CHILDREN_SHOWN = 50

# OpenTelemetry GenAI semantic-convention names (and plain ones) with friendly labels,
# in the order the panel lists them; other keys follow in their own order.
USAGE_LABELS: dict[str, str] = {
    "gen_ai.usage.input_tokens": "Input tokens",
    "input_tokens": "Input tokens",
    "gen_ai.usage.output_tokens": "Output tokens",
    "output_tokens": "Output tokens",
    "gen_ai.usage.total_tokens": "Total tokens",
    "total_tokens": "Total tokens",
    "gen_ai.usage.cache_read.input_tokens": "Cached input tokens",
    "gen_ai.usage.cache_read_input_tokens": "Cached input tokens",
    "gen_ai.usage.cache_creation.input_tokens": "Cache-write input tokens",
    "gen_ai.usage.cache_creation_input_tokens": "Cache-write input tokens",
    "gen_ai.usage.reasoning.output_tokens": "Reasoning tokens",
    "gen_ai.usage.cost": "Cost",
    "cost": "Cost",
    "cost_usd": "Cost (USD)",
    "gen_ai.server.time_to_first_token": "Time to first token",
    "time_to_first_token": "Time to first token",
    "time_to_first_token_ms": "Time to first token",
    "ttft_ms": "Time to first token",
    "gen_ai.server.request.duration": "Request duration",
    "gen_ai.request.model": "Model",
    "gen_ai.response.model": "Model (response)",
}

PLACEMENT_LABELS: dict[str, str] = {
    "executor": "Executor",
    "ray_node_id": "Ray node",
    "ray_actor_id": "Ray actor",
    "actor_id": "Ray actor",
    "worker_pid": "Worker pid",
    "pid": "Pid",
    "host": "Host",
    "hostname": "Host",
}


# -- formatting (pure)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def usage_label(key: str) -> str:
    """A friendly label for a usage key: gen_ai.usage.input_tokens → "Input tokens"."""
    if key in USAGE_LABELS:
        return USAGE_LABELS[key]
    name = key.removeprefix("gen_ai.usage.").removeprefix("gen_ai.")
    name = name.replace(".", " ").replace("_", " ").strip()
    return name[:1].upper() + name[1:] if name else key


def usage_value(key: str, value: Any) -> str:
    """A usage value shown with the unit its key implies."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if "cost" in key:
        return f"${value:,.4f}" if "usd" in key.lower() else f"{value:,.4f}"
    if key.endswith("_ms"):
        return format_duration(value)
    if key.startswith("gen_ai.server.") or key.endswith(("_s", "_seconds")):
        return format_duration(value * 1000)  # OpenTelemetry durations are in seconds
    if isinstance(value, int) or value.is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}"


def usage_rows(usage: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(label, value, raw key) per usage key: known keys first, in a fixed order."""
    if not usage:
        return []
    order = {k: i for i, k in enumerate(USAGE_LABELS)}
    keys = sorted(usage, key=lambda k: (order.get(k, len(order)), list(usage).index(k)))
    return [(usage_label(k), usage_value(k, usage[k]), k) for k in keys]


def placement_rows(placement: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, raw key) per placement key, in the order the executor gave them."""
    return [
        (PLACEMENT_LABELS.get(k, k), v if isinstance(v, str) else json.dumps(v), k)
        for k, v in placement.items()
    ]


def latest_placement(attempts: list[Attempt]) -> dict[str, Any]:
    for attempt in reversed(attempts):
        if attempt.placement:
            return attempt.placement
    return {}


def spec_nodes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The node specs of a workflow spec dict (``spec_to_dict``), by node id."""
    return {n["id"]: n for n in spec.get("nodes") or () if "id" in n}


def retry_text(retry: dict[str, Any] | None) -> str:
    retry = retry or {}
    attempts = int(retry.get("max_attempts") or 0)
    if attempts <= 1:
        return "no retry"
    text = f"up to {attempts} attempts"
    backoff = retry.get("backoff_ms")
    if backoff:
        text += f", {retry.get('strategy') or 'fixed'} backoff from {format_duration(backoff)}"
        if retry.get("max_backoff_ms"):
            text += f" (at most {format_duration(retry['max_backoff_ms'])})"
    if retry.get("jitter"):
        text += f", jitter ±{float(retry['jitter']):.0%}"
    return text


def resources_text(resources: dict[str, Any] | None) -> str:
    resources = resources or {}
    parts = []
    for key in ("cpus", "gpus"):
        if resources.get(key):
            parts.append(f"{resources[key]:g} {key}")
    if resources.get("memory"):
        parts.append(f"{format_bytes(float(resources['memory']))} memory")
    for key, value in (resources.get("custom") or {}).items():
        parts.append(f"{key} {value:g}")
    return " · ".join(parts) or "default"


def policy_rows(node_spec: dict[str, Any], spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of a node spec's retry policy, timeout, resources and
    concurrency key (with the key's limit from the workflow's concurrency limits)."""
    rows = [
        ("Retry", retry_text(node_spec.get("retry"))),
        (
            "Timeout",
            format_duration(node_spec["timeout_ms"]) if node_spec.get("timeout_ms") else "none",
        ),
        ("Resources", resources_text(node_spec.get("resources"))),
    ]
    key = node_spec.get("concurrency_key")
    if key:
        limit = ((spec.get("concurrency") or {}).get("per_key") or {}).get(key, 1)
        rows.append(("Concurrency key", f"{key} ({limit} at a time)"))
    if node_spec.get("when"):
        rows.append(("When", str(node_spec["when"])))
    if node_spec.get("continue_on_failure"):
        rows.append(("Continue on failure", "yes"))
    return rows


def final_key(node: dict[str, Any]) -> tuple[Any, ...] | None:
    """What identifies one final transition of a node; None while it is not final."""
    if node.get("status") not in FINAL_NODE:
        return None
    return (node["node_id"], node.get("attempt"), node["status"], node.get("finished_at"))


# -- the panel


def _kv(rows: list[tuple[str, Callable[[], Any] | str, str]]) -> None:
    """A two-column table; a value is text or a function that builds the cell."""
    with ui.element("table").classes("sp-kv text-sm"):
        for label, value, hover in rows:
            with ui.element("tr"):
                cell = ui.element("td")
                with cell:
                    ui.label(label)
                if hover:
                    cell.props["title"] = hover
                with ui.element("td").classes("sp-mono break-all"):
                    if callable(value):
                        value()
                    else:
                        ui.label(value)


def _section(title: str) -> None:
    ui.label(title).classes("text-xs font-semibold uppercase sp-muted pt-3")


class NodePanel:
    """A right-side drawer showing one node of ``model``.

    Create it anywhere in the page (the drawer goes to the page's layout); then
    ``await panel.open(node_id)`` and ``panel.close()``.

    Args:
        model: The page's run model.
        console: For the workflow spec, the run's re-fetch and calls not in the model.
        width: The drawer's width in pixels.
        children: The run's child runs; the panel of a node that starts them
            (workflow, map, agent) lists them, loading them if no view did yet.
    """

    def __init__(
        self,
        model: RunModel,
        console: Console,
        *,
        width: int = 560,
        children: ChildRuns | None = None,
    ) -> None:
        self.model = model
        self.console = console
        self.children = children
        self.node_id: str | None = None
        self._spec: dict[str, Any] | None = None  # {} when it could not be fetched
        self._spec_lock = asyncio.Lock()
        # Final transitions already complete in the model: the snapshot's, and those
        # re-fetched since.
        self._final_seen: set[tuple[Any, ...]] = {
            k for n in model.nodes.values() if (k := final_key(n)) is not None
        }
        self._refetching = False
        self._fetched_calls: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self._last_refresh = 0.0
        self._refresh_later: asyncio.TimerHandle | None = None
        with context.client.content:  # a drawer must be a child of the page itself
            self.drawer = (
                ui.right_drawer(value=False, fixed=True, elevated=True)
                .props("overlay bordered")
                .classes("p-0 sp-node-panel")
                .mark("node-panel")
            )
        self.drawer.props["width"] = width
        with self.drawer, ui.column().classes("w-full gap-1 p-4"):
            self.body = ui.refreshable(self._render)
            self.body()
            # The node's own live log: outside the body, so a re-render keeps its scroll.
            self.log_box = ui.column().classes("w-full gap-1")
        self.log: LogView | None = None
        model.on_nodes(self._nodes_changed)
        # The run's status decides which controls the panel offers.
        model.on_run(lambda: self._refresh_now() if self.is_open else None)

    @property
    def is_open(self) -> bool:
        return bool(self.drawer.value) and self.node_id is not None

    async def open(self, node_id: str) -> None:
        """Shows ``node_id`` in the drawer (and opens it)."""
        changed = node_id != self.node_id
        self.node_id = node_id
        self.drawer.show()
        kind = (self.model.nodes.get(node_id) or {}).get("kind")
        if self.children is not None and kind in CHILD_KINDS:
            self.children.start()
        if changed or self.log is None:
            self._open_log(node_id)
        await self._load_spec()
        await self._load_calls(node_id)
        self._maybe_refetch()
        self._refresh_now()

    def close(self) -> None:
        self.drawer.hide()
        self.node_id = None

    def _open_log(self, node_id: str) -> None:
        if self.log is not None:
            self.log.detach()
        self.log_box.clear()
        with self.log_box:
            _section("Log")
            self.log = LogView(self.model, node_id=node_id, max_entries=500, height="320px")

    async def retry(self, node_id: str) -> None:
        """Runs a failed (cancelled, skipped) node again; the result comes by the stream."""
        try:
            await self.console.client.retry_node(self.model.run["run_id"], node_id)
        except StatepipeError as err:
            ui.notify(err.message, type="warning", multi_line=True)
            return
        ui.notify(f"retrying {node_id}", type="info", timeout=1500)

    # -- data

    async def _load_spec(self) -> None:
        async with self._spec_lock:
            if self._spec is not None:
                return
            run = self.model.run
            try:
                workflow = await self.console.client.get_workflow(
                    run["workflow_name"], run.get("workflow_version") or None
                )
                self._spec = spec_to_dict(workflow.spec)
            except Exception as err:  # no policy section rather than no panel
                log.info("workflow spec of run %s: %s", run.get("run_id"), err)
                self._spec = {}

    async def _load_calls(self, node_id: str) -> None:
        """Fetches the node's calls once when the model has none for it."""
        if node_id in self._fetched_calls or node_id not in self.model.nodes:
            return
        attempts = attempts_of(self.model, node_id)
        if not attempts or any(a.calls for a in attempts):
            return
        try:
            found = await self.console.client.list_events(
                self.model.run["run_id"], kinds=sorted(CALL_KINDS), node_id=node_id, limit=None
            )
        except StatepipeError as err:
            log.info("calls of node %s: %s", node_id, err)
            return
        by_attempt: dict[int, list[dict[str, Any]]] = {}
        for event in found:
            d = event.to_dict()
            by_attempt.setdefault(d["attempt"], []).append(d)
        self._fetched_calls[node_id] = by_attempt

    def _maybe_refetch(self) -> None:
        """Re-fetches the run once per final transition of the open node."""
        node = self.model.nodes.get(self.node_id or "")
        key = final_key(node) if node else None
        if key is None or key in self._final_seen or self._refetching:
            return
        self._final_seen.add(key)
        self._refetching = True
        background_tasks.create(self._refetch(), name="node-panel-refetch")

    async def _refetch(self) -> None:
        try:
            run = (await self.console.client.get_run(self.model.run["run_id"])).to_dict()
        except StatepipeError as err:
            log.info("re-fetching run %s: %s", self.model.run.get("run_id"), err)
            return
        finally:
            self._refetching = False
        self.model.replace_run(run)
        for node in self.model.nodes.values():
            if (k := final_key(node)) is not None:
                self._final_seen.add(k)
        self.model.flush()

    # -- live

    def _nodes_changed(self, node_ids: list[str]) -> None:
        if not self.is_open or self.node_id not in node_ids:
            return
        self._maybe_refetch()
        wait = self._last_refresh + MIN_REFRESH_S - time.monotonic()
        if wait <= 0:
            self._refresh_now()
        elif self._refresh_later is None:
            self._refresh_later = asyncio.get_running_loop().call_later(wait, self._refresh_now)

    def _refresh_now(self) -> None:
        if self._refresh_later is not None:
            self._refresh_later.cancel()
            self._refresh_later = None
        self._last_refresh = time.monotonic()
        if not self.drawer.is_deleted:
            self.body.refresh()

    # -- rendering

    def _render(self) -> None:
        node_id = self.node_id
        if node_id is None:
            ui.label("No node selected").classes("sp-muted")
            return
        node = self.model.nodes.get(node_id)
        with ui.row().classes("w-full items-center no-wrap gap-2"):
            ui.label(node_id).classes("text-lg font-semibold break-all").mark(
                "panel-node-id"
            ).style("font-family: var(--sp-mono)")
            ui.space()
            ui.link("open as page", f"/runs/{self.model.run['run_id']}/nodes/{node_id}").classes(
                "text-sm whitespace-nowrap"
            ).mark("panel-page-link")
            ui.button(icon="close", on_click=self.close).props("flat dense round").mark(
                "panel-close"
            )
        if node is None:
            ui.label(f"This run has no node {node_id!r}.").classes("sp-muted")
            return
        attempts = attempts_of(self.model, node_id)
        self._header(node)
        if node.get("error") and node["status"] in ("FAILED", "RETRY_WAIT"):
            self._error(node["error"], node.get("traceback") or "")
        # What a workflow or map node did is in its children: they come first.
        self._children(node_id)
        _section("Input")
        json_view(node.get("input"), label="resolved params")
        _section("Output")
        json_view(node.get("output"), label="output")
        if attempts:
            _section(f"Attempts ({len(attempts)})")
            for attempt in attempts:
                self._attempt(attempt)
        self._policy(node_id)
        placement = latest_placement(attempts)
        if placement:
            _section("Placement")
            _kv([(label, value, key) for label, value, key in placement_rows(placement)])
        usage = usage_rows(node.get("usage"))
        if usage:
            _section("Usage")
            _kv([(label, value, key) for label, value, key in usage])
        self._calls(node_id, attempts)

    def _header(self, node: dict[str, Any]) -> None:
        with ui.row().classes("items-center gap-2"):
            ui.badge(node.get("kind") or "?").props("outline").classes("sp-mono")
            status_chip(node["status"]).mark("panel-status")
            ui.label(f"attempt {node.get('attempt') or 0}").classes("sp-muted text-sm")
            ui.space()
            if (
                node["status"] in RESETTABLE_NODE
                and self.model.run["status"] in CONTROLS["retry_node"]
            ):
                node_id = node["node_id"]
                ui.button("Retry node", icon="replay", on_click=lambda: self.retry(node_id)).props(
                    "outline dense no-caps color=primary"
                ).mark("control-retry-node")
        started, finished = node.get("started_at"), node.get("finished_at")
        _kv(
            [
                ("Queued", lambda: time_label(node.get("queued_at")), ""),
                ("Started", lambda: time_label(started), ""),
                ("Finished", lambda: time_label(finished), ""),
                ("Duration", lambda: self._duration(started, finished, node["status"]), ""),
            ]
        )

    @staticmethod
    def _duration(start: str | None, end: str | None, status: str) -> None:
        if start and not end and status == "RUNNING":
            ui.label("…").classes("sp-ticking").props(f'data-start="{start}"')
        else:
            ui.label(format_duration(duration_ms(start, end)))

    @staticmethod
    def _error(error: str, traceback: str) -> None:
        _section("Error")
        ui.label(error).classes("sp-mono text-red-600 w-full").style(
            "white-space: pre-wrap; overflow-wrap: anywhere"
        ).mark("panel-error")
        if traceback:
            TextElement(tag="pre", text=traceback).classes(
                "sp-mono text-xs w-full overflow-auto max-h-72 p-2 rounded "
                "bg-red-50 dark:bg-red-950 text-red-900 dark:text-red-200"
            ).style("white-space: pre").mark("panel-traceback")

    def _attempt(self, attempt: Attempt) -> None:
        with ui.column().classes("w-full sp-card p-2 gap-1").mark(f"attempt-{attempt.attempt}"):
            with ui.row().classes("items-center gap-2"):
                ui.label(f"attempt {attempt.attempt}").classes("font-semibold text-sm")
                status_chip(attempt.status)
                ui.label(
                    format_duration(duration_ms(attempt.started_at, attempt.finished_at))
                ).classes("sp-muted text-sm")
            rows: list[tuple[str, Callable[[], Any] | str, str]] = [
                ("Queued", lambda: time_label(attempt.queued_at), ""),
                ("Started", lambda: time_label(attempt.started_at), ""),
                ("Finished", lambda: time_label(attempt.finished_at), ""),
            ]
            if attempt.retry_until:
                rows.append(("Retry wait until", lambda: time_label(attempt.retry_until), ""))
            _kv(rows)
            if attempt.error:
                ui.label(attempt.error).classes("sp-mono text-red-600 text-sm").style(
                    "white-space: pre-wrap; overflow-wrap: anywhere"
                )

    def _children(self, node_id: str) -> None:
        """The node's child runs: status, a link, workflow and duration each."""
        children = self.children
        if children is None or not children.count(node_id):
            return
        items = children.is_map(node_id)
        _section(f"{'Items' if items else 'Child runs'} ({children.count(node_id):,})")
        summary = self.model.child_summaries.get(node_id)
        if summary:
            ui.label(summary).classes("text-sm").mark("panel-children-summary")
        shown = children.of_node(node_id)[:MAX_CHILDREN_SHOWN]
        with ui.element("table").classes("sp-children text-sm").mark("panel-children"):
            for child in shown:
                child_id = child["run_id"]
                # An item is named by its index (its workflow is the map's, for all of
                # them); another child by its workflow.
                name = (
                    child["parent_node_id"]
                    if items
                    else f"{child['workflow_name']} v{child['workflow_version']}"
                )
                with ui.element("tr"):
                    with ui.element("td"):
                        status_chip(child["status"])
                    with ui.element("td").classes("sp-mono"):
                        ui.link(name, run_href(child_id)).tooltip(f"open run {child_id}").mark(
                            f"panel-child-{child_id}"
                        )
                    with ui.element("td").classes("sp-mono sp-muted"):
                        ui.label(child_id[:8])
                    with ui.element("td"):
                        self._duration(
                            child.get("started_at"), child.get("finished_at"), child["status"]
                        )
                    with ui.element("td"):
                        if child.get("error"):
                            ui.label(child["error"].splitlines()[0][:120]).classes(
                                "text-red-600 text-xs"
                            ).tooltip(child["error"][:1000])
        more = children.count(node_id) - len(shown)
        if more > 0:
            ui.label(f"… {more:,} more: see the trace").classes("sp-muted text-xs")

    def _policy(self, node_id: str) -> None:
        node_spec = spec_nodes(self._spec or {}).get(node_id)
        if node_spec is None:
            return  # not fetched, not found, or a node made at run time
        _section("Retry policy and resources")
        _kv([(label, value, "") for label, value in policy_rows(node_spec, self._spec or {})])

    def _calls(self, node_id: str, attempts: list[Attempt]) -> None:
        fetched = self._fetched_calls.get(node_id, {})
        per_attempt = [
            (a.attempt, merge_calls(a.calls, fetched.get(a.attempt, []))) for a in attempts
        ]
        if not any(calls for _, calls in per_attempt):
            return
        _section("Calls")
        for number, calls in per_attempt:
            if not calls:
                continue
            if len(attempts) > 1:
                ui.label(f"attempt {number}").classes("text-xs sp-muted")
            for event in calls[:MAX_CALLS_SHOWN]:
                self._call(event)
            if len(calls) > MAX_CALLS_SHOWN:
                ui.label(f"… {len(calls) - MAX_CALLS_SHOWN:,} more calls: see the trace").classes(
                    "sp-muted text-xs"
                )

    @staticmethod
    def _call(event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        ms = call_duration_ms(data)
        caption = " · ".join(
            p for p in (event["kind"], format_duration(ms) if ms is not None else "") if p
        )
        expansion = (
            ui.expansion(call_name(event), caption=caption, icon="build")
            .classes("w-full sp-card")
            .props("dense")
            .mark(f"call-{event['seq']}")
        )
        built = False

        def build(opened: bool) -> None:  # the JSON of a call is built when first opened
            nonlocal built
            if not opened or built:
                return
            built = True
            with expansion:
                if data.get("error"):
                    ui.label(str(data["error"])).classes("sp-mono text-red-600 text-sm")
                json_view(data.get("arguments"), label="arguments")
                json_view(data.get("result"), label="result")
                rest = {k: v for k, v in data.items() if k not in ("name", "arguments", "result")}
                with ui.row().classes("gap-3 text-xs sp-muted"):
                    time_label(event.get("ts"))
                    ui.label(f"seq {event['seq']}")
                if rest:
                    json_view(rest, label="timing and other data", expand_depth=1)

        expansion.on_value_change(lambda e: build(bool(e.value)))
