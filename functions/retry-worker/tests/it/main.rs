//! retry-worker's integration tests, one binary: the worker against moto (SQS, DynamoDB) and the
//! sandbox, the sample events, its log line, and a real process killed mid-sync.

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod crash;
mod log_line;
mod sample_harness;
mod samples;
mod support;
mod worker;
