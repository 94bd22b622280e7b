"""Helpers shared by the test modules (importable as sp_testing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
