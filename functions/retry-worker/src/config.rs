//! The function's typed configuration, read from the environment once per cold start.
//!
//! The Partner Center, CRM, mapping and store variables are `partner-center-events`' own
//! ([`SyncConfig`]); this module adds the queues and the backoff.

use std::time::Duration;

use cosell_domain::sync::{RetryPolicy, SyncSettings};
use cosell_runtime::{ConfigError, Env, SyncConfig};

use crate::backoff::Backoff;

/// The default `MAX_RECEIVE_COUNT`: the retry queue's `maxReceiveCount` (keep them equal).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// The default visibility of a job another invocation is still running.
pub const DEFAULT_IN_PROGRESS_VISIBILITY: Duration = Duration::from_secs(30);

/// The configuration of `retry-worker`.
///
/// Every variable of `partner-center-events`' table except the `WEBHOOK_*` ones and
/// `MAX_BODY_BYTES` (see [`SyncConfig`]): `CRM_KIND`, `PC_*`, `ENTRA_AUTHORITY`, `DATAVERSE_*`,
/// `SALESFORCE_LOGIN_URL` / `_CONSUMER_KEY` / `_USERNAME` / `_PRIVATE_KEY`,
/// `MAPPING_CONFIG_JSON`, `STORE`, `TABLE_NAME`, `IDEMPOTENCY_TTL_SECS`, `REFERRAL_SCOPE`; and:
///
/// | Variable | Required | Default | Meaning |
/// |---|---|---|---|
/// | `RETRY_QUEUE_URL` | yes | | the retry queue this function consumes (visibility changes) |
/// | `DLQ_URL` | yes | | its dead-letter queue (malformed messages are sent there directly) |
/// | `MAX_RECEIVE_COUNT` | no | `5` | the retry queue's `maxReceiveCount`: the delivery that reaches it and still fails is audited as dead-lettered |
/// | `BACKOFF_BASE_SECS` | no | `30` | the first backoff; doubles per receive |
/// | `BACKOFF_MAX_SECS` | no | `900` | the longest backoff (a `Retry-After` may ask for more, up to 12 h) |
/// | `IN_PROGRESS_VISIBILITY_SECS` | no | `30` | how long a job another invocation is running stays hidden |
/// | `DATAVERSE_CONNECTOR_USER_ID` / `SALESFORCE_CONNECTOR_USER_ID` | no | | the connector's CRM user, so CRM retry jobs recognise its own writes (as `crm-events`) |
#[derive(Debug, Clone)]
pub struct Config {
    /// Partner Center, the CRM, the mapping, the stores and the sync options.
    pub sync: SyncConfig,
    /// `RETRY_QUEUE_URL`.
    pub retry_queue_url: String,
    /// `DLQ_URL`.
    pub dlq_url: String,
    /// How the worker answers each message.
    pub worker: WorkerSettings,
    /// The connector's CRM user, when configured.
    pub crm_connector_user_id: Option<String>,
}

/// How the worker answers each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The retry queue's `maxReceiveCount`.
    pub max_receive_count: u32,
    /// The backoff of a retryable failure.
    pub backoff: Backoff,
    /// The visibility of a job another invocation is running.
    pub in_progress_visibility: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
            backoff: Backoff::default(),
            in_progress_visibility: DEFAULT_IN_PROGRESS_VISIBILITY,
        }
    }
}

impl Config {
    /// The configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration from `lookup` (a variable name → its value); tests pass a map.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let env = Env(lookup);
        let sync = SyncConfig::from_env(&env)?;
        let max_receive_count =
            env.number("MAX_RECEIVE_COUNT", u64::from(DEFAULT_MAX_RECEIVE_COUNT))?;
        let base = env.number("BACKOFF_BASE_SECS", Backoff::DEFAULT_BASE.as_secs())?;
        let max = env.number("BACKOFF_MAX_SECS", Backoff::DEFAULT_MAX.as_secs())?;
        if max < base {
            return Err(ConfigError::Invalid {
                name: "BACKOFF_MAX_SECS",
                reason: format!("must be at least BACKOFF_BASE_SECS ({base})"),
            });
        }
        let in_progress = env.number(
            "IN_PROGRESS_VISIBILITY_SECS",
            DEFAULT_IN_PROGRESS_VISIBILITY.as_secs(),
        )?;
        Ok(Self {
            sync,
            retry_queue_url: env.required("RETRY_QUEUE_URL")?,
            dlq_url: env.required("DLQ_URL")?,
            worker: WorkerSettings {
                max_receive_count: u32::try_from(max_receive_count).map_err(|_| {
                    ConfigError::Invalid {
                        name: "MAX_RECEIVE_COUNT",
                        reason: "too large (SQS allows 1 to 1000)".into(),
                    }
                })?,
                backoff: Backoff {
                    base: Duration::from_secs(base),
                    max: Duration::from_secs(max),
                },
                in_progress_visibility: Duration::from_secs(in_progress),
            },
            crm_connector_user_id: env
                .optional("DATAVERSE_CONNECTOR_USER_ID")
                .or_else(|| env.optional("SALESFORCE_CONNECTOR_USER_ID")),
        })
    }

    /// The sync settings: the webhook functions' plus the connector's CRM user, with
    /// [`RetryPolicy::Redeliver`]: a retryable failure comes back as this same message.
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            crm_connector_user_id: self.crm_connector_user_id.clone(),
            retry_policy: RetryPolicy::Redeliver,
            ..self.sync.sync_settings()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    fn vars() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("CRM_KIND", "dataverse"),
            ("PC_TENANT_ID", "tenant"),
            ("PC_CLIENT_ID", "client"),
            ("PC_CLIENT_SECRET", "secret"),
            ("PC_REFRESH_TOKEN", "refresh"),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
            ("DATAVERSE_CLIENT_ID", "dv-client"),
            ("DATAVERSE_CLIENT_SECRET", "dv-secret"),
            ("TABLE_NAME", "cosell"),
            ("RETRY_QUEUE_URL", "https://sqs.example/1/retry"),
            ("DLQ_URL", "https://sqs.example/1/retry-dlq"),
        ])
    }

    fn read(vars: &HashMap<&'static str, &'static str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).map(|v| (*v).to_owned()))
    }

    #[test]
    fn defaults_match_the_queue_and_the_domain_backoff() {
        let config = read(&vars()).unwrap();
        assert_eq!(config.worker, WorkerSettings::default());
        assert_eq!(config.worker.max_receive_count, 5);
        assert_eq!(config.dlq_url, "https://sqs.example/1/retry-dlq");
        assert_eq!(config.sync_settings().retry_policy, RetryPolicy::Redeliver);
    }

    #[test]
    fn the_queues_are_required_and_the_backoff_must_be_ordered() {
        for name in ["RETRY_QUEUE_URL", "DLQ_URL"] {
            let mut vars = vars();
            vars.remove(name);
            assert!(
                matches!(read(&vars), Err(ConfigError::Missing(missing)) if missing == name),
                "{name}"
            );
        }
        let mut vars = vars();
        vars.insert("BACKOFF_BASE_SECS", "60");
        vars.insert("BACKOFF_MAX_SECS", "10");
        assert!(matches!(
            read(&vars),
            Err(ConfigError::Invalid {
                name: "BACKOFF_MAX_SECS",
                ..
            })
        ));
    }
}
