"""A file target names its workflow by variable or by name (``flows.py:chain`` or
``flows.py:h-chain``, what ``statepipe ls`` shows), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from sp_cli import cli

FLOWS = """
from statepipe import Workflow

chain = Workflow("h-chain")
swap = Workflow("other")
other = Workflow("swap")


@chain.node
def first(ctx):
    return 1


@chain.node
def second(first):
    return first + 1


@swap.node
def s(ctx):
    return "swap"


@other.node
def o(ctx):
    return "other"
"""


def flows(tmp_path: Path) -> str:
    file = tmp_path / "named_flows.py"
    file.write_text(FLOWS)
    return str(file)


def test_a_workflow_is_run_by_its_name(env: dict[str, str], tmp_path: Path) -> None:
    file = flows(tmp_path)
    dry = cli(env, "run", f"{file}:h-chain", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "workflow h-chain (version 1): 2 nodes in 2 levels",
        "  level 1: first",
        "  level 2: second",
    ]
    assert cli(env, "run", f"{file}:chain", "--dry-run").stdout == dry.stdout

    result = cli(env, "run", f"{file}:h-chain", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["workflow_name"] == "h-chain" and run["status"] == "SUCCEEDED"
    assert run["output"] == {"second": 2}
    listed = json.loads(cli(env, "ls", "--workflow", "h-chain", "--json").stdout)
    assert [r["run_id"] for r in listed] == [run["run_id"]]


def test_a_variable_wins_over_another_workflows_name_and_says_so(
    env: dict[str, str], tmp_path: Path
) -> None:
    file = flows(tmp_path)
    result = cli(env, "run", f"{file}:swap", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("workflow other (version 1)")
    assert (
        f"warning: {file}:swap is the variable swap (workflow 'other'), not the workflow "
        "named 'swap' (variable other); the variable wins"
    ) in result.stderr.splitlines()


def test_an_unknown_workflow_is_one_error_line_with_a_guess(
    env: dict[str, str], tmp_path: Path
) -> None:
    file = flows(tmp_path)
    result = cli(env, "run", f"{file}:h-chian")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {file} has no workflow 'h-chian' (by variable or by name); it defines "
        "chain = Workflow('h-chain'), swap = Workflow('other'), other = Workflow('swap'); "
        f"did you mean {file}:h-chain?"
    ]
