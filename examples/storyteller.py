"""A streaming, LLM-shaped workflow with no LLM and no network: outline, draft, review.

Run it with::

    statepipe run examples/storyteller.py --input '{"topic": "the sea", "words": 120}'

The nodes stream their text a word at a time with ``ctx.token`` (the way an ``llm``
node streams a model's tokens), record a tool call and report token usage and cost
under the OpenTelemetry GenAI names, so the console shows tokens arriving, tool
calls in the trace and totals on the run. ``review`` fails once on purpose and is
retried after a short backoff.
"""

from __future__ import annotations

import random
import time
from typing import Any

from statepipe import Retry, Workflow

wf = Workflow(
    "storyteller",
    description="Streams an outline and a draft word by word, then reviews it",
    input_schema={
        "type": "object",
        "properties": {
            "topic": {"type": "string", "minLength": 1, "default": "the sea"},
            "words": {"type": "integer", "minimum": 10, "maximum": 2000, "default": 150},
        },
    },
)

_WORDS = (
    "tide harbour lantern salt wind gull rope keel horizon storm quiet shore night "
    "wave drift sail dawn fog current anchor deep blue silver distant old ship"
).split()
PRICE_PER_MTOK = {"input": 0.15, "output": 0.60}  # an imaginary model's prices, USD


def _stream(ctx: Any, words: int, seed: int, delay: float) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(words):
        word = rng.choice(_WORDS)
        text = (word.capitalize() if i % 12 == 0 else word) + ("." if i % 12 == 11 else "") + " "
        ctx.token(text)
        out.append(text)
        if ctx.wait_cancelled(delay):
            break
    ctx.add_usage(
        **{
            "gen_ai.usage.input_tokens": 40 + words // 4,
            "gen_ai.usage.output_tokens": len(out),
            "cost_usd": ((40 + words // 4) * PRICE_PER_MTOK["input"]
                         + len(out) * PRICE_PER_MTOK["output"]) / 1e6,
        }
    )  # fmt: skip
    return "".join(out).strip()


@wf.node
def outline(ctx: Any) -> str:
    """Streams a short outline."""
    topic = str((ctx.input or {}).get("topic", "the sea"))
    ctx.log(f"outlining a story about {topic}")
    return _stream(ctx, 24, seed=len(topic), delay=0.05)


@wf.node
def draft(ctx: Any, outline: str) -> str:
    """Streams the draft, a word every 40 ms."""
    words = int((ctx.input or {}).get("words", 150))
    ctx.tool_call("thesaurus", {"word": outline.split()[0]}, result=_WORDS[:5])
    return _stream(ctx, words, seed=words, delay=0.04)


@wf.node(retry=Retry(max_attempts=3, backoff_ms=500))
def review(ctx: Any, draft: str) -> dict[str, Any]:
    """Counts the words; the first attempt fails, to show a retry."""
    if ctx.attempt == 1:
        raise RuntimeError("the reviewer is busy (on purpose, to show a retry)")
    time.sleep(0.2)
    words = draft.split()
    ctx.log(f"reviewed {len(words)} words", level="info")
    return {"words": len(words), "sentences": draft.count("."), "verdict": "ship it"}
