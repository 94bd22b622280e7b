"""core_rs.encode_event: protobuf bytes identical to protobuf's own, and COPY rows
PostgreSQL reads back to the same values."""

from __future__ import annotations

import datetime as dt

import psycopg
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_rs import encode_event
from statepipe_api.v1 import statepipe_pb2 as pb

text = st.text(max_size=40)
fields = st.fixed_dictionaries(
    {
        "run_id": text,
        "seq": st.integers(0, 2**62),
        "ts_ns": st.integers(-(2**60), 2**62),
        "kind": text,
        "node_id": text,
        "attempt": st.integers(-(2**31), 2**31 - 1),
        "status": text,
        "message": st.text(max_size=200),
        "level": text,
        "data": st.none()
        | st.dictionaries(
            st.text(max_size=8), st.integers(-1000, 1000) | st.text(max_size=8), max_size=4
        ),
    }
)


def reference(f: dict) -> bytes:
    event = pb.Event(
        run_id=f["run_id"],
        seq=f["seq"],
        kind=f["kind"],
        node_id=f["node_id"],
        attempt=f["attempt"],
        status=f["status"],
        message=f["message"],
        level=f["level"],
    )
    event.ts.seconds, event.ts.nanos = divmod(f["ts_ns"], 1_000_000_000)
    if f["data"]:
        event.data.update(f["data"])
    return event.SerializeToString()


def encode(f: dict) -> tuple[bytes, bytes]:
    data = None
    if f["data"]:
        struct = struct_pb2.Struct()
        struct.update(f["data"])
        data = struct.SerializeToString()
    return encode_event(
        f["run_id"],
        f["seq"],
        f["ts_ns"],
        f["kind"],
        f["node_id"],
        f["attempt"],
        f["status"],
        f["message"],
        f["level"],
        data,
    )


@settings(max_examples=500, deadline=None)
@given(fields)
def test_the_frame_holds_what_protobuf_writes(f: dict) -> None:
    frame, _ = encode(f)
    batch = pb.EventBatch.FromString(frame + frame)  # frames concatenate into a batch
    assert len(batch.events) == 2
    assert batch.events[0] == pb.Event.FromString(reference(f))
    if not f["data"]:
        assert frame.endswith(reference(f))


# The table is emptied per example, so one database serves them all.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(fields, min_size=1, max_size=20))
def test_copy_rows_read_back_exactly(database_url: str, rows: list[dict]) -> None:
    rows = [dict(f, ts_ns=f["ts_ns"] % (2**61)) for f in rows]  # within Postgres' range
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ev (run_id text, seq bigint, ts timestamptz,"
            " kind text, node_id text, body bytea)"
        )
        conn.execute("TRUNCATE ev")
        bodies = []
        with conn.cursor().copy("COPY ev (run_id, seq, ts, kind, node_id, body) FROM STDIN") as cp:
            for f in rows:
                frame, row = encode(f)
                bodies.append(pb.EventBatch.FromString(frame).events[0])
                cp.write(row)
        got = conn.execute("SELECT run_id, seq, ts, kind, node_id, body FROM ev").fetchall()
    assert len(got) == len(rows)
    for (run_id, seq, ts, kind, node_id, body), f, expected in zip(got, rows, bodies, strict=True):

        def stored(value: str) -> str:
            return value.replace("\x00", "\ufffd")  # text columns cannot hold NUL

        assert (run_id, seq) == (stored(f["run_id"]), f["seq"])
        assert (kind, node_id) == (stored(f["kind"]), stored(f["node_id"]))
        assert pb.Event.FromString(bytes(body)) == expected
        micros = f["ts_ns"] // 1000
        assert ts == dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
