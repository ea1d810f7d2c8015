//! `partner-center-events`: the Lambda function (Function URL) that receives Partner Center
//! referral webhooks, verifies their signature and syncs the referral to the CRM opportunity
//! (Dataverse or Salesforce) exactly once, through the domain's sync core.
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the typed configuration from the environment (the variable table) |
//! | [`app`] | [`App`]: the clients, stores and verifier built once per cold start |
//! | [`handler`] | [`handler::handle`]: one request in, one small JSON answer and one log line out |
//!
//! `main.rs` only wires them: tracing → [`Config::from_env`] → [`App`] → `lambda_http::run`.

pub mod app;
pub mod config;
pub mod handler;

pub use app::{App, Clients, LocalApp, ProductionApp, Stores};
pub use config::{Config, ConfigError, Env, StoreConfig, SyncConfig};
