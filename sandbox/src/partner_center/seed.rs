//! Partner Center control routes under `/_sandbox/partner-center/` (see the module docs of
//! [`crate::partner_center`]).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::referrals::{event_for, links, normalize_deal_value, ordered};
use super::users::{User, canonical_role};
use super::webhooks::{self, Event, SUPPORTED_EVENTS};
use super::wire_time;
use crate::identities::{PC_ORGANIZATION_ID, PC_ORGANIZATION_NAME};
use crate::pki::Signer;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            post(microsoft_initiated),
        )
        .route("/_sandbox/partner-center/referrals", get(list_referrals))
        .route(
            "/_sandbox/partner-center/referrals/{id}",
            get(get_referral).put(put_referral),
        )
        .route("/_sandbox/partner-center/users", get(list_users))
        .route("/_sandbox/partner-center/users/{upn}", put(put_user))
        .route(
            "/_sandbox/partner-center/registration",
            get(get_registration),
        )
        .route("/_sandbox/partner-center/events", post(send_event))
}

fn control_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Parses an optional JSON body (empty → `None`).
fn optional_json(body: &[u8]) -> Result<Option<Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| control_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

/// A realistic incoming Microsoft co-sell referral, built on the documented create-referral
/// sample: New/Pending, Incoming, invited by `msft`, expiring in 14 days ("If you don't
/// respond … within the allotted time (currently 14 days), we'll archive it as Expired").
fn microsoft_referral(now: DateTime<Utc>) -> Value {
    let closing = (now + chrono::Duration::days(90)).format("%Y-%m-%dT00:00:00Z");
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "engagementId": uuid::Uuid::new_v4().to_string(),
        "organizationId": PC_ORGANIZATION_ID,
        "organizationName": PC_ORGANIZATION_NAME,
        "name": "Test Cosell Invite_20",
        "externalReferenceId": null,
        "createdDateTime": wire_time(now),
        "updatedDateTime": wire_time(now),
        "expirationDateTime": wire_time(now + chrono::Duration::days(14)),
        "status": "New",
        "substatus": "Pending",
        "statusReason": null,
        "qualification": "SalesQualified",
        "type": "Shared",
        "direction": "Incoming",
        "target": [ { "type": "SolutionProfile", "id": "SOL-34104-EBB" } ],
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": {
                "addressLine1": "One Microsoft Way",
                "addressLine2": "34",
                "city": "Redmond",
                "state": "WA",
                "postalCode": "98052",
                "country": "US"
            },
            "size": "10to50employees",
            "team": [ {
                "contactPreference": { "locale": "en-us", "disableNotifications": false },
                "firstName": "Sue",
                "lastName": "Smith",
                "phoneNumber": "1234567890",
                "email": "sue.smith@contoso.com"
            } ],
            "ids": []
        },
        "consent": { "consentToToShareInfoWithOthers": true, "consentToContact": true },
        "details": {
            "notes": "Customer is looking to leverage Dynamics 365 to manage their supply chain. There is also a need to leverage a set of custom apps to enable their business processes.",
            "dealValue": 50000,
            "currency": "USD",
            "closingDateTime": closing.to_string(),
            "requirements": {
                "industries": [ { "id": "Manufacturing" } ],
                "products": [ { "id": "Dynamics365Enterprise" } ],
                "services": [ { "id": "DeploymentOrMigration" } ],
                "solutions": [ {
                    "name": "Dynamics 365 for Field Service",
                    "type": "Category",
                    "id": "Dynamics365forFieldService"
                } ]
            }
        },
        "team": [ {
            "contactPreference": { "locale": "en-us", "disableNotifications": false },
            "firstName": "John",
            "lastName": "Doe",
            "phoneNumber": "1231231234",
            "email": "john.doe@microsoft.com"
        } ],
        "inviteContext": {
            "notes": "Hi ABC Partner, hoping you can help this customer. Thanks, John @ Microsoft",
            "invitedBy": { "organizationId": "msft", "organizationName": "Microsoft" }
        }
    })
}

/// `POST /_sandbox/partner-center/referrals/microsoft-initiated` (body: optional JSON merge
/// patch of overrides, e.g. `{"details": {"dealValue": 1234}}`; `null` removes a member).
async fn microsoft_initiated(State(state): State<AppState>, body: Bytes) -> Response {
    let overrides = match optional_json(&body) {
        Ok(overrides) => overrides,
        Err(response) => return response,
    };
    if overrides
        .as_ref()
        .is_some_and(|o| !o.is_object() && !o.is_null())
    {
        return control_error(
            StatusCode::BAD_REQUEST,
            "overrides must be a JSON object (merged into the referral)",
        );
    }
    let (referral, event) = {
        let mut world = state.world();
        let now = world.now();
        let mut referral = microsoft_referral(now);
        if let Some(overrides) = &overrides {
            json_patch::merge(&mut referral, overrides);
        }
        let Value::Object(mut referral) = referral else {
            return control_error(StatusCode::BAD_REQUEST, "overrides removed the referral");
        };
        let id = string_or_new(&mut referral, "id");
        let engagement_id = string_or_new(&mut referral, "engagementId");
        let pc = &mut world.partner_center;
        if pc.referrals.get(&id).is_some() {
            return control_error(
                StatusCode::CONFLICT,
                &format!("a referral with id '{id}' already exists"),
            );
        }
        if let Err(message) = normalize_deal_value(&mut referral) {
            return control_error(StatusCode::BAD_REQUEST, &message);
        }
        if !referral.contains_key("eTag") {
            referral.insert("eTag".into(), Value::String(pc.next_etag(now)));
        }
        if !referral.contains_key("links") {
            referral.insert(
                "links".into(),
                links(&state.config.base_url, &id, &engagement_id),
            );
        }
        let referral = ordered(referral);
        let event = event_for(&state, pc, &id, &referral, true, now);
        pc.referrals.put(&id, referral.clone());
        (referral, event)
    };
    if let Some(event) = event {
        webhooks::notify(&state, &event);
    }
    (StatusCode::CREATED, Json(Value::Object(referral))).into_response()
}

fn string_or_new(referral: &mut Map<String, Value>, member: &str) -> String {
    match referral.get(member).and_then(Value::as_str) {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            referral.insert(member.to_owned(), Value::String(id.clone()));
            id
        }
    }
}

async fn list_referrals(State(state): State<AppState>) -> Response {
    let world = state.world();
    let referrals: Vec<Value> = world
        .partner_center
        .referrals
        .rows()
        .map(|row| Value::Object(row.fields.clone()))
        .collect();
    Json(json!({ "count": referrals.len(), "referrals": referrals })).into_response()
}

async fn get_referral(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.world().partner_center.referral(&id) {
        Some(referral) => Json(referral).into_response(),
        None => control_error(StatusCode::NOT_FOUND, &format!("no referral '{id}'")),
    }
}

/// `PUT /_sandbox/partner-center/referrals/{id}`: stores the JSON as given (member names and
/// values untouched), adding `id`, `eTag` and `updatedDateTime` only when missing.
async fn put_referral(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(mut referral)) = serde_json::from_slice::<Value>(&body) else {
        return control_error(
            StatusCode::BAD_REQUEST,
            "the body must be a referral JSON object",
        );
    };
    let (status, referral, event) = {
        let mut world = state.world();
        let now = world.now();
        match member(&referral, "id").map(|(_, v)| v.as_str()) {
            None => {
                referral.insert("id".into(), Value::String(id.clone()));
            }
            Some(Some(given)) if given.eq_ignore_ascii_case(&id) => {}
            Some(_) => {
                return control_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body's id does not match the path id '{id}'"),
                );
            }
        }
        let pc = &mut world.partner_center;
        if member(&referral, "eTag").is_none() {
            referral.insert("eTag".into(), Value::String(pc.next_etag(now)));
        }
        if member(&referral, "updatedDateTime").is_none() {
            referral.insert("updatedDateTime".into(), Value::String(wire_time(now)));
        }
        let changed_at = member(&referral, "updatedDateTime")
            .and_then(|(_, v)| v.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.with_timezone(&Utc));
        let created = pc.referrals.get(&id).is_none();
        let event = event_for(&state, pc, &id, &referral, created, changed_at);
        pc.referrals.put(&id, referral.clone());
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, referral, event)
    };
    if let Some(event) = event {
        webhooks::notify(&state, &event);
    }
    (status, Json(Value::Object(referral))).into_response()
}

fn member<'a>(referral: &'a Map<String, Value>, name: &str) -> Option<(&'a String, &'a Value)> {
    referral.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
}

async fn list_users(State(state): State<AppState>) -> Response {
    Json(json!({ "users": state.world().partner_center.users })).into_response()
}

#[derive(Debug, Deserialize)]
struct RolesBody {
    roles: Vec<String>,
}

/// `PUT /_sandbox/partner-center/users/{upn}` `{"roles": [...]}`.
async fn put_user(State(state): State<AppState>, Path(upn): Path<String>, body: Bytes) -> Response {
    let body: RolesBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"roles\": [\"ReferralAdmin\" | \"ReferralUser\" | ...]}}: {e}"
                ),
            );
        }
    };
    let roles: Vec<String> = body.roles.iter().map(|r| canonical_role(r)).collect();
    let mut world = state.world();
    let users = &mut world.partner_center.users;
    let (status, user) = match users.iter_mut().find(|u| u.upn.eq_ignore_ascii_case(&upn)) {
        Some(user) => {
            user.roles = roles;
            (StatusCode::OK, user.clone())
        }
        None => {
            let user = User {
                id: uuid::Uuid::new_v4().to_string(),
                upn,
                roles,
            };
            users.push(user.clone());
            (StatusCode::CREATED, user)
        }
    };
    (status, Json(user)).into_response()
}

async fn get_registration(State(state): State<AppState>) -> Response {
    match state.world().partner_center.registration() {
        Some(registration) => Json(registration.clone()).into_response(),
        None => control_error(StatusCode::NOT_FOUND, "no webhook registration"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventRequest {
    #[serde(alias = "event_name", alias = "EventName")]
    event_name: String,
    #[serde(default, alias = "referral_id", alias = "correlationId")]
    referral_id: Option<String>,
    #[serde(default)]
    signer: Signer,
    #[serde(default)]
    tamper: bool,
}

/// `POST /_sandbox/partner-center/events`: (re)sends a signed event to the registered URL,
/// whether or not the registration lists it. `referralId` need not exist (an event about a
/// referral that vanished is a valid test); for `test-created` it is the correlation id.
async fn send_event(State(state): State<AppState>, body: Bytes) -> Response {
    let request: EventRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"eventName\", \"referralId\", \"signer\": \"leaf\"|\"rogue\", \
                     \"tamper\": bool}}: {e}"
                ),
            );
        }
    };
    let Some(name) = SUPPORTED_EVENTS
        .iter()
        .copied()
        .filter(|e| *e == "test-created" || e.contains("referral"))
        .find(|e| e.eq_ignore_ascii_case(&request.event_name))
    else {
        return control_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported eventName '{}': use test-created or a referral event",
                request.event_name
            ),
        );
    };
    let (registration, event) = {
        let world = state.world();
        let Some(registration) = world.partner_center.registration().cloned() else {
            return control_error(
                StatusCode::CONFLICT,
                "no webhook registration: register a WebhookUrl first",
            );
        };
        let now = world.now();
        let base = &state.config.base_url;
        let event = if name == "test-created" {
            let id = request
                .referral_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            Event::test(base, &id, now)
        } else {
            let Some(id) = request.referral_id.clone() else {
                return control_error(StatusCode::BAD_REQUEST, "referralId is required");
            };
            let changed_at = world
                .partner_center
                .referral(&id)
                .as_ref()
                .and_then(|r| crate::odata::lookup(r, &["updatedDateTime".to_owned()]))
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or(now, |t| t.with_timezone(&Utc));
            Event::referral(base, name, &id, changed_at)
        };
        (registration, event)
    };
    let delivery_id = webhooks::send(
        &state,
        &registration,
        &event,
        request.signer,
        request.tamper,
    );
    (
        StatusCode::ACCEPTED,
        Json(json!({ "deliveryId": delivery_id })),
    )
        .into_response()
}
