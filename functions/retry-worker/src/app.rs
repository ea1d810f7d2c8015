//! What the handler runs with ([`App`]): the shared [`Connector`] plus the worker's queues and
//! settings, built once per cold start.

use cosell_domain::ports::Ports;
use cosell_runtime::{Boot, BootError, Connector, Deployed};

use crate::config::{Config, WorkerSettings};
use crate::queue::SqsWorkerQueues;

/// The function's dependencies (`M`: the retry queue and DLQ as the worker sees them). The
/// handler borrows it.
pub struct App<X: Ports, M> {
    /// The ports, the mapping, the settings and the budget.
    pub connector: Connector<X>,
    /// The retry queue's messages and the dead-letter queue.
    pub queues: M,
    /// The worker's settings.
    pub worker: WorkerSettings,
}

impl<X: Ports, M> std::fmt::Debug for App<X, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("connector", &self.connector)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl<X: Ports, M> App<X, M> {
    /// The app of a built connector and queues, with the worker settings of `config`.
    pub fn new(connector: Connector<X>, queues: M, config: &Config) -> Self {
        Self {
            connector,
            queues,
            worker: config.worker,
        }
    }
}

impl App<Deployed, SqsWorkerQueues> {
    /// The deployed app: the configured clients and stores and the SQS queues (`main`).
    pub async fn build(boot: &Boot, config: &Config) -> Result<Self, BootError> {
        let connector = boot.connector(&config.sync, config.sync_settings()).await?;
        let daily_budget = connector.metering.policy.daily_budget;
        boot.start_metrics("retry-worker", &config.sync, daily_budget);
        let aws = boot.aws().await;
        let queues = SqsWorkerQueues::new(aws.sqs, &config.retry_queue_url, &config.dlq_url);
        Ok(Self::new(connector, queues, config))
    }
}
