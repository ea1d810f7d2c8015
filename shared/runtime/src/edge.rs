//! The Lambda edge the functions share: the correlation id and deadline of a request, the
//! small answers they send, and [`contain`], which keeps a panic inside one event.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;

use chrono::{DateTime, TimeDelta, Utc};
use lambda_http::http::{StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::{Value, json};

/// The deadline assumed when the request carries no Lambda context (local runs, tests).
pub const FALLBACK_DEADLINE: Duration = Duration::from_secs(30);

/// The Lambda request id, else the Function URL / API Gateway request id.
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

/// The Lambda deadline from the context, else `now` + [`FALLBACK_DEADLINE`].
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

/// The status of `code`, 500 for a code that is none.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A response: a status, a content type and a small body.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// A JSON error: `{"code", "message"}` with a fixed message, never internals.
    pub fn error(status: StatusCode, code: &str, message: &str) -> Self {
        Self::json(status, json!({ "code": code, "message": message }))
    }

    /// A SOAP (XML) answer.
    pub fn soap(status: StatusCode, body: String) -> Self {
        Self {
            status,
            content_type: "text/xml; charset=utf-8",
            body,
        }
    }

    /// The HTTP response (`Allow: POST` on a 405).
    pub fn into_response(self) -> Result<Response<Body>, Error> {
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type);
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header(header::ALLOW, "POST");
        }
        Ok(builder.body(Body::Text(self.body))?)
    }
}

/// An event's processing panicked. The panic was caught: the instance goes on with the next
/// event, and the event is answered as a failure so its source delivers it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event's processing stopped on an internal error ({location})")]
pub struct Panicked {
    /// Where it panicked (`file:line`), never the panic's message (it may quote input).
    pub location: String,
}

/// Run one event's future, catching a panic inside it ([`Panicked`]): one odd event must never
/// take the instance down, and a release build unwinds (never `panic = "abort"`). The
/// idempotency key the event held stays in progress until its deadline, after which a
/// redelivery takes it over (the crash path the sync core already handles).
pub async fn contain<F: Future>(event: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(event)
        .catch_unwind()
        .await
        .map_err(|_| Panicked {
            location: LAST_PANIC
                .with(|last| last.take())
                .unwrap_or_else(|| "unknown".to_owned()),
        })
}

thread_local! {
    /// The location of this thread's last panic, recorded by [`install_panic_hook`].
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replace the default panic hook (which prints the panic's message, possibly quoting input, as
/// a plain line) by one JSON log line with the location only, and remember the location for
/// [`contain`]'s answer.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|at| format!("{}:{}", at.file(), at.line()))
            .unwrap_or_else(|| "unknown".to_owned());
        tracing::error!(
            panic_location = location.as_str(),
            "panicked; the event is refused"
        );
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(location));
    }));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn a_panic_inside_an_event_is_contained_and_the_next_event_runs() {
        let panicking = async {
            let input = "Duplicate record\u{a0}jane@contoso.com";
            // A byte index inside a multi-byte character: the kind of bug a test should catch.
            #[allow(clippy::string_slice)]
            let cut = &input[..17];
            cut.len()
        };
        let caught = futures::executor::block_on(contain(panicking));
        let error = caught.unwrap_err();
        assert!(!error.to_string().contains("jane"), "{error}");
        assert_eq!(futures::executor::block_on(contain(async { 7 })), Ok(7));
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
