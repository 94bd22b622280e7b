"""Lifecycle hooks and plugins.

A workflow names hooks in its spec (``hooks: {on_success: "pkg.mod:fn"}``);
plugins registered under the entry-point group ``statepipe.plugins`` get every
hook of every workflow (an object or module with ``on_init``, ``on_success``,
... attributes). A hook is called as ``fn(ctx, metadata)`` and may be async.
A sync hook runs in a worker thread and a hook's module is imported in one,
so neither holds up the event loop. A hook that raises becomes a
``hook_error`` event, never a failed run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from executors.base import NodeError
from executors.runners import resolve_callable

if TYPE_CHECKING:
    from control_plane.pipeline import EventPipeline
    from control_plane.plan import Plan

log = logging.getLogger(__name__)

PLUGIN_ENTRY_POINTS = "statepipe.plugins"


def load_plugins() -> list[tuple[str, Any]]:
    """The objects registered under statepipe.plugins (a class is instantiated)."""
    plugins: list[tuple[str, Any]] = []
    for ep in entry_points(group=PLUGIN_ENTRY_POINTS):
        try:
            obj = ep.load()
            plugins.append((ep.name, obj() if isinstance(obj, type) else obj))
        except Exception:
            log.exception("plugin %s failed to load; skipped", ep.name)
    return plugins


class Hooks:
    def __init__(
        self, pipeline: EventPipeline, plugins: list[tuple[str, Any]] | None = None
    ) -> None:
        self.pipeline = pipeline
        self.plugins: list[tuple[str, Any]] = plugins or []

    async def load_plugins(self) -> None:
        """Loads the statepipe.plugins entry points (in a worker thread)."""
        self.plugins = await asyncio.to_thread(load_plugins)

    def wants(self, plan: Plan, hook: str) -> bool:
        """Whether calling `hook` for `plan` would reach anything."""
        return hook in plan.spec.hooks or any(
            getattr(plugin, hook, None) is not None for _, plugin in self.plugins
        )

    async def call(
        self, plan: Plan, hook: str, ctx: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> None:
        targets: list[tuple[str, Any]] = []
        path = plan.spec.hooks.get(hook)
        if path:
            try:
                targets.append((path, await resolve_callable(path)))
            except NodeError as err:
                self._report(ctx, hook, path, str(err))
        for name, plugin in self.plugins:
            fn = getattr(plugin, hook, None)
            if fn is not None:
                targets.append((f"plugin {name}", fn))
        meta = metadata if metadata is not None else {}
        for where, fn in targets:
            args = (dict(ctx, hook=hook), meta)
            try:
                if inspect.iscoroutinefunction(fn):
                    await fn(*args)
                    continue
                result = await asyncio.to_thread(fn, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception as err:
                self._report(ctx, hook, where, f"{type(err).__name__}: {err}")

    def _report(self, ctx: dict[str, Any], hook: str, where: str, message: str) -> None:
        run_id = ctx["run_id"]
        if self.pipeline.is_open(run_id):
            self.pipeline.emit(
                run_id,
                "hook_error",
                node_id=ctx.get("node_id", ""),
                attempt=ctx.get("attempt", 0),
                level="error",
                message=f"{hook} hook {where} failed: {message}",
                data={"hook": hook, "target": where},
            )
