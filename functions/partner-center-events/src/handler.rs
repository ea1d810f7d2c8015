//! The Function URL handler: one Partner Center webhook request in, one small JSON answer out.
//!
//! | Step | On failure |
//! |---|---|
//! | the method is `POST` | 405 `method_not_allowed` |
//! | the body is at most `MAX_BODY_BYTES` | 413 `payload_too_large` |
//! | the signature is verified over the raw body bytes, **before** parsing ([`UnverifiedWebhook`]) | 400 `missing_signature_headers`, 401 `unauthorized`, 503 `certificate_unavailable` |
//! | the verified body parses as a [`WebhookEvent`] | 400 `malformed_body` |
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

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use cosell_adapters::http::{UnverifiedWebhook, WebhookAuthErrorKind};
use cosell_domain::budget::handle_partner_center_event_within_budget;
use cosell_domain::ports::{
    AuditLog, CrmStore, IdempotencyStore, LinkStore, PartnerCenter, RetryQueue,
};
use cosell_domain::sync::{Delivery, Handled};
use cosell_domain::webhook::WebhookEvent;
use lambda_http::http::{Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::{Value, json};

use crate::app::App;

/// The deadline assumed when the request carries no Lambda context (local runs, tests).
pub const FALLBACK_DEADLINE: Duration = Duration::from_secs(30);

/// Handle one webhook request (see the [module docs](self)).
///
/// Every expected failure is an `Ok` response; `Err` only if a response cannot be built.
pub async fn handle<P, C, I, Q, A, L>(
    req: Request,
    app: &App<P, C, I, Q, A, L>,
) -> Result<Response<Body>, Error>
where
    P: PartnerCenter,
    C: CrmStore,
    I: IdempotencyStore,
    Q: RetryQueue,
    A: AuditLog,
    L: LinkStore,
{
    let started = Instant::now();
    let now = Utc::now();
    let mut line = LogLine::new(correlation_id(&req));
    let delivery = Delivery {
        correlation_id: line.correlation_id.clone(),
        deadline: deadline(&req, now),
        now,
    };
    let answer = process(req, app, &delivery, &mut line).await;
    line.status = answer.status.as_u16();
    line.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    line.emit();
    answer.into_response()
}

async fn process<P, C, I, Q, A, L>(
    req: Request,
    app: &App<P, C, I, Q, A, L>,
    delivery: &Delivery,
    line: &mut LogLine,
) -> Answer
where
    P: PartnerCenter,
    C: CrmStore,
    I: IdempotencyStore,
    Q: RetryQueue,
    A: AuditLog,
    L: LinkStore,
{
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

    match handle_partner_center_event_within_budget(&app.deps(), app.budget(), &event, delivery)
        .await
    {
        Ok(handled) => {
            line.handled(&handled);
            Answer {
                status: status(handled.http_status()),
                body: json!({ "status": handled.outcome.log_name() }),
            }
        }
        Err(error) => {
            line.outcome = error.log_name();
            line.detail = Some(error.to_string());
            Answer::error(
                status(error.http_status()),
                error.log_name(),
                "the event could not be processed now; deliver it again later",
            )
        }
    }
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

/// The Lambda request id, else the Function URL / API Gateway request id (`crm-events` uses it
/// too).
pub fn correlation_id(req: &Request) -> Option<String> {
    let lambda = req
        .lambda_context_ref()
        .map(|context| context.request_id.trim())
        .filter(|id| !id.is_empty());
    let gateway = || match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.request_id.as_deref(),
        Some(RequestContext::ApiGatewayV1(context)) => context.request_id.as_deref(),
        _ => None,
    };
    lambda.or_else(gateway).map(str::to_owned)
}

/// The Lambda deadline from the context, else `now` + [`FALLBACK_DEADLINE`] (`crm-events` uses
/// it too).
pub fn deadline(req: &Request, now: DateTime<Utc>) -> DateTime<Utc> {
    req.lambda_context_ref()
        .map(|context| context.deadline)
        .filter(|deadline| *deadline > 0)
        .and_then(|millis| i64::try_from(millis).ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        // A deadline that is not in the future is no deadline: `cargo lambda watch` sends a
        // duration (e.g. 600000) instead of epoch milliseconds, which would make every
        // in-progress idempotency lock expire at once and let concurrent duplicates through.
        .filter(|deadline| *deadline > now)
        .unwrap_or_else(|| {
            now + TimeDelta::from_std(FALLBACK_DEADLINE).unwrap_or(TimeDelta::seconds(30))
        })
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The response: a status and a small JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            status,
            body: json!({ "code": code, "message": message }),
        }
    }

    fn into_response(self) -> Result<Response<Body>, Error> {
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json");
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header(header::ALLOW, "POST");
        }
        Ok(builder.body(Body::Text(self.body.to_string()))?)
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
    use lambda_http::Context;

    const FUNCTION_URL_REQUEST: &str = r#"{
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abc",
            "domainName": "abc.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abc",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "test"},
            "requestId": "url-request-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "20/Nov/2026:10:15:30 +0000",
            "timeEpoch": 1795169730000
        },
        "body": "{}",
        "isBase64Encoded": false
    }"#;

    fn request() -> Request {
        lambda_http::request::from_str(FUNCTION_URL_REQUEST).unwrap()
    }

    fn at(millis: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(millis).unwrap()
    }

    #[test]
    fn without_a_lambda_context_the_url_request_id_and_a_30_s_deadline_are_used() {
        let now = at(1_800_000_000_000);
        assert_eq!(correlation_id(&request()).as_deref(), Some("url-request-1"));
        assert_eq!(deadline(&request(), now), at(1_800_000_030_000));
    }

    #[test]
    fn the_lambda_context_gives_the_correlation_id_and_the_deadline() {
        let mut context = Context::default();
        context.request_id = "lambda-1".to_owned();
        context.deadline = 1_800_000_012_345;
        let req = request().with_lambda_context(context);
        assert_eq!(correlation_id(&req).as_deref(), Some("lambda-1"));
        assert_eq!(deadline(&req, at(1_800_000_000_000)), at(1_800_000_012_345));
    }

    #[test]
    fn an_empty_lambda_context_falls_back() {
        let req = request().with_lambda_context(Context::default());
        assert_eq!(correlation_id(&req).as_deref(), Some("url-request-1"));
        let now = at(1_800_000_000_000);
        assert_eq!(deadline(&req, now), at(1_800_000_030_000));
    }

    #[test]
    fn a_deadline_that_is_not_in_the_future_falls_back() {
        // `cargo lambda watch` sends the timeout as a duration (600000 ms), not an epoch time.
        let mut context = Context::default();
        context.deadline = 600_000;
        let req = request().with_lambda_context(context);
        let now = at(1_800_000_000_000);
        assert_eq!(deadline(&req, now), at(1_800_000_030_000));
    }

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

    #[test]
    fn answers_are_small_stable_json() {
        let response = Answer::error(StatusCode::UNAUTHORIZED, "unauthorized", "no")
            .into_response()
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body, json!({ "code": "unauthorized", "message": "no" }));
    }
}
