//! cosell-sync's adapters: implementations of the domain's port traits
//! ([`cosell_domain::ports`]) on real infrastructure.
//!
//! | Module | Holds |
//! |---|---|
//! | [`aws`] | DynamoDB (idempotency store, link store, audit log on one table) and SQS (retry queue), plus provisioning helpers for local runs and tests |
//! | [`error`] | [`AwsAdapterError`]: SDK failures classified, and their translation into [`cosell_domain::PortError`] |
//!
//! Dependency rule: `cosell-domain` ← `cosell-adapters` ← functions / CLI. SDK error types stop
//! here: ports return `PortError`.

pub mod aws;
pub mod error;

pub use aws::{
    AwsClients, DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, QueueOptions, QueueUrls,
    SqsQueue, SqsRetryQueue, provision_queues, provision_table, sdk_config_from_env,
};
pub use error::{AwsAdapterError, FailureKind};
