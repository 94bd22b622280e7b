"""The control plane as a library: the one module statepipe (the CLI) imports from it.

Everything the ``statepipe`` command needs from the server side goes through
here, so the rest of control_plane and executors can change shape freely
(``lint-imports`` holds statepipe to this; see ``[tool.importlinter]`` in
pyproject.toml):

- :func:`start_plane`: a control plane on its own event-loop thread, serving
  gRPC, returned as an :class:`EmbeddedPlane` handle (``.address``,
  ``.owned_runs()``, ``.stop()``, ``.node_threads_ended()``);
- :func:`serve`: a control plane in the calling thread until SIGTERM or SIGINT;
- :func:`check_spec`: validates a workflow spec exactly as the server would and
  returns a :class:`PlanSummary` (levels computed by core_rs);
- :func:`plan_levels`: a spec's dependency graph by topological level, through
  core_rs, without the rest of the validation.

Importing this module is cheap: grpc, psycopg and the executors load when a
function needs them (``statepipe --help`` imports none of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control_plane.server import ControlPlane, ServerConfig
    from statepipe_api.v1 import statepipe_pb2 as pb

__all__ = [
    "START_TIMEOUT_S",
    "EmbeddedPlane",
    "PlanError",
    "PlanSummary",
    "PlaneStartError",
    "ServerConfig",
    "check_spec",
    "plan_levels",
    "serve",
    "start_plane",
]

#: Most seconds to wait for a control plane to start (a first embedded
#: Postgres runs initdb, which takes a few seconds).
START_TIMEOUT_S = 180.0


def __getattr__(name: str) -> Any:
    # ServerConfig is re-exported lazily: importing control_plane.server loads grpc and psycopg.
    if name == "ServerConfig":
        return _server().ServerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _server() -> Any:
    with warnings.catch_warnings():
        # Third-party deprecation noise at import (pgserver, grpc) is not the user's business.
        warnings.simplefilter("ignore")
        from control_plane import server

    return server


# -------------------------------------------------------------------- errors


class PlaneStartError(Exception):
    """A control plane could not start (database, address in use, executor, ...).

    ``str(err)`` is one line, at most 300 characters.
    """


class PlanError(Exception):
    """A workflow spec, or an input for it, that the server would refuse.

    ``str(err)`` names where the mistake is (the node, the field, the cycle,
    the input path), as the server's INVALID_ARGUMENT or RESOURCE_EXHAUSTED
    message would.
    """


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------ running planes


async def _cancel_tasks() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class EmbeddedPlane:
    """A running control plane on its own event-loop thread (what :func:`start_plane` returns).

    Attributes:
        address: ``host:port`` its gRPC server listens on.
        plane: the ``ControlPlane`` itself, for in-process tests and benchmarks.
        loop: the event loop it runs on (in ``thread``).
    """

    def __init__(self, config: ServerConfig, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Starts it; use :func:`start_plane`.

        Raises:
            PlaneStartError: It did not start within `timeout_s` or failed to.
        """
        self.config = config
        self.plane: ControlPlane = _server().ControlPlane(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="statepipe-control-plane", daemon=True
        )
        self.thread.start()
        self._stopped = False
        try:
            self._call(self.plane.start(), timeout_s)
        except BaseException as err:
            self.stop()
            if isinstance(err, Exception):
                raise PlaneStartError(_one_line(err)) from err
            raise
        self.address: str = self.plane.address

    def _call(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def owned_runs(self) -> list[str]:
        """Runs its scheduler holds (taken over at start, started, resumed)."""

        async def actors() -> list[str]:
            scheduler = self.plane.scheduler
            return list(scheduler.actors) if scheduler is not None else []

        if self._stopped:
            return []
        return list(self._call(actors(), 10))

    def stop(self) -> None:
        """Graceful (streams get ``config.grace_s``); its runs are left for recovery. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            with contextlib.suppress(Exception):
                self._call(self.plane.stop(), 30)
            with contextlib.suppress(Exception):
                self._call(_cancel_tasks(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()

    def node_threads_ended(self, timeout_s: float = 2.0) -> bool:
        """After :meth:`stop`: waits up to `timeout_s` for the threads sync nodes ran in.

        False when some are still alive: a node that ignores ``ctx.cancelled``
        keeps its thread, and the interpreter joins such threads at exit.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            from executors.runners import NODE_THREAD_PREFIX

            stuck = [t for t in threading.enumerate() if t.name.startswith(NODE_THREAD_PREFIX)]
            if not any(t.is_alive() for t in stuck):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def __enter__(self) -> EmbeddedPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_plane(config: ServerConfig, *, timeout_s: float = START_TIMEOUT_S) -> EmbeddedPlane:
    """Starts a control plane (store, scheduler, executor, gRPC) on a background thread.

    Args:
        config: A :class:`ServerConfig` (``listen="127.0.0.1:0"`` picks a free port).
        timeout_s: Most seconds to wait for it to serve.

    Raises:
        PlaneStartError: It could not start.
    """
    return EmbeddedPlane(config, timeout_s=timeout_s)


def serve(config: ServerConfig) -> None:
    """Runs a control plane in this thread until SIGTERM or SIGINT, then stops it gracefully.

    Prints ``statepipe server listening on HOST:PORT`` on stdout once it serves.

    Raises:
        PlaneStartError: It could not start (address in use, database unreachable,
            unknown executor, ...).
    """
    server = _server()

    async def run() -> None:
        ready = asyncio.Event()
        try:
            await server.serve(config, ready=ready)
        except Exception as err:
            if ready.is_set():
                raise
            raise PlaneStartError(_one_line(err)) from err

    asyncio.run(run())


# ------------------------------------------------------------------ checking


@dataclasses.dataclass(frozen=True)
class PlanSummary:
    """A spec the server would accept, as :func:`check_spec` saw it.

    Attributes:
        name: The workflow's name.
        version: Its version ("1" when the spec gave none, as the server fills it).
        node_count: How many nodes it has.
        levels: Node ids by topological level (core_rs ``Dag.levels``): level 0
            depends on nothing, level n only on levels below; spec order within a level.
    """

    name: str
    version: str
    node_count: int
    levels: list[list[str]]
    _validate_input: Callable[[Any], None] = dataclasses.field(repr=False, compare=False)

    def validate_input(self, value: Any) -> None:
        """Checks a run input against the workflow's input schema.

        Raises:
            PlanError: It breaks the schema (the message gives the input path).
        """
        from control_plane.errors import StatepipeError

        try:
            self._validate_input(value)
        except StatepipeError as err:
            raise PlanError(str(err)) from None


def check_spec(spec: pb.WorkflowSpec) -> PlanSummary:
    """Validates a workflow spec as the server does before registering or running it.

    Kinds (the runners this process has, plugins included), params, retry and
    resource values, dependencies, duplicates, cycles, templates and the input
    schema itself. `spec` is not modified.

    Args:
        spec: A ``statepipe.v1.WorkflowSpec`` (``statepipe_api.convert.spec_to_proto``
            makes one from a dict or a spec file).

    Raises:
        PlanError: The server would refuse it.
    """
    from control_plane.errors import StatepipeError
    from control_plane.plan import compile_spec
    from executors.runners import RunnerRegistry
    from statepipe_api.v1 import statepipe_pb2

    checked = statepipe_pb2.WorkflowSpec()
    checked.CopyFrom(spec)  # compile_spec fills defaults in place
    registry = RunnerRegistry()
    try:
        plan = compile_spec(checked, registry)
    except StatepipeError as err:
        raise PlanError(str(err)) from None
    finally:
        registry.close()
    return PlanSummary(
        plan.name, plan.version, len(plan.dag), plan.dag.levels(), plan.validate_input
    )


def plan_levels(spec: pb.WorkflowSpec) -> list[list[str]]:
    """A spec's nodes by topological level, computed by core_rs (``Dag.levels``).

    Only the dependency graph is checked; :func:`check_spec` checks everything.

    Raises:
        PlanError: The nodes do not form a DAG (a duplicate id, an unknown
            dependency, a cycle).
    """
    import core_rs

    nodes = list(spec.nodes)
    edges = [(dep, node.id) for node in nodes for dep in node.after]
    try:
        return core_rs.Dag([node.id for node in nodes], edges).levels()
    except core_rs.DagError as err:
        raise PlanError(str(err)) from None
