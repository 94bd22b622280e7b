"""Console fixtures: NiceGUI's simulated `user` against a real control plane.

`console_user` registers the console's pages for the `server` fixture's control
plane (embedded Postgres, loopback port 0) and yields a nicegui.testing.User.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nicegui import app, core, ui
from nicegui.storage import Storage
from nicegui.testing.general import nicegui_reset_globals, prepare_simulation
from nicegui.testing.user import User
from sp_console import CHROMIUM, CHROMIUM_ARGS, ConsoleProcess

# Per-browser storage of simulated users goes to a temporary folder, not ./.nicegui
# (what nicegui.testing's plugin does; a plugin can only be named in the top conftest).
Storage.path = Path(tempfile.mkdtemp(prefix="statepipe-nicegui-storage-")).resolve()
atexit.register(shutil.rmtree, Storage.path, ignore_errors=True)
app.storage = Storage()


@contextlib.asynccontextmanager
async def console_user_of(address: str) -> AsyncIterator[User]:
    """A simulated browser user of a console wired to the control plane at `address`."""
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


@pytest.fixture
async def console_user(server) -> AsyncIterator[User]:
    """A simulated browser user of a console wired to `server`."""
    async with console_user_of(server.address) as user:
        yield user


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
    tab.on("pageerror", lambda err: errors.append(f"{tab.url}: {err.stack or err}"))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
