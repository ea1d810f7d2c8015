//! The HTTP adapters and the building blocks every outbound HTTP adapter (and the Partner
//! Center webhook function) uses.
//!
//! | Module | Holds |
//! |---|---|
//! | [`response`] | [`HttpAdapterError`] and the one classification of HTTP answers into it (→ [`cosell_domain::PortError`]): 5xx/429 transient with `Retry-After`, 401 → refresh once, 403 with the missing role, 404, 412, other 4xx permanent with the service's own message; [`RequestContext`], [`check`], [`read_json`] |
//! | [`tokens`] | [`TokenProvider`] over [`EntraRefreshToken`], [`EntraClientCredentials`], [`SalesforceJwtBearer`]: cached, single-flight, `invalidate` after a 401, secrets in `SecretString` |
//! | [`partner_center`] | [`HttpPartnerCenter`] (the `PartnerCenter` port over the referrals API) and [`WebhookRegistrationClient`] (`/webhooks/v1/registration`) |
//! | [`webhook_signature`] | Partner Center webhook authentication, verify-before-parse: [`UnverifiedWebhook`] → [`VerifiedWebhook`] through a [`WebhookVerifier`] |
//!
//! # Writing an adapter on these blocks (Dataverse, Salesforce, …)
//!
//! 1. Build one [`reqwest::Client`] per cold start with [`build_client`] (timeouts, no
//!    redirects) and share it (it is an `Arc` inside).
//! 2. Build the credential's provider ([`EntraClientCredentials`] with
//!    [`tokens::dataverse_scope`], or [`SalesforceJwtBearer`]) and wrap both in an
//!    [`AuthorizedClient`].
//! 3. For each call, describe it with a [`RequestContext`] (service, operation, the resource a
//!    404 means, the role a 403 means) and send it with [`AuthorizedClient::send`], whose
//!    closure builds the request from the client and the current token (Salesforce: take the
//!    base URL from [`AccessToken::instance_url`]). `send` adds the bearer token, turns every
//!    non-2xx answer into an [`HttpAdapterError`] and, on a 401, invalidates the token,
//!    fetches a new one and sends **once** more (a second 401 is
//!    [`HttpAdapterError::RejectedAfterRefresh`], naming the credential).
//! 4. Read the body with [`read_json`] (size-capped) and return
//!    `Result<_, PortError>` through `?` (`From<HttpAdapterError> for PortError`).
//!
//! Service-specific error bodies are already understood by [`response::parse_error_body`]
//! (Dataverse `{"error":{code,message}}`, Salesforce `[{message,errorCode}]`), and so are the
//! service-specific 403s (Dataverse `PrivilegeDenied` names the `prv…` privilege; Salesforce
//! `INSUFFICIENT_ACCESS*`; Salesforce `REQUEST_LIMIT_EXCEEDED` is transient with a long wait).

pub mod crm;
pub mod dataverse;
pub mod partner_center;
pub mod response;
pub mod salesforce;
pub mod tokens;
pub mod webhook_signature;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, USER_AGENT};

pub use partner_center::{
    DEFAULT_PARTNER_CENTER_BASE_URL, DEFAULT_WEBHOOKS_BASE_URL, HttpPartnerCenter,
    WebhookRegistrationClient,
};
pub use response::{
    HttpAdapterError, RequestContext, TransportKind, check, classify, parse_error_body,
    parse_retry_after, read_json,
};
pub use tokens::{
    AccessToken, EntraClientCredentials, EntraClientCredentialsConfig, EntraRefreshToken,
    EntraRefreshTokenConfig, SalesforceJwtBearer, SalesforceJwtBearerConfig, TokenProvider,
};
pub use webhook_signature::{
    UnverifiedWebhook, VerifiedWebhook, VerifierClock, WebhookAuthError, WebhookAuthErrorKind,
    WebhookVerifier, WebhookVerifierConfig,
};

/// Settings of the shared outbound HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpClientOptions {
    /// Time to establish a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Time for a whole request, body included. Keep it well under the Lambda timeout.
    pub request_timeout: Duration,
    /// The `User-Agent` sent.
    pub user_agent: String,
}

impl Default for HttpClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            user_agent: concat!("cosell-sync/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// The outbound client: rustls, the given timeouts, and **no redirects** (an API that
/// redirects is misconfigured, and a bearer token must not follow a `Location`; a 3xx becomes
/// [`HttpAdapterError::Rejected`] naming it).
pub fn build_client(options: &HttpClientOptions) -> Result<reqwest::Client, HttpAdapterError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_str(&options.user_agent).map_err(|error| {
            HttpAdapterError::Config(format!("the user agent is not a header value: {error}"))
        })?,
    );
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .map_err(|error| {
            HttpAdapterError::Config(format!(
                "the HTTP client could not be built: {}",
                response::error_chain(&error)
            ))
        })
}

/// An HTTP client plus the token provider of one API: sends with the bearer token and
/// refreshes it once on a 401. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthorizedClient {
    http: reqwest::Client,
    tokens: TokenProvider,
}

impl AuthorizedClient {
    /// A client for the API `tokens` is for.
    pub fn new(http: reqwest::Client, tokens: impl Into<TokenProvider>) -> Self {
        Self {
            http,
            tokens: tokens.into(),
        }
    }

    /// The underlying client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The token provider.
    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// Sends the request `build` makes, with `Authorization: Bearer <token>`; passes a 2xx
    /// answer through and classifies any other ([`check`]).
    ///
    /// On a 401 the token is invalidated, a new one obtained and `build` called once more
    /// (so it must be repeatable: clone the body into each request). A second 401 is
    /// [`HttpAdapterError::RejectedAfterRefresh`], whose fix names the credential.
    pub async fn send<F>(
        &self,
        ctx: &RequestContext,
        build: F,
    ) -> Result<reqwest::Response, HttpAdapterError>
    where
        F: Fn(&reqwest::Client, &AccessToken) -> reqwest::RequestBuilder + Send + Sync,
    {
        let token = self.tokens.token().await?;
        match self.attempt(ctx, &build, &token).await {
            Err(HttpAdapterError::Unauthorized { .. }) => {
                tracing::info!(
                    service = %ctx.service,
                    operation = %ctx.operation,
                    "access token refused (401); refreshing it once"
                );
                self.tokens.invalidate(&token).await;
                let token = self.tokens.token().await?;
                match self.attempt(ctx, &build, &token).await {
                    Err(HttpAdapterError::Unauthorized {
                        service,
                        operation,
                        message,
                    }) => Err(HttpAdapterError::RejectedAfterRefresh {
                        service,
                        operation,
                        credential: self.tokens.describe(),
                        message,
                        fix: self.tokens.rejection_fix(),
                    }),
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn attempt<F>(
        &self,
        ctx: &RequestContext,
        build: &F,
        token: &AccessToken,
    ) -> Result<reqwest::Response, HttpAdapterError>
    where
        F: Fn(&reqwest::Client, &AccessToken) -> reqwest::RequestBuilder + Send + Sync,
    {
        count_call(&ctx.service);
        let response = build(&self.http, token)
            .bearer_auth(token.secret())
            .send()
            .await
            .map_err(|error| HttpAdapterError::transport(ctx, &error))?;
        check(ctx, response).await
    }
}

/// Counts one request to `service` in its calls metric (`cosell_domain::metrics::Metric::calls_to`)
/// through the `metrics` facade: a no-op until the runtime installs the recorder, which prints the
/// counts once per invocation (docs/aws.md#embedded-metric-format).
pub(crate) fn count_call(service: &cosell_domain::Service) {
    if let Some(metric) = cosell_domain::metrics::Metric::calls_to(service) {
        metrics::counter!(metric.name()).increment(1);
    }
}
