"""Tests for ``core_rs.Dag``: validation, errors, ordering, levels and ancestry."""

from __future__ import annotations

import graphlib
import heapq
import pickle
from collections import deque

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from core_rs import CycleError, Dag, DagError, DuplicateNodeError, UnknownNodeError

# --------------------------------------------------------------------------- helpers


def diamond() -> Dag:
    # Given out of order on purpose: the order given is d, b, c, a.
    return Dag(["d", "b", "c", "a"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [CycleError, UnknownNodeError, DuplicateNodeError])
def test_error_classes_subclass_dag_error(cls: type[Exception]) -> None:
    assert issubclass(cls, DagError)
    assert issubclass(cls, Exception)


def test_duplicate_node_names_the_id() -> None:
    with pytest.raises(DuplicateNodeError) as info:
        Dag(["a", "b", "a"], [])
    assert info.value.node_id == "a"
    assert '"a"' in str(info.value)
    assert "duplicate" in str(info.value)


def test_duplicate_node_is_caught_as_dag_error() -> None:
    with pytest.raises(DagError):
        Dag(["x", "x"], [])


@pytest.mark.parametrize(
    ("edge", "unknown"),
    [(("a", "ghost"), "ghost"), (("ghost", "a"), "ghost"), (("ghost", "spook"), "ghost")],
)
def test_unknown_node_in_edge_names_edge_and_node(edge: tuple[str, str], unknown: str) -> None:
    with pytest.raises(UnknownNodeError) as info:
        Dag(["a", "b"], [("a", "b"), edge])
    err = info.value
    assert err.node_id == unknown
    assert err.edge == edge
    assert isinstance(err.edge, tuple)
    message = str(err)
    assert edge[0] in message and edge[1] in message and unknown in message
    assert message == f'edge "{edge[0]}" -> "{edge[1]}" refers to unknown node "{unknown}"'


@pytest.mark.parametrize("method", ["ancestors", "descendants", "predecessors", "successors"])
def test_lookup_of_unknown_id_raises_unknown_node_without_edge(method: str) -> None:
    dag = diamond()
    with pytest.raises(UnknownNodeError) as info:
        getattr(dag, method)("nope")
    assert info.value.node_id == "nope"
    assert info.value.edge is None
    assert "nope" in str(info.value)


@pytest.mark.parametrize("nodes", [["a", 1], [None], ["a", b"b"]])
def test_non_str_node_id_is_a_type_error(nodes: list[object]) -> None:
    with pytest.raises(TypeError) as info:
        Dag(nodes, [])  # type: ignore[arg-type]
    message = str(info.value)
    assert "must be a str" in message
    assert type(nodes[-1]).__name__ in message
    assert f"position {len(nodes) - 1}" in message


@pytest.mark.parametrize("edge", [("a", 1), (2, "a"), ("a", None)])
def test_non_str_id_in_edge_is_a_type_error(edge: tuple[object, object]) -> None:
    with pytest.raises(TypeError) as info:
        Dag(["a", "b"], [("a", "b"), edge])  # type: ignore[list-item]
    message = str(info.value)
    assert "edge at position 1" in message
    assert "must be a str" in message


@pytest.mark.parametrize("edge", [("a",), ("a", "b", "c"), (), 3, None, ["a"], ["a", "b", "c"]])
def test_edge_that_is_not_a_pair_is_a_type_error(edge: object) -> None:
    with pytest.raises(TypeError) as info:
        Dag(["a", "b", "c"], [edge])  # type: ignore[list-item]
    message = str(info.value)
    assert "edge at position 0" in message
    assert "pair" in message
    assert repr(edge) in message


def test_a_two_character_string_is_not_an_edge() -> None:
    with pytest.raises(TypeError):
        Dag(["a", "b"], ["ab"])


def test_nodes_or_edges_not_iterable_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Dag(None, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Dag(["a"], None)  # type: ignore[arg-type]


def test_edges_may_be_lists_and_tuples() -> None:
    dag = Dag(["a", "b", "c"], [["b", "a"], ("c", "b")])
    assert dag.topological_order() == ["c", "b", "a"]
    assert dag.edge_count == 2


def test_nodes_and_edges_may_be_any_iterable() -> None:
    nodes = (name for name in ["x", "y", "z"])
    edges = (pair for pair in [("z", "y"), ("y", "x")])
    dag = Dag(nodes, edges)
    assert dag.nodes == ["x", "y", "z"]
    assert dag.topological_order() == ["z", "y", "x"]
    # Other iterables: a dict's keys, an iterator of list pairs.
    dag = Dag({"p": 1, "q": 2}, iter([["p", "q"]]))
    assert dag.nodes == ["p", "q"]
    assert dag.successors("p") == ["q"]
    # An edge itself must be a tuple or list: an iterator has no order to trust.
    with pytest.raises(TypeError, match="edge at position 0 must be a"):
        Dag(["p", "q"], [iter(("p", "q"))])


def test_error_raised_while_iterating_nodes_propagates() -> None:
    def nodes():
        yield "a"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Dag(nodes(), [])


# --------------------------------------------------------------------------- cycles


def test_cycle_error_lists_the_cycle_and_prints_it() -> None:
    with pytest.raises(CycleError) as info:
        Dag(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")])
    err = info.value
    assert isinstance(err, DagError)
    assert isinstance(err.cycle, list)
    assert err.cycle == ["a", "b", "c"]
    assert str(err) == "cycle: a -> b -> c -> a"


def test_cycle_starts_at_the_node_given_first() -> None:
    # The cycle is b -> c -> a -> b; "a" was given first, so it leads.
    with pytest.raises(CycleError) as info:
        Dag(["s", "a", "b", "c", "t"], [("s", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "t")])
    assert info.value.cycle == ["a", "b", "c"]
    assert str(info.value) == "cycle: a -> b -> c -> a"


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(CycleError) as info:
        Dag(["a", "b"], [("a", "b"), ("b", "b")])
    assert info.value.cycle == ["b"]
    assert str(info.value) == "cycle: b -> b"


def test_two_node_cycle_behind_a_tail() -> None:
    edges = [("a", "b"), ("b", "a"), ("b", "x"), ("x", "y")]
    with pytest.raises(CycleError) as info:
        Dag(["x", "y", "a", "b"], edges)
    cycle = info.value.cycle
    assert sorted(cycle) == ["a", "b"]
    assert_is_cycle_of(edges, cycle)


def test_unknown_node_is_reported_before_a_cycle() -> None:
    with pytest.raises(UnknownNodeError):
        Dag(["a"], [("a", "a"), ("a", "ghost")])


# --------------------------------------------------------------------------- order & levels


@pytest.mark.parametrize(
    ("nodes", "edges", "order"),
    [
        ([], [], []),
        (["c", "b", "a"], [], ["c", "b", "a"]),
        (["z", "y", "x", "w"], [("y", "w")], ["z", "y", "x", "w"]),
        (["z", "y", "x", "w"], [("w", "z")], ["y", "x", "w", "z"]),
        (
            ["d", "b", "c", "a"],
            [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
            ["a", "b", "c", "d"],
        ),
        # "a" is given first but waits for "c"; "b" is ready first.
        (["a", "b", "c"], [("c", "a")], ["b", "c", "a"]),
        # "b", released by "c", is given before the ready "d" and overtakes it.
        (["a", "b", "c", "d"], [("d", "a"), ("c", "b")], ["c", "b", "d", "a"]),
        # A node released later but given earlier overtakes a ready node given later.
        (["e", "a", "b", "c"], [("b", "e"), ("c", "a")], ["b", "e", "c", "a"]),
        (["a", "b"], [("a", "b"), ("a", "b")], ["a", "b"]),
    ],
)
def test_topological_order_by_hand(
    nodes: list[str], edges: list[tuple[str, str]], order: list[str]
) -> None:
    dag = Dag(nodes, edges)
    assert dag.topological_order() == order
    # Deterministic: asking again or rebuilding gives the same answer.
    assert dag.topological_order() == order
    assert Dag(nodes, edges).topological_order() == order


def test_levels_by_hand() -> None:
    assert diamond().levels() == [["a"], ["b", "c"], ["d"]]
    assert Dag([], []).levels() == []
    assert Dag(["c", "b", "a"], []).levels() == [["c", "b", "a"]]
    # Longest chain decides: d waits on a (depth 0) and c (depth 2).
    dag = Dag(["d", "c", "b", "a"], [("a", "d"), ("a", "b"), ("b", "c"), ("c", "d")])
    assert dag.levels() == [["a"], ["b"], ["c"], ["d"]]
    # Each level keeps the order given.
    dag = Dag(["q", "p", "y", "x"], [("x", "q"), ("y", "p")])
    assert dag.levels() == [["y", "x"], ["q", "p"]]


def test_ancestry_by_hand() -> None:
    dag = Dag(["a", "b", "c", "d", "e"], [("a", "b"), ("b", "c"), ("a", "d"), ("e", "d")])
    assert dag.descendants("a") == ["b", "c", "d"]
    assert dag.descendants("c") == []
    assert dag.descendants("e") == ["d"]
    assert dag.ancestors("d") == ["a", "e"]
    assert dag.ancestors("c") == ["a", "b"]
    assert dag.ancestors("a") == []
    assert dag.successors("a") == ["b", "d"]
    assert dag.predecessors("d") == ["a", "e"]
    assert dag.predecessors("a") == []
    assert dag.successors("c") == []


def test_ancestry_results_follow_the_order_given() -> None:
    dag = diamond()
    assert dag.descendants("a") == ["d", "b", "c"]
    assert dag.ancestors("d") == ["b", "c", "a"]


def test_len_contains_nodes_edge_count() -> None:
    dag = diamond()
    assert len(dag) == 4
    assert dag.nodes == ["d", "b", "c", "a"]
    assert dag.edge_count == 4
    assert "a" in dag
    assert "zz" not in dag
    assert 1 not in dag
    assert None not in dag
    empty = Dag([], [])
    assert len(empty) == 0
    assert empty.nodes == []
    assert empty.edge_count == 0
    assert empty.topological_order() == []
    assert "a" not in empty


def test_nodes_returns_a_fresh_list() -> None:
    dag = diamond()
    dag.nodes.append("x")
    dag.topological_order().append("x")
    assert dag.nodes == ["d", "b", "c", "a"]
    assert dag.topological_order() == ["a", "b", "c", "d"]


def test_duplicate_edges_count_but_do_not_break_order() -> None:
    dag = Dag(["a", "b"], [("a", "b"), ("a", "b")])
    assert dag.edge_count == 2
    assert dag.topological_order() == ["a", "b"]
    assert dag.levels() == [["a"], ["b"]]
    assert dag.descendants("a") == ["b"]
    assert dag.ancestors("b") == ["a"]


def test_unicode_ids_round_trip() -> None:
    dag = Dag(["ä", "日本", "🙂"], [("🙂", "ä")])
    assert dag.topological_order() == ["日本", "🙂", "ä"]
    with pytest.raises(CycleError) as info:
        Dag(["ä", "日本"], [("ä", "日本"), ("日本", "ä")])
    assert str(info.value) == "cycle: ä -> 日本 -> ä"


def test_larger_chain() -> None:
    n = 20_000
    nodes = [f"n{i}" for i in range(n)]
    edges = [(nodes[i + 1], nodes[i]) for i in range(n - 1)]
    dag = Dag(nodes, edges)
    assert dag.topological_order() == nodes[::-1]
    assert len(dag.levels()) == n
    assert dag.ancestors("n0") == nodes[1:]


# --------------------------------------------------------------------------- exception classes
# These document defects of the PyO3 exception declarations (see the report).


def test_exported_error_names_match_their_class_names() -> None:
    import core_rs

    assert core_rs.DagError.__name__ == "DagError"
    assert core_rs.FrontierError.__name__ == "FrontierError"


def test_cycle_error_pickles_with_its_data() -> None:
    with pytest.raises(CycleError) as info:
        Dag(["a"], [("a", "a")])
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.cycle == ["a"]


# --------------------------------------------------------------------------- oracles


def assert_is_cycle_of(edges: list[tuple[str, str]], cycle: list[str]) -> None:
    edge_set = set(edges)
    assert cycle, "a cycle is never empty"
    assert len(set(cycle)) == len(cycle), f"nodes repeat in {cycle}"
    for i, u in enumerate(cycle):
        v = cycle[(i + 1) % len(cycle)]
        assert (u, v) in edge_set, f"{u} -> {v} of {cycle} is not an edge"


def is_acyclic(nodes: list[str], edges: list[tuple[str, str]]) -> bool:
    graph: dict[str, set[str]] = {node: set() for node in nodes}
    for u, v in edges:
        graph[v].add(u)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return False
    return True


def kahn_by_position(nodes: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """The topological order that always takes the ready node given first."""
    index = {node: i for i, node in enumerate(nodes)}
    indegree = dict.fromkeys(nodes, 0)
    succ: dict[str, list[str]] = {node: [] for node in nodes}
    for u, v in edges:
        indegree[v] += 1
        succ[u].append(v)
    heap = [index[n] for n in nodes if indegree[n] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        u = nodes[heapq.heappop(heap)]
        order.append(u)
        for v in succ[u]:
            indegree[v] -= 1
            if indegree[v] == 0:
                heapq.heappush(heap, index[v])
    return order


def reachable(start: str, adjacency: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    queue = deque(adjacency[start])
    while queue:
        u = queue.popleft()
        if u not in seen:
            seen.add(u)
            queue.extend(adjacency[u])
    return seen


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 12) -> tuple[list[str], list[tuple[str, str]]]:
    """Random node lists (not in name order) and random edges, cycles allowed."""
    n = draw(st.integers(0, max_nodes))
    nodes = draw(st.permutations([f"n{i}" for i in range(n)]))
    if n == 0:
        return nodes, []
    pair = st.tuples(st.sampled_from(nodes), st.sampled_from(nodes))
    edges = draw(st.lists(pair, max_size=3 * n))
    return nodes, edges


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 15) -> tuple[list[str], list[tuple[str, str]]]:
    """Random acyclic graphs: edges only go forward in a hidden random rank."""
    n = draw(st.integers(0, max_nodes))
    nodes = draw(st.permutations([f"n{i}" for i in range(n)]))
    if n < 2:
        return nodes, []
    rank = draw(st.permutations(nodes))
    pair = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])
    raw = draw(st.lists(pair, max_size=3 * n))
    edges = [(rank[min(a, b)], rank[max(a, b)]) for a, b in raw]
    return nodes, edges


def check_valid_dag(dag: Dag, nodes: list[str], edges: list[tuple[str, str]]) -> None:
    assert dag.nodes == nodes
    assert len(dag) == len(nodes)
    assert dag.edge_count == len(edges)
    for node in nodes:
        assert node in dag

    # Order: a permutation that respects every edge, and the one Kahn's with a
    # heap on input position gives.
    order = dag.topological_order()
    assert sorted(order) == sorted(nodes)
    position = {node: i for i, node in enumerate(order)}
    for u, v in edges:
        assert position[u] < position[v], (u, v, order)
    assert order == kahn_by_position(nodes, edges)

    index = {node: i for i, node in enumerate(nodes)}
    preds: dict[str, list[str]] = {node: [] for node in nodes}
    succs: dict[str, list[str]] = {node: [] for node in nodes}
    for u, v in edges:
        succs[u].append(v)
        preds[v].append(u)

    # Levels.
    levels = dag.levels()
    level_of: dict[str, int] = {}
    for k, level in enumerate(levels):
        assert level, "no level is empty"
        assert level == sorted(level, key=index.__getitem__), "levels keep the order given"
        for node in level:
            assert node not in level_of, f"{node} is in two levels"
            level_of[node] = k
    assert set(level_of) == set(nodes)
    for u, v in edges:
        assert level_of[u] < level_of[v]
    for node in nodes:
        if level_of[node] == 0:
            assert preds[node] == []
        else:
            assert any(level_of[p] == level_of[node] - 1 for p in preds[node])

    # Ancestry against a BFS oracle, each list in the order given.
    for node in nodes:
        expected_desc = sorted(reachable(node, succs), key=index.__getitem__)
        expected_anc = sorted(reachable(node, preds), key=index.__getitem__)
        assert dag.descendants(node) == expected_desc
        assert dag.ancestors(node) == expected_anc
        assert sorted(dag.successors(node)) == sorted(succs[node])
        assert sorted(dag.predecessors(node)) == sorted(preds[node])


# --------------------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None)
@given(graphs())
def test_random_graphs_match_the_oracles(graph: tuple[list[str], list[tuple[str, str]]]) -> None:
    nodes, edges = graph
    if is_acyclic(nodes, edges):
        event("acyclic")
        check_valid_dag(Dag(nodes, edges), nodes, edges)
    else:
        event("cyclic")
        with pytest.raises(CycleError) as info:
            Dag(nodes, edges)
        cycle = info.value.cycle
        assert isinstance(cycle, list)
        assert_is_cycle_of(edges, cycle)
        assert str(info.value) == "cycle: " + " -> ".join([*cycle, cycle[0]])


@settings(max_examples=300, deadline=None)
@given(dags())
def test_acyclic_graphs_never_raise(graph: tuple[list[str], list[tuple[str, str]]]) -> None:
    nodes, edges = graph
    assert is_acyclic(nodes, edges)
    check_valid_dag(Dag(nodes, edges), nodes, edges)
