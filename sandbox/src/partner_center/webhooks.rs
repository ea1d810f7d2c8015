//! The webhook registration API (`/webhooks/v1/registration…`) and signed event delivery.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::users::authorize_webhooks;
use super::{event_time, status_time};
use crate::delivery::{self, Acceptance, Delivery};
use crate::errors;
use crate::faults::Service;
use crate::identities::TENANT_ID;
use crate::pki::{Pki, Signer};
use crate::state::AppState;

/// Events the registration API accepts (`GET /webhooks/v1/registration/events`): the
/// published (outdated) sample list plus the four referral events.
pub const SUPPORTED_EVENTS: &[&str] = &[
    "subscription-updated",
    "test-created",
    "usagerecords-thresholdExceeded",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

/// `test-created` posts allowed per minute ("A throttle limit of 2 requests per minute is
/// enforced when posting a test-created event").
const VALIDATION_EVENTS_PER_MINUTE: usize = 2;
/// Validation event data "older than seven days is purged".
const VALIDATION_RETENTION_DAYS: i64 = 7;

/// The tenant's webhook registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    #[serde(rename = "SubscriberId")]
    pub subscriber_id: String,
    #[serde(rename = "WebhookUrl")]
    pub url: String,
    #[serde(rename = "WebhookEvents")]
    pub events: Vec<String>,
    /// Send the signature in `x-ms-signature` instead of `Authorization`.
    #[serde(rename = "SignatureTokenToMsSignatureHeader")]
    pub signature_in_ms_header: bool,
}

impl Registration {
    /// Whether the registration lists `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e.eq_ignore_ascii_case(event))
    }

    /// The documented response shape `{SubscriberId, WebhookUrl, WebhookEvents}`.
    fn response(&self) -> Value {
        json!({
            "SubscriberId": self.subscriber_id,
            "WebhookUrl": self.url,
            "WebhookEvents": self.events,
        })
    }
}

/// A `test-created` event sent through `validationEvents`.
#[derive(Debug, Clone)]
pub struct ValidationEvent {
    delivery_id: u64,
    callback_url: String,
    created_at: DateTime<Utc>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/v1/registration/events", get(list_events))
        .route(
            "/webhooks/v1/registration",
            get(get_registration)
                .post(create_registration)
                .put(replace_registration),
        )
        .route(
            "/webhooks/v1/registration/validationEvents",
            post(send_validation_event),
        )
        .route(
            "/webhooks/v1/registration/validationEvents/{correlation_id}",
            get(validation_status),
        )
}

async fn list_events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = authorize_webhooks(&state.world(), &headers) {
        return response;
    }
    Json(SUPPORTED_EVENTS).into_response()
}

async fn get_registration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let world = state.world();
    if let Err(response) = authorize_webhooks(&world, &headers) {
        return response;
    }
    match &world.partner_center.registration {
        Some(registration) => Json(registration.response()).into_response(),
        None => errors::partner_center(
            StatusCode::NOT_FOUND,
            "No webhook registration exists for this tenant.",
        ),
    }
}

/// `POST`: registers. An existing registration → `409` (the real answer is UNKNOWN: the docs
/// offer `PUT` for updates and "Only one URL can be registered for a given webhook event";
/// refusing makes a connector that blindly POSTs notice, and the message points to `PUT`).
async fn create_registration(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut world = state.world();
    if let Err(response) = authorize_webhooks(&world, &headers) {
        return response;
    }
    let (url, events, signature_in_ms_header) = match parse_registration(&body) {
        Ok(parsed) => parsed,
        Err(message) => return errors::partner_center(StatusCode::BAD_REQUEST, &message),
    };
    let pc = &mut world.partner_center;
    if pc.registration.is_some() {
        return errors::partner_center(
            StatusCode::CONFLICT,
            "A webhook registration already exists for this tenant. Use PUT \
             /webhooks/v1/registration to update it.",
        );
    }
    let registration = Registration {
        subscriber_id: uuid::Uuid::new_v4().to_string(),
        url,
        events,
        signature_in_ms_header,
    };
    let body = registration.response();
    pc.registration = Some(registration);
    Json(body).into_response()
}

/// `PUT`: replaces the registration (keeping its `SubscriberId`); creates one when none exists
/// (UNKNOWN; the Power Automate "overwrite existing trigger endpoints" flow uses it that way).
async fn replace_registration(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut world = state.world();
    if let Err(response) = authorize_webhooks(&world, &headers) {
        return response;
    }
    let (url, events, signature_in_ms_header) = match parse_registration(&body) {
        Ok(parsed) => parsed,
        Err(message) => return errors::partner_center(StatusCode::BAD_REQUEST, &message),
    };
    let pc = &mut world.partner_center;
    let subscriber_id = pc.registration.as_ref().map_or_else(
        || uuid::Uuid::new_v4().to_string(),
        |r| r.subscriber_id.clone(),
    );
    let registration = Registration {
        subscriber_id,
        url,
        events,
        signature_in_ms_header,
    };
    let body = registration.response();
    pc.registration = Some(registration);
    Json(body).into_response()
}

/// Reads `{WebhookUrl, WebhookEvents, SignatureTokenToMsSignatureHeader?}`, member names in
/// any casing (the old referral-connector sample writes `signatureTokenToMsSignatureHeader`).
fn parse_registration(body: &[u8]) -> Result<(String, Vec<String>, bool), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("The request body is not valid JSON: {e}."))?;
    let Value::Object(object) = value else {
        return Err(
            "The request body must be a JSON object with WebhookUrl and WebhookEvents.".into(),
        );
    };
    let member = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let url = member("WebhookUrl")
        .and_then(Value::as_str)
        .ok_or("WebhookUrl is required.")?;
    let absolute = url::Url::parse(url)
        .ok()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !absolute {
        return Err(format!(
            "WebhookUrl '{url}' is not valid: an absolute http(s) URL is required."
        ));
    }
    let Some(Value::Array(requested)) = member("WebhookEvents") else {
        return Err("WebhookEvents is required: an array of event names.".into());
    };
    let mut events: Vec<String> = Vec::new();
    for event in requested {
        let name = event.as_str().unwrap_or_default();
        let Some(known) = SUPPORTED_EVENTS
            .iter()
            .find(|e| e.eq_ignore_ascii_case(name))
        else {
            return Err(format!(
                "The webhook event '{}' is not supported. Supported events: {}.",
                event
                    .as_str()
                    .map_or_else(|| event.to_string(), str::to_owned),
                SUPPORTED_EVENTS.join(", ")
            ));
        };
        if !events.iter().any(|e| e == known) {
            events.push((*known).to_owned());
        }
    }
    if events.is_empty() {
        return Err("WebhookEvents must list at least one event.".into());
    }
    let signature_in_ms_header = match member("SignatureTokenToMsSignatureHeader") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(other) => {
            return Err(format!(
                "SignatureTokenToMsSignatureHeader must be a boolean, found {other}."
            ));
        }
    };
    Ok((url.to_owned(), events, signature_in_ms_header))
}

/// `POST …/validationEvents`: sends a `test-created` event.
async fn send_validation_event(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (registration, correlation_id, now) = {
        let mut world = state.world();
        if let Err(response) = authorize_webhooks(&world, &headers) {
            return response;
        }
        let now = world.now();
        let pc = &mut world.partner_center;
        let Some(registration) = pc.registration.clone().filter(|r| r.wants("test-created")) else {
            return errors::partner_center(
                StatusCode::BAD_REQUEST,
                "You must be registered for the 'test-created' event before sending a \
                 validation event.",
            );
        };
        let window_start = now - chrono::Duration::minutes(1);
        pc.validation_posts.retain(|t| *t > window_start);
        if pc.validation_posts.len() >= VALIDATION_EVENTS_PER_MINUTE {
            let oldest = pc.validation_posts.iter().min().copied().unwrap_or(now);
            let wait = (oldest + chrono::Duration::minutes(1) - now)
                .num_milliseconds()
                .max(0);
            let seconds = (wait + 999) / 1000;
            let seconds = seconds.max(1);
            let mut response = errors::partner_center(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit is exceeded. Try again in {seconds} seconds."),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        pc.validation_posts.push(now);
        (registration, uuid::Uuid::new_v4().to_string(), now)
    };
    let event = Event::test(&state.config.base_url, &correlation_id, now);
    let delivery_id = send(&state, &registration, &event, Signer::Leaf, false);
    state.world().partner_center.validation_events.insert(
        correlation_id.clone(),
        ValidationEvent {
            delivery_id,
            callback_url: registration.url,
            created_at: now,
        },
    );
    Json(json!({ "correlationId": correlation_id })).into_response()
}

/// `GET …/validationEvents/{correlationId}`: the delivery attempts of a test event.
///
/// `status` is `completed` once an attempt was accepted (the documented sample), `failed`
/// once every attempt failed, `pending` while attempts continue (the last two are UNKNOWN
/// spellings). `responseCode` is the .NET `HttpStatusCode` name (`OK`, `InternalServerError`,
/// …); an attempt that got no HTTP response has `responseCode: null`, `systemError: true`.
async fn validation_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(correlation_id): Path<String>,
) -> Response {
    let world = state.world();
    if let Err(response) = authorize_webhooks(&world, &headers) {
        return response;
    }
    let now = world.now();
    let Some(event) = world
        .partner_center
        .validation_events
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(&correlation_id))
        .map(|(_, e)| e)
        .filter(|e| now - e.created_at < chrono::Duration::days(VALIDATION_RETENTION_DAYS))
    else {
        return errors::partner_center(
            StatusCode::NOT_FOUND,
            &format!("No validation event with correlation id '{correlation_id}'."),
        );
    };
    let record = world.deliveries.get(event.delivery_id);
    let results: Vec<Value> = record
        .map(|r| {
            r.attempts
                .iter()
                .map(|a| {
                    json!({
                        "responseCode": a.status.map(status_name),
                        "responseMessage": if a.accepted { String::new() } else { a.error.clone().unwrap_or_default() },
                        "systemError": a.status.is_none(),
                        "dateTimeUtc": status_time(a.at),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let status = match record {
        Some(r) if r.delivered => "completed",
        Some(r) if r.finished => "failed",
        _ => "pending",
    };
    Json(json!({
        "correlationId": correlation_id,
        "partnerId": TENANT_ID,
        "status": status,
        "callbackUrl": event.callback_url,
        "results": results,
    }))
    .into_response()
}

/// The .NET `HttpStatusCode` name of a status (what `responseCode: "OK"` is).
fn status_name(status: u16) -> String {
    let name = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        301 => "MovedPermanently",
        302 => "Found",
        307 => "TemporaryRedirect",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        501 => "NotImplemented",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        other => return other.to_string(),
    };
    name.to_owned()
}

/// A webhook event to sign and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub resource_uri: String,
    pub resource_name: &'static str,
    pub changed_at: DateTime<Utc>,
}

impl Event {
    /// A referral event: `ResourceUri` = `{base_url}/engagements/v1/referrals/{id}` (the
    /// documented `/engagements/v1/` shape, which is not the API path).
    pub fn referral(base_url: &str, name: &str, id: &str, changed_at: DateTime<Utc>) -> Self {
        Self {
            name: name.to_owned(),
            resource_uri: format!("{base_url}/engagements/v1/referrals/{id}"),
            resource_name: "referral",
            changed_at,
        }
    }

    /// A `test-created` event.
    pub fn test(base_url: &str, correlation_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            name: "test-created".to_owned(),
            resource_uri: format!(
                "{base_url}/webhooks/v1/registration/validationEvents/{correlation_id}"
            ),
            resource_name: "test",
            changed_at: at,
        }
    }

    /// The compact JSON body, members in the documented order.
    fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "EventName")]
            event_name: &'a str,
            #[serde(rename = "ResourceUri")]
            resource_uri: &'a str,
            #[serde(rename = "ResourceName")]
            resource_name: &'a str,
            #[serde(rename = "AuditUri")]
            audit_uri: Option<&'a str>,
            #[serde(rename = "ResourceChangeUtcDate")]
            resource_change_utc_date: String,
        }
        serde_json::to_vec(&Body {
            event_name: &self.name,
            resource_uri: &self.resource_uri,
            resource_name: self.resource_name,
            audit_uri: None,
            resource_change_utc_date: event_time(self.changed_at),
        })
        .unwrap_or_default()
    }
}

/// Sends `event` when the registration lists it. Returns the delivery id.
pub fn notify(state: &AppState, event: &Event) -> Option<u64> {
    let registration = state
        .world()
        .partner_center
        .registration
        .clone()
        .filter(|r| r.wants(&event.name))?;
    Some(send(state, &registration, event, Signer::Leaf, false))
}

/// Signs `event` with `signer` and delivers it to the registered URL (10 attempts, any 2xx
/// accepted). With `tamper`, one body byte changes after signing (a digit of the date, so
/// the body stays valid JSON but the signature no longer matches).
pub fn send(
    state: &AppState,
    registration: &Registration,
    event: &Event,
    signer: Signer,
    tamper: bool,
) -> u64 {
    let mut body = event.body();
    let signature = state.pki.sign(signer, &body);
    if tamper {
        tamper_with(&mut body);
    }
    let signature_header = if registration.signature_in_ms_header {
        "x-ms-signature"
    } else {
        "Authorization"
    };
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        (
            signature_header.to_owned(),
            format!("Signature {signature}"),
        ),
        (
            "X-MS-Certificate-Url".to_owned(),
            format!("{}{}", state.config.base_url, Pki::cert_path(signer)),
        ),
        (
            "X-MS-Signature-Algorithm".to_owned(),
            "rsa-sha256".to_owned(),
        ),
    ];
    delivery::spawn(
        state,
        Delivery {
            service: Service::PartnerCenter,
            label: event.name.clone(),
            url: registration.url.clone(),
            headers,
            body,
            max_attempts: state.config.pc_delivery_attempts,
            acceptance: Acceptance::Any2xx,
        },
    )
}

fn tamper_with(body: &mut [u8]) {
    let index = body
        .iter()
        .rposition(u8::is_ascii_digit)
        .unwrap_or(body.len() / 2);
    if let Some(byte) = body.get_mut(index) {
        *byte ^= 1;
    }
}
