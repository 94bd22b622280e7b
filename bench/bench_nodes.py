"""Node functions for bench/bench_control_plane.py (importable as bench_nodes:<name>).

The benchmark runs the control plane in its own process and puts bench/ on
sys.path, so `python` nodes can name these as ``bench_nodes:spam``.
"""

from __future__ import annotations

from typing import Any


def spam(ctx: Any, n: int) -> int:
    """Emits `n` token events (a sync node: it runs on a worker thread)."""
    token = ctx.token
    for _ in range(n):
        token("x")
    return n


async def aspam(ctx: Any, n: int) -> int:
    """The same on the event loop (an async node: no thread hop per event)."""
    token = ctx.token
    for _ in range(n):
        token("x")
    return n
