//! Salesforce stand-in: OAuth 2.0 JWT bearer sign-in, the REST API (sObjects, upsert by
//! External ID, SOQL, describe, limits) and Outbound Messages (SOAP notifications with
//! acknowledgement-driven retries). Facts: docs/salesforce.md.
//!
//! # API endpoints (request log + fault injection apply; `Service::SalesforceAuth` /
//! `Service::Salesforce`)
//!
//! | Method | Path | Answers |
//! |---|---|---|
//! | POST | `/services/oauth2/token` (JWT bearer grant) | 200 token; 400 `invalid_grant` / `invalid_client_id` / `unsupported_grant_type` |
//! | GET | `/services/data` | 200 versions (no auth) |
//! | GET | `/services/data/vNN.N` | 200 resource URLs |
//! | GET | `/services/data/vNN.N/limits` | 200 `{"DailyApiRequests":{"Max","Remaining"}}` |
//! | GET | `/services/data/vNN.N/query?q=SOQL` | 200 `{totalSize, done, records}`; 400 `MALFORMED_QUERY` / `INVALID_FIELD` / `INVALID_TYPE` / `INVALID_QUERY_FILTER_OPERATOR` |
//! | GET | `/services/data/vNN.N/sobjects` | 200 describe global |
//! | GET | `/services/data/vNN.N/sobjects/{Object}` | 200 basic info; 404 |
//! | GET | `/services/data/vNN.N/sobjects/{Object}/describe` | 200 fields (type, externalId, updateable, picklistValues…); 404 |
//! | POST | `/services/data/vNN.N/sobjects/{Object}/` | 201 `{id, errors, success}`; 400 `INVALID_FIELD` / `JSON_PARSER_ERROR` / `REQUIRED_FIELD_MISSING` / `INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST` / …; 404 |
//! | GET | `/services/data/vNN.N/sobjects/{Object}/{id}[?fields=a,b]` | 200 record; 304 (`If-Modified-Since`); 400 `MALFORMED_ID`; 404 |
//! | PATCH | `/services/data/vNN.N/sobjects/{Object}/{id}` | 204; 400; 404; 412 (`If-Unmodified-Since`) |
//! | GET | `/services/data/vNN.N/sobjects/{Object}/{ExtIdField}/{value}` | 200; 300 (several); 404 |
//! | PATCH | `/services/data/vNN.N/sobjects/{Object}/{ExtIdField}/{value}[?updateOnly=true]` | 201 `created:true`; 200 `created:false` (v46+; ≤ v45: 201 / 204); 300 list of URLs; 400; 404 |
//! | POST | `/services/data/vNN.N/composite` `{"allOrNone","collateSubrequests"?,"compositeRequest":[{"method","url","referenceId","body"?,"httpHeaders"?}]}` | 200 `{"compositeResponse":[{"body","httpHeaders","httpStatusCode","referenceId"}]}`; 400 for more than 25 subrequests or a malformed body (see [`composite`]) |
//!
//! Every `/services/data/vNN.N/…` call needs `Authorization: Bearer` (401
//! `INVALID_SESSION_ID`), counts against the per-UTC-day allowance (by the sandbox clock;
//! 403 `REQUEST_LIMIT_EXCEEDED` once used up) and answers with
//! `Sforce-Limit-Info: api-usage=<used>/<max>`. Unknown paths are 404 `NOT_FOUND`, wrong
//! methods 405 `METHOD_NOT_ALLOWED`. A Composite request counts once, whatever its
//! subrequests (which are not counted, logged or faulted on their own).
//!
//! Outbound Messages: after every Opportunity create or update (REST or seeding, by any
//! user — the connector recognises its own writes by `LastModifiedById`), one SOAP
//! `notifications` message is POSTed to the configured URL and retried until the answer
//! is a 2xx carrying `<Ack>true</Ack>` (see [`outbound`]).
//!
//! # Control endpoints (under `/_sandbox/salesforce`)
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | PUT / GET | `/outbound-message` `{"url", "fields"}` | configure / show the Outbound Message |
//! | POST | `/outbound-messages/batch` `{"ids": [...]}` | one message with up to 100 notifications (202; 400 for 0 or > 100; 404 unknown id; 409 no URL) |
//! | POST | `/outbound-messages/{delivery_id}/resend` | re-send a message byte-for-byte (202; 404) |
//! | POST | `/limits` `{"daily": n, "used"?: n}` | set the daily API allowance |
//! | PUT | `/stages` `[{"name","closed","won","probability"}]` | replace the stage table |
//! | PUT | `/currencies` `["USD", ...]` | replace the active currencies (first = corporate) |
//! | DELETE | `/schema/{Object}/{field}` | remove a field (simulates a missing custom field) |
//! | PATCH | `/schema/{Object}/{field}` `{"externalId": bool}` | flip a field's External ID flag |
//! | GET | `/{Object}` | all records |
//! | PUT | `/{Object}/{id}?as_user=<userId>` | seed / replace a record as REST returns it (201 / 200; Opportunities emit an Outbound Message, id in `X-Sandbox-Delivery-Id`) |
//! | GET | `/{Object}/{id}` | raw read (404) |
//!
//! Access tokens can also be issued directly: `POST /_sandbox/tokens
//! {"audience": "salesforce", "subject": "<user id>"}`.

pub mod composite;
mod control;
pub mod ids;
mod oauth;
pub mod outbound;
mod rest;
pub mod schema;
pub mod soql;

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value, json};

use crate::identities;
use crate::records::Table;
use crate::state::AppState;
use schema::{FieldType, ObjectSchema, Schema};

/// Token audience of Salesforce access tokens (also what `POST /_sandbox/tokens` takes).
pub const TOKEN_AUDIENCE: &str = "salesforce";
/// The API version the sandbox advertises (any `vNN.N` is served).
pub const API_VERSION: &str = "62.0";
/// Default daily API request allowance (the base of Salesforce's allocation formula).
pub const DEFAULT_DAILY_LIMIT: u64 = 100_000;

/// An error answer: a JSON array with one `{message, errorCode, fields?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub fields: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn with_fields(mut self, fields: impl IntoIterator<Item = String>) -> Self {
        self.fields = fields.into_iter().collect();
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `NOT_FOUND` "The requested resource does not exist".
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.fields.is_empty() {
            return crate::errors::salesforce(self.status, &self.code, &self.message);
        }
        let body = json!([{
            "message": self.message,
            "errorCode": self.code,
            "fields": self.fields,
        }]);
        (self.status, Json(body)).into_response()
    }
}

/// The daily API request allowance, counted per UTC day of the sandbox clock.
#[derive(Debug, Clone)]
pub struct ApiUsage {
    pub max: u64,
    pub used: u64,
    day: Option<NaiveDate>,
}

impl Default for ApiUsage {
    fn default() -> Self {
        Self {
            max: DEFAULT_DAILY_LIMIT,
            used: 0,
            day: None,
        }
    }
}

impl ApiUsage {
    /// Starts a new count when the UTC day changed.
    fn roll(&mut self, now: DateTime<Utc>) {
        let today = now.date_naive();
        if self.day != Some(today) {
            self.day = Some(today);
            self.used = 0;
        }
    }

    /// `Sforce-Limit-Info` value.
    fn header(&self) -> String {
        format!("api-usage={}/{}", self.used, self.max)
    }
}

/// In-memory state of this service.
#[derive(Debug)]
pub struct State {
    pub schema: Schema,
    /// Records by object API name.
    tables: HashMap<&'static str, Table>,
    pub usage: ApiUsage,
    pub outbound: outbound::Config,
    /// Outbound messages sent, by delivery id (for resend).
    pub messages: HashMap<u64, outbound::Sent>,
    next_id: u64,
}

impl Default for State {
    fn default() -> Self {
        let schema = Schema::default();
        let tables = schema
            .objects
            .iter()
            .map(|o| (o.name, Table::default()))
            .collect();
        let mut state = Self {
            schema,
            tables,
            usage: ApiUsage::default(),
            outbound: outbound::Config::default(),
            messages: HashMap::new(),
            // Random start: ids differ between sandbox runs, so a connector's stale mapping
            // from an earlier run never points at a new, unrelated record.
            next_id: 62u64.pow(7) + u64::from(uuid::Uuid::new_v4().as_fields().0) % 62u64.pow(8),
        };
        for (id, username, first, last) in [
            (
                identities::SALESFORCE_INTEGRATION_USER_ID,
                identities::SALESFORCE_INTEGRATION_USERNAME,
                "Integration",
                "User",
            ),
            (
                identities::SALESFORCE_SELLER_USER_ID,
                identities::SALESFORCE_SELLER_USERNAME,
                "Sam",
                "Seller",
            ),
        ] {
            let created = "2024-01-01T00:00:00.000+0000";
            let user = json!({
                "Id": id, "Username": username, "FirstName": first, "LastName": last,
                "Name": format!("{first} {last}"), "Email": username, "IsActive": true,
                "IsDeleted": false,
                "CreatedById": identities::SALESFORCE_INTEGRATION_USER_ID, "CreatedDate": created,
                "LastModifiedById": identities::SALESFORCE_INTEGRATION_USER_ID,
                "LastModifiedDate": created, "SystemModstamp": created,
            });
            if let (Some(table), Value::Object(fields)) = (state.tables.get_mut("User"), user) {
                table.put(id, fields);
            }
        }
        state
    }
}

/// Who writes and when.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub user_id: &'a str,
    pub now: DateTime<Utc>,
}

/// Create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteOp {
    Create,
    Update,
}

/// Outcome of an upsert by External ID.
#[derive(Debug, Clone, PartialEq)]
pub enum Upserted {
    Created(String),
    Updated(String),
    /// Several records carry the value: their ids.
    Multiple(Vec<String>),
}

impl State {
    /// Records of `object` (canonical API name).
    pub fn table(&self, object: &str) -> Option<&Table> {
        self.tables.get(object)
    }

    /// The rows of every table as they are now (what a rollback restores).
    pub fn snapshot(&self) -> HashMap<&'static str, Table> {
        self.tables.clone()
    }

    /// Puts the record `id` of `object` back as it was in `before` (removed when it did not
    /// exist then): the rollback of a Composite request's change.
    pub fn restore(&mut self, before: &HashMap<&'static str, Table>, object: &str, id: &str) {
        let Some(name) = self.schema.object(object).map(|o| o.name) else {
            return;
        };
        let old = before.get(name).and_then(|table| table.get(id));
        if let Some(table) = self.tables.get_mut(name) {
            table.restore(id, old);
        }
    }

    /// A record's fields.
    pub fn record(&self, object: &str, id: &str) -> Option<&Map<String, Value>> {
        self.table(object)?.get(id).map(|row| &row.fields)
    }

    /// A fresh id with `prefix` not used by any record.
    pub fn new_id(&mut self, prefix: &str) -> String {
        loop {
            self.next_id += 1;
            let id = ids::generate(prefix, self.next_id);
            if !self.tables.values().any(|t| t.get(&id).is_some()) {
                return id;
            }
        }
    }

    /// The user with `username` (case-insensitive), if active.
    pub fn active_user_by_username(&self, username: &str) -> Option<String> {
        self.table("User")?
            .rows()
            .find(|row| {
                row.fields
                    .get("Username")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.eq_ignore_ascii_case(username))
                    && row.fields.get("IsActive") != Some(&Value::Bool(false))
            })
            .map(|row| row.id.clone())
    }

    /// Checks a request body against the schema and normalises its values.
    fn prepare(
        &self,
        object: &ObjectSchema,
        body: &Map<String, Value>,
        op: WriteOp,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut out = Map::new();
        let mut not_writable = Vec::new();
        for (key, value) in body {
            if key.eq_ignore_ascii_case("attributes") {
                continue;
            }
            if key.eq_ignore_ascii_case("Id") {
                return Err(ApiError::bad_request(
                    "INVALID_FIELD",
                    "The Id field should not be specified in the sobject data.",
                ));
            }
            let field = object.field(key).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_FIELD",
                    format!("No such column '{key}' on sobject of type {}", object.name),
                )
            })?;
            let writable = match op {
                WriteOp::Create => field.createable,
                WriteOp::Update => field.updateable,
            };
            if !writable {
                not_writable.push(field.name.clone());
                continue;
            }
            out.insert(field.name.clone(), field.coerce(value, &self.schema)?);
        }
        if !not_writable.is_empty() {
            return Err(ApiError::bad_request(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of \
                     this field and verify that it is read/write for your profile or permission set.",
                    not_writable.join(", ")
                ),
            )
            .with_fields(not_writable));
        }
        Ok(out)
    }

    /// Lookups must point at existing records (UNKNOWN exact error for a well-formed id
    /// of a missing record; `INVALID_CROSS_REFERENCE_KEY` is the documented status code
    /// closest to it).
    fn check_references(
        &self,
        object: &ObjectSchema,
        changes: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        for (name, value) in changes {
            let (Some(field), Some(id)) = (object.field(name), value.as_str()) else {
                continue;
            };
            let Some(target) = field.reference_to else {
                continue;
            };
            if self.record(target, id).is_none() {
                return Err(ApiError::bad_request(
                    "INVALID_CROSS_REFERENCE_KEY",
                    format!("invalid cross reference id: {}: {id}", field.label),
                )
                .with_fields([field.name.clone()]));
            }
        }
        Ok(())
    }

    /// Server-maintained values: stage-derived flags, compound names, system fields.
    fn derive(
        &self,
        object: &ObjectSchema,
        record: &mut Map<String, Value>,
        changes: &Map<String, Value>,
        writer: Writer<'_>,
    ) {
        if object.name == "Opportunity"
            && let Some(stage) = changes
                .get("StageName")
                .and_then(Value::as_str)
                .and_then(|s| self.schema.stage(s))
        {
            record.insert("IsClosed".into(), json!(stage.closed));
            record.insert("IsWon".into(), json!(stage.won));
            if !changes.contains_key("Probability") {
                record.insert("Probability".into(), json!(f64::from(stage.probability)));
            }
        }
        if object
            .field("Name")
            .is_some_and(|f| !f.updateable && !f.createable)
        {
            let part = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or_default();
            let name = format!("{} {}", part("FirstName"), part("LastName"));
            record.insert("Name".into(), json!(name.trim()));
        }
        let now = json!(schema::format_datetime(writer.now));
        if object.field("LastModifiedById").is_some() {
            record.insert("LastModifiedById".into(), json!(writer.user_id));
        }
        for field in ["LastModifiedDate", "SystemModstamp"] {
            if object.field(field).is_some() {
                record.insert(field.into(), now.clone());
            }
        }
    }

    /// `POST /sobjects/{Object}/`: returns the new id.
    pub fn create(
        &mut self,
        object: &str,
        body: &Map<String, Value>,
        writer: Writer<'_>,
    ) -> Result<String, ApiError> {
        let object = self
            .schema
            .object(object)
            .ok_or_else(ApiError::not_found)?
            .clone();
        if !object.createable {
            return Err(ApiError::bad_request(
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type cannot be inserted: {}", object.name),
            ));
        }
        let changes = self.prepare(&object, body, WriteOp::Create)?;
        let missing: Vec<String> = object
            .fields
            .iter()
            .filter(|f| f.required_on_create())
            .filter(|f| changes.get(&f.name).is_none_or(Value::is_null))
            .map(|f| f.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
            )
            .with_fields(missing));
        }
        self.check_references(&object, &changes)?;
        let id = self.new_id(object.key_prefix);
        let now = json!(schema::format_datetime(writer.now));
        let mut record = Map::new();
        record.insert("Id".into(), json!(id));
        for field in &object.fields {
            let default = match (field.name.as_str(), field.kind) {
                ("OwnerId", _) => json!(writer.user_id),
                ("CurrencyIsoCode", _) => json!(self.schema.default_currency),
                ("CreatedById", _) => json!(writer.user_id),
                ("CreatedDate", _) => now.clone(),
                (_, FieldType::Boolean) => json!(false),
                _ => continue,
            };
            record.insert(field.name.clone(), default);
        }
        record.extend(changes.clone());
        self.derive(&object, &mut record, &changes, writer);
        self.tables.entry(object.name).or_default().put(&id, record);
        Ok(id)
    }

    /// `PATCH /sobjects/{Object}/{id}` on an existing record.
    pub fn update(
        &mut self,
        object: &str,
        id: &str,
        body: &Map<String, Value>,
        writer: Writer<'_>,
    ) -> Result<(), ApiError> {
        let object = self
            .schema
            .object(object)
            .ok_or_else(ApiError::not_found)?
            .clone();
        if !object.updateable {
            return Err(ApiError::bad_request(
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type cannot be updated: {}", object.name),
            ));
        }
        let changes = self.prepare(&object, body, WriteOp::Update)?;
        let nulled: Vec<String> = object
            .fields
            .iter()
            .filter(|f| !f.nillable && changes.get(&f.name).is_some_and(Value::is_null))
            .map(|f| f.name.clone())
            .collect();
        if !nulled.is_empty() {
            return Err(ApiError::bad_request(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", nulled.join(", ")),
            )
            .with_fields(nulled));
        }
        self.check_references(&object, &changes)?;
        let mut record = self
            .record(object.name, id)
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        record.extend(changes.clone());
        self.derive(&object, &mut record, &changes, writer);
        self.tables.entry(object.name).or_default().put(id, record);
        Ok(())
    }

    /// Ids of `object` records whose `field` equals `value` (text case-insensitively).
    pub fn find_by(&self, object: &str, field: &str, value: &str) -> Vec<String> {
        let wanted = Value::String(value.to_owned());
        self.table(object)
            .map(|t| t.find_by(field, &wanted).map(|r| r.id.clone()).collect())
            .unwrap_or_default()
    }

    /// `PATCH /sobjects/{Object}/{ExtIdField}/{value}`.
    pub fn upsert(
        &mut self,
        object: &str,
        key_field: &str,
        value: &str,
        body: &Map<String, Value>,
        update_only: bool,
        writer: Writer<'_>,
    ) -> Result<Upserted, ApiError> {
        let schema_object = self.schema.object(object).ok_or_else(ApiError::not_found)?;
        let field = schema_object
            .field(key_field)
            .filter(|f| f.external_id || f.kind == FieldType::Id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!(
                        "Provided external ID field does not exist or is not accessible: {key_field}"
                    ),
                )
            })?
            .clone();
        let object = schema_object.name;
        let matches = if field.kind == FieldType::Id {
            ids::normalize(value)
                .filter(|id| self.record(object, id).is_some())
                .into_iter()
                .collect()
        } else {
            self.find_by(object, &field.name, value)
        };
        match matches.as_slice() {
            [] if update_only || field.kind == FieldType::Id => Err(ApiError::not_found()),
            [] => {
                // The URL's value wins over one in the body (UNKNOWN how a conflicting body
                // value is treated; the URL names the record, so it is the robust reading).
                let mut body = body.clone();
                body.retain(|k, _| !k.eq_ignore_ascii_case(&field.name));
                body.insert(field.name.clone(), json!(value));
                self.create(object, &body, writer).map(Upserted::Created)
            }
            [id] => {
                let id = id.clone();
                self.update(object, &id, body, writer)?;
                Ok(Upserted::Updated(id))
            }
            many => Ok(Upserted::Multiple(many.to_vec())),
        }
    }

    /// Seeds or replaces a record as given (control API): system fields are filled when
    /// absent, field names are matched case-insensitively, values are stored as given.
    pub fn seed(
        &mut self,
        object: &str,
        id: &str,
        body: &Map<String, Value>,
        writer: Writer<'_>,
    ) -> Result<bool, String> {
        let object = self
            .schema
            .object(object)
            .ok_or_else(|| format!("unknown sObject {object}"))?
            .clone();
        let id = ids::normalize(id)
            .filter(|id| id.starts_with(object.key_prefix))
            .ok_or_else(|| {
                format!(
                    "{id} is not a 15/18-character {} id (key prefix {})",
                    object.name, object.key_prefix
                )
            })?;
        let existing = self.record(object.name, &id).cloned();
        let mut record = Map::new();
        for (key, value) in body {
            if key.eq_ignore_ascii_case("attributes") {
                continue;
            }
            let field = object
                .field(key)
                .ok_or_else(|| format!("no field {key} on {}", object.name))?;
            record.insert(field.name.clone(), value.clone());
        }
        record.insert("Id".into(), json!(id));
        let now = json!(schema::format_datetime(writer.now));
        let kept = |name: &str, fallback: Value| {
            existing
                .as_ref()
                .and_then(|e| e.get(name).cloned())
                .unwrap_or(fallback)
        };
        let mut defaults = vec![
            ("CreatedById", kept("CreatedById", json!(writer.user_id))),
            ("CreatedDate", kept("CreatedDate", now.clone())),
            ("LastModifiedById", json!(writer.user_id)),
            ("LastModifiedDate", now.clone()),
            ("SystemModstamp", now),
            ("IsDeleted", json!(false)),
            ("OwnerId", json!(writer.user_id)),
            ("CurrencyIsoCode", json!(self.schema.default_currency)),
        ];
        if object.name == "Opportunity"
            && let Some(stage) = record
                .get("StageName")
                .and_then(Value::as_str)
                .and_then(|s| self.schema.stage(s))
        {
            defaults.push(("IsClosed", json!(stage.closed)));
            defaults.push(("IsWon", json!(stage.won)));
            defaults.push(("Probability", json!(f64::from(stage.probability))));
        }
        for (name, value) in defaults {
            if object.field(name).is_some() && !record.contains_key(name) {
                record.insert(name.into(), value);
            }
        }
        let (_, created) = self.tables.entry(object.name).or_default().put(&id, record);
        Ok(created)
    }
}

/// API routes: the OAuth token endpoint and the REST API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(oauth::routes())
        // The nested router answers `/services/data`; the trailing-slash form is separate.
        .route("/services/data/", axum::routing::get(rest::versions))
        .nest("/services/data", rest::routes())
}

/// Seeding and configuration routes under `/_sandbox/salesforce`.
pub fn control_routes() -> Router<AppState> {
    control::routes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn writer() -> Writer<'static> {
        Writer {
            user_id: identities::SALESFORCE_INTEGRATION_USER_ID,
            now: Utc::now(),
        }
    }

    #[test]
    fn create_fills_system_fields_defaults_and_stage_flags() {
        let mut state = State::default();
        let id = state
            .create(
                "opportunity",
                &body(
                    json!({"name": "Deal", "StageName": "Closed Won", "CloseDate": "2026-03-31"}),
                ),
                writer(),
            )
            .expect("created");
        assert!(id.starts_with("006"));
        let record = state.record("Opportunity", &id).expect("stored");
        assert_eq!(
            record["Name"],
            json!("Deal"),
            "field names take the schema's case"
        );
        assert_eq!(record["IsClosed"], json!(true));
        assert_eq!(record["IsWon"], json!(true));
        assert_eq!(record["Probability"], json!(100.0));
        assert_eq!(record["CurrencyIsoCode"], json!("USD"));
        assert_eq!(record["Sync_with_Partner_Center__c"], json!(false));
        assert_eq!(
            record["OwnerId"],
            json!(identities::SALESFORCE_INTEGRATION_USER_ID)
        );
        assert_eq!(record["CreatedDate"], record["LastModifiedDate"]);
    }

    #[test]
    fn write_errors_name_the_fields() {
        let mut state = State::default();
        let err = state
            .create("Opportunity", &body(json!({"Name": "x"})), writer())
            .expect_err("missing fields");
        assert_eq!(err.code, "REQUIRED_FIELD_MISSING");
        assert_eq!(err.fields, vec!["StageName", "CloseDate"]);
        let err = state
            .create(
                "Opportunity",
                &body(json!({"Name": "x", "StageName": "Prospecting", "CloseDate": "2026-01-01", "IsWon": true})),
                writer(),
            )
            .expect_err("read-only");
        assert_eq!(err.code, "INVALID_FIELD_FOR_INSERT_UPDATE");
        let err = state
            .create(
                "Opportunity",
                &body(json!({"Name": "x", "StageName": "Prospecting", "CloseDate": "2026-01-01", "AccountId": "0015g0000000001"})),
                writer(),
            )
            .expect_err("no such account");
        assert_eq!(err.code, "INVALID_CROSS_REFERENCE_KEY");
        let err = state
            .create("User", &body(json!({"Username": "x"})), writer())
            .expect_err("users are not createable");
        assert_eq!(err.code, "INVALID_TYPE_FOR_OPERATION");
    }

    #[test]
    fn update_changes_stage_flags_and_keeps_explicit_probability() {
        let mut state = State::default();
        let id = state
            .create(
                "Opportunity",
                &body(
                    json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2026-03-31"}),
                ),
                writer(),
            )
            .expect("created");
        state
            .update(
                "Opportunity",
                &id,
                &body(json!({"StageName": "Closed Lost", "Probability": 5})),
                Writer {
                    user_id: identities::SALESFORCE_SELLER_USER_ID,
                    now: Utc::now(),
                },
            )
            .expect("updated");
        let record = state.record("Opportunity", &id).expect("stored");
        assert_eq!(
            (
                &record["IsClosed"],
                &record["IsWon"],
                &record["Probability"]
            ),
            (&json!(true), &json!(false), &json!(5.0))
        );
        assert_eq!(
            record["LastModifiedById"],
            json!(identities::SALESFORCE_SELLER_USER_ID)
        );
        assert_eq!(
            record["CreatedById"],
            json!(identities::SALESFORCE_INTEGRATION_USER_ID)
        );
        let err = state
            .update("Opportunity", &id, &body(json!({"Name": null})), writer())
            .expect_err("required");
        assert_eq!(err.code, "REQUIRED_FIELD_MISSING");
    }

    #[test]
    fn built_in_users_can_sign_in_by_username() {
        let state = State::default();
        assert_eq!(
            state.active_user_by_username("INTEGRATION@partner.sandbox"),
            Some(identities::SALESFORCE_INTEGRATION_USER_ID.to_owned())
        );
        assert_eq!(state.active_user_by_username("nobody@x"), None);
    }
}
