//! JSON ⇄ DynamoDB attribute values, so domain types are stored as plain, queryable attributes
//! (one attribute per field) through their serde form.
//!
//! Strings → `S`, numbers → `N`, booleans → `BOOL`, null → `NULL`, arrays → `L`, objects → `M`.
//! At the top level of an item, `null` fields (`None`) are left out rather than stored.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A JSON value as an attribute value.
pub fn to_attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_attribute(v)))
                .collect(),
        ),
    }
}

/// An attribute value as JSON (`None` for types JSON cannot hold: binary and sets of binary).
pub fn from_attribute(value: &AttributeValue) -> Option<Value> {
    Some(match value {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => Value::Number(parse_number(n)?),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => {
            Value::Array(items.iter().map(from_attribute).collect::<Option<_>>()?)
        }
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Some((k.clone(), from_attribute(v)?)))
                .collect::<Option<Map<_, _>>>()?,
        ),
        AttributeValue::Ss(items) => {
            Value::Array(items.iter().cloned().map(Value::String).collect())
        }
        AttributeValue::Ns(items) => Value::Array(
            items
                .iter()
                .map(|n| parse_number(n).map(Value::Number))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

fn parse_number(text: &str) -> Option<Number> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(u.into());
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

/// The serde form of `value` (a struct) as item attributes, leaving out `None` fields.
pub fn to_item<T: Serialize>(value: &T) -> Result<Item, serde_json::Error> {
    match serde_json::to_value(value)? {
        Value::Object(fields) => Ok(fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), to_attribute(v)))
            .collect()),
        other => Err(serde::ser::Error::custom(format!(
            "expected a struct to store as an item, got {other}"
        ))),
    }
}

/// Read a struct back from an item's attributes (attributes it does not know, such as the
/// keys, are ignored by its serde form).
pub fn from_item<T: DeserializeOwned>(item: &Item) -> Result<T, String> {
    let fields = item
        .iter()
        .filter_map(|(k, v)| from_attribute(v).map(|v| (k.clone(), v)))
        .collect::<Map<_, _>>();
    serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())
}

/// A string attribute.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The string attribute `name` of `item`.
pub fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// The integer number attribute `name` of `item`.
pub fn get_i64(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        count: u32,
        ratio: f64,
        note: Option<String>,
        tags: Vec<String>,
        nested: Value,
    }

    #[test]
    fn structs_round_trip_through_attributes_without_null_fields() {
        let sample = Sample {
            name: "x".into(),
            count: 3,
            ratio: 0.25,
            note: None,
            tags: vec!["a".into()],
            nested: json!({ "kind": "failed", "empty": null, "big": u64::MAX, "neg": -4 }),
        };
        let item = to_item(&sample).unwrap();
        assert!(!item.contains_key("note"));
        assert_eq!(item["count"], AttributeValue::N("3".into()));
        let mut with_keys = item.clone();
        with_keys.insert("pk".into(), s("REFERRAL#1"));
        assert_eq!(from_item::<Sample>(&with_keys).unwrap(), sample);
    }

    #[test]
    fn non_structs_are_not_items() {
        assert!(to_item(&"text").is_err());
        assert!(from_item::<Sample>(&Item::new()).is_err());
    }
}
