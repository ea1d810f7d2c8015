//! Rows as the Web API returns them, and the write rules shared by the Web API and the
//! control API: type checks, `@odata.bind`, system columns, state/status pairs, closed
//! opportunities, alternate-key uniqueness, versions.
//!
//! A row's fields are stored in the Web API read shape (`name`, `_parentaccountid_value`,
//! `_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname`, …) so a seed can be given
//! exactly as a GET returns it; the schema decides what is rendered.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::keys::{self, Key};
use super::schema::{self, Access, Column, Kind, TableDef, ValueError};
use super::webhook::Event;
use super::{ApiError, CURRENCIES, State, currency_id};
use crate::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_BUSINESS_UNIT_ID, DATAVERSE_CLIENT_ID,
    DATAVERSE_SELLER_USER_ID,
};
use crate::records::Row;

const LOGICAL_NAME_ANNOTATION: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";
const CONCURRENCY_MESSAGE: &str =
    "The version of the existing record doesn't match the RowVersion property provided.";
const DUPLICATE_MESSAGE: &str = "A record with matching key values already exists.";

/// `If-Match` of a PATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    /// ETag values as sent (`W/"123"`).
    Tags(Vec<String>),
}

/// A create (POST, `key` = None) or upsert (PATCH).
#[derive(Debug)]
pub struct WriteRequest {
    pub set: String,
    pub key: Option<Key>,
    pub body: Map<String, Value>,
    pub if_match: Option<IfMatch>,
    pub if_none_match_any: bool,
    pub user: String,
    pub now: DateTime<Utc>,
}

/// The outcome of a write.
#[derive(Debug)]
pub struct Written {
    pub def: TableDef,
    pub row: Row,
    pub created: bool,
    pub event: Event,
}

/// Where a key points.
enum Located {
    Found(String),
    Missing {
        /// The id to create with (`set(<guid>)` upserts create that id).
        id: Option<String>,
        /// Alternate-key values from the URL (become column values on create).
        alternate: Vec<(String, Value)>,
        /// 404 to answer when the row must exist.
        not_found: ApiError,
    },
}

/// A write body checked against the schema.
#[derive(Debug, Default)]
struct Converted {
    /// Storage keys → values (lookups as `_x_value` + logical-name annotation).
    values: Map<String, Value>,
    /// Logical column names in request order.
    written: Vec<String>,
    /// Primary key given in the body.
    pk: Option<String>,
}

impl Converted {
    fn set(&mut self, def: &TableDef, column: &str, value: Value) {
        if let Some(storage) = def.storage_key(column) {
            self.values.insert(storage, value);
        }
        if !self.written.iter().any(|c| c == column) {
            self.written.push(column.to_owned());
        }
    }
}

fn as_i64(fields: &Map<String, Value>, key: &str) -> Option<i64> {
    fields.get(key).and_then(Value::as_i64)
}

fn same_value(a: Option<&Value>, b: &Value) -> bool {
    match (a, b) {
        (Some(Value::String(a)), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (Some(a), b) => a == b,
        (None, b) => b.is_null(),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `W/"123"` → `123`; anything else as is.
fn etag_value(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"')
}

/// The ETag of a stored row.
pub fn etag(row: &Row) -> String {
    let version = row
        .fields
        .get("versionnumber")
        .and_then(Value::as_u64)
        .unwrap_or(row.version);
    format!("W/\"{version}\"")
}

/// `true` when `tag` (as sent in `If-Match` / `If-None-Match`) names the row's version.
pub fn etag_matches(row: &Row, tag: &str) -> bool {
    etag_value(tag) == etag_value(&etag(row))
}

/// The row rendered as the Web API returns it: `@odata.etag`, then every readable
/// column (null when unset), or only the `$select`ed ones plus the primary key.
pub fn render(
    def: &TableDef,
    row: &Row,
    select: Option<&[String]>,
    annotations: bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("@odata.etag".into(), json!(etag(row)));
    for column in def.columns.iter().filter(|c| c.readable()) {
        let name = column.read_name();
        if let Some(select) = select
            && column.name != def.pk
            && !select.contains(&name)
        {
            continue;
        }
        let value = row.fields.get(&name).cloned().unwrap_or(Value::Null);
        if annotations && !value.is_null() {
            annotate(column, row, &name, &value, &mut out);
        }
        out.insert(name, value);
    }
    out
}

/// `Prefer: odata.include-annotations="*"` extras: lookup logical names and navigation
/// properties, option-set and Yes/No labels.
fn annotate(column: &Column, row: &Row, name: &str, value: &Value, out: &mut Map<String, Value>) {
    match &column.kind {
        Kind::Lookup { targets } => {
            let target = lookup_target(column, row);
            let navigation = if targets.len() > 1 && column.name != "ownerid" {
                format!("{}_{target}", column.name)
            } else {
                column.name.clone()
            };
            out.insert(format!("{name}{LOGICAL_NAME_ANNOTATION}"), json!(target));
            out.insert(
                format!("{name}@Microsoft.Dynamics.CRM.associatednavigationproperty"),
                json!(navigation),
            );
        }
        Kind::Boolean => {
            let label = if value.as_bool() == Some(true) {
                "Yes"
            } else {
                "No"
            };
            out.insert(
                format!("{name}@OData.Community.Display.V1.FormattedValue"),
                json!(label),
            );
        }
        kind => {
            if let Some(label) = kind.options().and_then(|options| {
                options
                    .iter()
                    .find(|(v, _)| Some(*v) == value.as_i64())
                    .map(|(_, l)| l.clone())
            }) {
                out.insert(
                    format!("{name}@OData.Community.Display.V1.FormattedValue"),
                    json!(label),
                );
            }
        }
    }
}

/// The table a lookup value of `row` points to.
pub fn lookup_target(column: &Column, row: &Row) -> String {
    row.fields
        .get(&format!("{}{LOGICAL_NAME_ANNOTATION}", column.read_name()))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| column.targets().first().cloned())
        .unwrap_or_default()
}

impl State {
    pub(crate) fn def_by_set(&self, set: &str) -> Option<&TableDef> {
        self.schema.iter().find(|t| t.set == set)
    }

    pub(crate) fn def(&self, logical: &str) -> Option<&TableDef> {
        self.schema.iter().find(|t| t.logical == logical)
    }

    /// A table by logical name or entity set name (control API convenience).
    pub(crate) fn def_by_any_name(&self, name: &str) -> Option<&TableDef> {
        self.schema
            .iter()
            .find(|t| t.logical == name || t.set == name)
    }

    pub(crate) fn def_mut(&mut self, logical: &str) -> Option<&mut TableDef> {
        self.schema.iter_mut().find(|t| t.logical == logical)
    }

    pub(crate) fn tables(&self) -> &[TableDef] {
        &self.schema
    }

    pub(crate) fn row(&self, logical: &str, id: &str) -> Option<&Row> {
        self.tables.get(logical)?.get(id)
    }

    pub(crate) fn rows(&self, logical: &str) -> impl Iterator<Item = &Row> {
        self.tables.get(logical).into_iter().flat_map(|t| t.rows())
    }

    /// Drops a column's data from every row (the column was removed from the schema).
    pub(crate) fn drop_column_data(&mut self, logical: &str, storage_key: &str) {
        let Some(table) = self.tables.get_mut(logical) else {
            return;
        };
        let ids: Vec<String> = table
            .rows()
            .filter(|r| r.fields.contains_key(storage_key))
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            if let Some(row) = table.get(&id) {
                let mut fields = row.fields.clone();
                fields.remove(storage_key);
                fields.remove(&format!("{storage_key}{LOGICAL_NAME_ANNOTATION}"));
                // `put` replaces the fields; the internal row version is not the ETag.
                table.put(&id, fields);
            }
        }
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Resolves a URL key of `def`.
    fn locate(&self, def: &TableDef, key: &Key) -> Result<Located, ApiError> {
        let pairs = match key {
            Key::Id(id) => return Ok(self.locate_id(def, id)),
            Key::Named(pairs) => pairs,
        };
        if let [(name, value)] = pairs.as_slice()
            && name == def.pk
        {
            let id = value
                .as_str()
                .and_then(|v| uuid::Uuid::try_parse(v).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Bad Request - Error in query syntax: '{value}' is not a valid value \
                         for the primary key '{}'.",
                        def.pk
                    ))
                })?;
            return Ok(self.locate_id(def, &id.hyphenated().to_string()));
        }
        let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let defined = def.keys.iter().any(|k| {
            let mut columns: Vec<&str> = k.columns.iter().map(String::as_str).collect();
            columns.sort_unstable();
            columns == names
        });
        if !defined {
            let known: Vec<String> = def
                .keys
                .iter()
                .map(|k| format!("({})", k.columns.join(",")))
                .collect();
            return Err(ApiError::bad_request(format!(
                "The key ({}) is not defined for entity '{}'. Defined alternate keys: {}.",
                names.join(","),
                def.logical,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        let found = self.rows(def.logical).find(|row| {
            pairs
                .iter()
                .all(|(name, value)| same_value(row.fields.get(name), value))
        });
        Ok(match found {
            Some(row) => Located::Found(row.id.clone()),
            None => Located::Missing {
                id: None,
                alternate: pairs.clone(),
                not_found: ApiError::new(
                    StatusCode::NOT_FOUND,
                    "",
                    format!(
                        "A record with the specified key values does not exist in {} entity",
                        def.logical
                    ),
                ),
            },
        })
    }

    fn locate_id(&self, def: &TableDef, id: &str) -> Located {
        if self.row(def.logical, id).is_some() {
            Located::Found(id.to_owned())
        } else {
            Located::Missing {
                id: Some(id.to_owned()),
                alternate: Vec::new(),
                not_found: ApiError::does_not_exist(def.logical, id),
            }
        }
    }

    /// The row a URL key points to (GET).
    pub(crate) fn find(&self, def: &TableDef, key: &Key) -> Result<&Row, ApiError> {
        match self.locate(def, key)? {
            Located::Found(id) => self
                .row(def.logical, &id)
                .ok_or_else(|| ApiError::does_not_exist(def.logical, &id)),
            Located::Missing { not_found, .. } => Err(not_found),
        }
    }

    /// Checks a write body against the schema and resolves its `@odata.bind`s.
    fn convert(&self, def: &TableDef, body: Map<String, Value>) -> Result<Converted, ApiError> {
        let mut out = Converted::default();
        for (name, value) in body {
            if name.starts_with('@') {
                continue; // instance annotations such as @odata.type
            }
            if let Some(navigation) = name.strip_suffix("@odata.bind") {
                self.convert_bind(def, navigation, value, &mut out)?;
                continue;
            }
            let Some(column) = def.column(&name) else {
                return Err(ApiError::invalid_property(&name, def));
            };
            match column.access {
                Access::ReadOnly => continue,
                Access::Key => {
                    let id = schema::normalise(def.logical, column, value)
                        .map_err(|e| value_error(def, e))?;
                    out.pk = id.as_str().map(str::to_owned);
                    continue;
                }
                Access::ReadWrite | Access::WriteOnly => {}
            }
            if column.is_lookup() {
                if !value.is_null() {
                    return Err(ApiError::payload(
                        def.set,
                        format!(
                            "Microsoft.OData.ODataException: A 'PrimitiveValue' node with \
                             non-null value was found when trying to read the value of the \
                             navigation property '{name}'; use '{name}@odata.bind'."
                        ),
                    ));
                }
                out.set(def, &name, Value::Null);
                continue;
            }
            let value =
                schema::normalise(def.logical, column, value).map_err(|e| value_error(def, e))?;
            out.set(def, &name, value);
        }
        Ok(out)
    }

    fn convert_bind(
        &self,
        def: &TableDef,
        navigation: &str,
        value: Value,
        out: &mut Converted,
    ) -> Result<(), ApiError> {
        // `parentaccountid` (single target, and the Owner column), or
        // `customerid_account` / `customerid_contact` (polymorphic).
        let resolved = def.columns.iter().find_map(|c| {
            let targets = c.targets();
            if targets.is_empty() {
                return None;
            }
            if c.name == navigation && (targets.len() == 1 || c.name == "ownerid") {
                return Some((c, None));
            }
            let target = navigation
                .strip_prefix(c.name.as_str())?
                .strip_prefix('_')?;
            targets
                .iter()
                .any(|t| t == target)
                .then(|| (c, Some(target.to_owned())))
        });
        let Some((column, fixed_target)) = resolved else {
            return Err(ApiError::payload(
                def.set,
                format!(
                    "Microsoft.OData.ODataException: An undeclared property '{navigation}' \
                     which only has property annotations in the payload but no property value \
                     was found in the payload. In OData, only declared navigation properties \
                     and declared named streams can be represented as properties without values."
                ),
            ));
        };
        if column.access == Access::ReadOnly {
            return Ok(());
        }
        let storage = column.read_name();
        let annotation = format!("{storage}{LOGICAL_NAME_ANNOTATION}");
        let column_name = column.name.clone();
        let Some(path) = value.as_str() else {
            if value.is_null() {
                out.values.insert(annotation, Value::Null);
                out.set(def, &column_name, Value::Null);
                return Ok(());
            }
            return Err(ApiError::payload(
                def.set,
                format!("the value of '{navigation}@odata.bind' must be a string URI"),
            ));
        };
        let resource = keys::parse_bind(path).map_err(ApiError::bad_request)?;
        let target = self
            .def_by_set(&resource.name)
            .ok_or_else(|| ApiError::segment(&resource.name))?;
        let allowed = match &fixed_target {
            Some(t) => target.logical == t,
            None => column.targets().iter().any(|t| t == target.logical),
        };
        if !allowed {
            return Err(ApiError::bad_request(format!(
                "The entity set '{}' is not a valid target of '{navigation}' on '{}' (expected \
                 {}).",
                resource.name,
                def.logical,
                column.targets().join(" or ")
            )));
        }
        let key = resource.key.ok_or_else(|| ApiError::bad_request(path))?;
        let id = self.find(target, &key)?.id.clone();
        out.values.insert(annotation, json!(target.logical));
        out.set(def, &column_name, json!(id));
        Ok(())
    }

    /// Default and check `statecode`/`statuscode`.
    fn apply_state_rules(
        &self,
        def: &TableDef,
        id: &str,
        current: Option<&Map<String, Value>>,
        conv: &mut Converted,
    ) -> Result<(), ApiError> {
        if def.states.is_empty() || def.column("statecode").is_none() {
            return Ok(());
        }
        for column in ["statecode", "statuscode"] {
            if conv.values.get(column).is_some_and(Value::is_null) {
                return Err(ApiError::bad_request(format!(
                    "A validation error occurred. '{column}' of '{}' can't be null.",
                    def.logical
                )));
            }
        }
        let given_state = as_i64(&conv.values, "statecode");
        let current_state = current.and_then(|f| as_i64(f, "statecode")).unwrap_or(0);
        let state = given_state.unwrap_or(current_state);
        let Some(state_def) = def.state(state) else {
            return Err(ApiError::bad_request(format!(
                "A validation error occurred. The value {state} of 'statecode' on record of \
                 type '{}' is outside the valid range.",
                def.logical
            )));
        };
        match as_i64(&conv.values, "statuscode") {
            Some(status) if !state_def.statuses.contains(&status) => {
                return Err(ApiError::bad_request(format!(
                    "{status} is not a valid status code for state code {}State.{} on {} with \
                     Id {id}.",
                    capitalised(def.logical),
                    state_def.label,
                    def.logical
                )));
            }
            Some(_) => {}
            None if given_state.is_some() || current.is_none() => {
                conv.set(def, "statuscode", json!(state_def.default_status));
            }
            None => {}
        }
        if current.is_none() && given_state.is_none() {
            conv.set(def, "statecode", json!(state));
        }
        Ok(())
    }

    /// 412 when another row already holds these alternate-key values.
    fn check_unique(
        &self,
        def: &TableDef,
        fields: &Map<String, Value>,
        id: &str,
        status: StatusCode,
    ) -> Result<(), ApiError> {
        for key in &def.keys {
            let values: Vec<&Value> = key
                .columns
                .iter()
                .map(|c| fields.get(c).unwrap_or(&Value::Null))
                .collect();
            if values.iter().any(|v| v.is_null()) {
                continue;
            }
            let clash = self.rows(def.logical).any(|row| {
                !row.id.eq_ignore_ascii_case(id)
                    && key
                        .columns
                        .iter()
                        .zip(&values)
                        .all(|(c, v)| same_value(row.fields.get(c), v))
            });
            if clash {
                let shown: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                return Err(ApiError::new(
                    status,
                    "0x80060892",
                    format!(
                        "A record that has the attribute values {} already exists. The entity \
                         key {} requires that this set of attributes contains unique values. \
                         Select unique values and try again.",
                        shown.join(", "),
                        key.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `fullname` = firstname + lastname on contacts.
    fn compute_fullname(def: &TableDef, fields: &mut Map<String, Value>) {
        if def.logical != "contact" || def.column("fullname").is_none() {
            return;
        }
        let part = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("").trim();
        let full = [part("firstname"), part("lastname")]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        fields.insert("fullname".into(), json!(full));
    }

    /// POST (create) or PATCH (upsert). A create may nest new rows under a collection-valued
    /// navigation property ([`NESTED`]): a deep insert, all rows or none.
    pub(crate) fn write(&mut self, mut request: WriteRequest) -> Result<Written, ApiError> {
        let nested = take_nested(&request.set, &mut request.body)?;
        if nested.is_empty() {
            return self.write_one(request);
        }
        if request.key.is_some() {
            return Err(ApiError::bad_request(
                "Related rows can be created with their parent (deep insert) only by a POST to \
                 the parent's entity set, not by an update or upsert.",
            ));
        }
        let (tables, version) = (self.tables.clone(), self.version);
        let written = self.write_nested(request, nested);
        if written.is_err() {
            (self.tables, self.version) = (tables, version);
        }
        written
    }

    fn write_nested(
        &mut self,
        request: WriteRequest,
        nested: Vec<NestedRows>,
    ) -> Result<Written, ApiError> {
        let (user, now) = (request.user.clone(), request.now);
        let parent = self.write_one(request)?;
        for (relation, rows) in nested {
            for mut body in rows {
                body.insert(
                    format!("{}@odata.bind", relation.bind),
                    json!(format!("/{}({})", parent.def.set, parent.row.id)),
                );
                self.write_one(WriteRequest {
                    set: relation.child_set.to_owned(),
                    key: None,
                    body,
                    if_match: None,
                    if_none_match_any: false,
                    user: user.clone(),
                    now,
                })?;
            }
        }
        Ok(parent)
    }

    fn write_one(&mut self, request: WriteRequest) -> Result<Written, ApiError> {
        let def = self
            .def_by_set(&request.set)
            .cloned()
            .ok_or_else(|| ApiError::segment(&request.set))?;
        let located = match &request.key {
            Some(key) => Some(self.locate(&def, key)?),
            None => None,
        };
        let conv = self.convert(&def, request.body)?;
        if request.key.is_none()
            && let Some(pk) = &conv.pk
            && self.row(def.logical, pk).is_some()
        {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "0x80040237",
                "Cannot insert duplicate key.",
            ));
        }
        match located {
            Some(Located::Found(id)) => {
                let row = self
                    .row(def.logical, &id)
                    .ok_or_else(|| ApiError::does_not_exist(def.logical, &id))?;
                if let Some(IfMatch::Tags(tags)) = &request.if_match
                    && !tags.iter().any(|t| etag_matches(row, t))
                {
                    return Err(ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        "",
                        CONCURRENCY_MESSAGE,
                    ));
                }
                if request.if_none_match_any {
                    return Err(ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        "",
                        DUPLICATE_MESSAGE,
                    ));
                }
                let url_keys = match &request.key {
                    Some(Key::Named(pairs)) => pairs.iter().map(|(n, _)| n.clone()).collect(),
                    _ => Vec::new(),
                };
                self.update(&def, &id, conv, &url_keys, &request.user, request.now)
            }
            Some(Located::Missing {
                id,
                alternate,
                not_found,
            }) => {
                if request.if_match.is_some() {
                    return Err(not_found);
                }
                self.create(&def, id, alternate, conv, &request.user, request.now)
            }
            None => self.create(&def, None, Vec::new(), conv, &request.user, request.now),
        }
    }

    fn update(
        &mut self,
        def: &TableDef,
        id: &str,
        conv: Converted,
        url_keys: &[String],
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<Written, ApiError> {
        self.update_row(def, id, conv, url_keys, user, now, false)
    }

    /// Closes an open opportunity, as the `WinOpportunity` / `LoseOpportunity` actions do:
    /// `statecode` won (1) or lost (2) with `status` (else the state's default status reason).
    /// An opportunity that is not open is refused (400).
    pub(crate) fn close_opportunity(
        &mut self,
        id: &str,
        won: bool,
        status: Option<i64>,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<Written, ApiError> {
        let def = self
            .def("opportunity")
            .cloned()
            .ok_or_else(|| ApiError::segment("opportunities"))?;
        let current = self
            .row("opportunity", id)
            .ok_or_else(|| ApiError::does_not_exist("opportunity", id))?;
        if as_i64(&current.fields, "statecode").unwrap_or(0) != 0 {
            return Err(ApiError::bad_request(
                "The opportunity is already closed: reopen it before closing it again.",
            ));
        }
        let mut conv = Converted::default();
        conv.set(&def, "statecode", json!(if won { 1 } else { 2 }));
        if let Some(status) = status {
            conv.set(&def, "statuscode", json!(status));
        }
        let mut written = self.update_row(&def, id, conv, &[], user, now, true)?;
        let status = as_i64(&written.row.fields, "statuscode").unwrap_or(-1);
        written.event = written.event.into_close(won, status);
        Ok(written)
    }

    #[allow(clippy::too_many_arguments)]
    fn update_row(
        &mut self,
        def: &TableDef,
        id: &str,
        mut conv: Converted,
        url_keys: &[String],
        user: &str,
        now: DateTime<Utc>,
        closing: bool,
    ) -> Result<Written, ApiError> {
        // Key values repeated in the body are removed on update (documented).
        for name in url_keys {
            conv.values.remove(name);
            conv.written.retain(|c| c != name);
        }
        let current = self
            .row(def.logical, id)
            .cloned()
            .ok_or_else(|| ApiError::does_not_exist(def.logical, id))?;
        if def.logical == "opportunity" {
            let state = as_i64(&current.fields, "statecode").unwrap_or(0);
            let reopening = as_i64(&conv.values, "statecode") == Some(0);
            let only_state = conv
                .written
                .iter()
                .all(|c| c == "statecode" || c == "statuscode");
            if state != 0 && !reopening && !only_state {
                let label = def.state(state).map_or("Closed", |s| s.label);
                return Err(ApiError::bad_request(format!(
                    "The opportunity is closed (statecode {state} {label}) and can't be \
                     updated. Reopen it first: set statecode 0 (Open) with statuscode 1 (In \
                     Progress) or 2 (On Hold)."
                )));
            }
        }
        self.apply_state_rules(def, id, Some(&current.fields), &mut conv)?;
        // Dataverse closes an opportunity only through its actions; an update that sets the won
        // or lost state is refused with this message.
        if def.logical == "opportunity" && !closing {
            let open = as_i64(&current.fields, "statecode").unwrap_or(0) == 0;
            if let Some(state) = as_i64(&conv.values, "statecode").filter(|s| *s != 0 && open) {
                let (label, action) = if state == 1 {
                    ("Won", "WinOpportunityRequest")
                } else {
                    ("Lost", "LoseOpportunityRequest")
                };
                return Err(ApiError::bad_request(format!(
                    "This message can not be used to set the state of opportunity to {label}. \
                     In order to set state of opportunity to {label} use the {action} message \
                     instead."
                )));
            }
        }
        let mut merged = current.fields.clone();
        merged.extend(conv.values.clone());
        self.check_unique(def, &merged, id, StatusCode::PRECONDITION_FAILED)?;
        if conv
            .written
            .iter()
            .any(|c| c == "firstname" || c == "lastname")
        {
            Self::compute_fullname(def, &mut merged);
            if let Some(full) = merged.get("fullname").cloned() {
                conv.values.insert("fullname".into(), full);
            }
        }
        let version = self.next_version();
        let mut changes = conv.values;
        changes.insert("modifiedon".into(), json!(schema::format_instant(now)));
        changes.insert("_modifiedby_value".into(), json!(user));
        changes.insert("_modifiedonbehalfby_value".into(), Value::Null);
        changes.insert("versionnumber".into(), json!(version));
        let row = self
            .tables
            .entry(def.logical)
            .or_default()
            .update(id, changes)
            .cloned()
            .ok_or_else(|| ApiError::does_not_exist(def.logical, id))?;
        let mut target = vec![def.pk.to_owned()];
        target.extend(conv.written.iter().cloned());
        target.extend(["modifiedon", "modifiedby", "modifiedonbehalfby"].map(String::from));
        let event = Event::new("Update", def, &row, user, now, target, conv.written)
            .with_pre_image(current.fields);
        Ok(Written {
            def: def.clone(),
            row,
            created: false,
            event,
        })
    }

    fn create(
        &mut self,
        def: &TableDef,
        id: Option<String>,
        alternate: Vec<(String, Value)>,
        mut conv: Converted,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<Written, ApiError> {
        // The URL's id wins over a primary key in the body.
        let id = id
            .or_else(|| conv.pk.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().to_string());
        // Body values win over key values from the URL (documented).
        for (name, value) in alternate {
            if conv.written.contains(&name) {
                continue;
            }
            let column = def
                .column(&name)
                .ok_or_else(|| ApiError::invalid_property(&name, def))?;
            let value =
                schema::normalise(def.logical, column, value).map_err(|e| value_error(def, e))?;
            conv.set(def, &name, value);
        }
        self.apply_state_rules(def, &id, None, &mut conv)?;
        let mut system = Vec::new();
        if def.user_owned {
            if !conv.written.iter().any(|c| c == "ownerid") {
                conv.values.insert(
                    format!("_ownerid_value{LOGICAL_NAME_ANNOTATION}"),
                    json!("systemuser"),
                );
                conv.set(def, "ownerid", json!(user));
            }
            conv.values.insert(
                "_owningbusinessunit_value".into(),
                json!(DATAVERSE_BUSINESS_UNIT_ID),
            );
            system.push("owningbusinessunit".to_owned());
            if def.logical == "opportunity"
                && !conv.written.iter().any(|c| c == "transactioncurrencyid")
                && let Some(usd) = currency_id("USD")
            {
                conv.set(def, "transactioncurrencyid", json!(usd));
                conv.values.insert(
                    format!("_transactioncurrencyid_value{LOGICAL_NAME_ANNOTATION}"),
                    json!("transactioncurrency"),
                );
            }
        }
        let mut fields = conv.values;
        Self::compute_fullname(def, &mut fields);
        self.check_unique(def, &fields, &id, StatusCode::PRECONDITION_FAILED)?;
        let version = self.next_version();
        let at = json!(schema::format_instant(now));
        fields.insert(def.pk.into(), json!(id));
        fields.insert("createdon".into(), at.clone());
        fields.insert("modifiedon".into(), at);
        fields.insert("_createdby_value".into(), json!(user));
        fields.insert("_modifiedby_value".into(), json!(user));
        fields.insert("versionnumber".into(), json!(version));
        let (row, _) = self.tables.entry(def.logical).or_default().put(&id, fields);
        let row = row.clone();
        let mut target = vec![def.pk.to_owned()];
        target.extend(conv.written.iter().cloned());
        target.extend(system);
        if def.logical == "contact" {
            target.push("fullname".into());
        }
        target.extend(["createdon", "createdby", "modifiedon", "modifiedby"].map(String::from));
        let event = Event::new("Create", def, &row, user, now, target, conv.written);
        Ok(Written {
            def: def.clone(),
            row,
            created: true,
            event,
        })
    }

    /// `PUT /_sandbox/dataverse/{set}/{id}`: stores `body` (Web API read shape) as the
    /// whole row, with server-managed columns filled in when absent.
    pub(crate) fn seed(
        &mut self,
        set: &str,
        id: &str,
        body: Map<String, Value>,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<Written, ApiError> {
        let def = self
            .def_by_set(set)
            .cloned()
            .ok_or_else(|| ApiError::segment(set))?;
        let id = uuid::Uuid::try_parse(id)
            .map_err(|_| ApiError::bad_request(format!("'{id}' is not a GUID.")))?
            .hyphenated()
            .to_string();
        let previous = self.row(def.logical, &id).cloned();
        let mut fields = Map::new();
        for (name, value) in body {
            if let Some((base, annotation)) = name.split_once('@') {
                let keep = annotation == &LOGICAL_NAME_ANNOTATION[1..]
                    && def.column_by_read_name(base).is_some_and(Column::is_lookup);
                if keep {
                    fields.insert(name, value);
                }
                continue;
            }
            let column = def
                .column_by_read_name(&name)
                .or_else(|| def.column(&name).filter(|c| c.access == Access::WriteOnly))
                .ok_or_else(|| ApiError::invalid_property(&name, &def))?;
            if column.name == "versionnumber" {
                continue;
            }
            let value =
                schema::normalise(def.logical, column, value).map_err(|e| value_error(&def, e))?;
            if column.access == Access::Key && value.as_str() != Some(id.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "The body's {} {value} differs from the id in the URL {id}.",
                    def.pk
                )));
            }
            fields.insert(name, value);
        }
        let keep = |key: &str, fields: &mut Map<String, Value>, default: Value| {
            if !fields.contains_key(key) {
                fields.insert(key.to_owned(), default);
            }
        };
        let prev = |key: &str| previous.as_ref().and_then(|p| p.fields.get(key).cloned());
        let at = json!(schema::format_instant(now));
        keep(
            "createdon",
            &mut fields,
            prev("createdon").unwrap_or(at.clone()),
        );
        keep("modifiedon", &mut fields, at);
        keep(
            "_createdby_value",
            &mut fields,
            prev("_createdby_value").unwrap_or(json!(user)),
        );
        keep("_modifiedby_value", &mut fields, json!(user));
        if def.user_owned {
            keep(
                "_ownerid_value",
                &mut fields,
                prev("_ownerid_value").unwrap_or(json!(user)),
            );
            keep(
                "_owningbusinessunit_value",
                &mut fields,
                json!(DATAVERSE_BUSINESS_UNIT_ID),
            );
            if def.logical == "opportunity" {
                keep(
                    "_transactioncurrencyid_value",
                    &mut fields,
                    json!(currency_id("USD")),
                );
            }
        }
        if !def.states.is_empty() && def.column("statecode").is_some() {
            let state = fields.get("statecode").and_then(Value::as_i64).unwrap_or(0);
            let state_def = def.state(state).cloned().ok_or_else(|| {
                ApiError::bad_request(format!("statecode {state} is not defined"))
            })?;
            fields.insert("statecode".into(), json!(state));
            let status = fields
                .get("statuscode")
                .and_then(Value::as_i64)
                .unwrap_or(state_def.default_status);
            if !state_def.statuses.contains(&status) {
                return Err(ApiError::bad_request(format!(
                    "{status} is not a valid status code for state code {}State.{} on {} with \
                     Id {id}.",
                    capitalised(def.logical),
                    state_def.label,
                    def.logical
                )));
            }
            fields.insert("statuscode".into(), json!(status));
        }
        if !fields.contains_key("fullname") {
            Self::compute_fullname(&def, &mut fields);
        }
        fields.insert(def.pk.into(), json!(id));
        self.check_unique(&def, &fields, &id, StatusCode::CONFLICT)?;
        fields.insert("versionnumber".into(), json!(self.next_version()));
        let (row, created) = self.tables.entry(def.logical).or_default().put(&id, fields);
        let row = row.clone();
        // Target: every column of a new row; the changed columns of a replaced one (what a
        // form save sends) plus the system columns the platform adds.
        let changed: Vec<String> = def
            .columns
            .iter()
            .filter(|c| c.name != "versionnumber" && c.name != def.pk)
            .filter(|c| {
                let key = c.read_name();
                let now = row.fields.get(&key).unwrap_or(&Value::Null);
                match &previous {
                    None => !now.is_null(),
                    Some(p) => p.fields.get(&key).unwrap_or(&Value::Null) != now,
                }
            })
            .map(|c| c.name.clone())
            .collect();
        let mut target = vec![def.pk.to_owned()];
        target.extend(changed.iter().cloned());
        for system in ["modifiedon", "modifiedby", "modifiedonbehalfby"] {
            if !target.iter().any(|t| t == system) {
                target.push(system.to_owned());
            }
        }
        let message = if created { "Create" } else { "Update" };
        let mut event = Event::new(message, &def, &row, user, now, target, changed);
        if let Some(previous) = previous {
            event = event.with_pre_image(previous.fields);
        }
        Ok(Written {
            def,
            row,
            created,
            event,
        })
    }

    /// Currencies and system users, present from the start and after every reset.
    pub(super) fn seed_reference_data(&mut self) {
        let now = Utc::now();
        for (iso, id, name, symbol) in CURRENCIES {
            let body = json!({
                "isocurrencycode": iso,
                "currencyname": name,
                "currencysymbol": symbol,
                "exchangerate": 1.0,
                "currencyprecision": if *iso == "JPY" { 0 } else { 2 },
            });
            self.seed_silently("transactioncurrencies", id, body, now);
        }
        let users = [
            json!({
                "systemuserid": DATAVERSE_APP_USER_ID,
                "fullname": "# cosell-sync",
                "firstname": "#",
                "lastname": "cosell-sync",
                "domainname": "cosell-sync@sandbox.onmicrosoft.com",
                "applicationid": DATAVERSE_CLIENT_ID,
                "accessmode": 4,
                "isdisabled": false,
                "_businessunitid_value": DATAVERSE_BUSINESS_UNIT_ID,
            }),
            json!({
                "systemuserid": DATAVERSE_SELLER_USER_ID,
                "fullname": "Sam Seller",
                "firstname": "Sam",
                "lastname": "Seller",
                "domainname": "sam.seller@partner.sandbox",
                "internalemailaddress": "sam.seller@partner.sandbox",
                "accessmode": 0,
                "isdisabled": false,
                "_businessunitid_value": DATAVERSE_BUSINESS_UNIT_ID,
            }),
        ];
        for user in users {
            let id = user["systemuserid"].as_str().unwrap_or_default().to_owned();
            self.seed_silently("systemusers", &id, user, now);
        }
    }

    fn seed_silently(&mut self, set: &str, id: &str, body: Value, now: DateTime<Utc>) {
        if let Value::Object(body) = body
            && let Err(error) = self.seed(set, id, body, DATAVERSE_APP_USER_ID, now)
        {
            tracing::error!(?error, set, id, "reference data rejected");
        }
    }
}

fn value_error(def: &TableDef, error: ValueError) -> ApiError {
    match error {
        ValueError::Conversion(message) => ApiError::payload(
            def.set,
            format!("Microsoft.OData.ODataException: {message}"),
        ),
        ValueError::Validation(message) => ApiError::new(StatusCode::BAD_REQUEST, "", message),
    }
}

/// A collection-valued navigation property a create may nest new rows under (deep insert):
/// each nested row is created with its lookup bound to the new parent.
#[derive(Debug)]
pub(crate) struct Nested {
    parent_set: &'static str,
    property: &'static str,
    child_set: &'static str,
    /// The child's single-valued navigation property back to the parent.
    bind: &'static str,
}

/// The rows a create nests under one of its [`NESTED`] properties.
type NestedRows = (&'static Nested, Vec<Map<String, Value>>);

/// The deep inserts the sandbox implements: an account with its contacts
/// (`contact_customer_accounts`, the contacts whose `parentcustomerid` is the account).
pub(crate) const NESTED: [Nested; 1] = [Nested {
    parent_set: "accounts",
    property: "contact_customer_accounts",
    child_set: "contacts",
    bind: "parentcustomerid_account",
}];

/// Removes the nested rows from a body: each known collection-valued navigation property must
/// be an array of objects.
fn take_nested(set: &str, body: &mut Map<String, Value>) -> Result<Vec<NestedRows>, ApiError> {
    let mut nested = Vec::new();
    for relation in NESTED.iter().filter(|relation| relation.parent_set == set) {
        let Some(value) = body.remove(relation.property) else {
            continue;
        };
        let rows = match value {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(row) => Ok(row),
                    _ => Err(()),
                })
                .collect::<Result<Vec<_>, ()>>()
                .ok(),
            _ => None,
        };
        let rows = rows.ok_or_else(|| {
            ApiError::payload(
                set,
                format!(
                    "Microsoft.OData.ODataException: The collection-valued navigation property \
                     '{}' expects an array of resources (JSON objects).",
                    relation.property
                ),
            )
        })?;
        nested.push((relation, rows));
    }
    Ok(nested)
}
