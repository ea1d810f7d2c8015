//! Validated value types: country and currency codes, money and the deal value.
//!
//! Money is always a [`Decimal`], never `f64`; see [`crate::serde_helpers`] for reading amounts
//! from JSON numbers and strings.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

const COUNTRY_EXPECTED: &str = "an ISO 3166-1 alpha-2 country code of two letters such as \"US\"";

/// An ISO 3166-1 alpha-2 country code (`US`, `DE`), checked against the ISO list.
///
/// Accepts lower case and surrounding whitespace; rejects alpha-3 codes (`USA`), names
/// (`United States`), empty text and unassigned codes (`XX`). [`CountryCode::suggest`] finds the
/// code a rejected value most likely meant, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode(&'static str);

// Written by hand: a derived `Deserialize` on a `&'static str` field would require `'de: 'static`.
impl Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::try_from(text.as_str()).map_err(serde::de::Error::custom)
    }
}

impl CountryCode {
    /// The two upper-case letters.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The country's English name, e.g. "The United States Of America".
    pub fn name(&self) -> &'static str {
        celes::Country::from_alpha2(self.0).map_or("", |c| c.long_name)
    }

    /// The code a non-code value most likely means: an alpha-3 code (`USA` → `US`) or a country
    /// name or common alias (`United States` → `US`). `None` when nothing matches.
    pub fn suggest(text: &str) -> Option<Self> {
        let t = text.trim();
        if let Ok(code) = Self::try_from(t) {
            return Some(code);
        }
        if let Ok(country) = celes::Country::from_alpha3(t) {
            return Some(Self(country.alpha2));
        }
        let squashed: String = t
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        celes::Country::from_str(&squashed)
            .ok()
            .map(|country| Self(country.alpha2))
    }
}

impl TryFrom<&str> for CountryCode {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ParseError::empty("country code", COUNTRY_EXPECTED));
        }
        if t.len() != 2 || !t.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(ParseError::invalid("country code", text, COUNTRY_EXPECTED));
        }
        celes::Country::from_alpha2(t)
            .map(|country| Self(country.alpha2))
            .map_err(|_| ParseError::invalid("country code", text, COUNTRY_EXPECTED))
    }
}

impl TryFrom<String> for CountryCode {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Self::try_from(text.as_str())
    }
}

impl FromStr for CountryCode {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl From<CountryCode> for String {
    fn from(code: CountryCode) -> String {
        code.0.to_owned()
    }
}

const CURRENCY_EXPECTED: &str = "an ISO 4217 currency code of three letters such as \"USD\"";

/// An ISO 4217 currency code (`USD`, `EUR`), checked against the ISO list; lower case accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CurrencyCode(iso_currency::Currency);

impl CurrencyCode {
    /// The three upper-case letters.
    pub fn as_str(&self) -> &'static str {
        self.0.code()
    }

    /// The number of decimal places the currency uses (2 for USD, 0 for JPY), when defined.
    pub fn minor_units(&self) -> Option<u16> {
        self.0.exponent()
    }
}

impl fmt::Debug for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurrencyCode({})", self.as_str())
    }
}

impl TryFrom<&str> for CurrencyCode {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ParseError::empty("currency code", CURRENCY_EXPECTED));
        }
        if t.len() != 3 {
            return Err(ParseError::invalid(
                "currency code",
                text,
                CURRENCY_EXPECTED,
            ));
        }
        iso_currency::Currency::from_code(&t.to_ascii_uppercase())
            .map(Self)
            .ok_or_else(|| ParseError::invalid("currency code", text, CURRENCY_EXPECTED))
    }
}

impl TryFrom<String> for CurrencyCode {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Self::try_from(text.as_str())
    }
}

impl FromStr for CurrencyCode {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<CurrencyCode> for String {
    fn from(code: CurrencyCode) -> String {
        code.as_str().to_owned()
    }
}

/// An amount in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount, exact.
    #[serde(with = "crate::serde_helpers::decimal")]
    pub amount: Decimal,
    /// The currency.
    pub currency: CurrencyCode,
}

impl Money {
    /// An amount in a currency.
    pub fn new(amount: Decimal, currency: CurrencyCode) -> Self {
        Self { amount, currency }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount.normalize(), self.currency)
    }
}

const DEAL_VALUE_EXPECTED: &str = "a deal value greater than 0";

/// A deal value: a decimal strictly greater than zero (docs/partner-center.md#validation-rules:
/// deal values "should not be 0 or empty").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct DealValue(Decimal);

impl DealValue {
    /// The amount.
    pub fn amount(&self) -> Decimal {
        self.0
    }
}

impl TryFrom<Decimal> for DealValue {
    type Error = ParseError;
    fn try_from(amount: Decimal) -> Result<Self, ParseError> {
        if amount > Decimal::ZERO {
            Ok(Self(amount))
        } else {
            Err(ParseError::invalid(
                "deal value",
                &amount.to_string(),
                DEAL_VALUE_EXPECTED,
            ))
        }
    }
}

impl TryFrom<&str> for DealValue {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let amount = crate::serde_helpers::parse_decimal(text)
            .map_err(|_| ParseError::invalid("deal value", text, DEAL_VALUE_EXPECTED))?;
        Self::try_from(amount)
    }
}

impl FromStr for DealValue {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl From<DealValue> for Decimal {
    fn from(value: DealValue) -> Decimal {
        value.0
    }
}

impl fmt::Display for DealValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.normalize(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_accept_lower_case_and_whitespace() {
        assert_eq!(CountryCode::try_from("us").unwrap().as_str(), "US");
        assert_eq!(CountryCode::try_from(" de ").unwrap().to_string(), "DE");
        assert_eq!(CountryCode::try_from("GB").unwrap().as_str(), "GB");
    }

    #[test]
    fn country_codes_reject_alpha3_names_empty_and_unassigned_saying_what_is_expected() {
        for bad in ["USA", "United States", "", "XX", "U1"] {
            let err = CountryCode::try_from(bad).unwrap_err();
            assert_eq!(err.field(), "country code");
            assert!(
                err.to_string().contains("ISO 3166-1 alpha-2")
                    && err.to_string().contains("\"US\""),
                "{err}"
            );
        }
    }

    #[test]
    fn country_suggestions_map_alpha3_and_names_to_the_code() {
        assert_eq!(CountryCode::suggest("USA").map(|c| c.as_str()), Some("US"));
        assert_eq!(CountryCode::suggest("deu").map(|c| c.as_str()), Some("DE"));
        assert_eq!(
            CountryCode::suggest("United States").map(|c| c.as_str()),
            Some("US")
        );
        assert_eq!(
            CountryCode::suggest("Germany").map(|c| c.as_str()),
            Some("DE")
        );
        assert_eq!(CountryCode::suggest("Atlantis"), None);
    }

    #[test]
    fn country_codes_serialize_as_strings() {
        let code: CountryCode = serde_json::from_str("\"fr\"").unwrap();
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"FR\"");
        assert!(serde_json::from_str::<CountryCode>("\"FRA\"").is_err());
    }

    #[test]
    fn currency_codes_are_upper_cased_and_checked() {
        assert_eq!(CurrencyCode::try_from("eur").unwrap().as_str(), "EUR");
        assert_eq!(CurrencyCode::try_from(" USD ").unwrap().to_string(), "USD");
        assert_eq!(
            CurrencyCode::try_from("JPY").unwrap().minor_units(),
            Some(0)
        );
        for bad in ["EURO", "", "ZZZ", "€"] {
            let err = CurrencyCode::try_from(bad).unwrap_err();
            assert_eq!(err.field(), "currency code");
            assert!(err.to_string().contains("ISO 4217"), "{err}");
        }
    }

    #[test]
    fn money_serializes_its_amount_as_a_number() {
        let money = Money::new(
            Decimal::from_str("1234.56").unwrap(),
            CurrencyCode::try_from("USD").unwrap(),
        );
        let json = serde_json::to_value(money).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "amount": 1234.56, "currency": "USD" })
        );
        assert_eq!(serde_json::from_value::<Money>(json).unwrap(), money);
        assert_eq!(money.to_string(), "1234.56 USD");
    }

    #[test]
    fn deal_values_must_be_greater_than_zero() {
        assert_eq!(
            DealValue::try_from("10000").unwrap().amount(),
            Decimal::from(10000)
        );
        assert!(DealValue::try_from(Decimal::ZERO).is_err());
        assert!(DealValue::try_from("-1").is_err());
        let err = DealValue::try_from("lots").unwrap_err();
        assert!(err.to_string().contains("greater than 0"), "{err}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::wire_text;

    proptest! {
        #[test]
        fn value_parsers_never_panic(text in wire_text()) {
            let _ = CountryCode::try_from(text.as_str());
            let _ = CountryCode::suggest(&text);
            let _ = CurrencyCode::try_from(text.as_str());
            let _ = DealValue::try_from(text.as_str());
            let _ = crate::serde_helpers::parse_decimal(&text);
        }

        #[test]
        fn decimal_like_text_never_panics(text in "[+\\-]?[0-9]{0,40}(\\.[0-9]{0,40})?([eE][+\\-]?[0-9]{0,25})?") {
            let _ = crate::serde_helpers::parse_decimal(&text);
            let _ = DealValue::try_from(text.as_str());
        }

        #[test]
        fn codes_that_parse_read_back(country in "[A-Za-z]{2}", currency in "[A-Za-z]{3}") {
            if let Ok(code) = CountryCode::try_from(country.as_str()) {
                prop_assert_eq!(code.as_str(), country.to_ascii_uppercase());
                prop_assert_eq!(CountryCode::try_from(code.to_string().as_str()).unwrap(), code);
                prop_assert_eq!(CountryCode::suggest(&country), Some(code));
            }
            if let Ok(code) = CurrencyCode::try_from(currency.as_str()) {
                prop_assert_eq!(code.as_str(), currency.to_ascii_uppercase());
                prop_assert_eq!(CurrencyCode::try_from(code.to_string().as_str()).unwrap(), code);
            }
        }

        #[test]
        fn money_reads_back_from_json(
            units in -1_000_000_000_000_i64..1_000_000_000_000,
            scale in 0_u32..=2,
            currency in prop::sample::select(vec!["USD", "EUR", "JPY", "NOK", "BHD"]),
        ) {
            let money = Money::new(Decimal::new(units, scale), CurrencyCode::try_from(currency).unwrap());
            let json = serde_json::to_value(money).unwrap();
            prop_assert_eq!(serde_json::from_value::<Money>(json).unwrap(), money);
            if let Ok(value) = DealValue::try_from(money.amount) {
                prop_assert_eq!(DealValue::try_from(value.to_string().as_str()).unwrap(), value);
            }
        }

        #[test]
        fn money_from_any_json_never_panics(value in crate::proptest_support::json_value()) {
            let _ = serde_json::from_value::<Money>(value.clone());
            let _ = serde_json::from_value::<Money>(serde_json::json!({"amount": value, "currency": "USD"}));
            let _ = serde_json::from_value::<DealValue>(value);
        }
    }
}
