//! The Lambda edge the Function URL functions share: the correlation id and deadline of a
//! request, and the small answers they send.

use std::time::Duration;

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
