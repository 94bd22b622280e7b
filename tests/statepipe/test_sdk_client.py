"""Tests for ``statepipe.client`` against a scripted in-process gRPC server (not the control plane).

The fake servicer only plays back canned answers and records requests; it checks
what the clients send, how they page, wrap errors, cancel streams and wait.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from statepipe import AsyncClient, Client, Event, Run, SpecError, StatepipeError
from statepipe._convert import json_to_value
from statepipe.client import CHANNEL_OPTIONS, Workflow
from statepipe.v1 import statepipe_pb2 as pb
from statepipe.v1 import statepipe_pb2_grpc as pb_grpc


class FakeStatePipe(pb_grpc.StatePipeServicer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self.runs: dict[str, pb.Run] = {}
        self.stream_cancelled = threading.Event()
        self.finish_after: float | None = None  # WatchRun(follow_forever) ends the run after this

    def _record(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append((name, request))
        self.metadata.append(dict(context.invocation_metadata()))

    def RegisterWorkflow(self, request, context):
        self._record("RegisterWorkflow", request, context)
        workflow = pb.Workflow(spec=request.spec)
        workflow.created_at.FromSeconds(1_795_482_123)
        return pb.RegisterWorkflowResponse(workflow=workflow, created=request.spec.name != "old")

    def GetWorkflow(self, request, context):
        self._record("GetWorkflow", request, context)
        context.abort(grpc.StatusCode.NOT_FOUND, f"workflow {request.name} not found")

    def ListWorkflows(self, request, context):
        self._record("ListWorkflows", request, context)
        start = int(request.page_token or 0)
        names = [f"w{i}" for i in range(5)]
        page = names[start : start + min(request.page_size, 2)]
        token = str(start + len(page)) if start + len(page) < len(names) else ""
        return pb.ListWorkflowsResponse(
            workflows=[pb.Workflow(spec=pb.WorkflowSpec(name=n)) for n in page],
            next_page_token=token,
        )

    def StartRun(self, request, context):
        self._record("StartRun", request, context)
        return pb.StartRunResponse(run=pb.Run(run_id="r-1"), created=True)

    def GetRun(self, request, context):
        self._record("GetRun", request, context)
        if request.run_id not in self.runs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id} not found")
        return self.runs[request.run_id]

    def ListRuns(self, request, context):
        self._record("ListRuns", request, context)
        start = int(request.page_token or 0)
        ids = [f"r-{i}" for i in range(7)]
        page = ids[start : start + min(request.page_size, 3)]
        token = str(start + len(page)) if start + len(page) < len(ids) else ""
        return pb.ListRunsResponse(runs=[pb.Run(run_id=i) for i in page], next_page_token=token)

    def PauseRun(self, request, context):
        self._record("PauseRun", request, context)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "run r-1 is SUCCEEDED")

    def CancelRun(self, request, context):
        self._record("CancelRun", request, context)
        return pb.RunControlResponse(run=pb.Run(run_id=request.run_id, status=pb.RUN_CANCELLED))

    def RetryNode(self, request, context):
        self._record("RetryNode", request, context)
        return pb.RunControlResponse(run=pb.Run(run_id=request.run_id, status=pb.RUN_RUNNING))

    def WatchRun(self, request, context):
        self._record("WatchRun", request, context)
        context.add_callback(self.stream_cancelled.set)
        seq = request.after_seq
        if not request.follow_forever:
            for kind in ("run_status", "log", "run_status"):
                seq += 1
                yield pb.Event(run_id=request.run_id, seq=seq, kind=kind, status="SUCCEEDED")
            return
        if self.finish_after is not None:
            time.sleep(self.finish_after)
            run = self.runs[request.run_id]
            run.status = pb.RUN_SUCCEEDED
            run.last_seq = seq + 1
            yield pb.Event(
                run_id=request.run_id, seq=seq + 1, kind="run_status", status="SUCCEEDED"
            )
        while context.is_active():  # follow forever: until the client goes away
            time.sleep(0.01)

    def ListEvents(self, request, context):
        self._record("ListEvents", request, context)
        last = 25
        first = request.after_seq + 1
        seqs = list(range(first, min(first + min(request.page_size, 10), last + 1)))
        events = [pb.Event(run_id=request.run_id, seq=s, kind="log") for s in seqs]
        return pb.ListEventsResponse(events=events, next_after_seq=seqs[-1] if seqs else 0)

    def WatchRuns(self, request, context):
        self._record("WatchRuns", request, context)
        context.add_callback(self.stream_cancelled.set)
        yield pb.RunSummaryUpdate(run=pb.Run(run_id="r-1"), snapshot=True)
        yield pb.RunSummaryUpdate(run=pb.Run(run_id="r-2", status=pb.RUN_RUNNING), snapshot=False)
        while context.is_active():
            time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[tuple[FakeStatePipe, str]]:
    servicer = FakeStatePipe()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_StatePipeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def requests_named(servicer: FakeStatePipe, name: str) -> list[Any]:
    return [request for n, request in servicer.requests if n == name]


def test_channel_options() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] >= 300_000  # what a default server accepts


def test_register_and_get_workflow(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    with Client(address, metadata=[("authorization", "Bearer t")]) as client:
        workflow = client.register_workflow(
            {"name": "w", "version": 2, "nodes": [{"id": "a", "kind": "python"}]}
        )
        assert isinstance(workflow, Workflow)
        assert (workflow.name, workflow.version, workflow.created) == ("w", "2", True)
        assert workflow.to_dict()["created_at"] == "2026-11-24T01:02:03.000Z"
        assert workflow.created_at == datetime.datetime(2026, 11, 24, 1, 2, 3, tzinfo=datetime.UTC)
        assert client.register_workflow({"name": "old"}).created is False
        with pytest.raises(SpecError, match='unknown field "nodez"'):
            client.register_workflow({"name": "w", "nodez": []})
        with pytest.raises(StatepipeError) as info:
            client.get_workflow("nope", version="3")
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert str(info.value) == "NOT_FOUND: workflow nope not found"
    assert requests_named(servicer, "GetWorkflow")[0].version == "3"
    assert servicer.metadata[0]["authorization"] == "Bearer t"
    assert servicer.metadata[0]["user-agent"].startswith("statepipe-python/")


def test_list_workflows_follows_pages(fake: tuple[FakeStatePipe, str]) -> None:
    _, address = fake
    with Client(address) as client:
        assert [w.name for w in client.list_workflows(limit=None)] == [f"w{i}" for i in range(5)]
        assert [w.name for w in client.list_workflows(limit=3)] == ["w0", "w1", "w2"]
        page, token = client.list_workflows_page(limit=2, page_token="4")
        assert ([w.name for w in page], token) == (["w4"], None)


def test_start_run(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    with Client(address) as client:
        assert client.start_run("summarize", {"url": "u"}, version="3", labels={"a": "b"}) == "r-1"
        client.start_run({"name": "inline", "nodes": [{"id": "a", "kind": "python"}]}, [1, 2])
        client.start_run("plain", idempotency_key="k")
        with pytest.raises(ValueError, match="version"):
            client.start_run({"name": "inline"}, version="1")
        with pytest.raises(SpecError, match=r"^input\.at: "):
            client.start_run("w", {"at": datetime.datetime.now()})
    by_ref, inline, plain = requests_named(servicer, "StartRun")
    assert by_ref.WhichOneof("workflow") == "ref"
    assert (by_ref.ref.name, by_ref.ref.version) == ("summarize", "3")
    assert by_ref.input == json_to_value({"url": "u"})
    assert dict(by_ref.labels) == {"a": "b"}
    assert inline.WhichOneof("workflow") == "spec"
    assert inline.spec.name == "inline"
    assert not plain.HasField("input")
    assert plain.idempotency_key == "k"


def test_get_run_wrapper(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    run = pb.Run(run_id="r-9", workflow_name="w", workflow_version="1", status=pb.RUN_FAILED)
    run.output.CopyFrom(json_to_value({"n": 1}))
    run.nodes.add(node_id="a", kind="python", status=pb.NODE_FAILED, error="boom", after=["z"])
    run.started_at.FromSeconds(1_795_482_123)
    servicer.runs["r-9"] = run
    with Client(address) as client:
        got = client.get_run("r-9")
        with pytest.raises(StatepipeError) as info:
            client.get_run("missing")
    assert isinstance(got, Run)
    assert got.proto == run
    assert (got.run_id, got.status, got.is_final, got.output) == ("r-9", "FAILED", True, {"n": 1})
    assert got.started_at == datetime.datetime(2026, 11, 24, 1, 2, 3, tzinfo=datetime.UTC)
    assert got.finished_at is None
    assert got.input is None
    assert [(n.node_id, n.status, n.error, n.after) for n in got.nodes] == [
        ("a", "FAILED", "boom", ["z"])
    ]
    assert got.node("a").to_dict()["status"] == "FAILED"
    with pytest.raises(KeyError):
        got.node("b")
    assert got.to_dict()["status"] == "FAILED"
    assert "r-9" in repr(got)
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_list_runs_filters_and_pages(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    after = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    with Client(address) as client:
        runs = client.list_runs(
            status=["running", "RUN_FAILED"],
            workflow="w",
            labels={"env": "prod"},
            text="boom",
            created_after=after,
            order_by="-updated_at",
            limit=5,
        )
        assert [r.run_id for r in runs] == ["r-0", "r-1", "r-2", "r-3", "r-4"]
        assert len(client.list_runs(limit=None)) == 7
        page, token = client.list_runs_page(status="paused", limit=3)
        assert (len(page), token) == (3, "3")
        with pytest.raises(ValueError, match="unknown run status"):
            client.list_runs(status="runing")
        with pytest.raises(ValueError, match="limit"):
            client.list_runs(limit=0)
    first = requests_named(servicer, "ListRuns")[0]
    assert list(first.statuses) == [pb.RUN_RUNNING, pb.RUN_FAILED]
    assert first.workflow_name == "w"
    assert dict(first.labels) == {"env": "prod"}
    assert first.text == "boom"
    assert first.created_after.ToDatetime(tzinfo=datetime.UTC) == after
    assert not first.HasField("created_before")
    assert first.order_by == "-updated_at"
    assert first.page_size == 5


def test_controls(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    with Client(address) as client:
        assert client.cancel("r-1", reason="no longer needed").status == "CANCELLED"
        assert client.retry_node("r-1", "a").status == "RUNNING"
        with pytest.raises(StatepipeError) as info:
            client.pause("r-1")
    assert requests_named(servicer, "CancelRun")[0].reason == "no longer needed"
    assert requests_named(servicer, "RetryNode")[0].node_id == "a"
    assert str(info.value) == "FAILED_PRECONDITION: run r-1 is SUCCEEDED"


def test_watch_and_close_cancels(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    with Client(address) as client:
        events = list(client.watch("r-1", after_seq=4, kinds="log"))
        assert [e.seq for e in events] == [5, 6, 7]
        assert all(isinstance(e, Event) for e in events)
        assert events[0].to_dict()["status"] == "SUCCEEDED"
        request = requests_named(servicer, "WatchRun")[0]
        assert (request.after_seq, list(request.kinds), request.follow_forever) == (
            4,
            ["log"],
            False,
        )

        stream = client.watch_runs(status="running", snapshot_size=10)
        run, snapshot = next(stream)
        assert (run.run_id, snapshot) == ("r-1", True)
        run, snapshot = next(stream)
        assert (run.run_id, run.status, snapshot) == ("r-2", "RUNNING", False)
        stream.close()
        assert servicer.stream_cancelled.wait(5)
        assert list(stream) == []


def test_list_events_pages(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    with Client(address) as client:
        assert [e.seq for e in client.list_events("r-1", limit=None)] == list(range(1, 26))
        assert [e.seq for e in client.list_events("r-1", after_seq=3, limit=12)] == list(
            range(4, 16)
        )
        client.list_events("r-1", kinds=["token"], node_id="a", limit=1)
    last = requests_named(servicer, "ListEvents")[-1]
    assert (list(last.kinds), last.node_id, last.page_size) == (["token"], "a", 1)


def test_wait_follows_until_final(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    servicer.runs["r-1"] = pb.Run(run_id="r-1", status=pb.RUN_RUNNING, last_seq=7)
    servicer.finish_after = 0.2
    with Client(address) as client:
        run = client.wait("r-1", timeout=10)
    assert run.status == "SUCCEEDED"
    request = requests_named(servicer, "WatchRun")[0]
    assert (request.after_seq, list(request.kinds), request.follow_forever) == (
        7,
        ["run_status"],
        True,
    )
    assert servicer.stream_cancelled.wait(5)


def test_wait_times_out(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    servicer.runs["r-1"] = pb.Run(run_id="r-1", status=pb.RUN_PAUSED)
    with Client(address) as client, pytest.raises(StatepipeError) as info:
        client.wait("r-1", timeout=0.3)
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "PAUSED" in info.value.message


def test_wait_returns_a_final_run_at_once(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    servicer.runs["r-1"] = pb.Run(run_id="r-1", status=pb.RUN_CANCELLED)
    with Client(address) as client:
        assert client.wait("r-1").status == "CANCELLED"
    assert requests_named(servicer, "WatchRun") == []


async def test_async_client(fake: tuple[FakeStatePipe, str]) -> None:
    servicer, address = fake
    servicer.runs["r-1"] = pb.Run(run_id="r-1", status=pb.RUN_RUNNING)
    servicer.finish_after = 0.1
    async with AsyncClient(address) as client:
        assert (await client.register_workflow({"name": "w"})).created is True
        assert await client.start_run("w", {"x": 1}) == "r-1"
        assert len(await client.list_runs(limit=None)) == 7
        assert len(await client.list_workflows(limit=None)) == 5
        assert len(await client.list_events("r-1", limit=None)) == 25
        assert (await client.cancel("r-1")).status == "CANCELLED"
        with pytest.raises(StatepipeError) as info:
            await client.pause("r-1")
        assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert [e.seq async for e in client.watch("r-1")] == [1, 2, 3]
        assert (await client.wait("r-1", timeout=10)).status == "SUCCEEDED"
        servicer.stream_cancelled.clear()
        stream = client.watch_runs()
        async for run, snapshot in stream:
            assert (run.run_id, snapshot) == ("r-1", True)
            break
        await stream.aclose()
        assert servicer.stream_cancelled.wait(5)
        assert [item async for item in stream] == []
