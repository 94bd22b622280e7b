"""Child runs in the CLI: ``ls`` lists the runs a client started unless given
``--all`` or ``--parent RUN_ID``; ``inspect`` shows a run's children and a
child's parent.

The runs are made by the real control plane of the ``server`` fixture; the
commands read them with ``python -m statepipe`` in subprocesses, in-process on
the same database (the default) or with ``--server`` (both paths are covered).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from sp_cli import cli
from sp_testing import py

from statepipe.client import Client

RUN_KEYS = (
    "run_id workflow_name workflow_version status input output error labels idempotency_key"
    " created_at started_at finished_at updated_at last_seq node_counts usage"
    " parent_run_id parent_node_id nodes"
).split()
ITEMS = 25  # more than inspect lists (20)
CHILD = {
    "name": "child",
    "nodes": [py("double", "add", args={"a": "{{ input.n }}", "b": "{{ input.n }}"})],
}
PARENT = {
    "name": "parent",
    "nodes": [
        {
            "id": "sub",
            "kind": "workflow",
            "params": {"workflow": "child", "input": {"n": "{{ input.n }}"}},
        },
        # After sub: its child is the first one created (inspect lists the oldest).
        {
            "id": "each",
            "kind": "map",
            "after": ["sub"],
            "params": {
                "items": list(range(ITEMS)),
                "node": {"kind": "noop", "params": {"value": "{{ item }}"}},
            },
        },
        {
            "id": "flaky",
            "kind": "map",
            "after": ["sub"],
            "params": {
                "items": [1, 2],  # item 2 fails its only attempt
                "continue_on_failure": True,
                "node": {
                    "kind": "python",
                    "params": {
                        "callable": "sp_nodes:fail_until",
                        "args": {"succeed_on": "{{ item }}"},
                    },
                },
            },
        },
    ],
}
CHILD_NODES = {"sub", "flaky[0]", "flaky[1]", *(f"each[{i}]" for i in range(ITEMS))}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def family(client: Client) -> tuple[str, str]:
    """A parent run with 28 children (sub, each[0..24], flaky[0..1], one FAILED),
    and a root run of the child workflow; their ids."""
    client.register_workflow(CHILD)
    root = client.wait(client.start_run("child", {"n": 1}), timeout=30)
    run = client.wait(client.start_run(PARENT, {"n": 21}), timeout=90)
    assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
    return run.run_id, root.run_id


def natural(node_id: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", node_id)]


def test_ls_lists_root_runs_unless_all_or_parent(
    env: dict[str, str], client: Client, server: Any
) -> None:
    parent, root = family(client)
    remote = ("--server", server.address)

    listed = json.loads(ok(cli(env, "ls", "--json")).stdout)
    assert {r["run_id"] for r in listed} == {parent, root}
    assert all(list(r) == RUN_KEYS and r["parent_run_id"] is None for r in listed)

    kids = json.loads(ok(cli(env, "ls", "--json", "--parent", parent, "--limit", "100")).stdout)
    assert all(list(r) == RUN_KEYS for r in kids)
    assert {r["parent_node_id"] for r in kids} == CHILD_NODES and len(kids) == len(CHILD_NODES)
    assert {r["parent_run_id"] for r in kids} == {parent}
    [sub] = [r for r in kids if r["parent_node_id"] == "sub"]
    assert sub["workflow_name"] == "child" and sub["input"] == {"n": 21}

    everything = json.loads(ok(cli(env, *remote, "ls", "--json", "--all", "-n", "100")).stdout)
    assert {r["run_id"] for r in everything} == {parent, root} | {r["run_id"] for r in kids}
    # --parent and --status go together; --all with --parent is --parent.
    failed = json.loads(
        ok(cli(env, "ls", "--json", "--parent", parent, "--status", "failed", "--all")).stdout
    )
    assert [r["parent_node_id"] for r in failed] == ["flaky[1]"]

    # The table of children names the parent node; the default limit cuts it.
    table = ok(cli(env, *remote, "ls", "--parent", parent))
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "RUN", "ID", "WORKFLOW", "STATUS", "NODES", "CREATED", "WALL", "TIME", "PARENT", "NODE"
    ]  # fmt: skip
    assert len(lines) == 21 and all(line.split()[-1] in CHILD_NODES for line in lines[1:])
    assert "the newest 20 runs shown; there are more" in table.stderr
    # --all adds the parent run and node of the children, blank for roots.
    lines = ok(cli(env, "ls", "--all", "--limit", "100")).stdout.splitlines()
    assert lines[0].split()[-3:] == ["PARENT", "PARENT", "NODE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[sub["run_id"]][-2:] == [parent, "sub"]
    assert len(rows[parent]) == len(rows[root]) == 7  # RUN ID ... WALL TIME, no parent
    # A root listing keeps the columns it always had.
    assert ok(cli(env, "ls")).stdout.splitlines()[0].split()[-2:] == ["WALL", "TIME"]

    # A run without children is an empty list; an unknown run an error.
    none = ok(cli(env, "ls", "--parent", root))
    assert none.stdout == "" and f"run {root} has no child runs" in none.stderr
    assert json.loads(ok(cli(env, "ls", "--parent", root, "--json")).stdout) == []
    unknown = cli(env, *remote, "ls", "--parent", "no-such-run")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: run 'no-such-run' not found"


def test_inspect_shows_children_and_parent(
    env: dict[str, str], client: Client, server: Any
) -> None:
    parent, root = family(client)
    kids = client.list_runs(parent=parent, limit=None)
    by_node = {k.parent_node_id: k.run_id for k in kids}

    human = ok(cli(env, "inspect", parent)).stdout.splitlines()
    start = human.index("children (28: 1 failed, 27 succeeded)")
    assert human[start + 1].split() == ["NODE", "STATUS", "WORKFLOW", "RUN", "ID"]
    rows = [line.split() for line in human[start + 2 : start + 22]]
    assert all(len(row) == 4 for row in rows)
    assert human[start + 22] == f"… and 8 more (statepipe ls --parent {parent} --limit 28)"
    assert start + 23 == len(human)  # no failed node: no traceback after it
    # The 20 oldest children (sub first of all), by parent node, items in index order.
    assert rows[-1] == ["sub", "SUCCEEDED", "child@1", by_node["sub"]]
    nodes = [row[0] for row in rows]
    assert nodes == sorted(nodes, key=natural) and len(set(nodes)) == 20
    assert all(row[3] == by_node[row[0]] for row in rows)
    assert all(row[1] == ("FAILED" if row[0] == "flaky[1]" else "SUCCEEDED") for row in rows)

    # --json is the run shape, nothing more.
    shape = json.loads(ok(cli(env, "inspect", parent, "--json")).stdout)
    assert list(shape) == RUN_KEYS and shape["parent_run_id"] is None

    # A child names its parent run and node.
    sub = ok(cli(env, "--server", server.address, "inspect", by_node["sub"])).stdout
    assert f"parent    child of run {parent} node sub\n" in sub
    assert "children" not in sub
    item = ok(cli(env, "inspect", by_node["each[3]"])).stdout
    assert f"child of run {parent} node each[3]" in item
    assert "workflow  parent/each (version 1)" in item
    shape = json.loads(ok(cli(env, "inspect", by_node["each[3]"], "--json")).stdout)
    assert (shape["parent_run_id"], shape["parent_node_id"]) == (parent, "each[3]")

    # A run with neither says nothing of either.
    alone = ok(cli(env, "inspect", root)).stdout
    assert "children" not in alone and "parent" not in alone
