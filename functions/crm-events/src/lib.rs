//! `crm-events`: the Lambda function (Function URL) that receives CRM opportunity changes —
//! Dataverse webhooks (`POST /dataverse`) and Salesforce Outbound Messages
//! (`POST /salesforce/{secret}`) — and syncs each opportunity to its Partner Center referral
//! exactly once, through the domain's sync core ([`handle_crm_change`]).
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the shared variables plus the endpoint's authentication (the variable table) |
//! | [`app`] | [`App`]: the shared connector, the endpoint and the body cap |
//! | [`handler`] | [`handler::handle`]: one request in, one answer and one log line out |
//!
//! [`handle_crm_change`]: cosell_domain::sync::handle_crm_change

pub mod app;
pub mod config;
pub mod handler;

pub use app::App;
pub use config::{Config, DataverseAuth, EndpointConfig};
