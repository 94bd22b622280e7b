"""Memory held by the event bus: 1,000 topics, each ring filled to the default capacity.

Each event is its own 200-byte `bytes` object (as the control plane publishes
encoded events), so the figure is what a full bus really costs.

    python bench/bench_bus_memory.py [--topics 1000] [--size 200]
"""

from __future__ import annotations

import argparse
import gc
import os

from core_rs import DEFAULT_CAPACITY, EventBus


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200)
    args = parser.parse_args()
    capacity = DEFAULT_CAPACITY

    gc.collect()
    before = rss_bytes()
    bus = EventBus()
    subs = [bus.subscribe(f"run-{t}") for t in range(args.topics)]
    empty = rss_bytes() - before
    for t in range(args.topics):
        topic = f"run-{t}"
        for _ in range(capacity + 100):  # overfill: the ring stays bounded
            bus.publish(topic, os.urandom(args.size))
    gc.collect()
    full = rss_bytes() - before
    events = bus.buffered()
    assert events == args.topics * capacity, events
    payload = events * args.size

    mib = 1024 * 1024
    print(
        f"bus memory: {args.topics:,} topics, default ring capacity {capacity:,}, "
        f"{args.size}-byte events"
    )
    print(f"  topics with a subscriber, no events   {empty / mib:8.1f} MiB")
    print(f"  every ring full ({events:,} events)     {full / mib:8.1f} MiB")
    print(f"  of which payload bytes                {payload / mib:8.1f} MiB")
    print(
        f"  per event                             {full / events:8.0f} bytes "
        f"(ratio to payload {full / payload:.2f}x)"
    )
    del subs


if __name__ == "__main__":
    main()
