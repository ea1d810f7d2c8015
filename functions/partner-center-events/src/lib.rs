//! `partner-center-events`: the Lambda function (Function URL) that receives Partner Center
//! referral webhooks, verifies their signature and syncs the referral to the CRM opportunity
//! (Dataverse or Salesforce) exactly once, through the domain's sync core.
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the shared variables plus webhook verification and the body cap |
//! | [`app`] | [`App`]: the shared connector, the verifier and the body cap, built once per cold start |
//! | [`handler`] | [`handler::handle`]: one request in, one small JSON answer and one log line out |
//!
//! `main.rs` only wires them: `cosell_runtime::boot` → [`Config`] → [`App::build`] →
//! `lambda_http::run`.

pub mod app;
pub mod config;
pub mod handler;

pub use app::App;
pub use config::Config;
