//! The PyO3 boundary: Python classes over the plain Rust modules.
//!
//! Rust errors become Python exceptions here and only here; each exception
//! carries its data as attributes (a cycle its node ids, a lag its seqs).

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::address::AddressIndex;
use crate::bus::{self, Bus, Poll, Subscription, Wake};
use crate::dag::{Dag, DagBuilder, DagError, NodeIx};
use crate::event;
use crate::frontier::{Frontier, FrontierError, NodeStatus};
use crate::notify::Notifier;

/// Python exception classes; module `core_rs` (which re-exports them), so
/// they print and pickle under their public names.
mod exceptions {
    use pyo3::create_exception;
    use pyo3::exceptions::PyException;

    create_exception!(core_rs, DagError, PyException, "A graph is not a valid DAG.");
    create_exception!(core_rs, CycleError, DagError, "The edges contain a cycle; `.cycle` lists it.");
    create_exception!(core_rs, UnknownNodeError, DagError, "A node id that is not in the DAG.");
    create_exception!(core_rs, DuplicateNodeError, DagError, "The same node id was given twice.");
    create_exception!(core_rs, FrontierError, PyException, "A transition the frontier does not allow.");
    create_exception!(core_rs, Lagged, PyException, "A subscriber fell behind the topic's ring.");
}
use exceptions::{CycleError, DuplicateNodeError, Lagged, UnknownNodeError};
use exceptions::{DagError as PyDagError, FrontierError as PyFrontierError};

/// Builds an exception instance and sets its data attributes.
fn error_with<'py>(
    py: Python<'py>,
    err: PyErr,
    attrs: &[(&str, Bound<'py, PyAny>)],
) -> PyErr {
    let value = err.value(py);
    for (name, attr) in attrs {
        if let Err(e) = value.setattr(*name, attr) {
            return e;
        }
    }
    err
}

fn dag_error(py: Python<'_>, err: DagError) -> PyErr {
    let message = err.to_string();
    let none = || py.None().into_bound(py);
    let str_ = |s: &str| PyString::new(py, s).into_any();
    match err {
        DagError::DuplicateNode { node_id } => {
            error_with(py, DuplicateNodeError::new_err(message), &[("node_id", str_(&node_id))])
        }
        DagError::UnknownNode { node_id, edge } => {
            let edge = match edge {
                Some((u, v)) => PyTuple::new(py, [u, v]).map(Bound::into_any).unwrap_or_else(|_| none()),
                None => none(),
            };
            error_with(
                py,
                UnknownNodeError::new_err(message),
                &[("node_id", str_(&node_id)), ("edge", edge)],
            )
        }
        DagError::Cycle { cycle } => {
            let ids = PyList::new(py, &cycle).map(Bound::into_any).unwrap_or_else(|_| none());
            error_with(py, CycleError::new_err(message), &[("cycle", ids)])
        }
        DagError::TooLarge { .. } => PyDagError::new_err(message),
    }
}

fn frontier_error(py: Python<'_>, err: FrontierError) -> PyErr {
    match err {
        FrontierError::Dag(err) => dag_error(py, err),
        FrontierError::UnknownStatus { .. } => PyValueError::new_err(err.to_string()),
        FrontierError::InvalidTransition { ref node_id, slot, .. } => {
            let node_id = PyString::new(py, node_id).into_any();
            let status = PyString::new(py, slot.status().as_str()).into_any();
            error_with(
                py,
                PyFrontierError::new_err(err.to_string()),
                &[("node_id", node_id), ("status", status)],
            )
        }
    }
}

/// The two ids of an edge, as text, for an error message.
fn edge_ids(edge: &Bound<'_, PyAny>) -> (String, String) {
    let text = |ix: usize| {
        edge.get_item(ix)
            .and_then(|item| item.str().map(|s| s.to_string()))
            .unwrap_or_default()
    };
    (text(0), text(1))
}

fn as_str<'a>(obj: &'a Bound<'_, PyAny>, what: impl FnOnce() -> String) -> PyResult<&'a str> {
    match obj.cast::<PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{} must be a str, not {}",
            what(),
            obj.get_type().name()?
        ))),
    }
}

/// A validated DAG over string node ids.
#[pyclass(name = "Dag", module = "core_rs", frozen)]
pub struct PyDag {
    dag: Arc<Dag>,
    /// The id objects as given, so results hand them back without copying.
    ids: Vec<Py<PyString>>,
}

impl PyDag {
    fn names(&self, py: Python<'_>, ixs: &[NodeIx]) -> PyResult<Py<PyList>> {
        Ok(PyList::new(py, ixs.iter().map(|&ix| self.ids[ix as usize].bind(py)))?.unbind())
    }

    fn index(&self, py: Python<'_>, id: &str) -> PyResult<NodeIx> {
        self.dag.require(id).map_err(|e| dag_error(py, e))
    }
}

#[pymethods]
impl PyDag {
    #[new]
    fn new(py: Python<'_>, nodes: &Bound<'_, PyAny>, edges: &Bound<'_, PyAny>) -> PyResult<Self> {
        let node_hint = nodes.len().unwrap_or(0);
        let mut builder = DagBuilder::with_capacity(node_hint, edges.len().unwrap_or(0));
        let mut ids = Vec::with_capacity(node_hint);
        let mut addresses = Vec::with_capacity(node_hint);
        for (i, node) in nodes.try_iter()?.enumerate() {
            let node = node?;
            let id = as_str(&node, || format!("node id at position {i}"))?;
            builder.add_node(id).map_err(|e| dag_error(py, e))?;
            addresses.push(node.as_ptr() as usize);
            ids.push(node.cast_into::<PyString>()?.unbind());
        }
        // Edges usually name the very str objects given as nodes: look those
        // up by address first and never touch their characters.
        let by_address = AddressIndex::new(&addresses);
        drop(addresses);
        let endpoint = |builder: &DagBuilder, obj: &Bound<'_, PyAny>, edge: &Bound<'_, PyAny>, i: usize| {
            if let Some(ix) = by_address.get(obj.as_ptr() as usize) {
                return Ok(ix);
            }
            let id = as_str(obj, || format!("edge at position {i}: node id"))?;
            builder.index_of(id).ok_or_else(|| {
                let pair = edge_ids(edge);
                dag_error(
                    py,
                    DagError::UnknownNode {
                        node_id: id.to_owned(),
                        edge: Some(pair),
                    },
                )
            })
        };
        // Fast path: a list of 2-tuples of known str objects, read through
        // borrowed pointers (no reference counting, no string access). No
        // Python code runs on this path, so the list cannot change under us.
        const LOOKAHEAD: usize = 16;
        let mut done = 0;
        if let Ok(list) = edges.cast::<PyList>() {
            let len = list.len();
            // SAFETY (both closures): `i < len`, the list is not mutated while
            // we hold borrowed item pointers, and tuple items are only read
            // after checking the item is a 2-tuple.
            let pair = |i: usize| unsafe {
                let item = ffi::PyList_GET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t);
                (ffi::PyTuple_CheckExact(item) != 0 && ffi::PyTuple_GET_SIZE(item) == 2).then(|| {
                    (ffi::PyTuple_GET_ITEM(item, 0) as usize, ffi::PyTuple_GET_ITEM(item, 1) as usize)
                })
            };
            while done < len {
                if done + LOOKAHEAD < len {
                    if let Some((u, v)) = pair(done + LOOKAHEAD) {
                        by_address.prefetch(u);
                        by_address.prefetch(v);
                    }
                }
                let Some((u, v)) = pair(done) else { break };
                let (Some(ui), Some(vi)) = (by_address.get(u), by_address.get(v)) else { break };
                builder.add_edge_ix(ui, vi);
                done += 1;
            }
        }
        for (i, edge) in edges.try_iter()?.enumerate().skip(done) {
            let edge = edge?;
            let (u, v) = match edge.cast::<PyTuple>() {
                Ok(t) if t.len() == 2 => (t.get_item(0)?, t.get_item(1)?),
                _ => match edge.cast::<PyList>() {
                    Ok(l) if l.len() == 2 => (l.get_item(0)?, l.get_item(1)?),
                    _ => {
                        return Err(PyTypeError::new_err(format!(
                            "edge at position {i} must be a (before, after) pair of node ids, got {}",
                            edge.repr()?
                        )))
                    }
                },
            };
            let ui = endpoint(&builder, &u, &edge, i)?;
            let vi = endpoint(&builder, &v, &edge, i)?;
            builder.add_edge_ix(ui, vi);
        }
        drop(by_address);
        let dag = py.detach(move || builder.build()).map_err(|e| dag_error(py, e))?;
        Ok(PyDag { dag: Arc::new(dag), ids })
    }

    fn __len__(&self) -> usize {
        self.dag.len()
    }

    fn __contains__(&self, id: &Bound<'_, PyAny>) -> bool {
        id.cast::<PyString>()
            .ok()
            .and_then(|s| s.to_str().ok().and_then(|s| self.dag.index_of(s)))
            .is_some()
    }

    fn __repr__(&self) -> String {
        format!("Dag(nodes={}, edges={})", self.dag.len(), self.dag.edge_count())
    }

    /// Node ids in the order given.
    #[getter]
    fn nodes(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        Ok(PyList::new(py, self.ids.iter().map(|id| id.bind(py)))?.unbind())
    }

    #[getter]
    fn edge_count(&self) -> usize {
        self.dag.edge_count()
    }

    fn topological_order(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        self.names(py, self.dag.topological_order())
    }

    fn levels(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        let levels = self.dag.levels();
        let lists = levels.iter().map(|level| self.names(py, level)).collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, lists)?.unbind())
    }

    fn ancestors(&self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        let ix = self.index(py, node_id)?;
        self.names(py, &self.dag.ancestors(ix))
    }

    fn descendants(&self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        let ix = self.index(py, node_id)?;
        self.names(py, &self.dag.descendants(ix))
    }

    fn predecessors(&self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        let ix = self.index(py, node_id)?;
        self.names(py, self.dag.predecessors(ix))
    }

    fn successors(&self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        let ix = self.index(py, node_id)?;
        self.names(py, self.dag.successors(ix))
    }
}

/// The scheduler's ready-set over a [`PyDag`].
#[pyclass(name = "Frontier", module = "core_rs")]
pub struct PyFrontier {
    frontier: Frontier,
    dag: Py<PyDag>,
}

impl PyFrontier {
    fn index(&self, py: Python<'_>, id: &str) -> PyResult<NodeIx> {
        self.dag.get().index(py, id)
    }

    fn names(&self, py: Python<'_>, ixs: &[NodeIx]) -> PyResult<Py<PyList>> {
        self.dag.get().names(py, ixs)
    }

    fn step(
        &mut self,
        py: Python<'_>,
        node_id: &str,
        act: fn(&mut Frontier, NodeIx) -> Result<Vec<NodeIx>, FrontierError>,
    ) -> PyResult<Py<PyList>> {
        let ix = self.index(py, node_id)?;
        let out = act(&mut self.frontier, ix).map_err(|e| frontier_error(py, e))?;
        self.names(py, &out)
    }
}

#[pymethods]
impl PyFrontier {
    #[new]
    #[pyo3(signature = (dag, statuses=None, continue_on_failure=None))]
    fn new(
        py: Python<'_>,
        dag: Py<PyDag>,
        statuses: Option<&Bound<'_, PyAny>>,
        continue_on_failure: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let inner = Arc::clone(&dag.get().dag);
        let n = inner.len();
        let mut stored = vec![NodeStatus::Pending; n];
        if let Some(statuses) = statuses {
            for item in statuses.call_method0("items")?.try_iter()? {
                let (id, status): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
                let ix = inner
                    .require(as_str(&id, || "a statuses key".into())?)
                    .map_err(|e| dag_error(py, e))?;
                let status = as_str(&status, || "a status".into())?;
                stored[ix as usize] = status.parse().map_err(|e| frontier_error(py, e))?;
            }
        }
        let mut keep_going = vec![false; n];
        if let Some(ids) = continue_on_failure {
            for id in ids.try_iter()? {
                let id = id?;
                let ix = inner
                    .require(as_str(&id, || "a continue_on_failure id".into())?)
                    .map_err(|e| dag_error(py, e))?;
                keep_going[ix as usize] = true;
            }
        }
        Ok(PyFrontier {
            frontier: Frontier::new(inner, &stored, keep_going),
            dag,
        })
    }

    #[getter]
    fn dag(&self, py: Python<'_>) -> Py<PyDag> {
        self.dag.clone_ref(py)
    }

    #[pyo3(signature = (limit=None))]
    fn pop_ready(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Py<PyList>> {
        let ixs = self.frontier.pop_ready(limit.unwrap_or(usize::MAX));
        self.names(py, &ixs)
    }

    fn complete(&mut self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        self.step(py, node_id, Frontier::complete)
    }

    fn skip(&mut self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        self.step(py, node_id, Frontier::skip)
    }

    fn fail(&mut self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        self.step(py, node_id, Frontier::fail)
    }

    fn cancel(&mut self, py: Python<'_>, node_id: &str) -> PyResult<Py<PyList>> {
        self.step(py, node_id, Frontier::cancel)
    }

    fn requeue(&mut self, py: Python<'_>, node_id: &str) -> PyResult<()> {
        let ix = self.index(py, node_id)?;
        self.frontier.requeue(ix).map_err(|e| frontier_error(py, e))
    }

    fn status(&self, py: Python<'_>, node_id: &str) -> PyResult<&'static str> {
        let ix = self.index(py, node_id)?;
        Ok(self.frontier.slot(ix).status().as_str())
    }

    fn statuses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (ix, id) in self.dag.get().ids.iter().enumerate() {
            dict.set_item(id.bind(py), self.frontier.slot(ix as NodeIx).status().as_str())?;
        }
        Ok(dict)
    }

    fn blocked(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        self.names(py, self.frontier.blocked())
    }

    #[getter]
    fn ready_count(&self) -> usize {
        self.frontier.ready_count()
    }

    #[getter]
    fn running_count(&self) -> usize {
        self.frontier.running_count()
    }

    fn is_finished(&self) -> bool {
        self.frontier.is_finished()
    }
}

/// Each event is stored once as the tuple `(seq, data)` that every subscriber
/// receives: a delivery is a reference count, not a copy.
type Event = Py<PyTuple>;

/// In-memory fan-out of byte events by topic.
#[pyclass(name = "EventBus", module = "core_rs", frozen)]
pub struct PyEventBus {
    bus: Bus<Event>,
}

impl PyEventBus {
    fn publish_all<'py>(&self, py: Python<'py>, topic: &str, items: &[Bound<'py, PyBytes>]) -> PyResult<u64> {
        // Allocate the tuples before taking the topic lock: allocation can run
        // the garbage collector, and a finalizer could publish to this topic.
        let tuples = items
            .iter()
            .map(|data| PyTuple::new(py, [py.None().into_bound(py), data.clone().into_any()]))
            .collect::<PyResult<Vec<_>>>()?;
        let mut tuples = tuples.into_iter();
        let topic = self.bus.topic(topic);
        Ok(topic.publish_with(items.len(), |seq| {
            let tuple = tuples.next().expect("one tuple per item");
            // SAFETY: the tuple is new and referenced only here, so filling in
            // its first slot is allowed; PyTuple_SetItem steals the int (ints
            // are not tracked by the collector, so this cannot run Python code)
            // and releases the None placeholder.
            unsafe {
                let seq_obj = ffi::PyLong_FromUnsignedLongLong(seq);
                assert!(!seq_obj.is_null(), "allocating a seq int failed");
                ffi::PyTuple_SetItem(tuple.as_ptr(), 0, seq_obj);
            }
            tuple.unbind()
        }))
    }
}

#[pymethods]
impl PyEventBus {
    #[new]
    #[pyo3(signature = (capacity=bus::DEFAULT_CAPACITY))]
    fn new(capacity: usize) -> PyResult<Self> {
        Ok(PyEventBus {
            bus: Bus::new(capacity).map_err(|e| PyValueError::new_err(e.to_string()))?,
        })
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.bus.capacity()
    }

    #[pyo3(signature = (topic, last_seq=0))]
    fn open(&self, topic: &str, last_seq: u64) -> u64 {
        self.bus.open(topic, last_seq)
    }

    fn publish(&self, py: Python<'_>, topic: &str, data: Bound<'_, PyBytes>) -> PyResult<u64> {
        self.publish_all(py, topic, &[data])
    }

    fn publish_many(&self, py: Python<'_>, topic: &str, items: &Bound<'_, PyAny>) -> PyResult<u64> {
        let items = items
            .try_iter()?
            .map(|item| Ok(item?.cast_into::<PyBytes>()?))
            .collect::<PyResult<Vec<_>>>()?;
        self.publish_all(py, topic, &items)
    }

    #[pyo3(signature = (topic, after_seq=0))]
    fn subscribe(&self, topic: &str, after_seq: u64) -> PySubscription {
        PySubscription {
            sub: self.bus.subscribe(topic, after_seq),
        }
    }

    fn close(&self, topic: &str) -> bool {
        self.bus.close(topic)
    }

    fn last_seq(&self, topic: &str) -> Option<u64> {
        self.bus.last_seq(topic)
    }

    fn topics(&self) -> Vec<String> {
        self.bus.topic_names()
    }

    fn buffered(&self) -> usize {
        self.bus.buffered()
    }
}

/// A cursor on one topic. Every read returns a list of `(seq, data)` tuples:
/// non-empty when there were events, empty when there was nothing new, and
/// `None` once the topic is closed and drained.
#[pyclass(name = "Subscription", module = "core_rs")]
pub struct PySubscription {
    sub: Subscription<Event>,
}

impl PySubscription {
    fn read(
        &mut self,
        py: Python<'_>,
        max_events: usize,
        park: Option<(&Arc<dyn Wake>, u64)>,
    ) -> PyResult<Option<Py<PyList>>> {
        if max_events == 0 {
            return Err(PyValueError::new_err("max_events must be at least 1"));
        }
        let list = PyList::empty(py);
        let mut failed = None;
        let mut visit = |_seq: u64, event: &Event| {
            if failed.is_none() {
                if let Err(e) = list.append(event.bind(py)) {
                    failed = Some(e);
                }
            }
        };
        let poll = match park {
            Some((waker, token)) => self.sub.poll_or_park(max_events, &mut visit, waker, token),
            None => self.sub.poll(max_events, &mut visit),
        };
        if let Some(e) = failed {
            return Err(e);
        }
        match poll {
            Poll::Events(_) | Poll::Empty => Ok(Some(list.unbind())),
            Poll::Closed => Ok(None),
            Poll::Lagged { after_seq, oldest_seq } => {
                let topic = self.sub.topic().name().to_owned();
                let message = format!(
                    "subscriber to {topic:?} lagged: it has seen up to seq {after_seq}, the ring now starts at {oldest_seq}"
                );
                Err(error_with(
                    py,
                    Lagged::new_err(message),
                    &[
                        ("topic", PyString::new(py, &topic).into_any()),
                        ("after_seq", after_seq.into_pyobject(py)?.into_any()),
                        ("oldest_seq", oldest_seq.into_pyobject(py)?.into_any()),
                    ],
                ))
            }
        }
    }
}

#[pymethods]
impl PySubscription {
    #[getter]
    fn topic(&self) -> &str {
        self.sub.topic().name()
    }

    /// The last seq delivered.
    #[getter]
    fn position(&self) -> u64 {
        self.sub.position()
    }

    fn seek(&mut self, after_seq: u64) {
        self.sub.seek(after_seq);
    }

    #[pyo3(signature = (max_events=bus::DEFAULT_CAPACITY))]
    fn poll(&mut self, py: Python<'_>, max_events: usize) -> PyResult<Option<Py<PyList>>> {
        self.read(py, max_events, None)
    }

    /// Like `poll`; when nothing is new, parks on `notifier` with `token`.
    fn poll_or_park(
        &mut self,
        py: Python<'_>,
        max_events: usize,
        notifier: &Bound<'_, PyNotifier>,
        token: u64,
    ) -> PyResult<Option<Py<PyList>>> {
        let waker: Arc<dyn Wake> = notifier.get().notifier.clone();
        self.read(py, max_events, Some((&waker, token)))
    }

    /// Withdraws a parking (the waiter was cancelled).
    fn unpark(&self, notifier: &Bound<'_, PyNotifier>, token: u64) {
        let waker: Arc<dyn Wake> = notifier.get().notifier.clone();
        self.sub.unpark(&waker, token);
    }

    /// Blocks this thread (without holding the GIL) until there is something
    /// to read or `timeout_ms` passes; returns whether there is.
    fn wait(&self, py: Python<'_>, timeout_ms: u64) -> bool {
        let sub = &self.sub;
        py.detach(|| sub.wait(Duration::from_millis(timeout_ms)))
    }
}

/// One wake-up descriptor for all subscriptions parked by one event loop.
#[pyclass(name = "Notifier", module = "core_rs", frozen)]
pub struct PyNotifier {
    notifier: Arc<Notifier>,
}

#[pymethods]
impl PyNotifier {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(PyNotifier {
            notifier: Arc::new(Notifier::new()?),
        })
    }

    fn fileno(&self) -> i32 {
        self.notifier.fd()
    }

    fn take(&self) -> Vec<u64> {
        self.notifier.take()
    }
}

/// Encodes an event once for both of its destinations: returns
/// `(frame, copy_row)`: the `statepipe.v1.Event` framed as one element of
/// `EventBatch.events` (so batches for watchers are concatenations), and the
/// row for `COPY events (run_id, seq, ts, kind, node_id, body)` in text format.
#[pyfunction]
#[pyo3(signature = (run_id, seq, ts_ns, kind, node_id="", attempt=0, status="", message="", level="", data=None))]
#[allow(clippy::too_many_arguments)]
fn encode_event<'py>(
    py: Python<'py>,
    run_id: &str,
    seq: i64,
    ts_ns: i64,
    kind: &str,
    node_id: &str,
    attempt: i32,
    status: &str,
    message: &str,
    level: &str,
    data: Option<&[u8]>,
) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>) {
    let fields = event::EventFields {
        run_id,
        seq,
        ts_ns,
        kind,
        node_id,
        attempt,
        status,
        message,
        level,
        data: data.unwrap_or_default(),
    };
    let mut body = Vec::with_capacity(64 + message.len() + fields.data.len());
    event::encode(&fields, &mut body);
    let mut row = Vec::with_capacity(96 + 2 * body.len());
    event::copy_row(&fields, &body, &mut row);
    let mut frame = Vec::with_capacity(body.len() + 6);
    event::frame(&body, &mut frame);
    (PyBytes::new(py, &frame), PyBytes::new(py, &row))
}

/// The EventBatch messages holding `bodies` (encoded Events, as stored):
/// each event framed, the batches in order and at most `limit` bytes unless
/// one event alone is larger.
#[pyfunction]
#[pyo3(signature = (bodies, limit=event::DEFAULT_BATCH_LIMIT as i64))]
fn frame_event_batches<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyAny>,
    limit: i64,
) -> PyResult<Bound<'py, PyList>> {
    event_batches(py, bodies, event::Items::Bodies, limit, "bodies")
}

/// Like `frame_event_batches` for events already framed (what
/// `encode_event` returns and the bus carries): copied as they are.
#[pyfunction]
#[pyo3(signature = (frames, limit=event::DEFAULT_BATCH_LIMIT as i64))]
fn join_event_batches<'py>(
    py: Python<'py>,
    frames: &Bound<'py, PyAny>,
    limit: i64,
) -> PyResult<Bound<'py, PyList>> {
    event_batches(py, frames, event::Items::Frames, limit, "frames")
}

fn event_batches<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    kind: event::Items,
    limit: i64,
    what: &str,
) -> PyResult<Bound<'py, PyList>> {
    let limit = usize::try_from(limit)
        .map_err(|_| PyValueError::new_err(format!("limit must not be negative, got {limit}")))?;
    let as_bytes = |i: usize, item: Bound<'py, PyAny>| {
        item.cast_into::<PyBytes>().map_err(|err| {
            let got = err.into_inner();
            let type_name = got.get_type().name().map(|n| n.to_string()).unwrap_or_default();
            PyTypeError::new_err(format!("{what}[{i}] is {type_name}, not bytes"))
        })
    };
    let owned = if let Ok(list) = items.cast::<PyList>() {
        list.iter().enumerate().map(|(i, item)| as_bytes(i, item)).collect::<PyResult<Vec<_>>>()?
    } else if items.is_instance_of::<PyBytes>() || items.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of bytes, not one value")));
    } else {
        items
            .try_iter()?
            .enumerate()
            .map(|(i, item)| as_bytes(i, item?))
            .collect::<PyResult<Vec<_>>>()?
    };
    let slices: Vec<&[u8]> = owned.iter().map(|b| b.as_bytes()).collect();
    let batches = PyList::empty(py);
    for plan in event::plan_batches(&slices, kind, limit) {
        // Written straight into the bytes object: no intermediate buffer.
        let batch = PyBytes::new_with(py, plan.len, |out| {
            event::write_batch(&slices[plan.start..plan.end], kind, out);
            Ok(())
        })?;
        batches.append(batch)?;
    }
    Ok(batches)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(encode_event, m)?)?;
    m.add_function(wrap_pyfunction!(frame_event_batches, m)?)?;
    m.add_function(wrap_pyfunction!(join_event_batches, m)?)?;
    m.add_class::<PyDag>()?;
    m.add_class::<PyFrontier>()?;
    m.add_class::<PyEventBus>()?;
    m.add_class::<PySubscription>()?;
    m.add_class::<PyNotifier>()?;
    m.add("DagError", py.get_type::<PyDagError>())?;
    m.add("CycleError", py.get_type::<CycleError>())?;
    m.add("UnknownNodeError", py.get_type::<UnknownNodeError>())?;
    m.add("DuplicateNodeError", py.get_type::<DuplicateNodeError>())?;
    m.add("FrontierError", py.get_type::<PyFrontierError>())?;
    m.add("Lagged", py.get_type::<Lagged>())?;
    m.add("DEFAULT_CAPACITY", bus::DEFAULT_CAPACITY)?;
    Ok(())
}
