"""The shared layout: a header with navigation, the connection banner, dark mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import app, ui

from ui.console import Console
from ui.streams import Connection

_NAV = (("Runs", "/"), ("Workflows", "/workflows"))


@contextmanager
def frame(console: Console, title: str, *, active: str = "") -> Iterator[Connection]:
    """Builds the page frame and yields the page's :class:`Connection` (its streams
    report there, and the banner shows while the control plane is out of reach)."""
    ui.page_title(f"{title} · statepipe")
    dark = ui.dark_mode(None)  # None: follow the browser until the person picks one
    if _has_user_storage():
        # Remember the person's choice across pages and reloads.
        dark.bind_value(app.storage.user, "dark_mode")
    connection = Connection()
    with ui.header(elevated=False).classes("items-center gap-4 px-4 py-2 bg-slate-900 text-white"):
        with ui.link(target="/").classes("row items-center gap-1 text-white no-underline"):
            ui.icon("route", size="22px")
            ui.label("statepipe").classes("text-lg font-semibold")
        for name, href in _NAV:
            link = ui.link(name, href).classes("text-white no-underline opacity-80")
            if name == active:
                link.classes(remove="opacity-80", add="font-semibold underline underline-offset-8")
        ui.space()
        ui.label(console.server).classes("sp-mono text-xs opacity-60").tooltip(
            "the control plane this console talks to"
        )
        ui.button(
            icon="dark_mode", on_click=lambda: dark.set_value(not _is_dark(dark.value))
        ).props("flat round dense color=white").tooltip("dark / light")
    banner = ui.row().classes("w-full items-center gap-2 px-4 py-2 bg-amber-600 text-white text-sm")
    banner.props('data-testid="connection-banner"').mark("connection-banner")
    with banner:
        ui.spinner(size="sm", color="white")
        ui.label().bind_text_from(connection, "message")
    banner.bind_visibility_from(connection, "lost")
    with ui.column().classes("w-full max-w-[1600px] mx-auto p-4 gap-4"):
        yield connection


def _has_user_storage() -> bool:
    try:
        app.storage.user  # noqa: B018  (raises without a storage secret)
    except (AssertionError, RuntimeError):
        return False
    return True


def _is_dark(value: bool | None) -> bool:
    # None follows the browser; the toggle then picks the other one than light.
    return bool(value)
