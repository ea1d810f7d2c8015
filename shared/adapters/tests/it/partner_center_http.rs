//! The HTTP adapters against the sandbox (`cosell_sandbox::spawn`): token providers, the
//! Partner Center referrals adapter, the webhook registration client and webhook signature
//! verification. Certificate-download behaviour (redirects, size cap, caching) is checked
//! against a small counting server, because the sandbox serves certificates outside its
//! request log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cosell_adapters::http::tokens::{
    PARTNER_CENTER_REFERRALS_SCOPE, PARTNER_CENTER_WEBHOOKS_SCOPE, dataverse_scope,
};
use cosell_adapters::http::webhook_signature::{
    CHAIN_RECHECK_INTERVAL, DEFAULT_DOWNLOAD_BURST, DEFAULT_DOWNLOAD_REFILL, DEFAULT_FAILED_URL_TTL,
};
use cosell_adapters::http::{
    EntraRefreshToken, EntraRefreshTokenConfig, HttpAdapterError, HttpPartnerCenter,
    SalesforceJwtBearer, TokenProvider, UnverifiedWebhook, VerifierClock, WebhookAuthErrorKind,
    WebhookRegistrationClient, WebhookVerifier, WebhookVerifierConfig,
};
use cosell_domain::ids::{ETag, ReferralId};
use cosell_domain::ports::{PartnerCenter, PortError, ReferralQuery, Service};
use cosell_domain::referral::{PatchOp, Referral};
use cosell_domain::status::ReferralStatus;
use cosell_domain::webhook::{EventName, WebhookRegistration};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    PC_USER_UPN, SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::Pki;
use cosell_sandbox::{SandboxConfig, pki};
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::mpsc;

use common::Harness;

const CREATE_REQUEST: &str =
    include_str!("../../../../sandbox/tests/data/partner-center/create-referral-request.json");

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

impl Harness {
    fn host_port(&self) -> String {
        self.sandbox.addr.to_string()
    }

    fn refresh_config(&self, refresh_token: &str) -> EntraRefreshTokenConfig {
        EntraRefreshTokenConfig {
            authority: self.base().to_owned(),
            tenant: TENANT_ID.to_owned(),
            client_id: PC_CLIENT_ID.to_owned(),
            client_secret: SecretString::from(PC_CLIENT_SECRET),
            refresh_token: SecretString::from(refresh_token.to_owned()),
            scope: PARTNER_CENTER_REFERRALS_SCOPE.to_owned(),
            credential_label: Some("the Partner Center refresh token (PC_REFRESH_TOKEN)".into()),
            keep_rotated_in: None,
        }
    }

    fn referral_tokens(&self) -> EntraRefreshToken {
        EntraRefreshToken::new(self.http.clone(), self.refresh_config(PC_REFRESH_TOKEN)).unwrap()
    }

    fn partner_center(&self) -> HttpPartnerCenter {
        HttpPartnerCenter::new(self.http.clone(), self.referral_tokens(), self.base()).unwrap()
    }

    fn webhooks_client(&self) -> WebhookRegistrationClient {
        let tokens = self.app_credentials(
            PC_CLIENT_ID,
            PC_CLIENT_SECRET,
            PARTNER_CENTER_WEBHOOKS_SCOPE,
        );
        WebhookRegistrationClient::new(self.http.clone(), tokens, self.base()).unwrap()
    }

    /// Registers `url` for every referral event plus `test-created`.
    async fn register(&self, url: &str, ms_header: bool) {
        let registration = WebhookRegistration {
            webhook_url: Some(url.to_owned()),
            webhook_events: [
                EventName::REFERRAL_EVENTS.as_slice(),
                &[EventName::TestCreated],
            ]
            .concat(),
            signature_token_to_ms_signature_header: Some(ms_header),
            ..WebhookRegistration::default()
        };
        self.webhooks_client().update(&registration).await.unwrap();
    }

    /// A verifier trusting the sandbox PKI that accepts the sandbox's http certificate URL.
    fn verifier(&self) -> WebhookVerifier {
        WebhookVerifier::with_insecure_hosts(sandbox_pki(), [self.host_port()]).unwrap()
    }
}

fn sandbox_pki() -> WebhookVerifierConfig {
    WebhookVerifierConfig::new(pki::ROOT_CERT_PEM, pki::INTERMEDIATE_CERT_PEM)
}

fn create_body() -> Referral {
    serde_json::from_str(CREATE_REQUEST).unwrap()
}

fn referral_id(referral: &Referral) -> ReferralId {
    referral.referral_id().unwrap()
}

/// A webhook receiver handing each request to the test.
struct Listener {
    url: String,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<(HeaderMap, Bytes)>>,
}

impl Listener {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                StatusCode::OK
            }
        }));
        let url = format!("{}/hook", serve(app).await);
        Self {
            url,
            received: tokio::sync::Mutex::new(rx),
        }
    }

    async fn next(&self) -> (HeaderMap, Bytes) {
        tokio::time::timeout(Duration::from_secs(10), self.received.lock().await.recv())
            .await
            .expect("no webhook within 10 s")
            .expect("listener closed")
    }
}

/// A certificate server counting hits per path: `/cert.cer` (the sandbox leaf),
/// `/big.cer` (17 KiB), `/redirect` (302 to `/cert.cer`), `/fail` (503).
struct CertServer {
    base: String,
    host_port: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl CertServer {
    async fn start() -> Self {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let app = Router::new()
            .route("/{name}", get(serve_cert))
            .with_state(Arc::clone(&hits));
        let base = serve(app).await;
        let host_port = base.trim_start_matches("http://").to_owned();
        Self {
            base,
            host_port,
            hits,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn hits(&self, name: &str) -> usize {
        self.hits.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

async fn serve_cert(
    State(hits): State<Arc<Mutex<HashMap<String, usize>>>>,
    Path(name): Path<String>,
) -> Response {
    *hits.lock().unwrap().entry(name.clone()).or_default() += 1;
    match name.as_str() {
        "cert.cer" => (
            [(header::CONTENT_TYPE, "application/pkix-cert")],
            pki::LEAF_CERT_DER,
        )
            .into_response(),
        "cert.pem" => pki::LEAF_CERT_PEM.into_response(),
        "big.cer" => vec![0x30_u8; 17 * 1024].into_response(),
        "redirect" => (StatusCode::FOUND, [(header::LOCATION, "/cert.cer")]).into_response(),
        "fail" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        // Rotated at the same URL: another valid certificate first, the signing one afterwards.
        "rotating.cer" if hits.lock().unwrap()["rotating.cer"] == 1 => {
            pki::OTHER_SUBJECT_CERT_DER.into_response()
        }
        "rogue.cer" => pki::ROGUE_CERT_DER.into_response(),
        "rotating.cer" => pki::LEAF_CERT_DER.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A signed event as delivered: its headers as pairs (for rewriting) and its raw body.
struct Delivered {
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Delivered {
    fn from_parts((headers, body): (HeaderMap, Bytes)) -> Self {
        Self {
            headers: headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
                .collect(),
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The delivery with the header `name` replaced (or removed, for `None`).
    fn replaced(&self, name: &str, value: Option<&str>) -> Self {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        if let Some(value) = value {
            headers.push((name.to_owned(), value.to_owned()));
        }
        Self {
            headers,
            body: self.body.clone(),
        }
    }

    /// The webhook with `name` replaced (or removed, for `None`).
    fn with(&self, name: &str, value: Option<&str>) -> UnverifiedWebhook {
        self.replaced(name, value).unverified()
    }

    fn unverified(&self) -> UnverifiedWebhook {
        UnverifiedWebhook::from_pairs(
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            self.body.clone(),
        )
    }
}

/// A harness with a registered listener and one referral-created event received.
async fn signed_event(ms_header: bool) -> (Harness, Listener, Referral, Delivered) {
    let h = Harness::start().await;
    let listener = Listener::start().await;
    h.register(&listener.url, ms_header).await;
    let created = h
        .partner_center()
        .create_referral(&create_body())
        .await
        .unwrap();
    let delivered = Delivered::from_parts(listener.next().await);
    (h, listener, created, delivered)
}

// ---------------------------------------------------------------------------------------------
// Token providers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refresh_token_provider_makes_one_token_call_for_many_uses() {
    let h = Harness::start().await;
    let tokens = h.referral_tokens();
    let first = tokens.token().await.unwrap();
    for _ in 0..3 {
        assert_eq!(tokens.token().await.unwrap().secret(), first.secret());
    }
    // Concurrent callers share the cached token too.
    let concurrent: Vec<_> = (0..8)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token().await.unwrap().secret().to_owned() })
        })
        .collect();
    for task in concurrent {
        assert_eq!(task.await.unwrap(), first.secret());
    }
    assert_eq!(h.requests("entra").await.len(), 1);
    assert!(first.expires_in() > Duration::from_secs(3000));
    assert!(!format!("{first:?}").contains(first.secret()));

    // The token is a delegated referrals token.
    let status = h
        .control
        .get(h.url("/v1.0/engagements/referrals"))
        .bearer_auth(first.secret())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_first_requests_make_a_single_token_call() {
    let h = Harness::start().await;
    let tokens = TokenProvider::from(h.referral_tokens());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token().await.unwrap().secret().to_owned() })
        })
        .collect();
    let mut secrets = Vec::new();
    for task in tasks {
        secrets.push(task.await.unwrap());
    }
    secrets.dedup();
    assert_eq!(secrets.len(), 1);
    assert_eq!(h.requests("entra").await.len(), 1);
}

#[tokio::test]
async fn invalidate_makes_the_next_use_refresh_exactly_once() {
    let h = Harness::start().await;
    let tokens = TokenProvider::from(h.referral_tokens());
    let old = tokens.token().await.unwrap();
    tokens.invalidate(&old).await;
    let new = tokens.token().await.unwrap();
    assert_ne!(old.secret(), new.secret());
    // A late invalidation of the old token does not throw the new one away.
    tokens.invalidate(&old).await;
    assert_eq!(tokens.token().await.unwrap().secret(), new.secret());
    assert_eq!(h.requests("entra").await.len(), 2);
}

#[tokio::test]
async fn tokens_are_replaced_before_they_expire() {
    let h = Harness::with_config(SandboxConfig {
        token_lifetime: Duration::from_secs(2),
        ..SandboxConfig::default()
    })
    .await;
    let tokens = h.referral_tokens();
    let first = tokens.token().await.unwrap();
    assert_eq!(tokens.token().await.unwrap().secret(), first.secret());
    // Half of a 2 s lifetime is the margin: after 1 s the token is replaced.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = tokens.token().await.unwrap();
    assert_ne!(first.secret(), second.secret());
    assert_eq!(h.requests("entra").await.len(), 2);
}

#[tokio::test]
async fn a_token_expired_by_the_sandbox_clock_is_refused_and_replaced_after_invalidate() {
    let h = Harness::start().await;
    let tokens = h.referral_tokens();
    let token = tokens.token().await.unwrap();
    h.advance_clock(3700).await;
    let status = h
        .control
        .get(h.url("/v1.0/engagements/referrals"))
        .bearer_auth(token.secret())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    tokens.invalidate(&token).await;
    let fresh = tokens.token().await.unwrap();
    let status = h
        .control
        .get(h.url("/v1.0/engagements/referrals"))
        .bearer_auth(fresh.secret())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.requests("entra").await.len(), 2);
}

#[tokio::test]
async fn a_revoked_refresh_token_is_access_denied_with_a_re_consent_fix() {
    let h = Harness::start().await;
    h.post(
        "/_sandbox/entra/revoke-refresh-tokens",
        json!({ "upn": PC_USER_UPN }),
    )
    .await;
    let err = h.referral_tokens().token().await.unwrap_err();
    let HttpAdapterError::Credential {
        credential,
        code,
        message,
        fix,
        ..
    } = &err
    else {
        panic!("expected a credential error, got {err:?}");
    };
    assert_eq!(code, "invalid_grant");
    assert!(message.starts_with("AADSTS50173"), "{message}");
    assert!(credential.contains("PC_REFRESH_TOKEN"), "{credential}");
    assert!(fix.contains("revoked or has expired"), "{fix}");
    assert!(fix.contains("re-consent"), "{fix}");
    let port = err.into_port_error();
    assert!(matches!(port, PortError::AccessDenied { .. }), "{port:?}");
    assert!(!port.is_retryable());
    assert!(port.to_string().contains("Fix: "), "{port}");

    // A re-consented (new) refresh token works again.
    let seeded = h.post("/_sandbox/entra/refresh-tokens", json!({})).await;
    let config = h.refresh_config(seeded["refresh_token"].as_str().unwrap());
    let tokens = EntraRefreshToken::new(h.http.clone(), config).unwrap();
    tokens.token().await.unwrap();
}

/// A token endpoint that rotates the refresh token on every use and accepts only the latest
/// one (stricter than Entra, which keeps older ones valid until revoked).
async fn rotating_token_endpoint() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let current = Arc::new(Mutex::new(String::from("rt-0")));
    let seen_in = Arc::clone(&seen);
    let app = Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move |body: Bytes| {
            let seen = Arc::clone(&seen_in);
            let current = Arc::clone(&current);
            async move {
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let presented = form.get("refresh_token").cloned().unwrap_or_default();
                seen.lock().unwrap().push(format!(
                    "{} scope={}",
                    presented,
                    form.get("scope").cloned().unwrap_or_default()
                ));
                let mut current = current.lock().unwrap();
                if presented != *current {
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({
                            "error": "invalid_grant",
                            "error_description": "AADSTS70000: Provided grant is invalid or malformed."
                        })),
                    );
                }
                let n: u32 = current[3..].parse().unwrap();
                *current = format!("rt-{}", n + 1);
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "token_type": "Bearer",
                        "expires_in": 3600,
                        "access_token": format!("at-{}", n + 1),
                        "refresh_token": *current,
                    })),
                )
            }
        }),
    );
    (serve(app).await, seen)
}

/// Delegated Partner Center tokens from the token endpoint at `authority`, refresh token `rt-0`.
fn refresh_tokens_from(authority: String) -> EntraRefreshToken {
    EntraRefreshToken::new(
        reqwest::Client::new(),
        EntraRefreshTokenConfig {
            authority,
            tenant: "organizations".into(),
            client_id: "app".into(),
            client_secret: SecretString::from("secret"),
            refresh_token: SecretString::from("rt-0"),
            scope: PARTNER_CENTER_REFERRALS_SCOPE.into(),
            credential_label: None,
            keep_rotated_in: None,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn the_rotated_refresh_token_is_used_for_the_next_refresh() {
    let (authority, seen) = rotating_token_endpoint().await;
    let tokens = TokenProvider::from(refresh_tokens_from(authority));
    let first = tokens.token().await.unwrap();
    assert_eq!(first.secret(), "at-1");
    tokens.invalidate(&first).await;
    assert_eq!(tokens.token().await.unwrap().secret(), "at-2");
    tokens.invalidate(&tokens.token().await.unwrap()).await;
    assert_eq!(tokens.token().await.unwrap().secret(), "at-3");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "rt-0 scope=https://api.partner.microsoft.com/.default offline_access",
            "rt-1 scope=https://api.partner.microsoft.com/.default offline_access",
            "rt-2 scope=https://api.partner.microsoft.com/.default offline_access",
        ]
    );
    assert!(!format!("{tokens:?}").contains("rt-"), "{tokens:?}");
}

#[tokio::test]
async fn client_credentials_get_app_only_tokens_and_a_wrong_secret_names_the_fix() {
    let h = Harness::start().await;
    let webhooks = h.app_credentials(
        PC_CLIENT_ID,
        PC_CLIENT_SECRET,
        PARTNER_CENTER_WEBHOOKS_SCOPE,
    );
    let token = webhooks.token().await.unwrap();
    let status = h
        .control
        .get(h.url("/webhooks/v1/registration/events"))
        .bearer_auth(token.secret())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);

    let dataverse = h.app_credentials(
        DATAVERSE_CLIENT_ID,
        DATAVERSE_CLIENT_SECRET,
        &dataverse_scope(h.base()),
    );
    dataverse.token().await.unwrap();
    dataverse.token().await.unwrap();
    assert_eq!(h.requests("entra").await.len(), 2);

    let wrong = h.app_credentials(DATAVERSE_CLIENT_ID, "wrong", &dataverse_scope(h.base()));
    let err = wrong.token().await.unwrap_err();
    assert!(
        matches!(&err, HttpAdapterError::Credential { fix, .. } if fix.contains("new client secret")),
        "{err:?}"
    );
    assert!(matches!(
        err.into_port_error(),
        PortError::AccessDenied { .. }
    ));
}

#[tokio::test]
async fn an_unavailable_token_endpoint_is_transient() {
    let h = Harness::start().await;
    h.inject(json!({ "service": "entra", "status": 503, "count": 1, "retry_after": 3 }))
        .await;
    let err = h.referral_tokens().token().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    let port = err.into_port_error();
    assert!(
        matches!(
            port,
            PortError::Transient {
                service: Service::Identity,
                ..
            }
        ),
        "{port:?}"
    );
}

#[tokio::test]
async fn a_salesforce_jwt_bearer_token_comes_with_the_instance_url_and_is_cached() {
    let h = Harness::start().await;
    let provider = SalesforceJwtBearer::new(
        h.http.clone(),
        h.salesforce_config(SALESFORCE_INTEGRATION_USERNAME),
    )
    .unwrap();
    let token = provider.token().await.unwrap();
    assert_eq!(
        token
            .instance_url()
            .map(|u| u.as_str().trim_end_matches('/')),
        Some(h.base())
    );
    assert_eq!(provider.token().await.unwrap().secret(), token.secret());
    assert_eq!(h.requests("salesforce-auth").await.len(), 1);
    assert!(!format!("{provider:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_salesforce_user_without_approval_gets_the_pre_authorize_fix() {
    let h = Harness::start().await;
    let provider = SalesforceJwtBearer::new(
        h.http.clone(),
        h.salesforce_config("nobody@partner.sandbox"),
    )
    .unwrap();
    let err = provider.token().await.unwrap_err();
    let HttpAdapterError::Credential { message, fix, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains("hasn't approved this consumer"),
        "{message}"
    );
    assert!(fix.contains("pre-authorize the connected app"), "{fix}");
    assert!(fix.contains("permission set"), "{fix}");
    assert!(matches!(
        err.into_port_error(),
        PortError::AccessDenied { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Partner Center referrals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_get_and_patch_a_referral_with_etags() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    let created = pc.create_referral(&create_body()).await.unwrap();
    let id = referral_id(&created);
    let etag = created.etag().expect("created referral has an eTag");
    assert_eq!(created.status, Some(ReferralStatus::Active));

    let read = pc.get_referral(&id).await.unwrap();
    assert_eq!(read.etag(), Some(etag.clone()));

    let ops = [PatchOp::replace("/details/dealValue", json!(12345))];
    let patched = pc.patch_referral(&id, Some(&etag), &ops).await.unwrap();
    let new_etag = patched.etag.expect("the patch returns the new eTag");
    assert_ne!(new_etag, etag);
    let read = pc.get_referral(&id).await.unwrap();
    assert_eq!(read.etag(), Some(new_etag.clone()));
    // And the new updatedDateTime: its echo is known by the event's ResourceChangeUtcDate.
    assert_eq!(patched.updated, read.updated());
    assert!(patched.updated.is_some());
    assert_eq!(
        read.deal_value().map(|d| d.to_string()).as_deref(),
        Some("12345")
    );

    // The old eTag is stale now.
    let err = pc.patch_referral(&id, Some(&etag), &ops).await.unwrap_err();
    assert_eq!(
        err,
        PortError::PreconditionFailed {
            service: Service::PartnerCenter
        }
    );
    // Without If-Match there is no concurrency check.
    let unconditional = pc.patch_referral(&id, None, &ops).await.unwrap();
    assert!(unconditional.etag.is_some_and(|tag| tag != new_etag));

    // Every request carried the correlation headers (the sandbox accepts them silently),
    // and one token served all six calls.
    assert_eq!(h.requests("entra").await.len(), 1);
}

#[tokio::test]
async fn listing_follows_next_links_across_pages() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            pc.create_referral(&create_body())
                .await
                .unwrap()
                .id
                .unwrap(),
        );
    }
    let query = ReferralQuery {
        status: Some(ReferralStatus::Active),
        top: Some(2),
        ..ReferralQuery::default()
    };
    let first = pc.list_referrals(&query).await.unwrap();
    assert_eq!(first.value.len(), 2);
    let next = first.next_link.clone().expect("a second page");
    assert!(next.starts_with(h.base()), "{next}");
    let second = pc
        .list_referrals(&ReferralQuery {
            next_link: Some(next),
            ..ReferralQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(second.value.len(), 1);
    assert_eq!(second.next_link, None);
    let mut listed: Vec<String> = first
        .value
        .iter()
        .chain(&second.value)
        .map(|r| r.id.clone().unwrap())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);

    // Changes since an instant, oldest first.
    let since = ReferralQuery {
        updated_since: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        ..ReferralQuery::default()
    };
    assert_eq!(pc.list_referrals(&since).await.unwrap().value.len(), 3);
    let requests = h.requests("partner-center").await;
    let paths: Vec<&str> = requests.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.contains("$filter=status%20eq%20%27Active%27&$top=2")),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.contains("$orderby=updatedDateTime%20asc")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn an_unknown_referral_is_not_found() {
    let h = Harness::start().await;
    let id = ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap();
    let err = h.partner_center().get_referral(&id).await.unwrap_err();
    assert_eq!(
        err,
        PortError::NotFound {
            service: Service::PartnerCenter,
            what: format!("referral {id}")
        }
    );
}

#[tokio::test]
async fn a_503_is_transient_and_the_next_call_succeeds() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    h.inject(json!({ "service": "partner-center", "status": 503, "count": 1 }))
        .await;
    let err = pc
        .list_referrals(&ReferralQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PortError::Transient {
                service: Service::PartnerCenter,
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    pc.list_referrals(&ReferralQuery::default()).await.unwrap();
}

#[tokio::test]
async fn a_429_is_transient_with_its_retry_after() {
    let h = Harness::start().await;
    h.inject(json!({ "service": "partner-center", "status": 429, "count": 1, "retry_after": 7 }))
        .await;
    let err = h
        .partner_center()
        .list_referrals(&ReferralQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.to_string().contains("Rate limit is exceeded"), "{err}");
}

#[tokio::test]
async fn a_user_without_the_role_is_access_denied_naming_the_role() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    let created = pc.create_referral(&create_body()).await.unwrap();
    let path = format!("/_sandbox/partner-center/users/{PC_USER_UPN}");

    h.put(&path, json!({ "roles": [] })).await;
    let err = pc
        .list_referrals(&ReferralQuery::default())
        .await
        .unwrap_err();
    let PortError::AccessDenied { missing_role, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        missing_role.as_deref(),
        Some("Referral Admin or Referral User")
    );
    assert!(
        err.to_string()
            .contains("Fix: grant the Referral Admin or Referral User role")
    );

    h.put(&path, json!({ "roles": ["ReferralUser"] })).await;
    pc.get_referral(&referral_id(&created)).await.unwrap();
    let ops = [PatchOp::replace("/details/dealValue", json!(1))];
    let err = pc
        .patch_referral(&referral_id(&created), None, &ops)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::AccessDenied { missing_role: Some(role), .. } if role == "Referral Admin"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_expired_token_is_refreshed_transparently_exactly_once() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    let created = pc.create_referral(&create_body()).await.unwrap();
    assert_eq!(h.requests("entra").await.len(), 1);

    h.advance_clock(3700).await;
    let read = pc.get_referral(&referral_id(&created)).await.unwrap();
    assert_eq!(read.id, created.id);

    assert_eq!(h.requests("entra").await.len(), 2, "exactly one refresh");
    let statuses: Vec<u64> = h
        .requests("partner-center")
        .await
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [201, 401, 200]);
}

#[tokio::test]
async fn a_token_refused_again_after_a_refresh_is_access_denied_naming_the_credential() {
    let h = Harness::start().await;
    h.inject(json!({ "service": "partner-center", "status": 401, "count": 2 }))
        .await;
    let err = h
        .partner_center()
        .list_referrals(&ReferralQuery::default())
        .await
        .unwrap_err();
    let PortError::AccessDenied { message, .. } = &err else {
        panic!("expected AccessDenied, got {err:?}");
    };
    assert!(message.contains("PC_REFRESH_TOKEN"), "{message}");
    assert!(message.contains("Fix:"), "{message}");
    assert!(!err.is_retryable());
    assert_eq!(h.requests("entra").await.len(), 2);
    assert_eq!(h.requests("partner-center").await.len(), 2);
}

#[tokio::test]
async fn a_closed_referral_refuses_changes_permanently_with_the_services_message() {
    let h = Harness::start().await;
    let pc = h.partner_center();
    let created = pc.create_referral(&create_body()).await.unwrap();
    let id = referral_id(&created);
    let close = [
        PatchOp::replace("/status", json!("Closed")),
        PatchOp::replace("/substatus", json!("Won")),
    ];
    pc.patch_referral(&id, None, &close).await.unwrap();
    let err = pc
        .patch_referral(
            &id,
            None,
            &[PatchOp::replace("/details/dealValue", json!(5))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("409"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Webhook registration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_webhook_registration_lifecycle_with_an_app_only_token() {
    let h = Harness::start().await;
    let listener = Listener::start().await;
    let client = h.webhooks_client();
    assert_eq!(client.get().await.unwrap(), None);
    let events = client.events().await.unwrap();
    assert!(events.contains(&EventName::ReferralCreated), "{events:?}");

    let mut registration = WebhookRegistration {
        webhook_url: Some(listener.url.clone()),
        webhook_events: vec![EventName::ReferralCreated],
        ..WebhookRegistration::default()
    };
    let registered = client.register(&registration).await.unwrap();
    let subscriber = registered.subscriber_id.clone().expect("a subscriber id");
    let again = client.register(&registration).await.unwrap_err();
    assert!(
        matches!(&again, HttpAdapterError::Rejected { status: 409, message, .. } if message.contains("PUT")),
        "{again:?}"
    );

    registration.webhook_events = vec![EventName::TestCreated, EventName::ReferralCreated];
    let updated = client.update(&registration).await.unwrap();
    assert_eq!(updated.subscriber_id.as_deref(), Some(subscriber.as_str()));
    let current = client.get().await.unwrap().expect("registered");
    assert_eq!(current.webhook_events, registration.webhook_events);

    let sent = client.send_validation_event().await.unwrap();
    let correlation = sent.correlation_id.expect("a correlation id");
    let (headers, body) = listener.next().await;
    let verified = UnverifiedWebhook::from_headers(&headers, body)
        .verify(&h.verifier())
        .await
        .unwrap();
    assert!(verified.event().unwrap().is_test());

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.validation_event_status(&correlation).await.unwrap();
        if status.status.as_deref() == Some("completed") {
            assert_eq!(status.results[0].response_code.as_deref(), Some("OK"));
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One app-only token for all of it.
    assert_eq!(h.requests("entra").await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Webhook signatures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_sandbox_signed_event_verifies_and_only_then_parses() {
    for ms_header in [false, true] {
        let (h, _listener, created, delivered) = signed_event(ms_header).await;
        assert_eq!(delivered.header("x-ms-signature").is_some(), ms_header);
        let verified = delivered.unverified().verify(&h.verifier()).await.unwrap();
        let event = verified.event().unwrap();
        assert_eq!(event.event_name, EventName::ReferralCreated);
        assert_eq!(event.referral_id().unwrap(), referral_id(&created));
        assert_eq!(verified.body(), &delivered.body);
    }
}

#[tokio::test]
async fn trust_anchors_fetched_from_the_sandbox_work_too() {
    let (h, _listener, _, delivered) = signed_event(false).await;
    let text = |path: &str| {
        let url = h.url(path);
        let client = h.control.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let config = WebhookVerifierConfig::new(
        text("/_sandbox/pki/root.pem").await,
        text("/_sandbox/pki/intermediate.pem").await,
    );
    let verifier = WebhookVerifier::with_insecure_hosts(config, [h.host_port()]).unwrap();
    delivered.unverified().verify(&verifier).await.unwrap();
    // Without the intermediate the chain cannot be built.
    let anchors_only = WebhookVerifier::with_insecure_hosts(
        WebhookVerifierConfig::new(pki::ROOT_CERT_PEM, ""),
        [h.host_port()],
    )
    .unwrap();
    let err = delivered
        .unverified()
        .verify(&anchors_only)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
}

#[tokio::test]
async fn a_rogue_signer_is_unauthorized() {
    let (h, listener, created, _) = signed_event(false).await;
    h.post(
        "/_sandbox/partner-center/events",
        json!({ "eventName": "referral-updated", "referralId": created.id, "signer": "rogue" }),
    )
    .await;
    let rogue = Delivered::from_parts(listener.next().await);
    assert!(
        rogue
            .header("x-ms-certificate-url")
            .unwrap()
            .ends_with("/cert/rogue.cer")
    );
    let err = rogue.unverified().verify(&h.verifier()).await.unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert_eq!(err.status_code(), 401);
    assert!(err.reason().contains("chain"), "{err}");

    // The rogue signature with the genuine certificate fails on the signature instead.
    let genuine_url = h.url(pki::LEAF_CERT_PATH);
    let err = rogue
        .with("X-MS-Certificate-Url", Some(&genuine_url))
        .verify(&h.verifier())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("signature"), "{err}");
}

#[tokio::test]
async fn a_tampered_body_is_unauthorized() {
    let (h, listener, created, _) = signed_event(false).await;
    h.post(
        "/_sandbox/partner-center/events",
        json!({ "eventName": "referral-updated", "referralId": created.id, "tamper": true }),
    )
    .await;
    let tampered = Delivered::from_parts(listener.next().await);
    let err = tampered
        .unverified()
        .verify(&h.verifier())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("signature does not match"), "{err}");
}

#[tokio::test]
async fn missing_headers_are_bad_requests() {
    let (h, _listener, _, delivered) = signed_event(false).await;
    for name in [
        "Authorization",
        "X-MS-Certificate-Url",
        "X-MS-Signature-Algorithm",
    ] {
        let err = delivered
            .with(name, None)
            .verify(&h.verifier())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), WebhookAuthErrorKind::BadRequest, "{name}");
        assert_eq!(err.status_code(), 400);
    }
    let err = delivered
        .with("X-MS-Signature-Algorithm", Some("rsa-sha1"))
        .verify(&h.verifier())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
}

#[tokio::test]
async fn a_certificate_url_on_another_host_is_refused_without_a_download() {
    let (h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    // The verifier knows the sandbox host only.
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("cert.cer")))
        .verify(&h.verifier())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("not on an allowed host"), "{err}");
    for url in [
        "https://evil.example/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://3psostorageacct.blob.core.windows.net.evil.example/cert/x.cer",
    ] {
        let err = delivered
            .with("X-MS-Certificate-Url", Some(url))
            .verify(&h.verifier())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized, "{url}");
    }
    assert_eq!(certs.hits("cert.cer"), 0);
}

#[tokio::test]
async fn an_http_certificate_url_is_refused_without_the_insecure_opt_in() {
    let (h, _listener, _, delivered) = signed_event(false).await;
    let production = WebhookVerifier::new(sandbox_pki()).unwrap();
    let err = delivered
        .unverified()
        .verify(&production)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("not on an allowed host"), "{err}");
    // The same host as https (not allow-listed) is refused too.
    let https = h.url(pki::LEAF_CERT_PATH).replace("http://", "https://");
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&https))
        .verify(&production)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert_eq!(production.cached_certificates(), 0);
}

#[tokio::test]
async fn a_redirecting_certificate_url_is_not_followed() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let verifier = WebhookVerifier::with_insecure_hosts(sandbox_pki(), [&certs.host_port]).unwrap();
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("redirect")))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("redirect"), "{err}");
    assert_eq!(certs.hits("redirect"), 1);
    assert_eq!(certs.hits("cert.cer"), 0);
}

#[tokio::test]
async fn an_oversize_certificate_is_rejected() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let verifier = WebhookVerifier::with_insecure_hosts(sandbox_pki(), [&certs.host_port]).unwrap();
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("big.cer")))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("larger than"), "{err}");
    assert_eq!(verifier.cached_certificates(), 0);
}

#[tokio::test]
async fn a_certificate_is_downloaded_once_per_url() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let verifier = WebhookVerifier::with_insecure_hosts(sandbox_pki(), [&certs.host_port]).unwrap();
    for _ in 0..3 {
        delivered
            .with("X-MS-Certificate-Url", Some(&certs.url("cert.cer")))
            .verify(&verifier)
            .await
            .unwrap();
    }
    assert_eq!(certs.hits("cert.cer"), 1);
    // A PEM certificate is accepted too, and cached under its own URL.
    delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("cert.pem")))
        .verify(&verifier)
        .await
        .unwrap();
    assert_eq!(certs.hits("cert.pem"), 1);
    assert_eq!(verifier.cached_certificates(), 2);
}

#[tokio::test]
async fn a_certificate_rotated_at_the_same_url_is_downloaded_again_once() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let mut settings = sandbox_pki();
    settings.refresh_interval = Duration::ZERO;
    // Both certificates are valid signing certificates here; the first one served is the old.
    settings
        .allowed_subject_names
        .push("other-service.microsoft.com".to_owned());
    let verifier = WebhookVerifier::with_insecure_hosts(settings, [&certs.host_port]).unwrap();
    let rotating = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("rotating.cer")));
    // The first download is the old certificate: the signature is refused, and the
    // certificate not fetched again within the same request.
    let err = rotating.unverified().verify(&verifier).await.unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert_eq!(certs.hits("rotating.cer"), 1);
    // The next event fails on the cached certificate, so it is downloaded again: the new one
    // verifies, and is cached.
    rotating.unverified().verify(&verifier).await.unwrap();
    assert_eq!(certs.hits("rotating.cer"), 2);
    rotating.unverified().verify(&verifier).await.unwrap();
    assert_eq!(certs.hits("rotating.cer"), 2);
    assert_eq!(verifier.cached_certificates(), 1);
}

#[tokio::test]
async fn forged_events_do_not_make_the_certificate_download_again_within_the_interval() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let verifier = WebhookVerifier::with_insecure_hosts(sandbox_pki(), [&certs.host_port]).unwrap();
    let genuine = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("cert.cer")));
    genuine.unverified().verify(&verifier).await.unwrap();
    let forged = genuine
        .replaced("x-ms-signature", None)
        .replaced("Authorization", Some("Signature AAAA"));
    for _ in 0..3 {
        let err = forged.unverified().verify(&verifier).await.unwrap_err();
        assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    }
    assert_eq!(certs.hits("cert.cer"), 1);
}

#[tokio::test]
async fn a_failing_certificate_download_is_unavailable() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let verifier = WebhookVerifier::with_insecure_hosts(
        sandbox_pki(),
        [certs.host_port.clone(), "127.0.0.1:9".to_owned()],
    )
    .unwrap();
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("fail")))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unavailable);
    assert_eq!(err.status_code(), 503);
    let err = delivered
        .with("X-MS-Certificate-Url", Some("http://127.0.0.1:9/cert.cer"))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unavailable, "{err}");
    // A 404 names no certificate: unauthorized, not a reason to retry.
    let err = delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("missing.cer")))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert_eq!(verifier.cached_certificates(), 0);
}

#[tokio::test]
async fn an_etag_from_the_port_can_be_sent_back_as_if_match() {
    // The eTag's quotes are part of the value; it goes back unchanged.
    let h = Harness::start().await;
    let pc = h.partner_center();
    let created = pc.create_referral(&create_body()).await.unwrap();
    let etag: ETag = created.etag().unwrap();
    assert!(etag.as_str().starts_with('"'), "{etag}");
    pc.patch_referral(
        &referral_id(&created),
        Some(&etag),
        &[PatchOp::replace("/name", json!("Renamed"))],
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bounded certificate downloads and the signing certificate's subject
// ---------------------------------------------------------------------------------------------

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    fn clock(&self) -> VerifierClock {
        let now = Arc::clone(&self.0);
        VerifierClock::from_fn(move || *now.lock().unwrap())
    }
}

/// A verifier of the sandbox PKI for `certs`, on the test clock.
fn bounded_verifier(certs: &CertServer, clock: &TestClock) -> WebhookVerifier {
    let mut settings = sandbox_pki();
    settings.clock = clock.clock();
    WebhookVerifier::with_insecure_hosts(settings, [&certs.host_port]).unwrap()
}

#[tokio::test]
async fn a_certificate_of_the_genuine_chain_issued_to_another_name_is_unauthorized() {
    let (h, _listener, _, delivered) = signed_event(false).await;
    // Signed with the key of another Microsoft certificate: same chain, same organisation.
    let signature = Pki::embedded().sign_as_other_subject(&delivered.body);
    let other = delivered
        .replaced("x-ms-signature", None)
        .replaced("Authorization", Some(&format!("Signature {signature}")))
        .replaced(
            "X-MS-Certificate-Url",
            Some(&h.url(pki::OTHER_SUBJECT_CERT_PATH)),
        );

    let err = other.unverified().verify(&h.verifier()).await.unwrap_err();

    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(
        err.reason().contains("other-service.microsoft.com")
            && err
                .reason()
                .contains("pcnotifications-dispatch.microsoft.com"),
        "{err}"
    );
    // The genuine leaf carries the accepted subject.
    delivered.unverified().verify(&h.verifier()).await.unwrap();
}

#[tokio::test]
async fn certificates_that_fail_their_checks_are_never_cached() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let clock = TestClock::new();
    let verifier = bounded_verifier(&certs, &clock);
    for name in ["rogue.cer", "big.cer", "missing.cer"] {
        let err = delivered
            .with("X-MS-Certificate-Url", Some(&certs.url(name)))
            .verify(&verifier)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized, "{name}");
    }
    assert_eq!(verifier.cached_certificates(), 0);
    assert_eq!(verifier.failed_certificate_urls(), 3);
}

#[tokio::test]
async fn a_failed_certificate_url_is_not_downloaded_again_until_its_time_to_live_passes() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let clock = TestClock::new();
    let verifier = bounded_verifier(&certs, &clock);
    let missing = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("missing.cer")));

    let first = missing.unverified().verify(&verifier).await.unwrap_err();
    assert!(first.reason().contains("404"), "{first}");
    for _ in 0..5 {
        let err = missing.unverified().verify(&verifier).await.unwrap_err();
        assert_eq!(err.status_code(), 401);
        assert!(
            err.reason().contains("failed recently") && err.reason().contains("404"),
            "{err}"
        );
    }
    assert_eq!(certs.hits("missing.cer"), 1);

    clock.advance(DEFAULT_FAILED_URL_TTL);
    missing.unverified().verify(&verifier).await.unwrap_err();
    assert_eq!(certs.hits("missing.cer"), 2);
}

#[tokio::test]
async fn a_cached_certificates_chain_is_checked_again_only_after_the_recheck_interval() {
    let (h, listener, created, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let clock = TestClock::new();
    let verifier = bounded_verifier(&certs, &clock);
    let genuine = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("cert.cer")));

    // The download checks the chain once; the requests after it verify their signature only.
    for _ in 0..3 {
        genuine.unverified().verify(&verifier).await.unwrap();
    }
    assert_eq!(certs.hits("cert.cer"), 1);
    assert_eq!(verifier.chain_checks(), 1);

    // Trusted or not, a body that does not match its signature is refused.
    h.post(
        "/_sandbox/partner-center/events",
        json!({ "eventName": "referral-updated", "referralId": created.id, "tamper": true }),
    )
    .await;
    let tampered = Delivered::from_parts(listener.next().await)
        .replaced("X-MS-Certificate-Url", Some(&certs.url("cert.cer")));
    let err = tampered.unverified().verify(&verifier).await.unwrap_err();
    assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    assert!(err.reason().contains("signature does not match"), "{err}");

    // Once the interval has passed, the next use checks the chain and subject again.
    clock.advance(CHAIN_RECHECK_INTERVAL);
    genuine.unverified().verify(&verifier).await.unwrap();
    genuine.unverified().verify(&verifier).await.unwrap();
    assert_eq!(verifier.chain_checks(), 2);
    assert_eq!(
        certs.hits("cert.cer"),
        1,
        "no download: the same certificate"
    );
}

#[tokio::test]
async fn new_certificate_urls_beyond_the_download_budget_are_refused_without_a_download() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let clock = TestClock::new();
    let verifier = bounded_verifier(&certs, &clock);
    let genuine = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("cert.cer")));
    genuine.unverified().verify(&verifier).await.unwrap();

    // Unauthenticated requests naming ever new paths on the allowed host.
    let path = |i: usize| format!("made-up-{i}.cer");
    let mut refused = 0;
    for i in 0..20 {
        let err = delivered
            .with("X-MS-Certificate-Url", Some(&certs.url(&path(i))))
            .verify(&verifier)
            .await
            .unwrap_err();
        assert_eq!(err.status_code(), 401);
        if err.reason().contains("too many certificate downloads") {
            refused += 1;
        }
    }
    let downloaded: usize = (0..20).map(|i| certs.hits(&path(i))).sum();
    let burst = usize::try_from(DEFAULT_DOWNLOAD_BURST).unwrap();
    assert_eq!(
        downloaded,
        burst - 1,
        "the genuine certificate took one download"
    );
    assert_eq!(refused, 20 - downloaded);

    // The cached genuine certificate needs no download: genuine events still verify.
    genuine.unverified().verify(&verifier).await.unwrap();

    // After the refill interval, one more download is allowed.
    clock.advance(DEFAULT_DOWNLOAD_REFILL);
    delivered
        .with("X-MS-Certificate-Url", Some(&certs.url("made-up-new.cer")))
        .verify(&verifier)
        .await
        .unwrap_err();
    assert_eq!(certs.hits("made-up-new.cer"), 1);
    let err = delivered
        .with(
            "X-MS-Certificate-Url",
            Some(&certs.url("made-up-newer.cer")),
        )
        .verify(&verifier)
        .await
        .unwrap_err();
    assert!(
        err.reason().contains("too many certificate downloads"),
        "{err}"
    );
    assert_eq!(certs.hits("made-up-newer.cer"), 0);
}

#[tokio::test]
async fn concurrent_first_deliveries_download_the_certificate_once_and_all_verify() {
    let (_h, _listener, _, delivered) = signed_event(false).await;
    let certs = CertServer::start().await;
    let clock = TestClock::new();
    let verifier = bounded_verifier(&certs, &clock);
    let genuine = delivered.replaced("X-MS-Certificate-Url", Some(&certs.url("cert.cer")));

    let verified =
        futures::future::join_all((0..8).map(|_| genuine.unverified().verify(&verifier))).await;

    assert!(verified.iter().all(Result::is_ok), "{verified:?}");
    assert_eq!(certs.hits("cert.cer"), 1);
}

/// Serves `app` on a free local port; its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A token endpoint that answers every request `status` with `body`.
async fn refusing_token_endpoint(status: StatusCode, body: serde_json::Value) -> String {
    let app = Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move || {
            let body = body.clone();
            async move { (status, axum::Json(body)) }
        }),
    );
    serve(app).await
}

#[tokio::test]
async fn a_token_refusal_that_says_try_again_is_transient_and_others_need_a_fix() {
    let cases = [
        (
            json!({"error": "temporarily_unavailable", "error_description": "AADSTS50000: There was an error issuing a token."}),
            true,
        ),
        (
            json!({"error": "invalid_grant", "error_description": "AADSTS90033: A transient error has occurred. Please try again."}),
            true,
        ),
        (
            json!({"error": "unknown_error", "error_description": "retry your request"}),
            true,
        ),
        (
            json!({"error": "invalid_grant", "error_description": "AADSTS70000: Provided grant is invalid or malformed."}),
            false,
        ),
    ];
    for (body, transient) in cases {
        let authority = refusing_token_endpoint(StatusCode::BAD_REQUEST, body.clone()).await;
        let tokens = refresh_tokens_from(authority);
        let port = tokens.token().await.unwrap_err().into_port_error();
        assert_eq!(port.is_retryable(), transient, "{body}: {port:?}");
    }
}

/// A Partner Center stand-in whose create answers `created` (status, `Location`, body) and
/// whose GET of a referral answers the documented create response.
async fn creating_partner_center(
    created: (StatusCode, Option<&'static str>, &'static str),
) -> String {
    const RESPONSE: &str = include_str!("../../../domain/tests/data/create-referral-response.json");
    let (status, location, body) = created;
    let app = Router::new()
        .route(
            "/v1.0/engagements/referrals",
            post(move || async move {
                let mut response = (status, body).into_response();
                if let Some(location) = location {
                    response
                        .headers_mut()
                        .insert(header::LOCATION, location.parse().unwrap());
                }
                response
            }),
        )
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], RESPONSE) }),
        );
    serve(app).await
}

#[tokio::test]
async fn a_create_answered_with_only_a_location_is_read_from_it() {
    let h = Harness::start().await;
    let referral: Referral = serde_json::from_str(CREATE_REQUEST).unwrap();
    let location = "/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642";
    let base = creating_partner_center((StatusCode::CREATED, Some(location), "")).await;
    let pc = HttpPartnerCenter::new(h.http.clone(), h.referral_tokens(), &base).unwrap();
    let created = pc.create_referral(&referral).await.unwrap();
    assert_eq!(
        created.id.as_deref(),
        Some("4111fffc-f9ee-4d53-bba6-569135228642")
    );

    // Neither the referral nor where it is: a decoding failure, not a success.
    let base = creating_partner_center((StatusCode::CREATED, None, "")).await;
    let pc = HttpPartnerCenter::new(h.http.clone(), h.referral_tokens(), &base).unwrap();
    let err = pc.create_referral(&referral).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
}
