"""A research agent: plan with an LLM, search in parallel (map + http), summarize
with a streaming LLM. It runs against any OpenAI-compatible endpoint (OpenAI,
vLLM, Ollama, llama.cpp's server, LiteLLM's proxy) named by the environment::

    export STATEPIPE_LLM_BASE_URL=http://localhost:11434/v1   # e.g. Ollama
    export STATEPIPE_LLM_MODEL=llama3.1
    export OPENAI_API_KEY=...                                # if the endpoint needs one
    statepipe run examples/research_agent.py --input '{"question": "Why is the sky blue?"}'

``plan`` asks the model for search queries (JSON Schema output), ``search`` is a
``map`` of ``http`` calls to Wikipedia's search API (STATEPIPE_SEARCH_URL to use
another), one child run per query, ``digest`` keeps the titles and snippets, and
``summarize`` streams the answer token by token (watch it live in the console or
with ``statepipe logs -f``). Without the endpoint variables it loads nothing and
says, in one line, what to set.
"""

from __future__ import annotations

import os

from statepipe import Retry, Workflow

BASE_URL = os.environ.get("STATEPIPE_LLM_BASE_URL", "")
MODEL = os.environ.get("STATEPIPE_LLM_MODEL", "")
if not (BASE_URL and MODEL):
    raise SystemExit(
        "research_agent needs an OpenAI-compatible endpoint: set STATEPIPE_LLM_BASE_URL and "
        "STATEPIPE_LLM_MODEL (and OPENAI_API_KEY if the endpoint wants a key)"
    )

# Wikipedia's search API (no key needed); STATEPIPE_SEARCH_URL for another one
# that takes the same query parameters.
SEARCH_URL = os.environ.get("STATEPIPE_SEARCH_URL", "https://en.wikipedia.org/w/api.php")
MAX_QUERIES = 3
PLAN_SCHEMA = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {"type": "string"}, "maxItems": 8}},
    "required": ["queries"],
    "additionalProperties": False,
}
# 429s and 5xx from the endpoint wait (Retry-After first) and try again.
MODEL_RETRY = Retry(max_attempts=4, backoff_ms=1000, strategy="exponential", max_backoff_ms=20_000)

wf = Workflow(
    "research_agent",
    description="Plans searches with an LLM, runs them in parallel, streams a summary",
    input_schema={
        "type": "object",
        "properties": {"question": {"type": "string", "minLength": 1}},
        "required": ["question"],
    },
)
model = {"base_url": BASE_URL, "model": MODEL}

wf.add_node(
    "plan",
    "llm",
    {
        **model,
        "system": "You plan web research. Answer with JSON only.",
        "prompt": (
            "Question: {{ input.question }}\n"
            f"Give at most {MAX_QUERIES} short search queries that would find the "
            'facts needed to answer it, as {"queries": [...]}.'
        ),
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "plan", "schema": PLAN_SCHEMA},
        },
    },
    retry=MODEL_RETRY,
)
wf.add_node(
    "search",
    "map",
    {
        "items": "{{ nodes.plan.output.queries }}",
        "max_concurrency": 4,
        "continue_on_failure": True,
        "node": {
            "kind": "http",
            "params": {
                "url": SEARCH_URL,
                "query": {
                    "action": "query",
                    "list": "search",
                    "srsearch": "{{ item }}",
                    "srlimit": 3,
                    "format": "json",
                },
                "headers": {"user-agent": "statepipe-research-agent/0.1"},
                "timeout_ms": 15_000,
            },
            "retry": {"max_attempts": 3, "backoff_ms": 500, "strategy": "exponential"},
        },
    },
    after=["plan"],
)
wf.add_node(
    "digest",
    "python",
    {
        "callable": "research_nodes:digest",
        "args": {
            "queries": "{{ nodes.plan.output.queries }}",
            "results": "{{ nodes.search.output }}",
        },
    },
    after=["plan", "search"],
)
wf.add_node(
    "summarize",
    "llm",
    {
        **model,
        "system": "You answer questions from search results, briefly, citing the titles you use.",
        "prompt": (
            "Question: {{ input.question }}\n\nSearch results:\n{{ nodes.digest.output }}\n\n"
            "Answer in a short paragraph."
        ),
        "temperature": 0.2,
    },
    after=["digest"],
    retry=MODEL_RETRY,
)
