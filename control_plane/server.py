"""The composition root: store, bus, pipeline, scheduler, executor, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import core_rs
from control_plane.errors import Unavailable
from control_plane.pipeline import EventPipeline
from control_plane.scheduler import Scheduler, Settings
from control_plane.service import SERVICE_NAME, Servicer, add_to_server
from control_plane.store import Store, database_url
from executors.base import Executor
from executors.local import LocalExecutor
from executors.runners import RunnerRegistry

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_LISTEN = "127.0.0.1:7420"


@dataclasses.dataclass
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    database_url: str | None = None
    max_concurrency: int = 256
    lease_ms: int = 15_000
    bus_capacity: int = 16384
    flush_interval_ms: float = 2.0
    grace_s: float = 5.0
    # Take over runs left by dead or expired owners at start (off for read-only tools).
    take_over: bool = True
    # "local" or "ray"; None: $STATEPIPE_EXECUTOR, else ray when a Ray address is
    # given (ray_address or $RAY_ADDRESS), else local.
    executor: str | None = None
    # The Ray cluster to join (None: $RAY_ADDRESS, else start a local one).
    ray_address: str | None = None
    # RayExecutor keyword arguments: pool_size, max_actors_per_shape, idle_s,
    # infeasible_s, connect_timeout_s, cancel_grace_s, init_options (docs/ray.md).
    ray: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Folders node code (python callables, hooks) is imported from, besides
    # sys.path: `statepipe server --path DIR`.
    paths: list[str] = dataclasses.field(default_factory=list)
    # Freeze what start-up allocated out of the garbage collector's sight and
    # collect the young generation less often (see tune_gc).
    tune_gc: bool = True


EXECUTORS = ("local", "ray")
GC_GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Keeps cyclic-GC pauses off the dispatch path.

    A full collection walks every tracked object, and after start-up that is
    mostly modules, protobuf descriptors and (with Ray) its libraries: a pass
    took ~20 ms in the middle of dispatching 200 nodes (bench_control_plane
    --only latency: p50 25 ms instead of 2.5 ms whenever one struck).
    gc.freeze() moves them to the permanent generation, which no collection
    walks; a larger young generation means fewer collections in bursts.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


def executor_name(requested: str | None = None, ray_address: str | None = None) -> str:
    """The executor to use: the request, $STATEPIPE_EXECUTOR, or ray when a Ray
    address is given (`ray_address` or $RAY_ADDRESS), else local."""
    name = requested or os.environ.get("STATEPIPE_EXECUTOR") or ""
    if not name:
        name = "ray" if ray_address or os.environ.get("RAY_ADDRESS") else "local"
    name = name.strip().lower()
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    return name


def make_executor(config: ServerConfig, runners: RunnerRegistry) -> Executor:
    if executor_name(config.executor, config.ray_address) == "ray":
        try:
            from executors.ray_executor import RayExecutor
        except ImportError as err:
            raise ValueError(
                f"the ray executor needs the ray package ({err}); pip install 'statepipe[ray]'"
            ) from None
        return RayExecutor(config.ray_address, **config.ray)
    return LocalExecutor(runners)


def _check_free(listen: str) -> None:
    """Raises OSError when `listen` (HOST:PORT) is taken by another socket.

    Checked before gRPC binds: its own failure is a C-core log line on stderr
    (not governed by our logging) plus a message about GRPC_VERBOSITY. A race
    with another process still ends in gRPC's error; any other problem (an
    unknown host, ...) is left for gRPC to report.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or None
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (ValueError, OSError):
        return
    if port == 0:
        return
    for family, kind, proto, _name, address in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen on {listen}: address already in use") from None


class ControlPlane:
    """Everything the control plane runs, started and stopped in order."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.port: int = 0
        self.store: Store | None = None
        self.server: grpc.aio.Server | None = None
        self.scheduler: Scheduler | None = None
        self.pipeline: EventPipeline | None = None
        self._health: health.HealthServicer | None = None
        self._executor: Executor | None = None
        self._scheduler_started = False
        self._server_started = False
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> int:
        cfg = self.config
        # Node code is imported by module name: the folders it lives in join
        # sys.path (Ray workers get the driver's sys.path too).
        sys.path.extend(p for p in cfg.paths if p not in sys.path)
        url = cfg.database_url or await asyncio.to_thread(database_url)
        self.store = await Store.open(url)
        try:
            health_servicer = await self._start_parts(cfg)
        except BaseException:
            # Stop what did start, as a normal stop (the event writer too: not
            # a cancelled task at loop teardown, which would log a failure);
            # only the error that stopped the start is reported.
            await self._abort_start()
            raise
        self._health = health_servicer
        assert self.pipeline is not None
        if self.pipeline.failure is None:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        else:  # the writer died while the rest started
            self._writer_failed(self.pipeline.failure)
        if cfg.tune_gc:
            tune_gc()
        log.info("statepipe control plane listening on %s", self.address)
        return self.port

    async def _start_parts(self, cfg: ServerConfig) -> health.HealthServicer:
        """What start() starts once the store is open; returns the health servicer."""
        store = self.store
        assert store is not None
        bus = core_rs.EventBus(cfg.bus_capacity)
        self.pipeline = EventPipeline(
            store,
            bus,
            flush_interval_ms=cfg.flush_interval_ms,
            on_failure=self._writer_failed,
        )
        self.pipeline.start()
        runners = RunnerRegistry()
        executor = make_executor(cfg, runners)
        self._executor = executor
        await executor.start()
        self.scheduler = Scheduler(
            store,
            self.pipeline,
            executor,
            runners,
            Settings(max_concurrency=cfg.max_concurrency, lease_ms=cfg.lease_ms),
        )
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        add_to_server(Servicer(store, self.scheduler, self.pipeline, bus), self.server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        _check_free(cfg.listen)
        self.port = self.server.add_insecure_port(cfg.listen)
        if not self.port:
            raise OSError(f"cannot listen on {cfg.listen}")
        self._scheduler_started = True
        await self.scheduler.start(take_over=cfg.take_over)
        self._server_started = True
        await self.server.start()
        return health_servicer

    async def _abort_start(self) -> None:
        """After a failed start: stops, in reverse order, the parts that started."""
        if self.server is not None and self._server_started:
            with contextlib.suppress(Exception):
                await self.server.stop(0)
        if self.scheduler is not None and self._scheduler_started:
            with contextlib.suppress(Exception):
                await self.scheduler.stop()
        if self._executor is not None:
            with contextlib.suppress(Exception):
                await self._executor.close()
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                await self.pipeline.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        # A later stop() (EmbeddedPlane stops after a failed start) has nothing left to do.
        self.server = self.scheduler = self.pipeline = self.store = None
        self._executor = None

    def _set_health(self, status: Any) -> None:
        if self._health is not None:
            for service in (SERVICE_NAME, ""):
                self._health.set(service, status)

    def _writer_failed(self, why: str) -> None:
        """The event writer died: nothing more can be stored, so stop looking healthy.

        The servicer answers UNAVAILABLE on its own (flush() raises Unavailable).
        """
        log.error("the event writer stopped: %s; the server reports NOT_SERVING", why)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful: stop taking work, let streams end, leave runs for recovery."""
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self.server is not None:
            stopping = asyncio.create_task(self.server.stop(grace))
        else:
            stopping = None
        if self.scheduler is not None:
            try:
                await self.scheduler.stop()
            except Unavailable as err:  # the writer died: the rest still stops
                log.warning("stopping the scheduler: %s", err)
            await self.scheduler.executor.close()
        if stopping is not None:
            await stopping
        if self.pipeline is not None:
            await self.pipeline.stop()
        if self.store is not None:
            await self.store.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    # Handlers first: a signal that arrives while starting or right after the
    # "listening" line still shuts down cleanly (the embedded Postgres too).
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    plane = ControlPlane(config)
    await plane.start()
    print(f"statepipe server listening on {plane.address}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await plane.stop()
