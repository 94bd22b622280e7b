"""Smoke tests: the benchmarks run end to end at --quick sizes.

bench_control_plane.py starts its own embedded Postgres and control plane,
bench_list_runs.py its own Postgres and a server process,
bench_tokens.py its own Postgres, a server process and watcher processes,
bench_ray.py its own local Ray. Only the exit code and the presence of each
section's lines are checked, never a timing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each section's header and the figure line it must print.
EXPECTED = {
    "runs": ["[runs] ", "runs started/s", "runs completed/s", "tx/s"],
    "dag": ["[dag] ", "  nodes/s ", "core_rs.Frontier alone"],
    "latency": ["[latency] ", "-node DAG", "independent nodes", "dispatch p50"],
    "events": ["[events] ", "  events/s ", "deliveries/s", "rows/s"],
}


def run_bench(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Runs bench/<script> --quick; asserts it exits 0; returns it and a report."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    report = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    return proc, report


@pytest.mark.timeout(300)
def test_bench_control_plane_quick() -> None:
    proc, report = run_bench("bench_control_plane.py", "--hard-timeout", "240")
    for section, needles in EXPECTED.items():
        for needle in needles:
            assert needle in proc.stdout, f"section {section}: no {needle!r}\n{report}"
    assert proc.stdout.count("(QUEUED -> RUNNING,") == 2, report
    assert proc.stdout.count("  ratio ") == 3, report
    assert "summary" in proc.stdout, report


@pytest.mark.timeout(300)
def test_bench_ray_quick() -> None:
    """bench/bench_ray.py starts its own local Ray, measures both sides, stops Ray."""
    proc, report = run_bench("bench_ray.py")
    for needle in ("raw Ray actor call", "Ray executor no-op node", "x raw (", "events/s"):
        assert needle in proc.stdout, report
    assert "Traceback" not in proc.stderr, report


@pytest.mark.timeout(300)
def test_bench_list_runs_quick() -> None:
    """bench/bench_list_runs.py: its own Postgres, a server process, every order and filter."""
    proc, report = run_bench("bench_list_runs.py", "--hard-timeout", "240")
    for needle in (
        "runs written with COPY",
        "baseline GetRun by primary key",
        "summary: slowest p99",
    ):
        assert needle in proc.stdout, report
    for order in ("created_at", "started_at", "status", "workflow_name", "duration_ms"):
        for order_by in (order, f"-{order}"):
            assert f"order_by={order_by} " in proc.stdout, report
    for case in ("status=failed ", "workflow=wf07 ", "label team=team3 ", "text="):
        assert case in proc.stdout, report
    assert proc.stdout.count("x baseline") == 27, report  # 14 orders, 13 filter cases
    assert "Traceback" not in proc.stderr, report


@pytest.mark.timeout(300)
def test_bench_tokens_quick() -> None:
    """bench/bench_tokens.py: its own Postgres, a server process, watcher processes, and a
    bare grpc.aio stream in its own process as the baseline."""
    proc, report = run_bench("bench_tokens.py", "--hard-timeout", "240")
    for needle in (
        "core_rs ",
        "[max] ",
        "statepipe tokens/s ",
        "in seq order, no gap, text as emitted",
        "baseline, batched",
        "[paced] ",
        "statepipe emit -> receive  p50 ",
        "achieved ",
        "cpu over ",
        "summary",
        "total ",
    ):
        assert needle in proc.stdout, f"no {needle!r}\n{report}"
    assert proc.stdout.count("  baseline") == 3, report
    assert proc.stdout.count("  ratio ") == 3, report
    assert "Traceback" not in proc.stderr, report


CONSOLE_EXPECTED = {
    "dashboard-latency": ["run_status event ts -> painted         p50 ", "p99 "],
    "dashboard-100k": [
        "runs written with COPY",
        "first paint of /",
        "?status=FAILED",
        "?sort=-duration_ms",
        "?sort=workflow_name",
        "search box, typed",
        "the same less the debounce",
    ],
    "detail-10k": [
        "?tab=nodes: first rows painted",
        "?tab=trace: first rows painted",
        "?tab=nodes: filter",
    ],
    "tokens": ["token emitted -> painted", "seen in the page"],
}


@pytest.mark.timeout(300)
def test_bench_console_quick() -> None:
    """bench/bench_console.py: Postgres, a server and a console process, headless Chromium."""
    import os

    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    proc, report = run_bench("bench_console.py", "--hard-timeout", "240")
    for section, needles in CONSOLE_EXPECTED.items():
        assert f"[{section}] " in proc.stdout, f"no [{section}] header\n{report}"
        for needle in needles:
            assert needle in proc.stdout, f"section {section}: no {needle!r}\n{report}"
    # One "target ... ratio" line per figure: 2 + 6 + 5 + 2.
    assert proc.stdout.count("  ratio ") == 15, report
    assert "total " in proc.stdout, report
    assert "Traceback" not in proc.stderr, report


def test_bench_llm_quick() -> None:
    """bench/bench_llm.py: the stand-in and a server in their own processes, the llm
    runner beside the bare openai client."""
    proc, report = run_bench("bench_llm.py")
    for needle in (
        "[llm] ",
        "bare openai client  time to first token",
        "time to first token added (p50)",
        "total time ratio runner/bare",
        "end to end, StartRun -> final result",
    ):
        assert needle in proc.stdout, report
