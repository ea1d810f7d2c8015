//! The subset of SOQL the connector (and `cosell doctor`) needs, parsed and evaluated
//! against the in-memory records. No maintained Rust crate parses SOQL, so this is a
//! small recursive-descent parser:
//!
//! ```text
//! SELECT f1, f2 | COUNT() FROM Object
//!   [WHERE cond]  cond := term (AND term)* | term (OR term)*   -- mixing needs parentheses
//!                 term := NOT term | ( cond ) | field op literal
//!                       | field LIKE 'pattern' | field [NOT] IN (literal, ...)
//!                 op   := = != <> < <= > >=
//!   [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]
//! ```
//!
//! Literals: `'string'` (escapes `\' \" \\ \n \r \t \b \f \uXXXX`, and `\% \_` in LIKE),
//! numbers, `true`/`false`, `null`, dates `2026-01-31` and date-times
//! `2026-01-01T00:00:00Z` / `…+01:00` (unquoted). Keywords and field names are
//! case-insensitive; text comparisons are case-insensitive like Salesforce's.
//!
//! Syntax errors are `MALFORMED_QUERY` with Salesforce's caret layout; an unknown object
//! is `INVALID_TYPE`, an unknown or unfilterable field `INVALID_FIELD`, and a literal of the
//! wrong type (e.g. a quoted date-time) `INVALID_QUERY_FILTER_OPERATOR` — as the real
//! service answers, so connector bugs surface here rather than in production. Mixing AND
//! and OR without parentheses is rejected as in real SOQL. Not supported: relationship
//! paths (`Account.Name`), sub-queries, aggregates other than `COUNT()`, date literals
//! such as `TODAY`, `INCLUDES`/`EXCLUDES`, and `nextRecordsUrl` paging (all rows are
//! returned with `done: true`).

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::ids;
use super::schema::{self, Field, FieldType, ObjectSchema};

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Select,
    pub object: String,
    pub filter: Option<Cond>,
    pub order_by: Vec<OrderBy>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT COUNT() FROM …`
    Count,
    Fields(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub field: String,
    pub descending: bool,
    pub nulls_last: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Compare {
        field: String,
        op: Op,
        value: Literal,
    },
    Like {
        field: String,
        pattern: Vec<LikePart>,
    },
    In {
        field: String,
        negated: bool,
        values: Vec<Literal>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One element of a LIKE pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LikePart {
    Char(char),
    /// `%`
    Any,
    /// `_`
    One,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
}

/// A query error: Salesforce `errorCode` and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SoqlError {
    pub code: &'static str,
    pub message: String,
}

impl SoqlError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    /// String literal: characters, each flagged when it was a `\%` / `\_` escape.
    Str(Vec<(char, bool)>),
    /// Number, date or date-time literal, as written.
    Num(String),
    Comma,
    Open,
    Close,
    Op(Op),
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    /// Character offset in the query.
    pos: usize,
    text: String,
}

fn malformed(query: &str, pos: usize, message: &str) -> SoqlError {
    // Salesforce's layout: the query line, a caret under the offending column, then
    // "ERROR at Row:r:Column:c" and the reason.
    let before: String = query.chars().take(pos).collect();
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = query.lines().nth(row - 1).unwrap_or_default();
    SoqlError::new(
        "MALFORMED_QUERY",
        format!(
            "\n{line}\n{caret:>column$}\nERROR at Row:{row}:Column:{column}\n{message}",
            caret = "^"
        ),
    )
}

fn tokenize(query: &str) -> Result<Vec<Spanned>, SoqlError> {
    let chars: Vec<char> = query.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            '(' => {
                i += 1;
                Tok::Open
            }
            ')' => {
                i += 1;
                Tok::Close
            }
            '=' => {
                i += 1;
                Tok::Op(Op::Eq)
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                Tok::Op(Op::Ne)
            }
            '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('=')) => (Op::Le, 2),
                    ('<', Some('>')) => (Op::Ne, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', Some('=')) => (Op::Ge, 2),
                    _ => (Op::Gt, 1),
                };
                i += len;
                Tok::Op(op)
            }
            '\'' => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(malformed(query, start, "unterminated string literal"));
                    };
                    i += 1;
                    match c {
                        '\'' => break,
                        '\\' => {
                            let Some(&e) = chars.get(i) else {
                                return Err(malformed(query, start, "unterminated string literal"));
                            };
                            i += 1;
                            let decoded = match e {
                                'n' => ('\n', false),
                                'r' => ('\r', false),
                                't' => ('\t', false),
                                'b' => ('\u{8}', false),
                                'f' => ('\u{c}', false),
                                '\'' | '"' | '\\' => (e, false),
                                '%' | '_' => (e, true),
                                'u' => {
                                    let hex: String = chars.iter().skip(i).take(4).collect();
                                    i += 4;
                                    let ch = u32::from_str_radix(&hex, 16)
                                        .ok()
                                        .filter(|_| hex.len() == 4)
                                        .and_then(char::from_u32)
                                        .ok_or_else(|| {
                                            malformed(
                                                query,
                                                start,
                                                "Invalid string literal: illegal unicode escape",
                                            )
                                        })?;
                                    (ch, false)
                                }
                                _ => {
                                    return Err(malformed(
                                        query,
                                        start,
                                        &format!(
                                            "Invalid string literal: Illegal escape sequence \\{e}"
                                        ),
                                    ));
                                }
                            };
                            value.push(decoded);
                        }
                        c => value.push((c, false)),
                    }
                }
                Tok::Str(value)
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                i += 1;
                while chars.get(i).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '+' | '-')
                }) {
                    i += 1;
                }
                Tok::Num(chars[start..i].iter().collect())
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
                {
                    i += 1;
                }
                Tok::Word(chars[start..i].iter().collect())
            }
            _ => {
                return Err(malformed(query, start, &format!("unexpected token: '{c}'")));
            }
        };
        out.push(Spanned {
            tok,
            pos: start,
            text: chars[start..i].iter().collect(),
        });
    }
    Ok(out)
}

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "LIMIT", "OFFSET", "LIKE", "IN",
    "ASC", "DESC", "NULLS", "FIRST", "LAST", "GROUP", "HAVING",
];

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

// ---------------------------------------------------------------------------------------
// Parser

struct Parser<'q> {
    query: &'q str,
    tokens: Vec<Spanned>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Spanned> {
        self.tokens.get(self.at)
    }

    fn unexpected(&self) -> SoqlError {
        match self.peek() {
            Some(t) => malformed(self.query, t.pos, &format!("unexpected token: {}", t.text)),
            None => malformed(
                self.query,
                self.query.chars().count(),
                "unexpected token: <EOF>",
            ),
        }
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Spanned { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SoqlError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let found = self.peek().is_some_and(|t| &t.tok == tok);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), SoqlError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// A field or object name (not a keyword).
    fn name(&mut self) -> Result<String, SoqlError> {
        match self.peek() {
            Some(Spanned {
                tok: Tok::Word(w), ..
            }) if !is_keyword(w) => {
                let w = w.clone();
                self.at += 1;
                Ok(w)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn integer(&mut self) -> Result<usize, SoqlError> {
        match self.peek() {
            Some(Spanned {
                tok: Tok::Num(n), ..
            }) => {
                let n = n.parse().map_err(|_| self.unexpected())?;
                self.at += 1;
                Ok(n)
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, SoqlError> {
        self.expect_keyword("SELECT")?;
        let select = if self.peek_keyword("COUNT")
            && self.tokens.get(self.at + 1).map(|t| &t.tok) == Some(&Tok::Open)
        {
            self.at += 2;
            self.expect(&Tok::Close)?;
            Select::Count
        } else {
            let mut fields = vec![self.name()?];
            while self.eat(&Tok::Comma) {
                fields.push(self.name()?);
            }
            Select::Fields(fields)
        };
        self.expect_keyword("FROM")?;
        let object = self.name()?;
        let filter = if self.eat_keyword("WHERE") {
            Some(self.condition()?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.name()?;
                let descending = if self.eat_keyword("DESC") {
                    true
                } else {
                    self.eat_keyword("ASC");
                    false
                };
                let nulls_last = if self.eat_keyword("NULLS") {
                    if self.eat_keyword("LAST") {
                        true
                    } else {
                        self.expect_keyword("FIRST")?;
                        false
                    }
                } else {
                    // Salesforce's default: nulls first ascending, last descending.
                    descending
                };
                order_by.push(OrderBy {
                    field,
                    descending,
                    nulls_last,
                });
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            Some(self.integer()?)
        } else {
            None
        };
        let offset = if self.eat_keyword("OFFSET") {
            Some(self.integer()?)
        } else {
            None
        };
        if self.peek().is_some() {
            return Err(self.unexpected());
        }
        Ok(Query {
            select,
            object,
            filter,
            order_by,
            limit,
            offset,
        })
    }

    /// `term (AND term)*` or `term (OR term)*`; mixing needs parentheses.
    fn condition(&mut self) -> Result<Cond, SoqlError> {
        let first = self.term()?;
        let joiner = if self.peek_keyword("AND") {
            "AND"
        } else if self.peek_keyword("OR") {
            "OR"
        } else {
            return Ok(first);
        };
        let other = if joiner == "AND" { "OR" } else { "AND" };
        let mut terms = vec![first];
        while self.eat_keyword(joiner) {
            terms.push(self.term()?);
            if self.peek_keyword(other) {
                return Err(self.unexpected());
            }
        }
        Ok(if joiner == "AND" {
            Cond::And(terms)
        } else {
            Cond::Or(terms)
        })
    }

    fn term(&mut self) -> Result<Cond, SoqlError> {
        if self.eat_keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.term()?)));
        }
        if self.eat(&Tok::Open) {
            let inner = self.condition()?;
            self.expect(&Tok::Close)?;
            return Ok(inner);
        }
        let field = self.name()?;
        if let Some(Spanned {
            tok: Tok::Op(op), ..
        }) = self.peek()
        {
            let op = *op;
            self.at += 1;
            let value = self.literal()?;
            return Ok(Cond::Compare { field, op, value });
        }
        if self.eat_keyword("LIKE") {
            let Some(Spanned {
                tok: Tok::Str(chars),
                ..
            }) = self.peek()
            else {
                return Err(self.unexpected());
            };
            let pattern = chars
                .iter()
                .map(|&(c, escaped)| match (c, escaped) {
                    ('%', false) => LikePart::Any,
                    ('_', false) => LikePart::One,
                    (c, _) => LikePart::Char(c),
                })
                .collect();
            self.at += 1;
            return Ok(Cond::Like { field, pattern });
        }
        let negated = self.eat_keyword("NOT");
        if self.eat_keyword("IN") {
            self.expect(&Tok::Open)?;
            let mut values = vec![self.literal()?];
            while self.eat(&Tok::Comma) {
                values.push(self.literal()?);
            }
            self.expect(&Tok::Close)?;
            return Ok(Cond::In {
                field,
                negated,
                values,
            });
        }
        Err(self.unexpected())
    }

    fn literal(&mut self) -> Result<Literal, SoqlError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.unexpected());
        };
        let literal = match &token.tok {
            Tok::Str(chars) => Literal::String(chars.iter().map(|&(c, _)| c).collect()),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Literal::Null,
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Tok::Num(n) => {
                if let Some(date) = schema::parse_date(n) {
                    Literal::Date(date)
                } else if n.contains(['T', 't']) {
                    // SOQL date-times carry an explicit zone: `Z` or `±hh:mm`.
                    let zoned = n.ends_with(['Z', 'z'])
                        || n.len() > 6 && n[n.len() - 6..].starts_with(['+', '-']);
                    schema::parse_datetime(n)
                        .filter(|_| zoned)
                        .map(Literal::DateTime)
                        .ok_or_else(|| {
                            malformed(self.query, token.pos, &format!("unexpected token: {n}"))
                        })?
                } else {
                    n.parse::<f64>()
                        .map(Literal::Number)
                        .map_err(|_| self.unexpected())?
                }
            }
            _ => return Err(self.unexpected()),
        };
        self.at += 1;
        Ok(literal)
    }
}

/// Parses a SOQL query.
pub fn parse(query: &str) -> Result<Query, SoqlError> {
    let tokens = tokenize(query)?;
    Parser {
        query,
        tokens,
        at: 0,
    }
    .query()
}

// ---------------------------------------------------------------------------------------
// Evaluation

fn no_such_column(object: &ObjectSchema, name: &str) -> SoqlError {
    SoqlError::new(
        "INVALID_FIELD",
        format!(
            "No such column '{name}' on entity '{}'. If you are attempting to use a custom field, \
             be sure to append the '__c' after the custom field name. Please reference your WSDL \
             or the describe call for the appropriate names.",
            object.name
        ),
    )
}

fn field<'s>(object: &'s ObjectSchema, name: &str) -> Result<&'s Field, SoqlError> {
    object
        .field(name)
        .ok_or_else(|| no_such_column(object, name))
}

fn wrong_type(field: &Field) -> SoqlError {
    let (kind, quoted) = match field.kind {
        FieldType::Boolean => ("boolean", false),
        FieldType::Date => ("date", false),
        FieldType::DateTime => ("dateTime", false),
        FieldType::Currency | FieldType::Percent | FieldType::Double => ("double", false),
        FieldType::Id | FieldType::Reference => ("id", true),
        _ => ("string", true),
    };
    SoqlError::new(
        "INVALID_QUERY_FILTER_OPERATOR",
        format!(
            "value of filter criterion for field '{}' must be of type {kind} and should {}be enclosed in quotes",
            field.name,
            if quoted { "" } else { "not " }
        ),
    )
}

fn check_literal(field: &Field, op: Op, literal: &Literal) -> Result<(), SoqlError> {
    let ok = match (field.kind, literal) {
        (_, Literal::Null) => true,
        (FieldType::Id | FieldType::Reference, Literal::String(s)) => {
            if ids::normalize(s).is_none() {
                return Err(SoqlError::new(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    format!("invalid ID field: {s}"),
                ));
            }
            true
        }
        (kind, Literal::String(_)) => kind.is_text(),
        (FieldType::Boolean, Literal::Bool(_)) => {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(SoqlError::new(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    "invalid operator on boolean field",
                ));
            }
            true
        }
        (kind, Literal::Number(_)) => kind.is_number(),
        (FieldType::Date, Literal::Date(_)) => true,
        (FieldType::DateTime, Literal::DateTime(_)) => true,
        _ => false,
    };
    if ok { Ok(()) } else { Err(wrong_type(field)) }
}

fn filterable<'s>(object: &'s ObjectSchema, name: &str) -> Result<&'s Field, SoqlError> {
    let f = field(object, name)?;
    if f.filterable() {
        Ok(f)
    } else {
        Err(SoqlError::new(
            "INVALID_FIELD",
            format!("field '{}' can not be filtered in query call", f.name),
        ))
    }
}

fn check(cond: &Cond, object: &ObjectSchema) -> Result<(), SoqlError> {
    match cond {
        Cond::And(terms) | Cond::Or(terms) => terms.iter().try_for_each(|t| check(t, object)),
        Cond::Not(inner) => check(inner, object),
        Cond::Compare { field, op, value } => check_literal(filterable(object, field)?, *op, value),
        Cond::Like { field, .. } => {
            let f = filterable(object, field)?;
            if f.kind.is_text() {
                Ok(())
            } else {
                Err(SoqlError::new(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    format!("invalid operator on {} field", f.kind.describe_name()),
                ))
            }
        }
        Cond::In { field, values, .. } => {
            let f = filterable(object, field)?;
            values.iter().try_for_each(|v| check_literal(f, Op::Eq, v))
        }
    }
}

/// Orders a stored value against a literal of the field's type (`None` = incomparable).
fn order(field: &Field, stored: &Value, literal: &Literal) -> Option<Ordering> {
    match (field.kind, literal) {
        (FieldType::Id | FieldType::Reference, Literal::String(s)) => {
            let wanted = ids::normalize(s)?;
            Some(
                stored
                    .as_str()?
                    .to_ascii_lowercase()
                    .cmp(&wanted.to_ascii_lowercase()),
            )
        }
        (_, Literal::String(s)) => Some(stored.as_str()?.to_lowercase().cmp(&s.to_lowercase())),
        (_, Literal::Number(n)) => stored.as_f64()?.partial_cmp(n),
        (_, Literal::Bool(b)) => Some(stored.as_bool()?.cmp(b)),
        (_, Literal::Date(d)) => Some(schema::parse_date(stored.as_str()?)?.cmp(d)),
        (_, Literal::DateTime(t)) => Some(schema::parse_datetime(stored.as_str()?)?.cmp(t)),
        (_, Literal::Null) => None,
    }
}

fn compare(field: &Field, stored: &Value, op: Op, literal: &Literal) -> bool {
    let stored_null = stored.is_null();
    match (stored_null, literal) {
        (true, Literal::Null) => return op == Op::Eq,
        (false, Literal::Null) => return op == Op::Ne,
        (true, _) => return op == Op::Ne,
        _ => {}
    }
    let Some(ordering) = order(field, stored, literal) else {
        return op == Op::Ne;
    };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    }
}

fn like(pattern: &[LikePart], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((LikePart::Any, rest)) => (0..=text.len()).any(|skip| like(rest, &text[skip..])),
        Some((LikePart::One, rest)) => !text.is_empty() && like(rest, &text[1..]),
        Some((LikePart::Char(c), rest)) => {
            text.first()
                .is_some_and(|t| t.to_lowercase().eq(c.to_lowercase()))
                && like(rest, &text[1..])
        }
    }
}

fn eval(cond: &Cond, object: &ObjectSchema, row: &Map<String, Value>) -> bool {
    // `check` ran first, so fields exist; a missing one matches nothing.
    let value = |name: &str| -> Option<(&Field, &Value)> {
        let f = object.field(name)?;
        Some((f, row.get(&f.name).unwrap_or(&Value::Null)))
    };
    match cond {
        Cond::And(terms) => terms.iter().all(|t| eval(t, object, row)),
        Cond::Or(terms) => terms.iter().any(|t| eval(t, object, row)),
        Cond::Not(inner) => !eval(inner, object, row),
        Cond::Compare {
            field,
            op,
            value: literal,
        } => value(field).is_some_and(|(f, stored)| compare(f, stored, *op, literal)),
        Cond::Like { field, pattern } => value(field).is_some_and(|(_, stored)| {
            stored
                .as_str()
                .is_some_and(|s| like(pattern, &s.chars().collect::<Vec<_>>()))
        }),
        Cond::In {
            field,
            negated,
            values,
        } => value(field).is_some_and(|(f, stored)| {
            let found = values.iter().any(|v| compare(f, stored, Op::Eq, v));
            found != *negated
        }),
    }
}

fn sort_order(field: &Field, a: &Value, b: &Value, nulls_last: bool) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => return Ordering::Equal,
        (true, false) => {
            return if nulls_last {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        (false, true) => {
            return if nulls_last {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        _ => {}
    }
    let as_literal = match field.kind {
        FieldType::Boolean => b.as_bool().map(Literal::Bool),
        FieldType::Date => b.as_str().and_then(schema::parse_date).map(Literal::Date),
        FieldType::DateTime => b
            .as_str()
            .and_then(schema::parse_datetime)
            .map(Literal::DateTime),
        kind if kind.is_number() => b.as_f64().map(Literal::Number),
        FieldType::Id | FieldType::Reference => {
            return a
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .cmp(&b.as_str().unwrap_or_default().to_ascii_lowercase());
        }
        _ => b.as_str().map(|s| Literal::String(s.to_owned())),
    };
    as_literal
        .and_then(|lit| order(field, a, &lit))
        .unwrap_or(Ordering::Equal)
}

/// The result of a query: matching rows, and the fields to return (`None` for COUNT()).
#[derive(Debug)]
pub struct Outcome<'r, 's> {
    pub rows: Vec<&'r Map<String, Value>>,
    pub fields: Option<Vec<&'s Field>>,
}

/// Validates `query` against `object` and runs it over `rows` (in creation order).
pub fn execute<'r, 's>(
    query: &Query,
    object: &'s ObjectSchema,
    rows: impl Iterator<Item = &'r Map<String, Value>>,
) -> Result<Outcome<'r, 's>, SoqlError> {
    let fields = match &query.select {
        Select::Count => None,
        Select::Fields(names) => {
            let mut fields: Vec<&Field> = Vec::with_capacity(names.len());
            for name in names {
                let f = field(object, name)?;
                if fields.iter().any(|g| g.name == f.name) {
                    return Err(SoqlError::new(
                        "INVALID_FIELD",
                        format!("duplicate field selected: {}", f.name),
                    ));
                }
                fields.push(f);
            }
            Some(fields)
        }
    };
    if let Some(filter) = &query.filter {
        check(filter, object)?;
    }
    let mut order_fields = Vec::with_capacity(query.order_by.len());
    for item in &query.order_by {
        let f = field(object, &item.field)?;
        if !f.filterable() {
            return Err(SoqlError::new(
                "INVALID_FIELD",
                format!("field '{}' can not be sorted in a query call", f.name),
            ));
        }
        order_fields.push((f, item));
    }
    let mut matched: Vec<&Map<String, Value>> = rows
        .filter(|row| query.filter.as_ref().is_none_or(|c| eval(c, object, row)))
        .collect();
    if !order_fields.is_empty() {
        matched.sort_by(|a, b| {
            order_fields
                .iter()
                .map(|(f, item)| {
                    let (x, y) = (
                        a.get(&f.name).unwrap_or(&Value::Null),
                        b.get(&f.name).unwrap_or(&Value::Null),
                    );
                    let o = sort_order(f, x, y, item.nulls_last);
                    // NULLS FIRST/LAST is absolute, so only reverse non-null comparisons.
                    if item.descending && !x.is_null() && !y.is_null() {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
    }
    let rows = matched
        .into_iter()
        .skip(query.offset.unwrap_or(0))
        .take(query.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(Outcome { rows, fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::Schema;
    use serde_json::json;

    fn rows(values: Value) -> Vec<Map<String, Value>> {
        values
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_object().cloned().expect("object"))
            .collect()
    }

    fn run(q: &str, data: &[Map<String, Value>], object: &str) -> Result<Vec<String>, SoqlError> {
        let schema = Schema::default();
        let object = schema.object(object).expect("object");
        let query = parse(q)?;
        let outcome = execute(&query, object, data.iter())?;
        Ok(outcome
            .rows
            .iter()
            .map(|r| r["Id"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    fn accounts() -> Vec<Map<String, Value>> {
        rows(json!([
            {"Id": "001000000000001AAA", "Name": "Contoso", "BillingPostalCode": "98052", "BillingCity": "Redmond"},
            {"Id": "001000000000002AAA", "Name": "contoso", "BillingPostalCode": "10115", "BillingCity": null},
            {"Id": "001000000000003AAA", "Name": "Fabrikam O'Neil", "BillingPostalCode": "98052"},
        ]))
    }

    fn opportunities() -> Vec<Map<String, Value>> {
        rows(json!([
            {"Id": "006000000000001AAA", "Name": "A", "Amount": 100.0, "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2025-12-31T23:59:59.000+0000", "CloseDate": "2026-03-01"},
            {"Id": "006000000000002AAA", "Name": "B", "Amount": 250.5, "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2026-01-01T00:00:00.000+0000", "CloseDate": "2026-02-01"},
            {"Id": "006000000000003AAA", "Name": "C", "Amount": null, "Sync_with_Partner_Center__c": false,
             "LastModifiedDate": "2026-01-05T10:00:00.000+0000", "CloseDate": "2026-01-01"},
        ]))
    }

    #[test]
    fn parses_the_connector_queries() {
        let q =
            parse("SELECT Id FROM Account WHERE Name = 'Contoso' AND BillingPostalCode = '98052'")
                .expect("parses");
        assert_eq!(q.select, Select::Fields(vec!["Id".into()]));
        assert_eq!(q.object, "Account");
        assert!(matches!(q.filter, Some(Cond::And(ref t)) if t.len() == 2));
        let q = parse("select id, name from opportunity where sync_with_partner_center__c = TRUE and LastModifiedDate >= 2026-01-01T00:00:00Z order by LastModifiedDate desc nulls last limit 5 offset 1")
            .expect("parses");
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.offset, Some(1));
        assert_eq!(
            q.order_by,
            vec![OrderBy {
                field: "LastModifiedDate".into(),
                descending: true,
                nulls_last: true
            }]
        );
    }

    #[test]
    fn account_lookup_by_name_and_postal_code_is_case_insensitive() {
        let data = accounts();
        let found = run(
            "SELECT Id FROM Account WHERE Name = 'CONTOSO' AND BillingPostalCode = '98052'",
            &data,
            "Account",
        );
        assert_eq!(found, Ok(vec!["001000000000001AAA".into()]));
        let escaped = run(
            r"SELECT Id FROM Account WHERE Name = 'Fabrikam O\'Neil'",
            &data,
            "Account",
        );
        assert_eq!(escaped, Ok(vec!["001000000000003AAA".into()]));
        assert_eq!(
            run(
                "SELECT Id FROM Account WHERE Name = 'Contoso' OR Name = 'Nobody'",
                &data,
                "Account"
            )
            .map(|v| v.len()),
            Ok(2)
        );
        assert_eq!(
            run(
                "SELECT Id FROM Account WHERE BillingCity = null",
                &data,
                "Account"
            )
            .map(|v| v.len()),
            Ok(2),
            "absent and null both match = null"
        );
        assert_eq!(
            run(
                "SELECT Id FROM Account WHERE BillingCity != null",
                &data,
                "Account"
            ),
            Ok(vec!["001000000000001AAA".into()])
        );
    }

    #[test]
    fn opportunity_lookup_by_sync_flag_and_modified_date() {
        let data = opportunities();
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = true AND LastModifiedDate >= 2026-01-01T00:00:00Z",
                &data,
                "Opportunity"
            ),
            Ok(vec!["006000000000002AAA".into()])
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity WHERE LastModifiedDate >= 2026-01-01T01:00:00+01:00",
                &data,
                "Opportunity"
            )
            .map(|v| v.len()),
            Ok(2),
            "offsets are honoured"
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity WHERE CloseDate < 2026-02-15 ORDER BY CloseDate",
                &data,
                "Opportunity"
            ),
            Ok(vec![
                "006000000000003AAA".into(),
                "006000000000002AAA".into()
            ])
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity ORDER BY Amount DESC",
                &data,
                "Opportunity"
            ),
            Ok(vec![
                "006000000000002AAA".into(),
                "006000000000001AAA".into(),
                "006000000000003AAA".into()
            ]),
            "DESC puts nulls last by default"
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity ORDER BY Amount",
                &data,
                "Opportunity"
            )
            .map(|v| v[0].clone()),
            Ok("006000000000003AAA".into()),
            "ASC puts nulls first by default"
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity WHERE Id IN ('006000000000001', '006000000000003AAA') LIMIT 1",
                &data,
                "Opportunity"
            ),
            Ok(vec!["006000000000001AAA".into()]),
            "15-character ids match their 18-character form"
        );
        assert_eq!(
            run(
                "SELECT Id FROM Opportunity WHERE NOT (Name = 'A' OR Name LIKE 'b%')",
                &data,
                "Opportunity"
            ),
            Ok(vec!["006000000000003AAA".into()])
        );
    }

    #[test]
    fn like_honours_wildcards_and_escapes() {
        let p = |s: &str| match parse(&format!("SELECT Id FROM Account WHERE Name LIKE {s}")) {
            Ok(Query {
                filter: Some(Cond::Like { pattern, .. }),
                ..
            }) => pattern,
            other => panic!("{other:?}"),
        };
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        assert!(like(&p("'Con%'"), &chars("contoso")));
        assert!(like(&p("'%t_so'"), &chars("Contoso")));
        assert!(!like(&p("'Con'"), &chars("Contoso")));
        assert!(like(&p(r"'100\%'"), &chars("100%")));
        assert!(!like(&p(r"'100\%'"), &chars("1000")));
    }

    #[test]
    fn syntax_errors_are_malformed_query() {
        for q in [
            "SELECT Id FRM Account",
            "SELECT FROM Account",
            "SELECT Id FROM Account WHERE",
            "SELECT Id FROM Account WHERE Name = 'x' AND Name = 'y' OR Name = 'z'",
            "SELECT Id FROM Account WHERE Name = 'unterminated",
            "SELECT Id FROM Account WHERE Name = 'bad \\q escape'",
            "SELECT Id FROM Account LIMIT ten",
            "SELECT Id FROM Account WHERE (Name = 'x'",
            "SELECT Id FROM Opportunity WHERE LastModifiedDate > 2026-01-01T00:00:00",
            "DELETE FROM Account",
        ] {
            assert_eq!(parse(q).map_err(|e| e.code), Err("MALFORMED_QUERY"), "{q}");
        }
        let error = parse("SELECT Id FRM Account").expect_err("malformed");
        assert_eq!(
            error.message,
            "\nSELECT Id FRM Account\n          ^\nERROR at Row:1:Column:11\nunexpected token: FRM"
        );
    }

    #[test]
    fn semantic_errors_use_the_service_error_codes() {
        let data = opportunities();
        let code = |q: &str| run(q, &data, "Opportunity").map_err(|e| e.code);
        assert_eq!(
            code("SELECT Nope__c FROM Opportunity"),
            Err("INVALID_FIELD")
        );
        assert_eq!(
            code("SELECT Id FROM Opportunity WHERE LastModifiedDate >= '2026-01-01T00:00:00Z'"),
            Err("INVALID_QUERY_FILTER_OPERATOR"),
            "a quoted date-time is a type error"
        );
        assert_eq!(
            code("SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = 'true'"),
            Err("INVALID_QUERY_FILTER_OPERATOR")
        );
        assert_eq!(
            code("SELECT Id FROM Opportunity WHERE Amount = '5'"),
            Err("INVALID_QUERY_FILTER_OPERATOR")
        );
        assert_eq!(
            code("SELECT Id FROM Opportunity WHERE Id = 'nope'"),
            Err("INVALID_QUERY_FILTER_OPERATOR")
        );
        assert_eq!(
            code("SELECT Id FROM Opportunity WHERE Audit__c = 'x'"),
            Err("INVALID_FIELD"),
            "long text areas cannot be filtered"
        );
        assert_eq!(code("SELECT Id, id FROM Opportunity"), Err("INVALID_FIELD"));
    }

    #[test]
    fn count_returns_no_fields() {
        let schema = Schema::default();
        let object = schema.object("Opportunity").expect("object");
        let data = opportunities();
        let query = parse("SELECT COUNT() FROM Opportunity WHERE Amount > 0").expect("parses");
        let outcome = execute(&query, object, data.iter()).expect("runs");
        assert!(outcome.fields.is_none());
        assert_eq!(outcome.rows.len(), 2);
    }
}
