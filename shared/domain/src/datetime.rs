//! Lenient date and time reading for the wire models.
//!
//! Partner Center documents "UTC date-time" strings, but samples and real traffic carry RFC 3339
//! with 0 to 7 (or more) fractional digits, with or without an offset, and date-only values.
//! Dataverse webhooks carry WCF dates (`/Date(1506384247000)/`, optionally `-0700`), and
//! Salesforce writes offsets without a colon (`+0000`). [`parse_datetime`] accepts all of them.
//!
//! [`WireDateTime`] keeps the text exactly as received, so a referral read and written back is
//! unchanged, and exposes the parsed instant and calendar date.

use std::fmt;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ParseError;

const EXPECTED: &str = "an RFC 3339 date-time such as 2019-02-23T02:05:23.2931817Z, \
                        or a date such as 2024-11-14";

/// A date-time as found on the wire: the original text plus, when it could be read, the instant
/// and the calendar date as written.
///
/// Unreadable text is kept (so nothing is lost) with no parsed value; the tolerant reader never
/// fails a whole referral because one date is odd. Serializes as the original text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WireDateTime {
    raw: String,
    parsed: Option<(DateTime<Utc>, NaiveDate)>,
}

impl WireDateTime {
    /// Read wire text leniently. Never fails; see [`WireDateTime::instant`].
    ///
    /// .NET's `DateTime.MinValue` and `MaxValue` (`0001-01-01T00:00:00`,
    /// `9999-12-31T23:59:59.9999999`), which .NET services write for a date never set, read as
    /// no date: kept as text, with no instant. No CRM would take them as a date either
    /// (Dataverse's dates start in 1753, Salesforce's in 1700).
    pub fn parse(raw: &str) -> Self {
        Self {
            raw: raw.to_owned(),
            parsed: parse_datetime(raw)
                .ok()
                .filter(|(_, date)| !is_unset_sentinel(*date)),
        }
    }

    /// A UTC instant, written as RFC 3339 with `Z` and only the fractional digits it needs.
    pub fn from_instant(instant: DateTime<Utc>) -> Self {
        Self {
            raw: instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            parsed: Some((instant, instant.date_naive())),
        }
    }

    /// A calendar date, written as midnight UTC (`2024-11-14T00:00:00Z`), the form the
    /// Partner Center samples use for `closingDateTime`.
    pub fn from_date(date: NaiveDate) -> Self {
        Self::from_instant(date.and_time(chrono::NaiveTime::MIN).and_utc())
    }

    /// The text exactly as received (or as produced by the constructors).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The instant in UTC, when the text could be read. Text without an offset is UTC.
    pub fn instant(&self) -> Option<DateTime<Utc>> {
        self.parsed.map(|(instant, _)| instant)
    }

    /// The calendar date as written (not shifted to UTC), when the text could be read.
    ///
    /// `2024-11-14T00:00:00+02:00` is the 14th even though it is the 13th in UTC: for a
    /// closing date the day the user picked is what matters.
    pub fn date(&self) -> Option<NaiveDate> {
        self.parsed.map(|(_, date)| date)
    }

    /// Whether the text could be read as a date that is set.
    pub fn is_valid(&self) -> bool {
        self.parsed.is_some()
    }
}

impl fmt::Debug for WireDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl fmt::Display for WireDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl From<DateTime<Utc>> for WireDateTime {
    fn from(instant: DateTime<Utc>) -> Self {
        Self::from_instant(instant)
    }
}

impl Serialize for WireDateTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for WireDateTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(Self::parse(&raw))
    }
}

/// Parse a date-time leniently, returning the UTC instant and the calendar date as written.
///
/// Accepted forms (after trimming):
/// - RFC 3339 with any number of fractional digits: `2019-02-23T02:05:23.2931817Z`,
///   `2018-02-17T00:05:39.5485487+00:00`; `t`/`z` in lower case and a space instead of `T`;
/// - an offset without colon: `2013-05-20T20:49:32.000+0000` (Salesforce);
/// - no offset at all: `2017-12-08T21:39:48.2386997` (taken as UTC);
/// - date only: `2024-11-14` (midnight UTC);
/// - WCF JSON dates: `/Date(1506409448000-0700)/` (milliseconds since the epoch; the optional
///   offset only moves the calendar date).
pub fn parse_datetime(text: &str) -> Result<(DateTime<Utc>, NaiveDate), ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::empty("date-time", EXPECTED));
    }
    if let Some(wcf) = parse_wcf(t) {
        return Ok(wcf);
    }
    // The documented form first, as it is: no other form below reads an RFC 3339 text, and
    // the normalising below would read it as the same instant.
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(with_offset(dt));
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let instant = date.and_time(chrono::NaiveTime::MIN).and_utc();
        return Ok((instant, date));
    }
    // Normalise the separator and the case of `t`/`z`.
    let mut normal = t.to_owned();
    // `get` answers `None` unless bytes 10..11 are one whole character.
    if matches!(normal.get(10..11), Some(" " | "t")) {
        normal.replace_range(10..11, "T");
    }
    if normal.ends_with('z') {
        normal.pop();
        normal.push('Z');
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(&normal) {
        return Ok(with_offset(dt));
    }
    // `%z` does not read `Z`, so spell it as an offset for the fallback formats.
    let with_numeric_offset = match normal.strip_suffix('Z') {
        Some(rest) => format!("{rest}+0000"),
        None => normal.clone(),
    };
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"] {
        if let Ok(dt) = DateTime::parse_from_str(&with_numeric_offset, format) {
            return Ok(with_offset(dt));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&normal, format) {
            return Ok((naive.and_utc(), naive.date()));
        }
    }
    Err(ParseError::invalid("date-time", text, EXPECTED))
}

/// Parse a calendar date leniently: any form [`parse_datetime`] accepts, reduced to the date
/// as written.
pub fn parse_date(text: &str) -> Result<NaiveDate, ParseError> {
    parse_datetime(text).map(|(_, date)| date)
}

/// A date in year 1 or in year 9999: .NET's `MinValue` / `MaxValue`, "never set".
fn is_unset_sentinel(date: NaiveDate) -> bool {
    !(2..9999).contains(&date.year())
}

fn with_offset(dt: DateTime<FixedOffset>) -> (DateTime<Utc>, NaiveDate) {
    (dt.with_timezone(&Utc), dt.date_naive())
}

/// `/Date(1506409448000)/` or `/Date(1506409448000-0700)/` (also with the JSON-escaped `\/`).
fn parse_wcf(text: &str) -> Option<(DateTime<Utc>, NaiveDate)> {
    let inner = text
        .trim_start_matches('\\')
        .strip_prefix("/Date(")?
        .trim_end_matches('/')
        .trim_end_matches('\\')
        .strip_suffix(')')?;
    // Split the milliseconds (which may start with '-') from an optional ±hhmm offset.
    let split = inner
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i);
    let (millis, offset) = match split.and_then(|i| inner.split_at_checked(i)) {
        Some((millis, offset)) => (millis, Some(offset)),
        None => (inner, None),
    };
    let instant = Utc.timestamp_millis_opt(millis.parse().ok()?).single()?;
    let date = match offset {
        Some(offset) => {
            let offset = wcf_offset(offset)?;
            instant.with_timezone(&offset).date_naive()
        }
        None => instant.date_naive(),
    };
    Some((instant, date))
}

/// A WCF offset, `+hhmm` or `-hhmm` (four ASCII digits); anything else is `None`. Read by
/// characters, so a multi-byte character in it is refused rather than sliced through.
fn wcf_offset(text: &str) -> Option<FixedOffset> {
    let mut chars = text.chars();
    let sign = match chars.next()? {
        '+' => 1,
        '-' => -1,
        _ => return None,
    };
    let mut digits = [0_i32; 4];
    for digit in &mut digits {
        *digit = i32::try_from(chars.next()?.to_digit(10)?).ok()?;
    }
    if chars.next().is_some() {
        return None;
    }
    let [h1, h2, m1, m2] = digits;
    FixedOffset::east_opt(sign * ((h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn reads_seven_fractional_digits_with_z_with_offset_and_without_offset() {
        let expected = utc("2019-02-23T02:05:23.2931817Z");
        for text in [
            "2019-02-23T02:05:23.2931817Z",
            "2019-02-23T02:05:23.2931817+00:00",
            "2019-02-23T02:05:23.2931817",
            "2019-02-23t02:05:23.2931817z",
            "2019-02-23 02:05:23.2931817Z",
        ] {
            let (instant, day) = parse_datetime(text).unwrap();
            assert_eq!(instant, expected, "{text}");
            assert_eq!(day, date("2019-02-23"), "{text}");
        }
    }

    #[test]
    fn reads_zero_to_nine_plus_fractional_digits() {
        for text in [
            "2024-11-14T10:00:00Z",
            "2024-11-14T10:00:00.1Z",
            "2024-11-14T10:00:00.123456789Z",
            "2024-11-14T10:00:00.1234567891Z",
            "2024-11-14T10:00Z",
        ] {
            assert!(parse_datetime(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn reads_date_only_salesforce_and_wcf_forms() {
        let (instant, day) = parse_datetime("2024-11-14").unwrap();
        assert_eq!(instant, utc("2024-11-14T00:00:00Z"));
        assert_eq!(day, date("2024-11-14"));

        let (instant, _) = parse_datetime("2013-05-20T20:49:32.000+0000").unwrap();
        assert_eq!(instant, utc("2013-05-20T20:49:32Z"));

        let (instant, day) = parse_datetime("/Date(1506384247000)/").unwrap();
        assert_eq!(instant, utc("2017-09-26T00:04:07Z"));
        assert_eq!(day, date("2017-09-26"));

        // The offset moves only the calendar date.
        let (instant, day) = parse_datetime("\\/Date(1506384247000-0700)\\/").unwrap();
        assert_eq!(instant, utc("2017-09-26T00:04:07Z"));
        assert_eq!(day, date("2017-09-25"));
    }

    #[test]
    fn multi_byte_characters_in_a_wcf_offset_are_refused_not_sliced() {
        for text in [
            "/Date(1506384247000+0\u{e9}0)/",
            "/Date(1506384247000-0\u{a0}0)/",
            "/Date(0+0\u{e9}0)/",
            "/Date(1506384247000-\u{e9}00)/",
            "/Date(1506384247000+00\u{e9})/",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}T\u{e9}",
        ] {
            assert!(parse_datetime(text).is_err(), "{text}");
            assert!(!WireDateTime::parse(text).is_valid(), "{text}");
        }
        // A well-formed offset still moves the calendar date.
        let (_, day) = parse_datetime("/Date(1506384247000+0130)/").unwrap();
        assert_eq!(day, date("2017-09-26"));
    }

    #[test]
    fn the_date_is_the_one_written_not_the_utc_one() {
        let (instant, day) = parse_datetime("2024-11-14T00:00:00+02:00").unwrap();
        assert_eq!(instant.date_naive(), date("2024-11-13"));
        assert_eq!(day, date("2024-11-14"));
    }

    #[test]
    fn rejects_garbage_with_the_expected_format() {
        for text in ["", "tomorrow", "14/11/2024", "/Date(abc)/"] {
            let err = parse_datetime(text).unwrap_err();
            assert!(err.to_string().contains("RFC 3339"), "{err}");
        }
    }

    #[test]
    fn wire_date_time_keeps_the_original_text_and_survives_garbage() {
        let odd = WireDateTime::parse("next week");
        assert!(!odd.is_valid());
        assert_eq!(odd.as_str(), "next week");
        assert_eq!(serde_json::to_value(&odd).unwrap(), "next week");

        let exact = WireDateTime::parse("2019-02-23T02:05:23.2931817Z");
        assert_eq!(
            serde_json::to_value(&exact).unwrap(),
            "2019-02-23T02:05:23.2931817Z"
        );
    }

    #[test]
    fn dot_nets_min_and_max_values_are_no_date() {
        for text in [
            "0001-01-01T00:00:00",
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00.0000000Z",
            "0001-01-01T00:00:00+00:00",
            "0001-01-01",
            "9999-12-31T23:59:59.9999999",
            "9999-12-31T23:59:59.9999999Z",
        ] {
            let wire = WireDateTime::parse(text);
            assert_eq!((wire.date(), wire.instant()), (None, None), "{text}");
            assert_eq!(wire.as_str(), text, "kept as received");
        }
        for text in ["0002-01-01T00:00:00Z", "9998-12-31", "1753-01-01T00:00:00Z"] {
            assert!(WireDateTime::parse(text).date().is_some(), "{text}");
        }
    }

    #[test]
    fn a_date_is_written_as_midnight_utc() {
        let wire = WireDateTime::from_date(date("2018-11-14"));
        assert_eq!(wire.as_str(), "2018-11-14T00:00:00Z");
        assert_eq!(wire.date(), Some(date("2018-11-14")));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::proptest_support::wire_text;

    const VALID: &str = "2019-02-23T02:05:23.2931817+05:30";

    proptest! {
        #[test]
        fn parse_datetime_never_panics_and_wire_text_is_kept(text in wire_text()) {
            let _ = parse_datetime(&text);
            let _ = parse_date(&text);
            let wire = WireDateTime::parse(&text);
            prop_assert_eq!(wire.as_str(), text.as_str());
            prop_assert_eq!(
                wire.is_valid(),
                parse_datetime(&text).is_ok_and(|(_, day)| !is_unset_sentinel(day))
            );
        }

        #[test]
        fn every_spelling_of_an_instant_reads_as_that_instant_and_its_written_date(
            seconds in -62_000_000_000_i64..250_000_000_000,
            nanos in 0_u32..1_000_000_000,
            digits in 0_usize..=9,
            offset_minutes in -(23 * 60 + 59)..=(23_i32 * 60 + 59),
            separator in prop::sample::select(vec!['T', 't', ' ']),
            zulu in prop::sample::select(vec!["Z", "z", "+00:00", "+0000", "offset"]),
        ) {
            let kept = 10_u32.pow(9 - u32::try_from(digits).unwrap());
            let utc = DateTime::from_timestamp(seconds, nanos / kept * kept).unwrap();
            let (zone, suffix) = if zulu == "offset" {
                let zone = FixedOffset::east_opt(offset_minutes * 60).unwrap();
                let sign = if offset_minutes < 0 { '-' } else { '+' };
                let (h, m) = (offset_minutes.abs() / 60, offset_minutes.abs() % 60);
                (zone, format!("{sign}{h:02}:{m:02}"))
            } else {
                (FixedOffset::east_opt(0).unwrap(), zulu.to_owned())
            };
            let local = utc.with_timezone(&zone);
            let fraction = if digits == 0 {
                String::new()
            } else {
                format!(".{:09}", local.timestamp_subsec_nanos())[..=digits].to_owned()
            };
            let text = format!(
                "{}{separator}{}{fraction}{suffix}",
                local.format("%Y-%m-%d"),
                local.format("%H:%M:%S")
            );
            prop_assume!((0..=9999).contains(&chrono::Datelike::year(&local)));
            let (instant, date) = parse_datetime(&text).unwrap();
            prop_assert_eq!(instant, utc, "{}", text);
            prop_assert_eq!(date, local.date_naive(), "{}", text);
        }

        #[test]
        fn wcf_dates_with_any_offset_never_panic(
            millis in any::<i64>(),
            offset in "[+\\-]?\\PC{0,6}",
        ) {
            let _ = parse_datetime(&format!("/Date({millis}{offset})/"));
            let _ = parse_datetime(&format!("\\/Date({millis}{offset})\\/"));
        }

        #[test]
        fn a_valid_date_time_with_one_character_changed_never_panics(
            at in any::<prop::sample::Index>(),
            ch in any::<char>(),
            insert in any::<bool>(),
        ) {
            let mut chars: Vec<char> = VALID.chars().collect();
            let at = at.index(chars.len());
            if insert {
                chars.insert(at, ch);
            } else {
                chars[at] = ch;
            }
            let text: String = chars.into_iter().collect();
            let _ = parse_datetime(&text);
        }

        #[test]
        fn instants_written_as_wire_text_read_back(
            seconds in -62_135_596_800_i64..253_402_300_799,
            nanos in 0_u32..1_000_000_000,
        ) {
            let instant = DateTime::<Utc>::from_timestamp(seconds, nanos).unwrap();
            let wire = WireDateTime::from_instant(instant);
            prop_assert_eq!(wire.instant(), Some(instant));
            let (read, date) = parse_datetime(wire.as_str()).unwrap();
            prop_assert_eq!(read, instant);
            prop_assert_eq!(date, instant.date_naive());
        }

        #[test]
        fn wcf_dates_read_back_with_their_offset(
            millis in -8_000_000_000_000_i64..8_000_000_000_000,
            hours in 0_i32..24,
            minutes in 0_i32..60,
            negative in any::<bool>(),
        ) {
            let sign = if negative { '-' } else { '+' };
            let text = format!("/Date({millis}{sign}{hours:02}{minutes:02})/");
            let (instant, date) = parse_datetime(&text).unwrap();
            prop_assert_eq!(instant.timestamp_millis(), millis);
            let seconds = (hours * 3600 + minutes * 60) * if negative { -1 } else { 1 };
            let offset = FixedOffset::east_opt(seconds).unwrap();
            prop_assert_eq!(date, instant.with_timezone(&offset).date_naive());
        }
    }
}
