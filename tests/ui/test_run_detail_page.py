"""The run page as a person uses it: a real control plane, NiceGUI's simulated user."""

from __future__ import annotations

import asyncio
from typing import Any

from nicegui import ui
from nicegui.testing.user import User
from sp_console import eventually, finished

from statepipe.client import AsyncClient
from ui.pages.run_detail import RunPage
from ui.run_model import RunModel, levels_of

STREAM = {
    "name": "stream",
    "version": "1",
    "nodes": [
        {
            "id": "draft",
            "kind": "python",
            "params": {"callable": "sp_ui:stream_words", "args": {"words": 60, "delay": 0.05}},
        },
        {"id": "after", "kind": "noop", "after": ["draft"]},
    ],
}
FAILING = {
    "name": "failing",
    "version": "1",
    "nodes": [
        {"id": "ok", "kind": "noop"},
        {
            "id": "transform",
            "kind": "python",
            "params": {"callable": "sp_ui:fail_with_context"},
            "after": ["ok"],
        },
    ],
}
SLOW = {
    "name": "slow",
    "version": "1",
    "nodes": [
        {
            "id": "wait",
            "kind": "python",
            "params": {"callable": "sp_nodes:sleep", "args": {"seconds": 30}},
        }
    ],
}


def the_page(user: User) -> RunPage:
    """The RunPage behind the user's current tab."""
    chip = next(iter(user.find(marker="run-status").elements))
    page = getattr(chip.client, "_statepipe_run_page", None)
    assert page is not None
    return page


def log_text(user: User) -> str:
    box = next(iter(user.find(marker="log-box").elements))
    parts = []
    for el in box.descendants():
        content = getattr(el, "content", None)
        if isinstance(content, str):
            parts.append(content)
    return " ".join(parts)


async def test_an_unknown_run_is_a_not_found_page(console_user: User) -> None:
    await console_user.open("/runs/no-such-run")
    await console_user.should_see("Run not found")
    await console_user.should_see("no-such-run")


async def test_an_unknown_address_is_a_not_found_page_with_status_404(
    console_user: User,
) -> None:
    response = await console_user.http_client.get("/no/such/page")
    assert response.status_code == 404
    assert "Page not found" in response.text and "/no/such/page" in response.text


async def test_a_failed_run_shows_its_error_nodes_and_traceback(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(FAILING)
        await finished(client, run_id)
    await console_user.open(f"/runs/{run_id}?tab=nodes")
    await console_user.should_see("failed", marker="run-status")
    await console_user.should_see("1 node(s) failed: 'transform'", marker="run-error")
    grid = next(iter(console_user.find(marker="nodes-grid").elements))
    assert isinstance(grid, ui.aggrid)
    rows = {r["id"]: r for r in grid.options["rowData"]}
    assert rows["ok"]["status"] == "SUCCEEDED"
    assert rows["transform"]["status"] == "FAILED"
    assert "the upstream API said no" in rows["transform"]["error"]

    # The node's own page opens the panel with the error and its traceback.
    await console_user.open(f"/runs/{run_id}/nodes/transform")
    await console_user.should_see("RuntimeError: the upstream API said no")
    await console_user.should_see("_call_upstream")


async def test_tokens_stream_into_the_log_before_the_run_ends(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(STREAM)
        await console_user.open(f"/runs/{run_id}?tab=log")
        await eventually(lambda: "w5 " in log_text(console_user))
        assert (await client.get_run(run_id)).status == "RUNNING"
        await finished(client, run_id)
    text = await eventually(lambda: "w59" in log_text(console_user) and log_text(console_user))
    # Joined into one text, each token once, in order.
    words = [w for w in text.split() if w.startswith("w") and w[1:].isdigit()]
    assert words == [f"w{i}" for i in range(60)]
    await console_user.should_see("succeeded", marker="run-status")


async def test_a_page_opened_mid_run_has_history_then_live_events_without_gap_or_double(
    console_user: User, server
) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(STREAM)
        async for event in client.watch(run_id):
            if event.kind == "token" and event.message == "w20 ":
                break
        await console_user.open(f"/runs/{run_id}?tab=log")
        await finished(client, run_id)
        total = (await client.get_run(run_id)).last_seq
    page = the_page(console_user)
    await eventually(lambda: page.model.last_seq == total)
    assert [e["seq"] for e in page.model.events] == list(range(1, total + 1))
    assert page.model.run["status"] == "SUCCEEDED"
    assert page.model.nodes["after"]["status"] == "SUCCEEDED"


async def test_controls_follow_the_lifecycle_and_results_arrive_through_the_stream(
    console_user: User, server
) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(SLOW)
        await console_user.open(f"/runs/{run_id}")
        await console_user.should_see("running", marker="run-status")
        await console_user.should_see(marker="control-pause")
        await console_user.should_not_see(marker="control-resume")

        console_user.find(marker="control-pause").click()
        await console_user.should_see("paused", marker="run-status", retries=100)
        assert (await client.get_run(run_id)).status == "PAUSED"
        await console_user.should_see(marker="control-resume")
        await console_user.should_not_see(marker="control-pause")

        console_user.find(marker="control-resume").click()
        await console_user.should_see("running", marker="run-status", retries=100)

        # Cancel asks first; keeping it running changes nothing.
        console_user.find(marker="control-cancel").click()
        await console_user.should_see("Keep running")
        console_user.find("Keep running").click()
        await asyncio.sleep(0.3)
        assert (await client.get_run(run_id)).status == "RUNNING"
        console_user.find(marker="control-cancel").click()
        await console_user.should_see(marker="confirm-cancel")
        console_user.find(marker="confirm-cancel").click()
        await console_user.should_see("cancelled", marker="run-status", retries=100)
        assert (await client.get_run(run_id)).status == "CANCELLED"
        await console_user.should_not_see(marker="control-cancel")


async def test_a_refused_control_says_why_and_the_page_keeps_working(
    console_user: User, server
) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(SLOW)
        await console_user.open(f"/runs/{run_id}")
        await console_user.should_see(marker="control-pause")
        # Someone else cancels it before this person's click lands.
        await client.cancel(run_id)
        page = the_page(console_user)
        await page.control("pause")
        await console_user.should_see("cannot pause run")
        await console_user.should_see("cancelled", marker="run-status", retries=100)


def test_levels_put_a_node_one_below_its_deepest_parent() -> None:
    nodes = {
        "a": {"after": []},
        "b": {"after": ["a"]},
        "c": {"after": ["a"]},
        "d": {"after": ["b", "c"]},
        "e": {"after": ["a", "d"]},
    }
    assert levels_of(nodes) == [["a"], ["b", "c"], ["d"], ["e"]]
    chain = {f"n{i}": {"after": [f"n{i - 1}"] if i else []} for i in range(5000)}
    assert len(levels_of(dict(reversed(list(chain.items()))))) == 5000


def test_replayed_events_fill_attempts_but_do_not_move_statuses_back() -> None:
    run = {
        "run_id": "r",
        "status": "SUCCEEDED",
        "last_seq": 4,
        "node_counts": {"SUCCEEDED": 1},
        "nodes": [{"node_id": "a", "status": "SUCCEEDED", "attempt": 2, "after": []}],
    }
    model = RunModel(run)

    def ev(seq: int, status: str, attempt: int, **extra: Any) -> dict[str, Any]:
        return {"seq": seq, "ts": f"2026-01-01T00:00:0{seq}.000Z", "kind": "node_status",
                "node_id": "a", "attempt": attempt, "status": status, "message": "",
                "level": "", "data": None, **extra}  # fmt: skip

    model.apply([ev(1, "RUNNING", 1), ev(2, "RETRY_WAIT", 1, message="boom")])
    assert model.nodes["a"]["status"] == "SUCCEEDED"
    model.apply([ev(2, "RETRY_WAIT", 1), ev(3, "RUNNING", 2), ev(4, "SUCCEEDED", 2)])
    assert [a.attempt for a in model.attempts["a"]] == [1, 2]
    first = model.attempts["a"][0]
    assert first.error == "boom" and first.retry_until == "2026-01-01T00:00:03.000Z"
    assert len(model.events) == 4  # the doubled seq 2 was dropped
    assert model.run["node_counts"] == {"SUCCEEDED": 1}


async def test_retry_node_runs_a_failed_node_again_from_its_panel(
    console_user: User, server, tmp_path
) -> None:
    spec = {
        "name": "flaky",
        "version": "1",
        "nodes": [
            {
                "id": "flaky",
                "kind": "python",
                "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}},
            }
        ],
    }
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(spec)
        await finished(client, run_id)
        assert (await client.get_run(run_id)).status == "FAILED"
        await console_user.open(f"/runs/{run_id}/nodes/flaky")
        await console_user.should_see(marker="control-retry-node")
        console_user.find(marker="control-retry-node").click()
        await console_user.should_see("succeeded", marker="run-status", retries=150)
        run = await client.get_run(run_id)
        assert run.status == "SUCCEEDED" and run.node("flaky").attempt == 2
        await console_user.should_not_see(marker="control-retry-node")


async def test_a_big_runs_rows_are_not_inside_the_page_but_sent_to_the_grid(
    console_user: User, server
) -> None:
    nodes = [{"id": f"n{i:04d}", "kind": "noop"} for i in range(2000)]
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run({"name": "wide", "version": "1", "nodes": nodes})
        await finished(client, run_id)
    response = await console_user.http_client.get(f"/runs/{run_id}?tab=nodes")
    assert response.status_code == 200
    assert len(response.text) < 200_000, len(response.text)  # 2,000 rows would be ~250 KB
    await console_user.open(f"/runs/{run_id}?tab=nodes")
    grid = next(iter(console_user.find(marker="nodes-grid").elements))
    assert len(grid.options["rowData"]) == 2000
    assert grid._to_dict()["props"]["options"]["rowData"] == []


def test_replayed_history_tells_the_views_which_nodes_gained_attempts() -> None:
    run = {
        "run_id": "r",
        "status": "SUCCEEDED",
        "last_seq": 3,
        "node_counts": {"SUCCEEDED": 1},
        "nodes": [{"node_id": "a", "status": "SUCCEEDED", "attempt": 2, "after": []}],
    }
    model = RunModel(run)
    seen: list[list[str]] = []
    model.on_nodes(seen.append)
    model.apply(
        [
            {"seq": s, "ts": f"2026-01-01T00:00:0{s}.000Z", "kind": "node_status",
             "node_id": "a", "attempt": a, "status": st, "message": "", "level": "",
             "data": None}
            for s, a, st in ((1, 1, "RUNNING"), (2, 1, "RETRY_WAIT"), (3, 2, "RUNNING"))
        ]
    )  # fmt: skip
    model.flush()
    assert seen == [["a"]]
    assert model.nodes["a"]["status"] == "SUCCEEDED"
    assert [a.attempt for a in model.attempts["a"]] == [1, 2]


async def test_a_long_log_shows_its_newest_lines_and_stays_bounded(
    console_user: User, server
) -> None:
    spec = {
        "name": "chatter",
        "version": "1",
        "nodes": [
            {"id": "talk", "kind": "python",
             "params": {"callable": "sp_ui:log_lines", "args": {"n": 6000}}},
        ],
    }  # fmt: skip
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(spec)
        await finished(client, run_id)
    for path in (f"/runs/{run_id}?tab=log", f"/runs/{run_id}/nodes/talk"):
        await console_user.open(path)
        for box in list(console_user.find(marker="log-box").elements):

            def text(b: Any = box) -> str:
                return " ".join(getattr(e, "content", "") or "" for e in b.descendants())

            await eventually(lambda: "line 5999" in text())
            lines = [e for e in box.descendants() if "sp-log-line" in e.classes]
            assert len(lines) <= 2000, (path, len(lines))
            assert "run" in text() or path.endswith("talk")


async def test_clicking_a_node_table_row_opens_its_panel(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(FAILING)
        await finished(client, run_id)
    await console_user.open(f"/runs/{run_id}?tab=nodes")
    page = the_page(console_user)
    # What AG Grid sends for a click on the row (the browser side is not simulated).
    click = type("Click", (), {"args": {"data": {"id": "transform"}, "colId": "kind"}})()
    await page.views["nodes"]._clicked(click)
    assert page.panel.is_open and page.panel.node_id == "transform"


async def test_the_output_appears_when_a_resumed_run_ends_again(console_user: User, server) -> None:
    spec = {
        "name": "comeback",
        "version": "1",
        "nodes": [
            {"id": "flaky", "kind": "python",
             "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": 2}}},
        ],
    }  # fmt: skip
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(spec)
        await finished(client, run_id)
        await console_user.open(f"/runs/{run_id}")
        page = the_page(console_user)
        await eventually(lambda: page.model.last_seq > 0)
        await client.resume(run_id)
        await eventually(lambda: page.model.run.get("output") == {"flaky": 2})


def test_bidi_controls_in_a_log_line_are_shown_not_obeyed() -> None:
    from ui.views.log import render_event

    html_text, _ = render_event(
        {"seq": 1, "ts": None, "kind": "log", "node_id": "n", "attempt": 1, "status": "",
         "message": "abc\u202edef", "level": "info", "data": None}
    )  # fmt: skip
    assert "\u202e" not in html_text and "&lt;U+202E&gt;" in html_text


async def test_the_header_shows_the_runs_usage_total(console_user: User, server) -> None:
    node = {"kind": "python", "params": {"callable": "sp_nodes:metered"}}
    spec = {"name": "metered", "version": "1",
            "nodes": [{"id": "a", **node}, {"id": "b", **node, "after": ["a"]}]}  # fmt: skip
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(spec)
        await finished(client, run_id)
    await console_user.open(f"/runs/{run_id}")
    await console_user.should_see("20 in / 10 out tokens · $0.0020")
