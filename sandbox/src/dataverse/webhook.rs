//! Dataverse webhooks: the `RemoteExecutionContext` body (shaped like the documented
//! sample, `tests/data/dataverse-webhook-remoteexecutioncontext.2021.json`), its headers,
//! per-target authentication and the 256 KB rule. Delivery itself (one retry, only for
//! 502/503/504) is `delivery.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::schema::{self, Access, Kind, TableDef};
use super::store::lookup_target;
use super::{State, WEBHOOK_SIZE_LIMIT};
use crate::SandboxConfig;
use crate::delivery::{Acceptance, Delivery};
use crate::faults::Service;
use crate::identities::{DATAVERSE_BUSINESS_UNIT_ID, DATAVERSE_ORGANIZATION_ID};
use crate::records::Row;

const ENTITY: &str = "Entity:http://schemas.microsoft.com/xrm/2011/Contracts";
const ENTITY_REFERENCE: &str = "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts";
const MONEY: &str = "Money:http://schemas.microsoft.com/xrm/2011/Contracts";
const OPTION_SET_VALUE: &str = "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts";
/// `OrganizationName` in webhook bodies.
pub const ORGANIZATION_NAME: &str = "cosellsandbox";
/// Header added when the body exceeds 256 KB (value UNKNOWN; `true` chosen).
pub const SIZE_EXCEEDED_HEADER: &str = "x-ms-dynamics-msg-size-exceeded";

/// Webhook behaviour switches (`/_sandbox/dataverse/webhook-options`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Treat every body as over 256 KB.
    pub size_exceeded: bool,
    /// Tables (logical names) with Create/Update steps; default `["opportunity"]`.
    pub entities: Vec<String>,
    /// Filtering attributes of the Update step (empty = every update).
    pub filtering_attributes: Vec<String>,
    /// Register a `PreImage` (all columns before the update) besides the `PostImage`.
    pub pre_image: bool,
    /// Suppress webhooks of writes sent with `MSCRM.BypassBusinessLogicExecution:
    /// CustomAsync` or `MSCRM.BypassCustomPluginExecution: true` (behaviour [?]).
    pub honour_bypass_headers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            size_exceeded: false,
            entities: vec!["opportunity".into()],
            filtering_attributes: Vec::new(),
            pre_image: false,
            honour_bypass_headers: false,
        }
    }
}

/// A partial [`Options`] update.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsPatch {
    size_exceeded: Option<bool>,
    entities: Option<Vec<String>>,
    filtering_attributes: Option<Vec<String>>,
    pre_image: Option<bool>,
    honour_bypass_headers: Option<bool>,
}

impl Options {
    pub fn apply(&mut self, patch: OptionsPatch) {
        if let Some(v) = patch.size_exceeded {
            self.size_exceeded = v;
        }
        if let Some(v) = patch.entities {
            self.entities = v;
        }
        if let Some(v) = patch.filtering_attributes {
            self.filtering_attributes = v;
        }
        if let Some(v) = patch.pre_image {
            self.pre_image = v;
        }
        if let Some(v) = patch.honour_bypass_headers {
            self.honour_bypass_headers = v;
        }
    }
}

/// The default target set through `PUT /_sandbox/dataverse/webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTarget {
    pub url: String,
    /// 4 / `WebhookKey`, 5 / `HttpHeader`, 6 / `HttpQueryString`; absent = no auth.
    #[serde(default)]
    pub authtype: Option<Value>,
    #[serde(default)]
    pub authvalue: Option<String>,
}

/// How a target authenticates the POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    /// `?code=<value>`.
    WebhookKey(String),
    Headers(Vec<(String, String)>),
    Query(Vec<(String, String)>),
}

impl Auth {
    /// From a `serviceendpoint`'s `authtype` and `authvalue`.
    pub fn from_settings(authtype: Option<i64>, authvalue: Option<&str>) -> Result<Self, String> {
        match (authtype, authvalue) {
            (Some(4), Some(value)) => Ok(Auth::WebhookKey(value.to_owned())),
            (Some(4), None) => Err("authtype 4 (WebhookKey) needs an authvalue (the code)".into()),
            (Some(5), Some(xml)) => parse_settings(xml).map(Auth::Headers),
            (Some(6), Some(xml)) => parse_settings(xml).map(Auth::Query),
            (Some(5 | 6), None) => Err(
                "authtype 5/6 needs an authvalue <settings><setting name=\"k\" value=\"v\"/></settings>"
                    .into(),
            ),
            _ => Ok(Auth::None),
        }
    }

    /// From the control API (`authtype` as a number or a name).
    pub fn from_control(target: &ControlTarget) -> Result<Self, String> {
        let authtype = match &target.authtype {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(name)) => Some(match name.to_ascii_lowercase().as_str() {
                "webhookkey" => 4,
                "httpheader" => 5,
                "httpquerystring" => 6,
                other => return Err(format!("unknown authtype '{other}'")),
            }),
            Some(other) => return Err(format!("unknown authtype {other}")),
        };
        if authtype.is_some_and(|t| !(4..=6).contains(&t)) {
            return Err(
                "authtype must be 4 (WebhookKey), 5 (HttpHeader) or 6 (HttpQueryString)".into(),
            );
        }
        Self::from_settings(authtype, target.authvalue.as_deref())
    }
}

/// Parses `<settings><setting name="k" value="v"/>…</settings>` (the HttpHeader /
/// HttpQueryString `authvalue` format, [3p]).
pub(crate) fn parse_settings(xml: &str) -> Result<Vec<(String, String)>, String> {
    use quick_xml::Reader;
    use quick_xml::events::Event as XmlEvent;
    let invalid = || {
        format!("authvalue '{xml}' is not <settings><setting name=\"k\" value=\"v\"/></settings>")
    };
    let mut reader = Reader::from_str(xml);
    let mut pairs = Vec::new();
    let mut saw_root = false;
    loop {
        match reader.read_event() {
            Ok(XmlEvent::Start(e)) | Ok(XmlEvent::Empty(e)) => match e.local_name().as_ref() {
                "settings" => saw_root = true,
                "setting" => {
                    let (mut name, mut value) = (None, None);
                    for attribute in e.attributes() {
                        let attribute = attribute.map_err(|_| invalid())?;
                        let text = attribute
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|_| invalid())?
                            .into_owned();
                        match attribute.key.local_name().as_ref() {
                            "name" => name = Some(text),
                            "value" => value = Some(text),
                            _ => {}
                        }
                    }
                    match (name, value) {
                        (Some(n), Some(v)) if !n.is_empty() => pairs.push((n, v)),
                        _ => return Err(invalid()),
                    }
                }
                _ => return Err(invalid()),
            },
            Ok(XmlEvent::Eof) => break,
            Ok(XmlEvent::Text(t)) if t.xml10_content().trim().is_empty() => {}
            Ok(XmlEvent::End(_) | XmlEvent::Decl(_) | XmlEvent::Comment(_)) => {}
            Ok(_) | Err(_) => return Err(invalid()),
        }
    }
    if !saw_root || pairs.is_empty() {
        return Err(invalid());
    }
    Ok(pairs)
}

/// The default target.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum DefaultTarget {
    /// `SandboxConfig::dataverse_webhook_url` (no auth).
    #[default]
    FromConfig,
    Set {
        url: String,
        auth: Auth,
    },
    Cleared,
}

/// Webhook settings of the environment.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub default_target: DefaultTarget,
    pub options: Options,
    /// Stable `sdkmessageprocessingstep` ids per target, table and message.
    steps: HashMap<String, String>,
}

/// One delivery target.
#[derive(Debug, Clone)]
struct Target {
    key: String,
    url: String,
    auth: Auth,
}

/// A create or update that may fire webhooks.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub message: &'static str,
    pub entity: String,
    pub id: String,
    pub user: String,
    pub at: DateTime<Utc>,
    /// Columns in `InputParameters.Target`.
    pub target: Vec<String>,
    /// Columns the request wrote (for filtering attributes).
    pub written: Vec<String>,
    pub post: Map<String, Value>,
    pub pre: Option<Map<String, Value>>,
    /// The write asked to bypass custom business logic.
    pub bypass: bool,
    /// For `Win` / `Lose`: the status reason the opportunity was closed with.
    pub close_status: Option<i64>,
}

impl Event {
    pub fn new(
        message: &'static str,
        def: &TableDef,
        row: &Row,
        user: &str,
        at: DateTime<Utc>,
        target: Vec<String>,
        written: Vec<String>,
    ) -> Self {
        let mut unique = Vec::with_capacity(target.len());
        for column in target {
            if !unique.contains(&column) {
                unique.push(column);
            }
        }
        Self {
            message,
            entity: def.logical.to_owned(),
            id: row.id.clone(),
            user: user.to_owned(),
            at,
            target: unique,
            written,
            post: row.fields.clone(),
            pre: None,
            bypass: false,
            close_status: None,
        }
    }

    /// The `Win` / `Lose` message of a close with status reason `status`, instead of the
    /// `Update` the close wrote.
    pub fn into_close(mut self, won: bool, status: i64) -> Self {
        self.message = if won { "Win" } else { "Lose" };
        self.close_status = Some(status);
        self
    }

    pub fn with_pre_image(mut self, pre: Map<String, Value>) -> Self {
        self.pre = Some(pre);
        self
    }
}

fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// `/Date(1506384247000)/`.
fn wcf_date(millis: i64) -> String {
    format!("/Date({millis})/")
}

fn entity_reference(logical: &str, id: &Value) -> Value {
    json!({
        "__type": ENTITY_REFERENCE,
        "Id": id,
        "KeyAttributes": [],
        "LogicalName": logical,
        "Name": null,
        "RowVersion": null,
    })
}

/// The SDK encoding of column `name` of a stored row; `None` for unknown or hidden columns.
fn attribute(def: &TableDef, fields: &Map<String, Value>, name: &str) -> Option<Value> {
    let column = def.column(name)?;
    if column.access == Access::WriteOnly {
        return None; // secrets never travel in webhooks
    }
    let value = fields
        .get(&column.read_name())
        .cloned()
        .unwrap_or(Value::Null);
    if value.is_null() {
        return Some(Value::Null);
    }
    Some(match &column.kind {
        Kind::Lookup { .. } => {
            let row = Row {
                id: String::new(),
                fields: fields.clone(),
                version: 0,
            };
            entity_reference(&lookup_target(column, &row), &value)
        }
        Kind::Money => json!({ "__type": MONEY, "Value": value }),
        Kind::Picklist { .. } | Kind::State { .. } | Kind::Status { .. } => {
            json!({ "__type": OPTION_SET_VALUE, "Value": value })
        }
        kind @ (Kind::DateTime | Kind::DateOnly) => value
            .as_str()
            .and_then(|text| schema::epoch_millis(kind, text))
            .map_or(value.clone(), |ms| json!(wcf_date(ms))),
        _ => value,
    })
}

fn entity(def: &TableDef, id: &str, attributes: Vec<Value>, with_type: bool) -> Value {
    let mut object = Map::new();
    if with_type {
        object.insert("__type".into(), json!(ENTITY));
    }
    object.insert("Attributes".into(), Value::Array(attributes));
    object.insert("EntityState".into(), Value::Null);
    object.insert("FormattedValues".into(), json!([]));
    object.insert("Id".into(), json!(id));
    object.insert("KeyAttributes".into(), json!([]));
    object.insert("LogicalName".into(), json!(def.logical));
    object.insert("RelatedEntities".into(), json!([]));
    object.insert("RowVersion".into(), Value::Null);
    Value::Object(object)
}

/// An image: every non-null readable column.
fn image(def: &TableDef, id: &str, fields: &Map<String, Value>) -> Value {
    let attributes = def
        .columns
        .iter()
        .filter_map(|c| {
            let value = attribute(def, fields, &c.name)?;
            (!value.is_null()).then(|| json!({ "key": c.name, "value": value }))
        })
        .collect();
    entity(def, id, attributes, false)
}

/// The `RemoteExecutionContext` for one target.
fn context(
    def: &TableDef,
    event: &Event,
    correlation_id: &str,
    operation_id: &str,
    step_id: &str,
    pre_image: bool,
) -> Value {
    let target_attributes = event
        .target
        .iter()
        .filter_map(|name| {
            attribute(def, &event.post, name).map(|value| json!({ "key": name, "value": value }))
        })
        .collect();
    let mut primary_id = json!(event.id);
    let input = if let Some(status) = event.close_status {
        // A close carries the `opportunityclose` activity and the status reason, no target and
        // no image; plug-in authors report `PrimaryEntityId` empty for these messages.
        primary_id = json!(uuid::Uuid::nil().hyphenated().to_string());
        let close = json!({
            "__type": ENTITY,
            "Attributes": [
                { "key": "opportunityid", "value": entity_reference(def.logical, &json!(event.id)) },
                { "key": "subject", "value": format!("Opportunity Close - {}", event.message) },
            ],
            "EntityState": null,
            "FormattedValues": [],
            "Id": "00000000-0000-0000-0000-000000000000",
            "KeyAttributes": [],
            "LogicalName": "opportunityclose",
            "RelatedEntities": [],
            "RowVersion": null,
        });
        json!([
            { "key": "OpportunityClose", "value": close },
            { "key": "Status", "value": { "__type": OPTION_SET_VALUE, "Value": status } },
        ])
    } else {
        json!([{ "key": "Target", "value": entity(def, &event.id, target_attributes, true) }])
    };
    let post_images = if event.close_status.is_some() {
        json!([])
    } else {
        json!([{ "key": "PostImage", "value": image(def, &event.id, &event.post) }])
    };
    let output = if event.message == "Create" {
        json!([{ "key": "id", "value": event.id }])
    } else {
        json!([])
    };
    let pre_images = match (&event.pre, pre_image) {
        (Some(pre), true) => json!([{ "key": "PreImage", "value": image(def, &event.id, pre) }]),
        _ => json!([]),
    };
    json!({
        "BusinessUnitId": DATAVERSE_BUSINESS_UNIT_ID,
        "CorrelationId": correlation_id,
        "Depth": 1,
        "InitiatingUserId": event.user,
        "InputParameters": input,
        "IsExecutingOffline": false,
        "IsInTransaction": false,
        "IsOfflinePlayback": false,
        "IsolationMode": 1,
        "MessageName": event.message,
        "Mode": 1,
        "OperationCreatedOn": wcf_date(event.at.timestamp_millis()),
        "OperationId": operation_id,
        "OrganizationId": DATAVERSE_ORGANIZATION_ID,
        "OrganizationName": ORGANIZATION_NAME,
        "OutputParameters": output,
        "OwningExtension": {
            "Id": step_id,
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": null,
            "RowVersion": null,
        },
        "ParentContext": null,
        "PostEntityImages": post_images,
        "PreEntityImages": pre_images,
        "PrimaryEntityId": primary_id,
        "PrimaryEntityName": def.logical,
        "RequestId": null,
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserId": event.user,
    })
}

impl State {
    /// Registered webhook service endpoints plus the default target.
    fn webhook_targets(&self, config: &SandboxConfig) -> Vec<Target> {
        let mut targets: Vec<Target> = self
            .rows("serviceendpoint")
            .filter(|row| row.fields.get("contract").and_then(Value::as_i64) == Some(8))
            .filter_map(|row| {
                let url = row.fields.get("url")?.as_str()?.to_owned();
                let auth = Auth::from_settings(
                    row.fields.get("authtype").and_then(Value::as_i64),
                    row.fields.get("authvalue").and_then(Value::as_str),
                )
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, endpoint = %row.id, "webhook sent without auth");
                    Auth::None
                });
                Some(Target {
                    key: row.id.clone(),
                    url,
                    auth,
                })
            })
            .collect();
        let default = match &self.hook.default_target {
            DefaultTarget::FromConfig => config.dataverse_webhook_url.clone().map(|url| Target {
                key: "default".into(),
                url,
                auth: Auth::None,
            }),
            DefaultTarget::Set { url, auth } => Some(Target {
                key: "default".into(),
                url: url.clone(),
                auth: auth.clone(),
            }),
            DefaultTarget::Cleared => None,
        };
        targets.extend(default);
        targets
    }

    pub(crate) fn webhook_settings(&mut self) -> &mut Settings {
        &mut self.hook
    }

    /// The deliveries `event` causes (none when no step applies). Call under the world
    /// lock, then hand them to `delivery::spawn` after releasing it.
    pub(crate) fn webhook_deliveries(
        &mut self,
        config: &SandboxConfig,
        event: &Event,
    ) -> Vec<Delivery> {
        let options = self.hook.options.clone();
        if !options.entities.iter().any(|e| e == &event.entity)
            || (event.bypass && options.honour_bypass_headers)
            || (event.message == "Update"
                && !options.filtering_attributes.is_empty()
                && !event
                    .written
                    .iter()
                    .any(|c| options.filtering_attributes.contains(c)))
        {
            return Vec::new();
        }
        let Some(def) = self.def(&event.entity).cloned() else {
            return Vec::new();
        };
        let organization = url::Url::parse(&config.base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "localhost".into());
        let correlation_id = new_guid();
        let mut deliveries = Vec::new();
        for target in self.webhook_targets(config) {
            let step_id = self
                .hook
                .steps
                .entry(format!("{}|{}|{}", target.key, event.entity, event.message))
                .or_insert_with(new_guid)
                .clone();
            let mut body = context(
                &def,
                event,
                &correlation_id,
                &new_guid(),
                &step_id,
                options.pre_image,
            );
            let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
            let exceeded = options.size_exceeded || bytes.len() > WEBHOOK_SIZE_LIMIT;
            if exceeded && let Value::Object(members) = &mut body {
                for member in [
                    "ParentContext",
                    "InputParameters",
                    "PreEntityImages",
                    "PostEntityImages",
                ] {
                    members.remove(member);
                }
                bytes = serde_json::to_vec(&body).unwrap_or_default();
            }
            let mut headers = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                (
                    "x-ms-dynamics-organization".to_owned(),
                    organization.clone(),
                ),
                ("x-ms-dynamics-entity-name".to_owned(), event.entity.clone()),
                (
                    "x-ms-dynamics-request-name".to_owned(),
                    event.message.to_owned(),
                ),
                (
                    "x-ms-correlation-request-id".to_owned(),
                    correlation_id.clone(),
                ),
            ];
            if exceeded {
                headers.push((SIZE_EXCEEDED_HEADER.to_owned(), "true".to_owned()));
            }
            let url = match &target.auth {
                Auth::None => target.url.clone(),
                Auth::WebhookKey(code) => with_query(&target.url, &[("code".into(), code.clone())]),
                Auth::Query(pairs) => with_query(&target.url, pairs),
                Auth::Headers(pairs) => {
                    headers.extend(pairs.iter().cloned());
                    target.url.clone()
                }
            };
            deliveries.push(Delivery {
                service: Service::Dataverse,
                label: format!("{} {}", event.entity, event.message),
                url,
                headers,
                body: bytes,
                max_attempts: config.dataverse_delivery_attempts,
                acceptance: Acceptance::Any2xxRetryGatewayErrors,
            });
        }
        deliveries
    }
}

fn with_query(url: &str, pairs: &[(String, String)]) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            {
                let mut query = parsed.query_pairs_mut();
                for (k, v) in pairs {
                    query.append_pair(k, v);
                }
            }
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_settings_xml_of_header_and_query_auth() {
        assert_eq!(
            parse_settings(
                r#"<settings><setting name="x-api-key" value="s3cr&amp;t"/><setting name="k2" value="v2" /></settings>"#
            ),
            Ok(vec![
                ("x-api-key".to_owned(), "s3cr&t".to_owned()),
                ("k2".to_owned(), "v2".to_owned())
            ])
        );
        for bad in [
            "",
            "plain",
            "<settings/>",
            "<settings><setting name=\"k\"/></settings>",
            "<other/>",
        ] {
            assert!(parse_settings(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_targets_accept_names_or_numbers() {
        let target = |authtype: Value, authvalue: &str| ControlTarget {
            url: "http://h/x".into(),
            authtype: Some(authtype),
            authvalue: Some(authvalue.into()),
        };
        assert_eq!(
            Auth::from_control(&target(json!("WebhookKey"), "c")),
            Ok(Auth::WebhookKey("c".into()))
        );
        assert_eq!(
            Auth::from_control(&target(
                json!(6),
                r#"<settings><setting name="a" value="b"/></settings>"#
            )),
            Ok(Auth::Query(vec![("a".into(), "b".into())]))
        );
        assert!(Auth::from_control(&target(json!(2), "x")).is_err());
        assert_eq!(
            with_query("http://h/x?y=1", &[("code".into(), "a b".into())]),
            "http://h/x?y=1&code=a+b"
        );
    }
}
