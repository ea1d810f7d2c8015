//! `cosell-sandbox --port 8700`: serves the local Partner Center / Dataverse / Salesforce
//! stand-in until Ctrl-C.

use std::time::Duration;

use clap::Parser;
use cosell_sandbox::SandboxConfig;

/// Local stand-in for Partner Center, Dataverse and Salesforce.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Port to listen on (loopback).
    #[arg(long, default_value_t = 8700, env = "SANDBOX_PORT")]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Base URL the sandbox advertises (defaults to http://<bind>:<port>).
    #[arg(long)]
    base_url: Option<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// Delay unit between webhook re-deliveries, in milliseconds.
    #[arg(long, default_value_t = 50)]
    retry_backoff_ms: u64,
    /// Deliver Dataverse webhooks here (besides registered service endpoints).
    #[arg(long)]
    dataverse_webhook_url: Option<String>,
    /// Deliver Salesforce Outbound Messages here.
    #[arg(long)]
    salesforce_outbound_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port)).await?;
    let config = SandboxConfig {
        base_url: args
            .base_url
            .unwrap_or_else(|| format!("http://{}:{}", args.bind, args.port)),
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        retry_backoff: Duration::from_millis(args.retry_backoff_ms),
        dataverse_webhook_url: args.dataverse_webhook_url,
        salesforce_outbound_url: args.salesforce_outbound_url,
        ..SandboxConfig::default()
    };
    tracing::info!(base_url = %config.base_url, "sandbox listening");
    cosell_sandbox::serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
