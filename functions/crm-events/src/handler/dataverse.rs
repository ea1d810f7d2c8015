//! `POST …/dataverse`: a Dataverse webhook (JSON `RemoteExecutionContext`), its steps and
//! answers as the [handler's docs](super) list them.

use cosell_adapters::crm_wire::dataverse::{RemoteExecutionContext, WebhookHeaders};
use cosell_domain::budget::handle_crm_change_within_budget;
use cosell_domain::mapping::DataverseRecord;
use cosell_domain::ports::Ports;
use cosell_domain::sync::{CrmChange, Delivery, Handled, Outcome, dataverse_change_key};
use cosell_domain::{CrmRecordId, DataverseId, opportunity_from_dataverse};
use cosell_runtime::edge::{Answer, status};
use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::{Request, RequestExt};
use serde_json::{Value, json};

use super::{LogLine, event_has, image_modified, says_sync_off, secret_matches, too_large};
use crate::app::App;
use crate::config::DataverseAuth;

/// The Dataverse table handled.
const OPPORTUNITY: &str = "opportunity";
/// The column saying when a row was last modified.
const MODIFIED_ON: &str = "modifiedon";

/// Handles one Dataverse webhook delivery.
pub(super) async fn handle<X: Ports>(
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
    // A seller's close is the `Win` / `Lose` message, not an `Update`: it carries no image of
    // the row, so the row is read (docs/dataverse.md#closing-an-opportunity).
    let closes = context.closes_an_opportunity();
    if !context
        .primary_entity_name
        .eq_ignore_ascii_case(OPPORTUNITY)
        || !(closes
            || message.eq_ignore_ascii_case("Create")
            || message.eq_ignore_ascii_case("Update"))
    {
        super::count_ignored();
        line.outcome = "ignored".into();
        line.detail = Some(format!(
            "{} of {}",
            context.message_name, context.primary_entity_name
        ));
        return Answer::json(StatusCode::OK, json!({ "status": "ignored" }));
    }
    let row = if closes {
        context.closed_opportunity_id()
    } else {
        Some(context.primary_entity_id)
    };
    let Some(row) = row else {
        return malformed(line, "the close names no opportunity");
    };
    line.record_id = Some(row.to_string());
    let record = match DataverseId::try_from(row.to_string().as_str()) {
        Ok(id) => CrmRecordId::Dataverse(id),
        Err(_) => return malformed(line, "PrimaryEntityId is not a row id"),
    };
    let Ok(key) = dataverse_change_key(&context.change_id(req.body()), &record) else {
        return malformed(line, "no idempotency key");
    };
    let headers = WebhookHeaders::from_pairs(header_pairs(req.headers()));
    let mut modified_at = None;
    let opportunity = (!closes && context.is_complete_given(&headers)).then(|| {
        let mut attributes = context.merged_attributes();
        modified_at = image_modified(&attributes, MODIFIED_ON);
        let carried = event_has(
            &attributes,
            &app.connector.mapping.dataverse.opportunity.sync,
        );
        attributes
            .entry(app.connector.mapping.dataverse.opportunity.id.clone())
            .or_insert_with(|| Value::String(row.to_string()));
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
        modified_at,
        // The writer is the operation's own (`InitiatingUserId`), not the row's latest.
        sent_image: None,
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
            cosell_runtime::metrics::count(cosell_domain::metrics::Metric::DeliveryFailed, 1);
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
}
