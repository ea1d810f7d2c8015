//! [`Connector`]: what every sync function runs with — the six ports, the mapping, the sync
//! settings and the daily API budget — built once per cold start and lent to each sync as
//! [`Deps`].

use cosell_adapters::aws::{AnyApiBudget, Metering};
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::mapping::MappingConfig;
use cosell_domain::ports::Ports;
use cosell_domain::sync::{Deps, SyncSettings};

use crate::clients::{BuildError, Clients};
use crate::config::SyncConfig;
use crate::stores::{Local, Stores};

/// The ports of set `X` with the mapping, the settings and the budget.
pub struct Connector<X: Ports> {
    /// The Partner Center referrals API.
    pub partner_center: X::PartnerCenter,
    /// The CRM.
    pub crm: X::Crm,
    /// The stores.
    pub stores: Stores<X>,
    /// The field mapping.
    pub mapping: MappingConfig,
    /// The sync settings.
    pub settings: SyncSettings,
    /// The daily API budget (a counter in memory until [`Connector::with_budget`] names the
    /// table's).
    pub metering: Metering,
}

impl<X: Ports> std::fmt::Debug for Connector<X> {
    /// The settings only: the ports hold clients and credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<X: Ports> Connector<X> {
    /// The connector of built clients and stores.
    pub fn new(
        clients: Clients<X>,
        stores: Stores<X>,
        mapping: MappingConfig,
        settings: SyncSettings,
    ) -> Self {
        Self {
            partner_center: clients.partner_center,
            crm: clients.crm,
            stores,
            mapping,
            settings,
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
    pub fn deps(&self) -> Deps<'_, X> {
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

impl Connector<Local> {
    /// HTTP clients from `sync` and in-memory stores, with `settings` (local runs and tests;
    /// the stores' contents can be read back).
    pub fn local(sync: &SyncConfig, settings: SyncSettings) -> Result<Self, BuildError> {
        Ok(Self::new(
            Clients::from_config(sync)?,
            Stores::in_memory(sync.idempotency_ttl),
            sync.mapping.clone(),
            settings,
        ))
    }
}
