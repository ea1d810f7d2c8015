//! Dataverse control endpoints under `/_sandbox/dataverse/` (listed in the module docs of
//! `dataverse`): seeding rows as the Web API returns them, raw reads, the default webhook
//! target, webhook options and schema changes.

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ApiError;
use super::schema::{self, Access, Column, Kind};
use super::store::{Written, render};
use super::webhook::{Auth, ControlTarget, DefaultTarget, OptionsPatch};
use crate::delivery;
use crate::identities::DATAVERSE_SELLER_USER_ID;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/_sandbox/dataverse/webhook",
            put(set_webhook).delete(clear_webhook).get(get_webhook),
        )
        .route(
            "/_sandbox/dataverse/webhook-options",
            get(get_options).post(set_options),
        )
        .route("/_sandbox/dataverse/schema/{table}", get(get_schema))
        .route(
            "/_sandbox/dataverse/schema/{table}/{column}",
            put(add_column).delete(remove_column),
        )
        .route(
            "/_sandbox/dataverse/opportunities/{id}/{outcome}",
            axum::routing::post(close),
        )
        .route("/_sandbox/dataverse/{set}", get(list_rows))
        .route("/_sandbox/dataverse/{set}/{id}", put(seed).get(read_row))
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("expected a JSON object")),
        Err(error) => Err(ApiError::bad_request(format!("invalid JSON: {error}"))),
    }
}

#[derive(Debug, Deserialize)]
struct SeedQuery {
    as_user: Option<String>,
}

/// `PUT /_sandbox/dataverse/{set}/{id}?as_user=`: seeds or replaces a row and emits the
/// webhook the real service would.
async fn seed(
    AxumState(state): AxumState<AppState>,
    Path((set, id)): Path<(String, String)>,
    Query(query): Query<SeedQuery>,
    body: Bytes,
) -> Response {
    let user = acting_user(query.as_user);
    write_as_user(&state, |dataverse, now| {
        object(&body).and_then(|body| dataverse.seed(&set, &id, body, &user, now))
    })
}

#[derive(Debug, Deserialize)]
struct CloseQuery {
    as_user: Option<String>,
    status: Option<i64>,
}

/// `POST /_sandbox/dataverse/opportunities/{id}/win|lose?status=&as_user=`: a close in the app
/// (the seller's by default), as `WinOpportunity` / `LoseOpportunity` would; emits the `Win` /
/// `Lose` webhook.
async fn close(
    AxumState(state): AxumState<AppState>,
    Path((id, outcome)): Path<(String, String)>,
    Query(query): Query<CloseQuery>,
) -> Response {
    let won = match outcome.as_str() {
        "win" => true,
        "lose" => false,
        _ => return ApiError::bad_request("expected …/win or …/lose").into_response(),
    };
    let user = acting_user(query.as_user);
    let id = id.to_ascii_lowercase();
    write_as_user(&state, |dataverse, now| {
        dataverse.close_opportunity(&id, won, query.status, &user, now)
    })
}

/// The user a control write acts as: `as_user`, else the seller.
fn acting_user(as_user: Option<String>) -> String {
    as_user
        .unwrap_or_else(|| DATAVERSE_SELLER_USER_ID.to_owned())
        .to_ascii_lowercase()
}

/// Makes `write` under the world lock, then sends the webhooks it raises: 201 with the row
/// when it created one, else 200; the delivery ids in `x-sandbox-deliveries`.
fn write_as_user(
    state: &AppState,
    write: impl FnOnce(&mut super::State, chrono::DateTime<chrono::Utc>) -> Result<Written, ApiError>,
) -> Response {
    let outcome = {
        let mut world = state.world();
        let now = world.now();
        write(&mut world.dataverse, now).map(|written| {
            let deliveries = world
                .dataverse
                .webhook_deliveries(&state.config, &written.event);
            let body = Value::Object(render(&written.def, &written.row, None, false));
            (written.created, body, deliveries)
        })
    };
    match outcome {
        Err(error) => error.into_response(),
        Ok((created, body, deliveries)) => {
            let ids: Vec<String> = deliveries
                .into_iter()
                .map(|d| delivery::spawn(state, d).to_string())
                .collect();
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut response = (status, Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&ids.join(",")) {
                response.headers_mut().insert("x-sandbox-deliveries", value);
            }
            response
        }
    }
}

/// `GET /_sandbox/dataverse/{set}/{id}`: the row as the Web API returns it, without auth.
async fn read_row(
    AxumState(state): AxumState<AppState>,
    Path((set, id)): Path<(String, String)>,
) -> Response {
    let world = state.world();
    let dv = &world.dataverse;
    let Some(def) = dv.def_by_set(&set) else {
        return ApiError::segment(&set).into_response();
    };
    let id = id.to_ascii_lowercase();
    match dv.row(def.logical, &id) {
        Some(row) => Json(Value::Object(render(def, row, None, false))).into_response(),
        None => ApiError::does_not_exist(def.logical, &id).into_response(),
    }
}

/// `GET /_sandbox/dataverse/{set}`: every row.
async fn list_rows(AxumState(state): AxumState<AppState>, Path(set): Path<String>) -> Response {
    let world = state.world();
    let dv = &world.dataverse;
    let Some(def) = dv.def_by_set(&set) else {
        return ApiError::segment(&set).into_response();
    };
    let rows: Vec<Value> = dv
        .rows(def.logical)
        .map(|row| Value::Object(render(def, row, None, false)))
        .collect();
    Json(json!({ "value": rows })).into_response()
}

async fn set_webhook(AxumState(state): AxumState<AppState>, body: Bytes) -> Response {
    let target: ControlTarget = match serde_json::from_slice(&body) {
        Ok(target) => target,
        Err(error) => {
            return ApiError::bad_request(format!("invalid target: {error}")).into_response();
        }
    };
    if url::Url::parse(&target.url).is_err() {
        return ApiError::bad_request(format!("'{}' is not an absolute URL", target.url))
            .into_response();
    }
    match Auth::from_control(&target) {
        Ok(auth) => {
            state.world().dataverse.webhook_settings().default_target = DefaultTarget::Set {
                url: target.url,
                auth,
            };
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => ApiError::bad_request(error).into_response(),
    }
}

async fn clear_webhook(AxumState(state): AxumState<AppState>) -> StatusCode {
    state.world().dataverse.webhook_settings().default_target = DefaultTarget::Cleared;
    StatusCode::NO_CONTENT
}

async fn get_webhook(AxumState(state): AxumState<AppState>) -> Json<Value> {
    let configured = state.config.dataverse_webhook_url.clone();
    let mut world = state.world();
    Json(match &world.dataverse.webhook_settings().default_target {
        DefaultTarget::FromConfig => json!({ "source": "config", "url": configured }),
        DefaultTarget::Set { url, .. } => json!({ "source": "control", "url": url }),
        DefaultTarget::Cleared => json!({ "source": "none", "url": null }),
    })
}

async fn get_options(AxumState(state): AxumState<AppState>) -> Json<Value> {
    let options = state.world().dataverse.webhook_settings().options.clone();
    Json(serde_json::to_value(options).unwrap_or_default())
}

async fn set_options(AxumState(state): AxumState<AppState>, body: Bytes) -> Response {
    let patch: OptionsPatch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => {
            return ApiError::bad_request(format!("invalid webhook options: {error}"))
                .into_response();
        }
    };
    let mut world = state.world();
    let options = &mut world.dataverse.webhook_settings().options;
    options.apply(patch);
    Json(serde_json::to_value(options.clone()).unwrap_or_default()).into_response()
}

async fn get_schema(AxumState(state): AxumState<AppState>, Path(table): Path<String>) -> Response {
    let world = state.world();
    match world.dataverse.def_by_any_name(&table) {
        Some(def) => Json(serde_json::to_value(def).unwrap_or_default()).into_response(),
        None => ApiError::segment(&table).into_response(),
    }
}

/// `DELETE /_sandbox/dataverse/schema/{table}/{column}`: the column (and its data) goes;
/// writes naming it then fail like in an org without that customization.
async fn remove_column(
    AxumState(state): AxumState<AppState>,
    Path((table, column)): Path<(String, String)>,
) -> Response {
    let mut world = state.world();
    let dv = &mut world.dataverse;
    let Some(def) = dv.def_by_any_name(&table) else {
        return ApiError::segment(&table).into_response();
    };
    let logical = def.logical;
    let Some(found) = def.column(&column).cloned() else {
        return ApiError::no_property(&column, def).into_response();
    };
    if found.access == Access::Key {
        return ApiError::bad_request("the primary key can't be removed").into_response();
    }
    if let Some(def) = dv.def_mut(logical) {
        def.columns.retain(|c| c.name != column);
        def.keys.retain(|k| !k.columns.contains(&column));
    }
    dv.drop_column_data(logical, &found.read_name());
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /_sandbox/dataverse/schema/{table}/{column}`: restores a standard column (no
/// body) or adds one of the given type (`{"type":"String","max_length":100}`).
async fn add_column(
    AxumState(state): AxumState<AppState>,
    Path((table, column)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let valid_name = !column.is_empty()
        && column
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_name {
        return ApiError::bad_request(format!(
            "'{column}' is not a logical name (lower-case letters, digits, '_')"
        ))
        .into_response();
    }
    let mut world = state.world();
    let dv = &mut world.dataverse;
    let Some(logical) = dv.def_by_any_name(&table).map(|d| d.logical) else {
        return ApiError::segment(&table).into_response();
    };
    let definition = if body.iter().all(u8::is_ascii_whitespace) {
        match schema::default_column(logical, &column) {
            Some(c) => c,
            None => {
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    "",
                    format!(
                        "'{column}' is not a standard column of '{logical}'; send its type, e.g. \
                         {{\"type\":\"String\",\"max_length\":100}}"
                    ),
                )
                .into_response();
            }
        }
    } else {
        match serde_json::from_slice::<Kind>(&body) {
            Ok(kind) => Column {
                name: column.clone(),
                kind,
                access: Access::ReadWrite,
                custom: true,
            },
            Err(error) => {
                return ApiError::bad_request(format!("invalid column type: {error}"))
                    .into_response();
            }
        }
    };
    let defaults = schema::default_tables()
        .into_iter()
        .find(|t| t.logical == logical);
    if let Some(def) = dv.def_mut(logical) {
        match def.columns.iter_mut().find(|c| c.name == column) {
            Some(existing) => *existing = definition,
            None => def.columns.push(definition),
        }
        // Alternate keys come back once all their columns exist again.
        if let Some(defaults) = defaults {
            for key in defaults.keys {
                let complete = key.columns.iter().all(|k| def.column(k).is_some());
                if complete && !def.keys.iter().any(|k| k.name == key.name) {
                    def.keys.push(key);
                }
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
