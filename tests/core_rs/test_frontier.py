"""Tests for ``core_rs.Frontier``: the scheduler's ready-set."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_rs import Dag, Frontier, FrontierError, UnknownNodeError
from statepipe_api.lifecycle import FINAL_NODE, NODE_STATUSES

# The frontier speaks the node statuses of the lifecycle (statepipe_api.lifecycle).
FINAL = set(FINAL_NODE)
ALL_STATUSES = list(NODE_STATUSES)


def diamond() -> Dag:
    return Dag(["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])


# --------------------------------------------------------------------------- fresh runs


def test_fresh_diamond_runs_to_completion() -> None:
    f = Frontier(diamond())
    assert f.statuses() == {"a": "QUEUED", "b": "PENDING", "c": "PENDING", "d": "PENDING"}
    assert (f.ready_count, f.running_count) == (1, 0)
    assert not f.is_finished()

    assert f.pop_ready() == ["a"]
    assert (f.ready_count, f.running_count) == (0, 1)
    assert f.status("a") == "RUNNING"
    assert f.pop_ready() == []
    assert not f.is_finished()

    assert f.complete("a") == ["b", "c"]
    assert f.statuses() == {"a": "SUCCEEDED", "b": "QUEUED", "c": "QUEUED", "d": "PENDING"}
    assert f.pop_ready(1) == ["b"]
    assert f.complete("b") == []
    assert f.status("d") == "PENDING"
    assert f.pop_ready(5) == ["c"]
    assert f.complete("c") == ["d"]
    assert not f.is_finished()
    assert f.pop_ready() == ["d"]
    assert f.complete("d") == []
    assert f.is_finished()
    assert set(f.statuses().values()) == {"SUCCEEDED"}
    assert f.blocked() == []


def test_pop_ready_limit() -> None:
    f = Frontier(Dag(["a", "b", "c", "d"], []))
    assert f.pop_ready(0) == []
    assert f.pop_ready(2) == ["a", "b"]
    assert (f.ready_count, f.running_count) == (2, 2)
    assert f.pop_ready(1) == ["c"]
    assert f.pop_ready(100) == ["d"]
    assert f.pop_ready() == []
    assert (f.ready_count, f.running_count) == (0, 4)


def test_pop_ready_hands_out_earliest_given_first() -> None:
    # "x" is given first but only becomes ready after "a"; it then overtakes "z".
    f = Frontier(Dag(["x", "a", "z"], [("a", "x")]))
    assert f.pop_ready(1) == ["a"]
    assert f.complete("a") == ["x"]
    assert f.pop_ready(1) == ["x"]
    assert f.pop_ready(1) == ["z"]


def test_complete_returns_only_newly_ready_nodes() -> None:
    # "j" waits for both "a" and "b".
    f = Frontier(Dag(["a", "b", "j", "k"], [("a", "j"), ("b", "j"), ("a", "k")]))
    assert f.pop_ready() == ["a", "b"]
    assert f.complete("a") == ["k"]
    assert f.complete("b") == ["j"]


def test_empty_dag_is_finished() -> None:
    f = Frontier(Dag([], []))
    assert f.is_finished()
    assert f.pop_ready() == []
    assert f.statuses() == {}


def test_dag_property_is_the_dag_given() -> None:
    dag = diamond()
    assert Frontier(dag).dag is dag


# --------------------------------------------------------------------------- failures & skips


def test_fail_skips_descendants_in_order_given_and_other_branches_run() -> None:
    # Given out of topological order; "e" feeds "d" too, "r" -> "s" is unrelated.
    dag = Dag(
        ["d", "c", "s", "b", "a", "e", "r"],
        [("a", "b"), ("b", "c"), ("a", "d"), ("e", "d"), ("r", "s")],
    )
    f = Frontier(dag)
    assert f.pop_ready() == ["a", "e", "r"]
    assert f.fail("a") == ["d", "c", "b"]
    assert f.status("a") == "FAILED"
    for node in ["b", "c", "d"]:
        assert f.status(node) == "SKIPPED"
    assert f.blocked() == ["d", "c", "b"]
    # The other branches keep going.
    assert f.complete("e") == []
    assert f.complete("r") == ["s"]
    assert f.pop_ready() == ["s"]
    assert f.complete("s") == []
    assert f.is_finished()
    assert f.statuses() == {
        "d": "SKIPPED",
        "c": "SKIPPED",
        "s": "SUCCEEDED",
        "b": "SKIPPED",
        "a": "FAILED",
        "e": "SUCCEEDED",
        "r": "SUCCEEDED",
    }


def test_fail_of_a_leaf_skips_nothing() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]))
    f.pop_ready()
    f.complete("a")
    f.pop_ready()
    assert f.fail("b") == []
    assert f.is_finished()
    assert f.blocked() == []


def test_blocked_accumulates_in_the_order_it_happened() -> None:
    f = Frontier(Dag(["a", "b", "x", "y"], [("b", "y"), ("a", "x")]))
    assert f.pop_ready() == ["a", "b"]
    assert f.fail("b") == ["y"]
    assert f.cancel("a") == ["x"]
    assert f.blocked() == ["y", "x"]
    assert f.is_finished()


def test_continue_on_failure_releases_dependents() -> None:
    dag = Dag(["a", "b", "c"], [("a", "b"), ("b", "c")])
    f = Frontier(dag, continue_on_failure=["a"])
    assert f.pop_ready() == ["a"]
    assert f.fail("a") == []
    assert f.status("a") == "FAILED"
    assert f.status("b") == "QUEUED"
    assert f.pop_ready() == ["b"]
    # "b" does not continue on failure: "c" is skipped.
    assert f.fail("b") == ["c"]
    assert f.is_finished()


def test_continue_on_failure_accepts_any_iterable() -> None:
    dag = Dag(["a", "b"], [("a", "b")])
    f = Frontier(dag, None, (node for node in ["a"]))
    f.pop_ready()
    assert f.fail("a") == []
    assert f.pop_ready() == ["b"]


def test_cancel_blocks_even_when_continuing_on_failure() -> None:
    dag = Dag(["a", "b"], [("a", "b")])
    f = Frontier(dag, continue_on_failure=["a"])
    f.pop_ready()
    assert f.cancel("a") == ["b"]
    assert f.statuses() == {"a": "CANCELLED", "b": "SKIPPED"}
    assert f.is_finished()


def test_skip_counts_as_done() -> None:
    f = Frontier(Dag(["a", "b", "c"], [("a", "c"), ("b", "c")]))
    assert f.pop_ready() == ["a", "b"]
    assert f.skip("a") == []
    assert f.status("a") == "SKIPPED"
    assert f.complete("b") == ["c"]
    assert f.pop_ready() == ["c"]
    assert f.skip("c") == []
    assert f.is_finished()
    # A skip on purpose is not a failure-skip.
    assert f.blocked() == []


def test_requeue_puts_a_running_node_back() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]))
    assert f.pop_ready() == ["a"]
    assert f.requeue("a") is None
    assert (f.ready_count, f.running_count) == (1, 0)
    assert f.status("a") == "QUEUED"
    assert not f.is_finished()
    assert f.pop_ready() == ["a"]
    assert f.complete("a") == ["b"]


def test_requeued_node_keeps_its_place_by_order_given() -> None:
    f = Frontier(Dag(["a", "b", "c"], []))
    assert f.pop_ready(2) == ["a", "b"]
    f.requeue("b")
    assert f.pop_ready() == ["b", "c"]


# --------------------------------------------------------------------------- rebuild from statuses


def test_rebuild_reruns_interrupted_work() -> None:
    dag = Dag(["a", "b", "c", "d", "e"], [("a", "b"), ("b", "c"), ("a", "d"), ("a", "e")])
    statuses = {"a": "SUCCEEDED", "b": "RUNNING", "c": "PENDING", "d": "QUEUED", "e": "RETRY_WAIT"}
    f = Frontier(dag, statuses)
    assert f.statuses() == {
        "a": "SUCCEEDED",
        "b": "QUEUED",
        "c": "PENDING",
        "d": "QUEUED",
        "e": "QUEUED",
    }
    assert (f.ready_count, f.running_count) == (3, 0)
    assert f.pop_ready() == ["b", "d", "e"]
    assert f.complete("b") == ["c"]
    # A SUCCEEDED node is kept, not handed out again.
    assert "a" not in f.pop_ready()


def test_rebuild_running_node_waits_for_unfinished_predecessors() -> None:
    # Stored statuses can be inconsistent after a crash: "b" RUNNING while "a" is pending.
    f = Frontier(Dag(["a", "b"], [("a", "b")]), {"b": "RUNNING"})
    assert f.statuses() == {"a": "QUEUED", "b": "PENDING"}
    assert f.pop_ready() == ["a"]


def test_rebuild_failed_blocks_descendants() -> None:
    dag = Dag(["a", "b", "c", "x"], [("a", "b"), ("b", "c")])
    f = Frontier(dag, {"a": "FAILED"})
    assert f.blocked() == ["b", "c"]
    assert f.statuses() == {"a": "FAILED", "b": "SKIPPED", "c": "SKIPPED", "x": "QUEUED"}
    assert f.ready_count == 1
    assert f.pop_ready() == ["x"]
    f.complete("x")
    assert f.is_finished()


def test_rebuild_cancelled_blocks_descendants() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]), {"a": "CANCELLED"})
    assert f.blocked() == ["b"]
    assert f.is_finished()


def test_rebuild_failed_with_continue_on_failure_releases() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]), {"a": "FAILED"}, ["a"])
    assert f.blocked() == []
    assert f.pop_ready() == ["b"]


def test_rebuild_skipped_counts_as_done() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]), {"a": "SKIPPED"})
    assert f.pop_ready() == ["b"]


def test_rebuild_all_final_is_finished() -> None:
    dag = diamond()
    f = Frontier(dag, {"a": "SUCCEEDED", "b": "SKIPPED", "c": "SUCCEEDED", "d": "SUCCEEDED"})
    assert f.is_finished()
    assert f.pop_ready() == []


def test_rebuild_keeps_done_nodes_blocked_by_a_failed_ancestor_done() -> None:
    # "b" is stored as SUCCEEDED although "a" failed: stored final statuses win.
    f = Frontier(Dag(["a", "b", "c"], [("a", "b"), ("a", "c")]), {"a": "FAILED", "b": "SUCCEEDED"})
    assert f.statuses() == {"a": "FAILED", "b": "SUCCEEDED", "c": "SKIPPED"}
    assert f.blocked() == ["c"]


def test_rebuild_blocks_every_descendant_of_a_failed_node() -> None:
    # A crash between persisting b=SKIPPED and c=SKIPPED; the docstring says FAILED
    # nodes block their descendants, and "c" is one.
    dag = Dag(["a", "b", "c"], [("a", "b"), ("b", "c")])
    f = Frontier(dag, {"a": "FAILED", "b": "SKIPPED"})
    assert f.pop_ready() == []
    assert f.status("c") == "SKIPPED"


def test_statuses_may_be_any_mapping() -> None:
    from types import MappingProxyType

    f = Frontier(Dag(["a", "b"], [("a", "b")]), MappingProxyType({"a": "SUCCEEDED"}))
    assert f.pop_ready() == ["b"]


@pytest.mark.parametrize("spelling", ["succeeded", "Succeeded", "SUCCEEDED"])
def test_status_strings_are_case_insensitive(spelling: str) -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]), {"a": spelling})
    assert f.status("a") == "SUCCEEDED"
    assert f.pop_ready() == ["b"]


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_every_stored_status_is_accepted(status: str) -> None:
    f = Frontier(Dag(["a"], []), {"a": status})
    if status in FINAL:
        assert f.status("a") == status
        assert f.is_finished()
    else:
        assert f.status("a") == "QUEUED"
        assert f.pop_ready() == ["a"]


def test_statuses_round_trip_through_a_rebuild() -> None:
    dag = diamond()
    f = Frontier(dag)
    f.pop_ready()
    f.complete("a")
    f.pop_ready(1)
    f.complete("b")
    again = Frontier(dag, f.statuses())
    assert again.statuses() == f.statuses()
    assert again.pop_ready() == ["c"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("setup", "action", "node", "status"),
    [
        ([], "complete", "b", "PENDING"),
        ([], "complete", "a", "QUEUED"),
        ([], "requeue", "a", "QUEUED"),
        ([], "fail", "b", "PENDING"),
        ([], "skip", "b", "PENDING"),
        ([], "cancel", "a", "QUEUED"),
        (["pop", "complete a"], "complete", "a", "SUCCEEDED"),
        (["pop", "complete a"], "requeue", "a", "SUCCEEDED"),
        (["pop", "fail a"], "fail", "a", "FAILED"),
        (["pop", "fail a"], "complete", "b", "SKIPPED"),
        (["pop", "skip a"], "skip", "a", "SKIPPED"),
        (["pop", "cancel a"], "complete", "a", "CANCELLED"),
    ],
)
def test_illegal_transitions_raise_frontier_error(
    setup: list[str], action: str, node: str, status: str
) -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]))
    for step in setup:
        if step == "pop":
            f.pop_ready()
        else:
            verb, target = step.split()
            getattr(f, verb)(target)
    before = f.statuses()
    with pytest.raises(FrontierError) as info:
        getattr(f, action)(node)
    err = info.value
    assert err.node_id == node
    assert err.status == status
    message = str(err)
    assert f'cannot {action} node "{node}"' in message
    assert status in message
    # A refused transition changes nothing.
    assert f.statuses() == before


def test_frontier_error_message_by_hand() -> None:
    f = Frontier(Dag(["a", "b"], [("a", "b")]))
    with pytest.raises(FrontierError) as info:
        f.complete("b")
    assert str(info.value) == 'cannot complete node "b": it is PENDING (Waiting)'


def test_unknown_status_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="DONE") as info:
        Frontier(Dag(["a"], []), {"a": "DONE"})
    for status in ALL_STATUSES:
        assert status in str(info.value)


def test_non_str_status_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Frontier(Dag(["a"], []), {"a": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("method", ["complete", "fail", "skip", "cancel", "requeue", "status"])
def test_unknown_node_id_in_a_method(method: str) -> None:
    f = Frontier(diamond())
    f.pop_ready()
    before = f.statuses()
    with pytest.raises(UnknownNodeError) as info:
        getattr(f, method)("ghost")
    assert info.value.node_id == "ghost"
    assert info.value.edge is None
    assert f.statuses() == before


def test_unknown_node_id_in_statuses_or_continue_on_failure() -> None:
    with pytest.raises(UnknownNodeError) as info:
        Frontier(diamond(), {"ghost": "SUCCEEDED"})
    assert info.value.node_id == "ghost"
    with pytest.raises(UnknownNodeError) as info:
        Frontier(diamond(), None, ["a", "ghost"])
    assert info.value.node_id == "ghost"


# --------------------------------------------------------------------------- simulation


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 12) -> Dag:
    n = draw(st.integers(0, max_nodes))
    nodes = draw(st.permutations([f"n{i}" for i in range(n)]))
    edges: list[tuple[str, str]] = []
    if n >= 2:
        rank = draw(st.permutations(nodes))
        pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(
            lambda p: p[0] != p[1]
        )
        raw = draw(st.lists(pair, max_size=3 * n))
        edges = [(rank[min(a, b)], rank[max(a, b)]) for a, b in raw]
    return Dag(nodes, edges)


def descendants_oracle(dag: Dag, node: str) -> set[str]:
    seen: set[str] = set()
    queue = deque(dag.successors(node))
    while queue:
        u = queue.popleft()
        if u not in seen:
            seen.add(u)
            queue.extend(dag.successors(u))
    return seen


class Model:
    """A plain-Python reference of the frontier for a run started fresh."""

    def __init__(self, dag: Dag, continue_on_failure: set[str]) -> None:
        self.dag = dag
        self.cof = continue_on_failure
        self.index = {node: i for i, node in enumerate(dag.nodes)}
        self.state = dict.fromkeys(dag.nodes, "waiting")
        self.refresh()

    def resolves(self, node: str) -> bool:
        state = self.state[node]
        return state in ("succeeded", "skipped") or (state == "failed" and node in self.cof)

    def blocks(self, node: str) -> bool:
        return self.state[node] in ("failed", "cancelled", "blocked") and not self.resolves(node)

    def refresh(self) -> tuple[set[str], list[str]]:
        """Moves waiting nodes on; returns (newly ready, newly blocked in order given)."""
        ready: set[str] = set()
        blocked: list[str] = []
        for node in self.dag.topological_order():
            if self.state[node] != "waiting":
                continue
            preds = self.dag.predecessors(node)
            if any(self.blocks(p) for p in preds):
                self.state[node] = "blocked"
                blocked.append(node)
            elif all(self.resolves(p) for p in preds):
                self.state[node] = "ready"
                ready.add(node)
        return ready, sorted(blocked, key=self.index.__getitem__)

    def ready(self) -> list[str]:
        return sorted(
            (n for n, s in self.state.items() if s == "ready"), key=self.index.__getitem__
        )

    def statuses(self) -> dict[str, str]:
        names = {
            "waiting": "PENDING",
            "ready": "QUEUED",
            "running": "RUNNING",
            "succeeded": "SUCCEEDED",
            "skipped": "SKIPPED",
            "blocked": "SKIPPED",
            "failed": "FAILED",
            "cancelled": "CANCELLED",
        }
        return {node: names[state] for node, state in self.state.items()}


ACTIONS = ["complete", "complete", "complete", "fail", "skip", "cancel", "requeue"]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_random_scheduler_simulation(data: st.DataObject) -> None:
    dag = data.draw(dags(), label="dag")
    cof = data.draw(
        st.sets(st.sampled_from(dag.nodes)) if len(dag) else st.just(set()), label="cof"
    )
    f = Frontier(dag, continue_on_failure=cof)
    model = Model(dag, cof)
    assert f.statuses() == model.statuses()

    handed_out: set[str] = set()  # handed out and not given back since
    ran: set[str] = set()  # ever handed out
    requeues = 0
    rebuilds = 0
    skipped_by_failure: list[str] = []  # every fail()/cancel() result, in order
    blocked_here: list[str] = []  # the same, since the current frontier was built
    blocking: set[str] = set()  # failed (not continuing) or cancelled nodes

    for _step in range(10 * len(dag) + 10):
        if f.is_finished():
            break
        limit = data.draw(st.one_of(st.none(), st.integers(1, 4)), label="limit")
        expected = model.ready()
        if limit is not None:
            expected = expected[:limit]
        popped = f.pop_ready(limit)
        assert popped == expected
        for node in popped:
            assert node not in handed_out, f"{node} handed out twice"
            for pred in dag.predecessors(node):
                assert model.resolves(pred), f"{node} handed out before {pred} was done"
            handed_out.add(node)
            ran.add(node)
            model.state[node] = "running"

        running = sorted(n for n, s in model.state.items() if s == "running")
        assert f.running_count == len(running)
        assert f.ready_count == len(model.ready())
        if not running:
            continue
        chosen = data.draw(
            st.lists(st.sampled_from(running), min_size=1, unique=True), label="finish"
        )
        for node in chosen:
            action = data.draw(st.sampled_from(ACTIONS), label="action")
            if action == "requeue" and requeues >= 5:
                action = "complete"
            if action == "requeue":
                requeues += 1
                assert f.requeue(node) is None
                model.state[node] = "ready"
                handed_out.discard(node)
                continue
            result = getattr(f, action)(node)
            model.state[node] = {
                "complete": "succeeded",
                "skip": "skipped",
                "fail": "failed",
                "cancel": "cancelled",
            }[action]
            newly_ready, newly_blocked = model.refresh()
            if action in ("complete", "skip") or (action == "fail" and node in cof):
                assert newly_blocked == []
                if action == "fail":
                    assert result == []
                else:
                    assert len(result) == len(set(result))
                    assert set(result) == newly_ready
            else:
                blocking.add(node)
                assert newly_ready == set()
                assert result == newly_blocked
                skipped_by_failure.extend(result)
                blocked_here.extend(result)
            assert f.statuses() == model.statuses()
            assert f.blocked() == blocked_here

        # Now and then, rebuild from the stored statuses as after a crash: running
        # and queued nodes are ready again, everything else is kept.
        if rebuilds < 2 and data.draw(st.integers(0, 9), label="rebuild") == 0:
            rebuilds += 1
            stored = f.statuses()
            f = Frontier(dag, stored, cof)
            for node, state in model.state.items():
                if state == "running":
                    model.state[node] = "ready"
                    handed_out.discard(node)
                elif state == "blocked":
                    # Stored as SKIPPED: indistinguishable from a condition skip.
                    model.state[node] = "skipped"
            assert f.statuses() == {
                node: "QUEUED" if status == "RUNNING" else status for node, status in stored.items()
            }
            assert f.statuses() == model.statuses()
            assert f.running_count == 0
            assert f.blocked() == []
            blocked_here = []

    assert f.is_finished(), "the simulation did not terminate"
    assert f.ready_count == 0
    assert f.running_count == 0
    assert f.pop_ready() == []
    final = f.statuses()
    assert list(final) == dag.nodes
    assert set(final.values()) <= FINAL
    assert final == model.statuses()

    # Failure-skips: exactly the descendants of blocking nodes, none of which ran.
    assert len(skipped_by_failure) == len(set(skipped_by_failure))
    expected_skipped: set[str] = set()
    for node in blocking:
        expected_skipped |= descendants_oracle(dag, node)
    assert expected_skipped.isdisjoint(ran)
    assert set(skipped_by_failure) == expected_skipped
    for node in expected_skipped:
        assert final[node] == "SKIPPED"
    # Every node that never ran was skipped because of a failure.
    assert set(dag.nodes) - ran == expected_skipped
