//! Test scaffolding shared by the HTTP adapter tests: a sandbox (`cosell_sandbox::spawn`) on a
//! free port, a client for its control API (`/_sandbox/…`, every call must succeed) and the
//! adapters' own client, plus the credentials the sandbox's identities accept. Each test file
//! adds its own `impl Harness` block for what only it needs.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use cosell_adapters::http::tokens::DEFAULT_SALESFORCE_SESSION_LIFETIME;
use cosell_adapters::http::{
    EntraClientCredentials, EntraClientCredentialsConfig, HttpClientOptions,
    SalesforceJwtBearerConfig, build_client,
};
use cosell_sandbox::identities::{SALESFORCE_CONSUMER_KEY, TENANT_ID};
use cosell_sandbox::{RunningSandbox, SandboxConfig, pki};
use secrecy::SecretString;
use serde_json::{Value, json};

pub struct Harness {
    pub sandbox: RunningSandbox,
    pub control: reqwest::Client,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with_config(SandboxConfig {
            retry_backoff: Duration::from_millis(10),
            ..SandboxConfig::default()
        })
        .await
    }

    pub async fn with_config(config: SandboxConfig) -> Self {
        Self {
            sandbox: cosell_sandbox::spawn(config).await.unwrap(),
            control: reqwest::Client::new(),
            http: build_client(&HttpClientOptions::default()).unwrap(),
        }
    }

    pub fn base(&self) -> &str {
        &self.sandbox.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// A control-API call that must succeed; its JSON answer (`Null` when there is none).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.control.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) {
        self.send(reqwest::Method::DELETE, path, None).await;
    }

    /// The sandbox's request log for one service (`entra`, `partner-center`, `dataverse`,
    /// `salesforce`, `salesforce-auth`, …).
    pub async fn requests(&self, service: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/_sandbox/requests?service={service}"))
            .await;
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    pub async fn inject(&self, fault: Value) {
        self.post("/_sandbox/faults", fault).await;
    }

    pub async fn advance_clock(&self, seconds: i64) {
        self.post("/_sandbox/clock", json!({ "advance_secs": seconds }))
            .await;
    }

    /// An Entra client-credentials provider against the sandbox's tenant.
    pub fn app_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
    ) -> EntraClientCredentials {
        EntraClientCredentials::new(
            self.http.clone(),
            EntraClientCredentialsConfig {
                authority: self.base().to_owned(),
                tenant: TENANT_ID.to_owned(),
                client_id: client_id.to_owned(),
                client_secret: SecretString::from(secret.to_owned()),
                scope: scope.to_owned(),
                credential_label: None,
            },
        )
        .unwrap()
    }

    /// The Salesforce JWT bearer configuration of the sandbox's connected app for `username`.
    pub fn salesforce_config(&self, username: &str) -> SalesforceJwtBearerConfig {
        SalesforceJwtBearerConfig {
            login_url: self.base().to_owned(),
            consumer_key: SALESFORCE_CONSUMER_KEY.to_owned(),
            username: username.to_owned(),
            private_key_pem: SecretString::from(pki::SALESFORCE_APP_KEY_PEM),
            session_lifetime: DEFAULT_SALESFORCE_SESSION_LIFETIME,
            credential_label: None,
        }
    }
}
