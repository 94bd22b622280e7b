"""Runners by node kind, and the registry (built-ins plus entry points)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from executors.base import NodeContext, NodeError, NodeTask, Runner

log = logging.getLogger(__name__)

RUNNER_ENTRY_POINTS = "statepipe.runners"
# Worker threads of sync python nodes are named after this.
NODE_THREAD_PREFIX = "statepipe-node"


@functools.lru_cache(maxsize=4096)
def import_callable(path: str) -> Callable[..., Any]:
    """Imports ``package.module:function`` (attributes may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise NodeError(
            f"callable {path!r} must look like 'package.module:function'", retryable=False
        )
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:
        raise NodeError(
            f"cannot import {path!r}: {type(err).__name__}: {err}{_import_hint(err)}",
            retryable=False,
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise NodeError(
                f"cannot import {path!r}: module {module_name!r} has no attribute {attr!r}",
                retryable=False,
            ) from None
    if not callable(target):
        raise NodeError(f"{path!r} is a {type(target).__name__}, not a callable", retryable=False)
    return target


def _import_hint(err: Exception) -> str:
    if isinstance(err, ModuleNotFoundError):
        # Right in-process (no server) and behind a server alike.
        return (
            f" (check the name; where this node runs, {err.name!r} is not importable:"
            " add its folder with statepipe server --path DIR, set PYTHONPATH, or install it)"
        )
    return ""


@functools.lru_cache(maxsize=4096)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        return None


def check_call(
    fn: Callable[..., Any], path: str, lead: tuple[Any, ...], args: Mapping[str, Any]
) -> None:
    """Raises a NodeError another attempt cannot mend when `args` do not fit `fn`."""
    signature = _signature(fn)
    if signature is None:
        return
    try:
        signature.bind(*lead, **args)
    except TypeError as err:
        given = ", ".join(sorted(args)) or "none"
        raise NodeError(
            f"cannot call {path!r} with params.args ({given}): {err}", retryable=False
        ) from None


_RESOLVED: dict[str, Callable[..., Any]] = {}


async def resolve_callable(path: str) -> Callable[..., Any]:
    """import_callable, off the event loop the first time a path is seen: a
    module's first import runs its top-level code, which may take long."""
    fn = _RESOLVED.get(path)
    if fn is None:
        fn = await asyncio.to_thread(import_callable, path)
        if len(_RESOLVED) > 4096:
            _RESOLVED.clear()
        _RESOLVED[path] = fn
    return fn


def _check_callable_param(params: Mapping[str, Any]) -> None:
    path = params.get("callable")
    if not isinstance(path, str) or ":" not in path:
        raise ValueError("params.callable must be a string 'package.module:function'")
    args = params.get("args", {})
    if not isinstance(args, Mapping) and not (isinstance(args, str) and "{{" in args):
        raise ValueError("params.args must be an object of keyword arguments")
    if not isinstance(params.get("pass_ctx", True), bool):
        raise ValueError("params.pass_ctx must be true or false")
    isolation = params.get("isolation", "thread")
    if isolation not in ("thread", "process"):
        raise ValueError(f"params.isolation must be 'thread' or 'process', not {isolation!r}")


class _ProcessContext:
    """The ctx a function gets in a worker process: it records, the parent replays."""

    def __init__(self, run_id: str, node_id: str, attempt: int, run_input: Any) -> None:
        self.run_id, self.node_id, self.attempt, self.input = run_id, node_id, attempt, run_input
        self.cancelled = False
        self.records: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name in ("log", "progress", "token", "tool_call", "metric", "emit", "add_usage"):
            return lambda *a, **k: self.records.append((name, a, k))
        raise AttributeError(name)

    def raise_if_cancelled(self) -> None:
        return None


def _call_in_process(
    path: str, ctx: _ProcessContext, args: dict[str, Any], pass_ctx: bool
) -> tuple[Any, list]:
    fn = import_callable(path)
    return (fn(ctx, **args) if pass_ctx else fn(**args)), ctx.records


class PythonRunner:
    """``kind: python``: calls ``params.callable`` as ``fn(ctx, **params.args)``
    (``fn(**params.args)`` with ``params.pass_ctx: false``).

    Async functions run on the event loop; sync ones in a thread pool, or in a
    process pool when ``params.isolation == "process"``.
    """

    kind = "python"

    def __init__(self, threads: int = 64) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=NODE_THREAD_PREFIX
        )
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def validate(self, params: Mapping[str, Any]) -> None:
        _check_callable_param(params)

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        path = task.params["callable"]
        args = task.params.get("args") or {}
        if not isinstance(args, Mapping):
            raise NodeError(f"params.args resolved to {type(args).__name__}, not an object")
        fn = await resolve_callable(path)
        # pass_ctx: false calls fn(**args) (the SDK sets it for functions without ctx).
        lead = (ctx,) if task.params.get("pass_ctx", True) else ()
        check_call(fn, path, lead, args)
        loop = asyncio.get_running_loop()
        if task.params.get("isolation") == "process":
            pctx = _ProcessContext(task.run_id, task.node_id, task.attempt, task.run_input)
            result, records = await loop.run_in_executor(
                self._process_pool(), _call_in_process, path, pctx, dict(args), bool(lead)
            )
            for name, a, k in records:
                getattr(ctx, name)(*a, **k)
            return result
        if inspect.iscoroutinefunction(fn):
            return await fn(*lead, **args)
        future = loop.run_in_executor(self._threads, functools.partial(fn, *lead, **args))
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            ctx.cancel()  # the thread cannot be stopped: tell the function, stop waiting
            raise
        if inspect.isawaitable(result):
            result = await result
        return result

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._processes is None:
                import multiprocessing

                self._processes = concurrent.futures.ProcessPoolExecutor(
                    max_workers=2, mp_context=multiprocessing.get_context("spawn")
                )
            return self._processes

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)


class NoopRunner:
    """``kind: noop``: returns ``params.value`` (default null). For joins and benchmarks."""

    kind = "noop"

    def validate(self, params: Mapping[str, Any]) -> None:
        return None

    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        return task.params.get("value")


def builtin_runners() -> list[Runner]:
    """One of each built-in runner (imported here: each module imports its client library)."""
    from executors.child_runners import MapRunner, WorkflowRunner
    from executors.http_runner import HttpRunner
    from executors.llm_runner import AgentRunner, LlmRunner
    from executors.shell_runner import ShellRunner

    runners: list[Runner] = [PythonRunner(), NoopRunner(), WorkflowRunner(), MapRunner()]
    runners += [HttpRunner(), ShellRunner()]
    runners += [LlmRunner(), AgentRunner()]
    return runners


class RunnerRegistry:
    """Runners by kind: the built-ins plus the entry-point group statepipe.runners."""

    def __init__(self, runners: list[Runner] | None = None, *, load_plugins: bool = True) -> None:
        self._runners: dict[str, Runner] = {}
        for runner in runners if runners is not None else builtin_runners():
            self.add(runner)
        if load_plugins:
            for ep in entry_points(group=RUNNER_ENTRY_POINTS):
                try:
                    obj = ep.load()
                    self.add(obj() if isinstance(obj, type) else obj)
                except Exception:
                    log.exception("runner plugin %s failed to load; skipped", ep.name)

    def add(self, runner: Runner) -> None:
        self._runners[runner.kind] = runner

    def get(self, kind: str) -> Runner | None:
        return self._runners.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._runners)

    def close(self) -> None:
        for runner in self._runners.values():
            close = getattr(runner, "close", None)
            if close:
                close()
