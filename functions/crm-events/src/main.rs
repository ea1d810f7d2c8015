//! Wiring only: boot (logs, secrets) → configuration → app (once) → the Lambda runtime.

use crm_events::{App, Config, handler};
use lambda_http::{run, service_fn};

// One event at a time per instance: a single-threaded runtime spares every I/O wake-up a
// hand-over between threads (its CPU cost is in the README's benchmark section).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let boot = cosell_runtime::boot().await?;
    let config = Config::from_lookup(|name| boot.var(name))?;
    let app = App::build(&boot, &config).await?;
    let app = &app;
    run(service_fn(move |req| handler::handle(req, app)))
        .await
        .map_err(|error| anyhow::anyhow!(error))
}
