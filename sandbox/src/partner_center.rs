//! Partner Center stand-in: the referrals (co-sell) API, the webhook registration API and
//! signed webhook delivery (docs/partner-center.md).
//!
//! # Referrals API (`https://api.partner.microsoft.com` → `{base_url}`)
//!
//! Token audience [`crate::identities::PC_REFERRALS_AUDIENCE`], **delegated (App+User) tokens only**; the user
//! needs the `ReferralAdmin` role to write, `ReferralAdmin` or `ReferralUser` to read.
//! Common failures: `401` (missing, unknown, expired or wrong-audience token), `403` (app-only
//! token, or a user without the role; the message names the missing role). Every response
//! carries a `Request-ID` header. Errors have the documented `{ "statusCode", "message" }` body.
//!
//! | Method | Path | Notes |
//! |---|---|---|
//! | `GET` | `/v1.0/engagements/referrals` | `$filter` (OData, e.g. `updatedDateTime ge 2024-01-01T00:00:00Z`, `engagementId eq '…'`, `status eq 'New'`, `team/any(t:t/email eq '…')`), `$orderby` (`createdDateTime` / `updatedDateTime` `asc`/`desc`), `$top` (page size, default 100, at most 1000), `$skip`; envelope `{ "@odata.context", "@odata.count", "value", "@odata.nextLink"? }` with an absolute `nextLink` carrying `$skiptoken=`. `400` for an invalid query |
//! | `GET` | `/v1.0/engagements/referrals/{id}` | the referral (`eTag`, `links`), `ETag` header. `404` when unknown |
//! | `POST` | `/v1.0/engagements/referrals` | create; **`201`** + the referral; `400` for malformed JSON or a missing `type` / `customerProfile` / `consent` / `details` (named); emits `referral-created` |
//! | `PATCH` | `/v1.0/engagements/referrals/{id}` | RFC 6902 body, `replace`/`add` only; `204`, or `200` + body with `Prefer: return=representation`; `400` (bad patch, path, value or transition), `404`, `409` (terminal state: Won/Lost/Declined/Expired), `412` (stale `If-Match`); emits `referral-updated` |
//!
//! # Webhook registration API (`https://api.partnercenter.microsoft.com` → `{base_url}`)
//!
//! Token audience [`crate::identities::PC_WEBHOOKS_AUDIENCE`], app-only or delegated.
//!
//! | Method | Path | Notes |
//! |---|---|---|
//! | `GET` | `/webhooks/v1/registration/events` | supported event names |
//! | `POST` | `/webhooks/v1/registration` | `{WebhookUrl, WebhookEvents, SignatureTokenToMsSignatureHeader?}` (any member casing) → `200 {SubscriberId, WebhookUrl, WebhookEvents}`; `400` (unknown event, relative URL), `409` when already registered (use `PUT`) |
//! | `GET` | `/webhooks/v1/registration` | `200` or `404` when none |
//! | `PUT` | `/webhooks/v1/registration` | replace (creates when none) → `200` |
//! | `POST` | `/webhooks/v1/registration/validationEvents` | sends a `test-created` event → `200 {correlationId}`; `400` unless registered for `test-created`; `429` + `Retry-After` past 2 per minute (sandbox clock) |
//! | `GET` | `/webhooks/v1/registration/validationEvents/{correlationId}` | `{correlationId, partnerId, status, callbackUrl, results: [{responseCode, responseMessage, systemError, dateTimeUtc}]}`, one result per delivery attempt; `404` when unknown or older than 7 days |
//!
//! # Signed delivery
//!
//! Every referral create/change is POSTed to the registered `WebhookUrl` when the registration
//! lists the event: compact JSON `{"EventName","ResourceUri":"{base_url}/engagements/v1/referrals/{id}",
//! "ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"…7 digits…+00:00"}`, headers
//! `Content-Type: application/json`, `Authorization: Signature <base64>` (or
//! `x-ms-signature: Signature <base64>` with `SignatureTokenToMsSignatureHeader`),
//! `X-MS-Certificate-Url: {base_url}/cert/pcnotifications-dispatch.microsoft.com.cer`,
//! `X-MS-Signature-Algorithm: rsa-sha256`. RSA-SHA256 PKCS#1 v1.5 over the exact body bytes.
//! Up to [`crate::SandboxConfig::pc_delivery_attempts`] attempts (10); any 2xx is accepted.
//!
//! Events: `referral-created` / `referral-updated` for the partner's own referrals;
//! `related-referral-created` / `related-referral-updated` for a referral of another
//! organization (e.g. Microsoft's side) that shares its `engagementId` with one of the
//! partner's referrals.
//!
//! # Control endpoints (`/_sandbox/…`)
//!
//! | Method | Path | Notes |
//! |---|---|---|
//! | `POST` | `/_sandbox/partner-center/referrals/microsoft-initiated` | optional JSON merge patch (RFC 7396) of overrides; creates an incoming Microsoft co-sell referral (New/Pending, `Incoming`, invited by `msft`), emits `referral-created` → `201` + referral |
//! | `PUT` | `/_sandbox/partner-center/referrals/{id}` | seeds/replaces a referral with the raw JSON as given (adds `id`, `eTag`, `updatedDateTime` only when missing) → `201`/`200`; emits `referral-*` or `related-referral-*` |
//! | `GET` | `/_sandbox/partner-center/referrals` / `…/{id}` | raw stored referrals (no token) |
//! | `PUT` | `/_sandbox/partner-center/users/{upn}` | `{"roles": ["ReferralAdmin" \| "ReferralUser" \| …]}` creates or changes a user → `201`/`200` |
//! | `GET` | `/_sandbox/partner-center/users` | users and roles |
//! | `GET` | `/_sandbox/partner-center/registration` | the webhook registration including `SignatureTokenToMsSignatureHeader` (`404` when none) |
//! | `POST` | `/_sandbox/partner-center/events` | `{"eventName", "referralId", "signer": "leaf"\|"rogue", "tamper": bool}` (re)sends a signed event to the registered URL → `202 {"deliveryId"}`; `409` without registration |
//! | `POST` | `/_sandbox/entra/revoke-refresh-tokens`, `/_sandbox/entra/refresh-tokens` | see [`crate::entra`] |

// Handlers return `Result<_, Response>` (the axum idiom); the error path is a short
// response, so a 128-byte `Err` is fine.
#![allow(clippy::result_large_err)]

mod patch;
mod referrals;
mod seed;
mod transition;
mod users;
mod webhooks;

use std::collections::HashMap;

use axum::Router;
use axum::http::HeaderValue;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::entra;
use crate::records::Table;
use crate::state::AppState;

pub use users::User;
pub use webhooks::Registration;

/// In-memory state of Partner Center (and of Entra's refresh tokens).
#[derive(Debug)]
pub struct State {
    /// Referrals by id, in creation order; fields are the referral JSON as returned.
    referrals: Table,
    users: Vec<User>,
    registration: Option<Registration>,
    validation_events: HashMap<String, webhooks::ValidationEvent>,
    /// When accepted `validationEvents` posts happened (2 per minute).
    validation_posts: Vec<DateTime<Utc>>,
    etag_counter: u32,
    /// Refresh tokens issued by the Entra stand-in.
    pub entra: entra::State,
}

impl Default for State {
    fn default() -> Self {
        Self {
            referrals: Table::default(),
            users: vec![User::builtin()],
            registration: None,
            validation_events: HashMap::new(),
            validation_posts: Vec::new(),
            etag_counter: 0x6d10,
            entra: entra::State::default(),
        }
    }
}

impl State {
    /// A user by id or UPN (case-insensitive).
    pub fn user(&self, id_or_upn: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.id.eq_ignore_ascii_case(id_or_upn) || u.upn.eq_ignore_ascii_case(id_or_upn))
    }

    /// A stored referral (as the API returns it, without `@odata.context`).
    pub fn referral(&self, id: &str) -> Option<Value> {
        self.referrals
            .get(id)
            .map(|row| Value::Object(row.fields.clone()))
    }

    /// The current webhook registration.
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// A new eTag in the shape of the documented ones
    /// (`"\"00006d10-0000-0000-0000-5c70aa630000\""`: a counter, then the Unix time in hex;
    /// the quotes are part of the value).
    fn next_etag(&mut self, now: DateTime<Utc>) -> String {
        self.etag_counter = self.etag_counter.wrapping_add(1);
        format!(
            "\"{:08x}-0000-0000-0000-{:08x}0000\"",
            self.etag_counter,
            now.timestamp() as u32
        )
    }
}

/// API routes: referrals and webhook registration.
pub fn routes() -> Router<AppState> {
    referrals::routes()
        .merge(webhooks::routes())
        .layer(axum::middleware::map_response(add_request_id))
}

/// Seeding routes under `/_sandbox/` (also carries the Entra control routes).
pub fn control_routes() -> Router<AppState> {
    seed::routes().merge(entra::control_routes())
}

async fn add_request_id(mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// A Partner Center date-time: UTC, 7 fractional digits, `Z`
/// (`2019-02-23T02:05:23.2931817Z`).
pub(crate) fn wire_time(t: DateTime<Utc>) -> String {
    format!("{}.{:07}Z", t.format("%Y-%m-%dT%H:%M:%S"), ticks(t))
}

/// A webhook `ResourceChangeUtcDate`: 7 fractional digits and `+00:00`.
pub(crate) fn event_time(t: DateTime<Utc>) -> String {
    format!("{}.{:07}+00:00", t.format("%Y-%m-%dT%H:%M:%S"), ticks(t))
}

/// A validation-status `dateTimeUtc`: 7 fractional digits, no offset
/// (`2017-12-08T21:39:48.2386997`).
pub(crate) fn status_time(t: DateTime<Utc>) -> String {
    format!("{}.{:07}", t.format("%Y-%m-%dT%H:%M:%S"), ticks(t))
}

/// Sub-second part in 100 ns ticks (.NET precision).
fn ticks(t: DateTime<Utc>) -> u32 {
    (t.timestamp_subsec_nanos() / 100).min(9_999_999)
}
