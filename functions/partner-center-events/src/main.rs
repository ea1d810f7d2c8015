//! Wiring only: tracing → `Config::from_env` → clients and stores (once) → the Lambda runtime.

use anyhow::Context as _;
use cosell_adapters::AwsClients;
use cosell_domain::{AuditLog, CrmStore, IdempotencyStore, LinkStore, PartnerCenter, RetryQueue};
use lambda_http::{run, service_fn};
use partner_center_events::{App, Clients, Config, StoreConfig, Stores, handler};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::from_env().context("partner-center-events configuration")?;
    let clients = Clients::from_config(&config).context("building the HTTP clients")?;
    match &config.store {
        StoreConfig::DynamoDb {
            table_name,
            retry_queue_url,
        } => {
            let aws = AwsClients::from_env().await;
            let stores = Stores::dynamo(&aws, table_name, retry_queue_url);
            serve(App::new(clients, stores, &config)).await
        }
        StoreConfig::Memory => serve(App::new(clients, Stores::in_memory(&config), &config)).await,
    }
}

/// The runtime loop; the handler borrows `app`.
async fn serve<P, C, I, Q, A, L>(app: App<P, C, I, Q, A, L>) -> anyhow::Result<()>
where
    P: PartnerCenter,
    C: CrmStore,
    I: IdempotencyStore,
    Q: RetryQueue,
    A: AuditLog,
    L: LinkStore,
{
    let app = &app;
    let service = service_fn(move |req| handler::handle(req, app));
    run(service).await.map_err(|error| anyhow::anyhow!(error))
}
