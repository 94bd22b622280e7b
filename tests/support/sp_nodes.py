"""Node functions for test workflows (importable as sp_nodes:<name>)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any


def add(ctx: Any, a: float, b: float) -> float:
    ctx.log(f"adding {a} and {b}")
    return a + b


def echo(ctx: Any, **kwargs: Any) -> Any:
    return kwargs


def run_input(ctx: Any) -> Any:
    return {"input": ctx.input, "attempt": ctx.attempt, "node": ctx.node_id, "run": ctx.run_id}


def boom(ctx: Any, message: str = "boom") -> None:
    raise ValueError(message)


def fail_until(ctx: Any, succeed_on: int = 2) -> int:
    """Fails until attempt `succeed_on` (attempts count from 1)."""
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


def sleep(ctx: Any, seconds: float = 0.1, value: Any = None) -> Any:
    """Sync sleep that notices cancellation."""
    ctx.wait_cancelled(seconds)
    return value


async def async_sleep(ctx: Any, seconds: float = 0.1, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


async def async_sleep_marking(ctx: Any, seconds: float, marker_dir: str) -> str:
    """Writes <marker_dir>/<node>.started, sleeps, writes .cancelled if cancelled."""
    path = Path(marker_dir)
    (path / f"{ctx.node_id}.started").write_text(str(time.time()))
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        (path / f"{ctx.node_id}.cancelled").write_text(str(time.time()))
        raise
    return "finished"


def record(ctx: Any, marker_dir: str, seconds: float = 0.0) -> str:
    """Appends one line per execution to <marker_dir>/<node>.runs; sleeps."""
    path = Path(marker_dir) / f"{ctx.node_id}.runs"
    with path.open("a") as f:
        f.write(f"{ctx.attempt} {os.getpid()}\n")
    if seconds:
        ctx.wait_cancelled(seconds)
    return ctx.node_id


def chatty(ctx: Any, tokens: int = 5) -> str:
    for i in range(tokens):
        ctx.token(f"t{i} ")
    ctx.progress(1, 2, "half way")
    ctx.tool_call("search", {"q": "x"}, result=["a"])
    ctx.metric("latency_ms", 12.5)
    ctx.progress(2, 2, "done")
    ctx.add_usage(input_tokens=3, output_tokens=tokens)
    return "ok"


def not_json(ctx: Any) -> Any:
    return object()


def concurrency_probe(ctx: Any, marker_dir: str, seconds: float = 0.2) -> int:
    """Records how many probes run at once (max seen) in <marker_dir>/max."""
    import fcntl

    path = Path(marker_dir)
    lock = (path / "lock").open("a")

    def bump(delta: int) -> int:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current_file = path / "current"
            current = int(current_file.read_text() or 0) if current_file.exists() else 0
            current += delta
            current_file.write_text(str(current))
            max_file = path / "max"
            seen = int(max_file.read_text()) if max_file.exists() else 0
            if current > seen:
                max_file.write_text(str(current))
            return current
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    bump(1)
    try:
        time.sleep(seconds)
    finally:
        bump(-1)
    return 1


# Hooks: each appends "<hook> <node>" to the file named by metadata["log"].
def hook_log(ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
    target = metadata.get("log") or os.environ.get("SP_HOOK_LOG")
    if target:
        with open(target, "a") as f:
            f.write(f"{ctx['hook']} {ctx.get('node_id', '')}\n")


def hook_raises(ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
    raise RuntimeError("hook exploded")


def many_tokens(ctx: Any, n: int = 500) -> int:
    for i in range(n):
        ctx.token(f"{i} ")
    return n


def loop_until_cancelled(ctx: Any, marker_dir: str) -> str:
    """A sync node that polls ctx.cancelled and records that it noticed."""
    path = Path(marker_dir)
    (path / f"{ctx.node_id}.started").write_text("1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctx.cancelled:
            (path / f"{ctx.node_id}.noticed").write_text(str(time.time()))
            return "noticed"
        time.sleep(0.005)
    return "never cancelled"


def in_process(ctx: Any, value: int) -> dict[str, int]:
    ctx.log("from a worker process")
    return {"pid": os.getpid(), "value": value * 2}


class Plugin:
    """A statepipe.plugins entry point: records every hook to $SP_PLUGIN_LOG."""

    def _write(self, hook: str, ctx: dict[str, Any]) -> None:
        target = os.environ.get("SP_PLUGIN_LOG")
        if target:
            with open(target, "a") as f:
                f.write(f"{hook} {ctx.get('node_id', '')}\n")

    def on_init(self, ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._write("on_init", ctx)

    def on_success(self, ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._write("on_success", ctx)

    async def on_complete(self, ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._write("on_complete", ctx)


def no_ctx(a: int, b: int = 1) -> int:
    """A node function without ctx (params.pass_ctx: false)."""
    return a * b


def nul_output(ctx: Any) -> dict[str, str]:
    """Returns text PostgreSQL cannot store as is (a NUL character)."""
    return {"text": "a\x00b", "k\x00": "v"}


def nul_error(ctx: Any) -> None:
    raise ValueError("bad\x00byte")


def where(ctx: Any) -> dict[str, Any]:
    """Where a node runs: its pid and, on Ray, the node, actor and resources."""
    out: dict[str, Any] = {"pid": os.getpid()}
    try:
        import ray

        # A Ray worker (a driver in the same process as a Ray test has Ray
        # initialized too, but no assigned resources).
        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            context = ray.get_runtime_context()
            out.update(
                ray_node_id=context.get_node_id(),
                ray_actor_id=context.get_actor_id(),
                resources=context.get_assigned_resources(),
            )
    except ImportError:
        pass
    return out


def first_attempt_hangs(ctx: Any, marker_dir: str, seconds: float = 60.0) -> dict[str, Any]:
    """Writes <marker_dir>/<node>.<attempt>.pid; the first attempt then waits
    (for its process to be killed), later ones return at once."""
    (Path(marker_dir) / f"{ctx.node_id}.{ctx.attempt}.pid").write_text(str(os.getpid()))
    if ctx.attempt == 1:
        ctx.wait_cancelled(seconds)
    return {"attempt": ctx.attempt, **where(ctx)}


async def stream_then_wait(ctx: Any, marker_dir: str, tokens: int = 3) -> int:
    """Emits tokens, then waits until <marker_dir>/<node>.go exists."""
    for i in range(tokens):
        ctx.token(f"t{i}")
    go = Path(marker_dir) / f"{ctx.node_id}.go"
    while not go.exists():
        await asyncio.sleep(0.01)
    ctx.token("after")
    return tokens


def ignores_cancel(ctx: Any, marker_dir: str, seconds: float = 30.0) -> str:
    """Writes <marker_dir>/<node>.pid, then sleeps without looking at ctx.cancelled."""
    (Path(marker_dir) / f"{ctx.node_id}.pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def first_attempt_kills_its_actor(ctx: Any, marker_dir: str) -> dict[str, Any]:
    """The first attempt has Ray kill the actor it runs on (ray.kill), mid-node."""
    (Path(marker_dir) / f"{ctx.node_id}.{ctx.attempt}.pid").write_text(str(os.getpid()))
    if ctx.attempt == 1:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        ctx.wait_cancelled(30)
    return {"attempt": ctx.attempt, **where(ctx)}


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value} if kind == "dict" else [value]
    return value


def deep(ctx: Any, depth: int, kind: str = "list") -> Any:
    """Returns `depth` levels of nested lists or objects."""
    return _nested(depth, kind)


def deep_log(ctx: Any, depth: int) -> str:
    """Logs a message whose data nests `depth` objects deep."""
    ctx.log("deep data", payload=_nested(depth, "dict"))
    return "logged"


def metered(ctx: Any, succeed_on: int = 1) -> int:
    """Reports 10 input and 5 output tokens and $0.001 on every attempt; fails
    until attempt `succeed_on`."""
    ctx.add_usage(
        **{"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, "cost_usd": 0.001}
    )
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt
