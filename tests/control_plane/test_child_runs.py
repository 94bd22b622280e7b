"""Child runs: `workflow` nodes and `map` items run as runs of their own,
under their parent run and node (real control plane, embedded Postgres, both
executors for what runs nodes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from sp_testing import py, wait_for

from statepipe.client import Client, StatepipeError


def child_workflow(name: str = "child", **node: Any) -> dict[str, Any]:
    """A registered workflow of one python node that doubles input.n."""
    return {
        "name": name,
        "nodes": [py("double", "add", args={"a": "{{ input.n }}", "b": "{{ input.n }}"}, **node)],
    }


def map_node(
    node_id: str,
    items: Any,
    template: dict[str, Any],
    after: list[str] | None = None,
    **params: Any,
) -> dict[str, Any]:
    node = {"id": node_id, "kind": "map", "params": {"items": items, "node": template, **params}}
    return {**node, "after": after} if after else node


def children_of(client: Client, run_id: str) -> list[Any]:
    return client.list_runs(parent=run_id, limit=None, order_by="created_at")


@pytest.mark.both_executors
def test_a_workflow_node_runs_a_child_run_and_returns_its_output(client: Client) -> None:
    client.register_workflow(child_workflow())
    run = client.wait(
        client.start_run(
            {
                "name": "parent",
                "nodes": [
                    {
                        "id": "sub",
                        "kind": "workflow",
                        "params": {"workflow": "child", "input": {"n": "{{ input.n }}"}},
                    },
                    py("after", "echo", after=["sub"], args={"got": "{{ nodes.sub.output }}"}),
                ],
            },
            {"n": 21},
        ),
        timeout=60,
    )
    assert run.status == "SUCCEEDED", [n.error for n in run.nodes]
    assert run.node("sub").output == {"double": 42}
    assert run.node("after").output == {"got": {"double": 42}}
    [child] = children_of(client, run.run_id)
    assert child.parent_run_id == run.run_id
    assert child.parent_node_id == "sub"
    assert child.workflow_name == "child"
    assert child.status == "SUCCEEDED"
    assert child.input == {"n": 21}
    # The dashboard's default leaves children out; the JSON shape names the parent.
    roots = client.list_runs(roots_only=True, limit=None)
    assert run.run_id in {r.run_id for r in roots}
    assert child.run_id not in {r.run_id for r in roots}
    from statepipe_api.convert import run_to_dict

    shape = run_to_dict(client.get_run(child.run_id).proto)
    assert shape["parent_run_id"] == run.run_id
    assert shape["parent_node_id"] == "sub"
    assert run_to_dict(client.get_run(run.run_id).proto)["parent_run_id"] is None


def test_a_failed_child_fails_the_node_with_its_error_and_a_retry_resumes_it(
    client: Client,
) -> None:
    client.register_workflow(
        {"name": "flaky-child", "nodes": [py("once", "boom", args={"message": "child broke"})]}
    )
    run = client.wait(
        client.start_run(
            {
                "name": "parent-of-flaky",
                "nodes": [{"id": "sub", "kind": "workflow", "params": {"workflow": "flaky-child"}}],
            }
        ),
        timeout=60,
    )
    assert run.status == "FAILED"
    error = run.node("sub").error
    assert "child run" in error and "FAILED" in error and "flaky-child" in error
    [child] = children_of(client, run.run_id)
    assert child.status == "FAILED"
    # Run again, the node finds its child again instead of starting another.
    client.retry_node(run.run_id, "sub")
    wait_for(lambda: client.get_run(run.run_id).status == "FAILED", timeout=30)
    assert [c.run_id for c in children_of(client, run.run_id)] == [child.run_id]
    assert client.get_run(child.run_id).node("once").attempt == 2


def test_an_unknown_workflow_or_a_bad_input_fails_the_node_at_once(client: Client) -> None:
    client.register_workflow(
        {
            "name": "strict-child",
            "input_schema": {"type": "object", "required": ["n"]},
            "nodes": [py("x", "echo")],
        }
    )
    run = client.wait(
        client.start_run(
            {
                "name": "parent-bad-children",
                "nodes": [
                    {"id": "missing", "kind": "workflow", "params": {"workflow": "no-such"}},
                    {
                        "id": "bad",
                        "kind": "workflow",
                        "params": {"workflow": "strict-child", "input": {"m": 1}},
                        "retry": {"max_attempts": 3},
                    },
                ],
            }
        ),
        timeout=60,
    )
    assert run.status == "FAILED"
    assert "'no-such' is not registered" in run.node("missing").error
    assert (
        "input" in run.node("bad").error and "'n' is a required property" in run.node("bad").error
    )
    assert run.node("bad").attempt == 1  # not retried: another attempt cannot mend it


def test_pause_resume_and_cancel_reach_the_child(client: Client, tmp_path: Path) -> None:
    client.register_workflow(
        {
            "name": "slow-child",
            "nodes": [
                py("first", "record", args={"marker_dir": str(tmp_path), "seconds": 0.5}),
                py("second", "record", after=["first"], args={"marker_dir": str(tmp_path)}),
            ],
        }
    )
    run_id = client.start_run(
        {
            "name": "parent-of-slow",
            "nodes": [{"id": "sub", "kind": "workflow", "params": {"workflow": "slow-child"}}],
        }
    )
    child = wait_for(lambda: children_of(client, run_id))[0]
    client.pause(run_id)
    wait_for(lambda: client.get_run(child.run_id).status == "PAUSED")
    time.sleep(1.0)  # "first" ends meanwhile; "second" must not start while paused
    assert client.get_run(child.run_id).node("second").status == "PENDING"
    client.resume(run_id)
    run = client.wait(run_id, timeout=60)
    assert run.status == "SUCCEEDED"
    assert client.get_run(child.run_id).status == "SUCCEEDED"

    run_id = client.start_run(
        {
            "name": "parent-of-slow",
            "nodes": [{"id": "sub", "kind": "workflow", "params": {"workflow": "slow-child"}}],
        }
    )
    child = wait_for(lambda: children_of(client, run_id))[0]
    client.cancel(run_id)
    assert client.wait(run_id, timeout=30).status == "CANCELLED"
    wait_for(lambda: client.get_run(child.run_id).status == "CANCELLED", timeout=30)


def test_interrupt_reaches_the_child_and_resume_continues_the_same_child(
    client: Client, tmp_path: Path
) -> None:
    client.register_workflow(
        {
            "name": "hanging-child",
            "nodes": [
                py(
                    "hang",
                    "first_attempt_hangs",
                    args={"marker_dir": str(tmp_path), "seconds": 60},
                )
            ],
        }
    )
    run_id = client.start_run(
        {
            "name": "parent-of-hanging",
            "nodes": [{"id": "sub", "kind": "workflow", "params": {"workflow": "hanging-child"}}],
        }
    )
    child = wait_for(lambda: children_of(client, run_id))[0]
    wait_for(lambda: client.get_run(child.run_id).node("hang").status == "RUNNING")
    client.interrupt(run_id)
    wait_for(lambda: client.get_run(child.run_id).status == "INTERRUPTED")
    client.resume(run_id)
    run = client.wait(run_id, timeout=60)
    assert run.status == "SUCCEEDED", run.node("sub").error
    assert [c.run_id for c in children_of(client, run_id)] == [child.run_id]
    assert client.get_run(child.run_id).node("hang").attempt == 2


def test_a_node_timeout_cancels_its_child(client: Client, tmp_path: Path) -> None:
    client.register_workflow(
        {
            "name": "endless-child",
            "nodes": [py("hang", "sleep", args={"seconds": 60})],
        }
    )
    run = client.wait(
        client.start_run(
            {
                "name": "impatient-parent",
                "nodes": [
                    {
                        "id": "sub",
                        "kind": "workflow",
                        "timeout_ms": 500,
                        "params": {"workflow": "endless-child"},
                    }
                ],
            }
        ),
        timeout=60,
    )
    assert run.status == "FAILED"
    assert "timed out" in run.node("sub").error
    [child] = children_of(client, run.run_id)
    wait_for(lambda: client.get_run(child.run_id).status == "CANCELLED", timeout=30)


# ---------------------------------------------------------------------- map


@pytest.mark.both_executors
def test_map_runs_each_item_as_a_child_and_collects_outputs_in_order(client: Client) -> None:
    run = client.wait(
        client.start_run(
            {
                "name": "mapper",
                "nodes": [
                    py("plan", "echo", args={"numbers": [3, 1, 4, 1, 5, 9, 2, 6]}),
                    map_node(
                        "square",
                        "{{ nodes.plan.output.numbers }}",
                        {
                            "kind": "python",
                            "params": {
                                "callable": "sp_nodes:add",
                                "args": {"a": "{{ item }}", "b": "{{ index }}"},
                            },
                        },
                        after=["plan"],
                        max_concurrency=3,
                    ),
                ],
            }
        ),
        timeout=120,
    )
    assert run.status == "SUCCEEDED", run.node("square").error
    numbers = [3, 1, 4, 1, 5, 9, 2, 6]
    assert run.node("square").output == [n + i for i, n in enumerate(numbers)]
    children = children_of(client, run.run_id)
    assert sorted(c.parent_node_id for c in children) == sorted(
        f"square[{i}]" for i in range(len(numbers))
    )
    assert all(c.status == "SUCCEEDED" for c in children)
    item = next(c for c in children if c.parent_node_id == "square[2]")
    assert client.get_run(item.run_id).node("square").output == 6
    progress = [e for e in client.watch(run.run_id) if e.kind == "progress"]
    assert progress[-1].data["current"] == len(numbers)


def test_map_items_follow_their_retry_policy_and_continue_on_failure(client: Client) -> None:
    template = {
        "kind": "python",
        "params": {"callable": "sp_nodes:fail_until", "args": {"succeed_on": "{{ item }}"}},
        "retry": {"max_attempts": 2},
    }
    spec = {
        "name": "lenient-mapper",
        "nodes": [map_node("each", [1, 2, 3], template, continue_on_failure=True)],
    }
    run = client.wait(client.start_run(spec), timeout=60)
    assert run.status == "SUCCEEDED"
    # Item 0 succeeds at once, item 1 on its 2nd attempt, item 2 never (2 attempts).
    assert run.node("each").output == [1, 2, None]
    attempts = {
        c.parent_node_id: client.get_run(c.run_id).node("each").attempt
        for c in children_of(client, run.run_id)
    }
    assert attempts == {"each[0]": 1, "each[1]": 2, "each[2]": 2}

    spec = {"name": "strict-mapper", "nodes": [map_node("each", [1, 3], template)]}
    run = client.wait(client.start_run(spec), timeout=60)
    assert run.status == "FAILED"
    assert "1 of 2 items failed: [1]" in run.node("each").error


def test_a_map_over_a_non_list_fails_and_an_empty_list_gives_an_empty_output(
    client: Client,
) -> None:
    template = {"kind": "noop", "params": {"value": "{{ item }}"}}
    run = client.wait(
        client.start_run(
            {
                "name": "odd-maps",
                "nodes": [
                    map_node("over_text", "{{ input.text }}", template),
                    map_node("over_nothing", "{{ input.empty }}", template),
                ],
            },
            {"text": "not a list", "empty": []},
        ),
        timeout=60,
    )
    assert "params.items resolved to str, not a list" in run.node("over_text").error
    assert run.node("over_nothing").status == "SUCCEEDED"
    assert run.node("over_nothing").output == []


def test_a_map_item_template_reads_upstream_outputs_once_without_rendering_data_twice(
    client: Client,
) -> None:
    run = client.wait(
        client.start_run(
            {
                "name": "no-double-render",
                "nodes": [
                    py("words", "echo", args={"list": "{{ input.words }}"}),
                    map_node(
                        "quote",
                        "{{ nodes.words.output.list }}",
                        {
                            "kind": "noop",
                            "params": {"value": "{{ input.prefix }}: {{ item }} #{{ index }}"},
                        },
                        after=["words"],
                    ),
                ],
            },
            {"prefix": "q", "words": ["{{ nodes.x.output }}", "plain"]},
        ),
        timeout=60,
    )
    assert run.status == "SUCCEEDED", run.node("quote").error
    assert run.node("quote").output == ["q: {{ nodes.x.output }} #0", "q: plain #1"]


def test_cancel_reaches_running_map_items(client: Client) -> None:
    template = {
        "kind": "python",
        "params": {"callable": "sp_nodes:sleep", "args": {"seconds": 30}},
    }
    run_id = client.start_run(
        {
            "name": "long-mapper",
            "nodes": [map_node("each", [1, 2, 3, 4], template, max_concurrency=2)],
        }
    )
    wait_for(lambda: len(children_of(client, run_id)) == 2)
    client.cancel(run_id)
    wait_for(lambda: all(c.status == "CANCELLED" for c in children_of(client, run_id)), timeout=30)
    time.sleep(0.5)
    assert len(children_of(client, run_id)) == 2  # the items not started never start


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"kind": "map", "params": {"node": {"kind": "noop"}}}, "params.items is required"),
        (
            {"kind": "map", "params": {"items": "text", "node": {"kind": "noop"}}},
            "params.items must be a list or a template",
        ),
        ({"kind": "map", "params": {"items": [1, 2]}}, "params.node is required"),
        (
            {"kind": "map", "params": {"items": [1], "node": {"kind": "nope"}}},
            "params.node: node 'm': unknown kind 'nope'",
        ),
        (
            {
                "kind": "map",
                "params": {"items": [1], "node": {"kind": "noop", "retry": {"jitter": 5}}},
            },
            "params.node: node 'm': retry.jitter",
        ),
        (
            {"kind": "map", "params": {"items": [1], "node": {"kind": "noop", "sorts": 1}}},
            "params.node",
        ),
        (
            {
                "kind": "map",
                "params": {"items": [1], "node": {"kind": "noop"}, "max_concurrency": 0},
            },
            "params.max_concurrency must be a positive integer",
        ),
        ({"kind": "workflow", "params": {}}, "params.workflow"),
        (
            {"kind": "noop", "params": {"value": "{{ item }}"}},
            "unknown name 'item'",
        ),
    ],
)
def test_bad_child_specs_are_invalid_argument_naming_the_node_and_field(
    client: Client, node: dict[str, Any], message: str
) -> None:
    with pytest.raises(StatepipeError) as caught:
        client.register_workflow({"name": "bad-children", "nodes": [{"id": "m", **node}]})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 'm'" in caught.value.message
    assert message in caught.value.message
