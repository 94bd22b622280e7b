"""Topological order of a large random DAG: core_rs vs graphlib.

Both sides start from the same Python lists (node ids and (before, after)
edges) and end with the order as a Python list, so conversion is included.

    python bench/bench_dag.py [--nodes 1000000] [--edges 2000000]
"""

from __future__ import annotations

import argparse
import graphlib
import random
import time

from core_rs import Dag


def random_dag(nodes: int, edges: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Ids in a shuffled order; each edge goes from a lower to a higher rank."""
    rng = random.Random(seed)
    ids = [f"node-{i}" for i in range(nodes)]
    ranked = ids[:]
    rng.shuffle(ranked)
    pairs = []
    for _ in range(edges):
        a, b = rng.randrange(nodes), rng.randrange(nodes)
        if a == b:
            b = (a + 1) % nodes
        if a > b:
            a, b = b, a
        pairs.append((ranked[a], ranked[b]))
    return ids, pairs


def with_graphlib(ids: list[str], edges: list[tuple[str, str]]) -> list[str]:
    preds: dict[str, list[str]] = {i: [] for i in ids}
    for u, v in edges:
        preds[v].append(u)
    return list(graphlib.TopologicalSorter(preds).static_order())


def with_core_rs(ids: list[str], edges: list[tuple[str, str]]) -> list[str]:
    return Dag(ids, edges).topological_order()


def best_of(fn, repeat: int, *args):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    ids, edges = random_dag(args.nodes, args.edges, seed=7)
    rs_s, order = best_of(with_core_rs, args.repeat, ids, edges)
    position = {node: i for i, node in enumerate(order)}
    assert len(order) == len(ids) and all(position[u] < position[v] for u, v in edges)
    # Edges naming equal but distinct str objects (as after parsing JSON) take
    # the slower path that hashes characters.
    copies = {node: "".join(node) for node in ids}
    copied_edges = [(copies[u], copies[v]) for u, v in edges]
    del copies
    rs_copy_s, _ = best_of(with_core_rs, 1, ids, copied_edges)
    del copied_edges
    gl_s, gl_order = best_of(with_graphlib, 1, ids, edges)
    assert len(gl_order) == len(ids)

    print(f"DAG: {args.nodes:,} nodes, {args.edges:,} edges (Python lists in, Python list out)")
    print(f"  graphlib.TopologicalSorter  {gl_s:8.3f} s")
    print(f"  core_rs.Dag                 {rs_s:8.3f} s  (best of {args.repeat})")
    print(f"  core_rs.Dag, edges as copies {rs_copy_s:7.3f} s  (ids looked up by content)")
    print(f"  speedup                     {gl_s / rs_s:8.1f}x  (target >= 20x)")
    print(f"  speedup, edges as copies    {gl_s / rs_copy_s:8.1f}x")


if __name__ == "__main__":
    main()
