//! `POST /services/data/vNN.N/composite`: several REST requests in one API call
//! (docs/salesforce.md#composite-requests).
//!
//! - Body: `{"allOrNone": bool, "collateSubrequests"?: bool, "compositeRequest": [{"method",
//!   "url", "referenceId", "body"?, "httpHeaders"?}]}`; at most [`MAX_SUBREQUESTS`]
//!   subrequests, each `referenceId` unique (else 400, nothing run).
//! - Each subrequest runs, in order, through the same routes and handlers as the plain request,
//!   with the caller's `Authorization`. It is not counted on its own: the whole request is one
//!   API call.
//! - `@{referenceId.path}` in a subrequest's `url` or `body` is replaced by a value of an
//!   earlier subrequest's answer body: `path` is dotted members and `[n]` indexes
//!   (`@{newAccount.id}`, `@{found.records[0].Id}`). A string that is one whole reference
//!   takes the value as it is; a reference inside text is replaced by its text. A reference
//!   that names no value (an unknown or later subrequest, a failed one, a query without that
//!   record) fails that subrequest with 400 `PROCESSING_HALTED`.
//! - A subrequest fails when it answers 300 or 400 and above. With `allOrNone: true` the first
//!   failure rolls back every change the request made (the records are put back as they were),
//!   the subrequests before it answer 400 `PROCESSING_HALTED` ("rolled back") and those after
//!   it are not run (400 `PROCESSING_HALTED`). With `allOrNone: false` the others stand.
//! - The answer is 200 `{"compositeResponse": [{"body", "httpHeaders", "httpStatusCode",
//!   "referenceId"}]}`, one entry per subrequest in order (`body` `null` for no body; the
//!   `Location` header of creates).
//! - Outbound Messages of the Opportunities written go out once the request is over, none for
//!   what was rolled back.
//!
//! UNKNOWN: the exact error texts Salesforce gives for too many subrequests, duplicate
//! reference ids and unresolvable references; the codes and statuses here follow the
//! documented shape (an error array of `{"message","errorCode"}`).

use std::collections::{BTreeSet, HashMap};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use super::ApiError;
use super::rest::{Caller, Subrequest, send_notifications};
use crate::state::AppState;

/// At most this many subrequests in one request.
pub const MAX_SUBREQUESTS: usize = 25;

/// The code of a subrequest halted by another's failure or by a reference without a value.
pub const PROCESSING_HALTED: &str = "PROCESSING_HALTED";

/// One subrequest as sent.
#[derive(Debug, Clone)]
struct Sub {
    method: Method,
    url: String,
    reference_id: String,
    body: Option<Value>,
    headers: Map<String, Value>,
}

/// One subrequest's answer.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    headers: Map<String, Value>,
    body: Value,
}

impl Answer {
    fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            headers: Map::new(),
            body: json!([{"errorCode": code, "message": message.into()}]),
        }
    }

    fn halted(message: &str) -> Self {
        Self::error(StatusCode::BAD_REQUEST, PROCESSING_HALTED, message)
    }

    /// 300 (several records for an External ID) and 4xx/5xx fail a subrequest.
    fn failed(&self) -> bool {
        self.status == StatusCode::MULTIPLE_CHOICES
            || self.status.is_client_error()
            || self.status.is_server_error()
    }
}

const ROLLED_BACK: &str =
    "The transaction was rolled back since another operation in the same transaction failed.";

fn bad_input(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_API_INPUT", message)
}

fn json_error(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("JSON_PARSER_ERROR", message)
}

/// Reads the request body: the flag and the subrequests.
fn parse(body: &[u8]) -> Result<(bool, Vec<Sub>), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| json_error(format!("Unexpected character in request body: {e}")))?;
    let Value::Object(object) = value else {
        return Err(json_error("The request body must be a JSON object"));
    };
    let all_or_none = match object.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(json_error("allOrNone must be a boolean")),
    };
    match object.get("collateSubrequests") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(_) => return Err(json_error("collateSubrequests must be a boolean")),
    }
    let Some(Value::Array(items)) = object.get("compositeRequest") else {
        return Err(json_error(
            "compositeRequest must be an array of subrequests",
        ));
    };
    if items.is_empty() {
        return Err(bad_input(
            "compositeRequest must hold at least one subrequest",
        ));
    }
    if items.len() > MAX_SUBREQUESTS {
        return Err(ApiError::bad_request(
            "LIMIT_EXCEEDED",
            format!(
                "A composite request can hold at most {MAX_SUBREQUESTS} subrequests; this one \
                 has {}",
                items.len()
            ),
        ));
    }
    let mut subs = Vec::with_capacity(items.len());
    let mut seen = BTreeSet::new();
    for item in items {
        let text = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| json_error(format!("Every subrequest needs a string {name}")))
        };
        let method = Method::from_bytes(text("method")?.to_ascii_uppercase().as_bytes())
            .map_err(|_| json_error("Unknown subrequest method"))?;
        let reference_id = text("referenceId")?;
        let valid_reference = !reference_id.is_empty()
            && reference_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && reference_id.starts_with(|c: char| c.is_ascii_alphabetic());
        if !valid_reference {
            return Err(bad_input(format!(
                "Invalid referenceId '{reference_id}': letters, digits and underscores, \
                 starting with a letter"
            )));
        }
        if !seen.insert(reference_id.to_ascii_lowercase()) {
            return Err(bad_input(format!(
                "Duplicate referenceId provided in the request: {reference_id}"
            )));
        }
        let headers = match item.get("httpHeaders") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(headers)) => headers.clone(),
            Some(_) => return Err(json_error("httpHeaders must be an object")),
        };
        subs.push(Sub {
            method,
            url: text("url")?,
            reference_id,
            body: item.get("body").filter(|body| !body.is_null()).cloned(),
            headers,
        });
    }
    Ok((all_or_none, subs))
}

/// One step of a reference path: a member or an index.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Member(&'a str),
    Index(usize),
}

/// `refId.a.b[0].C` → (`refId`, steps); `None` when malformed.
fn reference_path(text: &str) -> Option<(&str, Vec<Step<'_>>)> {
    let end = text.find(['.', '[']).unwrap_or(text.len());
    let (name, mut rest) = text.split_at(end);
    if name.is_empty() {
        return None;
    }
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let (member, tail) = after.split_at(end);
            if member.is_empty() {
                return None;
            }
            steps.push(Step::Member(member));
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (index, tail) = after.split_once(']')?;
            steps.push(Step::Index(index.trim().parse().ok()?));
            rest = tail;
        } else {
            return None;
        }
    }
    Some((name, steps))
}

/// The value `@{text}` names among the answers so far.
fn resolve<'a>(text: &str, answers: &'a HashMap<String, Answer>) -> Option<&'a Value> {
    let (name, steps) = reference_path(text)?;
    let answer = answers.get(name)?;
    if answer.failed() {
        return None;
    }
    steps
        .iter()
        .try_fold(&answer.body, |value, step| match step {
            Step::Member(member) => value.get(*member),
            Step::Index(index) => value.get(*index),
        })
        .filter(|value| !value.is_null())
}

/// A reference without a value.
#[derive(Debug)]
struct Unresolved(String);

/// The text form of a value put inside a string.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `text` with every `@{…}` replaced by its value's text.
fn substitute_text(text: &str, answers: &HashMap<String, Answer>) -> Result<String, Unresolved> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        let Some(length) = rest[start + 2..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + 2 + length];
        let value = resolve(inner, answers).ok_or_else(|| Unresolved(inner.to_owned()))?;
        out.push_str(&rest[..start]);
        out.push_str(&value_text(value));
        rest = &rest[start + 3 + length..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `value` with its references replaced: a string that is one whole reference becomes the
/// value itself.
fn substitute(value: &Value, answers: &HashMap<String, Answer>) -> Result<Value, Unresolved> {
    Ok(match value {
        Value::String(text) => {
            let whole = text
                .strip_prefix("@{")
                .and_then(|rest| rest.strip_suffix('}'))
                .filter(|inner| !inner.contains('}'));
            match whole {
                Some(inner) => resolve(inner, answers)
                    .cloned()
                    .ok_or_else(|| Unresolved(inner.to_owned()))?,
                None => Value::String(substitute_text(text, answers)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute(item, answers))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, item)| Ok((key.clone(), substitute(item, answers)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn unresolved(reference: &Unresolved) -> Answer {
    let name = reference.0.split(['.', '[']).next().unwrap_or_default();
    Answer::halted(&format!(
        "Invalid reference specified. No value for {} found in {name}. Provided referenceId \
         ('{name}') must be that of an earlier subrequest that succeeded and answered that value.",
        reference.0
    ))
}

/// The record a successful write subrequest changed: `(object, id)`.
fn written_record(sub: &Sub, answer: &Answer, state: &AppState) -> Option<(String, String)> {
    if sub.method == Method::GET || answer.failed() {
        return None;
    }
    let path = sub.url.split('?').next().unwrap_or_default();
    let mut segments = path.split('/').filter(|s| !s.is_empty()).skip(3);
    if segments.next() != Some("sobjects") {
        return None;
    }
    let object = segments.next()?.to_owned();
    let rest: Vec<&str> = segments.collect();
    if let Some(id) = answer.body.get("id").and_then(Value::as_str) {
        return Some((object, id.to_owned()));
    }
    match rest.as_slice() {
        [id] => Some((object, (*id).to_owned())),
        // An upsert answered 204 (API versions before 46.0): the record holding the value.
        [field, value] => {
            let world = state.world();
            let sf = &world.salesforce;
            let name = sf.schema.object(&object)?.name;
            let field = sf.schema.object(name)?.field(field)?.name.clone();
            sf.find_by(name, &field, value)
                .into_iter()
                .next()
                .map(|id| (object, id))
        }
        _ => None,
    }
}

/// Runs one subrequest through the REST routes, as `caller`'s request.
async fn run(
    state: &AppState,
    authorization: Option<&HeaderValue>,
    sub: &Sub,
    url: &str,
    body: Option<&Value>,
    mark: &Subrequest,
) -> Answer {
    let path = url.split('?').next().unwrap_or_default();
    if !path.starts_with("/services/data/v") {
        return Answer::error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("The subrequest url must start with /services/data/vXX.X/: {url}"),
        );
    }
    if path.trim_end_matches('/').ends_with("/composite") {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "INVALID_API_INPUT",
            "A composite request cannot hold another composite request",
        );
    }
    let mut request = Request::builder().method(sub.method.clone()).uri(url);
    for (name, value) in &sub.headers {
        let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(HeaderValue::from_str),
        ) else {
            continue;
        };
        if name != header::AUTHORIZATION {
            request = request.header(name, value);
        }
    }
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization.clone());
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let Ok(mut request) = request.body(body) else {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            format!("The subrequest url is not a valid URL: {url}"),
        );
    };
    request.extensions_mut().insert(mark.clone());
    let router = super::routes().with_state(state.clone());
    let Ok(response) = router.oneshot(request).await;
    let status = response.status();
    let mut headers = Map::new();
    for name in [header::LOCATION, header::LAST_MODIFIED] {
        if let Some(value) = response.headers().get(&name).and_then(|v| v.to_str().ok()) {
            let key = match name {
                header::LOCATION => "Location",
                _ => "Last-Modified",
            };
            headers.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    }
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /services/data/vNN.N/composite` (see the module docs). The caller is counted once.
pub(super) async fn composite(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (all_or_none, subs) = parse(&body)?;
    let authorization = headers.get(header::AUTHORIZATION);
    let before = state.world().salesforce.snapshot();
    let mark = Subrequest::default();
    let mut answers: HashMap<String, Answer> = HashMap::new();
    let mut ordered: Vec<Answer> = Vec::with_capacity(subs.len());
    let mut written: Vec<(String, String)> = Vec::new();
    let mut failed_at = None;
    for (index, sub) in subs.iter().enumerate() {
        if all_or_none && failed_at.is_some() {
            ordered.push(Answer::halted(ROLLED_BACK));
            continue;
        }
        let resolved = substitute_text(&sub.url, &answers).and_then(|url| {
            let body = sub
                .body
                .as_ref()
                .map(|body| substitute(body, &answers))
                .transpose()?;
            Ok((url, body))
        });
        let answer = match resolved {
            Ok((url, body)) => run(&state, authorization, sub, &url, body.as_ref(), &mark).await,
            Err(reference) => unresolved(&reference),
        };
        if answer.failed() {
            failed_at.get_or_insert(index);
        } else if let Some(record) = written_record(sub, &answer, &state) {
            written.push(record);
        }
        answers.insert(sub.reference_id.clone(), answer.clone());
        ordered.push(answer);
    }
    let mut notify: Vec<String> =
        std::mem::take(&mut *mark.0.lock().unwrap_or_else(|p| p.into_inner()));
    if let (true, Some(failed)) = (all_or_none, failed_at) {
        {
            let mut world = state.world();
            // Latest change first, so each record ends as it was before the request.
            for (object, id) in written.iter().rev() {
                world.salesforce.restore(&before, object, id);
            }
        }
        for answer in &mut ordered[..failed] {
            *answer = Answer::halted(ROLLED_BACK);
        }
        notify.clear();
    }
    notify.dedup();
    send_notifications(&state, &notify);
    let composite_response: Vec<Value> = subs
        .iter()
        .zip(ordered)
        .map(|(sub, answer)| {
            json!({
                "body": answer.body,
                "httpHeaders": answer.headers,
                "httpStatusCode": answer.status.as_u16(),
                "referenceId": sub.reference_id,
            })
        })
        .collect();
    Ok((
        StatusCode::OK,
        Json(json!({"compositeResponse": composite_response})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> HashMap<String, Answer> {
        let ok = |body: Value| Answer {
            status: StatusCode::OK,
            headers: Map::new(),
            body,
        };
        HashMap::from([
            ("acc".to_owned(), ok(json!({"id": "001A", "success": true}))),
            (
                "q".to_owned(),
                ok(json!({"totalSize": 1, "records": [{"Id": "003B", "Account": {"Name": "X"}}]})),
            ),
            (
                "none".to_owned(),
                ok(json!({"totalSize": 0, "records": []})),
            ),
            (
                "bad".to_owned(),
                Answer::error(StatusCode::BAD_REQUEST, "INVALID_FIELD", "no"),
            ),
        ])
    }

    #[test]
    fn references_name_members_and_indexes_of_earlier_answers() {
        let answers = answers();
        assert_eq!(resolve("acc.id", &answers), Some(&json!("001A")));
        assert_eq!(resolve("q.records[0].Id", &answers), Some(&json!("003B")));
        assert_eq!(
            resolve("q.records[0].Account.Name", &answers),
            Some(&json!("X"))
        );
        assert_eq!(resolve("none.records[0].Id", &answers), None);
        assert_eq!(resolve("bad.id", &answers), None, "a failed subrequest");
        assert_eq!(resolve("later.id", &answers), None);
        assert_eq!(reference_path("a..b"), None);
        assert_eq!(reference_path("a[x]"), None);
    }

    #[test]
    fn substitution_keeps_whole_values_and_fills_text() {
        let answers = answers();
        let body = json!({"AccountId": "@{acc.id}", "Note": "of @{acc.id} and @{q.records[0].Id}",
                          "n": 1, "list": ["@{q.totalSize}"]});
        let out = substitute(&body, &answers).unwrap();
        assert_eq!(
            out,
            json!({"AccountId": "001A", "Note": "of 001A and 003B", "n": 1, "list": [1]})
        );
        assert_eq!(
            substitute_text("/services/data/v62.0/sobjects/Account/@{acc.id}", &answers).unwrap(),
            "/services/data/v62.0/sobjects/Account/001A"
        );
        assert!(substitute(&json!("@{none.records[0].Id}"), &answers).is_err());
    }

    #[test]
    fn bodies_over_the_limit_or_malformed_are_refused() {
        let sub = |i: usize| json!({"method": "GET", "url": "/services/data/v62.0/limits", "referenceId": format!("r{i}")});
        let body = |n: usize| {
            json!({"allOrNone": true, "compositeRequest": (0..n).map(sub).collect::<Vec<_>>()})
                .to_string()
        };
        assert_eq!(parse(body(25).as_bytes()).unwrap().1.len(), 25);
        assert_eq!(
            parse(body(26).as_bytes()).unwrap_err().code,
            "LIMIT_EXCEEDED"
        );
        let twice = json!({"compositeRequest": [sub(1), sub(1)]}).to_string();
        assert_eq!(
            parse(twice.as_bytes()).unwrap_err().code,
            "INVALID_API_INPUT"
        );
        assert_eq!(parse(b"[]").unwrap_err().code, "JSON_PARSER_ERROR");
    }
}
