"""Fixtures of the CLI tests: an environment of its own per test, and child
processes that are stopped at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The user's environment with its own $STATEPIPE_HOME and a fresh database
    (STATEPIPE_DATABASE_URL), and none of the settings a test did not ask for."""
    out = dict(os.environ, STATEPIPE_HOME=str(tmp_path / "home"))
    out["STATEPIPE_DATABASE_URL"] = database_url
    for name in ("STATEPIPE_SERVER", "STATEPIPE_PATH", "NO_COLOR", "FORCE_COLOR"):
        out.pop(name, None)
    return out


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; each gets SIGTERM (then SIGKILL) at teardown."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
