"""The Workflows page, as a person uses it: find a workflow, read it, start a run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing import User
from sp_testing import py

from statepipe.client import AsyncClient

GREET_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "who to greet"},
        "count": {"type": "integer", "default": 1, "minimum": 1},
        "loud": {"type": "boolean"},
        "tone": {"enum": ["warm", "dry"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "count"],
}


def greet(version: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "name": "greet",
        "version": version,
        "description": "says hello",
        "labels": {"team": "ml"},
        "input_schema": GREET_SCHEMA,
        "nodes": [
            py("hello", "run_input", retry={"max_attempts": 3, "backoff_ms": 200}),
            py("shout", after=["hello"], timeout_ms=30_000),
        ],
        **extra,
    }


async def register(server: Any, *specs: dict[str, Any]) -> None:
    async with AsyncClient(server.address) as client:
        for spec in specs:
            await client.register_workflow(spec)


async def see(user: User, target: str | None = None, **kwargs: Any) -> None:
    """should_see with time for a page load or a round trip to the control plane."""
    if target is not None:
        await user.should_see(target, retries=50)
    else:
        await user.should_see(retries=50, **kwargs)


def element(user: User, marker: str) -> Any:
    (found,) = user.find(marker=marker).elements
    return found


def navigations(user: User, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where the page sends the browser (the run pages are not this test's subject)."""
    targets: list[str] = []
    monkeypatch.setattr(user.navigate, "to", lambda target, new_tab=False: targets.append(target))
    return targets


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_no_workflows_says_how_to_register_one(console_user: User) -> None:
    await console_user.open("/workflows")
    await see(console_user, marker="workflows-empty")
    await console_user.should_see("statepipe run FILE")
    await console_user.should_see("statepipe up")


async def test_the_list_shows_each_workflow_once_with_its_latest_version(
    console_user: User, server: Any
) -> None:
    await register(
        server,
        greet("1"),
        greet("2", description="says hello twice"),
        {"name": "etl", "version": "7", "nodes": [py("a")]},
    )
    await console_user.open("/workflows")
    await see(console_user, marker="workflow-greet")
    with console_user.scope(marker="workflow-greet"):
        await console_user.should_see("v2")
        await console_user.should_see("says hello twice")
        await console_user.should_see("2 nodes")
        await console_user.should_see("2 versions")
    with console_user.scope(marker="workflow-etl"):
        await console_user.should_see("v7")
        await console_user.should_see("1 node")

    console_user.find(marker="workflow-search").type("tl")
    await see(console_user, "1 workflow")
    await console_user.should_not_see(marker="workflow-greet")
    await console_user.should_see(marker="workflow-etl")


async def test_selecting_a_workflow_shows_its_versions_nodes_and_spec(
    console_user: User, server: Any
) -> None:
    await register(server, greet("1"), greet("2"))
    await console_user.open("/workflows")
    await see(console_user, marker="workflow-greet")
    console_user.find(marker="workflow-greet").click()

    await see(console_user, marker="node-table")
    await console_user.should_see("says hello")
    await console_user.should_see("team=ml")
    await console_user.should_see("version 2")
    await console_user.should_see(marker="version-1")
    table = element(console_user, "node-table")
    assert [(r["id"], r["after"]) for r in table.rows] == [("hello", "—"), ("shout", "hello")]
    assert table.rows[0]["retry"].startswith("3 attempts")
    assert table.rows[1]["timeout"] == "30 s"
    spec = element(console_user, "workflow-spec")
    assert '"callable": "sp_nodes:run_input"' in spec.content
    assert '"input_schema"' in spec.content

    console_user.find(marker="version-1").click()
    await see(console_user, "version 1")
    await console_user.should_not_see("latest")


async def test_the_form_rejects_a_missing_field_and_a_wrong_type(
    console_user: User, server: Any
) -> None:
    await register(server, greet())
    await console_user.open("/workflows/greet")
    await see(console_user, marker="field-name")
    await console_user.should_see("name *")
    await console_user.should_see("who to greet")
    await console_user.should_see("default: 1")
    start = element(console_user, "start-run")

    # A new form is not a page of errors: the hint names what is missing.
    assert element(console_user, "field-name").error is None
    assert element(console_user, "start-hint").text == "required: name"
    assert not start.enabled

    console_user.find(marker="field-name").type("Ada")
    assert element(console_user, "field-name").error is None
    assert start.enabled
    console_user.find(marker="field-name").clear()
    assert element(console_user, "field-name").error == "required"
    assert not start.enabled
    console_user.find(marker="field-name").type("Ada")
    assert start.enabled

    console_user.find(marker="field-count").clear().type("2.5")
    assert "is not of type 'integer'" in element(console_user, "field-count").error
    assert not start.enabled
    console_user.find(marker="field-count").clear().type("0")
    assert "minimum of 1" in element(console_user, "field-count").error
    console_user.find(marker="field-count").clear().type("2")
    assert start.enabled

    console_user.find(marker="field-tags").type("[1")
    assert "not valid JSON" in element(console_user, "field-tags").error
    assert not start.enabled
    console_user.find(marker="field-tags").clear().type('["a"]')
    assert start.enabled

    # The raw view holds what the form holds, and checks the same way.
    console_user.find(marker="raw-toggle").click()
    raw = element(console_user, "raw-json")
    assert '"name": "Ada"' in raw.value and '"count": 2' in raw.value
    console_user.find(marker="raw-json").clear().type('{"name": 5, "count": 2}')
    await console_user.should_see("input.name: 5 is not of type 'string'")
    assert not start.enabled
    console_user.find(marker="raw-json").clear().type('{"name": "Bo", "count": 3}')
    assert start.enabled
    console_user.find(marker="raw-toggle").click()
    assert element(console_user, "field-name").value == "Bo"
    assert element(console_user, "field-count").value == 3

    console_user.find(marker="run-labels").type("team")
    assert "key=value" in element(console_user, "run-labels").error
    assert not start.enabled


async def test_a_valid_form_starts_a_run_and_opens_it(
    console_user: User, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(server, greet())
    await console_user.open("/workflows/greet")
    await see(console_user, marker="field-name")
    targets = navigations(console_user, monkeypatch)

    console_user.find(marker="field-name").type("Ada")
    console_user.find(marker="field-tone").click()
    console_user.find("warm").click()
    console_user.find(marker="run-labels").type("team=ml, env = dev")
    console_user.find(marker="run-idempotency-key").type("greet-ada")
    console_user.find(marker="start-run").click()

    await eventually(lambda: targets)
    async with AsyncClient(server.address) as client:
        (run,) = await client.list_runs()
    assert targets == [f"/runs/{run.run_id}"]
    assert run.workflow_name == "greet" and run.workflow_version == "1"
    assert run.input == {"name": "Ada", "count": 1, "tone": "warm"}
    assert run.labels == {"team": "ml", "env": "dev"}
    assert run.idempotency_key == "greet-ada"


async def test_a_refused_start_shows_the_servers_message_and_keeps_the_input(
    console_user: User, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(server, {"name": "anything", "nodes": [py("a")]})
    await console_user.open("/workflows/anything")
    await see(console_user, marker="raw-json")
    targets = navigations(console_user, monkeypatch)
    start = element(console_user, "start-run")
    assert start.enabled  # no schema: empty means no input

    # Valid JSON for a schema-less workflow, but deeper than the API carries.
    deep = "[" * 30 + "1" + "]" * 30
    console_user.find(marker="raw-json").type(deep)
    console_user.find(marker="start-run").click()
    await see(console_user, "INVALID_ARGUMENT")
    await console_user.should_see("levels deep")
    assert element(console_user, "raw-json").value == deep
    assert start.enabled and not targets

    # A fixed input starts.
    console_user.find(marker="raw-json").clear().type('{"ok": true}')
    console_user.find(marker="start-run").click()
    await eventually(lambda: targets)
    assert targets[0].startswith("/runs/")


async def test_an_unreachable_control_plane_is_said_inline(
    console_user: User, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(server, {"name": "anything", "nodes": [py("a")]})
    await console_user.open("/workflows/anything")
    await see(console_user, marker="start-run")
    targets = navigations(console_user, monkeypatch)
    await asyncio.to_thread(server.stop)

    console_user.find(marker="start-run").click()
    await see(console_user, "control plane unreachable")
    assert element(console_user, "start-run").enabled and not targets


async def test_an_unknown_workflow_or_version_is_a_not_found_state(
    console_user: User, server: Any
) -> None:
    await register(server, greet("1"), greet("2"))
    await console_user.open("/workflows/nope")
    await see(console_user, "workflow nope not found")
    await console_user.should_see(marker="back-to-workflows")
    await console_user.should_see(marker="workflow-greet")  # the list still works

    await console_user.open("/workflows/greet?version=9")
    await see(console_user, "workflow greet version 9 not found")
    with console_user.scope(marker="workflow-not-found"):
        await console_user.should_see("2")
        console_user.find("1").click()
    await see(console_user, marker="node-table")
    await console_user.should_see("version 1")


async def test_no_schema_means_a_raw_json_field_only(console_user: User, server: Any) -> None:
    await register(server, {"name": "free", "nodes": [py("a")]})
    await console_user.open("/workflows/free")
    await see(console_user, marker="raw-json")
    await console_user.should_not_see(marker="raw-toggle")
    console_user.find(marker="raw-json").type("{oops")
    assert "not valid JSON" in element(console_user, "raw-json").error
    assert not element(console_user, "start-run").enabled
    assert isinstance(element(console_user, "raw-json"), ui.textarea)
