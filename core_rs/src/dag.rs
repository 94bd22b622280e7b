//! The workflow graph: validation, topological order, levels and ancestry.
//!
//! Nodes are interned to dense `u32` indices in the order they were given;
//! every algorithm works on indices over compressed adjacency arrays (CSR),
//! so ordering a million nodes touches a handful of flat vectors.

use std::fmt;

use crate::intern::Interner;
use crate::minqueue::MinQueue;

/// Dense index of a node: its position in the list the DAG was built from.
pub type NodeIx = u32;

/// Why a graph is not a valid DAG. Carries the ids involved, so callers can
/// report them without parsing a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// The same node id was given twice.
    DuplicateNode { node_id: String },
    /// An edge (or a lookup) names a node that does not exist.
    UnknownNode {
        node_id: String,
        edge: Option<(String, String)>,
    },
    /// The edges contain a cycle; `cycle` lists it in edge order, without
    /// repeating the first node at the end.
    Cycle { cycle: Vec<String> },
    /// More nodes than a `u32` index can address.
    TooLarge { nodes: usize },
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::DuplicateNode { node_id } => write!(f, "duplicate node id {node_id:?}"),
            DagError::UnknownNode {
                node_id,
                edge: Some((u, v)),
            } => write!(f, "edge {u:?} -> {v:?} refers to unknown node {node_id:?}"),
            DagError::UnknownNode { node_id, edge: None } => {
                write!(f, "unknown node {node_id:?}")
            }
            DagError::Cycle { cycle } => {
                write!(f, "cycle: ")?;
                for id in cycle {
                    write!(f, "{id} -> ")?;
                }
                write!(f, "{}", cycle.first().map(String::as_str).unwrap_or(""))
            }
            DagError::TooLarge { nodes } => {
                write!(f, "{nodes} nodes is more than the {} a DAG can hold", u32::MAX)
            }
        }
    }
}

impl std::error::Error for DagError {}

/// Collects nodes and edges, then validates them into a [`Dag`].
#[derive(Default)]
pub struct DagBuilder {
    ids: Interner,
    edges: Vec<(NodeIx, NodeIx)>,
}

impl DagBuilder {
    pub fn with_capacity(nodes: usize, edges: usize) -> Self {
        DagBuilder {
            ids: Interner::with_capacity(nodes),
            edges: Vec::with_capacity(edges),
        }
    }

    /// Adds a node and returns its index; a repeated id is an error.
    pub fn add_node(&mut self, id: &str) -> Result<NodeIx, DagError> {
        let len = self.ids.len();
        if len >= u32::MAX as usize {
            return Err(DagError::TooLarge { nodes: len + 1 });
        }
        self.ids.insert(id).map_err(|_| DagError::DuplicateNode {
            node_id: id.to_owned(),
        })
    }

    /// The index of a node added earlier.
    pub fn index_of(&self, id: &str) -> Option<NodeIx> {
        self.ids.index_of(id)
    }

    pub fn node_count(&self) -> usize {
        self.ids.len()
    }

    /// Adds the edge `u -> v` by index (both must have been added).
    pub fn add_edge_ix(&mut self, u: NodeIx, v: NodeIx) {
        assert!((u.max(v) as usize) < self.ids.len(), "edge to a node never added");
        self.edges.push((u, v));
    }

    /// Adds the edge `u -> v` (u runs before v) by id.
    pub fn add_edge(&mut self, u: &str, v: &str) -> Result<(), DagError> {
        let unknown = |node_id: &str| DagError::UnknownNode {
            node_id: node_id.to_owned(),
            edge: Some((u.to_owned(), v.to_owned())),
        };
        let ui = self.index_of(u).ok_or_else(|| unknown(u))?;
        let vi = self.index_of(v).ok_or_else(|| unknown(v))?;
        self.edges.push((ui, vi));
        Ok(())
    }

    /// Validates the graph (a cycle is an error) and computes its order.
    pub fn build(self) -> Result<Dag, DagError> {
        let n = self.ids.len();
        let (succ_start, succ) = csr(n, self.edges.iter().copied());
        let (pred_start, pred) = csr(n, self.edges.iter().map(|&(u, v)| (v, u)));
        let mut dag = Dag {
            ids: self.ids,
            succ_start,
            succ,
            pred_start,
            pred,
            order: Vec::new(),
        };
        dag.order = dag.kahn()?;
        Ok(dag)
    }
}

/// Compressed sparse rows: for node `i`, its targets are
/// `targets[start[i]..start[i + 1]]`, in the order the edges were given.
fn csr(n: usize, edges: impl Iterator<Item = (NodeIx, NodeIx)> + Clone) -> (Vec<u32>, Vec<NodeIx>) {
    let mut start = vec![0u32; n + 1];
    for (u, _) in edges.clone() {
        start[u as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut targets = vec![0 as NodeIx; start[n] as usize];
    for (u, v) in edges {
        let slot = &mut fill[u as usize];
        targets[*slot as usize] = v;
        *slot += 1;
    }
    (start, targets)
}

/// A validated directed acyclic graph.
pub struct Dag {
    ids: Interner,
    succ_start: Vec<u32>,
    succ: Vec<NodeIx>,
    pred_start: Vec<u32>,
    pred: Vec<NodeIx>,
    order: Vec<NodeIx>,
}

impl fmt::Debug for Dag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dag")
            .field("nodes", &self.len())
            .field("edges", &self.edge_count())
            .finish()
    }
}

impl Dag {
    /// Builds a DAG from ids and `(before, after)` edges.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = &'a str>,
        edges: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Dag, DagError> {
        let mut builder = DagBuilder::default();
        for id in nodes {
            builder.add_node(id)?;
        }
        for (u, v) in edges {
            builder.add_edge(u, v)?;
        }
        builder.build()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn edge_count(&self) -> usize {
        self.succ.len()
    }

    pub fn id(&self, ix: NodeIx) -> &str {
        self.ids.get(ix)
    }

    pub fn ids(&self) -> impl ExactSizeIterator<Item = &str> {
        self.ids.iter()
    }

    pub fn index_of(&self, id: &str) -> Option<NodeIx> {
        self.ids.index_of(id)
    }

    /// Like [`Dag::index_of`], but an unknown id is a [`DagError::UnknownNode`].
    pub fn require(&self, id: &str) -> Result<NodeIx, DagError> {
        self.index_of(id).ok_or_else(|| DagError::UnknownNode {
            node_id: id.to_owned(),
            edge: None,
        })
    }

    /// Direct successors (nodes that run after `ix`), in edge order.
    pub fn successors(&self, ix: NodeIx) -> &[NodeIx] {
        let i = ix as usize;
        &self.succ[self.succ_start[i] as usize..self.succ_start[i + 1] as usize]
    }

    /// Direct predecessors (nodes `ix` waits for), in edge order.
    pub fn predecessors(&self, ix: NodeIx) -> &[NodeIx] {
        let i = ix as usize;
        &self.pred[self.pred_start[i] as usize..self.pred_start[i + 1] as usize]
    }

    /// Every node exactly once, each after all its predecessors. Among nodes
    /// that are ready at the same time, the one given first comes first, so
    /// the order is deterministic and a graph without edges keeps its order.
    pub fn topological_order(&self) -> &[NodeIx] {
        &self.order
    }

    /// Nodes grouped by depth: level 0 holds the nodes without predecessors,
    /// level k the nodes whose longest chain of predecessors has length k.
    /// Within a level, nodes keep the order they were given in.
    pub fn levels(&self) -> Vec<Vec<NodeIx>> {
        let mut depth = vec![0u32; self.len()];
        let mut max_depth = 0;
        for &v in &self.order {
            let d = self
                .predecessors(v)
                .iter()
                .map(|&u| depth[u as usize] + 1)
                .max()
                .unwrap_or(0);
            depth[v as usize] = d;
            max_depth = max_depth.max(d);
        }
        let mut levels = vec![Vec::new(); if self.is_empty() { 0 } else { max_depth as usize + 1 }];
        for (ix, &d) in depth.iter().enumerate() {
            levels[d as usize].push(ix as NodeIx);
        }
        levels
    }

    /// Every node from which `ix` can be reached, in the order given.
    pub fn ancestors(&self, ix: NodeIx) -> Vec<NodeIx> {
        self.reachable(ix, Dag::predecessors)
    }

    /// Every node reachable from `ix`, in the order given.
    pub fn descendants(&self, ix: NodeIx) -> Vec<NodeIx> {
        self.reachable(ix, Dag::successors)
    }

    fn reachable(&self, from: NodeIx, next: fn(&Dag, NodeIx) -> &[NodeIx]) -> Vec<NodeIx> {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![from];
        let mut found = Vec::new();
        while let Some(u) = stack.pop() {
            for &v in next(self, u) {
                if !seen[v as usize] {
                    seen[v as usize] = true;
                    found.push(v);
                    stack.push(v);
                }
            }
        }
        found.sort_unstable();
        found
    }

    /// Kahn's algorithm with a min-queue, so ties resolve by input position.
    fn kahn(&self) -> Result<Vec<NodeIx>, DagError> {
        let n = self.len();
        let mut indegree: Vec<u32> = (0..n)
            .map(|i| self.pred_start[i + 1] - self.pred_start[i])
            .collect();
        let mut ready = MinQueue::new(n);
        for (ix, _) in indegree.iter().enumerate().filter(|(_, &d)| d == 0) {
            ready.insert(ix as NodeIx);
        }
        let mut order = Vec::with_capacity(n);
        while let Some(u) = ready.pop_min() {
            order.push(u);
            for &v in self.successors(u) {
                let d = &mut indegree[v as usize];
                *d -= 1;
                if *d == 0 {
                    ready.insert(v);
                }
            }
        }
        if order.len() == n {
            Ok(order)
        } else {
            Err(DagError::Cycle {
                cycle: self.find_cycle(&indegree),
            })
        }
    }

    /// After Kahn's algorithm stalls, every node left with a non-zero
    /// in-degree has a predecessor that is also left. Walking predecessors
    /// from one of them must revisit a node: that loop is a real cycle.
    fn find_cycle(&self, indegree: &[u32]) -> Vec<String> {
        let left = |ix: NodeIx| indegree[ix as usize] > 0;
        let start = (0..self.len() as NodeIx)
            .find(|&ix| left(ix))
            .expect("a stalled sort leaves nodes behind");
        let mut position = vec![u32::MAX; self.len()];
        let mut path: Vec<NodeIx> = Vec::new();
        let mut cur = start;
        while position[cur as usize] == u32::MAX {
            position[cur as usize] = path.len() as u32;
            path.push(cur);
            cur = *self
                .predecessors(cur)
                .iter()
                .find(|&&p| left(p))
                .expect("a node left behind has a predecessor left behind");
        }
        // path[i + 1] -> path[i] is an edge; reverse the loop into edge order.
        let mut cycle: Vec<NodeIx> = path[position[cur as usize] as usize..].to_vec();
        cycle.reverse();
        // Start from the node given first, so the report is stable.
        let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
        cycle.rotate_left(first);
        cycle.into_iter().map(|ix| self.id(ix).to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(dag: &Dag, ixs: &[NodeIx]) -> Vec<String> {
        ixs.iter().map(|&ix| dag.id(ix).to_owned()).collect()
    }

    fn is_cycle_of(edges: &[(&str, &str)], cycle: &[String]) -> bool {
        !cycle.is_empty()
            && (0..cycle.len()).all(|i| {
                let (u, v) = (&cycle[i], &cycle[(i + 1) % cycle.len()]);
                edges.iter().any(|&(a, b)| a == u && b == v)
            })
    }

    #[test]
    fn orders_a_diamond() {
        let dag = Dag::new(["d", "b", "c", "a"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]).unwrap();
        assert_eq!(ids(&dag, dag.topological_order()), ["a", "b", "c", "d"]);
        let levels: Vec<Vec<String>> = dag.levels().iter().map(|l| ids(&dag, l)).collect();
        assert_eq!(levels, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
    }

    #[test]
    fn ties_keep_input_order() {
        let dag = Dag::new(["z", "y", "x", "w"], [("y", "w")]).unwrap();
        assert_eq!(ids(&dag, dag.topological_order()), ["z", "y", "x", "w"]);
        let dag = Dag::new(["c", "b", "a"], []).unwrap();
        assert_eq!(ids(&dag, dag.topological_order()), ["c", "b", "a"]);
    }

    #[test]
    fn empty_graph() {
        let dag = Dag::new([], []).unwrap();
        assert!(dag.topological_order().is_empty());
        assert!(dag.levels().is_empty());
    }

    #[test]
    fn duplicate_and_unknown_are_named() {
        assert_eq!(
            Dag::new(["a", "b", "a"], []).unwrap_err(),
            DagError::DuplicateNode { node_id: "a".into() }
        );
        let err = Dag::new(["a"], [("a", "ghost")]).unwrap_err();
        assert_eq!(
            err,
            DagError::UnknownNode {
                node_id: "ghost".into(),
                edge: Some(("a".into(), "ghost".into()))
            }
        );
        assert_eq!(err.to_string(), r#"edge "a" -> "ghost" refers to unknown node "ghost""#);
    }

    #[test]
    fn reports_a_real_cycle() {
        let edges = [("s", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "t")];
        let err = Dag::new(["s", "a", "b", "c", "t"], edges).unwrap_err();
        let DagError::Cycle { cycle } = &err else { panic!("{err:?}") };
        assert_eq!(cycle, &["a", "b", "c"]);
        assert!(is_cycle_of(&edges, cycle));
        assert_eq!(err.to_string(), "cycle: a -> b -> c -> a");
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let err = Dag::new(["a", "b"], [("a", "b"), ("b", "b")]).unwrap_err();
        assert_eq!(err, DagError::Cycle { cycle: vec!["b".into()] });
        assert_eq!(err.to_string(), "cycle: b -> b");
    }

    #[test]
    fn cycle_behind_a_tail_is_found() {
        // x is left behind by the cycle but is not on it.
        let edges = [("a", "b"), ("b", "a"), ("b", "x"), ("x", "y")];
        let err = Dag::new(["x", "y", "a", "b"], edges).unwrap_err();
        let DagError::Cycle { cycle } = err else { panic!() };
        assert!(is_cycle_of(&edges, &cycle), "{cycle:?}");
        assert_eq!(cycle.len(), 2);
    }

    #[test]
    fn ancestors_and_descendants() {
        let dag = Dag::new(
            ["a", "b", "c", "d", "e"],
            [("a", "b"), ("b", "c"), ("a", "d"), ("e", "d")],
        )
        .unwrap();
        let ix = |id| dag.index_of(id).unwrap();
        assert_eq!(ids(&dag, &dag.descendants(ix("a"))), ["b", "c", "d"]);
        assert_eq!(ids(&dag, &dag.ancestors(ix("d"))), ["a", "e"]);
        assert!(dag.ancestors(ix("a")).is_empty());
        assert!(matches!(dag.require("zz"), Err(DagError::UnknownNode { .. })));
    }

    #[test]
    fn duplicate_edges_are_harmless() {
        let dag = Dag::new(["a", "b"], [("a", "b"), ("a", "b")]).unwrap();
        assert_eq!(ids(&dag, dag.topological_order()), ["a", "b"]);
        assert_eq!(dag.levels().len(), 2);
    }

    #[test]
    fn random_graphs_respect_every_edge() {
        // A small deterministic LCG; edges only go from lower to higher rank of
        // a shuffled permutation, so the graph is acyclic.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut rand = move |m: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        for _ in 0..50 {
            let n = 1 + rand(60) as usize;
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, rand(i as u64 + 1) as usize);
            }
            let mut edges = Vec::new();
            for _ in 0..rand(3 * n as u64 + 1) {
                let (a, b) = (rand(n as u64) as usize, rand(n as u64) as usize);
                if a < b {
                    edges.push((names[perm[a]].as_str(), names[perm[b]].as_str()));
                }
            }
            let dag = Dag::new(names.iter().map(String::as_str), edges.iter().copied()).unwrap();
            let order = dag.topological_order();
            let mut pos = vec![0; n];
            for (p, &ix) in order.iter().enumerate() {
                pos[ix as usize] = p;
            }
            assert_eq!(order.len(), n);
            for &(u, v) in &edges {
                assert!(pos[dag.index_of(u).unwrap() as usize] < pos[dag.index_of(v).unwrap() as usize]);
            }
            let mut level_of = vec![0; n];
            for (l, level) in dag.levels().iter().enumerate() {
                for &ix in level {
                    level_of[ix as usize] = l;
                }
            }
            for &(u, v) in &edges {
                assert!(level_of[dag.index_of(u).unwrap() as usize] < level_of[dag.index_of(v).unwrap() as usize]);
            }
        }
    }
}
