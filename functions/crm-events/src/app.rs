//! What the handler runs with ([`App`]): the shared [`Connector`] plus the endpoint's
//! authentication and the body cap, built once per cold start.

use cosell_domain::ports::Ports;
use cosell_runtime::{Boot, BootError, Connector, Deployed};

use crate::config::{Config, EndpointConfig};

/// The function's dependencies. The handler borrows it.
pub struct App<X: Ports> {
    /// The ports, the mapping, the settings and the budget.
    pub connector: Connector<X>,
    /// How each CRM's deliveries are authenticated.
    pub endpoint: EndpointConfig,
    /// Larger bodies are answered 413.
    pub max_body_bytes: usize,
}

impl<X: Ports> std::fmt::Debug for App<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("connector", &self.connector)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<X: Ports> App<X> {
    /// The app of a built connector, with the endpoint and body cap of `config`.
    pub fn new(connector: Connector<X>, config: &Config) -> Self {
        Self {
            connector,
            endpoint: config.endpoint.clone(),
            max_body_bytes: config.max_body_bytes,
        }
    }
}

impl App<Deployed> {
    /// The deployed app: the configured clients and stores (`main`).
    pub async fn build(boot: &Boot, config: &Config) -> Result<Self, BootError> {
        let connector = boot.connector(&config.sync, config.sync_settings()).await?;
        let daily_budget = connector.metering.policy.daily_budget;
        boot.start_metrics("crm-events", &config.sync, daily_budget);
        Ok(Self::new(connector, config))
    }
}
