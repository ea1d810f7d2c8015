//! What the handler runs with ([`App`]): the ports of a reconciliation run, the budget and the
//! settings, built once per cold start.

use cosell_adapters::aws::{
    AnyApiBudget, AwsClients, DynamoApiBudget, DynamoCheckpointStore, DynamoLinkStore,
    SqsRetryQueue,
};
use cosell_adapters::http::HttpPartnerCenter;
use cosell_adapters::http::crm::AnyCrm;
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::in_memory::{
    InMemoryApiBudget, InMemoryCheckpointStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use cosell_domain::reconcile::{Clock, ReconcileDeps, ReconcilePorts, ReconcileSettings};
use cosell_domain::sync::SyncSettings;
use cosell_runtime::stores::{AnyCheckpointStore, AnyLinkStore, AnyRetryQueue};
use cosell_runtime::{Boot, BootError, BuildError, Clients, StoreConfig};

use crate::config::Config;

/// The ports of the deployed function: the HTTP clients and the configured stores.
#[derive(Debug)]
pub struct Deployed;

impl ReconcilePorts for Deployed {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type RetryQueue = AnyRetryQueue;
    type Links = AnyLinkStore;
    type Checkpoints = AnyCheckpointStore;
    type Budget = AnyApiBudget;
}

/// The ports of a local run or a test: the HTTP clients and typed in-memory stores.
#[derive(Debug)]
pub struct Local;

impl ReconcilePorts for Local {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type RetryQueue = InMemoryRetryQueue;
    type Links = InMemoryLinkStore;
    type Checkpoints = InMemoryCheckpointStore;
    type Budget = InMemoryApiBudget;
}

/// The function's dependencies. The handler borrows it.
pub struct App<X: ReconcilePorts> {
    /// Partner Center.
    pub partner_center: X::PartnerCenter,
    /// The CRM.
    pub crm: X::Crm,
    /// Where the syncs are queued.
    pub retry_queue: X::RetryQueue,
    /// The links.
    pub links: X::Links,
    /// The checkpoint.
    pub checkpoints: X::Checkpoints,
    /// The daily API budget's counter.
    pub budget: X::Budget,
    /// `DAILY_API_BUDGET` / `WEBHOOK_RESERVED_SHARE`.
    pub budget_policy: BudgetPolicy,
    /// The sync settings.
    pub settings: SyncSettings,
    /// The run's bounds.
    pub reconcile: ReconcileSettings,
}

impl<X: ReconcilePorts> std::fmt::Debug for App<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .field("reconcile", &self.reconcile)
            .finish_non_exhaustive()
    }
}

/// The wall clock a run checks its deadline on.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

impl<X: ReconcilePorts> App<X> {
    /// The reconciliation core's view of it.
    pub fn deps(&self) -> ReconcileDeps<'_, X> {
        ReconcileDeps {
            partner_center: &self.partner_center,
            crm: &self.crm,
            retry_queue: &self.retry_queue,
            links: &self.links,
            checkpoints: &self.checkpoints,
            budget: Budget {
                counter: &self.budget,
                policy: &self.budget_policy,
            },
            clock: &WallClock,
        }
    }
}

impl App<Deployed> {
    /// The deployed app: the configured clients and stores (`main`).
    pub async fn build(boot: &Boot, config: &Config) -> Result<Self, BootError> {
        boot.start_metrics("reconcile", &config.sync, config.budget.daily_budget);
        Ok(match &config.sync.store {
            StoreConfig::DynamoDb {
                table_name,
                retry_queue_url,
            } => Self::dynamo(config, &boot.aws().await, table_name, retry_queue_url)?,
            StoreConfig::Memory => {
                let local = App::<Local>::local(config)?;
                Self {
                    partner_center: local.partner_center,
                    crm: local.crm,
                    retry_queue: AnyRetryQueue::Memory(local.retry_queue),
                    links: AnyLinkStore::Memory(local.links),
                    checkpoints: AnyCheckpointStore::Memory(local.checkpoints),
                    budget: AnyApiBudget::Memory(std::sync::Arc::new(local.budget)),
                    budget_policy: local.budget_policy,
                    settings: local.settings,
                    reconcile: local.reconcile,
                }
            }
        })
    }

    /// The DynamoDB table (links, checkpoint, budget) and the SQS retry queue.
    pub fn dynamo(
        config: &Config,
        aws: &AwsClients,
        table: &str,
        retry_queue_url: &str,
    ) -> Result<Self, BuildError> {
        let clients = Clients::<cosell_runtime::Deployed>::from_config(&config.sync)?;
        Ok(Self {
            partner_center: clients.partner_center,
            crm: clients.crm,
            retry_queue: AnyRetryQueue::Sqs(SqsRetryQueue::new(aws.sqs.clone(), retry_queue_url)),
            links: AnyLinkStore::DynamoDb(DynamoLinkStore::new(aws.dynamodb.clone(), table)),
            checkpoints: AnyCheckpointStore::DynamoDb(DynamoCheckpointStore::new(
                aws.dynamodb.clone(),
                table,
            )),
            budget: AnyApiBudget::Dynamo(DynamoApiBudget::new(aws.dynamodb.clone(), table)),
            budget_policy: config.budget,
            settings: config.sync_settings(),
            reconcile: config.reconcile.clone(),
        })
    }
}

impl App<Local> {
    /// HTTP clients and in-memory stores (local runs and tests).
    pub fn local(config: &Config) -> Result<Self, BuildError> {
        let clients = Clients::<cosell_runtime::Local>::from_config(&config.sync)?;
        Ok(Self {
            partner_center: clients.partner_center,
            crm: clients.crm,
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
