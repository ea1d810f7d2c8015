//! The Function URL handler: one CRM request in, one answer and one log line out. The route is
//! the path's last segments, so `/dataverse` and `/lambda-url/crm-events/dataverse` (as
//! `cargo lambda watch` serves it) are the same.
//!
//! **`POST …/dataverse`** (a Dataverse webhook, JSON `RemoteExecutionContext`):
//!
//! | Step | On failure |
//! |---|---|
//! | the `WebhookKey` (`?code=`) or the `HttpHeader` secret matches, compared in constant time | 401 `unauthorized` |
//! | the body is at most `MAX_BODY_BYTES` | 413 `payload_too_large` |
//! | it parses | 400 `malformed_body` |
//! | it is an `opportunity` `Create` / `Update` | 200 `ignored` |
//! | the sync core runs within the daily API budget ([`handle_crm_change_within_budget`]: over budget, the sync is queued for the next UTC day) | 503 (Dataverse retries a 503 once) |
//!
//! The delivery's idempotency key names the change ([`RemoteExecutionContext::change_id`]): its
//! `OperationId`, or for a step registered synchronously, whose `OperationId` is nil, the row
//! version of the post image (else a hash of the body).
//!
//! A handled change answers [`Handled::http_status`] with `{"status": "<outcome>"}`, except
//! a change another invocation is still processing (`in_progress`): 503, because Dataverse
//! delivers again only after 502/503/504.
//!
//! **`POST …/salesforce/{secret}`** or **`POST …/salesforce?token={secret}`** (an Outbound
//! Message, SOAP): a wrong secret 401; a body over the cap 413; a DTD / entity (XXE) or
//! malformed XML 400 with a SOAP fault; an `OrganizationId` other than the configured org
//! (15/18-character aware) 401. Each notification runs through the sync core independently; the
//! message is acknowledged (`ack_response`, 200, `text/xml`) only when every notification was
//! durably handled — any outcome but `InProgress` (another invocation holds it: it may still
//! fail). Otherwise a SOAP fault with 500, and Salesforce delivers the message again (handled
//! notifications are then duplicates, skipped by their idempotency key).
//!
//! **The opportunity passed to the core.** Neither a webhook body nor an Outbound Message
//! carries the customer account and contact rows the Partner Center validation needs (country,
//! contact), and an Update's target holds only the changed columns. So the event's opportunity
//! is passed to the core only when the event itself says "Sync with Partner Center" is off
//! (the core then ignores it without any call); otherwise the core re-reads the whole record,
//! under the delivery's key, with its account and contact. A body Dataverse stripped (over
//! 256 KB, `x-ms-dynamics-msg-size-exceeded`) is always re-read.
//!
//! Every request logs exactly one line (`correlation_id`, `crm`, `record_id`, `referral_id`,
//! `outcome`, `status`, `elapsed_ms`, warnings) and never the body, the path (it may hold the
//! secret), contact data or tokens.

use std::time::Instant;

use chrono::Utc;
use cosell_adapters::crm_wire::dataverse::{RemoteExecutionContext, WebhookHeaders};
use cosell_adapters::crm_wire::salesforce::{OutboundMessage, SoapError, ack_response, soap_fault};
use cosell_domain::budget::handle_crm_change_within_budget;
use cosell_domain::mapping::{DataverseRecord, SalesforceRecord};
use cosell_domain::ports::Ports;
use cosell_domain::sync::{
    CrmChange, Delivery, Handled, Outcome, dataverse_change_key, salesforce_change_key,
};
use cosell_domain::{
    CrmOpportunity, CrmRecordId, DataverseId, SalesforceId, opportunity_from_dataverse,
    opportunity_from_salesforce,
};
use cosell_runtime::edge::{Answer, contain, correlation_id, deadline, status};
use lambda_http::http::{HeaderMap, Method, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::config::{DataverseAuth, EndpointConfig};

/// The Dataverse table handled.
const OPPORTUNITY: &str = "opportunity";
/// The Salesforce object handled.
const SALESFORCE_OPPORTUNITY: &str = "Opportunity";

/// Handle one request (see the [module docs](self)).
///
/// Every expected failure is an `Ok` response; `Err` only if a response cannot be built.
pub async fn handle<X: Ports>(req: Request, app: &App<X>) -> Result<Response<Body>, Error> {
    let started = Instant::now();
    let now = Utc::now();
    let mut line = LogLine::new(correlation_id(&req));
    let delivery = Delivery {
        correlation_id: line.correlation_id.clone(),
        deadline: deadline(&req, now),
        now,
    };
    let answer = match contain(route(&req, app, &delivery, &mut line)).await {
        Ok(answer) => answer,
        Err(panicked) => {
            // 500: Dataverse and Salesforce deliver the change again; the instance goes on.
            line.outcome = "internal_error".into();
            line.detail = Some(panicked.to_string());
            Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the change could not be processed now; deliver it again later",
            )
        }
    };
    line.status = answer.status.as_u16();
    line.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    line.emit();
    answer.into_response()
}

/// The route of a path: its last segment `dataverse`, or `salesforce` with the secret as the
/// segment after it (or none, for `?token=`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route<'a> {
    Dataverse,
    Salesforce { path_secret: Option<&'a str> },
    Unknown,
}

fn route_of(path: &str) -> Route<'_> {
    let mut segments = path.rsplit('/').filter(|segment| !segment.is_empty());
    match (segments.next(), segments.next()) {
        (Some("dataverse"), _) => Route::Dataverse,
        (Some("salesforce"), _) => Route::Salesforce { path_secret: None },
        (Some(secret), Some("salesforce")) => Route::Salesforce {
            path_secret: Some(secret),
        },
        _ => Route::Unknown,
    }
}

async fn route<X: Ports>(
    req: &Request,
    app: &App<X>,
    delivery: &Delivery,
    line: &mut LogLine,
) -> Answer {
    if req.method() != Method::POST {
        line.outcome = "method_not_allowed".into();
        return Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CRM notifications are POST requests",
        );
    }
    match (route_of(req.uri().path()), &app.endpoint) {
        (Route::Dataverse, EndpointConfig::Dataverse { auth, .. }) => {
            line.crm = "dataverse";
            dataverse(req, app, auth, delivery, line).await
        }
        (
            Route::Salesforce { path_secret },
            EndpointConfig::Salesforce {
                secret,
                organization_id,
                ..
            },
        ) => {
            line.crm = "salesforce";
            let token = req
                .query_string_parameters_ref()
                .and_then(|query| query.first("token"));
            salesforce(
                req,
                app,
                (path_secret.or(token), secret),
                organization_id,
                delivery,
                line,
            )
            .await
        }
        _ => {
            line.outcome = "not_found".into();
            Answer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no CRM endpoint is configured at this path",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dataverse

async fn dataverse<X: Ports>(
    req: &Request,
    app: &App<X>,
    auth: &DataverseAuth,
    delivery: &Delivery,
    line: &mut LogLine,
) -> Answer {
    let presented = match auth {
        DataverseAuth::WebhookKey(_) => req
            .query_string_parameters_ref()
            .and_then(|query| query.first("code")),
        DataverseAuth::HttpHeader { name, .. } => req
            .headers()
            .get(name.as_str())
            .and_then(|value| value.to_str().ok()),
    };
    let expected = match auth {
        DataverseAuth::WebhookKey(key) => key,
        DataverseAuth::HttpHeader { value, .. } => value,
    };
    if !secret_matches(presented, expected) {
        line.outcome = "unauthorized".into();
        return Answer::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the webhook key is missing or wrong",
        );
    }
    if let Some(answer) = too_large(req, app.max_body_bytes, line) {
        return answer.json();
    }
    let context = match RemoteExecutionContext::parse_bytes(req.body()) {
        Ok(context) => context,
        Err(_) => {
            // The parser's message may quote the body: not logged.
            line.outcome = "malformed_body".into();
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                "the body is not a Dataverse RemoteExecutionContext",
            );
        }
    };
    line.record_id = Some(context.primary_entity_id.to_string());
    let message = context.message_name.as_str();
    if !context
        .primary_entity_name
        .eq_ignore_ascii_case(OPPORTUNITY)
        || !(message.eq_ignore_ascii_case("Create") || message.eq_ignore_ascii_case("Update"))
    {
        line.outcome = "ignored".into();
        line.detail = Some(format!(
            "{} of {}",
            context.message_name, context.primary_entity_name
        ));
        return Answer::json(StatusCode::OK, json!({ "status": "ignored" }));
    }
    let record = match DataverseId::try_from(context.primary_entity_id.to_string().as_str()) {
        Ok(id) => CrmRecordId::Dataverse(id),
        Err(_) => return malformed(line, "PrimaryEntityId is not a row id"),
    };
    let Ok(key) = dataverse_change_key(&context.change_id(req.body()), &record) else {
        return malformed(line, "no idempotency key");
    };
    let headers = WebhookHeaders::from_pairs(header_pairs(req.headers()));
    let opportunity = context.is_complete_given(&headers).then(|| {
        let mut attributes = context.merged_attributes();
        let carried = event_has(
            &attributes,
            &app.connector.mapping.dataverse.opportunity.sync,
        );
        attributes
            .entry(app.connector.mapping.dataverse.opportunity.id.clone())
            .or_insert_with(|| Value::String(context.primary_entity_id.to_string()));
        let opportunity =
            opportunity_from_dataverse(&DataverseRecord::new(&attributes), &app.connector.mapping);
        (opportunity, carried)
    });
    line.describe(opportunity.as_ref().map(|(o, _)| o));
    let change = CrmChange {
        key,
        record,
        writer: context
            .initiating_user_id
            .or(context.user_id)
            .map(|id| id.to_string()),
        opportunity: opportunity
            .filter(|(o, carried)| says_sync_off(o, *carried))
            .map(|(o, _)| o),
    };
    match handle_crm_change_within_budget(
        &app.connector.deps(),
        app.connector.budget(),
        &change,
        delivery,
    )
    .await
    {
        Ok(handled) => {
            line.handled(&handled);
            Answer::json(
                status(dataverse_status(&handled)),
                json!({ "status": handled.outcome.log_name() }),
            )
        }
        Err(error) => {
            line.outcome = error.log_name().into();
            line.detail = Some(error.to_string());
            Answer::error(
                status(error.http_status()),
                error.log_name(),
                "the change could not be processed now; deliver it again later",
            )
        }
    }
}

fn malformed(line: &mut LogLine, detail: &str) -> Answer {
    line.outcome = "malformed_body".into();
    line.detail = Some(detail.to_owned());
    Answer::error(
        StatusCode::BAD_REQUEST,
        "malformed_body",
        "the body is not a Dataverse RemoteExecutionContext",
    )
}

fn header_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter_map(|(name, value)| value.to_str().ok().map(|value| (name.as_str(), value)))
}

// ---------------------------------------------------------------------------------------------
// Salesforce

async fn salesforce<X: Ports>(
    req: &Request,
    app: &App<X>,
    (presented, expected): (Option<&str>, &SecretString),
    organization_id: &str,
    delivery: &Delivery,
    line: &mut LogLine,
) -> Answer {
    if !secret_matches(presented, expected) {
        line.outcome = "unauthorized".into();
        return Answer::soap(StatusCode::UNAUTHORIZED, soap_fault("unauthorized"));
    }
    if let Some(answer) = too_large(req, app.max_body_bytes, line) {
        return answer.soap();
    }
    let Ok(xml) = std::str::from_utf8(req.body()) else {
        line.outcome = "malformed_body".into();
        line.detail = Some("not UTF-8".into());
        return Answer::soap(
            StatusCode::BAD_REQUEST,
            soap_fault("the body is not an Outbound Message"),
        );
    };
    let message = match OutboundMessage::parse_with_limit(xml, app.max_body_bytes) {
        Ok(message) => message,
        Err(error) => {
            let (status, code) = match &error {
                SoapError::Forbidden(_) => (StatusCode::BAD_REQUEST, "forbidden_xml"),
                SoapError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
                SoapError::Malformed(_) | SoapError::TooManyNotifications { .. } => {
                    (StatusCode::BAD_REQUEST, "malformed_body")
                }
            };
            line.outcome = code.into();
            return Answer::soap(status, soap_fault("the body is not an Outbound Message"));
        }
    };
    if !message.is_from_organization(organization_id) {
        line.outcome = "wrong_organization".into();
        return Answer::soap(
            StatusCode::UNAUTHORIZED,
            soap_fault("the message is not from the configured organization"),
        );
    }

    let mut durable = true;
    let mut outcomes = Vec::with_capacity(message.notifications.len());
    for notification in &message.notifications {
        let is_opportunity = notification
            .sobject_type
            .as_deref()
            .is_none_or(|kind| kind == SALESFORCE_OPPORTUNITY);
        let record = notification
            .record_id()
            .and_then(|id| SalesforceId::try_from(id).ok())
            .map(CrmRecordId::Salesforce);
        let (Some(record), Ok(key), true) = (
            record,
            salesforce_change_key(&notification.id),
            is_opportunity,
        ) else {
            // Another object, or a record deleted before delivery (no data): nothing to sync.
            outcomes.push("ignored");
            continue;
        };
        line.add_record(&record.native());
        let opportunity = opportunity_from_salesforce(
            &SalesforceRecord {
                opportunity: &notification.fields,
                account: None,
                contact: None,
            },
            &app.connector.mapping,
        );
        line.describe(Some(&opportunity));
        let carried = event_has(
            &notification.fields,
            &app.connector.mapping.salesforce.opportunity.sync,
        );
        let change = CrmChange {
            key,
            record,
            writer: notification
                .field_text("LastModifiedById")
                .map(str::to_owned),
            opportunity: Some(opportunity).filter(|o| says_sync_off(o, carried)),
        };
        match handle_crm_change_within_budget(
            &app.connector.deps(),
            app.connector.budget(),
            &change,
            delivery,
        )
        .await
        {
            Ok(handled) => {
                durable &= !handled.outcome.redeliver_later();
                line.warnings
                    .extend(handled.warnings.iter().map(ToString::to_string));
                if let Outcome::NeedsAttention { code, .. } = &handled.outcome {
                    line.detail = Some((*code).to_owned());
                }
                outcomes.push(handled.outcome.log_name());
            }
            Err(error) => {
                durable = false;
                line.detail = Some(error.to_string());
                outcomes.push(error.log_name());
            }
        }
    }
    line.outcome = if outcomes.is_empty() {
        "empty".into()
    } else {
        outcomes.join(",")
    };
    if durable {
        Answer::soap(StatusCode::OK, ack_response().to_owned())
    } else {
        Answer::soap(
            StatusCode::INTERNAL_SERVER_ERROR,
            soap_fault("not every notification could be processed now; deliver the message again"),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Shared steps

/// `true` when `presented` equals the configured secret, compared in constant time.
fn secret_matches(presented: Option<&str>, expected: &SecretString) -> bool {
    let expected = expected.expose_secret().as_bytes();
    presented.is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(expected)))
}

/// The opportunity is passed to the core only when the event itself carries the sync flag and
/// it is off (see the module docs).
fn says_sync_off(opportunity: &CrmOpportunity, carried: bool) -> bool {
    carried && !opportunity.opportunity.sync
}

fn event_has(fields: &Map<String, Value>, column: &str) -> bool {
    fields.get(column).is_some_and(|value| !value.is_null())
}

/// 413 when the body is over the cap (the caller picks the body format).
fn too_large(req: &Request, max: usize, line: &mut LogLine) -> Option<TooLarge> {
    let size = req.body().len();
    (size > max).then(|| {
        line.outcome = "payload_too_large".into();
        line.detail = Some(format!("body of {size} bytes, limit {max}"));
        TooLarge
    })
}

struct TooLarge;

impl TooLarge {
    fn json(self) -> Answer {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    }

    fn soap(self) -> Answer {
        Answer::soap(
            StatusCode::PAYLOAD_TOO_LARGE,
            soap_fault("the request body is too large"),
        )
    }
}

/// The one log line of a request.
#[derive(Debug, Default)]
struct LogLine {
    correlation_id: Option<String>,
    crm: &'static str,
    /// The CRM record(s), comma-separated for a batch.
    record_id: Option<String>,
    /// The referral(s) the records name, when the event carries it.
    referral_id: Option<String>,
    /// The outcome; comma-separated per notification for a Salesforce batch.
    outcome: String,
    status: u16,
    elapsed_ms: u64,
    /// Why it was rejected, or the outcome's stable code (no body, contact data or tokens).
    detail: Option<String>,
    warnings: Vec<String>,
}

impl LogLine {
    fn new(correlation_id: Option<String>) -> Self {
        Self {
            correlation_id,
            outcome: "unknown".into(),
            ..Self::default()
        }
    }

    fn add_record(&mut self, id: &str) {
        append(&mut self.record_id, id);
    }

    fn describe(&mut self, opportunity: Option<&CrmOpportunity>) {
        if let Some(id) = opportunity.and_then(|o| o.opportunity.referral_id) {
            append(&mut self.referral_id, &id.to_string());
        }
    }

    fn handled(&mut self, handled: &Handled) {
        self.outcome = handled.outcome.log_name().into();
        self.detail = handled.outcome.log_detail();
        if let Some(id) = handled.referral_id.map(|id| id.to_string()) {
            let known = self.referral_id.as_deref().unwrap_or_default();
            if !known.split(',').any(|known| known == id) {
                append(&mut self.referral_id, &id);
            }
        }
        self.warnings = handled.warnings.iter().map(ToString::to_string).collect();
    }

    fn emit(&self) {
        let correlation_id = self.correlation_id.as_deref().unwrap_or_default();
        let record_id = self.record_id.as_deref().unwrap_or_default();
        let referral_id = self.referral_id.as_deref().unwrap_or_default();
        let detail = self.detail.as_deref().unwrap_or_default();
        let warnings = self.warnings.len();
        let warning_messages = self.warnings.join(" | ");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    correlation_id,
                    crm = self.crm,
                    record_id,
                    referral_id,
                    outcome = self.outcome.as_str(),
                    status = self.status,
                    elapsed_ms = self.elapsed_ms,
                    detail,
                    warnings,
                    warning_messages,
                    "crm change handled"
                )
            };
        }
        if self.status >= 500 {
            line!(error);
        } else if self.status >= 400 || !self.warnings.is_empty() {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

fn append(slot: &mut Option<String>, value: &str) {
    match slot {
        Some(text) => {
            text.push(',');
            text.push_str(value);
        }
        None => *slot = Some(value.to_owned()),
    }
}

/// The status Dataverse gets: a change still in progress elsewhere is 503, the only kind of
/// answer (with 502/504) after which Dataverse delivers once more; everything else as handled.
fn dataverse_status(handled: &Handled) -> u16 {
    match handled.outcome {
        Outcome::InProgress => 503,
        _ => handled.http_status(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dataverse_gets_503_for_a_change_in_progress_elsewhere_so_it_delivers_again() {
        let handled = |outcome| Handled {
            outcome,
            warnings: Vec::new(),
            referral_id: None,
        };
        assert_eq!(dataverse_status(&handled(Outcome::InProgress)), 503);
        assert_eq!(dataverse_status(&handled(Outcome::DuplicateSkipped)), 200);
    }

    #[test]
    fn the_route_is_the_last_segments_of_the_path() {
        assert_eq!(route_of("/dataverse"), Route::Dataverse);
        assert_eq!(
            route_of("/lambda-url/crm-events/dataverse"),
            Route::Dataverse
        );
        assert_eq!(
            route_of("/salesforce/s3cret"),
            Route::Salesforce {
                path_secret: Some("s3cret")
            }
        );
        assert_eq!(
            route_of("/lambda-url/crm-events/salesforce/s3cret/"),
            Route::Salesforce {
                path_secret: Some("s3cret")
            }
        );
        assert_eq!(
            route_of("/salesforce"),
            Route::Salesforce { path_secret: None }
        );
        assert_eq!(route_of("/"), Route::Unknown);
        assert_eq!(route_of("/other"), Route::Unknown);
    }

    #[test]
    fn secrets_are_compared_whole() {
        let secret = SecretString::from("abc123".to_owned());
        assert!(secret_matches(Some("abc123"), &secret));
        assert!(!secret_matches(Some("abc12"), &secret));
        assert!(!secret_matches(Some("abc1234"), &secret));
        assert!(!secret_matches(Some(""), &secret));
        assert!(!secret_matches(None, &secret));
    }
}
