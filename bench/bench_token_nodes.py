"""Node functions for bench/bench_tokens.py (importable as bench_token_nodes:<name>).

The benchmark starts the control plane with ``--path bench``. Token ``i`` is the
text ``f"{i} "`` with ``t=time.time()`` just before the ``ctx.token`` call, so a
watcher can check the joined text and measure emit -> receive.

Both nodes first wait for `go_file` to exist: the watcher creates it once its
WatchRun is live, so no token is delivered by a replay instead of live.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

GO_POLL_S = 0.001


def _timed_out(go_file: str, wait_s: float) -> TimeoutError:
    return TimeoutError(f"{go_file} did not appear within {wait_s:g}s (no watcher?)")


async def paced(
    ctx: Any, n: int, rate: float, burst: int = 5, go_file: str = "", wait_s: float = 60.0
) -> int:
    """Emits `n` tokens at `rate` per second on the event loop (an async node).

    Emits `burst` tokens, then sleeps until the next burst is due on an absolute
    schedule (so a late wake-up does not lower the rate), like a model client
    handing over the few tokens each network read brings.
    """
    if go_file:
        deadline = time.monotonic() + wait_s
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                raise _timed_out(go_file, wait_s)
            await asyncio.sleep(GO_POLL_S)
    token = ctx.token
    now = time.time
    started = time.perf_counter()
    i = 0
    while i < n:
        for _ in range(min(burst, n - i)):
            token(f"{i} ", t=now())
            i += 1
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return n


def flood(ctx: Any, n: int, go_file: str = "", wait_s: float = 60.0) -> int:
    """Emits `n` tokens as fast as it can (a sync node: a worker thread, which
    the pipeline holds back when too many events wait to be committed)."""
    if go_file:
        deadline = time.monotonic() + wait_s
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                raise _timed_out(go_file, wait_s)
            time.sleep(GO_POLL_S)
    token = ctx.token
    now = time.time
    for i in range(n):
        token(f"{i} ", t=now())
    return n
