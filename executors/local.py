"""The local executor: nodes run in this process (event loop, threads, processes)."""

from __future__ import annotations

from typing import Any

from executors.base import NodeContext, NodeError, NodeTask
from executors.runners import RunnerRegistry


class LocalExecutor:
    name = "local"
    places_nodes = False

    def __init__(self, runners: RunnerRegistry) -> None:
        self.runners = runners

    async def start(self) -> None:
        return None

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        runner = self.runners.get(task.kind)
        if runner is None:
            raise NodeError(
                f"no runner for kind {task.kind!r}; known: {self.runners.kinds()}", retryable=False
            )
        return await runner.run(task, ctx)

    async def close(self) -> None:
        self.runners.close()
