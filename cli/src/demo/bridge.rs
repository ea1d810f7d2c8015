//! A tiny local stand-in for the function's Lambda Function URL: an axum server on a free
//! loopback port that turns each incoming HTTP request into a `lambda_http::Request` (method,
//! URI, headers, the raw body bytes, and a Lambda context carrying a request id) and calls the
//! function's real [`handler::handle`], answering with its response. So a delivery runs the
//! exact verify → parse → sync path a deployed function runs.
//!
//! Requests are handled one at a time, as one Lambda execution environment handles them; this
//! keeps the demo's output deterministic (the echo of our own write-back waits until the
//! delivery that caused it has finished). Every exchange is kept ([`Bridge::exchanges`]) so
//! the demo can show the answers and replay a captured request byte for byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response as AxumResponse};
use lambda_http::{Body, Context, RequestExt as _};
use partner_center_events::LocalApp;
use partner_center_events::handler;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The largest body the bridge passes on (the function itself refuses more than its
/// `MAX_BODY_BYTES`, 64 KiB by default, with 413).
const MAX_FORWARDED_BYTES: usize = 1024 * 1024;

/// One request the bridge passed to the function, and the answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The Lambda request id the bridge gave it (the function's correlation id).
    pub request_id: String,
    /// The body's `EventName`, for display (the function parses the body itself).
    pub event_name: String,
    /// The request headers as received.
    pub headers: Vec<(String, String)>,
    /// The raw body bytes as received.
    pub body: Vec<u8>,
    /// The function's HTTP status.
    pub status: u16,
    /// The function's answer: its `status` (outcome) or error `code`.
    pub outcome: String,
}

struct Shared {
    app: LocalApp,
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
    /// Serves `app` on a free loopback port; request ids are `{prefix}-1`, `{prefix}-2`, …
    pub async fn start(app: LocalApp, prefix: &'static str) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the function's local HTTP bridge")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            app,
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

    /// The function's app (its in-memory stores).
    pub fn app(&self) -> &LocalApp {
        &self.shared.app
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

    let mut lambda_request = lambda_http::Request::new(Body::Binary(body.to_vec()));
    *lambda_request.method_mut() = parts.method;
    *lambda_request.uri_mut() = parts.uri;
    *lambda_request.headers_mut() = parts.headers.clone();
    let mut context = Context::default();
    context.request_id.clone_from(&request_id);
    let lambda_request = lambda_request.with_lambda_context(context);

    let answer = {
        let _one_at_a_time = shared.one_at_a_time.lock().await;
        handler::handle(lambda_request, &shared.app).await
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
    let answer_json: Value = serde_json::from_slice(&answer_bytes).unwrap_or(Value::Null);
    let outcome = answer_json["status"]
        .as_str()
        .or_else(|| answer_json["code"].as_str())
        .unwrap_or("?")
        .to_owned();
    let event_name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|event| event["EventName"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
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
