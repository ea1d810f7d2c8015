//! The Lambda Runtime API one instance talks to (`AWS_LAMBDA_RUNTIME_API`), as documented in
//! docs/aws.md#the-local-lambda: the instance long-polls `invocation/next`, then posts the
//! invocation's `response` or `error`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Function, InvokeError, Running};

/// The state of one instance's Runtime API.
#[derive(Debug, Clone)]
struct Slot {
    function: Arc<Function>,
    instance: usize,
}

/// Serves instance `instance`'s Runtime API on `listener` until the local Lambda stops (open
/// long polls are dropped then, and the instance is stopped anyway).
pub(super) async fn serve(
    listener: TcpListener,
    function: Arc<Function>,
    instance: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(Slot { function, instance });
    tokio::select! {
        result = axum::serve(listener, app) => {
            if let Err(error) = result {
                tracing::error!(%error, "local Lambda Runtime API stopped");
            }
        }
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

/// `GET …/invocation/next`: the next queued invocation (waits for one), with the headers the
/// runtime reads: request id, deadline, function ARN, trace id.
async fn next(State(slot): State<Slot>) -> Response {
    let f = &slot.function;
    f.polled[slot.instance].store(true, Ordering::SeqCst);
    f.changed.notify_waiters();
    loop {
        let invocation = { f.next.lock().await.recv().await };
        let Some(invocation) = invocation else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        // Its caller gave up (a dropped HTTP connection, a stopped event source).
        if invocation.answer.is_closed() {
            continue;
        }
        let timeout = f.spec.timeout;
        let deadline_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(timeout)
            .as_millis();
        if let Ok(mut running) = f.running.lock() {
            running.insert(
                invocation.id.clone(),
                Running {
                    instance: slot.instance,
                    answer: invocation.answer,
                },
            );
        }
        // Lambda stops the execution environment of an invocation that outlives the timeout.
        let timer = Arc::clone(f);
        let id = invocation.id.clone();
        let instance = slot.instance;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(run) = timer.take(&id) {
                let _ = run.answer.send(Err(InvokeError::TimedOut(timeout)));
                timer.kill[instance].notify_one();
            }
        });
        let mut headers = HeaderMap::new();
        let header = |value: String| {
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        };
        headers.insert(
            "lambda-runtime-aws-request-id",
            header(invocation.id.clone()),
        );
        headers.insert(
            "lambda-runtime-deadline-ms",
            header(deadline_ms.to_string()),
        );
        headers.insert(
            "lambda-runtime-invoked-function-arn",
            header(format!(
                "arn:aws:lambda:us-east-1:000000000000:function:{}",
                f.spec.name
            )),
        );
        headers.insert(
            "lambda-runtime-trace-id",
            header(format!("Root=1-{}", invocation.id)),
        );
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        return (StatusCode::OK, headers, invocation.payload).into_response();
    }
}

/// `POST …/invocation/{id}/response`: the invocation's result.
async fn response(State(slot): State<Slot>, Path(id): Path<String>, body: Bytes) -> Response {
    answer(&slot, &id, Ok(body))
}

/// `POST …/invocation/{id}/error`: the function's error report (`errorType`, `errorMessage`).
async fn error(State(slot): State<Slot>, Path(id): Path<String>, body: Bytes) -> Response {
    let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |key: &str| report[key].as_str().unwrap_or_default().to_owned();
    answer(
        &slot,
        &id,
        Err(InvokeError::Function {
            error_type: text("errorType"),
            message: text("errorMessage"),
        }),
    )
}

fn answer(slot: &Slot, id: &str, result: Result<Bytes, InvokeError>) -> Response {
    match slot.function.take(id) {
        Some(run) => {
            let _ = run.answer.send(result);
            (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
        }
        // Too late (timed out) or never given out: Lambda answers the same way.
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "errorType": "InvalidRequestID",
                "errorMessage": "no invocation with this request id is running"
            })),
        )
            .into_response(),
    }
}

/// `POST …/init/error`: the instance failed to start; it exits next and is counted then.
async fn init_error(State(slot): State<Slot>, body: Bytes) -> Response {
    tracing::warn!(
        function = %slot.function.spec.name,
        report = %String::from_utf8_lossy(&body),
        "a local Lambda instance failed to initialise"
    );
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}
