//! `partner-center-role`: the Partner Center user holds the Referrals admin role.

use cosell_adapters::http::{AuthorizedClient, HttpAdapterError, RequestContext};
use cosell_domain::ports::Service;
use reqwest::Method;
use serde_json::json;

use super::Check;
use super::request::{call, get};
use crate::context::Deployment;

const REFERRALS_PATH: &str = "/v1.0/engagements/referrals";
/// A referral id that does not exist: a PATCH of it answers 404 to a user allowed to write,
/// 403 to one who is not, and changes nothing. (Whether the real API checks the role before
/// the id is UNKNOWN; the sandbox checks the role first. A 404 is read as "allowed".)
const PROBE_REFERRAL_ID: &str = "00000000-0000-4000-8000-000000000000";

/// `partner-center-role`: the user can read referrals (a list of one) and write them (a PATCH
/// of a referral that does not exist answers 404 to a Referrals admin and 403 otherwise).
pub async fn check_partner_center_role(deployment: &Deployment) -> Check {
    const NAME: &str = "partner-center-role";
    const FIX: &str = "assign the Referrals admin role to the connector's Partner Center user \
                       (Partner Center → Account settings → User management), then run \
                       `cosell doctor` again";
    let client = AuthorizedClient::new(
        deployment.http.clone(),
        deployment.credentials.partner_center.clone(),
    );
    let base = deployment
        .config
        .sync
        .partner_center
        .api_base_url
        .trim_end_matches('/')
        .to_owned();
    let read = RequestContext::new(Service::PartnerCenter, "list referrals")
        .with_required_role("Referrals admin");
    if let Err(error) = get(&client, &read, &format!("{base}{REFERRALS_PATH}?$top=1")).await {
        return role_check(NAME, &error, FIX);
    }
    let write = RequestContext::new(Service::PartnerCenter, "PATCH referral")
        .with_resource("the probe referral")
        .with_required_role("Referrals admin");
    let probe = json!([{"op": "replace", "path": "/notes", "value": "cosell doctor"}]);
    match call(
        &client,
        &write,
        Method::PATCH,
        &format!("{base}{REFERRALS_PATH}/{PROBE_REFERRAL_ID}"),
        Some(&probe),
        &[],
    )
    .await
    {
        Err(HttpAdapterError::NotFound { .. }) => Check::ok(
            NAME,
            "the Partner Center user can read and write referrals (Referrals admin)",
        ),
        Ok(_) => Check::ok(NAME, "the Partner Center user can read and write referrals"),
        Err(error) => role_check(NAME, &error, FIX),
    }
}

fn role_check(name: &'static str, error: &HttpAdapterError, fix: &str) -> Check {
    match error {
        HttpAdapterError::AccessDenied { .. } => Check::problem(
            name,
            format!("{error}; the Referrals admin role is missing"),
            fix,
        ),
        other => Check::from_error(name, other, fix),
    }
}
