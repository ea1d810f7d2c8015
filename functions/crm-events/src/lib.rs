//! `crm-events`: the Lambda function (Function URL) that receives CRM opportunity changes —
//! Dataverse webhooks (`POST /dataverse`) and Salesforce Outbound Messages
//! (`POST /salesforce/{secret}`) — and syncs each opportunity to its Partner Center referral
//! exactly once, through the domain's sync core ([`handle_crm_change`]).
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the typed configuration from the environment (the variable table) |
//! | [`app`] | [`App`]: the clients and stores built once per cold start |
//! | [`handler`] | [`handler::handle`]: one request in, one answer and one log line out |
//!
//! The configuration, client builders and [`Stores`] are `partner-center-events`' own.
//!
//! [`handle_crm_change`]: cosell_domain::sync::handle_crm_change

pub mod app;
pub mod config;
pub mod handler;

pub use app::{App, Clients, LocalApp, ProductionApp};
pub use config::{Config, DataverseAuth, EndpointConfig};
pub use partner_center_events::{StoreConfig, Stores};

use cosell_domain::ports::{
    AuditLog, CrmStore, IdempotencyStore, LinkStore, PartnerCenter, RetryQueue,
};

/// The Lambda runtime loop over [`handler::handle`]; the handler borrows `app`.
pub async fn serve<P, C, I, Q, A, L>(app: App<P, C, I, Q, A, L>) -> Result<(), lambda_http::Error>
where
    P: PartnerCenter,
    C: CrmStore,
    I: IdempotencyStore,
    Q: RetryQueue,
    A: AuditLog,
    L: LinkStore,
{
    let app = &app;
    lambda_http::run(lambda_http::service_fn(move |req| {
        handler::handle(req, app)
    }))
    .await
}
