//! Lenient readers for CRM record JSON, shared by the Dataverse and Salesforce mappings.
//!
//! CRM values arrive in several shapes: Web API JSON (numbers, booleans, ISO dates), values
//! decoded from a Dataverse webhook (`{"__type":"Money:…","Value":50000.0}`,
//! `{"__type":"OptionSetValue:…","Value":1}`, `/Date(…)/`), and Salesforce Outbound Message
//! fields (everything is text: `"50000.0"`, `"true"`). Every reader accepts all of them.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::datetime::parse_date;
use crate::ids::{ReferralId, SolutionId};
use crate::opportunity::{AssistanceRequest, Contact, OpportunityField, RejectedValue};
use crate::serde_helpers::{decimal_from_json, lenient_bool};
use crate::taxonomy::{TaxonomyConfig, TaxonomyField, TaxonomyValues};
use crate::values::{CountryCode, CurrencyCode};

/// The annotation Dataverse adds for the display text of option sets and lookups.
const FORMATTED_VALUE: &str = "@OData.Community.Display.V1.FormattedValue";

/// The outcome of reading one field.
#[derive(Debug)]
pub(crate) enum Read<T> {
    /// Absent, `null` or empty.
    Missing,
    /// Read.
    Found(T),
    /// Present but unreadable; holds the text found.
    Rejected(String),
}

/// Collects rejected values while reading one record.
#[derive(Debug, Default)]
pub(crate) struct Rejections(pub(crate) Vec<RejectedValue>);

impl Rejections {
    /// Keep a found value; record a rejected one.
    pub(crate) fn take<T>(
        &mut self,
        read: Read<T>,
        field: OpportunityField,
        crm_field: &str,
    ) -> Option<T> {
        match read {
            Read::Missing => None,
            Read::Found(value) => Some(value),
            Read::Rejected(found) => {
                self.0.push(RejectedValue {
                    field,
                    crm_field: crm_field.to_owned(),
                    found,
                });
                None
            }
        }
    }
}

/// The value of `key`, unwrapping Dataverse's typed wrappers (`{"Value": …}`); `None` for a
/// missing key or `null`.
pub(crate) fn value<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let value = map.get(key)?;
    let value = match value {
        Value::Object(inner) if inner.contains_key("Value") && !inner.contains_key("Id") => {
            inner.get("Value")?
        }
        other => other,
    };
    (!value.is_null()).then_some(value)
}

/// A scalar as text (numbers and booleans too), trimmed; `None` for missing, empty or
/// non-scalar values.
pub(crate) fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match value(map, key)? {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Like [`text`], but a number (an option-set value) is replaced by its formatted display text
/// when Dataverse sent one.
pub(crate) fn text_or_label(map: &Map<String, Value>, key: &str) -> Option<String> {
    if matches!(value(map, key), Some(Value::Number(_)))
        && let Some(label) = text(map, &format!("{key}{FORMATTED_VALUE}"))
    {
        return Some(label);
    }
    text(map, key)
}

/// Text of any present value, for quoting a rejected value.
fn found_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A decimal from a number, a numeric string or a typed wrapper.
pub(crate) fn decimal(map: &Map<String, Value>, key: &str) -> Read<Decimal> {
    match value(map, key) {
        None => Read::Missing,
        Some(Value::String(s)) if s.trim().is_empty() => Read::Missing,
        Some(v) => match decimal_from_json(v) {
            Ok(d) => Read::Found(d),
            Err(_) => Read::Rejected(found_text(v)),
        },
    }
}

/// A calendar date from any date form (`2024-11-14`, RFC 3339, `/Date(…)/`).
pub(crate) fn date(map: &Map<String, Value>, key: &str) -> Read<NaiveDate> {
    match text(map, key) {
        None => Read::Missing,
        Some(t) => match parse_date(&t) {
            Ok(d) => Read::Found(d),
            Err(_) => Read::Rejected(t),
        },
    }
}

/// An integer (option-set value) from a number, a numeric string or a typed wrapper.
pub(crate) fn integer(map: &Map<String, Value>, key: &str) -> Read<i64> {
    match value(map, key) {
        None => Read::Missing,
        Some(Value::Number(n)) => n
            .as_i64()
            .map_or_else(|| Read::Rejected(n.to_string()), Read::Found),
        Some(Value::String(s)) if s.trim().is_empty() => Read::Missing,
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_or_else(|_| Read::Rejected(s.clone()), Read::Found),
        Some(other) => Read::Rejected(found_text(other)),
    }
}

/// A boolean from `true`/`false`, `1`/`0`, `"Yes"`/`"No"` and friends.
pub(crate) fn boolean(map: &Map<String, Value>, key: &str) -> Read<bool> {
    match value(map, key) {
        None => Read::Missing,
        Some(Value::String(s)) if s.trim().is_empty() => Read::Missing,
        Some(v) => lenient_bool(v).map_or_else(|| Read::Rejected(found_text(v)), Read::Found),
    }
}

/// A nested object (an expanded lookup or a relationship); `None` unless it is an object.
pub(crate) fn object<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    map.get(key).and_then(Value::as_object)
}

/// A currency code from text.
pub(crate) fn currency(map: &Map<String, Value>, key: &str) -> Read<CurrencyCode> {
    match text(map, key) {
        None => Read::Missing,
        Some(t) => CurrencyCode::try_from(t.as_str()).map_or(Read::Rejected(t), Read::Found),
    }
}

/// A country code from text.
pub(crate) fn country(map: &Map<String, Value>, key: &str) -> Read<CountryCode> {
    match text(map, key) {
        None => Read::Missing,
        Some(t) => CountryCode::try_from(t.as_str()).map_or(Read::Rejected(t), Read::Found),
    }
}

/// A referral id from text.
pub(crate) fn referral_id(map: &Map<String, Value>, key: &str) -> Read<ReferralId> {
    match text(map, key) {
        None => Read::Missing,
        Some(t) => ReferralId::try_from(t.as_str()).map_or(Read::Rejected(t), Read::Found),
    }
}

/// Solution ids from one text column separated by `;`, `,` or line breaks. Malformed ids are
/// recorded as rejected, valid ones kept in order without duplicates.
pub(crate) fn solutions(
    map: &Map<String, Value>,
    key: &str,
    rejected: &mut Rejections,
) -> Vec<SolutionId> {
    let mut ids: Vec<SolutionId> = Vec::new();
    for part in text(map, key)
        .unwrap_or_default()
        .split([';', ',', '\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match SolutionId::try_from(part) {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(_) => {
                rejected.take::<()>(
                    Read::Rejected(part.to_owned()),
                    OpportunityField::Solution,
                    key,
                );
            }
        }
    }
    ids
}

/// The text form of solution ids for one CRM column.
pub(crate) fn join_solutions(ids: &[SolutionId]) -> String {
    ids.iter()
        .map(SolutionId::as_str)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The help option from a label, an API code, or an option-set number with its formatted
/// value.
pub(crate) fn help(map: &Map<String, Value>, key: &str) -> Option<AssistanceRequest> {
    text_or_label(map, key).map(|t| AssistanceRequest::parse(&t))
}

/// The CRM columns of the three taxonomy members.
pub(crate) struct TaxonomyKeys<'a> {
    pub(crate) solution_area: &'a str,
    pub(crate) solution_play: &'a str,
    pub(crate) partner_role: &'a str,
}

/// A taxonomy value's text: a text column, a choice / picklist (its formatted label when
/// Dataverse sent one), or a lookup's name (a webhook's `EntityReference`).
fn taxonomy_text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key) {
        Some(Value::Object(reference)) if reference.contains_key("Id") => text(reference, "Name"),
        _ => text_or_label(map, key),
    }
}

/// The Solution Area, Solution Play and Partner Role of a record, matched against the
/// allowed values (docs/partner-center.md#solution-area-solution-play-and-partner-role): a
/// value the configuration does not allow (a play of another area included) is recorded as
/// rejected with the text found.
pub(crate) fn taxonomy(
    map: &Map<String, Value>,
    keys: &TaxonomyKeys<'_>,
    config: &TaxonomyConfig,
    rejected: &mut Rejections,
) -> TaxonomyValues {
    let mut read = |key: &str, field: TaxonomyField, allowed: &dyn Fn(&str) -> bool| {
        let found = taxonomy_text(map, key)?;
        if allowed(&found) {
            Some(found)
        } else {
            rejected.take::<()>(
                Read::Rejected(found),
                OpportunityField::of_taxonomy(field),
                key,
            );
            None
        }
    };
    let solution_area = read(keys.solution_area, TaxonomyField::SolutionArea, &|t| {
        config.solution_area(t).is_some()
    })
    .and_then(|t| config.solution_area(&t).cloned());
    let solution_play = read(keys.solution_play, TaxonomyField::SolutionPlay, &|t| {
        config.solution_play(solution_area.as_ref(), t).is_some()
    })
    .and_then(|t| config.solution_play(solution_area.as_ref(), &t).cloned());
    let partner_role = read(keys.partner_role, TaxonomyField::PartnerRole, &|t| {
        config.partner_role(t).is_some()
    })
    .and_then(|t| config.partner_role(&t).cloned());
    TaxonomyValues {
        solution_area,
        solution_play,
        partner_role,
    }
}

/// The four contact columns; `None` when all are empty.
pub(crate) fn contact(
    map: &Map<String, Value>,
    first_name: &str,
    last_name: &str,
    email: &str,
    phone: &str,
) -> Option<Contact> {
    let contact = Contact {
        first_name: text(map, first_name),
        last_name: text(map, last_name),
        email: text(map, email),
        phone: text(map, phone),
    };
    (!contact.is_empty()).then_some(contact)
}

/// Insert `value` under `key` when it is `Some`.
pub(crate) fn put(body: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        body.insert(key.to_owned(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn typed_dataverse_wrappers_are_unwrapped() {
        let record = map(json!({
            "estimatedvalue": { "__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 50000.0 },
            "statecode": { "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1 },
            "estimatedclosedate": "/Date(1731542400000)/"
        }));
        assert!(
            matches!(decimal(&record, "estimatedvalue"), Read::Found(d) if d == Decimal::from(50000))
        );
        assert!(matches!(integer(&record, "statecode"), Read::Found(1)));
        assert!(
            matches!(date(&record, "estimatedclosedate"), Read::Found(d) if d.to_string() == "2024-11-14")
        );
    }

    #[test]
    fn an_entity_reference_is_not_mistaken_for_a_wrapped_value() {
        let record =
            map(json!({ "parentaccountid": { "Id": "x", "LogicalName": "account", "Value": 1 } }));
        assert!(value(&record, "parentaccountid").is_some_and(Value::is_object));
    }

    #[test]
    fn option_set_numbers_use_their_formatted_label() {
        let record = map(json!({
            "help": 100000002,
            "help@OData.Community.Display.V1.FormattedValue": "Proof of concept or demo"
        }));
        assert_eq!(
            help(&record, "help"),
            Some(AssistanceRequest::ProofOfConceptOrDemo)
        );
    }

    #[test]
    fn solution_columns_split_on_semicolons_commas_and_lines() {
        let record = map(json!({ "s": "SOL-1; SOL-2,SOL-1\nDynamics365forSales;; bad id ;" }));
        let mut rejected = Rejections::default();
        let ids = solutions(&record, "s", &mut rejected);
        let ids: Vec<&str> = ids.iter().map(SolutionId::as_str).collect();
        assert_eq!(ids, ["SOL-1", "SOL-2", "Dynamics365forSales"]);
        assert_eq!(rejected.0.len(), 1);
        assert_eq!(rejected.0[0].found, "bad id");
    }

    #[test]
    fn outbound_message_text_values_are_read() {
        let record = map(
            json!({ "Amount": "50000.0", "IsWon": "true", "CloseDate": "2024-11-14", "N": "" }),
        );
        assert!(matches!(decimal(&record, "Amount"), Read::Found(d) if d == Decimal::from(50000)));
        assert!(matches!(boolean(&record, "IsWon"), Read::Found(true)));
        assert!(matches!(date(&record, "CloseDate"), Read::Found(_)));
        assert!(matches!(decimal(&record, "N"), Read::Missing));
        assert!(matches!(decimal(&record, "Absent"), Read::Missing));
    }

    const KEYS: TaxonomyKeys<'static> = TaxonomyKeys {
        solution_area: "area",
        solution_play: "play",
        partner_role: "role",
    };

    #[test]
    fn taxonomy_values_are_matched_and_the_rest_rejected_with_the_text_found() {
        let record =
            map(json!({ "area": " SECURITY ", "play": "Unify Your Data Platform", "role": 7 }));
        let mut rejected = Rejections::default();
        let values = taxonomy(&record, &KEYS, &TaxonomyConfig::default(), &mut rejected);
        assert_eq!(
            values.solution_area.as_ref().map(|a| a.as_str()),
            Some("Security")
        );
        assert_eq!(values.solution_play, None, "a play of another area");
        assert_eq!(values.partner_role, None);
        let found: Vec<(OpportunityField, &str, &str)> = rejected
            .0
            .iter()
            .map(|r| (r.field, r.crm_field.as_str(), r.found.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    OpportunityField::SolutionPlay,
                    "play",
                    "Unify Your Data Platform"
                ),
                (OpportunityField::PartnerRole, "role", "7"),
            ]
        );
        let empty = taxonomy(
            &map(json!({ "area": "", "play": null })),
            &KEYS,
            &TaxonomyConfig::default(),
            &mut Rejections::default(),
        );
        assert_eq!(empty, TaxonomyValues::default());
    }

    proptest::proptest! {
        /// Any JSON in the three columns: each value is an allowed one, or rejected naming its
        /// column, or missing; never a panic.
        #[test]
        fn any_taxonomy_column_is_read_or_rejected_naming_the_column(
            area in crate::proptest_support::json_value(),
            play in crate::proptest_support::json_value(),
            role in crate::proptest_support::wire_text(),
        ) {
            let record = map(json!({ "area": area, "play": play, "role": role }));
            let mut rejected = Rejections::default();
            let config = TaxonomyConfig::default();
            let values = taxonomy(&record, &KEYS, &config, &mut rejected);
            for r in &rejected.0 {
                proptest::prop_assert!(["area", "play", "role"].contains(&r.crm_field.as_str()));
            }
            if let Some(area) = &values.solution_area {
                proptest::prop_assert!(config.solution_area(area.as_str()).is_some());
            }
            if let Some(role) = &values.partner_role {
                proptest::prop_assert!(config.partner_role(role.as_str()).is_some());
            }
        }
    }
}
