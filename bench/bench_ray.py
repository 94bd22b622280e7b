"""Overhead of the Ray executor per no-op node against raw Ray actor calls.

    python bench/bench_ray.py [--nodes 5000] [--inflight 64] [--rounds 3] [--quick]

Both sides run in this process on one local Ray cluster started here, with
the same number of actors (the executor's shared pool, `--actors`) and the
same number of calls in flight:

- raw: an async actor whose method returns its argument; each call is
  `await actor.noop.remote(i)`, actors taken in turn;
- statepipe: `RayExecutor.run(task, ctx)` for a `noop` node, the whole path a
  node takes on the Ray executor (pool choice, placement callback, the task
  object to the actor, the runner there, result, usage and events back).

Rounds alternate raw and statepipe; each side's best round counts. The
target is statepipe <= 1.5x raw per node. A second section streams token
events from one node and reports events/s at the driver (no target).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "bench"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

import ray  # noqa: E402

from executors.base import NodeContext, NodeTask  # noqa: E402
from executors.ray_executor import RayExecutor  # noqa: E402

TARGET = 1.5


@ray.remote(num_cpus=0, max_concurrency=1000)
class RawActor:
    async def noop(self, value: Any) -> Any:
        return value


async def closed_loop(count: int, inflight: int, call: Any) -> float:
    """`count` calls with `inflight` of them outstanding at any time; seconds."""
    numbers = iter(range(count))

    async def lane() -> None:
        for i in numbers:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> int:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    loop = asyncio.get_running_loop()
    executor = RayExecutor(pool_size=args.actors)
    await executor.start()
    raw_actors = [RawActor.remote() for _ in range(args.actors)]
    await asyncio.gather(*(a.noop.remote(0) for a in raw_actors))
    turn = itertools.cycle(raw_actors)

    async def raw(i: int) -> Any:
        return await next(turn).noop.remote(i)

    delivered = [0]

    def sink(kind: str, fields: dict[str, Any]) -> None:
        delivered[0] += 1

    def node(i: int, kind: str = "noop", params: dict[str, Any] | None = None) -> Any:
        task = NodeTask(
            run_id="bench",
            node_id=f"n{i}",
            kind=kind,
            params=params if params is not None else {"value": i},
            attempt=1,
            run_input={},
        )
        ctx = NodeContext(task, sink, loop)
        ctx.on_running(lambda placement: None)
        return task, ctx

    async def statepipe(i: int) -> Any:
        return await executor.run(*node(i))

    # Warm both paths (worker imports, connections) before timing.
    await closed_loop(500, args.inflight, raw)
    await closed_loop(500, args.inflight, statepipe)

    print(
        f"[overhead] {args.nodes} no-op nodes per round, {args.inflight} in flight, "
        f"{args.actors} actors each side, {args.rounds} rounds"
    )
    best = {"raw": float("inf"), "statepipe": float("inf")}
    for r in range(args.rounds):
        for name, call in (("raw", raw), ("statepipe", statepipe)):
            seconds = await closed_loop(args.nodes, args.inflight, call)
            best[name] = min(best[name], seconds)
            print(
                f"  round {r + 1} {name:9} {args.nodes / seconds:9,.0f} calls/s  "
                f"{seconds / args.nodes * 1e6:7.1f} us/call"
            )
    raw_us = best["raw"] / args.nodes * 1e6
    ours_us = best["statepipe"] / args.nodes * 1e6
    ratio = ours_us / raw_us
    print(f"  raw Ray actor call       {raw_us:7.1f} us per call (best round)")
    print(f"  Ray executor no-op node  {ours_us:7.1f} us per node (best round)")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"  ratio {ratio:.2f}x raw ({verdict} the {TARGET}x target)")

    print(f"[events] one node emitting {args.tokens:,} tokens from a worker thread")
    delivered[0] = 0
    started = time.perf_counter()
    await executor.run(
        *node(0, "python", {"callable": "bench_nodes:spam", "args": {"n": args.tokens}})
    )
    seconds = time.perf_counter() - started
    assert delivered[0] == args.tokens, delivered[0]
    print(f"  {args.tokens / seconds:,.0f} events/s delivered to the driver's ctx, in order")

    await executor.close()
    ray.shutdown()
    return 0 if ratio <= TARGET or args.quick else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes; exit 0 whatever the ratio"
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.rounds, args.tokens = 500, 1, 10_000
    sys.exit(asyncio.run(main(args)))
