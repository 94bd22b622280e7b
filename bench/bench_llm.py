"""The `llm` runner vs the bare `openai` client, streaming the same completion
from the same OpenAI-compatible stand-in (tests/support/sp_openai.py, its own
process), in the same run, interleaved round by round.

- bare: `openai.AsyncOpenAI` (warm connection, max_retries=0) in this process,
  a client process of its own: time to first content delta, and to the stream's end.
- runner: one-node `llm` runs on `statepipe server` (its own process, embedded
  Postgres, fsync on): the runner's own time to first token and request
  duration, as it records them in the node's usage (what the runner adds
  around the openai client) — the figures the targets are about (≤ 1.1x, and
  ≤ +1 ms to time to first token);
- end to end, beside them: StartRun → the run's final result (Client.wait) as
  a caller sees it, which adds run creation, scheduling and persistence.

    python bench/bench_llm.py [--quick] [--rounds 40] [--tokens 200] [--chunk-delay-ms 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import openai
from bench_support import BenchError, Postgres, percentile
from bench_tokens import Child, Watchdog, spawn_server

from statepipe.client import Client

REPO = Path(__file__).resolve().parents[1]
STAND_IN = REPO / "tests" / "support" / "sp_openai.py"
TARGET_RATIO = 1.1
TARGET_TTFT_ADDED_MS = 1.0


def say(line: str = "") -> None:
    print(line, flush=True)


def spawn_stand_in(tokens: int, delay_ms: float, watchdog: Watchdog) -> tuple[Child, str]:
    child = Child(
        "stand-in",
        [sys.executable, str(STAND_IN), "--port", "0", "--tokens", str(tokens),
         "--chunk-delay-ms", str(delay_ms)],
    )  # fmt: skip
    watchdog.children.append(child)
    assert child.proc.stdout is not None
    line = child.proc.stdout.readline()
    if not line.startswith("listening "):
        raise BenchError(f"the stand-in did not start: {line!r} {child.tail()}")
    return child, line.split()[1]


async def bare_round(client: openai.AsyncOpenAI) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model="stand-in-1",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not first:
                first = time.perf_counter()
            tokens += 1
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000, tokens


def spec(base_url: str) -> dict:
    return {
        "name": "bench-llm",
        "nodes": [
            {"id": "ask", "kind": "llm", "params": {"base_url": base_url, "model": "stand-in-1",
                                                     "prompt": "go"}}
        ],
    }  # fmt: skip


def summary(name: str, values: list[float]) -> str:
    return f"p50 {percentile(values, 50):7.2f} ms  p90 {percentile(values, 90):7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.2)
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    watchdog = Watchdog(300 if args.quick else 1200)
    pg = None
    try:
        pg = Postgres()
        watchdog.pg = pg
        _, base_url = spawn_stand_in(args.tokens, args.chunk_delay_ms, watchdog)
        _, address = spawn_server(pg.uri, watchdog)
        say(f"[llm] {rounds} rounds of {args.tokens} tokens, {args.chunk_delay_ms} ms between"
            f" chunks; stand-in {base_url}; server {address}; Postgres {pg.version}"
            f" fsync={pg.fsync}")  # fmt: skip
        bare_ttft, bare_total, run_ttft, run_total, e2e = [], [], [], [], []
        loop = asyncio.new_event_loop()
        bare = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        with Client(address) as client:
            workflow = spec(base_url)
            for i in range(rounds + 2):  # two warm-up rounds of each
                ttft, total, tokens = loop.run_until_complete(bare_round(bare))
                if tokens != args.tokens:
                    raise BenchError(f"bare client: {tokens} tokens, {args.tokens} sent")
                start = time.perf_counter()
                run = client.wait(client.start_run(workflow), timeout=60)
                elapsed = (time.perf_counter() - start) * 1000
                if run.status != "SUCCEEDED":
                    raise BenchError(f"run {run.run_id} {run.status}: {run.node('ask').error}")
                usage = run.node("ask").usage or {}
                if i < 2:
                    continue
                bare_ttft.append(ttft)
                bare_total.append(total)
                run_ttft.append(usage["gen_ai.server.time_to_first_token"] * 1000)
                run_total.append(usage["gen_ai.server.request.duration"] * 1000)
                e2e.append(elapsed)
        loop.run_until_complete(bare.close())
        loop.close()
        p50 = lambda v: percentile(v, 50)  # noqa: E731
        say(f"  bare openai client  time to first token {summary('', bare_ttft)}")
        say(f"  llm runner          time to first token {summary('', run_ttft)}")
        added = p50(run_ttft) - p50(bare_ttft)
        say(
            f"  time to first token added (p50): {added:+.2f} ms (target <= +"
            f"{TARGET_TTFT_ADDED_MS:g} ms: {'meets target' if added <= 1 else 'ABOVE TARGET'})"
        )
        ratio = p50(run_ttft) / p50(bare_ttft)
        say(f"  time to first token ratio runner/bare: {ratio:.2f}x")
        say(f"  bare openai client  total               {summary('', bare_total)}")
        say(f"  llm runner          total               {summary('', run_total)}")
        ratio = p50(run_total) / p50(bare_total)
        ok = "meets target" if ratio <= TARGET_RATIO else "ABOVE TARGET"
        say(f"  total time ratio runner/bare: {ratio:.2f}x (target <= {TARGET_RATIO}x: {ok})")
        say(f"  end to end, StartRun -> final result (client process) {summary('', e2e)}"
            f" ({p50(e2e) / p50(bare_total):.2f}x the bare stream)")  # fmt: skip
        return 0
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        for child in list(watchdog.children):
            child.stop()
        if pg is not None:
            pg.close()
        watchdog.done.set()


if __name__ == "__main__":
    sys.exit(main())
