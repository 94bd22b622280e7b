"""examples/research_agent.py through the real CLI: against a local
OpenAI-compatible stand-in and a local search server it plans, fans out its
searches as map items over http, and streams its summary; without an endpoint
it says in one line what to set."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sp_cli import cli
from sp_http import HttpServer, Reply
from sp_openai import OpenAIStandIn
from sp_openai import Reply as Completion

from statepipe.client import Client

EXAMPLE = "examples/research_agent.py"
QUERIES = ["rayleigh scattering", "sky colour", "sunset red"]
ANSWER = "The sky is blue because air scatters short wavelengths more (Rayleigh scattering)."


@pytest.fixture
def endpoints() -> Iterator[tuple[OpenAIStandIn, HttpServer]]:
    search = HttpServer()
    search.route(
        "/search",
        lambda request: Reply(
            json={
                "query": {
                    "search": [
                        {"title": f"About {request.query['srsearch'][0]}", "snippet": "<b>x</b>"}
                    ]
                }
            }
        ),
    )
    with OpenAIStandIn() as model:
        model.script(
            Completion(text=json.dumps({"queries": QUERIES})),
            Completion(text=ANSWER),
        )
        yield model, search
    search.close()


def test_without_an_endpoint_it_says_what_to_set_in_one_line(env: dict[str, str]) -> None:
    for name in ("STATEPIPE_LLM_BASE_URL", "STATEPIPE_LLM_MODEL"):
        env.pop(name, None)
    proc = cli(env, "run", EXAMPLE, "--input", '{"question": "why is the sky blue?"}')
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "STATEPIPE_LLM_BASE_URL" in lines[0] and "STATEPIPE_LLM_MODEL" in lines[0]


def test_it_plans_searches_in_parallel_and_streams_the_summary(
    env: dict[str, str], endpoints: tuple[OpenAIStandIn, HttpServer], client: Client
) -> None:
    model, search = endpoints
    env.update(
        STATEPIPE_LLM_BASE_URL=model.base_url,
        STATEPIPE_LLM_MODEL="stand-in-1",
        STATEPIPE_SEARCH_URL=search.url("/search"),
    )
    env.pop("OPENAI_API_KEY", None)
    # An in-process control plane on the test's database; `client` reads it after.
    proc = cli(env, "run", EXAMPLE, "--input", '{"question": "why is the sky blue?"}', "--json")
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout.splitlines()[-1])["run_id"]
    run = client.get_run(run_id)
    assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
    assert run.node("plan").output == {"queries": QUERIES}
    assert run.node("summarize").output == ANSWER
    assert "About sky colour" in run.node("digest").output
    items = client.list_runs(parent=run_id, limit=None)
    assert sorted(c.parent_node_id for c in items) == [f"search[{i}]" for i in range(3)]
    tokens = [e.message for e in client.watch(run_id) if e.kind == "token"]
    summary_tokens = [
        e.message for e in client.watch(run_id) if e.kind == "token" and e.node_id == "summarize"
    ]
    assert "".join(summary_tokens) == ANSWER
    assert len(tokens) > len(summary_tokens)  # the plan streamed too
    assert sorted(r.query["srsearch"][0] for r in search.received("/search")) == sorted(QUERIES)
    # The summary prompt holds the digested results.
    last = model.chat_requests[-1].messages[-1]["content"]
    assert "About rayleigh scattering" in last
