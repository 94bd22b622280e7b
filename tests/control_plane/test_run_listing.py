"""ListRuns orders and pages, and WatchRuns filters, against a real control plane.

A real server on 127.0.0.1:0 over a fresh embedded-Postgres database per test
(tests/conftest.py). The ordering test writes its runs straight into the
database, with values chosen to tie, so that every order meets ties and
missing values; their statuses are ones no server drives (never PENDING or
RUNNING), so the server leaves them alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.types.json import Jsonb
from sp_testing import py

from statepipe import AsyncClient, Client, Run, StatepipeError

ORDERS = (
    "created_at",
    "updated_at",
    "finished_at",
    "started_at",
    "status",
    "workflow_name",
    "duration_ms",
)
UTC = dt.UTC
BASE = dt.datetime(2026, 1, 1, tzinfo=UTC)


def stored_runs(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """`n` runs whose every orderable value ties with others, some missing."""
    rng = random.Random(seed)
    runs = []
    for _ in range(n):
        created = BASE + dt.timedelta(minutes=rng.randrange(12))
        started = None if rng.random() < 0.15 else created + dt.timedelta(seconds=rng.randrange(2))
        finished = None
        if rng.random() >= 0.2:
            took = dt.timedelta(seconds=rng.choice([1, 90]), microseconds=rng.choice([0, 500]))
            finished = (started or created) + took
        runs.append(
            {
                "run_id": f"{rng.getrandbits(128):032x}",
                "workflow_name": rng.choice(["alpha", "bravo", "charlie", "delta"]),
                "status": rng.choice(["SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED", "PAUSED"]),
                "labels": {"team": rng.choice("ab")},
                "created_at": created,
                "started_at": started,
                "finished_at": finished,
                "updated_at": created + dt.timedelta(minutes=rng.randrange(3)),
            }
        )
    return runs


def insert_runs(database_url: str, runs: list[dict[str, Any]]) -> None:
    columns = list(runs[0])
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO runs ({', '.join(columns)}, workflow_version, spec)"
            f" VALUES ({', '.join(['%s'] * len(columns))}, '1', '')",
            [[Jsonb(v) if c == "labels" else v for c, v in run.items()] for run in runs],
        )


def sort_value(run: dict[str, Any], column: str) -> Any:
    if column == "duration_ms":
        if run["started_at"] is None or run["finished_at"] is None:
            return None
        return run["finished_at"] - run["started_at"]
    return run[column]


def expected_order(runs: list[dict[str, Any]], order_by: str) -> list[str]:
    """The documented order: by value then run id; finished_at leaves out
    unfinished runs, started_at and duration_ms put runs without one last."""
    descending = order_by.startswith("-")
    column = order_by.lstrip("-")
    valued = [r for r in runs if sort_value(r, column) is not None]
    missing = [] if column == "finished_at" else [r for r in runs if sort_value(r, column) is None]
    valued.sort(key=lambda r: (sort_value(r, column), r["run_id"]), reverse=descending)
    missing.sort(key=lambda r: r["run_id"], reverse=descending)
    return [r["run_id"] for r in valued + missing]


def paged(client: Client, page_size: int, **kwargs: Any) -> list[list[str]]:
    pages = []
    page, token = client.list_runs_page(limit=page_size, **kwargs)
    pages.append([r.run_id for r in page])
    while token:
        page, token = client.list_runs_page(limit=page_size, page_token=token, **kwargs)
        assert page, "a token led to an empty page"
        pages.append([r.run_id for r in page])
    return pages


@pytest.mark.parametrize("order_by", [*ORDERS, *(f"-{o}" for o in ORDERS)])
def test_every_order_pages_through_ties_with_no_gap_or_duplicate(
    client: Client, database_url: str, order_by: str
) -> None:
    runs = stored_runs(250)
    insert_runs(database_url, runs)
    column = order_by.lstrip("-")
    # Every order meets ties (and the nullable ones missing values) on this data.
    values = [sort_value(r, column) for r in runs]
    valued = [v for v in values if v is not None]
    assert len(set(valued)) < len(valued) / 2
    if column in ("started_at", "duration_ms", "finished_at"):
        assert None in values

    pages = paged(client, 40, order_by=order_by)
    listed = [run_id for page in pages for run_id in page]
    assert listed == expected_order(runs, order_by)
    assert len(set(listed)) == len(listed)
    assert all(len(page) == 40 for page in pages[:-1]) and 0 < len(pages[-1]) <= 40
    # The listing at once agrees with the pages, and so do filtered pages.
    assert [r.run_id for r in client.list_runs(order_by=order_by, limit=None)] == listed
    team_a = [r for r in runs if r["labels"]["team"] == "a" and r["status"] != "FAILED"]
    filtered = paged(
        client,
        7,
        order_by=order_by,
        labels={"team": "a"},
        status=["succeeded", "cancelled", "interrupted", "paused"],
    )
    assert [run_id for page in filtered for run_id in page] == expected_order(team_a, order_by)


def test_duration_orders_by_finished_minus_started(client: Client, database_url: str) -> None:
    runs = stored_runs(40, seed=3)
    insert_runs(database_url, runs)
    listed = client.list_runs(order_by="-duration_ms", limit=None)
    durations = [
        (r.finished_at - r.started_at) if r.finished_at and r.started_at else None for r in listed
    ]
    known = [d for d in durations if d is not None]
    assert known == sorted(known, reverse=True) and known[0] > dt.timedelta(seconds=60)
    first_missing = durations.index(None)
    assert all(d is None for d in durations[first_missing:])  # unfinished last


def test_unknown_orders_and_foreign_page_tokens_are_invalid_arguments(
    client: Client, database_url: str
) -> None:
    insert_runs(database_url, stored_runs(5))
    choices = (
        "['created_at', 'duration_ms', 'finished_at', 'started_at', 'status', 'updated_at',"
        " 'workflow_name'], '-' for descending"
    )
    for bad in ("name", "-duration", "run_id"):
        with pytest.raises(StatepipeError) as info:
            client.list_runs(order_by=bad)
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert str(info.value) == (
            f"INVALID_ARGUMENT: cannot order by {bad!r}; use one of {choices}"
        )
        with pytest.raises(StatepipeError) as info:
            next(iter(client.watch_runs(order_by=bad)))
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert choices in str(info.value)
    # A token of one order is refused by an order whose values differ in kind.
    _, token = client.list_runs_page(order_by="created_at", limit=2)
    with pytest.raises(StatepipeError) as info:
        client.list_runs_page(order_by="duration_ms", limit=2, page_token=token)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not one this server issued" in str(info.value)


# ----------------------------------------------------------------- WatchRuns

OK = {"name": "ok", "nodes": [py("a", "echo")]}
# Not a hex word: run ids are hex, and the text filter also matches run ids.
BAD = {"name": "broken", "nodes": [py("a", "boom")]}

Update = tuple[Run, bool]


async def finished(client: AsyncClient, spec: dict[str, Any], **kwargs: Any) -> str:
    """Starts a run; returns its id once it is final, also in Postgres."""
    run_id = await client.start_run(spec, **kwargs)
    run = await client.wait(run_id, timeout=30)
    deadline = time.monotonic() + 10
    while [r.status for r in await client.list_runs(text=run_id)] != [run.status]:
        assert time.monotonic() < deadline, "the final run never reached Postgres"
        await asyncio.sleep(0.01)
    return run_id


async def take(stream: AsyncIterator[Update], n: int) -> list[Update]:
    return [await asyncio.wait_for(anext(stream), 10) for _ in range(n)]


async def until(stream: AsyncIterator[Update], done: Callable[[Update], bool]) -> list[Update]:
    items = [await asyncio.wait_for(anext(stream), 10)]
    while not done(items[-1]):
        items.append(await asyncio.wait_for(anext(stream), 10))
    return items


def final(run_id: str) -> Callable[[Update], bool]:
    return lambda update: update[0].run_id == run_id and update[0].is_final


async def test_watch_runs_filters_by_labels_text_and_time_in_snapshot_and_live(
    server: Any,
) -> None:
    async with AsyncClient(server.address) as client:
        prod_a = await finished(client, OK, labels={"team": "a", "env": "prod"})
        await finished(client, OK, labels={"team": "a"})
        failed = await finished(client, BAD, labels={"team": "b"})
        pivot = (await client.get_run(failed)).created_at
        late = await finished(client, OK, labels={"team": "b", "env": "prod"})

        by_labels = client.watch_runs(labels={"team": "a", "env": "prod"})
        by_name = client.watch_runs(text="broken")  # a workflow name
        by_error = client.watch_runs(text="NODE(S) FAILED")  # an error, any case
        by_time = client.watch_runs(created_after=pivot, order_by="created_at")
        try:
            assert [(r.run_id, s) for r, s in await take(by_labels, 1)] == [(prod_a, True)]
            assert [(r.run_id, s) for r, s in await take(by_name, 1)] == [(failed, True)]
            assert [(r.run_id, s) for r, s in await take(by_error, 1)] == [(failed, True)]
            assert [r.run_id for r, _ in await take(by_time, 2)] == [failed, late]

            # Live: runs that do not match are left out, matching ones come.
            await finished(client, OK, labels={"team": "a", "env": "dev"})
            await finished(client, OK, labels={"env": "prod"})
            await finished(client, OK)  # neither name nor error matches
            prod_b = await client.start_run(OK, labels={"team": "a", "env": "prod", "x": "y"})
            live = await until(by_labels, final(prod_b))
            assert {r.run_id for r, _ in live} == {prod_b}
            assert not any(s for _, s in live)

            broken = await client.start_run(BAD)
            live = await until(by_name, final(broken))
            assert {r.run_id for r, _ in live} == {broken}
            # The error appears only when the run fails: one update, the last.
            (update,) = await until(by_error, final(broken))
            assert (update[0].run_id, update[0].status, update[1]) == (broken, "FAILED", False)

            # created_after came first: every run since has matched it.
            later = [r.run_id for r, _ in await until(by_time, final(broken))]
            assert later[0] != prod_a and broken in later and prod_b in later
        finally:
            for stream in (by_labels, by_name, by_error, by_time):
                await stream.aclose()


async def test_watch_runs_created_before_and_snapshot_order(server: Any) -> None:
    async with AsyncClient(server.address) as client:
        first = await finished(client, OK, labels={"k": "1"})
        second = await finished(client, BAD, labels={"k": "2"})
        cutoff = dt.datetime.now(UTC)
        early = client.watch_runs(created_before=cutoff, order_by="workflow_name")
        by_label = client.watch_runs(labels={"k": "2"}, order_by="-status")
        try:
            # workflow_name: "broken" before "ok".
            assert [r.run_id for r, _ in await take(early, 2)] == [second, first]
            assert [r.run_id for r, _ in await take(by_label, 1)] == [second]
            later = await client.start_run(OK, labels={"k": "2"})
            await client.wait(later, timeout=30)
            # Nothing created after the cutoff reaches `early`; `by_label` gets it.
            assert {r.run_id for r, _ in await until(by_label, final(later))} == {later}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(early), 0.5)
        finally:
            await early.aclose()
            await by_label.aclose()
