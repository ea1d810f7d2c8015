//! The Partner Center adapters: [`HttpPartnerCenter`] implements the domain's
//! [`PartnerCenter`] port over the referrals API (docs/partner-center.md#referrals-api), and
//! [`WebhookRegistrationClient`] drives the webhook registration API
//! (docs/partner-center.md#webhook-registration) for the CLI's `register-webhook` and `doctor`.
//!
//! Both send through an [`AuthorizedClient`]: bearer token, one refresh on 401, every other
//! failure classified by [`super::response`]. Each request carries `MS-CorrelationId` (one per
//! adapter call, kept across the 401 retry) and `client-request-id` (one per HTTP attempt),
//! both logged at debug level, so a failure can be matched with Microsoft support.

use cosell_domain::ids::{ETag, ReferralId};
use cosell_domain::ports::{PartnerCenter, Patched, PortError, ReferralQuery, Service};
use cosell_domain::referral::{PatchOp, Referral, ReferralPage};
use cosell_domain::webhook::{
    EventName, ValidationEventResponse, ValidationEventStatus, WebhookRegistration,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MATCH, LOCATION};
use url::Url;
use uuid::Uuid;

use super::AuthorizedClient;
use super::response::{
    HttpAdapterError, MAX_RESPONSE_BYTES, RequestContext, read_json, read_limited,
    redacted_url_text,
};
use super::tokens::{AccessToken, EntraRefreshToken, TokenProvider};

/// The referrals API host ("Pricing and Referrals").
pub const DEFAULT_PARTNER_CENTER_BASE_URL: &str = "https://api.partner.microsoft.com";
/// The host of the rest of Partner Center, webhook registration included.
pub const DEFAULT_WEBHOOKS_BASE_URL: &str = "https://api.partnercenter.microsoft.com";
/// The role a referral read needs.
pub const READ_ROLES: &str = "Referral Admin or Referral User";
/// The role a referral write needs.
pub const WRITE_ROLE: &str = "Referral Admin";

const REFERRALS_PATH: &str = "/v1.0/engagements/referrals";
const REGISTRATION_PATH: &str = "/webhooks/v1/registration";

/// A base URL without its trailing slash, checked to be absolute http(s).
fn normalize_base_url(what: &str, text: &str) -> Result<String, HttpAdapterError> {
    let trimmed = text.trim().trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|error| {
        HttpAdapterError::Config(format!(
            "the {what} base URL '{text}' is not a URL: {error}"
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http")
        || url.host().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(HttpAdapterError::Config(format!(
            "the {what} base URL '{text}' must be an absolute https URL without query"
        )));
    }
    Ok(trimmed.to_owned())
}

fn parse(ctx: &RequestContext, text: &str) -> Result<Url, HttpAdapterError> {
    Url::parse(text)
        .map_err(|error| HttpAdapterError::Config(format!("{}: {error}", ctx.operation)))
}

/// The headers every Partner Center request carries.
fn pc_headers(correlation_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    let request_id = Uuid::new_v4().to_string();
    tracing::debug!(ms_correlation_id = %correlation_id, client_request_id = %request_id, "Partner Center request");
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert("MS-CorrelationId", value);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("client-request-id", value);
    }
    headers
}

/// The query string of `pairs`, keys as given (`$filter`, not `%24filter`), values
/// percent-encoded with `%20` for spaces.
fn odata_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            format!("{key}={}", encoded.replace('+', "%20"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

// ---------------------------------------------------------------------------------------------
// Referrals
// ---------------------------------------------------------------------------------------------

/// The Partner Center referrals API (`{base}/v1.0/engagements/referrals`) with a delegated
/// token. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpPartnerCenter {
    client: AuthorizedClient,
    base: String,
}

impl HttpPartnerCenter {
    /// The adapter on `base_url` ([`DEFAULT_PARTNER_CENTER_BASE_URL`] in production, the
    /// sandbox's base URL in tests). The referrals API accepts only delegated (App+User)
    /// tokens, hence an [`EntraRefreshToken`] (scope
    /// [`super::tokens::PARTNER_CENTER_REFERRALS_SCOPE`]).
    pub fn new(
        http: reqwest::Client,
        tokens: EntraRefreshToken,
        base_url: &str,
    ) -> Result<Self, HttpAdapterError> {
        Ok(Self {
            client: AuthorizedClient::new(http, TokenProvider::from(tokens)),
            base: normalize_base_url("Partner Center", base_url)?,
        })
    }

    /// The configured base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn referral_url(&self, ctx: &RequestContext, id: &ReferralId) -> Result<Url, HttpAdapterError> {
        parse(ctx, &format!("{}{REFERRALS_PATH}/{id}", self.base))
    }

    /// The URL `query` lists: its `next_link` as given (it must stay on the configured base
    /// URL's origin, since the bearer token goes with it), or `$filter` (from
    /// [`ReferralQuery::odata_filter`]), `$orderby=updatedDateTime asc` when listing changes
    /// since an instant (so paging walks forward in time), and `$top`.
    pub fn list_url(&self, query: &ReferralQuery) -> Result<Url, HttpAdapterError> {
        let ctx = RequestContext::new(Service::PartnerCenter, "list referrals");
        let base = parse(&ctx, &self.base)?;
        if let Some(next) = query.next_link.as_deref().filter(|n| !n.trim().is_empty()) {
            // The link's query holds the filter: error texts show it without.
            let shown = redacted_url_text(next);
            let url = base.join(next.trim()).map_err(|error| {
                HttpAdapterError::decode(
                    &ctx,
                    format!("the nextLink '{shown}' is not a URL: {error}"),
                )
            })?;
            if url.origin() != base.origin() {
                return Err(HttpAdapterError::decode(
                    &ctx,
                    format!(
                        "the nextLink '{shown}' points to another origin than {}; it is not \
                         followed (the bearer token would go with it)",
                        self.base
                    ),
                ));
            }
            return Ok(url);
        }
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(filter) = query.odata_filter() {
            pairs.push(("$filter", filter));
        }
        if query.updated_since.is_some() {
            pairs.push(("$orderby", "updatedDateTime asc".to_owned()));
        }
        if let Some(top) = query.top {
            pairs.push(("$top", top.to_string()));
        }
        let mut url = parse(&ctx, &format!("{}{REFERRALS_PATH}", self.base))?;
        if !pairs.is_empty() {
            url.set_query(Some(&odata_query(&pairs)));
        }
        Ok(url)
    }

    /// `GET /v1.0/engagements/referrals/{id}`; the `ETag` header fills a missing `eTag`.
    #[tracing::instrument(skip_all, fields(referral_id = %id))]
    pub async fn try_get_referral(&self, id: &ReferralId) -> Result<Referral, HttpAdapterError> {
        let ctx = RequestContext::new(Service::PartnerCenter, "GET referral")
            .with_resource(format!("referral {id}"))
            .with_required_role(READ_ROLES);
        let url = self.referral_url(&ctx, id)?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(&ctx, |http, _: &AccessToken| {
                http.get(url.clone()).headers(pc_headers(&correlation))
            })
            .await?;
        let etag = header_etag(response.headers());
        let mut referral: Referral = read_json(&ctx, response).await?;
        if referral.e_tag.is_none() {
            referral.e_tag = etag.map(String::from);
        }
        Ok(referral)
    }

    /// One page of `GET /v1.0/engagements/referrals` ([`list_url`](Self::list_url)).
    #[tracing::instrument(skip_all)]
    pub async fn try_list_referrals(
        &self,
        query: &ReferralQuery,
    ) -> Result<ReferralPage, HttpAdapterError> {
        let ctx = RequestContext::new(Service::PartnerCenter, "list referrals")
            .with_resource("the referrals collection")
            .with_required_role(READ_ROLES);
        let url = self.list_url(query)?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(&ctx, |http, _: &AccessToken| {
                http.get(url.clone()).headers(pc_headers(&correlation))
            })
            .await?;
        read_json(&ctx, response).await
    }

    /// `POST /v1.0/engagements/referrals`. Any 2xx with the referral is success: the real
    /// status is UNKNOWN (the connector swagger says 200, a REST create would be 201). A 2xx
    /// without a body but with a `Location` naming the new referral (the other usual REST
    /// answer to a create) is read with one GET of it.
    #[tracing::instrument(skip_all)]
    pub async fn try_create_referral(
        &self,
        referral: &Referral,
    ) -> Result<Referral, HttpAdapterError> {
        let ctx = RequestContext::new(Service::PartnerCenter, "create referral")
            .with_required_role(WRITE_ROLE);
        let body = serde_json::to_vec(referral).map_err(|error| {
            HttpAdapterError::Config(format!("the referral could not be serialised: {error}"))
        })?;
        let url = parse(&ctx, &format!("{}{REFERRALS_PATH}", self.base))?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(&ctx, |http, _: &AccessToken| {
                http.post(url.clone())
                    .headers(pc_headers(&correlation))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        let etag = header_etag(response.headers()).map(String::from);
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(&ctx, response, MAX_RESPONSE_BYTES, false).await?;
        let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&body);
        if body.trim_ascii().is_empty() {
            let id = location
                .as_deref()
                .and_then(|location| {
                    let path = location.split(['?', '#']).next().unwrap_or_default();
                    ReferralId::try_from(path.trim_end_matches('/').rsplit('/').next()?).ok()
                })
                .ok_or_else(|| {
                    HttpAdapterError::decode(
                        &ctx,
                        "the create answered neither the referral nor a Location naming it",
                    )
                })?;
            return self.try_get_referral(&id).await;
        }
        let mut created: Referral = serde_json::from_slice(body).map_err(|error| {
            HttpAdapterError::decode(
                &ctx,
                format!("the body is not the documented JSON: {error}"),
            )
        })?;
        if created.e_tag.is_none() {
            created.e_tag = etag;
        }
        Ok(created)
    }

    /// `PATCH /v1.0/engagements/referrals/{id}` with JSON Patch, `If-Match` when given, and
    /// `Prefer: return=representation`. Returns the new eTag: the returned referral's `eTag`,
    /// else the `ETag` header, else `None` (a 204). A stale `If-Match` is
    /// [`HttpAdapterError::PreconditionFailed`].
    #[tracing::instrument(skip_all, fields(referral_id = %id, ops = ops.len()))]
    pub async fn try_patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Patched, HttpAdapterError> {
        let ctx = RequestContext::new(Service::PartnerCenter, "PATCH referral")
            .with_resource(format!("referral {id}"))
            .with_required_role(WRITE_ROLE);
        let url = self.referral_url(&ctx, id)?;
        let body = serde_json::to_vec(ops).map_err(|error| {
            HttpAdapterError::Config(format!("the patch could not be serialised: {error}"))
        })?;
        let if_match = if_match
            .map(|tag| {
                HeaderValue::from_str(tag.as_str()).map_err(|_| {
                    HttpAdapterError::Config(format!(
                        "the eTag {tag} cannot be sent in an If-Match header"
                    ))
                })
            })
            .transpose()?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(&ctx, |http, _: &AccessToken| {
                let mut request = http
                    .patch(url.clone())
                    .headers(pc_headers(&correlation))
                    .header(CONTENT_TYPE, "application/json")
                    .header("Prefer", "return=representation")
                    .body(body.clone());
                if let Some(tag) = &if_match {
                    request = request.header(IF_MATCH, tag.clone());
                }
                request
            })
            .await?;
        let header = Patched::etag(header_etag(response.headers()));
        // The write happened: an unreadable representation must not turn it into an error
        // (a retry would apply it twice), so fall back to the header.
        let body = match read_limited(&ctx, response, MAX_RESPONSE_BYTES, false).await {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(error = %error, "the PATCH answer could not be read; using the ETag header");
                return Ok(header);
            }
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(header);
        }
        match serde_json::from_slice::<Referral>(&body) {
            Ok(referral) => Ok(Patched {
                etag: referral.etag().or(header.etag),
                updated: referral.updated(),
                referral: Some(Box::new(referral)),
            }),
            Err(error) => {
                tracing::warn!(error = %error, "the PATCH answer is not a referral; using the ETag header");
                Ok(header)
            }
        }
    }
}

/// The `ETag` header as an [`ETag`].
fn header_etag(headers: &HeaderMap) -> Option<ETag> {
    headers
        .get(ETAG)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| ETag::try_from(value).ok())
}

impl PartnerCenter for HttpPartnerCenter {
    async fn get_referral(&self, id: &ReferralId) -> Result<Referral, PortError> {
        Ok(self.try_get_referral(id).await?)
    }

    async fn list_referrals(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        Ok(self.try_list_referrals(query).await?)
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, PortError> {
        Ok(self.try_create_referral(referral).await?)
    }

    async fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Patched, PortError> {
        Ok(self.try_patch_referral(id, if_match, ops).await?)
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook registration
// ---------------------------------------------------------------------------------------------

/// The webhook registration API (`{base}/webhooks/v1/registration`, base
/// [`DEFAULT_WEBHOOKS_BASE_URL`]). Its token audience is `https://api.partnercenter.microsoft.com`
/// (scope [`super::tokens::PARTNER_CENTER_WEBHOOKS_SCOPE`]); app-only
/// ([`super::EntraClientCredentials`]) and delegated tokens are both accepted. Errors are
/// returned as [`HttpAdapterError`] for the CLI to show; `PortError::from` converts them.
#[derive(Debug, Clone)]
pub struct WebhookRegistrationClient {
    client: AuthorizedClient,
    base: String,
}

impl WebhookRegistrationClient {
    /// A client on `base_url` with a token for the webhooks audience.
    pub fn new(
        http: reqwest::Client,
        tokens: impl Into<TokenProvider>,
        base_url: &str,
    ) -> Result<Self, HttpAdapterError> {
        Ok(Self {
            client: AuthorizedClient::new(http, tokens),
            base: normalize_base_url("Partner Center webhooks", base_url)?,
        })
    }

    fn ctx(operation: &'static str) -> RequestContext {
        RequestContext::new(Service::PartnerCenterWebhooks, operation)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        path: &str,
    ) -> Result<T, HttpAdapterError> {
        let url = parse(ctx, &format!("{}{path}", self.base))?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(ctx, |http, _: &AccessToken| {
                http.get(url.clone()).headers(pc_headers(&correlation))
            })
            .await?;
        read_json(ctx, response).await
    }

    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, HttpAdapterError> {
        let url = parse(ctx, &format!("{}{path}", self.base))?;
        let correlation = Uuid::new_v4().to_string();
        let response = self
            .client
            .send(ctx, |http, _: &AccessToken| {
                let request = http
                    .request(method.clone(), url.clone())
                    .headers(pc_headers(&correlation));
                match &body {
                    Some(body) => request
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone()),
                    None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
                }
            })
            .await?;
        read_json(ctx, response).await
    }

    /// `GET /webhooks/v1/registration/events`: the events the tenant may register for.
    pub async fn events(&self) -> Result<Vec<EventName>, HttpAdapterError> {
        self.get_json(
            &Self::ctx("list webhook events"),
            &format!("{REGISTRATION_PATH}/events"),
        )
        .await
    }

    /// `GET /webhooks/v1/registration`; `None` when the tenant has none (404).
    pub async fn get(&self) -> Result<Option<WebhookRegistration>, HttpAdapterError> {
        let ctx =
            Self::ctx("get the webhook registration").with_resource("the webhook registration");
        match self.get_json(&ctx, REGISTRATION_PATH).await {
            Ok(registration) => Ok(Some(registration)),
            Err(HttpAdapterError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /webhooks/v1/registration`: registers (fails when one exists; use
    /// [`update`](Self::update) to replace it).
    pub async fn register(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<WebhookRegistration, HttpAdapterError> {
        let ctx = Self::ctx("register the webhook");
        self.send_json(
            &ctx,
            reqwest::Method::POST,
            REGISTRATION_PATH,
            Some(Self::body(registration)?),
        )
        .await
    }

    /// `PUT /webhooks/v1/registration`: replaces the registration (URL and events).
    pub async fn update(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<WebhookRegistration, HttpAdapterError> {
        let ctx = Self::ctx("update the webhook registration");
        self.send_json(
            &ctx,
            reqwest::Method::PUT,
            REGISTRATION_PATH,
            Some(Self::body(registration)?),
        )
        .await
    }

    /// `POST /webhooks/v1/registration/validationEvents`: sends a `test-created` event (the
    /// registration must list it; 2 per minute, a 429 beyond).
    pub async fn send_validation_event(&self) -> Result<ValidationEventResponse, HttpAdapterError> {
        let ctx = Self::ctx("send a validation event");
        self.send_json(
            &ctx,
            reqwest::Method::POST,
            &format!("{REGISTRATION_PATH}/validationEvents"),
            None,
        )
        .await
    }

    /// `GET /webhooks/v1/registration/validationEvents/{correlationId}`: the delivery attempts
    /// of a validation event.
    pub async fn validation_event_status(
        &self,
        correlation_id: &str,
    ) -> Result<ValidationEventStatus, HttpAdapterError> {
        let ctx = Self::ctx("get a validation event's status")
            .with_resource(format!("validation event {correlation_id}"));
        let id = correlation_id.trim();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(HttpAdapterError::Config(format!(
                "the correlation id '{correlation_id}' is not a GUID"
            )));
        }
        self.get_json(&ctx, &format!("{REGISTRATION_PATH}/validationEvents/{id}"))
            .await
    }

    fn body(registration: &WebhookRegistration) -> Result<Vec<u8>, HttpAdapterError> {
        serde_json::to_vec(registration).map_err(|error| {
            HttpAdapterError::Config(format!("the registration could not be serialised: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use cosell_domain::status::ReferralStatus;
    use secrecy::SecretString;

    fn adapter(base: &str) -> HttpPartnerCenter {
        let tokens = EntraRefreshToken::new(
            reqwest::Client::new(),
            super::super::EntraRefreshTokenConfig::partner_center_referrals(
                "tenant",
                "client",
                SecretString::from("secret"),
                SecretString::from("refresh"),
            ),
        )
        .unwrap();
        HttpPartnerCenter::new(reqwest::Client::new(), tokens, base).unwrap()
    }

    #[test]
    fn list_urls_carry_filter_orderby_and_top_with_literal_dollar_keys() {
        let pc = adapter("https://api.partner.microsoft.com/");
        let query = ReferralQuery {
            updated_since: Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
            status: Some(ReferralStatus::Active),
            top: Some(50),
            ..ReferralQuery::default()
        };
        let url = pc.list_url(&query).unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.partner.microsoft.com/v1.0/engagements/referrals?\
             $filter=updatedDateTime%20ge%202024-01-02T03%3A04%3A05Z%20and%20status%20eq%20%27Active%27\
             &$orderby=updatedDateTime%20asc&$top=50"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs[0].1,
            "updatedDateTime ge 2024-01-02T03:04:05Z and status eq 'Active'"
        );
        assert_eq!(
            pc.list_url(&ReferralQuery::default()).unwrap().as_str(),
            "https://api.partner.microsoft.com/v1.0/engagements/referrals"
        );
    }

    #[test]
    fn next_links_are_followed_as_given_but_only_on_the_same_origin() {
        let pc = adapter("https://api.partner.microsoft.com");
        let next = "https://api.partner.microsoft.com/v1.0/referrals?$skiptoken=abc";
        let query = ReferralQuery {
            next_link: Some(next.into()),
            top: Some(5),
            ..ReferralQuery::default()
        };
        assert_eq!(pc.list_url(&query).unwrap().as_str(), next);
        let relative = ReferralQuery {
            next_link: Some("/v1.0/engagements/referrals?$skiptoken=x".into()),
            ..ReferralQuery::default()
        };
        assert_eq!(
            pc.list_url(&relative).unwrap().as_str(),
            "https://api.partner.microsoft.com/v1.0/engagements/referrals?$skiptoken=x"
        );
        let elsewhere = ReferralQuery {
            next_link: Some("https://evil.example/v1.0/referrals?$skiptoken=abc".into()),
            ..ReferralQuery::default()
        };
        let err = pc.list_url(&elsewhere).unwrap_err();
        assert!(err.to_string().contains("another origin"), "{err}");
        assert!(
            err.to_string()
                .contains("'https://evil.example/v1.0/referrals'"),
            "the link is named without its query: {err}"
        );
        assert!(!err.to_string().contains("skiptoken"), "{err}");
        assert!(!err.into_port_error().is_retryable());
    }

    #[test]
    fn base_urls_must_be_absolute() {
        assert!(normalize_base_url("x", "api.partner.microsoft.com").is_err());
        assert!(normalize_base_url("x", "https://h/?a=b").is_err());
        assert_eq!(normalize_base_url("x", "https://h/").unwrap(), "https://h");
    }
}
