//! What the handler runs with ([`App`]), built once per cold start.

use cosell_adapters::aws::{
    AwsClients, DynamoApiBudget, DynamoCheckpointStore, DynamoLinkStore, SqsRetryQueue,
};
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::{HttpClientOptions, HttpPartnerCenter, build_client};
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::in_memory::{
    InMemoryApiBudget, InMemoryCheckpointStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use cosell_domain::reconcile::{ReconcilePorts, ReconcileSettings};
use cosell_domain::sync::SyncSettings;
use partner_center_events::app::{self as pce, BuildError};

use crate::config::Config;

/// The function's dependencies. Type parameters: `P` Partner Center, `C` CRM, `Q` retry
/// queue, `L` link store, `K` checkpoint store, `B` API budget counter.
#[derive(Debug)]
pub struct App<P, C, Q, L, K, B> {
    /// The Partner Center referrals API.
    pub partner_center: P,
    /// The CRM.
    pub crm: C,
    /// Where the syncs are queued.
    pub retry_queue: Q,
    /// The referral ⇄ CRM links.
    pub links: L,
    /// The checkpoint.
    pub checkpoints: K,
    /// The daily API counter.
    pub budget: B,
    /// The daily API budget.
    pub budget_policy: BudgetPolicy,
    /// Referral scope, partner organization, connector user.
    pub settings: SyncSettings,
    /// How much one run does.
    pub reconcile: ReconcileSettings,
}

/// The production instantiation: HTTP clients, SQS and the DynamoDB table.
pub type ProductionApp = App<
    HttpPartnerCenter,
    AnyCrm,
    SqsRetryQueue,
    DynamoLinkStore,
    DynamoCheckpointStore,
    DynamoApiBudget,
>;

/// The local instantiation (`STORE=memory`).
pub type LocalApp = App<
    HttpPartnerCenter,
    AnyCrm,
    InMemoryRetryQueue,
    InMemoryLinkStore,
    InMemoryCheckpointStore,
    InMemoryApiBudget,
>;

/// The Partner Center and CRM clients of `config` (as `partner-center-events` builds them).
pub fn clients(config: &Config) -> Result<(HttpPartnerCenter, AnyCrm), BuildError> {
    let http = build_client(&HttpClientOptions::default())?;
    Ok((
        pce::partner_center(http.clone(), &config.sync.partner_center)?,
        pce::crm(http, &config.sync.crm, &config.sync.mapping)?,
    ))
}

impl<P, C, Q, L, K, B> App<P, C, Q, L, K, B> {
    /// What one run uses.
    pub fn ports(&self) -> ReconcilePorts<'_, P, C, Q, L, K, B> {
        ReconcilePorts {
            partner_center: &self.partner_center,
            crm: &self.crm,
            retry_queue: &self.retry_queue,
            links: &self.links,
            checkpoints: &self.checkpoints,
            budget: Budget {
                counter: &self.budget,
                policy: &self.budget_policy,
            },
        }
    }
}

impl ProductionApp {
    /// The clients of `config` and the stores on `table` and `retry_queue_url`.
    pub fn production(
        config: &Config,
        aws: &AwsClients,
        table: &str,
        retry_queue_url: &str,
    ) -> Result<Self, BuildError> {
        let (partner_center, crm) = clients(config)?;
        Ok(Self {
            partner_center,
            crm,
            retry_queue: SqsRetryQueue::new(aws.sqs.clone(), retry_queue_url),
            links: DynamoLinkStore::new(aws.dynamodb.clone(), table),
            checkpoints: DynamoCheckpointStore::new(aws.dynamodb.clone(), table),
            budget: DynamoApiBudget::new(aws.dynamodb.clone(), table),
            budget_policy: config.budget,
            settings: config.sync_settings(),
            reconcile: config.reconcile.clone(),
        })
    }
}

impl LocalApp {
    /// The clients of `config` and in-memory stores.
    pub fn local(config: &Config) -> Result<Self, BuildError> {
        let (partner_center, crm) = clients(config)?;
        Ok(Self {
            partner_center,
            crm,
            retry_queue: InMemoryRetryQueue::new(),
            links: InMemoryLinkStore::new(),
            checkpoints: InMemoryCheckpointStore::new(),
            budget: InMemoryApiBudget::new(),
            budget_policy: config.budget,
            settings: config.sync_settings(),
            reconcile: config.reconcile.clone(),
        })
    }
}
