//! What the handler runs with ([`App`]), and how `main` builds it from the [`Config`] once per
//! cold start ([`Clients::from_config`], [`Stores`]).

use std::sync::Arc;

use cosell_adapters::aws::secrets::SecretWriter;
use cosell_adapters::aws::{
    AnyApiBudget, AwsClients, DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, Metering,
    SqsRetryQueue,
};
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::dataverse::{DataverseConfig, DataverseStore};
use cosell_adapters::http::salesforce::{SalesforceConfig, SalesforceStore};
use cosell_adapters::http::tokens::{
    DEFAULT_SALESFORCE_SESSION_LIFETIME, PARTNER_CENTER_REFERRALS_SCOPE, dataverse_scope,
};
use cosell_adapters::http::{
    EntraClientCredentials, EntraClientCredentialsConfig, EntraRefreshToken,
    EntraRefreshTokenConfig, HttpAdapterError, HttpClientOptions, HttpPartnerCenter,
    SalesforceJwtBearer, SalesforceJwtBearerConfig, WebhookVerifier, WebhookVerifierConfig,
    build_client,
};
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::in_memory::{
    InMemoryAuditLog, InMemoryIdempotencyStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use cosell_domain::mapping::MappingConfig;
use cosell_domain::sync::{Deps, SyncSettings};

use crate::config::{Config, CrmConfig, PartnerCenterConfig, WebhookConfig};

/// The function's dependencies: the outbound clients, the four stores, the webhook verifier
/// and the settings. Built once per cold start; the handler borrows it.
///
/// Type parameters as in [`Deps`]: `P` Partner Center, `C` CRM, `I` idempotency store,
/// `Q` retry queue, `A` audit log, `L` link store.
#[derive(Debug)]
pub struct App<P, C, I, Q, A, L> {
    /// The Partner Center referrals API.
    pub partner_center: P,
    /// The CRM.
    pub crm: C,
    /// The stores.
    pub stores: Stores<I, Q, A, L>,
    /// Verifies webhook signatures.
    pub verifier: WebhookVerifier,
    /// The field mapping.
    pub mapping: MappingConfig,
    /// The sync settings.
    pub settings: SyncSettings,
    /// Larger webhook bodies are answered 413.
    pub max_body_bytes: usize,
    /// The daily API budget (a counter in memory until [`App::with_budget`] names the
    /// table's).
    pub metering: Metering,
}

/// The production instantiation: HTTP clients and the DynamoDB / SQS stores.
pub type ProductionApp = App<
    HttpPartnerCenter,
    AnyCrm,
    DynamoIdempotencyStore,
    SqsRetryQueue,
    DynamoAuditLog,
    DynamoLinkStore,
>;

/// The local instantiation (`STORE=memory`): HTTP clients and in-memory stores.
pub type LocalApp = App<
    HttpPartnerCenter,
    AnyCrm,
    InMemoryIdempotencyStore,
    InMemoryRetryQueue,
    InMemoryAuditLog,
    InMemoryLinkStore,
>;

impl<P, C, I, Q, A, L> App<P, C, I, Q, A, L> {
    /// An app from built clients and stores, with the settings of `config`.
    pub fn new(clients: Clients<P, C>, stores: Stores<I, Q, A, L>, config: &Config) -> Self {
        Self {
            partner_center: clients.partner_center,
            crm: clients.crm,
            stores,
            verifier: clients.verifier,
            mapping: config.mapping.clone(),
            settings: config.sync_settings(),
            max_body_bytes: config.max_body_bytes,
            metering: Metering::default(),
        }
    }

    /// Count calls with `counter` against `policy` (`main`: the table's counter and the
    /// `DAILY_API_BUDGET` / `WEBHOOK_RESERVED_SHARE` policy).
    pub fn with_budget(self, counter: AnyApiBudget, policy: BudgetPolicy) -> Self {
        Self {
            metering: Metering::new(counter, policy),
            ..self
        }
    }

    /// The budget the syncs are admitted against.
    pub fn budget(&self) -> Budget<'_, AnyApiBudget> {
        self.metering.budget()
    }

    /// The sync core's view of it.
    pub fn deps(&self) -> Deps<'_, P, C, I, Q, A, L> {
        Deps {
            partner_center: &self.partner_center,
            crm: &self.crm,
            idempotency: &self.stores.idempotency,
            retry_queue: &self.stores.retry_queue,
            audit: &self.stores.audit,
            links: &self.stores.links,
            mapping: &self.mapping,
            settings: &self.settings,
        }
    }
}

/// The outbound clients and the verifier.
#[derive(Debug)]
pub struct Clients<P, C> {
    /// The Partner Center referrals API.
    pub partner_center: P,
    /// The CRM.
    pub crm: C,
    /// Verifies webhook signatures.
    pub verifier: WebhookVerifier,
}

impl Clients<HttpPartnerCenter, AnyCrm> {
    /// One shared HTTP client, the token providers, the Partner Center and CRM adapters, and
    /// the webhook verifier. No request is sent: tokens are fetched on first use.
    pub fn from_config(config: &Config) -> Result<Self, BuildError> {
        let http = build_client(&HttpClientOptions::default())?;
        Ok(Self {
            partner_center: partner_center(http.clone(), &config.partner_center)?,
            crm: crm(http, &config.crm, &config.mapping)?,
            verifier: verifier(&config.webhook)?,
        })
    }
}

/// The Partner Center referrals adapter, with a delegated token from the refresh token.
pub fn partner_center(
    http: reqwest::Client,
    config: &PartnerCenterConfig,
) -> Result<HttpPartnerCenter, BuildError> {
    let tokens = EntraRefreshToken::new(
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
            keep_rotated_in: config
                .refresh_token_secret
                .as_deref()
                .and_then(|arn| SecretWriter::for_reference("PC_REFRESH_TOKEN", arn))
                .map(Arc::new),
        },
    )?;
    Ok(HttpPartnerCenter::new(http, tokens, &config.api_base_url)?)
}

/// The configured CRM adapter.
pub fn crm(
    http: reqwest::Client,
    config: &CrmConfig,
    mapping: &MappingConfig,
) -> Result<AnyCrm, BuildError> {
    Ok(match config {
        CrmConfig::Dataverse {
            url,
            authority,
            tenant_id,
            client_id,
            client_secret,
        } => {
            let tokens = EntraClientCredentials::new(
                http.clone(),
                EntraClientCredentialsConfig {
                    authority: authority.clone(),
                    tenant: tenant_id.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scope: dataverse_scope(url),
                    credential_label: Some(
                        "the Dataverse app secret (DATAVERSE_CLIENT_SECRET, app \
                         DATAVERSE_CLIENT_ID)"
                            .into(),
                    ),
                },
            )?;
            DataverseStore::new(http, tokens, DataverseConfig::new(url, mapping.clone()))?.into()
        }
        CrmConfig::Salesforce {
            login_url,
            consumer_key,
            username,
            private_key_pem,
        } => {
            let tokens = SalesforceJwtBearer::new(
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
            )?;
            SalesforceStore::new(http, tokens, SalesforceConfig::new(mapping.clone()))?.into()
        }
    })
}

/// The webhook verifier: https certificate hosts from the allow-list only. A `sandbox` build
/// also accepts `SANDBOX_INSECURE_CERT_HOSTS` over plain http; in any other build that list is
/// always empty (the configuration refuses it), and nothing switches verification off.
pub fn verifier(config: &WebhookConfig) -> Result<WebhookVerifier, BuildError> {
    let settings = verifier_settings(config);
    #[cfg(feature = "sandbox")]
    if !config.insecure_cert_hosts.is_empty() {
        return Ok(WebhookVerifier::with_insecure_hosts(
            settings,
            &config.insecure_cert_hosts,
        )?);
    }
    Ok(WebhookVerifier::new(settings)?)
}

/// The verifier's settings: the configured anchors, intermediates and https hosts, and the
/// adapter's download timeout and size cap.
pub fn verifier_settings(config: &WebhookConfig) -> WebhookVerifierConfig {
    let mut settings = WebhookVerifierConfig::new(
        config.trust_anchors_pem.as_str(),
        config.intermediates_pem.as_str(),
    );
    settings.allowed_hosts.clone_from(&config.cert_hosts);
    settings
}

/// A client or the verifier could not be built: a configuration problem its message names
/// (an unusable URL, key or certificate bundle).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BuildError(Box<HttpAdapterError>);

impl From<HttpAdapterError> for BuildError {
    fn from(error: HttpAdapterError) -> Self {
        Self(Box::new(error))
    }
}

/// The idempotency store, retry queue, audit log and link store.
#[derive(Debug)]
pub struct Stores<I, Q, A, L> {
    /// The idempotency table.
    pub idempotency: I,
    /// The retry queue.
    pub retry_queue: Q,
    /// The audit log.
    pub audit: A,
    /// The referral ⇄ CRM link table.
    pub links: L,
}

impl Stores<DynamoIdempotencyStore, SqsRetryQueue, DynamoAuditLog, DynamoLinkStore> {
    /// The DynamoDB table and SQS queue (`STORE=dynamodb`).
    pub fn dynamo(aws: &AwsClients, table_name: &str, retry_queue_url: &str) -> Self {
        Self {
            idempotency: DynamoIdempotencyStore::new(aws.dynamodb.clone(), table_name),
            retry_queue: SqsRetryQueue::new(aws.sqs.clone(), retry_queue_url),
            audit: DynamoAuditLog::new(aws.dynamodb.clone(), table_name),
            links: DynamoLinkStore::new(aws.dynamodb.clone(), table_name),
        }
    }
}

impl Stores<InMemoryIdempotencyStore, InMemoryRetryQueue, InMemoryAuditLog, InMemoryLinkStore> {
    /// In-memory stores (`STORE=memory`, and the handler tests).
    pub fn in_memory(config: &Config) -> Self {
        Self::in_memory_with_ttl(config.idempotency_ttl)
    }

    /// In-memory stores remembering a processed delivery for `idempotency_ttl`.
    pub fn in_memory_with_ttl(idempotency_ttl: std::time::Duration) -> Self {
        Self {
            idempotency: InMemoryIdempotencyStore::new(idempotency_ttl),
            retry_queue: InMemoryRetryQueue::new(),
            audit: InMemoryAuditLog::new(),
            links: InMemoryLinkStore::new(),
        }
    }
}
