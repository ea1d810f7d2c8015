//! Salesforce record ids: 15 case-sensitive characters (3-character key prefix naming the
//! object type, 2-character pod, 1 reserved, 9 base-62 digits) plus a 3-character
//! case-checksum suffix that makes the 18-character form case-insensitive.

/// Alphabet of the checksum suffix.
const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
/// Digits of the 9-character unique part.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Pod + reserved character the sandbox's ids carry (matches the org id's pod `5g`).
const POD: &str = "5g0";

/// Key prefixes.
pub const OPPORTUNITY_PREFIX: &str = "006";
pub const ACCOUNT_PREFIX: &str = "001";
pub const CONTACT_PREFIX: &str = "003";
pub const USER_PREFIX: &str = "005";
/// Workflow outbound message action (`ActionId`).
pub const ACTION_PREFIX: &str = "04k";
/// Outbound message notification (`Notification/Id`).
pub const NOTIFICATION_PREFIX: &str = "04l";

/// The 3-character suffix of a 15-character id: per block of five characters, the bit
/// mask of upper-case letters indexes `A…Z0…5`.
fn suffix(id15: &[u8]) -> [u8; 3] {
    let mut out = [b'A'; 3];
    for (block, chunk) in id15.chunks(5).take(3).enumerate() {
        let mask = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |mask, (i, _)| mask | (1 << i));
        out[block] = SUFFIX_ALPHABET[mask];
    }
    out
}

/// Appends the checksum suffix to a 15-character id.
pub fn with_checksum(id15: &str) -> String {
    let mut id = id15.to_owned();
    id.extend(suffix(id15.as_bytes()).iter().map(|&b| char::from(b)));
    id
}

/// The canonical 18-character form of a 15- or 18-character id, or `None` when `text`
/// is not id-shaped. An 18-character id whose first 15 characters lost their case is
/// repaired from the suffix (that is what the suffix is for), like Salesforce does.
pub fn normalize(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    match bytes.len() {
        15 => Some(with_checksum(text)),
        18 => {
            let mut restored = String::with_capacity(18);
            for block in 0..3 {
                let flag = bytes[15 + block].to_ascii_uppercase();
                let mask = SUFFIX_ALPHABET.iter().position(|&c| c == flag)?;
                for i in 0..5 {
                    let c = bytes[block * 5 + i];
                    let upper = mask & (1 << i) != 0;
                    match (c.is_ascii_alphabetic(), upper) {
                        (true, true) => restored.push(char::from(c.to_ascii_uppercase())),
                        (true, false) => restored.push(char::from(c.to_ascii_lowercase())),
                        (false, true) => return None,
                        (false, false) => restored.push(char::from(c)),
                    }
                }
            }
            Some(with_checksum(&restored))
        }
        _ => None,
    }
}

/// A new 18-character id with `prefix`, unique for `counter`.
pub fn generate(prefix: &str, counter: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut n = counter;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let unique: String = digits.iter().map(|&b| char::from(b)).collect();
    with_checksum(&format!("{prefix}{POD}{unique}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identities;

    #[test]
    fn the_documented_sample_gets_its_documented_suffix() {
        assert_eq!(with_checksum("001D000000IqhSL"), "001D000000IqhSLIAZ");
        assert_eq!(
            normalize("001D000000IqhSL").as_deref(),
            Some("001D000000IqhSLIAZ")
        );
        assert_eq!(
            normalize("001d000000iqhslIAZ").as_deref(),
            Some("001D000000IqhSLIAZ"),
            "a lower-cased 18-character id is repaired from its suffix"
        );
        assert_eq!(normalize("001D000000IqhSLIA"), None);
        assert_eq!(normalize("001D000000IqhS-IAZ"), None);
        assert_eq!(normalize("0010000000000001AZ"), None, "digit flagged upper");
    }

    #[test]
    fn built_in_identities_are_valid_18_character_ids() {
        for id in [
            identities::SALESFORCE_ORG_ID,
            identities::SALESFORCE_INTEGRATION_USER_ID,
            identities::SALESFORCE_SELLER_USER_ID,
        ] {
            assert_eq!(normalize(id).as_deref(), Some(id), "{id}");
        }
    }

    #[test]
    fn generated_ids_are_valid_distinct_and_prefixed() {
        let a = generate(OPPORTUNITY_PREFIX, 62u64.pow(7) + 1);
        let b = generate(OPPORTUNITY_PREFIX, 62u64.pow(7) + 2);
        assert_ne!(a, b);
        assert!(a.starts_with("0065g0"));
        assert_eq!(a.len(), 18);
        assert_eq!(normalize(&a), Some(a.clone()));
        assert_eq!(normalize(&a.to_ascii_lowercase()), Some(a));
    }
}
