//! What the handler runs with ([`App`]): the shared [`Connector`] plus the webhook verifier
//! and the body cap, built once per cold start.

use cosell_adapters::http::{WebhookVerifier, WebhookVerifierConfig};
use cosell_domain::ports::Ports;
use cosell_runtime::config::WebhookConfig;
use cosell_runtime::{Boot, BootError, BuildError, Connector, Deployed};

use crate::config::Config;

/// The function's dependencies. The handler borrows it.
pub struct App<X: Ports> {
    /// The ports, the mapping, the settings and the budget.
    pub connector: Connector<X>,
    /// Verifies webhook signatures.
    pub verifier: WebhookVerifier,
    /// Larger webhook bodies are answered 413.
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
    /// The app of a built connector, with the verifier and body cap of `config`.
    pub fn new(connector: Connector<X>, config: &Config) -> Result<Self, BuildError> {
        Ok(Self {
            connector,
            verifier: verifier(&config.webhook)?,
            max_body_bytes: config.max_body_bytes,
        })
    }
}

impl App<Deployed> {
    /// The deployed app: the configured clients and stores (`main`).
    pub async fn build(boot: &Boot, config: &Config) -> Result<Self, BootError> {
        let connector = boot.connector(&config.sync, config.sync_settings()).await?;
        let daily_budget = connector.metering.policy.daily_budget;
        boot.start_metrics("partner-center-events", &config.sync, daily_budget);
        Ok(Self::new(connector, config)?)
    }
}

/// The webhook verifier: https certificate hosts from the allow-list only. A `sandbox` build
/// also accepts `SANDBOX_INSECURE_CERT_HOSTS` over plain http; in any other build that list is
/// always empty (the configuration refuses it), and nothing switches verification off.
pub fn verifier(config: &WebhookConfig) -> Result<WebhookVerifier, BuildError> {
    let settings = verifier_settings(config);
    #[cfg(feature = "sandbox")]
    if !config.insecure_cert_hosts.is_empty() {
        return Ok(WebhookVerifier::with_insecure_hosts(
            settings,
            &config.insecure_cert_hosts,
        )?);
    }
    Ok(WebhookVerifier::new(settings)?)
}

/// The verifier's settings: the configured anchors, intermediates and https hosts, and the
/// adapter's download timeout and size cap.
pub fn verifier_settings(config: &WebhookConfig) -> WebhookVerifierConfig {
    let mut settings = WebhookVerifierConfig::new(
        config.trust_anchors_pem.as_str(),
        config.intermediates_pem.as_str(),
    );
    settings.allowed_hosts.clone_from(&config.cert_hosts);
    settings
        .allowed_subject_names
        .clone_from(&config.cert_subjects);
    settings
}
