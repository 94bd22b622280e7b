"""``statepipe.sdk``: compiling decorated functions to specs, loading targets,
and the examples run end to end against the real control plane.

Node functions used by the compile checks are defined at module level here
(the SDK refuses anything else); a test decorates them on a fresh Workflow.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Any

import grpc
import pytest
from sp_testing import wait_for

import statepipe
from statepipe import Client, Retry, SpecError, TargetError, Workflow, load_target
from statepipe.client import StatepipeError
from statepipe.sdk import TargetWarning
from statepipe_api.v1 import statepipe_pb2 as pb

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HERE = __name__  # the module name the server imports this file's functions by


def path(fn: Any) -> str:
    return f"{HERE}:{fn.__qualname__}"


def node_of(spec: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in spec["nodes"] if n["id"] == node_id)


# ------------------------------------------------- functions used as nodes


def fetch(ctx: Any, url: str, retries: int = 3) -> str:
    return url


def parse(fetch: str) -> dict[str, Any]:
    return {"text": fetch}


async def summarize(ctx: Any, parse: dict[str, Any], input: Any, style: str = "short") -> str:
    await asyncio.sleep(0)
    return f"{style}: {parse['text']} ({input})"


def standalone(ctx: Any) -> int:
    return 1


def with_kwargs(ctx: Any, **extra: Any) -> dict[str, Any]:
    return extra


def ctx_second(value: int, ctx: Any) -> int:
    return value


def positional_only(ctx: Any, value: int, /) -> int:
    return value


def hook_a(ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
    return None


def hook_b(ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
    return None


class Tools:
    @staticmethod
    def lookup(ctx: Any, key: str) -> str:
        return key


# ------------------------------------------------------------ to_spec shapes


def test_a_workflow_compiles_to_a_spec_with_bound_parameters() -> None:
    wf = Workflow(
        "pipeline",
        version="2",
        description="fetch, parse, summarize",
        input_schema={"type": "object", "required": ["url"]},
        concurrency={"per_run": 4},
        labels={"team": "a"},
        metadata={"owner": "me"},
    )
    assert wf.node(fetch) is fetch  # bare, returns the function unchanged
    assert wf.node(retry=Retry(max_attempts=3, backoff_ms=10))(parse) is parse
    assert wf.node(id="sum", args={"style": "long"}, timeout_ms=5000)(summarize) is summarize
    assert fetch(None, "u") == "u" and parse("x") == {"text": "x"}  # still callable

    spec = wf.to_spec()
    assert wf.name == "pipeline" and wf.version == "2"
    assert wf.nodes == ["fetch", "parse", "sum"]
    assert spec == {
        "name": "pipeline",
        "version": "2",
        "description": "fetch, parse, summarize",
        "input_schema": {"type": "object", "required": ["url"]},
        "concurrency": {"per_run": 4},
        "labels": {"team": "a"},
        "metadata": {"owner": "me"},
        "nodes": [
            {
                "id": "fetch",
                "kind": "python",
                # url has no default: from the input; retries keeps its default.
                "params": {
                    "callable": path(fetch),
                    "args": {"url": "{{ input.url }}"},
                    "pass_ctx": True,
                },
            },
            {
                "id": "parse",
                "kind": "python",
                "after": ["fetch"],  # implicit: a parameter named after a node
                "params": {
                    "callable": path(parse),
                    "args": {"fetch": "{{ nodes.fetch.output }}"},
                    "pass_ctx": False,  # no ctx parameter
                },
                "retry": {"max_attempts": 3, "backoff_ms": 10},
            },
            {
                "id": "sum",
                "kind": "python",
                "after": ["parse"],
                "params": {
                    "callable": path(summarize),
                    "args": {
                        "parse": "{{ nodes.parse.output }}",
                        "input": "{{ input }}",
                        "style": "long",
                    },
                    "pass_ctx": True,
                },
                "timeout_ms": 5000,
            },
        ],
    }
    assert json.loads(json.dumps(spec)) == spec
    proto = wf.to_proto()
    assert isinstance(proto, pb.WorkflowSpec)
    assert [n.id for n in proto.nodes] == ["fetch", "parse", "sum"]
    assert proto.nodes[1].retry.max_attempts == 3 and proto.concurrency.per_run == 4
    assert wf.to_spec() is not wf.to_spec()  # a fresh dict each time


def test_every_node_option_lands_in_the_spec() -> None:
    wf = Workflow("options")
    wf.node(standalone)
    wf.node(
        id="full",
        after=[standalone],  # a function reference
        retry=Retry(5, 100, "exponential", max_backoff_ms=1000, jitter=0.25),
        timeout_ms=30_000,
        resources={"cpus": 2, "gpus": 0.5, "memory": 2**30, "custom": {"tpu": 1}},
        when="nodes.standalone.output == 1",
        concurrency_key="api",
        labels={"tier": "gold"},
        metadata={"cost": 3},
        continue_on_failure=True,
        isolation="process",
        args={"a": 1, "b": "{{ nodes.standalone.output }}"},
    )(with_kwargs)
    assert node_of(wf.to_spec(), "full") == {
        "id": "full",
        "kind": "python",
        "after": ["standalone"],
        "when": "nodes.standalone.output == 1",
        "params": {
            "callable": path(with_kwargs),
            "args": {"a": 1, "b": "{{ nodes.standalone.output }}"},
            "pass_ctx": True,
            "isolation": "process",
        },
        "retry": {
            "max_attempts": 5,
            "backoff_ms": 100,
            "strategy": "exponential",
            "max_backoff_ms": 1000,
            "jitter": 0.25,
        },
        "timeout_ms": 30_000,
        "resources": {"cpus": 2, "gpus": 0.5, "memory": 2**30, "custom": {"tpu": 1}},
        "concurrency_key": "api",
        "labels": {"tier": "gold"},
        "metadata": {"cost": 3},
        "continue_on_failure": True,
    }
    proto = wf.to_proto().nodes[1]
    assert proto.resources.memory == 2**30 and proto.retry.strategy == "exponential"


def test_binding_rules() -> None:
    wf = Workflow("binding")
    wf.node(id="url")(standalone)  # a node named like fetch's parameter
    wf.node(fetch)
    wf.node(id="parse", after=["fetch"])(parse)
    spec = wf.to_spec()
    # A parameter named after a node (declared before or after) reads its output.
    assert node_of(spec, "fetch")["params"]["args"] == {"url": "{{ nodes.url.output }}"}
    assert node_of(spec, "fetch")["after"] == ["url"]
    # Explicit and implicit dependencies are not doubled.
    assert node_of(spec, "parse")["after"] == ["fetch"]

    # args override an inferred binding; a node declared later still binds.
    later = Workflow("later")
    later.node(args={"fetch": "static"})(parse)
    later.node(args={"url": "{{ input.address }}"})(fetch)
    spec = later.to_spec()
    assert "after" not in node_of(spec, "parse")
    assert node_of(spec, "parse")["params"]["args"] == {"fetch": "static"}
    assert node_of(spec, "fetch")["params"]["args"] == {"url": "{{ input.address }}"}

    # A parameter named after the node itself is not a dependency.
    own = Workflow("own")
    own.node(id="fetch")(parse)
    assert node_of(own.to_spec(), "fetch")["params"]["args"] == {"fetch": "{{ input.fetch }}"}

    # Methods reachable by a dotted qualname are fine.
    tools = Workflow("tools")
    tools.node(id="lookup")(Tools.lookup)
    params = tools.to_spec()["nodes"][0]["params"]
    assert params["callable"] == f"{HERE}:Tools.lookup"
    assert params["args"] == {"key": "{{ input.key }}"}


def test_after_accepts_ids_functions_and_a_single_value() -> None:
    wf = Workflow("after")
    wf.node(standalone)
    wf.node(id="one", after="standalone")(with_kwargs)
    wf.node(id="two", after=standalone)(with_kwargs)
    wf.node(id="three", after=[standalone, "one", "two", "one"])(with_kwargs)
    spec = wf.to_spec()
    assert node_of(spec, "one")["after"] == ["standalone"]
    assert node_of(spec, "two")["after"] == ["standalone"]
    assert node_of(spec, "three")["after"] == ["standalone", "one", "two"]

    with pytest.raises(ValueError, match=r"after=fetch is not a node of workflow 'after'"):
        wf.node(id="four", after=[fetch])(with_kwargs)
    wf.node(id="w1")(with_kwargs)
    with pytest.raises(ValueError, match="ambiguous: it runs as nodes one, two, three, w1"):
        wf.node(id="five", after=[with_kwargs])(standalone)
    with pytest.raises(TypeError, match="after must hold node ids or node functions"):
        wf.node(id="six", after=[3])(standalone)  # type: ignore[list-item]


def test_hooks_are_named_by_module_and_qualname() -> None:
    wf = Workflow("hooked")
    for hook in ("on_init", "on_progress", "on_success", "on_error", "on_retry"):
        assert getattr(wf, hook)(hook_a) is hook_a
    assert wf.on_complete(hook_b) is hook_b
    wf.node(standalone)
    spec = wf.to_spec()
    assert spec["hooks"] == {
        "on_init": path(hook_a),
        "on_progress": path(hook_a),
        "on_success": path(hook_a),
        "on_error": path(hook_a),
        "on_retry": path(hook_a),
        "on_complete": path(hook_b),
    }
    assert wf.to_proto().hooks["on_complete"] == path(hook_b)
    with pytest.raises(ValueError, match="already has an on_complete hook"):
        wf.on_complete(hook_a)


def test_retry_validation() -> None:
    assert Retry().to_dict() == {"max_attempts": 1}
    assert Retry(3, jitter=1).to_dict() == {"max_attempts": 3, "jitter": 1.0}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"max_attempts": 0}, r"Retry.max_attempts must be at least 1, got 0"),
        ({"max_attempts": 2**31}, r"Retry.max_attempts must be at most 2147483647, got 2147483648"),
        ({"max_attempts": "3"}, r"Retry.max_attempts must be an integer, got '3'"),
        ({"max_attempts": True}, r"must be an integer"),
        ({"backoff_ms": -1}, r"Retry.backoff_ms must be at least 0, got -1"),
        ({"backoff_ms": 1.5}, r"Retry.backoff_ms must be an integer"),
        ({"max_backoff_ms": -5}, r"Retry.max_backoff_ms must be at least 0"),
        ({"strategy": "quadratic"}, r"Retry.strategy must be one of 'fixed', 'linear'"),
        ({"jitter": 1.5}, r"Retry.jitter must be a number from 0 to 1, got 1.5"),
        ({"jitter": -0.1}, r"Retry.jitter"),
        ({"jitter": math.nan}, r"Retry.jitter"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            Retry(**kwargs)
    with pytest.raises(AttributeError):
        Retry().max_attempts = 2  # type: ignore[misc]


def test_functions_the_server_cannot_import_are_refused() -> None:
    wf = Workflow("refusals")

    def nested(ctx: Any) -> None:
        return None

    with pytest.raises(TypeError, match=r"is a nested function: .*define it at module level"):
        wf.node(nested)
    with pytest.raises(TypeError, match=r"is a lambda"):
        wf.node(id="l")(lambda ctx: None)
    with pytest.raises(TypeError, match=r"the on_success hook .* is a nested function"):
        wf.on_success(nested)
    with pytest.raises(TypeError, match=r"the on_error hook .* is a lambda"):
        wf.on_error(lambda ctx, meta: None)
    with pytest.raises(TypeError, match="must be a function"):
        wf.node(id="x")(42)  # type: ignore[type-var]
    assert wf.nodes == [] and wf.hooks == {}


def test_mistakes_are_named() -> None:
    wf = Workflow("mistakes")
    wf.node(standalone)
    with pytest.raises(ValueError, match="node 'standalone' is declared twice"):
        wf.node(standalone)
    with pytest.raises(TypeError, match="ctx must be the first positional parameter"):
        wf.node(ctx_second)
    with pytest.raises(TypeError, match="positional-only parameter 'value'"):
        wf.node(positional_only)
    with pytest.raises(TypeError, match=r"args\['nope'\]: .*fetch has no parameter 'nope'"):
        wf.node(args={"nope": 1})(fetch)
    with pytest.raises(TypeError, match="args cannot set ctx"):
        wf.node(args={"ctx": 1})(fetch)
    with pytest.raises(ValueError, match="isolation must be 'thread' or 'process'"):
        wf.node(isolation="ray")(fetch)
    with pytest.raises(ValueError, match="async function cannot use isolation='process'"):
        wf.node(isolation="process")(summarize)
    with pytest.raises(ValueError, match="timeout_ms must be at least 0"):
        wf.node(timeout_ms=-1)(fetch)
    with pytest.raises(TypeError, match=r"give the node id as a keyword: @wf.node\(id='x'\)"):
        wf.node("x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="retry must be a Retry"):
        wf.node(retry=3)(fetch)  # type: ignore[arg-type]
    assert wf.nodes == ["standalone"]

    with pytest.raises(SpecError, match="workflow 'empty' has no nodes"):
        Workflow("empty").to_spec()
    with pytest.raises(ValueError, match="must not be empty"):
        Workflow(" ")

    unknown = Workflow("unknown")
    unknown.node(after=["standalon"])(fetch)
    unknown.node(standalone)
    with pytest.raises(SpecError) as err:
        unknown.to_spec()
    assert str(err.value) == 'nodes[0].after: unknown node "standalon" (did you mean "standalone"?)'

    cycle = Workflow("cycle")
    cycle.node(id="a", after=["c"])(with_kwargs)
    cycle.node(id="b", after=["a"])(with_kwargs)
    cycle.node(id="c", after=["b"])(with_kwargs)
    with pytest.raises(SpecError, match=r"nodes: cycle: a -> c -> b -> a"):
        cycle.to_spec()

    shape = Workflow("shape")
    shape.node(resources={"cpu": 1})(standalone)
    with pytest.raises(SpecError) as err:
        shape.to_spec()
    assert str(err.value) == 'nodes[0].resources: unknown field "cpu" (did you mean "cpus"?)'


# ------------------------------------------------------ nodes of any kind


def report(ctx: Any, greet: dict[str, Any], squares: list[int], doubled: Any) -> dict[str, Any]:
    return {"said": greet["stdout"].strip(), "squares": squares, "doubled": doubled}


def test_nodes_of_any_kind_mix_with_functions_in_declaration_order() -> None:
    wf = Workflow("mixed")
    assert wf.add_node("greet", "shell", {"argv": ("echo", "hi")}, timeout_ms=5000) == "greet"
    wf.node(id="numbers")(with_kwargs)
    template = {
        "kind": "python",
        "params": {"callable": "m:square", "args": {"n": "{{ item }}"}},
        "retry": Retry(max_attempts=2),  # a Retry in params becomes its dict
    }
    assert wf.map("squares", "{{ nodes.numbers.output }}", template, after=[with_kwargs]) == (
        "squares"
    )
    assert wf.workflow("doubled", "child", {"x": "{{ input.count }}"}, retry={"max_attempts": 3})
    wf.node(report)  # greet, squares, doubled: parameters named after kind nodes
    wf.add_node(
        "join",
        "noop",
        after=["report", "greet"],
        when="nodes.report.output.said == 'hi'",
        resources={"cpus": 1},
        concurrency_key="k",
        labels={"tier": "a"},
        metadata={"m": 1},
        continue_on_failure=True,
    )
    wf.add_node("pinned", "workflow", {"workflow": "child", "version": "2"})
    wf.map("lenient", [1, 2], {"kind": "noop"}, max_concurrency=2, continue_on_failure=True)
    spec = wf.to_spec()
    assert wf.nodes == [
        "greet", "numbers", "squares", "doubled", "report", "join", "pinned", "lenient"
    ]  # fmt: skip
    assert spec["nodes"][0] == {
        "id": "greet",
        "kind": "shell",
        "params": {"argv": ["echo", "hi"]},
        "timeout_ms": 5000,
    }
    assert node_of(spec, "squares") == {
        "id": "squares",
        "kind": "map",
        "after": ["numbers"],
        "params": {
            "items": "{{ nodes.numbers.output }}",
            "node": {
                "kind": "python",
                "params": {"callable": "m:square", "args": {"n": "{{ item }}"}},
                "retry": {"max_attempts": 2},
            },
        },
    }
    assert node_of(spec, "doubled") == {
        "id": "doubled",
        "kind": "workflow",
        "params": {"workflow": "child", "input": {"x": "{{ input.count }}"}},
        "retry": {"max_attempts": 3},
    }
    assert node_of(spec, "report") == {
        "id": "report",
        "kind": "python",
        "after": ["greet", "squares", "doubled"],
        "params": {
            "callable": path(report),
            "args": {
                "greet": "{{ nodes.greet.output }}",
                "squares": "{{ nodes.squares.output }}",
                "doubled": "{{ nodes.doubled.output }}",
            },
            "pass_ctx": True,
        },
    }
    assert node_of(spec, "join") == {
        "id": "join",
        "kind": "noop",  # no params: none in the spec
        "after": ["report", "greet"],
        "when": "nodes.report.output.said == 'hi'",
        "resources": {"cpus": 1},
        "concurrency_key": "k",
        "labels": {"tier": "a"},
        "metadata": {"m": 1},
        "continue_on_failure": True,
    }
    assert node_of(spec, "pinned")["params"] == {"workflow": "child", "version": "2"}
    # map's continue_on_failure is the node's own, as for every node.
    assert node_of(spec, "lenient") == {
        "id": "lenient",
        "kind": "map",
        "params": {"items": [1, 2], "node": {"kind": "noop"}, "max_concurrency": 2},
        "continue_on_failure": True,
    }
    assert json.loads(json.dumps(spec)) == spec
    assert [n.kind for n in wf.to_proto().nodes][:4] == ["shell", "python", "map", "workflow"]

    # The params are the caller's: changing them later does not change the
    # spec given before, nor does changing a spec given out.
    params = {"argv": ["echo"]}
    again = Workflow("copies")
    again.add_node("a", "shell", params)
    first = again.to_spec()
    first["nodes"][0]["params"]["argv"].append("x")
    assert again.to_spec()["nodes"][0]["params"] == {"argv": ["echo"]}


def test_add_node_mistakes_are_named() -> None:
    wf = Workflow("kind-mistakes")
    wf.node(standalone)
    wf.add_node("sh", "shell", {"argv": ["true"]})
    with pytest.raises(ValueError, match=r"node 'sh' is declared twice .* \(kind shell\)"):
        wf.add_node("sh", "noop")
    with pytest.raises(ValueError, match=r"node 'sh' is declared twice .* \(kind shell\)"):
        wf.node(id="sh")(fetch)
    with pytest.raises(ValueError, match=r"node 'standalone' is declared twice .*standalone\)"):
        wf.add_node("standalone", "noop")
    with pytest.raises(TypeError, match="a node id must be a string, got int"):
        wf.add_node(3, "noop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a node id must not be empty"):
        wf.add_node(" ", "noop")
    with pytest.raises(TypeError, match="node 'x': kind must be a string"):
        wf.add_node("x", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node 'x': kind must not be empty"):
        wf.add_node("x", "")
    with pytest.raises(TypeError, match="node 'x': params must be a dict, got list"):
        wf.add_node("x", "shell", ["echo"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="node 'x': params keys must be strings"):
        wf.add_node("x", "noop", {1: 2})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="node 'x': timeout_ms must be at least 0"):
        wf.add_node("x", "noop", timeout_ms=-1)
    with pytest.raises(TypeError, match="node 'x': retry must be a Retry"):
        wf.add_node("x", "noop", retry=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Retry\.max_attempts must be at least 1"):
        wf.add_node("x", "noop", retry={"max_attempts": 0})
    with pytest.raises(TypeError, match="node 'x': labels must be a dict"):
        wf.add_node("x", "noop", labels=["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="node 'x': continue_on_failure must be True or False"):
        wf.map("x", [1], {"kind": "noop"}, continue_on_failure="yes")
    with pytest.raises(ValueError, match="after=fetch is not a node of workflow"):
        wf.add_node("x", "noop", after=[fetch])
    assert wf.nodes == ["standalone", "sh"]  # nothing half-declared

    wf.add_node("self", "noop", after=["self"])
    with pytest.raises(SpecError, match=r'nodes\[2\].after: node "self" cannot depend on itself'):
        wf.to_spec()
    unknown = Workflow("kind-unknown")
    unknown.add_node("x", "noop", after=["standalon"])
    unknown.node(standalone)
    with pytest.raises(SpecError, match=r'nodes\[0\].after: unknown node "standalon"'):
        unknown.to_spec()
    not_json = Workflow("kind-not-json")
    not_json.add_node("x", "noop", {"value": object()})
    with pytest.raises(SpecError, match=r"nodes\[0\].params.value: expected a JSON value"):
        not_json.to_spec()


def test_statepipe_exports_the_sdk_lazily() -> None:
    assert statepipe.Workflow is Workflow and statepipe.Retry is Retry
    assert statepipe.load_target is load_target and statepipe.TargetError is TargetError
    assert {"Workflow", "Retry", "load_target", "TargetError"} <= set(dir(statepipe))


# ------------------------------------------------------------- load_target

FLOW = """
from statepipe import Workflow

wf = Workflow("{name}")


@wf.node
def step(ctx, x):
    return x
"""


def write_module(tmp_path: Path, body: str, **fmt: str) -> Path:
    file = tmp_path / f"flow_{uuid.uuid4().hex[:10]}.py"
    file.write_text(textwrap.dedent(body).format(**fmt) if fmt else textwrap.dedent(body))
    return file


def test_load_target_imports_a_python_file(tmp_path: Path) -> None:
    file = write_module(tmp_path, FLOW, name="from-file")
    spec, name = load_target(str(file))
    assert name == "from-file" and spec is not None
    assert spec["nodes"][0]["params"] == {
        "callable": f"{file.stem}:step",
        "args": {"x": "{{ input.x }}"},
        "pass_ctx": True,
    }
    # The module is importable by name (as the in-process server will do it).
    assert sys.modules[file.stem].__file__ == str(file)
    assert str(tmp_path) in sys.path
    from executors.runners import import_callable

    assert import_callable(f"{file.stem}:step") is sys.modules[file.stem].step
    # Loading again reuses the module; ":var" picks the workflow.
    assert load_target(f"{file}:wf") == (spec, "from-file")


def test_load_target_with_several_workflows(tmp_path: Path) -> None:
    file = write_module(
        tmp_path,
        """
        from statepipe import Workflow

        first = Workflow("first")
        second = Workflow("second")
        alias = first
        not_a_workflow = 3


        @first.node
        def a(ctx):
            return 1


        @second.node
        def b(ctx):
            return 2
        """,
    )
    with pytest.raises(TargetError) as err:
        load_target(str(file))
    assert str(err.value) == (
        f"{file} defines several workflows (first, second); pick one: {file}:first"
    )
    assert load_target(f"{file}:second")[1] == "second"
    assert load_target(f"{file}:alias")[1] == "first"
    with pytest.raises(TargetError) as err:
        load_target(f"{file}:third")
    assert str(err.value) == (
        f"{file} has no workflow 'third' (by variable or by name); "
        "it defines first = Workflow('first'), second = Workflow('second')"
    )
    with pytest.raises(TargetError, match=r":not_a_workflow is a int, not a statepipe Workflow"):
        load_target(f"{file}:not_a_workflow")


NAMED_FLOWS = """
from statepipe import Workflow

chain = Workflow("h-chain")
fan = Workflow("fan-out")
team = Workflow("team.etl")
# A variable named like another workflow: `:fan-out` is fan's name, `:swap` and
# `:other` are each other's names.
swap = Workflow("other")
other = Workflow("swap")


@chain.node
def a(ctx):
    return "chain"


@fan.node
def b(ctx):
    return "fan"


@team.node
def c(ctx):
    return "team"


@swap.node
def d(ctx):
    return "swap"


@other.node
def e(ctx):
    return "other"
"""


def test_load_target_names_a_workflow_by_its_variable_or_its_name(tmp_path: Path) -> None:
    file = write_module(tmp_path, NAMED_FLOWS)
    by_variable = load_target(f"{file}:chain")
    assert by_variable[1] == "h-chain"
    assert load_target(f"{file}:h-chain") == by_variable  # what `statepipe ls` shows
    assert load_target(f"{file}:fan-out")[1] == "fan-out"
    assert load_target(f"{file}:team.etl")[1] == "team.etl"  # a name with a dot

    # Both match, different workflows: the variable wins, and a warning says so.
    with pytest.warns(TargetWarning) as caught:
        spec, name = load_target(f"{file}:swap")
    assert name == "other" and spec["nodes"][0]["id"] == "d"
    assert [str(w.message) for w in caught] == [
        f"{file}:swap is the variable swap (workflow 'other'), not the workflow named "
        "'swap' (variable other); the variable wins"
    ]
    assert caught[0].filename == __file__  # points at the caller of load_target

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name nobody else has: no warning
        assert load_target(f"{file}:h-chain")[1] == "h-chain"


def test_an_unknown_workflow_lists_variables_and_names_with_a_guess(tmp_path: Path) -> None:
    file = write_module(tmp_path, NAMED_FLOWS)
    defines = (
        "it defines chain = Workflow('h-chain'), fan = Workflow('fan-out'), "
        "team = Workflow('team.etl'), swap = Workflow('other'), other = Workflow('swap')"
    )
    with pytest.raises(TargetError) as err:
        load_target(f"{file}:h-chian")
    assert str(err.value) == (
        f"{file} has no workflow 'h-chian' (by variable or by name); {defines}; "
        f"did you mean {file}:h-chain?"
    )
    with pytest.raises(TargetError) as err:
        load_target(f"{file}:chian")
    assert f"did you mean {file}:chain?" in str(err.value)
    with pytest.raises(TargetError) as err:
        load_target(f"{file}:zzz")
    assert "did you mean" not in str(err.value) and defines in str(err.value)


def test_two_workflows_of_one_name_are_picked_by_variable(tmp_path: Path) -> None:
    file = write_module(
        tmp_path,
        """
        from statepipe import Workflow

        v1 = Workflow("flow", version="1")
        v2 = Workflow("flow", version="2")


        @v1.node
        def a(ctx):
            return 1


        @v2.node
        def b(ctx):
            return 2
        """,
    )
    with pytest.raises(TargetError) as err:
        load_target(f"{file}:flow")
    assert str(err.value) == (
        f"{file} defines several workflows named 'flow' (v1, v2); "
        f"pick one by its variable: {file}:v1"
    )


def test_load_target_errors_are_one_line(tmp_path: Path) -> None:
    def message(target: str) -> str:
        with pytest.raises(TargetError) as err:
            load_target(target)
        text = str(err.value)
        assert "\n" not in text
        return text

    assert message(str(tmp_path / "missing.py")) == f"no such file: {tmp_path / 'missing.py'}"
    assert message(str(tmp_path / "missing.py:wf")) == f"no such file: {tmp_path / 'missing.py'}"
    assert message("nowhere/flow.yaml") == "no such file: nowhere/flow.yaml"
    assert message("flow.JSON") == "no such file: flow.JSON"

    empty = write_module(tmp_path, "x = 1\n")
    assert message(str(empty)) == f"{empty} defines no statepipe Workflow"

    failing = write_module(tmp_path, "raise RuntimeError('no database\\nconfigured')\n")
    assert message(str(failing)) == f"cannot import {failing}: RuntimeError: no database"
    assert failing.stem not in sys.modules  # a later attempt imports it afresh

    broken = write_module(tmp_path, "def f(:\n")
    assert message(str(broken)).startswith(f"cannot import {broken}: SyntaxError: ")

    exits = write_module(tmp_path, "import sys\nsys.exit('bye')\n")
    assert message(str(exits)) == f"cannot import {exits}: SystemExit: bye"

    taken = tmp_path / "json.py"
    taken.write_text("x = 1\n")
    assert message(str(taken)).startswith(f"cannot import {taken} as module 'json': that name")

    dashed = tmp_path / "my-flow.py"
    dashed.write_text("x = 1\n")
    assert "'my-flow' is not a valid module name" in message(str(dashed))

    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text("name: w\nnodes: []\n")
    assert message(f"{spec_file}:wf") == f"{spec_file}:wf: ':wf' only applies to Python files"
    no_var = f"{empty}:: name the workflow (its variable or its name) after ':' (or leave ':' out)"
    assert message(f"{empty}:") == no_var
    assert message("  ").startswith("no workflow given")


def test_load_target_reads_spec_files_and_passes_names_through(tmp_path: Path) -> None:
    spec = {
        "name": "from-json",
        "version": "3",
        "nodes": [{"id": "a", "kind": "noop"}],
    }
    json_file = tmp_path / "flow.json"
    json_file.write_text(json.dumps(spec))
    assert load_target(str(json_file)) == (spec, "from-json")

    yaml_file = tmp_path / "flow.yml"
    yaml_file.write_text("name: from-yaml\nversion: 1.10\nnodes:\n  - {id: a, kind: noop}\n")
    assert load_target(str(yaml_file)) == (
        {"name": "from-yaml", "version": "1.10", "nodes": [{"id": "a", "kind": "noop"}]},
        "from-yaml",
    )

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - {id: a, kind: noop, afer: [b]}\n")
    with pytest.raises(SpecError, match=r'nodes\[0\]: unknown field "afer"'):
        load_target(str(bad))

    assert load_target("montecarlo") == (None, "montecarlo")
    assert load_target("team/flow-v2") == (None, "team/flow-v2")


def test_load_target_of_each_example() -> None:
    for file, name, count in [
        ("montecarlo.py", "montecarlo", 9),
        ("agent.py", "agent", 4),
        ("etl.yaml", "etl", 6),
        ("storyteller.py", "storyteller", 3),
    ]:
        spec, got = load_target(str(EXAMPLES / file))
        assert got == name and spec is not None and len(spec["nodes"]) == count


# ---------------------------------------------- end to end (real server)

CALLS: list[tuple[str, str, Any]] = []


def double(x: int) -> int:
    return 2 * x


async def add_async(ctx: Any, double: int, input: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx.log("adding")
    return {"sum": double + input["y"], "attempt": ctx.attempt}


def record_hook(ctx: dict[str, Any], metadata: dict[str, Any]) -> None:
    CALLS.append((ctx["hook"], ctx.get("node_id", ""), metadata))


def test_a_decorated_workflow_runs(client: Client) -> None:
    wf = Workflow("sdk-e2e", metadata={"team": "sdk"})
    wf.node(double)  # no ctx: pass_ctx false
    wf.node(id="add")(add_async)
    wf.on_success(record_hook)
    wf.on_complete(record_hook)
    CALLS.clear()
    client.register_workflow(wf.to_spec())
    run = client.wait(client.start_run("sdk-e2e", {"x": 4, "y": 1}), timeout=30)
    assert run.status == "SUCCEEDED", run.error
    assert run.node("double").output == 8
    assert run.output == {"add": {"sum": 9, "attempt": 1}}
    wait_for(lambda: ("on_complete", "", {"team": "sdk"}) in CALLS)
    assert {c[1] for c in CALLS if c[0] == "on_success"} == {"double", "add"}


def square(n: int) -> int:
    return n * n


def numbers(count: int) -> list[int]:
    return list(range(1, count + 1))


def test_nodes_of_any_kind_run_with_decorated_ones(client: Client) -> None:
    child = Workflow("sdk-child")
    child.node(double)  # x <- {{ input.x }}
    client.register_workflow(child.to_spec())

    wf = Workflow("sdk-kinds", input_schema={"type": "object", "required": ["count"]})
    wf.add_node("greet", "shell", {"argv": ["echo", "hi"]})
    wf.node(numbers)
    item = {
        "kind": "python",
        "params": {"callable": path(square), "args": {"n": "{{ item }}"}, "pass_ctx": False},
    }
    wf.map("squares", "{{ nodes.numbers.output }}", item, after=[numbers], max_concurrency=2)
    wf.workflow("doubled", "sdk-child", {"x": "{{ input.count }}"})
    wf.node(report)
    client.register_workflow(wf.to_spec())
    run = client.wait(client.start_run("sdk-kinds", {"count": 3}), timeout=60)
    assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
    assert run.node("greet").output["stdout"] == "hi\n"
    assert run.node("squares").output == [1, 4, 9]
    assert run.node("doubled").output == {"double": 6}
    assert run.output == {"report": {"said": "hi", "squares": [1, 4, 9], "doubled": {"double": 6}}}
    children = client.list_runs(parent=run.run_id, limit=None)
    assert sorted(c.parent_node_id or "" for c in children) == [
        "doubled", "squares[0]", "squares[1]", "squares[2]"
    ]  # fmt: skip
    assert all(c.status == "SUCCEEDED" for c in children)


def test_the_server_checks_the_params_of_a_kind(client: Client) -> None:
    wf = Workflow("sdk-bad-kind")
    wf.add_node("listing", "shell", {"argv": "ls -l"})  # not a list: the SDK lets it be
    spec = wf.to_spec()
    with pytest.raises(StatepipeError) as caught:
        client.register_workflow(spec)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 'listing'" in caught.value.message and "argv" in caught.value.message


def test_montecarlo_example(client: Client) -> None:
    spec, name = load_target(str(EXAMPLES / "montecarlo.py"))
    assert spec is not None
    client.register_workflow(spec)
    run = client.wait(client.start_run(name, {"samples": 200_000, "seed": 1}), timeout=30)
    assert run.status == "SUCCEEDED", run.error
    result = run.output["reduce"]
    assert result["samples"] == 200_000
    assert abs(result["pi"] - math.pi) < 0.05
    assert run.node("sample_3").attempt == 2
    assert all(run.node(f"sample_{i}").attempt == 1 for i in range(8) if i != 3)
    retries = [
        (e.status, e.attempt)
        for e in client.watch(run.run_id)
        if e.kind == "node_status" and e.node_id == "sample_3"
    ]
    assert ("RETRY_WAIT", 1) in retries and retries[-1] == ("SUCCEEDED", 2)
    kinds = {e.kind for e in client.watch(run.run_id)}
    assert {"log", "progress"} <= kinds

    again = client.wait(client.start_run(name, {"samples": 200_000, "seed": 1}), timeout=30)
    assert again.output == run.output  # same seed, same estimate

    # An empty input: the nodes apply the schema's defaults themselves.
    default = client.wait(client.start_run(name, {}), timeout=30)
    assert default.status == "SUCCEEDED" and default.output["reduce"]["samples"] == 100_000
    fewer = client.wait(client.start_run(name, {"samples": 1001, "shards": 2}), timeout=30)
    assert fewer.output["reduce"]["samples"] == 1001
    assert fewer.node("sample_0").output["samples"] == 501
    assert fewer.node("sample_5").output == {"inside": 0, "samples": 0}


def test_etl_example(client: Client) -> None:
    spec, name = load_target(str(EXAMPLES / "etl.yaml"))
    assert spec is not None
    client.register_workflow(spec)
    run = client.wait(client.start_run(name), timeout=30)
    assert run.status == "SUCCEEDED", run.error
    assert run.node("transform_a").output == {"apac": 16_500, "eu": 17_000, "us": 26_000}
    assert run.node("transform_b").output == [
        {"product": "kettle", "units": 11},
        {"product": "toaster", "units": 5},
        {"product": "blender", "units": 2},
    ]
    assert run.output == {
        "report": {
            "total_cents": 59_500,
            "best_region": "us",
            "top_product": "kettle",
            "rows_loaded": 9,
            "rejected": 3,
            "summary": "7/10 orders valid, revenue 595.00, best region us, top product kettle",
        }
    }
    # The transforms waited for extract, and load for all three.
    transforms = [run.node(f"transform_{x}") for x in "abc"]
    assert all(t.started_at >= run.node("extract").finished_at for t in transforms)
    assert run.node("load").started_at >= max(t.finished_at for t in transforms)


def test_agent_example_takes_one_branch(client: Client) -> None:
    spec, name = load_target(str(EXAMPLES / "agent.py"))
    assert spec is not None
    client.register_workflow(spec)

    calc = client.wait(client.start_run(name, {"question": "what is (17 + 4) * 3?"}), timeout=30)
    assert calc.status == "SUCCEEDED", calc.error
    assert calc.node("calculate").status == "SUCCEEDED"
    assert calc.node("search").status == "SKIPPED"
    assert calc.output == {
        "answer": {
            "question": "what is (17 + 4) * 3?",
            "tool": "calculate",
            "answer": "(17 + 4) * 3 = 63",
        }
    }
    tool_calls = [e.data for e in client.watch(calc.run_id) if e.kind == "tool_call"]
    assert [(d["name"], d["result"]) for d in tool_calls] == [("calculator", 63)]

    look = client.wait(client.start_run(name, {"question": "Who wrote Dune?"}), timeout=30)
    assert look.status == "SUCCEEDED", look.error
    assert look.node("search").status == "SUCCEEDED"
    assert look.node("calculate").status == "SKIPPED"
    assert look.output["answer"]["tool"] == "search"
    assert "Frank Herbert" in look.output["answer"]["answer"]


def test_storyteller_example_streams_reports_usage_and_retries(client: Client) -> None:
    spec, name = load_target(str(EXAMPLES / "storyteller.py"))
    assert spec is not None
    client.register_workflow(spec)
    run = client.wait(client.start_run(name, {"topic": "tides", "words": 12}), timeout=60)
    assert run.status == "SUCCEEDED", run.error
    assert run.output == {"review": {"words": 12, "sentences": 1, "verdict": "ship it"}}
    assert run.node("review").attempt == 2
    tokens = [e.message for e in client.watch(run.run_id) if e.kind == "token"]
    assert len(tokens) == 24 + 12
    assert run.usage["gen_ai.usage.output_tokens"] == 36
    assert run.usage["cost_usd"] > 0
