//! Identifier newtypes. Each is built only through `TryFrom<&str>` / `TryFrom<String>` /
//! `FromStr` (or from an already valid `Uuid`), serializes as a string and deserializes through
//! the same checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ParseError;

const GUID_EXPECTED: &str = "a GUID such as 4111fffc-f9ee-4d53-bba6-569135228642";

fn parse_guid(text: &str, field: &'static str) -> Result<Uuid, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::empty(field, GUID_EXPECTED));
    }
    // `Uuid::parse_str` accepts hyphenated, simple, braced (`{…}`) and `urn:uuid:` forms in any
    // case; Display always writes lowercase hyphenated.
    Uuid::parse_str(t).map_err(|_| ParseError::invalid(field, text, GUID_EXPECTED))
}

macro_rules! guid_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        ///
        /// Accepts any case, braces and the `urn:uuid:` prefix; always written lowercase and
        /// hyphenated.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Uuid);

        impl $name {
            /// The GUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;
            fn try_from(text: &str) -> Result<Self, ParseError> {
                parse_guid(text, $field).map(Self)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(text: String) -> Result<Self, ParseError> {
                Self::try_from(text.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(text: &str) -> Result<Self, ParseError> {
                Self::try_from(text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}

guid_id!(
    /// The ID of a Partner Center referral (`id`).
    ReferralId,
    "referral id"
);
guid_id!(
    /// The ID of a Partner Center engagement (`engagementId`), shared by related referrals.
    EngagementId,
    "engagement id"
);
guid_id!(
    /// The primary key of a Dataverse row (`opportunityid`, `accountid`, …).
    DataverseId,
    "Dataverse record id"
);

const SOLUTION_EXPECTED: &str = "a solution ID such as SOL-34104-EBB or Dynamics365forFieldService \
                                 (one word, at most 100 characters, no commas or semicolons)";

/// A Partner Center solution ID: a co-sell solution (`SOL-34104-EBB`) or a solution category
/// (`Dynamics365forFieldService`).
///
/// Non-empty after trimming, at most 100 characters, no whitespace. Commas and semicolons are
/// also rejected: CRMs keep several IDs in one text column separated by them, and an ID that
/// contained one could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SolutionId(String);

impl SolutionId {
    /// The longest accepted ID.
    pub const MAX_LEN: usize = 100;

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for SolutionId {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ParseError::empty("solution id", SOLUTION_EXPECTED));
        }
        if t.chars().count() > Self::MAX_LEN
            || t.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
        {
            return Err(ParseError::invalid("solution id", text, SOLUTION_EXPECTED));
        }
        Ok(Self(t.to_owned()))
    }
}

impl TryFrom<String> for SolutionId {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Self::try_from(text.as_str())
    }
}

impl FromStr for SolutionId {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for SolutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SolutionId> for String {
    fn from(id: SolutionId) -> String {
        id.0
    }
}

const SALESFORCE_EXPECTED: &str = "a Salesforce ID of 15 or 18 letters and digits such as \
                                   001D000000IqhSLIAZ";

/// The alphabet of the 18-character checksum suffix.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// A Salesforce record ID, always in its 18-character case-insensitive form.
///
/// A 15-character (case-sensitive) ID gets the standard checksum suffix: for each block of five
/// characters, a 5-bit mask of which are upper-case letters indexes `A…Z0…5`.
/// `001D000000IqhSL` becomes `001D000000IqhSLIAZ`.
///
/// An 18-character ID whose first 15 characters lost their case (a system that lower-cased it)
/// is repaired from the suffix, which is what the suffix exists for; an 18-character ID whose
/// suffix contradicts its characters is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SalesforceId(String);

impl SalesforceId {
    /// The 18-character ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 15-character, case-sensitive form.
    pub fn as_15(&self) -> &str {
        &self.0[..15]
    }

    /// The three-character key prefix naming the object type (`006` = Opportunity).
    pub fn key_prefix(&self) -> &str {
        &self.0[..3]
    }
}

fn checksum_suffix(id15: &[u8]) -> [u8; 3] {
    let mut suffix = [0u8; 3];
    for (block, chunk) in id15.chunks(5).enumerate() {
        let mask = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |mask, (i, _)| mask | (1 << i));
        suffix[block] = SUFFIX_ALPHABET[mask];
    }
    suffix
}

/// Restore the case of the first 15 characters from the suffix; `None` if the suffix asks for
/// an upper-case digit or holds a character outside the alphabet.
fn restore_case(id: &[u8]) -> Option<Vec<u8>> {
    let mut restored = Vec::with_capacity(18);
    for block in 0..3 {
        let suffix = id[15 + block].to_ascii_uppercase();
        let mask = SUFFIX_ALPHABET.iter().position(|&c| c == suffix)?;
        for i in 0..5 {
            let c = id[block * 5 + i];
            let upper = mask & (1 << i) != 0;
            match (c.is_ascii_alphabetic(), upper) {
                (true, true) => restored.push(c.to_ascii_uppercase()),
                (true, false) => restored.push(c.to_ascii_lowercase()),
                (false, true) => return None,
                (false, false) => restored.push(c),
            }
        }
    }
    restored.extend(id[15..].iter().map(u8::to_ascii_uppercase));
    Some(restored)
}

impl TryFrom<&str> for SalesforceId {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ParseError::empty("Salesforce id", SALESFORCE_EXPECTED));
        }
        let invalid = || ParseError::invalid("Salesforce id", text, SALESFORCE_EXPECTED);
        let bytes = t.as_bytes();
        if !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(invalid());
        }
        let full = match bytes.len() {
            15 => {
                let mut full = bytes.to_vec();
                full.extend_from_slice(&checksum_suffix(bytes));
                full
            }
            18 => {
                let suffix_upper: Vec<u8> =
                    bytes[15..].iter().map(u8::to_ascii_uppercase).collect();
                if checksum_suffix(&bytes[..15])[..] == suffix_upper[..] {
                    let mut full = bytes[..15].to_vec();
                    full.extend_from_slice(&suffix_upper);
                    full
                } else {
                    let restored = restore_case(bytes).ok_or_else(invalid)?;
                    if !restored[..15].eq_ignore_ascii_case(&bytes[..15]) {
                        return Err(invalid());
                    }
                    restored
                }
            }
            _ => return Err(invalid()),
        };
        String::from_utf8(full).map(Self).map_err(|_| invalid())
    }
}

impl TryFrom<String> for SalesforceId {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Self::try_from(text.as_str())
    }
}

impl FromStr for SalesforceId {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for SalesforceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SalesforceId> for String {
    fn from(id: SalesforceId) -> String {
        id.0
    }
}

/// Which CRM a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmKind {
    /// Dynamics 365 / Dataverse.
    Dataverse,
    /// Salesforce.
    Salesforce,
}

impl CrmKind {
    /// Whether a closed (won or lost) opportunity takes no update: true for Dataverse, which
    /// keeps a closed row read-only until it is reopened (docs/dataverse.md#closing-an-opportunity);
    /// Salesforce edits closed opportunities like any other.
    pub fn closed_is_read_only(self) -> bool {
        matches!(self, Self::Dataverse)
    }

    /// `"dataverse"` or `"salesforce"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }
}

impl fmt::Display for CrmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const CRM_RECORD_EXPECTED: &str = "a CRM record id written as dataverse:<GUID> or \
                                   salesforce:<15 or 18 character id>";

/// A CRM record, in either CRM.
///
/// Written as `dataverse:<guid>` or `salesforce:<18-char id>` (its `Display`, `FromStr` and serde
/// form), which makes it usable as a storage key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CrmRecordId {
    /// A Dataverse row.
    Dataverse(DataverseId),
    /// A Salesforce record.
    Salesforce(SalesforceId),
}

impl CrmRecordId {
    /// The CRM the record lives in.
    pub fn kind(&self) -> CrmKind {
        match self {
            Self::Dataverse(_) => CrmKind::Dataverse,
            Self::Salesforce(_) => CrmKind::Salesforce,
        }
    }

    /// The CRM's own id, without the `dataverse:` / `salesforce:` prefix.
    pub fn native(&self) -> String {
        match self {
            Self::Dataverse(id) => id.to_string(),
            Self::Salesforce(id) => id.to_string(),
        }
    }
}

impl From<DataverseId> for CrmRecordId {
    fn from(id: DataverseId) -> Self {
        Self::Dataverse(id)
    }
}

impl From<SalesforceId> for CrmRecordId {
    fn from(id: SalesforceId) -> Self {
        Self::Salesforce(id)
    }
}

impl TryFrom<&str> for CrmRecordId {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ParseError::empty("CRM record id", CRM_RECORD_EXPECTED));
        }
        let (kind, id) = t
            .split_once(':')
            .ok_or_else(|| ParseError::invalid("CRM record id", text, CRM_RECORD_EXPECTED))?;
        if kind.eq_ignore_ascii_case("dataverse") {
            DataverseId::try_from(id).map(Self::Dataverse)
        } else if kind.eq_ignore_ascii_case("salesforce") {
            SalesforceId::try_from(id).map(Self::Salesforce)
        } else {
            Err(ParseError::invalid(
                "CRM record id",
                text,
                CRM_RECORD_EXPECTED,
            ))
        }
    }
}

impl TryFrom<String> for CrmRecordId {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        Self::try_from(text.as_str())
    }
}

impl FromStr for CrmRecordId {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for CrmRecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dataverse(id) => write!(f, "dataverse:{id}"),
            Self::Salesforce(id) => write!(f, "salesforce:{id}"),
        }
    }
}

impl From<CrmRecordId> for String {
    fn from(id: CrmRecordId) -> String {
        id.to_string()
    }
}

const ETAG_EXPECTED: &str =
    "a non-empty entity tag such as \"\\\"2500ec5a-0000-0000-0000-5bf4967d0000\\\"\"";

/// An opaque entity tag (Partner Center `eTag`, Dataverse `@odata.etag`).
///
/// Kept exactly as given, including the quotes that are part of the value
/// (`"\"2500ec5a-0000-0000-0000-5bf4967d0000\""`) and a weak `W/` prefix. Only an empty or
/// whitespace-only value is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ETag(String);

impl ETag {
    /// The tag as given, for an `If-Match` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ETag {
    type Error = ParseError;
    fn try_from(text: &str) -> Result<Self, ParseError> {
        if text.trim().is_empty() {
            return Err(ParseError::empty("ETag", ETAG_EXPECTED));
        }
        Ok(Self(text.to_owned()))
    }
}

impl TryFrom<String> for ETag {
    type Error = ParseError;
    fn try_from(text: String) -> Result<Self, ParseError> {
        if text.trim().is_empty() {
            return Err(ParseError::empty("ETag", ETAG_EXPECTED));
        }
        Ok(Self(text))
    }
}

impl FromStr for ETag {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::try_from(text)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ETag> for String {
    fn from(tag: ETag) -> String {
        tag.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referral_ids_accept_any_case_and_braces_and_normalise_to_lowercase_hyphenated() {
        let expected = "4111fffc-f9ee-4d53-bba6-569135228642";
        for input in [
            "4111fffc-f9ee-4d53-bba6-569135228642",
            "4111FFFC-F9EE-4D53-BBA6-569135228642",
            "{4111FFFC-F9EE-4D53-BBA6-569135228642}",
            " 4111fffcf9ee4d53bba6569135228642 ",
            "urn:uuid:4111fffc-f9ee-4d53-bba6-569135228642",
        ] {
            let id = ReferralId::try_from(input).unwrap();
            assert_eq!(id.to_string(), expected, "{input}");
        }
    }

    #[test]
    fn guid_ids_reject_non_guids_naming_the_field_and_format() {
        let err = ReferralId::try_from("{{ReferralID}}").unwrap_err();
        assert_eq!(err.field(), "referral id");
        assert!(err.to_string().contains("expected a GUID"), "{err}");
        let err = EngagementId::from_str("  ").unwrap_err();
        assert!(matches!(
            err,
            ParseError::Empty {
                field: "engagement id",
                ..
            }
        ));
        assert!(DataverseId::try_from(String::from("6d81597f")).is_err());
    }

    #[test]
    fn guid_ids_serialize_as_strings_and_deserialize_through_the_checks() {
        let id: DataverseId =
            serde_json::from_str("\"6D81597F-0F9F-E711-8122-000D3AA2331C\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"6d81597f-0f9f-e711-8122-000d3aa2331c\""
        );
        assert!(serde_json::from_str::<DataverseId>("\"nope\"").is_err());
    }

    #[test]
    fn solution_ids_are_trimmed_single_words_of_at_most_100_characters() {
        assert_eq!(
            SolutionId::try_from(" SOL-34104-EBB ").unwrap().as_str(),
            "SOL-34104-EBB"
        );
        assert!(SolutionId::try_from("Dynamics365forFieldService").is_ok());
        assert!(SolutionId::try_from("x".repeat(100)).is_ok());
        for bad in [
            "",
            "   ",
            "SOL 1",
            "SOL-1,SOL-2",
            "SOL-1;",
            &"x".repeat(101),
        ] {
            let err = SolutionId::try_from(bad).unwrap_err();
            assert_eq!(err.field(), "solution id", "{bad}");
        }
    }

    #[test]
    fn salesforce_ids_of_15_characters_get_the_checksum_suffix() {
        let id = SalesforceId::try_from("001D000000IqhSL").unwrap();
        assert_eq!(id.as_str(), "001D000000IqhSLIAZ");
        assert_eq!(id.as_15(), "001D000000IqhSL");
        assert_eq!(id.key_prefix(), "001");
        let opp = SalesforceId::try_from("006000000000001").unwrap();
        assert_eq!(opp.as_str(), "006000000000001AAA");
    }

    #[test]
    fn salesforce_ids_of_18_characters_are_checked_and_repaired_from_the_suffix() {
        assert_eq!(
            SalesforceId::try_from("001D000000IqhSLIAZ")
                .unwrap()
                .as_str(),
            "001D000000IqhSLIAZ"
        );
        // A lower-cased 18-character id regains its case from the suffix.
        assert_eq!(
            SalesforceId::try_from("001d000000iqhsliaz")
                .unwrap()
                .as_str(),
            "001D000000IqhSLIAZ"
        );
        // Suffix contradicting the characters (it asks for an upper-case digit).
        assert!(SalesforceId::try_from("001D000000IqhSL555").is_err());
    }

    #[test]
    fn salesforce_ids_reject_other_lengths_and_symbols() {
        for bad in [
            "",
            "001D000000IqhS",
            "001D000000IqhSLI",
            "001D000000Iqh-L",
            "001D000000IqhSLIAZX",
        ] {
            let err = SalesforceId::try_from(bad).unwrap_err();
            assert_eq!(err.field(), "Salesforce id", "{bad}");
        }
    }

    #[test]
    fn crm_record_ids_round_trip_through_their_prefixed_text_form() {
        let dv = CrmRecordId::try_from("dataverse:{6D81597F-0F9F-E711-8122-000D3AA2331C}").unwrap();
        assert_eq!(dv.kind(), CrmKind::Dataverse);
        assert_eq!(
            dv.to_string(),
            "dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c"
        );
        let sf: CrmRecordId = "salesforce:001D000000IqhSL".parse().unwrap();
        assert_eq!(sf.to_string(), "salesforce:001D000000IqhSLIAZ");
        assert_eq!(sf.native(), "001D000000IqhSLIAZ");
        let json = serde_json::to_string(&sf).unwrap();
        assert_eq!(serde_json::from_str::<CrmRecordId>(&json).unwrap(), sf);
        assert!(CrmRecordId::try_from("hubspot:1").is_err());
        assert!(CrmRecordId::try_from("6d81597f-0f9f-e711-8122-000d3aa2331c").is_err());
    }

    #[test]
    fn etags_are_opaque_and_keep_their_quotes() {
        let tag = ETag::try_from("\"00006d10-0000-0000-0000-5c70aa630000\"").unwrap();
        assert_eq!(tag.as_str(), "\"00006d10-0000-0000-0000-5c70aa630000\"");
        assert_eq!(
            ETag::try_from("W/\"536537\"").unwrap().to_string(),
            "W/\"536537\""
        );
        assert!(ETag::try_from("").is_err());
        assert!(ETag::try_from(String::from("  ")).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::wire_text;

    fn parse_all(text: &str) {
        let _ = ReferralId::try_from(text);
        let _ = EngagementId::try_from(text);
        let _ = DataverseId::try_from(text);
        let _ = SolutionId::try_from(text);
        let _ = SalesforceId::try_from(text);
        let _ = CrmRecordId::try_from(text);
        let _ = ETag::try_from(text);
        let _ = serde_json::from_value::<CrmRecordId>(serde_json::Value::from(text));
    }

    proptest! {
        #[test]
        fn id_parsers_never_panic(text in wire_text()) {
            parse_all(&text);
        }

        #[test]
        fn id_like_text_never_panics(
            text in "(dataverse|salesforce|SalesForce|urn:uuid)?:?[0-9A-Za-z{}\\-\u{e9}\u{a0}\u{130}]{0,40}",
        ) {
            parse_all(&text);
        }

        #[test]
        fn guid_ids_read_back_in_any_accepted_form(
            bytes in any::<[u8; 16]>(),
            upper in any::<bool>(),
            braced in any::<bool>(),
        ) {
            let id = ReferralId::from(Uuid::from_bytes(bytes));
            let text = id.to_string();
            let mut written = if upper { text.to_ascii_uppercase() } else { text.clone() };
            if braced {
                written = format!("{{{written}}}");
            }
            prop_assert_eq!(ReferralId::try_from(written.as_str()).unwrap(), id);
            prop_assert_eq!(ReferralId::try_from(text.as_str()).unwrap().to_string(), text);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<ReferralId>(&json).unwrap(), id);
            let record = CrmRecordId::from(DataverseId::from(Uuid::from_bytes(bytes)));
            prop_assert_eq!(CrmRecordId::try_from(record.to_string().as_str()).unwrap(), record);
        }

        #[test]
        fn salesforce_ids_read_back_and_repair_a_lost_case(id15 in "[0-9A-Za-z]{15}") {
            let id = SalesforceId::try_from(id15.as_str()).unwrap();
            prop_assert_eq!(id.as_str().len(), 18);
            prop_assert_eq!(id.as_15(), id15.as_str());
            prop_assert_eq!(SalesforceId::try_from(id.as_str()).unwrap(), id.clone());
            let lowered = id.as_str().to_ascii_lowercase();
            prop_assert_eq!(SalesforceId::try_from(lowered.as_str()).unwrap(), id.clone());
            let record = CrmRecordId::from(id);
            prop_assert_eq!(CrmRecordId::try_from(record.to_string().as_str()).unwrap(), record);
        }

        #[test]
        fn solution_ids_and_etags_read_back(id in "[A-Za-z0-9_.\\-]{1,100}", tag in "\\PC*\\S\\PC*") {
            let solution = SolutionId::try_from(id.as_str()).unwrap();
            prop_assert_eq!(solution.to_string(), id);
            let etag = ETag::try_from(tag.as_str()).unwrap();
            prop_assert_eq!(etag.as_str(), tag.as_str());
        }
    }
}
