//! Signed Partner Center webhook requests, as the Function URL hands them to the handler
//! (API Gateway HTTP API v2 payload through `lambda_http::request::from_str`), signed with the
//! sandbox's leaf key over the exact body bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use cosell_sandbox::pki::{LEAF_CERT_PATH, Pki, Signer};
use lambda_http::Request;
use serde_json::json;

/// A webhook body and its signature: what Partner Center (re)delivers byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    /// The compact JSON body.
    pub body: String,
    /// Base64 RSA-SHA256 signature of `body`.
    pub signature: String,
}

/// Builds signed events for one sandbox. Each event gets its own `ResourceChangeUtcDate`
/// (so its own idempotency key) and each request its own Lambda request id.
pub struct EventFactory {
    pki: Pki,
    certificate_url: String,
    run_id: String,
    base: DateTime<Utc>,
    changes: AtomicU64,
    requests: AtomicU64,
}

impl std::fmt::Debug for EventFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFactory")
            .field("certificate_url", &self.certificate_url)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// `2026-11-20T10:15:30.1234567+00:00`: Partner Center's seven fractional digits.
pub fn wire_time(at: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}+00:00",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.timestamp_subsec_nanos() / 100
    )
}

/// A Partner Center event body (compact JSON, PascalCase, as delivered).
pub fn event_body(event_name: &str, referral_id: &str, changed: DateTime<Utc>) -> String {
    json!({
        "EventName": event_name,
        "ResourceUri": format!(
            "https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral_id}"
        ),
        "ResourceName": "referral",
        "AuditUri": null,
        "ResourceChangeUtcDate": wire_time(changed),
    })
    .to_string()
}

impl EventFactory {
    /// Events whose certificate URL points at the sandbox at `base_url`.
    pub fn new(base_url: &str, run_id: &str) -> Self {
        Self {
            pki: Pki::embedded(),
            certificate_url: format!("{}{LEAF_CERT_PATH}", base_url.trim_end_matches('/')),
            run_id: run_id.to_owned(),
            base: Utc::now(),
            changes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// A new change of `referral_id` (`referral-created` / `referral-updated`), signed.
    pub fn event(&self, event_name: &str, referral_id: &str) -> SignedEvent {
        let n = self.changes.fetch_add(1, Ordering::Relaxed);
        let offset = TimeDelta::milliseconds(i64::try_from(n).unwrap_or(i64::MAX / 2));
        self.event_at(event_name, referral_id, self.base + offset)
    }

    /// The event of the change of `referral_id` made at `changed` (its `updatedDateTime`, as
    /// Partner Center stamps it), signed.
    pub fn event_at(
        &self,
        event_name: &str,
        referral_id: &str,
        changed: DateTime<Utc>,
    ) -> SignedEvent {
        let body = event_body(event_name, referral_id, changed);
        let signature = self.pki.sign(Signer::Leaf, body.as_bytes());
        SignedEvent { body, signature }
    }

    /// The Function URL request delivering `event`, with a request id of its own.
    pub fn request(&self, event: &SignedEvent) -> anyhow::Result<Request> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("bench-{}-{n:06}", self.run_id);
        let payload = function_url_payload(event, &self.certificate_url, &request_id);
        lambda_http::request::from_str(&payload.to_string())
            .context("the benchmark built a Function URL request lambda_http cannot read")
    }
}

/// The API Gateway HTTP API v2 payload a Function URL invocation carries.
fn function_url_payload(
    event: &SignedEvent,
    certificate_url: &str,
    request_id: &str,
) -> serde_json::Value {
    const URL_ID: &str = "benchq4n7v2k5x8c3m6b9z1w4r7t0y3u6";
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "authorization": format!("Signature {}", event.signature),
            "content-length": event.body.len().to_string(),
            "content-type": "application/json; charset=utf-8",
            "host": format!("{URL_ID}.lambda-url.us-east-1.on.aws"),
            "x-ms-certificate-url": certificate_url,
            "x-ms-signature-algorithm": "rsa-sha256",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_ID,
            "domainName": format!("{URL_ID}.lambda-url.us-east-1.on.aws"),
            "domainPrefix": URL_ID,
            "http": {
                "method": "POST",
                "path": "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "Microsoft-PartnerCenter-Webhooks/1.0"
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "20/Nov/2026:10:15:30 +0000",
            "timeEpoch": 1_795_169_730_000_u64
        },
        "body": event.body,
        "isBase64Encoded": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::{Body, RequestExt};

    #[test]
    fn wire_times_have_seven_fractional_digits() {
        let at = DateTime::parse_from_rfc3339("2026-11-20T10:15:30.123456789Z")
            .expect("a time")
            .with_timezone(&Utc);
        assert_eq!(wire_time(at), "2026-11-20T10:15:30.1234567+00:00");
    }

    #[test]
    fn each_event_is_a_new_change_and_each_request_a_new_invocation() {
        let factory = EventFactory::new("http://127.0.0.1:8700/", "t");
        let id = "6b8f2f5e-3c1a-4e0b-9d7a-1f2e3d4c5b01";
        let first = factory.event("referral-created", id);
        let second = factory.event("referral-created", id);
        assert_ne!(first.body, second.body, "distinct ResourceChangeUtcDate");
        let body: serde_json::Value = serde_json::from_str(&first.body).expect("JSON");
        assert_eq!(body["EventName"], "referral-created");
        assert!(
            body["ResourceUri"]
                .as_str()
                .is_some_and(|uri| uri.ends_with(id))
        );

        let a = factory.request(&first).expect("a request");
        let b = factory.request(&first).expect("a request");
        assert_eq!(a.method(), "POST");
        assert_eq!(
            a.headers()["x-ms-certificate-url"],
            "http://127.0.0.1:8700/cert/pcnotifications-dispatch.microsoft.com.cer"
        );
        assert_eq!(
            a.headers()["authorization"].to_str().expect("ASCII"),
            format!("Signature {}", first.signature)
        );
        assert!(matches!(a.body(), Body::Text(text) if *text == first.body));
        let request_id = |r: &Request| match r.request_context_ref() {
            Some(lambda_http::request::RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
            _ => None,
        };
        assert_ne!(request_id(&a), request_id(&b));
    }
}
