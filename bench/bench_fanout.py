"""Event fan-out: core_rs.EventBus vs one asyncio.Queue per subscriber.

One publisher, N subscriber tasks on one event loop, every event delivered to
every subscriber. Both sides publish one event per call and yield to the loop
every `--chunk` events; both subscribers count what they receive and check
they saw every event in order.

    python bench/bench_fanout.py [--events 1000000] [--subscribers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from core_rs import EventBus


def payloads(size: int, count: int = 1000) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


async def with_queues(events: int, subscribers: int, chunk: int, data: list[bytes]) -> float:
    queues: list[asyncio.Queue[tuple[int, bytes] | None]] = [
        asyncio.Queue() for _ in range(subscribers)
    ]

    async def consume(queue: asyncio.Queue[tuple[int, bytes] | None]) -> int:
        received = expected = 0
        while (item := await queue.get()) is not None:
            expected += 1
            assert item[0] == expected
            received += 1
        return received

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    await asyncio.sleep(0)
    start = time.perf_counter()
    n = len(data)
    for seq in range(1, events + 1):
        event = (seq, data[seq % n])
        for queue in queues:
            queue.put_nowait(event)
        if seq % chunk == 0:
            await asyncio.sleep(0)
    for queue in queues:
        queue.put_nowait(None)
    received = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    assert received == [events] * subscribers
    return elapsed


async def with_bus(
    events: int, subscribers: int, chunk: int, data: list[bytes], capacity: int
) -> float:
    # Parked subscribers wake one loop iteration after a publish, so a
    # publisher on the same loop gets two chunks ahead: size the ring for it.
    bus = EventBus(capacity)

    async def consume(sub) -> int:
        received = 0
        async for batch in sub:
            assert batch[0][0] == received + 1
            received += len(batch)
        return received

    tasks = [asyncio.create_task(consume(bus.subscribe("run"))) for _ in range(subscribers)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    publish = bus.publish
    n = len(data)
    for seq in range(1, events + 1):
        publish("run", data[seq % n])
        if seq % chunk == 0:
            await asyncio.sleep(0)
    bus.close("run")
    received = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    assert received == [events] * subscribers
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=None,
        help="events for the asyncio baseline (default: same as --events)",
    )
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--capacity", type=int, default=4096, help="ring capacity of the bus")
    args = parser.parse_args()
    data = payloads(args.size)
    base_events = args.baseline_events or args.events

    bus_s = asyncio.run(with_bus(args.events, args.subscribers, args.chunk, data, args.capacity))
    queue_s = asyncio.run(with_queues(base_events, args.subscribers, args.chunk, data))
    bus_rate = args.events * args.subscribers / bus_s
    queue_rate = base_events * args.subscribers / queue_s
    print(f"fan-out: 1 publisher, {args.subscribers} subscribers, {args.size}-byte events")
    print(
        f"  asyncio.Queue per subscriber  {base_events:>9,} events {queue_s:7.2f} s"
        f"  {queue_rate:14,.0f} deliveries/s"
    )
    print(
        f"  core_rs.EventBus              {args.events:>9,} events {bus_s:7.2f} s"
        f"  {bus_rate:14,.0f} deliveries/s"
    )
    print(f"  ratio                         {bus_rate / queue_rate:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
