//! Wiring only: tracing → `Config::from_env` → clients and stores (once) → the Lambda runtime.

use anyhow::Context as _;
use cosell_adapters::AwsClients;
use crm_events::{App, Clients, Config, StoreConfig, Stores, serve};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::from_env().context("crm-events configuration")?;
    let clients = Clients::from_config(&config).context("building the HTTP clients")?;
    let served = match &config.sync.store {
        StoreConfig::DynamoDb {
            table_name,
            retry_queue_url,
        } => {
            let aws = AwsClients::from_env().await;
            let stores = Stores::dynamo(&aws, table_name, retry_queue_url);
            serve(App::new(clients, stores, &config)).await
        }
        StoreConfig::Memory => {
            let stores = Stores::in_memory_with_ttl(config.sync.idempotency_ttl);
            serve(App::new(clients, stores, &config)).await
        }
    };
    served.map_err(|error| anyhow::anyhow!(error))
}
