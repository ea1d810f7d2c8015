//! The `cosell` CLI's integration tests, one binary: each command against the sandbox and moto
//! (the audit test runs the real handlers of the three functions).

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod audit;
mod demo;
mod doctor;
#[path = "support/ops.rs"]
mod ops;
mod reconcile_status;
mod redrive;
mod register_webhook;
mod soak;
