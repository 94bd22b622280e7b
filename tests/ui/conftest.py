"""Console fixtures: NiceGUI's simulated `user` against a real control plane.

`console_user` registers the console's pages for the `server` fixture's control
plane (embedded Postgres, loopback port 0) and yields a nicegui.testing.User.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nicegui import core, ui
from nicegui.testing.general import nicegui_reset_globals, prepare_simulation
from nicegui.testing.user import User

pytest_plugins = ["nicegui.testing.general_fixtures"]


@pytest.fixture
async def console_user(server) -> AsyncIterator[User]:
    """A simulated browser user of a console wired to `server`."""
    from ui.main import setup

    with nicegui_reset_globals():
        os.environ["NICEGUI_USER_SIMULATION"] = "true"
        try:
            prepare_simulation()
            setup(server.address)
            ui.run(storage_secret="test secret")
            async with core.app.router.lifespan_context(core.app):
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(core.app), base_url="http://test"
                ) as http:
                    yield User(http)
        finally:
            os.environ.pop("NICEGUI_USER_SIMULATION", None)


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
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", code],
            cwd=REPO,
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


@pytest.fixture
def console_process(server) -> Iterator[ConsoleProcess]:
    console = ConsoleProcess(server.address)
    yield console
    console.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A real headless Chromium (Debian's), driven by Playwright."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser tab at 1280x800."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
