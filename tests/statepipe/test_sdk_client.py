"""``statepipe.client`` (Client, AsyncClient) against the real control plane.

Every test talks to a real ControlPlane (gRPC on 127.0.0.1:0, a fresh
embedded-Postgres database per test, see tests/conftest.py); node functions
come from tests/support/sp_nodes.py.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import inspect
import queue
import re
import signal
import threading
import time
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from sp_testing import py, wait_for

from statepipe import AsyncClient, Client, Event, NodeState, Run, SpecError, StatepipeError
from statepipe.client import CHANNEL_OPTIONS, Stream, Workflow
from statepipe_api.v1 import statepipe_pb2 as pb

# The key orders of docs/json-shapes.md.
RUN_KEYS = (
    "run_id workflow_name workflow_version status input output error labels idempotency_key"
    " created_at started_at finished_at updated_at last_seq node_counts usage parent_run_id"
    " parent_node_id nodes"
).split()
NODE_KEYS = (
    "node_id kind status attempt input output error traceback queued_at started_at finished_at"
    " usage after"
).split()
EVENT_KEYS = "run_id seq ts kind node_id attempt status message level data".split()
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

RunUpdate = tuple[Run, bool]


def committed(client: Client, run_id: str, status: str, node_counts: dict[str, int]) -> None:
    """Waits until Postgres (ListRuns, WatchRuns snapshots) has the run as GetRun shows it.

    GetRun reads a live run from memory, which can be one flush (a few ms) ahead.
    """
    wait_for(
        lambda: (
            [(r.status, r.node_counts) for r in client.list_runs(text=run_id)]
            == [(status, node_counts)]
        )
    )


def finished(client: Client, spec: dict[str, Any], **kwargs: Any) -> str:
    """Starts a run and returns its id once it is final, also in Postgres."""
    run_id = client.start_run(spec, **kwargs)
    run = client.wait(run_id, timeout=30)
    assert run.is_final
    committed(client, run_id, run.status, run.node_counts)
    return run_id


def node_running(client: Client, run_id: str, node_id: str) -> None:
    wait_for(lambda: client.get_run(run_id).node(node_id).status == "RUNNING")


async def async_finished(client: AsyncClient, run_id: str) -> Run:
    """Waits until the run is final, also in Postgres."""
    run = await client.wait(run_id, timeout=30)
    assert run.is_final
    deadline = time.monotonic() + 10
    while [(r.status, r.node_counts) for r in await client.list_runs(text=run_id)] != [
        (run.status, run.node_counts)
    ]:
        assert time.monotonic() < deadline, "the final run never reached Postgres"
        await asyncio.sleep(0.01)
    return run


def two_steps(name: str, seconds: float) -> dict[str, Any]:
    """a sleeps, then b runs."""
    return {
        "name": name,
        "nodes": [py("a", "sleep", args={"seconds": seconds}), py("b", "echo", ["a"])],
    }


OK = {"name": "ok", "nodes": [py("a", "echo")]}
# Not a hex word: run ids are hex, and the text filter also matches run ids.
BAD = {"name": "broken", "nodes": [py("a", "boom")]}
SLOW = {"name": "slow", "nodes": [py("s", "sleep", args={"seconds": 5})]}

_END = object()


class Reader:
    """Reads a sync stream on a thread, so a test can wait for items with a timeout."""

    def __init__(self, stream: Stream[Any]) -> None:
        self.stream = stream
        self.items: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for item in self.stream:
                self.items.put(item)
        except BaseException as err:
            self.items.put(err)
        self.items.put(_END)

    def next(self, timeout: float = 10.0) -> Any:
        try:
            item = self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout}s") from None
        if item is _END:
            raise AssertionError("the stream ended")
        if isinstance(item, BaseException):
            raise item
        return item

    def take(self, n: int) -> list[Any]:
        return [self.next() for _ in range(n)]

    def until(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
        """Items up to and including the first one matching."""
        deadline = time.monotonic() + timeout
        items = []
        while True:
            items.append(self.next(max(0.0, deadline - time.monotonic())))
            if predicate(items[-1]):
                return items

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "closing the stream did not end the iteration"


def is_(run_id: str, status: str) -> Callable[[RunUpdate], bool]:
    return lambda update: update[0].run_id == run_id and update[0].status == status


# --------------------------------------------------------------- connection


def test_channel_options_carry_messages_beyond_grpc_defaults(client: Client, server: Any) -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] >= 300_000  # what a default server accepts
    assert options["grpc.primary_user_agent"].startswith("statepipe-python/")

    blob = "x" * (5 * 1024 * 1024)  # over gRPC's 4 MiB default, both ways
    run_id = client.start_run({"name": "big", "nodes": [py("a", "echo")]}, {"blob": blob})
    assert client.wait(run_id, timeout=30).input == {"blob": blob}

    # options= overrides the defaults: a tiny receive limit refuses the same run.
    with Client(server.address, options=[("grpc.max_receive_message_length", 1024)]) as small:
        with pytest.raises(StatepipeError) as info:
            small.get_run(run_id)
        assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert small.list_runs(limit=1, status="running") == []  # small answers still pass


async def test_an_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(StatepipeError) as info:
        client.get_run("r")
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert info.value.message.startswith("statepipe server at 127.0.0.1:1 is unavailable: ")
    async with AsyncClient("127.0.0.1:1", timeout=5) as aclient:
        with pytest.raises(StatepipeError) as ainfo:
            await aclient.get_run("r")
    assert ainfo.value.code is grpc.StatusCode.UNAVAILABLE


# ----------------------------------------------------------------- workflows


def test_register_and_get_workflow(server: Any) -> None:
    spec = {"name": "w", "version": 2, "description": "d", "nodes": [py("a", "echo")]}
    before = datetime.datetime.now(datetime.UTC)
    # Metadata is sent with every call; the server does not check it (yet).
    with Client(server.address, metadata=[("authorization", "Bearer t")]) as client:
        workflow = client.register_workflow(spec)
        assert isinstance(workflow, Workflow)
        assert (workflow.name, workflow.version, workflow.created) == ("w", "2", True)
        assert workflow.description == "d"
        assert [n.id for n in workflow.spec.nodes] == ["a"]
        assert workflow.created_at is not None
        assert before - datetime.timedelta(seconds=5) <= workflow.created_at
        assert workflow.created_at <= datetime.datetime.now(datetime.UTC)
        shape = workflow.to_dict()
        assert list(shape) == ["spec", "created_at"]
        assert shape["spec"] == {
            "name": "w",
            "version": "2",
            "description": "d",
            "nodes": [
                {"id": "a", "kind": "python", "params": {"callable": "sp_nodes:echo", "args": {}}}
            ],
        }
        assert TIME.match(shape["created_at"])
        assert (
            shape["created_at"] == workflow.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        )
        assert "'w'" in repr(workflow) and "'2'" in repr(workflow)

        again = client.register_workflow(spec)
        assert again.created is False
        assert again.created_at == workflow.created_at
        with pytest.raises(StatepipeError) as conflict:
            client.register_workflow({**spec, "nodes": [py("b", "echo")]})
        assert str(conflict.value) == (
            "ALREADY_EXISTS: workflow 'w' version '2' is already registered with a different"
            " spec; register it under a new version"
        )
        client.register_workflow({**spec, "version": "3"})

        latest = client.get_workflow("w")
        assert (latest.version, latest.created) == ("3", None)
        pinned = client.get_workflow("w", version="2")
        assert pinned == Workflow(workflow.proto)
        assert pinned.to_dict() == shape

        with pytest.raises(SpecError, match='unknown field "nodez"'):
            client.register_workflow({"name": "w", "nodez": []})
        with pytest.raises(StatepipeError) as cycle:
            client.register_workflow(
                {"name": "cyc", "nodes": [py("a", "echo", ["b"]), py("b", "echo", ["a"])]}
            )
        assert str(cycle.value) == "INVALID_ARGUMENT: the nodes form a cycle: a -> b -> a"
        with pytest.raises(StatepipeError) as missing:
            client.get_workflow("nope", version="3")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        assert str(missing.value) == "NOT_FOUND: version '3' of workflow 'nope' is not registered"
        with pytest.raises(StatepipeError, match=r"^NOT_FOUND: workflow 'nope' is not registered"):
            client.get_workflow("nope")


def test_list_workflows_follows_pages(client: Client) -> None:
    names = [f"wf{i:04d}" for i in range(1001)]  # more than the server's largest page (1000)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: client.register_workflow({"name": n, "nodes": [py("a", "echo")]}), names
            )
        )

    listed = [w.name for w in client.list_workflows(limit=None)]
    assert sorted(listed) == names  # every one exactly once, over two pages
    assert [w.name for w in client.list_workflows(limit=3)] == listed[:3]
    assert len(client.list_workflows()) == 100  # the default limit

    page, token = client.list_workflows_page(limit=2)
    assert [w.name for w in page] == listed[:2] and token
    assert [w.name for w in client.list_workflows(limit=None, page_token=token)] == listed[2:]
    full, token = client.list_workflows_page(limit=1000)
    last, end = client.list_workflows_page(limit=1000, page_token=token)
    assert [w.name for w in full + last] == listed and end is None

    # Registration order (concurrent here), filtered.
    assert [w.name for w in client.list_workflows("wf000", limit=None)] == [
        n for n in listed if "wf000" in n
    ]
    page, token = client.list_workflows_page("wf100", limit=1)
    assert [w.name for w in page] == ["wf1000"] and token is None
    assert client.list_workflows("nothing-like-this") == []
    with pytest.raises(ValueError, match="limit"):
        client.list_workflows(limit=0)
    with pytest.raises(StatepipeError) as info:
        client.list_workflows_page(page_token="zzz")
    assert str(info.value) == "INVALID_ARGUMENT: page_token 'zzz' is not one this server issued"


def test_a_page_token_of_another_listing_is_an_invalid_argument(client: Client) -> None:
    # Each listing checks its token's shape (unchecked, both used to fail with INTERNAL).
    for name in ("a", "b"):
        client.register_workflow({"name": name, "nodes": [py("n", "echo")]})
        finished(client, {"name": name, "nodes": [py("n", "echo")]})
    _, workflows_token = client.list_workflows_page(limit=1)
    _, runs_token = client.list_runs_page(limit=1)
    with pytest.raises(StatepipeError) as runs:
        client.list_runs_page(page_token=workflows_token)
    with pytest.raises(StatepipeError) as workflows:
        client.list_workflows_page(page_token=runs_token)
    assert str(runs.value) == (
        f"INVALID_ARGUMENT: page_token {workflows_token!r} is not one this server issued"
    )
    assert str(workflows.value) == (
        f"INVALID_ARGUMENT: page_token {runs_token!r} is not one this server issued"
    )


# ---------------------------------------------------------------------- runs


def test_start_run_by_name_version_and_inline_spec(client: Client) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    client.register_workflow({"name": "greet", "version": "1", "nodes": [py("a", "run_input")]})
    client.register_workflow(
        {"name": "greet", "version": "2", "input_schema": schema, "nodes": [py("a", "run_input")]}
    )

    latest = client.start_run("greet", {"x": 1}, labels={"team": "a", "env": "prod"})
    pinned = client.start_run("greet", {"x": "free-form"}, version="1")
    plain = client.start_run("greet", version="1")
    inline = client.start_run({"name": "inline", "nodes": [py("a", "run_input")]}, [1, 2])
    for run_id, version, run_input in [
        (latest, "2", {"x": 1}),
        (pinned, "1", {"x": "free-form"}),
        (plain, "1", None),
    ]:
        run = client.wait(run_id, timeout=30)
        assert (run.workflow_name, run.workflow_version, run.status) == (
            "greet",
            version,
            "SUCCEEDED",
        )
        assert run.input == run_input
        assert run.node("a").output == {
            "input": run_input,
            "attempt": 1,
            "node": "a",
            "run": run_id,
        }
    assert client.get_run(latest).labels == {"team": "a", "env": "prod"}
    assert client.get_run(plain).labels == {}
    run = client.wait(inline, timeout=30)
    assert (run.workflow_name, run.workflow_version, run.input) == ("inline", "1", [1, 2])
    assert run.output == {"a": {"input": [1, 2], "attempt": 1, "node": "a", "run": inline}}

    first = client.start_run("greet", {"x": 2}, idempotency_key="order-42")
    assert client.start_run("greet", {"x": 3}, idempotency_key="order-42") == first
    inline_same_key = client.start_run(
        {"name": "inline", "nodes": [py("a", "echo")]}, idempotency_key="order-42"
    )
    assert inline_same_key == first
    other = client.start_run("greet", {"x": 2}, idempotency_key="order-43")
    assert other != first
    assert client.get_run(first).idempotency_key == "order-42"
    assert client.get_run(first).input == {"x": 2}
    assert client.get_run(latest).idempotency_key == ""
    assert len(client.list_runs(text="greet", limit=None)) == 5

    with pytest.raises(ValueError, match="version"):
        client.start_run({"name": "inline"}, version="1")
    with pytest.raises(SpecError, match=r"^input\.at: "):
        client.start_run("greet", {"at": datetime.datetime.now()})
    with pytest.raises(StatepipeError) as bad_input:
        client.start_run("greet", {"x": "no"})
    assert str(bad_input.value) == "INVALID_ARGUMENT: input.x: 'no' is not of type 'integer'"
    with pytest.raises(StatepipeError) as no_input:
        client.start_run("greet")
    assert no_input.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(StatepipeError) as unknown:
        client.start_run("nope")
    assert str(unknown.value) == "NOT_FOUND: workflow 'nope' is not registered"
    with pytest.raises(StatepipeError) as unknown_version:
        client.start_run("greet", {"x": 1}, version="9")
    assert str(unknown_version.value) == (
        "NOT_FOUND: version '9' of workflow 'greet' is not registered"
    )


def test_get_run_wrappers_and_json_shapes(client: Client) -> None:
    spec = {
        "name": "shapes",
        "version": "3",
        "nodes": [
            py("talk", "chatty", args={"tokens": 2}),
            py("sum", "add", ["talk"], args={"a": 1, "b": 2}),
        ],
    }
    run_id = finished(client, spec, input={"q": "x", "n": 3}, labels={"env": "test"})
    got = client.wait(run_id, timeout=30)
    assert isinstance(got, Run) and isinstance(got.proto, pb.Run)
    assert got == client.get_run(run_id)
    assert (got.run_id, got.workflow_name, got.workflow_version) == (run_id, "shapes", "3")
    assert (got.status, got.is_final, got.error) == ("SUCCEEDED", True, "")
    assert got.input == {"q": "x", "n": 3} and isinstance(got.input["n"], int)
    assert got.output == {"sum": 3}
    assert (got.labels, got.idempotency_key) == ({"env": "test"}, "")
    assert got.node_counts == {"SUCCEEDED": 2}
    assert got.created_at and got.started_at and got.finished_at and got.updated_at
    assert got.created_at.tzinfo is datetime.UTC
    assert got.created_at <= got.started_at <= got.finished_at <= got.updated_at
    events = client.list_events(run_id, limit=None)
    assert got.last_seq == events[-1].seq == len(events)
    assert repr(got) == f"Run(run_id={run_id!r}, workflow='shapes@3', status='SUCCEEDED')"

    talk, total = got.nodes
    assert isinstance(talk, NodeState)
    assert (talk.node_id, talk.kind, talk.status, talk.attempt) == (
        "talk",
        "python",
        "SUCCEEDED",
        1,
    )
    assert (talk.output, talk.error, talk.after) == ("ok", "", [])
    assert talk.usage == {"input_tokens": 3, "output_tokens": 2}
    assert talk.queued_at and talk.started_at and talk.finished_at
    assert talk.queued_at <= talk.started_at <= talk.finished_at
    assert total == got.node("sum")
    assert (total.after, total.output, total.usage) == (["talk"], 3, None)
    assert total.input == {"callable": "sp_nodes:add", "args": {"a": 1, "b": 2}}
    assert repr(total) == "NodeState(node_id='sum', status='SUCCEEDED')"
    with pytest.raises(KeyError):
        got.node("nope")

    shape = got.to_dict()
    assert list(shape) == RUN_KEYS
    assert shape["status"] == "SUCCEEDED"
    assert (shape["input"], shape["output"]) == ({"q": "x", "n": 3}, {"sum": 3})
    assert (shape["error"], shape["labels"], shape["idempotency_key"]) == ("", {"env": "test"}, "")
    times = [shape[k] for k in ("created_at", "started_at", "finished_at", "updated_at")]
    assert all(TIME.match(t) for t in times) and times == sorted(times)
    assert (shape["last_seq"], shape["node_counts"]) == (got.last_seq, {"SUCCEEDED": 2})
    nodes = shape["nodes"]
    assert [list(n) for n in nodes] == [NODE_KEYS, NODE_KEYS]
    assert nodes[0] == talk.to_dict()
    assert (nodes[0]["status"], nodes[0]["attempt"], nodes[0]["output"]) == ("SUCCEEDED", 1, "ok")
    assert nodes[0]["usage"] == {"input_tokens": 3, "output_tokens": 2}
    assert (nodes[1]["after"], nodes[1]["usage"], nodes[1]["error"]) == (["talk"], None, "")
    assert all(TIME.match(nodes[1][k]) for k in ("queued_at", "started_at", "finished_at"))

    # Listings have node_counts but no nodes.
    (listed,) = client.list_runs(workflow="shapes")
    assert listed.nodes == [] and listed.to_dict()["nodes"] == []
    assert listed.node_counts == {"SUCCEEDED": 2}
    assert {k: v for k, v in listed.to_dict().items() if k != "nodes"} == {
        k: v for k, v in shape.items() if k != "nodes"
    }
    with pytest.raises(KeyError):
        listed.node("talk")

    failed = client.wait(client.start_run(BAD), timeout=30)
    shape = failed.to_dict()
    assert (shape["status"], shape["error"]) == ("FAILED", "1 node(s) failed: 'a'")
    assert not shape["output"]  # no succeeded sink: {} today, docs say null until there is one
    assert shape["input"] is None
    assert shape["nodes"][0]["error"] == failed.node("a").error == "ValueError: boom"
    assert shape["nodes"][0]["output"] is None

    slow = client.start_run(SLOW)
    node_running(client, slow, "s")
    running = client.get_run(slow)
    shape = running.to_dict()
    assert (running.is_final, shape["status"], shape["finished_at"], shape["output"]) == (
        False,
        "RUNNING",
        None,
        None,
    )
    assert shape["node_counts"] == {"RUNNING": 1}
    assert (shape["nodes"][0]["status"], shape["nodes"][0]["finished_at"]) == ("RUNNING", None)
    client.cancel(slow)

    with pytest.raises(StatepipeError) as info:
        client.get_run("missing")
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert str(info.value) == "NOT_FOUND: run 'missing' not found"


def test_list_runs_filters_order_and_pages(client: Client) -> None:
    # Created first, finished (cancelled) last: created_at and finished_at orders differ.
    early = client.start_run(
        {"name": "ok", "nodes": [py("a", "sleep", args={"seconds": 5})]},
        labels={"env": "dev", "i": "0"},
    )
    quick = [
        client.start_run(OK, labels={"env": e, "i": str(i)})
        for i, e in [(1, "prod"), (2, "dev"), (3, "prod")]
    ]
    failed = client.start_run(BAD, labels={"env": "prod"})
    for run_id in [*quick, failed]:
        run = client.wait(run_id, timeout=30)
        committed(client, run_id, run.status, run.node_counts)
    client.cancel(early)
    committed(client, early, "CANCELLED", {"CANCELLED": 1})
    slow = client.start_run(SLOW, labels={"env": "prod"})
    ok = [early, *quick]

    def ids(**kwargs: Any) -> list[str]:
        return [r.run_id for r in client.list_runs(limit=None, **kwargs)]

    everything = client.list_runs(limit=None)
    newest_first = [slow, failed, *ok[::-1]]
    assert [r.run_id for r in everything] == newest_first
    assert all(r.nodes == [] and sum(r.node_counts.values()) == 1 for r in everything)
    created = {r.run_id: r.created_at for r in everything}

    assert ids(status="running") == [slow]
    assert ids(status=["succeeded", "RUN_FAILED"]) == [failed, *quick[::-1]]
    assert ids(status=pb.RUN_FAILED) == [failed]
    assert ids(status="cancelled") == [early]
    assert ids(status="paused") == []
    assert ids(workflow="ok") == ok[::-1]
    assert ids(labels={"env": "prod"}) == [slow, failed, quick[2], quick[0]]
    assert ids(labels={"env": "prod", "i": "1"}) == [quick[0]]
    assert ids(workflow="ok", labels={"env": "prod"}, status="succeeded") == [quick[2], quick[0]]
    assert ids(text=early[:12]) == [early]
    assert ids(text="broken") == [failed]  # workflow name
    assert ids(text="NODE(S) FAILED") == [failed]  # error, case-insensitive
    assert ids(text="no such thing") == []

    pivot = created[quick[1]]
    assert ids(created_after=pivot) == [slow, failed, quick[2], quick[1]]  # inclusive
    assert ids(created_before=pivot) == [quick[0], early]  # exclusive
    assert ids(created_after=pivot.replace(tzinfo=None)) == ids(created_after=pivot)  # naive: UTC
    assert ids(created_after=created[quick[0]], created_before=created[failed]) == [
        quick[2],
        quick[1],
        quick[0],
    ]

    assert ids(order_by="created_at") == newest_first[::-1]
    assert ids(order_by="-created_at") == newest_first
    by_finish = ids(order_by="-finished_at")
    assert slow not in by_finish  # unfinished runs have no place in this order
    assert by_finish[0] == early and ids(order_by="finished_at") == by_finish[::-1]
    for column in ("updated_at", "finished_at"):
        expected = sorted(
            (r for r in everything if getattr(r, column)),
            key=lambda r, c=column: (getattr(r, c), r.run_id),
        )
        assert ids(order_by=column) == [r.run_id for r in expected]
        assert ids(order_by=f"-{column}") == [r.run_id for r in expected[::-1]]

    # Pages: each order, followed by tokens, gives the whole listing once.
    for order_by in ("created_at", "-created_at", "-updated_at", "finished_at", "-finished_at"):
        pages: list[str] = []
        page, token = client.list_runs_page(order_by=order_by, limit=2)
        pages += [r.run_id for r in page]
        while token:
            page, token = client.list_runs_page(order_by=order_by, limit=2, page_token=token)
            assert page
            pages += [r.run_id for r in page]
        assert pages == ids(order_by=order_by)
    page, token = client.list_runs_page(workflow="ok", limit=3)
    assert [r.run_id for r in page] == ok[::-1][:3]
    assert ids(workflow="ok", page_token=token) == [early]
    assert [r.run_id for r in client.list_runs(limit=4)] == newest_first[:4]
    assert len(client.list_runs()) == 6  # the default limit is 100

    with pytest.raises(ValueError, match="unknown run status"):
        client.list_runs(status="runing")
    with pytest.raises(ValueError, match="limit"):
        client.list_runs(limit=0)
    with pytest.raises(TypeError, match="created_after must be a datetime"):
        client.list_runs(created_after="2026-01-01")  # type: ignore[arg-type]
    with pytest.raises(StatepipeError) as info:
        client.list_runs(order_by="name")
    assert str(info.value) == (
        "INVALID_ARGUMENT: cannot order by 'name'; use one of "
        "['created_at', 'duration_ms', 'finished_at', 'started_at', 'status', 'updated_at',"
        " 'workflow_name'], '-' for descending"
    )
    client.cancel(slow)


def test_controls(client: Client) -> None:
    run_id = client.start_run(two_steps("steps", 0.4))
    node_running(client, run_id, "a")
    paused = client.pause(run_id, reason="look")
    assert isinstance(paused, Run)
    assert (paused.run_id, paused.status) == (run_id, "PAUSED")
    with pytest.raises(StatepipeError) as twice:
        client.pause(run_id)
    assert str(twice.value) == (
        f"FAILED_PRECONDITION: cannot pause run '{run_id}': it is PAUSED (allowed when RUNNING)"
    )
    assert client.resume(run_id).status == "RUNNING"
    interrupted = client.interrupt(run_id)
    assert interrupted.status == "INTERRUPTED"
    assert client.get_run(run_id).node("a").status == "PENDING"  # queued again on resume
    assert client.resume(run_id).status == "RUNNING"
    cancelled = client.cancel(run_id, reason="no longer needed")
    assert cancelled.status == "CANCELLED"
    assert client.wait(run_id, timeout=10).status == "CANCELLED"
    messages = [(e.status, e.message) for e in client.watch(run_id, kinds="run_status")]
    assert messages[0] == ("RUNNING", "")
    assert [s for s, _ in messages[1:]] == [
        "PAUSED",
        "RUNNING",
        "INTERRUPTED",
        "RUNNING",
        "CANCELLED",
    ]
    assert "no longer needed" in messages[-1][1]
    with pytest.raises(StatepipeError) as final:
        client.cancel(run_id)
    assert final.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "it is CANCELLED" in final.value.message

    flaky = finished(client, {"name": "flaky", "nodes": [py("a", "fail_until")]})
    assert client.get_run(flaky).status == "FAILED"
    with pytest.raises(StatepipeError) as no_node:
        client.retry_node(flaky, "zz")
    assert str(no_node.value) == f"NOT_FOUND: run '{flaky}' has no node 'zz'"
    retried = client.retry_node(flaky, "a")
    assert retried.status == "RUNNING"
    run = client.wait(flaky, timeout=30)
    assert (run.status, run.node("a").attempt, run.node("a").output) == ("SUCCEEDED", 2, 2)
    with pytest.raises(StatepipeError) as done:
        client.retry_node(flaky, "a")
    assert done.value.code is grpc.StatusCode.FAILED_PRECONDITION
    for control in (client.pause, client.resume, client.interrupt, client.cancel):
        with pytest.raises(StatepipeError) as missing:
            control("missing")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND


# -------------------------------------------------------------------- events


def test_watch_replays_filters_and_follows(client: Client) -> None:
    run_id = client.start_run(
        {
            "name": "chat",
            "nodes": [
                py("talk", "chatty", args={"tokens": 3}),
                py("sum", "add", ["talk"], args={"a": 1, "b": 2}),
            ],
        }
    )
    live = list(client.watch(run_id))  # follows the run until it is final
    assert all(isinstance(e, Event) for e in live)
    assert [e.seq for e in live] == list(range(1, len(live) + 1))
    assert (live[0].kind, live[0].status) == ("run_status", "RUNNING")
    assert (live[-1].kind, live[-1].status) == ("run_status", "SUCCEEDED")
    assert live[-1].seq == client.get_run(run_id).last_seq
    assert list(client.watch(run_id)) == live  # a replay from Postgres is the same
    assert [e.seq for e in client.watch(run_id, after_seq=live[-3].seq)] == [
        live[-2].seq,
        live[-1].seq,
    ]
    tokens = list(client.watch(run_id, kinds="token"))
    assert [(e.message, e.node_id, e.attempt) for e in tokens] == [
        ("t0 ", "talk", 1),
        ("t1 ", "talk", 1),
        ("t2 ", "talk", 1),
    ]
    assert [e.kind for e in client.watch(run_id, kinds=["progress", "metric"])] == [
        "progress",
        "metric",
        "progress",
    ]

    first = live[0].to_dict()
    assert list(first) == EVENT_KEYS
    assert (first["run_id"], first["seq"], first["kind"], first["status"]) == (
        run_id,
        1,
        "run_status",
        "RUNNING",
    )
    assert (first["node_id"], first["attempt"], first["message"], first["level"]) == ("", 0, "", "")
    assert first["data"] == {"workflow": "chat", "version": "1"}
    assert TIME.match(first["ts"]) and live[0].ts is not None
    log = next(e for e in live if e.kind == "log")
    assert (log.message, log.level, log.node_id, log.status) == (
        "adding 1 and 2",
        "info",
        "sum",
        "",
    )
    assert log.to_dict()["data"] is None and log.data is None
    progress = next(e for e in live if e.kind == "progress")
    assert progress.data is not None and progress.data["fraction"] == 0.5
    node_done = next(e for e in live if e.kind == "node_status" and e.status == "SUCCEEDED")
    assert node_done.to_dict()["status"] == "SUCCEEDED" and node_done.proto.status.endswith(
        "SUCCEEDED"
    )
    assert repr(live[0]) == f"Event(run_id={run_id!r}, seq=1, kind='run_status')"

    with client.watch(run_id) as stream:
        assert next(stream).seq == 1
    assert list(stream) == []  # leaving the with-block cancelled the call
    with pytest.raises(StatepipeError) as info:
        list(client.watch("missing"))
    assert str(info.value) == "NOT_FOUND: run 'missing' not found"


def test_closing_streams_early_cancels_them_and_the_server_keeps_serving(client: Client) -> None:
    slow = client.start_run(SLOW)
    watch = client.watch(slow, follow_forever=True)
    first = next(watch)
    assert (first.seq, first.kind) == (1, "run_status")
    watch.close()
    assert list(watch) == []
    with pytest.raises(StopIteration):
        next(watch)

    runs = client.watch_runs()
    run, snapshot = next(runs)
    assert (run.run_id, snapshot) == (slow, True)
    runs.close()
    assert list(runs) == []

    # Both calls ended; the server still serves, and new streams work.
    assert client.get_run(slow).status == "RUNNING"
    again = client.watch(slow, after_seq=first.seq, kinds="node_status")
    queued = next(again)
    assert (queued.node_id, queued.seq > first.seq) == ("s", True)
    runs = Reader(client.watch_runs())
    assert runs.next()[0].run_id == slow
    assert client.cancel(slow).status == "CANCELLED"
    rest = list(again)  # not follow_forever: ends once the run is final
    assert [e.status for e in rest][-1] == "CANCELLED"
    assert runs.until(is_(slow, "CANCELLED"))[-1][1] is False
    runs.close()


def test_list_events_follows_pages(client: Client) -> None:
    run = client.wait(
        client.start_run({"name": "paged", "nodes": [py("talk", "chatty", args={"tokens": 1100})]}),
        timeout=30,
    )
    everything = client.list_events(run.run_id, limit=None)  # over 1000: two pages
    assert [e.seq for e in everything] == list(range(1, run.last_seq + 1))
    assert len(client.list_events(run.run_id)) == 1000  # the default limit
    assert [e.seq for e in client.list_events(run.run_id, after_seq=3, limit=12)] == list(
        range(4, 16)
    )
    tokens = client.list_events(run.run_id, kinds=["token"], limit=None)
    assert [e.message for e in tokens] == [f"t{i} " for i in range(1100)]
    (one,) = client.list_events(run.run_id, kinds="token", node_id="talk", limit=1)
    assert one == tokens[0]
    assert list(one.to_dict()) == EVENT_KEYS and one.to_dict()["message"] == "t0 "
    assert client.list_events(run.run_id, node_id="other") == []
    assert client.list_events(run.run_id, after_seq=run.last_seq) == []
    assert [e.seq for e in client.list_events(run.run_id, after_seq=run.last_seq - 2)] == [
        run.last_seq - 1,
        run.last_seq,
    ]
    with pytest.raises(ValueError, match="limit"):
        client.list_events(run.run_id, limit=0)
    with pytest.raises(StatepipeError) as info:
        client.list_events("missing")
    assert str(info.value) == "NOT_FOUND: run 'missing' not found"


# ---------------------------------------------------------------------- wait


def test_wait_follows_the_run_until_it_is_final(client: Client) -> None:
    spec = two_steps("two", 0.3)
    started = time.monotonic()
    run_id = client.start_run(spec)
    run = client.wait(run_id, timeout=10)
    assert time.monotonic() - started >= 0.3
    assert run.status == "SUCCEEDED"
    assert [(n.node_id, n.status) for n in run.nodes] == [("a", "SUCCEEDED"), ("b", "SUCCEEDED")]
    assert run == client.get_run(run_id)

    # A paused run keeps wait waiting until it is resumed and finishes.
    paused = client.start_run(spec)
    node_running(client, paused, "a")
    client.pause(paused)
    with pytest.raises(StatepipeError) as info:
        client.wait(paused, timeout=0.5)
    assert str(info.value) == f"DEADLINE_EXCEEDED: run {paused} is still PAUSED after 0.5s"
    resume = threading.Timer(0.3, client.resume, [paused])
    resume.start()
    try:
        assert client.wait(paused, timeout=10).status == "SUCCEEDED"
    finally:
        resume.join()


def test_wait_times_out_then_the_run_is_cancelled(client: Client) -> None:
    slow = client.start_run(SLOW)
    started = time.monotonic()
    with pytest.raises(StatepipeError) as info:
        client.wait(slow, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(info.value) == f"DEADLINE_EXCEEDED: run {slow} is still RUNNING after 0.5s"
    assert client.cancel(slow).status == "CANCELLED"
    started = time.monotonic()
    run = client.wait(slow, timeout=10)
    assert time.monotonic() - started < 3
    assert (run.status, run.node("s").status) == ("CANCELLED", "CANCELLED")


def test_wait_returns_a_final_run_at_once(client: Client) -> None:
    done = finished(client, OK)
    failed = finished(client, BAD)
    cancelled = client.start_run(SLOW)
    client.cancel(cancelled)
    client.wait(cancelled, timeout=10)
    for run_id, status in [(done, "SUCCEEDED"), (failed, "FAILED"), (cancelled, "CANCELLED")]:
        started = time.monotonic()
        run = client.wait(run_id, timeout=0)  # no time at all is enough for a final run
        assert time.monotonic() - started < 1
        assert run.status == status and run == client.get_run(run_id)
    with pytest.raises(StatepipeError) as info:
        client.wait("missing")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- watch_runs


def test_watch_runs_sends_a_snapshot_then_live_summaries(client: Client) -> None:
    done = [finished(client, {"name": "w1", "nodes": [py("a", "echo")]}) for _ in range(3)]
    failed = finished(client, {"name": "w2", "nodes": [py("a", "boom")]})
    blocker = client.start_run({"name": "w3", "nodes": [py("s", "sleep", args={"seconds": 5})]})
    committed(client, blocker, "RUNNING", {"RUNNING": 1})

    everything = Reader(client.watch_runs(snapshot_size=10))
    two_w1 = Reader(client.watch_runs(workflow="w1", snapshot_size=2))
    failed_only = Reader(client.watch_runs(status="failed"))
    running_only = Reader(client.watch_runs(status=["running"]))
    try:
        snapshot = everything.take(5)
        assert [r.run_id for r, _ in snapshot] == [blocker, failed, *done[::-1]]  # newest first
        assert all(is_snapshot for _, is_snapshot in snapshot)
        assert [(r.status, r.node_counts) for r, _ in snapshot] == [
            ("RUNNING", {"RUNNING": 1}),
            ("FAILED", {"FAILED": 1}),
            *[("SUCCEEDED", {"SUCCEEDED": 1})] * 3,
        ]
        assert all(r.nodes == [] and r.to_dict()["nodes"] == [] for r, _ in snapshot)
        assert snapshot[1][0] == Run(client.list_runs(status="failed")[0].proto)
        assert [(r.run_id, s) for r, s in two_w1.take(2)] == [(done[2], True), (done[1], True)]
        assert [(r.run_id, s) for r, s in failed_only.take(1)] == [(failed, True)]
        assert [(r.run_id, s) for r, s in running_only.take(1)] == [(blocker, True)]

        new = client.start_run(two_steps("w1", 0.3))
        live = everything.until(is_(new, "SUCCEEDED"))
        assert not any(is_snapshot for _, is_snapshot in live)
        mine = [r for r, _ in live if r.run_id == new]
        assert mine[0].status == "RUNNING" and {r.status for r in mine} == {"RUNNING", "SUCCEEDED"}
        assert all(r.workflow_name == "w1" and r.nodes == [] for r in mine)
        assert all(sum(r.node_counts.values()) == 2 for r in mine)
        assert any(r.node_counts.get("RUNNING") == 1 for r in mine if r.status == "RUNNING")
        assert mine[-1].node_counts == {"SUCCEEDED": 2}
        assert mine[-1].finished_at is not None and mine[-1].to_dict()["finished_at"]
        assert mine[-1].last_seq == client.get_run(new).last_seq
        assert [r.last_seq for r in mine] == sorted(r.last_seq for r in mine)

        w1_live = two_w1.until(is_(new, "SUCCEEDED"))
        assert {r.run_id for r, _ in w1_live} == {new}
        assert not any(is_snapshot for _, is_snapshot in w1_live)

        # Hidden by the status filters: the new run's SUCCEEDED, the blocker's
        # CANCELLED, and (for running_only) the next run's FAILED.
        client.cancel(blocker)
        everything.until(is_(blocker, "CANCELLED"))
        bad = client.start_run({"name": "w2", "nodes": [py("a", "boom")]})
        assert client.wait(bad, timeout=30).status == "FAILED"
        run, is_snapshot = failed_only.next()
        assert (run.run_id, run.status, is_snapshot) == (bad, "FAILED", False)
        running = running_only.until(lambda u: u[0].run_id == bad)
        assert {r.status for r, _ in running} == {"RUNNING"}
        assert {r.run_id for r, _ in running} == {new, bad}
    finally:
        for reader in (everything, two_w1, failed_only, running_only):
            reader.close()

    # The streams were cancelled; a new one starts from a fresh snapshot.
    latest = Reader(client.watch_runs(snapshot_size=1))
    run, is_snapshot = latest.next()
    assert (run.run_id, run.status, is_snapshot) == (bad, "FAILED", True)
    latest.close()


def test_watch_runs_summaries_count_the_events_committed_with_them(client: Client) -> None:
    old = finished(client, OK)
    reader = Reader(client.watch_runs())
    try:
        assert reader.next()[0].run_id == old  # subscribed
        new = client.start_run(OK)
        updates = [r for r, _ in reader.until(is_(new, "SUCCEEDED")) if r.run_id == new]
        first_event = client.list_events(new, limit=1)[0]
        assert (first_event.seq, first_event.kind) == (1, "run_status")
        # docs/json-shapes.md: last_seq is the seq of the run's last event (0: none yet).
        assert [r.last_seq for r in updates if r.last_seq < 1] == []
    finally:
        reader.close()


# ------------------------------------------------- Client, over AsyncClient


def loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "statepipe-client"}


def test_client_has_every_async_client_call_with_its_signature_and_docs() -> None:
    calls = {
        name
        for name, member in vars(AsyncClient).items()
        if not name.startswith("_") and inspect.isfunction(member) and name != "close"
    }
    assert calls >= {"get_run", "watch", "watch_runs", "wait", "list_events"}
    for name in calls:
        mine, theirs = getattr(Client, name), getattr(AsyncClient, name)
        assert mine.__doc__ == theirs.__doc__, name
        assert not inspect.iscoroutinefunction(mine), name
        expected = inspect.signature(theirs)
        if not inspect.iscoroutinefunction(theirs):  # opens a stream
            expected = expected.replace(
                return_annotation=expected.return_annotation.replace("AsyncStream[", "Stream[")
            )
        assert inspect.signature(mine) == expected, name
    assert typing.get_type_hints(Client.watch)["return"] == Stream[Event]
    assert typing.get_type_hints(Client.get_run) == {"run_id": str, "return": Run}
    assert Client.watch_runs.__qualname__ == "Client.watch_runs"


def test_client_runs_its_calls_on_one_thread_it_starts_late_and_stops(server: Any) -> None:
    before = loop_threads()
    client = Client(server.address, timeout=5)
    assert (repr(client), client.address, client.timeout) == (
        f"Client({server.address!r})",
        server.address,
        5,
    )
    assert loop_threads() == before  # no thread until the first call
    with ThreadPoolExecutor(8) as pool:  # calls from many threads share it
        assert list(pool.map(Client.list_runs, [client] * 32)) == [[]] * 32
    (thread,) = loop_threads() - before
    client.close()
    assert not thread.is_alive()
    client.close()  # again: nothing to do

    assert client.list_runs() == []  # a call after close connects again
    (again,) = loop_threads() - before
    del client  # never closed: collecting it stops its thread
    gc.collect()
    again.join(5)
    assert not again.is_alive()


async def test_client_blocks_inside_a_running_event_loop_but_works(server: Any) -> None:
    async def beat() -> None:
        await asyncio.sleep(0)

    with Client(server.address) as client:
        run_id = client.start_run(OK)  # blocks this loop, as any blocking call would
        assert client.wait(run_id, timeout=30).status == "SUCCEEDED"
        assert [e.seq for e in client.watch(run_id)][-1] == client.get_run(run_id).last_seq
        await beat()  # the test's loop is fine afterwards


def test_a_collected_stream_cancels_its_call(client: Client) -> None:
    slow = client.start_run(SLOW)
    stream = client.watch(slow, follow_forever=True)
    assert next(stream).seq == 1
    call = stream._source._call
    assert not call.done()
    del stream
    gc.collect()
    wait_for(call.cancelled)
    assert client.cancel(slow).status == "CANCELLED"  # the client keeps serving


def test_closing_the_client_ends_streams_read_on_other_threads(server: Any) -> None:
    client = Client(server.address)
    slow = client.start_run(SLOW)
    events = Reader(client.watch(slow, follow_forever=True))
    assert events.next().seq == 1
    client.close()
    with pytest.raises(StatepipeError) as info:
        events.until(lambda _: False)  # what had come, then the error
    assert info.value.code is grpc.StatusCode.CANCELLED
    events.thread.join(5)
    with Client(server.address) as other:
        assert other.cancel(slow).status == "CANCELLED"


def test_ctrl_c_in_a_blocking_call_cancels_it(client: Client) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C reaches the main thread only")
    slow = client.start_run(SLOW)
    main = threading.main_thread().ident
    started = time.monotonic()
    interrupt = threading.Timer(0.3, signal.pthread_kill, [main, signal.SIGINT])
    interrupt.start()
    with pytest.raises(KeyboardInterrupt):
        client.wait(slow, timeout=10)
    interrupt.join()
    assert time.monotonic() - started < 3
    assert client.get_run(slow).status == "RUNNING"  # the client still works
    assert client.cancel(slow).status == "CANCELLED"


# -------------------------------------------------------------- AsyncClient


async def test_async_workflows_runs_and_events(server: Any) -> None:
    async with AsyncClient(server.address, metadata=[("authorization", "Bearer t")]) as client:
        assert repr(client) == f"AsyncClient({server.address!r})"
        spec = {"name": "w", "version": 2, "nodes": [py("a", "run_input")]}
        workflow = await client.register_workflow(spec)
        assert (workflow.name, workflow.version, workflow.created) == ("w", "2", True)
        assert (await client.register_workflow(spec)).created is False
        await client.register_workflow({**spec, "version": "3"})
        assert (await client.get_workflow("w")).version == "3"
        assert (await client.get_workflow("w", version="2")) == Workflow(workflow.proto)
        with pytest.raises(StatepipeError) as missing:
            await client.get_workflow("nope", version="3")
        assert str(missing.value) == "NOT_FOUND: version '3' of workflow 'nope' is not registered"
        for name in ("x1", "x2", "x3"):
            await client.register_workflow({"name": name, "nodes": [py("a", "echo")]})
        assert [w.name for w in await client.list_workflows(limit=None)] == [
            "w",
            "w",
            "x1",
            "x2",
            "x3",
        ]
        page, token = await client.list_workflows_page("x", limit=2)
        assert [w.name for w in page] == ["x1", "x2"] and token
        assert [w.name for w in await client.list_workflows(page_token=token)] == ["x3"]
        with pytest.raises(SpecError, match='unknown field "nodez"'):
            await client.register_workflow({"name": "w", "nodez": []})

        latest = await client.start_run("w", {"x": 1}, labels={"env": "prod"})
        pinned = await client.start_run("w", version="2", idempotency_key="k")
        assert await client.start_run("w", {"x": 9}, idempotency_key="k") == pinned
        inline = await client.start_run(
            {"name": "inline", "nodes": [py("a", "chatty", args={"tokens": 3})]}, [1, 2]
        )
        with pytest.raises(ValueError, match="version"):
            await client.start_run({"name": "inline"}, version="1")
        runs = {run_id: await async_finished(client, run_id) for run_id in (latest, pinned, inline)}
        assert all(run.status == "SUCCEEDED" for run in runs.values())
        assert (runs[latest].workflow_version, runs[latest].labels) == ("3", {"env": "prod"})
        assert runs[latest].node("a").output == {
            "input": {"x": 1},
            "attempt": 1,
            "node": "a",
            "run": latest,
        }
        assert (runs[pinned].workflow_version, runs[pinned].input) == ("2", None)
        assert runs[pinned].idempotency_key == "k"
        assert (runs[inline].input, runs[inline].output) == ([1, 2], {"a": "ok"})
        got = await client.get_run(inline)
        assert got == runs[inline] and list(got.to_dict()) == RUN_KEYS
        with pytest.raises(StatepipeError) as unknown:
            await client.get_run("missing")
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND

        newest_first = [inline, pinned, latest]
        assert [r.run_id for r in await client.list_runs(limit=None)] == newest_first
        assert [r.run_id for r in await client.list_runs(workflow="w")] == [pinned, latest]
        assert [r.run_id for r in await client.list_runs(labels={"env": "prod"})] == [latest]
        assert [r.run_id for r in await client.list_runs(text="inline")] == [inline]
        assert await client.list_runs(status="failed") == []
        created = (await client.get_run(pinned)).created_at
        assert [r.run_id for r in await client.list_runs(created_after=created)] == [inline, pinned]
        assert [r.run_id for r in await client.list_runs(created_before=created)] == [latest]
        ascending = await client.list_runs(order_by="created_at", status="succeeded")
        assert [r.run_id for r in ascending] == newest_first[::-1]
        page, token = await client.list_runs_page(limit=2)
        assert [r.run_id for r in page] == newest_first[:2] and token
        assert [r.run_id for r in await client.list_runs(page_token=token)] == [latest]
        with pytest.raises(ValueError, match="unknown run status"):
            await client.list_runs(status="runing")

        events = await client.list_events(inline, limit=None)
        assert [e.seq for e in events] == list(range(1, runs[inline].last_seq + 1))
        assert [e.seq for e in await client.list_events(inline, after_seq=2, limit=3)] == [3, 4, 5]
        tokens = await client.list_events(inline, kinds="token", node_id="a")
        assert [e.message for e in tokens] == ["t0 ", "t1 ", "t2 "]
        assert list(tokens[0].to_dict()) == EVENT_KEYS


async def test_async_controls(server: Any) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(two_steps("steps", 0.4))
        deadline = time.monotonic() + 10
        while (await client.get_run(run_id)).node("a").status != "RUNNING":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await client.pause(run_id)).status == "PAUSED"
        with pytest.raises(StatepipeError) as twice:
            await client.pause(run_id)
        assert twice.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "it is PAUSED" in twice.value.message
        assert (await client.resume(run_id)).status == "RUNNING"
        assert (await client.interrupt(run_id)).status == "INTERRUPTED"
        assert (await client.resume(run_id)).status == "RUNNING"
        assert (await client.cancel(run_id, reason="enough")).status == "CANCELLED"
        assert (await client.wait(run_id, timeout=10)).status == "CANCELLED"
        statuses = [e.status async for e in client.watch(run_id, kinds="run_status")]
        assert statuses == ["RUNNING", "PAUSED", "RUNNING", "INTERRUPTED", "RUNNING", "CANCELLED"]

        flaky = await client.start_run({"name": "flaky", "nodes": [py("a", "fail_until")]})
        assert (await client.wait(flaky, timeout=30)).status == "FAILED"
        assert (await client.retry_node(flaky, "a")).status == "RUNNING"
        run = await client.wait(flaky, timeout=30)
        assert (run.status, run.node("a").attempt) == ("SUCCEEDED", 2)
        with pytest.raises(StatepipeError) as missing:
            await client.cancel("missing")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND


async def test_async_watch_and_wait(server: Any) -> None:
    async with AsyncClient(server.address) as client:
        run_id = await client.start_run(
            {"name": "chat", "nodes": [py("a", "chatty", args={"tokens": 3})]}
        )
        live = [e async for e in client.watch(run_id)]  # follows the run until it is final
        assert all(isinstance(e, Event) for e in live)
        assert [e.seq for e in live] == list(range(1, len(live) + 1))
        assert (live[-1].kind, live[-1].status) == ("run_status", "SUCCEEDED")
        assert [e async for e in client.watch(run_id)] == live
        assert [e.message async for e in client.watch(run_id, kinds="token")] == [
            "t0 ",
            "t1 ",
            "t2 ",
        ]
        tail = [e.seq async for e in client.watch(run_id, after_seq=live[-2].seq)]
        assert tail == [live[-1].seq]
        done = await client.wait(run_id, timeout=0)  # already final
        assert done.status == "SUCCEEDED" and done.last_seq == live[-1].seq
        with pytest.raises(StatepipeError) as missing:
            [e async for e in client.watch("missing")]
        assert str(missing.value) == "NOT_FOUND: run 'missing' not found"

        slow = await client.start_run(SLOW)
        stream = client.watch(slow, follow_forever=True)
        async with asyncio.timeout(10):
            async for event in stream:
                assert (event.seq, event.kind) == (1, "run_status")
                break
        await stream.aclose()
        assert [e async for e in stream] == []
        # The server keeps serving; a new watch works.
        async with client.watch(slow, after_seq=1, kinds="node_status") as again:
            async with asyncio.timeout(10):
                event = await anext(again)
        assert (event.node_id, event.seq > 1) == ("s", True)

        started = time.monotonic()
        with pytest.raises(StatepipeError) as timeout:
            await client.wait(slow, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 3
        assert str(timeout.value) == f"DEADLINE_EXCEEDED: run {slow} is still RUNNING after 0.5s"
        assert (await client.cancel(slow)).status == "CANCELLED"
        run = await client.wait(slow, timeout=10)
        assert (run.status, run.node("s").status) == ("CANCELLED", "CANCELLED")

        two = two_steps("two", 0.3)
        started = time.monotonic()
        run = await client.wait(await client.start_run(two), timeout=10)
        assert time.monotonic() - started >= 0.3
        assert [n.status for n in run.nodes] == ["SUCCEEDED", "SUCCEEDED"]


async def test_async_watch_runs(server: Any) -> None:
    async with AsyncClient(server.address) as client:
        done = await client.start_run({"name": "w1", "nodes": [py("a", "echo")]})
        failed = await client.start_run({"name": "w2", "nodes": [py("a", "boom")]})
        for run_id in (done, failed):
            await async_finished(client, run_id)

        everything = client.watch_runs(snapshot_size=5)
        succeeded = client.watch_runs(status="succeeded", workflow="w1")
        newest = client.watch_runs(snapshot_size=1)
        async with asyncio.timeout(10):
            snapshot = []
            async for run, is_snapshot in everything:
                snapshot.append((run.run_id, run.status, is_snapshot, run.node_counts))
                if len(snapshot) == 2:
                    break
            assert snapshot == [
                (failed, "FAILED", True, {"FAILED": 1}),
                (done, "SUCCEEDED", True, {"SUCCEEDED": 1}),
            ]
            run, is_snapshot = await anext(succeeded)
            assert (run.run_id, is_snapshot) == (done, True)
            run, is_snapshot = await anext(newest)
            assert (run.run_id, is_snapshot) == (failed, True)

            new = await client.start_run(two_steps("w1", 0.3))
            mine: list[Run] = []
            async for run, is_snapshot in everything:
                assert not is_snapshot
                if run.run_id == new:
                    mine.append(run)
                    if run.is_final:
                        break
            assert mine[0].status == "RUNNING" and mine[-1].status == "SUCCEEDED"
            assert {r.status for r in mine} == {"RUNNING", "SUCCEEDED"}
            assert all(sum(r.node_counts.values()) == 2 and r.nodes == [] for r in mine)
            assert mine[-1].node_counts == {"SUCCEEDED": 2}

            # The status filter hid every RUNNING summary: SUCCEEDED comes first.
            run, is_snapshot = await anext(succeeded)
            assert (run.run_id, run.status, is_snapshot) == (new, "SUCCEEDED", False)
            assert run.node_counts == {"SUCCEEDED": 2}
            run, is_snapshot = await anext(newest)  # snapshot_size only limits the snapshot
            assert (run.run_id, run.status, is_snapshot) == (new, "RUNNING", False)

        for stream in (everything, succeeded, newest):
            await stream.aclose()
            assert [item async for item in stream] == []
        # A new stream after the others were closed; leaving ``async with`` closes it.
        async with client.watch_runs(workflow="w1", snapshot_size=5) as w1:
            async with asyncio.timeout(10):
                assert [(r.run_id, s) for r, s in [await anext(w1), await anext(w1)]] == [
                    (new, True),
                    (done, True),
                ]
        assert [item async for item in w1] == []
