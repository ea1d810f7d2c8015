//! Partner Center webhook payloads (docs/partner-center.md#webhooks): the event callback, the
//! registration and the validation (test) event responses.
//!
//! Members are PascalCase on the wire (`EventName`, `ResourceUri`, …); camelCase is accepted too
//! and unknown members are kept. The event carries no referral data: the receiver reads the
//! referral id from `ResourceUri` and GETs the referral.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::datetime::WireDateTime;
use crate::error::ParseError;
use crate::ids::ReferralId;
use crate::macros::wire_key;
use crate::serde_helpers as h;

/// The kind of a webhook event.
///
/// Parsed leniently (`referral-created`, `ReferralCreated`, `referral_created` are the same);
/// unknown names (`subscription-updated`, `usagerecords-thresholdExceeded`) are kept in
/// [`EventName::Unknown`]. Written in the documented kebab-case form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventName {
    /// `referral-created`.
    ReferralCreated,
    /// `referral-updated`.
    ReferralUpdated,
    /// `related-referral-created`.
    RelatedReferralCreated,
    /// `related-referral-updated`.
    RelatedReferralUpdated,
    /// `test-created`: a validation event sent on request.
    TestCreated,
    /// Any other event, kept verbatim.
    Unknown(String),
}

impl EventName {
    /// The four referral events the connector registers for.
    pub const REFERRAL_EVENTS: [EventName; 4] = [
        EventName::ReferralCreated,
        EventName::ReferralUpdated,
        EventName::RelatedReferralCreated,
        EventName::RelatedReferralUpdated,
    ];

    const KNOWN: [(EventName, &'static str); 5] = [
        (EventName::ReferralCreated, "referral-created"),
        (EventName::ReferralUpdated, "referral-updated"),
        (
            EventName::RelatedReferralCreated,
            "related-referral-created",
        ),
        (
            EventName::RelatedReferralUpdated,
            "related-referral-updated",
        ),
        (EventName::TestCreated, "test-created"),
    ];

    /// Parse leniently; never fails.
    pub fn parse(text: &str) -> Self {
        let key = wire_key(text);
        Self::KNOWN
            .into_iter()
            .find(|(_, wire)| wire_key(wire) == key)
            .map_or_else(|| Self::Unknown(text.trim().to_owned()), |(name, _)| name)
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ReferralCreated => "referral-created",
            Self::ReferralUpdated => "referral-updated",
            Self::RelatedReferralCreated => "related-referral-created",
            Self::RelatedReferralUpdated => "related-referral-updated",
            Self::TestCreated => "test-created",
            Self::Unknown(other) => other,
        }
    }

    /// Whether the event is about a referral (one of the four referral events).
    pub fn is_referral_event(&self) -> bool {
        Self::REFERRAL_EVENTS.contains(self)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for EventName {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl Serialize for EventName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Self::parse(&text))
    }
}

/// The callback body Partner Center POSTs for every event.
///
/// Verify the signature over the raw bytes **before** deserializing this
/// (docs/partner-center.md#webhook-signature).
///
/// Read tolerantly ([`WebhookEvent::from_members`]): member names in any letter case
/// (`ResourceUri`, `resourceUri`, `ResourceURI`), `AuditUri` or `AuditUrl` (the webhooks page
/// uses both), and an optional member that is `null` or of an unusable type read as absent.
/// Only a missing or non-text `EventName` or `ResourceUri` refuses the body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhookEvent {
    /// `{resource}-{action}`.
    pub event_name: EventName,
    /// The URI of the changed resource. For referrals its host and path
    /// (`api.partnercenter.microsoft.com/engagements/v1/referrals/{id}`) differ from the
    /// referrals API, so only its last segment is used ([`WebhookEvent::referral_id`]).
    pub resource_uri: String,
    /// `referral` or `test`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// The audit record URI; `null` in every sample. The webhooks page calls it `AuditUrl`.
    pub audit_uri: Option<String>,
    /// When the resource changed (7 fractional digits plus offset in the samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_change_utc_date: Option<WireDateTime>,
    /// Unknown members, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for WebhookEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let members = Map::<String, Value>::deserialize(deserializer)?;
        Self::from_members(members).map_err(serde::de::Error::custom)
    }
}

/// The members of [`WebhookEvent`], each by the names it may come under, compared ignoring
/// letter case.
const EVENT_NAME: &[&str] = &["EventName"];
/// See [`EVENT_NAME`].
const RESOURCE_URI: &[&str] = &["ResourceUri"];
/// See [`EVENT_NAME`].
const RESOURCE_NAME: &[&str] = &["ResourceName"];
/// See [`EVENT_NAME`].
const AUDIT_URI: &[&str] = &["AuditUri", "AuditUrl"];
/// See [`EVENT_NAME`].
const RESOURCE_CHANGE_UTC_DATE: &[&str] = &["ResourceChangeUtcDate"];

impl WebhookEvent {
    /// Reads an event from the members of its JSON object (see the type's docs): every member
    /// named (in any letter case) by one of a field's names is taken out, and the first that is
    /// not `null`, in the body's order, is the field's value; the rest stay in
    /// [`extra`](Self::extra).
    pub fn from_members(mut members: Map<String, Value>) -> Result<Self, String> {
        let event_name = match take(&mut members, EVENT_NAME) {
            Some(Value::String(text)) => EventName::parse(&text),
            Some(other) => return Err(format!("EventName is not text: {}", kind(&other))),
            None => return Err("missing field `EventName`".to_owned()),
        };
        let resource_uri = match take(&mut members, RESOURCE_URI) {
            Some(Value::String(text)) => text,
            Some(other) => return Err(format!("ResourceUri is not text: {}", kind(&other))),
            None => return Err("missing field `ResourceUri`".to_owned()),
        };
        let text =
            |value: Option<Value>| h::opt_string(value.unwrap_or(Value::Null)).ok().flatten();
        let resource_name = text(take(&mut members, RESOURCE_NAME));
        let audit_uri = text(take(&mut members, AUDIT_URI));
        let resource_change_utc_date = text(take(&mut members, RESOURCE_CHANGE_UTC_DATE))
            .map(|date| WireDateTime::parse(&date));
        Ok(Self {
            event_name,
            resource_uri,
            resource_name,
            audit_uri,
            resource_change_utc_date,
            extra: members,
        })
    }
}

/// Takes out every member named by one of `names` (ignoring letter case) and answers the first
/// that is not `null`.
fn take(members: &mut Map<String, Value>, names: &[&str]) -> Option<Value> {
    let matching: Vec<String> = members
        .keys()
        .filter(|key| names.iter().any(|name| key.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    matching
        .iter()
        .filter_map(|key| members.shift_remove(key))
        .find(|value| !value.is_null())
}

/// What kind of JSON value `value` is, for an error (never the value itself).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl WebhookEvent {
    /// The last path segment of `ResourceUri` (ignoring a query, a fragment and trailing
    /// slashes), whatever the host and path look like.
    pub fn resource_id(&self) -> &str {
        last_segment(&self.resource_uri)
    }

    /// Whether this is the `test-created` validation event.
    pub fn is_test(&self) -> bool {
        self.event_name == EventName::TestCreated
            || self
                .resource_name
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case("test"))
    }

    /// The referral the event is about: the last path segment of `ResourceUri`, as a GUID.
    ///
    /// Fails for the `test-created` event (its last segment is a correlation id) and when the
    /// segment is not a GUID (the documentation samples carry the placeholder `{{ReferralID}}`).
    /// For `related-referral-*` events it is UNKNOWN whether the id is the partner's own
    /// referral or the related one; callers GET it and follow its `engagementId`.
    pub fn referral_id(&self) -> Result<ReferralId, ParseError> {
        if self.is_test() {
            return Err(ParseError::invalid(
                "referral id",
                &self.resource_uri,
                "a referral event; test-created events carry a correlation id",
            ));
        }
        ReferralId::try_from(self.resource_id())
    }
}

/// The last non-empty path segment of a URI, percent-decoding nothing (GUIDs need none).
fn last_segment(uri: &str) -> &str {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let path = uri[..end].trim().trim_end_matches('/');
    path.rsplit('/').next().unwrap_or(path).trim()
}

/// Webhook registration, as sent to and returned by `/webhooks/v1/registration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhookRegistration {
    /// Returned on register/update.
    #[serde(
        default,
        alias = "subscriberId",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscriber_id: Option<String>,
    /// The callback URL.
    #[serde(
        default,
        alias = "webhookUrl",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub webhook_url: Option<String>,
    /// The events to deliver.
    #[serde(default, alias = "webhookEvents", deserialize_with = "h::lenient_vec")]
    pub webhook_events: Vec<EventName>,
    /// Send the signature in `x-ms-signature` instead of `Authorization`. The old sample writes
    /// it in camelCase.
    #[serde(
        default,
        alias = "signatureTokenToMsSignatureHeader",
        deserialize_with = "h::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub signature_token_to_ms_signature_header: Option<bool>,
    /// Unknown members, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer to `POST /webhooks/v1/registration/validationEvents`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationEventResponse {
    /// The id to poll the delivery status with.
    #[serde(
        default,
        alias = "CorrelationId",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<String>,
    /// Unknown members, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The delivery status of a validation event (`GET …/validationEvents/{correlationId}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationEventStatus {
    /// The correlation id.
    #[serde(
        default,
        alias = "CorrelationId",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub correlation_id: Option<String>,
    /// The partner.
    #[serde(
        default,
        alias = "PartnerId",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub partner_id: Option<String>,
    /// E.g. `completed`.
    #[serde(
        default,
        alias = "Status",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<String>,
    /// Where the event was delivered.
    #[serde(
        default,
        alias = "CallbackUrl",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
    /// One result per delivery attempt.
    #[serde(default, alias = "Results", deserialize_with = "h::lenient_vec")]
    pub results: Vec<ValidationEventResult>,
    /// Unknown members, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One delivery attempt of a validation event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationEventResult {
    /// E.g. `OK`.
    #[serde(
        default,
        alias = "ResponseCode",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_code: Option<String>,
    /// The receiver's answer, if any.
    #[serde(
        default,
        alias = "ResponseMessage",
        deserialize_with = "h::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_message: Option<String>,
    /// Whether Partner Center itself failed.
    #[serde(
        default,
        alias = "SystemError",
        deserialize_with = "h::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_error: Option<bool>,
    /// When (no offset in the sample: UTC).
    #[serde(
        default,
        alias = "DateTimeUtc",
        deserialize_with = "h::opt_datetime",
        skip_serializing_if = "Option::is_none"
    )]
    pub date_time_utc: Option<WireDateTime>,
    /// Unknown members, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REFERRAL_CREATED: &str = include_str!("../tests/data/webhook-referral-created.json");
    const REFERRAL_UPDATED: &str = include_str!("../tests/data/webhook-referral-updated.json");
    const RELATED_CREATED: &str =
        include_str!("../tests/data/webhook-related-referral-created.json");
    const RELATED_UPDATED: &str =
        include_str!("../tests/data/webhook-related-referral-updated.json");
    const TEST_CREATED: &str = include_str!("../tests/data/webhook-test-created.json");
    const EVENT_MODEL: &str = include_str!("../tests/data/webhook-event-model-sample.json");
    const EVENTS_LIST: &str = include_str!("../tests/data/webhook-events-list-response.json");
    const REGISTRATION_GET: &str = include_str!("../tests/data/registration-get-response.json");
    const REGISTRATION_REQUEST: &str = include_str!("../tests/data/registration-request.json");
    const REGISTRATION_REFERRALS: &str =
        include_str!("../tests/data/registration-request-referrals.json");
    const REGISTRATION_RESPONSE: &str = include_str!("../tests/data/registration-response.json");
    const VALIDATION_RESPONSE: &str = include_str!("../tests/data/validation-event-response.json");
    const VALIDATION_STATUS: &str =
        include_str!("../tests/data/validation-event-status-response.json");

    const ID: &str = "4111fffc-f9ee-4d53-bba6-569135228642";

    #[test]
    fn every_referral_event_sample_parses_with_its_name_and_date() {
        for (sample, name) in [
            (REFERRAL_CREATED, EventName::ReferralCreated),
            (REFERRAL_UPDATED, EventName::ReferralUpdated),
            (RELATED_CREATED, EventName::RelatedReferralCreated),
            (RELATED_UPDATED, EventName::RelatedReferralUpdated),
        ] {
            let event: WebhookEvent = serde_json::from_str(sample).unwrap();
            assert_eq!(event.event_name, name);
            assert!(event.event_name.is_referral_event());
            assert_eq!(event.resource_name.as_deref(), Some("referral"));
            assert_eq!(event.audit_uri, None);
            assert!(event.resource_change_utc_date.as_ref().unwrap().is_valid());
            // The samples carry a placeholder, not a GUID.
            let err = event.referral_id().unwrap_err();
            assert!(err.to_string().contains("{{ReferralID}}"), "{err}");
            let back = serde_json::to_value(&event).unwrap();
            assert_eq!(back, serde_json::from_str::<Value>(sample).unwrap());
        }
    }

    #[test]
    fn test_created_samples_parse_and_are_not_referral_events() {
        for sample in [TEST_CREATED, EVENT_MODEL] {
            let event: WebhookEvent = serde_json::from_str(sample).unwrap();
            assert_eq!(event.event_name, EventName::TestCreated);
            assert!(event.is_test());
            assert!(event.referral_id().is_err());
        }
        let event: WebhookEvent = serde_json::from_str(EVENT_MODEL).unwrap();
        assert_eq!(event.resource_id(), "c0bfd694-3075-4ec5-9a3c-733d3a890a1f");
    }

    #[test]
    fn the_referral_id_is_the_last_segment_of_any_uri_shape() {
        for uri in [
            format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{ID}"),
            format!("https://api.partner.microsoft.com/v1.0/engagements/referrals/{ID}/"),
            format!(
                "https://example.test/x/{}?expand=all#frag",
                ID.to_uppercase()
            ),
            format!("/engagements/v1/referrals/{{{ID}}}"),
            ID.to_owned(),
        ] {
            let event: WebhookEvent = serde_json::from_value(json!({
                "EventName": "referral-updated", "ResourceUri": uri
            }))
            .unwrap();
            assert_eq!(event.referral_id().unwrap().to_string(), ID, "{uri}");
        }
    }

    #[test]
    fn camel_case_members_and_lenient_event_names_are_accepted() {
        let event: WebhookEvent = serde_json::from_value(json!({
            "eventName": "ReferralCreated",
            "resourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{ID}"),
            "resourceName": "referral",
            "auditUrl": "https://api.partnercenter.microsoft.com/auditactivity/v1/auditrecords/1",
            "resourceChangeUtcDate": "2018-02-17T00:05:39.5485487+00:00",
            "DeliveryAttempt": 3
        }))
        .unwrap();
        assert_eq!(event.event_name, EventName::ReferralCreated);
        assert!(event.audit_uri.is_some());
        assert_eq!(event.extra["DeliveryAttempt"], 3);
        let back = serde_json::to_value(&event).unwrap();
        assert_eq!(back["EventName"], "referral-created");
        assert_eq!(back["DeliveryAttempt"], 3);
    }

    #[test]
    fn member_names_in_any_case_and_both_audit_spellings_are_read() {
        let event: WebhookEvent = serde_json::from_value(json!({
            "EVENTNAME": "referral-updated",
            "ResourceURI": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{ID}"),
            "AuditUri": null,
            "AuditUrl": "https://api.partnercenter.microsoft.com/auditactivity/v1/auditrecords/1",
            "ResourceChangeUTCDate": "2018-02-17T00:05:39.5485487+00:00",
            "Extra": 1
        }))
        .unwrap();
        assert_eq!(event.event_name, EventName::ReferralUpdated);
        assert_eq!(event.referral_id().unwrap().to_string(), ID);
        assert_eq!(
            event.audit_uri.as_deref(),
            Some("https://api.partnercenter.microsoft.com/auditactivity/v1/auditrecords/1"),
            "the first spelling that is not null"
        );
        assert!(event.resource_change_utc_date.is_some());
        assert_eq!(event.extra.keys().collect::<Vec<_>>(), ["Extra"]);
    }

    #[test]
    fn an_unusable_optional_member_reads_as_absent_and_a_required_one_refuses() {
        let uri = format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{ID}");
        let event: WebhookEvent = serde_json::from_value(json!({
            "EventName": "referral-created",
            "ResourceUri": uri,
            "ResourceName": ["referral"],
            "AuditUri": {"href": "x"},
            "ResourceChangeUtcDate": {"at": 1},
        }))
        .unwrap();
        assert_eq!(
            (
                event.resource_name,
                event.audit_uri,
                event.resource_change_utc_date
            ),
            (None, None, None)
        );
        for body in [
            json!({"ResourceUri": uri}),
            json!({"EventName": 1, "ResourceUri": uri}),
            json!({"EventName": "referral-created", "ResourceUri": null}),
            json!({"EventName": "referral-created", "ResourceUri": {"id": ID}}),
        ] {
            let error = serde_json::from_value::<WebhookEvent>(body.clone()).unwrap_err();
            assert!(
                error.to_string().contains("EventName")
                    || error.to_string().contains("ResourceUri"),
                "{body}: {error}"
            );
        }
    }

    #[test]
    fn unknown_event_names_are_kept() {
        let names: Vec<EventName> = serde_json::from_str(EVENTS_LIST).unwrap();
        assert_eq!(names[0], EventName::Unknown("subscription-updated".into()));
        assert_eq!(names[1], EventName::TestCreated);
        assert_eq!(
            serde_json::to_string(&names[2]).unwrap(),
            "\"usagerecords-thresholdExceeded\""
        );
    }

    #[test]
    fn registration_samples_parse_in_either_case() {
        for sample in [
            REGISTRATION_GET,
            REGISTRATION_REQUEST,
            REGISTRATION_REFERRALS,
            REGISTRATION_RESPONSE,
        ] {
            let registration: WebhookRegistration = serde_json::from_str(sample).unwrap();
            assert!(registration.webhook_url.is_some());
            assert!(!registration.webhook_events.is_empty());
        }
        let referrals: WebhookRegistration = serde_json::from_str(REGISTRATION_REFERRALS).unwrap();
        assert_eq!(referrals.signature_token_to_ms_signature_header, Some(true));
        assert_eq!(
            referrals.webhook_events,
            EventName::REFERRAL_EVENTS[..2].to_vec()
        );
        let response: WebhookRegistration = serde_json::from_str(REGISTRATION_RESPONSE).unwrap();
        assert_eq!(
            response.subscriber_id.as_deref(),
            Some("e82cac64-dc67-4cd3-849b-78b6127dd57d")
        );
        let written = serde_json::to_value(&referrals).unwrap();
        assert_eq!(written["SignatureTokenToMsSignatureHeader"], true);
    }

    #[test]
    fn validation_event_samples_parse() {
        let response: ValidationEventResponse = serde_json::from_str(VALIDATION_RESPONSE).unwrap();
        assert_eq!(
            response.correlation_id.as_deref(),
            Some("04af2aea-d413-42db-824e-f328001484d1")
        );
        let status: ValidationEventStatus = serde_json::from_str(VALIDATION_STATUS).unwrap();
        assert_eq!(status.status.as_deref(), Some("completed"));
        let result = &status.results[0];
        assert_eq!(result.response_code.as_deref(), Some("OK"));
        assert_eq!(result.response_message, None);
        assert_eq!(result.system_error, Some(false));
        assert!(result.date_time_utc.as_ref().unwrap().is_valid());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::proptest_support::{json_value, mutated, wire_text};

    const SAMPLES: [&str; 5] = [
        include_str!("../tests/data/webhook-referral-created.json"),
        include_str!("../tests/data/webhook-referral-updated.json"),
        include_str!("../tests/data/webhook-related-referral-created.json"),
        include_str!("../tests/data/webhook-test-created.json"),
        include_str!("../tests/data/registration-get-response.json"),
    ];

    /// Everything the receiver asks of an event.
    fn read(event: &WebhookEvent) {
        let _ = event.resource_id();
        let _ = event.is_test();
        let _ = event.referral_id();
        let _ = event.event_name.is_referral_event();
        let _ = event
            .resource_change_utc_date
            .as_ref()
            .map(WireDateTime::instant);
    }

    fn parse(body: &str) {
        if let Ok(event) = serde_json::from_str::<WebhookEvent>(body) {
            read(&event);
        }
        let _ = serde_json::from_str::<WebhookRegistration>(body);
        let _ = serde_json::from_str::<ValidationEventStatus>(body);
    }

    proptest! {
        #[test]
        fn any_body_is_read_or_refused_without_panic(body in wire_text()) {
            parse(&body);
        }

        #[test]
        fn any_json_is_read_or_refused_without_panic(value in json_value()) {
            parse(&value.to_string());
        }

        #[test]
        fn a_sample_with_one_value_replaced_is_read_or_refused_without_panic(
            sample in prop::sample::select(SAMPLES.to_vec()),
            which in any::<prop::sample::Index>(),
            with in prop_oneof![json_value(), wire_text().prop_map(Value::String)],
        ) {
            let sample: Value = serde_json::from_str(sample).unwrap();
            parse(&mutated(&sample, which, with).to_string());
        }

        #[test]
        fn any_resource_uri_is_read_without_panic(uri in wire_text(), id in any::<[u8; 16]>()) {
            let mut event: WebhookEvent = serde_json::from_str(SAMPLES[0]).unwrap();
            event.resource_uri = uri;
            read(&event);
            let id = ReferralId::from(uuid::Uuid::from_bytes(id));
            event.resource_uri = format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}?x=1");
            prop_assert_eq!(event.referral_id().unwrap(), id);
        }

        #[test]
        fn member_names_read_the_same_in_any_letter_case(
            sample in prop::sample::select(SAMPLES[..4].to_vec()),
            upper in prop::collection::vec(any::<bool>(), 64),
        ) {
            let sample: Map<String, Value> = serde_json::from_str(sample).unwrap();
            let recased: Map<String, Value> = sample
                .iter()
                .map(|(name, value)| {
                    let name = name
                        .chars()
                        .zip(upper.iter().cycle())
                        .map(|(ch, up)| if *up { ch.to_ascii_uppercase() } else { ch.to_ascii_lowercase() })
                        .collect::<String>();
                    (name, value.clone())
                })
                .collect();
            let expected = WebhookEvent::from_members(sample).unwrap();
            let read = WebhookEvent::from_members(recased).unwrap();
            prop_assert_eq!(
                (&read.event_name, &read.resource_uri, &read.resource_name, &read.audit_uri, &read.resource_change_utc_date),
                (&expected.event_name, &expected.resource_uri, &expected.resource_name, &expected.audit_uri, &expected.resource_change_utc_date)
            );
        }

        #[test]
        fn event_names_read_back(name in prop::sample::select(EventName::KNOWN.to_vec()), other in wire_text()) {
            let (name, wire) = name;
            prop_assert_eq!(EventName::parse(wire), name.clone());
            prop_assert_eq!(EventName::parse(&wire.to_ascii_uppercase().replace('-', "_")), name);
            let parsed = EventName::parse(&other);
            prop_assert_eq!(EventName::parse(parsed.as_str()), parsed);
        }
    }
}
