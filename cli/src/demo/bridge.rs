//! A tiny local stand-in for a function's Lambda Function URL: an axum server on a free
//! loopback port that turns each incoming HTTP request into a `lambda_http::Request` (method,
//! URI, headers, the raw body bytes, and a Lambda context carrying a request id) and calls the
//! function's real `handler::handle`, answering with its response. So a delivery runs the
//! exact path a deployed function runs. One bridge serves either function ([`Function`]):
//! `partner-center-events` (verify → parse → sync) or `crm-events` (authenticate → parse →
//! sync per notification).
//!
//! Requests are handled one at a time, as one Lambda execution environment handles them; this
//! keeps the demo's output deterministic (the echo of our own write-back waits until the
//! delivery that caused it has finished) and lets the bridge attribute the sandbox's logged
//! API requests to the exchange that made them ([`Exchange::calls`]). Every exchange is kept
//! ([`Bridge::exchanges`]) so the demo can show the answers and replay a captured request
//! byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response as AxumResponse};
use cosell_domain::ports::{AuditEntry, AuditEvent};
use lambda_http::{Body, Context, RequestExt as _};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::sandbox::SandboxClient;

/// The largest body the bridge passes on (the functions themselves refuse more than their
/// `MAX_BODY_BYTES` with 413).
const MAX_FORWARDED_BYTES: usize = 2 * 1024 * 1024;

/// The function behind a bridge, with its in-memory stores.
pub enum Function {
    /// Partner Center webhooks → CRM.
    PartnerCenterEvents(partner_center_events::App<cosell_runtime::Local>),
    /// Dataverse webhooks and Salesforce Outbound Messages → Partner Center.
    CrmEvents(crm_events::App<cosell_runtime::Local>),
}

impl Function {
    async fn handle(
        &self,
        request: lambda_http::Request,
    ) -> Result<lambda_http::Response<Body>, lambda_http::Error> {
        match self {
            Self::PartnerCenterEvents(app) => {
                partner_center_events::handler::handle(request, app).await
            }
            Self::CrmEvents(app) => crm_events::handler::handle(request, app).await,
        }
    }

    /// The function's audit log, oldest first.
    pub fn audit_entries(&self) -> Vec<AuditEntry> {
        match self {
            Self::PartnerCenterEvents(app) => app.connector.stores.audit.entries(),
            Self::CrmEvents(app) => app.connector.stores.audit.entries(),
        }
    }
}

/// One API request the sandbox logged while the function handled an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The sandbox's service name (`partner-center`, `dataverse`, …).
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The path and query.
    pub path: String,
}

/// One request the bridge passed to the function, and the answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The Lambda request id the bridge gave it (the function's correlation id).
    pub request_id: String,
    /// What the body is, for display: a Partner Center `EventName`, a Dataverse
    /// `PrimaryEntityName MessageName`, or `outbound message` (the function parses the body
    /// itself).
    pub event_name: String,
    /// The request headers as received.
    pub headers: Vec<(String, String)>,
    /// The raw body bytes as received.
    pub body: Vec<u8>,
    /// The function's HTTP status.
    pub status: u16,
    /// The function's answer: its `status` (outcome) or error `code`; for a SOAP answer the
    /// outcomes its audit log recorded under the request id, comma-separated.
    pub outcome: String,
    /// The API requests the sandbox logged while the function handled it.
    pub calls: Vec<Call>,
}

impl Exchange {
    /// How many API requests went to `service`.
    pub fn calls_to(&self, service: &str) -> usize {
        self.calls
            .iter()
            .filter(|call| call.service == service)
            .count()
    }

    /// `partner-center POST 1; dataverse GET 2, PATCH 1`, or `none`.
    pub fn describe_calls(&self) -> String {
        describe_calls(&self.calls)
    }
}

struct Shared {
    function: Function,
    sandbox: SandboxClient,
    prefix: &'static str,
    next_id: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
    exchanges: Mutex<Vec<Exchange>>,
}

/// A running bridge; dropping it stops the server.
pub struct Bridge {
    /// e.g. `http://127.0.0.1:41235/`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("url", &self.url).finish()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Bridge {
    /// Serves `function` on a free loopback port; request ids are `{prefix}-1`, `{prefix}-2`,
    /// … `sandbox`'s request log attributes API calls to exchanges.
    pub async fn start(
        function: Function,
        prefix: &'static str,
        sandbox: SandboxClient,
    ) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the function's local HTTP bridge")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            function,
            sandbox,
            prefix,
            next_id: AtomicU64::new(0),
            one_at_a_time: tokio::sync::Mutex::new(()),
            exchanges: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(Self {
            url: format!("http://{addr}/"),
            shared,
            stop: Some(stop),
        })
    }

    /// The function (its in-memory stores).
    pub fn function(&self) -> &Function {
        &self.shared.function
    }

    /// Every exchange so far, oldest first.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared
            .exchanges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Any method, any path: the function decides (it answers 405 to anything but `POST`).
async fn forward(State(shared): State<Arc<Shared>>, request: AxumRequest) -> AxumResponse {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BYTES).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let number = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("{}-{number}", shared.prefix);

    // A Function URL event carries the query twice: in the URI and parsed (what
    // `query_string_parameters_ref` reads, e.g. Dataverse's `?code=`).
    let mut query: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in
        url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
    {
        query
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    let mut lambda_request = lambda_http::Request::new(Body::Binary(body.to_vec()));
    *lambda_request.method_mut() = parts.method;
    *lambda_request.uri_mut() = parts.uri;
    *lambda_request.headers_mut() = parts.headers.clone();
    let mut context = Context::default();
    context.request_id.clone_from(&request_id);
    let mut lambda_request = lambda_request.with_lambda_context(context);
    if !query.is_empty() {
        lambda_request = lambda_request.with_query_string_parameters(query);
    }

    // Held until the exchange is recorded, so exchanges are kept in the order they were
    // handled: the echo our write-back raised waits for the delivery that caused it.
    let _one_at_a_time = shared.one_at_a_time.lock().await;
    let (answer, calls) = {
        // The control API is not logged: these reads do not count as calls.
        let from = shared.sandbox.last_request_seq().await.unwrap_or(u64::MAX);
        let answer = shared.function.handle(lambda_request).await;
        let calls = shared
            .sandbox
            .requests_since(from)
            .await
            .unwrap_or_default()
            .iter()
            .map(|logged| Call {
                service: logged["service"].as_str().unwrap_or("?").to_owned(),
                method: logged["method"].as_str().unwrap_or("?").to_owned(),
                path: logged["path"].as_str().unwrap_or("?").to_owned(),
            })
            .collect();
        (answer, calls)
    };
    let (status, response_parts, answer_bytes) = match answer {
        Ok(response) => {
            let (response_parts, body) = response.into_parts();
            (response_parts.status, Some(response_parts), body.to_vec())
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            br#"{"code":"internal_error"}"#.to_vec(),
        ),
    };
    let outcome = match serde_json::from_slice::<Value>(&answer_bytes) {
        Ok(answer) => answer["status"]
            .as_str()
            .or_else(|| answer["code"].as_str())
            .unwrap_or("?")
            .to_owned(),
        // A SOAP answer names no outcome: the audit log does, per notification.
        Err(_) => soap_outcome(&shared.function.audit_entries(), &request_id, &answer_bytes),
    };
    let event_name = event_name(&body);
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|value| (name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    shared
        .exchanges
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Exchange {
            request_id,
            event_name,
            headers,
            body: body.to_vec(),
            status: status.as_u16(),
            outcome,
            calls,
        });

    match response_parts {
        Some(response_parts) => {
            AxumResponse::from_parts(response_parts, AxumBody::from(answer_bytes))
        }
        None => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            answer_bytes,
        )
            .into_response(),
    }
}

/// What a body is, for display.
fn event_name(body: &[u8]) -> String {
    if let Ok(event) = serde_json::from_slice::<Value>(body) {
        if let Some(name) = event["EventName"].as_str() {
            return name.to_owned();
        }
        if let (Some(entity), Some(message)) = (
            event["PrimaryEntityName"].as_str(),
            event["MessageName"].as_str(),
        ) {
            return format!("{entity} {message}");
        }
    }
    if std::str::from_utf8(body).is_ok_and(|text| text.contains("<notifications")) {
        return "outbound message".to_owned();
    }
    "?".to_owned()
}

/// The outcomes of a SOAP exchange: what the audit log recorded under `request_id` (one per
/// notification; `Received` and `WrittenBack` accompany the others), else `ack` / `fault`.
fn soap_outcome(entries: &[AuditEntry], request_id: &str, answer: &[u8]) -> String {
    let outcomes: Vec<&str> = entries
        .iter()
        .filter(|entry| entry.correlation_id.as_deref() == Some(request_id))
        .filter_map(|entry| match &entry.event {
            AuditEvent::Received
            | AuditEvent::WrittenBack
            | AuditEvent::Redriven
            | AuditEvent::ConflictResolved { .. } => None,
            AuditEvent::DuplicateSkipped => Some("duplicate_skipped"),
            AuditEvent::UnchangedSkipped => Some("unchanged_skipped"),
            AuditEvent::HeldUntilAccepted { .. } => Some("held_until_accepted"),
            AuditEvent::EchoSkipped => Some("echo_skipped"),
            AuditEvent::Created => Some("created"),
            AuditEvent::Updated => Some("updated"),
            AuditEvent::Failed { .. } => Some("needs_attention"),
            AuditEvent::RetryEnqueued { .. } => Some("retry_enqueued"),
        })
        .collect();
    if !outcomes.is_empty() {
        return outcomes.join(",");
    }
    let acknowledged =
        std::str::from_utf8(answer).is_ok_and(|text| text.contains("<Ack>true</Ack>"));
    if acknowledged { "ack" } else { "fault" }.to_owned()
}

/// `partner-center POST 1; dataverse GET 2, PATCH 1`, or `none`.
pub fn describe_calls(calls: &[Call]) -> String {
    let mut tally: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for call in calls {
        *tally
            .entry(call.service.as_str())
            .or_default()
            .entry(call.method.as_str())
            .or_default() += 1;
    }
    if tally.is_empty() {
        return "none".to_owned();
    }
    tally
        .iter()
        .map(|(service, methods)| {
            let methods: Vec<String> = methods
                .iter()
                .map(|(method, count)| format!("{method} {count}"))
                .collect();
            format!("{service} {}", methods.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn entry(correlation_id: &str, event: AuditEvent) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            direction: None,
            referral_id: None,
            crm: None,
            correlation_id: Some(correlation_id.to_owned()),
            event,
        }
    }

    #[test]
    fn a_soap_exchange_reads_its_outcomes_from_the_audit_log_of_its_request_id() {
        let entries = [
            entry("sf-1", AuditEvent::Received),
            entry("sf-1", AuditEvent::Created),
            entry("sf-1", AuditEvent::WrittenBack),
            entry("sf-2", AuditEvent::EchoSkipped),
            entry(
                "sf-3",
                AuditEvent::Failed {
                    reason: "r".into(),
                    fix: "f".into(),
                },
            ),
        ];
        assert_eq!(soap_outcome(&entries, "sf-1", b""), "created");
        assert_eq!(soap_outcome(&entries, "sf-2", b""), "echo_skipped");
        assert_eq!(soap_outcome(&entries, "sf-3", b""), "needs_attention");
        assert_eq!(soap_outcome(&entries, "sf-4", b"<Ack>true</Ack>"), "ack");
        assert_eq!(soap_outcome(&entries, "sf-4", b"<soapenv:Fault>"), "fault");
    }

    #[test]
    fn bodies_are_named_by_kind() {
        assert_eq!(
            event_name(br#"{"EventName":"referral-created"}"#),
            "referral-created"
        );
        assert_eq!(
            event_name(br#"{"PrimaryEntityName":"opportunity","MessageName":"Update"}"#),
            "opportunity Update"
        );
        assert_eq!(
            event_name(b"<soapenv:Envelope><notifications xmlns=\"x\"/></soapenv:Envelope>"),
            "outbound message"
        );
        assert_eq!(event_name(b"{"), "?");
    }

    #[test]
    fn calls_are_tallied_per_service_and_method() {
        let call = |service: &str, method: &str| Call {
            service: service.into(),
            method: method.into(),
            path: "/".into(),
        };
        assert_eq!(describe_calls(&[]), "none");
        assert_eq!(
            describe_calls(&[
                call("partner-center", "POST"),
                call("dataverse", "GET"),
                call("dataverse", "PATCH"),
                call("dataverse", "GET"),
            ]),
            "dataverse GET 2, PATCH 1; partner-center POST 1"
        );
    }
}
