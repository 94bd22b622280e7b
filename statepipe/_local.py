"""The CLI's in-process control plane and what lets CLI processes find each other.

Without ``--server`` every ``statepipe`` command runs a :class:`LocalPlane`: a
real control plane (gRPC on 127.0.0.1, port 0) on a background event-loop
thread, over the embedded Postgres under ``$STATEPIPE_HOME`` (or
``STATEPIPE_DATABASE_URL``), started through :mod:`control_plane.embed` (the
only module of the server side the CLI imports). The CLI then talks to it
with the ordinary :class:`~statepipe.client.Client`, so in-process and
``--server`` behave alike.

Two small files under ``$STATEPIPE_HOME`` tie separate invocations together:

* ``servers/<pid>.json``: a process that executes runs (``run``, ``resume``,
  ``up``) writes its address and the runs it owns there, so ``pause``,
  ``interrupt``, ``cancel``, ``inspect`` and ``logs --follow`` in another
  terminal reach the process that owns the run (a control only works there).
* ``paths.txt``: the directories of the ``.py`` and spec-file targets run so
  far. Each invocation appends them to ``sys.path``, so a run taken over or
  resumed by a later process can still import its node functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from control_plane import embed
from control_plane.embed import EmbeddedPlane, PlaneStartError

__all__ = [
    "LocalPlane",
    "PlaneStartError",
    "Registration",
    "database_key",
    "home",
    "live_servers",
    "load_paths",
    "remember_path",
]

log = logging.getLogger("statepipe.cli")

#: Seconds in-flight streams get when an in-process control plane stops.
STOP_GRACE_S = 1.0


def home() -> Path:
    """``$STATEPIPE_HOME`` (default ``~/.statepipe``)."""
    return Path(os.environ.get("STATEPIPE_HOME", "~/.statepipe")).expanduser()


def database_key(database_url: str | None) -> str:
    """What identifies the database a local process uses ("" = the embedded one)."""
    return database_url or ""


# ------------------------------------------------------------------ sys.path


def _paths_file() -> Path:
    return home() / "paths.txt"


def load_paths() -> None:
    """Appends the recorded target directories to ``sys.path`` (missing ones are skipped)."""
    try:
        lines = _paths_file().read_text().splitlines()
    except OSError:
        return
    for line in lines:
        entry = line.strip()
        if entry and entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)


def remember_path(directory: str | os.PathLike[str]) -> None:
    """Records a target's directory in ``paths.txt`` and puts it on ``sys.path``."""
    entry = str(Path(directory).resolve())
    if entry not in sys.path:
        sys.path.append(entry)
    path = _paths_file()
    try:
        known = set(path.read_text().splitlines())
    except OSError:
        known = set()
    if entry in known:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(entry + "\n")


# ------------------------------------------------------------------ registry


def _servers_dir() -> Path:
    return home() / "servers"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_servers(database_url: str | None) -> list[dict[str, Any]]:
    """Local statepipe processes serving the same database, newest first.

    Entries of processes that are gone are deleted on the way.
    """
    found = []
    key = database_key(database_url)
    try:
        files = list(_servers_dir().glob("*.json"))
    except OSError:
        return []
    for file in files:
        try:
            entry = json.loads(file.read_text())
            pid = int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        if pid == os.getpid():
            continue
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                file.unlink()
            continue
        if entry.get("database", "") == key and entry.get("address"):
            found.append(entry)
    found.sort(key=lambda e: e.get("started", 0), reverse=True)
    return found


class Registration:
    """This process's entry in ``$STATEPIPE_HOME/servers``."""

    def __init__(self, address: str, database_url: str | None, role: str) -> None:
        self.path = _servers_dir() / f"{os.getpid()}.json"
        self.entry: dict[str, Any] = {
            "pid": os.getpid(),
            "address": address,
            "database": database_key(database_url),
            "role": role,
            "started": time.time(),
            "runs": [],
        }
        self._lock = threading.Lock()
        self._write()

    def add_runs(self, run_ids: list[str]) -> None:
        with self._lock:
            runs = self.entry["runs"]
            fresh = [r for r in run_ids if r not in runs]
            if not fresh:
                return
            runs.extend(fresh)
            del runs[:-1000]  # a long batch: the newest are the ones still in flight
            self._write()

    def _write(self) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entry))
            tmp.replace(self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


# ------------------------------------------------------------ local control plane


class LocalPlane(EmbeddedPlane):
    """The CLI's control plane: on its own event-loop thread, serving gRPC on ``listen``."""

    def __init__(
        self,
        *,
        listen: str = "127.0.0.1:0",
        database_url: str | None = None,
        max_concurrency: int = 256,
        take_over: bool = True,
        **config: Any,
    ) -> None:
        """Starts it; `config` sets other ServerConfig fields (bus_capacity, executor, ...).

        Raises:
            PlaneStartError: It could not start.
        """
        super().__init__(
            embed.ServerConfig(
                listen=listen,
                database_url=database_url,
                max_concurrency=max_concurrency,
                take_over=take_over,
                **{"grace_s": STOP_GRACE_S, **config},
            )
        )
