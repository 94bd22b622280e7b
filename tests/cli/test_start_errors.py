"""What a user sees when something around a command is off, through the real
CLI: a flow's folder holding folders named like statepipe's packages, a bad
--database-url, a port in use, a bare `statepipe`."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from sp_cli import REPO, cli

SHADOW = 'raise ImportError("this folder shadows the installed package")\n'


def test_packages_named_like_statepipes_next_to_the_flow_do_not_shadow_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(REPO / "examples" / "montecarlo.py", flows / "montecarlo.py")
    for package in ("control_plane", "core_rs"):
        (flows / package).mkdir()
        (flows / package / "__init__.py").write_text(SHADOW)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli(env, "run", str(flows / "montecarlo.py"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "SUCCEEDED" in result.stderr
    assert '"pi"' in result.stdout


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("postgresql://x@127.0.0.1:1/db", "Connection refused"),
        ("foo", 'missing "=" after "foo"'),
    ],
)
def test_a_bad_database_url_fails_at_once_with_its_cause(
    env: dict[str, str], url: str, cause: str
) -> None:
    started = time.monotonic()
    result = cli(env, "--database-url", url, "ls", timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert elapsed < 10, elapsed
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: cannot start the local control plane: cannot connect to the database: "
    )
    assert cause in lines[0]
    assert "WARNING" not in result.stderr


def test_a_server_on_a_port_in_use_says_so_in_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            env, "server", "--listen", f"127.0.0.1:{port}", "--log-level", "warning", timeout=60
        )
    assert result.returncode == 3, result.stderr
    assert "event writer" not in result.stderr
    assert "add_port" not in result.stderr
    cause = f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert result.stderr.splitlines() == [f"error: cannot start the server: {cause}"]
    assert result.stdout == ""


def test_bare_statepipe_prints_the_help(env: dict[str, str]) -> None:
    helped = cli(env, "--help")
    assert helped.returncode == 0, helped.stderr
    result = cli(env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == helped.stdout
    assert result.stderr.startswith("Usage: statepipe [OPTIONS] COMMAND [ARGS]...\n")
    assert "\nCommands:\n" in result.stderr
    assert "error:" not in result.stderr
