"""Node functions for console tests (importable as sp_ui:<name>)."""

from __future__ import annotations

from typing import Any


def stream_words(ctx: Any, words: int = 40, delay: float = 0.1, prefix: str = "w") -> str:
    """Streams `words` tokens like an LLM would, `delay` seconds apart."""
    out = []
    for i in range(words):
        text = f"{prefix}{i} "
        ctx.token(text)
        out.append(text)
        if ctx.wait_cancelled(delay):
            break
    ctx.log(f"streamed {len(out)} words")
    return "".join(out).strip()


def fail_with_context(ctx: Any, reason: str = "the upstream API said no") -> None:
    """Fails with a traceback two frames deep."""
    ctx.log("about to call the upstream API", level="warning")
    _call_upstream(reason)


def _call_upstream(reason: str) -> None:
    raise RuntimeError(reason)


def raises_timeout(ctx: Any) -> None:
    """Node code whose own call timed out (not the node's timeout_ms)."""
    raise TimeoutError("the upstream call timed out")


def log_lines(ctx: Any, n: int = 1000) -> int:
    """Logs `n` numbered lines."""
    for i in range(n):
        ctx.log(f"line {i}")
    return n
