//! The Function URL handler: one CRM request in, one answer and one log line out. The route is
//! the path's last segments, so `/dataverse` and `/lambda-url/crm-events/dataverse` (as
//! `cargo lambda watch` serves it) are the same.
//!
//! This file holds [`handle`], the routing, the shared steps (the secret, the body cap, the
//! sync flag) and the log line; `handler/dataverse.rs` the Dataverse path and
//! `handler/salesforce.rs` the Salesforce path.
//!
//! **`POST …/dataverse`** (a Dataverse webhook, JSON `RemoteExecutionContext`):
//!
//! | Step | On failure |
//! |---|---|
//! | the `WebhookKey` (`?code=`) or the `HttpHeader` secret matches, compared in constant time | 401 `unauthorized` |
//! | the body is at most `MAX_BODY_BYTES` | 413 `payload_too_large` |
//! | it parses | 400 `malformed_body` |
//! | it is an `opportunity` `Create` / `Update`, or a seller's close (`Win` / `Lose`) | 200 `ignored` |
//! | its `PrimaryEntityId` is a row id (a close: its `OpportunityClose`'s `opportunityid`) | 400 `malformed_body` |
//! | the sync core runs within the daily API budget ([`handle_crm_change_within_budget`](cosell_domain::budget::handle_crm_change_within_budget): over budget, the sync is queued for the next UTC day) | 503 (Dataverse retries a 503 once) |
//!
//! The delivery's idempotency key names the change ([`RemoteExecutionContext::change_id`]): its
//! `OperationId`, or for a step registered synchronously, whose `OperationId` is nil, the row
//! version of the post image (else a hash of the body).
//!
//! A handled change answers [`Handled::http_status`] with `{"status": "<outcome>"}`, except
//! a change another invocation is still processing (`in_progress`): 503, because Dataverse
//! delivers again only after 502/503/504. Dataverse delivers only once more, so the change is
//! also queued as a follow-up for after the holder's deadline (in case it died: docs/aws.md).
//!
//! **`POST …/salesforce/{secret}`** or **`POST …/salesforce?token={secret}`** (an Outbound
//! Message, SOAP; every failure is a SOAP fault):
//!
//! | Step | On failure |
//! |---|---|
//! | the secret (the path segment, else `?token=`) matches, compared in constant time | 401 |
//! | the body is at most `MAX_BODY_BYTES` | 413 |
//! | it is UTF-8, has no DTD / entity (XXE) and parses as an Outbound Message | 400 |
//! | its `OrganizationId` is the configured org (15/18-character aware) | 401 |
//! | each notification is of an `Opportunity` with a record id | that notification is `ignored` |
//! | each notification runs through the sync core within the daily API budget, independently, and is durably handled: any outcome but `InProgress` (another invocation holds it: it may still fail) | 500, and Salesforce delivers the message again (handled notifications are then duplicates, skipped by their idempotency key) |
//!
//! When every notification was durably handled the message is acknowledged (`ack_response`,
//! 200, `text/xml`).
//!
//! **The opportunity passed to the core.** Neither a webhook body nor an Outbound Message
//! carries the customer account and contact rows the Partner Center validation needs (country,
//! contact), and an Update's target holds only the changed columns. So the event's opportunity
//! is passed to the core only when the event itself says "Sync with Partner Center" is off
//! (the core then ignores it without any call); otherwise the core re-reads the whole record,
//! under the delivery's key, with its account and contact. A body Dataverse stripped (over
//! 256 KB, `x-ms-dynamics-msg-size-exceeded`) is always re-read, and so is the row a `Win` /
//! `Lose` message closed (those messages carry no image of it).
//!
//! Every request logs exactly one line (`correlation_id`, `crm`, `record_id`, `referral_id`,
//! `outcome`, `status`, `elapsed_ms`, warnings) and never the body, the path (it may hold the
//! secret), contact data or tokens.

mod dataverse;
mod salesforce;

use std::time::Instant;

use chrono::{DateTime, Utc};
use cosell_adapters::crm_wire::salesforce::soap_fault;
use cosell_domain::CrmOpportunity;
use cosell_domain::datetime::WireDateTime;
use cosell_domain::metrics::Metric;
use cosell_domain::ports::Ports;
use cosell_domain::sync::Outcome;
use cosell_domain::sync::{Delivery, Handled};
use cosell_runtime::edge::{Answer, contain, correlation_id, deadline};
use cosell_runtime::metrics;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::config::EndpointConfig;

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
            metrics::count(Metric::InternalError, 1);
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
    if answer.status.is_client_error() {
        metrics::count(Metric::Rejected, 1);
    }
    metrics::flush(started.elapsed());
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
            dataverse::handle(req, app, auth, delivery, line).await
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
            salesforce::handle(
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

/// When the record was modified, as the event's image says (`modifiedon`, `LastModifiedDate`):
/// the core reads the record as it is now when that is not newer than the last change synced.
fn image_modified(fields: &Map<String, Value>, column: &str) -> Option<DateTime<Utc>> {
    fields
        .get(column)
        .and_then(Value::as_str)
        .and_then(|text| WireDateTime::parse(text).instant())
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
        metrics::outcome(&handled.outcome);
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

/// Count a change ignored before the sync core (another entity or message, a deleted record)
/// as the core's own `Ignored` outcome.
fn count_ignored() {
    metrics::outcome(&Outcome::Ignored {
        reason: String::new(),
    });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
