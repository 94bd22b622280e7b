"""Node functions for bench/bench_console.py (importable as bench_console_nodes:<name>).

The benchmark starts the control plane with ``--path bench``, so ``python`` nodes
can name these as ``bench_console_nodes:pause``.
"""

from __future__ import annotations

import time
from typing import Any


def pause(ctx: Any, seconds: float) -> float:
    """Sleeps `seconds` (a sync node: it runs on a worker thread)."""
    time.sleep(seconds)
    return seconds


def stream(ctx: Any, n: int, rate: float, batch: int = 10) -> int:
    """Emits `n` tokens at `rate` per second, each ``"<i>@<emit time> "``.

    The emit time is ``time.time()`` just before the ``ctx.token`` call; the node
    sleeps after every `batch` tokens to hold the rate.
    """
    token = ctx.token
    started = time.time()
    for i in range(n):
        token(f"{i}@{time.time():.6f} ")
        if i % batch == batch - 1:
            delay = started + (i + 1) / rate - time.time()
            if delay > 0:
                time.sleep(delay)
    return n
