//! The referrals API: `/v1.0/engagements/referrals` (list, get, create, patch).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::patch::{self, camel_case_keys};
use super::transition;
use super::users::{Access, authorize_referrals};
use super::webhooks::{self, Event};
use super::wire_time;
use crate::errors;
use crate::identities::{PC_ORGANIZATION_ID, PC_ORGANIZATION_NAME};
use crate::odata;
use crate::state::{AppState, World};

/// Page size when `$top` is absent. The real default is UNKNOWN (not documented); 100 is a
/// common Microsoft Graph/OData default and small enough that paging gets exercised.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served; a larger `$top` is capped (UNKNOWN real maximum).
pub const MAX_PAGE_SIZE: usize = 1000;

/// Members the service sets; a PATCH that changes them is refused with `400`.
const READ_ONLY: &[&str] = &[
    "id",
    "engagementId",
    "organizationId",
    "organizationName",
    "createdDateTime",
    "updatedDateTime",
    "acceptedDateTime",
    "direction",
    "eTag",
    "links",
];

/// Members required on create (create-a-referral: "**Required.**").
const REQUIRED: &[&str] = &["type", "customerProfile", "consent", "details"];

/// Member order of the documented create response (the rest follows, `links` last).
const MEMBER_ORDER: &[&str] = &[
    "id",
    "engagementId",
    "organizationId",
    "organizationName",
    "name",
    "externalReferenceId",
    "createdDateTime",
    "updatedDateTime",
    "expirationDateTime",
    "acceptedDateTime",
    "status",
    "substatus",
    "statusReason",
    "qualification",
    "type",
    "direction",
    "eTag",
    "target",
    "customerProfile",
    "consent",
    "details",
    "team",
    "inviteContext",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1.0/engagements/referrals", get(list).post(create))
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(get_one).patch(update),
        )
}

/// A handler outcome computed under the world lock: the response and an event to send once
/// the lock is released.
type Outcome = Result<(Response, Option<Event>), Response>;

fn finish(state: &AppState, outcome: Outcome) -> Response {
    match outcome {
        Ok((response, event)) => {
            if let Some(event) = event {
                webhooks::notify(state, &event);
            }
            response
        }
        Err(response) => response,
    }
}

/// The taxonomy members a services co-sell referral requires (create-a-referral: "Required for
/// Services co-sell referrals only").
const SERVICES_CO_SELL_MEMBERS: &[&str] = &["partnerRole", "solutionArea", "solutionPlay"];

/// The documented rule for services co-sell referrals
/// (docs/partner-center.md#solution-area-solution-play-and-partner-role): Partner Role,
/// Solution Area and Solution Play are required. What marks a referral as services co-sell is
/// UNKNOWN; the sandbox reads it narrowly as a co-sell referral, one asking Microsoft's help
/// (`inviteContext.assistanceRequestCode` set to anything but `Unknown`). The values are not
/// checked (Partner Center does not publish them): each must be a non-empty string.
fn services_co_sell_taxonomy(referral: &Map<String, Value>) -> Result<(), String> {
    let asks_help = referral
        .get("inviteContext")
        .and_then(|c| c.get("assistanceRequestCode"))
        .and_then(Value::as_str)
        .is_some_and(|code| {
            let code = code.trim();
            !code.is_empty() && !code.eq_ignore_ascii_case("Unknown")
        });
    if !asks_help {
        return Ok(());
    }
    for member in SERVICES_CO_SELL_MEMBERS {
        match referral.get(*member) {
            Some(Value::String(text)) if !text.trim().is_empty() => {}
            None | Some(Value::Null) => {
                return Err(format!(
                    "The referral member '{member}' is required for services co-sell referrals."
                ));
            }
            Some(_) => {
                return Err(format!(
                    "The referral member '{member}' must be a non-empty string."
                ));
            }
        }
    }
    Ok(())
}

fn bad_request(message: &str) -> Response {
    errors::partner_center(StatusCode::BAD_REQUEST, message)
}

fn not_found(id: &str) -> Response {
    errors::partner_center(
        StatusCode::NOT_FOUND,
        &format!("The referral '{id}' was not found."),
    )
}

// ---------------------------------------------------------------------------------------
// List

/// Where a listing stands; `$skiptoken` is this, as base64url JSON, so a `nextLink` works on
/// its own (like the documented one, which carries only `$skiptoken`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    orderby: Option<String>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    select: Option<String>,
    #[serde(rename = "t")]
    top: usize,
    #[serde(rename = "s")]
    skip: usize,
}

impl Cursor {
    fn from_query(query: Option<&str>) -> Result<Self, String> {
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if let Some(token) = param("$skiptoken") {
            return URL_SAFE_NO_PAD
                .decode(token.trim())
                .ok()
                .and_then(|raw| serde_json::from_slice::<Cursor>(&raw).ok())
                .ok_or_else(|| format!("The $skiptoken '{token}' is not valid."));
        }
        let number = |name: &str, value: &str| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a non-negative integer, found '{value}'."))
        };
        let top = match param("$top") {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => match number("$top", &v)? {
                0 => return Err("$top must be at least 1.".into()),
                n => n.min(MAX_PAGE_SIZE),
            },
        };
        let skip = match param("$skip") {
            None => 0,
            Some(v) => number("$skip", &v)?,
        };
        Ok(Self {
            filter: param("$filter").filter(|f| !f.trim().is_empty()),
            orderby: param("$orderby").filter(|o| !o.trim().is_empty()),
            select: param("$select").filter(|s| !s.trim().is_empty()),
            top,
            skip,
        })
    }

    fn token(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// `GET /v1.0/engagements/referrals`.
///
/// `@odata.count` is the number of referrals in this page, as in the documented sample
/// (count 1 next to a `nextLink`); the total is UNKNOWN to the client. The `nextLink` points
/// at the sandbox's real path (the documented one, `/v1.0/referrals?$skiptoken=…`, misses
/// `/engagements/`). Referrals of every organization are listed (the related referrals of an
/// engagement are found through this endpoint).
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let world = state.world();
    if let Err(response) = authorize_referrals(&world, &headers, Access::Read) {
        return response;
    }
    let cursor = match Cursor::from_query(query.as_deref()) {
        Ok(cursor) => cursor,
        Err(message) => return bad_request(&message),
    };
    let filter = match cursor
        .filter
        .as_deref()
        .map(odata::parse_filter)
        .transpose()
    {
        Ok(filter) => filter,
        Err(error) => return bad_request(&format!("Invalid $filter: {error}")),
    };
    let mut records: Vec<Value> = world
        .partner_center
        .referrals
        .rows()
        .map(|row| Value::Object(row.fields.clone()))
        .filter(|r| filter.as_ref().is_none_or(|f| f.matches(r)))
        .collect();
    drop(world);
    if let Some(orderby) = &cursor.orderby {
        if let Err(message) = check_orderby(orderby) {
            return bad_request(&message);
        }
        if let Err(error) = odata::order_by(&mut records, orderby) {
            return bad_request(&format!("Invalid $orderby: {error}"));
        }
    }
    let total = records.len();
    let page: Vec<Value> = records
        .into_iter()
        .skip(cursor.skip)
        .take(cursor.top)
        .map(|r| select(r, cursor.select.as_deref()))
        .collect();
    let base = &state.config.base_url;
    let mut envelope = Map::new();
    envelope.insert(
        "@odata.context".into(),
        Value::String(format!("{base}/v1.0/$metadata#Referrals")),
    );
    envelope.insert("@odata.count".into(), Value::from(page.len()));
    envelope.insert("value".into(), Value::Array(page));
    if cursor.skip + cursor.top < total {
        let next = Cursor {
            skip: cursor.skip + cursor.top,
            ..cursor
        };
        envelope.insert(
            "@odata.nextLink".into(),
            Value::String(format!(
                "{base}/v1.0/engagements/referrals?$skiptoken={}",
                next.token()
            )),
        );
    }
    Json(Value::Object(envelope)).into_response()
}

/// The documented `$orderby` members: `createdDateTime`, `updatedDateTime`.
fn check_orderby(orderby: &str) -> Result<(), String> {
    for clause in orderby.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let field = clause.split_whitespace().next().unwrap_or_default();
        if !["createdDateTime", "updatedDateTime"]
            .iter()
            .any(|f| f.eq_ignore_ascii_case(field))
        {
            return Err(format!(
                "Invalid $orderby: '{field}' is not supported; use createdDateTime or \
                 updatedDateTime (asc or desc)."
            ));
        }
    }
    Ok(())
}

/// `$select=id,status,customerProfile` keeps those top-level members.
fn select(referral: Value, select: Option<&str>) -> Value {
    let (Some(select), Value::Object(map)) = (select, &referral) else {
        return referral;
    };
    let wanted: Vec<&str> = select.split(',').map(str::trim).collect();
    Value::Object(
        map.iter()
            .filter(|(k, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// Get

/// `GET /v1.0/engagements/referrals/{id}`: the referral with the documented
/// `@odata.context` (typo `engagments` included) and an `ETag` header.
async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let world = state.world();
    if let Err(response) = authorize_referrals(&world, &headers, Access::Read) {
        return response;
    }
    let Some(row) = world.partner_center.referrals.get(&id) else {
        return not_found(&id);
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(format!(
            "{}/v1.0/engagments/referrals/$metadata#Referrals/$entity",
            state.config.base_url
        )),
    );
    body.extend(row.fields.clone());
    let mut response = Json(Value::Object(body)).into_response();
    set_etag(&mut response, &row.fields);
    response
}

fn set_etag(response: &mut Response, referral: &Map<String, Value>) {
    if let Some(value) = odata::lookup(&Value::Object(referral.clone()), &["eTag".to_owned()])
        .and_then(Value::as_str)
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        response.headers_mut().insert(header::ETAG, value);
    }
}

// ---------------------------------------------------------------------------------------
// Create

/// `POST /v1.0/engagements/referrals`.
///
/// The status code is UNKNOWN (the docs show none; the connector swagger says 200 "Referral
/// created"); the sandbox answers `201 Created` with the referral, a `Location` and an `ETag`
/// — a client must accept any 2xx.
async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = {
        let mut world = state.world();
        create_locked(&state, &mut world, &headers, &body)
    };
    finish(&state, outcome)
}

fn create_locked(state: &AppState, world: &mut World, headers: &HeaderMap, body: &[u8]) -> Outcome {
    authorize_referrals(world, headers, Access::Write)?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("The request body is not valid JSON: {e}.")))?;
    let Value::Object(mut referral) = camel_case_keys(value) else {
        return Err(bad_request(
            "The request body must be a Referral JSON object.",
        ));
    };
    // The create table calls `type` "ReferralType".
    if let Some(kind) = referral.remove("referralType") {
        referral.entry("type").or_insert(kind);
    }
    for member in REQUIRED {
        if referral.get(*member).is_none_or(Value::is_null) {
            return Err(bad_request(&format!(
                "The referral member '{member}' is required."
            )));
        }
    }
    let kind = referral
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| {
            ["Independent", "Shared"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(t.trim()))
        })
        .ok_or_else(|| bad_request("The referral member 'type' must be Independent or Shared."))?;
    referral.insert("type".into(), Value::String(kind.into()));
    for member in ["customerProfile", "consent", "details"] {
        if !referral.get(member).is_some_and(Value::is_object) {
            return Err(bad_request(&format!(
                "The referral member '{member}' must be a JSON object."
            )));
        }
    }
    normalize_deal_value(&mut referral).map_err(|m| bad_request(&m))?;
    services_co_sell_taxonomy(&referral).map_err(|m| bad_request(&m))?;
    let engagement_id = match referral.get("engagementId") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_owned(),
        Some(_) => {
            return Err(bad_request(
                "The referral member 'engagementId' must be a GUID string.",
            ));
        }
    };

    let now = world.now();
    let pc = &mut world.partner_center;
    let id = uuid::Uuid::new_v4().to_string();
    let created = Value::String(wire_time(now));
    referral.insert("id".into(), Value::String(id.clone()));
    referral.insert("engagementId".into(), Value::String(engagement_id.clone()));
    referral.insert("organizationId".into(), PC_ORGANIZATION_ID.into());
    referral.insert("organizationName".into(), PC_ORGANIZATION_NAME.into());
    referral.entry("name").or_insert(Value::Null);
    referral.entry("externalReferenceId").or_insert(Value::Null);
    referral.insert("createdDateTime".into(), created.clone());
    referral.insert("updatedDateTime".into(), created.clone());
    referral.entry("expirationDateTime").or_insert(Value::Null);
    // "For outgoing referrals, it's same date as referral creation datetime." [LIVE]
    referral.insert("acceptedDateTime".into(), created);
    // "Deals created by the partner start in the Accepted stage": the sample posts
    // New/Pending and gets Active/Accepted back.
    referral.insert("status".into(), "Active".into());
    referral.insert("substatus".into(), "Accepted".into());
    referral.entry("statusReason").or_insert(Value::Null);
    referral.insert("direction".into(), "Outgoing".into());
    referral.insert("eTag".into(), Value::String(pc.next_etag(now)));
    referral
        .entry("team")
        .or_insert_with(|| Value::Array(Vec::new()));
    referral.insert(
        "links".into(),
        links(&state.config.base_url, &id, &engagement_id),
    );
    let referral = ordered(referral);
    pc.referrals.put(&id, referral.clone());

    let mut response = (StatusCode::CREATED, Json(Value::Object(referral.clone()))).into_response();
    set_etag(&mut response, &referral);
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{}/v1.0/engagements/referrals/{id}",
        state.config.base_url
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    let event = Event::referral(&state.config.base_url, "referral-created", &id, now);
    Ok((response, Some(event)))
}

/// `links` as in the documented create response, including the `engagments` typo and the
/// unencoded `$filter` (real traffic carries them; clients must not follow them blindly).
pub(super) fn links(base_url: &str, id: &str, engagement_id: &str) -> Value {
    serde_json::json!({
        "relatedReferrals": {
            "uri": format!("{base_url}/v1.0/engagments/referrals?$filter=engagementId eq '{engagement_id}'"),
            "method": "GET",
        },
        "self": {
            "uri": format!("{base_url}/v1.0/engagments/referrals/{id}"),
            "method": "GET",
        },
    })
}

/// Members in the documented order, `links` last.
pub(super) fn ordered(mut referral: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for member in MEMBER_ORDER {
        if let Some(value) = referral.remove(*member) {
            out.insert((*member).to_owned(), value);
        }
    }
    let links = referral.remove("links");
    out.extend(referral);
    if let Some(links) = links {
        out.insert("links".into(), links);
    }
    out
}

/// `details.dealValue` sent as a string (`"10000"` in the published PATCH samples) is
/// stored as a JSON number.
pub(super) fn normalize_deal_value(referral: &mut Map<String, Value>) -> Result<(), String> {
    let Some(Value::Object(details)) = referral.get_mut("details") else {
        return Ok(());
    };
    match details.get_mut("dealValue") {
        Some(value @ Value::String(_)) => {
            let text = value.as_str().unwrap_or_default().trim().to_owned();
            let number = text.parse::<serde_json::Number>().map_err(|_| {
                format!("details.dealValue must be a decimal number, found '{text}'.")
            })?;
            *value = Value::Number(number);
            Ok(())
        }
        None | Some(Value::Null | Value::Number(_)) => Ok(()),
        Some(other) => Err(format!(
            "details.dealValue must be a decimal number, found {other}."
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Patch

/// `PATCH /v1.0/engagements/referrals/{id}`.
async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = {
        let mut world = state.world();
        update_locked(&state, &mut world, &id, &headers, &body)
    };
    finish(&state, outcome)
}

fn update_locked(
    state: &AppState,
    world: &mut World,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    authorize_referrals(world, headers, Access::Write)?;
    let now = world.now();
    let pc = &mut world.partner_center;
    let Some(row) = pc.referrals.get(id) else {
        return Err(not_found(id));
    };
    let current = row.fields.clone();
    let stored_id = row.id.clone();
    if !owned_by_partner(&current) {
        return Err(errors::partner_center(
            StatusCode::FORBIDDEN,
            &format!(
                "The referral '{id}' belongs to another organization; only referrals of \
                 {PC_ORGANIZATION_NAME} can be updated."
            ),
        ));
    }
    let ops = patch::parse(body).map_err(|m| bad_request(&m))?;

    let current_etag = odata::lookup(&Value::Object(current.clone()), &["eTag".to_owned()])
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(if_match) = headers.get(header::IF_MATCH) {
        let if_match = if_match.to_str().unwrap_or_default();
        if !etag_matches(if_match, &current_etag) {
            return Err(errors::partner_center(
                StatusCode::PRECONDITION_FAILED,
                &format!(
                    "The referral '{id}' was modified: the If-Match eTag {if_match} does not \
                     match the current eTag {current_etag}. Read the referral again and retry."
                ),
            ));
        }
    }

    let from = transition::state_of(&current);
    if let Some(from) = from.as_ref().filter(|s| transition::is_terminal(s)) {
        let requested = ops
            .iter()
            .map(patch::Op::path)
            .collect::<Vec<_>>()
            .join(", ");
        let (status, message) = transition::terminal_error(from, format!("changes to {requested}"));
        return Err(errors::partner_center(status, &message));
    }

    let mut doc = Value::Object(current.clone());
    patch::apply(&mut doc, &ops).map_err(|m| bad_request(&m))?;
    let Value::Object(mut updated) = doc else {
        return Err(bad_request("The patched referral is not a JSON object."));
    };
    normalize_deal_value(&mut updated).map_err(|m| bad_request(&m))?;
    transition::canonicalise(&mut updated);
    for member in READ_ONLY {
        if updated.get(*member) != current.get(*member) {
            return Err(bad_request(&format!(
                "The referral member '{member}' is read-only and cannot be changed."
            )));
        }
    }
    let to = transition::state_of(&updated);
    transition::check(from.as_ref(), to.as_ref())
        .map_err(|(status, message)| errors::partner_center(status, &message))?;

    // Every accepted PATCH is a write: new eTag and updatedDateTime, and a referral-updated
    // event (even when the values did not change — as a store that writes on every update).
    updated.insert("updatedDateTime".into(), Value::String(wire_time(now)));
    updated.insert("eTag".into(), Value::String(pc.next_etag(now)));
    pc.referrals.put(&stored_id, updated.clone());

    let prefer_representation = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("return=representation"));
    let response = if prefer_representation {
        let mut response = Json(Value::Object(updated.clone())).into_response();
        set_etag(&mut response, &updated);
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("return=representation"),
        );
        response
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    let event = Event::referral(&state.config.base_url, "referral-updated", &stored_id, now);
    Ok((response, Some(event)))
}

/// `If-Match` against the stored eTag (whose quotes are part of the value): quotes,
/// backslash escapes and a `W/` prefix are ignored; `*` matches anything.
fn etag_matches(if_match: &str, current: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .replace("\\\"", "\"")
            .trim_matches('"')
            .to_owned()
    };
    if_match
        .split(',')
        .any(|candidate| candidate.trim() == "*" || norm(candidate) == norm(current))
}

// ---------------------------------------------------------------------------------------
// Events of writes

/// A referral belongs to the partner when its `organizationId` is the partner's (or absent,
/// for seeded referrals that do not say).
pub(super) fn owned_by_partner(referral: &Map<String, Value>) -> bool {
    match member_str(referral, "organizationId") {
        None => true,
        Some(org) => org.eq_ignore_ascii_case(PC_ORGANIZATION_ID),
    }
}

fn member_str<'a>(referral: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    referral
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The event a write of `referral` raises: `referral-created`/`-updated` for the partner's
/// own referrals; `related-referral-created`/`-updated` for another organization's referral
/// sharing an `engagementId` with one of the partner's; none otherwise (the partner is no
/// party to it).
///
/// Which referral id a related-referral event carries is UNKNOWN; the sandbox sends the
/// related (other organization's) referral's id, so a receiver must GET it and follow its
/// `engagementId` to the partner's own referral.
pub(super) fn event_for(
    state: &AppState,
    pc: &super::State,
    id: &str,
    referral: &Map<String, Value>,
    created: bool,
    changed_at: DateTime<Utc>,
) -> Option<Event> {
    let verb = if created { "created" } else { "updated" };
    let name = if owned_by_partner(referral) {
        format!("referral-{verb}")
    } else {
        let engagement = member_str(referral, "engagementId")?;
        let related = pc.referrals.rows().any(|row| {
            !row.id.eq_ignore_ascii_case(id)
                && owned_by_partner(&row.fields)
                && member_str(&row.fields, "engagementId")
                    .is_some_and(|e| e.eq_ignore_ascii_case(engagement))
        });
        if !related {
            return None;
        }
        format!("related-referral-{verb}")
    };
    Some(Event::referral(
        &state.config.base_url,
        &name,
        id,
        changed_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_the_quoted_and_escaped_forms() {
        let stored = "\"00006d10-0000-0000-0000-5c70aa630000\"";
        assert!(etag_matches(stored, stored));
        assert!(etag_matches("00006d10-0000-0000-0000-5c70aa630000", stored));
        assert!(etag_matches(
            "\"\\\"00006d10-0000-0000-0000-5c70aa630000\\\"\"",
            stored
        ));
        assert!(etag_matches("*", stored));
        assert!(!etag_matches(
            "\"00006d11-0000-0000-0000-5c70aa630000\"",
            stored
        ));
    }

    #[test]
    fn deal_value_strings_become_numbers() {
        let mut referral = serde_json::json!({"details": {"dealValue": "10000"}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        normalize_deal_value(&mut referral).expect("number text");
        assert_eq!(referral["details"]["dealValue"], serde_json::json!(10000));
        let mut bad = serde_json::json!({"details": {"dealValue": "ten"}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(normalize_deal_value(&mut bad).is_err());
    }
}
