//! The configuration every connector function shares ([`SyncConfig`]: Partner Center, the CRM,
//! the mapping, the stores, the sync options), read from the environment once per cold start
//! through [`Env`]. Each function adds its own variables in its `config` module.

use std::fmt;
use std::time::Duration;

use cosell_adapters::http::DEFAULT_PARTNER_CENTER_BASE_URL;
use cosell_adapters::http::tokens::{DEFAULT_ENTRA_AUTHORITY, DEFAULT_SALESFORCE_LOGIN_URL};
use cosell_domain::mapping::MappingConfig;
use cosell_domain::referral::Member;
use cosell_domain::sync::{ReferralScope, SyncSettings};
use secrecy::SecretString;

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
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name,
            reason: reason.into(),
        }
    }
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
    /// the token Entra rotates. A secret of its own (never `arn#key` of a JSON secret: the
    /// write-back would rewrite the other keys), written only by a version-checked write.
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

impl CrmConfig {
    /// Which CRM it is.
    pub fn kind(&self) -> cosell_domain::CrmKind {
        match self {
            Self::Dataverse { .. } => cosell_domain::CrmKind::Dataverse,
            Self::Salesforce { .. } => cosell_domain::CrmKind::Salesforce,
        }
    }
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
    /// `WEBHOOK_CERT_SUBJECTS`: the names the signing certificate's subject CN (or a DNS
    /// subjectAltName) may be.
    pub cert_subjects: Vec<String>,
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
            .field("cert_subjects", &self.cert_subjects)
            .field("insecure_cert_hosts", &self.insecure_cert_hosts)
            .finish()
    }
}

/// The part of the configuration every connector function shares: Partner Center, the CRM,
/// the mapping, the stores and the sync options. Every function reads it.
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
    /// The shared variables of `partner-center-events`' configuration table (`CRM_KIND`, `PC_*`, `DATAVERSE_*`,
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
            refresh_token_secret: refresh_token_secret(
                env.optional("PC_REFRESH_TOKEN_SECRET_ARN"),
            )?,
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

/// `PC_REFRESH_TOKEN_SECRET_ARN` must name a whole secret: the rotated refresh token is
/// written back to it, and writing one key of a JSON secret rewrites every other key (an
/// operator's new CRM secret could be reverted).
fn refresh_token_secret(reference: Option<String>) -> Result<Option<String>, ConfigError> {
    match reference {
        Some(reference)
            if reference
                .split_once('#')
                .is_some_and(|(_, key)| !key.trim().is_empty()) =>
        {
            Err(ConfigError::invalid(
                "PC_REFRESH_TOKEN_SECRET_ARN",
                "it names one key of a JSON secret, but the rotated refresh token is written back \
                 to it and a write would rewrite the secret's other keys: keep the refresh token \
                 alone in a secret of its own (the template's PcRefreshTokenSecret) and set the \
                 variable to that secret's ARN, without #key",
            ))
        }
        other => Ok(other),
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

    fn sync_config(refresh_token_secret: &str) -> Result<SyncConfig, ConfigError> {
        let vars = [
            ("CRM_KIND", "dataverse"),
            ("PC_TENANT_ID", "tenant"),
            ("PC_CLIENT_ID", "client"),
            ("PC_CLIENT_SECRET", "client-secret"),
            ("PC_REFRESH_TOKEN", "refresh-token"),
            ("PC_REFRESH_TOKEN_SECRET_ARN", refresh_token_secret),
            ("DATAVERSE_URL", "https://contoso.crm.dynamics.com"),
            ("DATAVERSE_CLIENT_ID", "dv-client"),
            ("DATAVERSE_CLIENT_SECRET", "dv-secret"),
            ("STORE", "memory"),
        ];
        let env = Env(|name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        });
        SyncConfig::from_env(&env)
    }

    #[test]
    fn a_refresh_token_kept_as_one_key_of_a_shared_json_secret_is_refused_with_the_fix() {
        let error =
            sync_config("arn:aws:secretsmanager:r:1:secret:creds#pc_refresh_token").unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("PC_REFRESH_TOKEN_SECRET_ARN") && text.contains("secret of its own"),
            "{text}"
        );
        let config = sync_config("arn:aws:secretsmanager:r:1:secret:pc-refresh-token").unwrap();
        assert_eq!(
            config.partner_center.refresh_token_secret.as_deref(),
            Some("arn:aws:secretsmanager:r:1:secret:pc-refresh-token")
        );
    }
}
