//! Contract tests of the Entra ID and Partner Center stand-ins: token flows, the referrals
//! API, the webhook registration API and signed webhook delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Listener, Received, TestSandbox};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET,
    PC_ORGANIZATION_ID, PC_ORGANIZATION_NAME, PC_REFRESH_TOKEN, PC_USER_UPN, TENANT_ID,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};

const REFERRALS_SCOPE: &str = "https://api.partner.microsoft.com/.default";
const WEBHOOKS_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
const REFERRALS: &str = "/v1.0/engagements/referrals";
const REGISTRATION: &str = "/webhooks/v1/registration";
const ALL_REFERRAL_EVENTS: [&str; 4] = [
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

// ---------------------------------------------------------------------------------------
// Helpers

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/partner-center/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    raw: Vec<u8>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

async fn call(
    ts: &TestSandbox,
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let url = if url.starts_with("http") {
        url.to_owned()
    } else {
        ts.url(url)
    };
    let mut request = ts.http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.bytes().await.unwrap().to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        raw,
        body,
    }
}

async fn get(ts: &TestSandbox, url: &str, token: &str) -> Reply {
    call(ts, Method::GET, url, Some(token), &[], None).await
}

async fn send_json(
    ts: &TestSandbox,
    method: Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Reply {
    call(
        ts,
        method,
        url,
        Some(token),
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn patch(
    ts: &TestSandbox,
    id: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let url = format!("{REFERRALS}/{id}");
    call(
        ts,
        Method::PATCH,
        &url,
        Some(token),
        headers,
        Some(body.as_bytes().to_vec()),
    )
    .await
}

async fn control(ts: &TestSandbox, method: Method, path: &str, body: Option<Value>) -> Reply {
    call(
        ts,
        method,
        path,
        None,
        &[],
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

/// POSTs a form to the Entra token endpoint (`v1` = `/oauth2/token`).
async fn token_request(ts: &TestSandbox, tenant: &str, v1: bool, pairs: &[(&str, &str)]) -> Reply {
    let path = if v1 {
        format!("/{tenant}/oauth2/token")
    } else {
        format!("/{tenant}/oauth2/v2.0/token")
    };
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let response = ts
        .http
        .post(ts.url(&path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.bytes().await.unwrap().to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        raw,
        body,
    }
}

async fn refresh(ts: &TestSandbox, refresh_token: &str, scope: &str) -> Reply {
    token_request(
        ts,
        TENANT_ID,
        false,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", PC_CLIENT_ID),
            ("client_secret", PC_CLIENT_SECRET),
            ("refresh_token", refresh_token),
            ("scope", scope),
        ],
    )
    .await
}

/// A delegated referrals token for the built-in Referral admin.
async fn user_token(ts: &TestSandbox) -> String {
    let reply = refresh(ts, PC_REFRESH_TOKEN, REFERRALS_SCOPE).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["access_token"].as_str().unwrap().to_owned()
}

/// An app-only token of the Partner Center app.
async fn app_token(ts: &TestSandbox, scope: &str) -> String {
    let reply = token_request(
        ts,
        TENANT_ID,
        false,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", PC_CLIENT_ID),
            ("client_secret", PC_CLIENT_SECRET),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["access_token"].as_str().unwrap().to_owned()
}

/// Registers `url` for `events` (POST, app-only token).
async fn register(ts: &TestSandbox, url: &str, events: &[&str], ms_header: bool) -> Reply {
    let token = app_token(ts, WEBHOOKS_SCOPE).await;
    let body = json!({
        "WebhookUrl": url,
        "WebhookEvents": events,
        "SignatureTokenToMsSignatureHeader": ms_header,
    });
    let reply = send_json(ts, Method::POST, REGISTRATION, &token, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply
}

async fn create_referral(ts: &TestSandbox, token: &str) -> Value {
    let reply = send_json(
        ts,
        Method::POST,
        REFERRALS,
        token,
        &fixture("create-referral-request.json"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn microsoft_referral(ts: &TestSandbox, overrides: Value) -> Value {
    let reply = control(
        ts,
        Method::POST,
        "/_sandbox/partner-center/referrals/microsoft-initiated",
        Some(overrides),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn advance_clock(ts: &TestSandbox, seconds: i64) {
    let reply = control(
        ts,
        Method::POST,
        "/_sandbox/clock",
        Some(json!({ "advance_secs": seconds })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Polls `/_sandbox/deliveries` (bounded) until `count` deliveries labelled `label` have
/// finished; returns them.
async fn finished_deliveries(ts: &TestSandbox, label: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = control(ts, Method::GET, "/_sandbox/deliveries", None).await;
        let finished: Vec<Value> = reply.body["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["label"] == label && d["finished"] == true)
            .cloned()
            .collect();
        if finished.len() >= count {
            return finished;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries of {label} not finished in time: {:?}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies a received webhook as the docs prescribe: headers, certificate download, chain
/// to the sandbox root through the intermediate, `O=Microsoft Corporation`, RSA-SHA256
/// signature over the raw body.
async fn verify(ts: &TestSandbox, received: &Received) -> Result<(), String> {
    let signature = received
        .header("authorization")
        .or_else(|| received.header("x-ms-signature"))
        .ok_or("no signature header")?;
    let signature = signature
        .strip_prefix("Signature ")
        .ok_or("signature scheme is not 'Signature'")?;
    let signature = STANDARD
        .decode(signature)
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let algorithm = received
        .header("x-ms-signature-algorithm")
        .ok_or("no X-MS-Signature-Algorithm")?;
    if !algorithm.eq_ignore_ascii_case("rsa-sha256") {
        return Err(format!("unexpected algorithm {algorithm}"));
    }
    let cert_url = received
        .header("x-ms-certificate-url")
        .ok_or("no X-MS-Certificate-Url")?;
    let leaf = ts
        .http
        .get(&cert_url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?
        .to_vec();
    let pem = |path: &str| {
        let url = ts.url(path);
        let http = ts.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let root = CertificateDer::from_pem_slice(pem("/_sandbox/pki/root.pem").await.as_bytes())
        .map_err(|e| format!("root PEM: {e}"))?;
    let intermediate =
        CertificateDer::from_pem_slice(pem("/_sandbox/pki/intermediate.pem").await.as_bytes())
            .map_err(|e| format!("intermediate PEM: {e}"))?;
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| e.to_string())?;
    let leaf_der = CertificateDer::from(leaf.clone());
    let cert = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        std::slice::from_ref(&intermediate),
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("certificate chain: {e}"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&leaf).map_err(|e| format!("certificate: {e}"))?;
    let organization = parsed
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or_default();
    if organization != "Microsoft Corporation" {
        return Err(format!("certificate organization is {organization:?}"));
    }
    cert.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        &received.body,
        &signature,
    )
    .map_err(|e| format!("signature: {e}"))
}

/// Checks the documented event shape and returns the referral id of `ResourceUri`.
fn event_referral_id(ts: &TestSandbox, received: &Received, event: &str) -> String {
    let body = received.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "EventName",
            "ResourceUri",
            "ResourceName",
            "AuditUri",
            "ResourceChangeUtcDate"
        ]
    );
    assert_eq!(body["EventName"], event);
    assert_eq!(body["ResourceName"], "referral");
    assert_eq!(body["AuditUri"], Value::Null);
    let uri = body["ResourceUri"].as_str().unwrap();
    let prefix = ts.url("/engagements/v1/referrals/");
    assert!(uri.starts_with(&prefix), "{uri}");
    let date = body["ResourceChangeUtcDate"].as_str().unwrap();
    assert!(date.ends_with("+00:00"), "{date}");
    let fraction = date.split('.').nth(1).unwrap().trim_end_matches("+00:00");
    assert_eq!(fraction.len(), 7, "{date}");
    assert!(!received.text().contains(": "), "body is compact JSON");
    assert_eq!(
        received.header("content-type").as_deref(),
        Some("application/json")
    );
    uri[prefix.len()..].to_owned()
}

fn is_wire_time(text: &str) -> bool {
    let Some((seconds, fraction)) = text.split_once('.') else {
        return false;
    };
    seconds.len() == 19
        && fraction.len() == 8
        && fraction.ends_with('Z')
        && fraction[..7].chars().all(|c| c.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------
// Entra ID

#[tokio::test]
async fn refresh_token_flow_issues_delegated_tokens_and_rotates_the_refresh_token() {
    let ts = TestSandbox::start().await;
    let reply = refresh(&ts, PC_REFRESH_TOKEN, REFERRALS_SCOPE).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 3600);
    assert_eq!(reply.header("cache-control"), Some("no-store, no-cache"));
    let rotated = reply.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, PC_REFRESH_TOKEN);
    let token = reply.body["access_token"].as_str().unwrap();
    assert_eq!(get(&ts, REFERRALS, token).await.status, StatusCode::OK);

    // The rotated token works, and so does the old one until revoked.
    for refresh_token in [rotated.as_str(), PC_REFRESH_TOKEN] {
        let reply = refresh(&ts, refresh_token, REFERRALS_SCOPE).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }

    // v1 endpoint with `resource`: string expires_in, resource echo, expires_on.
    let reply = token_request(
        &ts,
        "common",
        true,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", PC_CLIENT_ID),
            ("client_secret", PC_CLIENT_SECRET),
            ("refresh_token", &rotated),
            ("resource", "https://api.partner.microsoft.com"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["expires_in"], "3600");
    assert_eq!(reply.body["resource"], "https://api.partner.microsoft.com");
    let expires_on: i64 = reply.body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires_on > chrono::Utc::now().timestamp());
    let token = reply.body["access_token"].as_str().unwrap();
    assert_eq!(get(&ts, REFERRALS, token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_tenant_client_or_secret_is_invalid_client() {
    let ts = TestSandbox::start().await;
    for (tenant, client, secret, code) in [
        (TENANT_ID, PC_CLIENT_ID, "wrong", "AADSTS7000215"),
        (
            "00000000-0000-4000-8000-000000000000",
            PC_CLIENT_ID,
            PC_CLIENT_SECRET,
            "AADSTS90002",
        ),
        (
            TENANT_ID,
            "99999999-9999-4999-8999-999999999999",
            PC_CLIENT_SECRET,
            "AADSTS700016",
        ),
    ] {
        let reply = token_request(
            &ts,
            tenant,
            false,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret),
                ("scope", REFERRALS_SCOPE),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(reply.body["error"], "invalid_client");
        let description = reply.body["error_description"].as_str().unwrap();
        assert!(description.starts_with(code), "{description}");
    }
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_get_401() {
    let ts = TestSandbox::start().await;
    let reply = call(&ts, Method::GET, REFERRALS, None, &[], None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["statusCode"], 401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        get(&ts, REFERRALS, "not-a-token").await.status,
        StatusCode::UNAUTHORIZED
    );

    // A webhooks-audience token is not a referrals token.
    let webhooks = app_token(&ts, WEBHOOKS_SCOPE).await;
    let reply = get(&ts, REFERRALS, &webhooks).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.message().contains("audience"), "{}", reply.message());

    let token = user_token(&ts).await;
    assert_eq!(get(&ts, REFERRALS, &token).await.status, StatusCode::OK);
    advance_clock(&ts, 3700).await;
    let reply = get(&ts, REFERRALS, &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.message().contains("expired"), "{}", reply.message());
}

#[tokio::test]
async fn revoked_refresh_tokens_fail_with_invalid_grant_until_a_new_one_is_issued() {
    let ts = TestSandbox::start().await;
    let reply = control(
        &ts,
        Method::POST,
        "/_sandbox/entra/revoke-refresh-tokens",
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["revoked"], 1);

    let reply = refresh(&ts, PC_REFRESH_TOKEN, REFERRALS_SCOPE).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"], "invalid_grant");
    assert_eq!(reply.body["error_codes"], json!([50173]));
    let description = reply.body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(
            "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth \
             token is needed. The user might have changed or reset their password."
        ),
        "{description}"
    );

    let reply = refresh(&ts, "0.never-issued", REFERRALS_SCOPE).await;
    assert_eq!(reply.body["error"], "invalid_grant");

    let reply = control(
        &ts,
        Method::POST,
        "/_sandbox/entra/refresh-tokens",
        Some(json!({ "upn": PC_USER_UPN })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let fresh = reply.body["refresh_token"].as_str().unwrap();
    assert_eq!(
        refresh(&ts, fresh, REFERRALS_SCOPE).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn app_only_tokens_are_refused_by_referrals_but_accepted_by_webhook_registration() {
    let ts = TestSandbox::start().await;
    let app = app_token(&ts, REFERRALS_SCOPE).await;
    let reply = get(&ts, REFERRALS, &app).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.message().contains("App+User"), "{}", reply.message());

    let app = app_token(&ts, WEBHOOKS_SCOPE).await;
    let reply = get(&ts, "/webhooks/v1/registration/events", &app).await;
    assert_eq!(reply.status, StatusCode::OK);
    let events = reply.body.as_array().unwrap();
    for event in ALL_REFERRAL_EVENTS.iter().chain(&["test-created"]) {
        assert!(events.contains(&json!(event)), "{event}");
    }

    // The Dataverse app gets a token for the sandbox's Dataverse URL (trailing slash or not),
    // and nothing for Partner Center.
    let base = ts.sandbox.base_url.clone();
    for scope in [format!("{base}/.default"), format!("{base}//.default")] {
        let reply = token_request(
            &ts,
            TENANT_ID,
            false,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", DATAVERSE_CLIENT_ID),
                ("client_secret", DATAVERSE_CLIENT_SECRET),
                ("scope", &scope),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{scope}: {:?}", reply.body);
    }
    let reply = token_request(
        &ts,
        TENANT_ID,
        false,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", DATAVERSE_CLIENT_ID),
            ("client_secret", DATAVERSE_CLIENT_SECRET),
            ("scope", REFERRALS_SCOPE),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn roles_decide_who_may_read_and_write_referrals() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let user_path = format!("/_sandbox/partner-center/users/{PC_USER_UPN}");

    let reply = control(&ts, Method::PUT, &user_path, Some(json!({ "roles": [] }))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = get(&ts, REFERRALS, &token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.message().contains("ReferralAdmin or ReferralUser"),
        "{}",
        reply.message()
    );

    control(
        &ts,
        Method::PUT,
        &user_path,
        Some(json!({ "roles": ["ReferralUser"] })),
    )
    .await;
    assert_eq!(get(&ts, REFERRALS, &token).await.status, StatusCode::OK);
    let reply = send_json(
        &ts,
        Method::POST,
        REFERRALS,
        &token,
        &fixture("create-referral-request.json"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.message().contains("required role: ReferralAdmin"),
        "{}",
        reply.message()
    );

    control(
        &ts,
        Method::PUT,
        &user_path,
        Some(json!({ "roles": ["Referrals admin"] })),
    )
    .await;
    create_referral(&ts, &token).await;
}

// ---------------------------------------------------------------------------------------
// Referrals API

#[tokio::test]
async fn create_returns_the_documented_shape_and_get_returns_it() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let created = create_referral(&ts, &token).await;
    let documented = fixture("create-referral-response.json");
    for member in documented.as_object().unwrap().keys() {
        assert!(created.get(member).is_some(), "missing member {member}");
    }
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["organizationId"], PC_ORGANIZATION_ID);
    assert_eq!(created["organizationName"], PC_ORGANIZATION_NAME);
    assert_eq!(
        (&created["status"], &created["substatus"]),
        (&json!("Active"), &json!("Accepted"))
    );
    assert_eq!(created["direction"], "Outgoing");
    assert_eq!(created["externalReferenceId"], Value::Null);
    assert_eq!(created["details"]["dealValue"], 50000);
    assert!(is_wire_time(created["createdDateTime"].as_str().unwrap()));
    assert_eq!(created["createdDateTime"], created["updatedDateTime"]);
    let etag = created["eTag"].as_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 38,
        "{etag}"
    );
    let self_uri = created["links"]["self"]["uri"].as_str().unwrap();
    assert_eq!(
        self_uri,
        ts.url(&format!("/v1.0/engagments/referrals/{id}"))
    );
    let related = created["links"]["relatedReferrals"]["uri"]
        .as_str()
        .unwrap();
    assert!(related.ends_with(&format!(
        "$filter=engagementId eq '{}'",
        created["engagementId"].as_str().unwrap()
    )));

    let reply = get(&ts, &format!("{REFERRALS}/{id}"), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("etag"), Some(etag));
    assert!(reply.header("request-id").is_some());
    let mut body = reply.body.clone();
    let context = body
        .as_object_mut()
        .unwrap()
        .remove("@odata.context")
        .unwrap();
    assert!(
        context
            .as_str()
            .unwrap()
            .contains("/v1.0/engagments/referrals/$metadata#Referrals/$entity")
    );
    assert_eq!(body, created);

    let reply = get(
        &ts,
        &format!("{REFERRALS}/4111fffc-f9ee-4d53-bba6-569135228642"),
        &token,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["statusCode"], 404);

    // The second referral of a Shared deal reuses the engagement id.
    let mut second = fixture("create-referral-request.json");
    second["engagementId"] = created["engagementId"].clone();
    second["target"] = json!([{ "type": "BusinessProfileLocation", "id": "msft" }]);
    let reply = send_json(&ts, Method::POST, REFERRALS, &token, &second).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["engagementId"], created["engagementId"]);
    assert_ne!(reply.body["id"], created["id"]);
}

#[tokio::test]
async fn create_accepts_pascal_case_and_rejects_bad_bodies() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let pascal = json!({
        "Name": "Pascal deal",
        "ExternalReferenceID": "crm-0001",
        "ReferralType": "independent",
        "CustomerProfile": { "Name": "Fabrikam", "Address": { "City": "Oslo", "Country": "NO" } },
        "Consent": { "ConsentToToShareInfoWithOthers": true, "ConsentToContact": true },
        "Details": { "DealValue": "2500.50", "Currency": "EUR" }
    });
    let reply = send_json(&ts, Method::POST, REFERRALS, &token, &pascal).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let created = reply.body;
    assert_eq!(created["type"], "Independent");
    assert_eq!(created["name"], "Pascal deal");
    assert_eq!(created["externalReferenceId"], "crm-0001");
    assert_eq!(created["customerProfile"]["address"]["country"], "NO");
    assert_eq!(created["details"]["dealValue"], 2500.5);
    assert!(created.get("Details").is_none());

    let reply = call(
        &ts,
        Method::POST,
        REFERRALS,
        Some(&token),
        &[],
        Some(b"{\"name\":".to_vec()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["statusCode"], 400);

    for member in ["type", "customerProfile", "consent", "details"] {
        let mut body = fixture("create-referral-request.json");
        body.as_object_mut().unwrap().remove(member);
        let reply = send_json(&ts, Method::POST, REFERRALS, &token, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{member}");
        assert!(
            reply.message().contains(&format!("'{member}'")),
            "{}",
            reply.message()
        );
    }
    let reply = send_json(&ts, Method::POST, REFERRALS, &token, &json!([1, 2])).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_services_co_sell_referral_needs_its_partner_role_solution_area_and_play() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let co_sell = || {
        let mut body = fixture("create-referral-request.json");
        body["type"] = json!("Shared");
        body["inviteContext"] = json!({ "assistanceRequestCode": "ProofOfConceptOrDemo" });
        body["partnerRole"] = json!("Implementation");
        body["solutionArea"] = json!("Security");
        body["solutionPlay"] = json!("Data Security");
        body
    };
    let reply = send_json(&ts, Method::POST, REFERRALS, &token, &co_sell()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["solutionPlay"], "Data Security");
    assert_eq!(reply.body["partnerRole"], "Implementation");

    for member in ["partnerRole", "solutionArea", "solutionPlay"] {
        for broken in [None, Some(json!("  ")), Some(json!({ "id": "Security" }))] {
            let mut body = co_sell();
            match &broken {
                None => body.as_object_mut().unwrap().remove(member),
                Some(value) => body
                    .as_object_mut()
                    .unwrap()
                    .insert(member.into(), value.clone()),
            };
            let reply = send_json(&ts, Method::POST, REFERRALS, &token, &body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{member} {broken:?}");
            assert!(
                reply.message().contains(&format!("'{member}'")),
                "{}",
                reply.message()
            );
        }
    }
    // A referral that asks no help is not services co-sell: the members stay optional.
    let reply = send_json(
        &ts,
        Method::POST,
        REFERRALS,
        &token,
        &fixture("create-referral-request.json"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
}

#[tokio::test]
async fn patch_checks_if_match_operations_and_bodies() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let created = create_referral(&ts, &token).await;
    let id = created["id"].as_str().unwrap();
    let etag0 = created["eTag"].as_str().unwrap();

    // Documented sample 1 with If-Match and Prefer: dealValue "10000" is stored as a number.
    let sample1 = fixture("patch-referral-sample1-dealvalue-notes.body.json").to_string();
    let reply = patch(
        &ts,
        id,
        &token,
        &[("if-match", etag0), ("prefer", "return=representation")],
        &sample1,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["details"]["dealValue"], 10000);
    assert_eq!(
        reply.body["details"]["notes"],
        "Lorem ipsum dolor sit amet."
    );
    let etag1 = reply.body["eTag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0);
    assert_eq!(reply.header("etag"), Some(etag1.as_str()));
    assert_ne!(reply.body["updatedDateTime"], created["updatedDateTime"]);
    assert!(is_wire_time(
        reply.body["updatedDateTime"].as_str().unwrap()
    ));

    // A stale If-Match.
    let reply = patch(&ts, id, &token, &[("if-match", etag0)], &sample1).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.body["statusCode"], 412);
    assert!(!reply.message().is_empty());

    // Only replace and add.
    for body in [
        r#"[{"op":"remove","path":"/details/notes"}]"#,
        r#"[{"op":"move","from":"/details/notes","path":"/statusReason"}]"#,
    ] {
        let reply = patch(&ts, id, &token, &[], body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply.message().contains("replace and add"),
            "{}",
            reply.message()
        );
    }
    // Malformed JSON, not an array, bad path, read-only member.
    for body in [
        r#"[{"op":"replace","path":"/name","value":"#,
        r#"{"op":"replace","path":"/name","value":"x"}"#,
        r#"[{"op":"replace","path":"/noSuchMember","value":1}]"#,
        r#"[{"op":"replace","path":"/id","value":"other"}]"#,
        r#"[{"op":"replace","path":"/details/dealValue","value":"ten"}]"#,
    ] {
        let reply = patch(&ts, id, &token, &[], body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["statusCode"], 400);
    }

    // Documented sample 3 without Prefer: 204, empty body, member appended.
    let sample3 = fixture("patch-referral-sample3-add-team-member.body.json").to_string();
    let reply = patch(&ts, id, &token, &[("if-match", &etag1)], &sample3).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.raw.is_empty());
    let stored = get(&ts, &format!("{REFERRALS}/{id}"), &token).await.body;
    let team = stored["team"].as_array().unwrap();
    assert_eq!(team.len(), 2);
    assert_eq!(team[1]["email"], "jane.doe@contoso.com");
    assert_ne!(stored["eTag"], json!(etag1));

    let reply = patch(
        &ts,
        "4111fffc-f9ee-4d53-bba6-569135228642",
        &token,
        &[],
        &sample3,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_follows_the_transition_table_and_terminal_referrals_reject_any_change() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;

    // An incoming Microsoft referral can be accepted.
    let incoming = microsoft_referral(&ts, json!({})).await;
    let accept = r#"[{"op":"replace","path":"/status","value":"Active"},
                     {"op":"replace","path":"/substatus","value":"Accepted"}]"#;
    let reply = patch(&ts, incoming["id"].as_str().unwrap(), &token, &[], accept).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.body);

    let created = create_referral(&ts, &token).await;
    let id = created["id"].as_str().unwrap();
    for invalid in [
        r#"[{"op":"replace","path":"/status","value":"New"},{"op":"replace","path":"/substatus","value":"Pending"}]"#,
        r#"[{"op":"replace","path":"/substatus","value":"Won"}]"#,
        r#"[{"op":"replace","path":"/status","value":"Closed"}]"#,
    ] {
        let reply = patch(&ts, id, &token, &[], invalid).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{invalid}: {:?}",
            reply.body
        );
        assert!(
            reply.message().contains("Active/Accepted"),
            "{}",
            reply.message()
        );
    }

    // Documented sample 2: close as won (lower-case values are accepted and canonicalised).
    let won = r#"[{"op":"replace","path":"/status","value":"closed"},
                  {"op":"replace","path":"/substatus","value":"won"}]"#;
    let reply = patch(&ts, id, &token, &[("prefer", "return=representation")], won).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        (&reply.body["status"], &reply.body["substatus"]),
        (&json!("Closed"), &json!("Won"))
    );

    for body in [
        r#"[{"op":"replace","path":"/details/notes","value":"late edit"}]"#,
        r#"[{"op":"replace","path":"/substatus","value":"Lost"}]"#,
        &fixture("patch-referral-sample2-close-won.body.json").to_string(),
    ] {
        let reply = patch(&ts, id, &token, &[], body).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{body}");
        assert_eq!(reply.body["statusCode"], 409);
        assert!(reply.message().contains("terminal"), "{}", reply.message());
    }
}

#[tokio::test]
async fn injected_503_happens_exactly_twice_and_every_call_is_logged() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    ts.inject(json!({ "service": "partner-center", "status": 503, "count": 2 }))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply = get(&ts, REFERRALS, &token).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.body["statusCode"], 503);
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [503, 503, 200]);
    let logged = ts.requests(Some("partner-center")).await;
    let logged: Vec<(u64, bool, String)> = logged
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["injected"].as_bool().unwrap(),
                r["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            (503, true, REFERRALS.to_owned()),
            (503, true, REFERRALS.to_owned()),
            (200, false, REFERRALS.to_owned()),
        ]
    );
    // The token request was logged under Entra.
    assert_eq!(ts.requests(Some("entra")).await.len(), 1);
}

#[tokio::test]
async fn injected_429_carries_retry_after_and_the_documented_body() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    ts.inject(json!({
        "service": "partner-center", "status": 429, "count": 1, "retry_after": 57
    }))
    .await;
    let reply = get(&ts, REFERRALS, &token).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("57"));
    let documented = std::fs::read_to_string(format!(
        "{}/tests/data/partner-center/throttling-429-response.http",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let documented: Value =
        serde_json::from_str(documented.lines().rev().find(|l| l.contains('{')).unwrap()).unwrap();
    assert_eq!(reply.body, documented);
    assert_eq!(get(&ts, REFERRALS, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn list_filters_on_updated_date_time_and_pages_through_next_link() {
    let ts = TestSandbox::start().await;
    let token = user_token(&ts).await;
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(create_referral(&ts, &token).await);
    }
    advance_clock(&ts, 600).await;
    let since = control(&ts, Method::GET, "/_sandbox/clock", None)
        .await
        .body["now"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut expected = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let created = create_referral(&ts, &token).await;
        expected.insert(created["id"].as_str().unwrap().to_owned());
    }
    // An old referral changed since then is part of the delta.
    let changed = old[0]["id"].as_str().unwrap();
    let note = r#"[{"op":"replace","path":"/details/notes","value":"changed"}]"#;
    assert_eq!(
        patch(&ts, changed, &token, &[], note).await.status,
        StatusCode::NO_CONTENT
    );
    expected.insert(changed.to_owned());

    let mut url = url::Url::parse(&ts.url(REFERRALS)).unwrap();
    url.query_pairs_mut()
        .append_pair("$filter", &format!("updatedDateTime ge {since}"))
        .append_pair("$orderby", "updatedDateTime asc")
        .append_pair("$top", "3");
    let mut next = Some(url.to_string());
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut last_updated = String::new();
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        let reply = get(&ts, &url, &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let value = reply.body["value"].as_array().unwrap();
        assert_eq!(reply.body["@odata.count"], value.len());
        assert!(reply.body["@odata.context"].as_str().is_some());
        for referral in value {
            let updated = referral["updatedDateTime"].as_str().unwrap().to_owned();
            assert!(updated >= last_updated, "ordered by updatedDateTime");
            last_updated = updated;
            seen.push(referral["id"].as_str().unwrap().to_owned());
        }
        next = reply.body["@odata.nextLink"].as_str().map(str::to_owned);
        if let Some(link) = &next {
            assert!(
                link.starts_with(&ts.url(REFERRALS)) && link.contains("$skiptoken="),
                "{link}"
            );
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), expected.len(), "no duplicates");
    assert_eq!(
        seen.into_iter().collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    assert_eq!(
        last_updated,
        get(&ts, &format!("{REFERRALS}/{changed}"), &token)
            .await
            .body["updatedDateTime"]
    );

    // Other documented filters, and invalid queries.
    let engagement = old[1]["engagementId"].as_str().unwrap();
    let mut url = url::Url::parse(&ts.url(REFERRALS)).unwrap();
    url.query_pairs_mut().append_pair(
        "$filter",
        &format!("engagementId eq '{engagement}' and status eq 'Active'"),
    );
    url.query_pairs_mut().append_pair("$select", "id,status");
    let reply = get(&ts, url.as_str(), &token).await;
    assert_eq!(
        reply.body["value"],
        json!([{ "id": old[1]["id"], "status": "Active" }])
    );
    assert!(reply.body.get("@odata.nextLink").is_none());
    for (name, value) in [
        ("$filter", "status eq"),
        ("$orderby", "name desc"),
        ("$top", "x"),
        ("$skiptoken", "garbage"),
    ] {
        let mut url = url::Url::parse(&ts.url(REFERRALS)).unwrap();
        url.query_pairs_mut().append_pair(name, value);
        let reply = get(&ts, url.as_str(), &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}={value}");
        assert_eq!(reply.body["statusCode"], 400);
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks

#[tokio::test]
async fn created_referral_sends_a_signed_event_that_verifies_and_forgeries_do_not() {
    let ts = TestSandbox::start().await;
    let listener = Listener::start().await;
    register(&ts, &listener.url, &ALL_REFERRAL_EVENTS, false).await;
    let token = user_token(&ts).await;
    let created = create_referral(&ts, &token).await;
    let id = created["id"].as_str().unwrap();

    let received = listener.next().await;
    assert_eq!(event_referral_id(&ts, &received, "referral-created"), id);
    assert!(
        received
            .header("authorization")
            .unwrap()
            .starts_with("Signature ")
    );
    assert_eq!(
        received.header("x-ms-certificate-url"),
        Some(ts.url("/cert/pcnotifications-dispatch.microsoft.com.cer"))
    );
    verify(&ts, &received)
        .await
        .expect("a genuine event verifies");

    // Re-sent by the control API: leaf (verifies), rogue and tampered (do not).
    for (signer, tamper, genuine) in [
        ("leaf", false, true),
        ("rogue", false, false),
        ("leaf", true, false),
    ] {
        let reply = control(
            &ts,
            Method::POST,
            "/_sandbox/partner-center/events",
            Some(json!({ "eventName": "referral-updated", "referralId": id, "signer": signer, "tamper": tamper })),
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
        assert!(reply.body["deliveryId"].as_u64().is_some());
        let received = listener.next().await;
        assert_eq!(received.json()["EventName"], "referral-updated");
        let verdict = verify(&ts, &received).await;
        assert_eq!(
            verdict.is_ok(),
            genuine,
            "{signer} tamper={tamper}: {verdict:?}"
        );
    }

    // A PATCH sends referral-updated.
    let note = r#"[{"op":"replace","path":"/details/notes","value":"changed"}]"#;
    assert_eq!(
        patch(&ts, id, &token, &[], note).await.status,
        StatusCode::NO_CONTENT
    );
    let received = listener.next().await;
    assert_eq!(event_referral_id(&ts, &received, "referral-updated"), id);
    verify(&ts, &received).await.expect("verifies");
}

#[tokio::test]
async fn microsoft_referrals_and_related_referrals_raise_their_events() {
    let ts = TestSandbox::start().await;
    let listener = Listener::start().await;
    // The old referral-connector sample's camelCase flag: signature in x-ms-signature.
    let token = app_token(&ts, WEBHOOKS_SCOPE).await;
    let mut registration = fixture("registration-request-referrals.json");
    registration["WebhookUrl"] = json!(listener.url);
    registration["WebhookEvents"] = json!(ALL_REFERRAL_EVENTS);
    let reply = send_json(&ts, Method::POST, REGISTRATION, &token, &registration).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    let incoming = microsoft_referral(&ts, json!({ "details": { "dealValue": 1234 } })).await;
    assert_eq!(
        (&incoming["status"], &incoming["substatus"]),
        (&json!("New"), &json!("Pending"))
    );
    assert_eq!(incoming["direction"], "Incoming");
    assert_eq!(
        incoming["inviteContext"]["invitedBy"]["organizationId"],
        "msft"
    );
    assert_eq!(incoming["customerProfile"]["address"]["country"], "US");
    assert_eq!(incoming["details"]["dealValue"], 1234);
    assert_eq!(incoming["details"]["currency"], "USD");
    assert!(incoming["details"]["closingDateTime"].is_string());
    assert!(
        incoming["details"]["requirements"]["solutions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    let received = listener.next().await;
    assert_eq!(
        event_referral_id(&ts, &received, "referral-created"),
        incoming["id"].as_str().unwrap()
    );
    assert!(received.header("authorization").is_none());
    assert!(
        received
            .header("x-ms-signature")
            .unwrap()
            .starts_with("Signature ")
    );
    verify(&ts, &received)
        .await
        .expect("verifies with x-ms-signature");

    // Microsoft's own referral of the same engagement, seeded raw.
    let msft_id = "0a7a9a4e-6c1b-4a4e-9d65-7f1b0c0de001";
    let msft = json!({
        "id": msft_id,
        "engagementId": incoming["engagementId"],
        "organizationId": "a5d7fd06-0000-4000-8000-00000000msft",
        "organizationName": "Microsoft",
        "status": "Active",
        "substatus": "Accepted",
        "type": "Shared",
        "direction": "Outgoing"
    });
    let path = format!("/_sandbox/partner-center/referrals/{msft_id}");
    let reply = control(&ts, Method::PUT, &path, Some(msft.clone())).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.body["eTag"].is_string() && reply.body["updatedDateTime"].is_string());
    let received = listener.next().await;
    assert_eq!(
        event_referral_id(&ts, &received, "related-referral-created"),
        msft_id
    );

    let reply = control(&ts, Method::PUT, &path, Some(msft)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let received = listener.next().await;
    assert_eq!(
        event_referral_id(&ts, &received, "related-referral-updated"),
        msft_id
    );

    // Both are found through the relatedReferrals filter.
    let user = user_token(&ts).await;
    let mut url = url::Url::parse(&ts.url(REFERRALS)).unwrap();
    url.query_pairs_mut().append_pair(
        "$filter",
        &format!(
            "engagementId eq '{}'",
            incoming["engagementId"].as_str().unwrap()
        ),
    );
    assert_eq!(
        get(&ts, url.as_str(), &user).await.body["value"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A raw seed of the partner's own referral is a plain referral-updated.
    let mut own = incoming.clone();
    own["statusReason"] = json!("seeded");
    let path = format!(
        "/_sandbox/partner-center/referrals/{}",
        incoming["id"].as_str().unwrap()
    );
    assert_eq!(
        control(&ts, Method::PUT, &path, Some(own)).await.status,
        StatusCode::OK
    );
    let received = listener.next().await;
    assert_eq!(
        event_referral_id(&ts, &received, "referral-updated"),
        incoming["id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn webhook_registration_lifecycle_and_validation_events() {
    let ts = TestSandbox::start().await;
    let listener = Listener::start().await;
    let token = app_token(&ts, WEBHOOKS_SCOPE).await;

    assert_eq!(
        get(&ts, REGISTRATION, &token).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&ts, Method::GET, REGISTRATION, None, &[], None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        json!({ "WebhookUrl": listener.url, "WebhookEvents": ["referral-deleted"] }),
        json!({ "WebhookUrl": "/relative/hook", "WebhookEvents": ["test-created"] }),
        json!({ "WebhookEvents": ["test-created"] }),
    ] {
        let reply = send_json(&ts, Method::POST, REGISTRATION, &token, &bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // camelCase members are accepted.
    let body = json!({ "webhookUrl": listener.url, "webhookEvents": ["referral-created"] });
    let reply = send_json(&ts, Method::POST, REGISTRATION, &token, &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let keys: Vec<&str> = reply
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["SubscriberId", "WebhookUrl", "WebhookEvents"]);
    let subscriber = reply.body["SubscriberId"].clone();
    assert_eq!(reply.body["WebhookEvents"], json!(["referral-created"]));

    let reply = send_json(&ts, Method::POST, REGISTRATION, &token, &body).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.message().contains("PUT"), "{}", reply.message());

    // No test-created yet: no validation event.
    let validation = "/webhooks/v1/registration/validationEvents";
    let reply = call(&ts, Method::POST, validation, Some(&token), &[], None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let body = json!({ "WebhookUrl": listener.url, "WebhookEvents": ["test-created", "referral-created"] });
    let reply = send_json(&ts, Method::PUT, REGISTRATION, &token, &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["SubscriberId"], subscriber);
    let reply = get(&ts, REGISTRATION, &user_or_app(&ts).await).await;
    assert_eq!(
        reply.body["WebhookEvents"],
        json!(["test-created", "referral-created"])
    );

    let reply = call(&ts, Method::POST, validation, Some(&token), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let correlation = reply.body["correlationId"].as_str().unwrap().to_owned();
    let received = listener.next().await;
    let event = received.json();
    assert_eq!(event["EventName"], "test-created");
    assert_eq!(event["ResourceName"], "test");
    assert_eq!(
        event["ResourceUri"],
        ts.url(&format!("{validation}/{correlation}"))
    );
    verify(&ts, &received).await.expect("test event verifies");

    finished_deliveries(&ts, "test-created", 1).await;
    let reply = get(&ts, &format!("{validation}/{correlation}"), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["correlationId"], correlation.as_str());
    assert_eq!(reply.body["status"], "completed");
    assert_eq!(reply.body["callbackUrl"], listener.url.as_str());
    let results = reply.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["responseCode"], "OK");
    assert_eq!(results[0]["systemError"], false);
    let documented = fixture("validation-event-status-response.json");
    let documented_keys: Vec<&String> = documented["results"][0]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let keys: Vec<&String> = results[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, documented_keys);
    assert_eq!(
        get(
            &ts,
            &format!("{validation}/00000000-0000-0000-0000-000000000000"),
            &token
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // 2 per minute by the sandbox clock.
    let reply = call(&ts, Method::POST, validation, Some(&token), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    listener.next().await;
    let reply = call(&ts, Method::POST, validation, Some(&token), &[], None).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(reply.body["statusCode"], 429);
    assert_eq!(
        reply.message(),
        format!("Rate limit is exceeded. Try again in {retry_after} seconds.")
    );
    advance_clock(&ts, 61).await;
    let token = app_token(&ts, WEBHOOKS_SCOPE).await;
    let reply = call(&ts, Method::POST, validation, Some(&token), &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    listener.next().await;
}

/// A delegated token for the webhook API (it accepts both kinds).
async fn user_or_app(ts: &TestSandbox) -> String {
    let reply = refresh(ts, PC_REFRESH_TOKEN, WEBHOOKS_SCOPE).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_failing_listener_gets_exactly_ten_attempts() {
    let ts = TestSandbox::start().await;
    let listener = Listener::scripted(Vec::new(), 500, "").await;
    register(
        &ts,
        &listener.url,
        &["referral-created", "test-created"],
        false,
    )
    .await;
    let token = user_token(&ts).await;
    create_referral(&ts, &token).await;
    for _ in 0..10 {
        assert_eq!(
            listener.next().await.json()["EventName"],
            "referral-created"
        );
    }
    let deliveries = finished_deliveries(&ts, "referral-created", 1).await;
    let attempts = deliveries[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 10);
    assert!(
        attempts
            .iter()
            .all(|a| a["status"] == 500 && a["accepted"] == false)
    );
    assert_eq!(deliveries[0]["delivered"], false);
    assert!(listener.is_quiet(Duration::from_millis(200)).await);

    // The validation status shows every failed attempt.
    let app = app_token(&ts, WEBHOOKS_SCOPE).await;
    let validation = "/webhooks/v1/registration/validationEvents";
    let reply = call(&ts, Method::POST, validation, Some(&app), &[], None).await;
    let correlation = reply.body["correlationId"].as_str().unwrap().to_owned();
    finished_deliveries(&ts, "test-created", 1).await;
    let reply = get(&ts, &format!("{validation}/{correlation}"), &app).await;
    assert_eq!(reply.body["status"], "failed");
    let results = reply.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    assert!(
        results
            .iter()
            .all(|r| r["responseCode"] == "InternalServerError")
    );
}

#[tokio::test]
async fn switched_off_webhooks_deliver_nothing() {
    let ts = TestSandbox::start().await;
    let listener = Listener::start().await;
    register(&ts, &listener.url, &ALL_REFERRAL_EVENTS, false).await;
    let reply = control(
        &ts,
        Method::POST,
        "/_sandbox/webhooks",
        Some(json!({ "service": "partner-center", "enabled": false })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let token = user_token(&ts).await;
    create_referral(&ts, &token).await;
    let deliveries = finished_deliveries(&ts, "referral-created", 1).await;
    assert_eq!(deliveries[0]["delivered"], false);
    assert!(listener.is_quiet(Duration::from_millis(300)).await);

    // Events the registration does not list are not sent at all.
    control(
        &ts,
        Method::POST,
        "/_sandbox/webhooks",
        Some(json!({ "service": "partner-center", "enabled": true })),
    )
    .await;
    let app = app_token(&ts, WEBHOOKS_SCOPE).await;
    let body = json!({ "WebhookUrl": listener.url, "WebhookEvents": ["referral-updated"] });
    assert_eq!(
        send_json(&ts, Method::PUT, REGISTRATION, &app, &body)
            .await
            .status,
        StatusCode::OK
    );
    create_referral(&ts, &token).await;
    assert!(listener.is_quiet(Duration::from_millis(300)).await);
    let all = control(&ts, Method::GET, "/_sandbox/deliveries", None).await;
    assert_eq!(all.body["deliveries"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Agreement with the connector's wire models

#[tokio::test]
async fn answers_read_with_the_domain_wire_models_and_its_writes_are_accepted() {
    use cosell_domain::referral::{Referral, ReferralPage};
    use cosell_domain::status::{ReferralStatus, ReferralSubstatus};
    use cosell_domain::webhook::{ValidationEventStatus, WebhookEvent, WebhookRegistration};

    let ts = TestSandbox::start().await;
    let listener = Listener::start().await;
    let reply = register(
        &ts,
        &listener.url,
        &["referral-created", "test-created"],
        false,
    )
    .await;
    let registration: WebhookRegistration = serde_json::from_value(reply.body).unwrap();
    assert!(registration.subscriber_id.is_some());
    assert_eq!(registration.webhook_events.len(), 2);

    let token = user_token(&ts).await;
    let created = create_referral(&ts, &token).await;
    let referral: Referral = serde_json::from_value(created.clone()).unwrap();
    assert_eq!(referral.id.as_deref(), created["id"].as_str());
    assert_eq!(referral.status, Some(ReferralStatus::Active));
    assert_eq!(referral.substatus, Some(ReferralSubstatus::Accepted));
    assert!(referral.e_tag.is_some() && referral.links.is_some());
    assert!(
        referral
            .updated_date_time
            .as_ref()
            .is_some_and(|t| t.instant().is_some())
    );

    let event: WebhookEvent = serde_json::from_slice(&listener.next().await.body).unwrap();
    assert_eq!(
        event.referral_id().unwrap().to_string(),
        referral.id.clone().unwrap()
    );

    let page: ReferralPage =
        serde_json::from_value(get(&ts, REFERRALS, &token).await.body).unwrap();
    assert_eq!(
        (page.value.len(), page.count, page.next_link),
        (1, Some(1), None)
    );

    // The connector's serialisation of a referral is accepted as a create body.
    let body = serde_json::to_value(&referral).unwrap();
    let reply = send_json(&ts, Method::POST, REFERRALS, &token, &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    let app = app_token(&ts, WEBHOOKS_SCOPE).await;
    let validation = "/webhooks/v1/registration/validationEvents";
    let reply = call(&ts, Method::POST, validation, Some(&app), &[], None).await;
    let correlation = reply.body["correlationId"].as_str().unwrap().to_owned();
    listener.next().await;
    finished_deliveries(&ts, "test-created", 1).await;
    let status = get(&ts, &format!("{validation}/{correlation}"), &app).await;
    let status: ValidationEventStatus = serde_json::from_value(status.body).unwrap();
    assert_eq!(status.status.as_deref(), Some("completed"));
    assert_eq!(status.results.len(), 1);
}
