//! Web API handlers under `/api/data/v9.x/` (see the module docs of `dataverse` for the
//! endpoint list): bearer auth, query options, conditional requests, responses.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};

use super::expand::{self, Expansion};
use super::keys::{self, Key, Resource};
use super::schema::{self, Access, Kind, TableDef};
use super::store::{IfMatch, WriteRequest, etag, etag_matches, render};
use super::webhook::Auth;
use super::{ApiError, State};
use crate::auth::TokenRejection;
use crate::delivery::{self, Delivery};
use crate::identities::{DATAVERSE_BUSINESS_UNIT_ID, DATAVERSE_ORGANIZATION_ID, TENANT_ID};
use crate::odata::{self, Filter, Operand};
use crate::records::Row;
use crate::state::{AppState, World};

const VERSIONS: &[&str] = &["v9.0", "v9.1", "v9.2"];
/// Default and maximum page size of the Web API.
const MAX_PAGE_SIZE: usize = 5000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/data/{version}/{resource}", any(resource))
        .route("/api/data/{version}/{resource}/{property}", any(nested))
}

async fn resource(
    AxumState(state): AxumState<AppState>,
    Path((version, segment)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let request = Request {
        version,
        segment,
        property: None,
        method,
        headers,
        query: parse_pairs(query.as_deref()),
        body,
    };
    respond(&state, &request)
}

async fn nested(
    AxumState(state): AxumState<AppState>,
    Path((version, segment, property)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let request = Request {
        version,
        segment,
        property: Some(property),
        method,
        headers,
        query: parse_pairs(query.as_deref()),
        body,
    };
    respond(&state, &request)
}

/// Handles a request under the world lock, then starts the webhook deliveries it caused.
fn respond(state: &AppState, request: &Request) -> Response {
    let (response, deliveries) = {
        let mut world = state.world();
        match handle(state, &mut world, request) {
            Ok(outcome) => outcome,
            Err(error) => (
                with_challenge(error.into_response(), &state.config.base_url),
                Vec::new(),
            ),
        }
    };
    for delivery in deliveries {
        delivery::spawn(state, delivery);
    }
    response
}

#[derive(Debug)]
struct Request {
    version: String,
    segment: String,
    property: Option<String>,
    method: Method,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    body: Bytes,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All `Prefer` preferences, lower-cased.
    fn prefer(&self) -> String {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase()
    }

    fn wants_representation(&self) -> bool {
        self.prefer().contains("return=representation")
    }

    fn wants_annotations(&self) -> bool {
        self.prefer().contains("odata.include-annotations")
    }

    fn max_page_size(&self) -> Option<usize> {
        self.prefer().split(',').find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse().ok())
        })
    }

    fn bypasses_custom_logic(&self) -> bool {
        self.header("mscrm.bypassbusinesslogicexecution")
            .is_some_and(|v| v.to_ascii_lowercase().contains("customasync"))
            || self
                .header("mscrm.bypasscustompluginexecution")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

fn parse_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

type Outcome = (Response, Vec<Delivery>);

fn handle(state: &AppState, world: &mut World, request: &Request) -> Result<Outcome, ApiError> {
    let user = authenticate(state, world, &request.headers)?;
    if !VERSIONS.contains(&request.version.as_str()) {
        return Err(ApiError::segment(&request.version));
    }
    let resource = keys::parse_resource(&request.segment).map_err(ApiError::bad_request)?;
    let base = format!(
        "{}/api/data/{}",
        state.config.base_url.trim_end_matches('/'),
        request.version
    );
    let ctx = Ctx {
        base,
        request,
        user,
    };
    match resource.name.as_str() {
        "WhoAmI" => return who_am_i(&ctx, &resource).map(no_deliveries),
        "WinOpportunity" | "LoseOpportunity" => {
            let won = resource.name == "WinOpportunity";
            let now = world.now();
            return close_opportunity(state, &ctx, &mut world.dataverse, &resource, won, now);
        }
        "EntityDefinitions" => {
            return entity_definitions(&ctx, &world.dataverse, &resource).map(no_deliveries);
        }
        _ => {}
    }
    let Some(def) = world.dataverse.def_by_set(&resource.name).cloned() else {
        return Err(ApiError::segment(&resource.name));
    };
    if let Some(property) = &request.property {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "",
            format!(
                "The sandbox does not implement property or navigation paths ('{}/{property}').",
                request.segment
            ),
        ));
    }
    let now = world.now();
    match (&request.method, &resource.key) {
        (&Method::GET, None) => list(&ctx, &world.dataverse, &def).map(no_deliveries),
        (&Method::GET, Some(key)) => get_one(&ctx, &world.dataverse, &def, key).map(no_deliveries),
        (&Method::POST, None) | (&Method::PATCH, Some(_)) => {
            write(state, &ctx, &mut world.dataverse, &def, &resource, now)
        }
        (&Method::DELETE, Some(_)) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "",
            "The sandbox does not implement DELETE.",
        )),
        (method, _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "0x80060888",
            format!("The requested resource does not support http method '{method}'."),
        )),
    }
}

fn no_deliveries(response: Response) -> Outcome {
    (response, Vec::new())
}

struct Ctx<'a> {
    /// `{base_url}/api/data/v9.2`
    base: String,
    request: &'a Request,
    /// Acting `systemuserid`.
    user: String,
}

/// Checks the bearer token (audience = base URL) and that its subject is an enabled user.
fn authenticate(state: &AppState, world: &World, headers: &HeaderMap) -> Result<String, ApiError> {
    let audience = state.config.base_url.trim_end_matches('/');
    let now = world.now();
    let checked = match world.tokens.check(headers, audience, now) {
        Err(TokenRejection::WrongAudience) => {
            world.tokens.check(headers, &format!("{audience}/"), now)
        }
        other => other,
    };
    let info = checked.map_err(|rejection| {
        let message = match rejection {
            TokenRejection::Missing => {
                "RequestIsNotAuthenticated: the request has no 'Authorization: Bearer' token."
            }
            TokenRejection::Unknown => "InvalidAuthTicket: the bearer token is not valid.",
            TokenRejection::Expired => "ExpiredAuthTicket: the bearer token has expired.",
            TokenRejection::WrongAudience => {
                "InvalidAuthTicket: the bearer token was not issued for this environment \
                 (audience must be the environment URL)."
            }
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "", message)
    })?;
    let user = info.subject.to_ascii_lowercase();
    let enabled = world
        .dataverse
        .row("systemuser", &user)
        .is_some_and(|row| row.fields.get("isdisabled") != Some(&Value::Bool(true)));
    if !enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "0x80072560",
            "The user is not a member of the organization.",
        ));
    }
    Ok(user)
}

/// Adds `WWW-Authenticate` to 401s (as Dataverse does).
fn with_challenge(mut response: Response, base_url: &str) -> Response {
    if response.status() == StatusCode::UNAUTHORIZED {
        let value = format!(
            "Bearer authorization_uri={}/{TENANT_ID}/oauth2/authorize, resource_id={}/",
            base_url.trim_end_matches('/'),
            base_url.trim_end_matches('/')
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

fn json_response(status: StatusCode, body: Value, headers: &[(&str, String)]) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let map = response.headers_mut();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; odata.metadata=minimal"),
    );
    map.insert("odata-version", HeaderValue::from_static("4.0"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(*name), HeaderValue::from_str(value)) {
            map.insert(name, value);
        }
    }
    response
}

/// Parsed `$select`, `$filter`, `$orderby`, `$top`, `$count`, `$skiptoken`, and the text of
/// `$expand` (resolved by [`expand::resolve`] where reads take it).
#[derive(Debug, Default)]
struct QueryOptions {
    select: Option<Vec<String>>,
    expand: Option<String>,
    filter: Option<Filter>,
    orderby: Option<String>,
    top: Option<usize>,
    count: bool,
    skiptoken: Option<usize>,
}

fn query_options(def: &TableDef, pairs: &[(String, String)]) -> Result<QueryOptions, ApiError> {
    let mut options = QueryOptions::default();
    for (name, value) in pairs {
        match name.as_str() {
            "$select" => {
                let columns: Vec<String> = value
                    .split(',')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect();
                for column in &columns {
                    if def.column_by_read_name(column).is_none() {
                        return Err(ApiError::no_property(column, def));
                    }
                }
                options.select = Some(columns);
            }
            "$filter" => {
                let parsed =
                    odata::parse_filter(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
                options.filter = Some(check_filter(def, parsed, &mut Vec::new())?);
            }
            "$orderby" => {
                for clause in value.split(',') {
                    let property = clause.split_whitespace().next().unwrap_or_default();
                    if def.column_by_read_name(property).is_none() {
                        return Err(ApiError::no_property(property, def));
                    }
                }
                options.orderby = Some(value.clone());
            }
            "$top" => {
                options.top = Some(value.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("Invalid value '{value}' for $top query option."))
                })?);
            }
            "$count" => options.count = value.eq_ignore_ascii_case("true"),
            "$skiptoken" => {
                options.skiptoken = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("Invalid $skiptoken."))?,
                );
            }
            "$skip" => {
                return Err(ApiError::bad_request(
                    "The query parameter $skip is not supported",
                ));
            }
            "$expand" => options.expand = Some(value.clone()),
            "$apply" | "$search" | "fetchXml" => {
                return Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "",
                    format!("The sandbox does not implement {name}."),
                ));
            }
            other if other.starts_with('$') => {
                return Err(ApiError::bad_request(format!(
                    "The query parameter '{other}' is not supported."
                )));
            }
            _ => {}
        }
    }
    Ok(options)
}

/// Validates property names (case-sensitive, as in Dataverse) and turns unquoted GUID
/// literals, which the generic parser reads as paths, into values.
fn check_filter(
    def: &TableDef,
    filter: Filter,
    vars: &mut Vec<String>,
) -> Result<Filter, ApiError> {
    Ok(match filter {
        Filter::And(a, b) => Filter::And(
            Box::new(check_filter(def, *a, vars)?),
            Box::new(check_filter(def, *b, vars)?),
        ),
        Filter::Or(a, b) => Filter::Or(
            Box::new(check_filter(def, *a, vars)?),
            Box::new(check_filter(def, *b, vars)?),
        ),
        Filter::Not(a) => Filter::Not(Box::new(check_filter(def, *a, vars)?)),
        Filter::Compare(l, op, r) => Filter::Compare(
            check_operand(def, l, vars)?,
            op,
            check_operand(def, r, vars)?,
        ),
        Filter::Function(f, s, a) => Filter::Function(
            f,
            check_operand(def, s, vars)?,
            check_operand(def, a, vars)?,
        ),
        Filter::Any { path, var, .. } => {
            return Err(ApiError::bad_request(format!(
                "The sandbox has no collection-valued property '{}' on '{}' (any({var}: …)).",
                path.join("/"),
                def.logical
            )));
        }
    })
}

fn check_operand(def: &TableDef, operand: Operand, vars: &[String]) -> Result<Operand, ApiError> {
    let Operand::Path(path) = operand else {
        return Ok(operand);
    };
    if let [single] = path.as_slice()
        && let Ok(id) = uuid::Uuid::try_parse(single)
    {
        return Ok(Operand::Literal(json!(id.hyphenated().to_string())));
    }
    let first = path.first().map(String::as_str).unwrap_or_default();
    if vars.iter().any(|v| v == first)
        || (path.len() == 1 && def.column_by_read_name(first).is_some())
    {
        return Ok(Operand::Path(path));
    }
    Err(ApiError::no_property(&path.join("/"), def))
}

fn context_url(
    ctx: &Ctx<'_>,
    def: &TableDef,
    select: Option<&[String]>,
    expansions: &[Expansion],
    single: bool,
) -> String {
    let mut items: Vec<String> = select.map(<[String]>::to_vec).unwrap_or_default();
    items.extend(expansions.iter().map(Expansion::context));
    let projection = if select.is_none() && expansions.is_empty() {
        String::new()
    } else {
        format!("({})", items.join(","))
    };
    let entity = if single { "/$entity" } else { "" };
    format!("{}/$metadata#{}{projection}{entity}", ctx.base, def.set)
}

/// The resolved `$expand` of a read (none when the query has no `$expand`).
fn expansions(
    dv: &State,
    def: &TableDef,
    options: &QueryOptions,
) -> Result<Vec<Expansion>, ApiError> {
    options
        .expand
        .as_deref()
        .map_or(Ok(Vec::new()), |text| expand::resolve(dv, def, text))
}

/// A row as a read renders it: its columns (or the `$select`ed ones) and its expansions.
fn render_read(
    dv: &State,
    def: &TableDef,
    row: &Row,
    options: &QueryOptions,
    expansions: &[Expansion],
    annotations: bool,
) -> Map<String, Value> {
    let mut out = render(def, row, options.select.as_deref(), annotations);
    for expansion in expansions {
        expansion.render_into(dv, row, annotations, &mut out);
    }
    out
}

fn list(ctx: &Ctx<'_>, dv: &State, def: &TableDef) -> Result<Response, ApiError> {
    let options = query_options(def, &ctx.request.query)?;
    let expansions = expansions(dv, def, &options)?;
    let mut values: Vec<Value> = dv
        .rows(def.logical)
        .map(|row| Value::Object(render(def, row, None, false)))
        .filter(|v| options.filter.as_ref().is_none_or(|f| f.matches(v)))
        .collect();
    if let Some(orderby) = &options.orderby {
        odata::order_by(&mut values, orderby).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    // `$count` counts every match, regardless of `$top` (OData).
    let matching = values.len();
    if let Some(top) = options.top {
        values.truncate(top);
    }
    let total = values.len();
    let page_size = ctx
        .request
        .max_page_size()
        .unwrap_or(MAX_PAGE_SIZE)
        .clamp(1, MAX_PAGE_SIZE);
    let start = options.skiptoken.unwrap_or(0).min(total);
    let end = (start + page_size).min(total);
    let annotations = ctx.request.wants_annotations();
    let page: Vec<Value> = values[start..end]
        .iter()
        .filter_map(|v| v.get(def.pk).and_then(Value::as_str))
        .filter_map(|id| dv.row(def.logical, id))
        .map(|row| {
            Value::Object(render_read(
                dv,
                def,
                row,
                &options,
                &expansions,
                annotations,
            ))
        })
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(context_url(
            ctx,
            def,
            options.select.as_deref(),
            &expansions,
            false
        )),
    );
    if options.count {
        body.insert("@odata.count".into(), json!(matching));
    }
    body.insert("value".into(), Value::Array(page));
    if end < total {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in ctx.request.query.iter().filter(|(k, _)| k != "$skiptoken") {
            query.append_pair(k, v);
        }
        query.append_pair("$skiptoken", &end.to_string());
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{}/{}?{}", ctx.base, def.set, query.finish())),
        );
    }
    let mut headers = Vec::new();
    if let Some(size) = ctx.request.max_page_size() {
        headers.push(("preference-applied", format!("odata.maxpagesize={size}")));
    }
    Ok(json_response(StatusCode::OK, Value::Object(body), &headers))
}

fn get_one(ctx: &Ctx<'_>, dv: &State, def: &TableDef, key: &Key) -> Result<Response, ApiError> {
    let options = query_options(def, &ctx.request.query)?;
    let expansions = expansions(dv, def, &options)?;
    let row = dv.find(def, key)?;
    let tag = etag(row);
    if let Some(sent) = ctx.request.header("if-none-match")
        && !sent.trim().eq_ignore_ascii_case("null")
        && sent
            .split(',')
            .any(|t| t.trim() == "*" || etag_matches(row, t))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(&tag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return Ok(response);
    }
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(context_url(
            ctx,
            def,
            options.select.as_deref(),
            &expansions,
            true
        )),
    );
    body.extend(render_read(
        dv,
        def,
        row,
        &options,
        &expansions,
        ctx.request.wants_annotations(),
    ));
    Ok(json_response(
        StatusCode::OK,
        Value::Object(body),
        &[("etag", tag)],
    ))
}

fn write(
    state: &AppState,
    ctx: &Ctx<'_>,
    dv: &mut State,
    def: &TableDef,
    resource: &Resource,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome, ApiError> {
    let options = query_options(def, &ctx.request.query)?;
    if options.expand.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "",
            "The sandbox does not implement $expand on a write's returned representation.",
        ));
    }
    let body = parse_body(def, &ctx.request.body)?;
    if def.logical == "serviceendpoint" {
        check_endpoint_auth(dv, def, resource, &body)?;
    }
    let if_match = ctx.request.header("if-match").map(|v| {
        if v.trim() == "*" {
            IfMatch::Any
        } else {
            IfMatch::Tags(v.split(',').map(|t| t.trim().to_owned()).collect())
        }
    });
    let if_none_match_any = ctx
        .request
        .header("if-none-match")
        .is_some_and(|v| v.trim() == "*");
    let mut written = dv.write(WriteRequest {
        set: def.set.to_owned(),
        key: resource.key.clone(),
        body,
        if_match,
        if_none_match_any,
        user: ctx.user.clone(),
        now,
    })?;
    written.event.bypass = ctx.request.bypasses_custom_logic();
    let deliveries = dv.webhook_deliveries(&state.config, &written.event);
    let entity_id = format!("{}/{}({})", ctx.base, def.set, written.row.id);
    let response = if ctx.request.wants_representation() {
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(context_url(ctx, def, options.select.as_deref(), &[], true)),
        );
        body.extend(render(
            &written.def,
            &written.row,
            options.select.as_deref(),
            ctx.request.wants_annotations(),
        ));
        let status = if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_response(
            status,
            Value::Object(body),
            &[
                ("preference-applied", "return=representation".to_owned()),
                ("etag", etag(&written.row)),
            ],
        )
    } else {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert("odata-version", HeaderValue::from_static("4.0"));
        if let Ok(value) = HeaderValue::from_str(&entity_id) {
            headers.insert("odata-entityid", value);
        }
        response
    };
    Ok((response, deliveries))
}

fn parse_body(def: &TableDef, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::payload(
            def.set,
            "Microsoft.OData.ODataException: A resource (JSON object) was expected.",
        )),
        Err(error) => Err(ApiError::payload(
            def.set,
            format!("Microsoft.OData.ODataException: Invalid JSON. {error}"),
        )),
    }
}

/// Rejects a webhook registration whose `authvalue` does not fit its `authtype`.
fn check_endpoint_auth(
    dv: &State,
    def: &TableDef,
    resource: &Resource,
    body: &Map<String, Value>,
) -> Result<(), ApiError> {
    let existing = resource
        .key
        .as_ref()
        .and_then(|key| dv.find(def, key).ok())
        .map(|row| row.fields.clone())
        .unwrap_or_default();
    let pick = |name: &str| body.get(name).or_else(|| existing.get(name));
    let authtype = pick("authtype").and_then(Value::as_i64);
    let authvalue = pick("authvalue").and_then(Value::as_str);
    let contract = pick("contract").and_then(Value::as_i64);
    if contract == Some(8) {
        Auth::from_settings(authtype, authvalue)
            .map_err(|e| ApiError::bad_request(format!("Invalid webhook registration: {e}.")))?;
    }
    Ok(())
}

/// `POST WinOpportunity` / `POST LoseOpportunity`: `{"Status": <statuscode>, "OpportunityClose":
/// {"subject": …, "opportunityid@odata.bind": "/opportunities(<id>)"}}` closes the open
/// opportunity with that status reason; 204. (The `opportunityclose` activity is not kept, and
/// no webhook is sent: the sandbox's steps are registered on Create and Update, and closing is
/// the `Win` / `Lose` message.)
/// `WinOpportunity` / `LoseOpportunity`: closes the row and raises the `Win` / `Lose` message
/// (not an `Update`) for the registered webhooks.
fn close_opportunity(
    state: &AppState,
    ctx: &Ctx<'_>,
    store: &mut super::State,
    resource: &Resource,
    won: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome, ApiError> {
    if ctx.request.method != Method::POST || resource.key.is_some() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "0x80060888",
            format!(
                "The requested resource does not support http method '{}'.",
                ctx.request.method
            ),
        ));
    }
    let body: Value = serde_json::from_slice(&ctx.request.body)
        .map_err(|error| ApiError::bad_request(format!("The request body is not JSON: {error}")))?;
    let status = match body.get("Status") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            ApiError::bad_request("'Status' must be an integer (the status reason to close with).")
        })?),
    };
    let bind = body
        .get("OpportunityClose")
        .and_then(|close| close.get("opportunityid@odata.bind"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(
                "'OpportunityClose' must be an object binding 'opportunityid@odata.bind' to the \
                 opportunity.",
            )
        })?;
    let id = bind
        .rsplit_once("opportunities(")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| {
            ApiError::bad_request(format!("'{bind}' is not a reference to an opportunity."))
        })?;
    let mut written = store.close_opportunity(&id, won, status, &ctx.user, now)?;
    written.event.bypass = ctx.request.bypasses_custom_logic();
    let deliveries = store.webhook_deliveries(&state.config, &written.event);
    Ok((StatusCode::NO_CONTENT.into_response(), deliveries))
}

fn who_am_i(ctx: &Ctx<'_>, resource: &Resource) -> Result<Response, ApiError> {
    if ctx.request.method != Method::GET || resource.key.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "",
            format!(
                "No HTTP resource was found that matches the request URI '{}/{}'.",
                ctx.base, ctx.request.segment
            ),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", ctx.base),
            "BusinessUnitId": DATAVERSE_BUSINESS_UNIT_ID,
            "UserId": ctx.user,
            "OrganizationId": DATAVERSE_ORGANIZATION_ID,
        }),
        &[],
    ))
}

fn entity_metadata(def: &TableDef) -> Value {
    json!({
        "MetadataId": schema::metadata_id(def.logical),
        "LogicalName": def.logical,
        "SchemaName": capitalise(def.logical),
        "EntitySetName": def.set,
        "PrimaryIdAttribute": def.pk,
        "PrimaryNameAttribute": def.primary_name,
        "IsCustomEntity": false,
        "IsOptimisticConcurrencyEnabled": true,
    })
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn attribute_metadata(def: &TableDef) -> Vec<Value> {
    def.columns
        .iter()
        .map(|c| {
            let type_name = match &c.kind {
                Kind::Lookup { .. } => "Lookup".to_owned(),
                Kind::Uniqueidentifier => String::new(),
                kind => kind.attribute_type().to_owned(),
            };
            let mut m = Map::new();
            m.insert(
                "@odata.type".into(),
                json!(format!(
                    "#Microsoft.Dynamics.CRM.{type_name}AttributeMetadata"
                )),
            );
            m.insert(
                "MetadataId".into(),
                json!(schema::metadata_id(&format!("{}.{}", def.logical, c.name))),
            );
            m.insert("LogicalName".into(), json!(c.name));
            m.insert("AttributeType".into(), json!(c.kind.attribute_type()));
            m.insert("IsCustomAttribute".into(), json!(c.custom));
            m.insert("IsPrimaryId".into(), json!(c.name == def.pk));
            m.insert("IsPrimaryName".into(), json!(c.name == def.primary_name));
            m.insert(
                "IsValidForCreate".into(),
                json!(matches!(
                    c.access,
                    Access::Key | Access::ReadWrite | Access::WriteOnly
                )),
            );
            m.insert(
                "IsValidForUpdate".into(),
                json!(matches!(c.access, Access::ReadWrite | Access::WriteOnly)),
            );
            m.insert("IsValidForRead".into(), json!(c.readable()));
            match &c.kind {
                Kind::String { max_length } | Kind::Memo { max_length } => {
                    m.insert("MaxLength".into(), json!(max_length));
                }
                Kind::Lookup { targets } => {
                    m.insert("Targets".into(), json!(targets));
                }
                _ => {}
            }
            // Choice columns carry their options inline (Dataverse returns them with
            // `$expand=OptionSet` on the typed attribute; the sandbox always includes them).
            if let Some(options) = c.kind.options() {
                let options: Vec<Value> = options
                    .iter()
                    .map(|(value, label)| {
                        json!({
                            "Value": value,
                            "Label": {"UserLocalizedLabel": {"Label": label}},
                        })
                    })
                    .collect();
                m.insert("OptionSet".into(), json!({ "Options": options }));
            }
            Value::Object(m)
        })
        .collect()
}

fn key_metadata(def: &TableDef) -> Vec<Value> {
    def.keys
        .iter()
        .map(|k| {
            json!({
                "MetadataId": schema::metadata_id(&format!("{}#{}", def.logical, k.name)),
                "LogicalName": k.name,
                "KeyAttributes": k.columns,
                "EntityKeyIndexStatus": "Active",
            })
        })
        .collect()
}

/// Applies `$filter` and `$select` to metadata records (`MetadataId` always kept).
fn project_metadata(items: Vec<Value>, pairs: &[(String, String)]) -> Result<Vec<Value>, ApiError> {
    let mut items = items;
    for (name, value) in pairs {
        match name.as_str() {
            "$filter" => {
                let filter =
                    odata::parse_filter(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
                items.retain(|item| filter.matches(item));
            }
            "$select" => {
                let keep: Vec<&str> = value.split(',').map(str::trim).collect();
                for item in &mut items {
                    if let Value::Object(m) = item {
                        m.retain(|k, _| k == "MetadataId" || keep.contains(&k.as_str()));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(items)
}

fn entity_definitions(
    ctx: &Ctx<'_>,
    dv: &State,
    resource: &Resource,
) -> Result<Response, ApiError> {
    if ctx.request.method != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "0x80060888",
            "The sandbox's metadata API is read-only.",
        ));
    }
    let context = |suffix: &str| format!("{}/$metadata#EntityDefinitions{suffix}", ctx.base);
    let Some(key) = &resource.key else {
        let items = dv.tables().iter().map(entity_metadata).collect();
        let items = project_metadata(items, &ctx.request.query)?;
        return Ok(json_response(
            StatusCode::OK,
            json!({ "@odata.context": context(""), "value": items }),
            &[],
        ));
    };
    let def = match key {
        Key::Named(pairs) => match pairs.as_slice() {
            [(name, Value::String(logical))] if name == "LogicalName" => dv.def(logical),
            _ => None,
        },
        Key::Id(id) => dv
            .tables()
            .iter()
            .find(|t| &schema::metadata_id(t.logical) == id),
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "0x80040217",
            format!(
                "Could not find an entity with the key {}.",
                ctx.request.segment.trim_start_matches("EntityDefinitions")
            ),
        )
    })?;
    let (suffix, items) = match ctx.request.property.as_deref() {
        None => {
            let mut body = Map::new();
            body.insert("@odata.context".into(), json!(context("/$entity")));
            if let Value::Object(m) = entity_metadata(def) {
                body.extend(m);
            }
            let projected = project_metadata(vec![Value::Object(body)], &ctx.request.query)?;
            return Ok(json_response(
                StatusCode::OK,
                projected.into_iter().next().unwrap_or_default(),
                &[],
            ));
        }
        Some("Attributes") => ("Attributes", attribute_metadata(def)),
        Some("Keys") => ("Keys", key_metadata(def)),
        Some(other) => return Err(ApiError::segment(other)),
    };
    let items = project_metadata(items, &ctx.request.query)?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": context(&format!("('{}')/{suffix}", def.logical)),
            "value": items,
        }),
        &[],
    ))
}
