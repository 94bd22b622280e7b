"""Conversions between statepipe's protobuf messages and plain Python/JSON data.

This module is the single place where the JSON shapes of statepipe objects are
defined, so that the CLI (``--json``), the Python client and the console all
show the same thing (docs/json-shapes.md describes them):

* :func:`spec_to_proto` / :func:`spec_to_dict` / :func:`load_spec_file`: a
  ``WorkflowSpec`` written as JSON or YAML, with errors that name the offending
  path (``nodes[2].retry.max_attempts: expected an integer, got "three"``).
* :func:`run_to_dict`, :func:`event_to_dict`, :func:`workflow_to_dict`: the
  stable JSON shapes of a run, an event and a registered workflow.
* :func:`status_name`, :func:`parse_run_status`, :func:`parse_node_status`:
  status enums as plain names ("RUNNING") and back.

It imports protobuf but not grpc, so it is cheap enough for any caller.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from statepipe_api.lifecycle import FINAL_RUN
from statepipe_api.v1 import statepipe_pb2 as pb

__all__ = [
    "FINAL_RUN_STATUSES",
    "MAX_JSON_DEPTH",
    "SpecError",
    "event_to_dict",
    "format_timestamp",
    "json_depth_exceeds",
    "json_to_value",
    "load_spec_file",
    "node_to_dict",
    "parse_node_status",
    "parse_run_status",
    "run_to_dict",
    "spec_to_dict",
    "spec_to_proto",
    "status_name",
    "struct_to_python",
    "timestamp_to_datetime",
    "value_to_python",
    "workflow_to_dict",
]

#: Run statuses after which nothing more happens on its own (statepipe_api.lifecycle).
FINAL_RUN_STATUSES: frozenset[str] = FINAL_RUN


#: The deepest nesting of objects and arrays a JSON value (a run's input, a
#: node's output, an event's data) may have. Protobuf's decoders give up at
#: 100 levels of messages, an object level costs three (Value, Struct and the
#: map entry) and the messages around a value (Run, NodeState, ...) take some
#: too: a node output 32 objects deep already makes its run unreadable.
MAX_JSON_DEPTH = 24


def resolve_local_ref(root: Any, ref: str) -> Any:
    """What a local JSON Schema ``$ref`` ("#/$defs/x", RFC 6901 escapes) points to.

    Raises:
        LookupError: The reference is not local or points to nothing.
    """
    if not ref.startswith("#"):
        raise LookupError(f"$ref {ref!r} is not local")
    target: Any = root
    for part in filter(None, ref[1:].split("/")):
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            raise LookupError(f"$ref {ref!r} points to nothing")
    return target


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests objects and arrays more than `limit` deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return False


# -------------------------------------------------------------------- errors


class SpecError(ValueError):
    """A workflow spec (or spec file) that cannot be turned into a ``WorkflowSpec``.

    ``str(err)`` is ``"<path>: <problem>"``, e.g.
    ``nodes[0]: unknown field "afer" (did you mean "after"?)``.

    Attributes:
        path: Where the problem is: a field path such as ``nodes[2].retry``, a
            file position such as ``flow.yaml:3:7``, or ``""`` for the spec as a whole.
        problem: What is wrong there.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


# ------------------------------------------------------------------ statuses

_STATUS_ENUMS = {
    "run": (pb.RunStatus, "RUN_"),
    "node": (pb.NodeStatus, "NODE_"),
}


def status_name(value: int, kind: Literal["run", "node"] = "run") -> str:
    """The plain name of a ``RunStatus`` or ``NodeStatus`` value.

    Args:
        value: The enum value, as found on ``Run.status`` or ``NodeState.status``.
        kind: ``"run"`` for ``RunStatus`` (default), ``"node"`` for ``NodeStatus``;
            the two enums share numbers, so the value alone is ambiguous.

    Returns:
        The name without its prefix (``"RUNNING"``, ``"RETRY_WAIT"``);
        ``"UNSPECIFIED"`` for 0 and ``"UNKNOWN_<n>"`` for a value this client
        does not know (a newer server).
    """
    enum, prefix = _status_enum(kind)
    if value == 0:
        return "UNSPECIFIED"
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix(prefix)


def parse_run_status(name: str | int) -> int:
    """The ``RunStatus`` value for a status name.

    Args:
        name: ``"running"``, ``"RUNNING"`` or ``"RUN_RUNNING"`` (case-insensitive;
            ``-`` and spaces count as ``_``), or a valid enum value.

    Returns:
        The ``pb.RunStatus`` value.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    return _parse_status(name, "run")


def parse_node_status(name: str | int) -> int:
    """The ``NodeStatus`` value for a status name (``"retry_wait"``, ``"NODE_QUEUED"``, ...).

    Args:
        name: A node status name in any of the forms :func:`parse_run_status`
            accepts, or a valid enum value.

    Returns:
        The ``pb.NodeStatus`` value.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    return _parse_status(name, "node")


def _status_enum(kind: str) -> tuple[Any, str]:
    try:
        return _STATUS_ENUMS[kind]
    except KeyError:
        raise ValueError(f'kind must be "run" or "node", got {kind!r}') from None


def _parse_status(name: str | int, kind: str) -> int:
    enum, prefix = _status_enum(kind)
    valid = [n.removeprefix(prefix) for n, v in enum.items() if v != 0]
    if isinstance(name, int) and not isinstance(name, bool):
        if name != 0 and name in enum.values():
            return name
    elif isinstance(name, str):
        key = re.sub(r"[\s-]+", "_", name.strip()).upper().removeprefix(prefix)
        if key in valid:
            return int(enum.Value(prefix + key))
    raise ValueError(f"unknown {kind} status {_describe(name)}; valid: {', '.join(valid)}")


def _plain_status(name: str) -> str:
    """Strips a RUN_/NODE_ prefix a server may have left on a status string."""
    for prefix in ("RUN_", "NODE_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# ---------------------------------------------------- JSON values and times


def value_to_python(value: struct_pb2.Value | None) -> Any:
    """A ``google.protobuf.Value`` as a plain JSON value.

    Numbers with an integral value (up to 2**53) come back as ``int``; an unset
    Value, and ``None``, give ``None``.

    Args:
        value: The Value message, or ``None``.

    Returns:
        ``None``, ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``.
    """
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    return [value_to_python(item) for item in value.list_value.values]


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a plain ``dict`` (see :func:`value_to_python`)."""
    return {key: value_to_python(item) for key, item in struct.fields.items()}


def _number(number: float) -> int | float:
    if number.is_integer() and abs(number) <= 2**53:
        return int(number)
    return number


def json_to_value(data: Any, path: str = "") -> struct_pb2.Value:
    """A plain JSON-compatible Python value as a ``google.protobuf.Value``.

    Args:
        data: ``None``, ``bool``, ``int``, ``float``, ``str``, a list/tuple or a
            mapping with string keys, nested freely.
        path: Name of the value in error messages (e.g. ``"input"``).

    Returns:
        The Value message.

    Raises:
        SpecError: Something that is not JSON (a ``datetime``, a NaN, a non-string key).
    """
    value = struct_pb2.Value()
    _fill_value(value, _check_json(data, path or "value"))
    return value


def _fill_value(out: struct_pb2.Value, data: Any) -> None:
    if data is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, int | float):
        out.number_value = data
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, dict):
        out.struct_value.SetInParent()  # an empty dict still selects struct_value
        fields = out.struct_value.fields
        for key, item in data.items():
            _fill_value(fields[key], item)
    else:
        out.list_value.SetInParent()
        for item in data:
            _fill_value(out.list_value.values.add(), item)


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp) -> _dt.datetime:
    """A Timestamp as an aware UTC ``datetime`` (microsecond precision)."""
    return _EPOCH + _dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def format_timestamp(ts: timestamp_pb2.Timestamp | None) -> str | None:
    """A Timestamp as RFC 3339 UTC with milliseconds: ``2026-11-24T01:02:03.456Z``.

    Always exactly three fractional digits (truncated, not rounded), so the
    strings sort in time order.

    Args:
        ts: The Timestamp, or ``None``.

    Returns:
        The string, or ``None`` for ``None``.
    """
    if ts is None:
        return None
    try:
        moment = _EPOCH + _dt.timedelta(seconds=ts.seconds)
    except OverflowError:  # outside datetime's years 1..9999
        return str(ts.ToJsonString())
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ts.nanos // 1_000_000:03d}Z"


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _ts(message: Message, field: str) -> str | None:
    return format_timestamp(getattr(message, field)) if message.HasField(field) else None


def _struct_or_none(message: Message, field: str) -> dict[str, Any] | None:
    return struct_to_python(getattr(message, field)) if message.HasField(field) else None


def _value_or_none(message: Message, field: str) -> Any:
    return value_to_python(getattr(message, field)) if message.HasField(field) else None


# ---------------------------------------------------------- run, event JSON


def run_to_dict(run: pb.Run) -> dict[str, Any]:
    """The JSON shape of a run (docs/json-shapes.md). Every key is always present.

    Args:
        run: The Run message.

    Returns:
        A dict with keys ``run_id, workflow_name, workflow_version, status, input,
        output, error, labels, idempotency_key, created_at, started_at,
        finished_at, updated_at, last_seq, node_counts, usage, parent_run_id,
        parent_node_id, nodes``; ``usage`` is the sum of the nodes' numeric
        usage (None when no node reported any, filled in listings too);
        ``parent_run_id`` and ``parent_node_id`` name the run and node that
        started a child run (None for a run a client started); ``nodes`` is a list of
        :func:`node_to_dict` dicts (empty in listings).
    """
    return {
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "workflow_version": run.workflow_version,
        "status": status_name(run.status, "run"),
        "input": _value_or_none(run, "input"),
        "output": _value_or_none(run, "output"),
        "error": run.error,
        "labels": dict(run.labels),
        "idempotency_key": run.idempotency_key,
        "created_at": _ts(run, "created_at"),
        "started_at": _ts(run, "started_at"),
        "finished_at": _ts(run, "finished_at"),
        "updated_at": _ts(run, "updated_at"),
        "last_seq": run.last_seq,
        "node_counts": {_plain_status(k): v for k, v in run.node_counts.items()},
        "usage": _struct_or_none(run, "usage"),
        "parent_run_id": run.parent_run_id or None,
        "parent_node_id": run.parent_node_id or None,
        "nodes": [node_to_dict(node) for node in run.nodes],
    }


def node_to_dict(node: pb.NodeState) -> dict[str, Any]:
    """The JSON shape of one node of a run. Every key is always present.

    Args:
        node: The NodeState message.

    Returns:
        A dict with keys ``node_id, kind, status, attempt, input, output, error,
        traceback, queued_at, started_at, finished_at, usage, after``.
    """
    return {
        "node_id": node.node_id,
        "kind": node.kind,
        "status": status_name(node.status, "node"),
        "attempt": node.attempt,
        "input": _value_or_none(node, "input"),
        "output": _value_or_none(node, "output"),
        "error": node.error,
        "traceback": node.traceback,
        "queued_at": _ts(node, "queued_at"),
        "started_at": _ts(node, "started_at"),
        "finished_at": _ts(node, "finished_at"),
        "usage": _struct_or_none(node, "usage"),
        "after": list(node.after),
    }


def event_to_dict(event: pb.Event) -> dict[str, Any]:
    """The JSON shape of an event (docs/json-shapes.md). Every key is always present.

    Args:
        event: The Event message.

    Returns:
        A dict with keys ``run_id, seq, ts, kind, node_id, attempt, status,
        message, level, data``.
    """
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "ts": _ts(event, "ts"),
        "kind": event.kind,
        "node_id": event.node_id,
        "attempt": event.attempt,
        "status": _plain_status(event.status),
        "message": event.message,
        "level": event.level,
        "data": _struct_or_none(event, "data"),
    }


def workflow_to_dict(workflow: pb.Workflow) -> dict[str, Any]:
    """The JSON shape of a registered workflow: ``{"spec": {...}, "created_at": ...}``.

    Args:
        workflow: The Workflow message.

    Returns:
        ``spec`` as :func:`spec_to_dict` gives it and ``created_at`` (RFC 3339 or None).
    """
    return {
        "spec": spec_to_dict(workflow.spec),
        "created_at": _ts(workflow, "created_at"),
    }


# --------------------------------------------------------- spec: proto -> dict


def spec_to_dict(spec: pb.WorkflowSpec) -> dict[str, Any]:
    """A WorkflowSpec as the dict :func:`spec_to_proto` accepts (the inverse).

    Proto field names; fields at their default (empty string, 0, false, empty
    list or map, unset message) are left out; 64-bit integers are ``int`` (not
    strings as in proto3 JSON); Struct fields are plain dicts.

    Args:
        spec: The WorkflowSpec message.

    Returns:
        A dict ready for ``json.dumps`` or ``yaml.safe_dump``.
    """
    return _message_to_dict(spec)


def _message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            if value:
                value_field = field.message_type.fields_by_name["value"]
                out[field.name] = {k: _field_value(v, value_field) for k, v in value.items()}
        elif field.is_repeated:
            if value:
                out[field.name] = [_field_value(v, field) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if message.HasField(field.name):
                out[field.name] = _field_value(value, field)
        elif value != field.default_value:
            out[field.name] = _field_value(value, field)
    return out


def _field_value(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            return struct_to_python(value)
        if name == "google.protobuf.Value":
            return value_to_python(value)
        if name == "google.protobuf.ListValue":
            return [value_to_python(v) for v in value.values]
        if name == "google.protobuf.Timestamp":
            return format_timestamp(value)
        return _message_to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float(value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


# --------------------------------------------------------- spec: dict -> proto


def spec_to_proto(spec: Mapping[str, Any] | pb.WorkflowSpec) -> pb.WorkflowSpec:
    """A WorkflowSpec from its JSON/YAML form, with errors a person can act on.

    Field names are the proto's (``timeout_ms``; the proto3 JSON names such as
    ``timeoutMs`` are accepted too). Beyond proto3 JSON, ``after`` may be a
    single string and ``version`` a number. Integers may be given as numbers
    with an integral value or as decimal strings (as proto3 JSON allows);
    ``null`` means "not set". DAG semantics (unknown deps, cycles, ...) are
    left to the server.

    Args:
        spec: The spec as a mapping, or a ``pb.WorkflowSpec`` (returned as is
            after the required-field checks).

    Returns:
        The WorkflowSpec message.

    Raises:
        SpecError: The first problem found, naming its path, e.g.
            ``nodes[2].retry.max_attempts: expected an integer, got "three"``,
            ``nodes[0]: unknown field "afer" (did you mean "after"?)``,
            ``name: required field is missing``.
    """
    if isinstance(spec, pb.WorkflowSpec):
        _check_required_proto(spec)
        return spec
    if not isinstance(spec, Mapping):
        raise SpecError("", f"a workflow spec must be a mapping, got {_describe(spec)}")
    normalized = _check_message(spec, pb.WorkflowSpec.DESCRIPTOR, "")
    _check_required(normalized)
    proto = pb.WorkflowSpec()
    try:
        json_format.ParseDict(normalized, proto, ignore_unknown_fields=False)
    except json_format.ParseError as err:  # not expected after the checks above
        raise SpecError("", _clean_parse_error(str(err))) from err
    return proto


def _check_required(spec: dict[str, Any]) -> None:
    _check_nonempty(spec, "name", "name")
    for index, node in enumerate(spec.get("nodes", ())):
        _check_nonempty(node, "id", f"nodes[{index}].id")
        _check_nonempty(node, "kind", f"nodes[{index}].kind")


def _check_nonempty(obj: Mapping[str, Any], key: str, path: str) -> None:
    if key not in obj:
        raise SpecError(path, "required field is missing")
    if not obj[key].strip():
        raise SpecError(path, "must not be empty")


def _check_required_proto(spec: pb.WorkflowSpec) -> None:
    if not spec.name.strip():
        raise SpecError("name", "required field is missing or empty")
    for index, node in enumerate(spec.nodes):
        if not node.id.strip():
            raise SpecError(f"nodes[{index}].id", "required field is missing or empty")
        if not node.kind.strip():
            raise SpecError(f"nodes[{index}].kind", "required field is missing or empty")


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT_TEXT = re.compile(r"\s*[-+]?\d+\s*\Z")
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
}
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _join(path: str, key: str) -> str:
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _describe(value: Any) -> str:
    """How a value appears in an error message: JSON for scalars, a kind otherwise."""
    if value is None or isinstance(value, bool | int | str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    article = "an" if type(value).__name__[:1].lower() in "aeiou" else "a"
    return f"{article} {type(value).__name__}"


def _suggest(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _check_message(obj: Any, desc: Descriptor, path: str) -> dict[str, Any]:
    """Checks a mapping against a message descriptor; returns a normalized copy."""
    if not isinstance(obj, Mapping):
        where = path or "workflow spec"
        raise SpecError(where, f"expected an object, got {_describe(obj)}")
    by_name: dict[str, FieldDescriptor] = {}
    for field in desc.fields:
        by_name[field.json_name] = field
        by_name[field.name] = field
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise SpecError(path, f"field names must be strings, got {_describe(key)}")
        field = by_name.get(key)
        if field is None:
            suggestion = _suggest(key, [f.name for f in desc.fields])
            raise SpecError(path, f'unknown field "{key}"{suggestion}')
        if field.name in given_as:
            first = given_as[field.name]
            raise SpecError(path, f'field "{field.name}" is given twice ("{first}" and "{key}")')
        given_as[field.name] = key
        if value is None:  # null: not set
            continue
        field_path = _join(path, field.name)
        value = _special_case(desc.full_name, field.name, value)
        out[field.name] = _check_field(value, field, field_path)
    return out


def _special_case(message: str, field: str, value: Any) -> Any:
    if message == "statepipe.v1.WorkflowSpec" and field == "version":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    if message == "statepipe.v1.NodeSpec" and field == "after" and isinstance(value, str):
        return [value]
    return value


def _check_field(value: Any, field: FieldDescriptor, path: str) -> Any:
    if _is_map(field):
        if not isinstance(value, Mapping):
            raise SpecError(path, f"expected an object, got {_describe(value)}")
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key_field.type == FieldDescriptor.TYPE_STRING and not isinstance(key, str):
                raise SpecError(path, f"keys must be strings, got {_describe(key)}")
            item_path = _join(path, str(key))
            if item is None:
                raise SpecError(item_path, f"expected {_expected(value_field)}, got null")
            out[key] = _check_singular(item, value_field, item_path)
        return out
    if field.is_repeated:
        if not isinstance(value, list | tuple):
            raise SpecError(path, f"expected a list, got {_describe(value)}")
        items = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if item is None:
                raise SpecError(item_path, f"expected {_expected(field)}, got null")
            items.append(_check_singular(item, field, item_path))
        return items
    return _check_singular(value, field, path)


def _expected(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return "an object"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "a string"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type in _INT_TYPES:
        return "an integer"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "one of " + ", ".join(v.name for v in field.enum_type.values)
    return "a number"


def _check_singular(value: Any, field: FieldDescriptor, path: str) -> Any:
    ftype = field.type
    if ftype == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            if not isinstance(value, Mapping):
                raise SpecError(path, f"expected an object, got {_describe(value)}")
            return _check_json(value, path)
        if name in ("google.protobuf.Value", "google.protobuf.ListValue"):
            return _check_json(value, path)
        if name == "google.protobuf.Timestamp":
            if isinstance(value, _dt.datetime):
                ts = timestamp_pb2.Timestamp()
                ts.FromDatetime(value)
                return ts.ToJsonString()
            if not isinstance(value, str):
                raise SpecError(path, f"expected an RFC 3339 time, got {_describe(value)}")
            return value
        return _check_message(value, field.message_type, path)
    if ftype == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise SpecError(path, f"expected a string, got {_describe(value)}")
        return value
    if ftype == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise SpecError(path, f"expected true or false, got {_describe(value)}")
        return value
    if ftype in _INT_TYPES:
        return _check_int(value, ftype, path)
    if ftype in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _check_float(value, path)
    if ftype == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if isinstance(value, str) and value in names:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value in field.enum_type.values_by_number:
                return value
        raise SpecError(path, f"expected one of {', '.join(names)}, got {_describe(value)}")
    if not isinstance(value, str):  # bytes: base64 text
        raise SpecError(path, f"expected a base64 string, got {_describe(value)}")
    return value


def _check_int(value: Any, ftype: int, path: str) -> int:
    low, high, what = _INT_TYPES[ftype]
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT_TEXT.match(value):
        number = int(value)
    if number is None:
        raise SpecError(path, f"expected an integer, got {_describe(value)}")
    if not low <= number <= high:
        raise SpecError(path, f"{number} is out of range for {what}")
    return number


def _check_float(value: Any, path: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in _FLOAT_WORDS:
            return _FLOAT_WORDS[value]
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise SpecError(path, f"expected a number, got {_describe(value)}")


def _check_json(value: Any, path: str) -> Any:
    """Checks a free-form JSON value; returns it with tuples as lists and dicts copied."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value!r}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(path, f"object keys must be strings, got {_describe(key)}")
            out[key] = _check_json(item, _join(path, key))
        return out
    if isinstance(value, list | tuple):
        return [_check_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise SpecError(path, f"expected a JSON value, got {_describe(value)}")


def _clean_parse_error(message: str) -> str:
    message = message.replace("\n", " ").strip()
    return re.sub(r"(Failed to parse \w+ field: )+", "", message)


# -------------------------------------------------------------- spec files


def load_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a workflow spec from a ``.json``, ``.yaml`` or ``.yml`` file.

    YAML is read safely, without turning unquoted dates into ``date`` objects
    (they stay strings, as in JSON); a numeric top-level ``version`` such as
    ``1.10`` keeps its text (``"1.10"``, not ``1.1``). Duplicate keys are an
    error in both formats. The result is not validated: pass it to
    :func:`spec_to_proto`.

    Args:
        path: The file.

    Returns:
        The spec as a dict.

    Raises:
        SpecError: Unsupported extension, a file that is not UTF-8, a syntax
            error (``flow.yaml:3:7: invalid YAML: ...``), a duplicate key, or a
            top level that is not a mapping.
        OSError: The file cannot be read.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise SpecError(str(path), f'unsupported file type "{suffix}" (use .json, .yaml or .yml)')
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(str(path), f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not text.strip():
        raise SpecError(str(path), "the file is empty")
    data = _load_json(text, str(path)) if suffix == ".json" else _load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise SpecError(str(path), f"expected a mapping at the top level, got {_describe(data)}")
    return data


class _SourceFloat(float):
    """A float parsed from JSON that remembers its text (for ``version``)."""

    source: str

    def __new__(cls, text: str) -> _SourceFloat:
        self = super().__new__(cls, text)
        self.source = text
        return self


def _load_json(text: str, name: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise SpecError(name, f'duplicate key "{key}"')
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_float=_SourceFloat)
    except json.JSONDecodeError as err:
        raise SpecError(f"{name}:{err.lineno}:{err.colno}", f"invalid JSON: {err.msg}") from err
    if isinstance(data, dict) and isinstance(data.get("version"), _SourceFloat):
        data["version"] = data["version"].source
    return _plain_floats(data)


def _plain_floats(data: Any) -> Any:
    if isinstance(data, _SourceFloat):
        return float(data)
    if isinstance(data, dict):
        return {key: _plain_floats(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_plain_floats(item) for item in data]
    return data


def _yaml_loader() -> type:
    import yaml  # imported here: only spec files need it

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, list | dict):
                    continue  # unhashable: let the base class report it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_describe(key)}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    # Unquoted dates stay strings, as they would be in JSON.
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def _load_yaml(text: str, name: str) -> Any:
    import yaml

    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
        problem = err.problem or err.context or "syntax error"
        raise SpecError(where, f"invalid YAML: {problem}") from err
    except yaml.YAMLError as err:
        raise SpecError(name, f"invalid YAML: {err}") from err
    finally:
        loader.dispose()
    if isinstance(data, dict) and isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value == "version"
                and isinstance(value_node, yaml.ScalarNode)
                and isinstance(data.get("version"), int | float)
                and not isinstance(data.get("version"), bool)
            ):
                data["version"] = value_node.value  # "1.10" stays "1.10"
    return data
