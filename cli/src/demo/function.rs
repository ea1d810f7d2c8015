//! The two functions, built from embedded defaults the way their `main`s build them from the
//! environment: `partner-center-events` ([`build`]) with [`Config::from_lookup`] over the
//! variables a deployment against the sandbox would have, the same clients
//! (`app::partner_center`, `app::crm`) and [`Stores::in_memory`] (`STORE=memory`); and
//! `crm-events` ([`build_crm_events`]) the same way, with its own variables
//! ([`crm_events_environment`]: the Dataverse `WebhookKey`, the Salesforce endpoint secret and
//! org id, the connector's CRM users).
//!
//! The one difference is the webhook verifier: it also accepts the sandbox's plain-http
//! certificate URL (`WebhookVerifier::with_insecure_hosts`, cargo feature `sandbox` of
//! `cosell-adapters`). It keeps the production trust rules otherwise: the sandbox's root is the
//! only trust anchor, with its intermediate, and the signature is checked over the raw bytes.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use cosell_adapters::http::WebhookVerifier;
use cosell_runtime::{Connector, Local};
use cosell_sandbox::RunningSandbox;
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_ORGANIZATION_ID, PC_REFRESH_TOKEN, SALESFORCE_CONSUMER_KEY,
    SALESFORCE_INTEGRATION_USER_ID, SALESFORCE_INTEGRATION_USERNAME, SALESFORCE_ORG_ID, TENANT_ID,
};
use cosell_sandbox::pki::{INTERMEDIATE_CERT_PEM, ROOT_CERT_PEM, SALESFORCE_APP_KEY_PEM};
use partner_center_events::app;
use partner_center_events::{App, Config};

/// The CRM one function instance syncs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    /// Dynamics 365 (Dataverse).
    Dynamics,
    /// Salesforce.
    Salesforce,
}

impl Crm {
    /// Both, in the order the demo runs them.
    pub const ALL: [Self; 2] = [Self::Dynamics, Self::Salesforce];

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dynamics => "Dynamics 365 (Dataverse)",
            Self::Salesforce => "Salesforce",
        }
    }

    /// The prefix of the bridge's request ids (the Lambda request id stand-in).
    pub(super) fn request_prefix(self) -> &'static str {
        match self {
            Self::Dynamics => "dv",
            Self::Salesforce => "sf",
        }
    }

    /// The prefix of the `crm-events` bridge's request ids.
    pub(super) fn crm_events_prefix(self) -> &'static str {
        match self {
            Self::Dynamics => "crm-dv",
            Self::Salesforce => "crm-sf",
        }
    }

    /// `CRM_KIND` and the CRM's credentials.
    fn variables(self, base_url: &str) -> Vec<(&'static str, String)> {
        let vars: [(&'static str, &str); 5] = match self {
            Self::Dynamics => [
                ("CRM_KIND", "dataverse"),
                ("DATAVERSE_URL", base_url),
                ("DATAVERSE_TENANT_ID", TENANT_ID),
                ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
                ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
            ],
            Self::Salesforce => [
                ("CRM_KIND", "salesforce"),
                ("SALESFORCE_LOGIN_URL", base_url),
                ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
                ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
                ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
            ],
        };
        vars.into_iter()
            .map(|(name, value)| (name, value.to_owned()))
            .collect()
    }
}

/// The embedded configuration: the function's environment for a deployment against the
/// sandbox at `base_url` (every service at one base URL, built-in credentials, in-memory
/// stores). The process environment is not read.
pub fn environment(base_url: &str, crm: Crm) -> HashMap<&'static str, String> {
    let common = [
        ("PC_API_BASE_URL", base_url),
        ("ENTRA_AUTHORITY", base_url),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("PC_PARTNER_ORGANIZATION_ID", PC_ORGANIZATION_ID),
        ("STORE", "memory"),
        ("WEBHOOK_TRUST_ANCHORS_PEM", ROOT_CERT_PEM),
        ("WEBHOOK_INTERMEDIATES_PEM", INTERMEDIATE_CERT_PEM),
    ];
    common
        .into_iter()
        .map(|(name, value)| (name, value.to_owned()))
        .chain(crm.variables(base_url))
        .collect()
}

/// The function's [`App`] for `crm` against `sandbox`, with in-memory stores. No request is
/// sent yet (tokens are fetched on first use).
pub fn build(sandbox: &RunningSandbox, crm: Crm) -> Result<App<Local>> {
    let vars = environment(&sandbox.base_url, crm);
    let config = Config::from_lookup(|name| vars.get(name).cloned())
        .with_context(|| format!("the {} function's configuration", crm.label()))?;
    let connector =
        Connector::local(&config.sync, config.sync_settings()).context("the HTTP clients")?;
    Ok(App {
        connector,
        verifier: WebhookVerifier::with_insecure_hosts(
            app::verifier_settings(&config.webhook),
            [sandbox.addr.to_string()],
        )
        .context("the webhook verifier")?,
        max_body_bytes: config.max_body_bytes,
    })
}

/// The Dataverse webhook's `WebhookKey` the demo gives the sandbox and `crm-events`.
pub const DATAVERSE_WEBHOOK_KEY: &str = "demo-dataverse-webhook-key";
/// The secret in the Salesforce Outbound Message URL the demo gives the sandbox and
/// `crm-events`.
pub const SALESFORCE_ENDPOINT_SECRET: &str = "demo-salesforce-endpoint-secret";

/// `crm-events`' embedded configuration: [`environment`] plus how the CRM's notifications are
/// authenticated and who the connector is in the CRM (the sandbox's application / integration
/// user).
pub fn crm_events_environment(base_url: &str, crm: Crm) -> HashMap<&'static str, String> {
    let mut vars = environment(base_url, crm);
    let own: [(&'static str, &str); 3] = match crm {
        Crm::Dynamics => [
            ("DATAVERSE_WEBHOOK_KEY", DATAVERSE_WEBHOOK_KEY),
            ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
            ("DATAVERSE_TENANT_ID", TENANT_ID),
        ],
        Crm::Salesforce => [
            ("SALESFORCE_ENDPOINT_SECRET", SALESFORCE_ENDPOINT_SECRET),
            ("SALESFORCE_ORGANIZATION_ID", SALESFORCE_ORG_ID),
            (
                "SALESFORCE_CONNECTOR_USER_ID",
                SALESFORCE_INTEGRATION_USER_ID,
            ),
        ],
    };
    vars.extend(own.map(|(name, value)| (name, value.to_owned())));
    vars
}

/// The `crm-events` function's [`crm_events::App`] for `crm` against `sandbox_url`, with
/// in-memory stores, built as its `main` builds it (`STORE=memory`). No request is sent yet.
pub fn build_crm_events(sandbox_url: &str, crm: Crm) -> Result<crm_events::App<Local>> {
    let vars = crm_events_environment(sandbox_url, crm);
    let config = crm_events::Config::from_lookup(|name| vars.get(name).cloned())
        .with_context(|| format!("the {} crm-events configuration", crm.label()))?;
    let connector =
        Connector::local(&config.sync, config.sync_settings()).context("the HTTP clients")?;
    Ok(crm_events::App::new(connector, &config))
}
