//! Wiring only: tracing → secrets → `Config::from_lookup` → clients and stores (once) → runtime.

use anyhow::Context as _;
use cosell_adapters::AwsClients;
use cosell_adapters::aws::{AnyApiBudget, DynamoApiBudget, secrets};
use cosell_domain::budget::BudgetPolicy;
use cosell_domain::{AuditLog, CrmStore, IdempotencyStore, LinkStore, PartnerCenter, RetryQueue};
use lambda_http::{run, service_fn};
use partner_center_events::{App, Clients, Config, StoreConfig, Stores, handler};

// One event at a time per instance: a single-threaded runtime spares every I/O wake-up a
// hand-over between threads (its CPU cost is in the README's benchmark section).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    // `X_SECRET_ARN` / `X_SSM_PARAMETER` references, read once per cold start.
    let secrets = secrets::resolve_process_env()
        .await
        .context("reading the secrets")?;
    let config = Config::from_lookup(|name| secrets.var(name))
        .context("partner-center-events configuration")?;
    let budget = BudgetPolicy::from_lookup(|name| secrets.var(name))
        .context("partner-center-events configuration (API budget)")?;
    let clients = Clients::from_config(&config).context("building the HTTP clients")?;
    match &config.store {
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
            let app = App::new(clients, Stores::in_memory(&config), &config);
            serve(app.with_budget(AnyApiBudget::memory(), budget)).await
        }
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
