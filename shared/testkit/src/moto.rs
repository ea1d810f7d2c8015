//! moto, the local DynamoDB and SQS the tests run against: its endpoint and SDK clients that
//! can never reach a real account.

use cosell_adapters::AwsClients;
use cosell_adapters::aws::aws_config::{self, BehaviorVersion, Region, SdkConfig};
use cosell_adapters::aws::aws_sdk_dynamodb::config::Credentials;

use crate::RUN_TEST_SH;

/// moto's endpoint (`COSELL_MOTO_ENDPOINT`); panics with the command to run when it is unset.
pub fn endpoint() -> String {
    match std::env::var("COSELL_MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint.trim().to_owned(),
        _ => panic!("COSELL_MOTO_ENDPOINT is not set: {RUN_TEST_SH}"),
    }
}

/// The region the tests use: `AWS_REGION`, else `us-east-1`.
pub fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned())
}

/// The SDK configuration of `endpoint`: test credentials and [`region`], whatever else the
/// environment says, so a test can never touch a real account.
pub async fn sdk_config_at(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region()))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// The SDK configuration of moto's [`endpoint`].
pub async fn sdk_config() -> SdkConfig {
    sdk_config_at(&endpoint()).await
}

/// DynamoDB and SQS clients pointed at moto.
pub async fn clients() -> AwsClients {
    AwsClients::from_conf(&sdk_config().await)
}
