"""A lost control plane: the console says so, reconnects by itself, and resumes each
stream from the last seq it had (nothing missed, nothing doubled)."""

from __future__ import annotations

from typing import Any

from nicegui import ElementFilter
from sp_console import console_user_of, eventually, free_port

from statepipe.client import AsyncClient
from ui.pages.run_detail import RunPage

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


def banner_shown(user: Any) -> bool:
    with user:
        banner = next(iter(ElementFilter(marker="connection-banner", only_visible=False)))
    return bool(banner.visible)


async def test_the_banner_shows_while_the_plane_is_gone_and_streams_resume_without_gaps(
    make_server,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    first = make_server(listen=listen)
    async with console_user_of(first.address) as user:
        async with AsyncClient(first.address) as client:
            run_id = await client.start_run(STREAM)
            await user.open(f"/runs/{run_id}?tab=log")
            chip = next(iter(user.find(marker="run-status").elements))
            page: RunPage = chip.client._statepipe_run_page
            await eventually(lambda: page.model.last_seq >= 8)
            assert not banner_shown(user)

        first.stop()  # the run is left RUNNING in the database, its lease unrenewed
        await eventually(lambda: banner_shown(user))
        seen_while_down = page.model.last_seq

        second = make_server(listen=listen)  # takes the orphaned run over and finishes it
        await eventually(lambda: not banner_shown(user), timeout=30)
        async with AsyncClient(second.address) as client:
            async for _ in client.watch(run_id):
                pass
            run = await client.get_run(run_id)
        await eventually(lambda: page.model.last_seq == run.last_seq, timeout=30)
        assert run.last_seq > seen_while_down
        assert [e["seq"] for e in page.model.events] == list(range(1, run.last_seq + 1))
        assert page.model.run["status"] == run.status == "SUCCEEDED"


async def test_the_dashboard_reconnects_and_shows_runs_started_while_it_was_away(
    make_server,
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    first = make_server(listen=listen)
    async with console_user_of(first.address) as user:
        await user.open("/")
        await user.should_see("no runs match this view")
        first.stop()
        await eventually(lambda: banner_shown(user))
        second = make_server(listen=listen)
        async with AsyncClient(second.address) as client:
            run_id = await client.start_run(
                {"name": "n", "version": "1", "nodes": [{"id": "a", "kind": "noop"}]}
            )
            await eventually(lambda: not banner_shown(user), timeout=30)
            grid = next(iter(user.find(marker="runs-grid").elements))
            await eventually(
                lambda: [r["id"] for r in grid.options["rowData"]] == [run_id], timeout=20
            )
