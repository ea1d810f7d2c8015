//! The Function URL handler: one Partner Center webhook request in, one small JSON answer out.
//!
//! | Step | On failure |
//! |---|---|
//! | the method is `POST` | 405 `method_not_allowed` |
//! | the body is at most `MAX_BODY_BYTES` | 413 `payload_too_large` |
//! | the signature is verified over the raw body bytes, **before** parsing ([`UnverifiedWebhook`]) | 400 `missing_signature_headers`, 401 `unauthorized`, 503 `certificate_unavailable` |
//! | the verified body parses as a [`WebhookEvent`] | 400 `malformed_body` |
//! | nothing panics out of the processing ([`contain`]: a panic is caught, logged with its location) | 500 `internal_error` (Partner Center delivers again) |
//! | the sync core runs within the daily API budget ([`handle_partner_center_event_within_budget`]: over budget, the sync is queued for the next UTC day) | 503 `idempotency_unavailable` / `retry_not_scheduled` (Partner Center delivers again) |
//!
//! A handled event answers [`Outcome::http_status`] (200, or 409 while another invocation
//! holds the same delivery) with `{"status": "<outcome>"}`; failures answer
//! `{"code", "message"}` with a fixed message, never internals. Nothing is stored for a
//! rejected request. Every request logs exactly one line (`correlation_id`, `event_name`,
//! `referral_id`, `outcome`, `status`, `elapsed_ms`, warnings) and never the body, contact
//! data or tokens.
//!
//! [`Outcome::http_status`]: cosell_domain::sync::Outcome::http_status

use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use cosell_adapters::http::{UnverifiedWebhook, WebhookAuthErrorKind};
use cosell_domain::budget::handle_partner_center_event_within_budget;
use cosell_domain::metrics::Metric;
use cosell_domain::ports::Ports;
use cosell_domain::sync::{Delivery, Handled};
use cosell_domain::webhook::WebhookEvent;
use cosell_runtime::edge::{Answer, Panicked, contain, correlation_id, deadline, status};
use cosell_runtime::metrics;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Error, Request, Response};
use serde_json::json;

use crate::app::App;

/// Handle one webhook request (see the [module docs](self)).
///
/// Every expected failure is an `Ok` response; `Err` only if a response cannot be built.
pub async fn handle<X: Ports>(req: Request, app: &App<X>) -> Result<Response<Body>, Error> {
    let started = Instant::now();
    let now = Utc::now();
    let mut line = LogLine::new(correlation_id(&req));
    let delivery = Delivery {
        correlation_id: line.correlation_id.clone(),
        deadline: deadline(&req, now),
        now,
    };
    let answer = match contain(process(req, app, &delivery, &mut line)).await {
        Ok(answer) => answer,
        Err(panicked) => internal_error(&mut line, &panicked),
    };
    line.status = answer.status.as_u16();
    line.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    line.emit();
    if answer.status.is_client_error() && answer.status != StatusCode::CONFLICT {
        metrics::count(Metric::Rejected, 1);
    }
    metrics::flush(started.elapsed());
    answer.into_response()
}

async fn process<X: Ports>(
    req: Request,
    app: &App<X>,
    delivery: &Delivery,
    line: &mut LogLine,
) -> Answer {
    if req.method() != Method::POST {
        line.outcome = "method_not_allowed";
        return Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Partner Center webhooks are POST requests",
        );
    }
    if req.body().len() > app.max_body_bytes {
        line.outcome = "payload_too_large";
        line.detail = Some(format!(
            "body of {} bytes, limit {}",
            req.body().len(),
            app.max_body_bytes
        ));
        return Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than a Partner Center event can be",
        );
    }

    let (parts, body) = req.into_parts();
    let unverified = UnverifiedWebhook::from_headers(&parts.headers, raw_bytes(body));
    let verified = match unverified.verify(&app.verifier).await {
        Ok(verified) => verified,
        Err(error) => {
            let (code, message) = match error.kind() {
                WebhookAuthErrorKind::BadRequest => (
                    "missing_signature_headers",
                    "the Partner Center signature headers are missing",
                ),
                WebhookAuthErrorKind::Unauthorized => (
                    "unauthorized",
                    "the webhook signature could not be verified",
                ),
                WebhookAuthErrorKind::Unavailable => (
                    "certificate_unavailable",
                    "the signing certificate could not be fetched; deliver the event again later",
                ),
            };
            line.outcome = code;
            line.detail = Some(error.reason().to_owned());
            if matches!(error.kind(), WebhookAuthErrorKind::Unavailable) {
                metrics::count(Metric::DeliveryFailed, 1);
            }
            return Answer::error(status(error.status_code()), code, message);
        }
    };
    let event = match verified.event() {
        Ok(event) => event,
        Err(error) => {
            line.outcome = "malformed_body";
            // The parser's position and category only (its message may quote the body).
            line.detail = Some(format!(
                "{:?} error at line {} column {}",
                error.classify(),
                error.line(),
                error.column()
            ));
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                "the body is not a Partner Center webhook event",
            );
        }
    };
    line.describe(&event);

    match handle_partner_center_event_within_budget(
        &app.connector.deps(),
        app.connector.budget(),
        &event,
        delivery,
    )
    .await
    {
        Ok(handled) => {
            line.handled(&handled);
            Answer::json(
                status(handled.http_status()),
                json!({ "status": handled.outcome.log_name() }),
            )
        }
        Err(error) => {
            line.outcome = error.log_name();
            line.detail = Some(error.to_string());
            metrics::count(Metric::DeliveryFailed, 1);
            Answer::error(
                status(error.http_status()),
                error.log_name(),
                "the event could not be processed now; deliver it again later",
            )
        }
    }
}

/// A panic while processing the event (caught by [`contain`]): 500, so Partner Center delivers
/// it again; the instance goes on.
fn internal_error(line: &mut LogLine, panicked: &Panicked) -> Answer {
    line.outcome = "internal_error";
    metrics::count(Metric::InternalError, 1);
    line.detail = Some(panicked.to_string());
    Answer::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the event could not be processed now; deliver it again later",
    )
}

/// The raw body bytes as received (`lambda_http` has already decoded a base64-encoded body).
fn raw_bytes(body: Body) -> Bytes {
    match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        // `Body` is non-exhaustive.
        other => Bytes::copy_from_slice(&other),
    }
}

/// The one log line of a request.
#[derive(Debug, Default)]
struct LogLine {
    correlation_id: Option<String>,
    event_name: Option<String>,
    referral_id: Option<String>,
    outcome: &'static str,
    status: u16,
    elapsed_ms: u64,
    /// The CRM record created or updated.
    crm_record: Option<String>,
    /// Why it was rejected, or the outcome's stable code (no body, contact data or tokens).
    detail: Option<String>,
    warnings: Vec<String>,
}

impl LogLine {
    fn new(correlation_id: Option<String>) -> Self {
        Self {
            correlation_id,
            outcome: "unknown",
            ..Self::default()
        }
    }

    fn describe(&mut self, event: &WebhookEvent) {
        self.event_name = Some(event.event_name.as_str().to_owned());
        self.referral_id = event.referral_id().ok().map(|id| id.to_string());
    }

    fn handled(&mut self, handled: &Handled) {
        metrics::outcome(&handled.outcome);
        self.outcome = handled.outcome.log_name();
        self.crm_record = handled.outcome.crm().map(ToString::to_string);
        self.detail = handled.outcome.log_detail();
        self.warnings = handled.warnings.iter().map(ToString::to_string).collect();
    }

    fn emit(&self) {
        let correlation_id = self.correlation_id.as_deref().unwrap_or_default();
        let event_name = self.event_name.as_deref().unwrap_or_default();
        let referral_id = self.referral_id.as_deref().unwrap_or_default();
        let crm_record = self.crm_record.as_deref().unwrap_or_default();
        let detail = self.detail.as_deref().unwrap_or_default();
        let warnings = self.warnings.len();
        let warning_messages = self.warnings.join(" | ");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    correlation_id,
                    event_name,
                    referral_id,
                    outcome = self.outcome,
                    status = self.status,
                    elapsed_ms = self.elapsed_ms,
                    crm_record,
                    detail,
                    warnings,
                    warning_messages,
                    "partner center webhook handled"
                )
            };
        }
        if self.status >= 500 {
            line!(error);
        } else if self.status >= 400 || !self.warnings.is_empty() {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_body_bytes_are_passed_through_unchanged() {
        assert_eq!(raw_bytes(Body::Empty), Bytes::new());
        assert_eq!(
            raw_bytes(Body::Text("{\"a\":1}".into())),
            Bytes::from("{\"a\":1}")
        );
        assert_eq!(
            raw_bytes(Body::Binary(vec![0, 159, 255])),
            Bytes::from(vec![0, 159, 255])
        );
    }
}
