//! `cosell status [--json]`: the deployment at a glance — Partner Center and CRM calls used
//! today against the daily budget (and per service, each in its own unit), the day's outcomes
//! (counted from the audit log, under the names of the outcome metrics: README "Metrics and the
//! dashboard"), the retry queue's and dead-letter queue's depth, and the last reconciliation run
//! and checkpoint — what the CloudWatch dashboard shows, for someone without CloudWatch access.
//!
//! Reads the table (`TABLE_NAME`), the queue (`RETRY_QUEUE_URL`, its dead-letter queue from
//! `DLQ_URL` or its `RedrivePolicy`) and the budget variables (`DAILY_API_BUDGET`,
//! `WEBHOOK_RESERVED_SHARE`). Exit 0 healthy, 1 when the dead-letter queue holds jobs or the
//! day's budget is used up, 2 when something could not be read.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context as _, Result};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use cosell_adapters::aws::{
    AwsClients, DynamoApiBudget, DynamoAuditLog, DynamoCheckpointStore, SqsQueue,
};
use cosell_domain::budget::{BudgetPolicy, CallKind, utc_day};
use cosell_domain::ports::{ApiService, Checkpoint, ServiceCalls};
use serde::Serialize;

use crate::context::{Exit, Output};
use crate::redrive::dead_letter_queue_of;

/// `cosell status`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The connector's DynamoDB table.
    #[arg(long, env = "TABLE_NAME")]
    pub table: String,
    /// The retry queue.
    #[arg(long, env = "RETRY_QUEUE_URL")]
    pub queue_url: String,
    /// The dead-letter queue (default: the retry queue's `RedrivePolicy` target).
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A queue's approximate depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// Ready to be received.
    pub visible: u64,
    /// Being processed.
    pub in_flight: u64,
    /// Still delayed (retries waiting for their backoff, syncs deferred by the budget).
    pub delayed: u64,
}

/// What `cosell status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The UTC day counted.
    pub day: NaiveDate,
    /// Partner Center and CRM calls counted today.
    pub calls_today: u64,
    /// Today's calls per service, each in the unit the service counts (a Salesforce Composite
    /// request is one API call, a Dataverse `$batch` each request inside it). Syncs still
    /// running are in `calls_today` only (as their reservation).
    pub calls_today_by_service: ServiceCalls,
    /// The daily budget.
    pub daily_budget: u64,
    /// Where background work (reconciliation, retries) stops.
    pub background_limit: u64,
    /// `calls_today` as a percentage of `daily_budget` (the `ApiBudgetUsedPercent` metric).
    pub budget_used_percent: f64,
    /// The day's outcomes by the name of their metric (`Created`, `DuplicateSkipped`,
    /// `NeedsAttention`, …), counted from the audit log's entries since 00:00 UTC.
    pub outcomes_today: BTreeMap<String, u64>,
    /// The retry queue.
    pub retry_queue: Depth,
    /// The dead-letter queue, when one is known.
    pub dead_letter_queue: Option<Depth>,
    /// The reconciliation checkpoint (`last_run`, per side `since` / `after`).
    pub last_reconcile: Option<Checkpoint>,
    /// What needs a look.
    pub problems: Vec<String>,
}

/// Read everything [`Status`] shows.
pub async fn status(
    aws: &AwsClients,
    args: &Args,
    policy: &BudgetPolicy,
    now: DateTime<Utc>,
) -> Result<Status> {
    let day = utc_day(now);
    let counted = DynamoApiBudget::new(aws.dynamodb.clone(), &args.table)
        .try_day(day)
        .await
        .context("reading today's API call count")?;
    let calls_today = counted.total;
    let last_reconcile = DynamoCheckpointStore::new(aws.dynamodb.clone(), &args.table)
        .try_load()
        .await
        .context("reading the reconciliation checkpoint")?;
    let depth = |url: String| async move {
        let depth = SqsQueue::new(aws.sqs.clone(), &url)
            .depth()
            .await
            .with_context(|| format!("reading the depth of {url}"))?;
        anyhow::Ok(Depth {
            visible: depth.visible,
            in_flight: depth.in_flight,
            delayed: depth.delayed,
        })
    };
    let midnight = day.and_hms_opt(0, 0, 0).map_or(now, |at| at.and_utc());
    let mut outcomes_today = BTreeMap::new();
    for entry in DynamoAuditLog::new(aws.dynamodb.clone(), args.table.clone())
        .try_since(midnight)
        .await
        .context("reading today's audit entries")?
    {
        if let Some(name) = entry.event.metric_name() {
            *outcomes_today.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    let retry_queue = depth(args.queue_url.clone()).await?;
    let dlq_url = match args.dlq_url.clone().filter(|url| !url.trim().is_empty()) {
        Some(url) => Some(url),
        None => dead_letter_queue_of(&aws.sqs, &args.queue_url).await?,
    };
    let dead_letter_queue = match dlq_url {
        Some(url) => Some(depth(url).await?),
        None => None,
    };

    let mut problems = Vec::new();
    if let Some(dlq) = dead_letter_queue {
        let jobs = dlq.visible + dlq.in_flight + dlq.delayed;
        if jobs > 0 {
            problems.push(format!(
                "{jobs} job(s) in the dead-letter queue: see `cosell audit --needs-attention`, \
                 fix the cause, then `cosell redrive`"
            ));
        }
    } else {
        problems.push(
            "the retry queue has no dead-letter queue (no RedrivePolicy): failed jobs are \
             retried forever"
                .to_owned(),
        );
    }
    if calls_today >= policy.daily_budget {
        problems.push(format!(
            "today's API budget is used up ({calls_today} of {}): syncs wait for the next UTC \
             day; raise DAILY_API_BUDGET if the CRM and Partner Center allow more",
            policy.daily_budget
        ));
    }
    Ok(Status {
        day,
        calls_today,
        calls_today_by_service: counted.by_service,
        daily_budget: policy.daily_budget,
        background_limit: policy.limit(CallKind::Background),
        budget_used_percent: percent(calls_today, policy.daily_budget),
        outcomes_today,
        retry_queue,
        dead_letter_queue,
        last_reconcile,
        problems,
    })
}

/// `used` as a percentage of `budget`, to two decimals (as the metric is published).
fn percent(used: u64, budget: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let (used, budget) = (used as f64, budget.max(1) as f64);
    (used * 100.0 / budget * 100.0).round() / 100.0
}

fn stamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "never".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// Partner Center's calls, then each CRM's that has some, in its unit.
fn per_service(made: &ServiceCalls) -> String {
    let shown: Vec<String> = made
        .iter()
        .filter(|(service, calls)| *calls > 0 || *service == ApiService::PartnerCenter)
        .map(|(service, calls)| {
            let unit = match service {
                ApiService::PartnerCenter | ApiService::Dataverse => "requests",
                ApiService::Salesforce => "API calls",
            };
            format!("{service} {calls} {unit}")
        })
        .collect();
    shown.join(", ")
}

fn depth_text(depth: Depth) -> String {
    format!(
        "{} waiting, {} in flight, {} delayed",
        depth.visible, depth.in_flight, depth.delayed
    )
}

/// Print `status` for a person.
pub fn print(status: &Status, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "API calls today ({}): {} of {} ({} %; background work stops at {})",
        status.day,
        status.calls_today,
        status.daily_budget,
        status.budget_used_percent,
        status.background_limit
    )?;
    writeln!(
        out,
        "  per service: {}",
        per_service(&status.calls_today_by_service)
    )?;
    if status.outcomes_today.is_empty() {
        writeln!(out, "Outcomes today: none audited")?;
    } else {
        let counts: Vec<String> = status
            .outcomes_today
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        writeln!(out, "Outcomes today: {}", counts.join(", "))?;
    }
    writeln!(out, "Retry queue: {}", depth_text(status.retry_queue))?;
    match status.dead_letter_queue {
        Some(depth) => writeln!(out, "Dead-letter queue: {}", depth_text(depth))?,
        None => writeln!(out, "Dead-letter queue: none configured")?,
    }
    match &status.last_reconcile {
        Some(checkpoint) => {
            writeln!(
                out,
                "Last reconcile: {} ({} job(s) queued)",
                stamp(checkpoint.last_run),
                checkpoint.last_enqueued
            )?;
            for (side, cursor) in [
                ("referrals", &checkpoint.referrals),
                ("opportunities", &checkpoint.opportunities),
            ] {
                let resume = if cursor.after.is_some() {
                    " (a pass is unfinished: the next run continues it)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "  {side}: changes up to {}{resume}",
                    stamp(cursor.since)
                )?;
            }
        }
        None => writeln!(out, "Last reconcile: never")?,
    }
    for problem in &status.problems {
        writeln!(out, "PROBLEM: {problem}")?;
    }
    Ok(())
}

/// Run `cosell status` with `aws` and the budget read through `lookup`.
pub async fn run(
    args: &Args,
    aws: &AwsClients,
    lookup: impl Fn(&str) -> Option<String>,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<Exit> {
    let policy = BudgetPolicy::from_lookup(lookup).context("the API budget variables")?;
    let status = status(aws, args, &policy, now).await?;
    if Output::from_flag(args.json).is_json() {
        Output::write_json(out, &status)?;
    } else {
        print(&status, out)?;
    }
    Ok(if status.problems.is_empty() {
        Exit::Healthy
    } else {
        Exit::Problems
    })
}

/// The `cosell status` entry point.
pub async fn main(args: Args) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let aws = AwsClients::from_env().await;
    match run(
        &args,
        &aws,
        |name| std::env::var(name).ok(),
        Utc::now(),
        &mut out,
    )
    .await
    {
        Ok(exit) => exit.into(),
        Err(error) => {
            let _ = out.flush();
            eprintln!("status could not be read: {error:#}");
            Exit::CouldNotCheck.into()
        }
    }
}
