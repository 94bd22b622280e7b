"""Running the real ``statepipe`` CLI in subprocesses, as a user types it
(importable as sp_cli; the fixtures that go with it are in tests/cli/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: The repository root: commands run from here unless a test says otherwise,
#: as the README puts a user there.
REPO = Path(__file__).resolve().parents[2]


def run_command(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cli(
    env: dict[str, str], *args: str, cwd: Path = REPO, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m statepipe ...`` from `cwd` (the repository root unless told)."""
    return run_command([sys.executable, "-m", "statepipe", *args], env, cwd, timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
