"""An inline, read-only JSON viewer: collapsible, monospace, with a copy button.

Objects and arrays use ``ui.json_editor`` in tree mode (read-only, no menus), which
folds in the browser; ``expand_depth`` levels are open at first. A value whose JSON
is larger than :data:`MAX_TREE_CHARS` is shown as truncated text instead, because the
editor re-sends its whole content with every update and builds a node per value.
"""

from __future__ import annotations

import html
import json
from typing import Any

from nicegui import ui

# Above this many characters of indented JSON the viewer shows text, not a tree: the
# editor builds reactive state per value in the browser (a 1,400-key output held the
# page for seconds), while a <pre> of the same text costs nothing.
MAX_TREE_CHARS = 20_000
# Text beyond this is cut (the copy button still copies all of it).
MAX_TEXT_CHARS = 200_000


def to_json(value: Any) -> str:
    """``value`` as indented JSON; what the copy button copies."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def json_view(value: Any, *, label: str = "", expand_depth: int = 2) -> ui.element:
    """Shows ``value`` (any JSON value) inline.

    Args:
        value: The value; None shows as a muted "null".
        label: A caption above the value (also the copy notification's name).
        expand_depth: How many levels of objects and arrays are open at first.

    Returns:
        The viewer's container.
    """
    text = to_json(value)
    # Monospace for the value only: `.sp-mono *` would also hit the icon font's ligatures.
    with ui.column().classes("sp-json w-full gap-1") as box:
        with ui.row().classes("w-full items-center gap-1 no-wrap"):
            if label:
                ui.label(label).classes("sp-muted text-xs")
            ui.space()
            ui.button(icon="content_copy", on_click=lambda: _copy(text, label)).props(
                "flat dense round size=xs"
            ).tooltip("copy as JSON").mark("json-copy")
        if value is None:
            ui.label("null").classes("sp-mono sp-muted").mark("json-null")
        elif not isinstance(value, dict | list):
            ui.label(text).classes("sp-mono w-full break-all").style("white-space: pre-wrap").mark(
                "json-scalar"
            )
        elif len(text) > MAX_TREE_CHARS:
            shown = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n…"
            note = f"{len(text) / 1000:,.0f} KB of JSON, as text"
            if len(text) > MAX_TEXT_CHARS:
                note += f": the first {MAX_TEXT_CHARS // 1000} KB (copy takes all of it)"
            ui.label(note).classes("sp-muted text-xs").mark("json-truncated")
            ui.html(
                f'<pre class="sp-log-pre" style="margin:0">{html.escape(shown)}</pre>',
                sanitize=False,
            ).classes("sp-mono w-full").style("max-height: 420px; overflow: auto")
        else:
            editor = (
                ui.json_editor(
                    {
                        "content": {"json": value},
                        "readOnly": True,
                        "mainMenuBar": False,
                        "navigationBar": False,
                        "statusBar": False,
                        "mode": "tree",
                    }
                )
                .classes("sp-mono w-full sp-json-tree")
                .style("max-height: 420px; overflow: auto")
                .mark("json-tree")
            )
            # Open only the first levels: a deep value would otherwise unfold entirely.
            editor.run_editor_method(":collapse", "[]", "true")
            editor.run_editor_method(":expand", "[]", f"(path) => path.length < {expand_depth}")
    return box


def _copy(text: str, label: str) -> None:
    ui.clipboard.write(text)
    ui.notify(f"{label or 'JSON'} copied", timeout=1200)
