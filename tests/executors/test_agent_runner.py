"""``kind: agent`` end to end: the model (the OpenAI stand-in, over loopback
HTTP, through the real openai client) asks for tools, the agent runs them (a
python callable, an HTTP endpoint, a registered workflow) on a real control
plane and sends their results back until the model answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from sp_llm import FAST_RETRY, events, llm_node, spec
from sp_openai import OpenAIStandIn, Reply, ToolCalls
from sp_testing import py

from statepipe.client import Client, StatepipeError

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "name": "get_weather",
    "description": "Today's weather in a city",
    "parameters": CITY,
    "callable": "sp_tools:get_weather",
}


@pytest.fixture
def llm() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as server:
        yield server


def lookup_tool(llm: OpenAIStandIn, method: str = "GET") -> dict[str, Any]:
    return {
        "name": "lookup",
        "description": "Looks a term up",
        "parameters": {"type": "object", "properties": {"term": {"type": "string"}}},
        "http": {"method": method, "url": f"{llm.url}/tools/lookup", "timeout_ms": 5000},
    }


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


def answered_after_tools(*first: Any, final: str = "Done.") -> Any:
    """A rule for the stand-in: the answers `first` in turn, then `final`."""
    script = list(first)

    def rule(body: dict[str, Any]) -> Any:
        return script.pop(0) if script else Reply(text=final)

    return rule


def run_to_end(client: Client, workflow: dict[str, Any], run_input: Any = None) -> Any:
    return client.wait(client.start_run(workflow, run_input), timeout=90)


@pytest.mark.both_executors
def test_the_agent_calls_a_python_and_an_http_tool_and_answers(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.respond(
        answered_after_tools(
            ToolCalls(
                [("get_weather", {"city": "Paris"}), ("lookup", {"term": "Paris"})],
                text="Checking.",
                ids=["call_w", "call_l"],
            ),
            final="Paris is sunny.",
        )
    )
    node = llm_node(
        "agent",
        llm,
        kind="agent",
        prompt="Weather in {{ input.city }}?",
        tools=[WEATHER, lookup_tool(llm)],
    )
    run = run_to_end(client, spec("agent", node), {"city": "Paris"})
    state = run.node("agent")
    assert run.status == "SUCCEEDED", state.error
    assert state.output == "Paris is sunny."

    first, second = llm.chat_requests
    assert [t["function"]["name"] for t in first.body["tools"]] == ["get_weather", "lookup"]
    assert first.body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Today's weather in a city",
            "parameters": CITY,
        },
    }
    # The second call carries the assistant's tool calls and one result per call.
    assistant = second.body["messages"][-3]
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking."
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_w", "get_weather"),
        ("call_l", "lookup"),
    ]
    weather, lookup = tool_messages(second.body)
    assert weather["tool_call_id"] == "call_w"
    assert json.loads(weather["content"]) == {"city": "Paris", "forecast": "sunny", "celsius": 21}
    assert lookup["tool_call_id"] == "call_l"
    echoed = json.loads(lookup["content"])
    assert (echoed["method"], echoed["query"]) == ("GET", {"term": "Paris"})
    [endpoint] = [r for r in llm.requests if r.path == "/tools/lookup"]
    assert endpoint.method == "GET"

    calls = {e.data["call_id"]: e.data for e in events(client, run.run_id, "tool_call")}
    assert set(calls) == {"call_w", "call_l"}
    assert calls["call_w"]["result"]["forecast"] == "sunny"
    assert calls["call_w"]["arguments"] == {"city": "Paris"}
    assert calls["call_l"]["result"]["query"] == {"term": "Paris"}
    for data in calls.values():
        assert data["error"] is None and data["step"] == 1
        assert data["duration_ms"] >= 0 and data["started"]
    api_calls = events(client, run.run_id, "api_call")
    assert [e.data.get("step") for e in api_calls if e.message.startswith("chat")] == [1, 2]
    assert [e.message for e in api_calls if not e.message.startswith("chat")] == [
        f"GET {llm.url}/tools/lookup?term=Paris"
    ]
    tokens = events(client, run.run_id, "token")
    assert "".join(t.message for t in tokens if t.data["step"] == 2) == "Paris is sunny."
    assert "".join(t.message for t in tokens if t.data["step"] == 1) == "Checking."

    usage = state.usage
    assert usage["agent.steps"] == 2 and usage["agent.tool_calls"] == 2
    assert usage["gen_ai.response.finish_reasons"] == ["tool_calls", "stop"]
    prompt_tokens = [r.body for r in (first, second)]
    assert usage["gen_ai.usage.output_tokens"] > 0
    assert usage["gen_ai.usage.input_tokens"] == sum(
        sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        for body in prompt_tokens
    )
    assert usage["gen_ai.server.time_to_first_token"] > 0


@pytest.mark.both_executors
def test_a_post_tool_gets_the_arguments_as_its_json_body(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.respond(answered_after_tools(ToolCalls([("lookup", {"term": "sky"})])))
    node = llm_node("agent", llm, kind="agent", tools=[lookup_tool(llm, "POST")])
    run = run_to_end(client, spec("post", node))
    assert run.status == "SUCCEEDED", run.node("agent").error
    [endpoint] = [r for r in llm.requests if r.path == "/tools/lookup"]
    assert (endpoint.method, endpoint.body) == ("POST", {"term": "sky"})


@pytest.mark.both_executors
def test_bad_tool_calls_go_back_to_the_model_and_the_loop_goes_on(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.respond(
        answered_after_tools(
            ToolCalls(
                [
                    ("get_weather", {"city": 42}),  # breaks the schema
                    ("get_weather", '{"city": "Par'),  # not JSON
                    ("teleport", {"to": "Mars"}),  # no such tool
                    ("explode", {"reason": "on purpose"}),  # raises
                ],
                ids=["bad_schema", "bad_json", "unknown", "raises"],
            ),
            ToolCalls([("get_weather", {"city": "Oslo"})], ids=["good"]),
            final="Oslo has snow.",
        )
    )
    explode = {
        "name": "explode",
        "parameters": {"type": "object"},
        "callable": "sp_tools:explode",
    }
    node = llm_node("agent", llm, kind="agent", tools=[WEATHER, explode])
    run = run_to_end(client, spec("mended", node))
    assert run.status == "SUCCEEDED", run.node("agent").error
    assert run.node("agent").output == "Oslo has snow."
    second = llm.chat_requests[1].body
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(second)}
    assert results["bad_schema"].startswith("error: the arguments do not match")
    assert "arguments.city: 42 is not of type 'string'" in results["bad_schema"]
    assert results["bad_json"].startswith("error: the arguments are not valid JSON")
    assert results["unknown"] == (
        "error: unknown tool 'teleport'; the tools are: get_weather, explode"
    )
    assert results["raises"] == "error: RuntimeError: the tool broke: on purpose"
    third = llm.chat_requests[2].body
    assert json.loads(tool_messages(third)[-1]["content"])["forecast"] == "snow"
    calls = {e.data["call_id"]: e.data for e in events(client, run.run_id, "tool_call")}
    assert calls["bad_schema"]["error"].startswith("the arguments do not match")
    assert calls["bad_json"]["arguments"] == '{"city": "Par'
    assert calls["good"]["step"] == 2 and calls["good"]["error"] is None
    assert run.node("agent").usage["agent.steps"] == 3


@pytest.mark.both_executors
def test_reaching_max_steps_fails_without_retrying(client: Client, llm: OpenAIStandIn) -> None:
    llm.respond(lambda body: ToolCalls([("get_weather", {"city": "Paris"})]))
    node = llm_node("agent", llm, kind="agent", tools=[WEATHER], max_steps=3, retry=FAST_RETRY)
    run = run_to_end(client, spec("looping", node))
    state = run.node("agent")
    assert run.status == "FAILED"
    assert state.attempt == 1
    assert "params.max_steps (3)" in state.error and "get_weather" in state.error
    assert len(llm.chat_requests) == 3
    assert len(events(client, run.run_id, "tool_call")) == 2


@pytest.mark.both_executors
def test_a_workflow_tool_runs_a_child_run(client: Client, llm: OpenAIStandIn) -> None:
    client.register_workflow(
        {
            "name": "doubler",
            "nodes": [py("double", "add", args={"a": "{{ input.n }}", "b": "{{ input.n }}"})],
        }
    )
    llm.respond(answered_after_tools(ToolCalls([("double", {"n": 21})], ids=["call_d"])))
    tool = {
        "name": "double",
        "parameters": {"type": "object", "properties": {"n": {"type": "number"}}},
        "workflow": "doubler",
    }
    run = run_to_end(client, spec("delegating", llm_node("agent", llm, kind="agent", tools=[tool])))
    assert run.status == "SUCCEEDED", run.node("agent").error
    [result] = tool_messages(llm.chat_requests[1].body)
    assert json.loads(result["content"]) == {"double": 42}
    [child] = client.list_runs(parent=run.run_id, limit=None)
    assert (child.workflow_name, child.parent_node_id, child.status) == (
        "doubler",
        "agent",
        "SUCCEEDED",
    )


def test_an_async_tool_and_a_response_format_for_the_answer(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.respond(answered_after_tools(ToolCalls([("add", {"a": 2, "b": 3})]), final='{"sum": 5}'))
    add = {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
        "callable": "sp_tools:add",
    }
    node = llm_node(
        "agent", llm, kind="agent", tools=[add], response_format={"type": "json_object"}
    )
    run = run_to_end(client, spec("summing", node))
    assert run.status == "SUCCEEDED", run.node("agent").error
    assert run.node("agent").output == {"sum": 5}
    [result] = tool_messages(llm.chat_requests[1].body)
    assert result["content"] == "5"


def test_a_tool_whose_callable_does_not_import_fails_the_node(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.respond(answered_after_tools(ToolCalls([("ghost", {})])))
    ghost = {"name": "ghost", "parameters": {"type": "object"}, "callable": "sp_tools:nowhere"}
    run = run_to_end(client, spec("ghost", llm_node("agent", llm, kind="agent", tools=[ghost])))
    assert run.status == "FAILED"
    assert "params.tools[0] (ghost): cannot import 'sp_tools:nowhere'" in run.node("agent").error


# ------------------------------------------------------------------ bad specs


def refused(client: Client, params: dict[str, Any]) -> str:
    node = {"id": "bad_agent", "kind": "agent", "params": {"model": "m", "prompt": "hi", **params}}
    with pytest.raises(StatepipeError) as caught:
        client.start_run(spec("bad", node))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "node 'bad_agent'" in caught.value.message
    return caught.value.message


SEARCH_WITHOUT_SCHEMA = {"name": "search", "callable": "sp_tools:get_weather"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "params.tools is required"),
        ({"tools": [WEATHER], "model": ""}, "params.model is required"),
        (
            {"tools": [WEATHER, SEARCH_WITHOUT_SCHEMA]},
            "params.tools[1] (search) needs a JSON Schema in parameters",
        ),
        (
            {"tools": [{**WEATHER, "workflow": "w"}]},
            "params.tools[0] (get_weather) needs exactly one of callable, http or workflow",
        ),
        (
            {"tools": [{"name": "x", "parameters": {"type": "object"}}]},
            "params.tools[0] (x) needs exactly one of callable, http or workflow",
        ),
        ({"tools": [WEATHER, WEATHER]}, "another tool has the name 'get_weather'"),
        ({"tools": [{**WEATHER, "name": "has space"}]}, "params.tools[0] (has space).name"),
        (
            {"tools": [{**WEATHER, "callable": "no_colon"}]},
            "params.tools[0] (get_weather).callable",
        ),
        (
            {
                "tools": [
                    {
                        "name": "h",
                        "parameters": {"type": "object"},
                        "http": {"url": "ftp://nope"},
                    }
                ]
            },
            "params.tools[0] (h).http.url",
        ),
        (
            {
                "tools": [
                    {
                        "name": "h",
                        "parameters": {"type": "object"},
                        "http": {"url": "http://x", "json": {}},
                    }
                ]
            },
            "params.tools[0] (h).http.json",
        ),
        ({"tools": [WEATHER], "max_steps": 0}, "params.max_steps must be a positive integer"),
        ({"tools": [WEATHER], "max_steps": 2.5}, "params.max_steps must be a positive integer"),
        ({"tools": [WEATHER], "api_key": "sk-oops"}, "params.api_key_env"),
    ],
)
def test_bad_agent_specs_are_refused_at_registration(
    client: Client, params: dict[str, Any], expected: str
) -> None:
    assert expected in refused(client, params)


def test_templated_tools_and_max_steps_pass_registration(
    client: Client, llm: OpenAIStandIn
) -> None:
    node = llm_node(
        "agent",
        llm,
        kind="agent",
        tools="{{ input.tools }}",
        max_steps="{{ input.steps }}",
    )
    llm.respond(answered_after_tools(ToolCalls([("get_weather", {"city": "Paris"})])))
    run = run_to_end(client, spec("templated", node), {"tools": [WEATHER], "steps": 4})
    assert run.status == "SUCCEEDED", run.node("agent").error
    run = run_to_end(client, spec("templated", node), {"tools": [WEATHER], "steps": -1})
    assert run.status == "FAILED"
    assert "params.max_steps must be a positive integer" in run.node("agent").error
