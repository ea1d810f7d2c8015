//! The SOQL the connector sends (and the sandbox's tests use), parsed and evaluated against
//! the in-memory records. No maintained Rust crate parses SOQL, so this is a small
//! recursive-descent parser of just these shapes:
//!
//! ```text
//! SELECT f1, f2 | COUNT() FROM Object
//!   [WHERE cond]   cond := term (AND term)* | term (OR term)*
//!                  term := field op literal | field LIKE 'pattern' | ( cond )
//!                  op   := = != <> < <= > >=
//!   [ORDER BY f [ASC|DESC] (, f [ASC|DESC])*] [LIMIT n]
//! ```
//!
//! The adapter sends `SELECT Id FROM Account|Contact WHERE … = '…' [AND … = '…'] ORDER BY
//! CreatedDate ASC LIMIT 1` and, per listing page, `SELECT Id, Name, … FROM Opportunity WHERE
//! <sync> = true AND (LastModifiedDate > <t> OR (LastModifiedDate = <t> AND Id > '<id>'))
//! ORDER BY LastModifiedDate ASC, Id ASC LIMIT <n>` (or `LastModifiedDate >= <t>`).
//!
//! Literals: `'string'` (escapes `\' \" \\ \n \r \t`; `%` and `_` are wildcards in LIKE),
//! numbers, `true`/`false` and date-times `2026-01-01T00:00:00Z` / `…+01:00` (unquoted).
//! Keywords and field names are case-insensitive; text comparisons are case-insensitive like
//! Salesforce's. ORDER BY puts nulls first ascending and last descending, as Salesforce does.
//!
//! Syntax errors are `MALFORMED_QUERY` with Salesforce's caret layout; an unknown object
//! is `INVALID_TYPE`, an unknown or unfilterable field `INVALID_FIELD`, and a literal of the
//! wrong type (e.g. a quoted date-time) `INVALID_QUERY_FILTER_OPERATOR` — as the real
//! service answers, so connector bugs surface here rather than in production. AND and OR
//! mixed without parentheses are rejected, as in real SOQL. Anything else real SOQL has is a
//! syntax error here: NOT, IN, OFFSET, NULLS FIRST/LAST, `null` and
//! date literals, sub-queries, aggregates other than `COUNT()`; and there is no
//! `nextRecordsUrl` paging (all rows are returned with `done: true`).
//!
//! Child-to-parent relationship paths are selectable (docs/salesforce.md#related-records-in-one-query):
//! `SELECT Id, Account.Name, Contact.Email FROM Opportunity WHERE Id = '…'`. Each segment but
//! the last is the relationship name of a reference field (`AccountId` → `Account`, a custom
//! `Partner__c` → `Partner__r`), any case; the answer nests the parent's fields under the
//! relationship name as declared, with the parent's `attributes`, or `null` when the reference
//! is unset. An unknown relationship is `INVALID_FIELD` "Didn't understand relationship 'x' in
//! field path…", an unknown field of a parent `INVALID_FIELD` "No such column 'x' on entity
//! 'Account'…", as the service answers. Relationship paths in WHERE and ORDER BY are not
//! implemented (`INVALID_FIELD`); the five-level depth limit is not checked.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::ids;
use super::schema::{self, Field, FieldType, ObjectSchema, Schema};

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Select,
    pub object: String,
    /// The terms of the WHERE clause, all of which must hold.
    pub filter: Vec<Cond>,
    /// The ORDER BY fields, first one first.
    pub order_by: Vec<OrderBy>,
    pub limit: Option<usize>,
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
}

/// One term of the WHERE clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Compare {
        field: String,
        op: Op,
        value: Literal,
    },
    Like {
        field: String,
        pattern: Vec<LikePart>,
    },
    /// A parenthesised group whose terms must all hold.
    All(Vec<Cond>),
    /// Terms joined by OR: one of them must hold.
    Any(Vec<Cond>),
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
    Bool(bool),
    Number(f64),
    String(String),
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
    Str(String),
    /// Number or date-time literal, as written.
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

/// A string literal from the opening quote at `start`: its text and the index after it.
fn string_literal(query: &str, chars: &[char], start: usize) -> Result<(String, usize), SoqlError> {
    let unterminated = || malformed(query, start, "unterminated string literal");
    let mut value = String::new();
    let mut i = start + 1;
    loop {
        let c = *chars.get(i).ok_or_else(unterminated)?;
        i += 1;
        match c {
            '\'' => return Ok((value, i)),
            '\\' => {
                let e = *chars.get(i).ok_or_else(unterminated)?;
                i += 1;
                value.push(match e {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    '\'' | '"' | '\\' => e,
                    _ => {
                        return Err(malformed(
                            query,
                            start,
                            &format!("Invalid string literal: Illegal escape sequence \\{e}"),
                        ));
                    }
                });
            }
            c => value.push(c),
        }
    }
}

fn tokenize(query: &str) -> Result<Vec<Spanned>, SoqlError> {
    let chars: Vec<char> = query.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ',' => (Tok::Comma, 1),
            '(' => (Tok::Open, 1),
            ')' => (Tok::Close, 1),
            '=' => (Tok::Op(Op::Eq), 1),
            '!' if next == Some('=') => (Tok::Op(Op::Ne), 2),
            '<' | '>' => match (c, next) {
                ('<', Some('=')) => (Tok::Op(Op::Le), 2),
                ('<', Some('>')) => (Tok::Op(Op::Ne), 2),
                ('<', _) => (Tok::Op(Op::Lt), 1),
                ('>', Some('=')) => (Tok::Op(Op::Ge), 2),
                _ => (Tok::Op(Op::Gt), 1),
            },
            '\'' => {
                let (value, end) = string_literal(query, &chars, start)?;
                (Tok::Str(value), end - start)
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+') && next.is_some_and(|n| n.is_ascii_digit())) =>
            {
                let len = 1 + chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '+' | '-'))
                    .count();
                (Tok::Num(chars[i..i + len].iter().collect()), len)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
                    .count();
                (Tok::Word(chars[i..i + len].iter().collect()), len)
            }
            _ => {
                return Err(malformed(query, start, &format!("unexpected token: '{c}'")));
            }
        };
        i += len;
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

    /// The current token, taken when `f` accepts it.
    fn take<T>(&mut self, f: impl FnOnce(&Tok) -> Option<T>) -> Result<T, SoqlError> {
        match self.peek().and_then(|t| f(&t.tok)) {
            Some(value) => {
                self.at += 1;
                Ok(value)
            }
            None => Err(self.unexpected()),
        }
    }

    /// A field or object name (not a keyword).
    fn name(&mut self) -> Result<String, SoqlError> {
        self.take(|tok| match tok {
            Tok::Word(w) if !is_keyword(w) => Some(w.clone()),
            _ => None,
        })
    }

    fn query(&mut self) -> Result<Query, SoqlError> {
        self.expect_keyword("SELECT")?;
        let select = if self.peek_keyword("COUNT")
            && self.tokens.get(self.at + 1).map(|t| &t.tok) == Some(&Tok::Open)
        {
            self.at += 2;
            self.take(|tok| (tok == &Tok::Close).then_some(()))?;
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
            match self.condition()? {
                Cond::All(terms) => terms,
                other => vec![other],
            }
        } else {
            Vec::new()
        };
        let mut order_by = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.name()?;
                let descending = self.eat_keyword("DESC");
                if !descending {
                    self.eat_keyword("ASC");
                }
                order_by.push(OrderBy { field, descending });
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            let limit = self.take(|tok| match tok {
                Tok::Num(n) => n.parse().ok(),
                _ => None,
            })?;
            Some(limit)
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
        })
    }

    /// Terms joined by AND (an [`Cond::All`]) or by OR (an [`Cond::Any`]); a mix without
    /// parentheses is a syntax error, as in real SOQL.
    fn condition(&mut self) -> Result<Cond, SoqlError> {
        let mut terms = vec![self.term()?];
        let joiner = if self.peek_keyword("AND") {
            "AND"
        } else if self.peek_keyword("OR") {
            "OR"
        } else {
            return Ok(Cond::All(terms));
        };
        while self.eat_keyword(joiner) {
            terms.push(self.term()?);
        }
        if self.peek_keyword("AND") || self.peek_keyword("OR") {
            return Err(self.unexpected());
        }
        Ok(if joiner == "AND" {
            Cond::All(terms)
        } else {
            Cond::Any(terms)
        })
    }

    fn term(&mut self) -> Result<Cond, SoqlError> {
        if self.eat(&Tok::Open) {
            let inner = self.condition()?;
            self.take(|tok| (tok == &Tok::Close).then_some(()))?;
            return Ok(inner);
        }
        let field = self.name()?;
        if self.eat_keyword("LIKE") {
            let pattern = self.take(|tok| match tok {
                Tok::Str(text) => Some(
                    text.chars()
                        .map(|c| match c {
                            '%' => LikePart::Any,
                            '_' => LikePart::One,
                            c => LikePart::Char(c),
                        })
                        .collect(),
                ),
                _ => None,
            })?;
            return Ok(Cond::Like { field, pattern });
        }
        let op = self.take(|tok| match tok {
            Tok::Op(op) => Some(*op),
            _ => None,
        })?;
        let value = self.literal()?;
        Ok(Cond::Compare { field, op, value })
    }

    fn literal(&mut self) -> Result<Literal, SoqlError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.unexpected());
        };
        let literal = match &token.tok {
            Tok::Str(text) => Literal::String(text.clone()),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            Tok::Num(n) if n.contains(['T', 't']) => {
                // SOQL date-times carry an explicit zone: `Z` or `±hh:mm`.
                let zoned = n.ends_with(['Z', 'z'])
                    || n.len() > 6 && n[n.len() - 6..].starts_with(['+', '-']);
                schema::parse_datetime(n)
                    .filter(|_| zoned)
                    .map(Literal::DateTime)
                    .ok_or_else(|| {
                        malformed(self.query, token.pos, &format!("unexpected token: {n}"))
                    })?
            }
            Tok::Num(n) => n
                .parse::<f64>()
                .map(Literal::Number)
                .map_err(|_| self.unexpected())?,
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

/// A field that can be filtered and sorted on; `use_` says how it was used when it cannot.
fn filterable<'s>(
    object: &'s ObjectSchema,
    name: &str,
    use_: &str,
) -> Result<&'s Field, SoqlError> {
    let f = field(object, name)?;
    if f.filterable() {
        Ok(f)
    } else {
        Err(SoqlError::new(
            "INVALID_FIELD",
            format!("field '{}' can not be {use_}", f.name),
        ))
    }
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

/// The field of a WHERE term exists, can be filtered, and takes the term's literal or LIKE.
fn check(cond: &Cond, object: &ObjectSchema) -> Result<(), SoqlError> {
    match cond {
        Cond::All(terms) | Cond::Any(terms) => terms.iter().try_for_each(|c| check(c, object)),
        Cond::Compare { field, op, value } => {
            let f = filterable(object, field, "filtered in query call")?;
            let fits = match (f.kind, value) {
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
                (FieldType::DateTime, Literal::DateTime(_)) => true,
                _ => false,
            };
            if fits { Ok(()) } else { Err(wrong_type(f)) }
        }
        Cond::Like { field, .. } => {
            let f = filterable(object, field, "filtered in query call")?;
            if f.kind.is_text() {
                Ok(())
            } else {
                Err(SoqlError::new(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    format!("invalid operator on {} field", f.kind.describe_name()),
                ))
            }
        }
    }
}

/// A stored value (or a literal) of a field's type, ordered as Salesforce orders it: text
/// case-insensitively.
#[derive(Debug, PartialEq, PartialOrd)]
enum Key {
    Bool(bool),
    Number(f64),
    Text(String),
    DateTime(DateTime<Utc>),
}

impl Key {
    /// The key of a stored value (`None`: null, absent or unreadable).
    fn of(field: &Field, value: Option<&Value>) -> Option<Self> {
        let value = value?;
        match field.kind {
            FieldType::Boolean => value.as_bool().map(Self::Bool),
            FieldType::DateTime => value
                .as_str()
                .and_then(schema::parse_datetime)
                .map(Self::DateTime),
            kind if kind.is_number() => value.as_f64().map(Self::Number),
            _ => value.as_str().map(|s| Self::Text(s.to_lowercase())),
        }
    }

    fn literal(literal: &Literal) -> Self {
        match literal {
            Literal::Bool(b) => Self::Bool(*b),
            Literal::Number(n) => Self::Number(*n),
            Literal::String(s) => Self::Text(s.to_lowercase()),
            Literal::DateTime(t) => Self::DateTime(*t),
        }
    }
}

fn compare(field: &Field, stored: Option<&Value>, op: Op, literal: &Literal) -> bool {
    // An id may be written with 15 or 18 characters: both name the same record.
    let normalized;
    let literal = match literal {
        Literal::String(text) if matches!(field.kind, FieldType::Id | FieldType::Reference) => {
            normalized = Literal::String(ids::normalize(text).unwrap_or_else(|| text.clone()));
            &normalized
        }
        other => other,
    };
    let stored_id;
    let stored = match stored.and_then(Value::as_str) {
        Some(text) if matches!(field.kind, FieldType::Id | FieldType::Reference) => {
            stored_id = ids::normalize(text).map(Value::String);
            stored_id.as_ref().or(stored)
        }
        _ => stored,
    };
    // A null (or incomparable) value is only ever "not equal".
    let Some(ordering) = Key::of(field, stored).and_then(|k| k.partial_cmp(&Key::literal(literal)))
    else {
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
    let value = |name: &str| -> Option<(&Field, Option<&Value>)> {
        let f = object.field(name)?;
        Some((f, row.get(&f.name).filter(|v| !v.is_null())))
    };
    match cond {
        Cond::All(terms) => terms.iter().all(|c| eval(c, object, row)),
        Cond::Any(terms) => terms.iter().any(|c| eval(c, object, row)),
        Cond::Compare {
            field,
            op,
            value: literal,
        } => value(field).is_some_and(|(f, stored)| compare(f, stored, *op, literal)),
        Cond::Like { field, pattern } => value(field).is_some_and(|(_, stored)| {
            stored
                .and_then(Value::as_str)
                .is_some_and(|s| like(pattern, &s.chars().collect::<Vec<_>>()))
        }),
    }
}

/// The order of two rows by `field`: nulls first ascending, last descending.
fn sort_order(
    field: &Field,
    descending: bool,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
) -> Ordering {
    let key = |row: &Map<String, Value>| Key::of(field, row.get(&field.name));
    let ascending = match (key(a), key(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    };
    if descending {
        ascending.reverse()
    } else {
        ascending
    }
}

/// One step of a child-to-parent path: the relationship name as declared, the reference
/// field behind it and the parent object.
#[derive(Debug, Clone)]
pub struct Hop<'s> {
    pub relationship: String,
    pub reference: &'s Field,
    pub parent: &'s ObjectSchema,
}

/// A selected field: a field of the queried object (`path` empty) or of a parent.
#[derive(Debug, Clone)]
pub struct Selected<'s> {
    pub path: Vec<Hop<'s>>,
    pub field: &'s Field,
}

impl Selected<'_> {
    /// `Account.Name`, as declared.
    fn text(&self) -> String {
        self.path
            .iter()
            .map(|hop| hop.relationship.as_str())
            .chain([self.field.name.as_str()])
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// The result of a query: matching rows, and the fields to return (`None` for COUNT()).
#[derive(Debug)]
pub struct Outcome<'r, 's> {
    pub rows: Vec<&'r Map<String, Value>>,
    pub fields: Option<Vec<Selected<'s>>>,
}

fn unknown_relationship(name: &str) -> SoqlError {
    SoqlError::new(
        "INVALID_FIELD",
        format!(
            "Didn't understand relationship '{name}' in field path. If you are attempting to use \
             a custom relationship, be sure to append the '__r' after the custom relationship \
             name. Please reference your WSDL or the describe call for the appropriate names."
        ),
    )
}

/// A selected field or child-to-parent path (`Account.Name`) of `object`.
fn selected<'s>(
    schema: &'s Schema,
    object: &'s ObjectSchema,
    name: &str,
) -> Result<Selected<'s>, SoqlError> {
    let segments: Vec<&str> = name.split('.').collect();
    let Some((last, relationships)) = segments.split_last() else {
        return Err(no_such_column(object, name));
    };
    let mut at = object;
    let mut path = Vec::with_capacity(relationships.len());
    for relationship in relationships {
        let hop = at
            .fields
            .iter()
            .find_map(|f| {
                let declared = f.relationship_name()?;
                if !declared.eq_ignore_ascii_case(relationship) {
                    return None;
                }
                let parent = schema.object(f.reference_to?)?;
                Some(Hop {
                    relationship: declared,
                    reference: f,
                    parent,
                })
            })
            .ok_or_else(|| unknown_relationship(relationship))?;
        at = hop.parent;
        path.push(hop);
    }
    Ok(Selected {
        path,
        field: field(at, last)?,
    })
}

/// Validates `query` against `object` (and, for relationship paths, the objects of `schema`)
/// and runs it over `rows` (in creation order).
pub fn execute<'r, 's>(
    query: &Query,
    schema: &'s Schema,
    object: &'s ObjectSchema,
    rows: impl Iterator<Item = &'r Map<String, Value>>,
) -> Result<Outcome<'r, 's>, SoqlError> {
    let fields = match &query.select {
        Select::Count => None,
        Select::Fields(names) => {
            let mut fields: Vec<Selected<'s>> = Vec::with_capacity(names.len());
            for name in names {
                let f = selected(schema, object, name)?;
                let text = f.text();
                if fields.iter().any(|g| g.text().eq_ignore_ascii_case(&text)) {
                    return Err(SoqlError::new(
                        "INVALID_FIELD",
                        format!("duplicate field selected: {text}"),
                    ));
                }
                fields.push(f);
            }
            Some(fields)
        }
    };
    query
        .filter
        .iter()
        .try_for_each(|cond| check(cond, object))?;
    let order_by = query
        .order_by
        .iter()
        .map(|item| {
            Ok::<_, SoqlError>((
                filterable(object, &item.field, "sorted in a query call")?,
                item.descending,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut matched: Vec<&Map<String, Value>> = rows
        .filter(|row| query.filter.iter().all(|c| eval(c, object, row)))
        .collect();
    matched.sort_by(|a, b| {
        order_by
            .iter()
            .map(|(field, descending)| sort_order(field, *descending, a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    matched.truncate(query.limit.unwrap_or(usize::MAX));
    Ok(Outcome {
        rows: matched,
        fields,
    })
}

/// Finds a parent record: `(object, id)` → its fields.
pub type Parents<'p, 'r> = &'p dyn Fn(&str, &str) -> Option<&'r Map<String, Value>>;

/// The `attributes` of a record in an answer.
fn attributes(object: &ObjectSchema, version: &str, row: &Map<String, Value>) -> Value {
    let id = row.get("Id").and_then(Value::as_str).unwrap_or_default();
    serde_json::json!({
        "type": object.name,
        "url": format!("/services/data/v{version}/sobjects/{}/{id}", object.name),
    })
}

/// Puts the value of `path` + `field` of `row` into `out`, nesting parents under their
/// relationship names (`null` for an unset or missing parent).
fn put<'r>(
    out: &mut Map<String, Value>,
    row: &Map<String, Value>,
    path: &[Hop<'_>],
    field: &Field,
    version: &str,
    parent: Parents<'_, 'r>,
) {
    let Some((hop, rest)) = path.split_first() else {
        out.insert(
            field.name.clone(),
            row.get(&field.name).cloned().unwrap_or(Value::Null),
        );
        return;
    };
    let related = row
        .get(&hop.reference.name)
        .and_then(Value::as_str)
        .and_then(|id| {
            parent(
                hop.parent.name,
                &ids::normalize(id).unwrap_or_else(|| id.to_owned()),
            )
        });
    let Some(related) = related else {
        out.entry(hop.relationship.clone()).or_insert(Value::Null);
        return;
    };
    let entry = out.entry(hop.relationship.clone()).or_insert_with(|| {
        let mut record = Map::new();
        record.insert(
            "attributes".into(),
            attributes(hop.parent, version, related),
        );
        Value::Object(record)
    });
    if let Value::Object(inner) = entry {
        put(inner, related, rest, field, version, parent);
    }
}

/// One record of a query answer: `attributes`, then the selected fields in order, parents'
/// fields nested under the relationship name. `parent(object, id)` finds a parent record.
pub fn record<'r>(
    object: &ObjectSchema,
    version: &str,
    row: &Map<String, Value>,
    fields: &[Selected<'_>],
    parent: Parents<'_, 'r>,
) -> Value {
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(object, version, row));
    for selected in fields {
        put(
            &mut out,
            row,
            &selected.path,
            selected.field,
            version,
            parent,
        );
    }
    Value::Object(out)
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
        let outcome = execute(&query, &schema, object, data.iter())?;
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
        assert_eq!(q.filter.len(), 2);
        let q = parse("select id, name from opportunity where sync_with_partner_center__c = TRUE and LastModifiedDate >= 2026-01-01T00:00:00Z order by LastModifiedDate desc limit 5")
            .expect("parses");
        assert_eq!(q.limit, Some(5));
        assert_eq!(
            q.order_by,
            vec![OrderBy {
                field: "LastModifiedDate".into(),
                descending: true,
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
                "SELECT Id FROM Account WHERE BillingCity != 'Redmond'",
                &data,
                "Account"
            )
            .map(|v| v.len()),
            Ok(2),
            "absent and null are not equal to a value"
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
                "SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = true ORDER BY LastModifiedDate DESC LIMIT 1",
                &data,
                "Opportunity"
            ),
            Ok(vec!["006000000000002AAA".into()])
        );
    }

    #[test]
    fn keyset_pages_use_or_groups_and_a_second_sort_field() {
        let data = rows(json!([
            {"Id": "006000000000003AAA", "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2026-01-01T00:00:00.000+0000"},
            {"Id": "006000000000001AAA", "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2026-01-01T00:00:00.000+0000"},
            {"Id": "006000000000002AAA", "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2026-01-01T00:00:00.000+0000"},
            {"Id": "006000000000004AAA", "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2025-12-31T00:00:00.000+0000"},
            {"Id": "006000000000005AAA", "Sync_with_Partner_Center__c": true,
             "LastModifiedDate": "2026-01-02T00:00:00.000+0000"},
        ]));
        let page = |after: &str, limit: usize| {
            run(
                &format!(
                    "SELECT Id FROM Opportunity WHERE Sync_with_Partner_Center__c = true AND \
                     (LastModifiedDate > 2026-01-01T00:00:00Z OR (LastModifiedDate = \
                     2026-01-01T00:00:00Z AND Id > '{after}')) ORDER BY LastModifiedDate ASC, \
                     Id ASC LIMIT {limit}"
                ),
                &data,
                "Opportunity",
            )
        };
        assert_eq!(
            page("006000000000001AAA", 2),
            Ok(vec![
                "006000000000002AAA".into(),
                "006000000000003AAA".into()
            ])
        );
        assert_eq!(
            page("006000000000003AAA", 2),
            Ok(vec!["006000000000005AAA".into()])
        );
    }

    #[test]
    fn like_honours_wildcards() {
        let p = |s: &str| match parse(&format!("SELECT Id FROM Account WHERE Name LIKE {s}")) {
            Ok(Query { filter, .. }) => match filter.as_slice() {
                [Cond::Like { pattern, .. }] => pattern.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        assert!(like(&p("'Con%'"), &chars("contoso")));
        assert!(like(&p("'%t_so'"), &chars("Contoso")));
        assert!(!like(&p("'Con'"), &chars("Contoso")));
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
            "SELECT Id FROM Account WHERE (Name = 'x' OR Name = 'y' AND Name = 'z')",
            "SELECT Id FROM Account ORDER BY Name,",
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
            code("SELECT Id FROM Opportunity WHERE Audit__c = 'x'"),
            Err("INVALID_FIELD"),
            "long text areas cannot be filtered"
        );
        assert_eq!(code("SELECT Id, id FROM Opportunity"), Err("INVALID_FIELD"));
    }

    #[test]
    fn parent_fields_nest_under_the_relationship_name_and_a_missing_parent_is_null() {
        let schema = Schema::default();
        let object = schema.object("Opportunity").expect("object");
        let accounts = accounts();
        let data = rows(json!([
            {"Id": "006000000000001AAA", "Name": "A", "AccountId": "001000000000001AAA"},
            {"Id": "006000000000002AAA", "Name": "B", "AccountId": null},
        ]));
        let query = parse(
            "SELECT Id, account.Name, Account.BillingPostalCode, Contact.Email FROM Opportunity",
        )
        .expect("parses");
        let outcome = execute(&query, &schema, object, data.iter()).expect("runs");
        let fields = outcome.fields.expect("fields");
        let parent = |object: &str, id: &str| {
            (object == "Account")
                .then(|| accounts.iter().find(|a| a["Id"] == id))
                .flatten()
        };
        let records: Vec<Value> = outcome
            .rows
            .iter()
            .map(|row| record(object, "62.0", row, &fields, &parent))
            .collect();
        assert_eq!(
            records[0],
            json!({
                "attributes": {"type": "Opportunity", "url": "/services/data/v62.0/sobjects/Opportunity/006000000000001AAA"},
                "Id": "006000000000001AAA",
                "Account": {
                    "attributes": {"type": "Account", "url": "/services/data/v62.0/sobjects/Account/001000000000001AAA"},
                    "Name": "Contoso",
                    "BillingPostalCode": "98052",
                },
                "Contact": null,
            })
        );
        assert_eq!(records[1]["Account"], Value::Null);
    }

    #[test]
    fn unknown_relationships_and_parent_fields_are_invalid_fields() {
        let data = opportunities();
        let error = |q: &str| run(q, &data, "Opportunity").expect_err(q);
        let relationship = error("SELECT Id, Acount.Name FROM Opportunity");
        assert_eq!(relationship.code, "INVALID_FIELD");
        assert!(
            relationship
                .message
                .starts_with("Didn't understand relationship 'Acount' in field path."),
            "{}",
            relationship.message
        );
        let column = error("SELECT Account.Nme FROM Opportunity");
        assert_eq!(column.code, "INVALID_FIELD");
        assert!(
            column
                .message
                .starts_with("No such column 'Nme' on entity 'Account'."),
            "{}",
            column.message
        );
        assert_eq!(
            error("SELECT AccountId.Name FROM Opportunity").code,
            "INVALID_FIELD",
            "the reference field is not the relationship"
        );
        assert_eq!(
            error("SELECT Account.Name, account.name FROM Opportunity").code,
            "INVALID_FIELD",
            "duplicate field"
        );
        assert!(
            run(
                "SELECT Id, Owner.Name, Account.Owner.Email FROM Opportunity",
                &data,
                "Opportunity"
            )
            .is_ok(),
            "standard references (and paths of them) are relationships"
        );
    }

    #[test]
    fn ids_match_in_their_15_and_18_character_forms() {
        let id18 = ids::with_checksum("006000000000001");
        let data = rows(json!([{ "Id": id18, "Name": "A" }]));
        for literal in ["006000000000001", id18.as_str()] {
            assert_eq!(
                run(
                    &format!("SELECT Id FROM Opportunity WHERE Id = '{literal}'"),
                    &data,
                    "Opportunity"
                ),
                Ok(vec![id18.clone()]),
                "{literal}"
            );
        }
    }

    #[test]
    fn count_returns_no_fields() {
        let schema = Schema::default();
        let object = schema.object("Opportunity").expect("object");
        let data = opportunities();
        let query = parse("SELECT COUNT() FROM Opportunity WHERE Amount > 0").expect("parses");
        let outcome = execute(&query, &schema, object, data.iter()).expect("runs");
        assert!(outcome.fields.is_none());
        assert_eq!(outcome.rows.len(), 2);
    }
}
