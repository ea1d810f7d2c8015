//! The sandbox's integration tests, one binary: the Partner Center, Dataverse and Salesforce
//! stand-ins against their documented contracts.

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;
mod dataverse;
mod partner_center;
mod salesforce;
