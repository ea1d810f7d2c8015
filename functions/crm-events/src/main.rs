//! Wiring only: tracing → secrets → `Config::from_lookup` → clients and stores (once) → runtime.

use anyhow::Context as _;
use cosell_adapters::AwsClients;
use cosell_adapters::aws::{AnyApiBudget, DynamoApiBudget, secrets};
use cosell_domain::budget::BudgetPolicy;
use crm_events::{App, Clients, Config, StoreConfig, Stores, serve};

// One event at a time per instance: a single-threaded runtime spares every I/O wake-up a
// hand-over between threads (its CPU cost is in the README's benchmark section).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    // `X_SECRET_ARN` / `X_SSM_PARAMETER` references, read once per cold start.
    let secrets = secrets::resolve_process_env()
        .await
        .context("reading the secrets")?;
    let config =
        Config::from_lookup(|name| secrets.var(name)).context("crm-events configuration")?;
    let budget = BudgetPolicy::from_lookup(|name| secrets.var(name))
        .context("crm-events configuration (API budget)")?;
    let clients = Clients::from_config(&config).context("building the HTTP clients")?;
    let served = match &config.sync.store {
        StoreConfig::DynamoDb {
            table_name,
            retry_queue_url,
        } => {
            let aws = AwsClients::from_env().await;
            let stores = Stores::dynamo(&aws, table_name, retry_queue_url);
            let counter = DynamoApiBudget::new(aws.dynamodb.clone(), table_name.as_str());
            serve(App::new(clients, stores, &config).with_budget(counter.into(), budget)).await
        }
        StoreConfig::Memory => {
            let stores = Stores::in_memory_with_ttl(config.sync.idempotency_ttl);
            let app = App::new(clients, stores, &config);
            serve(app.with_budget(AnyApiBudget::memory(), budget)).await
        }
    };
    served.map_err(|error| anyhow::anyhow!(error))
}
