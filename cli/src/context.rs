//! What every operator subcommand (`register-webhook`, `doctor`, `audit`, …) shares: the
//! deployment's configuration read from the environment ([`OpsConfig`]), the token providers
//! and clients built from it ([`Deployment`]), the `--json` output helper ([`Output`]) and the
//! exit codes ([`Exit`]).
//!
//! The configuration is the functions' own ([`SyncConfig`]: the same variables as
//! `partner-center-events` and `crm-events`), plus a few only the CLI needs:
//!
//! | Variable | Required | Default | Meaning |
//! |---|---|---|---|
//! | `PC_WEBHOOKS_BASE_URL` | no | `https://api.partnercenter.microsoft.com` | Partner Center webhook registration API |
//! | `PC_WEBHOOK_URL` | no | | this deployment's `partner-center-events` Function URL (what the registration must point at; `--url` overrides it) |
//! | `DLQ_URL` | no | the retry queue's `RedrivePolicy` target | the retry queue's dead-letter queue (as `retry-worker` reads it) |
//! | `PC_CLIENT_SECRET_EXPIRES_ON` | no | | `YYYY-MM-DD` the Partner Center app secret expires (warned 14 days ahead) |
//! | `DATAVERSE_CLIENT_SECRET_EXPIRES_ON` | no | | `YYYY-MM-DD` the Dataverse app secret expires |
//! | `SALESFORCE_CERTIFICATE_EXPIRES_ON` | no | | `YYYY-MM-DD` the connected app's certificate expires |
//! | `DAILY_API_BUDGET`, `WEBHOOK_RESERVED_SHARE`, `API_CALLS_PER_SYNC` | no | 10000, 0.2, 8 | the connector's daily API budget ([`BudgetPolicy`]), as the functions read it |
//!
//! AWS access comes from the standard variables (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL*`).

use std::io::Write;

use anyhow::{Context as _, Result};
use chrono::NaiveDate;
use cosell_adapters::aws::AwsClients;
use cosell_adapters::http::tokens::{
    DEFAULT_SALESFORCE_SESSION_LIFETIME, PARTNER_CENTER_REFERRALS_SCOPE,
    PARTNER_CENTER_WEBHOOKS_SCOPE, dataverse_scope,
};
use cosell_adapters::http::{
    DEFAULT_WEBHOOKS_BASE_URL, EntraClientCredentials, EntraClientCredentialsConfig,
    EntraRefreshToken, EntraRefreshTokenConfig, HttpAdapterError, HttpClientOptions,
    SalesforceJwtBearer, SalesforceJwtBearerConfig, TokenProvider, WebhookRegistrationClient,
    build_client,
};
use cosell_domain::budget::BudgetPolicy;
use cosell_runtime::config::{CrmConfig, PartnerCenterConfig};
use cosell_runtime::{ConfigError, Env, SyncConfig};
use serde::Serialize;

/// The process exit status of an operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 0: healthy / done.
    Healthy,
    /// 1: problems found.
    Problems,
    /// 2: could not check (configuration unreadable, a service unreachable).
    CouldNotCheck,
}

impl Exit {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Problems => 1,
            Self::CouldNotCheck => 2,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// Human text (default) or JSON (`--json`, for scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Lines for a person.
    #[default]
    Human,
    /// One JSON document on stdout.
    Json,
}

impl Output {
    /// `--json` → [`Output::Json`].
    pub fn from_flag(json: bool) -> Self {
        if json { Self::Json } else { Self::Human }
    }

    /// Whether JSON is asked for.
    pub fn is_json(self) -> bool {
        self == Self::Json
    }

    /// Writes `value` as pretty JSON plus a newline.
    pub fn write_json<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
        serde_json::to_writer_pretty(&mut *out, value).context("writing JSON")?;
        writeln!(out)?;
        Ok(())
    }
}

/// The deployment's configuration as the CLI reads it: the functions' shared
/// [`SyncConfig`] plus the CLI's own variables (module table).
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Partner Center, the CRM, the mapping, the stores.
    pub sync: SyncConfig,
    /// `PC_WEBHOOKS_BASE_URL`.
    pub webhooks_base_url: String,
    /// `PC_WEBHOOK_URL`: this deployment's Partner Center webhook URL, when known.
    pub webhook_url: Option<String>,
    /// `DLQ_URL`, when set.
    pub dead_letter_queue_url: Option<String>,
    /// Known expiry dates of secrets and certificates.
    pub expiries: Expiries,
    /// The connector's daily API budget.
    pub budget: BudgetPolicy,
}

/// Expiry dates the operator recorded (`*_EXPIRES_ON`); `None` = not known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expiries {
    /// `PC_CLIENT_SECRET_EXPIRES_ON`.
    pub pc_client_secret: Option<NaiveDate>,
    /// `DATAVERSE_CLIENT_SECRET_EXPIRES_ON`.
    pub dataverse_client_secret: Option<NaiveDate>,
    /// `SALESFORCE_CERTIFICATE_EXPIRES_ON`.
    pub salesforce_certificate: Option<NaiveDate>,
}

impl OpsConfig {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From `lookup` (a variable name → its value); tests pass a map.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let env = Env(lookup);
        let sync = SyncConfig::from_env(&env)?;
        let date = |name: &'static str| -> Result<Option<NaiveDate>, ConfigError> {
            env.optional(name)
                .map(|text| {
                    NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| ConfigError::Invalid {
                        name,
                        reason: format!("'{text}' is not a date (YYYY-MM-DD)"),
                    })
                })
                .transpose()
        };
        let budget = BudgetPolicy::from_lookup(|name| env.optional(name)).map_err(|error| {
            ConfigError::Invalid {
                name: "DAILY_API_BUDGET / WEBHOOK_RESERVED_SHARE / API_CALLS_PER_SYNC",
                reason: error.to_string(),
            }
        })?;
        Ok(Self {
            sync,
            budget,
            webhooks_base_url: env.or("PC_WEBHOOKS_BASE_URL", DEFAULT_WEBHOOKS_BASE_URL),
            webhook_url: env.optional("PC_WEBHOOK_URL"),
            dead_letter_queue_url: env.optional("DLQ_URL"),
            expiries: Expiries {
                pc_client_secret: date("PC_CLIENT_SECRET_EXPIRES_ON")?,
                dataverse_client_secret: date("DATAVERSE_CLIENT_SECRET_EXPIRES_ON")?,
                salesforce_certificate: date("SALESFORCE_CERTIFICATE_EXPIRES_ON")?,
            },
        })
    }
}

/// The token providers of a deployment, one per credential.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Partner Center referrals: delegated, from the refresh token.
    pub partner_center: TokenProvider,
    /// Partner Center webhook registration: app-only (client credentials of the same app).
    pub webhooks: TokenProvider,
    /// The CRM: Dataverse client credentials or the Salesforce JWT bearer.
    pub crm: TokenProvider,
}

impl Credentials {
    /// The providers for `config`. No request is sent.
    pub fn new(http: &reqwest::Client, config: &SyncConfig) -> Result<Self, Box<HttpAdapterError>> {
        Ok(Self {
            partner_center: referrals_tokens(http, &config.partner_center)?.into(),
            webhooks: webhooks_tokens(http, &config.partner_center)?.into(),
            crm: crm_tokens(http, &config.crm)?,
        })
    }
}

/// The delegated token of the Partner Center user (referrals API).
pub fn referrals_tokens(
    http: &reqwest::Client,
    config: &PartnerCenterConfig,
) -> Result<EntraRefreshToken, Box<HttpAdapterError>> {
    Ok(EntraRefreshToken::new(
        http.clone(),
        EntraRefreshTokenConfig {
            authority: config.entra_authority.clone(),
            tenant: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            refresh_token: config.refresh_token.clone(),
            scope: PARTNER_CENTER_REFERRALS_SCOPE.to_owned(),
            credential_label: Some(
                "the Partner Center refresh token (PC_REFRESH_TOKEN, app PC_CLIENT_ID)".into(),
            ),
            keep_rotated_in: None,
        },
    )?)
}

/// The app-only token of the Partner Center app for the webhook registration API.
pub fn webhooks_tokens(
    http: &reqwest::Client,
    config: &PartnerCenterConfig,
) -> Result<EntraClientCredentials, Box<HttpAdapterError>> {
    Ok(EntraClientCredentials::new(
        http.clone(),
        EntraClientCredentialsConfig {
            authority: config.entra_authority.clone(),
            tenant: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            scope: PARTNER_CENTER_WEBHOOKS_SCOPE.to_owned(),
            credential_label: Some(
                "the Partner Center app secret (PC_CLIENT_SECRET, app PC_CLIENT_ID)".into(),
            ),
        },
    )?)
}

/// The CRM's token provider.
pub fn crm_tokens(
    http: &reqwest::Client,
    config: &CrmConfig,
) -> Result<TokenProvider, Box<HttpAdapterError>> {
    Ok(match config {
        CrmConfig::Dataverse {
            url,
            authority,
            tenant_id,
            client_id,
            client_secret,
        } => EntraClientCredentials::new(
            http.clone(),
            EntraClientCredentialsConfig {
                authority: authority.clone(),
                tenant: tenant_id.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                scope: dataverse_scope(url),
                credential_label: Some(
                    "the Dataverse app secret (DATAVERSE_CLIENT_SECRET, app DATAVERSE_CLIENT_ID)"
                        .into(),
                ),
            },
        )?
        .into(),
        CrmConfig::Salesforce {
            login_url,
            consumer_key,
            username,
            private_key_pem,
        } => SalesforceJwtBearer::new(
            http.clone(),
            SalesforceJwtBearerConfig {
                login_url: login_url.clone(),
                consumer_key: consumer_key.clone(),
                username: username.clone(),
                private_key_pem: private_key_pem.clone(),
                session_lifetime: DEFAULT_SALESFORCE_SESSION_LIFETIME,
                credential_label: Some(
                    "the Salesforce connected app key (SALESFORCE_PRIVATE_KEY, \
                     SALESFORCE_CONSUMER_KEY, SALESFORCE_USERNAME)"
                        .into(),
                ),
            },
        )?
        .into(),
    })
}

/// A deployment as the CLI sees it: its configuration, one HTTP client, the credentials, and
/// the AWS clients (when the stores are in AWS).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The configuration.
    pub config: OpsConfig,
    /// The shared HTTP client (timeouts, no redirects).
    pub http: reqwest::Client,
    /// One token provider per credential.
    pub credentials: Credentials,
    /// DynamoDB and SQS; `None` with `STORE=memory`.
    pub aws: Option<AwsClients>,
}

impl Deployment {
    /// Builds the clients for `config`, with the given AWS clients (tests pass moto's).
    pub fn new(config: OpsConfig, aws: Option<AwsClients>) -> Result<Self> {
        let http = build_client(&HttpClientOptions::default()).context("the HTTP client")?;
        let credentials = Credentials::new(&http, &config.sync).context("the token providers")?;
        Ok(Self {
            config,
            http,
            credentials,
            aws,
        })
    }

    /// From the process environment (with `X_SECRET_ARN` / `X_SSM_PARAMETER` references
    /// resolved, as the functions do); AWS clients from the standard variables.
    pub async fn from_env() -> Result<Self> {
        let secrets = cosell_adapters::aws::secrets::resolve_process_env()
            .await
            .context("reading the secrets")?;
        let config =
            OpsConfig::from_lookup(|name| secrets.var(name)).context("the configuration")?;
        let aws = match config.sync.store {
            cosell_runtime::StoreConfig::DynamoDb { .. } => Some(AwsClients::from_env().await),
            cosell_runtime::StoreConfig::Memory => None,
        };
        Self::new(config, aws)
    }

    /// The webhook registration API client.
    pub fn registration_client(&self) -> Result<WebhookRegistrationClient, Box<HttpAdapterError>> {
        Ok(WebhookRegistrationClient::new(
            self.http.clone(),
            self.credentials.webhooks.clone(),
            &self.config.webhooks_base_url,
        )?)
    }
}
