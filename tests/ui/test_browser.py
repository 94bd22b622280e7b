"""The console in a real Chromium: a person watching a streaming run, pausing and
resuming it, reading a failure, filtering the dashboard.

The control plane runs on loopback (embedded Postgres), the console in its own
process, Chromium headless at 1280x800. Screenshots of each page land in the
artifacts directory (test-artifacts/ui, or $STATEPIPE_TEST_ARTIFACTS/ui).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from sp_console import ConsoleProcess, artifacts_dir

from statepipe.client import Client

pytestmark = pytest.mark.timeout(240)

STREAMING = {
    "name": "streaming-agent",
    "version": "1",
    "description": "streams an answer, then summarizes it",
    "input_schema": {
        "type": "object",
        "required": ["topic"],
        "properties": {
            "topic": {"type": "string", "description": "what to write about"},
            "words": {"type": "integer", "minimum": 1, "default": 60},
        },
    },
    "nodes": [
        {
            "id": "draft",
            "kind": "python",
            "params": {"callable": "sp_ui:stream_words", "args": {"words": 80, "delay": 0.06}},
        },
        {
            "id": "summarize",
            "kind": "python",
            "params": {"callable": "sp_nodes:echo", "args": {"done": True}},
            "after": ["draft"],
        },
    ],
}
FAILING = {
    "name": "nightly-etl",
    "version": "1",
    "nodes": [
        {"id": "extract", "kind": "python", "params": {"callable": "sp_nodes:echo"}},
        {
            "id": "transform",
            "kind": "python",
            "params": {"callable": "sp_ui:fail_with_context"},
            "after": ["extract"],
        },
        {
            "id": "load",
            "kind": "python",
            "params": {"callable": "sp_nodes:echo"},
            "after": ["transform"],
        },
    ],
}


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"))


def wait_status(client: Client, run_id: str, *statuses: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_run(run_id).status
        if status in statuses:
            return status
        assert time.monotonic() < deadline, f"run is {status}, expected one of {statuses}"
        time.sleep(0.05)


def header_status(page: Any) -> Any:
    return page.locator(".q-card .sp-status").first


def test_watch_a_streaming_run_pause_and_resume_it(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    url = console_process.url
    with Client(server.address) as client:
        client.register_workflow(STREAMING)
        page.goto(url + "/")
        run_id = client.start_run("streaming-agent", {"topic": "tides"}, labels={"team": "ml"})

        # The run shows up on the dashboard while it runs, without a reload.
        row = page.locator(f'.ag-row[row-id="{run_id}"]')
        row.locator('[data-status="RUNNING"]').wait_for(timeout=10_000)
        assert client.get_run(run_id).status == "RUNNING"
        shot(page, "dashboard-live")

        # Its tokens reach the live log before the run ends.
        page.goto(f"{url}/runs/{run_id}?tab=log")
        page.locator(".sp-log", has_text="w5 ").wait_for(timeout=10_000)
        assert client.get_run(run_id).status == "RUNNING"
        shot(page, "run-live-log")

        # Pause from the browser: the run pauses (the draft node finishes, nothing new starts).
        page.get_by_role("button", name="Pause").click()
        wait_status(client, run_id, "PAUSED")
        page.wait_for_function(
            "() => document.querySelector('.q-card .sp-status').dataset.status === 'PAUSED'",
            timeout=10_000,
        )
        assert page.get_by_role("button", name="Resume").is_visible()
        assert not page.get_by_role("button", name="Pause").is_visible()

        # Resume: it finishes, and the page says so without a reload.
        page.get_by_role("button", name="Resume").click()
        wait_status(client, run_id, "SUCCEEDED")
        page.wait_for_function(
            "() => document.querySelector('.q-card .sp-status').dataset.status === 'SUCCEEDED'",
            timeout=15_000,
        )
        text = page.locator(".sp-log").inner_text()
        assert "w79" in text and "succeeded" in text
        # Tokens joined into one text, not a line each.
        assert page.locator(".sp-log-tokens").count() == 1

        page.goto(f"{url}/runs/{run_id}?tab=graph")
        page.locator("canvas").first.wait_for(timeout=10_000)
        page.wait_for_timeout(600)
        shot(page, "run-graph")
        page.get_by_role("tab", name=re.compile("Timeline")).click()
        page.wait_for_url(re.compile(r"tab=timeline"), timeout=5_000)  # a reload opens it
        page.wait_for_timeout(600)
        shot(page, "run-timeline")


def test_a_failing_node_shows_its_error_in_red_with_the_traceback(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    with Client(server.address) as client:
        run_id = client.start_run(FAILING)
        wait_status(client, run_id, "FAILED")
    page.goto(f"{console_process.url}/runs/{run_id}/nodes/transform")
    error = page.get_by_text("RuntimeError: the upstream API said no").first
    error.wait_for(timeout=10_000)
    # The colour as painted (a computed colour may be oklch(...)).
    red, green, blue, _ = error.evaluate(
        """el => { const c = document.createElement('canvas').getContext('2d');
                   c.fillStyle = getComputedStyle(el).color; c.fillRect(0, 0, 1, 1);
                   return Array.from(c.getImageData(0, 0, 1, 1).data); }"""
    )
    assert red > 150 and green < 100 and blue < 100, (red, green, blue)
    page.get_by_text("Traceback (most recent call last)").first.wait_for(timeout=5_000)
    assert page.get_by_text("_call_upstream").first.is_visible()
    shot(page, "node-panel-failed")

    page.goto(f"{console_process.url}/runs/{run_id}?tab=nodes")
    page.locator('.ag-row[row-id="transform"]').wait_for(timeout=10_000)
    shot(page, "run-failed-nodes")


def test_the_status_filter_narrows_the_dashboard(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    with Client(server.address) as client:
        failed = client.start_run(FAILING)
        ok = client.start_run(
            {"name": "ok", "version": "1", "nodes": [{"id": "a", "kind": "noop"}]}
        )
        wait_status(client, failed, "FAILED")
        wait_status(client, ok, "SUCCEEDED")
    page.goto(console_process.url + "/")
    page.locator(f'.ag-row[row-id="{ok}"]').wait_for(timeout=10_000)
    assert page.locator(".ag-center-cols-container .ag-row").count() == 2

    page.get_by_label("Status").click()
    page.get_by_role("option", name="failed").click()
    page.wait_for_url(re.compile(r"status=FAILED"), timeout=10_000)
    page.locator(f'.ag-row[row-id="{failed}"]').wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert page.locator(".ag-center-cols-container .ag-row").count() == 1
    shot(page, "dashboard-filtered")

    # The view survives a reload: it is in the URL.
    page.reload()
    page.locator(f'.ag-row[row-id="{failed}"]').wait_for(timeout=10_000)
    assert page.locator(".ag-center-cols-container .ag-row").count() == 1


def test_workflows_page_and_start_form_start_a_run(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    with Client(server.address) as client:
        client.register_workflow(STREAMING)
        client.register_workflow(FAILING)
    page.goto(console_process.url + "/workflows/streaming-agent")
    page.get_by_text("Start a run").first.wait_for(timeout=10_000)
    shot(page, "workflows-start-form")


def test_an_unknown_run_is_a_not_found_page(console_process: ConsoleProcess, page: Any) -> None:
    page.goto(console_process.url + "/runs/no-such-run")
    page.get_by_text("Run not found").wait_for(timeout=10_000)
    shot(page, "run-not-found")


def test_html_in_labels_errors_and_outputs_is_shown_as_text_never_run(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    evil = '<img src=x onerror="window.__sp_xss=1">'
    with Client(server.address) as client:
        run_id = client.start_run(
            {
                "name": "evil",
                "version": "1",
                "nodes": [
                    {
                        "id": "n",
                        "kind": "python",
                        "params": {"callable": "sp_nodes:boom", "args": {"message": evil}},
                    }
                ],
            },
            labels={"x": evil},
        )
        wait_status(client, run_id, "FAILED")
    pages = ["/", *(f"/runs/{run_id}?tab={tab}" for tab in ("nodes", "log", "trace", "graph"))]
    for path in [*pages, f"/runs/{run_id}/nodes/n"]:
        page.goto(console_process.url + path)
        page.get_by_text(evil).first.wait_for(timeout=10_000)
        page.wait_for_timeout(500)
        assert page.evaluate("() => window.__sp_xss") is None, path
        assert page.locator("img[src=x]").count() == 0, path


def test_clicking_a_column_header_sorts_on_the_server_and_keeps_it_in_the_url(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    with Client(server.address) as client:
        ids = {}
        for name in ("b-flow", "a-flow", "c-flow"):
            ids[name] = client.start_run(
                {"name": name, "version": "1", "nodes": [{"id": "x", "kind": "noop"}]}
            )
        for run_id in ids.values():
            wait_status(client, run_id, "SUCCEEDED")
    page.goto(console_process.url + "/")
    page.locator(f'.ag-row[row-id="{ids["a-flow"]}"]').wait_for(timeout=10_000)
    page.locator('.ag-header-cell[col-id="workflow"]').click()
    page.wait_for_url(re.compile(r"sort=workflow_name"), timeout=10_000)
    page.wait_for_function(
        """(first) => document.querySelector('.ag-center-cols-container .ag-row[row-index="0"]')
            ?.getAttribute('row-id') === first""",
        arg=ids["a-flow"],
        timeout=10_000,
    )
    page.locator('.ag-header-cell[col-id="workflow"]').click()
    page.wait_for_url(re.compile(r"sort=-workflow_name"), timeout=10_000)
    page.wait_for_function(
        """(first) => document.querySelector('.ag-center-cols-container .ag-row[row-index="0"]')
            ?.getAttribute('row-id') === first""",
        arg=ids["c-flow"],
        timeout=10_000,
    )


def test_the_trace_nests_map_items_and_a_workflow_child_under_their_nodes(
    server, console_process: ConsoleProcess, page: Any
) -> None:
    child = {
        "name": "summarize-doc",
        "version": "2",
        "nodes": [
            {"id": "fetch", "kind": "python", "params": {"callable": "sp_nodes:echo"}},
            {
                "id": "summarize",
                "kind": "python",
                "params": {"callable": "sp_nodes:sleep", "args": {"seconds": 0.3}},
                "after": ["fetch"],
            },
        ],
    }
    parent = {
        "name": "research",
        "version": "1",
        "nodes": [
            {"id": "plan", "kind": "python", "params": {"callable": "sp_nodes:echo"}},
            {
                "id": "each_source",
                "kind": "map",
                "after": ["plan"],
                "params": {
                    "items": [f"source-{i}" for i in range(20)],
                    "max_concurrency": 6,
                    "continue_on_failure": True,
                    "node": {
                        "kind": "python",
                        "params": {"callable": "sp_nodes:echo", "args": {"x": "{{ item }}"}},
                    },
                },
            },
            {
                "id": "report",
                "kind": "workflow",
                "after": ["each_source"],
                "params": {"workflow": "summarize-doc", "input": {"n": 1}},
            },
        ],
    }
    with Client(server.address) as client:
        client.register_workflow(child)
        run_id = client.start_run(parent)
        wait_status(client, run_id, "SUCCEEDED", timeout=60)
        (report,) = [c for c in client.list_runs(parent=run_id, limit=None)
                     if c.parent_node_id == "report"]  # fmt: skip
    # Tall enough for the whole tree in one picture (the grid is 70% of the height).
    page.set_viewport_size({"width": 1280, "height": 1500})
    page.goto(f"{console_process.url}/runs/{run_id}?tab=trace")
    page.locator(".sp-trace").first.wait_for(timeout=10_000)
    node_row = page.locator('.ag-row[row-id="n:each_source"]')
    node_row.get_by_text("20 items · 20 ✓").wait_for(timeout=10_000)
    for row_id in ("n:each_source", "n:report", f"k:{report.run_id}"):
        page.locator(f'.ag-row[row-id="{row_id}"] .sp-trace-caret').click()
        page.locator(f'.ag-row[row-id="{row_id}"] .sp-trace-caret', has_text="▾").wait_for(
            timeout=10_000
        )
    page.locator(f'.ag-row[row-id="kn:{report.run_id}:summarize"]').wait_for(timeout=10_000)
    # Items in index order under their map node, as the browser shows them.
    rows = page.locator(".sp-trace .ag-center-cols-container .ag-row[row-id^='k:']")
    by_index = {int(r.get_attribute("row-index")): r.inner_text() for r in rows.all()}
    found = [re.search(r"each_source\[\d+\]", text) for _, text in sorted(by_index.items())]
    items = [m.group(0) for m in found if m]
    assert items == [f"each_source[{i}]" for i in range(20)]
    page.evaluate("window.scrollTo(0, 0)")
    page.locator(".sp-trace .ag-body-viewport").evaluate("el => el.scrollTop = 0")
    page.wait_for_timeout(400)
    shot(page, "run-trace-child-runs")
    link = page.locator(f'.ag-row[row-id="k:{report.run_id}"] a.sp-trace-open')
    assert link.get_attribute("href") == f"/runs/{report.run_id}"
    link.click()  # opens the child (the row's own click, select or expand, stays out)
    page.wait_for_url(re.compile(f"/runs/{report.run_id}$"), timeout=10_000)

    page.set_viewport_size({"width": 1280, "height": 800})
    # The map node's panel lists its items with links.
    page.goto(f"{console_process.url}/runs/{run_id}/nodes/each_source")
    page.get_by_text("Items (20)").wait_for(timeout=10_000)
    page.wait_for_timeout(400)
    shot(page, "node-panel-map-items")

    # The child's page says whose child it is.
    page.goto(f"{console_process.url}/runs/{report.run_id}")
    page.get_by_text("child of").wait_for(timeout=10_000)
    shot(page, "run-child-of")

    page.goto(f"{console_process.url}/?children=1")
    page.locator(f'.ag-row[row-id="{report.run_id}"]').wait_for(timeout=10_000)
    page.wait_for_timeout(400)
    shot(page, "dashboard-child-runs")
