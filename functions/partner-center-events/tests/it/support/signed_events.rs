//! The sample events of `events/partner-center-events/`: Function URL requests (API Gateway
//! HTTP API v2 payload) carrying Partner Center webhooks, signed with the sandbox's leaf key.
//!
//! Shared by the generator (`examples/sign_events.rs`, which writes the files) and the handler
//! tests (which check the committed files are what it writes). RSA PKCS#1 v1.5 signatures are
//! deterministic, so regenerating changes nothing unless these definitions or the sandbox
//! certificates change.
#![allow(dead_code)]

use cosell_sandbox::pki::{LEAF_CERT_PATH, Pki, ROGUE_CERT_PATH, Signer};
use serde_json::{Value, json};

/// Where the events say the certificate is: the sandbox on its default port. Tests rewrite
/// this prefix to the spawned sandbox (the header is not signed; the body is).
pub const SANDBOX_BASE_URL: &str = "http://127.0.0.1:8700";
/// The partner's referral the `referral-*` events name.
pub const REFERRAL_ID: &str = "6b8f2f5e-3c1a-4e0b-9d7a-1f2e3d4c5b01";
/// Its engagement.
pub const ENGAGEMENT_ID: &str = "0e5c6f7a-8b9c-4d0e-a1f2-3b4c5d6e7f02";
/// Microsoft's referral of the same engagement, named by the `related-referral-*` events.
pub const MICROSOFT_REFERRAL_ID: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c03";
/// The correlation id of the `test-created` event.
pub const TEST_CORRELATION_ID: &str = "c0bfd694-3075-4ec5-9a3c-733d3a890a1f";
/// The Function URL id in the samples.
const URL_ID: &str = "q4n7v2k5x8c3m6b9z1w4r7t0y3u6i9o2";
/// A host that is not on the certificate allow-list.
const FOREIGN_CERT_URL: &str =
    "https://pcnotifications.example.net/cert/pcnotifications-dispatch.microsoft.com.cer";

/// One sample: its file name (without `.json`) and the request JSON.
#[derive(Debug)]
pub struct EventFile {
    /// e.g. `referral-created`.
    pub name: &'static str,
    /// The file's content (pretty JSON, trailing newline).
    pub json: String,
}

/// A Partner Center event body as Partner Center sends it (compact JSON, PascalCase).
fn event_body(event_name: &str, resource_uri: &str, resource_name: &str, changed: &str) -> String {
    json!({
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": null,
        "ResourceChangeUtcDate": changed,
    })
    .to_string()
}

fn referral_uri(id: &str) -> String {
    format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}")
}

/// How a sample is signed.
#[derive(Clone, Copy)]
enum Signature<'a> {
    /// By `signer` over the body.
    Of(Signer),
    /// By the leaf over other bytes (the body was changed after signing).
    OverOther(&'a str),
    /// No signature header.
    Missing,
}

/// A Function URL request carrying `body`.
fn request(
    pki: &Pki,
    request_id: &str,
    body: &str,
    signature: Signature<'_>,
    certificate_url: &str,
) -> Value {
    let mut headers = serde_json::Map::new();
    let signed = match signature {
        Signature::Of(signer) => Some(pki.sign(signer, body.as_bytes())),
        Signature::OverOther(other) => Some(pki.sign(Signer::Leaf, other.as_bytes())),
        Signature::Missing => None,
    };
    if let Some(signed) = signed {
        headers.insert("authorization".into(), json!(format!("Signature {signed}")));
    }
    let rest = json!({
        "content-length": body.len().to_string(),
        "content-type": "application/json; charset=utf-8",
        "host": format!("{URL_ID}.lambda-url.eu-west-1.on.aws"),
        "x-amzn-tls-cipher-suite": "TLS_AES_128_GCM_SHA256",
        "x-amzn-tls-version": "TLSv1.3",
        "x-amzn-trace-id": "Root=1-673ddc52-1f4c3a2b5d6e7f8091a2b3c4",
        "x-forwarded-for": "203.0.113.10",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        "x-ms-certificate-url": certificate_url,
        "x-ms-signature-algorithm": "rsa-sha256",
    });
    if let Value::Object(rest) = rest {
        headers.extend(rest);
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_ID,
            "domainName": format!("{URL_ID}.lambda-url.eu-west-1.on.aws"),
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
        "body": body,
        "isBase64Encoded": false
    })
}

/// Every sample, in file-name order of appearance.
pub fn all() -> Vec<EventFile> {
    let pki = Pki::embedded();
    let leaf = format!("{SANDBOX_BASE_URL}{LEAF_CERT_PATH}");
    let rogue = format!("{SANDBOX_BASE_URL}{ROGUE_CERT_PATH}");
    let created = event_body(
        "referral-created",
        &referral_uri(REFERRAL_ID),
        "referral",
        "2026-11-20T10:15:30.1234567+00:00",
    );
    let updated = event_body(
        "referral-updated",
        &referral_uri(REFERRAL_ID),
        "referral",
        "2026-11-20T11:42:07.7654321+00:00",
    );
    let related_created = event_body(
        "related-referral-created",
        &referral_uri(MICROSOFT_REFERRAL_ID),
        "referral",
        "2026-11-20T12:00:01.0000001+00:00",
    );
    let related_updated = event_body(
        "related-referral-updated",
        &referral_uri(MICROSOFT_REFERRAL_ID),
        "referral",
        "2026-11-21T09:30:45.5000000+00:00",
    );
    let test_created = event_body(
        "test-created",
        &format!(
            "https://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/\
             {TEST_CORRELATION_ID}"
        ),
        "test",
        "2026-11-20T09:00:00.0000000+00:00",
    );
    let unknown = event_body(
        "subscription-updated",
        "https://api.partnercenter.microsoft.com/webhooks/v1/subscriptions/\
         2d1f3e4a-5b6c-4d7e-8f90-a1b2c3d4e5f6",
        "subscription",
        "2026-11-20T09:05:00.0000000+00:00",
    );
    let tampered = created.replace("10:15:30", "10:15:31");
    let malformed = "EventName=referral-created&ResourceUri=not-json".to_owned();

    let samples: [(&'static str, &str, &str, Signature<'_>, &str); 11] = [
        (
            "referral-created",
            "1d0f4a9e-0001-4000-8000-000000000001",
            &created,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "referral-updated",
            "1d0f4a9e-0002-4000-8000-000000000002",
            &updated,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "related-referral-created",
            "1d0f4a9e-0003-4000-8000-000000000003",
            &related_created,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "related-referral-updated",
            "1d0f4a9e-0004-4000-8000-000000000004",
            &related_updated,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "test-created",
            "1d0f4a9e-0005-4000-8000-000000000005",
            &test_created,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "unknown-event",
            "1d0f4a9e-0006-4000-8000-000000000006",
            &unknown,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "bad-signature",
            "1d0f4a9e-0007-4000-8000-000000000007",
            &tampered,
            Signature::OverOther(&created),
            &leaf,
        ),
        (
            "missing-signature",
            "1d0f4a9e-0008-4000-8000-000000000008",
            &created,
            Signature::Missing,
            &leaf,
        ),
        (
            "malformed-body",
            "1d0f4a9e-0009-4000-8000-000000000009",
            &malformed,
            Signature::Of(Signer::Leaf),
            &leaf,
        ),
        (
            "cert-host-not-allowed",
            "1d0f4a9e-000a-4000-8000-00000000000a",
            &created,
            Signature::Of(Signer::Leaf),
            FOREIGN_CERT_URL,
        ),
        (
            "rogue-certificate",
            "1d0f4a9e-000b-4000-8000-00000000000b",
            &created,
            Signature::Of(Signer::Rogue),
            &rogue,
        ),
    ];
    samples
        .into_iter()
        .map(|(name, request_id, body, signature, certificate_url)| {
            let value = request(&pki, request_id, body, signature, certificate_url);
            let mut json = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
            json.push('\n');
            EventFile { name, json }
        })
        .collect()
}
