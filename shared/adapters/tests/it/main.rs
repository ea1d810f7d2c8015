//! The adapters' integration tests, one binary: the AWS stores against moto, the HTTP clients
//! against the local sandbox, the secrets against moto's Secrets Manager and SSM.

// Test code unwraps: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod budget_checkpoint;
mod common;
mod crm_http;
mod crm_listing;
mod moto;
mod partner_center_http;
mod secrets;
