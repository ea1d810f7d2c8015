//! Outbound Messages: the SOAP `notifications` call a workflow outbound message action
//! makes, with Salesforce's delivery semantics.
//!
//! ```text
//! <?xml version="1.0" encoding="UTF-8"?>
//! <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd=… xmlns:xsi=…>
//!  <soapenv:Body>
//!   <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
//!    <OrganizationId>00D…</OrganizationId> <ActionId>04k…</ActionId> <SessionId xsi:nil="true"/>
//!    <EnterpriseUrl>{base}/services/Soap/c/62.0/{org}</EnterpriseUrl> <PartnerUrl>{base}/services/Soap/u/62.0/{org}</PartnerUrl>
//!    <Notification>  (1..=100)
//!     <Id>04l…</Id>
//!     <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
//!      <sf:Id>006…</sf:Id> <sf:Name>…</sf:Name> …
//! ```
//!
//! * Headers `Content-Type: text/xml; charset=utf-8` and `SOAPAction: ""` (community
//!   evidence only, [3p]).
//! * Delivered until a 2xx answer carries `<Ack>true</Ack>` (`Acceptance::SoapAck`), at
//!   most `salesforce_delivery_attempts` times (the real service retries for 24 h).
//! * Each message carries the record's data as it is when the message is queued (the
//!   latest data at that moment); re-deliveries repeat the same bytes.
//! * Field values use the SOAP (enterprise WSDL) forms: `true`/`false`, dates
//!   `2026-03-31`, date-times `2026-01-01T00:00:00.000Z`, numbers as `xsd:double` the way
//!   Java prints them (`15000.0`, `2.5E7`). Null fields are left out (UNKNOWN whether the
//!   real service omits them or sends `xsi:nil`; omitting is what captured samples show
//!   for unset fields, and a robust listener must handle both).
//! * One Opportunity write = one message with one notification; the control API can
//!   batch up to 100 notifications into one message ("several discrete calls may be
//!   batched") and re-send an earlier message byte-for-byte ("can sometimes be delivered
//!   more than one time").

use std::io;

use quick_xml::Writer as XmlWriter;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ids;
use super::schema::{FieldType, ObjectSchema, format_datetime, parse_datetime};
use super::{API_VERSION, ApiError};
use crate::delivery::{self, Acceptance, Delivery};
use crate::faults::Service;
use crate::identities;
use crate::state::AppState;

pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
pub const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Most notifications one message may carry (`maxOccurs="100"`).
pub const MAX_NOTIFICATIONS: usize = 100;

/// The outbound message action's id (`ActionId`).
pub fn action_id() -> String {
    ids::with_checksum(&format!("{}5g000000Sbx1", ids::ACTION_PREFIX))
}

/// Fields an Opportunity notification carries unless configured otherwise.
pub fn default_fields() -> Vec<String> {
    [
        "Id",
        "Name",
        "StageName",
        "CloseDate",
        "Amount",
        "CurrencyIsoCode",
        "Description",
        "AccountId",
        "LastModifiedById",
        "LastModifiedDate",
        "Sync_with_Partner_Center__c",
        "Referral_Identifier__c",
        "Referral_Link__c",
        "Audit__c",
        "How_can_Microsoft_help__c",
        "Microsoft_Referral_Visibility__c",
        "Microsoft_Solutions__c",
        "Microsoft_CRM_Identifier__c",
        "Solution_Area__c",
        "Solution_Play__c",
        "Partner_Role__c",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The Opportunity outbound message definition.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Endpoint; `None` falls back to `SandboxConfig::salesforce_outbound_url`.
    pub url: Option<String>,
    pub fields: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: None,
            fields: default_fields(),
        }
    }
}

/// One message handed to the delivery machinery, kept for resend.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub url: String,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub notification_ids: Vec<String>,
    pub record_ids: Vec<String>,
}

/// What a send started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queued {
    pub delivery_id: u64,
    pub notification_ids: Vec<String>,
}

/// `Double.toString` as Java prints it: decimal with at least one fraction digit for
/// 10⁻³ ≤ |x| < 10⁷, otherwise computerised scientific notation (`2.5E7`).
pub fn java_double(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let abs = x.abs();
    if (1e-3..1e7).contains(&abs) {
        let text = format!("{x}");
        return if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        };
    }
    // `{:e}` gives the shortest round-trip digits: "2.5e7", "1e-5".
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_owned()
    } else {
        format!("{mantissa}.0")
    };
    format!("{mantissa}E{exponent}")
}

/// A stored REST value in its SOAP form (`None` = left out).
fn soap_value(kind: FieldType, value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.as_f64().map_or_else(|| n.to_string(), java_double)),
        Value::String(s) if kind == FieldType::DateTime => Some(
            parse_datetime(s)
                .map(|at| format_datetime(at).trim_end_matches("+0000").to_owned() + "Z")
                .unwrap_or_else(|| s.clone()),
        ),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn text_element<W: io::Write>(w: &mut XmlWriter<W>, name: &str, text: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

/// One notification: its id and the record it carries.
#[derive(Debug, Clone)]
pub struct Notification<'a> {
    pub id: String,
    pub record: &'a Map<String, Value>,
}

/// The SOAP envelope for `notifications` about `object` records.
pub fn envelope(
    base_url: &str,
    object: &ObjectSchema,
    fields: &[String],
    notifications: &[Notification<'_>],
) -> io::Result<Vec<u8>> {
    let org = identities::SALESFORCE_ORG_ID;
    let mut w = XmlWriter::new_with_indent(Vec::new(), b' ', 1);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("soapenv:Envelope")
        .with_attributes([
            ("xmlns:soapenv", SOAP_ENVELOPE_NS),
            ("xmlns:xsd", XSD_NS),
            ("xmlns:xsi", XSI_NS),
        ])
        .write_inner_content(|w| {
            w.create_element("soapenv:Body").write_inner_content(|w| {
                w.create_element("notifications")
                    .with_attribute(("xmlns", OUTBOUND_NS))
                    .write_inner_content(|w| {
                        text_element(w, "OrganizationId", org)?;
                        text_element(w, "ActionId", &action_id())?;
                        w.create_element("SessionId")
                            .with_attribute(("xsi:nil", "true"))
                            .write_empty()?;
                        text_element(
                            w,
                            "EnterpriseUrl",
                            &format!("{base_url}/services/Soap/c/{API_VERSION}/{org}"),
                        )?;
                        text_element(
                            w,
                            "PartnerUrl",
                            &format!("{base_url}/services/Soap/u/{API_VERSION}/{org}"),
                        )?;
                        for notification in notifications {
                            write_notification(w, object, fields, notification)?;
                        }
                        Ok(())
                    })?;
                Ok(())
            })?;
            Ok(())
        })?;
    let mut body = w.into_inner();
    body.push(b'\n');
    Ok(body)
}

fn write_notification<W: io::Write>(
    w: &mut XmlWriter<W>,
    object: &ObjectSchema,
    fields: &[String],
    notification: &Notification<'_>,
) -> io::Result<()> {
    w.create_element("Notification").write_inner_content(|w| {
        text_element(w, "Id", &notification.id)?;
        let xsi_type = format!("sf:{}", object.name);
        w.create_element("sObject")
            .with_attributes([("xsi:type", xsi_type.as_str()), ("xmlns:sf", SOBJECT_NS)])
            .write_inner_content(|w| {
                let id = notification
                    .record
                    .get("Id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                text_element(w, "sf:Id", id)?;
                for name in fields {
                    // A field removed from the schema is no longer sent.
                    let Some(field) = object.field(name).filter(|f| f.name != "Id") else {
                        continue;
                    };
                    let value = notification.record.get(&field.name).unwrap_or(&Value::Null);
                    if let Some(text) = soap_value(field.kind, value) {
                        text_element(w, &format!("sf:{}", field.name), &text)?;
                    }
                }
                Ok(())
            })?;
        Ok(())
    })?;
    Ok(())
}

/// Builds one message about the Opportunities `record_ids` and starts delivering it.
/// `Ok(None)` when no endpoint is configured; 404 when a record does not exist.
pub fn send(state: &AppState, record_ids: &[String]) -> Result<Option<Queued>, ApiError> {
    let (url, body, notification_ids) = {
        let mut world = state.world();
        let sf = &mut world.salesforce;
        let Some(url) = sf
            .outbound
            .url
            .clone()
            .or_else(|| state.config.salesforce_outbound_url.clone())
        else {
            return Ok(None);
        };
        let notification_ids: Vec<String> = record_ids
            .iter()
            .map(|_| sf.new_id(ids::NOTIFICATION_PREFIX))
            .collect();
        let object = sf
            .schema
            .object("Opportunity")
            .ok_or_else(ApiError::not_found)?;
        let mut notifications = Vec::with_capacity(record_ids.len());
        for (record_id, id) in record_ids.iter().zip(&notification_ids) {
            let record = sf
                .table(object.name)
                .and_then(|t| t.get(record_id))
                .map(|row| &row.fields)
                .ok_or_else(ApiError::not_found)?;
            notifications.push(Notification {
                id: id.clone(),
                record,
            });
        }
        let body = envelope(
            &state.config.base_url,
            object,
            &sf.outbound.fields,
            &notifications,
        )
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN_EXCEPTION",
                e.to_string(),
            )
        })?;
        (url, body, notification_ids)
    };
    let label = match record_ids {
        [one] => format!("Opportunity outbound message {one}"),
        many => format!(
            "Opportunity outbound message ({} notifications)",
            many.len()
        ),
    };
    let sent = Sent {
        url,
        body,
        notification_ids,
        record_ids: record_ids.to_vec(),
    };
    Ok(Some(deliver(state, label, sent)))
}

/// Re-sends the message of an earlier delivery byte-for-byte; `None` when unknown.
pub fn resend(state: &AppState, delivery_id: u64) -> Option<Queued> {
    let sent = state
        .world()
        .salesforce
        .messages
        .get(&delivery_id)
        .cloned()?;
    let label = format!("Opportunity outbound message (resend of delivery {delivery_id})");
    Some(deliver(state, label, sent))
}

fn deliver(state: &AppState, label: String, sent: Sent) -> Queued {
    let delivery_id = delivery::spawn(
        state,
        Delivery {
            service: Service::Salesforce,
            label,
            url: sent.url.clone(),
            headers: vec![
                ("Content-Type".into(), "text/xml; charset=utf-8".into()),
                ("SOAPAction".into(), "\"\"".into()),
            ],
            body: sent.body.clone(),
            max_attempts: state.config.salesforce_delivery_attempts,
            acceptance: Acceptance::SoapAck,
        },
    );
    let notification_ids = sent.notification_ids.clone();
    state.world().salesforce.messages.insert(delivery_id, sent);
    Queued {
        delivery_id,
        notification_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::Schema;
    use serde_json::json;

    #[test]
    fn doubles_print_like_java() {
        assert_eq!(java_double(15000.0), "15000.0");
        assert_eq!(java_double(1234.56), "1234.56");
        assert_eq!(java_double(25_000_000.0), "2.5E7");
        assert_eq!(java_double(10_000_000.0), "1.0E7");
        assert_eq!(java_double(0.0001), "1.0E-4");
        assert_eq!(java_double(0.0), "0.0");
        assert_eq!(java_double(-42.0), "-42.0");
    }

    #[test]
    fn the_action_id_is_a_valid_04k_id() {
        let id = action_id();
        assert_eq!(ids::normalize(&id), Some(id.clone()));
        assert!(id.starts_with("04k"));
    }

    #[test]
    fn envelope_escapes_values_and_skips_nulls() {
        let schema = Schema::default();
        let object = schema.object("Opportunity").expect("schema");
        let record = json!({
            "Id": "0065g0000000001AAA",
            "Name": "R&D <deal> \"x\"",
            "Amount": 25_000_000.0,
            "Description": null,
            "LastModifiedDate": "2026-01-02T03:04:05.000+0000",
            "Sync_with_Partner_Center__c": true,
        });
        let record = record.as_object().expect("object");
        let body = envelope(
            "http://sbx",
            object,
            &default_fields(),
            &[Notification {
                id: "04l5g0000000001AAA".into(),
                record,
            }],
        )
        .expect("xml");
        let text = String::from_utf8(body).expect("utf-8");
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(text.contains("<sf:Name>R&amp;D &lt;deal&gt; &quot;x&quot;</sf:Name>"));
        assert!(text.contains("<sf:Amount>2.5E7</sf:Amount>"));
        assert!(
            text.contains("<sf:LastModifiedDate>2026-01-02T03:04:05.000Z</sf:LastModifiedDate>")
        );
        assert!(
            text.contains("<sf:Sync_with_Partner_Center__c>true</sf:Sync_with_Partner_Center__c>")
        );
        assert!(text.contains("<SessionId xsi:nil=\"true\"/>"));
        assert!(!text.contains("sf:Description"));
        assert_eq!(text.matches("<sf:Id>").count(), 1);
    }
}
