"""The live log of a run (or of one node): events as they happen.

Tokens of a streaming node join into one growing text: each flush appends only the
new piece as a span, so a long answer is never re-sent. Log lines are coloured by
level; node status changes, tool and API calls are inline and expandable. Follow
mode keeps the newest line in view until the person scrolls up (decided in the
browser, where the scroll happens). Search and the node / kind filters re-render
from the entries kept here, the newest ``max_entries`` of them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from nicegui import ui

from ui.run_model import RunModel
from ui.theme import status_color

# The view keeps this many times max_entries (for search); the page shows max_entries.
KEEP_FACTOR = 5
KINDS = ("log", "token", "node_status", "run_status", "tool_call", "api_call", "output", "other")


# Bidirectional controls would reorder the rest of the line (a node's text is not
# trusted): they are shown as their code points instead.
_BIDI = {c: f"<U+{c:04X}>" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _esc(text: str) -> str:
    return html.escape(text.translate(_BIDI), quote=True)


def _time(ts: str | None) -> str:
    if not ts:
        return '<span class="sp-log-ts"></span>'
    return f'<span class="sp-log-ts sp-time sp-muted" data-ts="{ts}">{ts[11:23]}</span>'


def _node(node_id: str) -> str:
    if not node_id:
        return '<span class="sp-log-node sp-muted">run</span>'
    return f'<span class="sp-log-node" title="{_esc(node_id)}">{_esc(node_id)}</span>'


def _pre(body: Any, cls: str = "") -> str:
    text = (
        body
        if isinstance(body, str)
        else json.dumps(body, indent=2, ensure_ascii=False, default=str)
    )
    if len(text) > 20_000:
        text = text[:20_000] + "\n… (cut; open the node for all of it)"
    return f'<pre class="sp-log-pre {cls}">{_esc(text)}</pre>'


def _line(head: str, summary: str, details: str | None) -> str:
    """One entry: the head and summary on one line; details fold out below."""
    if details is None:
        return head + summary
    return f"<details><summary>{head}{summary}</summary>{details}</details>"


def render_event(event: dict[str, Any]) -> tuple[str, str]:
    """HTML of one event that is not a token, and its css class."""
    kind, data = event["kind"], event["data"] or {}
    head = _time(event["ts"]) + _node(event["node_id"])
    if kind == "log":
        level = event["level"] or "info"
        cls = {"error": "sp-log-error", "warning": "sp-log-warning", "debug": "sp-log-debug"}
        summary = f'<span class="sp-log-level">{_esc(level)}</span>{_esc(event["message"])}'
        return _line(head, summary, _pre(data) if data else None), cls.get(level, "")
    if kind in ("node_status", "run_status"):
        status = event["status"]
        attempt = f" · attempt {event['attempt']}" if event["attempt"] else ""
        summary = (
            f'<span class="sp-log-status" style="color:{status_color(status)}">'
            f"{_esc(status.lower().replace('_', ' '))}</span>{attempt}"
            + (f" — {_esc(event['message'])}" if event["message"] else "")
        )
        tb = data.get("traceback")
        cls = {"FAILED": "sp-log-error", "RETRY_WAIT": "sp-log-warning"}.get(status, "")
        return _line(head, summary, _pre(tb, "sp-log-error") if tb else None), cls
    if kind in ("tool_call", "api_call"):
        name = data.get("name") or data.get("url") or event["message"] or kind
        ms = data.get("duration_ms")
        timing = f" · {ms:.0f} ms" if isinstance(ms, int | float) else ""
        error = data.get("error")
        summary = (
            f'<span class="sp-log-call">{_esc(kind.replace("_", " "))}</span>'
            f"<b>{_esc(str(name))}</b>{timing}"
            + (f' <span class="sp-log-error">{_esc(str(error))}</span>' if error else "")
        )
        return _line(head, summary, _pre(data)), "sp-log-error" if error else ""
    if kind == "output":
        output = data.get("output")
        preview = json.dumps(output, ensure_ascii=False, default=str)
        preview = preview if len(preview) <= 120 else preview[:119] + "…"
        summary = (
            f'<span class="sp-log-call">output</span><span class="sp-muted">{_esc(preview)}</span>'
        )
        return _line(head, summary, _pre(output)), ""
    summary = f'<span class="sp-log-call">{_esc(kind)}</span>{_esc(event["message"])}'
    cls = "sp-log-error" if kind == "hook_error" else ""
    return _line(head, summary, _pre(data) if data else None), cls


class _Entry:
    """One line of the log, or the joined tokens of one node attempt."""

    __slots__ = (
        "attempt", "dropped", "element", "event", "kind", "node_id", "open", "pieces", "sent",
    )  # fmt: skip

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.kind = event["kind"]
        self.node_id = event["node_id"]
        self.attempt = event["attempt"]
        self.pieces: list[str] = []
        self.sent = 0  # pieces already in the browser
        self.dropped = False  # forgotten: older than what the view keeps
        self.open = self.kind == "token"
        self.element: ui.element | None = None

    def text(self) -> str:
        if self.kind == "token":
            return "".join(self.pieces)
        return f"{self.event['message']} {self.event['status']} {json.dumps(self.event['data'])}"


class LogView:
    """The log of ``model`` (only ``node_id``'s events when given)."""

    def __init__(
        self, model: RunModel, *, node_id: str | None = None, max_entries: int = 2000,
        height: str = "calc(100vh - 330px)",
    ) -> None:  # fmt: skip
        self.model = model
        self.node_filter = node_id
        self.max_entries = max_entries
        self.entries: list[_Entry] = []
        self.open_tokens: dict[tuple[str, int], _Entry] = {}
        self.search = ""
        self.kinds: set[str] = set()
        self.shown = 0
        self._build(height)
        self._add(model.events, render=False)
        self._render_all()
        model.on_events(self.events_added)

    def _build(self, height: str) -> None:
        with ui.row().classes("w-full items-center gap-2"):
            ui.input(placeholder="search the log").props(
                "dense outlined clearable debounce=300"
            ).classes("w-64").on_value_change(lambda e: self._set(search=e.value or "")).mark(
                "log-search"
            )
            if self.node_filter is None:
                nodes = {"": "all nodes", "run": "run only"} | {n: n for n in self.model.nodes}
                ui.select(nodes, value="", label="node", with_input=True).props(
                    "dense outlined options-dense"
                ).classes("w-48").on_value_change(lambda e: self._set(node=e.value or None)).mark(
                    "log-node"
                )
            ui.select(
                {k: k.replace("_", " ") for k in KINDS}, multiple=True, value=[], label="kinds"
            ).props("dense outlined use-chips options-dense").classes(
                "min-w-[160px]"
            ).on_value_change(lambda e: self._set(kinds=set(e.value or ()))).mark("log-kinds")
            ui.space()
            self.count_label = ui.label().classes("sp-muted text-xs")
            self.follow = ui.switch("follow", value=True).props("dense").mark("log-follow")
            self.follow.on_value_change(self._follow_changed)
        self.box = (
            ui.element("div")
            .classes("sp-log sp-mono w-full")
            .style(f"height: {height}; min-height: 240px; overflow-y: auto")
            .props('data-follow="1"')
            .mark("log-box")
        )
        # The browser turns follow off when the person scrolls up (theme.py's sp.wireLog).
        ui.on(f"sp-follow-{self.box.id}", lambda e: self.follow.set_value(bool(e.args)))
        self.view_node: str | None = self.node_filter

    def _follow_changed(self, e: Any) -> None:
        self.box.props(f'data-follow="{"1" if e.value else "0"}"')

    # -- filters

    def _set(self, **change: Any) -> None:
        if "search" in change:
            self.search = change["search"].lower()
        if "node" in change:
            self.view_node = change["node"]
        if "kinds" in change:
            self.kinds = change["kinds"]
        self._render_all()

    def _visible(self, entry: _Entry) -> bool:
        if self.view_node is not None:
            if self.view_node == "run" and entry.node_id:
                return False
            if self.view_node not in ("run",) and entry.node_id != self.view_node:
                return False
        if self.kinds:
            kind = entry.kind if entry.kind in KINDS else "other"
            if kind not in self.kinds:
                return False
        return (
            not self.search
            or self.search in entry.text().lower()
            or (self.search in entry.node_id.lower())
        )

    # -- entries

    def events_added(self, events: list[dict[str, Any]]) -> None:
        if self.box.is_deleted:
            self.detach()
            return
        self._add(events, render=True)

    def detach(self) -> None:
        """Stops following the model (the view is being replaced)."""
        self.model.off_events(self.events_added)

    def _add(self, events: Iterable[dict[str, Any]], *, render: bool) -> None:
        touched: dict[int, _Entry] = {}
        for event in events:
            if self.node_filter is not None and event["node_id"] != self.node_filter:
                continue
            if event["kind"] == "token":
                key = (event["node_id"], event["attempt"])
                entry = self.open_tokens.get(key)
                if entry is None:
                    entry = _Entry(event)
                    self.open_tokens[key] = entry
                    self.entries.append(entry)
                entry.pieces.append(event["message"])
                touched[id(entry)] = entry
                continue
            if event["kind"] == "node_status":
                # A status change ends that attempt's token run.
                self.open_tokens.pop((event["node_id"], event["attempt"]), None)
            entry = _Entry(event)
            self.entries.append(entry)
            touched[id(entry)] = entry
        keep = self.max_entries * KEEP_FACTOR
        if len(self.entries) > keep:
            # Forget the oldest (they leave the page too); search covers what is kept.
            dropped, self.entries = self.entries[:-keep], self.entries[-keep:]
            for entry in dropped:
                entry.dropped = True
                if entry.element is not None:
                    entry.element.delete()
                    entry.element = None
                    self.shown -= 1
                if entry.kind == "token":
                    self.open_tokens.pop((entry.node_id, entry.attempt), None)
        if render:
            for entry in touched.values():
                if not entry.dropped:
                    self._render(entry)
            self._trim()
            self._count()

    def _render_all(self) -> None:
        self.box.clear()
        for entry in self.entries:
            entry.element = None
            entry.sent = 0
        self.shown = 0
        for entry in [e for e in self.entries if self._visible(e)][-self.max_entries :]:
            self._render(entry)
        self._count()

    def _render(self, entry: _Entry) -> None:
        if not self._visible(entry):
            return
        if entry.element is not None and entry.kind == "token":
            new = "".join(entry.pieces[entry.sent :])
            if new:
                with entry.element:
                    ui.html(_esc(new), sanitize=False, tag="span")
                entry.sent = len(entry.pieces)
            return
        if entry.element is not None:
            return
        with self.box:
            if entry.kind == "token":
                event = entry.event
                entry.element = ui.element("div").classes("sp-log-line sp-log-tokens")
                with entry.element:
                    ui.html(
                        _time(event["ts"]) + _node(event["node_id"])
                        + '<span class="sp-log-call">tokens</span>',
                        sanitize=False, tag="span",
                    )  # fmt: skip
                    ui.html(_esc("".join(entry.pieces)), sanitize=False, tag="span")
                entry.sent = len(entry.pieces)
            else:
                content, cls = render_event(entry.event)
                entry.element = ui.html(content, sanitize=False).classes(f"sp-log-line {cls}")
        self.shown += 1

    def _trim(self) -> None:
        if self.shown <= self.max_entries:
            return
        extra = self.shown - self.max_entries
        for entry in self.entries:
            if extra <= 0:
                break
            if entry.element is not None:
                entry.element.delete()
                entry.element = None
                extra -= 1
                self.shown -= 1

    def _count(self) -> None:
        total = len(self.entries)
        self.count_label.set_text(
            f"newest {self.shown:,} of {total:,} entries" if self.shown != total
            else f"{total:,} entries"
        )  # fmt: skip
