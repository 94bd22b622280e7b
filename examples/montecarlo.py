"""Estimate pi by Monte Carlo: 8 sampling shards in parallel, then one reduce.

Run it with::

    statepipe run examples/montecarlo.py --input '{"samples": 100000}'

Each shard draws its share of ``samples`` points in the unit square with its
own seeded generator (``seed * 1000 + shard``), so the same input always gives
the same estimate. Shard 3 fails on its first attempt on purpose: its retry
policy (3 attempts, 100 ms apart) brings it back, and the run still succeeds.
"""

from __future__ import annotations

import random
from typing import Any

from statepipe import Retry, Workflow

SHARDS = 8
DEFAULT_SAMPLES = 100_000
DEFAULT_SEED = 7
FLAKY_SHARD = 3

wf = Workflow(
    "montecarlo",
    description="Estimate pi with parallel sampling shards and a reduce",
    input_schema={
        "type": "object",
        "properties": {
            "samples": {"type": "integer", "minimum": 1, "default": DEFAULT_SAMPLES},
            "shards": {"type": "integer", "minimum": 1, "maximum": SHARDS, "default": SHARDS},
            "seed": {"type": "integer", "default": DEFAULT_SEED},
        },
    },
)


def _settings(input: dict[str, Any] | None) -> tuple[int, int, int]:
    """(samples, shards, seed) from the run input; the schema's defaults are not
    filled in by the server, so they are applied here."""
    data = input or {}
    samples = int(data.get("samples", DEFAULT_SAMPLES))
    shards = min(int(data.get("shards", SHARDS)), SHARDS)
    seed = int(data.get("seed", DEFAULT_SEED))
    return samples, shards, seed


def sample(ctx: Any, input: dict[str, Any] | None, shard: int) -> dict[str, int]:
    """Draws this shard's points; returns how many fell inside the quarter circle."""
    if shard == FLAKY_SHARD and ctx.attempt == 1:
        raise RuntimeError(f"shard {shard} fails its first attempt on purpose")
    samples, shards, seed = _settings(input)
    if shard >= shards:
        ctx.log(f"shard {shard} idle: the run uses {shards} shards")
        return {"inside": 0, "samples": 0}
    # Shards split the samples; the first ones take the remainder.
    count = samples // shards + (1 if shard < samples % shards else 0)
    rng = random.Random(seed * 1000 + shard)
    ctx.log(f"shard {shard}: drawing {count} points (attempt {ctx.attempt})")
    inside = 0
    step = max(count // 10, 1)
    for done in range(0, count, step):
        n = min(step, count - done)
        for _ in range(n):
            x, y = rng.random(), rng.random()
            inside += x * x + y * y <= 1.0
        ctx.progress(done + n, count, f"shard {shard}")
    return {"inside": inside, "samples": count}


for _shard in range(SHARDS):
    wf.node(
        id=f"sample_{_shard}",
        args={"shard": _shard},
        retry=Retry(max_attempts=3, backoff_ms=100),
    )(sample)


@wf.node(
    after=[f"sample_{i}" for i in range(SHARDS)],
    args={"parts": [f"{{{{ nodes.sample_{i}.output }}}}" for i in range(SHARDS)]},
)
def reduce(ctx: Any, parts: list[dict[str, int]]) -> dict[str, Any]:
    """Combines the shards into the estimate."""
    inside = sum(part["inside"] for part in parts)
    samples = sum(part["samples"] for part in parts)
    pi = 4.0 * inside / samples if samples else 0.0
    ctx.log(f"pi ~ {pi:.5f} from {samples} samples")
    ctx.metric("pi", pi)
    return {"pi": pi, "samples": samples}
