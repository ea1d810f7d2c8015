//! Dataverse (Dynamics 365) wire formats.
//!
//! - [`RemoteExecutionContext`]: the JSON body of a webhook POST (the serialized
//!   `Microsoft.Xrm.Sdk.RemoteExecutionContext`), with its attribute lists decoded into the
//!   shape the Web API returns for the same columns ([`decode_attributes`]).
//! - [`WebhookHeaders`]: the documented `x-ms-*` request headers.
//! - [`WebApiError`]: the Web API error body, parsed leniently (the documented samples are not
//!   always valid JSON).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{RAW_TEXT_LIMIT, scan_json_string_member, strip_bom, truncate_chars};

/// Above this HTTP payload size Dataverse strips `ParentContext`, `InputParameters`,
/// `PreEntityImages` and `PostEntityImages` and sends `x-ms-dynamics-msg-size-exceeded`.
pub const WEBHOOK_PAYLOAD_LIMIT_BYTES: usize = 256 * 1024;

/// Web API annotation naming the table a lookup points to (`_x_value@…lookuplogicalname`).
pub const LOOKUP_LOGICAL_NAME_ANNOTATION: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";

/// Web API annotation carrying a column's display text (`x@…FormattedValue`).
pub const FORMATTED_VALUE_ANNOTATION: &str = "@OData.Community.Display.V1.FormattedValue";

/// `Mode` value of an asynchronous step (0 = synchronous).
pub const MODE_ASYNCHRONOUS: i32 = 1;

/// The messages a seller's close raises (`WinOpportunity` / `LoseOpportunity`).
pub const CLOSE_MESSAGES: [&str; 2] = ["Win", "Lose"];

/// The input parameter of a close message holding the `opportunityclose` activity.
const OPPORTUNITY_CLOSE: &str = "OpportunityClose";

/// The webhook body: a JSON-serialized `RemoteExecutionContext`.
///
/// Only `MessageName`, `PrimaryEntityName` and `PrimaryEntityId` are required; every other
/// member may be missing or `null`, an unparseable optional GUID or date reads as `None`, and
/// unknown members are ignored. A `ParentContext` that cannot be read is dropped (`None`)
/// rather than failing the whole body.
///
/// The parameter collections (`InputParameters`, images, …) keep their raw values; use
/// [`target`](Self::target), [`post_image`](Self::post_image) and
/// [`merged_attributes`](Self::merged_attributes) for the decoded columns. `None` for a
/// collection means the member was absent (the 256 KB stripping, see
/// [`is_complete`](Self::is_complete)); `Some(vec![])` means it was sent empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RemoteExecutionContext {
    /// The event, e.g. `Create`, `Update`, `Delete`.
    pub message_name: String,
    /// Logical name of the table, e.g. `opportunity`.
    pub primary_entity_name: String,
    /// Id of the row the event is about.
    pub primary_entity_id: Uuid,
    /// `SecondaryEntityName` (`"none"` in most events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_entity_name: Option<String>,
    /// The user the step runs as.
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<Uuid>,
    /// The user who started the operation (compare with the connector's application user to
    /// suppress echoes of its own writes).
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub initiating_user_id: Option<Uuid>,
    /// The Dataverse organization (environment) id.
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub organization_id: Option<Uuid>,
    /// The organization's unique name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    /// Business unit of the user.
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub business_unit_id: Option<Uuid>,
    /// Correlation id (also used by the platform for loop detection).
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<Uuid>,
    /// Id of the async operation (system job) for asynchronous steps.
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub operation_id: Option<Uuid>,
    /// Request id (`null` in the documented sample).
    #[serde(
        default,
        deserialize_with = "lenient_uuid",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_id: Option<Uuid>,
    /// Depth of the call chain (1 = directly from a client request).
    #[serde(
        default,
        deserialize_with = "lenient_i32",
        skip_serializing_if = "Option::is_none"
    )]
    pub depth: Option<i32>,
    /// 0 = synchronous, 1 = asynchronous.
    #[serde(
        default,
        deserialize_with = "lenient_i32",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<i32>,
    /// Pipeline stage: 10 pre-validation, 20 pre-operation, 30 main operation, 40 post-operation.
    #[serde(
        default,
        deserialize_with = "lenient_i32",
        skip_serializing_if = "Option::is_none"
    )]
    pub stage: Option<i32>,
    /// When the operation was created (the WCF `/Date(ms±hhmm)/` form on the wire).
    #[serde(
        default,
        deserialize_with = "lenient_wcf_date",
        serialize_with = "serialize_wcf_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub operation_created_on: Option<DateTime<Utc>>,
    /// The registered step (`sdkmessageprocessingstep`) that sent the webhook.
    #[serde(
        default,
        deserialize_with = "lenient_entity_reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub owning_extension: Option<EntityReference>,
    /// `InputParameters` (`Target` holds the entity for Create/Update).
    #[serde(
        default,
        deserialize_with = "lenient_parameters",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_parameters: Option<Vec<KeyValuePair>>,
    /// `OutputParameters` (a Create usually carries the new `id`).
    #[serde(
        default,
        deserialize_with = "lenient_parameters",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_parameters: Option<Vec<KeyValuePair>>,
    /// Pre-images by alias.
    #[serde(
        default,
        deserialize_with = "lenient_parameters",
        skip_serializing_if = "Option::is_none"
    )]
    pub pre_entity_images: Option<Vec<KeyValuePair>>,
    /// Post-images by alias.
    #[serde(
        default,
        deserialize_with = "lenient_parameters",
        skip_serializing_if = "Option::is_none"
    )]
    pub post_entity_images: Option<Vec<KeyValuePair>>,
    /// Shared variables of the pipeline.
    #[serde(
        default,
        deserialize_with = "lenient_parameters",
        skip_serializing_if = "Option::is_none"
    )]
    pub shared_variables: Option<Vec<KeyValuePair>>,
    /// The context of the operation that triggered this one, if any.
    #[serde(
        default,
        deserialize_with = "lenient_parent",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_context: Option<Box<RemoteExecutionContext>>,
}

/// Why a webhook body could not be read as a [`RemoteExecutionContext`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookBodyError {
    /// Not JSON, or a required member (`MessageName`, `PrimaryEntityName`,
    /// `PrimaryEntityId`) is missing or unusable.
    #[error("malformed Dataverse webhook body: {0}")]
    Malformed(String),
}

impl RemoteExecutionContext {
    /// Parses a webhook body (a leading byte-order mark is tolerated).
    pub fn parse(body: &str) -> Result<Self, WebhookBodyError> {
        serde_json::from_str(strip_bom(body))
            .map_err(|error| WebhookBodyError::Malformed(error.to_string()))
    }

    /// Parses a webhook body given as bytes (must be UTF-8).
    pub fn parse_bytes(body: &[u8]) -> Result<Self, WebhookBodyError> {
        let text = std::str::from_utf8(body)
            .map_err(|error| WebhookBodyError::Malformed(format!("not UTF-8: {error}")))?;
        Self::parse(text)
    }

    /// `false` when the body lacks `InputParameters` or `PostEntityImages` (Dataverse removes
    /// them when the payload exceeds 256 KB, and some messages never carry them): the caller
    /// must then re-read the row `PrimaryEntityName`/`PrimaryEntityId` through the Web API.
    ///
    /// `true` only says nothing was stripped; an Update's target still holds only the changed
    /// columns, so without a registered post image [`merged_attributes`](Self::merged_attributes)
    /// is partial.
    pub fn is_complete(&self) -> bool {
        self.input_parameters.is_some() && self.post_entity_images.is_some()
    }

    /// [`is_complete`](Self::is_complete), also honouring the `x-ms-dynamics-msg-size-exceeded`
    /// header.
    pub fn is_complete_given(&self, headers: &WebhookHeaders) -> bool {
        !headers.msg_size_exceeded && self.is_complete()
    }

    /// What names this change of the row, for its idempotency key
    /// ([`dataverse_change_key`](cosell_domain::sync::dataverse_change_key)); `body` is the raw webhook
    /// body. Never empty.
    ///
    /// 1. The `OperationId` when it is not nil: the asynchronous system job, which Dataverse
    ///    keeps when it retries the delivery.
    /// 2. A step registered synchronously sends the nil GUID (and a body may lack the member):
    ///    keyed on that, every change of the row would share one key and all but the first
    ///    would be skipped as duplicates. The row version then names the change, `v<version>`:
    ///    the `versionnumber` column or `RowVersion` of the post image, else of the target.
    ///    Dataverse gives every write of a row a new version, and a redelivery of one change
    ///    carries the same one.
    /// 3. Without a version, `sha256-<32 hex digits>` of the body: two changes differ in their
    ///    body, and a delivery repeated as it was hashes the same. (A redelivery that differs in
    ///    some byte is then taken as a change of its own: the record is synced once more, which
    ///    is harmless, where a skipped change would be lost.)
    ///
    /// Not used: `RequestId`, which names the request rather than the change (`null` in the
    /// documented sample, and one request can write the row more than once through its
    /// plug-ins), and `modifiedon` alone, which two quick changes can share.
    pub fn change_id(&self, body: &[u8]) -> String {
        if let Some(operation) = self.operation_id.filter(|id| !id.is_nil()) {
            return operation.to_string();
        }
        let images = [self.post_image_entity(), self.target_entity()];
        if let Some(version) = images.iter().flatten().find_map(WireEntity::version) {
            return format!("v{version}");
        }
        let digest = Sha256::digest(body);
        format!("sha256-{}", hex::encode(&digest[..16]))
    }

    /// `true` for an asynchronous step (`Mode` = 1).
    pub fn is_asynchronous(&self) -> bool {
        self.mode == Some(MODE_ASYNCHRONOUS)
    }

    /// The raw value of an `InputParameters` entry.
    pub fn input_parameter(&self, key: &str) -> Option<&Value> {
        find_parameter(self.input_parameters.as_deref(), key)
    }

    /// The raw value of an `OutputParameters` entry (e.g. `id` after a Create).
    pub fn output_parameter(&self, key: &str) -> Option<&Value> {
        find_parameter(self.output_parameters.as_deref(), key)
    }

    /// `InputParameters["Target"]` read as an entity; `None` when absent or when the target is
    /// not an entity (a Delete's target is an `EntityReference`).
    pub fn target_entity(&self) -> Option<WireEntity> {
        self.input_parameter("Target")
            .and_then(WireEntity::from_value)
    }

    /// The target's attributes decoded the way the Web API returns them
    /// (see [`decode_attributes`]).
    pub fn target(&self) -> Option<Map<String, Value>> {
        self.input_parameter("Target").and_then(entity_columns)
    }

    /// The first post-image, whatever its alias.
    pub fn post_image_entity(&self) -> Option<WireEntity> {
        first_image(self.post_entity_images.as_deref())
    }

    /// The first post-image's attributes, decoded (see [`decode_attributes`]).
    pub fn post_image(&self) -> Option<Map<String, Value>> {
        first_image_columns(self.post_entity_images.as_deref())
    }

    /// The first pre-image's attributes, decoded (see [`decode_attributes`]).
    pub fn pre_image(&self) -> Option<Map<String, Value>> {
        first_image_columns(self.pre_entity_images.as_deref())
    }

    /// The opportunity a `Win` or `Lose` message closed: the `opportunityid` reference of its
    /// `OpportunityClose` input parameter (the documented way to find it), else a non-nil
    /// `PrimaryEntityId`. How the webhook fills `PrimaryEntityId` for these messages is not
    /// documented (plug-in authors report it empty), so the input parameter is read first.
    pub fn closed_opportunity_id(&self) -> Option<Uuid> {
        self.input_parameter(OPPORTUNITY_CLOSE)
            .and_then(entity_object)
            .and_then(|close| {
                pairs_in(close.get("Attributes"))
                    .into_iter()
                    .find(|(column, _)| column.eq_ignore_ascii_case("opportunityid"))
            })
            .and_then(|(_, value)| EntityReference::from_value(value))
            .and_then(|reference| reference.id)
            .filter(|id| !id.is_nil())
            .or_else(|| Some(self.primary_entity_id).filter(|id| !id.is_nil()))
    }

    /// `true` for the messages that close an opportunity, `Win` and `Lose`: they carry no
    /// target and no image of the row (the close is an `OpportunityClose` activity).
    pub fn closes_an_opportunity(&self) -> bool {
        CLOSE_MESSAGES
            .iter()
            .any(|message| self.message_name.eq_ignore_ascii_case(message))
    }

    /// The post image overlaid with the target (the target wins): the best view of the row
    /// after the operation that the body alone can give. Empty when neither is present.
    pub fn merged_attributes(&self) -> Map<String, Value> {
        let mut merged = self.post_image().unwrap_or_default();
        if let Some(target) = self.target() {
            for (key, value) in target {
                merged.insert(key, value);
            }
        }
        merged
    }
}

fn find_parameter<'a>(parameters: Option<&'a [KeyValuePair]>, key: &str) -> Option<&'a Value> {
    parameters?
        .iter()
        .find(|pair| pair.key == key)
        .map(|pair| &pair.value)
}

fn first_image(images: Option<&[KeyValuePair]>) -> Option<WireEntity> {
    images?
        .iter()
        .find_map(|pair| WireEntity::from_value(&pair.value))
}

/// [`first_image`]'s decoded attributes, read in place.
fn first_image_columns(images: Option<&[KeyValuePair]>) -> Option<Map<String, Value>> {
    images?.iter().find_map(|pair| entity_columns(&pair.value))
}

/// One `{"key": …, "value": …}` entry of a Dataverse parameter or attribute collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValuePair {
    /// The key (parameter name, image alias or column logical name).
    #[serde(alias = "Key")]
    pub key: String,
    /// The raw value.
    #[serde(default, alias = "Value")]
    pub value: Value,
}

impl KeyValuePair {
    fn as_ref(&self) -> (&str, &Value) {
        (&self.key, &self.value)
    }
}

/// A reference to a row: the value of a lookup column or of `OwningExtension`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntityReference {
    /// The row id (`None` when missing or not a GUID).
    #[serde(default, deserialize_with = "lenient_uuid")]
    pub id: Option<Uuid>,
    /// The table's logical name.
    #[serde(default)]
    pub logical_name: Option<String>,
    /// The primary name, when Dataverse filled it in (usually `null`).
    #[serde(default)]
    pub name: Option<String>,
}

impl EntityReference {
    /// Reads a reference from a JSON object typed `EntityReference:…`, or an untyped object
    /// carrying `Id` and `LogicalName` but no `Attributes` (the form of `OwningExtension`).
    pub fn from_value(value: &Value) -> Option<Self> {
        let object = value.as_object()?;
        let is_reference = match wire_type(object) {
            Some(kind) => kind == "EntityReference",
            None => {
                object.contains_key("Id")
                    && object.contains_key("LogicalName")
                    && !object.contains_key("Attributes")
            }
        };
        if !is_reference {
            return None;
        }
        Self::deserialize(value).ok()
    }
}

/// An `Entity` as serialized in a parameter collection (a target or an image).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireEntity {
    /// The table's logical name.
    #[serde(default)]
    pub logical_name: Option<String>,
    /// The row id (`None` when missing or not a GUID).
    #[serde(default, deserialize_with = "lenient_uuid")]
    pub id: Option<Uuid>,
    /// The columns, raw.
    #[serde(default, deserialize_with = "lenient_pairs")]
    pub attributes: Vec<KeyValuePair>,
    /// Display texts by column.
    #[serde(default, deserialize_with = "lenient_pairs")]
    pub formatted_values: Vec<KeyValuePair>,
    /// `RowVersion`, when sent (often `null`): the row's version after the write.
    #[serde(
        default,
        deserialize_with = "lenient_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub row_version: Option<String>,
}

impl WireEntity {
    /// Reads an entity from a JSON object that has an `Attributes` member (with or without
    /// `__type: "Entity:…"`); anything else is `None`.
    pub fn from_value(value: &Value) -> Option<Self> {
        entity_object(value)?;
        Self::deserialize(value).ok()
    }

    /// The row version: the `versionnumber` column, else `RowVersion`, when either is a whole
    /// number (Dataverse raises it on every write of the row).
    pub fn version(&self) -> Option<String> {
        self.attributes
            .iter()
            .find(|pair| pair.key.eq_ignore_ascii_case("versionnumber"))
            .and_then(|pair| version_text(&pair.value))
            .or_else(|| self.row_version.clone())
    }

    /// The attributes decoded by [`decode_attributes`], plus each formatted value as a
    /// `…@OData.Community.Display.V1.FormattedValue` annotation (on `_x_value` for lookups),
    /// the way the Web API returns them with `Prefer: odata.include-annotations="*"`.
    pub fn decoded_attributes(&self) -> Map<String, Value> {
        decode_entity(
            self.attributes.iter().map(KeyValuePair::as_ref),
            self.formatted_values.iter().map(KeyValuePair::as_ref),
        )
    }
}

/// The object of a serialized `Entity`: one typed `Entity:…`, or untyped with an `Attributes`
/// member.
fn entity_object(value: &Value) -> Option<&Map<String, Value>> {
    let object = value.as_object()?;
    let is_entity = match wire_type(object) {
        Some(kind) => kind == "Entity",
        None => object.contains_key("Attributes"),
    };
    is_entity.then_some(object)
}

/// `WireEntity::from_value(value).map(|entity| entity.decoded_attributes())`, read in place
/// rather than through a copy of the entity (the webhook handler's hot path: a post image
/// carries every column of the row).
fn entity_columns(value: &Value) -> Option<Map<String, Value>> {
    let object = entity_object(value)?;
    // The one member whose wrong type makes `WireEntity`'s deserialization fail: the others
    // are read leniently.
    if !matches!(
        object.get("LogicalName"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return None;
    }
    Some(decode_entity(
        pairs_in(object.get("Attributes")),
        pairs_in(object.get("FormattedValues")),
    ))
}

/// The attributes decoded by [`decode_attributes`], plus each formatted value as an annotation
/// (see [`WireEntity::decoded_attributes`]).
fn decode_entity<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a Value)>,
    formatted_values: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Map<String, Value> {
    let mut decoded = decode_pairs(attributes);
    for (key, value) in formatted_values {
        let Some(text) = value.as_str() else {
            continue;
        };
        let lookup_key = lookup_value_key(key);
        let column = if decoded.contains_key(&lookup_key) {
            lookup_key
        } else {
            key.to_owned()
        };
        decoded
            .entry(format!("{column}{FORMATTED_VALUE_ANNOTATION}"))
            .or_insert_with(|| Value::String(text.to_owned()));
    }
    decoded
}

/// `_<column>_value`, the Web API name of a lookup column's GUID.
pub fn lookup_value_key(column: &str) -> String {
    format!("_{column}_value")
}

/// Decodes an attribute collection into the column map the Web API returns for the same row:
///
/// - strings, numbers, booleans and `null` as they are;
/// - WCF dates `"/Date(1506384247000)/"`, `"/Date(1506409448000-0700)/"` → RFC 3339 UTC
///   strings (`"2017-09-26T00:04:07Z"`; the offset only names the sender's zone);
/// - `EntityReference` → the GUID under `_<column>_value`, its table under
///   `_<column>_value@Microsoft.Dynamics.CRM.lookuplogicalname` and a non-null `Name` under
///   `_<column>_value@OData.Community.Display.V1.FormattedValue`;
/// - `Money` and `OptionSetValue` → their `Value`, the JSON number kept exactly as received
///   (no float arithmetic);
/// - arrays element by element (a multi-select option set becomes an array of integers);
/// - any other `__type` object kept unchanged.
///
/// A `null` lookup cannot be told from any other null column and stays under its own name.
pub fn decode_attributes(pairs: &[KeyValuePair]) -> Map<String, Value> {
    decode_pairs(pairs.iter().map(KeyValuePair::as_ref))
}

fn decode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Map<String, Value> {
    let mut decoded = Map::new();
    for (column, value) in pairs {
        if let Some(reference) = EntityReference::from_value(value) {
            let key = lookup_value_key(column);
            let id = reference.id.map_or_else(
                || guid_text(value).map_or(Value::Null, Value::String),
                |id| Value::String(id.to_string()),
            );
            decoded.insert(key.clone(), id);
            if let Some(table) = reference.logical_name {
                decoded.insert(
                    format!("{key}{LOOKUP_LOGICAL_NAME_ANNOTATION}"),
                    Value::String(table),
                );
            }
            if let Some(name) = reference.name {
                decoded.insert(
                    format!("{key}{FORMATTED_VALUE_ANNOTATION}"),
                    Value::String(name),
                );
            }
        } else {
            decoded.insert(column.to_owned(), decode_value(value));
        }
    }
    decoded
}

/// The raw `Id` text of a reference whose id is not a GUID (kept rather than lost).
fn guid_text(value: &Value) -> Option<String> {
    value.get("Id").and_then(Value::as_str).map(str::to_owned)
}

/// Decodes one attribute value (see [`decode_attributes`]); an `EntityReference` becomes its
/// GUID string.
pub fn decode_value(value: &Value) -> Value {
    match value {
        Value::String(text) => parse_wcf_date(text)
            .map_or_else(|| value.clone(), |date| Value::String(to_rfc3339(date))),
        Value::Array(items) => Value::Array(items.iter().map(decode_value).collect()),
        Value::Object(object) => match wire_type(object) {
            Some("Money" | "OptionSetValue") => object
                .get("Value")
                .or_else(|| object.get("value"))
                .cloned()
                .unwrap_or(Value::Null),
            Some("EntityReference") => EntityReference::from_value(value)
                .and_then(|reference| reference.id)
                .map_or_else(
                    || guid_text(value).map_or(Value::Null, Value::String),
                    |id| Value::String(id.to_string()),
                ),
            _ => value.clone(),
        },
        _ => value.clone(),
    }
}

/// The data-contract type of a serialized object: `"EntityReference"` for
/// `"__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"`.
fn wire_type(object: &Map<String, Value>) -> Option<&str> {
    let full = object.get("__type")?.as_str()?;
    full.split(':').next().map(str::trim)
}

/// Parses a WCF JSON date, `/Date(<ms since epoch>[±hhmm])/`. The milliseconds are UTC; the
/// optional offset only names the sender's time zone and does not shift the instant.
pub fn parse_wcf_date(text: &str) -> Option<DateTime<Utc>> {
    let inner = text.trim().strip_prefix("/Date(")?.strip_suffix(")/")?;
    let sign_len = usize::from(inner.starts_with(['-', '+']));
    let digits_end = inner[sign_len..]
        .find(|ch: char| !ch.is_ascii_digit())
        .map_or(inner.len(), |index| index + sign_len);
    if digits_end == sign_len {
        return None;
    }
    let offset = &inner[digits_end..];
    let offset_ok = offset.is_empty()
        || (offset.len() == 5
            && offset.starts_with(['-', '+'])
            && offset[1..].chars().all(|ch| ch.is_ascii_digit()));
    if !offset_ok {
        return None;
    }
    let millis: i64 = inner[..digits_end].parse().ok()?;
    DateTime::<Utc>::from_timestamp_millis(millis)
}

/// The WCF JSON form of an instant, `/Date(<ms>)/`.
pub fn format_wcf_date(date: DateTime<Utc>) -> String {
    format!("/Date({})/", date.timestamp_millis())
}

/// RFC 3339 in UTC with `Z`, fractional seconds only when present (the Web API's form).
fn to_rfc3339(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

// ---------------------------------------------------------------------------------------------
// Lenient serde helpers

fn lenient_uuid<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Uuid>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|text| Uuid::parse_str(text.trim()).ok()))
}

/// A row version: a JSON number or a string of at most 20 ASCII digits.
fn version_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::Number(number) => number.as_u64()?.to_string(),
        Value::String(text) => text.trim().to_owned(),
        _ => return None,
    };
    let digits = !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then_some(text)
}

fn lenient_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.as_ref().and_then(version_text))
}

fn lenient_i32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(Value::Number(number)) => number.as_i64().and_then(|n| i32::try_from(n).ok()),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_wcf_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.as_ref().and_then(Value::as_str).and_then(|text| {
        parse_wcf_date(text).or_else(|| {
            DateTime::parse_from_rfc3339(text.trim())
                .ok()
                .map(|date| date.with_timezone(&Utc))
        })
    }))
}

fn serialize_wcf_date<S: Serializer>(
    date: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match date {
        Some(date) => serializer.serialize_str(&format_wcf_date(*date)),
        None => serializer.serialize_none(),
    }
}

fn lenient_entity_reference<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<EntityReference>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.and_then(|value| serde_json::from_value(value).ok()))
}

fn lenient_parent<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RemoteExecutionContext>>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value
        .filter(Value::is_object)
        .and_then(|value| serde_json::from_value(value).ok())
        .map(Box::new))
}

/// A parameter collection: `null`/absent → `None`; otherwise see [`pairs_from_value`].
fn lenient_parameters<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<KeyValuePair>>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.filter(|value| !value.is_null()).map(pairs_from_value))
}

fn lenient_pairs<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<KeyValuePair>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.map(pairs_from_value).unwrap_or_default())
}

/// The documented array of `{"key","value"}` objects (entries without a string key are
/// skipped), or — tolerated — a plain JSON object mapping keys to values.
fn pairs_from_value(value: Value) -> Vec<KeyValuePair> {
    match value {
        Value::Array(items) => items.into_iter().filter_map(pair_from).collect(),
        Value::Object(object) => object
            .into_iter()
            .map(|(key, value)| KeyValuePair { key, value })
            .collect(),
        _ => Vec::new(),
    }
}

/// One `{"key", "value"}` entry taken apart rather than rebuilt: read as [`pair_in`] reads it
/// (the rules of `serde_json::from_value::<KeyValuePair>`), its key and value moved out. A
/// parameter collection's value holds a whole entity, so rebuilding it through serde would
/// build the webhook's largest members twice.
fn pair_from(item: Value) -> Option<KeyValuePair> {
    let (key, value) = match item {
        Value::Object(mut object) => {
            let key = take_member(&mut object, "key", "Key")??;
            let value = take_member(&mut object, "value", "Value")?;
            (key, value)
        }
        Value::Array(items) => {
            let mut items = items.into_iter();
            match (items.next(), items.next(), items.next()) {
                (Some(key), value, None) => (key, value),
                _ => return None,
            }
        }
        _ => return None,
    };
    match key {
        Value::String(key) => Some(KeyValuePair {
            key,
            value: value.unwrap_or(Value::Null),
        }),
        _ => None,
    }
}

/// [`member`], moved out of the object.
fn take_member(object: &mut Map<String, Value>, lower: &str, upper: &str) -> Option<Option<Value>> {
    if object.contains_key(lower) && object.contains_key(upper) {
        return None;
    }
    Some(object.remove(lower).or_else(|| object.remove(upper)))
}

/// [`pairs_from_value`] read in place: the entries of a pair collection (absent or `null`:
/// none), each as `serde_json::from_value::<KeyValuePair>` would read it ([`pair_in`]).
fn pairs_in(collection: Option<&Value>) -> Vec<(&str, &Value)> {
    match collection {
        Some(Value::Array(items)) => items.iter().filter_map(pair_in).collect(),
        Some(Value::Object(object)) => object
            .iter()
            .map(|(key, value)| (key.as_str(), value))
            .collect(),
        _ => Vec::new(),
    }
}

/// One `{"key", "value"}` entry in place, by [`KeyValuePair`]'s serde rules: `key` (or `Key`)
/// a string, `value` (or `Value`) anything, `null` when missing; both spellings of one member
/// is a duplicate field (the entry is skipped); the sequence form `[key, value?]` is accepted.
fn pair_in(item: &Value) -> Option<(&str, &Value)> {
    static NULL: Value = Value::Null;
    let (key, value) = match item {
        Value::Object(object) => (
            member(object, "key", "Key")??,
            member(object, "value", "Value")?,
        ),
        Value::Array(items) => match items.as_slice() {
            [key] => (key, None),
            [key, value] => (key, Some(value)),
            _ => return None,
        },
        _ => return None,
    };
    Some((key.as_str()?, value.unwrap_or(&NULL)))
}

/// A member spelled either way; `None` when both spellings are present (serde's duplicate
/// field).
fn member<'a>(
    object: &'a Map<String, Value>,
    lower: &str,
    upper: &str,
) -> Option<Option<&'a Value>> {
    match (object.get(lower), object.get(upper)) {
        (Some(_), Some(_)) => None,
        (one, other) => Some(one.or(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook headers

/// The documented webhook request headers (names matched case-insensitively; values trimmed;
/// an empty value reads as absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// `x-ms-dynamics-organization`: domain name of the sending environment.
    pub organization: Option<String>,
    /// `x-ms-dynamics-entity-name`: logical name of the table.
    pub entity_name: Option<String>,
    /// `x-ms-dynamics-request-name`: the message (event) name.
    pub request_name: Option<String>,
    /// `x-ms-correlation-request-id`: tracking id (platform loop prevention).
    pub correlation_request_id: Option<String>,
    /// `x-request-id` (only in the 2018 documentation; may be absent).
    pub request_id: Option<String>,
    /// `x-ms-dynamics-msg-size-exceeded` is present (payload over 256 KB, body stripped).
    /// A value of `false` or `0` reads as not exceeded.
    pub msg_size_exceeded: bool,
}

impl WebhookHeaders {
    /// `x-ms-dynamics-organization`
    pub const ORGANIZATION: &'static str = "x-ms-dynamics-organization";
    /// `x-ms-dynamics-entity-name`
    pub const ENTITY_NAME: &'static str = "x-ms-dynamics-entity-name";
    /// `x-ms-dynamics-request-name`
    pub const REQUEST_NAME: &'static str = "x-ms-dynamics-request-name";
    /// `x-ms-correlation-request-id`
    pub const CORRELATION_REQUEST_ID: &'static str = "x-ms-correlation-request-id";
    /// `x-request-id`
    pub const REQUEST_ID: &'static str = "x-request-id";
    /// `x-ms-dynamics-msg-size-exceeded`
    pub const MSG_SIZE_EXCEEDED: &'static str = "x-ms-dynamics-msg-size-exceeded";

    /// Reads the headers from name/value pairs; the first non-empty value of a name wins.
    pub fn from_pairs<I, K, V>(headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut parsed = Self::default();
        for (name, value) in headers {
            let name = name.as_ref().trim();
            let value = value.as_ref().trim();
            if name.eq_ignore_ascii_case(Self::MSG_SIZE_EXCEEDED) {
                parsed.msg_size_exceeded |= !(value.eq_ignore_ascii_case("false") || value == "0");
                continue;
            }
            if value.is_empty() {
                continue;
            }
            let slot = if name.eq_ignore_ascii_case(Self::ORGANIZATION) {
                &mut parsed.organization
            } else if name.eq_ignore_ascii_case(Self::ENTITY_NAME) {
                &mut parsed.entity_name
            } else if name.eq_ignore_ascii_case(Self::REQUEST_NAME) {
                &mut parsed.request_name
            } else if name.eq_ignore_ascii_case(Self::CORRELATION_REQUEST_ID) {
                &mut parsed.correlation_request_id
            } else if name.eq_ignore_ascii_case(Self::REQUEST_ID) {
                &mut parsed.request_id
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value.to_owned());
            }
        }
        parsed
    }

    /// Reads the headers from a slice of `(name, value)` pairs.
    pub fn from_slice(headers: &[(String, String)]) -> Self {
        Self::from_pairs(headers.iter().map(|(name, value)| (name, value)))
    }

    /// Reads the headers from a map of names to values.
    pub fn from_map<S: BuildHasher>(headers: &HashMap<String, String, S>) -> Self {
        Self::from_pairs(headers)
    }
}

// ---------------------------------------------------------------------------------------------
// Web API error body

/// How a [`WebApiError`] was obtained from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorBodyParse {
    /// Valid JSON in a known shape.
    Json,
    /// Not valid JSON (or an unknown shape); `code`/`message` found by a tolerant scan.
    Scanned,
    /// Nothing recognizable; `message` is the body itself, trimmed and truncated.
    Raw,
}

/// The Web API error body `{"error":{"code","message", …}}`.
///
/// `code` is unrelated to the HTTP status and frequently empty. Other members of `error`
/// (`innererror`, the `@Microsoft.PowerApps.CDS.*` annotations sent with
/// `Prefer: odata.include-annotations="*"`) are kept in `details` when the body is valid JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct WebApiError {
    /// `error.code` (may be empty).
    pub code: String,
    /// `error.message`.
    pub message: String,
    /// Other members of `error`, when the body was valid JSON.
    pub details: Map<String, Value>,
    /// How the body was read.
    pub parsed: ErrorBodyParse,
}

/// Annotation with the sub-error code of an error.
pub const SUB_ERROR_CODE_ANNOTATION: &str = "@Microsoft.PowerApps.CDS.ErrorDetails.SubErrorCode";
/// Annotation with the inner error message.
pub const INNER_ERROR_MESSAGE_ANNOTATION: &str = "@Microsoft.PowerApps.CDS.InnerError.Message";

impl WebApiError {
    /// Reads an error body; never fails. Valid JSON is read structurally (also the OAuth form
    /// `{"error":"…","error_description":"…"}` and a top-level `{"message"}`); otherwise the
    /// `"code"`/`"message"` string members are scanned for; otherwise the trimmed body, cut to
    /// 512 characters, is the message.
    pub fn parse(body: &str) -> Self {
        let body = strip_bom(body);
        if let Ok(value) = serde_json::from_str::<Value>(body)
            && let Some(error) = Self::from_json(&value)
        {
            return error;
        }
        let code = scan_json_string_member(body, "code");
        let message = scan_json_string_member(body, "message");
        if code.is_some() || message.is_some() {
            return Self {
                code: code.unwrap_or_default(),
                message: message.unwrap_or_default(),
                details: Map::new(),
                parsed: ErrorBodyParse::Scanned,
            };
        }
        Self {
            code: String::new(),
            message: truncate_chars(body, RAW_TEXT_LIMIT),
            details: Map::new(),
            parsed: ErrorBodyParse::Raw,
        }
    }

    fn from_json(value: &Value) -> Option<Self> {
        let object = value.as_object()?;
        let (code, message, details) = match object.get("error") {
            Some(Value::Object(error)) => {
                let details = error
                    .iter()
                    .filter(|(key, _)| key.as_str() != "code" && key.as_str() != "message")
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                (
                    json_text(error.get("code")),
                    json_text(error.get("message")),
                    details,
                )
            }
            Some(Value::String(code)) => (
                Some(code.clone()),
                json_text(object.get("error_description")),
                Map::new(),
            ),
            _ => (
                json_text(object.get("code")),
                json_text(object.get("message").or_else(|| object.get("Message"))),
                Map::new(),
            ),
        };
        if code.is_none() && message.is_none() {
            return None;
        }
        Some(Self {
            code: code.unwrap_or_default(),
            message: message.unwrap_or_default(),
            details,
            parsed: ErrorBodyParse::Json,
        })
    }

    /// `@Microsoft.PowerApps.CDS.ErrorDetails.SubErrorCode`, when sent.
    pub fn sub_error_code(&self) -> Option<String> {
        json_text(self.details.get(SUB_ERROR_CODE_ANNOTATION))
    }

    /// The inner error message: the `@…InnerError.Message` annotation or `innererror.message`.
    pub fn inner_message(&self) -> Option<String> {
        json_text(self.details.get(INNER_ERROR_MESSAGE_ANNOTATION)).or_else(|| {
            json_text(
                self.details
                    .get("innererror")
                    .and_then(|inner| inner.get("message")),
            )
        })
    }
}

impl fmt::Display for WebApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            formatter.write_str(&self.message)
        } else {
            write!(formatter, "{}: {}", self.code, self.message)
        }
    }
}

/// A JSON string as is, a number or boolean as its text, anything else `None`.
fn json_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEBHOOK_SAMPLE: &str = include_str!(
        "../../../domain/tests/data/dataverse-webhook-remoteexecutioncontext.2021.json"
    );
    const ERROR_404: &str =
        include_str!("../../../domain/tests/data/dataverse-webapi-error-404-upsert-if-match.json");
    const ERROR_412: &str = include_str!(
        "../../../domain/tests/data/dataverse-webapi-error-412-concurrency-update.json"
    );
    const ERROR_FORMAT: &str =
        include_str!("../../../domain/tests/data/dataverse-webapi-error-format.json");

    fn sample() -> RemoteExecutionContext {
        RemoteExecutionContext::parse(WEBHOOK_SAMPLE).unwrap()
    }

    fn uuid(text: &str) -> Uuid {
        Uuid::parse_str(text).unwrap()
    }

    fn pair(key: &str, value: Value) -> KeyValuePair {
        KeyValuePair {
            key: key.to_owned(),
            value,
        }
    }

    /// A minimal body around the given members.
    fn body_with(extra: Value) -> String {
        let mut body = json!({
            "MessageName": "Update",
            "PrimaryEntityName": "opportunity",
            "PrimaryEntityId": "11111111-2222-3333-4444-555555555555",
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body.to_string()
    }

    #[test]
    fn the_documented_webhook_sample_parses_with_its_identifiers() {
        let context = sample();
        assert_eq!(context.message_name, "Update");
        assert_eq!(context.primary_entity_name, "contact");
        assert_eq!(
            context.primary_entity_id,
            uuid("6d81597f-0f9f-e711-8122-000d3aa2331c")
        );
        assert_eq!(
            context.user_id,
            Some(uuid("75c2dd85-e89e-e711-8122-000d3aa2331c"))
        );
        assert_eq!(context.initiating_user_id, context.user_id);
        assert_eq!(
            context.organization_id,
            Some(uuid("4ef5b371-e89e-e711-8122-000d3aa2331c"))
        );
        assert_eq!(context.organization_name.as_deref(), Some("OrgName"));
        assert_eq!(
            context.business_unit_id,
            Some(uuid("e2b9dd85-e89e-e711-8122-000d3aa2331c"))
        );
        assert_eq!(
            context.correlation_id,
            Some(uuid("b374239d-4233-41a9-8b17-a86cb4f737b5"))
        );
        assert_eq!(
            context.operation_id,
            Some(uuid("4af10637-4ea2-e711-8122-000d3aa2331c"))
        );
        assert_eq!(context.request_id, None);
        assert_eq!(context.secondary_entity_name.as_deref(), Some("none"));
        assert_eq!(
            (context.depth, context.mode, context.stage),
            (Some(1), Some(1), Some(40))
        );
        assert!(context.is_asynchronous());
        assert_eq!(
            context.operation_created_on.map(to_rfc3339).as_deref(),
            Some("2017-09-26T07:04:08Z")
        );
        let step = context.owning_extension.clone().unwrap();
        assert_eq!(
            step.logical_name.as_deref(),
            Some("sdkmessageprocessingstep")
        );
        assert_eq!(step.id, Some(uuid("75417616-4ea2-e711-8122-000d3aa2331c")));
        assert_eq!(context.output_parameters, Some(vec![]));
        assert_eq!(context.pre_entity_images, Some(vec![]));
        assert_eq!(context.shared_variables, Some(vec![]));
        assert!(context.is_complete());
    }

    /// A synchronous Update of one opportunity as a webhook body: the `OperationId` nil (a
    /// step registered synchronously), the post image at row version `version`.
    fn synchronous_update(version: u64, name: &str, request_id: Value) -> String {
        let image = json!({
            "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
            "LogicalName": "opportunity",
            "Id": "11111111-2222-3333-4444-555555555555",
            "Attributes": [
                {"key": "name", "value": name},
                {"key": "versionnumber", "value": version},
                {"key": "modifiedon", "value": "/Date(1506384247000)/"},
            ],
            "RowVersion": version.to_string(),
        });
        body_with(json!({
            "Mode": 0,
            "Stage": 40,
            "OperationId": "00000000-0000-0000-0000-000000000000",
            "RequestId": request_id,
            "InputParameters": [{"key": "Target", "value": {
                "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
                "LogicalName": "opportunity",
                "Attributes": [{"key": "name", "value": name}],
            }}],
            "PostEntityImages": [{"key": "postimage", "value": image}],
        }))
    }

    fn change_key(body: &str) -> String {
        let context = RemoteExecutionContext::parse(body).unwrap();
        let record = cosell_domain::ids::CrmRecordId::Dataverse(
            cosell_domain::ids::DataverseId::from(context.primary_entity_id),
        );
        cosell_domain::sync::dataverse_change_key(&context.change_id(body.as_bytes()), &record)
            .unwrap()
            .to_string()
    }

    #[test]
    fn nil_operation_ids_still_key_each_change_apart() {
        let first = synchronous_update(1001, "Fabrikam rollout", Value::Null);
        let second = synchronous_update(1002, "Fabrikam rollout, phase 2", Value::Null);
        assert_ne!(change_key(&first), change_key(&second));
        // One request that writes the row twice still makes two changes.
        let request = json!("5c3b4b8e-1111-4a7f-9c1e-2f0a6d8e9b10");
        assert_ne!(
            change_key(&synchronous_update(1003, "a", request.clone())),
            change_key(&synchronous_update(1004, "a", request))
        );
        // The same delivery twice is the same change.
        assert_eq!(change_key(&first), change_key(&first.clone()));
        // Nothing but the body tells two changes apart: still two keys.
        let bare = |name: &str| {
            body_with(json!({
                "Mode": 0,
                "OperationId": "00000000-0000-0000-0000-000000000000",
                "InputParameters": [{"key": "Target", "value": {
                    "LogicalName": "opportunity",
                    "Attributes": [{"key": "name", "value": name}],
                }}],
            }))
        };
        assert_ne!(change_key(&bare("one")), change_key(&bare("two")));
        assert_eq!(change_key(&bare("one")), change_key(&bare("one")));
        // A missing OperationId is the same as a nil one.
        let missing = body_with(json!({"InputParameters": []}));
        assert_eq!(change_key(&missing), change_key(&missing));
        // Without a post image, the target's version names the change.
        let target_only = body_with(json!({
            "InputParameters": [{"key": "Target", "value": {
                "LogicalName": "opportunity",
                "Attributes": [{"key": "versionnumber", "value": "77"}],
                "RowVersion": null,
            }}],
        }));
        assert_eq!(
            RemoteExecutionContext::parse(&target_only)
                .unwrap()
                .change_id(b"ignored"),
            "v77"
        );
        // The nil GUID itself is never a key.
        let record = cosell_domain::ids::CrmRecordId::Dataverse(
            cosell_domain::ids::DataverseId::from(uuid("11111111-2222-3333-4444-555555555555")),
        );
        assert!(
            cosell_domain::sync::dataverse_change_key(
                "00000000-0000-0000-0000-000000000000",
                &record
            )
            .is_err()
        );
        // A real OperationId keys as before.
        let context = sample();
        assert_eq!(
            context.change_id(WEBHOOK_SAMPLE.as_bytes()),
            "4af10637-4ea2-e711-8122-000d3aa2331c"
        );
    }

    #[test]
    fn the_sample_parent_context_is_read_as_a_nested_context() {
        let context = sample();
        let parent = context.parent_context.as_deref().unwrap();
        assert_eq!(parent.stage, Some(30));
        assert_eq!(parent.organization_name.as_deref(), Some("OneFarm"));
        assert_eq!(parent.parent_context, None);
        assert_eq!(
            parent.input_parameter("SuppressDuplicateDetection"),
            Some(&Value::Bool(false))
        );
        let shared = parent.shared_variables.as_deref().unwrap();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].key, "ChangedEntityTypes");
        assert_eq!(shared[0].value.as_array().map(Vec::len), Some(14));
    }

    #[test]
    fn the_sample_target_is_decoded_like_the_web_api_would_return_it() {
        let target = sample().target().unwrap();
        let expected = json!({
            "firstname": "James",
            "contactid": "6d81597f-0f9f-e711-8122-000d3aa2331c",
            "fullname": "James Glynn (sample)",
            "yomifullname": "James Glynn (sample)",
            "modifiedon": "2017-09-26T00:04:07Z",
            "_modifiedby_value": "75c2dd85-e89e-e711-8122-000d3aa2331c",
            "_modifiedby_value@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
            "modifiedonbehalfby": null,
        });
        assert_eq!(Value::Object(target), expected);
    }

    #[test]
    fn the_sample_post_image_is_found_whatever_its_alias() {
        let context = sample();
        let image = context.post_image_entity().unwrap();
        assert_eq!(image.logical_name.as_deref(), Some("contact"));
        assert_eq!(image.id, Some(context.primary_entity_id));
        let post = context.post_image().unwrap();
        assert_eq!(post.len(), 2);
        assert_eq!(post["fullname"], "James Glynn (sample)");
        assert_eq!(context.pre_image(), None);
    }

    #[test]
    fn merged_attributes_overlay_the_post_image_with_the_target() {
        let image = json!({"LogicalName": "opportunity", "Attributes": [
            {"key": "name", "value": "Old name"},
            {"key": "estimatedvalue", "value": {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1000.5}},
            {"key": "description", "value": "kept from the image"},
        ]});
        let target = json!({"__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts", "LogicalName": "opportunity", "Attributes": [
            {"key": "name", "value": "New name"},
        ]});
        let body = body_with(json!({
            "InputParameters": [{"key": "Target", "value": target}],
            "PostEntityImages": [{"key": "postimage", "value": image}],
        }));
        let merged = RemoteExecutionContext::parse(&body)
            .unwrap()
            .merged_attributes();
        assert_eq!(
            Value::Object(merged),
            json!({"name": "New name", "estimatedvalue": 1000.5, "description": "kept from the image"})
        );
    }

    #[test]
    fn the_sample_merged_attributes_contain_target_and_image_columns() {
        let merged = sample().merged_attributes();
        assert_eq!(merged["firstname"], "James");
        assert_eq!(merged["fullname"], "James Glynn (sample)");
        assert_eq!(merged.len(), 8);
    }

    #[test]
    fn a_stripped_body_is_incomplete_but_keeps_the_primary_entity() {
        let body = body_with(json!({"CorrelationId": "b374239d-4233-41a9-8b17-a86cb4f737b5"}));
        let context = RemoteExecutionContext::parse(&body).unwrap();
        assert!(!context.is_complete());
        assert_eq!(context.target(), None);
        assert_eq!(context.post_image(), None);
        assert!(context.merged_attributes().is_empty());
        assert_eq!(context.primary_entity_name, "opportunity");
        assert_eq!(
            context.primary_entity_id,
            uuid("11111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn null_collections_read_as_stripped_and_the_size_header_forces_a_reread() {
        let body = body_with(json!({"InputParameters": null, "PostEntityImages": null}));
        let context = RemoteExecutionContext::parse(&body).unwrap();
        assert!(!context.is_complete());

        let full = sample();
        let headers = WebhookHeaders::from_slice(&[(
            "X-MS-Dynamics-Msg-Size-Exceeded".to_owned(),
            String::new(),
        )]);
        assert!(full.is_complete());
        assert!(!full.is_complete_given(&headers));
        assert!(full.is_complete_given(&WebhookHeaders::default()));
    }

    #[test]
    fn a_body_without_a_required_member_is_rejected() {
        let missing_id = json!({"MessageName": "Update", "PrimaryEntityName": "opportunity"});
        assert!(matches!(
            RemoteExecutionContext::parse(&missing_id.to_string()),
            Err(WebhookBodyError::Malformed(_))
        ));
        assert!(RemoteExecutionContext::parse("<html/>").is_err());
        assert!(RemoteExecutionContext::parse_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn unknown_members_nulls_bad_optional_values_and_a_bom_are_tolerated() {
        let body = body_with(json!({
            "SomethingNew": {"nested": true},
            "UserId": "not-a-guid",
            "OrganizationName": null,
            "Depth": "2",
            "Mode": null,
            "OperationCreatedOn": "2024-01-02T03:04:05+01:00",
            "OwningExtension": 42,
            "ParentContext": {"unexpected": "shape"},
            "SharedVariables": {"IsAutoTransact": true},
        }));
        let context = RemoteExecutionContext::parse(&format!("\u{feff}{body}")).unwrap();
        assert_eq!(context.user_id, None);
        assert_eq!(context.organization_name, None);
        assert_eq!(context.depth, Some(2));
        assert_eq!(context.mode, None);
        assert!(!context.is_asynchronous());
        assert_eq!(
            context.operation_created_on.map(to_rfc3339).as_deref(),
            Some("2024-01-02T02:04:05Z")
        );
        assert_eq!(context.owning_extension, None);
        assert_eq!(context.parent_context, None);
        assert_eq!(
            context.shared_variables,
            Some(vec![pair("IsAutoTransact", Value::Bool(true))])
        );
    }

    #[test]
    fn lookup_values_become_the_web_api_value_key_with_table_and_name_annotations() {
        let decoded = decode_attributes(&[
            pair(
                "parentaccountid",
                json!({"__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                       "Id": "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE", "KeyAttributes": [],
                       "LogicalName": "account", "Name": "Contoso", "RowVersion": null}),
            ),
            pair(
                "ownerid",
                json!({"Id": "aaaaaaaa-bbbb-cccc-dddd-000000000001", "LogicalName": "team"}),
            ),
        ]);
        assert_eq!(
            Value::Object(decoded),
            json!({
                "_parentaccountid_value": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                "_parentaccountid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
                "_parentaccountid_value@OData.Community.Display.V1.FormattedValue": "Contoso",
                "_ownerid_value": "aaaaaaaa-bbbb-cccc-dddd-000000000001",
                "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "team",
            })
        );
    }

    #[test]
    fn money_option_sets_dates_and_unknown_types_are_decoded() {
        let custom = json!({"__type": "AliasedValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1});
        let decoded = decode_attributes(&[
            pair(
                "estimatedvalue",
                json!({"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 125000.25}),
            ),
            pair(
                "budgetamount",
                json!({"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": "99.99"}),
            ),
            pair(
                "statecode",
                json!({"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1}),
            ),
            pair(
                "msdyn_tags",
                json!([{"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 100000001}]),
            ),
            pair("estimatedclosedate", json!("/Date(1506409448000-0700)/")),
            pair("createdon", json!("/Date(1506384247123)/")),
            pair("closeprobability", json!(40)),
            pair("isrevenuesystemcalculated", json!(false)),
            pair("name", json!("/Date( not a date")),
            pair("custom", custom.clone()),
            pair("description", Value::Null),
        ]);
        assert_eq!(
            Value::Object(decoded),
            json!({
                "estimatedvalue": 125000.25,
                "budgetamount": "99.99",
                "statecode": 1,
                "msdyn_tags": [100000001],
                "estimatedclosedate": "2017-09-26T07:04:08Z",
                "createdon": "2017-09-26T00:04:07.123Z",
                "closeprobability": 40,
                "isrevenuesystemcalculated": false,
                "name": "/Date( not a date",
                "custom": custom,
                "description": null,
            })
        );
    }

    #[test]
    fn money_keeps_the_exact_json_number_text() {
        let decoded = decode_value(&json!({"__type": "Money:x", "Value": 0.1}));
        assert_eq!(decoded.to_string(), "0.1");
        let big = decode_value(&json!({"__type": "Money:x", "Value": 123456789012.34}));
        assert_eq!(big.to_string(), "123456789012.34");
    }

    #[test]
    fn wcf_dates_parse_with_and_without_offset_and_reject_garbage() {
        let plain = parse_wcf_date("/Date(1506384247000)/").unwrap();
        assert_eq!(to_rfc3339(plain), "2017-09-26T00:04:07Z");
        let offset = parse_wcf_date("/Date(1506409448000-0700)/").unwrap();
        assert_eq!(to_rfc3339(offset), "2017-09-26T07:04:08Z");
        let before_epoch = parse_wcf_date("/Date(-1000+0100)/").unwrap();
        assert_eq!(to_rfc3339(before_epoch), "1969-12-31T23:59:59Z");
        for bad in [
            "/Date()/",
            "/Date(12a)/",
            "/Date(1-07)/",
            "Date(1)",
            "/Date(-)/",
            "2017-09-26",
        ] {
            assert_eq!(parse_wcf_date(bad), None, "{bad}");
        }
        assert_eq!(format_wcf_date(plain), "/Date(1506384247000)/");
    }

    #[test]
    fn formatted_values_become_annotations_on_the_column_or_its_lookup_key() {
        let entity = WireEntity::from_value(&json!({
            "Attributes": [
                {"key": "statuscode", "value": {"__type": "OptionSetValue:x", "Value": 1}},
                {"key": "ownerid", "value": {"__type": "EntityReference:x", "Id": "aaaaaaaa-bbbb-cccc-dddd-000000000001", "LogicalName": "systemuser", "Name": null}},
            ],
            "FormattedValues": [
                {"key": "statuscode", "value": "In Progress"},
                {"key": "ownerid", "value": "Dana Owner"},
            ],
        }))
        .unwrap();
        let decoded = entity.decoded_attributes();
        assert_eq!(
            decoded["statuscode@OData.Community.Display.V1.FormattedValue"],
            "In Progress"
        );
        assert_eq!(
            decoded["_ownerid_value@OData.Community.Display.V1.FormattedValue"],
            "Dana Owner"
        );
    }

    #[test]
    fn a_delete_target_reference_is_not_an_entity() {
        let body = body_with(json!({
            "MessageName": "Delete",
            "InputParameters": [{"key": "Target", "value": {
                "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                "Id": "11111111-2222-3333-4444-555555555555", "LogicalName": "opportunity"}}],
            "PostEntityImages": [],
        }));
        let context = RemoteExecutionContext::parse(&body).unwrap();
        assert_eq!(context.target(), None);
        assert_eq!(
            decode_value(context.input_parameter("Target").unwrap()),
            json!("11111111-2222-3333-4444-555555555555")
        );
    }

    #[test]
    fn a_close_names_its_opportunity_through_its_opportunity_close() {
        let opportunity = "11111111-2222-3333-4444-555555555555";
        let close = |primary: &str, reference: Value| {
            let body = body_with(json!({
                "MessageName": "Win",
                "PrimaryEntityId": primary,
                "InputParameters": [
                    {"key": "OpportunityClose", "value": {
                        "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
                        "LogicalName": "opportunityclose",
                        "Attributes": [
                            {"key": "subject", "value": "won"},
                            {"key": "opportunityid", "value": reference},
                        ]}},
                    {"key": "Status", "value": {"__type": "OptionSetValue:x", "Value": 3}},
                ],
                "PostEntityImages": [],
            }));
            RemoteExecutionContext::parse(&body).unwrap()
        };
        let reference = json!({
            "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
            "Id": opportunity, "LogicalName": "opportunity", "Name": null});
        let nil = "00000000-0000-0000-0000-000000000000";
        let other = "99999999-2222-3333-4444-555555555555";
        // The reference wins over an empty or a different PrimaryEntityId.
        for primary in [nil, other] {
            let context = close(primary, reference.clone());
            assert!(context.closes_an_opportunity());
            assert_eq!(context.closed_opportunity_id(), Some(uuid(opportunity)));
        }
        // Without a usable reference: PrimaryEntityId, unless nil.
        assert_eq!(
            close(other, json!("not a reference")).closed_opportunity_id(),
            Some(uuid(other))
        );
        assert_eq!(close(nil, Value::Null).closed_opportunity_id(), None);
        // Any letter case of the message; Create and Update are no closes.
        let mut lose = close(nil, reference);
        lose.message_name = "lose".into();
        assert!(lose.closes_an_opportunity());
        assert!(!sample().closes_an_opportunity());
    }

    #[test]
    fn a_context_serializes_back_to_the_wire_shape() {
        let context = sample();
        let value = serde_json::to_value(&context).unwrap();
        assert_eq!(value["OperationCreatedOn"], "/Date(1506409448000)/");
        assert_eq!(
            value["PrimaryEntityId"],
            "6d81597f-0f9f-e711-8122-000d3aa2331c"
        );
        let again: RemoteExecutionContext = serde_json::from_value(value).unwrap();
        assert_eq!(again, context);
    }

    #[test]
    fn webhook_headers_are_read_case_insensitively_from_a_slice() {
        let headers = WebhookHeaders::from_slice(&[
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "X-MS-Dynamics-Organization".to_owned(),
                " contoso.crm.dynamics.com ".to_owned(),
            ),
            (
                "x-ms-dynamics-entity-name".to_owned(),
                "opportunity".to_owned(),
            ),
            ("X-Ms-Dynamics-Request-Name".to_owned(), "Update".to_owned()),
            (
                "x-ms-correlation-request-id".to_owned(),
                "b374239d-4233-41a9-8b17-a86cb4f737b5".to_owned(),
            ),
            ("x-ms-dynamics-entity-name".to_owned(), "ignored".to_owned()),
        ]);
        assert_eq!(
            headers,
            WebhookHeaders {
                organization: Some("contoso.crm.dynamics.com".to_owned()),
                entity_name: Some("opportunity".to_owned()),
                request_name: Some("Update".to_owned()),
                correlation_request_id: Some("b374239d-4233-41a9-8b17-a86cb4f737b5".to_owned()),
                request_id: None,
                msg_size_exceeded: false,
            }
        );
    }

    #[test]
    fn webhook_headers_are_read_from_a_map_with_the_size_flag() {
        let mut map = HashMap::new();
        map.insert(
            "X-MS-DYNAMICS-MSG-SIZE-EXCEEDED".to_owned(),
            "true".to_owned(),
        );
        map.insert("X-Request-Id".to_owned(), "abc".to_owned());
        map.insert("x-ms-dynamics-request-name".to_owned(), "   ".to_owned());
        let headers = WebhookHeaders::from_map(&map);
        assert!(headers.msg_size_exceeded);
        assert_eq!(headers.request_id.as_deref(), Some("abc"));
        assert_eq!(headers.request_name, None);

        let not_exceeded =
            WebhookHeaders::from_pairs([("x-ms-dynamics-msg-size-exceeded", "false")]);
        assert!(!not_exceeded.msg_size_exceeded);
    }

    #[test]
    fn the_documented_404_error_body_is_read() {
        let error = WebApiError::parse(ERROR_404);
        assert_eq!(error.parsed, ErrorBodyParse::Json);
        assert_eq!(error.code, "");
        assert_eq!(
            error.message,
            "account With Id = 00000000-0000-0000-0000-000000000001 Does Not Exist"
        );
        assert_eq!(error.to_string(), error.message);
    }

    #[test]
    fn the_documented_412_error_body_is_read() {
        let error = WebApiError::parse(ERROR_412);
        assert_eq!(error.code, "");
        assert_eq!(
            error.message,
            "The version of the existing record doesn't match the RowVersion property provided."
        );
    }

    #[test]
    fn the_documented_error_format_is_read() {
        let error = WebApiError::parse(ERROR_FORMAT);
        assert_eq!(
            error.code,
            "<This code is not related to the http status code and is frequently empty>"
        );
        assert_eq!(error.message, "<A message describing the error>");
        assert!(error.details.is_empty());
    }

    #[test]
    fn an_annotated_error_body_keeps_its_details() {
        let body = r#"{"error":{"code":"0x80040265","message":"Plug-in failed.",
            "@Microsoft.PowerApps.CDS.ErrorDetails.SubErrorCode":"-2146233088",
            "@Microsoft.PowerApps.CDS.InnerError.Message":"Inner text",
            "@Microsoft.PowerApps.CDS.TraceText":"trace"}}"#;
        let error = WebApiError::parse(body);
        assert_eq!(error.parsed, ErrorBodyParse::Json);
        assert_eq!(error.to_string(), "0x80040265: Plug-in failed.");
        assert_eq!(error.sub_error_code().as_deref(), Some("-2146233088"));
        assert_eq!(error.inner_message().as_deref(), Some("Inner text"));
        assert_eq!(error.details.len(), 3);
    }

    #[test]
    fn an_error_body_with_a_missing_comma_is_scanned() {
        // The shape of the documented annotated sample: a comma is missing after OperationStatus.
        let body = "{\n \"error\":{  \n  \"code\": \"0x80040265\",  \n  \"message\": \"An unexpected error occurred.\",\n  \"@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus\": \"0\"\n  \"@Microsoft.PowerApps.CDS.InnerError.Message\": \"Inner \\\"quoted\\\"\"\n }\n}  ";
        let error = WebApiError::parse(body);
        assert_eq!(error.parsed, ErrorBodyParse::Scanned);
        assert_eq!(error.code, "0x80040265");
        assert_eq!(error.message, "An unexpected error occurred.");
    }

    #[test]
    fn an_older_innererror_body_is_read() {
        let body = r#"{"error":{"code":"","message":"Outer","innererror":{"message":"Inner","type":"System.ServiceModel.FaultException","stacktrace":"..."}}}"#;
        let error = WebApiError::parse(body);
        assert_eq!(error.message, "Outer");
        assert_eq!(error.inner_message().as_deref(), Some("Inner"));
    }

    #[test]
    fn non_json_error_bodies_fall_back_to_the_truncated_text() {
        let html = format!("<html><body>{}</body></html>", "x".repeat(2000));
        let error = WebApiError::parse(&html);
        assert_eq!(error.parsed, ErrorBodyParse::Raw);
        assert_eq!(error.code, "");
        assert!(error.message.starts_with("<html><body>xxx"));
        assert_eq!(error.message.chars().count(), RAW_TEXT_LIMIT + 1);

        let oauth = WebApiError::parse(
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret."}"#,
        );
        assert_eq!(oauth.parsed, ErrorBodyParse::Json);
        assert_eq!(oauth.code, "invalid_client");
        assert_eq!(oauth.message, "AADSTS7000215: Invalid client secret.");

        let gateway = WebApiError::parse(r#"{"Message":"An error has occurred."}"#);
        assert_eq!(gateway.message, "An error has occurred.");
        assert_eq!(WebApiError::parse("").message, "");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use cosell_domain::ids::{CrmRecordId, DataverseId};
    use cosell_domain::mapping::{DataverseRecord, MappingConfig, opportunity_from_dataverse};
    use cosell_domain::proptest_support::{json_value, mutated, wire_text};
    use cosell_domain::sync::dataverse_change_key;

    const DOCUMENTED: &str = include_str!(
        "../../../domain/tests/data/dataverse-webhook-remoteexecutioncontext.2021.json"
    );
    const ERRORS: [&str; 3] = [
        include_str!("../../../domain/tests/data/dataverse-webapi-error-404-upsert-if-match.json"),
        include_str!(
            "../../../domain/tests/data/dataverse-webapi-error-412-concurrency-update.json"
        ),
        include_str!("../../../domain/tests/data/dataverse-webapi-error-format.json"),
    ];

    /// A synchronous Update of an opportunity with a post image.
    fn opportunity_update() -> Value {
        json!({
            "MessageName": "Update",
            "PrimaryEntityName": "opportunity",
            "PrimaryEntityId": "11111111-2222-3333-4444-555555555555",
            "OperationId": "00000000-0000-0000-0000-000000000000",
            "RequestId": null,
            "Mode": 0,
            "OperationCreatedOn": "/Date(1506409448000-0700)/",
            "InputParameters": [{"key": "Target", "value": {
                "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
                "LogicalName": "opportunity",
                "Attributes": [{"key": "name", "value": "Fabrikam rollout"}],
            }}],
            "PostEntityImages": [{"key": "postimage", "value": {
                "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
                "LogicalName": "opportunity",
                "Attributes": [
                    {"key": "name", "value": "Fabrikam rollout"},
                    {"key": "estimatedvalue", "value": {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 25000.5}},
                    {"key": "estimatedclosedate", "value": "/Date(1506384247000)/"},
                    {"key": "parentaccountid", "value": {"__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts", "Id": "75c2dd85-e89e-e711-8122-000d3aa2331c", "LogicalName": "account", "Name": "Fabrikam"}},
                    {"key": "versionnumber", "value": 1001},
                ],
                "FormattedValues": [{"key": "statecode", "value": "Open"}],
                "RowVersion": "1001",
            }}],
        })
    }

    /// Everything the `crm-events` function asks of a body that parsed.
    fn read(context: &RemoteExecutionContext, body: &[u8]) {
        let _ = context.is_complete();
        let _ = context.is_asynchronous();
        let _ = context.target();
        let _ = context.pre_image();
        let _ = context.post_image();
        let _ = (
            context.closes_an_opportunity(),
            context.closed_opportunity_id(),
        );
        let attributes = context.merged_attributes();
        let _ = opportunity_from_dataverse(
            &DataverseRecord::new(&attributes),
            &MappingConfig::default(),
        );
        let change = context.change_id(body);
        assert_eq!(change, context.change_id(body), "one body, one change id");
        let record = CrmRecordId::Dataverse(DataverseId::from(context.primary_entity_id));
        assert!(dataverse_change_key(&change, &record).is_ok(), "{change}");
        let _ = serde_json::to_string(context);
    }

    fn parse(body: &str) {
        if let Ok(context) = RemoteExecutionContext::parse(body) {
            read(&context, body.as_bytes());
        }
    }

    /// JSON built from the member names and texts the entity and pair readers look at.
    fn entity_shaped() -> impl Strategy<Value = Value> {
        const NAMES: [&str; 11] = [
            "key",
            "Key",
            "value",
            "Value",
            "__type",
            "LogicalName",
            "Attributes",
            "FormattedValues",
            "Id",
            "Name",
            "RowVersion",
        ];
        const TEXTS: [&str; 7] = [
            "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
            "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
            "Money:http://schemas.microsoft.com/xrm/2011/Contracts",
            "OptionSetValue",
            "/Date(1506384247000)/",
            "75c2dd85-e89e-e711-8122-000d3aa2331c",
            "parentaccountid",
        ];
        let leaf = prop_oneof![
            json_value(),
            prop::sample::select(TEXTS.to_vec()).prop_map(|text| Value::String(text.to_owned())),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(NAMES.to_vec()), inner), 0..7)
                    .prop_map(|members| {
                        Value::Object(
                            members
                                .into_iter()
                                .map(|(name, value)| (name.to_owned(), value))
                                .collect(),
                        )
                    }),
            ]
        })
    }

    /// An object with the members of a serialized `Entity`, each maybe missing or odd.
    fn entity_like() -> impl Strategy<Value = Value> {
        let kind = prop::sample::select(vec![
            "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
            "Entity",
            "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
        ]);
        (
            prop::option::of(kind),
            prop::option::of(prop_oneof![
                Just(Value::Null),
                Just(Value::String("opportunity".to_owned())),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                json_value(),
            ]),
            prop::option::of(entity_shaped()),
            prop::option::of(entity_shaped()),
        )
            .prop_map(|(kind, logical_name, attributes, formatted_values)| {
                let mut object = Map::new();
                let members = [
                    ("__type", kind.map(|kind| Value::String(kind.to_owned()))),
                    ("LogicalName", logical_name),
                    ("Attributes", attributes),
                    ("FormattedValues", formatted_values),
                ];
                for (name, value) in members {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                Value::Object(object)
            })
    }

    proptest! {
        #[test]
        fn entities_and_pairs_read_in_place_read_as_their_serde_types(
            value in prop_oneof![entity_shaped(), entity_like()],
        ) {
            prop_assert_eq!(
                entity_columns(&value),
                WireEntity::from_value(&value).map(|entity| entity.decoded_attributes())
            );
            let through_serde: Option<KeyValuePair> = serde_json::from_value(value.clone()).ok();
            prop_assert_eq!(
                pair_in(&value).map(|(key, value)| KeyValuePair { key: key.to_owned(), value: value.clone() }),
                through_serde.clone()
            );
            prop_assert_eq!(pair_from(value), through_serde);
        }

        #[test]
        fn any_body_is_read_or_refused_without_panic(body in wire_text()) {
            parse(&body);
        }

        #[test]
        fn any_bytes_are_read_or_refused_without_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(context) = RemoteExecutionContext::parse_bytes(&body) {
                read(&context, &body);
            }
        }

        #[test]
        fn any_json_is_read_or_refused_without_panic(value in json_value()) {
            parse(&value.to_string());
        }

        #[test]
        fn a_sample_with_one_value_replaced_is_read_or_refused_without_panic(
            documented in any::<bool>(),
            which in any::<prop::sample::Index>(),
            with in prop_oneof![json_value(), wire_text().prop_map(Value::String)],
        ) {
            let sample = if documented {
                serde_json::from_str(DOCUMENTED).unwrap()
            } else {
                opportunity_update()
            };
            parse(&mutated(&sample, which, with).to_string());
        }

        #[test]
        fn attribute_values_decode_without_panic(value in json_value(), text in wire_text()) {
            let _ = decode_value(&value);
            let _ = decode_attributes(&[KeyValuePair { key: text.clone(), value: value.clone() }]);
            let _ = WireEntity::from_value(&value).map(|entity| (entity.decoded_attributes(), entity.version()));
            let _ = EntityReference::from_value(&value);
            let _ = parse_wcf_date(&text);
        }

        #[test]
        fn error_bodies_are_read_without_panic(
            body in wire_text(),
            sample in prop::sample::select(ERRORS.to_vec()),
            which in any::<prop::sample::Index>(),
            with in prop_oneof![json_value(), wire_text().prop_map(Value::String)],
        ) {
            for body in [body, mutated(&serde_json::from_str(sample).unwrap(), which, with).to_string()] {
                let error = WebApiError::parse(&body);
                let _ = (error.sub_error_code(), error.inner_message(), error.to_string());
            }
        }

        #[test]
        fn webhook_headers_are_read_without_panic(
            headers in prop::collection::vec((wire_text(), wire_text()), 0..8),
        ) {
            let _ = WebhookHeaders::from_pairs(headers);
        }

        #[test]
        fn wcf_dates_read_back(millis in -8_000_000_000_000_i64..8_000_000_000_000) {
            let date = DateTime::<Utc>::from_timestamp_millis(millis).unwrap();
            prop_assert_eq!(parse_wcf_date(&format_wcf_date(date)), Some(date));
        }
    }
}
