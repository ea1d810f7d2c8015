//! cosell-runtime: what every connector function shares between its `main` and its handler —
//! the typed configuration ([`config`]), the clients ([`clients`]) and stores ([`stores`])
//! built once per cold start, the [`Connector`] a sync runs with, the Lambda edge ([`edge`]:
//! correlation id, deadline, answers) and [`boot`].
//!
//! Dependency rule: `cosell-domain` ← `cosell-adapters` ← `cosell-runtime` ← functions / cli.
//! No function crate depends on another.
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | `SyncConfig` (the variables every function reads), `Env`, `ConfigError` |
//! | [`clients`] | `Clients`, the Partner Center and CRM adapters from the configuration |
//! | [`stores`] | `Stores`, the `Any*` stores (DynamoDB / SQS or memory) and the [`Deployed`] port set |
//! | [`connector`] | [`Connector`]: ports, mapping, settings and budget; `deps()` for the sync core |
//! | [`edge`] | `correlation_id`, `deadline`, `Answer` |
//! | [`metrics`] | the CloudWatch metrics in Embedded Metric Format: one document per invocation |

pub mod clients;
pub mod config;
pub mod connector;
pub mod edge;
pub mod metrics;
pub mod stores;

use cosell_adapters::aws::secrets::{self, ResolvedSecrets, SecretError};
use cosell_adapters::aws::{AnyApiBudget, AwsClients, DynamoApiBudget};
use cosell_domain::ParseError;
use cosell_domain::budget::BudgetPolicy;
use cosell_domain::sync::SyncSettings;

/// The allocator of every binary that links this crate (the functions, the benchmark, the
/// CLI): mimalloc. Handling a delivery is mostly building and dropping small JSON values and
/// strings; parsing a 6.5 KB Dataverse webhook body into a JSON tree and dropping it takes
/// about 17 µs with mimalloc against 27 µs with glibc's `malloc` on the same machine (README,
/// crate choices). Declared here rather than in each `main` so that the benchmark, which links
/// the handlers, measures them on the allocator they are deployed with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use clients::{BuildError, Clients};
pub use config::{ConfigError, Env, StoreConfig, SyncConfig};
pub use connector::Connector;
pub use stores::{Deployed, Local, Stores};

/// Why a function could not start. `main` reports it and exits; Lambda shows it as an
/// initialisation error.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A `X_SECRET_ARN` / `X_SSM_PARAMETER` reference could not be read.
    #[error("reading the secrets: {0}")]
    Secrets(#[from] SecretError),
    /// A variable is missing or invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// `DAILY_API_BUDGET` / `WEBHOOK_RESERVED_SHARE` is invalid.
    #[error("configuration (API budget): {0}")]
    Budget(#[from] ParseError),
    /// A client could not be built.
    #[error("building the clients: {0}")]
    Build(#[from] BuildError),
}

/// A started function: JSON logs on, the secrets resolved (once per cold start).
#[derive(Debug)]
pub struct Boot {
    secrets: ResolvedSecrets,
}

/// Turn on the logs (JSON per `AWS_LAMBDA_LOG_FORMAT`, level per `AWS_LAMBDA_LOG_LEVEL` /
/// `RUST_LOG`) and resolve the `X_SECRET_ARN` / `X_SSM_PARAMETER` references.
pub async fn boot() -> Result<Boot, BootError> {
    lambda_http::tracing::init_default_subscriber();
    edge::install_panic_hook();
    Ok(Boot {
        secrets: secrets::resolve_process_env().await?,
    })
}

impl Boot {
    /// A variable's value: from its secret reference, else the environment.
    pub fn var(&self, name: &str) -> Option<String> {
        self.secrets.var(name)
    }

    /// Turn on the metrics of `function` (one of `cosell_domain::metrics::FUNCTIONS`) for the
    /// CRM `sync` names, with the budget's percentage of `daily_budget`: one Embedded Metric
    /// Format document per invocation on stdout ([`metrics`]).
    pub fn start_metrics(&self, function: &'static str, sync: &SyncConfig, daily_budget: u64) {
        metrics::start(function, sync.crm.kind(), daily_budget);
    }

    /// The AWS SDK clients (region and credentials from the standard variables).
    pub async fn aws(&self) -> AwsClients {
        AwsClients::from_env().await
    }

    /// The connector `sync` configures, with `settings`: HTTP clients, the configured stores
    /// and the daily API budget's counter (the table's, or memory with `STORE=memory`).
    pub async fn connector(
        &self,
        sync: &SyncConfig,
        settings: SyncSettings,
    ) -> Result<Connector<Deployed>, BootError> {
        let policy = BudgetPolicy::from_lookup(|name| self.var(name))?;
        let clients = Clients::from_config(sync)?;
        let (stores, counter): (Stores<Deployed>, _) = match &sync.store {
            StoreConfig::DynamoDb {
                table_name,
                retry_queue_url,
            } => {
                let aws = self.aws().await;
                let counter = DynamoApiBudget::new(aws.dynamodb.clone(), table_name.as_str());
                (
                    Stores::dynamo(&aws, table_name, retry_queue_url),
                    AnyApiBudget::from(counter),
                )
            }
            StoreConfig::Memory => (
                Stores::<Local>::in_memory(sync.idempotency_ttl).into(),
                AnyApiBudget::memory(),
            ),
        };
        let connector = Connector::new(clients, stores, sync.mapping.clone(), settings);
        Ok(connector.with_budget(counter, policy))
    }
}
