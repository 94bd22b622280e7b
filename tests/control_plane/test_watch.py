"""WatchRun (control_plane.watch) against a real server, and runs read back as
stored: a run stays readable after the runner plugin of one of its node kinds is
uninstalled, since reading a run never compiles its spec against today's runners."""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from sp_testing import py

from statepipe.client import Client, StatepipeError

RUNNER_MODULE = "sp_shout_runner"

RUNNER_SOURCE = '''
"""A third-party runner: kind "shout" upper-cases params.text, one token per word."""


class ShoutRunner:
    kind = "shout"

    def validate(self, params):
        if not isinstance(params.get("text"), str):
            raise ValueError("params.text must be a string")

    async def run(self, task, ctx):
        words = task.params["text"].upper().split()
        for word in words:
            ctx.token(word)
        return " ".join(words)
'''


def install_runner_plugin(site: Path) -> None:
    """A real installed distribution: a module and a dist-info with the entry point."""
    site.mkdir()
    (site / f"{RUNNER_MODULE}.py").write_text(textwrap.dedent(RUNNER_SOURCE))
    dist = site / "sp_shout-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sp-shout\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[statepipe.runners]\nshout = {RUNNER_MODULE}:ShoutRunner\n"
    )


def uninstall_runner_plugin(site: Path) -> None:
    shutil.rmtree(site)
    sys.path.remove(str(site))
    sys.modules.pop(RUNNER_MODULE, None)
    importlib.invalidate_caches()


SPEC = {
    "name": "loud",
    "nodes": [
        {"id": "greet", "kind": "shout", "params": {"text": "hello there"}},
        {"id": "again", "kind": "shout", "params": {"text": "bye now"}, "after": ["greet"]},
        {"id": "join", "kind": "noop", "after": ["greet", "again"]},
    ],
}


def test_a_run_stays_readable_after_its_runner_plugin_is_uninstalled(
    make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    install_runner_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    first = make_server()
    with Client(first.address) as client:
        run_id = client.start_run(SPEC)
        before = client.wait(run_id, timeout=30)
        events_before = [e.to_dict() for e in client.watch(run_id)]
    first.stop()
    assert before.status == "SUCCEEDED", [n.error for n in before.nodes]
    assert before.node("greet").output == "HELLO THERE"
    assert before.node("join").after == ["greet", "again"]
    assert [e["message"] for e in events_before if e["kind"] == "token"] == [
        "HELLO",
        "THERE",
        "BYE",
        "NOW",
    ]

    uninstall_runner_plugin(site)
    second = make_server()
    with Client(second.address) as client:
        # The plugin is really gone: a new run of that kind is refused.
        with pytest.raises(StatepipeError) as refused:
            client.start_run(SPEC)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown kind 'shout'" in str(refused.value)

        run = client.get_run(run_id)
        assert run.status == "SUCCEEDED"
        assert run.to_dict() == before.to_dict()
        assert [(n.node_id, n.kind, n.after) for n in run.nodes] == [
            ("greet", "shout", []),
            ("again", "shout", ["greet"]),
            ("join", "noop", ["greet", "again"]),
        ]
        assert [r.run_id for r in client.list_runs(workflow="loud")] == [run_id]
        assert [e.to_dict() for e in client.watch(run_id)] == events_before
        tokens = [e.message for e in client.watch(run_id, kinds="token")]
        assert tokens == ["HELLO", "THERE", "BYE", "NOW"]
        assert [e.seq for e in client.watch(run_id, after_seq=3)] == list(
            range(4, run.last_seq + 1)
        )
        assert len(client.list_events(run_id)) == run.last_seq


def test_a_lagging_watcher_with_a_kinds_filter_gets_each_matching_event_once(
    make_server: Any,
) -> None:
    # An 8-event ring: the slow watcher falls behind over and over, and each
    # time goes back to Postgres (catch-up) and then live again.
    server = make_server(bus_capacity=8)
    with Client(server.address) as client:
        run_id = client.start_run(
            {
                "name": "mixed",
                "nodes": [
                    py("spam", "many_tokens", args={"n": 2000}),
                    py("talk", "chatty", ["spam"], args={"tokens": 300}),
                    py("more", "many_tokens", ["talk"], args={"n": 2000}),
                ],
            }
        )
        kinds = ["token", "progress", "metric"]  # not node_status, log, tool_call, run_status
        seen: list[tuple[int, str]] = []

        def watch_slowly() -> None:
            for i, event in enumerate(client.watch(run_id, after_seq=1, kinds=kinds)):
                seen.append((event.seq, event.kind))
                if i < 50:
                    time.sleep(0.01)  # fall far behind an 8-event ring

        watcher = threading.Thread(target=watch_slowly)
        watcher.start()
        watcher.join(60)
        assert not watcher.is_alive(), "the watch did not end with the run"
        run = client.wait(run_id, timeout=30)
        assert run.status == "SUCCEEDED"
        stored = [(e.seq, e.kind) for e in client.list_events(run_id, kinds=kinds, limit=None)]
    assert seen == [(seq, kind) for seq, kind in stored if seq > 1]
    assert {kind for _, kind in seen} == set(kinds)
    assert run.last_seq > 4300
