//! `cosell doctor`: every question the old connector's troubleshooting page made partners
//! answer by hand, as one command. Each check is a small function returning a [`Check`]
//! (`ok`, `warn`, `problem` with the exact fix, or `could not check`); [`run_doctor`] runs
//! them in order and [`print_checks`] prints one line per check (or JSON).
//!
//! | Check | Asks |
//! |---|---|
//! | `configuration` | are the variables complete and valid |
//! | `token-partner-center` | does the delegated refresh token yield a referrals token (+ secret expiry) |
//! | `token-webhooks` | does the Partner Center app yield a webhook-registration token |
//! | `token-crm` | does the Dataverse secret / Salesforce key yield a token (+ expiry) |
//! | `partner-center-role` | can the Partner Center user read and write referrals (Referrals admin) |
//! | `crm-access` | can the CRM user read and write opportunities, accounts and contacts |
//! | `crm-fields` | do the configured custom fields exist on the opportunity |
//! | `currency` | is the configured currency ISO 4217 and active in the CRM |
//! | `stages` | do the on-hold / active (and won / lost) stages exist |
//! | `webhook-registration` | does the registration point at this deployment, with the four events |
//! | `dynamodb-table` | is the table reachable, with its indexes |
//! | `retry-queue` | is the retry queue reachable |
//! | `dead-letter-queue` | is the dead-letter queue empty |
//! | `api-budget` | is there API headroom left today (the connector's counter; Salesforce's allowance) |
//!
//! Exit: 1 when any check found a problem, else 2 when any could not check, else 0.

use std::fmt;
use std::io::Write;

use anyhow::Result;
use chrono::{NaiveDate, Utc};
use cosell_adapters::aws::SqsQueue;
use cosell_adapters::aws::aws_sdk_sqs::types::QueueAttributeName;
use cosell_adapters::http::dataverse::DEFAULT_DATAVERSE_API_VERSION;
use cosell_adapters::http::salesforce::DEFAULT_SALESFORCE_API_VERSION;
use cosell_adapters::http::{
    AccessToken, AuthorizedClient, HttpAdapterError, RequestContext, TokenProvider,
};
use cosell_domain::ports::Service;
use cosell_domain::webhook::EventName;
use cosell_runtime::StoreConfig;
use cosell_runtime::config::CrmConfig;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::context::{Deployment, Exit, OpsConfig, Output};

/// Secrets and certificates expiring within this many days get a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
/// Less than this share of the daily API allowance left is a warning.
pub const BUDGET_WARNING_RATIO: f64 = 0.25;
/// Less than this share left is a problem.
pub const BUDGET_PROBLEM_RATIO: f64 = 0.05;

const REFERRALS_PATH: &str = "/v1.0/engagements/referrals";
/// A referral id that does not exist: a PATCH of it answers 404 to a user allowed to write,
/// 403 to one who is not, and changes nothing. (Whether the real API checks the role before
/// the id is UNKNOWN; the sandbox checks the role first. A 404 is read as "allowed".)
const PROBE_REFERRAL_ID: &str = "00000000-0000-4000-8000-000000000000";
const PROBE_DATAVERSE_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but needs attention soon.
    Warn,
    /// Broken: the fix says what to do.
    Problem,
    /// Could not be checked (a service unreachable, an earlier check failed).
    CouldNotCheck,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Problem => "problem",
            Self::CouldNotCheck => "could not check",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's name (`token-crm`, `currency`, …).
    pub name: &'static str,
    /// Its outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, for anything but `ok`.
    pub fix: Option<String>,
}

impl Check {
    /// An `ok` check.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check with a fix.
    pub fn with_fix(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check from an adapter error: a refusal is a problem with the error's own fix (or
    /// `fix` when it names none); no answer / a 5xx is "could not check".
    pub fn from_error(name: &'static str, error: &HttpAdapterError, fix: &str) -> Self {
        let detail = error.to_string();
        match error {
            HttpAdapterError::Transport { .. } | HttpAdapterError::Unavailable { .. } => {
                Self::with_fix(
                    name,
                    Status::CouldNotCheck,
                    detail,
                    "check the network path to the service and its status, then run \
                     `cosell doctor` again",
                )
            }
            HttpAdapterError::Credential { fix, .. }
            | HttpAdapterError::RejectedAfterRefresh { fix, .. } => {
                Self::with_fix(name, Status::Problem, detail, fix.clone())
            }
            HttpAdapterError::AccessDenied {
                missing_role: Some(role),
                ..
            } => Self::with_fix(
                name,
                Status::Problem,
                detail,
                format!("grant {role} to the connector's user; {fix}"),
            ),
            _ => Self::with_fix(name, Status::Problem, detail, fix),
        }
    }
}

/// The exit status of a list of checks: 1 with any problem, else 2 with any check that could
/// not run, else 0.
pub fn exit_of(checks: &[Check]) -> Exit {
    if checks.iter().any(|c| c.status == Status::Problem) {
        Exit::Problems
    } else if checks.iter().any(|c| c.status == Status::CouldNotCheck) {
        Exit::CouldNotCheck
    } else {
        Exit::Healthy
    }
}

/// Runs every check against the deployment configured by `lookup` (a variable → its value),
/// with the given AWS clients (`None`: built from the environment when the stores are in
/// AWS). The configuration check comes first; when it fails, nothing else can run.
pub async fn run_doctor_with<F>(
    lookup: F,
    aws: Option<cosell_adapters::aws::AwsClients>,
    webhook_url: Option<&str>,
) -> Vec<Check>
where
    F: Fn(&str) -> Option<String>,
{
    let mut config = match OpsConfig::from_lookup(lookup) {
        Ok(config) => config,
        Err(error) => {
            let name = match &error {
                cosell_runtime::ConfigError::Missing(name)
                | cosell_runtime::ConfigError::Invalid { name, .. } => *name,
            };
            return vec![
                Check::with_fix(
                    "configuration",
                    Status::Problem,
                    error.to_string(),
                    format!(
                        "set {name} in the functions' environment (see the configuration table \
                         in the README), then run `cosell doctor` again"
                    ),
                ),
                Check::with_fix(
                    "remaining checks",
                    Status::CouldNotCheck,
                    "skipped: the configuration is incomplete",
                    format!("fix {name} first"),
                ),
            ];
        }
    };
    if let Some(url) = webhook_url {
        config.webhook_url = Some(url.to_owned());
    }
    let aws = match (aws, &config.sync.store) {
        (Some(aws), _) => Some(aws),
        (None, StoreConfig::DynamoDb { .. }) => {
            Some(cosell_adapters::aws::AwsClients::from_env().await)
        }
        (None, StoreConfig::Memory) => None,
    };
    match Deployment::new(config, aws) {
        Ok(deployment) => {
            let mut checks = vec![Check::ok(
                "configuration",
                format!(
                    "complete ({}, {} store)",
                    crm_label(&deployment.config.sync.crm),
                    store_label(&deployment.config.sync.store)
                ),
            )];
            checks.extend(run_doctor(&deployment).await);
            checks
        }
        Err(error) => vec![Check::with_fix(
            "configuration",
            Status::Problem,
            format!("{error:#}"),
            "correct the value the message names (a URL or key that cannot be used)",
        )],
    }
}

/// Runs every check after the configuration's, in order.
pub async fn run_doctor(deployment: &Deployment) -> Vec<Check> {
    let today = Utc::now().date_naive();
    let mut checks = Vec::new();
    let pc_token = check_partner_center_token(deployment, today).await;
    let pc_ok = pc_token.status != Status::Problem && pc_token.status != Status::CouldNotCheck;
    checks.push(pc_token);
    let webhooks_token = check_webhooks_token(deployment, today).await;
    let webhooks_ok =
        webhooks_token.status != Status::Problem && webhooks_token.status != Status::CouldNotCheck;
    checks.push(webhooks_token);
    let crm_token = check_crm_token(deployment, today).await;
    let crm_ok = crm_token.status != Status::Problem && crm_token.status != Status::CouldNotCheck;
    checks.push(crm_token);

    checks.push(if pc_ok {
        check_partner_center_role(deployment).await
    } else {
        skipped("partner-center-role", "token-partner-center")
    });
    if crm_ok {
        checks.push(check_crm_access(deployment).await);
        checks.push(check_crm_fields(deployment).await);
        checks.push(check_currency(deployment).await);
        checks.push(check_stages(deployment).await);
    } else {
        for name in ["crm-access", "crm-fields", "currency", "stages"] {
            checks.push(skipped(name, "token-crm"));
        }
    }
    checks.push(if webhooks_ok {
        check_webhook_registration(deployment).await
    } else {
        skipped("webhook-registration", "token-webhooks")
    });
    checks.push(check_table(deployment).await);
    checks.push(check_retry_queue(deployment).await);
    checks.push(check_dead_letter_queue(deployment).await);
    // The Salesforce allowance needs the CRM token; the connector's own counter does not.
    let salesforce = matches!(deployment.config.sync.crm, CrmConfig::Salesforce { .. });
    checks.push(if crm_ok || !salesforce {
        check_api_budget(deployment).await
    } else {
        skipped("api-budget", "token-crm")
    });
    checks
}

fn skipped(name: &'static str, because: &str) -> Check {
    Check::with_fix(
        name,
        Status::CouldNotCheck,
        format!("skipped: {because} failed"),
        format!("fix {because} first"),
    )
}

fn crm_label(crm: &CrmConfig) -> &'static str {
    match crm {
        CrmConfig::Dataverse { .. } => "Dataverse",
        CrmConfig::Salesforce { .. } => "Salesforce",
    }
}

fn store_label(store: &StoreConfig) -> &'static str {
    match store {
        StoreConfig::DynamoDb { .. } => "DynamoDB",
        StoreConfig::Memory => "memory",
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

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
        Some(Check::with_fix(
            name,
            Status::Problem,
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

/// `token-partner-center`: the delegated refresh token yields a referrals token.
pub async fn check_partner_center_token(deployment: &Deployment, today: NaiveDate) -> Check {
    const NAME: &str = "token-partner-center";
    let detail = match token_check(
        NAME,
        &deployment.credentials.partner_center,
        "sign in again as the Referrals admin and store the new refresh token in \
         PC_REFRESH_TOKEN",
    )
    .await
    {
        Ok(detail) => detail,
        Err(check) => return check,
    };
    expiry(
        NAME,
        "the Partner Center app secret",
        "PC_CLIENT_SECRET_EXPIRES_ON and PC_CLIENT_SECRET",
        deployment.config.expiries.pc_client_secret,
        today,
        "create a new client secret for the Partner Center app (Entra admin center → App \
         registrations → Certificates & secrets) and store it in PC_CLIENT_SECRET",
    )
    .unwrap_or_else(|| {
        Check::ok(
            NAME,
            format!("{detail}; refresh tokens have no fixed expiry (they lapse after 90 days unused or when the password changes)"),
        )
    })
}

/// `token-webhooks`: the Partner Center app yields a token for the webhook registration API.
pub async fn check_webhooks_token(deployment: &Deployment, today: NaiveDate) -> Check {
    const NAME: &str = "token-webhooks";
    let detail = match token_check(
        NAME,
        &deployment.credentials.webhooks,
        "check PC_CLIENT_ID / PC_CLIENT_SECRET and that the app has the Partner Center API \
         permission with admin consent",
    )
    .await
    {
        Ok(detail) => detail,
        Err(check) => return check,
    };
    expiry(
        NAME,
        "the Partner Center app secret",
        "PC_CLIENT_SECRET_EXPIRES_ON and PC_CLIENT_SECRET",
        deployment.config.expiries.pc_client_secret,
        today,
        "create a new client secret for the Partner Center app and store it in \
         PC_CLIENT_SECRET",
    )
    .unwrap_or_else(|| Check::ok(NAME, detail))
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

// ---------------------------------------------------------------------------------------------
// Raw requests
// ---------------------------------------------------------------------------------------------

/// Sends `method url` (absolute, or relative to the Salesforce token's instance URL when it
/// starts with `/services/`) with `body`; the answer's JSON (`null` when empty).
async fn call(
    client: &AuthorizedClient,
    ctx: &RequestContext,
    method: Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&'static str, &'static str)],
) -> Result<Value, HttpAdapterError> {
    let response = client
        .send(ctx, |http, token: &AccessToken| {
            let url = match token.instance_url() {
                Some(instance) if url.starts_with("/services/") => {
                    format!("{}{url}", instance.as_str().trim_end_matches('/'))
                }
                _ => url.to_owned(),
            };
            let mut request = http
                .request(method.clone(), url)
                .header(reqwest::header::ACCEPT, "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await?;
    let bytes = response.bytes().await.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| HttpAdapterError::decode(ctx, format!("not JSON: {error}")))
}

/// The Dataverse Web API root (no trailing slash).
fn dataverse_root(url: &str) -> String {
    format!(
        "{}/api/data/{DEFAULT_DATAVERSE_API_VERSION}",
        url.trim().trim_end_matches('/')
    )
}

/// The Salesforce REST root, relative to the instance URL.
fn salesforce_root() -> String {
    format!("/services/data/{DEFAULT_SALESFORCE_API_VERSION}")
}

fn crm_client(deployment: &Deployment) -> AuthorizedClient {
    AuthorizedClient::new(deployment.http.clone(), deployment.credentials.crm.clone())
}

// ---------------------------------------------------------------------------------------------
// Partner Center
// ---------------------------------------------------------------------------------------------

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
    if let Err(error) = call(
        &client,
        &read,
        Method::GET,
        &format!("{base}{REFERRALS_PATH}?$top=1"),
        None,
        &[],
    )
    .await
    {
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
        HttpAdapterError::AccessDenied { .. } => Check::with_fix(
            name,
            Status::Problem,
            format!("{error}; the Referrals admin role is missing"),
            fix,
        ),
        other => Check::from_error(name, other, fix),
    }
}

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
            return Check::with_fix(
                NAME,
                Status::Problem,
                "no webhook is registered: Partner Center sends no events",
                register,
            );
        }
        Err(error) => return Check::from_error(NAME, &error, &register),
    };
    let url = registration.webhook_url.as_deref().unwrap_or("(no URL)");
    let missing: Vec<&str> = EventName::REFERRAL_EVENTS
        .iter()
        .filter(|event| !registration.webhook_events.contains(event))
        .map(EventName::as_str)
        .collect();
    match ours {
        Some(ours) if ours != url => {
            return Check::with_fix(
                NAME,
                Status::Problem,
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
        return Check::with_fix(
            NAME,
            Status::Problem,
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

// ---------------------------------------------------------------------------------------------
// CRM
// ---------------------------------------------------------------------------------------------

/// `crm-access`: the CRM user can read and write opportunities, accounts and contacts.
///
/// Dataverse: a `$top=1` read of each table, and an update-only PATCH (`If-Match: *`) of a
/// row that does not exist, which answers 404 to a user allowed to write and 403 (naming the
/// `prvWrite…` privilege) otherwise; nothing is written either way. (Whether Dataverse checks
/// the privilege before the row's existence is UNKNOWN: a 404 is read as "allowed".) Salesforce: the objects' describe (`queryable`,
/// `createable`, `updateable` for the integration user).
pub async fn check_crm_access(deployment: &Deployment) -> Check {
    const NAME: &str = "crm-access";
    let client = crm_client(deployment);
    let mapping = &deployment.config.sync.mapping;
    match &deployment.config.sync.crm {
        CrmConfig::Dataverse { url, .. } => {
            let root = dataverse_root(url);
            let fields = &mapping.dataverse;
            let tables = [
                (&fields.opportunity.entity_set, &fields.opportunity.id),
                (&fields.account.entity_set, &fields.account.id),
                (&fields.contact.entity_set, &fields.contact.id),
            ];
            let fix = |set: &str| {
                format!(
                    "give the connector's application user a security role with organization-level \
                     Read, Create and Write on {set} (Power Platform admin center → Environments → \
                     Settings → Users + permissions → Application users → Manage security roles)"
                )
            };
            for (set, id) in tables {
                let read = RequestContext::new(Service::Dataverse, format!("read {set}"));
                if let Err(error) = call(
                    &client,
                    &read,
                    Method::GET,
                    &format!("{root}/{set}?$select={id}&$top=1"),
                    None,
                    &[],
                )
                .await
                {
                    return access_check(NAME, &error, &fix(set));
                }
                let write = RequestContext::new(Service::Dataverse, format!("write {set}"))
                    .with_resource("the probe row");
                match call(
                    &client,
                    &write,
                    Method::PATCH,
                    &format!("{root}/{set}({PROBE_DATAVERSE_ID})"),
                    Some(&json!({})),
                    &[("If-Match", "*")],
                )
                .await
                {
                    Ok(_) | Err(HttpAdapterError::NotFound { .. }) => {}
                    Err(error) => return access_check(NAME, &error, &fix(set)),
                }
            }
            Check::ok(
                NAME,
                "the application user can read and write opportunities, accounts and contacts",
            )
        }
        CrmConfig::Salesforce { .. } => {
            let fields = &mapping.salesforce;
            for object in [
                &fields.opportunity.object,
                &fields.account.object,
                &fields.contact.object,
            ] {
                let fix = format!(
                    "give the integration user Read, Create and Edit on {object} (a permission \
                     set: Setup → Permission Sets → Object Settings)"
                );
                let ctx = RequestContext::new(Service::Salesforce, format!("describe {object}"));
                let describe = match call(
                    &client,
                    &ctx,
                    Method::GET,
                    &format!("{}/sobjects/{object}/describe", salesforce_root()),
                    None,
                    &[],
                )
                .await
                {
                    Ok(describe) => describe,
                    Err(error) => return access_check(NAME, &error, &fix),
                };
                let lacking: Vec<&str> = ["queryable", "createable", "updateable"]
                    .into_iter()
                    .filter(|flag| describe[*flag] != Value::Bool(true))
                    .collect();
                if !lacking.is_empty() {
                    return Check::with_fix(
                        NAME,
                        Status::Problem,
                        format!(
                            "{object} is not {} for the integration user",
                            lacking.join(" / ")
                        ),
                        fix,
                    );
                }
            }
            Check::ok(
                NAME,
                "the integration user can read, create and edit opportunities, accounts and \
                 contacts",
            )
        }
    }
}

fn access_check(name: &'static str, error: &HttpAdapterError, fix: &str) -> Check {
    match error {
        HttpAdapterError::AccessDenied { missing_role, .. } => Check::with_fix(
            name,
            Status::Problem,
            match missing_role {
                Some(role) => format!("{error} (missing: {role})"),
                None => error.to_string(),
            },
            fix,
        ),
        other => Check::from_error(name, other, fix),
    }
}

/// `crm-fields`: the configured custom fields exist on the opportunity.
///
/// Dataverse: `EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName`;
/// Salesforce: `sobjects/Opportunity/describe`.
pub async fn check_crm_fields(deployment: &Deployment) -> Check {
    const NAME: &str = "crm-fields";
    let client = crm_client(deployment);
    let mapping = &deployment.config.sync.mapping;
    let (wanted, present, table, fix): FieldsLookup<'_> = match &deployment.config.sync.crm {
        CrmConfig::Dataverse { url, .. } => {
            let o = &mapping.dataverse.opportunity;
            let ctx = RequestContext::new(Service::Dataverse, "read the opportunity columns")
                .with_resource(format!("the table {}", o.entity));
            let present = call(
                &client,
                &ctx,
                Method::GET,
                &format!(
                    "{}/EntityDefinitions(LogicalName='{}')/Attributes?$select=LogicalName",
                    dataverse_root(url),
                    o.entity
                ),
                None,
                &[],
            )
            .await
            .map(|body| names(&body["value"], "LogicalName"));
            (
                custom_fields(
                    o.sync.as_str(),
                    o.referral_identifier.as_str(),
                    o.referral_link.as_str(),
                    o.audit.as_str(),
                    o.help.as_str(),
                    o.visibility.as_str(),
                    o.solutions.as_str(),
                    o.microsoft_crm_identifier.as_str(),
                ),
                present,
                o.entity.as_str(),
                "install Microsoft's Partner Center co-sell solution in the environment (it \
                     adds the msft_ columns), or create the column, or map the field to an \
                     existing column in MAPPING_CONFIG_JSON (dataverse.opportunity.<field>)"
                    .to_owned(),
            )
        }
        CrmConfig::Salesforce { .. } => {
            let o = &mapping.salesforce.opportunity;
            let ctx = RequestContext::new(Service::Salesforce, "describe the opportunity")
                .with_resource(format!("the object {}", o.object));
            let present = call(
                &client,
                &ctx,
                Method::GET,
                &format!("{}/sobjects/{}/describe", salesforce_root(), o.object),
                None,
                &[],
            )
            .await
            .map(|body| names(&body["fields"], "name"));
            (
                custom_fields(
                    o.sync.as_str(),
                    o.referral_identifier.as_str(),
                    o.referral_link.as_str(),
                    o.audit.as_str(),
                    o.help.as_str(),
                    o.visibility.as_str(),
                    o.solutions.as_str(),
                    o.microsoft_crm_identifier.as_str(),
                ),
                present,
                o.object.as_str(),
                "create the custom field on Opportunity (Setup → Object Manager → \
                     Opportunity → Fields & Relationships → New) and give the integration user \
                     edit access to it, or map the field to an existing one in \
                     MAPPING_CONFIG_JSON (salesforce.opportunity.<field>)"
                    .to_owned(),
            )
        }
    };
    let present = match present {
        Ok(present) => present,
        Err(error) => return Check::from_error(NAME, &error, &fix),
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(_, column)| !present.iter().any(|p| p == column))
        .map(|(field, column)| format!("{column} ({field})"))
        .collect();
    if missing.is_empty() {
        Check::ok(
            NAME,
            format!("the {} custom fields exist on {table}", wanted.len()),
        )
    } else {
        Check::with_fix(
            NAME,
            Status::Problem,
            format!("missing on {table}: {}", missing.join(", ")),
            format!("{}: {fix}", missing.join(", ")),
        )
    }
}

/// The custom fields wanted (mapping key, column), the columns present, the table, the fix.
type FieldsLookup<'a> = (
    Vec<(&'static str, &'a str)>,
    Result<Vec<String>, HttpAdapterError>,
    &'a str,
    String,
);

#[allow(clippy::too_many_arguments)]
fn custom_fields<'a>(
    sync: &'a str,
    referral_identifier: &'a str,
    referral_link: &'a str,
    audit: &'a str,
    help: &'a str,
    visibility: &'a str,
    solutions: &'a str,
    microsoft_crm_identifier: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("sync", sync),
        ("referral_identifier", referral_identifier),
        ("referral_link", referral_link),
        ("audit", audit),
        ("help", help),
        ("visibility", visibility),
        ("solutions", solutions),
        ("microsoft_crm_identifier", microsoft_crm_identifier),
    ]
}

fn names(items: &Value, key: &str) -> Vec<String> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The values of a Salesforce picklist field in a describe result.
fn picklist(describe: &Value, field: &str) -> Option<Vec<String>> {
    describe["fields"]
        .as_array()?
        .iter()
        .find(|f| f["name"].as_str() == Some(field))
        .map(|f| names(&f["picklistValues"], "value"))
}

async fn salesforce_describe(
    deployment: &Deployment,
    object: &str,
) -> Result<Value, HttpAdapterError> {
    let ctx = RequestContext::new(Service::Salesforce, format!("describe {object}"))
        .with_resource(format!("the object {object}"));
    call(
        &crm_client(deployment),
        &ctx,
        Method::GET,
        &format!("{}/sobjects/{object}/describe", salesforce_root()),
        None,
        &[],
    )
    .await
}

/// `currency`: the configured currency (`default_currency` of the mapping) is ISO 4217 (the
/// configuration refuses anything else) and active in the CRM (Dataverse
/// `transactioncurrencies`, Salesforce the `CurrencyIsoCode` picklist).
pub async fn check_currency(deployment: &Deployment) -> Check {
    const NAME: &str = "currency";
    let Some(code) = deployment.config.sync.mapping.default_currency else {
        return Check::ok(
            NAME,
            "no default currency configured: each record's own currency is used",
        );
    };
    let code = code.as_str();
    match &deployment.config.sync.crm {
        CrmConfig::Dataverse { url, .. } => {
            let o = &deployment.config.sync.mapping.dataverse.opportunity;
            let fix = format!(
                "add and activate {code} in Dataverse (Settings → Business Management → \
                 Currencies → New), or configure a currency the environment has in \
                 MAPPING_CONFIG_JSON (default_currency)"
            );
            let ctx = RequestContext::new(Service::Dataverse, "read the currencies");
            let found = call(
                &crm_client(deployment),
                &ctx,
                Method::GET,
                &format!(
                    "{}/{}?$select={}&$filter={} eq '{code}'",
                    dataverse_root(url),
                    o.currency_entity_set,
                    o.currency_iso_code,
                    o.currency_iso_code
                ),
                None,
                &[],
            )
            .await;
            match found {
                Ok(body) if body["value"].as_array().is_some_and(|v| !v.is_empty()) => {
                    Check::ok(NAME, format!("{code} is ISO 4217 and a Dataverse currency"))
                }
                Ok(_) => Check::with_fix(
                    NAME,
                    Status::Problem,
                    format!("{code} is ISO 4217 but not a currency of the Dataverse environment"),
                    fix,
                ),
                Err(error) => Check::from_error(NAME, &error, &fix),
            }
        }
        CrmConfig::Salesforce { .. } => {
            let o = &deployment.config.sync.mapping.salesforce.opportunity;
            let fix = format!(
                "activate {code} in Salesforce (Setup → Company Information → Currencies → New), \
                 or configure an active currency in MAPPING_CONFIG_JSON (default_currency)"
            );
            match salesforce_describe(deployment, &o.object).await {
                Ok(describe) => match picklist(&describe, &o.currency_iso_code) {
                    Some(codes) if codes.iter().any(|c| c == code) => Check::ok(
                        NAME,
                        format!("{code} is ISO 4217 and an active Salesforce currency"),
                    ),
                    Some(codes) => Check::with_fix(
                        NAME,
                        Status::Problem,
                        format!(
                            "{code} is ISO 4217 but not an active Salesforce currency (active: {})",
                            codes.join(", ")
                        ),
                        fix,
                    ),
                    None => Check::with_fix(
                        NAME,
                        Status::Warn,
                        format!(
                            "the org has no {} field (multi-currency is off): every amount is \
                             in the corporate currency",
                            o.currency_iso_code
                        ),
                        format!(
                            "make sure {code} is the org's corporate currency (Setup → Company \
                             Information)"
                        ),
                    ),
                },
                Err(error) => Check::from_error(NAME, &error, &fix),
            }
        }
    }
}

/// `stages`: the on-hold / active (and won / lost) stages exist. Salesforce: the `StageName`
/// picklist; Dataverse: the `statuscode` options of the opportunity.
pub async fn check_stages(deployment: &Deployment) -> Check {
    const NAME: &str = "stages";
    let mapping = &deployment.config.sync.mapping;
    match &deployment.config.sync.crm {
        CrmConfig::Salesforce { .. } => {
            let o = &mapping.salesforce.opportunity;
            let fix = "add the stage to the Opportunity Stage picklist (Setup → Object Manager → \
                       Opportunity → Fields & Relationships → Stage), or configure an existing \
                       stage in MAPPING_CONFIG_JSON (stages.on_hold / stages.active / \
                       stages.won / stages.lost)";
            let describe = match salesforce_describe(deployment, &o.object).await {
                Ok(describe) => describe,
                Err(error) => return Check::from_error(NAME, &error, fix),
            };
            let stages = picklist(&describe, &o.stage_name).unwrap_or_default();
            let s = &mapping.stages;
            let missing: Vec<String> = [
                ("on-hold", &s.on_hold),
                ("active", &s.active),
                ("won", &s.won),
                ("lost", &s.lost),
            ]
            .into_iter()
            .filter(|(_, name)| !stages.contains(name))
            .map(|(role, name)| format!("{role} stage '{name}'"))
            .collect();
            if missing.is_empty() {
                Check::ok(
                    NAME,
                    format!(
                        "the on-hold ('{}') and active ('{}') stages exist",
                        s.on_hold, s.active
                    ),
                )
            } else {
                Check::with_fix(
                    NAME,
                    Status::Problem,
                    format!(
                        "{} not in the {} picklist (stages: {})",
                        missing.join(", "),
                        o.stage_name,
                        stages.join(", ")
                    ),
                    fix,
                )
            }
        }
        CrmConfig::Dataverse { url, .. } => {
            let o = &mapping.dataverse.opportunity;
            let codes = &mapping.dataverse.status_codes;
            let fix = "add the status reason to the opportunity's Status Reason column (Power \
                       Apps → Tables → Opportunity → Columns → Status Reason), or configure an \
                       existing one in MAPPING_CONFIG_JSON (dataverse.status_codes.on_hold / \
                       in_progress)";
            let ctx = RequestContext::new(Service::Dataverse, "read the status reasons")
                .with_resource(format!("the table {}", o.entity));
            let body = match call(
                &crm_client(deployment),
                &ctx,
                Method::GET,
                &format!(
                    "{}/EntityDefinitions(LogicalName='{}')/Attributes?$filter=LogicalName eq '{}'",
                    dataverse_root(url),
                    o.entity,
                    o.status_code
                ),
                None,
                &[],
            )
            .await
            {
                Ok(body) => body,
                Err(error) => return Check::from_error(NAME, &error, fix),
            };
            let Some(options) = body["value"][0]["OptionSet"]["Options"].as_array() else {
                return Check::with_fix(
                    NAME,
                    Status::Warn,
                    format!("the options of {} could not be read", o.status_code),
                    format!(
                        "check by hand that status reasons {} (on hold) and {} (in progress) \
                         exist",
                        codes.on_hold, codes.in_progress
                    ),
                );
            };
            let values: Vec<i64> = options.iter().filter_map(|o| o["Value"].as_i64()).collect();
            let missing: Vec<String> = [
                ("on-hold", codes.on_hold),
                ("active", codes.in_progress),
                ("won", codes.won),
                ("lost", codes.out_sold),
            ]
            .into_iter()
            .filter(|(_, value)| !values.contains(value))
            .map(|(role, value)| format!("{role} status reason {value}"))
            .collect();
            if missing.is_empty() {
                Check::ok(
                    NAME,
                    format!(
                        "the on-hold ({}) and active ({}) status reasons exist",
                        codes.on_hold, codes.in_progress
                    ),
                )
            } else {
                Check::with_fix(
                    NAME,
                    Status::Problem,
                    format!(
                        "{} not among the {} options",
                        missing.join(", "),
                        o.status_code
                    ),
                    fix,
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AWS
// ---------------------------------------------------------------------------------------------

const DEPLOY_FIX: &str = "deploy the stack (it creates the table and queues) and check the \
                          names in TABLE_NAME / RETRY_QUEUE_URL and the credentials' IAM \
                          permissions";

fn memory_store(name: &'static str) -> Check {
    Check::with_fix(
        name,
        Status::Warn,
        "STORE=memory: nothing survives the function instance",
        "set STORE=dynamodb with TABLE_NAME and RETRY_QUEUE_URL for a deployment",
    )
}

/// `dynamodb-table`: the table is reachable and has its two indexes.
pub async fn check_table(deployment: &Deployment) -> Check {
    const NAME: &str = "dynamodb-table";
    let (StoreConfig::DynamoDb { table_name, .. }, Some(aws)) =
        (&deployment.config.sync.store, &deployment.aws)
    else {
        return memory_store(NAME);
    };
    match aws
        .dynamodb
        .describe_table()
        .table_name(table_name)
        .send()
        .await
    {
        Ok(found) => {
            let indexes: Vec<&str> = found
                .table()
                .map(|t| {
                    t.global_secondary_indexes()
                        .iter()
                        .filter_map(|i| i.index_name())
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<&str> = ["gsi1", "gsi2"]
                .into_iter()
                .filter(|i| !indexes.contains(i))
                .collect();
            if missing.is_empty() {
                Check::ok(
                    NAME,
                    format!("{table_name} is reachable, with gsi1 and gsi2"),
                )
            } else {
                Check::with_fix(
                    NAME,
                    Status::Problem,
                    format!("{table_name} lacks the index(es) {}", missing.join(", ")),
                    DEPLOY_FIX,
                )
            }
        }
        Err(error) => {
            let not_found = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception());
            Check::with_fix(
                NAME,
                if not_found {
                    Status::Problem
                } else {
                    Status::CouldNotCheck
                },
                format!(
                    "{table_name}: {}",
                    cosell_adapters::aws::aws_sdk_dynamodb::error::DisplayErrorContext(&error)
                ),
                DEPLOY_FIX,
            )
        }
    }
}

/// `retry-queue`: the retry queue is reachable.
pub async fn check_retry_queue(deployment: &Deployment) -> Check {
    const NAME: &str = "retry-queue";
    let (
        StoreConfig::DynamoDb {
            retry_queue_url, ..
        },
        Some(aws),
    ) = (&deployment.config.sync.store, &deployment.aws)
    else {
        return memory_store(NAME);
    };
    match SqsQueue::new(aws.sqs.clone(), retry_queue_url)
        .depth()
        .await
    {
        Ok(depth) => Check::ok(
            NAME,
            format!(
                "reachable: {} waiting, {} in flight, {} delayed",
                depth.visible, depth.in_flight, depth.delayed
            ),
        ),
        Err(error) => Check::with_fix(
            NAME,
            Status::Problem,
            format!("{retry_queue_url}: {error}"),
            DEPLOY_FIX,
        ),
    }
}

/// The dead-letter queue's URL: `DLQ_URL`, else the target of the retry queue's
/// `RedrivePolicy`.
async fn dead_letter_queue(
    aws: &cosell_adapters::aws::AwsClients,
    configured: Option<&str>,
    retry_queue_url: &str,
) -> Result<Option<String>, String> {
    if let Some(url) = configured {
        return Ok(Some(url.to_owned()));
    }
    let attributes = aws
        .sqs
        .get_queue_attributes()
        .queue_url(retry_queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|error| {
            cosell_adapters::aws::aws_sdk_sqs::error::DisplayErrorContext(&error).to_string()
        })?;
    let Some(policy) = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
    else {
        return Ok(None);
    };
    let policy: Value = serde_json::from_str(policy).map_err(|e| e.to_string())?;
    let Some(name) = policy["deadLetterTargetArn"]
        .as_str()
        .and_then(|arn| arn.rsplit(':').next())
    else {
        return Ok(None);
    };
    SqsQueue::by_name(aws.sqs.clone(), name)
        .await
        .map(|queue| Some(queue.url().to_owned()))
        .map_err(|e| e.to_string())
}

/// `dead-letter-queue`: the dead-letter queue is empty (every message there is a sync that
/// gave up).
pub async fn check_dead_letter_queue(deployment: &Deployment) -> Check {
    const NAME: &str = "dead-letter-queue";
    let (
        StoreConfig::DynamoDb {
            retry_queue_url, ..
        },
        Some(aws),
    ) = (&deployment.config.sync.store, &deployment.aws)
    else {
        return memory_store(NAME);
    };
    let url = match dead_letter_queue(
        aws,
        deployment.config.dead_letter_queue_url.as_deref(),
        retry_queue_url,
    )
    .await
    {
        Ok(Some(url)) => url,
        Ok(None) => {
            return Check::with_fix(
                NAME,
                Status::Problem,
                "the retry queue has no dead-letter queue (no RedrivePolicy): failing jobs are \
                 retried until they expire",
                DEPLOY_FIX,
            );
        }
        Err(error) => {
            return Check::with_fix(NAME, Status::CouldNotCheck, error, DEPLOY_FIX);
        }
    };
    match SqsQueue::new(aws.sqs.clone(), &url).depth().await {
        Ok(depth) if depth.visible + depth.in_flight + depth.delayed == 0 => {
            Check::ok(NAME, "empty")
        }
        Ok(depth) => Check::with_fix(
            NAME,
            Status::Problem,
            format!(
                "{} message(s) in the dead-letter queue: syncs that gave up",
                depth.visible + depth.in_flight + depth.delayed
            ),
            "see why with `cosell audit --needs-attention`, fix the cause, then move them back \
             with `cosell redrive`",
        ),
        Err(error) => Check::with_fix(
            NAME,
            Status::CouldNotCheck,
            format!("{url}: {error}"),
            DEPLOY_FIX,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// API budget
// ---------------------------------------------------------------------------------------------

/// `api-budget`: headroom left today. The connector's own counter (`DynamoApiBudget`, the
/// Partner Center and CRM calls of every function) against `DAILY_API_BUDGET`; for Salesforce
/// also the org's allowance (`/limits` → `DailyApiRequests`). The worse of the two decides.
pub async fn check_api_budget(deployment: &Deployment) -> Check {
    const NAME: &str = "api-budget";
    let mut parts = vec![connector_budget(deployment).await];
    if let CrmConfig::Salesforce { .. } = deployment.config.sync.crm {
        parts.push(salesforce_allowance(deployment).await);
    }
    let worst = parts
        .iter()
        .map(|(status, _, _)| *status)
        .max_by_key(|status| severity(*status))
        .unwrap_or(Status::Ok);
    let detail = parts
        .iter()
        .map(|(_, detail, _)| detail.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let fix = parts
        .iter()
        .filter(|(status, _, _)| *status == worst)
        .find_map(|(_, _, fix)| fix.clone());
    Check {
        name: NAME,
        status: worst,
        detail,
        fix: if worst == Status::Ok { None } else { fix },
    }
}

fn severity(status: Status) -> u8 {
    match status {
        Status::Ok => 0,
        Status::Warn => 1,
        Status::CouldNotCheck => 2,
        Status::Problem => 3,
    }
}

/// A status from the share of an allowance left.
fn headroom(ratio: f64) -> Status {
    if ratio < BUDGET_PROBLEM_RATIO {
        Status::Problem
    } else if ratio < BUDGET_WARNING_RATIO {
        Status::Warn
    } else {
        Status::Ok
    }
}

type BudgetPart = (Status, String, Option<String>);

/// The connector's counter of today's calls against `DAILY_API_BUDGET`.
async fn connector_budget(deployment: &Deployment) -> BudgetPart {
    let fix = "syncs beyond the budget wait for the next UTC day (reconciliation first, webhooks \
               keep WEBHOOK_RESERVED_SHARE): raise DAILY_API_BUDGET if the services allow more \
               calls, or find what calls so much with `cosell audit --needs-attention`";
    let (StoreConfig::DynamoDb { table_name, .. }, Some(aws)) =
        (&deployment.config.sync.store, &deployment.aws)
    else {
        return (
            Status::Warn,
            "STORE=memory: the API budget is counted per function instance".to_owned(),
            Some("set STORE=dynamodb with TABLE_NAME for a deployment".to_owned()),
        );
    };
    let budget = deployment.config.budget.daily_budget;
    let counter = cosell_adapters::aws::DynamoApiBudget::new(aws.dynamodb.clone(), table_name);
    match counter
        .try_used(cosell_domain::budget::utc_day(Utc::now()))
        .await
    {
        Ok(used) => {
            let left = budget.saturating_sub(used);
            #[allow(clippy::cast_precision_loss)]
            let ratio = left as f64 / budget.max(1) as f64;
            (
                headroom(ratio),
                format!(
                    "{left} of the connector's {budget} daily API calls left ({:.0} %)",
                    ratio * 100.0
                ),
                Some(fix.to_owned()),
            )
        }
        Err(error) => (
            Status::CouldNotCheck,
            format!("the API budget counter could not be read: {error}"),
            Some(DEPLOY_FIX.to_owned()),
        ),
    }
}

/// The Salesforce org's own daily allowance.
async fn salesforce_allowance(deployment: &Deployment) -> BudgetPart {
    let fix = "raise the org's daily API allowance (Salesforce add-on) or lower the connector's \
               call rate (DAILY_API_BUDGET); calls resume at the next UTC day";
    let ctx = RequestContext::new(Service::Salesforce, "read the API limits");
    let limits = match call(
        &crm_client(deployment),
        &ctx,
        Method::GET,
        &format!("{}/limits", salesforce_root()),
        None,
        &[],
    )
    .await
    {
        Ok(limits) => limits,
        Err(error) => {
            let check = Check::from_error("api-budget", &error, fix);
            return (check.status, check.detail, check.fix);
        }
    };
    let daily = &limits["DailyApiRequests"];
    let (Some(max), Some(remaining)) = (daily["Max"].as_f64(), daily["Remaining"].as_f64()) else {
        return (
            Status::CouldNotCheck,
            "the Salesforce limits answer has no DailyApiRequests".to_owned(),
            Some("check the integration user's View Setup and Configuration permission".into()),
        );
    };
    let ratio = if max > 0.0 { remaining / max } else { 0.0 };
    (
        headroom(ratio),
        format!(
            "Salesforce: {remaining} of {max} daily API requests left ({:.0} %)",
            ratio * 100.0
        ),
        Some(fix.to_owned()),
    )
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Prints the checks (one line each, the fix indented below; or JSON) and returns the exit.
pub fn print_checks(checks: &[Check], output: Output, out: &mut dyn Write) -> Result<Exit> {
    let exit = exit_of(checks);
    if output.is_json() {
        Output::write_json(
            out,
            &json!({ "checks": checks, "exit": exit, "code": exit.code() }),
        )?;
        return Ok(exit);
    }
    for check in checks {
        writeln!(
            out,
            "{:<16} {:<21} {}",
            check.status.to_string(),
            check.name,
            check.detail
        )?;
        if let Some(fix) = &check.fix {
            writeln!(out, "{:<38} fix: {fix}", "")?;
        }
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    writeln!(
        out,
        "\n{} ok, {} warning(s), {} problem(s), {} could not be checked",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Problem),
        count(Status::CouldNotCheck)
    )?;
    Ok(exit)
}

/// `cosell doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// This deployment's partner-center-events Function URL (default: `PC_WEBHOOK_URL`).
    #[arg(long)]
    pub url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cosell doctor` against the deployment configured in the environment.
pub async fn main(args: Args) -> std::process::ExitCode {
    let checks = run_doctor_with(|name| std::env::var(name).ok(), None, args.url.as_deref()).await;
    let mut out = std::io::stdout();
    match print_checks(&checks, Output::from_flag(args.json), &mut out) {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("doctor could not print: {error:#}");
            Exit::CouldNotCheck.into()
        }
    }
}
