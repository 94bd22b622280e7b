"""What an unknown address or an unknown run shows: a page in the frame, not a crash."""

from __future__ import annotations

from nicegui import app, ui
from starlette.requests import Request
from starlette.responses import Response

from ui.console import Console
from ui.frame import frame


def not_found(console: Console, what: str, detail: str = "") -> None:
    """Fills the current page with a not-found message (called inside a page)."""
    with frame(console, "Not found"):
        with ui.column().classes("items-center w-full mt-16 gap-2").mark("not-found"):
            ui.icon("search_off", size="64px").classes("sp-muted")
            ui.label(f"{what} not found").classes("text-2xl font-semibold")
            if detail:
                ui.label(detail).classes("sp-muted sp-mono")
            with ui.row().classes("gap-4 mt-2"):
                ui.link("All runs", "/")
                ui.link("Workflows", "/workflows")


def register(console: Console) -> None:
    @app.exception_handler(404)
    async def _missing(request: Request, exc: Exception) -> Response:
        # Any other path: the same page, with HTTP status 404.
        from nicegui import Client

        with Client(ui.page(""), request=request) as client:
            not_found(console, "Page", request.url.path)
        return client.build_response(request, 404)
