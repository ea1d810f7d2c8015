//! `api-budget`: there is API headroom left today.

use chrono::Utc;
use cosell_adapters::http::RequestContext;
use cosell_domain::ports::Service;
use cosell_runtime::config::CrmConfig;

use super::aws::{AwsStore, DEPLOY_FIX};
use super::request::{crm_client, get, salesforce_root};
use super::{BUDGET_PROBLEM_RATIO, BUDGET_WARNING_RATIO, Check, Status};
use crate::context::Deployment;

const NAME: &str = "api-budget";

/// `api-budget`: headroom left today. The connector's own counter (`DynamoApiBudget`, the
/// Partner Center and CRM calls of every function) against `DAILY_API_BUDGET`; for Salesforce
/// also the org's allowance (`/limits` → `DailyApiRequests`). The worse of the two decides.
pub async fn check_api_budget(deployment: &Deployment) -> Check {
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

/// One side of the budget: its status, detail and fix.
type BudgetPart = (Status, String, Option<String>);

/// The connector's counter of today's calls against `DAILY_API_BUDGET`.
async fn connector_budget(deployment: &Deployment) -> BudgetPart {
    let fix = "syncs beyond the budget wait for the next UTC day (reconciliation first, webhooks \
               keep WEBHOOK_RESERVED_SHARE): raise DAILY_API_BUDGET if the services allow more \
               calls, or find what calls so much with `cosell audit --needs-attention`";
    let Some(AwsStore {
        table_name, aws, ..
    }) = AwsStore::of(deployment)
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
    let limits = match get(
        &crm_client(deployment),
        &ctx,
        &format!("{}/limits", salesforce_root()),
    )
    .await
    {
        Ok(limits) => limits,
        Err(error) => {
            let check = Check::from_error(NAME, &error, fix);
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
