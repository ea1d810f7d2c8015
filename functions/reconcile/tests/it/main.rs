//! reconcile's integration tests, one binary: runs against the sandbox with stores in memory and
//! on moto, and the daily API budget across days.

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod budget;
mod reconcile;
mod reconcile_moto;
