//! The REST API under `/services/data` (nested, so paths here start at the version).
//! See the table in [`super`] for endpoints and answers.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::schema::{self, ObjectSchema};
use super::{API_VERSION, ApiError, TOKEN_AUDIENCE, Upserted, Writer, ids, outbound, soql};
use crate::state::AppState;

/// Where the limit-info middleware picks up the `Sforce-Limit-Info` value computed when
/// the request was counted.
#[derive(Debug, Clone, Default)]
struct LimitSlot(Arc<Mutex<Option<String>>>);

impl LimitSlot {
    fn set(&self, value: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

async fn limit_info(mut request: Request, next: Next) -> Response {
    let slot = LimitSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(value) = slot.take().and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("sforce-limit-info", value);
    }
    response
}

/// An authenticated, counted API call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    /// `62.0`
    pub version: String,
    pub now: DateTime<Utc>,
    /// A subrequest of a Composite request: not counted on its own, and its Outbound
    /// Messages wait for the whole request (none for what a rollback undid).
    pub subrequest: Option<Subrequest>,
}

/// The mark of a Composite subrequest (a request extension set by [`super::composite`]): the
/// Opportunities written, whose Outbound Messages are sent once the request is over.
#[derive(Debug, Clone, Default)]
pub struct Subrequest(pub Arc<Mutex<Vec<String>>>);

impl Subrequest {
    fn written(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_owned());
    }
}

impl Caller {
    fn writer(&self) -> Writer<'_> {
        Writer {
            user_id: &self.user_id,
            now: self.now,
        }
    }

    /// v46.0 and later answer upserts with 200/201 and a body; earlier ones 204/201.
    fn modern_upsert(&self) -> bool {
        self.version
            .split_once('.')
            .and_then(|(major, _)| major.parse::<u32>().ok())
            .is_some_and(|major| major >= 46)
    }
}

/// `vNN.N` → `NN.N`.
fn version_of(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/services/data/")
        .unwrap_or(path)
        .trim_start_matches('/');
    let segment = rest.split('/').next()?;
    let number = segment.strip_prefix('v')?;
    let (major, minor) = number.split_once('.')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(major, 2) && digits(minor, 1)).then(|| number.to_owned())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let slot = parts
            .extensions
            .get::<LimitSlot>()
            .cloned()
            .unwrap_or_default();
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path().to_owned(), |u| u.0.path().to_owned());
        let subrequest = parts.extensions.get::<Subrequest>().cloned();
        let mut world = state.world();
        let world = &mut *world;
        let now = world.now();
        let usage = &mut world.salesforce.usage;
        usage.roll(now);
        let token = world.tokens.check(&parts.headers, TOKEN_AUDIENCE, now);
        let Ok(token) = token else {
            slot.set(usage.header());
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
            return Err(response);
        };
        let Some(version) = version_of(&path) else {
            slot.set(usage.header());
            return Err(ApiError::not_found().into_response());
        };
        if subrequest.is_none() {
            if usage.used >= usage.max {
                slot.set(usage.header());
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                )
                .into_response());
            }
            usage.used += 1;
        }
        slot.set(usage.header());
        Ok(Self {
            user_id: token.subject,
            version,
            now,
            subrequest,
        })
    }
}

/// Routes relative to `/services/data`.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(versions))
        .route("/{version}", get(resources));
    for slash in ["", "/"] {
        router = router
            .route(&format!("/{{version}}/limits{slash}"), get(limits))
            .route(&format!("/{{version}}/query{slash}"), get(query))
            .route(
                &format!("/{{version}}/sobjects{slash}"),
                get(describe_global),
            )
            .route(
                &format!("/{{version}}/sobjects/{{object}}{slash}"),
                get(object_info).post(create),
            )
            .route(
                &format!("/{{version}}/sobjects/{{object}}/describe{slash}"),
                get(describe),
            );
    }
    for slash in ["", "/"] {
        router = router.route(
            &format!("/{{version}}/composite{slash}"),
            axum::routing::post(super::composite::composite),
        );
    }
    router
        .route("/{version}/sobjects/{object}/{id}", get(read).patch(update))
        .route(
            "/{version}/sobjects/{object}/{field}/{value}",
            get(read_by_external_id).patch(upsert),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(limit_info))
}

async fn not_found(_caller: Caller) -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed(_caller: Caller, method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed. Allowed are GET,PATCH,POST"),
    )
}

/// `GET /services/data`: available versions (no authentication, not counted).
pub(super) async fn versions() -> Json<Value> {
    Json(json!([{
        "label": "Winter '25",
        "url": format!("/services/data/v{API_VERSION}"),
        "version": API_VERSION,
    }]))
}

async fn resources(caller: Caller) -> Json<Value> {
    let base = format!("/services/data/v{}", caller.version);
    Json(json!({
        "limits": format!("{base}/limits"),
        "query": format!("{base}/query"),
        "sobjects": format!("{base}/sobjects"),
    }))
}

async fn limits(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let usage = state.world().salesforce.usage.clone();
    Json(json!({
        "DailyApiRequests": {
            "Max": usage.max,
            "Remaining": usage.max.saturating_sub(usage.used),
        }
    }))
}

fn object_schema(state: &AppState, name: &str) -> Result<ObjectSchema, ApiError> {
    state
        .world()
        .salesforce
        .schema
        .object(name)
        .cloned()
        .ok_or_else(ApiError::not_found)
}

async fn describe_global(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let world = state.world();
    let sobjects: Vec<Value> = world
        .salesforce
        .schema
        .objects
        .iter()
        .map(|o| {
            let base = format!("/services/data/v{}/sobjects/{}", caller.version, o.name);
            json!({
                "name": o.name, "label": o.label, "labelPlural": o.label_plural,
                "keyPrefix": o.key_prefix, "custom": false, "createable": o.createable,
                "updateable": o.updateable, "queryable": true,
                "urls": {"sobject": base, "describe": format!("{base}/describe"),
                         "rowTemplate": format!("{base}/{{ID}}")},
            })
        })
        .collect();
    Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects}))
}

async fn describe(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    let schema = &world.salesforce.schema;
    let object = schema.object(&object).ok_or_else(ApiError::not_found)?;
    Ok(Json(schema.describe(object, &caller.version)))
}

async fn object_info(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let world = state.world();
    let schema = &world.salesforce.schema;
    let object = schema.object(&object).ok_or_else(ApiError::not_found)?;
    let mut info = schema.describe(object, &caller.version);
    if let Some(map) = info.as_object_mut() {
        map.remove("fields");
    }
    Ok(Json(json!({"objectDescribe": info, "recentItems": []})))
}

/// The JSON body of a write, or `JSON_PARSER_ERROR`.
fn json_body(bytes: &[u8], object: &str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => {
            let token = match other {
                Value::Array(_) => "START_ARRAY",
                Value::String(_) => "VALUE_STRING",
                Value::Number(_) => "VALUE_NUMBER_INT",
                Value::Bool(_) => "VALUE_TRUE",
                _ => "VALUE_NULL",
            };
            Err(ApiError::bad_request(
                "JSON_PARSER_ERROR",
                format!("Cannot deserialize instance of {object} from {token} value"),
            ))
        }
        Err(e) => Err(ApiError::bad_request(
            "JSON_PARSER_ERROR",
            format!(
                "Unexpected character in request body: {e} at [line:{}, column:{}]",
                e.line(),
                e.column()
            ),
        )),
    }
}

/// Queues an Outbound Message when an Opportunity was written (after the whole request for
/// a Composite subrequest).
fn notify(state: &AppState, caller: &Caller, object: &ObjectSchema, id: &str) {
    if object.name != "Opportunity" {
        return;
    }
    match &caller.subrequest {
        Some(subrequest) => subrequest.written(id),
        None => send_notifications(state, &[id.to_owned()]),
    }
}

/// Sends the Outbound Message of each Opportunity in `ids`.
pub(super) fn send_notifications(state: &AppState, ids: &[String]) {
    for id in ids {
        if let Err(error) = outbound::send(state, std::slice::from_ref(id)) {
            tracing::warn!(?error, "outbound message not sent");
        }
    }
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let schema_object = object_schema(&state, &object)?;
    let fields = json_body(&body, schema_object.name)?;
    let id = state
        .world()
        .salesforce
        .create(schema_object.name, &fields, caller.writer())?;
    notify(&state, &caller, &schema_object, &id);
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!(
                "/services/data/v{}/sobjects/{}/{id}",
                caller.version, schema_object.name
            ),
        )],
        Json(json!({"id": id, "errors": [], "success": true})),
    )
        .into_response())
}

/// Resolves a record id in a URL: not id-shaped → the API reads it as an external id
/// field name (404); another object's id → `MALFORMED_ID`; missing → 404.
fn resolve_id(state: &AppState, object: &ObjectSchema, raw: &str) -> Result<String, ApiError> {
    let Some(id) = ids::normalize(raw) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Provided external ID field does not exist or is not accessible: {raw}"),
        ));
    };
    if !id.starts_with(object.key_prefix) {
        return Err(ApiError::bad_request(
            "MALFORMED_ID",
            format!("{} ID: id value of incorrect type: {raw}", object.name),
        )
        .with_fields(["Id".to_owned()]));
    }
    if state.world().salesforce.record(object.name, &id).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(id)
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    fields: Option<String>,
}

/// `If-Modified-Since` / `If-Unmodified-Since` (RFC 1123 dates). An unparsable value is
/// 400; the error code is UNKNOWN, the sandbox says `INVALID_HEADER`.
fn http_date(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| DateTime::parse_from_rfc2822(v.trim()).ok())
        .map(|at| Some(at.with_timezone(&Utc)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_HEADER",
                format!("Invalid value for the {name} header"),
            )
        })
}

/// When the record last changed, at HTTP-date (whole second) precision.
fn last_modified_secs(record: &Map<String, Value>) -> Option<i64> {
    record
        .get("LastModifiedDate")
        .and_then(Value::as_str)
        .and_then(schema::parse_datetime)
        .map(|at| at.timestamp())
}

fn render(
    state: &AppState,
    caller: &Caller,
    object: &ObjectSchema,
    id: &str,
    headers: &HeaderMap,
    params: &ReadParams,
) -> Result<Response, ApiError> {
    let world = state.world();
    let record = world
        .salesforce
        .record(object.name, id)
        .ok_or_else(ApiError::not_found)?;
    if let (Some(since), Some(modified)) = (
        http_date(headers, header::IF_MODIFIED_SINCE)?,
        last_modified_secs(record),
    ) && modified <= since.timestamp()
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let only = match &params.fields {
        None => None,
        Some(list) => {
            let mut fields = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                fields.push(object.field(name).ok_or_else(|| {
                    ApiError::bad_request(
                        "INVALID_FIELD",
                        format!("No such column '{name}' on sobject of type {}", object.name),
                    )
                })?);
            }
            Some(fields)
        }
    };
    let body = schema::rest_record(object, &caller.version, record, only.as_deref());
    let mut response = Json(body).into_response();
    if let Some(modified) = record
        .get("LastModifiedDate")
        .and_then(Value::as_str)
        .and_then(schema::parse_datetime)
        .and_then(|at| {
            HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).ok()
        })
    {
        response
            .headers_mut()
            .insert(header::LAST_MODIFIED, modified);
    }
    Ok(response)
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object, id)): Path<(String, String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let object = object_schema(&state, &object)?;
    let id = resolve_id(&state, &object, &id)?;
    render(&state, &caller, &object, &id, &headers, &params)
}

/// Applies `If-Unmodified-Since`: 412 when the record changed after the given second.
fn check_unmodified(
    state: &AppState,
    object: &ObjectSchema,
    id: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(since) = http_date(headers, header::IF_UNMODIFIED_SINCE)? else {
        return Ok(());
    };
    let modified = state
        .world()
        .salesforce
        .record(object.name, id)
        .and_then(last_modified_secs);
    if modified.is_some_and(|m| m > since.timestamp()) {
        // Exact message UNKNOWN; the documented part is the 412 status.
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            "The requested resource has been modified since the If-Unmodified-Since date.",
        ));
    }
    Ok(())
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_schema(&state, &object)?;
    let id = resolve_id(&state, &object, &id)?;
    let fields = json_body(&body, object.name)?;
    check_unmodified(&state, &object, &id, &headers)?;
    state
        .world()
        .salesforce
        .update(object.name, &id, &fields, caller.writer())?;
    notify(&state, &caller, &object, &id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn record_url(caller: &Caller, object: &ObjectSchema, id: &str) -> String {
    format!(
        "/services/data/v{}/sobjects/{}/{id}",
        caller.version, object.name
    )
}

fn multiple_choices(caller: &Caller, object: &ObjectSchema, ids: &[String]) -> Response {
    let urls: Vec<String> = ids
        .iter()
        .map(|id| record_url(caller, object, id))
        .collect();
    (StatusCode::MULTIPLE_CHOICES, Json(urls)).into_response()
}

fn external_id_field_missing(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("Provided external ID field does not exist or is not accessible: {name}"),
    )
}

async fn read_by_external_id(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let object = object_schema(&state, &object)?;
    let key = object
        .field(&field)
        .filter(|f| f.external_id)
        .ok_or_else(|| external_id_field_missing(&field))?;
    let matches = state
        .world()
        .salesforce
        .find_by(object.name, &key.name, &value);
    match matches.as_slice() {
        [] => Err(ApiError::not_found()),
        [id] => render(&state, &caller, &object, id, &headers, &params),
        many => Ok(multiple_choices(&caller, &object, many)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpsertParams {
    #[serde(default)]
    update_only: Option<String>,
}

async fn upsert(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, object, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<UpsertParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let object = object_schema(&state, &object)?;
    let fields = json_body(&body, object.name)?;
    let update_only = params
        .update_only
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if let Some(key) = object.field(&field).filter(|f| f.external_id) {
        // Conditional headers apply to the record the value names, when there is one.
        // (Bound first: the world lock must be released before `check_unmodified`.)
        let matches = state
            .world()
            .salesforce
            .find_by(object.name, &key.name, &value);
        if let [id] = matches.as_slice() {
            check_unmodified(&state, &object, id, &headers)?;
        }
    }
    let outcome = state.world().salesforce.upsert(
        object.name,
        &field,
        &value,
        &fields,
        update_only,
        caller.writer(),
    )?;
    let (id, created) = match outcome {
        Upserted::Created(id) => (id, true),
        Upserted::Updated(id) => (id, false),
        Upserted::Multiple(ids) => return Ok(multiple_choices(&caller, &object, &ids)),
    };
    notify(&state, &caller, &object, &id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if caller.modern_upsert() {
        Ok((
            status,
            Json(json!({"id": id, "success": true, "errors": [], "created": created})),
        )
            .into_response())
    } else if created {
        Ok((
            status,
            Json(json!({"id": id, "success": true, "errors": []})),
        )
            .into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    q: Option<String>,
}

async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<QueryParams>,
) -> Result<Json<Value>, ApiError> {
    let to_api = |e: soql::SoqlError| ApiError::bad_request(e.code, e.message);
    let text = params.q.unwrap_or_default();
    let parsed = soql::parse(&text).map_err(to_api)?;
    let world = state.world();
    let sf = &world.salesforce;
    let object = sf.schema.object(&parsed.object).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_TYPE",
            format!(
                "\n{text}\n^\nERROR at Row:1:Column:1\nsObject type '{}' is not supported. If you are \
                 attempting to use a custom object, be sure to append the '__c' after the entity name. \
                 Please reference your WSDL or the describe call for the appropriate names.",
                parsed.object
            ),
        )
    })?;
    let rows = sf
        .table(object.name)
        .into_iter()
        .flat_map(|t| t.rows())
        .map(|row| &row.fields);
    let outcome = soql::execute(&parsed, &sf.schema, object, rows).map_err(to_api)?;
    let parent = |object: &str, id: &str| sf.record(object, id);
    let records: Vec<Value> = match &outcome.fields {
        None => Vec::new(),
        Some(fields) => outcome
            .rows
            .iter()
            .map(|row| soql::record(object, &caller.version, row, fields, &parent))
            .collect(),
    };
    Ok(Json(json!({
        "totalSize": outcome.rows.len(),
        "done": true,
        "records": records,
    })))
}

#[cfg(test)]
mod tests {
    use super::version_of;

    #[test]
    fn versions_are_vnn_n() {
        assert_eq!(
            version_of("/services/data/v62.0/sobjects").as_deref(),
            Some("62.0")
        );
        assert_eq!(version_of("/v45.0/query").as_deref(), Some("45.0"));
        assert_eq!(version_of("/services/data/v62/sobjects"), None);
        assert_eq!(version_of("/services/data/62.0"), None);
    }
}
