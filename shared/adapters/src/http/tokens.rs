//! Access-token providers with caching, single-flight refresh and actionable failures.
//!
//! | Provider | Grant | Used for |
//! |---|---|---|
//! | [`EntraRefreshToken`] | delegated `refresh_token` against `{authority}/{tenant}/oauth2/v2.0/token` | the Partner Center referrals API (App+User only), scope [`PARTNER_CENTER_REFERRALS_SCOPE`]; also the webhook registration API ([`PARTNER_CENTER_WEBHOOKS_SCOPE`]) |
//! | [`EntraClientCredentials`] | `client_credentials` against the same endpoint | Dataverse ([`dataverse_scope`]: `{environment url}/.default`); the webhook registration API app-only ([`PARTNER_CENTER_WEBHOOKS_SCOPE`]) |
//! | [`SalesforceJwtBearer`] | `urn:ietf:params:oauth:grant-type:jwt-bearer` with an RS256 assertion against `{login_url}/services/oauth2/token` | the Salesforce REST API; the token carries the org's `instance_url` |
//!
//! [`TokenProvider`] is the closed set of the three (an enum, not `dyn`). Every provider:
//!
//! - caches its token until [`REFRESH_MARGIN`] (5 minutes; half the lifetime for tokens
//!   shorter than 10 minutes) before it expires, by the local monotonic clock;
//! - refreshes **single-flight**: concurrent callers wait on one tokio mutex, so a burst of
//!   calls makes one token request;
//! - offers [`TokenProvider::invalidate`] for the one refresh after a 401: pass the token that
//!   was refused, so a token another caller already replaced is not thrown away again;
//! - keeps secrets in [`SecretString`]s: never logged, `Debug` shows `[REDACTED]`;
//! - maps a refused credential to [`HttpAdapterError::Credential`] (→ `PortError::AccessDenied`)
//!   whose fix names the credential and what to do (re-consent, new client secret,
//!   pre-authorise the connected app, …), and outages of the token endpoint (5xx, 429,
//!   timeouts) to transient errors.
//!
//! Authority and login URLs are configurable: production `https://login.microsoftonline.com`
//! and `https://login.salesforce.com` (`https://test.salesforce.com` for Salesforce sandboxes,
//! or a My Domain URL); tests and the demo use the sandbox's base URL for both.

use crate::aws::secrets::{RotatedWrite, SecretWriter};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cosell_domain::Service;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::response::{
    HttpAdapterError, MAX_ERROR_BODY_BYTES, RequestContext, ServiceErrorBody, classify,
    parse_error_body, read_limited, retry_after,
};

/// How long before its expiry a cached token is replaced.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The Microsoft Entra ID authority of the public cloud.
pub const DEFAULT_ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Salesforce's production login host (`https://test.salesforce.com` for sandboxes).
pub const DEFAULT_SALESFORCE_LOGIN_URL: &str = "https://login.salesforce.com";
/// Scope of the Partner Center referrals API (`https://api.partner.microsoft.com`).
pub const PARTNER_CENTER_REFERRALS_SCOPE: &str = "https://api.partner.microsoft.com/.default";
/// Scope of the Partner Center webhook registration API (`https://api.partnercenter.microsoft.com`).
pub const PARTNER_CENTER_WEBHOOKS_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";
/// How long a Salesforce session is assumed to live when nothing else is configured: the
/// token response carries no lifetime, and 15 minutes is the shortest session timeout an org
/// can set. A session that ends sooner shows up as a 401, which refreshes it once.
pub const DEFAULT_SALESFORCE_SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a Salesforce JWT bearer assertion (`exp` − now).
pub const JWT_ASSERTION_LIFETIME: Duration = Duration::from_secs(3 * 60);
/// The Salesforce JWT bearer grant type.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Assumed lifetime when an Entra answer has no `expires_in` (Entra's default is 60–90 min).
const DEFAULT_ENTRA_LIFETIME: Duration = Duration::from_secs(3600);

/// The scope of a Dataverse environment: `{environment url}/.default`
/// (`https://contoso.crm.dynamics.com/.default`).
pub fn dataverse_scope(environment_url: &str) -> String {
    format!("{}/.default", environment_url.trim().trim_end_matches('/'))
}

static NEXT_TOKEN_ID: AtomicU64 = AtomicU64::new(1);

/// An access token. `Debug` never shows it.
pub struct AccessToken {
    id: u64,
    secret: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
    instance_url: Option<Url>,
}

impl AccessToken {
    fn new(secret: SecretString, lifetime: Duration, instance_url: Option<Url>) -> Self {
        let now = Instant::now();
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Self {
            id: NEXT_TOKEN_ID.fetch_add(1, Ordering::Relaxed),
            secret,
            expires_at: now + lifetime,
            refresh_at: now + lifetime.saturating_sub(margin),
            instance_url,
        }
    }

    /// The token, for an `Authorization: Bearer` header (mark the header sensitive;
    /// `RequestBuilder::bearer_auth` does).
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Salesforce: the org's instance URL (`https://yourInstance.my.salesforce.com`), where
    /// REST calls go. `None` for Entra tokens.
    pub fn instance_url(&self) -> Option<&Url> {
        self.instance_url.as_ref()
    }

    /// Time left until the token expires.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// Whether the cache may still hand the token out (not within the refresh margin).
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[REDACTED]")
            .field("expires_in", &self.expires_in())
            .field("instance_url", &self.instance_url.as_ref().map(Url::as_str))
            .finish()
    }
}

/// One cached token; refreshes are serialised by the mutex (single flight).
#[derive(Debug, Default)]
struct TokenCache {
    slot: Mutex<Option<Arc<AccessToken>>>,
}

impl TokenCache {
    async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<AccessToken>, HttpAdapterError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, HttpAdapterError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(token) = slot.as_ref().filter(|token| token.is_fresh()) {
            return Ok(Arc::clone(token));
        }
        let token = Arc::new(fetch().await?);
        *slot = Some(Arc::clone(&token));
        Ok(token)
    }

    async fn invalidate(&self, rejected: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|token| token.id == rejected.id) {
            *slot = None;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The closed set
// ---------------------------------------------------------------------------------------------

/// Any of the connector's token providers. Cheap to clone (each provider is an `Arc`).
#[derive(Debug, Clone)]
pub enum TokenProvider {
    /// Delegated refresh-token grant (Partner Center referrals).
    EntraRefreshToken(EntraRefreshToken),
    /// App-only client credentials (Dataverse, webhook registration).
    EntraClientCredentials(EntraClientCredentials),
    /// Salesforce JWT bearer.
    SalesforceJwtBearer(SalesforceJwtBearer),
}

impl TokenProvider {
    /// A valid token: the cached one, or a new one (one request, however many callers wait).
    pub async fn token(&self) -> Result<Arc<AccessToken>, HttpAdapterError> {
        match self {
            Self::EntraRefreshToken(provider) => provider.token().await,
            Self::EntraClientCredentials(provider) => provider.token().await,
            Self::SalesforceJwtBearer(provider) => provider.token().await,
        }
    }

    /// Forget `rejected` (the token a 401 refused), so the next [`token`](Self::token) gets a
    /// new one. A no-op when the cache already holds a different token.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        match self {
            Self::EntraRefreshToken(provider) => provider.invalidate(rejected).await,
            Self::EntraClientCredentials(provider) => provider.invalidate(rejected).await,
            Self::SalesforceJwtBearer(provider) => provider.invalidate(rejected).await,
        }
    }

    /// The credential in words, for messages ("the delegated Entra ID refresh token of app …").
    pub fn describe(&self) -> String {
        match self {
            Self::EntraRefreshToken(provider) => provider.describe(),
            Self::EntraClientCredentials(provider) => provider.describe(),
            Self::SalesforceJwtBearer(provider) => provider.describe(),
        }
    }

    /// What to fix when a freshly issued token is refused with 401.
    pub fn rejection_fix(&self) -> String {
        match self {
            Self::EntraRefreshToken(provider) => format!(
                "check that the scope {} is the audience of the API called and that the user who \
                 consented belongs to the partner's tenant; re-consent if the user changed",
                provider.inner.app.scope
            ),
            Self::EntraClientCredentials(provider) => format!(
                "check that the scope {} matches the API's URL; for Dataverse, app {} needs an \
                 application user in the environment (Power Platform admin center → \
                 Environments → Settings → Users + permissions → Application users)",
                provider.inner.app.scope, provider.inner.app.client_id
            ),
            Self::SalesforceJwtBearer(provider) => format!(
                "check that the integration user {} is active and has the API Enabled \
                 permission, and that requests go to the token's instance_url",
                provider.inner.username
            ),
        }
    }
}

impl From<EntraRefreshToken> for TokenProvider {
    fn from(provider: EntraRefreshToken) -> Self {
        Self::EntraRefreshToken(provider)
    }
}

impl From<EntraClientCredentials> for TokenProvider {
    fn from(provider: EntraClientCredentials) -> Self {
        Self::EntraClientCredentials(provider)
    }
}

impl From<SalesforceJwtBearer> for TokenProvider {
    fn from(provider: SalesforceJwtBearer) -> Self {
        Self::SalesforceJwtBearer(provider)
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint plumbing
// ---------------------------------------------------------------------------------------------

/// A successful token answer.
struct TokenAnswer {
    access_token: SecretString,
    expires_in: Option<Duration>,
    refresh_token: Option<SecretString>,
    instance_url: Option<String>,
}

/// Why a token request failed.
enum TokenFailure {
    /// No answer, or a transient one (5xx, 429): already classified.
    Unavailable(HttpAdapterError),
    /// The endpoint refused the request (4xx).
    Refused(ServiceErrorBody),
}

/// POSTs `form` to a token endpoint and reads the OAuth answer.
async fn request_token(
    http: &reqwest::Client,
    ctx: &RequestContext,
    url: &Url,
    form: &[(&str, &str)],
) -> Result<TokenAnswer, TokenFailure> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|error| TokenFailure::Unavailable(HttpAdapterError::transport(ctx, &error)))?;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = read_limited(ctx, response, MAX_ERROR_BODY_BYTES, true)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            return Err(TokenFailure::Unavailable(classify(
                ctx, status, &headers, &body,
            )));
        }
        let mut parsed = parse_error_body(&Service::Identity, &body);
        if parsed.message.is_empty() {
            parsed.message = format!("HTTP {code}");
        }
        if is_transient_refusal(&parsed) {
            return Err(TokenFailure::Unavailable(HttpAdapterError::Unavailable {
                service: ctx.service.clone(),
                operation: ctx.operation.to_string(),
                status: code,
                message: parsed.message,
                retry_after: retry_after(&headers, chrono::Utc::now()),
            }));
        }
        return Err(TokenFailure::Refused(parsed));
    }
    let value: Value = super::response::read_json(ctx, response)
        .await
        .map_err(TokenFailure::Unavailable)?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let Some(access_token) = text("access_token").filter(|token| !token.is_empty()) else {
        return Err(TokenFailure::Unavailable(HttpAdapterError::decode(
            ctx,
            "the token answer has no access_token",
        )));
    };
    // Entra v2 sends a number, the v1 endpoint a string ("3600").
    let expires_in = value.get("expires_in").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Ok(TokenAnswer {
        access_token: SecretString::from(access_token),
        expires_in: expires_in.map(Duration::from_secs),
        refresh_token: text("refresh_token")
            .filter(|token| !token.is_empty())
            .map(SecretString::from),
        instance_url: text("instance_url"),
    })
}

/// A 4xx token answer that only says "try again": OAuth's `temporarily_unavailable` (RFC 6749
/// §5.2), Salesforce's `unknown_error` "retry your request", and Entra ID's AADSTS50000 (an
/// error issuing the token) and AADSTS90033 (a transient error). Everything else refused is a
/// credential to fix.
fn is_transient_refusal(refusal: &ServiceErrorBody) -> bool {
    let code = refusal.code.as_deref().unwrap_or_default();
    let message = refusal.message.to_ascii_lowercase();
    code.eq_ignore_ascii_case("temporarily_unavailable")
        || (code.eq_ignore_ascii_case("unknown_error") && message.contains("retry your request"))
        || message.contains("aadsts50000")
        || message.contains("aadsts90033")
}

fn parse_url(what: &str, text: &str) -> Result<Url, HttpAdapterError> {
    let url = Url::parse(text.trim()).map_err(|error| {
        HttpAdapterError::Config(format!("{what} '{text}' is not a URL: {error}"))
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(HttpAdapterError::Config(format!(
            "{what} '{text}' must be an absolute https URL"
        )));
    }
    Ok(url)
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn entra_token_url(authority: &str, tenant: &str) -> Result<Url, HttpAdapterError> {
    let tenant = tenant.trim();
    if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
        return Err(HttpAdapterError::Config(format!(
            "the Entra tenant '{tenant}' must be a tenant id or domain"
        )));
    }
    parse_url(
        "the Entra token endpoint",
        &format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim().trim_end_matches('/')
        ),
    )
}

/// The `AADSTS` number an Entra message starts with.
fn aadsts(message: &str) -> Option<u32> {
    let at = message.find("AADSTS")? + "AADSTS".len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Which Entra grant failed, for the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntraGrant {
    RefreshToken,
    ClientCredentials,
}

/// The fix for an Entra refusal.
fn entra_fix(
    grant: EntraGrant,
    body: &ServiceErrorBody,
    client_id: &str,
    tenant: &str,
    scope: &str,
    credential: &str,
) -> String {
    let error = body.code.as_deref().unwrap_or_default();
    let re_consent = format!(
        "re-consent: sign in interactively (with MFA) as the Partner Center user with the \
         Referral Admin role through the consent flow of app {client_id}, and store the new \
         refresh token where {credential} is configured"
    );
    match aadsts(&body.message) {
        // Revoked or expired: password reset, MFA / conditional access, inactivity.
        Some(50173 | 70008 | 700082 | 700084 | 50133 | 70043 | 50089 | 50132) => format!(
            "the refresh token was revoked or has expired (a password reset or change, an MFA or \
             conditional-access change, or long inactivity ends it); {re_consent}"
        ),
        Some(50076 | 50079 | 50158 | 53003) => format!(
            "the sign-in now needs multi-factor authentication or conditional access the \
             refresh token does not satisfy; {re_consent}"
        ),
        Some(65001) => match grant {
            EntraGrant::RefreshToken => format!(
                "app {client_id} lacks consent for {scope}: add the API permission to the app \
                 registration, grant admin consent, then {re_consent}"
            ),
            EntraGrant::ClientCredentials => format!(
                "app {client_id} lacks consent for {scope}: add the application permission to \
                 the app registration and grant admin consent in tenant {tenant}"
            ),
        },
        Some(7000215 | 7000222 | 7000218) => format!(
            "the client secret of app {client_id} is wrong or expired: create a new client \
             secret (Entra admin center → App registrations → {client_id} → Certificates & \
             secrets) and update the connector's configuration"
        ),
        Some(700016) => format!(
            "app {client_id} does not exist in tenant {tenant}: check the client id and tenant \
             id the connector is configured with"
        ),
        Some(90002 | 900023) => {
            format!("tenant '{tenant}' does not exist: configure the partner's Entra tenant id")
        }
        Some(500011 | 70011 | 28000 | 1002012) => format!(
            "the scope {scope} is not valid for app {client_id}: check the API URL the scope is \
             built from (for Dataverse, the environment URL)"
        ),
        Some(70000) if grant == EntraGrant::RefreshToken => format!(
            "the configured refresh token is malformed or was issued to another app: obtain a \
             new one; {re_consent}"
        ),
        _ if error == "invalid_client" => format!(
            "app {client_id} could not authenticate: check its client id and client secret \
             (a new secret may be needed)"
        ),
        _ if error == "invalid_grant" && grant == EntraGrant::RefreshToken => {
            format!("the refresh token is no longer accepted; {re_consent}")
        }
        _ if error == "unauthorized_client" => format!(
            "app {client_id} may not use this grant: check the app registration (supported \
             account types, allow public client flows off, a client secret present)"
        ),
        _ => format!("check the configuration of {credential} (app {client_id}, tenant {tenant})"),
    }
}

fn credential_error(credential: String, body: ServiceErrorBody, fix: String) -> HttpAdapterError {
    HttpAdapterError::Credential {
        service: Service::Identity,
        credential,
        code: body.code.unwrap_or_else(|| "refused".to_owned()),
        message: body.message,
        fix,
    }
}

/// What both Entra grants share: the app, its tenant's token endpoint, the resource scope and
/// the credential in words.
#[derive(Debug)]
struct EntraApp {
    http: reqwest::Client,
    token_url: Url,
    tenant: String,
    client_id: String,
    client_secret: SecretString,
    scope: String,
    credential: String,
}

impl EntraApp {
    /// Posts `form` to the token endpoint; a refusal is a credential error with the fix for
    /// `grant`.
    async fn request(
        &self,
        grant: EntraGrant,
        ctx: &RequestContext,
        form: &[(&str, &str)],
    ) -> Result<TokenAnswer, HttpAdapterError> {
        super::count_call(&Service::Identity);
        match request_token(&self.http, ctx, &self.token_url, form).await {
            Ok(answer) => Ok(answer),
            Err(TokenFailure::Unavailable(error)) => Err(error),
            Err(TokenFailure::Refused(body)) => {
                let fix = entra_fix(
                    grant,
                    &body,
                    &self.client_id,
                    &self.tenant,
                    &self.scope,
                    &self.credential,
                );
                Err(credential_error(self.credential.clone(), body, fix))
            }
        }
    }
}

/// The access token of an Entra answer (Entra sends no instance URL).
fn entra_access_token(answer: TokenAnswer) -> AccessToken {
    AccessToken::new(
        answer.access_token,
        answer.expires_in.unwrap_or(DEFAULT_ENTRA_LIFETIME),
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Entra refresh token (delegated)
// ---------------------------------------------------------------------------------------------

/// Settings of an [`EntraRefreshToken`].
#[derive(Debug, Clone)]
pub struct EntraRefreshTokenConfig {
    /// The Entra authority, e.g. [`DEFAULT_ENTRA_AUTHORITY`] (the sandbox: its base URL).
    pub authority: String,
    /// The partner's tenant id (or `organizations` / `common`).
    pub tenant: String,
    /// The app registration's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: SecretString,
    /// The refresh token from the user's consent (rotated copies are kept in memory, and in
    /// [`Self::keep_rotated_in`] when set).
    pub refresh_token: SecretString,
    /// The resource scope, e.g. [`PARTNER_CENTER_REFERRALS_SCOPE`].
    pub scope: String,
    /// Where the refresh token is configured, for fixes (e.g. `the secret
    /// cosell/partner-center (PC_REFRESH_TOKEN)`); `None` describes it generically.
    pub credential_label: Option<String>,
    /// The secret the refresh token came from: each rotated one is written back there, so a
    /// new instance starts from the newest instead of the one first configured.
    pub keep_rotated_in: Option<Arc<SecretWriter>>,
}

impl EntraRefreshTokenConfig {
    /// Settings for the Partner Center referrals API on the public cloud.
    pub fn partner_center_referrals(
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
        refresh_token: SecretString,
    ) -> Self {
        Self {
            authority: DEFAULT_ENTRA_AUTHORITY.to_owned(),
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret,
            refresh_token,
            scope: PARTNER_CENTER_REFERRALS_SCOPE.to_owned(),
            credential_label: None,
            keep_rotated_in: None,
        }
    }
}

/// Delegated (App+User) tokens from a refresh token. The refresh token Entra rotates in each
/// answer replaces the configured one in memory for the life of the instance, and is written
/// back to its secret when [`EntraRefreshTokenConfig::keep_rotated_in`] names one (a failed
/// write is logged, without the token, and does not fail the request).
#[derive(Debug, Clone)]
pub struct EntraRefreshToken {
    inner: Arc<EntraRefreshInner>,
}

#[derive(Debug)]
struct EntraRefreshInner {
    app: EntraApp,
    refresh_token: std::sync::Mutex<SecretString>,
    keep_rotated_in: Option<Arc<SecretWriter>>,
    cache: TokenCache,
}

impl EntraRefreshToken {
    /// A provider; fails only on an unusable authority or tenant.
    pub fn new(
        http: reqwest::Client,
        config: EntraRefreshTokenConfig,
    ) -> Result<Self, HttpAdapterError> {
        let token_url = entra_token_url(&config.authority, &config.tenant)?;
        let credential = config.credential_label.unwrap_or_else(|| {
            format!(
                "the delegated Entra ID refresh token of app {} (tenant {}, scope {})",
                config.client_id, config.tenant, config.scope
            )
        });
        Ok(Self {
            inner: Arc::new(EntraRefreshInner {
                app: EntraApp {
                    http,
                    token_url,
                    tenant: config.tenant,
                    client_id: config.client_id,
                    client_secret: config.client_secret,
                    scope: config.scope,
                    credential,
                },
                refresh_token: std::sync::Mutex::new(config.refresh_token),
                keep_rotated_in: config.keep_rotated_in,
                cache: TokenCache::default(),
            }),
        })
    }

    /// A valid access token (cached, or refreshed single-flight).
    pub async fn token(&self) -> Result<Arc<AccessToken>, HttpAdapterError> {
        self.inner.cache.get(|| self.fetch()).await
    }

    /// Forget `rejected` so the next call refreshes.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        self.inner.cache.invalidate(rejected).await;
    }

    /// The credential in words.
    pub fn describe(&self) -> String {
        self.inner.app.credential.clone()
    }

    async fn fetch(&self) -> Result<AccessToken, HttpAdapterError> {
        let inner = &*self.inner;
        let app = &inner.app;
        let ctx = RequestContext::new(Service::Identity, "refresh the Entra ID access token");
        let refresh_token = inner
            .refresh_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // `offline_access` makes Entra return a rotated refresh token.
        let scope = format!("{} offline_access", app.scope);
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose_secret()),
            ("refresh_token", refresh_token.expose_secret()),
            ("scope", scope.as_str()),
        ];
        let mut answer = app.request(EntraGrant::RefreshToken, &ctx, &form).await?;
        if let Some(rotated) = answer.refresh_token.take() {
            let next = match &inner.keep_rotated_in {
                Some(writer) if rotated.expose_secret() != refresh_token.expose_secret() => {
                    match Box::pin(writer.write_rotated(&refresh_token, &rotated)).await {
                        Ok(RotatedWrite::Stored) => rotated,
                        // Another instance's rotation, or an operator's new token: both valid
                        // (Entra keeps earlier refresh tokens valid until they expire), and the
                        // stored one is what every instance converges on.
                        Ok(RotatedWrite::Superseded(stored))
                            if !stored.expose_secret().trim().is_empty() =>
                        {
                            tracing::info!(
                                secret = %writer.describe(),
                                "the refresh token's secret changed since this instance read \
                                 it; continuing from the stored token"
                            );
                            stored
                        }
                        Ok(RotatedWrite::Superseded(_)) => rotated,
                        Err(error) => {
                            tracing::warn!(
                                %error,
                                retryable = error.is_retryable(),
                                "the rotated refresh token was not saved; a new instance starts \
                                 from the one stored before"
                            );
                            rotated
                        }
                    }
                }
                _ => rotated,
            };
            *inner
                .refresh_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        }
        tracing::debug!(scope = %app.scope, "obtained a delegated Entra ID access token");
        Ok(entra_access_token(answer))
    }
}

// ---------------------------------------------------------------------------------------------
// Entra client credentials (app-only)
// ---------------------------------------------------------------------------------------------

/// Settings of an [`EntraClientCredentials`].
#[derive(Debug, Clone)]
pub struct EntraClientCredentialsConfig {
    /// The Entra authority, e.g. [`DEFAULT_ENTRA_AUTHORITY`].
    pub authority: String,
    /// The tenant id (a real tenant; not `common`).
    pub tenant: String,
    /// The app registration's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: SecretString,
    /// `{resource}/.default`: [`dataverse_scope`] or [`PARTNER_CENTER_WEBHOOKS_SCOPE`].
    pub scope: String,
    /// Where the secret is configured, for fixes; `None` describes it generically.
    pub credential_label: Option<String>,
}

/// App-only tokens from a client id and secret.
#[derive(Debug, Clone)]
pub struct EntraClientCredentials {
    inner: Arc<EntraClientInner>,
}

#[derive(Debug)]
struct EntraClientInner {
    app: EntraApp,
    cache: TokenCache,
}

impl EntraClientCredentials {
    /// A provider; fails only on an unusable authority, tenant or scope.
    pub fn new(
        http: reqwest::Client,
        config: EntraClientCredentialsConfig,
    ) -> Result<Self, HttpAdapterError> {
        let token_url = entra_token_url(&config.authority, &config.tenant)?;
        if !config.scope.trim_end().ends_with("/.default") {
            return Err(HttpAdapterError::Config(format!(
                "the client-credentials scope '{}' must end with /.default",
                config.scope
            )));
        }
        let credential = config.credential_label.unwrap_or_else(|| {
            format!(
                "the Entra ID client credentials of app {} (tenant {}, scope {})",
                config.client_id, config.tenant, config.scope
            )
        });
        Ok(Self {
            inner: Arc::new(EntraClientInner {
                app: EntraApp {
                    http,
                    token_url,
                    tenant: config.tenant,
                    client_id: config.client_id,
                    client_secret: config.client_secret,
                    scope: config.scope,
                    credential,
                },
                cache: TokenCache::default(),
            }),
        })
    }

    /// A valid access token (cached, or fetched single-flight).
    pub async fn token(&self) -> Result<Arc<AccessToken>, HttpAdapterError> {
        self.inner.cache.get(|| self.fetch()).await
    }

    /// Forget `rejected` so the next call fetches a new token.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        self.inner.cache.invalidate(rejected).await;
    }

    /// The credential in words.
    pub fn describe(&self) -> String {
        self.inner.app.credential.clone()
    }

    async fn fetch(&self) -> Result<AccessToken, HttpAdapterError> {
        let app = &self.inner.app;
        let ctx = RequestContext::new(Service::Identity, "obtain an app-only Entra ID token");
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose_secret()),
            ("scope", app.scope.as_str()),
        ];
        let answer = app
            .request(EntraGrant::ClientCredentials, &ctx, &form)
            .await?;
        tracing::debug!(scope = %app.scope, "obtained an app-only Entra ID access token");
        Ok(entra_access_token(answer))
    }
}

// ---------------------------------------------------------------------------------------------
// Salesforce JWT bearer
// ---------------------------------------------------------------------------------------------

/// Settings of a [`SalesforceJwtBearer`].
#[derive(Debug, Clone)]
pub struct SalesforceJwtBearerConfig {
    /// The login host, also the assertion's `aud`: [`DEFAULT_SALESFORCE_LOGIN_URL`],
    /// `https://test.salesforce.com` for a sandbox org, or a My Domain URL.
    pub login_url: String,
    /// The connected app's consumer key (`iss`).
    pub consumer_key: String,
    /// The integration user's username (`sub`).
    pub username: String,
    /// The PEM (PKCS#8 or PKCS#1) RSA private key whose certificate is uploaded to the
    /// connected app ("Use digital signatures").
    pub private_key_pem: SecretString,
    /// How long a session is assumed to live ([`DEFAULT_SALESFORCE_SESSION_LIFETIME`]): set it
    /// to the org's session timeout to request fewer tokens.
    pub session_lifetime: Duration,
    /// Where the key is configured, for fixes; `None` describes it generically.
    pub credential_label: Option<String>,
}

/// Salesforce access tokens by the OAuth 2.0 JWT bearer flow (no refresh token exists: a new
/// assertion is signed each time).
#[derive(Clone)]
pub struct SalesforceJwtBearer {
    inner: Arc<SalesforceInner>,
}

struct SalesforceInner {
    http: reqwest::Client,
    token_url: Url,
    audience: String,
    consumer_key: String,
    username: String,
    key: EncodingKey,
    session_lifetime: Duration,
    credential: String,
    cache: TokenCache,
}

impl fmt::Debug for SalesforceJwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceJwtBearer")
            .field("token_url", &self.inner.token_url.as_str())
            .field("consumer_key", &self.inner.consumer_key)
            .field("username", &self.inner.username)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

impl SalesforceJwtBearer {
    /// A provider; fails on an unusable login URL or a key that is not an RSA PEM key.
    pub fn new(
        http: reqwest::Client,
        config: SalesforceJwtBearerConfig,
    ) -> Result<Self, HttpAdapterError> {
        let audience = config.login_url.trim().trim_end_matches('/').to_owned();
        let token_url = parse_url(
            "the Salesforce login URL",
            &format!("{audience}/services/oauth2/token"),
        )?;
        let key = EncodingKey::from_rsa_pem(config.private_key_pem.expose_secret().as_bytes())
            .map_err(|error| {
                HttpAdapterError::Config(format!(
                    "the Salesforce connected app's private key is not an RSA PEM key: {error}"
                ))
            })?;
        let credential = config.credential_label.unwrap_or_else(|| {
            format!(
                "the Salesforce JWT bearer credential of connected app {} for user {}",
                config.consumer_key, config.username
            )
        });
        Ok(Self {
            inner: Arc::new(SalesforceInner {
                http,
                token_url,
                audience,
                consumer_key: config.consumer_key,
                username: config.username,
                key,
                session_lifetime: config.session_lifetime,
                credential,
                cache: TokenCache::default(),
            }),
        })
    }

    /// A valid access token with its `instance_url` (cached, or fetched single-flight).
    pub async fn token(&self) -> Result<Arc<AccessToken>, HttpAdapterError> {
        self.inner.cache.get(|| self.fetch()).await
    }

    /// Forget `rejected` so the next call fetches a new token.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        self.inner.cache.invalidate(rejected).await;
    }

    /// The credential in words.
    pub fn describe(&self) -> String {
        self.inner.credential.clone()
    }

    /// The signed assertion: RS256, `iss` consumer key, `sub` username, `aud` login URL,
    /// `exp` now + [`JWT_ASSERTION_LIFETIME`].
    fn assertion(&self) -> Result<String, HttpAdapterError> {
        let inner = &*self.inner;
        let exp = chrono::Utc::now().timestamp()
            + i64::try_from(JWT_ASSERTION_LIFETIME.as_secs()).unwrap_or(180);
        let claims = JwtClaims {
            iss: &inner.consumer_key,
            sub: &inner.username,
            aud: &inner.audience,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &inner.key).map_err(|error| {
            HttpAdapterError::Config(format!("the JWT assertion could not be signed: {error}"))
        })
    }

    async fn fetch(&self) -> Result<AccessToken, HttpAdapterError> {
        let inner = &*self.inner;
        let ctx = RequestContext::new(Service::Identity, "obtain a Salesforce access token");
        let assertion = SecretString::from(self.assertion()?);
        let form = [
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.expose_secret()),
        ];
        // Salesforce's OAuth endpoint: counted as a Salesforce call.
        super::count_call(&Service::Salesforce);
        match request_token(&inner.http, &ctx, &inner.token_url, &form).await {
            Ok(answer) => {
                let instance = answer.instance_url.ok_or_else(|| {
                    HttpAdapterError::decode(&ctx, "the token answer has no instance_url")
                })?;
                let instance_url = Url::parse(&instance).map_err(|error| {
                    HttpAdapterError::decode(
                        &ctx,
                        format!("the instance_url '{instance}' is not a URL: {error}"),
                    )
                })?;
                tracing::debug!(instance_url = %instance_url, "obtained a Salesforce access token");
                Ok(AccessToken::new(
                    answer.access_token,
                    answer.expires_in.unwrap_or(inner.session_lifetime),
                    Some(instance_url),
                ))
            }
            Err(TokenFailure::Unavailable(error)) => Err(error),
            Err(TokenFailure::Refused(body)) => {
                let fix = self.fix(&body);
                Err(credential_error(inner.credential.clone(), body, fix))
            }
        }
    }

    fn fix(&self, body: &ServiceErrorBody) -> String {
        let inner = &*self.inner;
        let message = body.message.to_ascii_lowercase();
        let error = body.code.as_deref().unwrap_or_default();
        if message.contains("hasn't approved") || message.contains("not admin approved") {
            format!(
                "pre-authorize the connected app for the integration user: Setup → App Manager → \
                 the connected app ({}) → Manage → Edit Policies → Permitted Users: \"Admin \
                 approved users are pre-authorized\", then add the profile or a permission set of \
                 user {} under Profiles / Permission Sets",
                inner.consumer_key, inner.username
            )
        } else if error == "invalid_client_id" || message.contains("client identifier invalid") {
            format!(
                "the consumer key {} is not a connected app of this org: copy the consumer key \
                 from the connected app (Setup → App Manager → View → Manage Consumer Details)",
                inner.consumer_key
            )
        } else if message.contains("audience is invalid") {
            format!(
                "the login URL {} (the assertion's aud) is wrong: use https://login.salesforce.com \
                 for production, https://test.salesforce.com for a sandbox org, or the org's My \
                 Domain URL",
                inner.audience
            )
        } else if message.contains("expired authorization code") {
            "the assertion had expired when Salesforce read it: check the system clock".to_owned()
        } else if message.contains("invalid assertion") {
            format!(
                "the assertion's signature was not accepted: the certificate uploaded to the \
                 connected app ({}) must belong to the configured private key",
                inner.consumer_key
            )
        } else if message.contains("inactive") || message.contains("authentication failure") {
            format!(
                "user {} is unknown or inactive in this org: check the username and that the \
                 user is active",
                inner.username
            )
        } else {
            format!(
                "check {} (consumer key, username, login URL and the certificate uploaded to the \
                 connected app)",
                inner.credential
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_until_the_margin_and_short_lived_ones_use_half_their_life() {
        let long = AccessToken::new(SecretString::from("t"), Duration::from_secs(3600), None);
        assert!(long.is_fresh());
        let until_refresh = long.refresh_at - Instant::now();
        assert!(
            until_refresh <= Duration::from_secs(3300) && until_refresh > Duration::from_secs(3290),
            "{until_refresh:?}"
        );
        let short = AccessToken::new(SecretString::from("t"), Duration::from_secs(2), None);
        assert!(short.is_fresh());
        assert!(short.refresh_at <= Instant::now() + Duration::from_secs(1));
        let none = AccessToken::new(SecretString::from("t"), Duration::ZERO, None);
        assert!(!none.is_fresh());
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let token = AccessToken::new(
            SecretString::from("super-secret-token"),
            Duration::from_secs(60),
            None,
        );
        let config = EntraRefreshTokenConfig::partner_center_referrals(
            "tenant",
            "client",
            SecretString::from("client-secret-value"),
            SecretString::from("refresh-token-value"),
        );
        let provider = EntraRefreshToken::new(reqwest::Client::new(), config.clone()).unwrap();
        let debug = format!("{token:?} {config:?} {provider:?}");
        for secret in [
            "super-secret-token",
            "client-secret-value",
            "refresh-token-value",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn entra_fixes_name_the_cause() {
        let body = |code: &str, message: &str| ServiceErrorBody {
            code: Some(code.into()),
            message: message.into(),
        };
        let revoked = entra_fix(
            EntraGrant::RefreshToken,
            &body(
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked.",
            ),
            "app",
            "tenant",
            PARTNER_CENTER_REFERRALS_SCOPE,
            "PC_REFRESH_TOKEN",
        );
        assert!(revoked.contains("revoked or has expired"), "{revoked}");
        assert!(revoked.contains("re-consent"), "{revoked}");
        assert!(revoked.contains("PC_REFRESH_TOKEN"), "{revoked}");
        let secret = entra_fix(
            EntraGrant::ClientCredentials,
            &body(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            ),
            "app",
            "tenant",
            "https://org.crm.dynamics.com/.default",
            "x",
        );
        assert!(secret.contains("new client secret"), "{secret}");
        assert_eq!(aadsts("AADSTS700016: Application"), Some(700016));
        assert_eq!(aadsts("no code"), None);
    }

    #[test]
    fn configuration_is_checked_up_front() {
        let http = reqwest::Client::new();
        let mut config = EntraRefreshTokenConfig::partner_center_referrals(
            "a/b",
            "c",
            SecretString::from("s"),
            SecretString::from("r"),
        );
        assert!(matches!(
            EntraRefreshToken::new(http.clone(), config.clone()),
            Err(HttpAdapterError::Config(_))
        ));
        config.tenant = "t".into();
        config.authority = "not a url".into();
        assert!(EntraRefreshToken::new(http.clone(), config).is_err());
        let cc = EntraClientCredentialsConfig {
            authority: DEFAULT_ENTRA_AUTHORITY.into(),
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: SecretString::from("s"),
            scope: "https://org.crm.dynamics.com/user_impersonation".into(),
            credential_label: None,
        };
        assert!(EntraClientCredentials::new(http.clone(), cc).is_err());
        let sf = SalesforceJwtBearerConfig {
            login_url: DEFAULT_SALESFORCE_LOGIN_URL.into(),
            consumer_key: "k".into(),
            username: "u".into(),
            private_key_pem: SecretString::from("not a key"),
            session_lifetime: DEFAULT_SALESFORCE_SESSION_LIFETIME,
            credential_label: None,
        };
        assert!(matches!(
            SalesforceJwtBearer::new(http, sf),
            Err(HttpAdapterError::Config(_))
        ));
        assert_eq!(
            dataverse_scope("https://org.crm.dynamics.com/"),
            "https://org.crm.dynamics.com/.default"
        );
    }
}
