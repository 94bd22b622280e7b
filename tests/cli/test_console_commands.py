"""``statepipe ui`` and ``statepipe up``, run for real: ``python -m statepipe ...`` in
subprocesses, their console fetched over HTTP (its pages are tested in tests/ui; here
only that ``/`` answers), ``up`` stopped with SIGTERM and checked to leave no process."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sp_cli import REPO, cli, free_port

from statepipe.client import Client

#: Seconds a command gets to print a line it is waiting for (a first embedded Postgres
#: runs initdb).
LINE_TIMEOUT_S = 60.0


class Lines:
    """A child's stdout read on a thread, so a line can be waited for with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        stream = proc.stdout

        def read() -> None:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
            self._lines.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float = LINE_TIMEOUT_S) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on stdout within {timeout}s") from None
        if line is None:
            raise AssertionError(f"stdout closed; exit status {self.proc.wait(10)}")
        return line


def spawn(
    children: list[subprocess.Popen[str]], env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[str], Lines]:
    """``statepipe ARGS`` in the background (stopped at teardown by `children`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "statepipe", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    children.append(proc)
    return proc, Lines(proc)


def get(url: str, timeout: float = 20.0) -> int:
    """The HTTP status of GET `url`, retried until it answers or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str]:
    """SIGTERM; its exit status and stderr, within `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = proc.communicate(timeout=timeout)
    assert time.monotonic() - started < timeout
    return proc.returncode, err


@pytest.fixture
def plain_env() -> dict[str, str]:
    """The environment without statepipe's own settings (for --help)."""
    drop = ("STATEPIPE_SERVER", "STATEPIPE_DATABASE_URL", "STATEPIPE_PATH")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A $STATEPIPE_HOME of its own, for `up`'s embedded Postgres.

    Outside pytest's temp root: the embedded Postgres runs as another user when the
    tests run as root, and that user must reach its folder.
    """
    home = Path(tempfile.mkdtemp(prefix="statepipe-test-up-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("command", ["ui", "up"])
def test_ui_and_up_explain_themselves(plain_env: dict[str, str], command: str) -> None:
    result = cli(plain_env, command, "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--open"):
        assert flag in result.stdout
    assert "console" in result.stdout
    extra = ("--server",) if command == "ui" else ("--demo", "--grpc-port", "--path")
    for flag in extra:
        assert flag in result.stdout


def test_ui_serves_the_console_of_a_running_server(
    server: Any, env: dict[str, str], children: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc, lines = spawn(children, env, "ui", "--server", server.address, "--port", str(port))
    assert lines.next(timeout=20) == f"console: http://127.0.0.1:{port}"
    assert get(f"http://127.0.0.1:{port}/") == 200
    code, err = stop(proc)
    assert code == 0, err
    assert "warning" not in err and "error" not in err, err


def test_ui_starts_while_the_server_is_not_up_yet(
    env: dict[str, str], children: list[subprocess.Popen[str]]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    port = free_port()
    proc, lines = spawn(children, env, "ui", "--server", nowhere, "--port", str(port))
    assert lines.next(timeout=20) == f"console: http://127.0.0.1:{port}"
    assert get(f"http://127.0.0.1:{port}/") == 200
    code, err = stop(proc)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert f"cannot reach the statepipe server at {nowhere}" in warnings[0]


def _processes_using(home: Path) -> list[psutil.Process]:
    """Processes whose command line names `home` (the embedded Postgres under it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(home) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_up_demo_serves_everything_and_sigterm_leaves_nothing_behind(
    plain_env: dict[str, str], private_home: Path, children: list[subprocess.Popen[str]]
) -> None:
    env = dict(plain_env, STATEPIPE_HOME=str(private_home))
    port = free_port()
    proc, lines = spawn(children, env, "up", "--demo", "--port", str(port), "--grpc-port", "0")
    first = lines.next()
    assert first.startswith("statepipe server listening on 127.0.0.1:"), first
    address = first.rsplit(" ", 1)[1]
    assert lines.next(timeout=30) == f"console: http://127.0.0.1:{port}"
    assert get(f"http://127.0.0.1:{port}/") == 200

    with Client(address) as client:
        names = {w.name for w in client.list_workflows()}
        assert {"montecarlo", "etl", "agent", "storyteller"} <= names, names
        deadline = time.monotonic() + 30
        while len(demo := client.list_runs(labels={"demo": "true"})) < 6:
            assert time.monotonic() < deadline, "no demo runs"
            time.sleep(0.1)
        assert {r.workflow_name for r in demo} == {"montecarlo", "etl", "agent", "storyteller"}
    # Every process `up` has: its children, and the embedded Postgres (a daemon of its own).
    ours = psutil.Process(proc.pid).children(recursive=True) + _processes_using(private_home)
    assert any("postgres" in p.name() for p in ours), ours

    code, err = stop(proc)
    assert code == 0, err
    assert "registered examples: agent@1, etl@1, montecarlo@1, storyteller@1" in err, err
    assert "Traceback" not in err, err
    _, alive = psutil.wait_procs(ours, timeout=5)
    assert not alive, alive
    assert not _processes_using(private_home)


@pytest.mark.parametrize("command", ["ui", "up"])
def test_a_console_port_in_use_is_one_error_line_and_exit_3(
    env: dict[str, str], command: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # `ui` is not kept waiting for a server; `up` takes none.
        other = ["--server", "127.0.0.1:1"] if command == "ui" else ["--grpc-port", "0"]
        result = cli(env, command, "--port", str(port), *other)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: cannot serve the console on 127.0.0.1:{port}: the port is in use "
        "(choose another with --port)"
    ]
