//! Tolerant parsers for what the CRMs send to cosell-sync and what their APIs answer.
//!
//! - [`dataverse`]: the webhook body (`RemoteExecutionContext` JSON), the webhook headers and
//!   the Web API error body.
//! - [`salesforce`]: the Outbound Message SOAP envelope (hardened against DTDs and entity
//!   expansion), the SOAP acknowledgement / fault the listener answers with, and the REST
//!   error and save-result bodies.
//!
//! Everything here is pure (no I/O). Real traffic deviates from the documented samples, so
//! readers ignore unknown members, accept nulls and missing optional parts, and report what
//! they could not make sense of instead of guessing.

pub mod dataverse;
pub mod salesforce;

/// How many characters of an unparseable body are kept as an error message.
pub(crate) const RAW_TEXT_LIMIT: usize = 512;

/// `text` trimmed and cut to at most `max_chars` characters (on a char boundary), with `…`
/// appended when something was cut.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `text` without a leading UTF-8 byte-order mark (some .NET serializers emit one).
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Finds the first JSON member `"key": "<string>"` in text that need not be valid JSON, and
/// returns the decoded string value. The key is matched ASCII-case-insensitively and must be
/// followed (after optional whitespace) by `:` and a string literal; anything else is skipped.
///
/// Used as the fallback when an error body is not valid JSON (the Dataverse documentation's
/// own samples miss commas), so it never fails: no match is `None`.
pub(crate) fn scan_json_string_member(text: &str, key: &str) -> Option<String> {
    let needle = format!("\"{}\"", key.to_ascii_lowercase());
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle) {
        let after_key = from + pos + needle.len();
        from = after_key;
        let rest = text[after_key..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        if !rest.starts_with('"') {
            continue;
        }
        if let Some(literal) = json_string_literal(rest) {
            return Some(
                serde_json::from_str::<String>(literal)
                    .unwrap_or_else(|_| literal[1..literal.len() - 1].to_owned()),
            );
        }
    }
    None
}

/// The JSON string literal (quotes included) at the start of `text`, which starts with `"`.
fn json_string_literal(text: &str) -> Option<&str> {
    let mut escaped = false;
    for (index, ch) in text.char_indices().skip(1) {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(&text[..=index]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate_chars("  short  ", 10), "short");
        assert_eq!(truncate_chars("ééééé", 3), "ééé…");
    }

    #[test]
    fn the_scanner_finds_a_member_in_text_that_is_not_json() {
        let text = r#"{"error":{"code":"0x1" "Message" : "a \"quoted\" text\n" }"#;
        assert_eq!(
            scan_json_string_member(text, "message").as_deref(),
            Some("a \"quoted\" text\n")
        );
        assert_eq!(
            scan_json_string_member(text, "code").as_deref(),
            Some("0x1")
        );
    }

    #[test]
    fn the_scanner_skips_a_key_that_is_not_followed_by_a_string_value() {
        let text = r#"{"kind":"message", "message": 12, "x": {"message": "found"}}"#;
        assert_eq!(
            scan_json_string_member(text, "message").as_deref(),
            Some("found")
        );
        assert_eq!(
            scan_json_string_member("{\"message\": \"unterminated", "message"),
            None
        );
    }

    #[test]
    fn a_byte_order_mark_is_stripped() {
        assert_eq!(strip_bom("\u{feff}{}"), "{}");
        assert_eq!(strip_bom("{}"), "{}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use cosell_domain::proptest_support::wire_text;

    proptest! {
        #[test]
        fn the_lenient_readers_never_panic(text in wire_text(), max in 0_usize..64) {
            let _ = scan_json_string_member(&text, "message");
            let _ = scan_json_string_member(&text, "errorCode");
            let cut = truncate_chars(strip_bom(&text), max);
            prop_assert!(cut.chars().count() <= max + 1);
        }

        #[test]
        fn a_member_is_found_in_text_that_is_not_json(value in "\\PC{0,20}", noise in "[^\"]{0,20}") {
            let text = format!("{{{noise} \"Message\" : {} ,", serde_json::to_string(&value).unwrap());
            prop_assert_eq!(scan_json_string_member(&text, "message"), Some(value));
        }
    }
}
