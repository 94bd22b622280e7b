"""The trace (run → nodes → attempts → calls) and the node panel: their pure row and
formatting functions, then both views in NiceGUI's simulated browser — the trace fed
by a hand-made run, the panel also against a real control plane running a failing
workflow."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from nicegui import ui
from nicegui.testing.user_simulation import user_simulation

from statepipe.client import AsyncClient
from ui.console import Console
from ui.run_model import RunModel
from ui.views.json_view import MAX_TEXT_CHARS, MAX_TREE_CHARS, json_view
from ui.views.node_panel import (
    NodePanel,
    final_key,
    policy_rows,
    usage_label,
    usage_rows,
    usage_value,
)
from ui.views.trace import (
    RUN_ROW_ID,
    TraceTree,
    TraceView,
    attempts_of,
    call_row,
    children_of,
    duration_ms,
    initial_rows,
)

# Nothing listens here: calls to it fail at once, as a control plane that is down.
NO_SERVER = "127.0.0.1:9"


def ts(seconds: float) -> str:
    return f"2025-01-01T12:00:{int(seconds):02d}.{round(seconds % 1 * 1000):03d}Z"


def node(node_id: str, status: str = "PENDING") -> dict[str, Any]:
    return {
        "node_id": node_id,
        "kind": "python",
        "status": status,
        "attempt": 0,
        "input": None,
        "output": None,
        "error": "",
        "traceback": "",
        "queued_at": None,
        "started_at": None,
        "finished_at": None,
        "usage": None,
        "after": [],
    }


def make_run(*node_ids: str) -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "workflow_name": "w",
        "workflow_version": "1",
        "status": "RUNNING",
        "input": None,
        "output": None,
        "error": "",
        "started_at": ts(0),
        "finished_at": None,
        "node_counts": {"PENDING": len(node_ids)},
        "nodes": [node(n) for n in node_ids],
    }


class Events:
    """Events of run-1 with rising seq; times in seconds after 12:00:00."""

    def __init__(self) -> None:
        self.seq = 0

    def event(self, kind: str, node_id: str, attempt: int, at: float, **fields: Any) -> dict:
        self.seq += 1
        return {
            "run_id": "run-1",
            "seq": self.seq,
            "ts": ts(at),
            "kind": kind,
            "node_id": node_id,
            "attempt": attempt,
            "status": fields.get("status", ""),
            "message": fields.get("message", ""),
            "level": "",
            "data": fields.get("data"),
        }

    def status(self, node_id: str, status: str, at: float, attempt: int = 1, **fields: Any):
        return self.event("node_status", node_id, attempt, at, status=status, **fields)

    def call(self, node_id: str, name: str, at: float, attempt: int = 1, **data: Any) -> dict:
        return self.event(
            "tool_call", node_id, attempt, at, message=name, data={"name": name, **data}
        )


def retried_model() -> tuple[RunModel, Events]:
    """Node a: attempt 1 calls a tool and fails into a retry, attempt 2 succeeds; b waits."""
    model = RunModel(make_run("a", "b"))
    ev = Events()
    model.apply(
        [
            ev.status("a", "QUEUED", 1),
            ev.status("a", "RUNNING", 2, data={"executor": "local", "worker_pid": 4242}),
            ev.call("a", "search", 2.5, arguments={"q": "x"}, result=["hit"], duration_ms=12),
            ev.status("a", "RETRY_WAIT", 3, message="flaky: try again\nsecond line"),
            ev.status("a", "QUEUED", 4, attempt=2),
            ev.status("a", "RUNNING", 4.5, attempt=2),
            ev.status("a", "SUCCEEDED", 5.25, attempt=2),
        ]
    )
    model.flush()
    return model, ev


# -- pure functions


def test_initial_rows_are_the_expanded_run_and_one_collapsed_row_per_node():
    model, _ = retried_model()
    rows = initial_rows(model)
    assert [r["id"] for r in rows] == [RUN_ROW_ID, "n:a", "n:b"]
    run, a, b = rows
    assert (run["depth"], run["expanded"], run["kind"], run["detail"]) == (0, True, "run", "w v1")
    assert (a["depth"], a["expanded"], a["expandable"]) == (1, False, True)
    assert a["status"] == "SUCCEEDED"
    assert a["duration_ms"] == 750.0  # the last attempt's start to the node's finish
    assert b["expandable"] is False  # never ran: no attempts under it


def test_children_of_a_node_are_its_attempts_and_of_an_attempt_its_calls():
    model, _ = retried_model()
    node_row = initial_rows(model)[1]
    attempts = children_of(model, node_row)
    assert [r["id"] for r in attempts] == ["a:a:1", "a:a:2"]
    first, second = attempts
    assert first["status"] == "RETRY_WAIT"
    assert first["detail"] == "flaky: try again"  # the error's first line
    assert second["detail"] == ""  # no error, no placement data
    calls = children_of(model, first)
    assert [(c["id"], c["name"], c["kind"], c["duration_ms"]) for c in calls] == [
        ("c:3", "search", "tool_call", 12.0)
    ]
    assert calls[0]["detail"] == '{"q": "x"}'
    assert children_of(model, second) == []
    assert [r["id"] for r in children_of(model, initial_rows(model)[0])] == ["n:a", "n:b"]


def test_fetched_calls_merge_with_the_models_without_doubles():
    model, ev = retried_model()
    first = children_of(model, initial_rows(model)[1])[0]
    known = model.attempts["a"][0].calls[0]
    fetched = {("a", 1): [known, {**ev.call("a", "fetch", 2.7), "seq": 2}]}
    assert [c["id"] for c in children_of(model, first, fetched)] == ["c:2", "c:3"]


def test_attempts_fall_back_to_the_node_when_its_events_were_not_seen():
    run = make_run("a")
    run["nodes"][0].update(
        status="FAILED", attempt=3, error="boom", started_at=ts(1), finished_at=ts(2)
    )
    model = RunModel(run)
    (attempt,) = attempts_of(model, "a")
    assert (attempt.attempt, attempt.status, attempt.error) == (3, "FAILED", "boom")
    assert [r["id"] for r in children_of(model, initial_rows(model)[1])] == ["a:a:3"]


def test_call_rows_take_duration_status_and_error_from_their_data():
    ev = Events()
    row = call_row("a", ev.call("a", "get", 1, error="HTTP 500\ntrace", elapsed_s=0.25))
    assert (row["id"], row["status"], row["detail"], row["duration_ms"]) == (
        "c:1",
        "FAILED",
        "HTTP 500",
        250.0,
    )
    assert duration_ms(ts(1), None) is None


def test_expand_and_collapse_keep_the_flat_list_in_tree_order():
    model, _ = retried_model()
    tree = TraceTree(initial_rows(model))
    index, added = tree.expand("n:a", children_of(model, tree.row("n:a")))
    assert index == 2 and [r["id"] for r in added] == ["a:a:1", "a:a:2"]
    index, added = tree.expand("a:a:1", children_of(model, tree.row("a:a:1")))
    assert index == 3 and [r["id"] for r in added] == ["c:3"]
    assert [r["id"] for r in tree.rows] == ["r", "n:a", "a:a:1", "c:3", "a:a:2", "n:b"]
    # A new child goes after the parent's last descendant.
    index, _ = tree.add_child("n:a", {"id": "a:a:3", "depth": 2})
    assert index == 5
    removed = tree.collapse("n:a")
    assert [r["id"] for r in removed] == ["a:a:1", "c:3", "a:a:2", "a:a:3"]
    assert [r["id"] for r in tree.rows] == ["r", "n:a", "n:b"]
    assert tree.row("n:a")["expanded"] is False and "c:3" not in tree
    # Collapsing the run hides every node; expanding twice adds nothing twice.
    assert [r["id"] for r in tree.collapse("r")] == ["n:a", "n:b"]
    tree.expand("r", children_of(model, tree.row("r")))
    assert tree.expand("r", children_of(model, tree.row("r")))[1] == []
    assert [r["id"] for r in tree.rows] == ["r", "n:a", "n:b"]


def test_update_reports_only_real_changes():
    model, _ = retried_model()
    tree = TraceTree(initial_rows(model))
    fresh = dict(tree.row("n:b"))
    assert tree.update("n:b", fresh) is None
    fresh["status"] = "RUNNING"
    assert tree.update("n:b", fresh)["status"] == "RUNNING"
    assert tree.update("n:zzz", fresh) is None


def test_usage_uses_friendly_labels_and_units():
    rows = usage_rows(
        {
            "custom.thing": 2,
            "gen_ai.usage.output_tokens": 1234,
            "gen_ai.usage.input_tokens": 812,
            "cost_usd": 0.0031,
            "gen_ai.server.time_to_first_token": 0.42,
        }
    )
    assert rows == [
        ("Input tokens", "812", "gen_ai.usage.input_tokens"),
        ("Output tokens", "1,234", "gen_ai.usage.output_tokens"),
        ("Cost (USD)", "$0.0031", "cost_usd"),
        ("Time to first token", "420 ms", "gen_ai.server.time_to_first_token"),
        ("Custom thing", "2", "custom.thing"),
    ]
    assert usage_label("gen_ai.usage.cache_read.input_tokens") == "Cached input tokens"
    assert usage_label("gen_ai.usage.audio_tokens") == "Audio tokens"
    assert usage_value("ttft_ms", 85) == "85 ms"
    assert usage_value("model", "gpt") == "gpt"


def test_policy_rows_describe_retry_timeout_resources_and_concurrency():
    node_spec = {
        "id": "a",
        "retry": {"max_attempts": 3, "backoff_ms": 500, "strategy": "exponential",
                  "max_backoff_ms": 10000, "jitter": 0.1},
        "timeout_ms": 30000,
        "resources": {"cpus": 2, "memory": 512 * 1024**2, "custom": {"sp_slot": 1}},
        "concurrency_key": "llm",
    }  # fmt: skip
    spec = {"concurrency": {"per_key": {"llm": 4}}}
    assert policy_rows(node_spec, spec) == [
        (
            "Retry",
            "up to 3 attempts, exponential backoff from 500 ms (at most 10.0 s), jitter ±10%",
        ),
        ("Timeout", "30.0 s"),
        ("Resources", "2 cpus · 512.0 MiB memory · sp_slot 1"),
        ("Concurrency key", "llm (4 at a time)"),
    ]
    assert policy_rows({"id": "b"}, {})[:3] == [
        ("Retry", "no retry"),
        ("Timeout", "none"),
        ("Resources", "default"),
    ]


def test_final_key_names_one_final_transition():
    assert final_key(node("a")) is None
    done = {**node("a", "FAILED"), "attempt": 2, "finished_at": ts(3)}
    assert final_key(done) == ("a", 2, "FAILED", ts(3))


# -- in the simulated browser


def record_javascript(user: Any) -> list[str]:
    """The JavaScript the server sends from now on (grid methods are fire-and-forget)."""
    sent: list[str] = []
    emit = user.client.outbox._emit

    async def recording_emit(message: Any) -> None:
        _, kind, data = message
        if kind == "run_javascript":
            sent.append(data["code"])
        await emit(message)

    user.client.outbox._emit = recording_emit
    return sent


def transactions(sent: list[str]) -> list[dict[str, Any]]:
    """The applyTransaction arguments among the sent JavaScript, in order."""
    out = []
    for code in sent:
        m = re.search(r'runMethod\(\d+, "run_grid_method", (.*)\)$', code, re.S)
        if m:
            name, *args = json.loads(m.group(1))
            if name == "applyTransaction":
                out.append(args[0])
    return out


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


async def test_trace_expands_collapses_selects_and_follows_the_run():
    views: dict[str, Any] = {}
    selected: list[str] = []

    def root() -> None:
        model, ev = retried_model()
        views.update(model=model, ev=ev)
        views["trace"] = TraceView(model, Console(NO_SERVER), selected.append)

    async with user_simulation(root) as user:
        await user.open("/")
        trace: TraceView = views["trace"]
        model: RunModel = views["model"]
        grid = user.find(ui.aggrid).elements.pop()
        assert grid is trace.grid
        options = grid.options
        assert options[":getRowId"] == "(params) => params.data.id"
        assert ":cellRenderer" in options["columnDefs"][0]
        full_updates: list[int] = []
        original_update = grid.update
        grid.update = lambda: (full_updates.append(1), original_update())[1]
        sent = record_javascript(user)

        click = user.find(ui.aggrid)
        click.trigger("cellClicked", {"colId": "name", "rowId": "n:a"})
        await settle()
        assert [r["id"] for r in options["rowData"]] == ["r", "n:a", "a:a:1", "a:a:2", "n:b"]
        tx = transactions(sent)
        assert tx[0]["update"][0]["id"] == "n:a" and tx[0]["update"][0]["expanded"] is True
        assert tx[1]["addIndex"] == 2 and [r["id"] for r in tx[1]["add"]] == ["a:a:1", "a:a:2"]

        click.trigger("cellClicked", {"colId": "name", "rowId": "a:a:1"})
        await settle()
        assert [r["id"] for r in options["rowData"]][3] == "c:3"
        assert transactions(sent)[-1] == {"add": [trace.tree.row("c:3")], "addIndex": 3}

        # Another cell of a node's row (or one under it) selects the node.
        click.trigger("cellClicked", {"colId": "status", "rowId": "n:b"})
        click.trigger("cellClicked", {"colId": "detail", "rowId": "c:3"})
        await settle()
        assert selected == ["b", "a"]

        # Live: b starts (its row is updated), a gets a third attempt (added under it).
        ev = views["ev"]
        sent.clear()
        model.apply(
            [
                ev.status("b", "QUEUED", 6),
                ev.status("b", "RUNNING", 6.5),
                ev.status("a", "PENDING", 7, attempt=0),
                ev.status("a", "QUEUED", 7, attempt=3),
            ]
        )
        model.flush()
        await settle()
        tx = transactions(sent)
        updated = {r["id"]: r for r in tx[0]["update"]}
        assert updated["n:b"]["status"] == "RUNNING" and updated["n:a"]["status"] == "QUEUED"
        assert tx[1] == {"add": [trace.tree.row("a:a:3")], "addIndex": 5}
        assert [r["id"] for r in options["rowData"]] == [
            "r", "n:a", "a:a:1", "c:3", "a:a:2", "a:a:3", "n:b"
        ]  # fmt: skip
        assert options["rowData"][-1]["status"] == "RUNNING"  # the Python copy is in step

        # Collapsing removes the node's descendants from the browser's grid too.
        sent.clear()
        click.trigger("cellClicked", {"colId": "name", "rowId": "n:a"})
        await settle()
        tx = transactions(sent)
        assert tx[0] == {"remove": [{"id": i} for i in ("a:a:1", "c:3", "a:a:2", "a:a:3")]}
        assert [r["id"] for r in options["rowData"]] == ["r", "n:a", "n:b"]
        assert full_updates == []  # never re-sent the grid


async def test_trace_of_10000_nodes_changes_by_single_row_transactions():
    views: dict[str, Any] = {}
    node_ids = [f"n{i:05d}" for i in range(10_000)]

    def root() -> None:
        model = RunModel(make_run(*node_ids))
        views["model"] = model
        views["trace"] = TraceView(model, Console(NO_SERVER), lambda _: None)

    async with user_simulation(root) as user:
        await user.open("/")
        trace: TraceView = views["trace"]
        model: RunModel = views["model"]
        assert len(trace.grid.options["rowData"]) == 10_001
        sent = record_javascript(user)
        ev = Events()
        model.apply([ev.status("n09999", "QUEUED", 1), ev.status("n09999", "RUNNING", 2)])
        model.flush()
        await settle()
        tx = transactions(sent)
        assert len(tx) == 1 and [r["id"] for r in tx[0]["update"]] == ["n:n09999"]
        await trace.expand("n:n09999")
        await settle()
        assert trace.tree.index("a:n09999:1") == 10_001
        assert transactions(sent)[-1]["addIndex"] == 10_001


SPEC = {
    "name": "w",
    "version": "1",
    "nodes": [
        {"id": "a", "kind": "python", "params": {"callable": "sp_nodes:boom"},
         "retry": {"max_attempts": 2, "backoff_ms": 10}, "timeout_ms": 30000},
        {"id": "b", "kind": "python", "params": {"callable": "sp_nodes:chatty"}},
    ],
}  # fmt: skip


async def finished_run(server: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs SPEC on the real control plane (a fails twice, b calls a tool and reports
    usage); returns GetRun's dict and every event."""
    async with AsyncClient(server.address) as client:
        await client.register_workflow(SPEC)
        run_id = await client.start_run("w", version="1")
        await client.wait(run_id, timeout=60)
        run = (await client.get_run(run_id)).to_dict()
        events = [e.to_dict() for e in await client.list_events(run_id, limit=None)]
    return run, events


async def test_expanding_an_attempt_the_model_has_no_calls_of_fetches_them(server):
    run, events = await finished_run(server)
    views: dict[str, Any] = {}

    def root() -> None:
        model = RunModel(run)
        model.apply(e for e in events if e["kind"] != "tool_call")  # calls not seen
        views["console"] = Console(server.address)
        views["trace"] = TraceView(model, views["console"], lambda _: None)

    async with user_simulation(root) as user:
        await user.open("/")
        trace: TraceView = views["trace"]
        await trace.expand("n:b")
        await trace.expand("a:b:1")
        ids = [r["id"] for r in trace.grid.options["rowData"]]
        assert ids[:4] == ["r", "n:a", "n:b", "a:b:1"] and ids[4].startswith("c:")
        call = trace.tree.row(ids[4])
        assert (call["name"], call["kind"], call["detail"]) == ("search", "tool_call", '{"q": "x"}')
        # An attempt without calls becomes a leaf; the node was asked about once.
        await trace.expand("n:a")
        await trace.expand("a:a:2")
        row = trace.tree.row("a:a:2")
        assert (row["expandable"], row["expanded"]) == (False, False)
        assert set(trace._fetches) == {"a", "b"}
        await views["console"].close()


async def test_json_view_shows_null_scalars_trees_and_truncated_text():
    big = {"text": "x" * (MAX_TREE_CHARS + 10)}
    huge = {"text": "y" * (MAX_TEXT_CHARS + 10)}

    def root() -> None:
        json_view(None, label="nothing")
        json_view({"a": [1, 2]}, label="small")
        json_view(big, label="big")
        json_view(huge, label="huge")
        json_view("plain", label="scalar")

    async with user_simulation(root) as user:
        await user.open("/")
        await user.should_see(marker="json-null")
        editors = user.find(ui.json_editor).elements
        assert len(editors) == 1
        editor = editors.pop()
        assert editor.properties["readOnly"] is True and editor.properties["mode"] == "tree"
        assert editor.properties["content"] == {"json": {"a": [1, 2]}}
        # Past MAX_TREE_CHARS: text, not a tree; past MAX_TEXT_CHARS: cut, and said so.
        notes = [e.text for e in user.find(marker="json-truncated").elements]
        assert len(notes) == 2 and sum("copy takes all of it" in n for n in notes) == 1
        texts = [e.content for e in user.find(ui.html).elements]
        assert any("x" * MAX_TREE_CHARS in t for t in texts)
        assert all(len(t) < MAX_TEXT_CHARS + 200 for t in texts)
        await user.should_see('"plain"')
        assert len(user.find(marker="json-copy").elements) == 5


async def test_node_panel_follows_its_node_without_a_control_plane():
    """The spec cannot be fetched (no server): the policy section is hidden, the rest
    shows; a change of the open node re-renders it."""
    views: dict[str, Any] = {}

    async def root() -> None:
        model, ev = retried_model()
        model.nodes["a"]["usage"] = {"gen_ai.usage.input_tokens": 812}
        views.update(model=model, ev=ev)
        views["panel"] = panel = NodePanel(model, Console(NO_SERVER))
        await panel.open("a")

    async with user_simulation(root) as user:
        await user.open("/")
        panel: NodePanel = views["panel"]
        assert panel.is_open and panel.drawer.value is True
        await user.should_see(marker="panel-node-id")
        await user.should_see("open as page")
        link = user.find(marker="panel-page-link").elements.pop()
        assert link.props["href"] == "/runs/run-1/nodes/a"
        await user.should_see("attempt 1")
        await user.should_see("attempt 2")
        await user.should_see("flaky: try again")  # attempt 1's error
        await user.should_see("Worker pid")
        await user.should_see("4242")
        await user.should_see("Input tokens")
        await user.should_see("search")  # the tool call of attempt 1
        await user.should_not_see("Retry policy and resources")

        # The call's JSON is built when it is opened.
        call = user.find(marker="call-3").elements.pop()

        def editors() -> list[Any]:
            return [e for e in call.descendants() if isinstance(e, ui.json_editor)]

        assert editors() == []
        call.value = True
        await user.should_see("arguments")
        assert [e.properties["content"]["json"] for e in editors()][:2] == [{"q": "x"}, ["hit"]]

        model: RunModel = views["model"]
        ev = views["ev"]
        model.apply([ev.status("a", "PENDING", 8, attempt=0), ev.status("a", "QUEUED", 8, 3)])
        model.flush()
        await asyncio.sleep(0.3)
        await user.should_see("attempt 3")
        user.find(marker="panel-close").click()
        assert not panel.is_open and panel.drawer.value is False


async def test_node_panel_shows_a_failed_nodes_error_traceback_and_policy(server):
    run, events = await finished_run(server)
    # Node b as the page saw it before it finished: no usage, output or final event yet.
    b_done = next(e for e in events if e["node_id"] == "b" and e["status"] == "SUCCEEDED")
    before = [e for e in events if e is not b_done and e["kind"] != "output"]
    b_done = {**b_done, "seq": events[-1]["seq"] + 1}  # arrives after all the rest
    snapshot = json.loads(json.dumps(run))
    b = next(n for n in snapshot["nodes"] if n["node_id"] == "b")
    b.update(status="RUNNING", output=None, usage=None, finished_at=None)
    views: dict[str, Any] = {}

    async def root() -> None:
        model = RunModel(snapshot)
        model.apply(before)
        model.flush()
        views["model"] = model
        views["console"] = console = Console(server.address)
        get_run = console.client.get_run
        views["get_runs"] = get_runs = []

        async def counting_get_run(run_id: str) -> Any:
            get_runs.append(run_id)
            return await get_run(run_id)

        console.client.get_run = counting_get_run  # type: ignore[method-assign]
        views["panel"] = panel = NodePanel(model, console)
        await panel.open("a")

    async with user_simulation(root) as user:
        await user.open("/")
        await user.should_see(marker="panel-error")
        await user.should_see("boom")
        await user.should_see("Traceback")
        await user.should_see("ValueError")
        await user.should_see("attempt 2")
        await user.should_see("Retry policy and resources")
        await user.should_see("up to 2 attempts, fixed backoff from 10 ms")
        await user.should_see("30.0 s")
        await user.should_see("Executor")
        assert views["get_runs"] == []  # a was final in the snapshot already

        panel: NodePanel = views["panel"]
        model: RunModel = views["model"]
        await panel.open("b")
        await user.should_not_see(marker="panel-error")
        await user.should_see("search")
        await user.should_see("no retry")
        await user.should_not_see("Input tokens")
        # b finishes: the run is fetched once, and its usage and output appear.
        model.apply([b_done])
        model.flush()
        await user.should_see("Input tokens", retries=20)
        await user.should_see('"ok"')
        model.flush()
        await asyncio.sleep(0.3)
        assert views["get_runs"] == [run["run_id"]]
        await views["console"].close()
