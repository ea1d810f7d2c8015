//! The function's typed configuration, read from the environment once per cold start.

use std::fmt;
use std::time::Duration;

use cosell_adapters::http::DEFAULT_PARTNER_CENTER_BASE_URL;
use cosell_adapters::http::tokens::{DEFAULT_ENTRA_AUTHORITY, DEFAULT_SALESFORCE_LOGIN_URL};
use cosell_adapters::http::webhook_signature::DEFAULT_CERTIFICATE_HOST;
use cosell_domain::mapping::MappingConfig;
use cosell_domain::referral::Member;
use cosell_domain::sync::{ReferralScope, SyncSettings};
use secrecy::SecretString;

/// The default cap on a webhook body (a real event is about 300 bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Why the configuration could not be read. Every variant names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("the environment variable {0} must be set")]
    Missing(&'static str),
    /// A variable's value is unusable.
    #[error("the environment variable {name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong (never the value of a secret).
        reason: String,
    },
}

impl ConfigError {
    fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name,
            reason: reason.into(),
        }
    }
}

/// The configuration of `partner-center-events`.
///
/// | Variable | Required | Default | Meaning |
/// |---|---|---|---|
/// | `CRM_KIND` | yes | | `dataverse` or `salesforce`: the CRM the opportunities are in |
/// | `PC_API_BASE_URL` | no | `https://api.partner.microsoft.com` | Partner Center referrals API |
/// | `ENTRA_AUTHORITY` | no | `https://login.microsoftonline.com` | Entra ID authority (Partner Center and Dataverse tokens) |
/// | `PC_TENANT_ID` | yes | | the partner's Entra tenant id |
/// | `PC_CLIENT_ID` | yes | | the Partner Center app registration's client id |
/// | `PC_CLIENT_SECRET` | yes (secret) | | its client secret |
/// | `PC_REFRESH_TOKEN` | yes (secret) | | the delegated refresh token of the Partner Center user (Referrals admin) |
/// | `PC_PARTNER_ORGANIZATION_ID` | no | | the partner's own Partner Center organization id (tells its referrals from Microsoft's) |
/// | `PC_PARTNER_TEAM_JSON` | no (recommended for `crm-events`) | none | the partner sales team put on referrals created from the CRM: a JSON array of `{"firstName","lastName","email","phoneNumber"}`, each member complete (Partner Center requires at least one with name, phone and email) |
/// | `DATAVERSE_URL` | when `CRM_KIND=dataverse` | | environment URL, e.g. `https://contoso.crm.dynamics.com` |
/// | `DATAVERSE_TENANT_ID` | no | `PC_TENANT_ID` | tenant of the Dataverse app registration |
/// | `DATAVERSE_CLIENT_ID` | when `CRM_KIND=dataverse` | | the Dataverse app registration's client id (an application user) |
/// | `DATAVERSE_CLIENT_SECRET` | when `CRM_KIND=dataverse` (secret) | | its client secret |
/// | `SALESFORCE_LOGIN_URL` | no | `https://login.salesforce.com` | login host (`https://test.salesforce.com`, a My Domain URL) |
/// | `SALESFORCE_CONSUMER_KEY` | when `CRM_KIND=salesforce` | | the connected app's consumer key |
/// | `SALESFORCE_USERNAME` | when `CRM_KIND=salesforce` | | the integration user |
/// | `SALESFORCE_PRIVATE_KEY` | when `CRM_KIND=salesforce` (secret) | | PEM RSA key of the connected app's certificate (JWT bearer) |
/// | `MAPPING_CONFIG_JSON` | no | the connector's defaults | JSON overrides of the field mapping (`MappingConfig`), e.g. `{"salesforce":{"account":{"country":"BillingCountryCode"}}}` |
/// | `STORE` | no | `dynamodb` | `dynamodb`, or `memory` for local runs (nothing survives the instance; refused when running in Lambda) |
/// | `TABLE_NAME` | when `STORE=dynamodb` | | the DynamoDB table (idempotency, links, audit) |
/// | `RETRY_QUEUE_URL` | when `STORE=dynamodb` | | the SQS retry queue URL |
/// | `WEBHOOK_TRUST_ANCHORS_PEM` | yes | | PEM of the Microsoft root certificates the signing certificate chains to, or the path of a PEM file in the deployment package |
/// | `WEBHOOK_INTERMEDIATES_PEM` | no | none | PEM (or the path of a PEM file) of the intermediate CA certificates |
/// | `WEBHOOK_CERT_HOSTS` | no | `3psostorageacct.blob.core.windows.net` | comma-separated https hosts a `X-MS-Certificate-Url` may name |
/// | `SANDBOX_INSECURE_CERT_HOSTS` | no | | comma-separated `host:port` whose certificate URLs are accepted over plain http; **only** in a build with the `sandbox` cargo feature (local sandbox runs); any other build refuses to start when it is set |
/// | `MAX_BODY_BYTES` | no | `65536` | larger webhook bodies are answered 413 |
/// | `IDEMPOTENCY_TTL_SECS` | no | `3600` | how long a processed delivery is remembered |
/// | `REFERRAL_SCOPE` | no | `cosell` | `cosell`: co-sell referrals only; `all`: leads too |
///
/// AWS access comes from the standard variables (`AWS_REGION`, the execution role;
/// `AWS_ENDPOINT_URL*` for emulators); logging from `AWS_LAMBDA_LOG_FORMAT` /
/// `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG`.
///
/// Any variable `X` (the secrets above in particular) may instead be kept in AWS Secrets
/// Manager (`X_SECRET_ARN`: a secret ARN, `<arn>#<key>` for one key of a JSON secret) or SSM
/// Parameter Store (`X_SSM_PARAMETER`, decrypted): `main` resolves those references once per
/// cold start (`cosell_adapters::aws::secrets`) and passes the values in through
/// [`Config::from_lookup`]. The secret `PC_REFRESH_TOKEN_SECRET_ARN` names also receives each
/// refresh token Entra rotates. Secrets are held as [`SecretString`] and never logged (`Debug`
/// redacts them). Lambda caps all variables together at 4 KiB, which is why the certificate
/// bundles may be given as file paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// Partner Center (and its Entra sign-in).
    pub partner_center: PartnerCenterConfig,
    /// The CRM.
    pub crm: CrmConfig,
    /// The field mapping.
    pub mapping: MappingConfig,
    /// Where idempotency records, links, the audit log and retry jobs go.
    pub store: StoreConfig,
    /// Webhook signature verification.
    pub webhook: WebhookConfig,
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
    /// How long a processed delivery is remembered.
    pub idempotency_ttl: Duration,
    /// Which referrals are synced.
    pub referral_scope: ReferralScope,
}

/// Partner Center settings.
#[derive(Debug, Clone)]
pub struct PartnerCenterConfig {
    /// `PC_API_BASE_URL`.
    pub api_base_url: String,
    /// `ENTRA_AUTHORITY`.
    pub entra_authority: String,
    /// `PC_TENANT_ID`.
    pub tenant_id: String,
    /// `PC_CLIENT_ID`.
    pub client_id: String,
    /// `PC_CLIENT_SECRET`.
    pub client_secret: SecretString,
    /// `PC_REFRESH_TOKEN`.
    pub refresh_token: SecretString,
    /// `PC_PARTNER_ORGANIZATION_ID`.
    pub partner_organization_id: Option<String>,
    /// `PC_PARTNER_TEAM_JSON`: the partner's sales team on referrals created from the CRM.
    pub partner_team: Vec<Member>,
    /// `PC_REFRESH_TOKEN_SECRET_ARN`: the secret the refresh token is read from, which keeps
    /// the token Entra rotates.
    pub refresh_token_secret: Option<String>,
}

/// The CRM and its credentials.
#[derive(Debug, Clone)]
pub enum CrmConfig {
    /// Dynamics 365 / Dataverse, app-only Entra token.
    Dataverse {
        /// `DATAVERSE_URL`.
        url: String,
        /// `ENTRA_AUTHORITY`.
        authority: String,
        /// `DATAVERSE_TENANT_ID`, else `PC_TENANT_ID`.
        tenant_id: String,
        /// `DATAVERSE_CLIENT_ID`.
        client_id: String,
        /// `DATAVERSE_CLIENT_SECRET`.
        client_secret: SecretString,
    },
    /// Salesforce, OAuth 2.0 JWT bearer.
    Salesforce {
        /// `SALESFORCE_LOGIN_URL`.
        login_url: String,
        /// `SALESFORCE_CONSUMER_KEY`.
        consumer_key: String,
        /// `SALESFORCE_USERNAME`.
        username: String,
        /// `SALESFORCE_PRIVATE_KEY`.
        private_key_pem: SecretString,
    },
}

/// Where the stores live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// DynamoDB table + SQS retry queue.
    DynamoDb {
        /// `TABLE_NAME`.
        table_name: String,
        /// `RETRY_QUEUE_URL`.
        retry_queue_url: String,
    },
    /// In memory, per instance (local runs).
    Memory,
}

/// Webhook verification settings.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// PEM bundle of the trust anchors.
    pub trust_anchors_pem: String,
    /// PEM bundle of the intermediates (may be empty).
    pub intermediates_pem: String,
    /// https hosts a certificate URL may name.
    pub cert_hosts: Vec<String>,
    /// `host:port` pairs accepted over plain http (sandbox builds only; always empty
    /// otherwise).
    pub insecure_cert_hosts: Vec<String>,
}

impl fmt::Debug for WebhookConfig {
    /// Certificate counts instead of the PEM text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |pem: &str| pem.matches("-----BEGIN CERTIFICATE-----").count();
        f.debug_struct("WebhookConfig")
            .field("trust_anchors", &count(&self.trust_anchors_pem))
            .field("intermediates", &count(&self.intermediates_pem))
            .field("cert_hosts", &self.cert_hosts)
            .field("insecure_cert_hosts", &self.insecure_cert_hosts)
            .finish()
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
        let SyncConfig {
            partner_center,
            crm,
            mapping,
            store,
            idempotency_ttl,
            referral_scope,
        } = SyncConfig::from_env(&env)?;
        let webhook = WebhookConfig {
            trust_anchors_pem: env
                .pem("WEBHOOK_TRUST_ANCHORS_PEM")?
                .ok_or(ConfigError::Missing("WEBHOOK_TRUST_ANCHORS_PEM"))?,
            intermediates_pem: env.pem("WEBHOOK_INTERMEDIATES_PEM")?.unwrap_or_default(),
            cert_hosts: env
                .list("WEBHOOK_CERT_HOSTS")
                .unwrap_or_else(|| vec![DEFAULT_CERTIFICATE_HOST.to_owned()]),
            insecure_cert_hosts: sandbox_hosts(env.list("SANDBOX_INSECURE_CERT_HOSTS"))?,
        };
        let max_body_bytes = env.number("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES as u64)?;
        Ok(Self {
            partner_center,
            crm,
            mapping,
            store,
            webhook,
            max_body_bytes: usize::try_from(max_body_bytes)
                .map_err(|_| ConfigError::invalid("MAX_BODY_BYTES", "too large"))?,
            idempotency_ttl,
            referral_scope,
        })
    }

    /// The sync settings this configuration asks for.
    pub fn sync_settings(&self) -> SyncSettings {
        sync_settings(
            self.idempotency_ttl,
            self.referral_scope,
            &self.partner_center,
        )
    }
}

/// The part of the configuration every connector function shares: Partner Center, the CRM,
/// the mapping, the stores and the sync options (all of [`Config`] except the Partner Center
/// webhook verification and the body cap). `crm-events` reads it too.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Partner Center (and its Entra sign-in).
    pub partner_center: PartnerCenterConfig,
    /// The CRM.
    pub crm: CrmConfig,
    /// The field mapping.
    pub mapping: MappingConfig,
    /// Where idempotency records, links, the audit log and retry jobs go.
    pub store: StoreConfig,
    /// How long a processed delivery is remembered.
    pub idempotency_ttl: Duration,
    /// Which referrals are synced.
    pub referral_scope: ReferralScope,
}

impl SyncConfig {
    /// The shared variables of [`Config`]'s table (`CRM_KIND`, `PC_*`, `DATAVERSE_*`,
    /// `SALESFORCE_*`, `MAPPING_CONFIG_JSON`, `STORE`, `TABLE_NAME`, `RETRY_QUEUE_URL`,
    /// `IDEMPOTENCY_TTL_SECS`, `REFERRAL_SCOPE`).
    pub fn from_env<F>(env: &Env<F>) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let entra_authority = env.or("ENTRA_AUTHORITY", DEFAULT_ENTRA_AUTHORITY);
        let tenant_id = env.required("PC_TENANT_ID")?;
        let partner_center = PartnerCenterConfig {
            api_base_url: env.or("PC_API_BASE_URL", DEFAULT_PARTNER_CENTER_BASE_URL),
            entra_authority: entra_authority.clone(),
            tenant_id: tenant_id.clone(),
            client_id: env.required("PC_CLIENT_ID")?,
            client_secret: env.secret("PC_CLIENT_SECRET")?,
            refresh_token: env.secret("PC_REFRESH_TOKEN")?,
            partner_organization_id: env.optional("PC_PARTNER_ORGANIZATION_ID"),
            partner_team: partner_team(env.optional("PC_PARTNER_TEAM_JSON"))?,
            refresh_token_secret: env.optional("PC_REFRESH_TOKEN_SECRET_ARN"),
        };
        let crm = match env.required("CRM_KIND")?.to_ascii_lowercase().as_str() {
            "dataverse" => CrmConfig::Dataverse {
                url: env.required("DATAVERSE_URL")?,
                authority: entra_authority,
                tenant_id: env.optional("DATAVERSE_TENANT_ID").unwrap_or(tenant_id),
                client_id: env.required("DATAVERSE_CLIENT_ID")?,
                client_secret: env.secret("DATAVERSE_CLIENT_SECRET")?,
            },
            "salesforce" => CrmConfig::Salesforce {
                login_url: env.or("SALESFORCE_LOGIN_URL", DEFAULT_SALESFORCE_LOGIN_URL),
                consumer_key: env.required("SALESFORCE_CONSUMER_KEY")?,
                username: env.required("SALESFORCE_USERNAME")?,
                private_key_pem: SecretString::from(pem_text(
                    env.required("SALESFORCE_PRIVATE_KEY")?,
                )),
            },
            other => {
                return Err(ConfigError::invalid(
                    "CRM_KIND",
                    format!("'{other}' is neither dataverse nor salesforce"),
                ));
            }
        };
        let mapping = match env.optional("MAPPING_CONFIG_JSON") {
            Some(json) => serde_json::from_str(&json).map_err(|error| {
                ConfigError::invalid("MAPPING_CONFIG_JSON", format!("not a mapping: {error}"))
            })?,
            None => MappingConfig::default(),
        };
        let store = match env.or("STORE", "dynamodb").to_ascii_lowercase().as_str() {
            "dynamodb" => StoreConfig::DynamoDb {
                table_name: env.required("TABLE_NAME")?,
                retry_queue_url: env.required("RETRY_QUEUE_URL")?,
            },
            // In memory, each instance would have its own idempotency records and links: a
            // redelivery reaching another instance would be applied again.
            "memory" if env.optional("AWS_LAMBDA_FUNCTION_NAME").is_some() => {
                return Err(ConfigError::invalid(
                    "STORE",
                    "memory is for local runs and tests: a function running in Lambda keeps \
                     its idempotency records, links and audit log in DynamoDB (set STORE=dynamodb \
                     with TABLE_NAME and RETRY_QUEUE_URL)",
                ));
            }
            "memory" => StoreConfig::Memory,
            other => {
                return Err(ConfigError::invalid(
                    "STORE",
                    format!("'{other}' is neither dynamodb nor memory"),
                ));
            }
        };
        let ttl = env.number(
            "IDEMPOTENCY_TTL_SECS",
            SyncSettings::DEFAULT_IDEMPOTENCY_TTL.as_secs(),
        )?;
        let referral_scope = match env
            .or("REFERRAL_SCOPE", "cosell")
            .to_ascii_lowercase()
            .as_str()
        {
            "cosell" | "co-sell" => ReferralScope::CoSellOnly,
            "all" => ReferralScope::All,
            other => {
                return Err(ConfigError::invalid(
                    "REFERRAL_SCOPE",
                    format!("'{other}' is neither cosell nor all"),
                ));
            }
        };
        Ok(Self {
            partner_center,
            crm,
            mapping,
            store,
            idempotency_ttl: Duration::from_secs(ttl),
            referral_scope,
        })
    }

    /// The sync settings this configuration asks for.
    pub fn sync_settings(&self) -> SyncSettings {
        sync_settings(
            self.idempotency_ttl,
            self.referral_scope,
            &self.partner_center,
        )
    }
}

fn sync_settings(
    idempotency_ttl: Duration,
    referral_scope: ReferralScope,
    partner_center: &PartnerCenterConfig,
) -> SyncSettings {
    SyncSettings {
        idempotency_ttl,
        referral_scope,
        partner_organization_id: partner_center.partner_organization_id.clone(),
        partner_team: partner_center.partner_team.clone(),
        ..SyncSettings::default()
    }
}

/// `PC_PARTNER_TEAM_JSON`: every member with first and last name, email and phone number (what
/// Partner Center requires of a referral's team). The members' data is never echoed in errors.
fn partner_team(json: Option<String>) -> Result<Vec<Member>, ConfigError> {
    const NAME: &str = "PC_PARTNER_TEAM_JSON";
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let team: Vec<Member> = serde_json::from_str(&json).map_err(|error| {
        ConfigError::invalid(
            NAME,
            format!(
                "not a JSON array of {{\"firstName\", \"lastName\", \"email\", \
                 \"phoneNumber\"}} (line {}, column {})",
                error.line(),
                error.column()
            ),
        )
    })?;
    for (index, member) in team.iter().enumerate() {
        let missing: Vec<&str> = [
            ("firstName", &member.first_name),
            ("lastName", &member.last_name),
            ("email", &member.email),
            ("phoneNumber", &member.phone_number),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_none_or(|v| v.trim().is_empty()))
        .map(|(field, _)| field)
        .collect();
        if !missing.is_empty() {
            return Err(ConfigError::invalid(
                NAME,
                format!(
                    "member {} has no {}: Partner Center requires name, email and phone number \
                     of each team member",
                    index + 1,
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(team)
}

/// `SANDBOX_INSECURE_CERT_HOSTS`: kept in a `sandbox` build, refused in any other.
fn sandbox_hosts(hosts: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    match hosts {
        None => Ok(Vec::new()),
        Some(hosts) if cfg!(feature = "sandbox") => Ok(hosts),
        Some(_) => Err(ConfigError::invalid(
            "SANDBOX_INSECURE_CERT_HOSTS",
            "plain-http certificate hosts are honoured only by a build with the `sandbox` \
             feature (local runs against the sandbox); unset it in production",
        )),
    }
}

/// PEM text as configured: literal `\n` escapes (as some deployment tools write multi-line
/// values) become line breaks.
fn pem_text(text: String) -> String {
    if text.contains('\n') {
        text
    } else {
        text.replace("\\n", "\n")
    }
}

/// Variable access over a lookup function (a variable name → its value). Empty (or blank)
/// values count as unset.
#[derive(Debug)]
pub struct Env<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A variable, trimmed; `None` when unset or blank.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// A variable that must be set.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    /// A variable, or `default`.
    pub fn or(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// A required secret.
    pub fn secret(&self, name: &'static str) -> Result<SecretString, ConfigError> {
        self.required(name).map(SecretString::from)
    }

    /// A comma-separated list; `None` when unset or empty.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        let items: Vec<String> = self
            .optional(name)?
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect();
        (!items.is_empty()).then_some(items)
    }

    /// A whole number greater than 0, or `default`.
    pub fn number(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(0) => Err(ConfigError::invalid(name, "must be greater than 0")),
                Ok(number) => Ok(number),
                Err(_) => Err(ConfigError::invalid(
                    name,
                    format!("'{text}' is not a whole number"),
                )),
            },
        }
    }

    /// A PEM bundle given inline, or the path of a file holding it.
    pub fn pem(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(value) = self.optional(name) else {
            return Ok(None);
        };
        let text = pem_text(value);
        if text.contains("-----BEGIN") {
            return Ok(Some(text));
        }
        let read = std::fs::read_to_string(&text).map_err(|error| {
            ConfigError::invalid(
                name,
                format!("neither PEM text nor a readable PEM file path ('{text}': {error})"),
            )
        })?;
        if read.contains("-----BEGIN") {
            Ok(Some(read))
        } else {
            Err(ConfigError::invalid(
                name,
                format!("the file '{text}' holds no PEM certificate"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ANCHOR: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn base() -> HashMap<&'static str, String> {
        [
            ("CRM_KIND", "dataverse"),
            ("PC_TENANT_ID", "tenant"),
            ("PC_CLIENT_ID", "pc-client"),
            ("PC_CLIENT_SECRET", "pc-secret-value"),
            ("PC_REFRESH_TOKEN", "pc-refresh-value"),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
            ("DATAVERSE_CLIENT_ID", "dv-client"),
            ("DATAVERSE_CLIENT_SECRET", "dv-secret-value"),
            ("TABLE_NAME", "cosell"),
            (
                "RETRY_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/retry",
            ),
            ("WEBHOOK_TRUST_ANCHORS_PEM", ANCHOR),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_minimal_dataverse_configuration_gets_the_documented_defaults() {
        let config = load(&base()).unwrap();
        assert_eq!(
            config.partner_center.api_base_url,
            "https://api.partner.microsoft.com"
        );
        assert_eq!(
            config.partner_center.entra_authority,
            "https://login.microsoftonline.com"
        );
        assert_eq!(config.partner_center.partner_organization_id, None);
        assert!(matches!(
            &config.crm,
            CrmConfig::Dataverse { tenant_id, .. } if tenant_id == "tenant"
        ));
        assert_eq!(
            config.store,
            StoreConfig::DynamoDb {
                table_name: "cosell".into(),
                retry_queue_url: "https://sqs.eu-west-1.amazonaws.com/1/retry".into()
            }
        );
        assert_eq!(
            config.webhook.cert_hosts,
            vec!["3psostorageacct.blob.core.windows.net".to_owned()]
        );
        assert!(config.webhook.insecure_cert_hosts.is_empty());
        assert_eq!(config.webhook.intermediates_pem, "");
        assert_eq!(config.max_body_bytes, 64 * 1024);
        assert_eq!(config.idempotency_ttl, Duration::from_secs(3600));
        assert_eq!(config.referral_scope, ReferralScope::CoSellOnly);
        assert_eq!(config.mapping, MappingConfig::default());
        let settings = config.sync_settings();
        assert_eq!(settings.max_attempts, SyncSettings::DEFAULT_MAX_ATTEMPTS);
    }

    #[test]
    fn a_missing_variable_is_named() {
        for name in [
            "CRM_KIND",
            "PC_TENANT_ID",
            "PC_CLIENT_ID",
            "PC_CLIENT_SECRET",
            "PC_REFRESH_TOKEN",
            "DATAVERSE_URL",
            "DATAVERSE_CLIENT_ID",
            "DATAVERSE_CLIENT_SECRET",
            "TABLE_NAME",
            "RETRY_QUEUE_URL",
            "WEBHOOK_TRUST_ANCHORS_PEM",
        ] {
            let mut vars = base();
            vars.insert(name, "  ".to_owned());
            let error = load(&vars).unwrap_err();
            assert_eq!(error, ConfigError::Missing(name));
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn salesforce_needs_its_own_credentials_and_reads_escaped_pem() {
        let mut vars = base();
        vars.insert("CRM_KIND", "Salesforce".into());
        assert_eq!(
            load(&vars).unwrap_err(),
            ConfigError::Missing("SALESFORCE_CONSUMER_KEY")
        );
        vars.insert("SALESFORCE_CONSUMER_KEY", "key".into());
        vars.insert("SALESFORCE_USERNAME", "integration@partner.example".into());
        vars.insert(
            "SALESFORCE_PRIVATE_KEY",
            "-----BEGIN PRIVATE KEY-----\\nABC\\n-----END PRIVATE KEY-----".into(),
        );
        let config = load(&vars).unwrap();
        let CrmConfig::Salesforce {
            login_url,
            private_key_pem,
            ..
        } = &config.crm
        else {
            panic!("not salesforce: {:?}", config.crm);
        };
        assert_eq!(login_url, "https://login.salesforce.com");
        use secrecy::ExposeSecret;
        assert!(private_key_pem.expose_secret().contains("\nABC\n"));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut vars = base();
        vars.insert("STORE", "memory".into());
        let text = format!("{:?}", load(&vars).unwrap());
        for secret in [
            "pc-secret-value",
            "pc-refresh-value",
            "dv-secret-value",
            "MIIB",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn options_are_parsed_and_bad_values_named() {
        let mut vars = base();
        vars.insert("STORE", "memory".into());
        vars.insert("REFERRAL_SCOPE", "all".into());
        vars.insert("MAX_BODY_BYTES", "1024".into());
        vars.insert("IDEMPOTENCY_TTL_SECS", "60".into());
        vars.insert("WEBHOOK_CERT_HOSTS", " a.example , b.example ,".into());
        vars.insert("PC_PARTNER_ORGANIZATION_ID", "org-1".into());
        vars.insert(
            "MAPPING_CONFIG_JSON",
            r#"{"referral_link_template": "https://partner.microsoft.com/r/{id}"}"#.into(),
        );
        vars.remove("TABLE_NAME");
        let config = load(&vars).unwrap();
        assert_eq!(config.store, StoreConfig::Memory);
        assert_eq!(config.referral_scope, ReferralScope::All);
        assert_eq!(config.max_body_bytes, 1024);
        assert_eq!(config.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(config.webhook.cert_hosts, vec!["a.example", "b.example"]);
        assert_eq!(
            config.sync_settings().partner_organization_id.as_deref(),
            Some("org-1")
        );
        assert_eq!(
            config.mapping.referral_link("x").as_deref(),
            Some("https://partner.microsoft.com/r/x")
        );

        for (name, value) in [
            ("CRM_KIND", "hubspot"),
            ("STORE", "redis"),
            ("REFERRAL_SCOPE", "leads"),
            ("MAX_BODY_BYTES", "lots"),
            ("IDEMPOTENCY_TTL_SECS", "0"),
            ("MAPPING_CONFIG_JSON", "{"),
            ("WEBHOOK_TRUST_ANCHORS_PEM", "/nonexistent/anchors.pem"),
        ] {
            let mut vars = base();
            vars.insert(name, value.into());
            match load(&vars).unwrap_err() {
                ConfigError::Invalid { name: named, .. } => assert_eq!(named, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_pem_bundle_may_be_given_as_a_file_path() {
        let path = std::env::temp_dir().join(format!("pce-anchors-{}.pem", std::process::id()));
        std::fs::write(&path, ANCHOR).unwrap();
        let mut vars = base();
        vars.insert(
            "WEBHOOK_TRUST_ANCHORS_PEM",
            path.to_string_lossy().into_owned(),
        );
        let config = load(&vars).unwrap();
        assert_eq!(config.webhook.trust_anchors_pem, ANCHOR);
        std::fs::remove_file(path).unwrap();
    }

    #[cfg(not(feature = "sandbox"))]
    #[test]
    fn a_production_build_refuses_plain_http_certificate_hosts() {
        let mut vars = base();
        vars.insert("SANDBOX_INSECURE_CERT_HOSTS", "127.0.0.1:8700".into());
        match load(&vars).unwrap_err() {
            ConfigError::Invalid { name, .. } => assert_eq!(name, "SANDBOX_INSECURE_CERT_HOSTS"),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "sandbox")]
    #[test]
    fn a_sandbox_build_keeps_plain_http_certificate_hosts() {
        let mut vars = base();
        vars.insert("SANDBOX_INSECURE_CERT_HOSTS", "127.0.0.1:8700".into());
        assert_eq!(
            load(&vars).unwrap().webhook.insecure_cert_hosts,
            vec!["127.0.0.1:8700"]
        );
    }

    #[test]
    fn the_partner_team_goes_on_created_referrals_and_incomplete_members_are_refused() {
        let mut vars = base();
        assert!(load(&vars).unwrap().sync_settings().partner_team.is_empty());
        vars.insert(
            "PC_PARTNER_TEAM_JSON",
            r#"[{"firstName":"Avery","lastName":"Lee","email":"avery@partner.example",
                 "phoneNumber":"+1 425 555 0100"}]"#
                .into(),
        );
        let team = load(&vars).unwrap().sync_settings().partner_team;
        assert_eq!(team.len(), 1);
        assert_eq!(team[0].email.as_deref(), Some("avery@partner.example"));

        vars.insert(
            "PC_PARTNER_TEAM_JSON",
            r#"[{"firstName":"Avery","lastName":"Lee","email":"avery@partner.example"}]"#.into(),
        );
        let error = load(&vars).unwrap_err().to_string();
        assert!(error.contains("PC_PARTNER_TEAM_JSON"), "{error}");
        assert!(error.contains("member 1 has no phoneNumber"), "{error}");
        assert!(!error.contains("avery@partner.example"), "{error}");

        vars.insert("PC_PARTNER_TEAM_JSON", r#"{"email":"x"}"#.into());
        let error = load(&vars).unwrap_err().to_string();
        assert!(error.contains("not a JSON array"), "{error}");
    }

    #[test]
    fn a_function_running_in_lambda_refuses_the_memory_store() {
        let mut vars = base();
        vars.insert("STORE", "memory".into());
        assert_eq!(load(&vars).unwrap().store, StoreConfig::Memory);
        vars.insert("AWS_LAMBDA_FUNCTION_NAME", "partner-center-events".into());
        match load(&vars).unwrap_err() {
            ConfigError::Invalid { name, reason } => {
                assert_eq!(name, "STORE");
                assert!(reason.contains("STORE=dynamodb"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
