"""Helpers shared by the test modules (importable as sp_testing)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any


def py(
    node_id: str, fn: str = "echo", after: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A python node calling sp_nodes:<fn>; `args=` and `params=` fill its params."""
    args = extra.pop("args", {})
    params = {"callable": f"sp_nodes:{fn}", "args": args, **extra.pop("params", {})}
    node = {"id": node_id, "kind": "python", "params": params, **extra}
    if after:
        node["after"] = after
    return node


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Polls until `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def spawn_server(
    args: list[str], env: dict[str, str], stderr: int | IO[str] = subprocess.PIPE
) -> tuple[subprocess.Popen[str], str]:
    """`python -m statepipe server --listen 127.0.0.1:0 <args>` as a child
    process; returns it and the address it listens on, once it does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "statepipe", "server", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        detail = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"server did not start: {line!r} {detail}")
    return proc, line.rsplit(" ", 1)[1].strip()


def layered_nodes(
    marker_dir: Any, layers: int, width: int, seconds: float, fan_in: int = 1
) -> list[dict[str, Any]]:
    """`layers` x `width` sp_nodes:record nodes; n<L>_<i> depends on `fan_in`
    neighbours in the layer above (n<L-1>_<i>, n<L-1>_<i+1>, ...)."""
    nodes = []
    for layer in range(layers):
        for i in range(width):
            after = [f"n{layer - 1}_{(i + k) % width}" for k in range(fan_in)] if layer else None
            args = {"marker_dir": str(marker_dir), "seconds": seconds}
            nodes.append(py(f"n{layer}_{i}", "record", after, args=args))
    return nodes
