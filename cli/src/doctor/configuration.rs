//! `configuration`: the variables are complete and valid, so a [`Deployment`] can be built.

use cosell_adapters::aws::AwsClients;
use cosell_runtime::config::CrmConfig;
use cosell_runtime::{ConfigError, StoreConfig};

use super::{Check, Status};
use crate::context::{Deployment, OpsConfig};

const NAME: &str = "configuration";

/// The deployment configured by `lookup` (`webhook_url` overriding `PC_WEBHOOK_URL`), with
/// `aws` or, when the stores are in AWS and none are given, clients built from the
/// environment; the failed checks when it cannot be built.
pub(super) async fn deployment<F>(
    lookup: F,
    aws: Option<AwsClients>,
    webhook_url: Option<&str>,
) -> Result<Deployment, Vec<Check>>
where
    F: Fn(&str) -> Option<String>,
{
    let mut config = OpsConfig::from_lookup(lookup).map_err(|error| {
        let name = match &error {
            ConfigError::Missing(name) | ConfigError::Invalid { name, .. } => *name,
        };
        vec![
            Check::problem(
                NAME,
                error.to_string(),
                format!(
                    "set {name} in the functions' environment (see the configuration table \
                     in the README), then run `cosell doctor` again"
                ),
            ),
            Check::with_fix(
                "remaining checks",
                Status::CouldNotCheck,
                "skipped: the configuration is incomplete",
                format!("fix {name} first"),
            ),
        ]
    })?;
    if let Some(url) = webhook_url {
        config.webhook_url = Some(url.to_owned());
    }
    let aws = match (aws, &config.sync.store) {
        (Some(aws), _) => Some(aws),
        (None, StoreConfig::DynamoDb { .. }) => Some(AwsClients::from_env().await),
        (None, StoreConfig::Memory) => None,
    };
    Deployment::new(config, aws).map_err(|error| {
        vec![Check::problem(
            NAME,
            format!("{error:#}"),
            "correct the value the message names (a URL or key that cannot be used)",
        )]
    })
}

/// The `ok` check of a deployment that could be built.
pub(super) fn complete(deployment: &Deployment) -> Check {
    Check::ok(
        NAME,
        format!(
            "complete ({}, {} store)",
            crm_label(&deployment.config.sync.crm),
            store_label(&deployment.config.sync.store)
        ),
    )
}

fn crm_label(crm: &CrmConfig) -> &'static str {
    match crm {
        CrmConfig::Dataverse { .. } => "Dataverse",
        CrmConfig::Salesforce { .. } => "Salesforce",
    }
}

fn store_label(store: &StoreConfig) -> &'static str {
    match store {
        StoreConfig::DynamoDb { .. } => "DynamoDB",
        StoreConfig::Memory => "memory",
    }
}
