//! Control routes under `/_sandbox/salesforce` (see the table in [`super`]). Errors here
//! are plain `{"error": "..."}` bodies: the control API is the sandbox's own.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::schema::{self, Stage};
use super::{API_VERSION, Writer, outbound};
use crate::identities;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/_sandbox/salesforce/outbound-message",
            put(configure_outbound).get(show_outbound),
        )
        .route(
            "/_sandbox/salesforce/outbound-messages/batch",
            post(send_batch),
        )
        .route(
            "/_sandbox/salesforce/outbound-messages/{delivery_id}/resend",
            post(resend),
        )
        .route("/_sandbox/salesforce/limits", post(set_limits))
        .route("/_sandbox/salesforce/stages", put(set_stages))
        .route("/_sandbox/salesforce/currencies", put(set_currencies))
        .route(
            "/_sandbox/salesforce/schema/{object}/{field}",
            delete(remove_field).patch(patch_field),
        )
        .route("/_sandbox/salesforce/{object}", get(list_records))
        .route(
            "/_sandbox/salesforce/{object}/{id}",
            put(seed).get(raw_read),
        )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Debug, Deserialize)]
struct OutboundConfig {
    /// `null` falls back to `SandboxConfig::salesforce_outbound_url`.
    #[serde(default)]
    url: Option<String>,
    /// Omitted: the default field list.
    #[serde(default)]
    fields: Option<Vec<String>>,
}

async fn configure_outbound(
    State(state): State<AppState>,
    Json(config): Json<OutboundConfig>,
) -> Response {
    let mut world = state.world();
    let sf = &mut world.salesforce;
    let fields = config.fields.unwrap_or_else(outbound::default_fields);
    let Some(object) = sf.schema.object("Opportunity") else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no Opportunity schema");
    };
    let mut canonical = Vec::with_capacity(fields.len());
    for name in &fields {
        match object.field(name) {
            Some(f) => canonical.push(f.name.clone()),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("no field {name} on Opportunity"),
                );
            }
        }
    }
    sf.outbound = outbound::Config {
        url: config.url,
        fields: canonical,
    };
    Json(json!(sf.outbound)).into_response()
}

async fn show_outbound(State(state): State<AppState>) -> Json<Value> {
    let world = state.world();
    let config = &world.salesforce.outbound;
    Json(json!({
        "url": config.url.clone().or_else(|| state.config.salesforce_outbound_url.clone()),
        "fields": config.fields,
        "action_id": outbound::action_id(),
    }))
}

#[derive(Debug, Deserialize)]
struct Batch {
    ids: Vec<String>,
}

fn queued(queued: Option<outbound::Queued>) -> Response {
    match queued {
        Some(q) => (StatusCode::ACCEPTED, Json(json!(q))).into_response(),
        None => error(
            StatusCode::CONFLICT,
            "no Outbound Message endpoint configured (PUT /_sandbox/salesforce/outbound-message)",
        ),
    }
}

async fn send_batch(State(state): State<AppState>, Json(batch): Json<Batch>) -> Response {
    if batch.ids.is_empty() || batch.ids.len() > outbound::MAX_NOTIFICATIONS {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "a message carries 1 to {} notifications, not {}",
                outbound::MAX_NOTIFICATIONS,
                batch.ids.len()
            ),
        );
    }
    let mut ids = Vec::with_capacity(batch.ids.len());
    for raw in &batch.ids {
        let found = super::ids::normalize(raw)
            .filter(|id| state.world().salesforce.record("Opportunity", id).is_some());
        match found {
            Some(id) => ids.push(id),
            None => return error(StatusCode::NOT_FOUND, format!("no Opportunity {raw}")),
        }
    }
    match outbound::send(&state, &ids) {
        Ok(q) => queued(q),
        Err(e) => error(e.status, e.message),
    }
}

async fn resend(State(state): State<AppState>, Path(delivery_id): Path<u64>) -> Response {
    match outbound::resend(&state, delivery_id) {
        Some(q) => (StatusCode::ACCEPTED, Json(json!(q))).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no Outbound Message was sent as delivery {delivery_id}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct Limits {
    daily: u64,
    #[serde(default)]
    used: Option<u64>,
}

async fn set_limits(State(state): State<AppState>, Json(limits): Json<Limits>) -> Json<Value> {
    let mut world = state.world();
    let now = world.now();
    let usage = &mut world.salesforce.usage;
    usage.roll(now);
    usage.max = limits.daily;
    if let Some(used) = limits.used {
        usage.used = used;
    }
    Json(json!({ "max": usage.max, "used": usage.used }))
}

async fn set_stages(State(state): State<AppState>, Json(stages): Json<Vec<Stage>>) -> Response {
    if stages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "at least one stage is needed");
    }
    state.world().salesforce.schema.stages = stages;
    StatusCode::NO_CONTENT.into_response()
}

async fn set_currencies(
    State(state): State<AppState>,
    Json(currencies): Json<Vec<String>>,
) -> Response {
    let Some(first) = currencies.first().cloned() else {
        return error(StatusCode::BAD_REQUEST, "at least one currency is needed");
    };
    let mut world = state.world();
    let schema = &mut world.salesforce.schema;
    schema.currencies = currencies;
    schema.default_currency = first;
    StatusCode::NO_CONTENT.into_response()
}

async fn remove_field(
    State(state): State<AppState>,
    Path((object, field)): Path<(String, String)>,
) -> Response {
    let mut world = state.world();
    let Some(object) = world.salesforce.schema.object_mut(&object) else {
        return error(StatusCode::NOT_FOUND, format!("unknown sObject {object}"));
    };
    if field.eq_ignore_ascii_case("Id") {
        return error(StatusCode::BAD_REQUEST, "the Id field cannot be removed");
    }
    let before = object.fields.len();
    object
        .fields
        .retain(|f| !f.name.eq_ignore_ascii_case(&field));
    if object.fields.len() == before {
        return error(StatusCode::NOT_FOUND, format!("no field {field}"));
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldPatch {
    external_id: Option<bool>,
}

async fn patch_field(
    State(state): State<AppState>,
    Path((object, field)): Path<(String, String)>,
    Json(patch): Json<FieldPatch>,
) -> Response {
    let mut world = state.world();
    let Some(object) = world.salesforce.schema.object_mut(&object) else {
        return error(StatusCode::NOT_FOUND, format!("unknown sObject {object}"));
    };
    let Some(f) = object
        .fields
        .iter_mut()
        .find(|f| f.name.eq_ignore_ascii_case(&field))
    else {
        return error(StatusCode::NOT_FOUND, format!("no field {field}"));
    };
    if let Some(external_id) = patch.external_id {
        f.external_id = external_id;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list_records(State(state): State<AppState>, Path(object): Path<String>) -> Response {
    let world = state.world();
    let sf = &world.salesforce;
    let Some(object) = sf.schema.object(&object) else {
        return error(StatusCode::NOT_FOUND, format!("unknown sObject {object}"));
    };
    let records: Vec<Value> = sf
        .table(object.name)
        .into_iter()
        .flat_map(|t| t.rows())
        .map(|row| schema::rest_record(object, API_VERSION, &row.fields, None))
        .collect();
    Json(json!({ "totalSize": records.len(), "records": records })).into_response()
}

#[derive(Debug, Deserialize)]
struct SeedParams {
    as_user: Option<String>,
}

async fn seed(
    State(state): State<AppState>,
    Path((object, id)): Path<(String, String)>,
    Query(params): Query<SeedParams>,
    Json(body): Json<Value>,
) -> Response {
    let Value::Object(body) = body else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let user = params
        .as_user
        .unwrap_or_else(|| identities::SALESFORCE_SELLER_USER_ID.to_owned());
    let outcome = {
        let mut world = state.world();
        let now = world.now();
        let sf = &mut world.salesforce;
        let writer = Writer {
            user_id: &user,
            now,
        };
        sf.seed(&object, &id, &body, writer).map(|created| {
            let schema_object = sf.schema.object(&object);
            let id = super::ids::normalize(&id).unwrap_or_default();
            let record = schema_object
                .and_then(|o| {
                    sf.record(o.name, &id)
                        .map(|r| schema::rest_record(o, API_VERSION, r, None))
                })
                .unwrap_or_default();
            (created, schema_object.map_or("", |o| o.name), id, record)
        })
    };
    let (created, object, id, record) = match outcome {
        Ok(done) => done,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(record)).into_response();
    if object == "Opportunity" {
        match outbound::send(&state, std::slice::from_ref(&id)) {
            Ok(Some(q)) => {
                response
                    .headers_mut()
                    .insert("x-sandbox-delivery-id", HeaderValue::from(q.delivery_id));
            }
            Ok(None) => {}
            Err(e) => return error(e.status, e.message),
        }
    }
    response
}

async fn raw_read(
    State(state): State<AppState>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let world = state.world();
    let sf = &world.salesforce;
    let Some(object) = sf.schema.object(&object) else {
        return error(StatusCode::NOT_FOUND, format!("unknown sObject {object}"));
    };
    let id = super::ids::normalize(&id).unwrap_or(id);
    match sf.record(object.name, &id) {
        Some(record) => {
            let mut raw: Map<String, Value> = Map::new();
            raw.insert(
                "attributes".into(),
                json!({
                    "type": object.name,
                    "url": format!("/services/data/v{API_VERSION}/sobjects/{}/{id}", object.name),
                }),
            );
            raw.extend(record.clone());
            Json(Value::Object(raw)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no {} {id}", object.name)),
    }
}
