//! crm-events' integration tests, one binary: the handler against the sandbox (stores in memory),
//! and end to end through the real binary on the sandbox's local Lambda, for both CRMs.

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod e2e_lambda;
mod handler;
mod support;
