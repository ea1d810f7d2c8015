//! The request log and fault injection, applied to every service route (not to the
//! control API): each request is classified by service, faults matching it fire a
//! configured number of times, and every request is recorded with its final status.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::errors;
use crate::state::AppState;

/// The external service a sandbox path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// Entra ID token endpoint (`/{tenant}/oauth2/...`).
    Entra,
    /// Referrals API (`/v1.0/engagements/...`).
    PartnerCenter,
    /// Webhook registration API (`/webhooks/v1/...`).
    PartnerCenterWebhooks,
    /// Dataverse Web API (`/api/data/...`).
    Dataverse,
    /// Salesforce REST (`/services/data/...`).
    Salesforce,
    /// Salesforce OAuth (`/services/oauth2/...`).
    SalesforceAuth,
}

impl Service {
    /// Classifies a request path.
    pub fn of_path(path: &str) -> Option<Self> {
        if path.starts_with("/v1.0/engagements") {
            Some(Self::PartnerCenter)
        } else if path.starts_with("/webhooks/v1") {
            Some(Self::PartnerCenterWebhooks)
        } else if path.starts_with("/api/data/") {
            Some(Self::Dataverse)
        } else if path.starts_with("/services/data/") {
            Some(Self::Salesforce)
        } else if path.starts_with("/services/oauth2/") {
            Some(Self::SalesforceAuth)
        } else if path.contains("/oauth2/") {
            Some(Self::Entra)
        } else {
            None
        }
    }
}

/// A fault to inject: the next `count` matching requests get `status` (with the
/// service's documented error body and an optional `Retry-After`), after an optional
/// delay. With no `status`, matching requests are only delayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub service: Service,
    /// Only this HTTP method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only paths starting with this prefix (any when absent).
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    /// How many matching requests the fault applies to.
    pub count: u32,
    /// `Retry-After` header value in seconds.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Delay before answering, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Delay after the request was handled (its change applied and logged in the request
    /// log) and before the response is sent, in milliseconds: a caller that dies meanwhile
    /// made the change without seeing the answer.
    #[serde(default)]
    pub delay_after_ms: Option<u64>,
    /// Optional error code (Salesforce `errorCode`, Dataverse `error.code`).
    #[serde(default)]
    pub error_code: Option<String>,
    /// Optional error message replacing the default one.
    #[serde(default)]
    pub message: Option<String>,
}

impl Fault {
    fn matches(&self, service: Service, method: &Method, path: &str) -> bool {
        self.count > 0
            && self.service == service
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
    }
}

/// Active faults, in the order they were added.
#[derive(Debug, Default)]
pub struct FaultList {
    faults: Vec<Fault>,
}

impl FaultList {
    pub fn add(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    pub fn active(&self) -> Vec<Fault> {
        self.faults
            .iter()
            .filter(|f| f.count > 0)
            .cloned()
            .collect()
    }

    /// Takes one use of the first matching fault.
    fn take(&mut self, service: Service, method: &Method, path: &str) -> Option<Fault> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.matches(service, method, path))?;
        fault.count -= 1;
        Some(fault.clone())
    }
}

/// One API request as the sandbox saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    pub seq: u64,
    pub service: Service,
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub status: u16,
    /// `true` when the status came from an injected fault.
    pub injected: bool,
}

/// Every API request received since the last reset.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: Vec<RequestRecord>,
}

impl RequestLog {
    fn push(&mut self, mut record: RequestRecord) {
        record.seq = self.records.len() as u64 + 1;
        self.records.push(record);
    }

    pub fn all(&self) -> &[RequestRecord] {
        &self.records
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }
}

/// Middleware: classify, inject a matching fault or run the handler, record the outcome.
pub async fn record_and_inject(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let Some(service) = Service::of_path(&path) else {
        return next.run(req).await;
    };
    let fault = state.world().faults.take(service, &method, &path);
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay_ms) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (response, injected) = match fault.as_ref().and_then(|f| f.status.map(|s| (f, s))) {
        Some((fault, status)) => (injected_response(service, fault, status), true),
        None => (next.run(req).await, false),
    };
    state.world().requests.push(RequestRecord {
        seq: 0,
        service,
        method: method.to_string(),
        path: path_and_query,
        status: response.status().as_u16(),
        injected,
    });
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay_after_ms) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    response
}

fn injected_response(service: Service, fault: &Fault, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = fault
        .message
        .clone()
        .unwrap_or_else(|| match (status, fault.retry_after) {
            (StatusCode::TOO_MANY_REQUESTS, Some(s)) => {
                format!("Rate limit is exceeded. Try again in {s} seconds.")
            }
            _ => status
                .canonical_reason()
                .unwrap_or("Injected fault")
                .to_owned(),
        });
    let mut response =
        errors::service_error(service, status, fault.error_code.as_deref(), &message)
            .into_response();
    if let Some(seconds) = fault.retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    response
}
