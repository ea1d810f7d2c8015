//! `token-partner-center`, `token-webhooks`, `token-crm`: each credential yields a token, and
//! the secret or certificate behind it is not about to expire.

use chrono::NaiveDate;
use cosell_adapters::http::TokenProvider;
use cosell_runtime::config::CrmConfig;

use super::{Check, EXPIRY_WARNING_DAYS, Status};
use crate::context::Deployment;

/// Whether `expires_on` is past (problem) or within [`EXPIRY_WARNING_DAYS`] (warning).
fn expiry(
    name: &'static str,
    what: &str,
    variable: &str,
    expires_on: Option<NaiveDate>,
    today: NaiveDate,
    renew: &str,
) -> Option<Check> {
    let expires_on = expires_on?;
    let days = (expires_on - today).num_days();
    if days < 0 {
        Some(Check::problem(
            name,
            format!("{what} expired on {expires_on}"),
            format!("{renew}, then update {variable}"),
        ))
    } else if days <= EXPIRY_WARNING_DAYS {
        Some(Check::with_fix(
            name,
            Status::Warn,
            format!("a token was issued, but {what} expires on {expires_on} (in {days} days)"),
            format!("{renew} before {expires_on}, then update {variable}"),
        ))
    } else {
        None
    }
}

/// The token's detail, or the check of its error.
async fn token_check(
    name: &'static str,
    provider: &TokenProvider,
    fix: &str,
) -> Result<String, Check> {
    match provider.token().await {
        Ok(token) => Ok(format!(
            "{} yields a token (valid {} more minutes)",
            provider.describe(),
            token.expires_in().as_secs() / 60
        )),
        Err(error) => Err(Check::from_error(name, &error, fix)),
    }
}

/// A token from `provider` (else the check of its error), then the expiry of the Partner
/// Center app secret (renewed as `renew` says); `ok` makes the detail when neither is wrong.
async fn partner_center_app_token(
    name: &'static str,
    provider: &TokenProvider,
    fix: &str,
    deployment: &Deployment,
    today: NaiveDate,
    renew: &str,
    ok: impl FnOnce(String) -> String,
) -> Check {
    let detail = match token_check(name, provider, fix).await {
        Ok(detail) => detail,
        Err(check) => return check,
    };
    expiry(
        name,
        "the Partner Center app secret",
        "PC_CLIENT_SECRET_EXPIRES_ON and PC_CLIENT_SECRET",
        deployment.config.expiries.pc_client_secret,
        today,
        renew,
    )
    .unwrap_or_else(|| Check::ok(name, ok(detail)))
}

/// `token-partner-center`: the delegated refresh token yields a referrals token.
pub async fn check_partner_center_token(deployment: &Deployment, today: NaiveDate) -> Check {
    partner_center_app_token(
        "token-partner-center",
        &deployment.credentials.partner_center,
        "sign in again as the Referrals admin and store the new refresh token in \
         PC_REFRESH_TOKEN",
        deployment,
        today,
        "create a new client secret for the Partner Center app (Entra admin center → App \
         registrations → Certificates & secrets) and store it in PC_CLIENT_SECRET",
        |detail| {
            format!(
                "{detail}; refresh tokens have no fixed expiry (they lapse after 90 days unused \
                 or when the password changes)"
            )
        },
    )
    .await
}

/// `token-webhooks`: the Partner Center app yields a token for the webhook registration API.
pub async fn check_webhooks_token(deployment: &Deployment, today: NaiveDate) -> Check {
    partner_center_app_token(
        "token-webhooks",
        &deployment.credentials.webhooks,
        "check PC_CLIENT_ID / PC_CLIENT_SECRET and that the app has the Partner Center API \
         permission with admin consent",
        deployment,
        today,
        "create a new client secret for the Partner Center app and store it in \
         PC_CLIENT_SECRET",
        |detail| detail,
    )
    .await
}

/// `token-crm`: the Dataverse secret or the Salesforce key yields a token.
pub async fn check_crm_token(deployment: &Deployment, today: NaiveDate) -> Check {
    const NAME: &str = "token-crm";
    let (fix, expiring) = match &deployment.config.sync.crm {
        CrmConfig::Dataverse { .. } => (
            "check DATAVERSE_CLIENT_ID / DATAVERSE_CLIENT_SECRET (a new secret: Entra admin \
             center → App registrations → Certificates & secrets) and that the app is an \
             application user of the environment",
            expiry(
                NAME,
                "the Dataverse app secret",
                "DATAVERSE_CLIENT_SECRET_EXPIRES_ON and DATAVERSE_CLIENT_SECRET",
                deployment.config.expiries.dataverse_client_secret,
                today,
                "create a new client secret for the Dataverse app and store it in \
                 DATAVERSE_CLIENT_SECRET",
            ),
        ),
        CrmConfig::Salesforce { .. } => (
            "check SALESFORCE_CONSUMER_KEY / SALESFORCE_USERNAME / SALESFORCE_PRIVATE_KEY, that \
             the connected app holds the key's certificate and that the user is pre-authorized",
            expiry(
                NAME,
                "the Salesforce connected app certificate",
                "SALESFORCE_CERTIFICATE_EXPIRES_ON and SALESFORCE_PRIVATE_KEY",
                deployment.config.expiries.salesforce_certificate,
                today,
                "upload a new certificate to the connected app (Setup → App Manager → Edit → \
                 Use digital signatures) and store its key in SALESFORCE_PRIVATE_KEY",
            ),
        ),
    };
    match token_check(NAME, &deployment.credentials.crm, fix).await {
        Ok(detail) => expiring.unwrap_or_else(|| Check::ok(NAME, detail)),
        Err(check) => check,
    }
}
