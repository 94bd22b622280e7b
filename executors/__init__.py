"""Where nodes run: the executor contract, runners by kind, the local executor."""

from executors.base import Cancelled, Executor, NodeContext, NodeError, NodeTask, Runner
from executors.local import LocalExecutor
from executors.runners import RunnerRegistry

__all__ = [
    "Cancelled",
    "Executor",
    "LocalExecutor",
    "NodeContext",
    "NodeError",
    "NodeTask",
    "Runner",
    "RunnerRegistry",
]
