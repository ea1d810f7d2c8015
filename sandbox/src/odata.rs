//! The subset of OData query options the sandbox needs: `$filter` with `eq ne gt ge lt
//! le`, `and`/`or`/`not`, parentheses, `contains`/`startswith`, `any` lambdas over arrays
//! (`team/any(t:t/email eq 'x')`), navigation paths (`customerProfile/address/country`),
//! string, number, boolean, null, GUID and date-time literals; `$orderby`; `$top`/`$skip`.
//!
//! No maintained Rust crate evaluates OData filters against JSON, so this is a small
//! recursive-descent parser. String comparison is case-insensitive, as Dataverse's SQL
//! collation is (Partner Center's is UNKNOWN; case-insensitive is the forgiving reading).
//! Date-time values compare as instants whether or not they carry an offset.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

/// A parse error, phrased for an OData error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid OData query: {0}")]
pub struct ODataError(pub String);

/// A parsed `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare(Operand, CmpOp, Operand),
    /// `contains(path, 'x')` / `startswith(path, 'x')`.
    Function(StringFn, Operand, Operand),
    /// `path/any(var: expr)`.
    Any {
        path: Vec<String>,
        var: String,
        body: Box<Filter>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringFn {
    Contains,
    StartsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Vec<String>),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
    Colon,
}

fn tokenize(input: &str) -> Result<Vec<Token>, ODataError> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            ':' if tokens.last().is_some_and(|t| matches!(t, Token::Word(_))) => {
                chars.next();
                tokens.push(Token::Colon);
            }
            '\'' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            text.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => text.push(c),
                        None => return Err(ODataError("unterminated string literal".into())),
                    }
                }
                tokens.push(Token::Str(text));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    // A ':' inside a word belongs to a date-time literal (12:00:00);
                    // a lambda's `t:` is split above because the word ends there.
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '\'') {
                        break;
                    }
                    if c == ':' && !word.chars().next().is_some_and(|f| f.is_ascii_digit()) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, token: Token) -> Result<(), ODataError> {
        match self.next() {
            Some(t) if t == token => Ok(()),
            other => Err(ODataError(format!("expected {token:?}, found {other:?}"))),
        }
    }

    fn or(&mut self) -> Result<Filter, ODataError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ODataError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ODataError> {
        if self.keyword("not") {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.or()?;
            self.expect(Token::Close)?;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, ODataError> {
        let Some(Token::Word(word)) = self.next() else {
            return Err(ODataError(
                "expected a property, function or literal".into(),
            ));
        };
        let function = match word.to_ascii_lowercase().as_str() {
            "contains" => Some(StringFn::Contains),
            "startswith" => Some(StringFn::StartsWith),
            _ => None,
        };
        if let (Some(function), Some(Token::Open)) = (function, self.peek()) {
            self.pos += 1;
            let subject = self.operand()?;
            self.expect(Token::Comma)?;
            let argument = self.operand()?;
            self.expect(Token::Close)?;
            return Ok(Filter::Function(function, subject, argument));
        }
        if let Some(prefix) = word
            .strip_suffix("/any")
            .or_else(|| word.strip_suffix("/ANY"))
        {
            self.expect(Token::Open)?;
            let Some(Token::Word(var)) = self.next() else {
                return Err(ODataError("expected a lambda variable".into()));
            };
            self.expect(Token::Colon)?;
            let body = self.or()?;
            self.expect(Token::Close)?;
            return Ok(Filter::Any {
                path: split_path(prefix),
                var,
                body: Box::new(body),
            });
        }
        let left = word_operand(&word);
        let Some(Token::Word(op)) = self.next() else {
            return Err(ODataError(format!("expected an operator after '{word}'")));
        };
        let op = match op.to_ascii_lowercase().as_str() {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            other => return Err(ODataError(format!("unsupported operator '{other}'"))),
        };
        let right = self.operand()?;
        Ok(Filter::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ODataError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Operand::Literal(Value::String(s))),
            Some(Token::Word(w)) => Ok(word_operand(&w)),
            other => Err(ODataError(format!("expected a value, found {other:?}"))),
        }
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

/// An unquoted GUID literal (`5f0e…-…`), which may start with a letter.
fn is_guid(word: &str) -> bool {
    word.len() == 36
        && word.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn word_operand(word: &str) -> Operand {
    match word {
        "null" => Operand::Literal(Value::Null),
        _ if is_guid(word) => Operand::Literal(Value::String(word.to_owned())),
        "true" => Operand::Literal(Value::Bool(true)),
        "false" => Operand::Literal(Value::Bool(false)),
        _ if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
            match serde_json::from_str::<serde_json::Number>(word) {
                Ok(n) => Operand::Literal(Value::Number(n)),
                // GUIDs and date-times are unquoted literals in OData.
                Err(_) => Operand::Literal(Value::String(word.to_owned())),
            }
        }
        _ => Operand::Path(split_path(word)),
    }
}

/// Parses a `$filter` value.
pub fn parse_filter(input: &str) -> Result<Filter, ODataError> {
    let mut parser = Parser {
        tokens: tokenize(input)?,
        pos: 0,
    };
    let filter = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(ODataError(format!(
            "unexpected input after position {}",
            parser.pos
        )));
    }
    Ok(filter)
}

/// Looks a path up in `value` (exact member name first, then case-insensitive).
pub fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |current, segment| {
        let object = current.as_object()?;
        object.get(segment).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(segment))
                .map(|(_, v)| v)
        })
    })
}

fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// Orders two JSON values the way the sandbox compares them in filters and `$orderby`.
pub fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::String(a), Value::String(b)) => match (parse_instant(a), parse_instant(b)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(a.to_lowercase().cmp(&b.to_lowercase())),
        },
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            let a: f64 = a.parse().ok()?;
            let ord = a.partial_cmp(&b.as_f64()?)?;
            Some(if matches!(left, Value::String(_)) {
                ord
            } else {
                ord.reverse()
            })
        }
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

struct Scope<'a> {
    root: &'a Value,
    var: Option<(&'a str, &'a Value)>,
}

impl Scope<'_> {
    fn resolve<'s>(&'s self, operand: &'s Operand) -> Value {
        match operand {
            Operand::Literal(v) => v.clone(),
            Operand::Path(path) => {
                if let Some((name, element)) = self.var
                    && path.first().is_some_and(|p| p == name)
                {
                    return lookup(element, &path[1..]).cloned().unwrap_or(Value::Null);
                }
                lookup(self.root, path).cloned().unwrap_or(Value::Null)
            }
        }
    }

    fn eval(&self, filter: &Filter) -> bool {
        match filter {
            Filter::And(a, b) => self.eval(a) && self.eval(b),
            Filter::Or(a, b) => self.eval(a) || self.eval(b),
            Filter::Not(a) => !self.eval(a),
            Filter::Compare(l, op, r) => {
                let ord = compare(&self.resolve(l), &self.resolve(r));
                match op {
                    CmpOp::Eq => ord == Some(Ordering::Equal),
                    CmpOp::Ne => ord != Some(Ordering::Equal),
                    CmpOp::Gt => ord == Some(Ordering::Greater),
                    CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                    CmpOp::Lt => ord == Some(Ordering::Less),
                    CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                }
            }
            Filter::Function(function, subject, argument) => {
                let (Value::String(s), Value::String(a)) =
                    (self.resolve(subject), self.resolve(argument))
                else {
                    return false;
                };
                let (s, a) = (s.to_lowercase(), a.to_lowercase());
                match function {
                    StringFn::Contains => s.contains(&a),
                    StringFn::StartsWith => s.starts_with(&a),
                }
            }
            Filter::Any { path, var, body } => {
                let Some(Value::Array(items)) = lookup(self.root, path) else {
                    return false;
                };
                items.iter().any(|item| {
                    Scope {
                        root: self.root,
                        var: Some((var, item)),
                    }
                    .eval(body)
                })
            }
        }
    }
}

impl Filter {
    /// `true` when `record` satisfies the filter.
    pub fn matches(&self, record: &Value) -> bool {
        Scope {
            root: record,
            var: None,
        }
        .eval(self)
    }
}

/// Sorts records by a `$orderby` value such as `updatedDateTime desc, name`.
pub fn order_by(records: &mut [Value], orderby: &str) -> Result<(), ODataError> {
    let mut keys = Vec::new();
    for clause in orderby.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let mut parts = clause.split_whitespace();
        let path = split_path(parts.next().unwrap_or_default());
        let descending = match parts.next().map(str::to_ascii_lowercase).as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(ODataError(format!("unsupported sort order '{other}'"))),
        };
        keys.push((path, descending));
    }
    records.sort_by(|a, b| {
        keys.iter()
            .map(|(path, descending)| {
                let ord = compare(
                    lookup(a, path).unwrap_or(&Value::Null),
                    lookup(b, path).unwrap_or(&Value::Null),
                )
                .unwrap_or(Ordering::Equal);
                if *descending { ord.reverse() } else { ord }
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn referral() -> Value {
        json!({
            "engagementId": "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
            "status": "New", "qualification": "SalesQualified", "direction": "Incoming",
            "updatedDateTime": "2019-02-23T02:05:23.2931817Z",
            "customerProfile": { "address": { "country": "US" } },
            "team": [ { "email": "r2d2@contoso.com" } ]
        })
    }

    #[test]
    fn evaluates_the_documented_partner_center_filter_samples() {
        let r = referral();
        for (filter, expected) in [
            (
                "engagementId eq '37ef26aa-1d15-4533-9f93-a69bd33ab1e5'",
                true,
            ),
            (
                "status eq 'New' and qualification eq 'SalesQualified'",
                true,
            ),
            (
                "customerProfile/address/country eq 'US' and direction eq 'Incoming'",
                true,
            ),
            ("(status eq 'Active' and direction eq 'Outgoing')", false),
            ("team/any(t:t/email eq 'r2d2@contoso.com')", true),
            ("team/any(t:t/email eq 'c3po@contoso.com')", false),
            ("updatedDateTime ge 2019-02-23T00:00:00Z", true),
            ("updatedDateTime ge '2019-02-24T00:00:00Z'", false),
            ("not (status eq 'Closed') or status eq 'Closed'", true),
            ("startswith(customerProfile/address/country, 'u')", true),
            (
                "engagementId gt 0a7a9a4e-6c1b-4a4e-9d65-7f1b0c0de001 and engagementId lt \
                 a5d7fd06-0000-4000-8000-00000000beef",
                true,
            ),
        ] {
            let parsed = parse_filter(filter).expect(filter);
            assert_eq!(parsed.matches(&r), expected, "{filter}");
        }
    }

    #[test]
    fn rejects_malformed_filters() {
        for filter in [
            "status eq",
            "status like 'x'",
            "(status eq 'New'",
            "name eq 'open",
        ] {
            assert!(parse_filter(filter).is_err(), "{filter}");
        }
    }

    #[test]
    fn orders_by_date_time_descending() {
        let mut records = vec![
            json!({"updatedDateTime": "2020-01-01T00:00:00Z", "n": 1}),
            json!({"updatedDateTime": "2021-01-01T00:00:00.1234567Z", "n": 2}),
        ];
        order_by(&mut records, "updatedDateTime desc").expect("valid");
        assert_eq!(records[0]["n"], 2);
    }
}
