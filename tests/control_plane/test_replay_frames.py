"""WatchRun's messages are built natively (core_rs.frame_event_batches on replay,
core_rs.join_event_batches live): every length class of the frame's varint must
give exactly what protobuf parses back, and batches split under the limit in order."""

from __future__ import annotations

import pytest

import core_rs
from statepipe_api.v1 import statepipe_pb2 as pb

# Body lengths around every boundary of the varint's length classes (1, 2, 3 and
# 4 bytes). No Event encodes to 1 byte: a field takes 2 at least.
SIZES = [0, 2, 5, 60, 127, 128, 129, 300, 16_383, 16_384, 20_000, 2**21 - 1, 2**21, 2**21 + 3]


def body_of(size: int) -> tuple[pb.Event, bytes]:
    """An event whose encoding is exactly `size` bytes long."""
    if size <= 11:  # the tag of seq, then a varint of size - 1 bytes (none when 0)
        event = pb.Event(seq=1 << 7 * (size - 2)) if size else pb.Event()
    else:  # run_id "r" (3 bytes), then message's tag, its length and the text
        texts = range(size - 8, size)
        event = next(
            e
            for e in (pb.Event(run_id="r", message="x" * n) for n in texts)
            if e.ByteSize() == size
        )
    body = event.SerializeToString()
    assert len(body) == size
    return event, body


@pytest.mark.parametrize("size", SIZES)
def test_a_framed_body_parses_back_as_one_event(size: int) -> None:
    event, body = body_of(size)
    assert len(body) == size
    [batch] = core_rs.frame_event_batches([body])
    assert list(pb.EventBatch.FromString(batch).events) == [event]
    assert batch == pb.EventBatch(events=[event]).SerializeToString()


@pytest.mark.parametrize("size", SIZES)
def test_bodies_and_their_frames_make_the_same_batch(size: int) -> None:
    _, body = body_of(size)
    [framed] = core_rs.frame_event_batches([body, body], limit=1 << 23)
    frames = core_rs.frame_event_batches([body], limit=0) * 2
    assert core_rs.join_event_batches(frames, limit=1 << 23) == [framed]
    assert len(pb.EventBatch.FromString(framed).events) == 2


def test_frames_from_encode_event_join_into_one_batch() -> None:
    frames = [
        core_rs.encode_event("r", seq, 1_000, "token", message="t" * seq)[0] for seq in (1, 2)
    ]
    [batch] = core_rs.join_event_batches(frames)
    assert [(e.seq, e.message) for e in pb.EventBatch.FromString(batch).events] == [
        (1, "t"),
        (2, "tt"),
    ]


def test_batches_split_under_the_limit_and_keep_order() -> None:
    events = [pb.Event(run_id="r", seq=i, message="m" * (i * 37 % 500)) for i in range(1, 400)]
    bodies = [e.SerializeToString() for e in events]
    chunks = core_rs.frame_event_batches(bodies, limit=10_000)
    assert len(chunks) > 1 and all(len(c) <= 10_000 for c in chunks)
    parsed = [e for c in chunks for e in pb.EventBatch.FromString(c).events]
    assert parsed == events
    # Split only where the next event would not have fitted.
    sizes = [len(c) for c in chunks]
    counts = [len(pb.EventBatch.FromString(c).events) for c in chunks]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    for size, start in zip(sizes[:-1], starts[1:], strict=True):
        next_frame = pb.EventBatch(events=[events[start]]).ByteSize()
        assert size + next_frame > 10_000
    frames = core_rs.frame_event_batches(bodies, limit=0)
    assert core_rs.join_event_batches(frames, limit=10_000) == chunks


def test_an_event_larger_than_the_limit_gets_a_batch_of_its_own() -> None:
    small = pb.Event(run_id="r", seq=1, message="s").SerializeToString()
    big = pb.Event(run_id="r", seq=2, message="b" * 5_000).SerializeToString()
    chunks = core_rs.frame_event_batches([small, big, small, small], limit=1_000)
    assert [len(pb.EventBatch.FromString(c).events) for c in chunks] == [1, 1, 2]
    assert len(chunks[1]) > 1_000
    assert pb.EventBatch.FromString(chunks[1]).events[0].message == "b" * 5_000


def test_the_default_limit_is_one_mebibyte() -> None:
    bodies = [b"x" * 1000] * 2000  # 2,006,000 bytes framed
    chunks = core_rs.frame_event_batches(bodies)
    assert [len(c) for c in chunks] == [1003 * 1045, 1003 * 955]
    assert core_rs.join_event_batches(core_rs.frame_event_batches(bodies, limit=0)) == chunks


def test_no_events_no_batches() -> None:
    assert core_rs.frame_event_batches([]) == []
    assert core_rs.join_event_batches([]) == []


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"bodies\[1\] is str, not bytes"):
        core_rs.frame_event_batches([b"a", "b"])
    with pytest.raises(TypeError, match="a sequence of bytes"):
        core_rs.join_event_batches(b"abc")
    with pytest.raises(ValueError, match="limit must not be negative"):
        core_rs.frame_event_batches([b"a"], limit=-1)
