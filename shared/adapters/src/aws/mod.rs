//! The AWS adapters: the connector's single DynamoDB table ([`table`]: key schema and
//! [`provision_table`]) holding idempotency records ([`DynamoIdempotencyStore`]), referral ⇄ CRM
//! links ([`DynamoLinkStore`]) and the audit log ([`DynamoAuditLog`]), and the SQS retry queue
//! ([`SqsRetryQueue`], [`SqsQueue`], [`provision_queues`]); and the secrets a function reads
//! once per cold start from Secrets Manager or SSM Parameter Store ([`secrets`]).
//!
//! Clients are built once per cold start by the caller ([`AwsClients::from_env`]); every adapter
//! takes a client plus a table name or queue URL, and is cheap to clone. Each implements its
//! domain port (returning [`cosell_domain::PortError`]) and offers the same operations as
//! `try_*` methods returning [`AwsAdapterError`](crate::error::AwsAdapterError) for callers that
//! want the AWS detail (the CLI's `doctor`, tests).

pub mod audit;
pub mod budget;
pub mod checkpoint;
pub mod idempotency;
pub mod item;
pub mod links;
pub mod secrets;
pub mod sqs;
pub mod table;

pub use audit::DynamoAuditLog;
pub use budget::{AnyApiBudget, DayCount, DynamoApiBudget, Metering};
pub use checkpoint::DynamoCheckpointStore;
pub use idempotency::DynamoIdempotencyStore;
pub use links::DynamoLinkStore;
pub use sqs::{
    MoveTask, MoveTaskStart, OutgoingMessage, QueueDepth, QueueOptions, QueueUrls, ReceivedMessage,
    SqsQueue, SqsRetryQueue, provision_queues,
};
pub use table::provision_table;

/// Re-exported so callers use the same SDK versions as the adapters.
pub use {aws_config, aws_sdk_dynamodb, aws_sdk_secretsmanager, aws_sdk_sqs, aws_sdk_ssm};

/// The shared AWS configuration from the environment: region, credentials, and endpoint
/// overrides (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_SQS`, which
/// is how local runs and tests reach moto without code changes).
pub async fn sdk_config_from_env() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The SDK clients the adapters need. Build them once per cold start and clone them into
/// the adapters (clients are `Arc`s inside).
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Clients from [`sdk_config_from_env`].
    pub async fn from_env() -> Self {
        Self::from_conf(&sdk_config_from_env().await)
    }

    /// Clients from a loaded configuration.
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }
}
