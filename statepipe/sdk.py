"""The Python SDK: write a workflow as decorated functions, get a ``WorkflowSpec``.

A :class:`Workflow` collects nodes (``@wf.node``, :meth:`Workflow.add_node`)
and hooks (``@wf.on_success``, ...) and compiles them to the same spec a YAML
or JSON file holds (:meth:`Workflow.to_spec`), so the control plane never sees
anything but data. A decorated function is a ``kind: python`` node whose
``params.callable`` is the function's ``module:qualname``: the server imports
it, so node functions must be defined at module level::

    from statepipe import Retry, Workflow

    wf = Workflow("greet", input_schema={"type": "object", "required": ["who"]})

    @wf.node
    def hello(ctx, who: str) -> str:          # who <- {{ input.who }}
        ctx.log(f"greeting {who}")
        return f"hello {who}"

    @wf.node(retry=Retry(max_attempts=3, backoff_ms=200))
    def shout(hello: str) -> str:             # hello <- {{ nodes.hello.output }}
        return hello.upper()

    client.register_workflow(wf.to_spec())

How a parameter gets its value (the rest of the signature is left alone):

* a first parameter named ``ctx`` receives the node context (``pass_ctx``);
* a parameter named after another node of the workflow receives that node's
  output, and makes the node depend on it;
* a parameter named ``input`` receives the whole run input;
* any other parameter without a default receives ``input.<name>``;
* ``args=`` of :meth:`Workflow.node` sets (or overrides) any parameter.

Nodes of the other kinds (``shell``, ``http``, ``llm``, ``agent``, ``workflow``,
``map``, a plugin's) are declared with :meth:`Workflow.add_node`, their params
as a spec file holds them, mixed with the decorated functions in declaration
order; :meth:`Workflow.workflow` and :meth:`Workflow.map` are shorthands for
the two kinds that start child runs. A function's parameter named after such
a node receives its output too::

    wf.workflow("report", "monthly-report", input={"month": "{{ input.month }}"})
    wf.map(
        "pages",
        "{{ nodes.report.output.build.urls }}",
        node={"kind": "http", "params": {"url": "{{ item }}"}},
        after=["report"],
    )

    @wf.node
    def count(pages: list) -> int:        # pages <- {{ nodes.pages.output }}
        return len(pages)

The SDK does not check a kind's params: the server does when the workflow is
registered, and refuses a bad one (INVALID_ARGUMENT naming the node and field).

:func:`load_target` turns what a person types on the command line
(``flow.py[:wf]``, ``flow.yaml``, or a registered workflow's name) into a spec.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

if TYPE_CHECKING:
    from statepipe_api.v1 import statepipe_pb2 as pb

__all__ = ["HOOKS", "Retry", "TargetError", "TargetWarning", "Workflow", "load_target"]

F = TypeVar("F", bound=Callable[..., Any])

#: The hook names a workflow may set, in lifecycle order.
HOOKS: tuple[str, ...] = (
    "on_init",
    "on_progress",
    "on_success",
    "on_error",
    "on_retry",
    "on_complete",
)

_STRATEGIES = ("fixed", "linear", "exponential")
_ISOLATIONS = ("thread", "process")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")


# --------------------------------------------------------------------- Retry


@dataclass(frozen=True)
class Retry:
    """A node's retry policy (``retry`` in the spec).

    Attributes:
        max_attempts: Total attempts, the first included (1: no retry).
        backoff_ms: Delay before the first retry, in milliseconds.
        strategy: How the delay grows: ``"fixed"``, ``"linear"`` or ``"exponential"``.
        max_backoff_ms: Upper bound on any delay (0: no bound).
        jitter: Fraction of the delay added or removed at random, 0 to 1.

    Raises:
        ValueError: A value out of range or of the wrong type (checked on creation).
    """

    max_attempts: int = 1
    backoff_ms: int = 0
    strategy: Literal["fixed", "linear", "exponential"] = "fixed"
    max_backoff_ms: int = 0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _check_int("Retry.max_attempts", self.max_attempts, 1, _INT32_MAX)
        _check_int("Retry.backoff_ms", self.backoff_ms, 0, _INT64_MAX)
        _check_int("Retry.max_backoff_ms", self.max_backoff_ms, 0, _INT64_MAX)
        if self.strategy not in _STRATEGIES:
            raise ValueError(
                f"Retry.strategy must be one of {', '.join(map(repr, _STRATEGIES))}, "
                f"got {self.strategy!r}"
            )
        jitter = self.jitter
        if (
            isinstance(jitter, bool)
            or not isinstance(jitter, int | float)
            or not math.isfinite(jitter)
            or not 0 <= jitter <= 1
        ):
            raise ValueError(f"Retry.jitter must be a number from 0 to 1, got {jitter!r}")

    def to_dict(self) -> dict[str, Any]:
        """The spec's ``retry`` object: ``max_attempts`` plus the fields not at their default."""
        out: dict[str, Any] = {"max_attempts": self.max_attempts}
        if self.backoff_ms:
            out["backoff_ms"] = self.backoff_ms
        if self.strategy != "fixed":
            out["strategy"] = self.strategy
        if self.max_backoff_ms:
            out["max_backoff_ms"] = self.max_backoff_ms
        if self.jitter:
            out["jitter"] = float(self.jitter)
        return out


def _check_int(what: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{what} must be at least {low}, got {value}")
    if value > high:
        raise ValueError(f"{what} must be at most {high}, got {value}")


def _check_options(
    where: str,
    retry: Retry | Mapping[str, Any] | None,
    timeout_ms: int,
    when: str | None,
    concurrency_key: str,
    continue_on_failure: bool,
    **dicts: Mapping[str, Any] | None,
) -> Retry | None:
    """Checks the options every node has; returns ``retry`` as a Retry (or None)."""
    if retry is not None and not isinstance(retry, Retry):
        if not isinstance(retry, Mapping):
            raise TypeError(f"{where}: retry must be a Retry, got {type(retry).__name__}")
        retry = Retry(**retry)
    _check_int(f"{where}: timeout_ms", timeout_ms, 0, _INT64_MAX)
    if when is not None and not isinstance(when, str):
        raise TypeError(f"{where}: when must be a string, got {type(when).__name__}")
    if not isinstance(concurrency_key, str):
        raise TypeError(f"{where}: concurrency_key must be a string")
    if not isinstance(continue_on_failure, bool):
        raise TypeError(f"{where}: continue_on_failure must be True or False")
    for field, value in dicts.items():
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{where}: {field} must be a dict, got {type(value).__name__}")
    return retry


def _plain(value: Any) -> Any:
    """A deep copy of params as JSON data: a Retry becomes its dict, a tuple a list."""
    if isinstance(value, Retry):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


# -------------------------------------------------------------------- nodes


@dataclass
class _Declared:
    """What any node declares, whatever its kind."""

    id: str
    after: list[str]
    retry: Retry | None
    timeout_ms: int
    resources: dict[str, Any] | None
    when: str | None
    concurrency_key: str
    labels: dict[str, str] | None
    metadata: dict[str, Any] | None
    continue_on_failure: bool

    def describe(self) -> str:
        """What the node runs, for a message."""
        raise NotImplementedError


@dataclass
class _FunctionNode(_Declared):
    """A decorated function (a ``python`` node) and what was said about it."""

    fn: Callable[..., Any]
    callable_path: str
    pass_ctx: bool
    # (name, has_default) for each parameter that can be passed by keyword.
    params: list[tuple[str, bool]]
    isolation: str
    args: dict[str, Any]

    def describe(self) -> str:
        return self.callable_path


@dataclass
class _KindNode(_Declared):
    """A node of any kind declared by :meth:`Workflow.add_node`, its params as given."""

    kind: str
    params: dict[str, Any]

    def describe(self) -> str:
        return f"kind {self.kind}"


def _import_path(fn: Any, what: str) -> str:
    """``module:qualname`` of a function the server can import, or TypeError."""
    if not callable(fn):
        raise TypeError(f"{what} must be a function, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{what} must be a function defined at module level, got {type(fn).__name__}"
        )
    if "<" in qualname:  # <lambda>, <locals>
        kind = "a lambda" if "<lambda>" in qualname else "a nested function"
        raise TypeError(
            f"{what} {module}.{qualname} is {kind}: the server imports functions as "
            "'module:name', so define it at module level"
        )
    return f"{module}:{qualname}"


def _signature(fn: Callable[..., Any], path: str) -> tuple[bool, list[tuple[str, bool]], bool]:
    """(pass_ctx, [(param, has_default)], takes **kwargs) from a node function's signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as err:
        raise TypeError(f"node {path}: cannot read its signature ({err})") from None
    items = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    pass_ctx = bool(items) and items[0].name == "ctx" and items[0].kind in positional
    params: list[tuple[str, bool]] = []
    var_keyword = False
    for index, param in enumerate(items):
        if pass_ctx and index == 0:
            continue
        has_default = param.default is not inspect.Parameter.empty
        if param.name == "ctx":
            raise TypeError(
                f"node {path}: ctx must be the first positional parameter to receive the context"
            )
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
            if not has_default:
                raise TypeError(
                    f"node {path}: positional-only parameter {param.name!r} cannot be "
                    "given a value (nodes are called with keyword arguments)"
                )
        else:
            params.append((param.name, has_default))
    return pass_ctx, params, var_keyword


# ------------------------------------------------------------------ Workflow


class Workflow:
    """A workflow written in Python, compiled to a ``WorkflowSpec``.

    Args:
        name: The workflow's name (what runs are started by).
        input_schema: JSON Schema the run input must satisfy (None: anything).
            Defaults in it are documentation: the server does not fill them in.
        version: The version; registering the same name and version with a
            different spec is refused, so change it when the workflow changes.
        description: A line about the workflow.
        concurrency: Limits: ``{"per_run": n, "per_workflow": n, "per_key": {key: n}}``.
        labels: String labels of the workflow.
        metadata: Free JSON metadata (also given to hooks).

    Raises:
        TypeError: ``name`` or ``version`` is not a string.
        ValueError: ``name`` is empty.
    """

    def __init__(
        self,
        name: str,
        *,
        input_schema: dict[str, Any] | None = None,
        version: str = "1",
        description: str = "",
        concurrency: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Workflow name must be a string, got {type(name).__name__}")
        if not name.strip():
            raise ValueError("Workflow name must not be empty")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str):
            raise TypeError(f"Workflow version must be a string, got {type(version).__name__}")
        self._name = name
        self._version = version
        self.description = description
        self.input_schema = input_schema
        self.concurrency = concurrency
        self.labels = labels
        self.metadata = metadata
        self._nodes: dict[str, _FunctionNode | _KindNode] = {}
        self._hooks: dict[str, str] = {}

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self._name

    @property
    def version(self) -> str:
        """The workflow's version."""
        return self._version

    @property
    def nodes(self) -> list[str]:
        """The node ids, in the order they were declared."""
        return list(self._nodes)

    @property
    def hooks(self) -> dict[str, str]:
        """The hooks set so far: hook name -> ``module:qualname``."""
        return dict(self._hooks)

    def __repr__(self) -> str:
        return f"Workflow({self._name!r}, version={self._version!r}, nodes={self.nodes!r})"

    # ------------------------------------------------------------ nodes

    @overload
    def node(self, fn: F, /) -> F: ...

    @overload
    def node(
        self,
        fn: None = None,
        /,
        *,
        id: str | None = None,
        after: Sequence[str | Callable[..., Any]] | str | Callable[..., Any] = (),
        retry: Retry | None = None,
        timeout_ms: int = 0,
        resources: dict[str, Any] | None = None,
        when: str | None = None,
        concurrency_key: str = "",
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        continue_on_failure: bool = False,
        isolation: str = "thread",
        args: dict[str, Any] | None = None,
    ) -> Callable[[F], F]: ...

    def node(
        self,
        fn: F | None = None,
        /,
        *,
        id: str | None = None,
        after: Sequence[str | Callable[..., Any]] | str | Callable[..., Any] = (),
        retry: Retry | None = None,
        timeout_ms: int = 0,
        resources: dict[str, Any] | None = None,
        when: str | None = None,
        concurrency_key: str = "",
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        continue_on_failure: bool = False,
        isolation: str = "thread",
        args: dict[str, Any] | None = None,
    ) -> F | Callable[[F], F]:
        """Declares a node running a function (sync or async); returns it unchanged.

        Use it bare (``@wf.node``), with keywords (``@wf.node(id="x", retry=...)``),
        or as a call (``wf.node(id=f"shard_{i}", args={"shard": i})(fn)``) to
        declare several nodes running one function.

        Args:
            fn: The function (when used bare).
            id: The node id (default: the function's name).
            after: Nodes that must finish first: ids, or functions declared as
                nodes of this workflow. Parameters named after a node add it too.
            retry: The retry policy (default: one attempt).
            timeout_ms: Timeout of one attempt in milliseconds (0: none).
            resources: ``{"cpus": n, "gpus": n, "memory": bytes, "custom": {...}}``.
            when: A condition such as ``"nodes.plan.output.tool == 'search'"``;
                false skips the node (its dependents treat it as done).
            concurrency_key: Nodes sharing a key share its concurrency limit.
            labels: String labels of the node.
            metadata: Free JSON metadata of the node.
            continue_on_failure: Let dependents run when this node fails for good.
            isolation: ``"thread"`` (default) or ``"process"`` (sync functions only).
            args: Values for parameters, static or templated
                (``"{{ nodes.a.output.x }}"``); they override the inferred ones.

        Returns:
            The function unchanged, or a decorator when ``fn`` is not given.

        Raises:
            TypeError: The function cannot be imported by the server (a lambda or a
                nested function), its signature cannot be bound, or an argument
                has the wrong type.
            ValueError: A duplicate id, an ``after`` function that is not a node
                of this workflow, or a value out of range.
        """
        if isinstance(fn, str):
            raise TypeError(f"give the node id as a keyword: @wf.node(id={fn!r})")

        def decorate(func: F) -> F:
            self._add_node(
                func,
                id=id,
                after=after,
                retry=retry,
                timeout_ms=timeout_ms,
                resources=resources,
                when=when,
                concurrency_key=concurrency_key,
                labels=labels,
                metadata=metadata,
                continue_on_failure=continue_on_failure,
                isolation=isolation,
                args=args,
            )
            return func

        return decorate if fn is None else decorate(fn)

    def _add_node(
        self,
        fn: Callable[..., Any],
        *,
        id: str | None,
        after: Sequence[str | Callable[..., Any]] | str | Callable[..., Any],
        retry: Retry | Mapping[str, Any] | None,
        timeout_ms: int,
        resources: dict[str, Any] | None,
        when: str | None,
        concurrency_key: str,
        labels: dict[str, str] | None,
        metadata: dict[str, Any] | None,
        continue_on_failure: bool,
        isolation: str,
        args: dict[str, Any] | None,
    ) -> None:
        path = _import_path(fn, "a node")
        node_id = id if id is not None else getattr(fn, "__name__", path.rpartition(".")[2])
        if not isinstance(node_id, str) or not node_id.strip():
            raise TypeError(f"node {path}: id must be a non-empty string, got {node_id!r}")
        where = self._check_new_id(node_id)
        pass_ctx, params, var_keyword = _signature(fn, path)
        retry = _check_options(
            where,
            retry,
            timeout_ms,
            when,
            concurrency_key,
            continue_on_failure,
            resources=resources,
            labels=labels,
            metadata=metadata,
        )
        if isolation not in _ISOLATIONS:
            raise ValueError(f"{where}: isolation must be 'thread' or 'process', got {isolation!r}")
        if isolation == "process" and inspect.iscoroutinefunction(fn):
            raise ValueError(f"{where}: an async function cannot use isolation='process'")

        if args is not None and not isinstance(args, Mapping):
            raise TypeError(f"{where}: args must be a dict, got {type(args).__name__}")
        given = dict(args or {})
        names = {name for name, _ in params}
        for key in given:
            if not isinstance(key, str):
                raise TypeError(f"{where}: args keys must be strings, got {key!r}")
            if key == "ctx" and pass_ctx:
                raise TypeError(f"{where}: args cannot set ctx (it is the node context)")
            if key not in names and not var_keyword:
                raise TypeError(f"{where}: args[{key!r}]: {path} has no parameter {key!r}")

        self._nodes[node_id] = _FunctionNode(
            id=node_id,
            after=self._resolve_after(where, after),
            retry=retry,
            timeout_ms=timeout_ms,
            resources=resources,
            when=when,
            concurrency_key=concurrency_key,
            labels=labels,
            metadata=metadata,
            continue_on_failure=continue_on_failure,
            fn=fn,
            callable_path=path,
            pass_ctx=pass_ctx,
            params=params,
            isolation=isolation,
            args=given,
        )

    def add_node(
        self,
        id: str,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        after: Sequence[str | Callable[..., Any]] | str | Callable[..., Any] = (),
        retry: Retry | Mapping[str, Any] | None = None,
        timeout_ms: int = 0,
        resources: dict[str, Any] | None = None,
        when: str | None = None,
        concurrency_key: str = "",
        labels: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        continue_on_failure: bool = False,
    ) -> str:
        """Declares a node of any kind (``shell``, ``http``, ``llm``, ``map``, ...).

        The node lands in the spec as given, in declaration order among the
        decorated functions. A decorated function's parameter named after it
        receives its output, as for a function node::

            wf.add_node("hello", "shell", {"argv": ["echo", "hello"]})

            @wf.node
            def shout(hello):  # hello <- {{ nodes.hello.output }}
                return hello["stdout"].upper()

        Args:
            id: The node id.
            kind: The node kind: a built-in one or a runner plugin's.
            params: The kind's params, static or templated
                (``"{{ nodes.a.output.x }}"``), as a spec file holds them. They
                are not checked here: the server checks them when the workflow
                is registered (INVALID_ARGUMENT naming the node and the field).
                A :class:`Retry` among them (a ``map`` template's ``retry``)
                becomes its dict.
            after: Nodes that must finish first: ids, or functions declared as
                nodes of this workflow. Templates in ``params`` do not add
                dependencies: name the nodes they read here.
            retry: The retry policy (a :class:`Retry` or its dict; default:
                one attempt).
            timeout_ms: Timeout of one attempt in milliseconds (0: none).
            resources: ``{"cpus": n, "gpus": n, "memory": bytes, "custom": {...}}``.
            when: A condition such as ``"nodes.plan.output.tool == 'search'"``;
                false skips the node (its dependents treat it as done).
            concurrency_key: Nodes sharing a key share its concurrency limit.
            labels: String labels of the node.
            metadata: Free JSON metadata of the node.
            continue_on_failure: Let dependents run when this node fails for good.

        Returns:
            The node id, for ``after=`` of later nodes.

        Raises:
            TypeError: An argument has the wrong type (``params`` not a dict,
                ``kind`` not a string, ...).
            ValueError: A duplicate id, an empty id or kind, an ``after``
                function that is not a node of this workflow, or a value out
                of range.
        """
        if not isinstance(id, str):
            raise TypeError(f"a node id must be a string, got {type(id).__name__}")
        if not id.strip():
            raise ValueError("a node id must not be empty")
        where = self._check_new_id(id)
        if not isinstance(kind, str):
            raise TypeError(f"{where}: kind must be a string, got {type(kind).__name__}")
        if not kind.strip():
            raise ValueError(f"{where}: kind must not be empty")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"{where}: params must be a dict, got {type(params).__name__}")
        given = dict(params or {})
        for key in given:
            if not isinstance(key, str):
                raise TypeError(f"{where}: params keys must be strings, got {key!r}")
        retry = _check_options(
            where,
            retry,
            timeout_ms,
            when,
            concurrency_key,
            continue_on_failure,
            resources=resources,
            labels=labels,
            metadata=metadata,
        )
        self._nodes[id] = _KindNode(
            id=id,
            after=self._resolve_after(where, after),
            retry=retry,
            timeout_ms=timeout_ms,
            resources=resources,
            when=when,
            concurrency_key=concurrency_key,
            labels=labels,
            metadata=metadata,
            continue_on_failure=continue_on_failure,
            kind=kind,
            params=given,
        )
        return id

    def workflow(
        self,
        id: str,
        name: str,
        input: Any = None,
        *,
        version: str = "",
        **options: Any,
    ) -> str:
        """Declares a ``workflow`` node: runs the registered workflow ``name`` as
        a child run; its output is the child's output (each sink node's by id).

        Args:
            id: The node id.
            name: The registered workflow to run.
            input: The child's input, static or templated (default: null).
            version: Its version (default: the latest when the node runs).
            **options: Node options, as for :meth:`add_node` (``after``,
                ``retry``, ``timeout_ms``, ...).

        Returns:
            The node id.

        Raises:
            TypeError, ValueError: As :meth:`add_node`.
        """
        params = {"workflow": name, "version": version, "input": input}
        given = {k: v for k, v in params.items() if v is not None and v != ""}
        return self.add_node(id, "workflow", given, **options)

    def map(
        self,
        id: str,
        items: list[Any] | str,
        node: Mapping[str, Any],
        *,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> str:
        """Declares a ``map`` node: runs the node template ``node`` once per item,
        each as a child run ``<id>[<i>]``; its output is the items' outputs, in order.

        Args:
            id: The node id.
            items: A list, or a template giving one (``"{{ nodes.plan.output }}"``).
            node: The template: ``{"kind": ..., "params": ..., "retry": ...}``,
                as a node of a spec; its templates may read ``item`` and ``index``.
            max_concurrency: Most items running at once (default: the server's, 16).
            **options: Node options, as for :meth:`add_node`. Its
                ``continue_on_failure`` is the map node's own (dependents run when
                the map fails); for failed items to give null and the map to
                succeed, use ``add_node(id, "map", {..., "continue_on_failure": True})``.

        Returns:
            The node id.

        Raises:
            TypeError, ValueError: As :meth:`add_node`.
        """
        limit = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
        return self.add_node(id, "map", {"items": items, "node": node, **limit}, **options)

    def _check_new_id(self, node_id: str) -> str:
        """``node 'x'`` (how messages name the node), or ValueError if it is taken."""
        where = f"node {node_id!r}"
        if node_id in self._nodes:
            other = self._nodes[node_id].describe()
            raise ValueError(f"{where} is declared twice in workflow {self._name!r} ({other})")
        return where

    def _resolve_after(
        self, where: str, after: Sequence[str | Callable[..., Any]] | str | Callable[..., Any]
    ) -> list[str]:
        items = [after] if isinstance(after, str) or callable(after) else list(after)
        out: list[str] = []
        for item in items:
            if isinstance(item, str):
                dep = item
            elif callable(item):
                ids = [
                    n.id
                    for n in self._nodes.values()
                    if isinstance(n, _FunctionNode) and n.fn is item
                ]
                label = getattr(item, "__qualname__", repr(item))
                if not ids:
                    raise ValueError(
                        f"{where}: after={label} is not a node of workflow {self._name!r} "
                        "(declare it with @wf.node first, or give its id)"
                    )
                if len(ids) > 1:
                    raise ValueError(
                        f"{where}: after={label} is ambiguous: it runs as nodes "
                        f"{', '.join(ids)}; give the ids"
                    )
                dep = ids[0]
            else:
                raise TypeError(
                    f"{where}: after must hold node ids or node functions, got {item!r}"
                )
            if dep not in out:
                out.append(dep)
        return out

    # ------------------------------------------------------------ hooks

    def on_init(self, fn: F) -> F:
        """Sets the hook called once when a run starts, as ``fn(ctx: dict, metadata: dict)``."""
        return self._hook("on_init", fn)

    def on_progress(self, fn: F) -> F:
        """Sets the hook called when a node reports progress, as ``fn(ctx, metadata)``."""
        return self._hook("on_progress", fn)

    def on_success(self, fn: F) -> F:
        """Sets the hook called when a node succeeds, as ``fn(ctx, metadata)``."""
        return self._hook("on_success", fn)

    def on_error(self, fn: F) -> F:
        """Sets the hook called when a node fails, as ``fn(ctx, metadata)``."""
        return self._hook("on_error", fn)

    def on_retry(self, fn: F) -> F:
        """Sets the hook called when a node is retried, as ``fn(ctx, metadata)``."""
        return self._hook("on_retry", fn)

    def on_complete(self, fn: F) -> F:
        """Sets the hook called once when a run ends, as ``fn(ctx, metadata)``."""
        return self._hook("on_complete", fn)

    def _hook(self, hook: str, fn: F) -> F:
        path = _import_path(fn, f"the {hook} hook")
        if hook in self._hooks and self._hooks[hook] != path:
            raise ValueError(
                f"workflow {self._name!r} already has an {hook} hook ({self._hooks[hook]})"
            )
        self._hooks[hook] = path
        return fn

    # ------------------------------------------------------------ compile

    def to_spec(self) -> dict[str, Any]:
        """The workflow as a spec dict, the same shape as a JSON or YAML spec file.

        Returns:
            A fresh dict with proto field names (fields at their default left
            out), ready for ``Client.register_workflow`` or ``json.dumps``.

        Raises:
            SpecError: The spec is not valid: no nodes, a dependency on an
                unknown node, a cycle, a function the server cannot import by
                its name, or a field of the wrong shape (e.g. ``resources``).
        """
        from statepipe_api.convert import SpecError, spec_to_proto

        if not self._nodes:
            raise SpecError("nodes", f"workflow {self._name!r} has no nodes")
        spec: dict[str, Any] = {"name": self._name, "version": self._version}
        if self.description:
            spec["description"] = self.description
        for field in ("input_schema", "concurrency", "labels", "metadata"):
            value = getattr(self, field)
            if value is not None:
                spec[field] = copy.deepcopy(value)
        if self._hooks:
            spec["hooks"] = {h: self._hooks[h] for h in HOOKS if h in self._hooks}
        spec["nodes"] = [self._node_spec(i, node) for i, node in enumerate(self._nodes.values())]
        self._check_graph(spec["nodes"])
        spec_to_proto(spec)  # raises SpecError naming the path of a malformed field
        return spec

    def to_proto(self) -> pb.WorkflowSpec:
        """The workflow as a ``statepipe.v1.WorkflowSpec`` message.

        Raises:
            SpecError: As :meth:`to_spec`.
        """
        from statepipe_api.convert import spec_to_proto

        return spec_to_proto(self.to_spec())

    def _node_spec(self, index: int, node: _FunctionNode | _KindNode) -> dict[str, Any]:
        from statepipe_api.convert import SpecError

        if isinstance(node, _KindNode):
            after = list(node.after)
            kind, params = node.kind, _plain(node.params)
        else:
            after, kind, params = self._function_params(index, node)
        if node.id in after:
            raise SpecError(f"nodes[{index}].after", f'node "{node.id}" cannot depend on itself')
        out: dict[str, Any] = {"id": node.id, "kind": kind}
        if after:
            out["after"] = after
        if node.when:
            out["when"] = node.when
        if params or isinstance(node, _FunctionNode):
            out["params"] = params
        if node.retry is not None:
            out["retry"] = node.retry.to_dict()
        if node.timeout_ms:
            out["timeout_ms"] = node.timeout_ms
        if node.resources is not None:
            out["resources"] = copy.deepcopy(node.resources)
        if node.concurrency_key:
            out["concurrency_key"] = node.concurrency_key
        if node.labels is not None:
            out["labels"] = copy.deepcopy(node.labels)
        if node.metadata is not None:
            out["metadata"] = copy.deepcopy(node.metadata)
        if node.continue_on_failure:
            out["continue_on_failure"] = True
        return out

    def _function_params(
        self, index: int, node: _FunctionNode
    ) -> tuple[list[str], str, dict[str, Any]]:
        """(after, kind, params) of a function node: its parameters bound to the
        run input and to the nodes they are named after."""
        _check_resolvable(node.fn, node.callable_path, f"nodes[{index}].params.callable")
        after = list(node.after)
        args: dict[str, Any] = {}
        for name, has_default in node.params:
            if name in node.args:
                args[name] = copy.deepcopy(node.args[name])
            elif name in node.after:
                args[name] = f"{{{{ nodes.{name}.output }}}}"
            elif name == "input":
                args[name] = "{{ input }}"
            elif name in self._nodes and name != node.id:
                args[name] = f"{{{{ nodes.{name}.output }}}}"
                after.append(name)
            elif not has_default:
                args[name] = f"{{{{ input.{name} }}}}"
        for key, value in node.args.items():  # for **kwargs
            if key not in args:
                args[key] = copy.deepcopy(value)
        params: dict[str, Any] = {
            "callable": node.callable_path,
            "args": args,
            "pass_ctx": node.pass_ctx,
        }
        if node.isolation != "thread":
            params["isolation"] = node.isolation
        return after, "python", params

    def _check_graph(self, nodes: list[dict[str, Any]]) -> None:
        """Unknown dependencies and cycles, named (core_rs checks them, as on the server)."""
        import core_rs
        from statepipe_api.convert import SpecError

        ids = [n["id"] for n in nodes]
        edges = [(dep, n["id"]) for n in nodes for dep in n.get("after", [])]
        try:
            core_rs.Dag(ids, edges)
        except core_rs.UnknownNodeError as err:
            dep, node_id = err.edge or (err.node_id, "")
            index = ids.index(node_id) if node_id in ids else 0
            close = difflib.get_close_matches(dep, ids, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise SpecError(f"nodes[{index}].after", f'unknown node "{dep}"{hint}') from None
        except core_rs.CycleError as err:
            # core_rs gives the cycle in run order (a runs before b); here it reads
            # as `after` does (a after c), from the node defined first.
            position = {node_id: i for i, node_id in enumerate(ids)}
            cycle = err.cycle[::-1]
            first = min(range(len(cycle)), key=lambda i: position[cycle[i]])
            cycle = [*cycle[first:], *cycle[:first], cycle[first]]
            raise SpecError("nodes", f"cycle: {' -> '.join(cycle)}") from None
        except core_rs.DagError as err:
            raise SpecError("nodes", str(err)) from None


def _check_resolvable(fn: Callable[..., Any], path: str, where: str) -> None:
    """A function whose module is loaded must be found there under its qualname."""
    from statepipe_api.convert import SpecError

    module_name, _, qualname = path.partition(":")
    target: Any = sys.modules.get(module_name)
    if target is None:
        return  # not loaded here: the server's import will tell
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise SpecError(
                where,
                f"{path} cannot be imported: module {module_name!r} has no attribute "
                f"{qualname!r} (node functions must be defined at module level)",
            )


# ----------------------------------------------------------------- targets


class TargetError(Exception):
    """A workflow target (``flow.py[:var]``, ``flow.yaml``, a name) that cannot be loaded.

    ``str(err)`` is one line a person can act on, e.g. ``no such file: flow.py``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*\n\s*", " ", message).strip())


class TargetWarning(UserWarning):
    """A target that loaded, but maybe not as meant: ``flow.py:x`` where ``x`` is the
    variable of one workflow and the name of another (the variable wins)."""


def load_target(target: str) -> tuple[dict[str, Any] | None, str]:
    """Resolves a workflow target as typed on the command line.

    * ``path/flow.py`` or ``path/flow.py:NAME``: imports the file as the module
      ``flow`` (its directory last on ``sys.path``, so a server in the same
      process can import ``flow:function``) and compiles the :class:`Workflow`
      that ``NAME`` names, or the only one in the module. ``NAME`` is the
      variable holding the workflow (``chain``, or a dotted path) or the
      workflow's own name (``h-chain`` for ``chain = Workflow("h-chain")``,
      what ``statepipe ls`` shows). When it is the variable of one workflow
      and the name of another, the variable wins and a :class:`TargetWarning`
      says so.
    * ``path/flow.yaml``, ``.yml``, ``.json``: reads the spec file (its
      directory goes last on ``sys.path`` too, for its ``callable`` modules).
    * anything else: the name of a registered workflow.

    Args:
        target: The target.

    Returns:
        ``(spec, name)``: the spec dict and the workflow's name, or
        ``(None, target)`` for a registered workflow's name.

    Raises:
        TargetError: No such file, a module that fails to import (with the
            error's summary), a file name that is not a module name or is taken
            by another module, no or several workflows in the module, or a
            ``:NAME`` that names no Workflow (the message lists the module's
            variables and workflow names, with a "did you mean").
        SpecError: The spec file or the compiled workflow is not a valid spec.
    """
    if not isinstance(target, str) or not target.strip():
        raise TargetError("no workflow given: name a file (flow.py, flow.yaml) or a workflow")
    file_text, var = target, None
    head, sep, tail = target.rpartition(":")
    if sep and Path(head).suffix.lower() == ".py":
        file_text, var = head, tail
        if not var:
            raise TargetError(
                f"{target}: name the workflow (its variable or its name) after ':' "
                "(or leave ':' out)"
            )
    elif sep and Path(head).suffix.lower() in _SPEC_SUFFIXES:
        raise TargetError(f"{target}: ':{tail}' only applies to Python files")
    suffix = Path(file_text).suffix.lower()
    if suffix == ".py":
        return _load_python(Path(file_text), var)
    if suffix in _SPEC_SUFFIXES:
        return _load_spec(Path(file_text))
    return None, target


def _load_python(file: Path, var: str | None) -> tuple[dict[str, Any], str]:
    if not file.is_file():
        raise TargetError(f"no such file: {file}")
    module = _import_file(file)
    found = _workflows(module)
    if var is not None:
        workflow = _pick_workflow(file, module, var, found)
        return workflow.to_spec(), workflow.name
    if not found:
        raise TargetError(f"{file} defines no statepipe Workflow")
    if len(found) > 1:
        raise TargetError(
            f"{file} defines several workflows ({', '.join(found)}); "
            f"pick one: {file}:{next(iter(found))}"
        )
    workflow = next(iter(found.values()))
    return workflow.to_spec(), workflow.name


_MISSING = object()


def _pick_workflow(
    file: Path, module: ModuleType, wanted: str, found: dict[str, Workflow]
) -> Workflow:
    """The workflow ``file:wanted`` names: by variable (a dotted path too), else by
    its name; a variable that is a Workflow wins over another workflow's name."""
    obj: Any = module
    for part in wanted.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            break
    named = {key: w for key, w in found.items() if w.name == wanted}
    if isinstance(obj, Workflow):
        others = [key for key, w in named.items() if w is not obj]
        if others:
            warnings.warn(
                f"{file}:{wanted} is the variable {wanted} (workflow {obj.name!r}), not "
                f"the workflow named {wanted!r} (variable {others[0]}); the variable wins",
                TargetWarning,
                stacklevel=4,  # load_target's caller
            )
        return obj
    if len(named) == 1:
        return next(iter(named.values()))
    if named:
        keys = list(named)
        raise TargetError(
            f"{file} defines several workflows named {wanted!r} ({', '.join(keys)}); "
            f"pick one by its variable: {file}:{keys[0]}"
        )
    if obj is not _MISSING:
        what = type(obj).__name__
        raise TargetError(f"{file}:{wanted} is a {what}, not a statepipe Workflow{_defines(found)}")
    candidates = [*found, *(w.name for w in found.values())]
    close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.6)
    guess = f"; did you mean {file}:{close[0]}?" if close else ""
    raise TargetError(
        f"{file} has no workflow {wanted!r} (by variable or by name){_defines(found)}{guess}"
    )


def _defines(found: dict[str, Workflow]) -> str:
    """``; it defines chain = Workflow('h-chain'), ...``: the variables and the names."""
    if not found:
        return "; it defines no statepipe Workflow"
    listed = ", ".join(f"{key} = Workflow({w.name!r})" for key, w in found.items())
    return f"; it defines {listed}"


def _workflows(module: ModuleType) -> dict[str, Workflow]:
    """The module's Workflow instances by the first global name bound to each."""
    out: dict[str, Workflow] = {}
    for key, value in vars(module).items():
        if isinstance(value, Workflow) and not any(v is value for v in out.values()):
            out[key] = value
    return out


def _import_file(file: Path) -> ModuleType:
    path = file.resolve()
    name = path.stem
    if not name.isidentifier():
        raise TargetError(
            f"cannot import {file}: {name!r} is not a valid module name "
            f"(the server imports nodes as '{name}:function'); rename the file"
        )
    existing = sys.modules.get(name)
    if existing is not None:
        loaded = getattr(existing, "__file__", None)
        if loaded and Path(loaded).resolve() == path:
            return existing
        raise TargetError(
            f"cannot import {file} as module {name!r}: that name is already taken by "
            f"{loaded or 'a built-in module'}; rename the file"
        )
    _append_path(path.parent)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {file}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:
        sys.modules.pop(name, None)
        summary = str(err).strip().splitlines()
        detail = f": {summary[0]}" if summary else ""
        raise TargetError(f"cannot import {file}: {type(err).__name__}{detail}") from err
    return module


def _append_path(directory: Path) -> None:
    """Puts a target file's folder at the end of ``sys.path``: its own modules
    become importable, but a folder of the same name as one of statepipe's
    packages (``control_plane/`` next to the flow) does not shadow it."""
    entry = str(directory)
    if entry not in sys.path:
        sys.path.append(entry)
        importlib.invalidate_caches()


def _load_spec(file: Path) -> tuple[dict[str, Any], str]:
    from statepipe_api.convert import SpecError, load_spec_file, spec_to_proto

    if not file.is_file():
        raise TargetError(f"no such file: {file}")
    try:
        spec = load_spec_file(file)
    except OSError as err:
        raise TargetError(f"cannot read {file}: {err.strerror or err}") from err
    spec_to_proto(spec)  # SpecError names the offending path
    name = spec["name"]
    if not isinstance(name, str):  # spec_to_proto checked it; for the type checker
        raise SpecError("name", "expected a string")
    _append_path(file.resolve().parent)
    return spec, name
