//! Strategies and helpers shared by the property tests of the parsers fed by outside input
//! ("no panic reachable from input").

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Text a parser should survive: any string, and strings built from the pieces the wire
/// formats are made of (digits, signs, separators, `@`, quotes, multi-byte and odd spaces).
pub fn wire_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F+\\-:.,;/()@'\"TZtz {}\\[\\]<>&#%=?\u{a0}\u{e9}\u{2003}\u{feff}\u{1f600}]{0,40}",
        "(/Date\\(|\\\\/Date\\()[0-9\\-+\u{e9}\u{a0}]{0,20}\\)(/|\\\\/)?",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt \u{a0}\u{e9}][0-9:.+\\-Zz\u{e9}]{0,20}",
    ]
}

/// Any JSON value, a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        wire_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A member name: one the wire formats use, or any text.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "key",
            "value",
            "Key",
            "Value",
            "__type",
            "Id",
            "LogicalName",
            "Name",
            "Attributes",
            "FormattedValues",
            "RowVersion",
            "Target",
            "error",
            "code",
            "message",
            "id",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// The JSON pointers of every value in `value` (the root included).
pub fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, format!("{at}/{index}"), out);
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    walk(member, format!("{at}/{key}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// `sample` with the value at one of its pointers (picked by `which`) replaced by `with`.
pub fn mutated(sample: &Value, which: prop::sample::Index, with: Value) -> Value {
    let mut copy = sample.clone();
    let all = pointers(sample);
    let pointer = &all[which.index(all.len())];
    if let Some(slot) = copy.pointer_mut(pointer) {
        *slot = with;
    }
    copy
}
