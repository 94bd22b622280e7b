"""The Ray executor: nodes run on pools of async Ray actors across a cluster.

One pool per resource shape. Nodes that ask for nothing share a few async
actors (each runs many nodes at once: async functions on the actor's event
loop, sync ones in its threads). A node that asks for resources (cpus, gpus,
memory, custom) gets an actor of its own created with exactly those Ray
resource requests, so Ray places it on a node that has them; such actors are
kept for the next node of the same shape and let go when idle.

Events travel apart from results: each actor has one streaming generator
(`NodeWorker.events`) that carries batches of events of all its nodes, so a
node that emits nothing costs one plain actor call. The result of a node says
how many of its events went out on the stream and carries the rest, and the
driver waits for the stream to catch up before it hands the result over, so
every event lands before the node's final status.

Interrupts, cancels and timeouts cancel the driver's wait and `ray.cancel`
the actor task (the node function sees asyncio cancellation, or
`ctx.cancelled` in a thread). A dead actor or a lost Ray node fails the node
with a retryable error and the actor leaves its pool; the retry runs on a
fresh actor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import ray
import ray.exceptions

from executors.base import (
    NodeContext,
    NodeError,
    NodeTask,
    describe_error,
    error_traceback,
    merge_usage,
)
from executors.runners import RunnerRegistry

log = logging.getLogger(__name__)

ACTOR_CONCURRENCY = 1000  # coroutines one actor runs at once (async actor)
RAY_NAMESPACE = "statepipe"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A node's resource request, the key of its actor pool."""

    cpus: float = 0.0
    gpus: float = 0.0
    memory: int = 0
    custom: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, resources: dict[str, Any]) -> Shape:
        custom = resources.get("custom") or {}
        return cls(
            cpus=float(resources.get("cpus") or 0),
            gpus=float(resources.get("gpus") or 0),
            memory=int(resources.get("memory") or 0),
            custom=tuple(sorted((str(k), float(v)) for k, v in custom.items() if v)),
        )

    @property
    def exclusive(self) -> bool:
        """A shape that asks for something gets an actor per node."""
        return bool(self.cpus or self.gpus or self.memory or self.custom)

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory:
            options["memory"] = self.memory
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    def demand(self) -> dict[str, float]:
        """The request in Ray's resource names, as `ray.nodes()` reports them."""
        demand = {"CPU": self.cpus, "GPU": self.gpus, "memory": float(self.memory)}
        demand.update(self.custom)
        return {k: v for k, v in demand.items() if v}

    def __str__(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.demand().items()) or "no resources"


# ------------------------------------------------------------------ the actor


# An event a worker sends on its stream to ask the driver for a child run (an
# agent's workflow tool): the driver answers it through NodeWorker.child_done
# and never relays it.
CHILD_REQUEST = "statepipe.child_run"


class _WorkerChildren:
    """ChildRuns inside a Ray worker: the driver starts the child run (through
    the control plane, which owns runs) and sends back its output."""

    def __init__(self, worker: NodeWorker, call: int) -> None:
        self._worker = worker
        self._call = call

    async def run_workflow(self, workflow: str, input: Any, version: str, key: str) -> Any:
        request = {"workflow": workflow, "input": input, "version": version, "key": key}
        return await self._worker.ask_child(self._call, request)

    async def run_item(self, index: int, item: Any) -> dict[str, Any]:
        raise NodeError("map items start in the control plane, not on a Ray worker")


class NodeWorker:
    """Runs nodes inside a Ray worker process (an async actor)."""

    def __init__(self) -> None:
        self._runners = RunnerRegistry()
        self._queues: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._pumped: dict[int, int] = {}
        self._have = asyncio.Event()
        # Child runs asked for and not answered yet: (call, ask) -> its answer.
        self._asks: dict[tuple[int, int], asyncio.Future[tuple[str, Any]]] = {}
        self._ask_ids = itertools.count()

    async def ask_child(self, call: int, request: dict[str, Any]) -> Any:
        """Asks the driver for a child run and waits for its output."""
        ask = next(self._ask_ids)
        answer: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[(call, ask)] = answer
        self._push(call, CHILD_REQUEST, {"ask": ask, **request})
        try:
            outcome, value = await answer
        finally:
            self._asks.pop((call, ask), None)
        if outcome == "ok":
            return value
        message, retryable = value
        raise NodeError(message, retryable=retryable)

    async def child_done(self, call: int, ask: int, outcome: str, value: Any) -> None:
        """The driver's answer to ask_child: ("ok", output) or ("error", (message, retryable))."""
        answer = self._asks.get((call, ask))
        if answer is not None and not answer.done():
            answer.set_result((outcome, value))

    async def info(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {
            "ray_node_id": context.get_node_id(),
            "ray_actor_id": context.get_actor_id(),
            "worker_pid": os.getpid(),
            "host": socket.gethostname(),
        }

    async def run(
        self, call: int, task_fields: dict[str, Any], paths: tuple[str, ...] | None
    ) -> tuple[str, Any, dict[str, float], int, list[tuple[str, dict[str, Any]]]]:
        """Runs one node: (status "ok" or "error", output or message, usage,
        events already sent on the stream, the events not sent yet). `paths`:
        the driver's sys.path when it changed, else None."""
        if paths is not None:
            sys.path.extend(p for p in paths if p not in sys.path)
        task = NodeTask(**task_fields)
        self._pumped[call] = 0
        loop = asyncio.get_running_loop()
        ctx = NodeContext(task, lambda kind, fields: self._push(call, kind, fields), loop)
        ctx.children = _WorkerChildren(self, call)
        try:
            runner = self._runners.get(task.kind)
            if runner is None:
                raise NodeError(
                    f"no runner for kind {task.kind!r} on the Ray worker; "
                    f"known: {self._runners.kinds()}"
                )
            outcome, value = "ok", await runner.run(task, ctx)
        except asyncio.CancelledError:
            ctx.cancel()  # a sync function in a thread sees ctx.cancelled
            self._forget(call)
            raise
        except Exception as err:
            # What the driver needs to raise the same NodeError (see run()).
            outcome = "error"
            value = (
                describe_error(err),
                getattr(err, "retryable", True),
                error_traceback(err),
                getattr(err, "retry_after_ms", 0),
            )
        ctx.flush()
        tail = self._queues.pop(call, [])
        return outcome, value, dict(ctx.usage), self._forget(call), tail

    def _forget(self, call: int) -> int:
        self._queues.pop(call, None)
        return self._pumped.pop(call, 0)

    def _push(self, call: int, kind: str, fields: dict[str, Any]) -> None:
        if call not in self._pumped:
            return  # a thread of a node that was cancelled
        queue = self._queues.get(call)
        if queue is None:
            queue = self._queues[call] = []
        queue.append((kind, fields))
        self._have.set()

    async def events(self):  # a Ray streaming generator; one per actor
        while True:
            await self._have.wait()
            self._have.clear()
            if not self._queues:
                continue
            batch = list(self._queues.items())
            self._queues = {}
            for call, events in batch:
                self._pumped[call] += len(events)
            yield batch


RemoteNodeWorker = ray.remote(NodeWorker)


# ----------------------------------------------------------------- the driver


class _Call:
    """A node running on a worker: where its streamed events go."""

    __slots__ = ("answering", "caught_up", "ctx", "received", "target")

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.received = 0
        self.target = -1
        self.caught_up: asyncio.Event | None = None
        # Child runs this node asked for, being started and waited for here.
        self.answering: set[asyncio.Task[None]] = set()

    def deliver(self, worker: _Worker, call_id: int, kind: str, fields: dict[str, Any]) -> None:
        """One event from the worker: relayed, or a child-run request answered."""
        if kind != CHILD_REQUEST:
            self.ctx.relay(kind, fields)
            return
        task = asyncio.get_running_loop().create_task(self._answer(worker, call_id, fields))
        self.answering.add(task)
        task.add_done_callback(self.answering.discard)

    async def _answer(self, worker: _Worker, call_id: int, ask: dict[str, Any]) -> None:
        outcome: tuple[str, Any]
        try:
            output = await self.ctx.run_workflow(
                ask["workflow"], ask.get("input"), version=ask["version"], key=ask["key"]
            )
            outcome = ("ok", output)
        except NodeError as err:
            outcome = ("error", (str(err), err.retryable))
        except Exception as err:
            outcome = ("error", (describe_error(err), True))
        with contextlib.suppress(ray.exceptions.RayError):
            await worker.actor.child_done.remote(call_id, ask["ask"], *outcome)

    def stop_answering(self) -> None:
        for task in self.answering:
            task.cancel()


class _Worker:
    def __init__(self, actor: Any, shape: Shape) -> None:
        self.actor = actor
        self.shape = shape
        self.placement: dict[str, Any] = {}
        self.calls: dict[int, _Call] = {}
        self.alive = True
        self.idle_since = time.monotonic()
        self.pump: asyncio.Task[None] | None = None
        self.paths: tuple[str, ...] | None = None  # the sys.path it last got


class _Pool:
    """Actors of one shape. Shared pools hand out the least busy actor;
    exclusive ones one actor per node, created on demand."""

    def __init__(self, executor: RayExecutor, shape: Shape, size: int) -> None:
        self.executor = executor
        self.shape = shape
        self.size = size
        self.workers: list[_Worker] = []  # ready ones
        self.idle: list[_Worker] = []
        self.creating = 0
        self.waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()

    async def acquire(self) -> _Worker:
        if not self.shape.exclusive:
            self.workers = [w for w in self.workers if w.alive]
            while len(self.workers) + self.creating < self.size:
                self._spawn()
            if self.workers:
                return min(self.workers, key=lambda w: len(w.calls))
        else:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive:
                    return worker
            if self.creating < len(self.waiters) + 1 and (
                len(self.workers) + self.creating < self.size
            ):
                self._spawn()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # handed over just as we were cancelled
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def release(self, worker: _Worker) -> None:
        if not worker.alive:
            self.discard(worker)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        if self.shape.exclusive:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)

    def discard(self, worker: _Worker) -> None:
        worker.alive = False
        if worker in self.workers:
            self.workers.remove(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        self.executor.kill(worker)
        if self.waiters and len(self.workers) + self.creating < self.size:
            self._spawn()

    def _spawn(self) -> None:
        self.creating += 1
        self.executor._in_background(self._create())

    async def _create(self) -> None:
        try:
            worker = await self.executor.create_worker(self.shape)
        except Exception as err:
            self.creating -= 1
            error = err if isinstance(err, NodeError) else NodeError(describe_error(err))
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
            return
        self.creating -= 1
        self.workers.append(worker)
        if self.shape.exclusive:
            self.release(worker)
        else:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(worker)

    def reap(self, idle_s: float) -> None:
        """Lets exclusive actors idle for `idle_s` go (their resources return)."""
        cutoff = time.monotonic() - idle_s
        for worker in [w for w in self.idle if w.idle_since <= cutoff]:
            self.discard(worker)


class RayExecutor:
    """Runs nodes on Ray actors. `address` None: RAY_ADDRESS, else a new local
    cluster (stopped again by `close`)."""

    name = "ray"
    places_nodes = True

    def __init__(
        self,
        address: str | None = None,
        *,
        pool_size: int = 2,
        max_actors_per_shape: int = 64,
        idle_s: float = 30.0,
        infeasible_s: float = 30.0,
        connect_timeout_s: float = 60.0,
        cancel_grace_s: float = 5.0,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.pool_size = max(1, pool_size)
        self.max_actors_per_shape = max(1, max_actors_per_shape)
        self.idle_s = idle_s
        self.infeasible_s = infeasible_s
        self.connect_timeout_s = connect_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.init_options = dict(init_options or {})
        self.pools: dict[Shape, _Pool] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self._calls = itertools.count(1)
        self._driver: _RayDriver | None = None  # set when this executor connected Ray
        self._reaper: asyncio.Task[None] | None = None
        self._paths: tuple[str, ...] = ()
        self._closed = False

    # -- lifecycle
    async def start(self) -> None:
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "namespace": RAY_NAMESPACE,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
            }
            options.update(self.init_options)
            if self.address:
                options["address"] = self.address
                await asyncio.to_thread(_check_reachable, self.address)
            self._driver = _RayDriver()
            await self._driver.start(options, self.connect_timeout_s)
        pool = self._pool(Shape())
        while len(pool.workers) + pool.creating < pool.size:
            pool._spawn()
        await asyncio.gather(*list(self.background), return_exceptions=True)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self.background):
            task.cancel()
        pumps = []
        for pool in self.pools.values():
            for worker in pool.workers + pool.idle:
                self.kill(worker)
                if worker.pump is not None:
                    pumps.append(worker.pump)
        self.pools.clear()
        await asyncio.gather(*pumps, *self.background, return_exceptions=True)
        if self._driver is not None:
            await self._driver.stop()

    # -- running a node
    async def run(self, task: NodeTask, ctx: NodeContext) -> Any:
        if self._closed:
            raise NodeError("the Ray executor is closed")
        pool = self._pool(Shape.of(task.resources))
        worker = await pool.acquire()
        call_id = next(self._calls)
        call = _Call(ctx)
        worker.calls[call_id] = call
        handed_back = False
        try:
            ctx.running(worker.placement)
            paths = self._sys_path()
            # sys.path goes to a worker only when it changed since its last call.
            fresh = paths if worker.paths is not paths else None
            worker.paths = paths
            # A plain dict crosses cheaper than the dataclass (Ray pickles arguments).
            ref = worker.actor.run.remote(call_id, vars(task), fresh)
            try:
                outcome, value, usage, pumped, tail = await ref
            except asyncio.CancelledError:
                _cancel(ref)
                if pool.shape.exclusive:
                    # The actor holds the node's resources: it serves the next
                    # node only once this one has really stopped.
                    handed_back = True
                    self._in_background(self._settle_cancelled(pool, worker, ref))
                raise
            except ray.exceptions.RayActorError as err:
                pool.discard(worker)
                raise NodeError(self._died(worker, err)) from None
            except ray.exceptions.RayError as err:
                raise NodeError(_first_line(err)) from None
            if call.received < pumped:
                await self._catch_up(worker, call, pumped)
            for kind, fields in tail:
                call.deliver(worker, call_id, kind, fields)
            merge_usage(ctx.usage, usage)
            if outcome != "ok":
                message, retryable, traceback, retry_after_ms = value
                raise NodeError(
                    message,
                    retryable=retryable,
                    traceback=traceback,
                    retry_after_ms=retry_after_ms,
                )
            return value
        finally:
            worker.calls.pop(call_id, None)
            call.stop_answering()
            if not handed_back:
                pool.release(worker)

    async def _settle_cancelled(self, pool: _Pool, worker: _Worker, ref: Any) -> None:
        """After a cancel on an actor of its own: the node function gets up to
        `cancel_grace_s` to wind down, then the actor goes. A sync function
        may go on in its thread whatever it was told, and the actor holds
        resources, so it is never reused."""
        try:
            async with asyncio.timeout(self.cancel_grace_s):
                await ref
        except Exception:  # TaskCancelledError as expected, or the grace ran out
            pass
        pool.discard(worker)

    def _in_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _catch_up(self, worker: _Worker, call: _Call, pumped: int) -> None:
        """Waits until the event stream delivered what the result says it sent."""
        call.target = pumped
        call.caught_up = asyncio.Event()
        while call.received < pumped:
            if not worker.alive:
                raise NodeError(self._died(worker, None))
            try:
                async with asyncio.timeout(1.0):
                    await call.caught_up.wait()
            except TimeoutError:
                continue

    # -- actors
    def _pool(self, shape: Shape) -> _Pool:
        pool = self.pools.get(shape)
        if pool is None:
            size = self.max_actors_per_shape if shape.exclusive else self.pool_size
            pool = self.pools[shape] = _Pool(self, shape, size)
        return pool

    async def create_worker(self, shape: Shape) -> _Worker:
        options = shape.ray_options()
        if not shape.exclusive:
            options["scheduling_strategy"] = "SPREAD"
        actor = RemoteNodeWorker.options(
            max_concurrency=ACTOR_CONCURRENCY, max_restarts=0, max_task_retries=0, **options
        ).remote()
        worker = _Worker(actor, shape)
        info = asyncio.wrap_future(actor.info.remote().future())
        info.add_done_callback(_retrieved)  # an abandoned actor's error is no news
        started = time.monotonic()
        while True:
            done, _ = await asyncio.wait({info}, timeout=0.5)
            if done:
                break
            # Waiting for a place: free idle actors of other shapes, and give up
            # when no node of the cluster could ever hold this shape.
            for other in self.pools.values():
                if other.shape != shape:
                    other.reap(0.0)
            if time.monotonic() - started >= self.infeasible_s and not await asyncio.to_thread(
                _feasible, shape
            ):
                ray.kill(actor, no_restart=True)
                raise NodeError(
                    f"no node of the Ray cluster offers {shape} "
                    f"(waited {self.infeasible_s:g} s for one)"
                )
        try:
            worker.placement = await info
        except ray.exceptions.RayError as err:
            reason = _first_line(err)
            raise NodeError(f"a Ray actor for {shape} failed to start: {reason}") from None
        worker.pump = asyncio.get_running_loop().create_task(self._pump(worker))
        return worker

    async def _pump(self, worker: _Worker) -> None:
        """Delivers a worker's event stream to the nodes it runs, in order."""
        stream = worker.actor.events.options(num_returns="streaming").remote()
        try:
            async for ref in stream:
                batch = await ref
                relayed: NodeContext | None = None
                for call_id, events in batch:
                    call = worker.calls.get(call_id)
                    if call is None:
                        continue
                    for kind, fields in events:
                        call.deliver(worker, call_id, kind, fields)
                    relayed = call.ctx
                    call.received += len(events)
                    if call.caught_up is not None and call.received >= call.target:
                        call.caught_up.set()
                if relayed is not None:
                    # Read no more while the control plane is over its limit
                    # of uncommitted events (every node's ctx says the same).
                    await relayed.room()
        except asyncio.CancelledError:
            _cancel(stream)
            raise
        except ray.exceptions.RayError:
            worker.alive = False  # the node calls on it fail on their own
        finally:
            for call in worker.calls.values():
                if call.caught_up is not None:
                    call.caught_up.set()

    def kill(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.pump is not None:
            worker.pump.cancel()
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already gone, or Ray is shutting down
            log.debug("ray.kill failed", exc_info=True)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.idle_s / 4))
            for pool in list(self.pools.values()):
                pool.reap(self.idle_s)

    def _sys_path(self) -> tuple[str, ...]:
        # Workers on this machine import node functions from where the driver does.
        if len(self._paths) != len(sys.path):
            cwd = os.getcwd()
            self._paths = tuple(p or cwd for p in sys.path)
        return self._paths

    def _died(self, worker: _Worker, err: BaseException | None) -> str:
        where = worker.placement
        reason = _first_line(err) if err is not None else "its event stream broke"
        return (
            f"the Ray actor {where.get('ray_actor_id', '?')} (pid {where.get('worker_pid', '?')} "
            f"on Ray node {str(where.get('ray_node_id', '?'))[:12]}) died: {reason}"
        )


def _check_reachable(address: str) -> None:
    """Fails at once when nothing listens at a GCS address (ray.init would retry
    forever)."""
    if "://" in address or address in ("auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the Ray address {address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err})"
        ) from None


class _RayDriver:
    """ray.init and ray.shutdown on one thread of their own that lives as long
    as the connection: Ray ties the processes of a local cluster it starts to
    the thread that started them (PR_SET_PDEATHSIG), so ray.init on a
    short-lived thread would see its GCS and raylet die with that thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self, options: dict[str, Any], timeout_s: float) -> None:
        """Gives up after `timeout_s` (Ray itself retries without end when a
        cluster does not answer)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(err: BaseException | None) -> None:
            if ready.done():
                return
            if err is None:
                ready.set_result(None)
            else:
                ready.set_exception(err)

        def main() -> None:
            try:
                ray.init(**options)
            except BaseException as err:  # handed to the waiting coroutine
                loop.call_soon_threadsafe(settle, err)
                return
            loop.call_soon_threadsafe(settle, None)
            self._stop.wait()
            ray.shutdown()

        self._thread = threading.Thread(target=main, name="statepipe-ray-driver", daemon=True)
        self._thread.start()
        try:
            async with asyncio.timeout(timeout_s):
                await ready
        except TimeoutError:
            where = options.get("address") or "a new local Ray"
            raise ConnectionError(
                f"ray.init did not finish within {timeout_s:g} s (connecting to {where})"
            ) from None

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 60)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _cancel(ref: Any) -> None:
    """ray.cancel, for a task that may have ended or whose actor is gone."""
    try:
        ray.cancel(ref)
    except Exception:
        log.debug("ray.cancel failed", exc_info=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:500]
    return type(err).__name__


def _feasible(shape: Shape) -> bool:
    demand = shape.demand()
    for node in ray.nodes():
        if node.get("Alive") and all(
            node.get("Resources", {}).get(k, 0) >= v for k, v in demand.items()
        ):
            return True
    return False
