"""``kind: llm`` end to end: a real control plane (embedded Postgres, gRPC on
loopback), the real openai client, and the OpenAI stand-in (tests/support/
sp_openai.py) speaking the real wire protocol over loopback HTTP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sp_llm import FAST_RETRY, database_text, events, llm_node, spec
from sp_openai import Cut, Malformed, OpenAIStandIn, Reply, Status, ToolCalls
from sp_testing import wait_for

from statepipe.client import Client, StatepipeError

# The key of the API-key tests. Set while the test modules are collected, that
# is before the session's Ray cluster starts: its workers inherit it (a
# variable set later in a test reaches the local executor only).
KEY_ENV = "SP_LLM_TEST_API_KEY"
KEY = "sk-sp-test-7f3c9a1e5b2d4c68"
os.environ[KEY_ENV] = KEY

IN, OUT = "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"
TTFT, DURATION = "gen_ai.server.time_to_first_token", "gen_ai.server.request.duration"
COST = "gen_ai.usage.cost"


@pytest.fixture
def llm() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as server:
        yield server


def run_to_end(client: Client, workflow: dict[str, Any], run_input: Any = None) -> Any:
    return client.wait(client.start_run(workflow, run_input), timeout=60)


# ------------------------------------------------------------------ streaming and output


@pytest.mark.both_executors
def test_tokens_reach_a_watcher_in_order_as_they_stream(client: Client, llm: OpenAIStandIn) -> None:
    words = [f"word{i}" if i == 0 else f" word{i}" for i in range(20)]
    llm.script(Reply(text="".join(words), chunk_delay_ms=30))
    run_id = client.start_run(spec("stream", llm_node("say", llm)))
    tokens: list[tuple[str, float]] = []
    for event in client.watch(run_id, kinds="token"):
        tokens.append((event.message, time.monotonic()))
    run = client.wait(run_id, timeout=30)
    assert run.status == "SUCCEEDED", run.node("say").error
    assert [t for t, _ in tokens] == words
    assert "".join(t for t, _ in tokens) == run.node("say").output
    # Live, not in one lump at the end: 19 gaps of 30 ms between the first and the last.
    assert tokens[-1][1] - tokens[0][1] > 0.3


@pytest.mark.both_executors
def test_usage_time_to_first_token_and_cost_are_recorded_on_the_node(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.script(Reply(text="Hello world", usage=(12, 5), model="stand-in-1-0613"))
    price = {"input_per_million": 1.5, "output_per_million": 6}
    run = run_to_end(client, spec("usage", llm_node("say", llm, price=price)))
    node = run.node("say")
    assert run.status == "SUCCEEDED", node.error
    assert node.output == "Hello world"
    usage = node.usage
    assert usage is not None
    assert (usage[IN], usage[OUT]) == (12, 5)
    assert usage["gen_ai.request.model"] == "stand-in-1"
    assert usage["gen_ai.response.model"] == "stand-in-1-0613"
    assert usage["gen_ai.response.finish_reasons"] == ["stop"]
    assert 0 < usage[TTFT] <= usage[DURATION] < 30
    assert usage["gen_ai.usage.output_tokens_per_second"] > 0
    assert usage[COST] == pytest.approx((12 * 1.5 + 5 * 6) / 1_000_000)
    assert run.usage is not None and run.usage[IN] == 12
    # One api_call event per model call, with the same attributes.
    [call] = events(client, run.run_id, "api_call")
    assert call.message == "chat stand-in-1"
    data = call.data
    assert data is not None
    assert data["gen_ai.operation.name"] == "chat"
    assert data["server.address"] == "127.0.0.1"
    assert data["server.port"] == llm.port
    assert (data[IN], data[OUT], data[COST]) == (12, 5, usage[COST])
    assert data["gen_ai.response.finish_reasons"] == ["stop"]
    assert data["duration_ms"] > 0 and data["error"] is None


def test_the_price_table_from_the_environment_prices_the_response_model(
    client: Client, llm: OpenAIStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local executor: the node reads STATEPIPE_LLM_PRICES where it runs, here.
    table = tmp_path / "prices.yaml"
    table.write_text(
        "stand-in-1-0613: {input_per_million: 2, output_per_million: 8}\n"
        "stand-in-1: {input_per_million: 100, output_per_million: 100}\n"
        "other: {input_per_million: 1, output_per_million: 1}\n"
    )
    monkeypatch.setenv("STATEPIPE_LLM_PRICES", str(table))
    llm.script(
        Reply(text="a b", usage=(1000, 500), model="stand-in-1-0613"),
        Reply(text="a b", usage=(1000, 500), model="unpriced-model"),
        Reply(text="a b", usage=(1000, 500), model="unpriced-model"),
    )
    run = run_to_end(
        client,
        spec(
            "prices",
            llm_node("by_response", llm),
            llm_node("by_request", llm, after=["by_response"]),
            llm_node("unpriced", llm, model="nothing-known", after=["by_request"]),
        ),
    )
    assert run.status == "SUCCEEDED"
    assert run.node("by_response").usage[COST] == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
    assert run.node("by_request").usage[COST] == pytest.approx((1000 * 100 + 500 * 100) / 1e6)
    assert COST not in run.node("unpriced").usage


@pytest.mark.both_executors
def test_messages_and_sampling_params_reach_the_server(client: Client, llm: OpenAIStandIn) -> None:
    node = llm_node(
        "ask",
        llm,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        prompt="Question: {{ input.q }}",
        temperature=0.2,
        max_tokens=64,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        headers={"x-team": "docs"},
        extra_body={"top_k": 5},
    )
    run = run_to_end(client, spec("shape", node), {"q": "Why is the sky blue?"})
    assert run.status == "SUCCEEDED", run.node("ask").error
    [request] = llm.chat_requests
    body = request.body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Question: Why is the sky blue?"},
    ]
    assert body["model"] == "stand-in-1"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # Whole numbers go as integers, though params cross protobuf as floats.
    assert body["max_tokens"] == 64 and isinstance(body["max_tokens"], int)
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (
        0.2,
        0.9,
        ["\n\n"],
        7,
    )
    assert body["top_k"] == 5
    assert request.headers["x-team"] == "docs"


@pytest.mark.both_executors
def test_json_mode_outputs_the_parsed_json_and_bad_json_is_retried(
    client: Client, llm: OpenAIStandIn
) -> None:
    schema = {
        "type": "object",
        "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
        "required": ["queries"],
    }
    llm.script(
        Reply(text='{"answer": 42, "why": ["it is"]}'),
        Reply(text="Sure! Here is the JSON: {"),
        Reply(text='```json\n{"queries": ["sky", "blue"]}\n```'),
    )
    json_schema = {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}
    run = run_to_end(
        client,
        spec(
            "json",
            llm_node("object", llm, response_format={"type": "json_object"}),
            llm_node("plan", llm, response_format=json_schema, retry=FAST_RETRY, after=["object"]),
        ),
    )
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    assert run.node("object").output == {"answer": 42, "why": ["it is"]}
    assert run.node("plan").output == {"queries": ["sky", "blue"]}
    assert run.node("plan").attempt == 2
    retry_waits = [e for e in events(client, run.run_id, "node_status") if e.status == "RETRY_WAIT"]
    assert "not valid JSON" in retry_waits[0].message
    assert llm.chat_requests[1].body["response_format"] == json_schema


@pytest.mark.both_executors
def test_tool_call_deltas_are_assembled_into_tool_call_events(
    client: Client, llm: OpenAIStandIn
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    arguments = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    llm.script(
        ToolCalls(
            [("get_weather", arguments), ("get_weather", {"city": "Oslo"})],
            text="Let me look.",
            pieces=5,
            ids=["call_a", "call_b"],
        )
    )
    run = run_to_end(client, spec("tools", llm_node("ask", llm, tools=tools, tool_choice="auto")))
    node = run.node("ask")
    assert run.status == "SUCCEEDED", node.error
    assert node.output == {
        "content": "Let me look.",
        "tool_calls": [
            {"id": "call_a", "name": "get_weather", "arguments": arguments},
            {"id": "call_b", "name": "get_weather", "arguments": {"city": "Oslo"}},
        ],
    }
    calls = events(client, run.run_id, "tool_call")
    assert [(c.message, c.data["arguments"], c.data["call_id"]) for c in calls] == [
        ("get_weather", arguments, "call_a"),
        ("get_weather", {"city": "Oslo"}, "call_b"),
    ]
    assert node.usage["gen_ai.response.finish_reasons"] == ["tool_calls"]
    body = llm.chat_requests[0].body
    assert body["tools"] == tools and body["tool_choice"] == "auto"


# ------------------------------------------------------------------ errors and retries


def attempts_at(llm: OpenAIStandIn) -> list[float]:
    return [r.received for r in llm.chat_requests]


@pytest.mark.both_executors
def test_a_429_waits_for_retry_after_then_succeeds(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Status(429, message="Rate limit reached", retry_after="1"), Reply(text="ok now"))
    run = run_to_end(client, spec("limited", llm_node("say", llm, retry=FAST_RETRY)))
    node = run.node("say")
    assert run.status == "SUCCEEDED", node.error
    assert (node.output, node.attempt) == ("ok now", 2)
    first, second = attempts_at(llm)
    assert second - first >= 1.0  # Retry-After, not the policy's 10 ms
    [wait] = [e for e in events(client, run.run_id, "node_status") if e.status == "RETRY_WAIT"]
    assert "HTTP 429" in wait.message and "Rate limit reached" in wait.message
    assert wait.data["retry_in_ms"] >= 1000


@pytest.mark.both_executors
def test_retry_after_ms_and_an_http_date_are_honoured(client: Client, llm: OpenAIStandIn) -> None:
    from email.utils import formatdate

    when = int(time.time()) + 3  # whole seconds: an HTTP date has no fractions
    llm.script(
        Status(429, retry_after_ms="600"),
        Reply(text="done"),
        Status(503, retry_after=formatdate(when, usegmt=True)),
        Reply(text="done too"),
    )
    run = run_to_end(
        client,
        spec(
            "dates",
            llm_node("by_ms", llm, retry=FAST_RETRY),
            llm_node("by_date", llm, retry=FAST_RETRY, after=["by_ms"]),
        ),
    )
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    first, second, _, by_date = attempts_at(llm)
    assert second - first >= 0.6
    assert by_date >= when - 0.05


@pytest.mark.both_executors
def test_a_500_is_retried(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Status(500, message="upstream exploded"), Reply(text="fine"))
    run = run_to_end(client, spec("flaky", llm_node("say", llm, retry=FAST_RETRY)))
    assert run.status == "SUCCEEDED", run.node("say").error
    assert (run.node("say").output, run.node("say").attempt) == ("fine", 2)


@pytest.mark.both_executors
def test_a_400_fails_at_once_with_the_servers_message(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Status(400, message="model 'x' does not exist"))
    run = run_to_end(client, spec("bad_model", llm_node("say", llm, model="x", retry=FAST_RETRY)))
    node = run.node("say")
    assert run.status == "FAILED"
    assert node.attempt == 1
    assert len(llm.chat_requests) == 1
    assert "HTTP 400" in node.error and "model 'x' does not exist" in node.error
    assert "\n" not in node.error and "Traceback" not in node.error
    assert node.traceback == ""


@pytest.mark.both_executors
def test_a_cut_stream_fails_clearly_and_retry_node_mends_it(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.script(Cut(after_chunks=3))
    run = run_to_end(client, spec("cut", llm_node("say", llm)))
    node = run.node("say")
    assert run.status == "FAILED"
    assert "stream was cut after 3 chunks, 2 tokens" in node.error, node.error
    assert "\n" not in node.error and node.traceback == ""
    client.retry_node(run.run_id, "say")
    run = client.wait(run.run_id, timeout=60)
    assert run.status == "SUCCEEDED", run.node("say").error
    assert run.node("say").output == "This is the stand-in's answer."
    assert run.node("say").attempt == 2


@pytest.mark.both_executors
def test_a_malformed_chunk_fails_the_attempt_and_the_retry_policy_mends_it(
    client: Client, llm: OpenAIStandIn
) -> None:
    llm.script(Malformed(after_chunks=2), Reply(text="all good"))
    run = run_to_end(client, spec("malformed", llm_node("say", llm, retry=FAST_RETRY)))
    assert run.status == "SUCCEEDED", run.node("say").error
    assert (run.node("say").output, run.node("say").attempt) == ("all good", 2)
    [wait] = [e for e in events(client, run.run_id, "node_status") if e.status == "RETRY_WAIT"]
    assert "chunk 3 of the stream is not valid JSON" in wait.message
    assert "after 2 chunks, 1 token" in wait.message


@pytest.mark.both_executors
def test_a_stream_without_a_finish_reason_fails(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Reply(text="a b c", finish_reason=None))
    run = run_to_end(client, spec("unfinished", llm_node("say", llm)))
    assert run.status == "FAILED"
    assert "ended without a finish_reason after" in run.node("say").error


@pytest.mark.both_executors
def test_timeout_ms_bounds_the_request(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Reply(text="late", first_delay_ms=3000))
    started = time.monotonic()
    run = run_to_end(client, spec("slow", llm_node("say", llm, timeout_ms=300)))
    assert run.status == "FAILED"
    assert "timed out after 300 ms" in run.node("say").error
    assert time.monotonic() - started < 2.5


def test_cancelling_a_run_closes_the_stream(client: Client, llm: OpenAIStandIn) -> None:
    llm.script(Reply(text=" ".join(f"w{i}" for i in range(200)), chunk_delay_ms=50))
    run_id = client.start_run(spec("cancelled", llm_node("say", llm)))
    wait_for(lambda: llm.chat_requests, timeout=30)
    time.sleep(0.3)  # a few tokens in
    cancelled_at = time.time()
    client.cancel(run_id)
    assert client.wait(run_id, timeout=30).status == "CANCELLED"
    [(_, closed_at)] = wait_for(lambda: llm.disconnects, timeout=10)
    assert closed_at - cancelled_at < 1.0
    assert events(client, run_id, "token")


def test_a_connection_refused_is_a_retryable_failure(client: Client) -> None:
    with OpenAIStandIn() as gone:
        base_url = gone.base_url
    node = {
        "id": "say",
        "kind": "llm",
        "params": {"base_url": base_url, "model": "m", "prompt": "hi"},
        "retry": {"max_attempts": 2, "backoff_ms": 10},
    }
    run = run_to_end(client, spec("refused", node))
    assert run.status == "FAILED"
    assert run.node("say").attempt == 2
    assert "cannot connect" in run.node("say").error


# ------------------------------------------------------------------ the API key


@pytest.mark.both_executors
def test_the_api_key_from_the_environment_reaches_the_server_and_nowhere_else(
    client: Client, llm: OpenAIStandIn, database_url: str
) -> None:
    llm.script(
        Reply(text="hello"),
        # A server that echoes the key in its error: the node's error must not.
        Status(401, message=f"Incorrect API key provided: {KEY}."),
    )
    run = run_to_end(
        client,
        spec(
            "keyed",
            llm_node("ok", llm, api_key_env=KEY_ENV),
            llm_node("refused", llm, api_key_env=KEY_ENV, after=["ok"]),
        ),
    )
    assert run.node("ok").status == "SUCCEEDED"
    assert run.node("refused").status == "FAILED"
    assert [r.authorization for r in llm.chat_requests] == [f"Bearer {KEY}"] * 2
    assert "Incorrect API key provided: ***" in run.node("refused").error
    everything = json.dumps(
        [e.to_dict() for e in events(client, run.run_id)] + [run.to_dict()], default=str
    )
    assert KEY not in everything
    assert KEY_ENV in everything  # the name is in the params, the value is not
    for table, text in database_text(database_url).items():
        assert KEY not in text, f"the API key is in table {table}"


def test_an_unset_default_key_sends_a_placeholder(
    client: Client, llm: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local executor: the variable is removed where the node runs, in this process.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = run_to_end(client, spec("keyless", llm_node("say", llm)))
    assert run.status == "SUCCEEDED", run.node("say").error
    assert llm.chat_requests[0].authorization == "Bearer statepipe-no-key"


def test_the_default_key_and_base_url_come_from_the_environment(
    client: Client, llm: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local executor: the variables are read where the node runs, in this process.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-default-env")
    monkeypatch.setenv("STATEPIPE_LLM_BASE_URL", llm.base_url)
    node = {"id": "say", "kind": "llm", "params": {"model": "stand-in-1", "prompt": "hi"}}
    run = run_to_end(client, spec("env", node))
    assert run.status == "SUCCEEDED", run.node("say").error
    assert llm.chat_requests[0].authorization == "Bearer sk-from-default-env"


@pytest.mark.both_executors
def test_a_named_key_variable_that_is_unset_fails_at_once(
    client: Client, llm: OpenAIStandIn
) -> None:
    node = llm_node("say", llm, api_key_env="SP_LLM_NOT_SET_ANYWHERE", retry=FAST_RETRY)
    run = run_to_end(client, spec("unset", node))
    assert run.status == "FAILED"
    assert run.node("say").attempt == 1
    assert "'SP_LLM_NOT_SET_ANYWHERE' is not set" in run.node("say").error
    assert llm.chat_requests == []


# ------------------------------------------------------------------ bad specs


def refused(client: Client, params: dict[str, Any], kind: str = "llm") -> str:
    node = {"id": "bad_node", "kind": kind, "params": params}
    with pytest.raises(StatepipeError) as caught:
        client.start_run(spec("bad", node))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "node 'bad_node'" in caught.value.message
    return caught.value.message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"prompt": "hi"}, "params.model is required"),
        ({"model": "m"}, "params.prompt or params.messages is required"),
        ({"model": "m", "prompt": "hi", "api_key": "sk-oops"}, "params.api_key_env"),
        ({"model": "m", "prompt": "hi", "api_key_env": "not a name"}, "params.api_key_env"),
        ({"model": "m", "prompt": "hi", "promt": "typo"}, "params.promt is not a param"),
        ({"model": "m", "messages": [{"content": "no role"}]}, "params.messages[0].role"),
        ({"model": "m", "prompt": "hi", "max_tokens": 0}, "params.max_tokens"),
        ({"model": "m", "prompt": "hi", "temperature": "hot"}, "params.temperature"),
        ({"model": "m", "prompt": "hi", "base_url": "ftp://x"}, "params.base_url"),
        (
            {"model": "m", "prompt": "hi", "response_format": {"type": "xml"}},
            "params.response_format",
        ),
        (
            {
                "model": "m",
                "prompt": "hi",
                "tools": [{"type": "function", "function": {"name": "search"}}],
            },
            "params.tools[0] (search) needs a JSON Schema in function.parameters",
        ),
        (
            {
                "model": "m",
                "prompt": "hi",
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "s", "parameters": {"type": "nonsense"}},
                    }
                ],
            },
            "params.tools[0] (s).function.parameters is not a valid JSON Schema",
        ),
        (
            {"model": "m", "prompt": "hi", "headers": {"Authorization": "Bearer sk"}},
            "params.headers.Authorization",
        ),
        ({"model": "m", "prompt": "hi", "price": {"input_per_million": -1}}, "params.price"),
    ],
)
def test_bad_params_are_refused_at_registration(
    client: Client, params: dict[str, Any], expected: str
) -> None:
    assert expected in refused(client, params)


def test_templates_pass_registration_and_are_checked_once_rendered(
    client: Client, llm: OpenAIStandIn
) -> None:
    node = llm_node(
        "say",
        llm,
        model="{{ input.model }}",
        max_tokens="{{ input.max_tokens }}",
        messages="{{ input.messages }}",
    )
    messages = [{"role": "user", "content": "hi"}]
    run = run_to_end(
        client, spec("templated", node), {"model": "m1", "max_tokens": 9, "messages": messages}
    )
    assert run.status == "SUCCEEDED", run.node("say").error
    body = llm.chat_requests[0].body
    assert (body["model"], body["max_tokens"], body["messages"]) == ("m1", 9, messages)
    run = run_to_end(
        client, spec("templated", node), {"model": "m1", "max_tokens": "lots", "messages": messages}
    )
    assert run.status == "FAILED"
    assert run.node("say").attempt == 1
    assert "params.max_tokens must be a positive whole number" in run.node("say").error
