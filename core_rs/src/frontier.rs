//! The scheduler's ready-set.
//!
//! A [`Frontier`] is always built from a [`Dag`] and the nodes' stored
//! statuses, so a fresh start, a resume and crash recovery are one code path:
//! nodes that already succeeded or were skipped count as done, nodes that were
//! queued or running when a process died simply become ready again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::dag::{Dag, DagError, NodeIx};

/// A node's stored status (the node lifecycle of DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    Pending,
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 8] = [
        NodeStatus::Pending,
        NodeStatus::Queued,
        NodeStatus::Running,
        NodeStatus::RetryWait,
        NodeStatus::Succeeded,
        NodeStatus::Failed,
        NodeStatus::Cancelled,
        NodeStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "PENDING",
            NodeStatus::Queued => "QUEUED",
            NodeStatus::Running => "RUNNING",
            NodeStatus::RetryWait => "RETRY_WAIT",
            NodeStatus::Succeeded => "SUCCEEDED",
            NodeStatus::Failed => "FAILED",
            NodeStatus::Cancelled => "CANCELLED",
            NodeStatus::Skipped => "SKIPPED",
        }
    }
}

impl FromStr for NodeStatus {
    type Err = FrontierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| FrontierError::UnknownStatus { status: s.to_owned() })
    }
}

/// Where a node stands inside the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Some predecessor is not done yet.
    Waiting,
    /// Every predecessor is done; waiting to be handed out.
    Ready,
    /// Handed out to the scheduler and not reported back yet.
    Running,
    Succeeded,
    /// Skipped on purpose (a `when` condition): counts as done for dependents.
    Skipped,
    /// Skipped because an ancestor failed: blocks its dependents in turn.
    Blocked,
    Failed,
    Cancelled,
}

impl Slot {
    /// The stored status this slot corresponds to.
    pub fn status(self) -> NodeStatus {
        match self {
            Slot::Waiting => NodeStatus::Pending,
            Slot::Ready => NodeStatus::Queued,
            Slot::Running => NodeStatus::Running,
            Slot::Succeeded => NodeStatus::Succeeded,
            Slot::Skipped | Slot::Blocked => NodeStatus::Skipped,
            Slot::Failed => NodeStatus::Failed,
            Slot::Cancelled => NodeStatus::Cancelled,
        }
    }

    fn is_done(self) -> bool {
        !matches!(self, Slot::Waiting | Slot::Ready | Slot::Running)
    }
}

/// A request the frontier cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontierError {
    Dag(DagError),
    UnknownStatus { status: String },
    /// `action` is not allowed while the node is in `slot`.
    InvalidTransition {
        node_id: String,
        action: &'static str,
        slot: Slot,
    },
}

impl fmt::Display for FrontierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontierError::Dag(err) => err.fmt(f),
            FrontierError::UnknownStatus { status } => write!(
                f,
                "unknown node status {status:?}; expected one of {}",
                NodeStatus::ALL.map(NodeStatus::as_str).join(", ")
            ),
            FrontierError::InvalidTransition { node_id, action, slot } => write!(
                f,
                "cannot {action} node {node_id:?}: it is {} ({slot:?})",
                slot.status().as_str()
            ),
        }
    }
}

impl std::error::Error for FrontierError {}

impl From<DagError> for FrontierError {
    fn from(err: DagError) -> Self {
        FrontierError::Dag(err)
    }
}

/// Which nodes can run now, and what happens to the rest as nodes finish.
#[derive(Debug)]
pub struct Frontier {
    dag: Arc<Dag>,
    slots: Vec<Slot>,
    /// Per node: predecessors (counted per edge) that are not done yet.
    unmet: Vec<u32>,
    /// A failed node whose dependents should run anyway.
    continue_on_failure: Vec<bool>,
    ready: BinaryHeap<Reverse<NodeIx>>,
    ready_count: usize,
    running_count: usize,
    /// Every node skipped because an ancestor failed, in the order it happened.
    blocked: Vec<NodeIx>,
}

impl Frontier {
    /// Builds the frontier from stored statuses (`None` means PENDING).
    /// QUEUED, RUNNING and RETRY_WAIT nodes become ready again once their
    /// predecessors are done: whatever handed them out is gone.
    pub fn new(
        dag: Arc<Dag>,
        statuses: &[NodeStatus],
        continue_on_failure: Vec<bool>,
    ) -> Frontier {
        let n = dag.len();
        assert!(statuses.len() == n && continue_on_failure.len() == n);
        let slots = statuses
            .iter()
            .map(|status| match status {
                NodeStatus::Succeeded => Slot::Succeeded,
                NodeStatus::Skipped => Slot::Skipped,
                NodeStatus::Failed => Slot::Failed,
                NodeStatus::Cancelled => Slot::Cancelled,
                _ => Slot::Waiting,
            })
            .collect();
        let mut frontier = Frontier {
            dag,
            slots,
            unmet: vec![0; n],
            continue_on_failure,
            ready: BinaryHeap::new(),
            ready_count: 0,
            running_count: 0,
            blocked: Vec::new(),
        };
        let dag = Arc::clone(&frontier.dag);
        for &v in dag.topological_order() {
            let preds = dag.predecessors(v);
            // A stored SKIPPED may have been skipped by a condition (done) or
            // because an ancestor failed (blocking): the ancestors tell.
            if frontier.slots[v as usize] == Slot::Skipped && preds.iter().any(|&u| frontier.blocks(u)) {
                frontier.slots[v as usize] = Slot::Blocked;
                continue;
            }
            if frontier.slots[v as usize] != Slot::Waiting {
                continue;
            }
            if preds.iter().any(|&u| frontier.blocks(u)) {
                frontier.slots[v as usize] = Slot::Blocked;
                frontier.blocked.push(v);
                continue;
            }
            let unmet = preds.iter().filter(|&&u| !frontier.resolves(u)).count() as u32;
            frontier.unmet[v as usize] = unmet;
            if unmet == 0 {
                frontier.make_ready(v);
            }
        }
        frontier
    }

    pub fn dag(&self) -> &Arc<Dag> {
        &self.dag
    }

    pub fn slot(&self, ix: NodeIx) -> Slot {
        self.slots[ix as usize]
    }

    /// Nodes ready to run and not handed out yet.
    pub fn ready_count(&self) -> usize {
        self.ready_count
    }

    /// Nodes handed out and not reported back yet.
    pub fn running_count(&self) -> usize {
        self.running_count
    }

    /// Nothing is ready and nothing is running: no node can start any more.
    pub fn is_finished(&self) -> bool {
        self.ready_count == 0 && self.running_count == 0
    }

    /// Every node skipped because an ancestor failed (including at build).
    pub fn blocked(&self) -> &[NodeIx] {
        &self.blocked
    }

    /// Hands out up to `limit` ready nodes, earliest given first, and marks
    /// them running.
    pub fn pop_ready(&mut self, limit: usize) -> Vec<NodeIx> {
        let mut out = Vec::with_capacity(limit.min(self.ready_count));
        while out.len() < limit {
            let Some(Reverse(ix)) = self.ready.pop() else { break };
            // Entries are never stale (a ready node only leaves via pop), but
            // guard anyway so a bug cannot hand a node out twice.
            if self.slots[ix as usize] == Slot::Ready {
                self.slots[ix as usize] = Slot::Running;
                self.ready_count -= 1;
                self.running_count += 1;
                out.push(ix);
            }
        }
        out
    }

    /// A running node succeeded; returns the nodes that became ready.
    pub fn complete(&mut self, ix: NodeIx) -> Result<Vec<NodeIx>, FrontierError> {
        self.finish(ix, "complete", Slot::Succeeded)?;
        Ok(self.release_dependents(ix))
    }

    /// A running node was skipped on purpose (its condition was false); its
    /// dependents treat it as done. Returns the nodes that became ready.
    pub fn skip(&mut self, ix: NodeIx) -> Result<Vec<NodeIx>, FrontierError> {
        self.finish(ix, "skip", Slot::Skipped)?;
        Ok(self.release_dependents(ix))
    }

    /// A running node failed for good. Returns the descendants that will now
    /// be skipped, in the order given; none if the node continues on failure,
    /// in which case its dependents may become ready instead.
    pub fn fail(&mut self, ix: NodeIx) -> Result<Vec<NodeIx>, FrontierError> {
        self.finish(ix, "fail", Slot::Failed)?;
        if self.continue_on_failure[ix as usize] {
            self.release_dependents(ix);
            return Ok(Vec::new());
        }
        Ok(self.block_descendants(ix))
    }

    /// A running node was cancelled: like a failure, its descendants are
    /// skipped (whatever its continue-on-failure flag says).
    pub fn cancel(&mut self, ix: NodeIx) -> Result<Vec<NodeIx>, FrontierError> {
        self.finish(ix, "cancel", Slot::Cancelled)?;
        Ok(self.block_descendants(ix))
    }

    /// Puts a running node back to ready (a retry, or an attempt given back).
    pub fn requeue(&mut self, ix: NodeIx) -> Result<(), FrontierError> {
        self.expect_running(ix, "requeue")?;
        self.running_count -= 1;
        self.make_ready(ix);
        Ok(())
    }

    fn expect_running(&self, ix: NodeIx, action: &'static str) -> Result<(), FrontierError> {
        match self.slots[ix as usize] {
            Slot::Running => Ok(()),
            slot => Err(FrontierError::InvalidTransition {
                node_id: self.dag.id(ix).to_owned(),
                action,
                slot,
            }),
        }
    }

    fn finish(&mut self, ix: NodeIx, action: &'static str, to: Slot) -> Result<(), FrontierError> {
        self.expect_running(ix, action)?;
        self.running_count -= 1;
        self.slots[ix as usize] = to;
        Ok(())
    }

    fn make_ready(&mut self, ix: NodeIx) {
        self.slots[ix as usize] = Slot::Ready;
        self.ready_count += 1;
        self.ready.push(Reverse(ix));
    }

    /// Done in a way that lets dependents run.
    fn resolves(&self, ix: NodeIx) -> bool {
        match self.slots[ix as usize] {
            Slot::Succeeded | Slot::Skipped => true,
            Slot::Failed => self.continue_on_failure[ix as usize],
            _ => false,
        }
    }

    /// Done in a way that means dependents will never run.
    fn blocks(&self, ix: NodeIx) -> bool {
        let slot = self.slots[ix as usize];
        slot.is_done() && !self.resolves(ix)
    }

    fn release_dependents(&mut self, ix: NodeIx) -> Vec<NodeIx> {
        let dag = Arc::clone(&self.dag);
        let mut newly_ready = Vec::new();
        for &v in dag.successors(ix) {
            if self.slots[v as usize] == Slot::Waiting {
                let unmet = &mut self.unmet[v as usize];
                *unmet -= 1;
                if *unmet == 0 {
                    self.make_ready(v);
                    newly_ready.push(v);
                }
            }
        }
        newly_ready
    }

    fn block_descendants(&mut self, ix: NodeIx) -> Vec<NodeIx> {
        let dag = Arc::clone(&self.dag);
        let mut blocked: Vec<NodeIx> = dag
            .descendants(ix)
            .into_iter()
            .filter(|&v| self.slots[v as usize] == Slot::Waiting)
            .collect();
        blocked.sort_unstable();
        for &v in &blocked {
            self.slots[v as usize] = Slot::Blocked;
        }
        self.blocked.extend_from_slice(&blocked);
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(nodes: &[&str], edges: &[(&str, &str)]) -> Arc<Dag> {
        Arc::new(Dag::new(nodes.iter().copied(), edges.iter().copied()).unwrap())
    }

    fn fresh(dag: &Arc<Dag>) -> Frontier {
        let n = dag.len();
        Frontier::new(Arc::clone(dag), &vec![NodeStatus::Pending; n], vec![false; n])
    }

    fn names(g: &Dag, ixs: &[NodeIx]) -> Vec<String> {
        ixs.iter().map(|&ix| g.id(ix).to_owned()).collect()
    }

    fn ix(g: &Dag, id: &str) -> NodeIx {
        g.index_of(id).unwrap()
    }

    #[test]
    fn runs_a_diamond_to_the_end() {
        let g = dag(&["a", "b", "c", "d"], &[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]);
        let mut f = fresh(&g);
        let first = f.pop_ready(10);
        assert_eq!(names(&g, &first), ["a"]);
        assert!(f.pop_ready(10).is_empty());
        assert_eq!(names(&g, &f.complete(ix(&g, "a")).unwrap()), ["b", "c"]);
        assert_eq!(names(&g, &f.pop_ready(1)), ["b"]);
        assert!(f.complete(ix(&g, "b")).unwrap().is_empty());
        assert_eq!(names(&g, &f.pop_ready(5)), ["c"]);
        assert_eq!(names(&g, &f.complete(ix(&g, "c")).unwrap()), ["d"]);
        assert!(!f.is_finished());
        f.pop_ready(5);
        f.complete(ix(&g, "d")).unwrap();
        assert!(f.is_finished());
    }

    #[test]
    fn failure_skips_descendants_only() {
        let g = dag(&["a", "b", "c", "d", "e"], &[("a", "b"), ("b", "c"), ("a", "d"), ("e", "d")]);
        let mut f = fresh(&g);
        assert_eq!(names(&g, &f.pop_ready(10)), ["a", "e"]);
        f.complete(ix(&g, "e")).unwrap();
        assert_eq!(names(&g, &f.fail(ix(&g, "a")).unwrap()), ["b", "c", "d"]);
        assert!(f.is_finished());
        assert_eq!(f.slot(ix(&g, "d")).status(), NodeStatus::Skipped);
    }

    #[test]
    fn continue_on_failure_releases_dependents() {
        let g = dag(&["a", "b"], &[("a", "b")]);
        let mut f = Frontier::new(Arc::clone(&g), &[NodeStatus::Pending; 2], vec![true, false]);
        f.pop_ready(1);
        assert!(f.fail(0).unwrap().is_empty());
        assert_eq!(names(&g, &f.pop_ready(1)), ["b"]);
    }

    #[test]
    fn a_condition_skip_counts_as_done() {
        let g = dag(&["a", "b", "c"], &[("a", "c"), ("b", "c")]);
        let mut f = fresh(&g);
        f.pop_ready(2);
        f.skip(0).unwrap();
        assert_eq!(names(&g, &f.complete(1).unwrap()), ["c"]);
    }

    #[test]
    fn rebuild_from_statuses_reruns_interrupted_work() {
        use NodeStatus::*;
        let g = dag(&["a", "b", "c", "d"], &[("a", "b"), ("b", "c"), ("a", "d")]);
        // a done, b was running when the process died, d was queued.
        let mut f = Frontier::new(Arc::clone(&g), &[Succeeded, Running, Pending, Queued], vec![false; 4]);
        assert_eq!(names(&g, &f.pop_ready(10)), ["b", "d"]);
        assert_eq!(f.slot(0), Slot::Succeeded);
        assert_eq!(names(&g, &f.complete(1).unwrap()), ["c"]);
    }

    #[test]
    fn rebuild_after_failure_blocks_what_cannot_run() {
        use NodeStatus::*;
        let g = dag(&["a", "b", "c", "x"], &[("a", "b"), ("b", "c")]);
        let f = Frontier::new(Arc::clone(&g), &[Failed, Pending, Pending, Pending], vec![false; 4]);
        assert_eq!(names(&g, f.blocked()), ["b", "c"]);
        assert_eq!(f.ready_count(), 1);
    }

    #[test]
    fn a_stored_skip_below_a_failure_keeps_blocking() {
        use NodeStatus::*;
        // The process died after storing b's skip but before storing c's.
        let g = dag(&["a", "b", "c", "d"], &[("a", "b"), ("b", "c"), ("d", "c")]);
        let mut f = Frontier::new(Arc::clone(&g), &[Failed, Skipped, Pending, Skipped], vec![false; 4]);
        assert_eq!(names(&g, &f.pop_ready(10)), Vec::<String>::new());
        assert_eq!(names(&g, f.blocked()), ["c"]);
        assert_eq!(f.slot(3), Slot::Skipped);
    }

    #[test]
    fn requeue_and_illegal_transitions() {
        let g = dag(&["a", "b"], &[("a", "b")]);
        let mut f = fresh(&g);
        let err = f.complete(1).unwrap_err();
        assert_eq!(err.to_string(), r#"cannot complete node "b": it is PENDING (Waiting)"#);
        f.pop_ready(1);
        f.requeue(0).unwrap();
        assert_eq!(f.running_count(), 0);
        assert_eq!(f.pop_ready(1), vec![0]);
        f.complete(0).unwrap();
        assert!(f.complete(0).is_err());
    }

    #[test]
    fn statuses_parse() {
        assert_eq!("retry_wait".parse::<NodeStatus>().unwrap(), NodeStatus::RetryWait);
        assert!("DONE".parse::<NodeStatus>().is_err());
    }
}
