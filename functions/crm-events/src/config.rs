//! The function's typed configuration, read from the environment once per cold start.
//!
//! The Partner Center, CRM, mapping and store variables are the shared ones (`cosell_runtime`'s
//! [`SyncConfig`]); this module adds how the CRM's calls are authenticated and who the
//! connector's CRM user is.

use std::fmt;

use cosell_adapters::crm_wire::salesforce::same_salesforce_id;
use cosell_domain::sync::SyncSettings;
use cosell_runtime::config::CrmConfig;
use cosell_runtime::{ConfigError, Env, SyncConfig};
use secrecy::SecretString;

/// The default cap on a request body: what Lambda accepts at most (a synchronous invocation's
/// request payload, 6 MB), so no delivery Lambda passes on is refused. A Dataverse body is at
/// most 256 KB (larger ones are stripped), but an Outbound Message batches up to 100
/// notifications, each with every field it lists: with long text fields (`Description`, the
/// Audit column, up to 32,000 characters each) it passes a megabyte, and Salesforce would send
/// a refused message again, unchanged, for 24 hours.
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// The configuration of `crm-events`.
///
/// Every variable of `partner-center-events`' table except the `WEBHOOK_*` ones and
/// `MAX_BODY_BYTES` (see [`SyncConfig`]): `CRM_KIND`, `PC_*`, `ENTRA_AUTHORITY`, `DATAVERSE_URL`
/// / `_TENANT_ID` / `_CLIENT_ID` / `_CLIENT_SECRET`, `SALESFORCE_LOGIN_URL` / `_CONSUMER_KEY` /
/// `_USERNAME` / `_PRIVATE_KEY`, `MAPPING_CONFIG_JSON`, `STORE`, `TABLE_NAME`,
/// `RETRY_QUEUE_URL`, `IDEMPOTENCY_TTL_SECS`, `REFERRAL_SCOPE`; and:
///
/// | Variable | Required | Default | Meaning |
/// |---|---|---|---|
/// | `DATAVERSE_WEBHOOK_KEY` | when `CRM_KIND=dataverse`, unless `DATAVERSE_WEBHOOK_HEADER` (secret) | | the webhook's `WebhookKey` (`?code=`) |
/// | `DATAVERSE_WEBHOOK_HEADER` | when `CRM_KIND=dataverse`, unless `DATAVERSE_WEBHOOK_KEY` (secret) | | `name:value` of the webhook's `HttpHeader` authentication |
/// | `DATAVERSE_CONNECTOR_USER_ID` | when `CRM_KIND=dataverse` | | `systemuserid` (GUID) of the connector's application user: its writes are echoes |
/// | `SALESFORCE_ENDPOINT_SECRET` | when `CRM_KIND=salesforce` (secret) | | the secret in the Outbound Message URL (`/salesforce/{secret}` or `?token=`) |
/// | `SALESFORCE_ORGANIZATION_ID` | when `CRM_KIND=salesforce` | | the org id (15 or 18 characters) messages must come from |
/// | `SALESFORCE_CONNECTOR_USER_ID` | when `CRM_KIND=salesforce` | | the integration user's id: its writes are echoes |
/// | `MAX_BODY_BYTES` | no | `6291456` | larger bodies are answered 413 |
///
/// Only the configured CRM's path is served; the other answers 404.
#[derive(Debug, Clone)]
pub struct Config {
    /// Partner Center, the CRM, the mapping, the stores and the sync options.
    pub sync: SyncConfig,
    /// How the CRM's calls are authenticated and who the connector is in it.
    pub endpoint: EndpointConfig,
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
}

/// The CRM endpoint's settings.
#[derive(Debug, Clone)]
pub enum EndpointConfig {
    /// `POST /dataverse`.
    Dataverse {
        /// The webhook's shared secret.
        auth: DataverseAuth,
        /// `DATAVERSE_CONNECTOR_USER_ID`.
        connector_user_id: String,
    },
    /// `POST /salesforce/{secret}`.
    Salesforce {
        /// `SALESFORCE_ENDPOINT_SECRET`.
        secret: SecretString,
        /// `SALESFORCE_ORGANIZATION_ID`.
        organization_id: String,
        /// `SALESFORCE_CONNECTOR_USER_ID`.
        connector_user_id: String,
    },
}

/// The Dataverse webhook's authentication (`serviceendpoint.authtype`).
#[derive(Clone)]
pub enum DataverseAuth {
    /// 4 `WebhookKey`: `?code=<key>`.
    WebhookKey(SecretString),
    /// 5 `HttpHeader`: a header carrying the secret.
    HttpHeader {
        /// The header name (lower case).
        name: String,
        /// Its value.
        value: SecretString,
    },
}

impl fmt::Debug for DataverseAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebhookKey(_) => f.write_str("WebhookKey(<redacted>)"),
            Self::HttpHeader { name, .. } => write!(f, "HttpHeader({name}: <redacted>)"),
        }
    }
}

impl EndpointConfig {
    /// The connector's CRM user.
    pub fn connector_user_id(&self) -> &str {
        match self {
            Self::Dataverse {
                connector_user_id, ..
            }
            | Self::Salesforce {
                connector_user_id, ..
            } => connector_user_id,
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
        let endpoint = match &sync.crm {
            CrmConfig::Dataverse { .. } => EndpointConfig::Dataverse {
                auth: dataverse_auth(&env)?,
                connector_user_id: guid(&env, "DATAVERSE_CONNECTOR_USER_ID")?,
            },
            CrmConfig::Salesforce { .. } => EndpointConfig::Salesforce {
                secret: env.secret("SALESFORCE_ENDPOINT_SECRET")?,
                organization_id: salesforce_id(&env, "SALESFORCE_ORGANIZATION_ID")?,
                connector_user_id: salesforce_id(&env, "SALESFORCE_CONNECTOR_USER_ID")?,
            },
        };
        let max_body_bytes = env.number("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES as u64)?;
        Ok(Self {
            sync,
            endpoint,
            max_body_bytes: usize::try_from(max_body_bytes).map_err(|_| ConfigError::Invalid {
                name: "MAX_BODY_BYTES",
                reason: "too large".into(),
            })?,
        })
    }

    /// The sync settings: `partner-center-events`' plus the connector's CRM user (its writes
    /// are echoes of our own write-backs).
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            crm_connector_user_id: Some(self.endpoint.connector_user_id().to_owned()),
            ..self.sync.sync_settings()
        }
    }
}

fn dataverse_auth<F>(env: &Env<F>) -> Result<DataverseAuth, ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    match (
        env.optional("DATAVERSE_WEBHOOK_KEY"),
        env.optional("DATAVERSE_WEBHOOK_HEADER"),
    ) {
        (Some(key), None) => Ok(DataverseAuth::WebhookKey(SecretString::from(key))),
        (None, Some(pair)) => {
            let (name, value) = pair
                .split_once(':')
                .map(|(name, value)| (name.trim(), value.trim()))
                .filter(|(name, value)| !name.is_empty() && !value.is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    name: "DATAVERSE_WEBHOOK_HEADER",
                    reason: "must be `name:value`".into(),
                })?;
            if lambda_http::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::Invalid {
                    name: "DATAVERSE_WEBHOOK_HEADER",
                    reason: format!("'{name}' is not a header name"),
                });
            }
            Ok(DataverseAuth::HttpHeader {
                name: name.to_ascii_lowercase(),
                value: SecretString::from(value.to_owned()),
            })
        }
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            name: "DATAVERSE_WEBHOOK_HEADER",
            reason: "set either DATAVERSE_WEBHOOK_KEY or DATAVERSE_WEBHOOK_HEADER, not both".into(),
        }),
        (None, None) => Err(ConfigError::Missing("DATAVERSE_WEBHOOK_KEY")),
    }
}

fn guid<F>(env: &Env<F>, name: &'static str) -> Result<String, ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let value = env.required(name)?;
    cosell_domain::DataverseId::try_from(value.as_str()).map_err(|_| ConfigError::Invalid {
        name,
        reason: format!("'{value}' is not a GUID"),
    })?;
    Ok(value)
}

fn salesforce_id<F>(env: &Env<F>, name: &'static str) -> Result<String, ConfigError>
where
    F: Fn(&str) -> Option<String>,
{
    let value = env.required(name)?;
    // `same_salesforce_id` accepts only well-formed 15/18-character ids.
    if same_salesforce_id(&value, &value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name,
            reason: format!("'{value}' is not a 15- or 18-character Salesforce id"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn base(kind: &str) -> HashMap<&'static str, String> {
        let mut vars: HashMap<&'static str, String> = [
            ("PC_TENANT_ID", "tenant"),
            ("PC_CLIENT_ID", "pc-client"),
            ("PC_CLIENT_SECRET", "pc-secret-value"),
            ("PC_REFRESH_TOKEN", "pc-refresh-value"),
            ("STORE", "memory"),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
            ("DATAVERSE_CLIENT_ID", "dv-client"),
            ("DATAVERSE_CLIENT_SECRET", "dv-secret-value"),
            ("DATAVERSE_WEBHOOK_KEY", "dv-webhook-key-value"),
            (
                "DATAVERSE_CONNECTOR_USER_ID",
                "44444444-4444-4444-8444-444444444444",
            ),
            ("SALESFORCE_CONSUMER_KEY", "key"),
            ("SALESFORCE_USERNAME", "integration@partner.example"),
            ("SALESFORCE_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----"),
            ("SALESFORCE_ENDPOINT_SECRET", "sf-endpoint-secret-value"),
            ("SALESFORCE_ORGANIZATION_ID", "00D5g000004Sbx1EAC"),
            ("SALESFORCE_CONNECTOR_USER_ID", "0055g0000Integ1AQA"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        vars.insert("CRM_KIND", kind.to_owned());
        vars
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn dataverse_needs_a_webhook_secret_and_the_connector_user() {
        let config = load(&base("dataverse")).unwrap();
        assert!(matches!(
            config.endpoint,
            EndpointConfig::Dataverse {
                auth: DataverseAuth::WebhookKey(_),
                ..
            }
        ));
        assert_eq!(
            config.sync_settings().crm_connector_user_id.as_deref(),
            Some("44444444-4444-4444-8444-444444444444")
        );
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);

        let mut vars = base("dataverse");
        vars.remove("DATAVERSE_WEBHOOK_KEY");
        assert_eq!(
            load(&vars).unwrap_err(),
            ConfigError::Missing("DATAVERSE_WEBHOOK_KEY")
        );
        vars.insert("DATAVERSE_WEBHOOK_HEADER", "X-Cosell-Secret: abc".into());
        match load(&vars).unwrap().endpoint {
            EndpointConfig::Dataverse {
                auth: DataverseAuth::HttpHeader { name, .. },
                ..
            } => assert_eq!(name, "x-cosell-secret"),
            other => panic!("{other:?}"),
        }
        for (name, value) in [
            ("DATAVERSE_WEBHOOK_HEADER", "no-colon"),
            ("DATAVERSE_WEBHOOK_HEADER", "bad header:v"),
            ("DATAVERSE_CONNECTOR_USER_ID", "app-user"),
        ] {
            let mut vars = vars.clone();
            vars.insert(name, value.into());
            match load(&vars).unwrap_err() {
                ConfigError::Invalid { name: named, .. } => assert_eq!(named, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn salesforce_needs_the_secret_the_org_and_the_connector_user() {
        assert!(matches!(
            load(&base("salesforce")).unwrap().endpoint,
            EndpointConfig::Salesforce { .. }
        ));
        for name in [
            "SALESFORCE_ENDPOINT_SECRET",
            "SALESFORCE_ORGANIZATION_ID",
            "SALESFORCE_CONNECTOR_USER_ID",
        ] {
            let mut vars = base("salesforce");
            vars.remove(name);
            assert_eq!(load(&vars).unwrap_err(), ConfigError::Missing(name));
        }
        let mut vars = base("salesforce");
        vars.insert("SALESFORCE_ORGANIZATION_ID", "00D-short".into());
        assert!(matches!(
            load(&vars).unwrap_err(),
            ConfigError::Invalid {
                name: "SALESFORCE_ORGANIZATION_ID",
                ..
            }
        ));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        for kind in ["dataverse", "salesforce"] {
            let text = format!("{:?}", load(&base(kind)).unwrap());
            for secret in [
                "pc-secret-value",
                "pc-refresh-value",
                "dv-secret-value",
                "dv-webhook-key-value",
                "sf-endpoint-secret-value",
            ] {
                assert!(!text.contains(secret), "{secret} leaked: {text}");
            }
        }
    }
}
