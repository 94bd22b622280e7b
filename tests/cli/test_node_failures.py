"""What a user sees when nodes fail, through the real CLI (from the repository
root): import errors and bad arguments fail at once, tracebacks are kept, a
server imports node code from --path, attempt numbers read naturally."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from sp_cli import cli
from sp_testing import spawn_server


def spec_file(tmp_path: Path, nodes: list[dict[str, Any]], name: str = "failing") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "nodes": nodes}))
    return str(path)


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[0].strip()


def events(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    result = cli(env, "logs", run_id, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def node_statuses(evs: list[dict[str, Any]], node_id: str) -> list[tuple[int, str]]:
    return [
        (e["attempt"], e["status"])
        for e in evs
        if e["kind"] == "node_status" and e["node_id"] == node_id
    ]


RETRY = {"max_attempts": 5, "backoff_ms": 10}


def test_errors_a_retry_cannot_mend_fail_at_once(env: dict[str, str], tmp_path: Path) -> None:
    spec = spec_file(
        tmp_path,
        [
            {"id": "typo", "kind": "python", "params": {"callable": "sp_nodes:no_such_fn"},
             "retry": RETRY},
            {"id": "nomodule", "kind": "python", "params": {"callable": "no_such_mod:fn"},
             "retry": RETRY},
            {"id": "badargs", "kind": "python",
             "params": {"callable": "sp_nodes:add", "args": {"a": 1, "c": 2}}, "retry": RETRY},
            {"id": "flaky", "kind": "python",
             "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
             "retry": RETRY},
        ],
    )  # fmt: skip
    result = cli(env, "run", spec)
    assert result.returncode == 1, result.stderr
    run_id = run_id_of(result)
    evs = events(env, run_id)
    for node_id in ("typo", "nomodule", "badargs"):
        assert node_statuses(evs, node_id) == [(1, "QUEUED"), (1, "RUNNING"), (1, "FAILED")]
    # A failure that can pass keeps its policy.
    assert "RETRY_WAIT" in [s for _, s in node_statuses(evs, "flaky")]
    shown = json.loads(cli(env, "inspect", run_id, "--json").stdout)
    errors = {n["node_id"]: n["error"] for n in shown["nodes"]}
    assert errors["typo"] == (
        "cannot import 'sp_nodes:no_such_fn': module 'sp_nodes' has no attribute 'no_such_fn'"
    )
    # In-process there is no server to start: the hint fits both.
    assert errors["nomodule"] == (
        "cannot import 'no_such_mod:fn': ModuleNotFoundError: No module named 'no_such_mod'"
        " (check the name; where this node runs, 'no_such_mod' is not importable:"
        " add its folder with statepipe server --path DIR, set PYTHONPATH, or install it)"
    )
    assert errors["badargs"] == (
        "cannot call 'sp_nodes:add' with params.args (a, c): missing a required argument: 'b'"
    )
    # inspect shows an error past its table column in full (it has no traceback).
    human = cli(env, "inspect", run_id).stdout
    assert "error of nomodule (attempt 1):" in human
    assert " ".join(errors["nomodule"].split()) in " ".join(human.split())
    # One line a node in the run's output, not a retry storm.
    assert result.stdout.count("no_such_fn") + result.stderr.count("no_such_fn") <= 2


def test_a_failed_node_keeps_its_traceback(env: dict[str, str], tmp_path: Path) -> None:
    spec = spec_file(
        tmp_path,
        [{"id": "bad", "kind": "python",
          "params": {"callable": "sp_nodes:boom", "args": {"message": "kaboom"}}}],
    )  # fmt: skip
    result = cli(env, "run", spec)
    assert result.returncode == 1
    run_id = run_id_of(result)
    node = json.loads(cli(env, "inspect", run_id, "--json").stdout)["nodes"][0]
    assert node["error"] == "ValueError: kaboom"
    traceback = node["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "sp_nodes.py" in traceback and "raise ValueError(message)" in traceback
    assert traceback.rstrip().endswith("ValueError: kaboom")
    for plumbing in ("executors", "control_plane", "concurrent/futures", "asyncio"):
        assert plumbing not in traceback
    failed = [e for e in events(env, run_id) if e["status"] == "FAILED"]
    assert failed[0]["data"]["traceback"] == traceback
    # A node that did not fail has none.
    ok = spec_file(tmp_path, [{"id": "fine", "kind": "noop"}], name="fine")
    fine_run = run_id_of(cli(env, "run", ok))
    assert json.loads(cli(env, "inspect", fine_run, "--json").stdout)["nodes"][0]["traceback"] == ""


def test_a_retried_node_numbers_its_events_by_the_attempt(
    env: dict[str, str], tmp_path: Path
) -> None:
    spec = spec_file(
        tmp_path,
        [{"id": "flaky", "kind": "python",
          "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
          "retry": {"max_attempts": 2, "backoff_ms": 10}}],
    )  # fmt: skip
    result = cli(env, "run", spec)
    assert result.returncode == 0, result.stderr
    assert node_statuses(events(env, run_id_of(result)), "flaky") == [
        (1, "QUEUED"),
        (1, "RUNNING"),
        (1, "RETRY_WAIT"),
        (2, "QUEUED"),
        (2, "RUNNING"),
        (2, "SUCCEEDED"),
    ]


def test_a_server_imports_node_code_from_its_path(
    env: dict[str, str], tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    code = tmp_path / "flows"
    code.mkdir()
    (code / "pathflow.py").write_text(
        textwrap.dedent(
            """
            from statepipe import Workflow

            wf = Workflow("pathflow")


            @wf.node()
            def hello(ctx):
                return "hello from " + __name__
            """
        )
    )
    target = str(code / "pathflow.py")
    # Without --path the server cannot import the module: one line says what to do.
    proc, address = spawn_server(["--log-level", "warning"], env)
    children.append(proc)
    result = cli(env, "--server", address, "run", target)
    assert result.returncode == 1
    run_id = run_id_of(result)
    node = json.loads(cli(env, "--server", address, "inspect", run_id, "--json").stdout)["nodes"][0]
    assert "No module named 'pathflow'" in node["error"]
    assert node["error"].endswith(
        "No module named 'pathflow' (check the name; where this node runs, 'pathflow' is not"
        " importable: add its folder with statepipe server --path DIR, set PYTHONPATH,"
        " or install it)"
    )
    assert node["attempt"] == 1  # not retried
    # With --path (or STATEPIPE_PATH) it can.
    proc, address = spawn_server(["--log-level", "warning", "--path", str(code)], env)
    children.append(proc)
    result = cli(env, "--server", address, "run", target)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(cli(env, "--server", address, "inspect", run_id_of(result), "--json").stdout)
    assert shown["output"] == {"hello": "hello from pathflow"}
    proc, address = spawn_server(
        ["--log-level", "warning"], dict(env, STATEPIPE_PATH=f"/nonexistent{os.pathsep}{code}")
    )
    children.append(proc)
    result = cli(env, "--server", address, "run", target)
    assert result.returncode == 0, result.stdout + result.stderr
