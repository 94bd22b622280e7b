"""Console fixtures: NiceGUI's simulated `user` against a real control plane.

`console_user` registers the console's pages for the `server` fixture's control
plane (embedded Postgres, loopback port 0) and yields a nicegui.testing.User.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nicegui import app
from nicegui.storage import Storage
from nicegui.testing.user import User
from sp_console import CHROMIUM, CHROMIUM_ARGS, ConsoleProcess, console_user_of

# Per-browser storage of simulated users goes to a temporary folder, not ./.nicegui
# (what nicegui.testing's plugin does; a plugin can only be named in the top conftest).
Storage.path = Path(tempfile.mkdtemp(prefix="statepipe-nicegui-storage-")).resolve()
atexit.register(shutil.rmtree, Storage.path, ignore_errors=True)
app.storage = Storage()


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
