//! The demo's client of the sandbox: its control API (`/_sandbox/…`), the Entra token endpoint
//! and the Partner Center webhook registration API, and bounded polling.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cosell_sandbox::identities::{PC_CLIENT_ID, PC_CLIENT_SECRET, PC_WEBHOOKS_AUDIENCE, TENANT_ID};
use reqwest::Method;
use serde_json::{Value, json};

/// How long a wait may take before the demo gives up.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between two looks.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The events the demo registers for.
pub const WEBHOOK_EVENTS: [&str; 4] = [
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

/// The services of the sandbox's request log, in display order.
pub const SERVICES: [&str; 6] = [
    "entra",
    "partner-center",
    "partner-center-webhooks",
    "dataverse",
    "salesforce-auth",
    "salesforce",
];

/// The sandbox at `base_url`.
#[derive(Debug, Clone)]
pub struct SandboxClient {
    base_url: String,
    http: reqwest::Client,
}

impl SandboxClient {
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with an optional JSON body and bearer token; the JSON answer (`null` when
    /// empty). A non-2xx answer is an error naming the call, the status and the answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: expected a 2xx answer, found {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body), None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::PUT, path, Some(body), None).await
    }

    /// An app-only token of the partner's Partner Center app for the webhook registration API,
    /// from the Entra token endpoint (client credentials).
    async fn registration_token(&self) -> Result<String> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", PC_CLIENT_ID)
            .append_pair("client_secret", PC_CLIENT_SECRET)
            .append_pair("scope", &format!("{PC_WEBHOOKS_AUDIENCE}/.default"))
            .finish();
        let path = format!("/{TENANT_ID}/oauth2/v2.0/token");
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["access_token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => bail!(
                "POST {path} (client credentials): expected an access token, found {status} {}",
                body["error"]
            ),
        }
    }

    /// Registers `url` for [`WEBHOOK_EVENTS`] through the registration API (`POST` registers,
    /// `PUT` replaces); the registration's `SubscriberId`.
    pub async fn register_webhook(&self, method: Method, url: &str) -> Result<String> {
        let token = self.registration_token().await?;
        let body = json!({ "WebhookUrl": url, "WebhookEvents": WEBHOOK_EVENTS });
        let answer = self
            .call(
                method,
                "/webhooks/v1/registration",
                Some(&body),
                Some(&token),
            )
            .await?;
        if answer["WebhookUrl"] != url {
            bail!(
                "the webhook registration: expected WebhookUrl {url}, found {}",
                answer["WebhookUrl"]
            );
        }
        Ok(answer["SubscriberId"].as_str().unwrap_or("?").to_owned())
    }

    /// Every webhook delivery so far.
    pub async fn deliveries(&self) -> Result<Vec<Value>> {
        Ok(array(
            &self.get("/_sandbox/deliveries").await?["deliveries"],
        ))
    }

    /// The webhook deliveries of `service` (`dataverse`, `salesforce`, `partner-center`) so far.
    pub async fn deliveries_of(&self, service: &str) -> Result<Vec<Value>> {
        Ok(of_service(self.deliveries().await?, Some(service)))
    }

    /// Waits until at least `at_least` deliveries exist and every one has finished; then
    /// checks each was accepted (a 2xx from the function).
    pub async fn settled_deliveries(&self, at_least: usize) -> Result<Vec<Value>> {
        self.settled(None, at_least).await
    }

    /// [`Self::settled_deliveries`] of `service`'s deliveries only.
    pub async fn settled_deliveries_of(
        &self,
        service: &str,
        at_least: usize,
    ) -> Result<Vec<Value>> {
        self.settled(Some(service), at_least).await
    }

    async fn settled(&self, service: Option<&str>, at_least: usize) -> Result<Vec<Value>> {
        let deliveries = poll(
            &format!("{at_least} finished webhook deliveries"),
            || async {
                let deliveries = of_service(self.deliveries().await?, service);
                let settled = deliveries.len() >= at_least
                    && deliveries
                        .iter()
                        .all(|delivery| delivery["finished"] == true);
                Ok(settled.then_some(deliveries))
            },
        )
        .await;
        let deliveries = match deliveries {
            Ok(deliveries) => deliveries,
            Err(error) => {
                let found = of_service(self.deliveries().await.unwrap_or_default(), service);
                bail!("{error}; found {}", describe_deliveries(&found));
            }
        };
        if let Some(failed) = deliveries
            .iter()
            .find(|delivery| delivery["delivered"] != true)
        {
            bail!(
                "expected every webhook delivery accepted by the function, found {}",
                describe_deliveries(std::slice::from_ref(failed))
            );
        }
        Ok(deliveries)
    }

    /// The sequence number of the newest logged API request (0 when none).
    pub async fn last_request_seq(&self) -> Result<u64> {
        let requests = array(&self.get("/_sandbox/requests").await?["requests"]);
        Ok(requests
            .iter()
            .filter_map(|request| request["seq"].as_u64())
            .max()
            .unwrap_or(0))
    }

    /// API requests logged after `seq`, every service.
    pub async fn requests_since(&self, seq: u64) -> Result<Vec<Value>> {
        let requests = array(&self.get("/_sandbox/requests").await?["requests"]);
        Ok(after(requests, seq))
    }

    /// API requests logged after `seq`, per service (`/_sandbox/requests?service=…`):
    /// service → method → count; services without requests are left out.
    pub async fn calls_by_service_since(
        &self,
        seq: u64,
    ) -> Result<BTreeMap<String, BTreeMap<String, usize>>> {
        let mut tally = BTreeMap::new();
        for service in SERVICES {
            let logged = self
                .get(&format!("/_sandbox/requests?service={service}"))
                .await?;
            let mut methods: BTreeMap<String, usize> = BTreeMap::new();
            for request in after(array(&logged["requests"]), seq) {
                let method = request["method"].as_str().unwrap_or("?").to_owned();
                *methods.entry(method).or_default() += 1;
            }
            if !methods.is_empty() {
                tally.insert(service.to_owned(), methods);
            }
        }
        Ok(tally)
    }
}

/// Polls `probe` every few milliseconds until it finds something, for at most
/// [`POLL_TIMEOUT`].
pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for {what}",
                POLL_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn of_service(deliveries: Vec<Value>, service: Option<&str>) -> Vec<Value> {
    match service {
        Some(service) => deliveries
            .into_iter()
            .filter(|delivery| delivery["service"] == service)
            .collect(),
        None => deliveries,
    }
}

fn array(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn after(requests: Vec<Value>, seq: u64) -> Vec<Value> {
    requests
        .into_iter()
        .filter(|request| request["seq"].as_u64().is_some_and(|s| s > seq))
        .collect()
}

/// `#1 referral-created: 200` per delivery, with every attempt's status.
fn describe_deliveries(deliveries: &[Value]) -> String {
    if deliveries.is_empty() {
        return "no delivery".to_owned();
    }
    deliveries
        .iter()
        .map(|delivery| {
            let attempts: Vec<String> = delivery["attempts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|attempt| match attempt["status"].as_u64() {
                    Some(status) => status.to_string(),
                    None => attempt["error"].as_str().unwrap_or("no answer").to_owned(),
                })
                .collect();
            format!(
                "#{} {} (attempts: {}; finished: {})",
                delivery["id"],
                delivery["label"].as_str().unwrap_or("?"),
                if attempts.is_empty() {
                    "none".to_owned()
                } else {
                    attempts.join(", ")
                },
                delivery["finished"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
