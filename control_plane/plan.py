"""Validates a WorkflowSpec and compiles it into an executable plan.

Every mistake is an `InvalidArgument` (or `ResourceExhausted` for size) that
names where it is: the node, the field, the cycle.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jsonschema
import referencing.exceptions
from google.protobuf import json_format

import core_rs
from control_plane.convert import from_struct
from control_plane.errors import InvalidArgument, ResourceExhausted
from control_plane.expressions import (
    ITEM_ROOTS,
    ROOTS,
    ExpressionError,
    condition_tree,
    item_template,
    node_references,
    template_references,
)
from executors.runners import RunnerRegistry
from statepipe_api.convert import MAX_JSON_DEPTH, json_depth_exceeds, resolve_local_ref
from statepipe_api.v1 import statepipe_pb2 as pb

MAX_NODES = 100_000
MAX_SPEC_BYTES = 16 * 1024 * 1024
HOOK_NAMES = ("on_init", "on_progress", "on_success", "on_error", "on_retry", "on_complete")
STRATEGIES = ("", "fixed", "linear", "exponential")
NODE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
ITEM_SCOPE = (*ROOTS, *ITEM_ROOTS)


@dataclasses.dataclass
class NodePlan:
    spec: pb.NodeSpec
    position: int
    params: dict[str, Any]
    metadata: dict[str, Any]
    when: Any | None  # parsed condition
    # Node ids each templated field reads, e.g. {"params.text": {"fetch"}}.
    refs: dict[str, set[str]]
    # Its runner runs in the control plane (workflow, map: they start child
    # runs), not on the executor.
    in_control_plane: bool = False
    # A map node: the param holding its item template, and the plan of the
    # child run each item is (item_spec).
    item_template: str = ""
    item_plan: Plan | None = None

    @property
    def referenced(self) -> set[str]:
        """Every node id the params and the condition read."""
        return set().union(*self.refs.values()) if self.refs else set()


@dataclasses.dataclass
class Plan:
    spec: pb.WorkflowSpec
    spec_bytes: bytes
    dag: core_rs.Dag
    nodes: dict[str, NodePlan]
    validator: jsonschema.protocols.Validator | None
    sinks: list[str]
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    def validate_input(self, value: Any) -> None:
        if self.validator is None:
            return
        try:
            error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as err:
            raise InvalidArgument(
                f"input_schema has a $ref that cannot be resolved: {err}"
            ) from None
        if error is not None:
            path = "input" + "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            )
            raise InvalidArgument(f"{path}: {error.message}")


def _check_refs(node: Any, root: dict[str, Any]) -> None:
    """Every $ref must point inside the schema: nothing is fetched from the network."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#"):
                raise InvalidArgument(
                    f"input_schema: $ref {ref!r} points outside the schema; only local "
                    "references ('#/$defs/...') are supported"
                )
            try:
                resolve_local_ref(root, ref)
            except LookupError:
                raise InvalidArgument(f"input_schema: $ref {ref!r} points to nothing") from None
        for value in node.values():
            _check_refs(value, root)
    elif isinstance(node, list):
        for value in node:
            _check_refs(value, root)


def _struct(message: Any) -> dict[str, Any]:
    return from_struct(message) if message.ByteSize() else {}


def compile_spec(spec: pb.WorkflowSpec, runners: RunnerRegistry) -> Plan:
    """Validates `spec` (filling defaults) and returns its plan."""
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        raise ResourceExhausted(f"spec is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,}")
    if len(spec.nodes) > MAX_NODES:
        raise ResourceExhausted(f"spec has {len(spec.nodes):,} nodes; the limit is {MAX_NODES:,}")
    if not spec.name:
        raise InvalidArgument("spec.name is required")
    if not NAME.match(spec.name):
        raise InvalidArgument(f"spec.name {spec.name!r} may hold letters, digits and _ . - / only")
    if not spec.version:
        spec.version = "1"
    if not spec.version.isprintable() or len(spec.version) > 200:
        raise InvalidArgument(
            f"spec.version {spec.version!r} must be printable text of at most 200 characters"
        )

    validator = None
    if spec.input_schema.ByteSize():
        schema = _struct(spec.input_schema)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as err:
            where = "/".join(map(str, err.absolute_path)) or "(root)"
            raise InvalidArgument(
                f"input_schema is not a valid JSON Schema at {where}: {err.message}"
            ) from None
        _check_refs(schema, schema)
        validator = cls(schema)

    for hook, target in spec.hooks.items():
        if hook not in HOOK_NAMES:
            raise InvalidArgument(f"hooks: unknown hook {hook!r}; known: {', '.join(HOOK_NAMES)}")
        if ":" not in target:
            raise InvalidArgument(
                f"hooks.{hook}: {target!r} must look like 'package.module:function'"
            )

    for key, limit in spec.concurrency.per_key.items():
        if limit < 1:
            raise InvalidArgument(f"concurrency.per_key.{key}: must be at least 1, not {limit}")
    if spec.concurrency.per_run < 0 or spec.concurrency.per_workflow < 0:
        raise InvalidArgument("concurrency limits must not be negative")

    nodes: dict[str, NodePlan] = {}
    edges: list[tuple[str, str]] = []
    for position, node in enumerate(spec.nodes):
        where = f"nodes[{position}]"
        if not node.id:
            raise InvalidArgument(f"{where}.id is required")
        if not NODE_ID.match(node.id):
            raise InvalidArgument(f"{where}.id {node.id!r} may hold letters, digits, _ and - only")
        where = f"node {node.id!r}"
        runner = runners.get(node.kind)
        if runner is None:
            raise InvalidArgument(
                f"{where}: unknown kind {node.kind!r}; known kinds: {', '.join(runners.kinds())}"
            )
        params = _struct(node.params)
        if json_depth_exceeds(params):
            # A node's resolved params come back as its input in GetRun.
            raise InvalidArgument(
                f"{where}: params nest objects and arrays more than {MAX_JSON_DEPTH} levels deep"
            )
        try:
            runner.validate(params)
        except ValueError as err:
            raise InvalidArgument(f"{where}: {err}") from None
        retry = node.retry
        if retry.strategy not in STRATEGIES:
            raise InvalidArgument(
                f"{where}: retry.strategy {retry.strategy!r} must be fixed, linear or exponential"
            )
        if retry.max_attempts < 0 or retry.backoff_ms < 0 or retry.max_backoff_ms < 0:
            raise InvalidArgument(f"{where}: retry values must not be negative")
        if not 0 <= retry.jitter <= 1:
            raise InvalidArgument(f"{where}: retry.jitter must be between 0 and 1")
        if node.timeout_ms < 0:
            raise InvalidArgument(f"{where}: timeout_ms must not be negative")
        _check_resources(node.resources, where)
        when = None
        try:
            # A map's item template (params.node) may read the item and its index.
            template = getattr(runner, "item_template", "")
            if template:
                refs = template_references({k: v for k, v in params.items() if k != template})
                refs.update(template_references(params[template], ITEM_SCOPE, template))
                if params[template].get("when"):
                    refs[f"{template}.when"] = node_references(
                        condition_tree(params[template]["when"], ITEM_SCOPE)
                    )
            else:
                refs = template_references(params)
            if node.when:
                when = condition_tree(node.when)
                refs["when"] = node_references(when)
        except ExpressionError as err:
            raise InvalidArgument(f"{where}: {err}") from None
        metadata = _struct(node.metadata)
        in_control_plane = bool(getattr(runner, "in_control_plane", False))
        item_plan = None
        if template:
            try:
                item_plan = compile_spec(
                    item_spec(spec.name, spec.version, node.id, params[template]), runners
                )
            except (InvalidArgument, ResourceExhausted) as err:
                raise InvalidArgument(f"{where}: params.{template}: {err}") from None
        nodes.setdefault(
            node.id,
            NodePlan(
                node, position, params, metadata, when, refs, in_control_plane, template, item_plan
            ),
        )
        edges.extend((dep, node.id) for dep in node.after)

    try:
        dag = core_rs.Dag([n.id for n in spec.nodes], edges)
    except core_rs.DuplicateNodeError as err:
        raise InvalidArgument(f"duplicate node id {err.node_id!r}") from None
    except core_rs.UnknownNodeError as err:
        u, v = err.edge or ("?", "?")
        raise InvalidArgument(f"node {v!r} depends on unknown node {u!r}") from None
    except core_rs.CycleError as err:
        raise InvalidArgument(
            f"the nodes form a cycle: {' -> '.join([*err.cycle, err.cycle[0]])}"
        ) from None

    for node_id, plan in nodes.items():
        ancestors = None
        for field, refs in plan.refs.items():
            for ref in refs:
                if ref not in nodes:
                    raise InvalidArgument(
                        f"node {node_id!r} {field} references unknown node {ref!r}"
                    )
                ancestors = ancestors if ancestors is not None else set(dag.ancestors(node_id))
                if ref not in ancestors:
                    raise InvalidArgument(
                        f"node {node_id!r} {field} references node {ref!r}, which is not among "
                        f"its dependencies; add {ref!r} to its 'after'"
                    )

    sinks = [n for n in dag.nodes if not dag.successors(n)]
    return Plan(
        spec,
        spec.SerializeToString(deterministic=True),
        dag,
        nodes,
        validator,
        sinks,
        _struct(spec.metadata),
    )


def item_spec(
    workflow: str, version: str, node_id: str, template: dict[str, Any]
) -> pb.WorkflowSpec:
    """The workflow each item of map node `node_id` runs as a child run: the
    item template as its one node (named as the map node), its placeholders
    moved under the item's input (expressions.item_template)."""
    node = {k: v for k, v in template.items() if k not in ("id", "after")}
    node["id"] = node_id
    if "params" in node:
        node["params"] = item_template(node["params"])
    when = node.get("when")
    if isinstance(when, str) and when.strip():
        node["when"] = item_template(when if "{{" in when else "{{ " + when + " }}")
    try:
        return json_format.ParseDict(
            {"name": f"{workflow}/{node_id}"[:200], "version": version, "nodes": [node]},
            pb.WorkflowSpec(),
        )
    except json_format.ParseError as err:
        raise InvalidArgument(str(err).splitlines()[0]) from None


def retry_delay_ms(retry: pb.RetryPolicy, attempt: int, rand: float) -> int:
    """Delay before attempt `attempt + 1`, after `attempt` failed (attempt >= 1)."""
    base = retry.backoff_ms
    if retry.strategy == "linear":
        delay = base * attempt
    elif retry.strategy == "exponential":
        delay = base * (2 ** (attempt - 1))
    else:
        delay = base
    if retry.max_backoff_ms:
        delay = min(delay, retry.max_backoff_ms)
    if retry.jitter:
        delay = delay * (1 + retry.jitter * (2 * rand - 1))
    return max(0, int(delay))


def _check_resources(resources: pb.Resources, where: str) -> None:
    """Amounts a scheduler (Ray) can honour: finite, not negative, named."""
    amounts = {"cpus": resources.cpus, "gpus": resources.gpus, "memory": resources.memory}
    amounts.update({f"custom.{k}": v for k, v in resources.custom.items()})
    for name, value in amounts.items():
        if name == "custom.":
            raise InvalidArgument(f"{where}: resources.custom names must not be empty")
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(
                f"{where}: resources.{name} must be a finite amount, not negative (got {value})"
            )
