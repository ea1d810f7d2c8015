//! Contract tests of the Salesforce stand-in: JWT bearer sign-in, REST (create, read,
//! update, upsert by External ID, SOQL, describe, limits), Outbound Messages and fault
//! injection. Webhook tests await the listener channel; nothing sleeps to synchronise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Utc};
use common::{Listener, Received, TestSandbox};
use cosell_sandbox::identities::{
    SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USER_ID, SALESFORCE_INTEGRATION_USERNAME,
    SALESFORCE_ORG_ID, SALESFORCE_SELLER_USER_ID, SALESFORCE_SELLER_USERNAME,
};
use cosell_sandbox::pki::SALESFORCE_APP_KEY_PEM;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

const ACK: &str = include_str!("../data/salesforce-outbound-ack-response.xml");
const CREATE_SUCCESS: &str = include_str!("../data/salesforce-rest-create-success.json");
const ID_IN_BODY_ERROR: &str =
    include_str!("../data/salesforce-rest-error-invalid-field-create.json");
/// A key the connected app does not trust.
const FOREIGN_KEY_PEM: &str = include_str!("../../certs/rogue.key.pem");

const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";

// ---------------------------------------------------------------------------------------
// Helpers

fn api(sb: &TestSandbox, path: &str) -> String {
    sb.url(&format!("/services/data/v62.0{path}"))
}

/// An access token for `user` issued by the control API.
async fn token_for(sb: &TestSandbox, user: &str, expires_in: Option<i64>) -> String {
    let mut request = json!({"audience": "salesforce", "subject": user});
    if let Some(secs) = expires_in {
        request["expires_in"] = json!(secs);
    }
    let body: Value = sb
        .http
        .post(sb.url("/_sandbox/tokens"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn integration_token(sb: &TestSandbox) -> String {
    token_for(sb, SALESFORCE_INTEGRATION_USER_ID, None).await
}

async fn sandbox_now(sb: &TestSandbox) -> DateTime<Utc> {
    let body: Value = sb
        .http
        .get(sb.url("/_sandbox/clock"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["now"].as_str().unwrap().parse().unwrap()
}

async fn advance_clock(sb: &TestSandbox, secs: i64) {
    let status = sb
        .http
        .post(sb.url("/_sandbox/clock"))
        .json(&json!({"advance_secs": secs}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}

fn sign(claims: &Value, key_pem: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(sub: &str, aud: &str, exp: i64) -> Value {
    json!({"iss": SALESFORCE_CONSUMER_KEY, "sub": sub, "aud": aud, "exp": exp})
}

async fn token_request(sb: &TestSandbox, grant_type: &str, assertion: &str) -> (StatusCode, Value) {
    let response = sb
        .http
        .post(sb.url("/services/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", grant_type)
                .append_pair("assertion", assertion)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(sb: &TestSandbox, token: &str, path: &str) -> Answer {
    answer(
        sb.http
            .get(api(sb, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn send_json(
    sb: &TestSandbox,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: &Value,
) -> Answer {
    answer(
        sb.http
            .request(method, api(sb, path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post_json(sb: &TestSandbox, token: &str, path: &str, body: &Value) -> Answer {
    send_json(sb, reqwest::Method::POST, token, path, body).await
}

async fn patch_json(sb: &TestSandbox, token: &str, path: &str, body: &Value) -> Answer {
    send_json(sb, reqwest::Method::PATCH, token, path, body).await
}

async fn query(sb: &TestSandbox, token: &str, soql: &str) -> Answer {
    answer(
        sb.http
            .get(format!(
                "{}?q={}",
                api(sb, "/query"),
                url::form_urlencoded::byte_serialize(soql.as_bytes()).collect::<String>()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn opportunity(name: &str) -> Value {
    json!({"Name": name, "StageName": "Prospecting", "CloseDate": "2026-06-30", "Amount": 15000})
}

async fn create_opportunity(sb: &TestSandbox, token: &str, body: &Value) -> String {
    let created = post_json(sb, token, "/sobjects/Opportunity/", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    created.body["id"].as_str().unwrap().to_owned()
}

fn error_code(answer: &Answer) -> &str {
    answer.body[0]["errorCode"].as_str().unwrap_or_default()
}

/// Points the Opportunity Outbound Message at `url`.
async fn configure_outbound(sb: &TestSandbox, url: &str) {
    let status = sb
        .http
        .put(sb.url("/_sandbox/salesforce/outbound-message"))
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}

async fn seed_opportunity(sb: &TestSandbox, id: &str, body: &Value) -> Answer {
    answer(
        sb.http
            .put(sb.url(&format!("/_sandbox/salesforce/Opportunity/{id}")))
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn deliveries(sb: &TestSandbox) -> Vec<Value> {
    let body: Value = sb
        .http
        .get(sb.url("/_sandbox/deliveries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

/// A parsed XML element: namespace, local name, attributes (`prefix:name` → value) and
/// the concatenated text of its direct content with entities resolved.
#[derive(Debug, Default)]
struct El {
    ns: String,
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<El>,
}

impl El {
    fn child(&self, ns: &str, name: &str) -> &El {
        self.children
            .iter()
            .find(|c| c.ns == ns && c.name == name)
            .unwrap_or_else(|| panic!("no {{{ns}}}{name} under {}", self.name))
    }

    fn all<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a El> {
        self.children
            .iter()
            .filter(move |c| c.ns == ns && c.name == name)
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn element(ns: ResolveResult<'_>, start: &BytesStart<'_>) -> El {
    El {
        ns: match ns {
            ResolveResult::Bound(ns) => ns.0.to_owned(),
            _ => String::new(),
        },
        name: start.local_name().as_ref().to_owned(),
        attrs: start
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    a.key.as_ref().to_owned(),
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect(),
        ..El::default()
    }
}

/// Parses a document with quick-xml's namespace-aware reader; returns the root element.
fn parse_xml(text: &str) -> El {
    let mut reader = NsReader::from_str(text);
    let mut stack = vec![El::default()];
    loop {
        let (ns, event) = reader.read_resolved_event().unwrap();
        match event {
            Event::Start(start) => {
                let el = element(ns, &start);
                stack.push(el);
            }
            Event::Empty(start) => {
                let el = element(ns, &start);
                stack.last_mut().unwrap().children.push(el);
            }
            Event::End(_) => {
                let el = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(el);
            }
            Event::Text(t) => stack.last_mut().unwrap().text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .unwrap()
                        .to_owned(),
                };
                stack.last_mut().unwrap().text.push_str(&resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced document");
    stack.pop().unwrap().children.pop().unwrap()
}

/// The `notifications` element of an Outbound Message, after checking the envelope.
fn notifications(message: &Received) -> El {
    let envelope = parse_xml(&message.text());
    assert_eq!(
        (envelope.ns.as_str(), envelope.name.as_str()),
        (SOAP_NS, "Envelope")
    );
    let mut body = envelope
        .children
        .into_iter()
        .find(|c| c.name == "Body")
        .unwrap();
    assert_eq!(body.ns, SOAP_NS);
    let notifications = body.children.pop().unwrap();
    assert_eq!(
        (notifications.ns.as_str(), notifications.name.as_str()),
        (OUTBOUND_NS, "notifications")
    );
    notifications
}

/// A listener that answers `200 OK` without a SOAP acknowledgement `unacked` times, then
/// acknowledges.
struct AckAfter {
    url: String,
    received: Mutex<mpsc::UnboundedReceiver<Received>>,
}

#[derive(Clone)]
struct AckAfterState {
    tx: mpsc::UnboundedSender<Received>,
    seen: Arc<AtomicUsize>,
    unacked: usize,
}

impl AckAfter {
    async fn start(unacked: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = AckAfterState {
            tx,
            seen: Arc::new(AtomicUsize::new(0)),
            unacked,
        };
        let app = Router::new().fallback(post(ack_after)).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}/outbound", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received: Mutex::new(rx),
        }
    }

    async fn next(&self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.lock().await.recv())
            .await
            .expect("no outbound message arrived within 10 s")
            .expect("listener closed")
    }

    async fn is_quiet(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.received.lock().await.recv())
            .await
            .is_err()
    }
}

async fn ack_after(
    State(state): State<AckAfterState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    let _ = state.tx.send(Received { uri, headers, body });
    if n < state.unacked {
        (StatusCode::OK, "<html><body>OK</body></html>")
    } else {
        (StatusCode::OK, ACK)
    }
}

// ---------------------------------------------------------------------------------------
// OAuth 2.0 JWT bearer flow

#[tokio::test]
async fn jwt_bearer_grant_issues_a_session_for_a_correctly_signed_assertion() {
    let sb = TestSandbox::start().await;
    let exp = sandbox_now(&sb).await.timestamp() + 180;
    let assertion = sign(
        &claims(
            SALESFORCE_INTEGRATION_USERNAME,
            "https://login.salesforce.com",
            exp,
        ),
        SALESFORCE_APP_KEY_PEM,
    );
    let (status, body) = token_request(&sb, JWT_BEARER, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api");
    assert_eq!(body["instance_url"], sb.sandbox.base_url.as_str());
    assert_eq!(
        body["id"],
        format!(
            "{}/id/{SALESFORCE_ORG_ID}/{SALESFORCE_INTEGRATION_USER_ID}",
            sb.sandbox.base_url
        )
    );
    assert!(body["issued_at"].as_str().unwrap().parse::<i64>().is_ok());
    assert!(
        body.get("refresh_token").is_none(),
        "the JWT flow issues no refresh token"
    );

    // The session acts as the integration user.
    let token = body["access_token"].as_str().unwrap();
    let id = create_opportunity(&sb, token, &opportunity("Signed in")).await;
    let record = get(&sb, token, &format!("/sobjects/Opportunity/{id}")).await;
    assert_eq!(record.body["CreatedById"], SALESFORCE_INTEGRATION_USER_ID);
    assert_eq!(
        record.body["LastModifiedById"],
        SALESFORCE_INTEGRATION_USER_ID
    );

    // The seller can sign in too, with the instance URL (My Domain) as audience.
    let assertion = sign(
        &claims(SALESFORCE_SELLER_USERNAME, &sb.sandbox.base_url, exp),
        SALESFORCE_APP_KEY_PEM,
    );
    let (status, body) = token_request(&sb, JWT_BEARER, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["id"]
            .as_str()
            .unwrap()
            .ends_with(SALESFORCE_SELLER_USER_ID)
    );
}

#[tokio::test]
async fn jwt_bearer_grant_rejects_bad_audience_expiry_key_issuer_and_user() {
    let sb = TestSandbox::start().await;
    let now = sandbox_now(&sb).await.timestamp();
    let login = "https://login.salesforce.com";
    let user = SALESFORCE_INTEGRATION_USERNAME;
    let cases = [
        (
            "wrong audience",
            sign(
                &claims(user, "https://evil.example", now + 120),
                SALESFORCE_APP_KEY_PEM,
            ),
            "invalid_grant",
            "audience is invalid",
        ),
        (
            "expired",
            sign(&claims(user, login, now - 10), SALESFORCE_APP_KEY_PEM),
            "invalid_grant",
            "expired authorization code",
        ),
        (
            "expiry too far ahead",
            sign(&claims(user, login, now + 3600), SALESFORCE_APP_KEY_PEM),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "signed with another key",
            sign(&claims(user, login, now + 120), FOREIGN_KEY_PEM),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "not a JWT",
            "not.a.jwt".to_owned(),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "unknown consumer key",
            sign(
                &json!({"iss": "3MVGnope", "sub": user, "aud": login, "exp": now + 120}),
                SALESFORCE_APP_KEY_PEM,
            ),
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            "unknown user",
            sign(
                &claims("nobody@partner.sandbox", login, now + 120),
                SALESFORCE_APP_KEY_PEM,
            ),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
    ];
    for (case, assertion, error, description) in cases {
        let (status, body) = token_request(&sb, JWT_BEARER, &assertion).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
        assert_eq!(
            body,
            json!({"error": error, "error_description": description}),
            "{case}"
        );
    }
    let (status, body) = token_request(&sb, "password", "x").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("unsupported_grant_type"))
    );

    // Expiry is judged by the sandbox clock.
    let assertion = sign(&claims(user, login, now + 120), SALESFORCE_APP_KEY_PEM);
    advance_clock(&sb, 300).await;
    let (_, body) = token_request(&sb, JWT_BEARER, &assertion).await;
    assert_eq!(body["error_description"], "expired authorization code");
}

// ---------------------------------------------------------------------------------------
// REST: sessions, limits, faults

#[tokio::test]
async fn an_expired_or_missing_session_is_401_invalid_session_id() {
    let sb = TestSandbox::start().await;
    let token = token_for(&sb, SALESFORCE_INTEGRATION_USER_ID, Some(60)).await;
    assert_eq!(get(&sb, &token, "/limits").await.status, StatusCode::OK);
    advance_clock(&sb, 120).await;
    let expired = get(&sb, &token, "/limits").await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        expired.body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );
    let anonymous = answer(sb.http.get(api(&sb, "/limits")).send().await.unwrap()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&anonymous), "INVALID_SESSION_ID");
    // A token for another service is no Salesforce session.
    let other = answer(
        sb.http
            .post(sb.url("/_sandbox/tokens"))
            .json(&json!({"audience": "https://api.partner.microsoft.com", "subject": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let foreign = get(&sb, other.body["access_token"].as_str().unwrap(), "/limits").await;
    assert_eq!(foreign.status, StatusCode::UNAUTHORIZED);
    let fresh = integration_token(&sb).await;
    assert_eq!(get(&sb, &fresh, "/limits").await.status, StatusCode::OK);
}

fn limit_info(answer: &Answer) -> String {
    answer.headers["sforce-limit-info"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sforce_limit_info_counts_every_call() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let first = get(&sb, &token, "/limits").await;
    assert_eq!(limit_info(&first), "api-usage=1/100000");
    assert_eq!(
        first.body,
        json!({"DailyApiRequests": {"Max": 100000, "Remaining": 99999}})
    );
    let second = query(&sb, &token, "SELECT Id FROM Account").await;
    assert_eq!(limit_info(&second), "api-usage=2/100000");
    let error = post_json(&sb, &token, "/sobjects/Opportunity/", &json!({})).await;
    assert_eq!(error.status, StatusCode::BAD_REQUEST);
    assert_eq!(limit_info(&error), "api-usage=3/100000", "errors count too");
    let missing = get(&sb, &token, "/no/such/resource").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&missing), "NOT_FOUND");
    assert_eq!(limit_info(&missing), "api-usage=4/100000");
    // A new UTC day (by the sandbox clock) starts a new count.
    advance_clock(&sb, 86_400).await;
    let token = integration_token(&sb).await;
    assert_eq!(
        limit_info(&get(&sb, &token, "/limits").await),
        "api-usage=1/100000"
    );
}

#[tokio::test]
async fn the_daily_limit_exhausted_is_403_request_limit_exceeded() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let set: Value = sb
        .http
        .post(sb.url("/_sandbox/salesforce/limits"))
        .json(&json!({"daily": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set, json!({"max": 3, "used": 0}));
    for n in 1..=3 {
        let ok = get(&sb, &token, "/limits").await;
        assert_eq!(ok.status, StatusCode::OK, "call {n}");
        assert_eq!(limit_info(&ok), format!("api-usage={n}/3"));
    }
    let refused = get(&sb, &token, "/limits").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!(limit_info(&refused), "api-usage=3/3");
}

#[tokio::test]
async fn an_injected_503_is_answered_and_logged() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    sb.inject(json!({
        "service": "salesforce", "status": 503, "count": 1, "path_prefix": "/services/data"
    }))
    .await;
    let faulted = get(&sb, &token, "/limits").await;
    assert_eq!(faulted.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&faulted), "SERVER_UNAVAILABLE");
    assert_eq!(get(&sb, &token, "/limits").await.status, StatusCode::OK);
    let log = sb.requests(Some("salesforce")).await;
    let statuses: Vec<(u64, bool)> = log
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["injected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, vec![(503, true), (200, false)]);
    assert_eq!(log[0]["path"], "/services/data/v62.0/limits");
    assert_eq!(log[0]["method"], "GET");
}

// ---------------------------------------------------------------------------------------
// REST: sObjects

#[tokio::test]
async fn create_answers_201_with_the_documented_body_shape() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let created = post_json(&sb, &token, "/sobjects/Opportunity/", &opportunity("Deal")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let fixture: Value = serde_json::from_str(CREATE_SUCCESS).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&created.body), keys(&fixture));
    assert_eq!(created.body["errors"], fixture["errors"]);
    assert_eq!(created.body["success"], true);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("006"));

    let record = get(&sb, &token, &format!("/sobjects/Opportunity/{id}")).await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(
        record.body["attributes"],
        json!({"type": "Opportunity", "url": format!("/services/data/v62.0/sobjects/Opportunity/{id}")})
    );
    assert_eq!(record.body["Id"], id);
    assert_eq!(record.body["Amount"], 15000.0);
    assert_eq!(record.body["IsClosed"], false);
    assert_eq!(record.body["CurrencyIsoCode"], "USD");
    assert_eq!(record.body["Referral_Identifier__c"], Value::Null);
    let modified = record.body["LastModifiedDate"].as_str().unwrap();
    assert_eq!(modified.len(), "2013-05-20T20:49:32.000+0000".len());
    assert!(modified.ends_with(".000+0000") || modified.ends_with("+0000"));

    // Accounts and contacts get their own key prefixes; 15-character ids work too.
    let account = post_json(
        &sb,
        &token,
        "/sobjects/Account",
        &json!({"Name": "Contoso"}),
    )
    .await;
    let account_id = account.body["id"].as_str().unwrap();
    assert!(account_id.starts_with("001"));
    let contact = post_json(
        &sb,
        &token,
        "/sobjects/Contact/",
        &json!({"FirstName": "Ada", "LastName": "Lovelace", "AccountId": &account_id[..15]}),
    )
    .await;
    assert_eq!(contact.status, StatusCode::CREATED, "{:?}", contact.body);
    let contact_id = contact.body["id"].as_str().unwrap();
    assert!(contact_id.starts_with("003"));
    let contact = get(
        &sb,
        &token,
        &format!("/sobjects/Contact/{}", &contact_id[..15]),
    )
    .await;
    assert_eq!(contact.body["Name"], "Ada Lovelace");
    assert_eq!(contact.body["AccountId"], account_id);
}

#[tokio::test]
async fn an_id_in_the_body_is_refused_with_the_documented_error() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let mut body = opportunity("Deal");
    body["Id"] = json!("006000000000001AAA");
    let refused = post_json(&sb, &token, "/sobjects/Opportunity/", &body).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.body,
        serde_json::from_str::<Value>(ID_IN_BODY_ERROR).unwrap()
    );
}

#[tokio::test]
async fn invalid_writes_are_400_with_the_service_error_codes() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let path = "/sobjects/Opportunity/";

    let mut body = opportunity("Deal");
    body["Bogus__c"] = json!("x");
    let unknown = post_json(&sb, &token, path, &body).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.body,
        json!([{"message": "No such column 'Bogus__c' on sobject of type Opportunity", "errorCode": "INVALID_FIELD"}])
    );

    let malformed = answer(
        sb.http
            .post(api(&sb, path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"Name\": \"Deal\",")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&malformed), "JSON_PARSER_ERROR");

    let missing = post_json(&sb, &token, path, &json!({"Amount": 5})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.body,
        json!([{
            "message": "Required fields are missing: [Name, StageName, CloseDate]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Name", "StageName", "CloseDate"],
        }])
    );
    let missing_name = post_json(&sb, &token, "/sobjects/Account/", &json!({"Phone": "1"})).await;
    assert_eq!(missing_name.body[0]["fields"], json!(["Name"]));
    let missing_last = post_json(
        &sb,
        &token,
        "/sobjects/Contact/",
        &json!({"FirstName": "A"}),
    )
    .await;
    assert_eq!(missing_last.body[0]["fields"], json!(["LastName"]));

    let mut bad_stage = opportunity("Deal");
    bad_stage["StageName"] = json!("Won-ish");
    let bad_stage = post_json(&sb, &token, path, &bad_stage).await;
    assert_eq!(
        error_code(&bad_stage),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    assert_eq!(bad_stage.body[0]["fields"], json!(["StageName"]));

    let mut bad_currency = opportunity("Deal");
    bad_currency["CurrencyIsoCode"] = json!("XXX");
    let bad_currency = post_json(&sb, &token, path, &bad_currency).await;
    assert_eq!(
        error_code(&bad_currency),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );

    let mut read_only = opportunity("Deal");
    read_only["IsWon"] = json!(true);
    let read_only = post_json(&sb, &token, path, &read_only).await;
    assert_eq!(error_code(&read_only), "INVALID_FIELD_FOR_INSERT_UPDATE");

    let unknown_object =
        post_json(&sb, &token, "/sobjects/Widget__c/", &json!({"Name": "x"})).await;
    assert_eq!(unknown_object.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown_object.body,
        json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}])
    );

    let wrong_method = answer(
        sb.http
            .put(api(&sb, path))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&wrong_method), "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn patch_updates_derived_fields_and_honours_if_unmodified_since() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let seller = token_for(&sb, SALESFORCE_SELLER_USER_ID, None).await;
    let id = create_opportunity(&sb, &seller, &opportunity("Deal")).await;
    let path = format!("/sobjects/Opportunity/{id}");

    let updated = patch_json(&sb, &token, &path, &json!({"StageName": "Closed Won"})).await;
    assert_eq!(updated.status, StatusCode::NO_CONTENT);
    let record = get(&sb, &token, &path).await.body;
    assert_eq!(
        (
            &record["IsClosed"],
            &record["IsWon"],
            &record["Probability"]
        ),
        (&json!(true), &json!(true), &json!(100.0))
    );
    assert_eq!(record["CreatedById"], SALESFORCE_SELLER_USER_ID);
    assert_eq!(record["LastModifiedById"], SALESFORCE_INTEGRATION_USER_ID);

    let modified: DateTime<Utc> = DateTime::parse_from_str(
        record["LastModifiedDate"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S%.3f%z",
    )
    .unwrap()
    .into();
    let http_date = |at: DateTime<Utc>| at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let conditional = |since: String| {
        sb.http
            .patch(api(&sb, &path))
            .bearer_auth(&token)
            .header("if-unmodified-since", since)
            .json(&json!({"Description": "conditional"}))
            .send()
    };
    let stale = answer(
        conditional(http_date(modified - chrono::Duration::seconds(10)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(&stale), "PRECONDITION_FAILED");
    let fresh = answer(conditional(http_date(modified)).await.unwrap()).await;
    assert_eq!(
        fresh.status,
        StatusCode::NO_CONTENT,
        "same second is not later"
    );
    let garbage = answer(conditional("yesterday".into()).await.unwrap()).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);

    let lost = patch_json(&sb, &token, &path, &json!({"StageName": "Closed Lost"})).await;
    assert_eq!(lost.status, StatusCode::NO_CONTENT);
    let record = get(&sb, &token, &path).await.body;
    assert_eq!(
        (&record["IsClosed"], &record["IsWon"]),
        (&json!(true), &json!(false))
    );

    let not_found = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/0065g0000000000AAA",
        &json!({}),
    )
    .await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let wrong_type = get(&sb, &token, "/sobjects/Opportunity/0015g0000000000AAA").await;
    assert_eq!(error_code(&wrong_type), "MALFORMED_ID");
    let only = get(&sb, &token, &format!("{path}?fields=Name,StageName"))
        .await
        .body;
    assert_eq!(
        only.as_object().unwrap().len(),
        3,
        "attributes + two fields: {only}"
    );
}

#[tokio::test]
async fn configurable_stages_and_currencies_drive_validation() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let status = sb
        .http
        .put(sb.url("/_sandbox/salesforce/stages"))
        .json(&json!([
            {"name": "Discover", "probability": 10},
            {"name": "Booked", "closed": true, "won": true, "probability": 100},
        ]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = sb
        .http
        .put(sb.url("/_sandbox/salesforce/currencies"))
        .json(&json!(["EUR", "CHF"]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let id = create_opportunity(
        &sb,
        &token,
        &json!({"Name": "D", "StageName": "Booked", "CloseDate": "2026-01-31", "CurrencyIsoCode": "CHF"}),
    )
    .await;
    let record = get(&sb, &token, &format!("/sobjects/Opportunity/{id}"))
        .await
        .body;
    assert_eq!(
        (&record["IsWon"], &record["CurrencyIsoCode"]),
        (&json!(true), &json!("CHF"))
    );
    let old_stage = post_json(&sb, &token, "/sobjects/Opportunity/", &opportunity("x")).await;
    assert_eq!(
        error_code(&old_stage),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    let default = create_opportunity(
        &sb,
        &token,
        &json!({"Name": "D", "StageName": "Discover", "CloseDate": "2026-01-31"}),
    )
    .await;
    let record = get(&sb, &token, &format!("/sobjects/Opportunity/{default}"))
        .await
        .body;
    assert_eq!(
        record["CurrencyIsoCode"], "EUR",
        "the first currency is the corporate one"
    );
}

// ---------------------------------------------------------------------------------------
// REST: upsert by External ID

#[tokio::test]
async fn upsert_by_referral_identifier_creates_then_updates() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let path = "/sobjects/Opportunity/Referral_Identifier__c/REF-0001";
    let created = patch_json(&sb, &token, path, &opportunity("From referral")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.body,
        json!({"id": id, "success": true, "errors": [], "created": true})
    );
    let updated = patch_json(&sb, &token, path, &json!({"Amount": 20000})).await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(
        updated.body,
        json!({"id": id, "success": true, "errors": [], "created": false})
    );
    let record = get(&sb, &token, &format!("/sobjects/Opportunity/{id}"))
        .await
        .body;
    assert_eq!(record["Referral_Identifier__c"], "REF-0001");
    assert_eq!(record["Amount"], 20000.0);
    assert_eq!(record["Name"], "From referral");
    let by_key = get(&sb, &token, path).await;
    assert_eq!(by_key.body["Id"], id.as_str());

    let update_only = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/Referral_Identifier__c/REF-404?updateOnly=true",
        &opportunity("never created"),
    )
    .await;
    assert_eq!(update_only.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&update_only), "NOT_FOUND");
    let none = query(
        &sb,
        &token,
        "SELECT Id FROM Opportunity WHERE Referral_Identifier__c = 'REF-404'",
    )
    .await;
    assert_eq!(none.body["totalSize"], 0);

    // Before v46.0 an update answers 204 without a body.
    let old = answer(
        sb.http
            .patch(
                sb.url("/services/data/v45.0/sobjects/Opportunity/Referral_Identifier__c/REF-0001"),
            )
            .bearer_auth(&token)
            .json(&json!({"Amount": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (old.status, old.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
}

#[tokio::test]
async fn upsert_by_a_field_that_is_not_an_external_id_is_404() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let refused = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/Name/Deal",
        &json!({"Amount": 1}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(
        refused.body,
        json!([{"message": "Provided external ID field does not exist or is not accessible: Name", "errorCode": "NOT_FOUND"}])
    );
    // A field turned into an External ID (control API) becomes usable.
    let status = sb
        .http
        .patch(sb.url("/_sandbox/salesforce/schema/Opportunity/Microsoft_CRM_Identifier__c"))
        .json(&json!({"externalId": true}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let created = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/Microsoft_CRM_Identifier__c/CRM-1",
        &opportunity("x"),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
}

#[tokio::test]
async fn duplicate_external_ids_make_upsert_answer_300() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let mut body = opportunity("Twin");
    body["Referral_Identifier__c"] = json!("REF-TWIN");
    let first = create_opportunity(&sb, &token, &body).await;
    let second = create_opportunity(&sb, &token, &body).await;
    let ambiguous = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/Referral_Identifier__c/ref-twin",
        &json!({"Amount": 1}),
    )
    .await;
    assert_eq!(ambiguous.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(
        ambiguous.body,
        json!([
            format!("/services/data/v62.0/sobjects/Opportunity/{first}"),
            format!("/services/data/v62.0/sobjects/Opportunity/{second}"),
        ])
    );
    let read = get(
        &sb,
        &token,
        "/sobjects/Opportunity/Referral_Identifier__c/REF-TWIN",
    )
    .await;
    assert_eq!(read.status, StatusCode::MULTIPLE_CHOICES);
}

// ---------------------------------------------------------------------------------------
// REST: SOQL

#[tokio::test]
async fn soql_finds_an_account_by_name_and_postal_code() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let mut ids = Vec::new();
    for (name, zip) in [
        ("Contoso", "98052"),
        ("Contoso", "10115"),
        ("O'Neil & Sons", "98052"),
    ] {
        let created = post_json(
            &sb,
            &token,
            "/sobjects/Account/",
            &json!({"Name": name, "BillingPostalCode": zip, "BillingCountry": "US"}),
        )
        .await;
        ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let found = query(
        &sb,
        &token,
        "SELECT Id FROM Account WHERE Name = 'Contoso' AND BillingPostalCode = '98052'",
    )
    .await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(
        found.body,
        json!({
            "totalSize": 1,
            "done": true,
            "records": [{
                "attributes": {"type": "Account", "url": format!("/services/data/v62.0/sobjects/Account/{}", ids[0])},
                "Id": ids[0],
            }],
        })
    );
    let escaped = query(
        &sb,
        &token,
        r"SELECT Id, Name FROM Account WHERE Name = 'O\'Neil & Sons'",
    )
    .await;
    assert_eq!(escaped.body["records"][0]["Name"], "O'Neil & Sons");
    let ordered = query(
        &sb,
        &token,
        "SELECT Id FROM Account WHERE Name LIKE 'cont%' ORDER BY BillingPostalCode DESC LIMIT 1",
    )
    .await;
    assert_eq!(ordered.body["records"][0]["Id"], ids[0].as_str());
    assert_eq!(ordered.body["totalSize"], 1);
}

#[tokio::test]
async fn soql_finds_opportunities_by_sync_flag_and_last_modified_date() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let mut synced = opportunity("Old");
    synced["Sync_with_Partner_Center__c"] = json!(true);
    let old = create_opportunity(&sb, &token, &synced).await;
    advance_clock(&sb, 600).await;
    let boundary = sandbox_now(&sb).await - chrono::Duration::seconds(300);
    synced["Name"] = json!("New");
    let new = create_opportunity(&sb, &token, &synced).await;
    let _not_synced = create_opportunity(&sb, &token, &opportunity("Not synced")).await;

    let soql = format!(
        "SELECT Id, Name, LastModifiedDate FROM Opportunity WHERE Sync_with_Partner_Center__c = true AND LastModifiedDate >= {}",
        boundary.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let found = query(&sb, &token, &soql).await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(found.body["totalSize"], 1);
    assert_eq!(found.body["records"][0]["Id"], new.as_str());
    assert_eq!(found.body["records"][0]["Name"], "New");
    let all_synced = query(
        &sb,
        &token,
        "SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = true ORDER BY LastModifiedDate ASC",
    )
    .await;
    let ids: Vec<&str> = all_synced.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![old.as_str(), new.as_str()]);
    let count = query(&sb, &token, "SELECT COUNT() FROM Opportunity").await;
    assert_eq!(
        (&count.body["totalSize"], &count.body["records"]),
        (&json!(3), &json!([]))
    );
}

#[tokio::test]
async fn malformed_soql_is_400_malformed_query() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let malformed = query(&sb, &token, "SELECT Id FRM Account").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&malformed), "MALFORMED_QUERY");
    assert!(
        malformed.body[0]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected token: FRM")
    );
    let mixed = query(
        &sb,
        &token,
        "SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'",
    )
    .await;
    assert_eq!(error_code(&mixed), "MALFORMED_QUERY");
    let no_query = get(&sb, &token, "/query").await;
    assert_eq!(error_code(&no_query), "MALFORMED_QUERY");
    let unknown_object = query(&sb, &token, "SELECT Id FROM Widget__c").await;
    assert_eq!(error_code(&unknown_object), "INVALID_TYPE");
    let unknown_field = query(&sb, &token, "SELECT Nope FROM Account").await;
    assert_eq!(error_code(&unknown_field), "INVALID_FIELD");
    let quoted_date = query(
        &sb,
        &token,
        "SELECT Id FROM Opportunity WHERE LastModifiedDate >= '2026-01-01T00:00:00Z'",
    )
    .await;
    assert_eq!(error_code(&quoted_date), "INVALID_QUERY_FILTER_OPERATOR");
}

// ---------------------------------------------------------------------------------------
// REST: describe

#[tokio::test]
async fn describe_lists_the_schema_and_a_removed_field_disappears() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let describe = get(&sb, &token, "/sobjects/Opportunity/describe").await;
    assert_eq!(describe.status, StatusCode::OK);
    assert_eq!(describe.body["name"], "Opportunity");
    let fields = describe.body["fields"].as_array().unwrap();
    let field = |name: &str| fields.iter().find(|f| f["name"] == name).cloned();
    let referral = field("Referral_Identifier__c").unwrap();
    assert_eq!(
        (&referral["type"], &referral["externalId"]),
        (&json!("string"), &json!(true))
    );
    assert_eq!(
        field("Sync_with_Partner_Center__c").unwrap()["type"],
        "boolean"
    );
    assert_eq!(field("IsWon").unwrap()["updateable"], false);
    let stages: Vec<String> = field("StageName").unwrap()["picklistValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    assert!(stages.iter().any(|s| s == "Closed Won") && stages.iter().any(|s| s == "Prospecting"));
    for name in [
        "Id",
        "Name",
        "StageName",
        "CloseDate",
        "Amount",
        "CurrencyIsoCode",
        "Description",
        "AccountId",
        "Probability",
        "IsClosed",
        "IsWon",
        "OwnerId",
        "CreatedById",
        "CreatedDate",
        "LastModifiedById",
        "LastModifiedDate",
        "SystemModstamp",
        "Referral_Link__c",
        "Audit__c",
        "How_can_Microsoft_help__c",
        "Microsoft_Referral_Visibility__c",
        "Microsoft_Solutions__c",
        "Microsoft_CRM_Identifier__c",
    ] {
        assert!(field(name).is_some(), "{name}");
    }
    for object in ["Account", "Contact", "User"] {
        let d = get(&sb, &token, &format!("/sobjects/{object}/describe")).await;
        assert_eq!(d.body["name"], object);
    }
    assert_eq!(
        get(&sb, &token, "/sobjects/Widget__c/describe")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let removed = sb
        .http
        .delete(sb.url("/_sandbox/salesforce/schema/Opportunity/Referral_Identifier__c"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(removed, StatusCode::NO_CONTENT);
    let describe = get(&sb, &token, "/sobjects/Opportunity/describe").await;
    assert!(
        !describe.body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "Referral_Identifier__c")
    );
    let mut body = opportunity("x");
    body["Referral_Identifier__c"] = json!("REF-1");
    let refused = post_json(&sb, &token, "/sobjects/Opportunity/", &body).await;
    assert_eq!(error_code(&refused), "INVALID_FIELD");
    let upsert = patch_json(
        &sb,
        &token,
        "/sobjects/Opportunity/Referral_Identifier__c/REF-1",
        &opportunity("x"),
    )
    .await;
    assert_eq!(upsert.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------
// Outbound Messages

#[tokio::test]
async fn an_update_by_the_integration_user_emits_a_parseable_outbound_message() {
    let sb = TestSandbox::start().await;
    let listener = Listener::scripted(Vec::new(), 200, ACK).await;
    configure_outbound(&sb, &listener.url).await;
    let id = "0065g000000Sbx1";
    let seeded = seed_opportunity(&sb, id, &opportunity("Seeded")).await;
    assert_eq!(seeded.status, StatusCode::CREATED);
    let full_id = seeded.body["Id"].as_str().unwrap().to_owned();
    assert_eq!(full_id.len(), 18);
    let first = notifications(&listener.next().await);
    let seeded_by = first
        .child(OUTBOUND_NS, "Notification")
        .child(OUTBOUND_NS, "sObject")
        .child(SOBJECT_NS, "LastModifiedById")
        .text
        .clone();
    assert_eq!(
        seeded_by, SALESFORCE_SELLER_USER_ID,
        "seeding writes as the seller"
    );

    let token = integration_token(&sb).await;
    let name = "R&D <Deal> \"Q3\" for O'Neil";
    let updated = patch_json(
        &sb,
        &token,
        &format!("/sobjects/Opportunity/{full_id}"),
        &json!({"Name": name, "Amount": 25_000_000, "Sync_with_Partner_Center__c": true}),
    )
    .await;
    assert_eq!(updated.status, StatusCode::NO_CONTENT);

    let message = listener.next().await;
    assert_eq!(
        message.header("content-type").as_deref(),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(message.header("soapaction").as_deref(), Some("\"\""));
    let raw = message.text();
    assert!(
        raw.contains("R&amp;D &lt;Deal&gt;"),
        "values are escaped: {raw}"
    );
    let n = notifications(&message);
    assert_eq!(
        n.child(OUTBOUND_NS, "OrganizationId").text,
        SALESFORCE_ORG_ID
    );
    assert!(n.child(OUTBOUND_NS, "ActionId").text.starts_with("04k"));
    assert_eq!(
        n.child(OUTBOUND_NS, "SessionId").attr("xsi:nil"),
        Some("true")
    );
    assert_eq!(
        n.child(OUTBOUND_NS, "EnterpriseUrl").text,
        format!(
            "{}/services/Soap/c/62.0/{SALESFORCE_ORG_ID}",
            sb.sandbox.base_url
        )
    );
    assert_eq!(
        n.child(OUTBOUND_NS, "PartnerUrl").text,
        format!(
            "{}/services/Soap/u/62.0/{SALESFORCE_ORG_ID}",
            sb.sandbox.base_url
        )
    );
    let notification = n.child(OUTBOUND_NS, "Notification");
    let notification_id = &notification.child(OUTBOUND_NS, "Id").text;
    assert_eq!(notification_id.len(), 18);
    assert!(notification_id.starts_with("04l"));
    assert_ne!(
        notification_id,
        &first
            .child(OUTBOUND_NS, "Notification")
            .child(OUTBOUND_NS, "Id")
            .text,
        "every notification has its own id"
    );
    let sobject = notification.child(OUTBOUND_NS, "sObject");
    assert_eq!(sobject.attr("xsi:type"), Some("sf:Opportunity"));
    assert_eq!(sobject.attr("xmlns:sf"), Some(SOBJECT_NS));
    let field = |name: &str| sobject.child(SOBJECT_NS, name).text.clone();
    assert_eq!(field("Id"), full_id);
    assert_eq!(field("LastModifiedById"), SALESFORCE_INTEGRATION_USER_ID);
    assert_eq!(field("Name"), name);
    assert_eq!(field("Amount"), "2.5E7");
    assert_eq!(field("Sync_with_Partner_Center__c"), "true");
    assert_eq!(field("StageName"), "Prospecting");
    assert_eq!(field("CloseDate"), "2026-06-30");
    assert!(field("LastModifiedDate").ends_with('Z'));
    assert_eq!(
        sobject.all(SOBJECT_NS, "Description").count(),
        0,
        "null fields are left out"
    );

    assert!(listener.is_quiet(Duration::from_millis(200)).await);
    let log = deliveries(&sb).await;
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|d| d["service"] == "salesforce" && d["delivered"] == true)
    );
}

#[tokio::test]
async fn a_message_without_ack_is_redelivered_until_acknowledged() {
    let sb = TestSandbox::start().await;
    let listener = AckAfter::start(2).await;
    configure_outbound(&sb, &listener.url).await;
    let token = integration_token(&sb).await;
    create_opportunity(&sb, &token, &opportunity("Needs ack")).await;
    let first = listener.next().await;
    let second = listener.next().await;
    let third = listener.next().await;
    assert_eq!(first.body, second.body, "a re-delivery repeats the message");
    assert_eq!(second.body, third.body);
    assert!(
        listener.is_quiet(Duration::from_millis(300)).await,
        "acknowledged: no more attempts"
    );
    let log = deliveries(&sb).await;
    assert_eq!(log.len(), 1);
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["accepted"], false);
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[2]["accepted"], true);
    assert_eq!(log[0]["delivered"], true);
}

async fn batch(sb: &TestSandbox, ids: &[String]) -> Answer {
    answer(
        sb.http
            .post(sb.url("/_sandbox/salesforce/outbound-messages/batch"))
            .json(&json!({ "ids": ids }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_batch_of_100_is_one_message_with_100_notifications_and_101_is_refused() {
    let sb = TestSandbox::start().await;
    let mut ids = Vec::new();
    // Seeded before an endpoint exists: no messages yet.
    for n in 0..101 {
        let id = format!("0065g000000B{n:03}");
        let seeded = seed_opportunity(&sb, &id, &opportunity(&format!("Batch {n}"))).await;
        assert!(seeded.headers.get("x-sandbox-delivery-id").is_none());
        ids.push(seeded.body["Id"].as_str().unwrap().to_owned());
    }
    let no_endpoint = batch(&sb, &ids[..1]).await;
    assert_eq!(no_endpoint.status, StatusCode::CONFLICT);

    let listener = Listener::scripted(Vec::new(), 200, ACK).await;
    configure_outbound(&sb, &listener.url).await;
    assert_eq!(batch(&sb, &ids).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(batch(&sb, &[]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        batch(&sb, &["0065g0000000000AAA".to_owned()]).await.status,
        StatusCode::NOT_FOUND
    );
    let sent = batch(&sb, &ids[..100]).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED);
    assert_eq!(sent.body["notification_ids"].as_array().unwrap().len(), 100);

    let message = notifications(&listener.next().await);
    let all: Vec<&El> = message.all(OUTBOUND_NS, "Notification").collect();
    assert_eq!(all.len(), 100);
    let record_ids: Vec<String> = all
        .iter()
        .map(|n| {
            n.child(OUTBOUND_NS, "sObject")
                .child(SOBJECT_NS, "Id")
                .text
                .clone()
        })
        .collect();
    assert_eq!(record_ids, ids[..100].to_vec());
    let mut notification_ids: Vec<&str> = all
        .iter()
        .map(|n| n.child(OUTBOUND_NS, "Id").text.as_str())
        .collect();
    notification_ids.sort_unstable();
    notification_ids.dedup();
    assert_eq!(notification_ids.len(), 100);
    assert!(
        listener.is_quiet(Duration::from_millis(200)).await,
        "exactly one message"
    );
}

#[tokio::test]
async fn resend_repeats_the_message_with_the_same_notification_ids() {
    let sb = TestSandbox::start().await;
    let listener = Listener::scripted(Vec::new(), 200, ACK).await;
    configure_outbound(&sb, &listener.url).await;
    let seeded = seed_opportunity(&sb, "0065g000000Rsnd", &opportunity("Twice")).await;
    let delivery_id: u64 = seeded.headers["x-sandbox-delivery-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let original = listener.next().await;

    let resent = answer(
        sb.http
            .post(sb.url(&format!(
                "/_sandbox/salesforce/outbound-messages/{delivery_id}/resend"
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resent.status, StatusCode::ACCEPTED);
    assert_ne!(resent.body["delivery_id"], json!(delivery_id));
    let duplicate = listener.next().await;
    assert_eq!(duplicate.body, original.body, "byte-for-byte");
    let id_of = |m: &Received| {
        notifications(m)
            .child(OUTBOUND_NS, "Notification")
            .child(OUTBOUND_NS, "Id")
            .text
            .clone()
    };
    assert_eq!(id_of(&duplicate), id_of(&original));
    assert_eq!(resent.body["notification_ids"], json!([id_of(&original)]));

    let unknown = sb
        .http
        .post(sb.url("/_sandbox/salesforce/outbound-messages/999/resend"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unknown, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn switched_off_webhooks_send_no_outbound_message() {
    let sb = TestSandbox::start().await;
    let listener = Listener::scripted(Vec::new(), 200, ACK).await;
    configure_outbound(&sb, &listener.url).await;
    let status = sb
        .http
        .post(sb.url("/_sandbox/webhooks"))
        .json(&json!({"service": "salesforce", "enabled": false}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let token = integration_token(&sb).await;
    create_opportunity(&sb, &token, &opportunity("Silent")).await;
    let log = deliveries(&sb).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (&log[0]["finished"], &log[0]["delivered"]),
        (&json!(true), &json!(false))
    );
    assert!(listener.is_quiet(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn seeding_reads_back_raw_and_through_rest() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let seeded = answer(
        sb.http
            .put(sb.url(&format!(
                "/_sandbox/salesforce/Account/0015g000000Seed?as_user={SALESFORCE_INTEGRATION_USER_ID}"
            )))
            .json(&json!({"attributes": {"type": "Account"}, "name": "Seeded Co", "BillingPostalCode": "98052"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seeded.status, StatusCode::CREATED);
    let id = seeded.body["Id"].as_str().unwrap();
    assert_eq!(
        seeded.body["LastModifiedById"],
        SALESFORCE_INTEGRATION_USER_ID
    );
    let raw: Value = sb
        .http
        .get(sb.url(&format!("/_sandbox/salesforce/Account/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["Name"], "Seeded Co");
    let rest = get(&sb, &token, &format!("/sobjects/Account/{id}")).await;
    assert_eq!(rest.body["Name"], "Seeded Co");
    let replaced = sb
        .http
        .put(sb.url(&format!("/_sandbox/salesforce/Account/{id}")))
        .json(&json!({"Name": "Renamed"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(replaced, StatusCode::OK);
    let bad = sb
        .http
        .put(sb.url("/_sandbox/salesforce/Account/0065g000000Seed"))
        .json(&json!({"Name": "x"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        bad,
        StatusCode::BAD_REQUEST,
        "an Opportunity id is no Account id"
    );
    let versions = answer(sb.http.get(sb.url("/services/data")).send().await.unwrap()).await;
    assert_eq!(
        versions.status,
        StatusCode::OK,
        "the versions list needs no session"
    );
    assert_eq!(versions.body[0]["version"], "62.0");
    let slash = sb
        .http
        .get(sb.url("/services/data/"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(slash, StatusCode::OK);
}

#[tokio::test]
async fn soql_reads_parent_fields_through_relationships_in_one_request() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let account = post_json(
        &sb,
        &token,
        "/sobjects/Account/",
        &json!({"Name": "Contoso", "BillingPostalCode": "98052", "Phone": "555"}),
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let contact = post_json(
        &sb,
        &token,
        "/sobjects/Contact/",
        &json!({"FirstName": "Sue", "LastName": "Smith", "Email": "sue@contoso.com"}),
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = opportunity("with parents");
    body["AccountId"] = json!(account);
    body["ContactId"] = json!(contact);
    let id = create_opportunity(&sb, &token, &body).await;
    let orphan = create_opportunity(&sb, &token, &opportunity("orphan")).await;
    sb.http
        .delete(sb.url("/_sandbox/requests"))
        .send()
        .await
        .unwrap();

    let select = "SELECT Id, Name, Account.Name, account.BillingPostalCode, Contact.Email, \
                  Contact.FirstName FROM Opportunity WHERE Id = ";
    let found = query(&sb, &token, &format!("{select}'{id}'")).await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(
        found.body["records"][0],
        json!({
            "attributes": {"type": "Opportunity", "url": format!("/services/data/v62.0/sobjects/Opportunity/{id}")},
            "Id": id,
            "Name": "with parents",
            "Account": {
                "attributes": {"type": "Account", "url": format!("/services/data/v62.0/sobjects/Account/{account}")},
                "Name": "Contoso",
                "BillingPostalCode": "98052",
            },
            "Contact": {
                "attributes": {"type": "Contact", "url": format!("/services/data/v62.0/sobjects/Contact/{contact}")},
                "Email": "sue@contoso.com",
                "FirstName": "Sue",
            },
        })
    );
    let bare = query(&sb, &token, &format!("{select}'{orphan}'")).await;
    assert_eq!(bare.body["records"][0]["Account"], Value::Null);
    assert_eq!(bare.body["records"][0]["Contact"], Value::Null);
    let none = query(&sb, &token, &format!("{select}'006000000000077AAA'")).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.body["totalSize"], 0);
    assert_eq!(none.body["records"], json!([]));

    let unknown = query(&sb, &token, "SELECT Id, Acount.Name FROM Opportunity").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&unknown), "INVALID_FIELD");
    assert!(
        unknown.body[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Didn't understand relationship 'Acount' in field path."),
        "{:?}",
        unknown.body
    );
    let column = query(&sb, &token, "SELECT Id, Account.Nme FROM Opportunity").await;
    assert_eq!(error_code(&column), "INVALID_FIELD");

    let requests = sb.requests(Some("salesforce")).await;
    assert_eq!(
        requests.len(),
        5,
        "one logged request per query: {requests:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Composite

const V: &str = "/services/data/v62.0";

async fn composite(sb: &TestSandbox, token: &str, all_or_none: bool, subs: &[Value]) -> Answer {
    post_json(
        sb,
        token,
        "/composite",
        &json!({"allOrNone": all_or_none, "compositeRequest": subs}),
    )
    .await
}

fn sub(method: &str, url: &str, reference_id: &str, body: Option<Value>) -> Value {
    let mut sub =
        json!({"method": method, "url": format!("{V}{url}"), "referenceId": reference_id});
    if let Some(body) = body {
        sub["body"] = body;
    }
    sub
}

fn soql_url(soql: &str) -> String {
    format!(
        "/query?q={}",
        url::form_urlencoded::byte_serialize(soql.as_bytes()).collect::<String>()
    )
}

async fn count(sb: &TestSandbox, token: &str, object: &str) -> u64 {
    query(sb, token, &format!("SELECT Id FROM {object}"))
        .await
        .body["totalSize"]
        .as_u64()
        .unwrap()
}

/// Account, Contact and Opportunity in one request, the later ones naming the earlier ones.
fn customer_and_opportunity(referral: &str, opportunity_body: Value) -> Vec<Value> {
    vec![
        sub(
            "POST",
            "/sobjects/Account",
            "newAccount",
            Some(json!({"Name": "Contoso", "BillingPostalCode": "98052"})),
        ),
        sub(
            "POST",
            "/sobjects/Contact",
            "newContact",
            Some(
                json!({"LastName": "Ng", "Email": "ng@contoso.example", "AccountId": "@{newAccount.id}"}),
            ),
        ),
        sub(
            "PATCH",
            &format!("/sobjects/Opportunity/Referral_Identifier__c/{referral}"),
            "opportunity",
            Some(opportunity_body),
        ),
    ]
}

#[tokio::test]
async fn a_composite_request_runs_its_subrequests_with_references_between_them() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let mut opportunity = opportunity("Composite deal");
    opportunity["AccountId"] = json!("@{newAccount.id}");
    opportunity["ContactId"] = json!("@{newContact.id}");
    let mut subs = customer_and_opportunity("REF-C1", opportunity);
    subs.push(sub(
        "GET",
        &soql_url("SELECT Id, Account.Name FROM Contact WHERE Email = 'ng@contoso.example'"),
        "found",
        None,
    ));
    subs.push(sub(
        "GET",
        "/sobjects/Contact/@{found.records[0].Id}?fields=LastName",
        "read",
        None,
    ));

    let answer = composite(&sb, &token, true, &subs).await;

    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let responses = answer.body["compositeResponse"].as_array().unwrap();
    let statuses: Vec<u64> = responses
        .iter()
        .map(|r| r["httpStatusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 201, 200, 200], "{responses:?}");
    let refs: Vec<&str> = responses
        .iter()
        .map(|r| r["referenceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        ["newAccount", "newContact", "opportunity", "found", "read"]
    );
    let account = responses[0]["body"]["id"].as_str().unwrap();
    let contact = responses[1]["body"]["id"].as_str().unwrap();
    assert!(
        responses[0]["httpHeaders"]["Location"]
            .as_str()
            .unwrap()
            .ends_with(account)
    );
    assert_eq!(responses[2]["body"]["created"], json!(true));
    let opportunity = responses[2]["body"]["id"].as_str().unwrap();
    let stored = get(&sb, &token, &format!("/sobjects/Opportunity/{opportunity}")).await;
    assert_eq!(stored.body["AccountId"], json!(account));
    assert_eq!(stored.body["ContactId"], json!(contact));
    let contact_row = get(&sb, &token, &format!("/sobjects/Contact/{contact}")).await;
    assert_eq!(contact_row.body["AccountId"], json!(account));
    assert_eq!(
        responses[3]["body"]["records"][0]["Account"]["Name"],
        json!("Contoso")
    );
    assert_eq!(responses[4]["body"]["LastName"], json!("Ng"));
}

#[tokio::test]
async fn a_composite_request_counts_as_one_api_call() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let first = get(&sb, &token, "/limits").await;
    assert_eq!(limit_info(&first), "api-usage=1/100000");
    let subs = customer_and_opportunity("REF-C2", opportunity("One call"));

    let answer = composite(&sb, &token, true, &subs).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        limit_info(&answer),
        "api-usage=2/100000",
        "three subrequests, one call"
    );
    let next = get(&sb, &token, "/limits").await;
    assert_eq!(limit_info(&next), "api-usage=3/100000");
    assert_eq!(next.body["DailyApiRequests"]["Remaining"], json!(99_997));
    // The request log holds the one request, not its subrequests.
    let log = sb.requests(None).await;
    let paths: Vec<&str> = log
        .iter()
        .filter_map(|r| r["path"].as_str())
        .filter(|p| p.starts_with("/services/data/"))
        .collect();
    assert_eq!(
        paths,
        [
            "/services/data/v62.0/limits",
            "/services/data/v62.0/composite",
            "/services/data/v62.0/limits"
        ]
    );
}

#[tokio::test]
async fn a_composite_request_of_26_subrequests_is_refused_whole() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let subs: Vec<Value> = (0..26)
        .map(|i| {
            sub(
                "POST",
                "/sobjects/Account",
                &format!("account{i}"),
                Some(json!({"Name": format!("A{i}")})),
            )
        })
        .collect();

    let refused = composite(&sb, &token, false, &subs).await;

    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&refused), "LIMIT_EXCEEDED");
    assert!(refused.body[0]["message"].as_str().unwrap().contains("25"));
    assert_eq!(count(&sb, &token, "Account").await, 0, "nothing run");
    let accepted = composite(&sb, &token, false, &subs[..25]).await;
    assert_eq!(accepted.status, StatusCode::OK);
    assert_eq!(count(&sb, &token, "Account").await, 25);
}

#[tokio::test]
async fn all_or_none_rolls_back_everything_when_the_last_subrequest_fails() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    // The last subrequest fails: an Opportunity without its required fields.
    let mut failing = json!({"Name": "No stage", "AccountId": "@{newAccount.id}"});
    failing["Description"] = json!("of @{newContact.id}");
    let subs = customer_and_opportunity("REF-C3", failing);

    let answer = composite(&sb, &token, true, &subs).await;

    assert_eq!(answer.status, StatusCode::OK);
    let responses = answer.body["compositeResponse"].as_array().unwrap();
    for rolled_back in &responses[..2] {
        assert_eq!(rolled_back["httpStatusCode"], json!(400));
        assert_eq!(
            rolled_back["body"][0]["errorCode"],
            json!("PROCESSING_HALTED")
        );
    }
    assert_eq!(responses[2]["httpStatusCode"], json!(400));
    assert_eq!(
        responses[2]["body"][0]["errorCode"],
        json!("REQUIRED_FIELD_MISSING")
    );
    assert_eq!(count(&sb, &token, "Account").await, 0, "rolled back");
    assert_eq!(count(&sb, &token, "Contact").await, 0, "rolled back");
    assert_eq!(count(&sb, &token, "Opportunity").await, 0);

    // Without allOrNone the subrequests that succeeded stay.
    let subs = customer_and_opportunity("REF-C3", json!({"Name": "No stage"}));
    let answer = composite(&sb, &token, false, &subs).await;
    let responses = answer.body["compositeResponse"].as_array().unwrap();
    assert_eq!(responses[0]["httpStatusCode"], json!(201));
    assert_eq!(responses[2]["httpStatusCode"], json!(400));
    assert_eq!(count(&sb, &token, "Account").await, 1);
    assert_eq!(count(&sb, &token, "Contact").await, 1);
}

#[tokio::test]
async fn a_rolled_back_update_puts_the_record_back_and_sends_no_outbound_message() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let id = create_opportunity(&sb, &token, &opportunity("Before")).await;
    let before = get(&sb, &token, &format!("/sobjects/Opportunity/{id}")).await;
    let listener = AckAfter::start(0).await;
    configure_outbound(&sb, &listener.url).await;
    let subs = vec![
        sub(
            "PATCH",
            &format!("/sobjects/Opportunity/{id}"),
            "rename",
            Some(json!({"Name": "After"})),
        ),
        sub(
            "POST",
            "/sobjects/Account",
            "broken",
            Some(json!({"NoSuchField": 1})),
        ),
    ];

    let answer = composite(&sb, &token, true, &subs).await;

    let responses = answer.body["compositeResponse"].as_array().unwrap();
    assert_eq!(
        responses[0]["body"][0]["errorCode"],
        json!("PROCESSING_HALTED")
    );
    assert_eq!(responses[1]["body"][0]["errorCode"], json!("INVALID_FIELD"));
    let after = get(&sb, &token, &format!("/sobjects/Opportunity/{id}")).await;
    assert_eq!(after.body, before.body, "as it was");
    assert!(
        deliveries(&sb).await.is_empty(),
        "no Outbound Message for a rolled-back write"
    );
    // The same update standing: one message, once the request is over.
    let answer = composite(&sb, &token, true, &subs[..1]).await;
    assert_eq!(
        answer.body["compositeResponse"][0]["httpStatusCode"],
        json!(204)
    );
    assert_eq!(deliveries(&sb).await.len(), 1);
    listener.next().await;
}

#[tokio::test]
async fn a_reference_to_a_query_without_records_fails_its_subrequest() {
    let sb = TestSandbox::start().await;
    let token = integration_token(&sb).await;
    let subs = vec![
        sub(
            "GET",
            &soql_url("SELECT Id FROM Account WHERE Name = 'Nobody'"),
            "found",
            None,
        ),
        sub(
            "POST",
            "/sobjects/Contact",
            "contact",
            Some(json!({"LastName": "Orphan", "AccountId": "@{found.records[0].Id}"})),
        ),
        sub(
            "POST",
            "/sobjects/Account",
            "independent",
            Some(json!({"Name": "Stands"})),
        ),
    ];

    let answer = composite(&sb, &token, false, &subs).await;

    let responses = answer.body["compositeResponse"].as_array().unwrap();
    assert_eq!(responses[0]["httpStatusCode"], json!(200));
    assert_eq!(responses[0]["body"]["totalSize"], json!(0));
    assert_eq!(responses[1]["httpStatusCode"], json!(400));
    assert_eq!(
        responses[1]["body"][0]["errorCode"],
        json!("PROCESSING_HALTED")
    );
    assert!(
        responses[1]["body"][0]["message"]
            .as_str()
            .unwrap()
            .contains("found.records[0].Id")
    );
    assert_eq!(responses[2]["httpStatusCode"], json!(201));
    assert_eq!(count(&sb, &token, "Contact").await, 0);

    // With allOrNone the whole request is undone.
    let answer = composite(&sb, &token, true, &subs).await;
    let responses = answer.body["compositeResponse"].as_array().unwrap();
    assert_eq!(
        responses[2]["body"][0]["errorCode"],
        json!("PROCESSING_HALTED")
    );
    assert_eq!(
        count(&sb, &token, "Account").await,
        1,
        "only the earlier one"
    );
}

#[tokio::test]
async fn a_composite_subrequest_needs_a_valid_session_like_any_request() {
    let sb = TestSandbox::start().await;
    let refused = answer(
        sb.http
            .post(api(&sb, "/composite"))
            .json(&json!({"allOrNone": false, "compositeRequest": [sub("GET", "/limits", "l", None)]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}
