"""Stored rows to API messages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from control_plane.store import NodeRow, RunRow
from statepipe_api.convert import json_to_value, struct_to_python, value_to_python
from statepipe_api.lifecycle import NODE_STATUSES, RUN_STATUSES
from statepipe_api.v1 import statepipe_pb2 as pb

RUN_STATUS = {name: pb.RunStatus.Value(f"RUN_{name}") for name in RUN_STATUSES}
RUN_STATUS_NAME = {v: k for k, v in RUN_STATUS.items()}
NODE_STATUS = {name: pb.NodeStatus.Value(f"NODE_{name}") for name in NODE_STATUSES}


def from_struct(message: struct_pb2.Struct | struct_pb2.Value) -> Any:
    """A Struct or Value as plain JSON (whole numbers as ints)."""
    if isinstance(message, struct_pb2.Struct):
        return struct_to_python(message)
    return value_to_python(message)


def set_value(target: struct_pb2.Value, value: Any) -> None:
    if value is not None:
        target.CopyFrom(json_to_value(value))


def set_time(target: timestamp_pb2.Timestamp, value: dt.datetime | None) -> None:
    if value is not None:
        # Timestamp.FromDatetime is slow (timetuple, calendar); this is exact to the µs.
        delta = value - _EPOCH
        target.seconds = delta.days * 86_400 + delta.seconds
        target.nanos = delta.microseconds * 1000


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def run_to_proto(run: RunRow, nodes: list[NodeRow] | None = None) -> pb.Run:
    msg = pb.Run(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=RUN_STATUS[run.status],
        error=run.error,
        labels=run.labels,
        idempotency_key=run.idempotency_key or "",
        last_seq=run.last_seq,
        node_counts=run.node_counts,
        parent_run_id=run.parent_run_id or "",
        parent_node_id=run.parent_node_id or "",
    )
    set_value(msg.input, run.input)
    set_value(msg.output, run.output)
    set_time(msg.created_at, run.created_at)
    set_time(msg.started_at, run.started_at)
    set_time(msg.finished_at, run.finished_at)
    set_time(msg.updated_at, run.updated_at)
    if run.usage:
        msg.usage.update(run.usage)
    for node in nodes or ():
        msg.nodes.append(node_to_proto(node))
    return msg


def node_to_proto(node: NodeRow, after: list[str] | None = None) -> pb.NodeState:
    msg = pb.NodeState(
        node_id=node.node_id,
        kind=node.kind,
        status=NODE_STATUS[node.status],
        attempt=node.attempt,
        error=node.error,
        after=after or [],
        traceback=node.traceback,
    )
    set_value(msg.input, node.input)
    set_value(msg.output, node.output)
    if node.usage:
        msg.usage.update(node.usage)
    set_time(msg.queued_at, node.queued_at)
    set_time(msg.started_at, node.started_at)
    set_time(msg.finished_at, node.finished_at)
    return msg
