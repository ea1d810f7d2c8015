//! Tolerant serde helpers shared by the wire models.
//!
//! Real traffic deviates from the published samples: numbers arrive as strings (`"10000"`),
//! strings as numbers (a postal code `98052`), `null` and `""` stand for "not set", and an
//! array sometimes arrives as `null`. The helpers here accept all of that and never need `f64`
//! for money: a JSON number that serde hands over as `f64` is turned into a [`Decimal`] through
//! its shortest round-trip string.
//!
//! Use them with `#[serde(default, deserialize_with = "…")]`.

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::datetime::WireDateTime;
use crate::error::ParseError;

const DECIMAL_EXPECTED: &str =
    "a decimal number such as 50000 or 1234.56 (a JSON number or string)";

/// "Decimal from number or string": `#[serde(with = "cosell_domain::serde_helpers::decimal")]`.
///
/// Deserializes a JSON number (integer or float) or a numeric string into a [`Decimal`].
/// Serializes as a JSON number (see [`decimal_to_json`]).
pub mod decimal {
    use super::*;

    /// Serialize a [`Decimal`] as a JSON number.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        decimal_to_json(*value).serialize(serializer)
    }

    /// Deserialize a [`Decimal`] from a JSON number or a numeric string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let value = Value::deserialize(deserializer)?;
        decimal_from_json(&value).map_err(D::Error::custom)
    }
}

/// Like [`decimal`] for `Option<Decimal>`: `null`, `""` and a missing member are `None`.
/// Use with `#[serde(default, with = "…")]`.
pub mod option_decimal {
    use super::*;

    /// Serialize as a JSON number, or `null` for `None`.
    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(decimal_to_json).serialize(serializer)
    }

    /// Deserialize from a JSON number, a numeric string, `null` or `""`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        match Option::<Value>::deserialize(deserializer)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(value) => decimal_from_json(&value)
                .map(Some)
                .map_err(D::Error::custom),
        }
    }
}

/// Read a [`Decimal`] from a JSON number or numeric string.
///
/// Integers convert exactly. A float converts through its shortest round-trip representation
/// (`1234.56_f64` → `"1234.56"` → `1234.56`), which is exact for every value with at most 15
/// significant digits. Strings may use scientific notation (`"1.5E+4"`).
pub fn decimal_from_json(value: &Value) -> Result<Decimal, ParseError> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Decimal::from(u))
            } else if let Some(i) = n.as_i64() {
                Ok(Decimal::from(i))
            } else if let Some(f) = n.as_f64() {
                decimal_from_f64(f)
            } else {
                Err(ParseError::invalid(
                    "decimal",
                    &n.to_string(),
                    DECIMAL_EXPECTED,
                ))
            }
        }
        Value::String(s) => parse_decimal(s),
        other => Err(ParseError::invalid(
            "decimal",
            &other.to_string(),
            DECIMAL_EXPECTED,
        )),
    }
}

/// Parse a decimal from text: plain (`"10000"`, `"-1234.56"`) or scientific (`"1.5e4"`).
pub fn parse_decimal(text: &str) -> Result<Decimal, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::empty("decimal", DECIMAL_EXPECTED));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    Decimal::from_str(t)
        .or_else(|_| Decimal::from_scientific(t))
        .map_err(|_| ParseError::invalid("decimal", text, DECIMAL_EXPECTED))
}

/// Convert an `f64` (as serde hands over a JSON float) into a [`Decimal`] via its shortest
/// round-trip string, never via binary arithmetic.
pub fn decimal_from_f64(value: f64) -> Result<Decimal, ParseError> {
    if !value.is_finite() {
        return Err(ParseError::invalid(
            "decimal",
            &value.to_string(),
            DECIMAL_EXPECTED,
        ));
    }
    // `Display` for f64 prints the shortest string that round-trips, never in exponent form.
    parse_decimal(&value.to_string())
}

/// Write a [`Decimal`] as a JSON value.
///
/// Whole numbers become JSON integers (exact). Fractions become JSON numbers when the float
/// carrier prints back to exactly the same decimal (always true for ≤ 15 significant digits,
/// i.e. every amount a CRM or Partner Center stores); otherwise the exact decimal string is sent.
pub fn decimal_to_json(value: Decimal) -> Value {
    let value = value.normalize();
    if value.scale() == 0 {
        if let Some(i) = value.to_i64() {
            return Value::from(i);
        }
    } else if let Some(f) = value.to_f64()
        && let Some(n) = serde_json::Number::from_f64(f)
        && Decimal::from_str(&f.to_string()).is_ok_and(|back| back == value)
    {
        return Value::Number(n);
    }
    Value::String(value.to_string())
}

/// `Option<String>` where `null`, `""` and whitespace-only are `None`; numbers and booleans are
/// accepted as their text (a postal code sent as `98052`).
pub fn opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    scalar_text(value).map_err(D::Error::custom)
}

fn scalar_text(value: Option<Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok((!s.trim().is_empty()).then_some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(Value::Array(_)) => Err("expected a string, found an array".to_owned()),
        Some(Value::Object(_)) => Err("expected a string, found an object".to_owned()),
    }
}

/// `Option<bool>` from `true`/`false`, `"true"`/`"false"`, `"yes"`/`"no"`, `1`/`0`;
/// `null` and `""` are `None`.
pub fn opt_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match lenient_bool(&value) {
            Some(b) => Ok(Some(b)),
            None if value.as_str().is_some_and(|s| s.trim().is_empty()) => Ok(None),
            None => Err(D::Error::custom(format!(
                "expected a boolean (true/false, yes/no, 1/0), found {value}"
            ))),
        },
    }
}

/// Read a boolean leniently: JSON booleans, `0`/`1`, and the strings
/// `true/false`, `yes/no`, `y/n`, `1/0`, `on/off` (any case).
pub fn lenient_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "on" => Some(true),
            "false" | "no" | "n" | "0" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `Option<T>` for a wire enum parsed from text (`T: From<&str>`, never failing);
/// `null` and `""` are `None`.
pub fn opt_enum<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: for<'a> From<&'a str>,
{
    Ok(opt_string(deserializer)?.map(|s| T::from(s.as_str())))
}

/// Like [`opt_enum`], but the wire value `"None"` (any case) also means "not set", as for the
/// referral status and substatus (docs/partner-center.md#referral-status-rules).
pub fn opt_enum_none_unset<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: for<'a> From<&'a str>,
{
    Ok(opt_string(deserializer)?
        .filter(|s| !s.trim().eq_ignore_ascii_case("none"))
        .map(|s| T::from(s.as_str())))
}

/// `Option<WireDateTime>`: `null` and `""` are `None`; any text is kept (see [`WireDateTime`]).
pub fn opt_datetime<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<WireDateTime>, D::Error> {
    Ok(opt_string(deserializer)?.map(|s| WireDateTime::parse(&s)))
}

/// `Option<u64>` from a JSON number or numeric string; `null` and `""` are `None`.
pub fn opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a count, found {n}"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected a count, found {s:?}"))),
        Some(other) => Err(D::Error::custom(format!("expected a count, found {other}"))),
    }
}

/// `Vec<T>` that also accepts `null` (empty) and a single object instead of an array; an item
/// that is not a `T` (`null`, a text where an object belongs) is skipped, so one odd item does
/// not make the whole answer unreadable (a list page of referrals, a referral's team).
pub fn lenient_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        Some(single) => serde_json::from_value(single).into_iter().collect(),
    })
}

/// An optional object read as absent when it is not a `T` (its members of the wrong type, a
/// list where an object belongs): for members the connector only carries along (consent
/// flags, notification preferences, requirements, links), so that one odd value does not make
/// the whole referral unreadable.
pub fn lenient_opt<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(Option::<Value>::deserialize(deserializer)?
        .filter(|value| !value.is_null())
        .and_then(|value| serde_json::from_value(value).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, Serialize)]
    struct Holder {
        #[serde(with = "decimal")]
        value: Decimal,
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn decimal_accepts_integers_floats_and_strings() {
        for (input, expected) in [
            (json!(50000), "50000"),
            (json!(-12), "-12"),
            (json!(1234.56), "1234.56"),
            (json!(0.1), "0.1"),
            (json!("10000"), "10000"),
            (json!(" 1234.56 "), "1234.56"),
            (json!("1.5E+4"), "15000"),
            (json!("+7"), "7"),
        ] {
            let got: Holder = serde_json::from_value(json!({ "value": input })).unwrap();
            assert_eq!(got.value, dec(expected), "input {input}");
        }
    }

    #[test]
    fn decimal_rejects_text_and_empty_values_with_the_expected_format() {
        for input in [json!("ten"), json!(""), json!(true), json!({})] {
            let err = serde_json::from_value::<Holder>(json!({ "value": input })).unwrap_err();
            assert!(err.to_string().contains("decimal"), "{err}");
        }
    }

    #[test]
    fn decimal_serializes_as_a_json_number_and_keeps_fractions_exact() {
        assert_eq!(decimal_to_json(dec("50000")), json!(50000));
        assert_eq!(decimal_to_json(dec("50000.00")), json!(50000));
        assert_eq!(decimal_to_json(dec("1234.56")), json!(1234.56));
        assert_eq!(decimal_to_json(dec("0.10")), json!(0.1));
        // More digits than a float carries: the exact decimal goes out as a string.
        let long = dec("1234567890.12345678901");
        assert_eq!(decimal_to_json(long), json!("1234567890.12345678901"));
    }

    #[test]
    fn decimal_from_a_float_uses_the_shortest_round_trip_text() {
        assert_eq!(decimal_from_f64(1234.56).unwrap(), dec("1234.56"));
        assert_eq!(
            decimal_from_f64(0.1 + 0.2).unwrap(),
            dec("0.30000000000000004")
        );
        assert!(decimal_from_f64(f64::NAN).is_err());
        assert!(decimal_from_f64(f64::INFINITY).is_err());
    }

    #[derive(Debug, Deserialize)]
    struct Loose {
        #[serde(default, deserialize_with = "opt_string")]
        text: Option<String>,
        #[serde(default, deserialize_with = "opt_bool")]
        flag: Option<bool>,
        #[serde(default, deserialize_with = "opt_u64")]
        count: Option<u64>,
        #[serde(default, deserialize_with = "lenient_vec")]
        items: Vec<u32>,
        #[serde(default, with = "option_decimal")]
        amount: Option<Decimal>,
    }

    #[test]
    fn loose_scalars_treat_null_and_empty_as_not_set() {
        let got: Loose = serde_json::from_value(json!({
            "text": "", "flag": null, "count": "", "items": null, "amount": ""
        }))
        .unwrap();
        assert_eq!(got.text, None);
        assert_eq!(got.flag, None);
        assert_eq!(got.count, None);
        assert!(got.items.is_empty());
        assert_eq!(got.amount, None);
        let missing: Loose = serde_json::from_value(json!({})).unwrap();
        assert_eq!(missing.text, None);
    }

    #[test]
    fn loose_scalars_coerce_the_usual_deviations() {
        let got: Loose = serde_json::from_value(json!({
            "text": 98052, "flag": "Yes", "count": "3", "items": 7, "amount": 12.5
        }))
        .unwrap();
        assert_eq!(got.text.as_deref(), Some("98052"));
        assert_eq!(got.flag, Some(true));
        assert_eq!(got.count, Some(3));
        assert_eq!(got.items, vec![7]);
        assert_eq!(got.amount, Some(dec("12.5")));
    }

    #[test]
    fn a_garbage_boolean_is_an_error_not_a_silent_default() {
        let err = serde_json::from_value::<Loose>(json!({ "flag": "maybe" })).unwrap_err();
        assert!(err.to_string().contains("expected a boolean"), "{err}");
    }
}
