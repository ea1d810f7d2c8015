//! Resource segments of Web API URLs: `opportunities`, `opportunities(<guid>)`,
//! `opportunities(msft_microsoftpartnercenterreferralidentifier='a''b')`,
//! `example_records(key1=2,key2='x')`, `WhoAmI()`, and `@odata.bind` paths.

use serde_json::Value;

/// How a URL addresses one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// `set(<guid>)`.
    Id(String),
    /// `set(k1=v1,k2=v2)`: alternate key (or the primary key named explicitly).
    Named(Vec<(String, Value)>),
}

/// A parsed resource segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub key: Option<Key>,
    /// `name()` — a function call without parameters.
    pub call: bool,
}

/// Parses `name`, `name()`, `name(<literal>)` or `name(k=v,…)`.
pub fn parse_resource(segment: &str) -> Result<Resource, String> {
    let Some(open) = segment.find('(') else {
        return Ok(Resource {
            name: segment.to_owned(),
            key: None,
            call: false,
        });
    };
    let name = segment[..open].to_owned();
    let inner = segment[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| format!("Bad Request - Error in query syntax: '{segment}'."))?;
    if inner.trim().is_empty() {
        return Ok(Resource {
            name,
            key: None,
            call: true,
        });
    }
    let parts = split_outside_quotes(inner, ',')?;
    let key = if parts.len() == 1 && find_outside_quotes(parts[0], '=').is_none() {
        match parse_literal(parts[0].trim())? {
            Value::String(text) => match uuid::Uuid::try_parse(&text) {
                Ok(id) => Key::Id(id.hyphenated().to_string()),
                Err(_) => {
                    return Err(format!(
                        "Bad Request - Error in query syntax: '{}' is not a valid key; use a \
                         GUID or name=value pairs of an alternate key.",
                        parts[0].trim()
                    ));
                }
            },
            other => {
                return Err(format!(
                    "Bad Request - Error in query syntax: '{other}' is not a valid key."
                ));
            }
        }
    } else {
        let mut pairs = Vec::new();
        for part in parts {
            let eq = find_outside_quotes(part, '=').ok_or_else(|| {
                format!("Bad Request - Error in query syntax: expected name=value in '{part}'.")
            })?;
            let key_name = part[..eq].trim();
            if key_name.is_empty() {
                return Err(format!(
                    "Bad Request - Error in query syntax: missing key name in '{part}'."
                ));
            }
            pairs.push((key_name.to_owned(), parse_literal(part[eq + 1..].trim())?));
        }
        Key::Named(pairs)
    };
    Ok(Resource {
        name,
        key: Some(key),
        call: false,
    })
}

/// Splits an `@odata.bind` value (`/accounts(<id>)`, `accounts(<id>)` or an absolute
/// `…/api/data/v9.2/accounts(<id>)` URL) into its resource.
pub fn parse_bind(path: &str) -> Result<Resource, String> {
    let relative = match path.find("/api/data/") {
        Some(at) => {
            let rest = &path[at + "/api/data/".len()..];
            rest.split_once('/').map_or(rest, |(_, after)| after)
        }
        None => path.trim_start_matches('/'),
    };
    let resource = parse_resource(relative)?;
    if resource.key.is_none() {
        return Err(format!(
            "The @odata.bind value '{path}' does not identify a record: use /<entityset>(<id>)."
        ));
    }
    Ok(resource)
}

fn find_outside_quotes(text: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '\'' {
            quoted = !quoted;
        } else if c == needle && !quoted {
            return Some(i);
        }
    }
    None
}

fn split_outside_quotes(text: &str, separator: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '\'' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted {
        return Err("Bad Request - Error in query syntax: unterminated string literal.".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// An OData literal: `'text'` (with `''` for a quote), a number, `true`/`false`,
/// `null`, or an unquoted GUID.
pub fn parse_literal(text: &str) -> Result<Value, String> {
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("Bad Request - Error in query syntax: {text}"))?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\'' && chars.next() != Some('\'') {
                return Err(format!(
                    "Bad Request - Error in query syntax: a quote inside {text} must be \
                     doubled ('')."
                ));
            }
            out.push(c);
        }
        return Ok(Value::String(out));
    }
    match text {
        "null" => return Ok(Value::Null),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(id) = uuid::Uuid::try_parse(text) {
        return Ok(Value::String(id.hyphenated().to_string()));
    }
    if let Ok(number) = serde_json::from_str::<serde_json::Number>(text) {
        return Ok(Value::Number(number));
    }
    Err(format!(
        "Bad Request - Error in query syntax: unrecognized literal '{text}' (quote strings: \
         'value')."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_ids_alternate_keys_and_calls() {
        let r = parse_resource("opportunities").expect("plain");
        assert_eq!(
            (r.name.as_str(), r.key, r.call),
            ("opportunities", None, false)
        );
        let r = parse_resource("opportunities(6D81597F-0F9F-E711-8122-000D3AA2331C)").expect("id");
        assert_eq!(
            r.key,
            Some(Key::Id("6d81597f-0f9f-e711-8122-000d3aa2331c".into()))
        );
        let r = parse_resource("accounts(accountnumber='O''Neil, (1)',k2=2)").expect("keys");
        assert_eq!(
            r.key,
            Some(Key::Named(vec![
                ("accountnumber".into(), json!("O'Neil, (1)")),
                ("k2".into(), json!(2)),
            ]))
        );
        assert!(parse_resource("WhoAmI()").expect("call").call);
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "accounts(abc)",
            "accounts('x')",
            "accounts(accountnumber='x)",
            "accounts(accountnumber='a'b')",
            "accounts(=1)",
            "accounts(x",
        ] {
            assert!(parse_resource(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_bind_paths_in_every_form() {
        for path in [
            "/accounts(6d81597f-0f9f-e711-8122-000d3aa2331c)",
            "accounts(6d81597f-0f9f-e711-8122-000d3aa2331c)",
            "https://org.crm.dynamics.com/api/data/v9.2/accounts(6d81597f-0f9f-e711-8122-000d3aa2331c)",
        ] {
            let r = parse_bind(path).expect(path);
            assert_eq!(r.name, "accounts", "{path}");
        }
        assert!(parse_bind("/accounts").is_err());
    }
}
