//! statepipe's native core.
//!
//! This file only registers the Python module; the logic lives in plain Rust
//! modules that `cargo test` exercises without Python:
//! - [`dag`]: validation, topological order, levels, ancestry;
//! - [`frontier`]: the scheduler's ready-set, rebuilt from stored statuses;
//! - [`bus`]: the per-topic ring buffers that fan events out to subscribers;
//! - [`event`]: one encoding of an event for watchers and for PostgreSQL's COPY,
//!   and the EventBatch messages watchers receive, split under a size limit;
//! - [`python`]: the PyO3 boundary (errors become Python exceptions only there).

mod address;
pub mod bus;
pub mod dag;
pub mod event;
pub mod frontier;
mod intern;
mod minqueue;
pub mod notify;
mod python;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    python::register(m)
}
