//! Test helpers shared by the sandbox contract tests: a running sandbox, an HTTP client
//! and a webhook listener that hands every received request to the test through a
//! channel (no sleeps: tests await the next delivery with a timeout).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

/// A sandbox on a free port plus a client.
pub struct TestSandbox {
    pub sandbox: RunningSandbox,
    pub http: reqwest::Client,
}

impl TestSandbox {
    pub async fn start() -> Self {
        Self::with_config(SandboxConfig {
            retry_backoff: Duration::from_millis(10),
            ..SandboxConfig::default()
        })
        .await
    }

    pub async fn with_config(config: SandboxConfig) -> Self {
        let sandbox = cosell_sandbox::spawn(config).await.unwrap();
        Self {
            sandbox,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.sandbox.base_url, path)
    }

    /// `GET /_sandbox/requests` (optionally for one service).
    pub async fn requests(&self, service: Option<&str>) -> Vec<Value> {
        let mut url = self.url("/_sandbox/requests");
        if let Some(service) = service {
            url = format!("{url}?service={service}");
        }
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    /// `POST /_sandbox/faults`.
    pub async fn inject(&self, fault: Value) {
        let status = self
            .http
            .post(self.url("/_sandbox/faults"))
            .json(&fault)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
}

/// One request received by the [`Listener`].
#[derive(Debug, Clone)]
pub struct Received {
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// A local webhook receiver. Answers each request with the next scripted status
/// (then `default_status`) and body.
pub struct Listener {
    pub url: String,
    received: Mutex<mpsc::UnboundedReceiver<Received>>,
}

#[derive(Clone)]
struct ListenerState {
    tx: mpsc::UnboundedSender<Received>,
    script: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    default_status: u16,
    body: &'static str,
}

impl Listener {
    /// Always answers 200 with an empty body.
    pub async fn start() -> Self {
        Self::scripted(Vec::new(), 200, "").await
    }

    /// Answers the first requests with `script` statuses, later ones with `default_status`;
    /// every response carries `body`.
    pub async fn scripted(script: Vec<u16>, default_status: u16, body: &'static str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = ListenerState {
            tx,
            script: std::sync::Arc::new(std::sync::Mutex::new(script.into_iter().rev().collect())),
            default_status,
            body,
        };
        let app = Router::new().fallback(post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received: Mutex::new(rx),
        }
    }

    /// The next request, or panics after 10 s.
    pub async fn next(&self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.lock().await.recv())
            .await
            .expect("no webhook arrived within 10 s")
            .expect("listener closed")
    }

    /// `true` when no request arrives within `wait` (for "nothing was sent" checks
    /// after the sandbox reported its deliveries finished).
    pub async fn is_quiet(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.received.lock().await.recv())
            .await
            .is_err()
    }
}

async fn receive(
    State(state): State<ListenerState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let _ = state.tx.send(Received { uri, headers, body });
    let status = state
        .script
        .lock()
        .unwrap()
        .pop()
        .unwrap_or(state.default_status);
    (StatusCode::from_u16(status).unwrap(), state.body)
}
