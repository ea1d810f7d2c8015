//! Salesforce wire formats.
//!
//! - [`OutboundMessage`]: the SOAP 1.1 `notifications` call an Outbound Message delivers,
//!   parsed with DTDs and non-predefined entities refused (no XXE, no entity expansion) and
//!   with bounded size, depth and notification count.
//! - [`ack_response`] / [`soap_fault`]: what the listener answers (an `Ack` of `true`, or a
//!   fault so that Salesforce delivers the message again).
//! - [`RestError`], [`CreateResponse`], [`UpsertResponse`]: REST API response bodies.
//! - [`CompositeRequest`] / [`CompositeResponse`]: the Composite resource's bodies (several
//!   subrequests in one API call, docs/salesforce.md#composite-requests).

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{RAW_TEXT_LIMIT, scan_json_string_member, strip_bom, truncate_chars};

/// Namespace of the `notifications` element and its children.
pub const OUTBOUND_NAMESPACE: &str = "http://soap.sforce.com/2005/09/outbound";
/// SOAP 1.1 envelope namespace.
pub const SOAP11_ENVELOPE_NAMESPACE: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace (not what Salesforce sends, accepted anyway).
pub const SOAP12_ENVELOPE_NAMESPACE: &str = "http://www.w3.org/2003/05/soap-envelope";
/// XML Schema instance namespace (`xsi:type`, `xsi:nil`).
pub const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// At most this many `Notification`s per message (`maxOccurs="100"` in the WSDL).
pub const MAX_NOTIFICATIONS: usize = 100;
/// Default input bound of [`OutboundMessage::parse`]: 6 MiB, the Lambda request payload limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 6 * 1024 * 1024;
/// Deepest element nesting accepted (a real message nests 6 levels).
pub const MAX_ELEMENT_DEPTH: usize = 32;

const FORBIDDEN_DTD: &str = "DTD/external entities are not accepted";

/// Why an Outbound Message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// A DTD (`<!DOCTYPE`) or an entity other than the five predefined ones and numeric
    /// character references: refused outright (XXE, entity expansion).
    #[error("forbidden XML: {0}")]
    Forbidden(String),
    /// Not well-formed XML, not a SOAP envelope with a `notifications` body, or a required part
    /// (`OrganizationId`, a notification's `Id`) missing.
    #[error("malformed outbound message: {0}")]
    Malformed(String),
    /// The input is larger than the caller's limit.
    #[error("outbound message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// More notifications than the WSDL allows.
    #[error("outbound message carries {count} notifications, more than {limit}")]
    TooManyNotifications {
        /// Notifications found.
        count: usize,
        /// The limit ([`MAX_NOTIFICATIONS`]).
        limit: usize,
    },
}

fn malformed(reason: impl Into<String>) -> SoapError {
    SoapError::Malformed(reason.into())
}

fn forbidden() -> SoapError {
    SoapError::Forbidden(FORBIDDEN_DTD.to_owned())
}

/// One Outbound Message: the `notifications` element of the SOAP body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// The sending org (check it against the configured org, see
    /// [`is_from_organization`](Self::is_from_organization)).
    pub organization_id: String,
    /// The workflow action (outbound message definition) that fired.
    pub action_id: Option<String>,
    /// Session id, only when "Send Session ID" is on; `xsi:nil` or empty → `None`.
    pub session_id: Option<String>,
    /// Enterprise SOAP endpoint for call-backs.
    pub enterprise_url: Option<String>,
    /// Partner SOAP endpoint for call-backs.
    pub partner_url: Option<String>,
    /// The notifications, in document order (1 to 100; zero is accepted).
    pub notifications: Vec<Notification>,
}

/// One `Notification`: its id (the redelivery / dedupe key) and the record's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The notification id; the same id arrives again when Salesforce redelivers.
    pub id: String,
    /// The object type from the `sObject`'s `xsi:type` without prefix (`"sf:Opportunity"` →
    /// `"Opportunity"`); `None` when the type or the whole `sObject` is missing (a record
    /// deleted before delivery carries no data).
    pub sobject_type: Option<String>,
    /// The `sObject`'s children by local name: text as a string (booleans, numbers and dates
    /// stay strings for the caller to map), `xsi:nil="true"` → `null`, an element with child
    /// elements → a nested object, a repeated name → an array of its values.
    pub fields: Map<String, Value>,
}

impl Notification {
    /// The record id (`sf:Id`), when sent as text.
    pub fn record_id(&self) -> Option<&str> {
        self.fields.get("Id").and_then(Value::as_str)
    }

    /// A field's text, when it is a string (not nil, not nested).
    pub fn field_text(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

impl OutboundMessage {
    /// Parses a message no larger than [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub fn parse(xml: &str) -> Result<Self, SoapError> {
        Self::parse_with_limit(xml, DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// Parses a message no larger than `max_bytes`.
    ///
    /// Refuses, in this order: input over `max_bytes` ([`SoapError::TooLarge`]); any DTD or
    /// `<!ENTITY` declaration, and any reference to an entity other than `lt`, `gt`, `amp`,
    /// `quot`, `apos` or a numeric character reference ([`SoapError::Forbidden`]); ill-formed
    /// XML, nesting deeper than [`MAX_ELEMENT_DEPTH`], a root other than a SOAP `Envelope`, a
    /// `Body` without `notifications` in [`OUTBOUND_NAMESPACE`], a missing `OrganizationId` or
    /// notification `Id` ([`SoapError::Malformed`]); more than [`MAX_NOTIFICATIONS`]
    /// notifications ([`SoapError::TooManyNotifications`]). Unknown elements are ignored.
    pub fn parse_with_limit(xml: &str, max_bytes: usize) -> Result<Self, SoapError> {
        if xml.len() > max_bytes {
            return Err(SoapError::TooLarge {
                size: xml.len(),
                limit: max_bytes,
            });
        }
        let xml = strip_bom(xml);
        // Belt and braces: the event loop refuses DOCTYPE events too, but a declaration must be
        // refused as forbidden even where it also makes the document ill-formed.
        if contains_ignore_ascii_case(xml, "<!DOCTYPE")
            || contains_ignore_ascii_case(xml, "<!ENTITY")
        {
            return Err(forbidden());
        }
        let root = parse_tree(xml)?;
        Self::from_envelope(&root)
    }

    fn from_envelope(root: &Element) -> Result<Self, SoapError> {
        let envelope_ns = root.namespace.as_deref();
        if root.local != "Envelope"
            || !matches!(
                envelope_ns,
                Some(SOAP11_ENVELOPE_NAMESPACE | SOAP12_ENVELOPE_NAMESPACE)
            )
        {
            return Err(malformed(format!(
                "root element is {{{}}}{}, not a SOAP Envelope",
                envelope_ns.unwrap_or(""),
                root.local
            )));
        }
        let body = root
            .children
            .iter()
            .find(|child| child.local == "Body" && child.namespace.as_deref() == envelope_ns)
            .ok_or_else(|| malformed("the SOAP envelope has no Body"))?;
        let notifications = body
            .children
            .iter()
            .find(|child| {
                child.local == "notifications"
                    && child.namespace.as_deref() == Some(OUTBOUND_NAMESPACE)
            })
            .ok_or_else(|| {
                malformed(format!(
                    "the SOAP Body has no notifications element in {OUTBOUND_NAMESPACE}"
                ))
            })?;

        let organization_id = notifications
            .child_text("OrganizationId")
            .ok_or_else(|| malformed("OrganizationId is missing"))?;

        let items: Vec<&Element> = notifications.children_named("Notification").collect();
        if items.len() > MAX_NOTIFICATIONS {
            return Err(SoapError::TooManyNotifications {
                count: items.len(),
                limit: MAX_NOTIFICATIONS,
            });
        }
        let notifications_parsed = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| Notification::from_element(index, item))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self {
            organization_id,
            action_id: notifications.child_text("ActionId"),
            session_id: notifications.child_text("SessionId"),
            enterprise_url: notifications.child_text("EnterpriseUrl"),
            partner_url: notifications.child_text("PartnerUrl"),
            notifications: notifications_parsed,
        })
    }

    /// `true` when the message comes from `expected_org_id`. Salesforce ids exist in a 15-char
    /// case-sensitive and an 18-char form (15 + a case checksum); the first 15 characters are
    /// compared, so either form matches the other.
    pub fn is_from_organization(&self, expected_org_id: &str) -> bool {
        same_salesforce_id(&self.organization_id, expected_org_id)
    }
}

/// Compares two Salesforce ids in 15- or 18-character form.
pub fn same_salesforce_id(left: &str, right: &str) -> bool {
    let (left, right) = (left.trim(), right.trim());
    let valid = |id: &str| {
        (id.len() == 15 || id.len() == 18) && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
    };
    valid(left) && valid(right) && left[..15] == right[..15]
}

impl Notification {
    fn from_element(index: usize, element: &Element) -> Result<Self, SoapError> {
        let id = element
            .child_text("Id")
            .ok_or_else(|| malformed(format!("Notification {} has no Id", index + 1)))?;
        let sobject = element.children_named("sObject").next();
        let sobject_type = sobject
            .and_then(|sobject| sobject.xsi_type.as_deref())
            .map(|xsi_type| {
                xsi_type
                    .rsplit_once(':')
                    .map_or(xsi_type, |(_, local)| local)
                    .trim()
                    .to_owned()
            })
            .filter(|name| !name.is_empty());
        let fields = sobject.map(Element::fields).unwrap_or_default();
        Ok(Self {
            id,
            sobject_type,
            fields,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Responses the listener sends

const ACK_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
  <soapenv:Body>
    <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">
      <Ack>true</Ack>
    </notificationsResponse>
  </soapenv:Body>
</soapenv:Envelope>
"#;

/// The acknowledgement for a whole message (all its notifications): a `notificationsResponse`
/// with `<Ack>true</Ack>`. Send it with HTTP 200 and `Content-Type: text/xml; charset=utf-8`.
pub fn ack_response() -> &'static str {
    ACK_RESPONSE
}

/// A SOAP 1.1 fault (`faultcode` `soapenv:Server`, the XML-escaped `message` as
/// `faultstring`) telling Salesforce the message was not taken, so that it delivers it again.
/// Send it with HTTP 500 and `Content-Type: text/xml; charset=utf-8`.
pub fn soap_fault(message: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
            "\n  <soapenv:Body>\n    <soapenv:Fault>\n",
            "      <faultcode>soapenv:Server</faultcode>\n",
            "      <faultstring>{}</faultstring>\n",
            "    </soapenv:Fault>\n  </soapenv:Body>\n</soapenv:Envelope>\n"
        ),
        xml_escape(message)
    )
}

/// Escapes text for XML content or attribute values; characters XML 1.0 cannot carry
/// (control characters other than tab, newline and carriage return) become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            _ if is_xml_char(ch) => escaped.push(ch),
            _ => escaped.push('\u{fffd}'),
        }
    }
    escaped
}

/// XML 1.0 `Char` production (Rust `char` already excludes surrogates).
fn is_xml_char(ch: char) -> bool {
    matches!(ch, '\t' | '\n' | '\r' | '\u{20}'..='\u{fffd}' | '\u{10000}'..)
}

// ---------------------------------------------------------------------------------------------
// A minimal, hardened XML tree

/// An element of the parsed document: only what the Outbound Message reader needs.
#[derive(Debug, Default)]
struct Element {
    namespace: Option<String>,
    local: String,
    xsi_type: Option<String>,
    nil: bool,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn children_named<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children
            .iter()
            .filter(move |child| child.local == local)
    }

    /// Trimmed text of the first child named `local`; nil, empty or absent → `None`.
    fn child_text(&self, local: &str) -> Option<String> {
        let child = self.children_named(local).next()?;
        let text = child.text.trim();
        (!child.nil && !text.is_empty()).then(|| text.to_owned())
    }

    /// This element's value: nil → null, leaf → its text (untrimmed), else nested fields.
    fn value(&self) -> Value {
        if self.nil {
            Value::Null
        } else if self.children.is_empty() {
            Value::String(self.text.clone())
        } else {
            Value::Object(self.fields())
        }
    }

    /// The children by local name; a repeated name collects its values into an array.
    fn fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        for child in &self.children {
            let value = child.value();
            match fields.get_mut(&child.local) {
                None => {
                    fields.insert(child.local.clone(), value);
                }
                // Element values are never arrays, so an array is one collected earlier.
                Some(Value::Array(values)) => values.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
            }
        }
        fields
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Builds the element tree with quick-xml's namespace-aware reader, refusing DTDs and unknown
/// entities, checking end-tag names and bounding the depth.
fn parse_tree(xml: &str) -> Result<Element, SoapError> {
    let mut reader = NsReader::from_str(xml);
    {
        let config = reader.config_mut();
        config.expand_empty_elements = true;
        config.check_end_names = true;
        config.allow_unmatched_ends = false;
        config.allow_dangling_amp = false;
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|error| malformed(format!("XML error: {error}")))?;
        let namespace = match resolved {
            ResolveResult::Bound(namespace) => Some(namespace.0.to_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(prefix) => {
                return Err(malformed(format!("undeclared namespace prefix `{prefix}`")));
            }
        };
        match event {
            Event::DocType(_) => return Err(forbidden()),
            Event::Start(start) => {
                if root.is_some() {
                    return Err(malformed("content after the root element"));
                }
                if stack.len() >= MAX_ELEMENT_DEPTH {
                    return Err(malformed(format!(
                        "elements nested deeper than {MAX_ELEMENT_DEPTH}"
                    )));
                }
                let mut element = Element {
                    namespace,
                    local: start.local_name().as_ref().to_owned(),
                    ..Element::default()
                };
                for attribute in start.attributes() {
                    let attribute =
                        attribute.map_err(|error| malformed(format!("bad attribute: {error}")))?;
                    // Every attribute value is checked for entities, even the ignored ones.
                    let value = unescape(&attribute.value)?;
                    let (attribute_ns, local) = reader.resolver().resolve_attribute(attribute.key);
                    let in_xsi = matches!(
                        attribute_ns,
                        ResolveResult::Bound(namespace) if namespace.0 == XSI_NAMESPACE
                    );
                    if in_xsi && local.as_ref() == "type" {
                        element.xsi_type = Some(value.trim().to_owned());
                    } else if in_xsi && local.as_ref() == "nil" {
                        element.nil = matches!(value.trim(), "true" | "1");
                    }
                }
                stack.push(element);
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| malformed("end tag without a start tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Empty(_) => {
                // `expand_empty_elements` turns these into Start + End.
                return Err(malformed("unexpected empty-element event"));
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                match stack.last_mut() {
                    Some(element) => element.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(malformed("text outside the root element")),
                }
            }
            Event::CData(cdata) => match stack.last_mut() {
                Some(element) => element.text.push_str(&cdata.xml10_content()),
                None => return Err(malformed("CDATA outside the root element")),
            },
            Event::GeneralRef(reference) => {
                let ch = resolve_entity(&reference)?;
                match stack.last_mut() {
                    Some(element) => element.text.push(ch),
                    None => return Err(malformed("reference outside the root element")),
                }
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(malformed(format!(
                        "truncated document: <{}> is not closed",
                        open.local
                    )));
                }
                return root.ok_or_else(|| malformed("no root element"));
            }
        }
    }
}

/// Resolves `&name;` (given `name`): the five predefined entities and numeric character
/// references; any other name is forbidden.
fn resolve_entity(name: &str) -> Result<char, SoapError> {
    if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u32::from_str_radix(hex, 16).ok()
            }
            None if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => {
                number.parse::<u32>().ok()
            }
            _ => None,
        };
        return code
            .and_then(char::from_u32)
            .filter(|ch| is_xml_char(*ch))
            .ok_or_else(|| malformed(format!("invalid character reference &{name};")));
    }
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "quot" => Ok('"'),
        "apos" => Ok('\''),
        _ => Err(forbidden()),
    }
}

/// Unescapes an attribute value with [`resolve_entity`]; a bare `&` is malformed.
fn unescape(raw: &str) -> Result<String, SoapError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semicolon = after
            .find(';')
            .ok_or_else(|| malformed("unterminated entity reference in an attribute"))?;
        out.push(resolve_entity(&after[..semicolon])?);
        rest = &after[semicolon + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// REST API bodies

/// One entry of a REST error body `[{"message","errorCode","fields"?}]` (also the `errors`
/// entries of save results, which name the code `statusCode`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestError {
    /// Human-readable text.
    #[serde(default, deserialize_with = "lenient_string")]
    pub message: String,
    /// The `StatusCode` value, e.g. `INVALID_FIELD`, `REQUEST_LIMIT_EXCEEDED` (may be empty).
    #[serde(
        rename = "errorCode",
        alias = "statusCode",
        default,
        deserialize_with = "lenient_string"
    )]
    pub error_code: String,
    /// The fields concerned, when sent.
    #[serde(
        default,
        deserialize_with = "lenient_string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub fields: Vec<String>,
}

impl RestError {
    /// Reads an error body; never fails. Accepts the documented array, a single error object,
    /// a save result with `errors`, and the OAuth form `{"error","error_description"}`. Invalid
    /// JSON is scanned for `"message"`/`"errorCode"`; failing that, the trimmed body (cut to
    /// 512 characters) is the message. An empty body gives an empty list.
    pub fn parse_list(body: &str) -> Vec<Self> {
        let body = strip_bom(body).trim();
        if body.is_empty() {
            return Vec::new();
        }
        if let Ok(value) = serde_json::from_str::<Value>(body) {
            let parsed = Self::from_json(&value);
            if !parsed.is_empty() {
                return parsed;
            }
        }
        let message = scan_json_string_member(body, "message");
        let error_code = scan_json_string_member(body, "errorCode");
        if message.is_some() || error_code.is_some() {
            return vec![Self {
                message: message.unwrap_or_default(),
                error_code: error_code.unwrap_or_default(),
                fields: Vec::new(),
            }];
        }
        vec![Self {
            message: truncate_chars(body, RAW_TEXT_LIMIT),
            ..Self::default()
        }]
    }

    fn from_json(value: &Value) -> Vec<Self> {
        match value {
            Value::Array(items) => items.iter().filter_map(Self::from_item).collect(),
            Value::Object(object) => {
                if let Some(Value::Array(errors)) = object.get("errors") {
                    return errors.iter().filter_map(Self::from_item).collect();
                }
                if let Some(Value::String(code)) = object.get("error") {
                    return vec![Self {
                        message: object
                            .get("error_description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        error_code: code.clone(),
                        fields: Vec::new(),
                    }];
                }
                Self::from_item(value).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// An error object with a message or a code; a bare string becomes the message.
    fn from_item(item: &Value) -> Option<Self> {
        match item {
            Value::String(text) => Some(Self {
                message: text.clone(),
                ..Self::default()
            }),
            Value::Object(_) => serde_json::from_value::<Self>(item.clone())
                .ok()
                .filter(|error| !error.message.is_empty() || !error.error_code.is_empty()),
            _ => None,
        }
    }

    /// `true` when `error_code` is `code` (ASCII case-insensitive).
    pub fn is(&self, code: &str) -> bool {
        self.error_code.eq_ignore_ascii_case(code)
    }
}

impl std::fmt::Display for RestError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.error_code.is_empty() {
            formatter.write_str(&self.message)?;
        } else {
            write!(formatter, "{}: {}", self.error_code, self.message)?;
        }
        if !self.fields.is_empty() {
            write!(formatter, " [{}]", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// The body of a successful create (`201`): `{"id","errors","success"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateResponse {
    /// The new record's id (absent or `null` only on failure).
    #[serde(default)]
    pub id: Option<String>,
    /// Whether the record was saved.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub success: bool,
    /// Errors (empty on success).
    #[serde(default, deserialize_with = "lenient_errors")]
    pub errors: Vec<RestError>,
}

/// The body of an upsert by external id (`201` created / `200` updated, API v46+):
/// `{"id","success","errors","created"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpsertResponse {
    /// The record's id.
    #[serde(default)]
    pub id: Option<String>,
    /// Whether the record was saved.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub success: bool,
    /// Errors (empty on success).
    #[serde(default, deserialize_with = "lenient_errors")]
    pub errors: Vec<RestError>,
    /// `true` when the upsert created the record; `None` when not sent (use the HTTP status).
    #[serde(default)]
    pub created: Option<bool>,
}

impl CreateResponse {
    /// Parses the body (unknown members ignored, `null`s tolerated).
    pub fn parse(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(strip_bom(body))
    }
}

impl UpsertResponse {
    /// Parses the body (unknown members ignored, `null`s tolerated).
    pub fn parse(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(strip_bom(body))
    }
}

/// At most this many subrequests in one Composite request.
pub const MAX_COMPOSITE_SUBREQUESTS: usize = 25;

/// The body of `POST /services/data/vXX.X/composite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeRequest {
    /// Roll back every change of the request when a subrequest fails.
    pub all_or_none: bool,
    /// The subrequests, run in order (at most [`MAX_COMPOSITE_SUBREQUESTS`]).
    pub composite_request: Vec<CompositeSubrequest>,
}

/// One subrequest: a REST request whose `url` and `body` may name an earlier subrequest's
/// answer as `@{referenceId.path}` (e.g. `@{newAccount.id}`, `@{found.records[0].Id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubrequest {
    /// `GET`, `POST`, `PATCH`, …
    pub method: String,
    /// `/services/data/vXX.X/…` with its query.
    pub url: String,
    /// The name later subrequests and the answer use.
    pub reference_id: String,
    /// The JSON body, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The answer of a Composite request (200 whatever its subrequests answered):
/// `{"compositeResponse": [{"body","httpHeaders","httpStatusCode","referenceId"}]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeResponse {
    /// One answer per subrequest, in order.
    #[serde(default, deserialize_with = "lenient_subresponses")]
    pub composite_response: Vec<CompositeSubresponse>,
}

/// One subrequest's answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubresponse {
    /// What the plain request would have answered as its body (`null` for none).
    #[serde(default)]
    pub body: Value,
    /// Its headers (e.g. `Location`).
    #[serde(default, deserialize_with = "lenient_headers")]
    pub http_headers: Map<String, Value>,
    /// Its HTTP status (0 when missing or not a status).
    #[serde(default, deserialize_with = "lenient_status")]
    pub http_status_code: u16,
    /// The subrequest's `referenceId`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub reference_id: String,
}

/// The code Salesforce gives the subrequests of a rolled-back or stopped Composite request
/// other than the one that failed.
pub const PROCESSING_HALTED: &str = "PROCESSING_HALTED";

impl CompositeResponse {
    /// Parses the body (unknown members ignored, `null`s and odd member types tolerated).
    pub fn parse(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(strip_bom(body))
    }

    /// The answer of the subrequest named `reference_id`.
    pub fn get(&self, reference_id: &str) -> Option<&CompositeSubresponse> {
        self.composite_response
            .iter()
            .find(|answer| answer.reference_id == reference_id)
    }

    /// The subrequest that made the request fail: the first one that failed other than by
    /// [`PROCESSING_HALTED`] (else the first that failed at all).
    pub fn failure(&self) -> Option<&CompositeSubresponse> {
        let failed = || self.composite_response.iter().filter(|a| !a.succeeded());
        failed()
            .find(|answer| !answer.halted())
            .or_else(|| failed().next())
    }
}

impl CompositeSubresponse {
    /// A 2xx status.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.http_status_code)
    }

    /// Not run, or rolled back, because another subrequest failed.
    pub fn halted(&self) -> bool {
        !self.succeeded()
            && RestError::from_json(&self.body)
                .iter()
                .any(|error| error.is(PROCESSING_HALTED))
    }

    /// The errors of a failed answer (empty for a success).
    pub fn errors(&self) -> Vec<RestError> {
        if self.succeeded() {
            Vec::new()
        } else {
            RestError::from_json(&self.body)
        }
    }
}

fn lenient_subresponses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<CompositeSubresponse>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

fn lenient_headers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Map<String, Value>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Object(headers)) => headers,
        _ => Map::new(),
    })
}

fn lenient_status<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .unwrap_or_default(),
        Some(Value::String(text)) => text.trim().parse().unwrap_or_default(),
        _ => 0,
    })
}

fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::String(text)) => text,
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    })
}

fn lenient_string_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let text = |value: Value| match value {
        Value::String(text) => text,
        other => other.to_string(),
    };
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter(|item| !item.is_null())
            .map(text)
            .collect(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => vec![text(other)],
    })
}

fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Bool(flag)) => flag,
        Some(Value::String(text)) => text.trim().eq_ignore_ascii_case("true"),
        _ => false,
    })
}

fn lenient_errors<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RestError>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Array(items)) => items.iter().filter_map(RestError::from_item).collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ACK_FIXTURE: &str =
        include_str!("../../../domain/tests/data/salesforce-outbound-ack-response.xml");
    const NOTIFICATIONS_SCHEMA: &str =
        include_str!("../../../domain/tests/data/salesforce-outbound-notifications.schema.xml");
    const OPPORTUNITY_NOTIFICATION_SCHEMA: &str = include_str!(
        "../../../domain/tests/data/salesforce-outbound-opportunitynotification.schema.xml"
    );
    const CREATE_SUCCESS: &str =
        include_str!("../../../domain/tests/data/salesforce-rest-create-success.json");
    const INVALID_FIELD: &str =
        include_str!("../../../domain/tests/data/salesforce-rest-error-invalid-field-create.json");

    const ORG_ID: &str = "00D000000000062EAA";

    /// One `Notification` element as the WSDL (`OpportunityNotification`) describes it.
    fn notification_xml(index: usize) -> String {
        format!(
            r#"
      <Notification>
        <Id>04l8c00000AbCd{index:04}</Id>
        <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
          <sf:Id>0068c00000XyZw{index:04}</sf:Id>
          <sf:Name>Deal {index}</sf:Name>
          <sf:Amount>1500.50</sf:Amount>
          <sf:StageName>Prospecting</sf:StageName>
          <sf:IsClosed>false</sf:IsClosed>
        </sObject>
      </Notification>"#
        )
    }

    /// A full envelope around `body` (the children of `notifications` after `PartnerUrl`).
    fn envelope(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soapenv:Body>
    <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
      <OrganizationId>{ORG_ID}</OrganizationId>
      <ActionId>04k8c000000AbCdAAE</ActionId>
      <SessionId xsi:nil="true"/>
      <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/67.0/00D000000000062</EnterpriseUrl>
      <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/67.0/00D000000000062</PartnerUrl>{body}
    </notifications>
  </soapenv:Body>
</soapenv:Envelope>
"#
        )
    }

    fn envelope_with(count: usize) -> String {
        envelope(&(1..=count).map(notification_xml).collect::<String>())
    }

    /// The single-notification envelope, with prefixes other than the usual ones, escaped
    /// values, nil and empty fields and unknown extra elements.
    const HAND_BUILT_SINGLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- built by hand from the WSDL: notifications + OpportunityNotification -->
<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"
              xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <env:Header><x:Trace xmlns:x="urn:example:unknown">ignored</x:Trace></env:Header>
  <env:Body>
    <out:notifications xmlns:out="http://soap.sforce.com/2005/09/outbound">
      <out:OrganizationId> 00D000000000062EAA </out:OrganizationId>
      <out:ActionId>04k8c000000AbCdAAE</out:ActionId>
      <out:SessionId i:nil="true"/>
      <out:EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/67.0/00D000000000062</out:EnterpriseUrl>
      <out:PartnerUrl>https://example.my.salesforce.com/services/Soap/u/67.0/00D000000000062</out:PartnerUrl>
      <out:FutureElement><out:Nested>ignored</out:Nested></out:FutureElement>
      <out:Notification>
        <out:Id>04l8c00000AbCdEAAU</out:Id>
        <out:sObject i:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
          <sf:Id>0068c00000XyZwQAAV</sf:Id>
          <sf:Name>Fabrikam &amp; Contoso &lt;Azure&gt; &quot;co-sell&quot; &apos;26 &#233;t&#xE9;</sf:Name>
          <sf:Amount>125000.00</sf:Amount>
          <sf:CloseDate>2026-06-30</sf:CloseDate>
          <sf:IsWon>false</sf:IsWon>
          <sf:Description i:nil="true"/>
          <sf:NextStep></sf:NextStep>
          <sf:Partner_Note__c><![CDATA[raw <b>markup</b> & more]]></sf:Partner_Note__c>
          <sf:LastModifiedDate>2026-05-20T20:49:32.000Z</sf:LastModifiedDate>
        </out:sObject>
        <out:Unexpected>ignored</out:Unexpected>
      </out:Notification>
    </out:notifications>
  </env:Body>
</env:Envelope>"#;

    #[test]
    fn the_schema_fixtures_describe_the_elements_the_test_envelopes_use() {
        for element in [
            "OrganizationId",
            "ActionId",
            "SessionId",
            "EnterpriseUrl",
            "PartnerUrl",
            "Notification",
        ] {
            assert!(
                NOTIFICATIONS_SCHEMA.contains(&format!("name=\"{element}\"")),
                "{element}"
            );
        }
        assert!(NOTIFICATIONS_SCHEMA.contains(OUTBOUND_NAMESPACE));
        assert!(NOTIFICATIONS_SCHEMA.contains(&format!("maxOccurs=\"{MAX_NOTIFICATIONS}\"")));
        assert!(OPPORTUNITY_NOTIFICATION_SCHEMA.contains("name=\"Id\""));
        assert!(OPPORTUNITY_NOTIFICATION_SCHEMA.contains("name=\"sObject\""));
    }

    #[test]
    fn a_hand_built_single_notification_message_is_parsed() {
        let message = OutboundMessage::parse(HAND_BUILT_SINGLE).unwrap();
        assert_eq!(message.organization_id, ORG_ID);
        assert_eq!(message.action_id.as_deref(), Some("04k8c000000AbCdAAE"));
        assert_eq!(message.session_id, None);
        assert_eq!(
            message.enterprise_url.as_deref(),
            Some("https://example.my.salesforce.com/services/Soap/c/67.0/00D000000000062")
        );
        assert_eq!(
            message.partner_url.as_deref(),
            Some("https://example.my.salesforce.com/services/Soap/u/67.0/00D000000000062")
        );
        assert_eq!(message.notifications.len(), 1);
        let notification = &message.notifications[0];
        assert_eq!(notification.id, "04l8c00000AbCdEAAU");
        assert_eq!(notification.sobject_type.as_deref(), Some("Opportunity"));
        assert_eq!(notification.record_id(), Some("0068c00000XyZwQAAV"));
        assert_eq!(
            Value::Object(notification.fields.clone()),
            json!({
                "Id": "0068c00000XyZwQAAV",
                "Name": "Fabrikam & Contoso <Azure> \"co-sell\" '26 été",
                "Amount": "125000.00",
                "CloseDate": "2026-06-30",
                "IsWon": "false",
                "Description": null,
                "NextStep": "",
                "Partner_Note__c": "raw <b>markup</b> & more",
                "LastModifiedDate": "2026-05-20T20:49:32.000Z",
            })
        );
    }

    #[test]
    fn a_message_with_three_notifications_keeps_their_order() {
        let message = OutboundMessage::parse(&envelope_with(3)).unwrap();
        let ids: Vec<&str> = message
            .notifications
            .iter()
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "04l8c00000AbCd0001",
                "04l8c00000AbCd0002",
                "04l8c00000AbCd0003"
            ]
        );
        let third = &message.notifications[2];
        assert_eq!(third.field_text("Name"), Some("Deal 3"));
        assert_eq!(third.field_text("Amount"), Some("1500.50"));
        assert_eq!(third.field_text("IsClosed"), Some("false"));
        assert_eq!(message.session_id, None);
        assert!(message.is_from_organization("00D000000000062"));
    }

    #[test]
    fn a_session_id_is_read_when_sent() {
        let xml = envelope_with(1).replace(
            r#"<SessionId xsi:nil="true"/>"#,
            "<SessionId>00D!AQ0AQ.token</SessionId>",
        );
        let message = OutboundMessage::parse(&xml).unwrap();
        assert_eq!(message.session_id.as_deref(), Some("00D!AQ0AQ.token"));
    }

    #[test]
    fn exactly_one_hundred_notifications_are_accepted() {
        let message = OutboundMessage::parse(&envelope_with(100)).unwrap();
        assert_eq!(message.notifications.len(), 100);
    }

    #[test]
    fn one_hundred_and_one_notifications_are_rejected() {
        assert_eq!(
            OutboundMessage::parse(&envelope_with(101)),
            Err(SoapError::TooManyNotifications {
                count: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn a_dtd_is_rejected() {
        let xml = format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE Envelope>\n{}",
            envelope_with(1).split_once('\n').unwrap().1
        );
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Forbidden(FORBIDDEN_DTD.to_owned()))
        );
    }

    #[test]
    fn the_event_reader_refuses_a_doctype_on_its_own() {
        assert_eq!(parse_tree("<!DOCTYPE x><x/>").err(), Some(forbidden()));
        assert_eq!(parse_tree("<x>&e;</x>").err(), Some(forbidden()));
        assert_eq!(parse_tree("<x>&amp;&#65;</x>").unwrap().text, "&A");
    }

    #[test]
    fn an_external_entity_is_rejected() {
        let xml = envelope_with(1)
            .replacen(
                "<soapenv:Envelope",
                "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>\n<soapenv:Envelope",
                1,
            )
            .replace("Deal 1", "&e;");
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Forbidden(FORBIDDEN_DTD.to_owned()))
        );
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let mut dtd = String::from("<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
        for level in 1..=9 {
            let previous = if level == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", level - 1)
            };
            dtd.push_str(&format!(
                " <!ENTITY lol{level} \"{}\">\n",
                format!("&{previous};").repeat(10)
            ));
        }
        dtd.push_str("]>\n");
        let xml = envelope_with(1)
            .replacen("<soapenv:Envelope", &format!("{dtd}<soapenv:Envelope"), 1)
            .replace("Deal 1", "&lol9;");
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Forbidden(FORBIDDEN_DTD.to_owned()))
        );
    }

    #[test]
    fn an_undeclared_entity_reference_without_a_dtd_is_rejected() {
        let xml = envelope_with(1).replace("Deal 1", "Deal &nbsp;1");
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Forbidden(FORBIDDEN_DTD.to_owned()))
        );
        let in_attribute = envelope_with(1).replace("sf:Opportunity", "sf:&ext;");
        assert_eq!(
            OutboundMessage::parse(&in_attribute),
            Err(SoapError::Forbidden(FORBIDDEN_DTD.to_owned()))
        );
    }

    #[test]
    fn invalid_character_references_are_malformed() {
        for reference in ["&#0;", "&#x1;", "&#xD800;", "&#x110000;", "&#xZZ;"] {
            let xml = envelope_with(1).replace("Deal 1", reference);
            assert!(
                matches!(OutboundMessage::parse(&xml), Err(SoapError::Malformed(_))),
                "{reference}"
            );
        }
    }

    #[test]
    fn input_over_the_callers_limit_is_rejected_before_parsing() {
        let xml = envelope_with(1);
        assert_eq!(
            OutboundMessage::parse_with_limit(&xml, 100),
            Err(SoapError::TooLarge {
                size: xml.len(),
                limit: 100
            })
        );
        assert!(OutboundMessage::parse_with_limit(&xml, xml.len()).is_ok());
    }

    #[test]
    fn truncated_xml_is_rejected() {
        let xml = envelope_with(2);
        for cut in [xml.len() / 2, xml.len() - 20, xml.len() - 2] {
            assert!(
                matches!(
                    OutboundMessage::parse(&xml[..cut]),
                    Err(SoapError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn mismatched_tags_and_text_outside_the_root_are_rejected() {
        let mismatched = envelope_with(1).replace("</sf:Name>", "</sf:Nome>");
        assert!(matches!(
            OutboundMessage::parse(&mismatched),
            Err(SoapError::Malformed(_))
        ));
        let trailing = format!("{}garbage", envelope_with(1));
        assert!(matches!(
            OutboundMessage::parse(&trailing),
            Err(SoapError::Malformed(_))
        ));
        let second_root = format!("{}<soapenv:Envelope/>", envelope_with(1));
        assert!(matches!(
            OutboundMessage::parse(&second_root),
            Err(SoapError::Malformed(_))
        ));
    }

    #[test]
    fn non_soap_xml_is_rejected() {
        for xml in [
            "<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\"><OrganizationId>x</OrganizationId></notifications>",
            "<html><body>hello</body></html>",
            "<Envelope><Body/></Envelope>",
            "",
            "not xml at all",
        ] {
            assert!(
                matches!(OutboundMessage::parse(xml), Err(SoapError::Malformed(_))),
                "{xml}"
            );
        }
    }

    #[test]
    fn an_envelope_without_notifications_in_the_outbound_namespace_is_rejected() {
        let wrong_ns = envelope_with(1).replace(OUTBOUND_NAMESPACE, "urn:other");
        assert!(matches!(
            OutboundMessage::parse(&wrong_ns),
            Err(SoapError::Malformed(reason)) if reason.contains("notifications")
        ));
        assert!(matches!(
            OutboundMessage::parse(ACK_FIXTURE),
            Err(SoapError::Malformed(_))
        ));
    }

    #[test]
    fn a_missing_organization_id_is_rejected() {
        let xml =
            envelope_with(1).replace(&format!("<OrganizationId>{ORG_ID}</OrganizationId>"), "");
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Malformed("OrganizationId is missing".to_owned()))
        );
    }

    #[test]
    fn a_notification_without_an_id_is_rejected() {
        let xml = envelope_with(2).replace("<Id>04l8c00000AbCd0002</Id>", "");
        assert_eq!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Malformed("Notification 2 has no Id".to_owned()))
        );
    }

    #[test]
    fn a_notification_without_an_sobject_has_no_type_and_no_fields() {
        let xml = envelope(
            "<Notification><Id>04l8c00000AbCdEAAU</Id></Notification>\
             <Notification><Id>04l8c00000AbCdFAAU</Id><sObject><sf:Id xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">006</sf:Id></sObject></Notification>",
        );
        let message = OutboundMessage::parse(&xml).unwrap();
        assert_eq!(message.notifications[0].sobject_type, None);
        assert!(message.notifications[0].fields.is_empty());
        assert_eq!(message.notifications[1].sobject_type, None);
        assert_eq!(message.notifications[1].record_id(), Some("006"));
    }

    #[test]
    fn nested_and_repeated_fields_are_kept() {
        let xml = envelope(
            r#"<Notification><Id>04l8c00000AbCdEAAU</Id>
               <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                 <sf:Owner xsi:type="sf:User"><sf:Email>a@example.com</sf:Email></sf:Owner>
                 <sf:Tag>one</sf:Tag><sf:Tag>two</sf:Tag><sf:Tag xsi:nil="true"/>
               </sObject></Notification>"#,
        );
        let message = OutboundMessage::parse(&xml).unwrap();
        assert_eq!(
            Value::Object(message.notifications[0].fields.clone()),
            json!({"Owner": {"Email": "a@example.com"}, "Tag": ["one", "two", null]})
        );
    }

    #[test]
    fn excessive_nesting_is_rejected() {
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_ELEMENT_DEPTH + 1),
            "</a>".repeat(MAX_ELEMENT_DEPTH + 1)
        );
        let xml = envelope_with(1).replace("Deal 1", &deep);
        assert!(matches!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Malformed(reason)) if reason.contains("nested")
        ));
    }

    #[test]
    fn an_undeclared_prefix_is_rejected() {
        let xml = envelope_with(1).replace("<sf:Name>Deal 1</sf:Name>", "<zz:Name>x</zz:Name>");
        assert!(matches!(
            OutboundMessage::parse(&xml),
            Err(SoapError::Malformed(_))
        ));
    }

    #[test]
    fn a_parsed_message_round_trips_through_json_for_queueing() {
        let message = OutboundMessage::parse(HAND_BUILT_SINGLE).unwrap();
        let json = serde_json::to_string(&message).unwrap();
        let back: OutboundMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn organization_ids_compare_in_15_and_18_character_forms() {
        assert!(same_salesforce_id("00D000000000062EAA", "00D000000000062"));
        assert!(same_salesforce_id("00D000000000062", "00D000000000062EAA"));
        assert!(!same_salesforce_id("00D000000000062EAA", "00d000000000062"));
        assert!(!same_salesforce_id(
            "00D000000000063EAA",
            "00D000000000062EAA"
        ));
        assert!(!same_salesforce_id("", "00D000000000062"));
        assert!(!same_salesforce_id("00D00000000006é", "00D00000000006é"));
    }

    #[test]
    fn the_ack_response_is_the_documented_acknowledgement() {
        assert_eq!(ack_response(), ACK_FIXTURE);
        let tree = parse_tree(ack_response()).unwrap();
        let body = tree.children_named("Body").next().unwrap();
        let response = body.children_named("notificationsResponse").next().unwrap();
        assert_eq!(response.namespace.as_deref(), Some(OUTBOUND_NAMESPACE));
        assert_eq!(response.child_text("Ack").as_deref(), Some("true"));
    }

    #[test]
    fn a_soap_fault_is_well_formed_and_escapes_its_message() {
        let fault = soap_fault("queue <down> & \"retry\" 'later'\u{1}");
        assert!(fault.contains(
            "<faultstring>queue &lt;down&gt; &amp; &quot;retry&quot; &apos;later&apos;\u{fffd}</faultstring>"
        ));
        let tree = parse_tree(&fault).unwrap();
        assert_eq!(tree.namespace.as_deref(), Some(SOAP11_ENVELOPE_NAMESPACE));
        let fault_element = tree
            .children_named("Body")
            .next()
            .unwrap()
            .children_named("Fault")
            .next()
            .unwrap();
        assert_eq!(
            fault_element.namespace.as_deref(),
            Some(SOAP11_ENVELOPE_NAMESPACE)
        );
        assert_eq!(
            fault_element.child_text("faultcode").as_deref(),
            Some("soapenv:Server")
        );
        assert_eq!(
            fault_element.child_text("faultstring").as_deref(),
            Some("queue <down> & \"retry\" 'later'\u{fffd}")
        );
    }

    #[test]
    fn the_documented_rest_error_array_is_read() {
        let errors = RestError::parse_list(INVALID_FIELD);
        assert_eq!(
            errors,
            vec![RestError {
                message: "The Id field should not be specified in the sobject data.".to_owned(),
                error_code: "INVALID_FIELD".to_owned(),
                fields: vec![],
            }]
        );
        assert!(errors[0].is("invalid_field"));
        assert_eq!(
            errors[0].to_string(),
            "INVALID_FIELD: The Id field should not be specified in the sobject data."
        );
    }

    #[test]
    fn rest_errors_with_fields_nulls_and_unknown_members_are_read() {
        let body = r#"[{"message":"Required fields are missing: [CloseDate]","errorCode":"REQUIRED_FIELD_MISSING","fields":["CloseDate"],"extra":1},
                       {"message":null,"errorCode":"REQUEST_LIMIT_EXCEEDED","fields":null},
                       {"unrelated":true}]"#;
        let errors = RestError::parse_list(body);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].fields, ["CloseDate"]);
        assert_eq!(
            errors[0].to_string(),
            "REQUIRED_FIELD_MISSING: Required fields are missing: [CloseDate] [CloseDate]"
        );
        assert_eq!(errors[1].message, "");
        assert!(errors[1].is("REQUEST_LIMIT_EXCEEDED"));
        assert!(errors[1].fields.is_empty());
    }

    #[test]
    fn other_rest_error_shapes_are_read_leniently() {
        let single = RestError::parse_list(
            r#"{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}"#,
        );
        assert!(single[0].is("INVALID_SESSION_ID"));

        let oauth = RestError::parse_list(
            r#"{"error":"invalid_grant","error_description":"audience is invalid"}"#,
        );
        assert_eq!(oauth[0].error_code, "invalid_grant");
        assert_eq!(oauth[0].message, "audience is invalid");

        let save = RestError::parse_list(
            r#"{"id":null,"success":false,"errors":[{"statusCode":"DUPLICATE_VALUE","message":"duplicate","fields":["Ext__c"]}]}"#,
        );
        assert!(save[0].is("DUPLICATE_VALUE"));
        assert_eq!(save[0].fields, ["Ext__c"]);

        let broken =
            RestError::parse_list(r#"[{"message":"cut off" "errorCode":"UNKNOWN_EXCEPTION"#);
        assert_eq!(broken[0].message, "cut off");
        assert_eq!(broken[0].error_code, "");

        let html = RestError::parse_list("<html>502 Bad Gateway</html>");
        assert_eq!(html[0].message, "<html>502 Bad Gateway</html>");
        assert_eq!(html[0].error_code, "");

        assert!(RestError::parse_list("  ").is_empty());
    }

    #[test]
    fn the_documented_create_success_body_is_read() {
        let created = CreateResponse::parse(CREATE_SUCCESS).unwrap();
        assert_eq!(
            created,
            CreateResponse {
                id: Some("001D000000IqhSLIAZ".to_owned()),
                success: true,
                errors: vec![],
            }
        );
    }

    #[test]
    fn upsert_bodies_are_read_with_and_without_created() {
        let created = UpsertResponse::parse(
            r#"{"id":"006D000000IqhSLIAZ","success":true,"errors":[],"created":true,"unknown":"x"}"#,
        )
        .unwrap();
        assert_eq!(created.id.as_deref(), Some("006D000000IqhSLIAZ"));
        assert!(created.success);
        assert_eq!(created.created, Some(true));

        let updated =
            UpsertResponse::parse(r#"{"id":"006D000000IqhSLIAZ","success":true,"errors":null}"#)
                .unwrap();
        assert_eq!(updated.created, None);
        assert!(updated.errors.is_empty());

        let failed = UpsertResponse::parse(
            r#"{"success":"false","errors":[{"statusCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION","message":"nope"}]}"#,
        )
        .unwrap();
        assert!(!failed.success);
        assert_eq!(failed.id, None);
        assert!(failed.errors[0].is("FIELD_CUSTOM_VALIDATION_EXCEPTION"));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use cosell_domain::mapping::{MappingConfig, SalesforceRecord, opportunity_from_salesforce};
    use cosell_domain::proptest_support::{json_value, mutated, wire_text};

    const ERRORS: [&str; 2] = [
        include_str!("../../../domain/tests/data/salesforce-rest-create-success.json"),
        include_str!("../../../domain/tests/data/salesforce-rest-error-invalid-field-create.json"),
    ];

    /// An Outbound Message of one Opportunity notification whose `Name` is `name` (already
    /// escaped for XML).
    fn message(name: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soapenv:Body>
    <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
      <OrganizationId>00D000000000062EAA</OrganizationId>
      <ActionId>04k8c000000AbCdAAE</ActionId>
      <SessionId xsi:nil="true"/>
      <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/67.0/00D000000000062</EnterpriseUrl>
      <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/67.0/00D000000000062</PartnerUrl>
      <Notification>
        <Id>04l8c00000AbCd0001</Id>
        <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
          <sf:Id>0068c00000XyZw0001</sf:Id>
          <sf:Name>{name}</sf:Name>
          <sf:Amount>1500.50</sf:Amount>
          <sf:CloseDate>2027-09-30</sf:CloseDate>
          <sf:StageName>Prospecting</sf:StageName>
          <sf:IsClosed>false</sf:IsClosed>
        </sObject>
      </Notification>
    </notifications>
  </soapenv:Body>
</soapenv:Envelope>
"#
        )
    }

    fn xml_escaped(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    /// Everything the `crm-events` function asks of a message that parsed.
    fn read(message: &OutboundMessage) {
        let _ = message.is_from_organization("00D000000000062");
        for notification in &message.notifications {
            let _ = (notification.record_id(), notification.field_text("Name"));
            let _ = opportunity_from_salesforce(
                &SalesforceRecord::new(&notification.fields),
                &MappingConfig::default(),
            );
        }
    }

    /// A Composite answer: a created account, a halted contact, a failed upsert.
    const COMPOSITE: &str = r#"{"compositeResponse":[
        {"body":{"id":"001000000000001AAA","success":true,"errors":[]},"httpHeaders":{"Location":"/services/data/v62.0/sobjects/Account/001000000000001AAA"},"httpStatusCode":201,"referenceId":"account"},
        {"body":[{"errorCode":"PROCESSING_HALTED","message":"The transaction was rolled back since another operation in the same transaction failed."}],"httpHeaders":{},"httpStatusCode":400,"referenceId":"contact"},
        {"body":["/services/data/v62.0/sobjects/Opportunity/006000000000001AAA","/services/data/v62.0/sobjects/Opportunity/006000000000002AAA"],"httpHeaders":{},"httpStatusCode":300,"referenceId":"opportunity"}]}"#;

    /// Everything the adapter asks of a Composite answer.
    fn read_composite(body: &str) {
        if let Ok(answer) = CompositeResponse::parse(body) {
            let _ = (answer.get("account"), answer.failure());
            for sub in &answer.composite_response {
                let _ = (
                    sub.succeeded(),
                    sub.halted(),
                    sub.errors(),
                    sub.body.to_string(),
                );
            }
        }
    }

    fn parse(xml: &str) {
        if let Ok(message) = OutboundMessage::parse(xml) {
            read(&message);
        }
    }

    proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_panic(xml in wire_text()) {
            parse(&xml);
        }

        #[test]
        fn xml_like_text_is_read_or_refused_without_panic(
            xml in "(<[?!/]?[a-zA-Z:]{0,12}( [a-z:]{1,8}=\"[^\"]{0,12}\")?[/]?>|&[a-z#0-9]{0,6};?|[^<&]{0,8}){0,12}",
        ) {
            parse(&xml);
        }

        #[test]
        fn a_message_with_text_inserted_anywhere_is_read_or_refused_without_panic(
            at in any::<prop::sample::Index>(),
            text in wire_text(),
        ) {
            let xml = message("Deal");
            // The message is ASCII: every byte index is a character boundary.
            let (head, tail) = xml.split_at(at.index(xml.len()));
            parse(&format!("{head}{text}{tail}"));
            parse(&xml.replace("Deal", &text));
        }

        #[test]
        fn field_text_reads_back_exactly(name in "[^\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\r\\x{FFFE}\\x{FFFF}]{0,40}") {
            let parsed = OutboundMessage::parse(&message(&xml_escaped(&name))).unwrap();
            prop_assert_eq!(parsed.notifications[0].field_text("Name"), Some(name.as_str()));
            read(&parsed);
        }

        #[test]
        fn organization_ids_compare_without_panic(left in wire_text(), right in wire_text()) {
            let _ = same_salesforce_id(&left, &right);
        }

        #[test]
        fn rest_bodies_are_read_without_panic(
            body in wire_text(),
            value in json_value(),
            sample in prop::sample::select(ERRORS.to_vec()),
            which in any::<prop::sample::Index>(),
            with in prop_oneof![json_value(), wire_text().prop_map(Value::String)],
        ) {
            let sample = mutated(&serde_json::from_str(sample).unwrap(), which, with).to_string();
            for body in [body, value.to_string(), sample] {
                for error in RestError::parse_list(&body) {
                    let _ = (error.is("INVALID_FIELD"), error.to_string());
                }
                let _ = CreateResponse::parse(&body);
                let _ = UpsertResponse::parse(&body);
                read_composite(&body);
            }
        }

        #[test]
        fn composite_answers_are_read_without_panic(
            body in wire_text(),
            value in json_value(),
            which in any::<prop::sample::Index>(),
            with in prop_oneof![json_value(), wire_text().prop_map(Value::String)],
        ) {
            let sample = mutated(&serde_json::from_str(COMPOSITE).unwrap(), which, with).to_string();
            for body in [body, value.to_string(), sample] {
                read_composite(&body);
            }
        }
    }
}
