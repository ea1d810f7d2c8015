//! The one place that turns an HTTP answer into `Result<_, PortError>`.
//!
//! Every outbound HTTP adapter sends through [`check`] (or [`AuthorizedClient`], which calls it),
//! so a status means the same thing everywhere:
//!
//! | Answer | [`HttpAdapterError`] | [`PortError`] |
//! |---|---|---|
//! | 2xx | — (success) | — |
//! | connect failure, timeout, broken body | `Transport` | `Transient` |
//! | 408, 429, 5xx | `Unavailable` (with `Retry-After`, seconds or HTTP-date, capped at [`MAX_RETRY_AFTER`]) | `Transient` |
//! | 401 | `Unauthorized`: the caller refreshes its token **once** and retries | — |
//! | 401 again after that refresh | `RejectedAfterRefresh`, naming the credential and what to fix | `AccessDenied` |
//! | 403 Salesforce `REQUEST_LIMIT_EXCEEDED` (the org's rolling 24 h API allocation) | `Unavailable`, `retry_after` ≥ [`DAILY_LIMIT_RETRY_AFTER`] | `Transient` |
//! | 400 / 409 Salesforce `UNABLE_TO_LOCK_ROW` (another save holds the record) | `Unavailable` | `Transient` |
//! | other 403 | `AccessDenied` with the service's message and, when recognisable, the missing role / privilege | `AccessDenied` |
//! | 404 | `NotFound` | `NotFound` |
//! | 412 | `PreconditionFailed` | `PreconditionFailed` |
//! | 3xx (redirects are never followed) and other 4xx | `Rejected` with the service's own message | `Permanent` |
//! | token endpoint refusals | `Credential`, with a fix naming the credential | `AccessDenied` |
//! | token endpoint refusals that only say "try again" (`temporarily_unavailable`, Salesforce's "retry your request", AADSTS50000 / 90033) | `Unavailable` | `Transient` |
//!
//! The service's message is read from its documented error body ([`parse_error_body`]):
//! Partner Center `{"statusCode","message"}`, Dataverse `{"error":{"code","message"}}`
//! ([`WebApiError::parse`]), Salesforce `[{"message","errorCode"}]` ([`RestError::parse_list`]),
//! OAuth `{"error","error_description"}`. Bodies are read up to a size cap; nothing here logs or
//! returns request bodies, tokens or contact data.
//!
//! [`AuthorizedClient`]: super::AuthorizedClient

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::crm_wire::dataverse::WebApiError;
use crate::crm_wire::salesforce::RestError;
use crate::crm_wire::truncate_chars;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use cosell_domain::{PortError, Service};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The longest `Retry-After` honoured; longer waits are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The wait reported when Salesforce's daily API allocation is used up (403
/// `REQUEST_LIMIT_EXCEEDED`, which comes without `Retry-After`): the allocation is a rolling
/// 24 h window, so retrying within minutes is pointless.
pub const DAILY_LIMIT_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error body is read for its message.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// How much of a successful body is read before giving up (a referral page is far smaller).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How many characters of a service message are kept.
const MESSAGE_LIMIT: usize = 1024;

/// What a request was, for classification and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The service called.
    pub service: Service,
    /// What was attempted, e.g. `GET referral` (no ids with contact data, no secrets).
    pub operation: Cow<'static, str>,
    /// What a 404 means, e.g. `referral 4111fffc-…`.
    pub resource: Option<String>,
    /// The role or permission to name on a 403 when the service's message does not name one
    /// (e.g. `Referral Admin` for a Partner Center write).
    pub required_role: Option<Cow<'static, str>>,
}

impl RequestContext {
    /// A request of `service` doing `operation`.
    pub fn new(service: Service, operation: impl Into<Cow<'static, str>>) -> Self {
        Self {
            service,
            operation: operation.into(),
            resource: None,
            required_role: None,
        }
    }

    /// Name the resource a 404 is about.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Name the role a 403 means is missing, when the service's message does not.
    pub fn with_required_role(mut self, role: impl Into<Cow<'static, str>>) -> Self {
        self.required_role = Some(role.into());
        self
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// The connection could not be made (DNS, refused, TLS handshake).
    Connect,
    /// The request or the response body timed out.
    Timeout,
    /// The response body broke off or could not be read.
    Body,
    /// Any other failure while sending.
    Request,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connection failed",
            Self::Timeout => "timed out",
            Self::Body => "response body unreadable",
            Self::Request => "request failed",
        })
    }
}

/// What went wrong with an HTTP call, as far as retrying and fixing it is concerned.
///
/// Convert with [`HttpAdapterError::into_port_error`] (or `PortError::from`). Messages carry
/// the service's own error text and an actionable fix; never tokens, secrets or bodies sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpAdapterError {
    /// No HTTP answer: connect failure, timeout, broken body.
    #[error("{service}: {operation} got no answer ({kind}): {detail}")]
    Transport {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// Why.
        kind: TransportKind,
        /// The client's description (no secrets).
        detail: String,
    },
    /// 401: the access token was not accepted. The caller invalidates it, gets a fresh one
    /// and retries **once** ([`AuthorizedClient::send`](super::AuthorizedClient::send) does).
    #[error("{service}: {operation} was refused with 401 Unauthorized: {message}")]
    Unauthorized {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The service's message.
        message: String,
    },
    /// 401 again with a freshly issued token: the credential itself is not good for this API.
    #[error(
        "{service}: {operation} was refused with 401 Unauthorized even with a freshly issued \
         token from {credential} ({message}). Fix: {fix}"
    )]
    RejectedAfterRefresh {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The credential whose token was refused.
        credential: String,
        /// The service's message.
        message: String,
        /// What to change.
        fix: String,
    },
    /// 408, 429, 5xx, or Salesforce's daily API limit: try again later.
    #[error("{service}: {operation} answered HTTP {status}: {message}")]
    Unavailable {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The service's message.
        message: String,
        /// How long the service asked to wait.
        retry_after: Option<Duration>,
    },
    /// 403: the identity lacks a permission.
    #[error("{service}: {operation} was denied (HTTP {status}): {message}")]
    AccessDenied {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code, when it sent one.
        code: Option<String>,
        /// The service's message, plus a fix when no role could be named.
        message: String,
        /// The role or privilege to grant, when recognisable.
        missing_role: Option<String>,
    },
    /// 404.
    #[error("{service}: {what} was not found ({message})")]
    NotFound {
        /// The service.
        service: Service,
        /// What was looked for.
        what: String,
        /// The service's message.
        message: String,
    },
    /// 412: `If-Match` (or `If-Unmodified-Since`) no longer holds.
    #[error("{service}: {operation} failed its precondition (HTTP 412): {message}")]
    PreconditionFailed {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The service's message.
        message: String,
    },
    /// Any other refusal (other 4xx, an unexpected 3xx): sending it again will not help.
    #[error(
        "{service}: {operation} was rejected (HTTP {status}{}): {message}",
        code_hint(code)
    )]
    Rejected {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code, when it sent one.
        code: Option<String>,
        /// The service's message.
        message: String,
    },
    /// A token endpoint refused the credential.
    #[error("{credential} was refused by {service} ({code}: {message}). Fix: {fix}")]
    Credential {
        /// The token endpoint's service (normally [`Service::Identity`]).
        service: Service,
        /// Which credential, e.g. `the Partner Center refresh token of app 1111…`.
        credential: String,
        /// The OAuth `error` (plus the `AADSTS…` code when Entra sent one).
        code: String,
        /// The endpoint's message (its first line).
        message: String,
        /// What to change.
        fix: String,
    },
    /// A success answer that is not what the API documents.
    #[error("{service}: the answer to {operation} could not be read: {detail}")]
    Decode {
        /// The service.
        service: Service,
        /// What was attempted.
        operation: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The adapter was configured wrongly (a bad URL, an unreadable key).
    #[error("invalid HTTP adapter configuration: {0}")]
    Config(String),
}

fn code_hint(code: &Option<String>) -> String {
    code.as_ref()
        .map_or_else(String::new, |code| format!(", {code}"))
}

impl HttpAdapterError {
    /// Whether an unchanged retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transport { .. } | Self::Unavailable { .. })
    }

    /// The wait the service asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is a first 401 (refresh the token once and retry).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }

    /// The domain error: see the table in the [module docs](self).
    pub fn into_port_error(self) -> PortError {
        let message = self.to_string();
        match self {
            Self::Transport { service, .. } => PortError::Transient {
                service,
                reason: message,
                retry_after: None,
            },
            Self::Unavailable {
                service,
                retry_after,
                ..
            } => PortError::Transient {
                service,
                reason: message,
                retry_after,
            },
            Self::Unauthorized { service, .. } => PortError::AccessDenied {
                service,
                missing_role: None,
                message: format!(
                    "{message}. Fix: check the credential the connector uses for this service"
                ),
            },
            Self::RejectedAfterRefresh { service, .. } | Self::Credential { service, .. } => {
                PortError::AccessDenied {
                    service,
                    missing_role: None,
                    message,
                }
            }
            Self::AccessDenied {
                service,
                missing_role,
                ..
            } => PortError::AccessDenied {
                service,
                missing_role,
                message,
            },
            Self::NotFound { service, what, .. } => PortError::NotFound { service, what },
            Self::PreconditionFailed { service, .. } => PortError::PreconditionFailed { service },
            Self::Rejected { service, .. } | Self::Decode { service, .. } => {
                PortError::Permanent { service, message }
            }
            Self::Config(_) => PortError::Permanent {
                service: Service::Other("configuration".into()),
                message,
            },
        }
    }

    /// A transport failure of `ctx`.
    pub fn transport(ctx: &RequestContext, error: &reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            TransportKind::Timeout
        } else if error.is_connect() {
            TransportKind::Connect
        } else if error.is_body() || error.is_decode() {
            TransportKind::Body
        } else {
            TransportKind::Request
        };
        let detail = reqwest_error_text(error);
        if error.is_builder() {
            return Self::Config(format!("{}: {detail}", ctx.operation));
        }
        Self::Transport {
            service: ctx.service.clone(),
            operation: ctx.operation.to_string(),
            kind,
            detail,
        }
    }

    /// A success body that could not be understood.
    pub fn decode(ctx: &RequestContext, detail: impl fmt::Display) -> Self {
        Self::Decode {
            service: ctx.service.clone(),
            operation: ctx.operation.to_string(),
            detail: detail.to_string(),
        }
    }
}

impl From<HttpAdapterError> for PortError {
    fn from(error: HttpAdapterError) -> Self {
        error.into_port_error()
    }
}

/// A `reqwest` failure and its causes on one line, its URL reduced to [`redacted_url`]:
/// `reqwest` writes the whole request URL, query included, into its message.
pub(crate) fn reqwest_error_text(error: &reqwest::Error) -> String {
    let mut text = error_chain(error);
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &redacted_url(url));
        // Belt and braces: a cause that quotes the URL in another form leaks nothing either.
        let path = url.path();
        let safe_path = redacted_path(path);
        if safe_path != path {
            text = text.replace(path, &safe_path);
        }
        for part in [url.query(), url.fragment()].into_iter().flatten() {
            if !part.is_empty() {
                text = text.replace(part, "…");
            }
        }
    }
    without_email_addresses(&text)
}

/// An error and its causes on one line (`reqwest` puts the useful part in the sources).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = current.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// URLs in error texts
// ---------------------------------------------------------------------------------------------

/// `url` as an error text may show it: scheme, host, port and path only.
///
/// No user info, no query (an OData `$filter` or a SOQL `q=` quotes the e-mail, account name or
/// postal code looked up), no fragment, and the values of key segments replaced by `…`
/// (`accounts(name=…,address1_postalcode=…)`, see [`redacted_path`]): error texts reach logs,
/// the audit log and the CRM's Audit field.
pub fn redacted_url(url: &Url) -> String {
    if url.cannot_be_a_base() {
        // `mailto:…`, `data:…`: everything after the scheme is data.
        return format!("{}:…", url.scheme());
    }
    let mut text = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        text.push_str(host);
    }
    if let Some(port) = url.port() {
        text.push_str(&format!(":{port}"));
    }
    text.push_str(&redacted_path(url.path()));
    text
}

/// A URL or a relative reference (a `Location`, a `nextLink`) as an error text may show it:
/// [`redacted_url`], or for text that is no absolute URL its path up to `?` / `#`, key values
/// redacted.
pub fn redacted_url_text(text: &str) -> String {
    let text = text.trim();
    match Url::parse(text) {
        Ok(url) => redacted_url(&url),
        Err(_) => redacted_path(text.split(['?', '#']).next().unwrap_or_default()),
    }
}

/// `path` with the key values of its segments replaced by `…`: a Dataverse alternate key
/// `accounts(name='Contoso',address1_postalcode='98052')` becomes
/// `accounts(name=…,address1_postalcode=…)` and a quoted key `accounts('Contoso')` becomes
/// `accounts(…)`; a row id `accounts(7eb682f1-…)` is kept. Percent-encoded quotes, `=` and
/// commas count as the characters.
pub fn redacted_path(path: &str) -> String {
    path.split('/')
        .map(redacted_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn redacted_segment(segment: &str) -> Cow<'_, str> {
    let Some((name, keys)) = segment.split_once('(') else {
        return Cow::Borrowed(segment);
    };
    let keys = ["%27", "%3D", "%3d", "%2C", "%2c"]
        .into_iter()
        .zip(["'", "=", "=", ",", ","])
        .fold(keys.to_owned(), |keys, (encoded, plain)| {
            keys.replace(encoded, plain)
        });
    if !keys.contains(['=', '\'']) {
        return Cow::Borrowed(segment);
    }
    let mut out = format!("{name}(");
    let (mut quoted, mut in_value) = (false, false);
    for c in keys.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                if quoted && !in_value {
                    out.push('…');
                    in_value = true;
                }
            }
            '=' if !quoted => {
                out.push_str("=…");
                in_value = true;
            }
            ',' | ')' if !quoted => {
                out.push(c);
                in_value = false;
            }
            _ if !quoted && !in_value => out.push(c),
            _ => {}
        }
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------------

/// A service's error body, reduced to its code and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceErrorBody {
    /// The service's code (`PrivilegeDenied`, `INSUFFICIENT_ACCESS`, `invalid_grant`, …).
    pub code: Option<String>,
    /// The service's message (may be empty when the body said nothing).
    pub message: String,
}

/// Reads `body` in `service`'s documented error shape; never fails (an unknown shape yields the
/// trimmed text, cut to 1024 characters).
pub fn parse_error_body(service: &Service, body: &str) -> ServiceErrorBody {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body).trim();
    if body.is_empty() {
        return ServiceErrorBody::default();
    }
    let parsed = match service {
        Service::Dataverse => {
            let error = WebApiError::parse(body);
            let mut message = error.message.clone();
            if let Some(inner) = error.inner_message().filter(|inner| *inner != message) {
                message = format!("{message} ({inner})");
            }
            ServiceErrorBody {
                code: non_empty(error.code),
                message,
            }
        }
        Service::Salesforce => {
            let errors = RestError::parse_list(body);
            ServiceErrorBody {
                code: errors
                    .iter()
                    .map(|error| error.error_code.clone())
                    .find(|code| !code.is_empty()),
                message: errors
                    .iter()
                    .map(|error| {
                        let mut text = error.message.clone();
                        if !error.fields.is_empty() {
                            text.push_str(&format!(" [{}]", error.fields.join(", ")));
                        }
                        text
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        }
        _ => generic_error_body(body),
    };
    let message = if matches!(service, Service::Identity) {
        // Entra appends "\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …".
        parsed.message.lines().next().unwrap_or_default().to_owned()
    } else {
        parsed.message
    };
    ServiceErrorBody {
        code: parsed.code,
        message: truncate_chars(&without_email_addresses(&message), MESSAGE_LIMIT),
    }
}

/// `text` with every word that holds an email address replaced by `<email>`: service messages
/// go to logs and the audit, and some quote the offending value (a Salesforce
/// `DUPLICATE_VALUE` names the duplicated email).
///
/// A word runs between whitespace (any Unicode whitespace, such as a non-breaking space) and
/// quotes or brackets; it holds an address when an `@` (or its percent-encoding `%40`) has
/// something other than `@` on both sides. A full stop, colon, `!` or `?` ending the word is
/// kept. Works on characters, never on byte offsets, so no input can make it panic.
pub(crate) fn without_email_addresses(text: &str) -> String {
    let is_boundary = |c: char| c.is_whitespace() || "\"'<>(),;[]{}".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // `find` answers the start of a character, so both halves are whole characters.
        let end = rest.find(is_boundary).unwrap_or(rest.len());
        let (word, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        let core = word.trim_end_matches(['.', ':', '!', '?']);
        if holds_email_address(core) {
            out.push_str("<email>");
            out.push_str(word.strip_prefix(core).unwrap_or_default());
        } else {
            out.push_str(word);
        }
        let mut chars = tail.chars();
        if let Some(boundary) = chars.next() {
            out.push(boundary);
        }
        rest = chars.as_str();
    }
    out
}

/// Whether `word` has an `@` (or `%40`) with something other than `@` before and after it.
fn holds_email_address(word: &str) -> bool {
    let word = word.replace("%40", "@");
    word.trim_matches('@').contains('@')
}

/// Partner Center `{"statusCode","message"}`, Partner REST `{"code","description"}`, OAuth
/// `{"error","error_description"}`, `{"error":{"code","message"}}`, a top-level array of those,
/// or plain text.
fn generic_error_body(body: &str) -> ServiceErrorBody {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return ServiceErrorBody {
            code: None,
            message: body.to_owned(),
        };
    };
    let object = match &value {
        Value::Array(items) => items.first().and_then(Value::as_object),
        Value::Object(object) => Some(object),
        _ => None,
    };
    let Some(object) = object else {
        return ServiceErrorBody {
            code: None,
            message: body.to_owned(),
        };
    };
    let member = |names: &[&str]| {
        names.iter().find_map(|name| {
            object
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, value)| json_text(value))
        })
    };
    if let Some(Value::Object(inner)) = object.get("error") {
        let inner_text = |name: &str| inner.get(name).and_then(json_text);
        return ServiceErrorBody {
            code: inner_text("code").and_then(non_empty),
            message: inner_text("message").unwrap_or_else(|| body.to_owned()),
        };
    }
    let code = member(&["error", "errorCode", "errorName", "code"]).and_then(non_empty);
    let message = member(&["error_description", "message", "description", "detail"])
        .or_else(|| member(&["title"]))
        .unwrap_or_else(|| {
            if code.is_some() {
                String::new()
            } else {
                body.to_owned()
            }
        });
    ServiceErrorBody { code, message }
}

fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn non_empty(text: String) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------

/// `Retry-After` as a wait from `now`: delay-seconds (`57`) or an HTTP-date in any of its three
/// forms (`Wed, 21 Oct 2015 07:28:00 GMT`, the obsolete `Wednesday, 21-Oct-15 07:28:00 GMT` and
/// `Wed Oct 21 07:28:00 2015`; a date in the past is no wait). Capped at [`MAX_RETRY_AFTER`];
/// `None` when absent or unreadable.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else if let Ok(seconds) = value.parse::<f64>() {
        // Not in RFC 9110, but some services send fractions.
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = match DateTime::parse_from_rfc2822(value) {
            Ok(at) => at.with_timezone(&Utc),
            Err(_) => DateTime::<Utc>::from(httpdate::parse_http_date(value).ok()?),
        };
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The `Retry-After` of `headers`, see [`parse_retry_after`].
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, now))
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// Classifies a non-success answer of `ctx` (the pure rule behind [`check`]; see the table in
/// the [module docs](self)).
pub fn classify(
    ctx: &RequestContext,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> HttpAdapterError {
    let service = ctx.service.clone();
    let operation = ctx.operation.to_string();
    let parsed = parse_error_body(&service, body);
    let message = if parsed.message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        parsed.message.clone()
    };
    let code = parsed.code.clone();
    let code_is = |wanted: &str| {
        code.as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(wanted))
    };
    match status.as_u16() {
        401 => HttpAdapterError::Unauthorized {
            service,
            operation,
            message,
        },
        403 if service == Service::Salesforce && code_is("REQUEST_LIMIT_EXCEEDED") => {
            let retry_after = retry_after(headers, Utc::now())
                .map_or(DAILY_LIMIT_RETRY_AFTER, |wait| {
                    wait.max(DAILY_LIMIT_RETRY_AFTER)
                });
            HttpAdapterError::Unavailable {
                service,
                operation,
                status: 403,
                message: format!(
                    "{message} (REQUEST_LIMIT_EXCEEDED: the org's API request allocation for the \
                     rolling 24 hours is used up; the sync resumes when calls free up. Fix if it \
                     recurs: buy more API capacity or lower other integrations' usage; \
                     Setup → Company Information shows API Requests, Last 24 Hours)"
                ),
                retry_after: Some(retry_after),
            }
        }
        403 => access_denied(ctx, &parsed, message),
        // Another transaction holds the record (a user's save, a flow, another integration):
        // Salesforce answers 400 (some APIs 409) and the documented remedy is to try again.
        400 | 409 if service == Service::Salesforce && code_is("UNABLE_TO_LOCK_ROW") => {
            HttpAdapterError::Unavailable {
                service,
                operation,
                status: status.as_u16(),
                message: format!(
                    "{message} (UNABLE_TO_LOCK_ROW: another save held the record; retried)"
                ),
                retry_after: retry_after(headers, Utc::now()),
            }
        }
        404 => HttpAdapterError::NotFound {
            what: ctx
                .resource
                .clone()
                .unwrap_or_else(|| format!("the target of {operation}")),
            service,
            message,
        },
        412 => HttpAdapterError::PreconditionFailed {
            service,
            operation,
            message,
        },
        408 | 429 | 500..=599 => HttpAdapterError::Unavailable {
            service,
            operation,
            status: status.as_u16(),
            message,
            retry_after: retry_after(headers, Utc::now()),
        },
        300..=399 => {
            let location = headers
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map_or_else(|| "no Location".to_owned(), redacted_url_text);
            HttpAdapterError::Rejected {
                service,
                operation,
                status: status.as_u16(),
                code,
                message: format!(
                    "unexpected redirect to {location} (redirects are not followed; check the \
                     configured base URL)"
                ),
            }
        }
        _ => HttpAdapterError::Rejected {
            service,
            operation,
            status: status.as_u16(),
            code,
            message,
        },
    }
}

/// A 403, with the missing role / privilege when the service's answer says it.
fn access_denied(
    ctx: &RequestContext,
    parsed: &ServiceErrorBody,
    message: String,
) -> HttpAdapterError {
    let code = parsed.code.clone();
    let code_text = code.as_deref().unwrap_or_default();
    let fallback_role = ctx.required_role.as_deref().map(str::to_owned);
    let (missing_role, message) = match &ctx.service {
        Service::PartnerCenter => {
            if message.to_ascii_lowercase().contains("app-only")
                || message.contains("App+User")
                    && message.to_ascii_lowercase().contains("not supported")
            {
                (
                    None,
                    format!(
                        "{message}. Fix: the referrals API accepts only delegated (App+User) \
                         tokens: configure the connector with a Partner Center user's refresh \
                         token (EntraRefreshToken), not client credentials"
                    ),
                )
            } else {
                let role = partner_center_role(&message)
                    .or(fallback_role)
                    .unwrap_or_else(|| "Referral Admin or Referral User".to_owned());
                (Some(role), message)
            }
        }
        Service::PartnerCenterWebhooks => (
            None,
            format!(
                "{message}. Fix: use an app-only token of the partner's Entra app, or a user with \
                 an admin or agent role in Partner Center, for the webhook registration API"
            ),
        ),
        Service::Dataverse => match dataverse_privilege(&message) {
            Some(privilege) => (
                Some(privilege.clone()),
                format!(
                    "{message}. The connector's application user lacks the {privilege} \
                     privilege: add it to a security role of that application user"
                ),
            ),
            None if code_text.eq_ignore_ascii_case("PrivilegeDenied")
                || code_text.eq_ignore_ascii_case("PrincipalPrivilegeDenied")
                || code_text.eq_ignore_ascii_case("0x80040220") =>
            {
                (
                    fallback_role,
                    format!(
                        "{message}. Fix: give the connector's application user a security role \
                         with read/write access to opportunities, accounts and contacts"
                    ),
                )
            }
            None => (
                fallback_role,
                format!(
                    "{message}. Fix: check the security roles of the connector's application \
                     user in the Dataverse environment"
                ),
            ),
        },
        Service::Salesforce => {
            let upper = code_text.to_ascii_uppercase();
            if upper == "API_CURRENTLY_DISABLED" || upper == "API_DISABLED_FOR_ORG" {
                (Some("API Enabled (system permission)".to_owned()), message)
            } else if upper.starts_with("INSUFFICIENT_ACCESS") {
                (
                    fallback_role,
                    format!(
                        "{message} ({upper}). Fix: give the integration user's profile or a \
                         permission set the object and field permissions this operation needs \
                         (and record access through sharing)"
                    ),
                )
            } else {
                (
                    fallback_role,
                    format!(
                        "{message}. Fix: check the integration user's profile and permission \
                         sets"
                    ),
                )
            }
        }
        _ => (fallback_role, message),
    };
    HttpAdapterError::AccessDenied {
        service: ctx.service.clone(),
        operation: ctx.operation.to_string(),
        status: 403,
        code,
        message,
        missing_role,
    }
}

/// The role a Partner Center 403 message names (`… required role: ReferralAdmin or
/// ReferralUser (…)`), spelled as in Partner Center's user management (`Referral Admin`).
fn partner_center_role(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let start = lower
        .find("required role:")
        .map(|at| at + "required role:".len())
        .or_else(|| {
            lower
                .find("required role")
                .map(|at| at + "required role".len())
        })?;
    let rest = &message[start..];
    let end = rest.find(['(', '.', ';', '\n']).unwrap_or(rest.len());
    let roles = rest[..end].trim();
    if roles.is_empty() {
        return None;
    }
    Some(
        roles
            .replace("ReferralAdmin", "Referral Admin")
            .replace("ReferralUser", "Referral User"),
    )
}

/// The `prv…` privilege a Dataverse `PrivilegeDenied` message names (`… is missing
/// prvCreateopportunity privilege …`).
fn dataverse_privilege(message: &str) -> Option<String> {
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| word.len() > 3 && word.starts_with("prv"))
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Reading answers
// ---------------------------------------------------------------------------------------------

/// Passes a success answer through; turns any other into its [`HttpAdapterError`] (reading at
/// most [`MAX_ERROR_BODY_BYTES`] of the body for the service's message).
pub async fn check(
    ctx: &RequestContext,
    response: reqwest::Response,
) -> Result<reqwest::Response, HttpAdapterError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = match read_limited(ctx, response, MAX_ERROR_BODY_BYTES, true).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    Err(classify(ctx, status, &headers, &body))
}

/// The body of `response`, at most `limit` bytes: more is an error, or, with `truncate`, cut.
pub async fn read_limited(
    ctx: &RequestContext,
    mut response: reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Bytes, HttpAdapterError> {
    if let Some(length) = response.content_length()
        && length > limit as u64
        && !truncate
    {
        return Err(HttpAdapterError::decode(
            ctx,
            format!("the body of {length} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    let mut body = BytesMut::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => return Err(HttpAdapterError::transport(ctx, &error)),
        };
        if body.len() + chunk.len() > limit {
            if truncate {
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            return Err(HttpAdapterError::decode(
                ctx,
                format!("the body exceeds the limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A success body as JSON `T` (at most [`MAX_RESPONSE_BYTES`]).
pub async fn read_json<T: DeserializeOwned>(
    ctx: &RequestContext,
    response: reqwest::Response,
) -> Result<T, HttpAdapterError> {
    let body = read_limited(ctx, response, MAX_RESPONSE_BYTES, false).await?;
    // A leading UTF-8 byte-order mark is skipped, as for error bodies.
    let json = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&body);
    serde_json::from_slice(json).map_err(|error| {
        HttpAdapterError::decode(ctx, format!("the body is not the documented JSON: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn ctx(service: Service) -> RequestContext {
        RequestContext::new(service, "GET referral").with_resource("referral 4111fffc")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn classify_json(service: Service, status: u16, body: Value) -> HttpAdapterError {
        classify(
            &ctx(service),
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            &body.to_string(),
        )
    }

    #[test]
    fn server_errors_and_throttling_are_transient_with_the_retry_after() {
        for status in [500, 502, 503, 504, 429, 408] {
            let err = classify(
                &ctx(Service::PartnerCenter),
                StatusCode::from_u16(status).unwrap(),
                &headers(&[("retry-after", "57")]),
                r#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 57 seconds."}"#,
            );
            assert!(err.is_retryable(), "{status}: {err:?}");
            assert_eq!(err.retry_after(), Some(Duration::from_secs(57)));
            let port = err.into_port_error();
            assert!(port.is_retryable());
            assert_eq!(port.retry_after(), Some(Duration::from_secs(57)));
            assert!(
                port.to_string().contains("Rate limit is exceeded"),
                "{port}"
            );
        }
        let no_header = classify_json(Service::Dataverse, 503, json!({}));
        assert_eq!(no_header.retry_after(), None);
        assert!(no_header.is_retryable());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("57", now), Some(Duration::from_secs(57)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        for obsolete in [
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(
                parse_retry_after(obsolete, now),
                Some(Duration::from_secs(60)),
                "{obsolete}"
            );
        }
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn a_401_is_the_refresh_signal_and_never_transient() {
        let err = classify_json(
            Service::PartnerCenter,
            401,
            json!({"statusCode": 401, "message": "the bearer token has expired."}),
        );
        assert!(err.is_unauthorized());
        assert!(!err.is_retryable());
        let port = err.into_port_error();
        assert!(matches!(port, PortError::AccessDenied { .. }), "{port:?}");
    }

    #[test]
    fn a_second_401_is_access_denied_naming_the_credential() {
        let err = HttpAdapterError::RejectedAfterRefresh {
            service: Service::Dataverse,
            operation: "GET opportunity".into(),
            credential: "the Dataverse client credentials of app 3333".into(),
            message: "invalid token".into(),
            fix: "create an application user for app 3333".into(),
        };
        let port = err.into_port_error();
        let PortError::AccessDenied { message, .. } = &port else {
            panic!("{port:?}");
        };
        assert!(
            message.contains("client credentials of app 3333"),
            "{message}"
        );
        assert!(
            message.contains("Fix: create an application user"),
            "{message}"
        );
        assert!(!port.is_retryable());
    }

    #[test]
    fn partner_center_403_names_the_role_from_the_message_or_the_default() {
        let err = classify_json(
            Service::PartnerCenter,
            403,
            json!({"statusCode": 403, "message": "The user 'x' does not have the required role: ReferralAdmin or ReferralUser (current roles: none)."}),
        );
        let port = err.into_port_error();
        let PortError::AccessDenied { missing_role, .. } = &port else {
            panic!("{port:?}");
        };
        assert_eq!(
            missing_role.as_deref(),
            Some("Referral Admin or Referral User")
        );
        assert!(
            port.to_string().contains("Fix: grant the Referral Admin"),
            "{port}"
        );

        let err = classify_json(
            Service::PartnerCenter,
            403,
            json!({"statusCode": 403, "message": "Forbidden"}),
        );
        assert!(
            matches!(err, HttpAdapterError::AccessDenied { missing_role: Some(ref r), .. }
            if r == "Referral Admin or Referral User")
        );

        let write = ctx(Service::PartnerCenter).with_required_role("Referral Admin");
        let err = classify(
            &write,
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            r#"{"statusCode":403,"message":"Forbidden"}"#,
        );
        assert!(
            matches!(err, HttpAdapterError::AccessDenied { missing_role: Some(ref r), .. }
            if r == "Referral Admin")
        );
    }

    #[test]
    fn partner_center_403_for_app_only_tokens_says_to_use_a_delegated_token() {
        let err = classify_json(
            Service::PartnerCenter,
            403,
            json!({"statusCode": 403, "message": "The referrals API supports only App+User (delegated) tokens; app-only tokens are not supported."}),
        );
        let HttpAdapterError::AccessDenied {
            missing_role,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(missing_role, &None);
        assert!(message.contains("refresh token"), "{message}");
    }

    #[test]
    fn dataverse_privilege_denied_names_the_privilege() {
        let err = classify_json(
            Service::Dataverse,
            403,
            json!({"error": {"code": "0x80040220", "message": "Principal user (Id=4444, type=8, roleCount=1, privilegeCount=12) is missing prvCreateopportunity privilege (Id=5d1e) on OTC=3 for entity 'opportunity'."}}),
        );
        let HttpAdapterError::AccessDenied {
            missing_role,
            message,
            code,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(missing_role.as_deref(), Some("prvCreateopportunity"));
        assert_eq!(code.as_deref(), Some("0x80040220"));
        assert!(message.contains("security role"), "{message}");
    }

    #[test]
    fn salesforce_insufficient_access_is_access_denied_with_a_permission_set_fix() {
        let err = classify_json(
            Service::Salesforce,
            403,
            json!([{"message": "insufficient access rights on object id", "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY"}]),
        );
        let port = err.into_port_error();
        let PortError::AccessDenied { message, .. } = &port else {
            panic!("{port:?}");
        };
        assert!(message.contains("permission set"), "{message}");
        assert!(message.contains("insufficient access rights"), "{message}");
    }

    #[test]
    fn salesforce_daily_request_limit_is_transient_with_a_long_wait() {
        let err = classify_json(
            Service::Salesforce,
            403,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        );
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.retry_after(), Some(DAILY_LIMIT_RETRY_AFTER));
        let port = err.into_port_error();
        assert!(port.is_retryable());
        assert!(
            port.to_string().contains("REQUEST_LIMIT_EXCEEDED"),
            "{port}"
        );
    }

    #[test]
    fn a_salesforce_record_locked_by_another_save_is_transient() {
        for status in [400, 409] {
            let err = classify_json(
                Service::Salesforce,
                status,
                json!([{"message": "unable to obtain exclusive access to this record or 1 records: 006000000000001", "errorCode": "UNABLE_TO_LOCK_ROW", "fields": []}]),
            );
            assert!(err.is_retryable(), "{err:?}");
            let port = err.into_port_error();
            assert!(port.is_retryable(), "{port:?}");
            assert!(port.to_string().contains("UNABLE_TO_LOCK_ROW"), "{port}");
        }
        // Another service's 400 with that text stays a refusal.
        let err = classify_json(
            Service::Dataverse,
            400,
            json!({"error": {"code": "UNABLE_TO_LOCK_ROW", "message": "x"}}),
        );
        assert!(!err.is_retryable(), "{err:?}");
    }

    #[test]
    fn not_found_and_precondition_failed_map_to_their_port_errors() {
        let port = classify_json(
            Service::PartnerCenter,
            404,
            json!({"statusCode": 404, "message": "The referral '4111fffc' was not found."}),
        )
        .into_port_error();
        assert_eq!(
            port,
            PortError::NotFound {
                service: Service::PartnerCenter,
                what: "referral 4111fffc".into()
            }
        );
        let port = classify_json(
            Service::Dataverse,
            412,
            json!({"error": {"code": "0x80060882", "message": "The version of the existing record doesn't match the RowVersion property provided."}}),
        )
        .into_port_error();
        assert_eq!(
            port,
            PortError::PreconditionFailed {
                service: Service::Dataverse
            }
        );
    }

    #[test]
    fn other_4xx_are_permanent_with_the_services_own_message() {
        for (service, body, expected) in [
            (
                Service::PartnerCenter,
                json!({"statusCode": 400, "message": "The referral member 'consent' is required."}),
                "The referral member 'consent' is required.",
            ),
            (
                Service::Dataverse,
                json!({"error": {"code": "0x80048d19", "message": "Error identified in Payload provided by the user for Entity :'opportunities'"}}),
                "0x80048d19",
            ),
            (
                Service::Salesforce,
                json!([{"message": "No such column 'Foo__c' on sobject of type Opportunity", "errorCode": "INVALID_FIELD", "fields": ["Foo__c"]}]),
                "No such column 'Foo__c' on sobject of type Opportunity [Foo__c]",
            ),
            (
                Service::Identity,
                json!({"error": "invalid_scope", "error_description": "AADSTS70011: The scope is not valid.\r\nTrace ID: abc"}),
                "AADSTS70011: The scope is not valid.",
            ),
        ] {
            let err = classify_json(service.clone(), 400, body);
            assert!(matches!(err, HttpAdapterError::Rejected { .. }), "{err:?}");
            let port = err.into_port_error();
            assert!(
                matches!(port, PortError::Permanent { .. }),
                "{service}: {port:?}"
            );
            assert!(port.to_string().contains(expected), "{port}");
            assert!(!port.to_string().contains("Trace ID"), "{port}");
        }
        let conflict = classify_json(
            Service::PartnerCenter,
            409,
            json!({"statusCode": 409, "message": "The referral is closed (Won)."}),
        );
        assert!(!conflict.is_retryable());
    }

    #[test]
    fn error_bodies_are_read_in_each_documented_shape() {
        let pc = parse_error_body(
            &Service::PartnerCenter,
            r#"{"statusCode":429,"message":"Rate limit is exceeded."}"#,
        );
        assert_eq!(pc.message, "Rate limit is exceeded.");
        let rest = parse_error_body(
            &Service::PartnerCenter,
            r#"{"code":600008,"description":"The requested resource was not found.","errorName":"NotFound"}"#,
        );
        assert_eq!(rest.message, "The requested resource was not found.");
        assert_eq!(rest.code.as_deref(), Some("NotFound"));
        let oauth = parse_error_body(
            &Service::Identity,
            r#"{"error":"invalid_grant","error_description":"AADSTS50173: revoked.\r\nTrace ID: 1"}"#,
        );
        assert_eq!(oauth.code.as_deref(), Some("invalid_grant"));
        assert_eq!(oauth.message, "AADSTS50173: revoked.");
        let dataverse_invalid_json = parse_error_body(
            &Service::Dataverse,
            r#"{"error":{"code":"0x80040217" "message":"opportunity With Id = 1 Does Not Exist"}}"#,
        );
        assert_eq!(
            dataverse_invalid_json.message,
            "opportunity With Id = 1 Does Not Exist"
        );
        let text = parse_error_body(&Service::PartnerCenter, "<html>Bad Gateway</html>");
        assert_eq!(text.message, "<html>Bad Gateway</html>");
        assert_eq!(
            parse_error_body(&Service::Salesforce, ""),
            ServiceErrorBody::default()
        );
        let long = "x".repeat(5000);
        assert!(
            parse_error_body(&Service::Other("x".into()), &long)
                .message
                .len()
                < 1100
        );
    }

    #[test]
    fn redirects_are_rejected_naming_the_location() {
        let err = classify(
            &ctx(Service::PartnerCenter),
            StatusCode::FOUND,
            &headers(&[("location", "https://login.example/")]),
            "",
        );
        assert!(
            matches!(&err, HttpAdapterError::Rejected { message, .. } if message.contains("https://login.example/")),
            "{err:?}"
        );
    }

    #[test]
    fn transport_failures_are_transient() {
        let err = HttpAdapterError::Transport {
            service: Service::Salesforce,
            operation: "GET opportunity".into(),
            kind: TransportKind::Timeout,
            detail: "operation timed out".into(),
        };
        assert!(err.is_retryable());
        let port = err.into_port_error();
        assert!(matches!(
            port,
            PortError::Transient {
                retry_after: None,
                ..
            }
        ));
        assert!(port.to_string().contains("timed out"), "{port}");
    }

    #[tokio::test]
    async fn a_success_body_after_a_byte_order_mark_is_read() {
        let answer = |body: &str| {
            reqwest::Response::from(
                axum::http::Response::builder()
                    .status(200)
                    .body(body.to_owned())
                    .unwrap(),
            )
        };
        let ctx = ctx(Service::PartnerCenter);
        for body in ["\u{feff}{\"id\": 1}", "{\"id\": 1}"] {
            let read: Value = read_json(&ctx, answer(body)).await.unwrap();
            assert_eq!(read, json!({"id": 1}), "{body:?}");
        }
        assert!(read_json::<Value>(&ctx, answer("\u{feff}")).await.is_err());
    }

    #[tokio::test]
    async fn connection_failures_are_transport_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ctx = ctx(Service::PartnerCenter);
        let error = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let err = HttpAdapterError::transport(&ctx, &error);
        assert!(
            matches!(
                err,
                HttpAdapterError::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.into_port_error().is_retryable());
    }

    #[test]
    fn email_addresses_in_service_messages_are_redacted() {
        let body = r#"[{"message":"duplicate value found: Email__c duplicates value on record with id: 003000000000001 (dana@fourthcoffee.example)","errorCode":"DUPLICATE_VALUE","fields":[]}]"#;
        let parsed = parse_error_body(&Service::Salesforce, body);
        assert!(
            !parsed.message.contains("fourthcoffee"),
            "{}",
            parsed.message
        );
        assert!(parsed.message.contains("(<email>)"), "{}", parsed.message);
        assert_eq!(without_email_addresses("a @ b, x@y"), "a @ b, <email>");
        assert_eq!(without_email_addresses("no address"), "no address");
        assert_eq!(
            without_email_addresses("'sue@contoso.com' and \"kim@contoso.com\"."),
            "'<email>' and \"<email>\"."
        );
    }

    #[test]
    fn email_redaction_is_safe_next_to_multi_byte_characters() {
        assert_eq!(
            without_email_addresses("Duplicate record\u{00a0}jane@contoso.com"),
            "Duplicate record\u{00a0}<email>"
        );
        assert_eq!(
            without_email_addresses("Doublon\u{2003}«jane@contoso.com»\u{3000}ok"),
            "Doublon\u{2003}<email>\u{3000}ok"
        );
        assert_eq!(
            without_email_addresses("Adresse\u{00a0}zoë@exämple.com\u{00a0}déjà utilisée"),
            "Adresse\u{00a0}<email>\u{00a0}déjà utilisée"
        );
        // Every address is redacted, also one after leading `@`s and before a full stop.
        assert_eq!(
            without_email_addresses("@@jane@contoso.com and kim@contoso.com."),
            "<email> and <email>."
        );
        let body = "[{\"message\":\"Duplicate record\u{00a0}jane@contoso.com\",\"errorCode\":\"DUPLICATE_VALUE\"}]";
        let parsed = parse_error_body(&Service::Salesforce, body);
        assert_eq!(parsed.message, "Duplicate record\u{00a0}<email>");
    }

    #[test]
    fn urls_in_error_texts_keep_scheme_host_and_path_only() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert_eq!(
            redacted_url(&url(
                "https://user:secret@contoso.crm.dynamics.com:8443/api/data/v9.2/accounts(name='Contoso',address1_postalcode='98052')?$select=accountid#top"
            )),
            "https://contoso.crm.dynamics.com:8443/api/data/v9.2/accounts(name=…,address1_postalcode=…)"
        );
        // A row id is no look-up value and stays; a quoted or encoded key value goes.
        assert_eq!(
            redacted_path("/api/data/v9.2/opportunities(7eb682f1-ca75-e511-80d4-00155d2a68d1)"),
            "/api/data/v9.2/opportunities(7eb682f1-ca75-e511-80d4-00155d2a68d1)"
        );
        assert_eq!(
            redacted_path("/accounts('O''Brien, Inc.')/x"),
            "/accounts(…)/x"
        );
        assert_eq!(
            redacted_path("/accounts(name%3D%27Contoso%27,accountnumber=42)"),
            "/accounts(name=…,accountnumber=…)"
        );
        assert_eq!(
            redacted_url_text(" /v1.0/engagements/referrals?$filter=email eq 'a@b.c'#x "),
            "/v1.0/engagements/referrals"
        );
        assert_eq!(redacted_url_text("mailto:jane@contoso.com"), "mailto:…");
    }

    #[test]
    fn a_redirect_is_named_without_its_query() {
        let err = classify(
            &ctx(Service::Dataverse),
            StatusCode::FOUND,
            &headers(&[(
                "location",
                "https://login.example/sso?login_hint=jane@contoso.com",
            )]),
            "",
        );
        let text = err.to_string();
        assert!(text.contains("https://login.example/sso"), "{text}");
        assert!(
            !text.contains("jane") && !text.contains("login_hint"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn transport_errors_carry_no_query_string_or_contact_data() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ctx = RequestContext::new(Service::Dataverse, "look up a contact");
        let error = reqwest::Client::new()
            .get(format!(
                "http://{addr}/api/data/v9.2/contacts?$select=contactid&$filter=emailaddress1 eq 'jane@contoso.com'#top"
            ))
            .send()
            .await
            .unwrap_err();
        let err = HttpAdapterError::transport(&ctx, &error);
        for text in [err.to_string(), err.clone().into_port_error().to_string()] {
            for leak in [
                "jane",
                "contoso",
                "$filter",
                "emailaddress1",
                "select",
                "#top",
            ] {
                assert!(!text.contains(leak), "{leak} in {text}");
            }
            assert!(text.contains("/api/data/v9.2/contacts"), "{text}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    use super::*;

    const SERVICES: [Service; 5] = [
        Service::PartnerCenter,
        Service::PartnerCenterWebhooks,
        Service::Dataverse,
        Service::Salesforce,
        Service::Identity,
    ];

    /// Text an error body may hold: any string, and strings made of the pieces error messages
    /// and JSON bodies are made of, multi-byte spaces and letters included.
    fn body_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9@.:_\\-'\"(){}\\[\\],; \u{a0}\u{2003}\u{3000}\u{e9}\u{1f600}%]{0,60}",
            "\\{\"(error|message|code|errorCode|error_description|statusCode)\": ?(\"[^\"]{0,30}\"|[0-9]{1,4}|\\{\"(code|message)\": ?\"[^\"]{0,30}\"\\})\\}",
            "\\[\\{\"message\": ?\"[^\"]{0,40}\", ?\"errorCode\": ?\"[A-Z_]{0,20}\"\\}\\]",
        ]
    }

    /// An e-mail address, ASCII or not.
    fn email() -> impl Strategy<Value = String> {
        "[a-z0-9._%+\\-\u{e9}\u{f6}]{1,12}@[a-z0-9\\-\u{e4}]{1,10}\\.[a-z]{2,6}"
    }

    /// A character that ends a word: whitespace of one to three bytes, a quote or a bracket.
    fn boundary() -> impl Strategy<Value = char> {
        prop::sample::select(vec![
            ' ', '\t', '\n', '\u{a0}', '\u{2003}', '\u{3000}', '"', '\'', '(', ')', '<', '>', ',',
            ';', '[', ']',
        ])
    }

    proptest! {
        #[test]
        fn error_bodies_are_read_without_panic(body in body_text()) {
            for service in &SERVICES {
                let parsed = parse_error_body(service, &body);
                prop_assert!(parsed.message.chars().count() <= MESSAGE_LIMIT + 1);
            }
        }

        #[test]
        fn any_answer_is_classified_without_panic(
            status in 300_u16..600,
            body in body_text(),
            retry_after in body_text(),
            location in body_text(),
            service in prop::sample::select(SERVICES.to_vec()),
        ) {
            let Ok(status) = StatusCode::from_u16(status) else {
                return Ok(());
            };
            let mut headers = HeaderMap::new();
            for (name, value) in [(RETRY_AFTER, &retry_after), (reqwest::header::LOCATION, &location)] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(name, value);
                }
            }
            let ctx = RequestContext::new(service, "GET referral").with_required_role("Referral Admin");
            let error = classify(&ctx, status, &headers, &body);
            let _ = (error.is_retryable(), error.retry_after(), error.to_string());
            let _ = error.into_port_error().to_string();
        }

        #[test]
        fn retry_after_values_are_read_without_panic(value in body_text()) {
            if let Some(wait) = parse_retry_after(&value, Utc::now()) {
                prop_assert!(wait <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn email_redaction_never_panics_and_leaves_no_address(text in body_text()) {
            let redacted = without_email_addresses(&text);
            let again = without_email_addresses(&redacted);
            prop_assert_eq!(&again, &redacted);
            prop_assert!(
                !redacted
                    .split(|c: char| c.is_whitespace() || "\"'<>(),;[]{}".contains(c))
                    .any(|word| holds_email_address(word.trim_end_matches(['.', ':', '!', '?']))),
                "{}", redacted
            );
        }

        #[test]
        fn every_email_between_any_words_is_redacted(
            before in body_text(),
            after in body_text(),
            address in email(),
            open in boundary(),
            close in boundary(),
        ) {
            let text = format!("{before}{open}{address}{close}{after}");
            let redacted = without_email_addresses(&text);
            prop_assert!(!redacted.contains(&address), "{}", redacted);
            let message = parse_error_body(&Service::Dataverse, &serde_json::json!({"error": {"code": "0x1", "message": text}}).to_string()).message;
            prop_assert!(!message.contains(&address), "{}", message);
        }

        #[test]
        fn redacted_urls_keep_no_query_fragment_or_key_value(
            path in "[a-z/\u{e9}]{0,20}",
            key in "[a-z0-9 ,=)(\u{e9}\u{a0}]{1,12}",
            query in "[a-z0-9 $=&'@.\u{e9}]{1,30}",
            fragment in "[a-z0-9]{1,10}",
        ) {
            let raw = format!("https://contoso.crm.dynamics.com/{path}/accounts(name='{key}QQ',address1_postalcode='98052')?{query}#{fragment}");
            let url = Url::parse(&raw).unwrap();
            let shown = redacted_url(&url);
            prop_assert!(!shown.contains('?') && !shown.contains('#'), "{}", shown);
            prop_assert!(!shown.contains("QQ") && !shown.contains("98052"), "{}", shown);
            prop_assert!(shown.starts_with("https://contoso.crm.dynamics.com/"), "{}", shown);
            prop_assert_eq!(redacted_url_text(&raw), shown);
        }

        #[test]
        fn any_url_text_is_redacted_without_panic(text in body_text()) {
            let shown = redacted_url_text(&text);
            prop_assert!(!shown.contains('?') && !shown.contains('#'), "{}", shown);
            let _ = redacted_path(&text);
        }
    }
}
