"""What the CLI embeds of the server side, through control_plane.embed only.

The CLI starts without grpc, psycopg or any server code; a spec is checked as
the server would check it, with its levels from core_rs; a control plane is
started on a thread and stopped; start-up failures are one line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sp_testing import py

import core_rs
from control_plane import embed
from statepipe.client import Client
from statepipe_api.convert import spec_to_proto

DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "nodes": [
        {"id": "d", "kind": "noop", "after": ["b", "c"]},
        {"id": "b", "kind": "noop", "after": ["a"]},
        {"id": "c", "kind": "noop", "after": ["a"]},
        {"id": "a", "kind": "noop"},
    ],
}


def test_the_cli_starts_without_the_server_side() -> None:
    probe = (
        "import json, sys\n"
        "from statepipe.cli import main\n"
        "for args in (['--help'], ['run', '--help'], ['ls', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    heavy = {"grpc", "psycopg", "google", "control_plane", "executors", "core_rs", "asyncio"}
    assert loaded & heavy == set()


def test_check_spec_validates_as_the_server_does() -> None:
    spec = spec_to_proto(DIAMOND)
    plan = embed.check_spec(spec)
    assert (plan.name, plan.version, plan.node_count) == ("diamond", "1", 4)
    # Levels are core_rs's: by longest chain of predecessors, spec order within a level.
    dag = core_rs.Dag(["d", "b", "c", "a"], [("b", "d"), ("c", "d"), ("a", "b"), ("a", "c")])
    assert plan.levels == dag.levels() == [["a"], ["b", "c"], ["d"]]
    assert spec.version == ""  # the caller's spec is left as it was

    refused = {
        "unknown kind 'nope'": {"name": "w", "nodes": [{"id": "a", "kind": "nope"}]},
        "the nodes form a cycle: a -> b -> a": {
            "name": "w",
            "nodes": [py("a", after=["b"]), py("b", after=["a"])],
        },
        "node 'b' depends on unknown node 'x'": {"name": "w", "nodes": [py("b", after=["x"])]},
        "which is not among its dependencies": {
            "name": "w",
            "nodes": [py("a"), py("b", args={"v": "{{ nodes.a.output }}"})],
        },
        "spec.name 'a b' may hold": {"name": "a b", "nodes": [py("a")]},
    }
    for message, bad in refused.items():
        with pytest.raises(embed.PlanError, match=message):
            embed.check_spec(spec_to_proto(bad))

    typed = embed.check_spec(
        spec_to_proto(
            {
                "name": "typed",
                "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                "nodes": [py("a")],
            }
        )
    )
    typed.validate_input({"a": 1})
    with pytest.raises(embed.PlanError, match=r"^input\.a: 'x' is not of type 'integer'$"):
        typed.validate_input({"a": "x"})


def test_plan_levels_come_from_core_rs() -> None:
    assert embed.plan_levels(spec_to_proto(DIAMOND)) == [["a"], ["b", "c"], ["d"]]
    assert embed.plan_levels(spec_to_proto({"name": "w", "nodes": []})) == []
    cyclic = {"name": "w", "nodes": [py("x", after=["y"]), py("y", after=["x"])]}
    with pytest.raises(embed.PlanError, match=r"^cycle: "):
        embed.plan_levels(spec_to_proto(cyclic))


def test_a_plane_starts_on_a_thread_and_stops(database_url: str) -> None:
    config = embed.ServerConfig(listen="127.0.0.1:0", database_url=database_url, grace_s=1)
    with embed.start_plane(config) as plane:
        assert plane.address.startswith("127.0.0.1:") and not plane.address.endswith(":0")
        with Client(plane.address) as client:
            assert client.list_runs() == []
        assert plane.owned_runs() == []
    assert plane.owned_runs() == []  # stopped: nothing owned, and stop() again is a no-op
    plane.stop()
    assert plane.node_threads_ended(timeout_s=0)


def test_a_plane_that_cannot_start_says_why_in_one_line(database_url: str) -> None:
    config = embed.ServerConfig(listen="127.0.0.1:0", database_url=database_url, executor="nope")
    with pytest.raises(embed.PlaneStartError) as err:
        embed.start_plane(config)
    assert str(err.value) == "unknown executor 'nope'; choose one of: local, ray"


def test_server_on_a_busy_address_is_one_error_line(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "statepipe", "server", "--listen", address,
             "--database-url", database_url, "--log-level", "error"],
            env=dict(os.environ, STATEPIPE_HOME=str(tmp_path / "home")),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 3, (result.stdout, result.stderr)  # cannot start: 3
    # Above it, the server's own log lines (grpc's about the bind among them); no traceback.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot start the server: ") and address in last, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
