//! `webhook-registration`: Partner Center sends the referral events to this deployment.

use cosell_domain::webhook::EventName;

use super::{Check, Status, lacking};
use crate::context::Deployment;

/// `webhook-registration`: the registration points at this deployment's URL and lists the
/// four referral events.
pub async fn check_webhook_registration(deployment: &Deployment) -> Check {
    const NAME: &str = "webhook-registration";
    let ours = deployment.config.webhook_url.as_deref();
    let register = format!(
        "run `cosell register-webhook --url {}`",
        ours.unwrap_or("<partner-center-events Function URL>")
    );
    let client = match deployment.registration_client() {
        Ok(client) => client,
        Err(error) => return Check::from_error(NAME, &error, &register),
    };
    let registration = match client.get().await {
        Ok(Some(registration)) => registration,
        Ok(None) => {
            return Check::problem(
                NAME,
                "no webhook is registered: Partner Center sends no events",
                register,
            );
        }
        Err(error) => return Check::from_error(NAME, &error, &register),
    };
    let url = registration.webhook_url.as_deref().unwrap_or("(no URL)");
    let missing = lacking(
        EventName::REFERRAL_EVENTS,
        |event| registration.webhook_events.contains(event),
        |event| event.as_str().to_owned(),
    );
    match ours {
        Some(ours) if ours != url => {
            return Check::problem(
                NAME,
                format!(
                    "the registration points at {url}, not at this deployment ({ours}): another \
                     environment took it over, this one receives no events"
                ),
                format!("{register} (the other environment then stops receiving events)"),
            );
        }
        _ => {}
    }
    if !missing.is_empty() {
        return Check::problem(
            NAME,
            format!(
                "the registration of {url} lacks the events {}",
                missing.join(", ")
            ),
            register,
        );
    }
    match ours {
        Some(_) => Check::ok(
            NAME,
            format!("{url} is registered for the four referral events"),
        ),
        None => Check::with_fix(
            NAME,
            Status::Warn,
            format!(
                "{url} is registered for the four referral events; whether it is this \
                 deployment is unknown"
            ),
            "set PC_WEBHOOK_URL (or pass --url) to this deployment's partner-center-events \
             Function URL",
        ),
    }
}
