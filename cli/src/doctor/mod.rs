//! `cosell doctor`: every question the old connector's troubleshooting page made partners
//! answer by hand, as one command. Each check is a small function returning a [`Check`]
//! (`ok`, `warn`, `problem` with the exact fix, or `could not check`); [`run_doctor`] runs
//! them in order and [`print_checks`] prints one line per check (or JSON).
//!
//! | Check | Asks | File |
//! |---|---|---|
//! | `configuration` | are the variables complete and valid | `configuration.rs` |
//! | `token-partner-center` | does the delegated refresh token yield a referrals token (+ secret expiry) | `credentials.rs` |
//! | `token-webhooks` | does the Partner Center app yield a webhook-registration token | `credentials.rs` |
//! | `token-crm` | does the Dataverse secret / Salesforce key yield a token (+ expiry) | `credentials.rs` |
//! | `partner-center-role` | can the Partner Center user read and write referrals (Referrals admin) | `partner_center.rs` |
//! | `crm-access` | can the CRM user read and write opportunities, accounts and contacts | `crm.rs` |
//! | `crm-fields` | do the configured custom fields exist on the opportunity | `crm.rs` |
//! | `currency` | is the configured currency ISO 4217 and active in the CRM | `crm.rs` |
//! | `stages` | do the on-hold / active (and won / lost) stages exist | `crm.rs` |
//! | `crm-concurrency` | does Dataverse refuse an opportunity update over a save made since (optimistic concurrency) | `crm.rs` |
//! | `webhook-registration` | does the registration point at this deployment, with the four events | `webhook.rs` |
//! | `dynamodb-table` | is the table reachable, with its indexes | `aws.rs` |
//! | `retry-queue` | is the retry queue reachable | `aws.rs` |
//! | `dead-letter-queue` | is the dead-letter queue empty | `aws.rs` |
//! | `api-budget` | is there API headroom left today (the connector's counter; Salesforce's allowance) | `budget.rs` |
//!
//! The raw requests the Partner Center and CRM checks send are in `request.rs`.
//!
//! Exit: 1 when any check found a problem, else 2 when any could not check, else 0.

mod aws;
mod budget;
mod configuration;
mod credentials;
mod crm;
mod partner_center;
mod request;
mod webhook;

use std::fmt;
use std::io::Write;

use anyhow::Result;
use chrono::Utc;
use cosell_adapters::http::HttpAdapterError;
use cosell_runtime::config::CrmConfig;
use serde::Serialize;
use serde_json::json;

use crate::context::{Deployment, Exit, Output};

pub use aws::{check_dead_letter_queue, check_retry_queue, check_table};
pub use budget::check_api_budget;
pub use credentials::{check_crm_token, check_partner_center_token, check_webhooks_token};
pub use crm::{
    check_crm_access, check_crm_concurrency, check_crm_fields, check_currency, check_stages,
};
pub use partner_center::check_partner_center_role;
pub use webhook::check_webhook_registration;

/// Secrets and certificates expiring within this many days get a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
/// Less than this share of the daily API allowance left is a warning.
pub const BUDGET_WARNING_RATIO: f64 = 0.25;
/// Less than this share left is a problem.
pub const BUDGET_PROBLEM_RATIO: f64 = 0.05;

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

    /// A `problem` check with its fix.
    pub fn problem(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::with_fix(name, Status::Problem, detail, fix)
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
                Self::problem(name, detail, fix.clone())
            }
            HttpAdapterError::AccessDenied {
                missing_role: Some(role),
                ..
            } => Self::problem(
                name,
                detail,
                format!("grant {role} to the connector's user; {fix}"),
            ),
            _ => Self::problem(name, detail, fix),
        }
    }

    /// Whether the check neither found a problem nor failed to run: the checks that depend on
    /// it can run.
    fn passed(&self) -> bool {
        !matches!(self.status, Status::Problem | Status::CouldNotCheck)
    }

    /// `ok` (with the detail `ok` makes) when nothing is missing, else a problem with the
    /// detail and fix `problem` makes of the missing items, joined with commas.
    fn unless_missing(
        name: &'static str,
        missing: &[String],
        ok: impl FnOnce() -> String,
        problem: impl FnOnce(&str) -> (String, String),
    ) -> Self {
        if missing.is_empty() {
            Self::ok(name, ok())
        } else {
            let (detail, fix) = problem(&missing.join(", "));
            Self::problem(name, detail, fix)
        }
    }
}

/// The items of `wanted` that are not `present`, each as `describe` names it.
fn lacking<T>(
    wanted: impl IntoIterator<Item = T>,
    present: impl Fn(&T) -> bool,
    describe: impl Fn(T) -> String,
) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|item| !present(item))
        .map(describe)
        .collect()
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
    let deployment = match configuration::deployment(lookup, aws, webhook_url).await {
        Ok(deployment) => deployment,
        Err(checks) => return checks,
    };
    let mut checks = vec![configuration::complete(&deployment)];
    checks.extend(run_doctor(&deployment).await);
    checks
}

/// Runs every check after the configuration's, in order.
pub async fn run_doctor(deployment: &Deployment) -> Vec<Check> {
    let today = Utc::now().date_naive();
    let mut checks = Vec::new();
    let pc_token = check_partner_center_token(deployment, today).await;
    let pc_ok = pc_token.passed();
    checks.push(pc_token);
    let webhooks_token = check_webhooks_token(deployment, today).await;
    let webhooks_ok = webhooks_token.passed();
    checks.push(webhooks_token);
    let crm_token = check_crm_token(deployment, today).await;
    let crm_ok = crm_token.passed();
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
        checks.push(check_crm_concurrency(deployment).await);
    } else {
        for name in [
            "crm-access",
            "crm-fields",
            "currency",
            "stages",
            "crm-concurrency",
        ] {
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
