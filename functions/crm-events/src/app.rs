//! What the handler runs with ([`App`]), built once per cold start. The clients and stores are
//! `partner-center-events`' ([`partner_center_events::app`]).

use cosell_adapters::aws::{
    AnyApiBudget, DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, Metering, SqsRetryQueue,
};
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::{HttpClientOptions, HttpPartnerCenter, build_client};
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::in_memory::{
    InMemoryAuditLog, InMemoryIdempotencyStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use cosell_domain::mapping::MappingConfig;
use cosell_domain::sync::{Deps, SyncSettings};
use partner_center_events::Stores;
use partner_center_events::app::{self as pce, BuildError};

use crate::config::{Config, EndpointConfig};

/// The function's dependencies. Type parameters as in [`Deps`]: `P` Partner Center, `C` CRM,
/// `I` idempotency store, `Q` retry queue, `A` audit log, `L` link store.
#[derive(Debug)]
pub struct App<P, C, I, Q, A, L> {
    /// The Partner Center referrals API.
    pub partner_center: P,
    /// The CRM.
    pub crm: C,
    /// The stores.
    pub stores: Stores<I, Q, A, L>,
    /// The field mapping.
    pub mapping: MappingConfig,
    /// The sync settings (with the connector's CRM user).
    pub settings: SyncSettings,
    /// How the CRM's calls are authenticated.
    pub endpoint: EndpointConfig,
    /// Larger bodies are answered 413.
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
            mapping: config.sync.mapping.clone(),
            settings: config.sync_settings(),
            endpoint: config.endpoint.clone(),
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

/// The outbound clients.
#[derive(Debug)]
pub struct Clients<P, C> {
    /// The Partner Center referrals API.
    pub partner_center: P,
    /// The CRM.
    pub crm: C,
}

impl Clients<HttpPartnerCenter, AnyCrm> {
    /// One shared HTTP client, the token providers and the Partner Center and CRM adapters
    /// (built as `partner-center-events` builds them). No request is sent.
    pub fn from_config(config: &Config) -> Result<Self, BuildError> {
        let http = build_client(&HttpClientOptions::default())?;
        Ok(Self {
            partner_center: pce::partner_center(http.clone(), &config.sync.partner_center)?,
            crm: pce::crm(http, &config.sync.crm, &config.sync.mapping)?,
        })
    }
}
