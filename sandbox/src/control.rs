//! The control API under `/_sandbox/` (not counted in the request log, never faulted),
//! and the certificate downloads under `/cert/`.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::TokenInfo;
use crate::faults::{Fault, Service};
use crate::pki;
use crate::state::AppState;
use crate::{dataverse, partner_center, salesforce};

/// Control routes plus each service's seeding routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/reset", post(reset))
        .route(
            "/_sandbox/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route(
            "/_sandbox/requests",
            get(list_requests).delete(clear_requests),
        )
        .route("/_sandbox/deliveries", get(list_deliveries))
        .route("/_sandbox/webhooks", post(switch_webhooks))
        .route("/_sandbox/clock", get(clock).post(advance_clock))
        .route("/_sandbox/tokens", post(issue_token))
        .route("/_sandbox/pki/root.pem", get(|| pem(pki::ROOT_CERT_PEM)))
        .route(
            "/_sandbox/pki/intermediate.pem",
            get(|| pem(pki::INTERMEDIATE_CERT_PEM)),
        )
        .route(pki::LEAF_CERT_PATH, get(|| cer(pki::LEAF_CERT_DER)))
        .route(pki::ROGUE_CERT_PATH, get(|| cer(pki::ROGUE_CERT_DER)))
        .route(
            pki::OTHER_SUBJECT_CERT_PATH,
            get(|| cer(pki::OTHER_SUBJECT_CERT_DER)),
        )
        .merge(partner_center::control_routes())
        .merge(dataverse::control_routes())
        .merge(salesforce::control_routes())
}

async fn pem(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response()
}

async fn cer(der: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response()
}

async fn reset(State(state): State<AppState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

async fn add_fault(State(state): State<AppState>, Json(fault): Json<Fault>) -> StatusCode {
    state.world().faults.add(fault);
    StatusCode::CREATED
}

async fn list_faults(State(state): State<AppState>) -> Json<Vec<Fault>> {
    Json(state.world().faults.active())
}

async fn clear_faults(State(state): State<AppState>) -> StatusCode {
    state.world().faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct RequestFilter {
    service: Option<Service>,
}

async fn list_requests(
    State(state): State<AppState>,
    Query(filter): Query<RequestFilter>,
) -> Response {
    let world = state.world();
    let records: Vec<_> = world
        .requests
        .all()
        .iter()
        .filter(|r| filter.service.is_none_or(|s| s == r.service))
        .collect();
    Json(json!({ "count": records.len(), "requests": records })).into_response()
}

async fn clear_requests(State(state): State<AppState>) -> StatusCode {
    state.world().requests.clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Default, Deserialize)]
struct DeliveriesQuery {
    /// Counts only (`total`, `finished`, `delivered`): cheap to poll under load.
    #[serde(default)]
    summary: bool,
}

async fn list_deliveries(
    State(state): State<AppState>,
    Query(query): Query<DeliveriesQuery>,
) -> Response {
    let world = state.world();
    let all = world.deliveries.all();
    if query.summary {
        let count = |keep: fn(&crate::delivery::DeliveryRecord) -> bool| {
            all.iter().filter(|record| keep(record)).count()
        };
        return Json(json!({
            "total": all.len(),
            "finished": count(|record| record.finished),
            "delivered": count(|record| record.delivered),
        }))
        .into_response();
    }
    Json(json!({ "deliveries": all })).into_response()
}

#[derive(Debug, Deserialize)]
struct WebhookSwitch {
    service: Service,
    enabled: bool,
}

async fn switch_webhooks(
    State(state): State<AppState>,
    Json(switch): Json<WebhookSwitch>,
) -> StatusCode {
    let mut world = state.world();
    if switch.enabled {
        world.disabled_webhooks.remove(&switch.service);
    } else {
        world.disabled_webhooks.insert(switch.service);
    }
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct ClockAdvance {
    advance_secs: i64,
}

async fn clock(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "now": state.now() }))
}

async fn advance_clock(
    State(state): State<AppState>,
    Json(advance): Json<ClockAdvance>,
) -> Json<serde_json::Value> {
    let mut world = state.world();
    world.clock_offset += chrono::Duration::seconds(advance.advance_secs);
    Json(json!({ "now": world.now() }))
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    audience: String,
    subject: String,
    #[serde(default)]
    delegated: bool,
    /// Lifetime in seconds (defaults to the configured token lifetime).
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Issues an access token directly (benchmarks and tests that are not about sign-in).
async fn issue_token(
    State(state): State<AppState>,
    Json(request): Json<TokenRequest>,
) -> Json<serde_json::Value> {
    let lifetime = request
        .expires_in
        .unwrap_or(state.config.token_lifetime.as_secs() as i64);
    let mut world = state.world();
    let expires_at = world.now() + chrono::Duration::seconds(lifetime);
    let token = world.tokens.issue(TokenInfo {
        audience: request.audience,
        subject: request.subject,
        delegated: request.delegated,
        expires_at,
    });
    Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime }))
}
