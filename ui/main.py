"""Wiring: registers every page of the console against one control plane and serves it.

Each page is a module in ``ui/pages`` with a ``register(console)`` that adds its routes;
this is the only place that knows them all.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nicegui import app, ui
from nicegui.storage import Storage

from ui import theme
from ui.console import Console
from ui.pages import not_found, run_detail, runs, workflows


def setup(server: str) -> Console:
    """Registers the console's pages for the control plane at ``server`` (HOST:PORT).

    Returns:
        The app-wide :class:`Console`; its client is closed when the app shuts down.
    """
    console = Console(server)
    theme.add_shared_head()
    runs.register(console)
    run_detail.register(console)
    workflows.register(console)
    not_found.register(console)
    app.on_shutdown(console.close)
    return console


def run_console(
    server: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    show: bool = False,
) -> None:
    """Serves the console until interrupted (blocking; runs NiceGUI's server).

    Args:
        server: The control plane's gRPC address, HOST:PORT.
        host: Interface the console listens on.
        port: Port the console listens on.
        show: Open a browser tab once it is up.
    """
    setup(server)
    if "NICEGUI_STORAGE_PATH" not in os.environ:
        # Per-browser settings live under $STATEPIPE_HOME, not in the working directory.
        home = Path(os.environ.get("STATEPIPE_HOME") or "~/.statepipe").expanduser()
        Storage.path = home / "console"
    Storage.path.mkdir(parents=True, exist_ok=True)  # NiceGUI makes only the last level
    ui.run(
        # Signs the per-browser storage that keeps the dark/light choice; a new one
        # per process is enough for that (STATEPIPE_UI_SECRET keeps it across restarts).
        storage_secret=os.environ.get("STATEPIPE_UI_SECRET") or secrets.token_hex(16),
        host=host,
        port=port,
        title="statepipe",
        favicon=theme.FAVICON,
        dark=None,  # follow the browser; the toggle in the header overrides it
        reload=False,
        show=show,
        show_welcome_message=False,
        uvicorn_logging_level="warning",
        reconnect_timeout=10.0,
    )
