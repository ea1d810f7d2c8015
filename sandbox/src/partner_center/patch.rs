//! Referral PATCH bodies: RFC 6902 JSON Patch, of which "The API currently only supports the
//! `replace` and `add` operations". Operations are applied with the `json-patch` crate after
//! two lenient steps that a typed service model implies (the real behaviour is UNKNOWN):
//!
//! * path segments match member names case-insensitively (`/Details/DealValue` →
//!   `/details/dealValue`), new members are written in camelCase, and so are the members of
//!   added values;
//! * missing containers are created (`add /team/-` on a referral without `team`, `replace
//!   /details/closingDateTime` when the date was never set): a typed model always has these
//!   properties, merely null. Paths must still start with a documented Referral member.

use serde_json::{Map, Value, json};

/// A parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: Kind,
    /// Unescaped JSON Pointer segments.
    pub segments: Vec<String>,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Add,
    Replace,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Replace => "replace",
        }
    }
}

impl Op {
    /// The path as sent (re-escaped).
    pub fn path(&self) -> String {
        pointer(&self.segments)
    }
}

/// Top-level members of the Referral resource (docs/partner-center.md#referral-members, including
/// the live-page-only and swagger-only ones). A patch path must start with one of these (or with a
/// member the stored referral already has).
const REFERRAL_MEMBERS: &[&str] = &[
    "id",
    "engagementId",
    "organizationId",
    "organizationName",
    "businessProfileId",
    "name",
    "externalReferenceId",
    "createdDateTime",
    "updatedDateTime",
    "expirationDateTime",
    "acceptedDateTime",
    "status",
    "substatus",
    "statusReason",
    "type",
    "qualification",
    "referralSource",
    "callToAction",
    "direction",
    "customerProfile",
    "consent",
    "details",
    "customerMarketplaceIntent",
    "team",
    "inviteContext",
    "eTag",
    "target",
    "links",
    "partnerRole",
    "solutionArea",
    "solutionPlay",
    "salesStage",
    "campaignId",
    "favorite",
    "lastModifiedVia",
    "lastRunId",
];

/// Parses a PATCH body. Errors are messages for a `400`.
pub fn parse(body: &[u8]) -> Result<Vec<Op>, String> {
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| format!("The request body is not valid JSON: {e}."))?;
    let Value::Array(items) = document else {
        return Err(
            "The request body must be a JSON Patch document (RFC 6902): a JSON array \
                    of operations such as [{\"op\":\"replace\",\"path\":\"/details/dealValue\",\
                    \"value\":10000}]."
                .into(),
        );
    };
    if items.is_empty() {
        return Err("The JSON Patch document contains no operations.".into());
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_op(i, item))
        .collect()
}

fn parse_op(i: usize, item: Value) -> Result<Op, String> {
    let Value::Object(object) = &item else {
        return Err(format!("Operation {i} is not a JSON object."));
    };
    let op = object
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Operation {i} has no 'op' member."))?;
    let kind = match op.to_ascii_lowercase().as_str() {
        "replace" => Kind::Replace,
        "add" => Kind::Add,
        _ => {
            return Err(format!(
                "Operation {i} ('{op}') is not supported: the API currently only supports the \
                 replace and add operations."
            ));
        }
    };
    let path = object
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Operation {i} ('{op}') has no 'path' member."))?;
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "Operation {i} has an invalid path '{path}': a JSON Pointer (RFC 6901) to a \
             referral member, such as /details/dealValue, is required."
        ));
    }
    let Some(value) = object.get("value") else {
        return Err(format!("Operation {i} ('{op}') has no 'value' member."));
    };
    // Let the JSON Patch crate validate the operation (pointer syntax, member types).
    let mut canonical = object.clone();
    canonical.insert("op".into(), Value::String(kind.as_str().into()));
    serde_json::from_value::<json_patch::PatchOperation>(Value::Object(canonical))
        .map_err(|e| format!("Operation {i} is not a valid JSON Patch operation: {e}."))?;
    let segments = path[1..]
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    Ok(Op {
        kind,
        segments,
        value: value.clone(),
    })
}

/// Applies `ops` to `doc` (a referral object). Errors are messages for a `400`.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<(), String> {
    for (i, op) in ops.iter().enumerate() {
        let segments = resolve(doc, &op.segments);
        let first = &segments[0];
        let known = REFERRAL_MEMBERS.iter().any(|m| m == first)
            || doc.as_object().is_some_and(|o| o.contains_key(first));
        if !known {
            return Err(format!(
                "Operation {i}: the path '{}' does not name a member of the Referral resource.",
                op.path()
            ));
        }
        ensure_containers(doc, &segments);
        let kind = match op.kind {
            Kind::Replace if lookup(doc, &segments).is_none() => Kind::Add,
            kind => kind,
        };
        let operation = json!({
            "op": kind.as_str(),
            "path": pointer(&segments),
            "value": camel_case_keys(op.value.clone()),
        });
        let operation: json_patch::PatchOperation = serde_json::from_value(operation)
            .map_err(|e| format!("Operation {i} is not a valid JSON Patch operation: {e}."))?;
        json_patch::patch(doc, std::slice::from_ref(&operation)).map_err(|e| {
            format!(
                "Operation {i} ('{}' at '{}') could not be applied: {}.",
                op.kind.as_str(),
                op.path(),
                e.kind
            )
        })?;
    }
    Ok(())
}

/// Matches each segment to an existing member case-insensitively, else camelCases it.
fn resolve(doc: &Value, segments: &[String]) -> Vec<String> {
    let mut current = Some(doc);
    segments
        .iter()
        .map(|segment| {
            let resolved = match current {
                Some(Value::Object(map)) => map
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case(segment))
                    .cloned()
                    .unwrap_or_else(|| camel_key(segment)),
                Some(Value::Array(_)) => segment.clone(),
                _ => camel_key(segment),
            };
            current = current.and_then(|c| child(c, &resolved));
            resolved
        })
        .collect()
}

fn child<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn lookup<'a>(doc: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(doc, |current, segment| child(current, segment))
}

/// Creates missing (or null) parent objects / arrays of the target.
fn ensure_containers(doc: &mut Value, segments: &[String]) {
    let mut current = doc;
    for (depth, segment) in segments[..segments.len() - 1].iter().enumerate() {
        let next_is_index = {
            let next = &segments[depth + 1];
            next == "-" || next.parse::<usize>().is_ok()
        };
        let empty = || {
            if next_is_index {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            }
        };
        current = match current {
            Value::Object(map) => {
                let slot = map.entry(segment.clone()).or_insert_with(empty);
                if slot.is_null() {
                    *slot = empty();
                }
                slot
            }
            Value::Array(items) => match segment.parse::<usize>().ok() {
                Some(i) if i < items.len() => &mut items[i],
                _ => return,
            },
            _ => return,
        };
    }
}

fn pointer(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A member name in camelCase: `DealValue` → `dealValue`, `ExternalReferenceID` →
/// `externalReferenceId`, `ID` → `id`. Array indices, `-` and `@odata…` names stay.
pub fn camel_key(key: &str) -> String {
    if key == "-" || key.starts_with(['@', '$']) || key.chars().all(|c| c.is_ascii_digit()) {
        return key.to_owned();
    }
    if key.chars().all(|c| !c.is_ascii_lowercase()) {
        return key.to_ascii_lowercase();
    }
    let mut key = key.to_owned();
    if key.len() > 2 && key.ends_with("ID") {
        key.truncate(key.len() - 2);
        key.push_str("Id");
    }
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => key,
    }
}

/// Rewrites every member name in `value` with [`camel_key`].
pub fn camel_case_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (camel_key(&k), camel_case_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_cases_member_names() {
        for (pascal, camel) in [
            ("DealValue", "dealValue"),
            ("ExternalReferenceID", "externalReferenceId"),
            ("ID", "id"),
            ("consentToContact", "consentToContact"),
            (
                "ConsentToMicrosoftToContactSpecificPartners",
                "consentToMicrosoftToContactSpecificPartners",
            ),
            ("-", "-"),
            ("3", "3"),
        ] {
            assert_eq!(camel_key(pascal), camel, "{pascal}");
        }
    }

    #[test]
    fn applies_the_documented_samples_leniently() {
        let mut doc = json!({"status": "Active", "details": {"dealValue": 1, "notes": "a"}});
        let ops = parse(include_bytes!(
            "../../tests/data/partner-center/patch-referral-request.json"
        ))
        .expect("documented sample parses");
        apply(&mut doc, &ops).expect("documented sample applies");
        assert_eq!(doc["details"]["dealValue"], json!("10000"));
        assert_eq!(doc["team"][0]["email"], json!("jane.doe@contoso.com"));

        let ops = parse(br#"[{"op":"replace","path":"/Details/ClosingDateTime","value":"2025-01-01T00:00:00Z"}]"#)
            .expect("parses");
        apply(&mut doc, &ops).expect("replace of a missing member is an add");
        assert_eq!(
            doc["details"]["closingDateTime"],
            json!("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn rejects_unsupported_operations_and_bad_paths() {
        for body in [
            r#"[{"op":"remove","path":"/details/notes"}]"#,
            r#"[{"op":"move","from":"/name","path":"/statusReason"}]"#,
            r#"[{"op":"test","path":"/name","value":"x"}]"#,
            r#"{"op":"replace","path":"/name","value":"x"}"#,
            r#"[{"op":"replace","path":"name","value":"x"}]"#,
            r#"[{"op":"replace","path":"/name"}]"#,
            r#"[]"#,
            r#"[{"op":"replace""#,
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
        let ops = parse(br#"[{"op":"replace","path":"/bogus","value":1}]"#).expect("parses");
        assert!(apply(&mut json!({}), &ops).is_err());
        let ops = parse(br#"[{"op":"add","path":"/team/7","value":{}}]"#).expect("parses");
        assert!(apply(&mut json!({"team": []}), &ops).is_err());
    }
}
