"""The runs dashboard, as a person uses it, against a real control plane."""

from __future__ import annotations

from typing import Any

import pytest
from nicegui import ui
from nicegui.testing.user import User
from sp_console import eventually, finished

from statepipe.client import AsyncClient
from ui.pages.runs import Filters, parse_labels, row_of, summary_of

QUICK = {
    "name": "quick",
    "version": "1",
    "nodes": [
        {"id": "a", "kind": "python", "params": {"callable": "sp_nodes:echo", "args": {"x": 1}}}
    ],
}
FAILING = {
    "name": "failing",
    "version": "1",
    "nodes": [{"id": "a", "kind": "python", "params": {"callable": "sp_nodes:boom"}}],
}
SLOW = {
    "name": "slow",
    "version": "1",
    "nodes": [
        {
            "id": "a",
            "kind": "python",
            "params": {"callable": "sp_nodes:sleep", "args": {"seconds": 30}},
        }
    ],
}


def grid_rows(user: User) -> list[dict[str, Any]]:
    grid = next(iter(user.find(marker="runs-grid").elements))
    assert isinstance(grid, ui.aggrid)
    return list(grid.options["rowData"])


async def test_an_empty_dashboard_says_how_to_start(console_user: User) -> None:
    await console_user.open("/")
    await console_user.should_see("no runs match this view")
    assert grid_rows(console_user) == []


async def test_runs_are_listed_newest_first_with_status_and_summary(
    console_user: User, server
) -> None:
    async with AsyncClient(server.address) as client:
        first = await client.start_run(QUICK, labels={"env": "test"})
        await finished(client, first)
        second = await client.start_run(FAILING)
        await finished(client, second)
    await console_user.open("/")
    rows = await eventually(lambda: grid_rows(console_user))
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["status"] == "FAILED" and rows[0]["failed"]
    assert "failed" in rows[0]["summary"]
    assert rows[1]["status"] == "SUCCEEDED" and rows[1]["labels"] == {"env": "test"}
    assert rows[1]["counts"] == {"SUCCEEDED": 1}


async def test_a_new_run_appears_on_top_and_its_status_changes_live(
    console_user: User, server
) -> None:
    await console_user.open("/")
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(SLOW)
        rows = await eventually(lambda: [r for r in grid_rows(console_user) if r["id"] == run_id])
        assert rows[0]["status"] in ("PENDING", "RUNNING")
        await eventually(
            lambda: (
                grid_rows(console_user)[0]["status"] == "RUNNING"
                and grid_rows(console_user)[0]["id"] == run_id
            )
        )
        await client.cancel(run_id)
        await eventually(lambda: grid_rows(console_user)[0]["status"] == "CANCELLED")


async def test_the_status_filter_comes_from_the_url_and_a_run_leaving_it_goes(
    console_user: User, server
) -> None:
    async with AsyncClient(server.address) as client:
        done = await client.start_run(QUICK)
        await finished(client, done)
        slow = await client.start_run(SLOW)
        await console_user.open("/?status=RUNNING,PENDING")
        await eventually(lambda: [r["id"] for r in grid_rows(console_user)] == [slow])
        await client.cancel(slow)
        await eventually(lambda: grid_rows(console_user) == [])
    await console_user.open("/?status=SUCCEEDED")
    await eventually(lambda: [r["id"] for r in grid_rows(console_user)] == [done])


async def test_text_label_and_workflow_filters_narrow_the_list(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        a = await client.start_run(QUICK, labels={"team": "ml"})
        b = await client.start_run(FAILING, labels={"team": "web"})
        for run_id in (a, b):
            await finished(client, run_id)
    await console_user.open("/?label=team=ml")
    await eventually(lambda: [r["id"] for r in grid_rows(console_user)] == [a])
    await console_user.open("/?workflow=failing")
    await eventually(lambda: [r["id"] for r in grid_rows(console_user)] == [b])
    await console_user.open(f"/?q={b[:10]}")
    await eventually(lambda: [r["id"] for r in grid_rows(console_user)] == [b])


async def test_a_sort_in_the_url_orders_on_the_server(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        ids = []
        for spec in (FAILING, QUICK):
            run_id = await client.start_run(spec)
            await finished(client, run_id)
            ids.append(run_id)
    await console_user.open("/?sort=workflow_name")
    rows = await eventually(lambda: grid_rows(console_user))
    assert [r["workflow"] for r in rows] == ["failing", "quick"]
    await console_user.open("/?sort=-workflow_name")
    rows = await eventually(lambda: grid_rows(console_user))
    assert [r["workflow"] for r in rows] == ["quick", "failing"]


async def test_paging_walks_the_runs_fifty_at_a_time(console_user: User, server) -> None:
    async with AsyncClient(server.address) as client:
        ids = [await client.start_run(QUICK) for _ in range(55)]
        for run_id in ids:
            await finished(client, run_id)
    await console_user.open("/")
    await eventually(lambda: len(grid_rows(console_user)) == 50)
    console_user.find(marker="runs-next").click()
    await eventually(lambda: len(grid_rows(console_user)) == 5)
    assert {r["id"] for r in grid_rows(console_user)} <= set(ids[:5])
    console_user.find(marker="runs-prev").click()
    await eventually(lambda: len(grid_rows(console_user)) == 50)


async def test_changing_a_filter_puts_it_in_the_url(console_user: User) -> None:
    await console_user.open("/")
    console_user.find(marker="filter-text").type("abc")
    await eventually(lambda: console_user.back_history and "q=abc" in console_user.back_history[-1])


@pytest.mark.parametrize(
    ("text", "labels"),
    [("env=prod,team=ml", {"env": "prod", "team": "ml"}), ("bad, =x, k=", {"k": ""}), ("", {})],
)
def test_label_filters_parse(text: str, labels: dict[str, str]) -> None:
    assert parse_labels(text) == labels


def test_filters_round_trip_through_the_url() -> None:
    f = Filters(status="running,bogus", workflow="w", label="a=b", q="x", sort="-duration_ms")
    assert f.statuses == ["RUNNING"]
    assert f.query() == "?status=RUNNING&workflow=w&label=a%3Db&q=x&sort=-duration_ms"
    assert Filters(sort="nonsense").sort == "-created_at"


def test_a_row_sums_tokens_and_shows_cost_and_the_summary() -> None:
    run = {
        "run_id": "r1", "status": "SUCCEEDED", "workflow_name": "w", "workflow_version": "1",
        "labels": {}, "created_at": None, "started_at": None, "finished_at": None,
        "updated_at": None, "node_counts": {}, "error": "", "output": {"answer": 42},
        "usage": {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
                  "cost_usd": 0.25},
    }  # fmt: skip
    row = row_of(run)
    assert row["tokens"] == 15 and row["cost"] == 0.25
    assert row["summary"] == '{"answer":42}'
    assert summary_of({**run, "error": "x failed\nTraceback"}) == "x failed"


async def test_what_the_address_asks_for_that_is_no_filter_is_said(console_user: User) -> None:
    await console_user.open("/?status=running,bogus&sort=nonsense&label=novalue")
    await console_user.should_see("status 'bogus'", marker="runs-ignored")
    await console_user.should_see("sort 'nonsense'", marker="runs-ignored")
    await console_user.should_see("label 'novalue'", marker="runs-ignored")
    await console_user.open("/?status=running")
    await console_user.should_not_see(marker="runs-ignored")
