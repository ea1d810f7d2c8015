//! Wiring only: tracing → secrets → `Config::from_lookup` → clients and stores (once) → runtime.

use anyhow::Context as _;
use cosell_adapters::AwsClients;
use cosell_adapters::aws::secrets;
use lambda_runtime::{run, service_fn};
use partner_center_events::StoreConfig;
use reconcile::{App, Config, LocalApp, ProductionApp, handler};

// One event at a time per instance: a single-threaded runtime spares every I/O wake-up a
// hand-over between threads (its CPU cost is in the README's benchmark section).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    lambda_runtime::tracing::init_default_subscriber();
    // `X_SECRET_ARN` / `X_SSM_PARAMETER` references, read once per cold start.
    let secrets = secrets::resolve_process_env()
        .await
        .context("reading the secrets")?;
    let config =
        Config::from_lookup(|name| secrets.var(name)).context("reconcile configuration")?;
    match &config.sync.store {
        StoreConfig::DynamoDb {
            table_name,
            retry_queue_url,
        } => {
            let aws = AwsClients::from_env().await;
            let app = ProductionApp::production(&config, &aws, table_name, retry_queue_url)
                .context("building the clients")?;
            serve(app).await
        }
        StoreConfig::Memory => {
            serve(LocalApp::local(&config).context("building the clients")?).await
        }
    }
}

/// The runtime loop; the handler borrows `app`.
async fn serve<P, C, Q, L, K, B>(app: App<P, C, Q, L, K, B>) -> anyhow::Result<()>
where
    P: cosell_domain::PartnerCenter,
    C: cosell_domain::CrmStore,
    Q: cosell_domain::RetryQueue,
    L: cosell_domain::LinkStore,
    K: cosell_domain::ports::CheckpointStore,
    B: cosell_domain::ports::ApiBudget,
{
    let app = &app;
    run(service_fn(move |event| handler::handle(event, app)))
        .await
        .map_err(|error| anyhow::anyhow!(error))
}
