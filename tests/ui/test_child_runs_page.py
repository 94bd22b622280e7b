"""Child runs in the console, as a person meets them: nested in the trace under the
node that started them (a workflow node's child, a map node's items in index order),
live; the child's page names its parent; the dashboard leaves children out unless
asked. A real control plane, NiceGUI's simulated user."""

from __future__ import annotations

from typing import Any

import pytest
from nicegui import ui
from nicegui.testing.user import User
from sp_console import eventually, finished

from statepipe.client import AsyncClient
from ui.child_runs import children_summary, group_of, split_parent_node
from ui.pages.run_detail import RunPage
from ui.pages.runs import Filters
from ui.views.trace import TraceTree, TraceView

SLOW_CHILD = {
    "name": "slow-child",
    "version": "1",
    "nodes": [
        {
            "id": "nap",
            "kind": "python",
            "params": {
                "callable": "sp_nodes:sleep",
                "args": {"seconds": "{{ input.seconds }}", "value": "{{ input.seconds }}"},
            },
        }
    ],
}


def parent_of_slow(seconds: float) -> dict[str, Any]:
    return {
        "name": "parent",
        "version": "1",
        "nodes": [
            {
                "id": "sub",
                "kind": "workflow",
                "params": {"workflow": "slow-child", "input": {"seconds": seconds}},
            }
        ],
    }


ECHO_ITEM = {"kind": "python", "params": {"callable": "sp_nodes:echo", "args": {"x": "{{ item }}"}}}
MAPPER = {
    "name": "mapper",
    "version": "1",
    "nodes": [
        {
            "id": "each",
            "kind": "map",
            "params": {"items": list(range(12)), "node": ECHO_ITEM, "max_concurrency": 5},
        },
        {
            # Item 2 fails (it would need a 9th attempt); the map goes on.
            "id": "some_fail",
            "kind": "map",
            "params": {
                "items": [1, 1, 9, 1],
                "node": {
                    "kind": "python",
                    "params": {
                        "callable": "sp_nodes:fail_until",
                        "args": {"succeed_on": "{{ item }}"},
                    },
                },
                "continue_on_failure": True,
            },
        },
    ],
}


def the_page(user: User) -> RunPage:
    chip = next(iter(user.find(marker="run-status").elements))
    page = getattr(chip.client, "_statepipe_run_page", None)
    assert page is not None
    return page


def trace_of(user: User) -> TraceView:
    return the_page(user).views["trace"]


def row_ids(trace: TraceView) -> list[str]:
    return [r["id"] for r in trace.grid.options["rowData"]]


def grid_rows(user: User, marker: str) -> list[dict[str, Any]]:
    grid = next(iter(user.find(marker=marker).elements))
    assert isinstance(grid, ui.aggrid)
    return list(grid.options["rowData"])


@pytest.fixture
def list_runs_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every AsyncClient.list_runs call from now on."""
    calls: list[dict[str, Any]] = []
    original = AsyncClient.list_runs

    async def counting(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "list_runs", counting)
    return calls


# -- pure parts


def test_a_map_items_node_id_names_its_map_node_and_index() -> None:
    assert split_parent_node("summarize[3]") == ("summarize", 3)
    assert split_parent_node("sub") == ("sub", None)
    assert split_parent_node("odd[x]") == ("odd[x]", None)
    # "[3]" at the end of a node id that is no map item stays the node's id.
    assert group_of({"parent_node_id": "a[3]"}, {"a[3]": {}}) == ("a[3]", None)
    assert group_of({"parent_node_id": "a[3]"}, {"a": {}}) == ("a", 3)


def test_the_children_summary_counts_items_by_status() -> None:
    runs = [{"status": s} for s in ["SUCCEEDED"] * 7 + ["FAILED"]]
    assert children_summary(runs, items=True) == "8 items · 7 ✓ 1 ✗"
    assert children_summary(runs[:2], items=True, total=5) == "5 items · 2 ✓ 3 not started"
    assert children_summary([{"status": "RUNNING"}], items=False) == "child run · running"
    assert (
        children_summary([{"status": "RUNNING"}, {"status": "SUCCEEDED"}], items=False)
        == "2 child runs · 1 ✓ 1 running"
    )


def test_rows_added_under_a_node_keep_their_order() -> None:
    tree = TraceTree(
        [
            {"id": "r", "depth": 0},
            {"id": "n:m", "depth": 1},
            {"id": "a:m:1", "depth": 2, "order": [0, 1, "", ""]},
            {"id": "k:b", "depth": 2, "order": [1, 2, "", "b"]},
            {"id": "kn:b:x", "depth": 3},
            {"id": "n:z", "depth": 1},
        ]
    )
    assert tree.add_child("n:m", {"id": "k:c", "depth": 2, "order": [1, 5, "", "c"]})[0] == 5
    assert tree.add_child("n:m", {"id": "k:a", "depth": 2, "order": [1, 0, "", "a"]})[0] == 3
    assert tree.add_child("n:m", {"id": "a:m:2", "depth": 2, "order": [0, 2, "", ""]})[0] == 3
    assert [r["id"] for r in tree.rows] == [
        "r", "n:m", "a:m:1", "a:m:2", "k:a", "k:b", "kn:b:x", "k:c", "n:z"
    ]  # fmt: skip


def test_the_dashboard_filter_keeps_child_runs_in_the_url() -> None:
    f = Filters()
    assert not f.children and f.query() == ""
    assert f.list_args()["roots_only"] and f.watch_args()["roots_only"]
    assert not f.matches({"status": "RUNNING", "parent_run_id": "p"})
    f = Filters(children="1")
    assert f.query() == "?children=1" and not f.list_args()["roots_only"]
    assert f.matches({"status": "RUNNING", "parent_run_id": "p"})


# -- against the control plane


async def test_a_workflow_nodes_child_nests_under_it_and_turns_succeeded_live(
    console_user: User, server, list_runs_calls: list[dict[str, Any]]
) -> None:
    async with AsyncClient(server.address) as client:
        await client.register_workflow(SLOW_CHILD)
        run_id = await client.start_run(parent_of_slow(2.0))
        await console_user.open(f"/runs/{run_id}?tab=trace")
        trace = trace_of(console_user)
        children = trace.children
        assert children is not None
        # Loaded when the trace was first shown.
        (child_id,) = await eventually(lambda: list(children.runs))
        await eventually(lambda: trace.tree.row("n:sub")["expandable"])
        await trace.expand("n:sub")
        row = await eventually(lambda: trace.tree.row(f"k:{child_id}"))
        ids = row_ids(trace)
        assert ids.index(f"k:{child_id}") > ids.index("n:sub")
        assert (row["depth"], row["kind"], row["name"]) == (2, "child run", "slow-child")
        assert row["href"] == f"/runs/{child_id}"
        assert row["status"] in ("PENDING", "RUNNING")
        assert (await client.get_run(child_id)).status != "SUCCEEDED"

        # Its nodes, one level down, on demand.
        await trace.expand(f"k:{child_id}")
        nap = trace.tree.row(f"kn:{child_id}:nap")
        assert nap is not None and nap["depth"] == 3
        assert nap["href"] == f"/runs/{child_id}/nodes/nap"

        await finished(client, run_id)
    # Pushed by WatchRuns(parent): the child's row and its node's row follow.
    await eventually(lambda: trace.tree.row(f"k:{child_id}")["status"] == "SUCCEEDED")
    await eventually(lambda: trace.tree.row(f"kn:{child_id}:nap")["status"] == "SUCCEEDED")
    await eventually(lambda: trace.tree.row("n:sub")["detail"] == "child run · succeeded")
    # Listed once, never asked again.
    assert [c.get("parent") for c in list_runs_calls] == [run_id]

    # The node's panel lists its child with a link.
    await the_page(console_user).select("sub")
    await console_user.should_see(marker=f"panel-child-{child_id}")
    link = next(iter(console_user.find(marker=f"panel-child-{child_id}").elements))
    assert link.props["href"] == f"/runs/{child_id}"

    # The child's own page names its parent run and node.
    await console_user.open(f"/runs/{child_id}")
    await console_user.should_see("child of", marker="run-parent")
    parent_link = next(iter(console_user.find(marker="run-parent-link").elements))
    assert parent_link.props["href"] == f"/runs/{run_id}"
    node_link = next(iter(console_user.find(marker="run-parent-node").elements))
    assert node_link.text == "sub" and node_link.props["href"] == f"/runs/{run_id}/nodes/sub"


async def test_map_items_nest_under_the_map_node_in_index_order(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(MAPPER)
        await finished(client, run_id)
        item = next(
            c
            for c in await client.list_runs(parent=run_id, limit=None)
            if c.parent_node_id == "some_fail[2]"
        )
    await console_user.open(f"/runs/{run_id}?tab=trace")
    trace = trace_of(console_user)
    await eventually(lambda: trace.tree.row("n:each")["detail"] == "12 items · 12 ✓")
    await eventually(lambda: trace.tree.row("n:some_fail")["detail"] == "4 items · 3 ✓ 1 ✗")
    await trace.expand("n:each")
    ids = row_ids(trace)
    start = ids.index("n:each")
    under = ids[start + 1 : ids.index("n:some_fail")]
    assert under[0] == "a:each:1"  # the map node's attempt, then its items
    names = [trace.tree.row(i)["name"] for i in under[1:]]
    assert names == [f"each[{i}]" for i in range(12)]
    assert {trace.tree.row(i)["kind"] for i in under[1:]} == {"map item"}

    # The node table shows the counts; the failed item's page names its map node.
    the_page(console_user)._open_tab("nodes")
    rows = {r["id"]: r for r in grid_rows(console_user, "nodes-grid")}
    assert rows["some_fail"]["children"] == "4 items · 3 ✓ 1 ✗"
    await console_user.open(f"/runs/{item.run_id}")
    await console_user.should_see("some_fail[2]", marker="run-parent-node")
    node_link = next(iter(console_user.find(marker="run-parent-node").elements))
    assert node_link.props["href"] == f"/runs/{run_id}/nodes/some_fail"


async def test_items_of_a_running_map_appear_under_its_expanded_node_as_they_start(
    console_user: User, server
) -> None:
    napping = {"kind": "python", "params": {"callable": "sp_nodes:sleep", "args": {"seconds": 0.8}}}
    spec = {
        "name": "slow-mapper",
        "version": "1",
        "nodes": [
            {
                "id": "each",
                "kind": "map",
                "params": {"items": list(range(6)), "node": napping, "max_concurrency": 2},
            }
        ],
    }
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(spec)
        await console_user.open(f"/runs/{run_id}?tab=trace")
        trace = trace_of(console_user)
        await eventually(lambda: trace.tree.row("n:each")["expandable"])
        await trace.expand("n:each")
        # Not all items have started yet when the node is open.
        assert len(trace.children.runs) < 6
        await finished(client, run_id)

    def items() -> list[dict[str, Any]]:
        return [r for r in trace.grid.options["rowData"] if r["id"].startswith("k:")]

    await eventually(lambda: len(items()) == 6 and all(r["status"] == "SUCCEEDED" for r in items()))
    assert [r["name"] for r in items()] == [f"each[{i}]" for i in range(6)]
    await eventually(lambda: trace.tree.row("n:each")["detail"] == "6 items · 6 ✓")


async def test_the_dashboard_hides_child_runs_unless_asked(console_user: User, server) -> None:
    await console_user.open("/")
    async with AsyncClient(server.address) as client:
        await client.register_workflow(SLOW_CHILD)
        run_id = await client.start_run(parent_of_slow(0.2))
        await finished(client, run_id)
        (child,) = await client.list_runs(parent=run_id)
    # Live: the parent came and finished, its child never showed.
    await eventually(
        lambda: (
            [(r["id"], r["status"]) for r in grid_rows(console_user, "runs-grid")]
            == [(run_id, "SUCCEEDED")]
        )
    )
    await console_user.open("/")
    await eventually(lambda: [r["id"] for r in grid_rows(console_user, "runs-grid")] == [run_id])

    # The toggle puts it in the URL; the child's row names its parent.
    console_user.find(marker="filter-children").click()
    await eventually(
        lambda: console_user.back_history and "children=1" in console_user.back_history[-1]
    )
    await console_user.open("/?children=1")
    rows = await eventually(
        lambda: (
            {r["id"]: r for r in grid_rows(console_user, "runs-grid")}.keys()
            == {run_id, child.run_id}
            and {r["id"]: r for r in grid_rows(console_user, "runs-grid")}
        )
    )
    assert rows[child.run_id]["parent_run_id"] == run_id
    assert rows[child.run_id]["parent_node_id"] == "sub"
    assert rows[run_id]["parent_run_id"] is None
