//! `$expand` of single-valued navigation properties (docs/dataverse.md#related-rows-in-one-read):
//! `$expand=parentaccountid($select=name,address1_postalcode),transactioncurrencyid($select=isocurrencycode)`.
//!
//! The option text is parsed by [`parse`] (items separated by `,`, each a navigation property
//! with its own options in parentheses separated by `;`), then resolved against the table
//! definitions by [`resolve`] and rendered into a row by [`Expansion::render_into`]:
//!
//! - the navigation property of a single-target lookup is the lookup's logical name
//!   (`parentaccountid`, `transactioncurrencyid`); a multi-target (Customer) lookup has one per
//!   target, `<lookup>_<table>` (`customerid_account`); the owner lookup `ownerid` leads to the
//!   row it names;
//! - the expanded row is rendered like a read of that row (its `@odata.etag` and primary key,
//!   then every readable column or the `$select`ed ones); an unset lookup, or one naming
//!   another table of a Customer lookup, expands to `null`;
//! - inside the parentheses: `$select` and a nested `$expand`. `$filter`, `$orderby` and `$top`
//!   apply to collection-valued navigation properties, which the sandbox does not model
//!   (501); `$skip`, `$count`, `$search` and `$levels` are refused (400) as the service refuses
//!   them;
//! - at most [`MAX_EXPANDS`] expansions per query, nested ones included;
//! - a name that is not a property of the table: 400 "Could not find a property named 'x' on
//!   type 'Microsoft.Dynamics.CRM.<table>'."; a column that is not a navigation property:
//!   400 "Property 'x' on type '…' is not a navigation property or complex property. Only
//!   navigation properties can be expanded."

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::schema::{Column, TableDef};
use super::store::{lookup_target, render};
use super::{ApiError, State};
use crate::records::Row;

/// The most `$expand` options one query may carry (each is a join).
pub const MAX_EXPANDS: usize = 15;

/// One item of an `$expand` option as written: the navigation property and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub property: String,
    /// `(name, value)` pairs from the parentheses, in order (`$select`, `$expand`, …).
    pub options: Vec<(String, String)>,
}

/// A syntax error in `$expand` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Syntax error in $expand at position {position}: {reason}")]
pub struct SyntaxError {
    /// Character offset in the option text.
    pub position: usize,
    pub reason: &'static str,
}

/// Splits `text` at `separator` where it is not inside parentheses; `(offset, part)` pairs.
fn split_top_level(
    text: &str,
    separator: char,
    base: usize,
) -> Result<Vec<(usize, &str)>, SyntaxError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or(SyntaxError {
                    position: base + i,
                    reason: "')' without a matching '('",
                })?;
            }
            c if c == separator && depth == 0 => {
                parts.push((base + start, &text[start..i]));
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SyntaxError {
            position: base + text.len(),
            reason: "'(' without a matching ')'",
        });
    }
    parts.push((base + start, &text[start..]));
    Ok(parts)
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the text of an `$expand` option (already percent-decoded).
pub fn parse(text: &str) -> Result<Vec<Item>, SyntaxError> {
    parse_at(text, 0)
}

fn parse_at(text: &str, base: usize) -> Result<Vec<Item>, SyntaxError> {
    split_top_level(text, ',', base)?
        .into_iter()
        .map(|(at, part)| parse_item(part, at))
        .collect()
}

fn parse_item(part: &str, at: usize) -> Result<Item, SyntaxError> {
    let lead = part.len() - part.trim_start().len();
    let trimmed = part.trim();
    let at = at + lead;
    let (property, options) = match trimmed.find('(') {
        None => (trimmed, Vec::new()),
        Some(open) => {
            let Some(inner) = trimmed[open + 1..].strip_suffix(')') else {
                return Err(SyntaxError {
                    position: at + trimmed.len(),
                    reason: "an expand item's options must end with ')'",
                });
            };
            let options = split_top_level(inner, ';', at + open + 1)?
                .into_iter()
                .map(|(offset, option)| {
                    let (name, value) = option.split_once('=').ok_or(SyntaxError {
                        position: offset,
                        reason: "an expand option must be written name=value",
                    })?;
                    let name = name.trim();
                    if !name.starts_with('$') || !is_identifier(&name[1..]) {
                        return Err(SyntaxError {
                            position: offset,
                            reason: "an expand option's name must be a $ system query option",
                        });
                    }
                    Ok((name.to_owned(), value.trim().to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (trimmed[..open].trim_end(), options)
        }
    };
    if !is_identifier(property) {
        return Err(SyntaxError {
            position: at,
            reason: "an expand item must start with a navigation property name",
        });
    }
    Ok(Item {
        property: property.to_owned(),
        options,
    })
}

/// An `$expand` item resolved against the schema.
#[derive(Debug, Clone)]
pub struct Expansion {
    /// The navigation property, the key of the expanded row in the answer.
    pub property: String,
    /// The lookup column behind it, on the parent table.
    lookup: Column,
    /// The table it leads to (logical name); for `ownerid`, the row's own target.
    target: Option<&'static str>,
    /// `$select` inside the parentheses.
    select: Option<Vec<String>>,
    /// Nested `$expand`.
    nested: Vec<Expansion>,
}

/// The navigation property `name` of `def`: the lookup and the table it leads to (`None`:
/// the row decides, as for `ownerid`).
fn navigation<'d>(def: &'d TableDef, name: &str) -> Option<(&'d Column, Option<&'d str>)> {
    def.columns
        .iter()
        .filter(|c| c.is_lookup() && c.readable())
        .find_map(|c| {
            if c.name == "ownerid" {
                return (name == "ownerid").then_some((c, None));
            }
            match c.targets() {
                [single] => (c.name == name).then_some((c, Some(single.as_str()))),
                targets => targets
                    .iter()
                    .find(|t| {
                        name.strip_prefix(c.name.as_str())
                            .and_then(|rest| rest.strip_prefix('_'))
                            == Some(t.as_str())
                    })
                    .map(|t| (c, Some(t.as_str()))),
            }
        })
}

/// Resolves the `$expand` text of a query on `def`.
pub fn resolve(dv: &State, def: &TableDef, text: &str) -> Result<Vec<Expansion>, ApiError> {
    let items = parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut count = 0;
    let expansions = resolve_items(dv, def, items, &mut count)?;
    if count > MAX_EXPANDS {
        return Err(ApiError::bad_request(format!(
            "Number of link entities in query exceeded maximum limit: {count} expansions, at \
             most {MAX_EXPANDS}."
        )));
    }
    Ok(expansions)
}

fn resolve_items(
    dv: &State,
    def: &TableDef,
    items: Vec<Item>,
    count: &mut usize,
) -> Result<Vec<Expansion>, ApiError> {
    let mut out: Vec<Expansion> = Vec::with_capacity(items.len());
    for item in items {
        *count += 1;
        let Some((lookup, target)) = navigation(def, &item.property) else {
            let structural = def
                .columns
                .iter()
                .any(|c| c.readable() && c.read_name() == item.property);
            return Err(if structural {
                ApiError::bad_request(format!(
                    "Property '{}' on type '{}' is not a navigation property or complex \
                     property. Only navigation properties can be expanded.",
                    item.property,
                    def.entity_type()
                ))
            } else {
                ApiError::no_property(&item.property, def)
            });
        };
        let target_def = match target {
            Some(logical) => Some(dv.def(logical).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "",
                    format!(
                        "The sandbox does not model the table '{logical}' that '{}' leads to.",
                        item.property
                    ),
                )
            })?),
            None => None,
        };
        let mut select = None;
        let mut nested = Vec::new();
        for (name, value) in item.options {
            match name.as_str() {
                "$select" => {
                    let columns: Vec<String> = value
                        .split(',')
                        .map(|c| c.trim().to_owned())
                        .filter(|c| !c.is_empty())
                        .collect();
                    if let Some(target_def) = target_def {
                        for column in &columns {
                            if target_def.column_by_read_name(column).is_none() {
                                return Err(ApiError::no_property(column, target_def));
                            }
                        }
                    }
                    select = Some(columns);
                }
                "$expand" => {
                    let Some(target_def) = target_def else {
                        return Err(ApiError::new(
                            StatusCode::NOT_IMPLEMENTED,
                            "",
                            format!(
                                "The sandbox does not implement a nested $expand under '{}'.",
                                item.property
                            ),
                        ));
                    };
                    let inner = parse(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    nested = resolve_items(dv, target_def, inner, count)?;
                }
                "$filter" | "$orderby" | "$top" => {
                    return Err(ApiError::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "",
                        format!(
                            "The sandbox does not implement {name} inside $expand (it applies to \
                             collection-valued navigation properties, which the sandbox does not \
                             model)."
                        ),
                    ));
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "The query parameter '{other}' is not supported inside $expand."
                    )));
                }
            }
        }
        out.push(Expansion {
            property: item.property,
            lookup: lookup.clone(),
            target: target_def.map(|d| d.logical),
            select,
            nested,
        });
    }
    Ok(out)
}

impl Expansion {
    /// The expanded row of `row`, or `None` when the lookup is unset (or names a row of
    /// another table, or one that no longer exists).
    fn related<'s>(&self, dv: &'s State, row: &Row) -> Option<(&'s TableDef, &'s Row)> {
        let id = row
            .fields
            .get(&self.lookup.read_name())
            .and_then(Value::as_str)?
            .to_ascii_lowercase();
        let named = lookup_target(&self.lookup, row);
        let logical = match self.target {
            Some(target) => target,
            None => named.as_str(),
        };
        if logical != named {
            return None;
        }
        let def = dv.def(logical)?;
        Some((def, dv.row(logical, &id)?))
    }

    /// Adds the expanded row (or `null`) of `row` to `out` under the navigation property.
    pub fn render_into(
        &self,
        dv: &State,
        row: &Row,
        annotations: bool,
        out: &mut Map<String, Value>,
    ) {
        let value = self.related(dv, row).map_or(Value::Null, |(def, related)| {
            let mut body = render(def, related, self.select.as_deref(), annotations);
            for nested in &self.nested {
                nested.render_into(dv, related, annotations, &mut body);
            }
            Value::Object(body)
        });
        out.insert(self.property.clone(), value);
    }

    /// `property(col,…)` for the answer's `@odata.context`.
    pub fn context(&self) -> String {
        let mut inner: Vec<String> = self.select.clone().unwrap_or_default();
        inner.extend(self.nested.iter().map(Expansion::context));
        format!("{}({})", self.property, inner.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn items_with_options_and_nesting_parse() {
        let items = parse(
            "parentaccountid($select=name,address1_postalcode),\
             parentcontactid($select=emailaddress1;$expand=parentcustomerid_account($select=name)), transactioncurrencyid",
        )
        .expect("parses");
        assert_eq!(
            items,
            vec![
                Item {
                    property: "parentaccountid".into(),
                    options: vec![("$select".into(), "name,address1_postalcode".into())],
                },
                Item {
                    property: "parentcontactid".into(),
                    options: vec![
                        ("$select".into(), "emailaddress1".into()),
                        (
                            "$expand".into(),
                            "parentcustomerid_account($select=name)".into()
                        ),
                    ],
                },
                Item {
                    property: "transactioncurrencyid".into(),
                    options: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn malformed_text_is_a_syntax_error_with_its_position() {
        for (text, position) in [
            ("", 0),
            ("parentaccountid(", 16),
            ("parentaccountid)", 15),
            ("parentaccountid($select)", 16),
            ("parentaccountid(select=name)", 16),
            ("parentaccountid($select=name)x", 30),
            ("a,,b", 2),
            ("a b", 0),
        ] {
            let error = parse(text).expect_err(text);
            assert_eq!(error.position, position, "{text}: {error}");
        }
    }

    /// Writes items back as `$expand` text.
    fn write(items: &[Item]) -> String {
        items
            .iter()
            .map(|item| {
                if item.options.is_empty() {
                    item.property.clone()
                } else {
                    let options: Vec<String> = item
                        .options
                        .iter()
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    format!("{}({})", item.property, options.join(";"))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn identifier() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_]{0,12}"
    }

    fn items(depth: u32) -> BoxedStrategy<Vec<Item>> {
        let select = prop::collection::vec(identifier(), 1..4).prop_map(|c| c.join(","));
        let leaf_options =
            prop::collection::vec(select.prop_map(|s| ("$select".to_owned(), s)), 0..2);
        let options = if depth == 0 {
            leaf_options.boxed()
        } else {
            (leaf_options, prop::option::of(items(depth - 1)))
                .prop_map(|(mut options, nested)| {
                    if let Some(nested) = nested {
                        options.push(("$expand".to_owned(), write(&nested)));
                    }
                    options
                })
                .boxed()
        };
        prop::collection::vec(
            (identifier(), options).prop_map(|(property, options)| Item { property, options }),
            1..4,
        )
        .boxed()
    }

    proptest! {
        #[test]
        fn written_items_parse_back_to_themselves(items in items(2)) {
            prop_assert_eq!(parse(&write(&items)), Ok(items));
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "[a-z_$(),;= ]{0,40}") {
            match parse(&text) {
                Ok(items) => prop_assert!(!items.is_empty()),
                Err(error) => prop_assert!(error.position <= text.len()),
            }
        }
    }
}
