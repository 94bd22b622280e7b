"""The statepipe console: a NiceGUI app that is a gRPC client of the control plane.

It talks to the control plane through :class:`statepipe.AsyncClient` only, and every
change reaches the browser because a server stream (WatchRuns, WatchRun) pushed it.

    from ui import run_console
    run_console("127.0.0.1:50051", port=8080)
"""

from ui.main import run_console, setup

__all__ = ["run_console", "setup"]
