//! cosell-sync's adapters: implementations of the domain's port traits
//! ([`cosell_domain::ports`]) on real infrastructure.
//!
//! | Module | Holds |
//! |---|---|
//! | [`crm_wire`] | the CRMs' wire formats, read tolerantly: the Dataverse webhook body (`RemoteExecutionContext`) and Web API errors, the Salesforce Outbound Message (hardened SOAP) and REST bodies |
//! | [`aws`] | DynamoDB (idempotency store, link store, audit log on one table) and SQS (retry queue), plus provisioning helpers for local runs and tests |
//! | [`error`] | [`AwsAdapterError`]: SDK failures classified, and their translation into [`cosell_domain::PortError`] |
//! | [`http`] | the HTTP building blocks (client, [`http::HttpAdapterError`] and the classification of answers, token providers), the Partner Center adapter and webhook registration client, and Partner Center webhook signature verification |
//!
//! Dependency rule: `cosell-domain` ← `cosell-adapters` ← `cosell-runtime` ← functions / CLI. SDK and HTTP error
//! types stop here: ports return `PortError`.
//!
//! Cargo feature `sandbox` (tests and the local demo only, never in a production build): lets
//! the webhook verifier accept certificate URLs on explicitly named plain-http hosts.

pub mod aws;
pub mod crm_wire;
pub mod error;
pub mod http;

pub use aws::{
    AwsClients, DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, QueueOptions, QueueUrls,
    SqsQueue, SqsRetryQueue, provision_queues, provision_table, sdk_config_from_env,
};
pub use error::{AwsAdapterError, FailureKind};
