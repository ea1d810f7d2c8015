//! A local, faithful stand-in for the three services cosell-sync talks to:
//!
//! * Microsoft Entra ID token endpoint + Partner Center referrals API, webhook
//!   registration API and **signed** webhook delivery ([`partner_center`], [`entra`]);
//! * the Dataverse Web API and Dataverse webhooks ([`dataverse`]);
//! * Salesforce REST, OAuth (JWT bearer) and Outbound Messages ([`salesforce`]).
//!
//! One HTTP server serves them all (their paths do not overlap), plus a control API
//! under `/_sandbox/` ([`control`]) for tests, benchmarks and the demo: reset, seeding
//! records exactly as the real API returns them, fault injection and a log of every
//! API request received. See `sandbox/README.md` for the endpoint list.

pub mod auth;
pub mod control;
pub mod dataverse;
pub mod delivery;
pub mod entra;
pub mod errors;
pub mod faults;
pub mod identities;
pub mod lambda;
pub mod odata;
pub mod partner_center;
pub mod pki;
pub mod records;
pub mod salesforce;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use state::{AppState, Sandbox};

/// Settings of one sandbox instance.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Base URL under which the sandbox is reachable (used in links, `ResourceUri`s,
    /// `X-MS-Certificate-Url`, `OData-EntityId`...). Filled in by [`spawn`] / `serve`.
    pub base_url: String,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
    /// Delay before the n-th webhook re-delivery is `retry_backoff * n`.
    pub retry_backoff: Duration,
    /// Partner Center: attempts per event ("Partner Center will make 10 attempts").
    pub pc_delivery_attempts: u32,
    /// Dataverse: attempts per event (one retry, and only for 502/503/504).
    pub dataverse_delivery_attempts: u32,
    /// Salesforce: attempts per outbound message before it is dropped (the real
    /// service retries for 24 h; the sandbox bounds it by count).
    pub salesforce_delivery_attempts: u32,
    /// Where Dataverse webhooks go when no `serviceendpoint` is registered.
    pub dataverse_webhook_url: Option<String>,
    /// Where Salesforce Outbound Messages go when none is configured via the control API.
    pub salesforce_outbound_url: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            token_lifetime: Duration::from_secs(3600),
            retry_backoff: Duration::from_millis(50),
            pc_delivery_attempts: 10,
            dataverse_delivery_attempts: 2,
            salesforce_delivery_attempts: 10,
            dataverse_webhook_url: None,
            salesforce_outbound_url: None,
        }
    }
}

/// The sandbox's HTTP routes: every service plus the control API, wrapped in the
/// request log and fault injection layer.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(entra::routes())
        .merge(partner_center::routes())
        .merge(dataverse::routes())
        .merge(salesforce::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::record_and_inject,
        ))
        .merge(control::routes())
        .with_state(state)
}

/// Serves the sandbox on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    mut config: SandboxConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if config.base_url.is_empty() {
        config.base_url = format!("http://{}", listener.local_addr()?);
    }
    let state = Sandbox::new(config);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A sandbox running in the background of the current tokio runtime (tests, demo, benches).
#[derive(Debug)]
pub struct RunningSandbox {
    /// e.g. `http://127.0.0.1:41234`
    pub base_url: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a sandbox on a free loopback port.
pub async fn spawn(config: SandboxConfig) -> std::io::Result<RunningSandbox> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = SandboxConfig {
        base_url: base_url.clone(),
        ..config
    };
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = serve(listener, config, shutdown).await {
            tracing::error!(%error, "sandbox server stopped");
        }
    });
    Ok(RunningSandbox {
        base_url,
        addr,
        stop: Some(stop),
    })
}
