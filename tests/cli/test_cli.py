"""The ``statepipe`` CLI, run for real: ``python -m statepipe ...`` in subprocesses.

Each test gets its own $STATEPIPE_HOME and a fresh database on the session's
Postgres (STATEPIPE_DATABASE_URL), so every command runs its in-process
control plane against it; one test leaves the URL out to cover the embedded
default. Workflows are small spec files written in tmp_path whose nodes come
from tests/support/sp_nodes.py (on PYTHONPATH through conftest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sp_cli import cli
from sp_testing import layered_nodes

from statepipe.cli import main

RUN_KEYS = (
    "run_id workflow_name workflow_version status input output error labels idempotency_key"
    " created_at started_at finished_at updated_at last_seq node_counts usage parent_run_id"
    " parent_node_id nodes"
).split()
EVENT_KEYS = "run_id seq ts kind node_id attempt status message level data".split()


# ------------------------------------------------------------------ helpers


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """``statepipe run ...`` in the background; returns it and the run id it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "statepipe", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    if not run_id:
        proc.kill()
        raise AssertionError(f"no run id: {proc.communicate()}")
    return proc, run_id


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def inspect(env: dict[str, str], run_id: str) -> dict[str, Any]:
    return json.loads(ok(cli(env, "inspect", run_id, "--json")).stdout)


def wait_until(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write(path: Path, spec: dict[str, Any]) -> str:
    path.write_text(json.dumps(spec))
    return str(path)


def add_spec(tmp_path: Path) -> str:
    """add(a, 2) -> echo, plus an independent noop; input {"a": integer} required."""
    (tmp_path / "add.yaml").write_text(
        """
name: adder
version: "1"
input_schema:
  type: object
  properties: {a: {type: integer}}
  required: [a]
nodes:
  - id: add
    kind: python
    params: {callable: "sp_nodes:add", args: {a: "{{ input.a }}", b: 2}}
  - id: echo
    kind: python
    after: [add]
    params: {callable: "sp_nodes:echo", args: {total: "{{ nodes.add.output }}"}}
  - id: other
    kind: noop
    params: {value: 5}
"""
    )
    return str(tmp_path / "add.yaml")


def layered_spec(tmp_path: Path, marks: Path, layers: int, width: int, seconds: float) -> str:
    nodes = layered_nodes(marks, layers, width, seconds)
    return write(tmp_path / "layered.json", {"name": "layered", "nodes": nodes})


def runs_of(marks: Path) -> dict[str, int]:
    """How many times each node ran (sp_nodes.record writes a line per attempt)."""
    return {
        p.name.removesuffix(".runs"): len(p.read_text().splitlines()) for p in marks.glob("*.runs")
    }


# -------------------------------------------------------------------- tests


def test_help_reads_well() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "statepipe", "--help"], capture_output=True, text=True, timeout=30
    )
    assert top.returncode == 0
    for command in ("run", "resume", "inspect", "ls", "pause", "interrupt", "cancel", "logs"):
        assert f"\n  {command} " in top.stdout, command
    assert "--server" in top.stdout and "STATEPIPE_HOME" in top.stdout
    runner = CliRunner()
    commands = ["run", "resume", "inspect", "ls", "pause", "interrupt", "cancel", "logs"]
    for command in [*commands, "server", "up", "ui"]:
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert result.output.startswith(f"Usage: main {command}") or "Usage:" in result.output
        assert len(result.output.splitlines()) > 4
    run_help = runner.invoke(main, ["run", "--help"]).output
    for flag in ("--input", "--batch", "--concurrency", "--output", "--dry-run", "--verbose"):
        assert flag in run_help
    for flag in ("--inspect", "--executor", "--label", "--detach", "paths.txt"):
        assert flag in run_help
    up_help = runner.invoke(main, ["up", "--help"]).output
    for flag in ("--demo", "--host", "--port", "--grpc-port", "--path", "console"):
        assert flag in up_help


def test_run_then_inspect_json(env: dict[str, str], tmp_path: Path) -> None:
    spec = add_spec(tmp_path)
    result = ok(cli(env, "run", spec, "--input", '{"a": 40}', "--label", "team=cli"))
    lines = result.stdout.splitlines()
    run_id = lines[0]
    assert len(run_id) >= 16 and " " not in run_id
    assert json.loads(lines[1]) == {"echo": {"total": 42}, "other": 5}
    assert f"run {run_id} SUCCEEDED" in result.stderr

    run = inspect(env, run_id)  # another process, the same database
    assert list(run) == RUN_KEYS
    assert run["status"] == "SUCCEEDED"
    assert run["workflow_name"] == "adder" and run["workflow_version"] == "1"
    assert run["input"] == {"a": 40}
    assert run["labels"] == {"team": "cli"}
    nodes = {n["node_id"]: n for n in run["nodes"]}
    assert set(nodes) == {"add", "echo", "other"}
    assert all(n["status"] == "SUCCEEDED" and n["attempt"] == 1 for n in nodes.values())
    assert nodes["add"]["output"] == 42
    assert nodes["echo"]["output"] == {"total": 42}
    assert nodes["other"]["output"] == 5

    # The file target was registered: its name runs it too, and --json prints the run.
    again = ok(cli(env, "run", "adder", "--input", "@" + str(_input_file(tmp_path)), "--json"))
    runs = [json.loads(line) for line in again.stdout.splitlines()]
    assert len(runs) == 1 and runs[0]["status"] == "SUCCEEDED"
    assert runs[0]["output"] == {"echo": {"total": 3}, "other": 5}

    human = ok(cli(env, "inspect", run_id)).stdout
    assert "SUCCEEDED" in human and "add" in human and "team=cli" in human


def _input_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.json"
    path.write_text('{"a": 1}')
    return path


def test_json_outputs_parse(env: dict[str, str], tmp_path: Path) -> None:
    spec = add_spec(tmp_path)
    run_id = ok(cli(env, "run", spec, "--input", '{"a": 1}')).stdout.splitlines()[0]
    ok(cli(env, "run", spec, "--input", '{"a": 2}'))

    listed = json.loads(ok(cli(env, "ls", "--json")).stdout)
    assert len(listed) == 2 and all(list(r) == RUN_KEYS for r in listed)
    assert all(r["nodes"] == [] and r["status"] == "SUCCEEDED" for r in listed)
    assert json.loads(ok(cli(env, "ls", "--json", "--limit", "1")).stdout)[0]["run_id"] != run_id
    assert json.loads(ok(cli(env, "ls", "--json", "--status", "failed")).stdout) == []
    assert len(json.loads(ok(cli(env, "ls", "--json", "--workflow", "adder")).stdout)) == 2
    assert json.loads(ok(cli(env, "ls", "--json", "--workflow", "nope")).stdout) == []

    events = [
        json.loads(line) for line in ok(cli(env, "logs", run_id, "--json")).stdout.splitlines()
    ]
    assert events and all(list(e) == EVENT_KEYS for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "run_status" and events[-1]["status"] == "SUCCEEDED"
    later = ok(cli(env, "logs", run_id, "--json", "--after", "5")).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in later] == list(range(6, len(events) + 1))
    followed = ok(cli(env, "logs", run_id, "--json", "--follow")).stdout.splitlines()
    assert [json.loads(line) for line in followed] == events
    plain = ok(cli(env, "logs", run_id, "--kind", "log")).stdout
    assert "adding 1 and 2" in plain and "node_status" not in plain

    table = ok(cli(env, "ls")).stdout.splitlines()
    assert table[0].split()[:3] == ["RUN", "ID", "WORKFLOW"]
    assert any(line.startswith(run_id) for line in table)


def test_killed_cli_is_resumed_without_rerunning_succeeded_nodes(
    env: dict[str, str], tmp_path: Path, database_url: str, children: list[Any]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = layered_spec(tmp_path, marks, layers=6, width=3, seconds=0.3)
    proc, run_id = start(env, spec)
    children.append(proc)
    # Layer 2 has started in every chain: layers 0 and 1 succeeded.
    wait_until(
        lambda: all((marks / f"n2_{i}.runs").exists() for i in range(3)), what="layer 2 to start"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT node_id FROM nodes WHERE run_id = %s AND status = 'SUCCEEDED'", (run_id,)
        ).fetchall()
    succeeded_before = {r[0] for r in rows}
    assert len(succeeded_before) >= 3, succeeded_before

    result = ok(cli(env, "resume", run_id))
    assert f"run {run_id} SUCCEEDED" in result.stderr
    run = inspect(env, run_id)
    assert run["status"] == "SUCCEEDED"
    assert all(n["status"] == "SUCCEEDED" for n in run["nodes"])
    runs = runs_of(marks)
    assert len(runs) == 18
    assert all(runs[node_id] == 1 for node_id in succeeded_before), runs
    # Nodes ran at most twice: once before the kill (cut off, or finished but
    # not yet committed when the process died) and once after.
    assert all(count <= 2 for count in runs.values()), runs


PY_FLOW = """
import time
from pathlib import Path

from statepipe import Workflow

MARKS = Path(__file__).with_name("marks")
wf = Workflow("pyflow")


def _step(ctx, seconds):
    with (MARKS / f"{ctx.node_id}.runs").open("a") as f:
        f.write(f"{ctx.attempt}\\n")
    time.sleep(seconds)
    return ctx.node_id


@wf.node(args={"seconds": 0.1})
def first(ctx, seconds):
    return _step(ctx, seconds)


@wf.node(after=["first"], args={"seconds": 1.5})
def second(ctx, seconds):
    return _step(ctx, seconds)


@wf.node(after=["second"], args={"seconds": 0.1})
def third(ctx, seconds):
    return _step(ctx, seconds)
"""


def test_a_python_target_is_resumed_by_a_new_process(
    env: dict[str, str], tmp_path: Path, children: list[Any]
) -> None:
    project = tmp_path / "project"
    (project / "marks").mkdir(parents=True)
    (project / "cli_pyflow.py").write_text(PY_FLOW)
    marks = project / "marks"
    proc, run_id = start(env, str(project / "cli_pyflow.py"))
    children.append(proc)
    wait_until(lambda: (marks / "second.runs").exists(), what="the second node")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # Another directory: the module is found through $STATEPIPE_HOME/paths.txt.
    elsewhere = subprocess.run(
        [sys.executable, "-m", "statepipe", "resume", run_id],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads(elsewhere.stdout) == {"third": "third"}
    assert runs_of(marks) == {"first": 1, "second": 2, "third": 1}
    assert str(project) in (tmp_path / "home" / "paths.txt").read_text().splitlines()


def test_ctrl_c_interrupts_the_run_and_resume_finishes_it(
    env: dict[str, str], tmp_path: Path, children: list[Any]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = layered_spec(tmp_path, marks, layers=4, width=2, seconds=0.3)
    proc, run_id = start(env, spec, "--output", str(tmp_path / "out.jsonl"))
    children.append(proc)
    wait_until(lambda: (marks / "n1_0.runs").exists(), what="layer 1 to start")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"interrupted run {run_id}; resume with: statepipe resume {run_id}" in stderr
    assert inspect(env, run_id)["status"] == "INTERRUPTED"
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[-1]["type"] == "run" and lines[-1]["status"] == "INTERRUPTED"

    ok(cli(env, "resume", run_id))
    run = inspect(env, run_id)
    assert run["status"] == "SUCCEEDED"
    assert all(count <= 2 for count in runs_of(marks).values())
    assert all(runs_of(marks)[f"n0_{i}"] == 1 for i in range(2))


def test_controls_reach_the_process_that_owns_the_run(
    env: dict[str, str], tmp_path: Path, children: list[Any]
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = layered_spec(tmp_path, marks, layers=6, width=2, seconds=0.3)
    proc, run_id = start(env, spec)
    children.append(proc)
    wait_until(lambda: (marks / "n0_0.runs").exists(), what="the first node")

    assert ok(cli(env, "pause", run_id)).stdout.strip() == f"run {run_id} is PAUSED"
    assert inspect(env, run_id)["status"] == "PAUSED"
    paused = json.loads(ok(cli(env, "ls", "--json", "--status", "PAUSED")).stdout)
    assert [r["run_id"] for r in paused] == [run_id]

    assert "INTERRUPTED" in ok(cli(env, "interrupt", run_id, "--reason", "test")).stdout
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"statepipe resume {run_id}" in stderr

    result = ok(cli(env, "resume", run_id, "--json"))
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "SUCCEEDED"
    assert all(count <= 2 for count in runs_of(marks).values())

    refused = cli(env, "cancel", run_id)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: cannot cancel run")


def test_batch_with_concurrency_and_output(env: dict[str, str], tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    spec = write(
        tmp_path / "probe.json",
        {
            "name": "probe",
            "nodes": [
                {
                    "id": "p",
                    "kind": "python",
                    "params": {
                        "callable": "sp_nodes:concurrency_probe",
                        "args": {"marker_dir": str(probe), "seconds": 0.4},
                    },
                },
                {"id": "who", "kind": "python", "after": ["p"],
                 "params": {"callable": "sp_nodes:run_input"}},
            ],
        },
    )  # fmt: skip
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(8)))
    out = tmp_path / "results.jsonl"
    result = ok(cli(env, "run", spec, "--batch", str(inputs), "--concurrency", "3",
                    "--output", str(out)))  # fmt: skip
    run_ids = result.stdout.split()
    assert len(set(run_ids)) == 8
    assert "8 runs: 8 SUCCEEDED" in result.stderr

    # At most 3 runs at once: nodes (the probe) and runs (their start/finish times).
    assert 2 <= int((probe / "max").read_text()) <= 3
    runs = json.loads(ok(cli(env, "ls", "--json", "--limit", "100")).stdout)
    assert {r["run_id"] for r in runs} == set(run_ids)
    points = [(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs]
    running = peak = 0
    for _, delta in sorted(points):  # at a tie, a finish (-1) sorts before a start
        running += delta
        peak = max(peak, running)
    assert 2 <= peak <= 3

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    run_lines = [line for line in lines if line["type"] == "run"]
    node_lines = [line for line in lines if line["type"] == "node"]
    assert sorted(line["run_id"] for line in run_lines) == sorted(run_ids)
    assert all(list(line)[1:] == RUN_KEYS for line in run_lines)
    assert all(line["status"] == "SUCCEEDED" for line in run_lines)
    assert sorted(line["input"]["i"] for line in run_lines) == list(range(8))
    assert len(node_lines) == 16
    assert set(node_lines[0]) == {
        "type", "run_id", "node_id", "status", "attempt", "output", "error",
    }  # fmt: skip
    who = [line for line in node_lines if line["node_id"] == "who"]
    assert all(line["output"]["run"] == line["run_id"] for line in who)
    # A run's node lines come before its run line.
    for run_line in run_lines:
        index = lines.index(run_line)
        mine = [i for i, line in enumerate(lines) if line["run_id"] == run_line["run_id"]]
        assert max(mine) == index and len(mine) == 3


def test_dry_run_executes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = write(
        tmp_path / "diamond.json",
        {
            "name": "diamond",
            "nodes": [
                {"id": "a", "kind": "python",
                 "params": {"callable": "sp_nodes:record", "args": {"marker_dir": str(marks)}}},
                {"id": "b", "kind": "python", "after": ["a"],
                 "params": {"callable": "sp_nodes:record", "args": {"marker_dir": str(marks)}}},
                {"id": "c", "kind": "noop", "after": ["a"]},
                {"id": "d", "kind": "noop", "after": ["b", "c"]},
            ],
        },
    )  # fmt: skip
    result = ok(cli(env, "run", spec, "--dry-run"))
    assert result.stdout.splitlines() == [
        "workflow diamond (version 1): 4 nodes in 3 levels",
        "  level 1: a",
        "  level 2: b, c",
        "  level 3: d",
    ]
    assert "nothing was run" in result.stderr
    plan = json.loads(ok(cli(env, "run", spec, "--dry-run", "--json")).stdout)
    assert plan["levels"] == [["a"], ["b", "c"], ["d"]]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("{}\n{}\n")
    ok(cli(env, "run", spec, "--dry-run", "--batch", str(inputs)))
    assert list(marks.iterdir()) == []
    assert json.loads(ok(cli(env, "ls", "--json")).stdout) == []

    # Still validates: a cycle and an input against the schema.
    cyclic = write(
        tmp_path / "cycle.json",
        {"name": "cyc", "nodes": [{"id": "x", "kind": "noop", "after": ["y"]},
                                  {"id": "y", "kind": "noop", "after": ["x"]}]},
    )  # fmt: skip
    bad = cli(env, "run", cyclic, "--dry-run")
    assert bad.returncode == 2 and "cycle" in bad.stderr
    schema = cli(env, "run", add_spec(tmp_path), "--dry-run", "--input", '{"a": "x"}')
    assert schema.returncode == 2 and "input.a" in schema.stderr


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["run", "{tmp}/missing.yaml"], "missing.yaml", 2),
        (["run", "no_such_workflow"], "unknown target 'no_such_workflow'", 2),
        (["run", "{spec}", "--input", "{not json"], "--input is not valid JSON", 2),
        (["run", "{spec}", "--input", "@{tmp}/nope.json"], "cannot read the file", 2),
        (["run", "{spec}", "--input", '{"a": "x"}'], "input.a: 'x' is not of type 'integer'", 2),
        (["run", "{spec}"], "input: 'a' is a required property (no --input was given)", 2),
        (["run", "{spec}", "--batch", "{tmp}/bad.jsonl"], "bad.jsonl:2: not valid JSON", 2),
        (["run", "{spec}", "--batch", "{tmp}/schema.jsonl"], "schema.jsonl:2: input.a", 2),
        (
            ["run", "{spec}", "--server", "127.0.0.1:1", "--executor", "ray"],
            "--executor applies",
            2,
        ),
        (
            ["run", "{spec}", "--input", '{"a": 1}', "--ray-address", "127.0.0.1:1"],
            "cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused)",
            3,
        ),
        (["inspect", "0123456789abcdef"], "run '0123456789abcdef' not found", 1),
        (["resume", "0123456789abcdef"], "run '0123456789abcdef' not found", 1),
        (["logs", "0123456789abcdef"], "run '0123456789abcdef' not found", 1),
        (["cancel", "0123456789abcdef"], "run '0123456789abcdef' not found", 1),
        (["--server", "127.0.0.1:1", "ls"], "cannot reach the statepipe server at 127.0.0.1:1", 3),
        (["inspect", "abc", "--server", "127.0.0.1:1"], "cannot reach the statepipe server", 3),
    ],
)
def test_errors_are_one_line(
    env: dict[str, str], tmp_path: Path, args: list[str], message: str, code: int
) -> None:
    spec = add_spec(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n')
    (tmp_path / "schema.jsonl").write_text('{"a": 1}\n{"a": "two"}\n')
    args = [a.replace("{tmp}", str(tmp_path)).replace("{spec}", spec) for a in args]
    result = cli(env, *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert result.stdout == ""
    # Nothing was started by a refused run.
    if args[0] == "run":
        assert json.loads(ok(cli(env, "ls", "--json")).stdout) == []


def test_failed_run_exits_1_and_resume_runs_only_failed_nodes(
    env: dict[str, str], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = write(
        tmp_path / "flaky.json",
        {
            "name": "flaky",
            "nodes": [
                {"id": "first", "kind": "python",
                 "params": {"callable": "sp_nodes:record", "args": {"marker_dir": str(marks)}}},
                {"id": "flaky", "kind": "python", "after": ["first"],
                 "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}}},
                {"id": "last", "kind": "noop", "after": ["flaky"], "params": {"value": "done"}},
            ],
        },
    )  # fmt: skip
    out = tmp_path / "out.jsonl"
    result = cli(env, "run", spec, "--output", str(out))
    assert result.returncode == 1
    run_id = result.stdout.splitlines()[0]
    assert f"run {run_id} FAILED" in result.stderr
    assert f"statepipe resume {run_id}" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_node = {line.get("node_id"): line for line in lines if line["type"] == "node"}
    assert by_node["flaky"]["status"] == "FAILED"
    assert "attempt 1 fails on purpose" in by_node["flaky"]["error"]
    assert by_node["last"]["status"] == "SKIPPED"
    assert lines[-1]["type"] == "run" and lines[-1]["status"] == "FAILED"

    resumed = ok(cli(env, "resume", run_id))
    assert json.loads(resumed.stdout) == {"last": "done"}
    run = inspect(env, run_id)
    assert {n["node_id"]: n["attempt"] for n in run["nodes"]} == {
        "first": 1, "flaky": 2, "last": 1,
    }  # fmt: skip
    assert runs_of(marks) == {"first": 1}
    assert "already SUCCEEDED" in ok(cli(env, "resume", run_id)).stderr


def test_detach_returns_at_once_and_the_run_finishes(env: dict[str, str], tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = layered_spec(tmp_path, marks, layers=3, width=1, seconds=0.3)
    result = ok(cli(env, "run", spec, "--detach"))
    run_id = result.stdout.strip()
    assert "running in the background" in result.stderr
    assert inspect(env, run_id)["status"] in ("RUNNING", "SUCCEEDED")
    wait_until(lambda: inspect(env, run_id)["status"] == "SUCCEEDED", what="the detached run")
    assert runs_of(marks) == {"n0_0": 1, "n1_0": 1, "n2_0": 1}


def test_the_embedded_postgres_is_the_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, STATEPIPE_HOME=str(home))
    env.pop("STATEPIPE_DATABASE_URL", None)
    env.pop("STATEPIPE_SERVER", None)
    spec = write(
        tmp_path / "noop.json", {"name": "n", "nodes": [{"id": "n", "kind": "noop",
                                                         "params": {"value": 1}}]}
    )  # fmt: skip
    run_id = ok(cli(env, "run", spec, timeout=120)).stdout.splitlines()[0]
    assert (home / "postgres" / "PG_VERSION").exists()
    # A later invocation sees it.
    assert inspect(env, run_id)["output"] == {"n": 1}
    # The private Postgres stops with its last user.
    wait_until(
        lambda: not (home / "postgres" / "postmaster.pid").exists(),
        timeout=15,
        what="the embedded Postgres to stop",
    )


@pytest.mark.parametrize(
    ("example", "args", "check"),
    [
        ("montecarlo.py", [], lambda out: abs(out["reduce"]["pi"] - 3.14159) < 0.05),
        ("etl.yaml", [], lambda out: "report" in out),
        ("agent.py", ["--input", '{"question": "what is 6 * 7?"}'], lambda out: bool(out)),
    ],
)
def test_the_examples_run_from_the_cli(
    env: dict[str, str], example: str, args: list[str], check: Any
) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    result = cli(env, "run", str(examples / example), *args)
    assert result.returncode == 0, result.stderr
    run_id, output = result.stdout.strip().splitlines()[:2]
    assert len(run_id) == 32
    assert check(json.loads(output))


def _ray_processes_since(t0: float) -> list[Any]:
    """Ray daemons and workers created since t0 that are not this test process's."""
    import psutil

    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
            if (
                proc.info["create_time"] >= t0
                and proc.pid not in mine
                and ("raylet" in text or "gcs_server" in text or "ray::" in text)
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_run_on_a_local_ray_it_starts_and_stops(env: dict[str, str]) -> None:
    t0 = time.time() - 1
    env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "STATEPIPE_EXECUTOR")}
    montecarlo = Path(__file__).resolve().parents[2] / "examples" / "montecarlo.py"
    result = ok(cli(env, "run", str(montecarlo), "--executor", "ray",
                    "--json", timeout=180))  # fmt: skip
    run = json.loads(result.stdout)
    assert run["status"] == "SUCCEEDED" and 3.0 < run["output"]["reduce"]["pi"] < 3.3
    lines = [json.loads(line) for line in ok(cli(env, "logs", run["run_id"], "--json")).stdout
             .splitlines()]  # fmt: skip
    running = [e for e in lines if e["kind"] == "node_status" and e["status"] == "RUNNING"]
    assert running and all(e["data"]["executor"] == "ray" for e in running)
    assert all(e["data"]["worker_pid"] > 0 and e["data"]["ray_actor_id"] for e in running)
    # The Ray it started is gone with it.
    wait_until(lambda: not _ray_processes_since(t0), timeout=30, what="Ray processes to exit")
