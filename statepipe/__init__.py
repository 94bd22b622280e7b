"""statepipe: run LLM agent workflows as DAGs and watch them live.

The client surface is exported lazily, so ``import statepipe`` stays cheap
(grpc and protobuf load on first use of a name that needs them)::

    from statepipe import Client, StatepipeError
    from statepipe import Retry, Workflow  # the SDK (statepipe.sdk)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("statepipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from statepipe.client import (
        AsyncClient,
        Client,
        Event,
        NodeState,
        Run,
        StatepipeError,
    )
    from statepipe.sdk import Retry, TargetError, TargetWarning, Workflow, load_target
    from statepipe_api.convert import SpecError

# Exported name -> module that defines it.
_LAZY = {
    "AsyncClient": "statepipe.client",
    "Client": "statepipe.client",
    "Event": "statepipe.client",
    "NodeState": "statepipe.client",
    "Retry": "statepipe.sdk",
    "Run": "statepipe.client",
    "SpecError": "statepipe_api.convert",
    "StatepipeError": "statepipe.client",
    "TargetError": "statepipe.sdk",
    "TargetWarning": "statepipe.sdk",
    "Workflow": "statepipe.sdk",
    "load_target": "statepipe.sdk",
}

__all__ = [
    "AsyncClient",
    "Client",
    "Event",
    "NodeState",
    "Retry",
    "Run",
    "SpecError",
    "StatepipeError",
    "TargetError",
    "TargetWarning",
    "Workflow",
    "__version__",
    "load_target",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'statepipe' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
