"""Replayed events are framed in Python (service._frame): every length class
of the varint must give exactly what protobuf parses back."""

from __future__ import annotations

import pytest

from control_plane.service import _event_batches, _frame
from statepipe_api.v1 import statepipe_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, 60, 127, 128, 129, 300, 16_383, 16_384, 20_000, 2**21 + 3])
def test_a_framed_body_parses_back_as_one_event(size: int) -> None:
    event = pb.Event(run_id="r", seq=7, kind="token", message="x" * size)
    body = event.SerializeToString()
    batch = pb.EventBatch.FromString(_frame(body))
    assert list(batch.events) == [event]
    assert pb.EventBatch(events=[event]).SerializeToString() == _frame(body)


def test_batches_of_frames_split_under_the_limit_and_keep_order() -> None:
    events = [pb.Event(run_id="r", seq=i, message="m" * (i * 37 % 500)) for i in range(1, 400)]
    frames = [_frame(e.SerializeToString()) for e in events]
    chunks = _event_batches(frames, limit=10_000)
    assert len(chunks) > 1 and all(len(c) <= 10_000 for c in chunks)
    parsed = [e for c in chunks for e in pb.EventBatch.FromString(c).events]
    assert parsed == events
