"""The console in its own process, and where browser tests leave screenshots
(importable as sp_console; used by tests/ui and bench/)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def artifacts_dir() -> Path:
    """Where browser tests leave screenshots (STATEPIPE_TEST_ARTIFACTS, or
    test-artifacts/ui in the repository)."""
    root = Path(os.environ.get("STATEPIPE_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path = root / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleProcess:
    """The console in its own process (as `statepipe ui` runs it), against `server`."""

    def __init__(self, server_address: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "import sys; from ui import run_console; "
            f"run_console({server_address!r}, host='127.0.0.1', port={self.port})"
        )
        # NiceGUI takes a PYTEST_CURRENT_TEST in its environment for its own screen tests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", code],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("console did not answer within 60 s")
            time.sleep(0.2)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""


@contextlib.asynccontextmanager
async def console_user_of(address: str) -> AsyncIterator[Any]:
    """A simulated browser user of a console wired to the control plane at `address`."""
    from nicegui import core, ui
    from nicegui.testing.general import nicegui_reset_globals, prepare_simulation
    from nicegui.testing.user import User

    from ui.main import setup

    # The console's not-found page replaces NiceGUI's 404 handler, which
    # nicegui_reset_globals does not restore: put it back for the next test.
    handlers = dict(core.app.exception_handlers)
    with nicegui_reset_globals():
        os.environ["NICEGUI_USER_SIMULATION"] = "true"
        try:
            prepare_simulation()
            setup(address)
            ui.run(storage_secret="test secret")
            async with core.app.router.lifespan_context(core.app):
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(core.app), base_url="http://test"
                ) as http:
                    yield User(http)
        finally:
            os.environ.pop("NICEGUI_USER_SIMULATION", None)
            core.app.exception_handlers.clear()
            core.app.exception_handlers.update(handlers)


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Awaits until ``check()`` returns something truthy (an AssertionError, KeyError or
    StopIteration from it counts as not yet) and returns it; fails after ``timeout``."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, StopIteration):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def finished(client: Any, run_id: str) -> None:
    """Awaits the end of a run by following its events (an AsyncClient's watch)."""
    async for _ in client.watch(run_id):
        pass
