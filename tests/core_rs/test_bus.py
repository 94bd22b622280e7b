"""Tests for ``core_rs.EventBus``: seqs, fan-out, lag, close and waking waiters."""

from __future__ import annotations

import asyncio
import threading

import pytest

import core_rs
from core_rs import DEFAULT_CAPACITY, EventBus, Lagged

pytestmark = pytest.mark.timeout(60)

# Generous: only there to turn a hang into a failure, never to measure speed.
HANG = 20.0


def payloads(n: int, start: int = 1) -> list[bytes]:
    return [f"e{i}".encode() for i in range(start, start + n)]


def stream(n: int, start: int = 1) -> list[tuple[int, bytes]]:
    return [(i, f"e{i}".encode()) for i in range(start, start + n)]


async def collect(sub: core_rs.Subscription) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    async for batch in sub:
        assert batch, "async iteration never yields an empty batch"
        got.extend(batch)
    return got


async def parked(task: asyncio.Task) -> None:
    """Lets the task run until it waits (it cannot finish: nothing was published)."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


# --------------------------------------------------------------------------- construction


def test_capacity() -> None:
    assert EventBus().capacity == DEFAULT_CAPACITY
    assert EventBus(16).capacity == 16
    assert EventBus(1).capacity == 1


def test_zero_capacity_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventBus(0)


# --------------------------------------------------------------------------- seqs


def test_publish_returns_gap_free_seqs() -> None:
    bus = EventBus()
    assert [bus.publish("t", data) for data in payloads(100)] == list(range(1, 101))
    assert bus.last_seq("t") == 100
    # Topics count independently.
    assert bus.publish("u", b"x") == 1
    assert bus.last_seq("t") == 100


def test_open_continues_from_a_given_seq() -> None:
    bus = EventBus(8)
    assert bus.open("run", 41) == 41
    assert bus.last_seq("run") == 41
    assert bus.publish("run", b"a") == 42
    assert bus.publish("run", b"b") == 43
    assert bus.subscribe("run", 41).poll() == [(42, b"a"), (43, b"b")]
    # Opening behind the current seq changes nothing.
    assert bus.open("run", 10) == 43
    assert bus.publish("run", b"c") == 44
    # Opening a new topic without a seq starts at 0.
    assert bus.open("fresh") == 0
    assert bus.publish("fresh", b"x") == 1


def test_open_ahead_of_an_existing_topic_moves_it_forward() -> None:
    bus = EventBus(8)
    sub = bus.subscribe("t")
    bus.publish_many("t", payloads(3))
    assert bus.open("t", 100) == 100
    assert bus.buffered() == 0
    with pytest.raises(Lagged) as info:
        sub.poll()
    assert (info.value.after_seq, info.value.oldest_seq) == (0, 101)
    assert bus.publish("t", b"x") == 101
    sub.seek(100)
    assert sub.poll() == [(101, b"x")]


def test_publish_many_returns_the_last_seq() -> None:
    bus = EventBus()
    assert bus.publish_many("t", payloads(5)) == 5
    assert bus.publish_many("t", [b"x"]) == 6
    assert bus.publish_many("t", []) == 6
    assert bus.publish_many("t", (data for data in payloads(3, 7))) == 9
    assert bus.publish_iter("t", iter(payloads(2, 10))) == 11
    assert bus.subscribe("t", 6).poll() == stream(5, 7)


def test_publish_many_on_a_new_topic_with_nothing_returns_zero() -> None:
    bus = EventBus()
    assert bus.publish_many("t", []) == 0
    assert bus.last_seq("t") == 0


@pytest.mark.parametrize("data", ["text", bytearray(b"x"), memoryview(b"x"), 1, None])
def test_publishing_a_non_bytes_is_a_type_error(data: object) -> None:
    bus = EventBus()
    with pytest.raises(TypeError):
        bus.publish("t", data)  # type: ignore[arg-type]
    assert not bus.last_seq("t")


def test_publish_many_with_a_non_bytes_item_publishes_nothing() -> None:
    bus = EventBus()
    bus.publish("t", b"first")
    with pytest.raises(TypeError):
        bus.publish_many("t", [b"ok", "not bytes", b"ok"])  # type: ignore[list-item]
    assert bus.last_seq("t") == 1
    assert bus.subscribe("t").poll() == [(1, b"first")]


def test_empty_payload_is_an_event() -> None:
    bus = EventBus()
    assert bus.publish("t", b"") == 1
    assert bus.subscribe("t").poll() == [(1, b"")]


# --------------------------------------------------------------------------- reading


def test_subscribe_receives_seq_data_tuples_in_order() -> None:
    bus = EventBus()
    bus.publish_many("t", payloads(10))
    sub = bus.subscribe("t")
    assert sub.topic == "t"
    assert sub.position == 0
    batch = sub.poll()
    assert batch == stream(10)
    assert all(isinstance(event, tuple) and len(event) == 2 for event in batch)
    assert all(type(seq) is int and type(data) is bytes for seq, data in batch)
    assert sub.position == 10
    assert sub.poll() == []


def test_subscribe_after_seq_starts_after_it() -> None:
    bus = EventBus()
    bus.publish_many("t", payloads(10))
    assert bus.subscribe("t", 7).poll() == stream(3, 8)
    assert bus.subscribe("t", 10).poll() == []
    # A subscriber ahead of the topic waits for those seqs.
    ahead = bus.subscribe("t", 12)
    bus.publish_many("t", payloads(3, 11))
    assert ahead.poll() == [(13, b"e13")]


def test_poll_returns_empty_when_nothing_new_and_none_after_close() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    assert sub.poll() == []
    bus.publish("t", b"a")
    bus.publish("t", b"b")
    assert bus.close("t") is True
    # Everything published before the close is still read, then None.
    assert sub.poll() == [(1, b"a"), (2, b"b")]
    assert sub.poll() is None
    assert sub.poll() is None


def test_max_events_limits_batches() -> None:
    bus = EventBus()
    bus.publish_many("t", payloads(10))
    sub = bus.subscribe("t", max_events=3)
    assert sub.max_events == 3
    assert sub.poll() == stream(3)
    assert sub.poll(max_events=2) == stream(2, 4)
    assert sub.poll() == stream(3, 6)
    assert sub.poll(100) == stream(2, 9)
    assert sub.position == 10


def test_max_events_below_one_is_a_value_error() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="max_events"):
        bus.subscribe("t", max_events=0)
    native = bus._native.subscribe("t", 0)
    with pytest.raises(ValueError, match="max_events"):
        native.poll(0)


async def test_max_events_limits_async_batches() -> None:
    bus = EventBus()
    sub = bus.subscribe("t", max_events=4)
    bus.publish_many("t", payloads(10))
    bus.close("t")

    async def batches_of() -> list[list[tuple[int, bytes]]]:
        return [batch async for batch in sub]

    batches = await asyncio.wait_for(batches_of(), HANG)
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert [event for batch in batches for event in batch] == stream(10)


def test_seek_and_position() -> None:
    bus = EventBus()
    bus.publish_many("t", payloads(5))
    sub = bus.subscribe("t")
    sub.seek(3)
    assert sub.position == 3
    assert sub.poll() == stream(2, 4)
    sub.seek(0)
    assert sub.poll() == stream(5)


def test_every_subscriber_reads_independently() -> None:
    bus = EventBus()
    a, b = bus.subscribe("t"), bus.subscribe("t")
    bus.publish_many("t", payloads(4))
    assert a.poll(max_events=1) == stream(1)
    assert b.poll() == stream(4)
    assert a.poll() == stream(3, 2)


# --------------------------------------------------------------------------- topics & close


def test_topics_last_seq_buffered() -> None:
    bus = EventBus(4)
    assert bus.topics() == []
    assert bus.last_seq("nope") is None
    assert bus.buffered() == 0
    bus.publish_many("b", payloads(2))
    bus.publish_many("a", payloads(10))
    assert bus.topics() == ["a", "b"]
    assert bus.last_seq("a") == 10
    assert bus.last_seq("b") == 2
    # Each ring keeps at most `capacity` events.
    assert bus.buffered() == 4 + 2


def test_close_removes_the_topic() -> None:
    bus = EventBus()
    bus.publish("t", b"x")
    assert bus.close("t") is True
    assert bus.close("t") is False
    assert bus.close("never") is False
    assert bus.topics() == []
    assert bus.last_seq("t") is None
    assert bus.buffered() == 0


def test_a_closed_name_starts_over_and_old_subscribers_stay_closed() -> None:
    bus = EventBus()
    old = bus.subscribe("t")
    bus.publish("t", b"old")
    bus.close("t")
    assert bus.publish("t", b"new") == 1
    assert old.poll() == [(1, b"old")]
    assert old.poll() is None
    assert bus.subscribe("t").poll() == [(1, b"new")]


def test_subscribing_after_close_opens_a_fresh_topic() -> None:
    # Documented behaviour ("the name is free again"): a late subscriber does not
    # see the closed stream, it waits on a new, empty topic of the same name.
    bus = EventBus()
    bus.publish("t", b"x")
    bus.close("t")
    late = bus.subscribe("t")
    assert late.poll() == []
    assert bus.topics() == ["t"]
    assert bus.last_seq("t") == 0


# --------------------------------------------------------------------------- lag


def test_a_subscriber_behind_the_ring_lags_and_can_seek_past_it() -> None:
    bus = EventBus(4)
    slow = bus.subscribe("run-1")
    bus.publish_many("run-1", payloads(10))
    with pytest.raises(Lagged) as info:
        slow.poll()
    err = info.value
    assert err.topic == "run-1"
    assert err.after_seq == 0
    assert err.oldest_seq == 7
    assert "run-1" in str(err)
    # Still lagged until told where it caught up to.
    with pytest.raises(Lagged):
        slow.poll()
    slow.seek(err.after_seq)
    with pytest.raises(Lagged):
        slow.poll()
    # Seqs after_seq + 1 .. oldest_seq - 1 were replayed elsewhere.
    slow.seek(err.oldest_seq - 1)
    assert slow.poll() == stream(4, 7)
    assert bus.buffered() == 4


def test_lag_reports_the_position_reached() -> None:
    bus = EventBus(4)
    sub = bus.subscribe("t")
    bus.publish_many("t", payloads(3))
    assert sub.poll() == stream(3)
    bus.publish_many("t", payloads(6, 4))
    with pytest.raises(Lagged) as info:
        sub.poll()
    assert (info.value.after_seq, info.value.oldest_seq) == (3, 6)
    # Waiting on a lagged subscription returns at once: there is something to handle.
    assert sub.wait(0) is True


async def test_async_iteration_raises_lagged_and_resumes_after_seek() -> None:
    bus = EventBus(4)
    sub = bus.subscribe("t")
    bus.publish_many("t", payloads(10))
    with pytest.raises(Lagged) as info:
        async for _ in sub:
            pass
    sub.seek(info.value.oldest_seq - 1)
    bus.close("t")
    assert await asyncio.wait_for(collect(sub), HANG) == stream(4, 7)


def test_publishing_never_blocks_when_nobody_reads() -> None:
    bus = EventBus(16)
    idle = bus.subscribe("t")
    last = 0
    for i in range(100_000):
        last = bus.publish("t", b"x")
        assert last == i + 1
    assert bus.last_seq("t") == 100_000
    assert bus.buffered() == 16
    with pytest.raises(Lagged) as info:
        idle.poll()
    assert (info.value.after_seq, info.value.oldest_seq) == (0, 100_000 - 16 + 1)
    assert bus.subscribe("t", 99_990).poll() == [(seq, b"x") for seq in range(99_991, 100_001)]
    assert bus.publish_many("t", [b"y"] * 100_000) == 200_000
    assert bus.buffered() == 16


def test_capacity_one_keeps_only_the_newest_event() -> None:
    bus = EventBus(1)
    bus.publish_many("t", payloads(3))
    assert bus.subscribe("t", 2).poll() == [(3, b"e3")]
    with pytest.raises(Lagged):
        bus.subscribe("t", 1).poll()


# --------------------------------------------------------------------------- threads


def test_concurrent_publishers_get_distinct_gap_free_seqs() -> None:
    threads_n, per = 4, 5000
    bus = EventBus(threads_n * per)
    barrier = threading.Barrier(threads_n)
    results: list[list[int]] = [[] for _ in range(threads_n)]

    def publisher(p: int) -> None:
        barrier.wait()
        mine = results[p]
        for i in range(per):
            mine.append(bus.publish("t", f"{p}:{i}".encode()))

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
        assert not thread.is_alive()

    seqs = sorted(seq for mine in results for seq in mine)
    assert seqs == list(range(1, threads_n * per + 1))
    for mine in results:
        assert mine == sorted(mine)
    events = bus.subscribe("t").poll(threads_n * per)
    assert [seq for seq, _ in events] == seqs
    for p in range(threads_n):
        order = [
            int(data.split(b":")[1]) for _, data in events if data.startswith(f"{p}:".encode())
        ]
        assert order == list(range(per))
    # Each thread's seqs are the positions of its events.
    by_seq = dict(events)
    for p, mine in enumerate(results):
        assert [by_seq[seq] for seq in mine] == [f"{p}:{i}".encode() for i in range(per)]


def test_wait_times_out_without_data() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    assert sub.wait(0) is False
    assert sub.wait(30) is False


def test_wait_returns_at_once_when_data_or_close_is_there() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    bus.publish("t", b"x")
    assert sub.wait(0) is True
    sub.poll()
    assert sub.wait(0) is False
    bus.close("t")
    assert sub.wait(0) is True


def test_wait_wakes_when_another_thread_publishes() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    timer = threading.Timer(0.05, bus.publish, args=("t", b"hello"))
    timer.start()
    try:
        assert sub.wait(int(HANG * 1000)) is True
    finally:
        timer.join()
    assert sub.poll() == [(1, b"hello")]


def test_wait_wakes_when_another_thread_closes() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    timer = threading.Timer(0.05, bus.close, args=("t",))
    timer.start()
    try:
        assert sub.wait(int(HANG * 1000)) is True
    finally:
        timer.join()
    assert sub.poll() is None


def test_blocking_reader_sees_every_event_from_another_thread() -> None:
    bus = EventBus(1 << 14)
    sub = bus.subscribe("t")

    def publish_all() -> None:
        for data in payloads(5000):
            bus.publish("t", data)
        bus.close("t")

    thread = threading.Thread(target=publish_all)
    thread.start()
    seen: list[tuple[int, bytes]] = []
    while True:
        assert sub.wait(int(HANG * 1000))
        batch = sub.poll(64)
        if batch is None:
            break
        seen.extend(batch)
    thread.join(HANG)
    assert seen == stream(5000)


# --------------------------------------------------------------------------- asyncio


async def test_async_iteration_ends_after_close_with_everything_before_it() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    bus.publish_many("t", payloads(50))
    bus.close("t")
    assert await asyncio.wait_for(collect(sub), HANG) == stream(50)
    assert await sub.next_batch() is None


async def test_next_batch_returns_at_once_when_data_is_there() -> None:
    bus = EventBus()
    bus.publish_many("t", payloads(3))
    sub = bus.subscribe("t")
    assert await asyncio.wait_for(sub.next_batch(), HANG) == stream(3)
    bus.publish_many("t", payloads(2, 4))
    assert await asyncio.wait_for(sub.next_batch(max_events=1), HANG) == stream(1, 4)
    assert await asyncio.wait_for(sub.next_batch(), HANG) == stream(1, 5)


async def test_parked_subscriber_is_woken_by_a_publish_from_the_same_loop() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    task = asyncio.create_task(sub.next_batch())
    await parked(task)
    bus.publish("t", b"x")
    assert await asyncio.wait_for(task, HANG) == [(1, b"x")]


async def test_parked_subscriber_is_woken_by_a_publish_from_another_thread() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    task = asyncio.create_task(sub.next_batch())
    await parked(task)
    thread = threading.Thread(target=bus.publish, args=("t", b"from-thread"))
    thread.start()
    try:
        assert await asyncio.wait_for(task, HANG) == [(1, b"from-thread")]
    finally:
        thread.join(HANG)


async def test_parked_subscriber_is_woken_by_a_close_from_another_thread() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    task = asyncio.create_task(collect(sub))
    await parked(task)
    thread = threading.Thread(target=bus.close, args=("t",))
    thread.start()
    try:
        assert await asyncio.wait_for(task, HANG) == []
    finally:
        thread.join(HANG)


async def test_async_subscriber_reads_a_stream_published_from_another_thread() -> None:
    n = 5000
    bus = EventBus(n)
    subs = [bus.subscribe("t", max_events=7) for _ in range(20)]
    tasks = [asyncio.create_task(collect(sub)) for sub in subs]
    await asyncio.sleep(0)

    def publish_all() -> None:
        for data in payloads(n):
            bus.publish("t", data)
        bus.close("t")

    thread = threading.Thread(target=publish_all)
    thread.start()
    try:
        results = await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    finally:
        thread.join(HANG)
    for got in results:
        assert got == stream(n)


async def test_many_concurrent_subscribers_receive_identical_complete_streams() -> None:
    subscribers, rounds, per_round = 1200, 25, 8
    total = rounds * per_round
    bus = EventBus(total)
    tasks = [asyncio.create_task(collect(bus.subscribe("t"))) for _ in range(subscribers)]
    await asyncio.sleep(0)
    seq = 0
    for r in range(rounds):
        if r % 2:
            assert bus.publish_many("t", payloads(per_round, seq + 1)) == seq + per_round
            seq += per_round
        else:
            for data in payloads(per_round, seq + 1):
                seq += 1
                assert bus.publish("t", data) == seq
        await asyncio.sleep(0)
    bus.close("t")
    results = await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    expected = stream(total)
    assert len(results) == subscribers
    for got in results:
        assert got == expected


async def test_closing_ends_every_waiting_subscriber() -> None:
    bus = EventBus()
    batch_waiters = [asyncio.create_task(bus.subscribe("t").next_batch()) for _ in range(50)]
    iterators = [asyncio.create_task(collect(bus.subscribe("t"))) for _ in range(50)]
    for task in batch_waiters + iterators:
        await parked(task)
    assert bus.close("t") is True
    assert await asyncio.wait_for(asyncio.gather(*batch_waiters), HANG) == [None] * 50
    assert await asyncio.wait_for(asyncio.gather(*iterators), HANG) == [[]] * 50


async def test_close_after_some_events_delivers_them_then_ends() -> None:
    bus = EventBus()
    task = asyncio.create_task(collect(bus.subscribe("t")))
    await parked(task)
    bus.publish_many("t", payloads(3))
    await asyncio.sleep(0)
    bus.publish("t", b"e4")
    bus.close("t")
    assert await asyncio.wait_for(task, HANG) == stream(4)


async def test_a_cancelled_waiter_does_not_break_the_next_one() -> None:
    bus = EventBus()
    sub = bus.subscribe("t")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sub.next_batch(), 0.01)
    other = bus.subscribe("t")
    task = asyncio.create_task(other.next_batch())
    await parked(task)
    bus.publish("t", b"x")
    assert await asyncio.wait_for(task, HANG) == [(1, b"x")]
    # The subscription whose wait was cancelled still reads normally.
    assert await asyncio.wait_for(sub.next_batch(), HANG) == [(1, b"x")]


async def test_subscribers_on_other_topics_are_not_woken() -> None:
    bus = EventBus()
    quiet = asyncio.create_task(bus.subscribe("quiet").next_batch())
    busy = asyncio.create_task(bus.subscribe("busy").next_batch())
    await parked(quiet)
    await parked(busy)
    bus.publish("busy", b"x")
    assert await asyncio.wait_for(busy, HANG) == [(1, b"x")]
    await parked(quiet)
    bus.publish("quiet", b"y")
    assert await asyncio.wait_for(quiet, HANG) == [(1, b"y")]


def test_subscribers_in_separate_event_loops() -> None:
    """Each event loop gets its own notifier; a publish wakes both."""
    bus = EventBus()
    results: list[list[tuple[int, bytes]]] = []
    ready = threading.Barrier(3)

    def reader() -> None:
        async def main() -> list[tuple[int, bytes]]:
            sub = bus.subscribe("t")
            task = asyncio.create_task(collect(sub))
            await parked(task)
            await asyncio.to_thread(ready.wait)
            return await asyncio.wait_for(task, HANG)

        results.append(asyncio.run(main()))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    ready.wait(HANG)
    bus.publish_many("t", payloads(5))
    bus.close("t")
    for thread in threads:
        thread.join(HANG)
        assert not thread.is_alive()
    assert results == [stream(5), stream(5)]
