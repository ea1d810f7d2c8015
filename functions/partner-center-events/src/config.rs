//! The function's typed configuration: the shared [`SyncConfig`] variables plus webhook
//! verification and the body cap, read from the environment once per cold start.

use cosell_adapters::http::webhook_signature::{
    DEFAULT_CERTIFICATE_HOST, DEFAULT_SIGNING_SUBJECT_NAME,
};
use cosell_domain::sync::SyncSettings;
use cosell_runtime::config::{ConfigError, Env, SyncConfig, WebhookConfig};

/// The default cap on a webhook body (a real event is about 300 bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

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
/// | `WEBHOOK_CERT_SUBJECTS` | no | `pcnotifications-dispatch.microsoft.com` | comma-separated names the signing certificate's subject CN (or a DNS subjectAltName) must be one of |
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
    /// The variables every function shares: Partner Center, the CRM, the mapping, the stores,
    /// the sync options.
    pub sync: SyncConfig,
    /// Webhook signature verification.
    pub webhook: WebhookConfig,
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
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
        let webhook = WebhookConfig {
            trust_anchors_pem: env
                .pem("WEBHOOK_TRUST_ANCHORS_PEM")?
                .ok_or(ConfigError::Missing("WEBHOOK_TRUST_ANCHORS_PEM"))?,
            intermediates_pem: env.pem("WEBHOOK_INTERMEDIATES_PEM")?.unwrap_or_default(),
            cert_hosts: env
                .list("WEBHOOK_CERT_HOSTS")
                .unwrap_or_else(|| vec![DEFAULT_CERTIFICATE_HOST.to_owned()]),
            cert_subjects: env
                .list("WEBHOOK_CERT_SUBJECTS")
                .unwrap_or_else(|| vec![DEFAULT_SIGNING_SUBJECT_NAME.to_owned()]),
            insecure_cert_hosts: sandbox_hosts(env.list("SANDBOX_INSECURE_CERT_HOSTS"))?,
        };
        let max_body_bytes = env.number("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES as u64)?;
        Ok(Self {
            sync,
            webhook,
            max_body_bytes: usize::try_from(max_body_bytes)
                .map_err(|_| ConfigError::invalid("MAX_BODY_BYTES", "too large"))?,
        })
    }

    /// The sync settings this configuration asks for.
    pub fn sync_settings(&self) -> SyncSettings {
        self.sync.sync_settings()
    }
}

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
#[cfg(test)]
mod tests {
    use super::*;
    use cosell_domain::mapping::MappingConfig;
    use cosell_domain::sync::ReferralScope;
    use cosell_runtime::config::{CrmConfig, StoreConfig};
    use std::collections::HashMap;
    use std::time::Duration;

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
            config.sync.partner_center.api_base_url,
            "https://api.partner.microsoft.com"
        );
        assert_eq!(
            config.sync.partner_center.entra_authority,
            "https://login.microsoftonline.com"
        );
        assert_eq!(config.sync.partner_center.partner_organization_id, None);
        assert!(matches!(
            &config.sync.crm,
            CrmConfig::Dataverse { tenant_id, .. } if tenant_id == "tenant"
        ));
        assert_eq!(
            config.sync.store,
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
        assert_eq!(config.sync.idempotency_ttl, Duration::from_secs(3600));
        assert_eq!(config.sync.referral_scope, ReferralScope::CoSellOnly);
        assert_eq!(config.sync.mapping, MappingConfig::default());
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
        } = &config.sync.crm
        else {
            panic!("not salesforce: {:?}", config.sync.crm);
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
        assert_eq!(config.sync.store, StoreConfig::Memory);
        assert_eq!(config.sync.referral_scope, ReferralScope::All);
        assert_eq!(config.max_body_bytes, 1024);
        assert_eq!(config.sync.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(config.webhook.cert_hosts, vec!["a.example", "b.example"]);
        assert_eq!(
            config.sync_settings().partner_organization_id.as_deref(),
            Some("org-1")
        );
        assert_eq!(
            config.sync.mapping.referral_link("x").as_deref(),
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
        assert_eq!(load(&vars).unwrap().sync.store, StoreConfig::Memory);
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
