//! `POST …/salesforce/{secret}` or `POST …/salesforce?token={secret}`: a Salesforce Outbound
//! Message (SOAP), its steps and answers as the [handler's docs](super) list them.

use cosell_adapters::crm_wire::salesforce::{OutboundMessage, SoapError, ack_response, soap_fault};
use cosell_domain::budget::handle_crm_change_within_budget;
use cosell_domain::mapping::SalesforceRecord;
use cosell_domain::ports::Ports;
use cosell_domain::sync::{CrmChange, Delivery, Outcome, salesforce_change_key};
use cosell_domain::{CrmRecordId, SalesforceId, opportunity_from_salesforce};
use cosell_runtime::edge::Answer;
use lambda_http::Request;
use lambda_http::http::StatusCode;
use secrecy::SecretString;

use super::{LogLine, event_has, image_modified, says_sync_off, secret_matches, too_large};
use crate::app::App;

/// The Salesforce object handled.
const SALESFORCE_OPPORTUNITY: &str = "Opportunity";
/// The field saying when a record was last modified.
const LAST_MODIFIED_DATE: &str = "LastModifiedDate";

/// Handles one Outbound Message: its notifications one by one.
pub(super) async fn handle<X: Ports>(
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
            super::count_ignored();
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
            sent_image: Some(opportunity.opportunity.clone()),
            opportunity: Some(opportunity).filter(|o| says_sync_off(o, carried)),
            modified_at: image_modified(&notification.fields, LAST_MODIFIED_DATE),
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
                cosell_runtime::metrics::outcome(&handled.outcome);
                durable &= !handled.outcome.redeliver_later();
                line.warnings
                    .extend(handled.warnings.iter().map(ToString::to_string));
                if let Outcome::NeedsAttention { code, .. } = &handled.outcome {
                    line.detail = Some((*code).to_owned());
                }
                outcomes.push(handled.outcome.log_name());
            }
            Err(error) => {
                cosell_runtime::metrics::count(cosell_domain::metrics::Metric::DeliveryFailed, 1);
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
