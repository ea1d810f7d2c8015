//! `cosell reconcile [--since <date>] [--dry-run] [--json]`: queue a sync for every referral
//! and opportunity whose version differs from its link, as the scheduled `reconcile` function
//! does ([`cosell_domain::reconcile`]).
//!
//! With `--since` it is a backfill: both sides are read from that date (`YYYY-MM-DD`, UTC
//! midnight, or an RFC 3339 instant) and the checkpoint is left alone. Without it, the run
//! continues from the checkpoint and saves it, like a scheduled run. `--dry-run` prints what
//! would be queued and why (ids and reasons only, never contact data), and queues nothing.
//!
//! Configuration: the functions' variables (`reconcile`'s [`Config`]). Exit 0 done, 1 a side
//! stopped early (Partner Center or the CRM failed; what was done stands), 2 could not run.

use std::io::Write;

use ::reconcile::{App, Config, Local};
use anyhow::{Context as _, Result};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use cosell_adapters::aws::AwsClients;
use cosell_domain::reconcile::{
    ReconcilePorts, ReconcileReport, ReconcileRun, Side, SideReport, reconcile,
};
use cosell_runtime::StoreConfig;

use crate::context::{Exit, Output};

/// `cosell reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Backfill from this date (`YYYY-MM-DD`, UTC) or instant (RFC 3339); the checkpoint is
    /// left alone. Without it: continue from the checkpoint, as the scheduled run does.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Print what would be queued and why; queue and save nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Records examined per side, at most (default `RECONCILE_MAX_ITEMS`, else 500).
    #[arg(long)]
    pub max_items: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `YYYY-MM-DD` (UTC midnight) or an RFC 3339 instant.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day
            .and_hms_opt(0, 0, 0)
            .map(|midnight| midnight.and_utc())
            .ok_or_else(|| format!("'{text}' is not a date"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| format!("'{text}' is neither YYYY-MM-DD nor an RFC 3339 instant"))
}

/// Run `cosell reconcile` with the configuration read through `lookup` (the table and queue
/// through `aws` when `STORE=dynamodb`), at `now`.
pub async fn run(
    args: &Args,
    lookup: impl Fn(&str) -> Option<String>,
    aws: &AwsClients,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<Exit> {
    let mut config = Config::from_lookup(lookup).context("the configuration")?;
    if let Some(max_items) = args.max_items {
        config.reconcile.max_items = max_items;
    }
    let report = match &config.sync.store {
        StoreConfig::DynamoDb {
            table_name,
            retry_queue_url,
        } => {
            let app = App::dynamo(&config, aws, table_name, retry_queue_url)
                .context("building the clients")?;
            run_with(&app, args, now).await?
        }
        StoreConfig::Memory => {
            let app = App::<Local>::local(&config).context("building the clients")?;
            run_with(&app, args, now).await?
        }
    };
    if Output::from_flag(args.json).is_json() {
        Output::write_json(out, &report)?;
    } else {
        print(&report, args.since, out)?;
    }
    Ok(if report.failed() {
        Exit::Problems
    } else {
        Exit::Healthy
    })
}

/// One run with `app`.
pub async fn run_with<X: ReconcilePorts>(
    app: &App<X>,
    args: &Args,
    now: DateTime<Utc>,
) -> Result<ReconcileReport> {
    let run = ReconcileRun {
        now,
        since: args.since,
        dry_run: args.dry_run,
        // An operator's run goes on until its item limit or the end of the changes.
        deadline: None,
    };
    Ok(reconcile(app.deps(), &app.settings, &app.reconcile, &run).await?)
}

fn stamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "unknown".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn side_line(name: &str, side: &SideReport, queued: usize, verb: &str) -> String {
    let end = if side.finished {
        "all pages read"
    } else {
        "stopped early: the next run continues"
    };
    let mut line = format!(
        "{name}: {} examined, {} in sync, {} ignored, {queued} {verb} ({end})",
        side.examined, side.in_sync, side.ignored
    );
    if let Some(error) = &side.error {
        line.push_str(&format!("\n  FAILED: {error}"));
    }
    line
}

/// Print `report` for a person.
pub fn print(
    report: &ReconcileReport,
    since: Option<DateTime<Utc>>,
    out: &mut dyn Write,
) -> Result<()> {
    let verb = if report.dry_run {
        "would queue"
    } else {
        "queued"
    };
    match since {
        Some(since) => writeln!(
            out,
            "Backfill from {}{}",
            stamp(Some(since)),
            if report.dry_run {
                " (dry run: nothing is queued)"
            } else {
                ""
            }
        )?,
        None => writeln!(
            out,
            "Reconciling from the checkpoint (referrals since {}, opportunities since {}){}",
            stamp(report.referrals.since),
            stamp(report.opportunities.since),
            if report.dry_run {
                " (dry run: nothing is queued)"
            } else {
                ""
            }
        )?,
    }
    for planned in &report.planned {
        let what = match planned.side {
            Side::PartnerCenter => "referral",
            Side::Crm => "opportunity",
        };
        let referral = planned
            .referral_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        let crm = planned
            .crm
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        writeln!(
            out,
            "  {verb} {what}: referral {referral}, CRM {crm} — {} (changed {})",
            planned.reason,
            stamp(planned.changed_at)
        )?;
    }
    let count = |side: Side| report.planned.iter().filter(|p| p.side == side).count();
    writeln!(
        out,
        "{}",
        side_line(
            "Referrals",
            &report.referrals,
            count(Side::PartnerCenter),
            verb
        )
    )?;
    writeln!(
        out,
        "{}",
        side_line(
            "Opportunities",
            &report.opportunities,
            count(Side::Crm),
            verb
        )
    )?;
    writeln!(out, "Partner Center and CRM calls: {}", report.calls)?;
    if let Some(until) = report.deferred_until {
        writeln!(
            out,
            "The background API budget is used up: the rest waits until {}",
            stamp(Some(until))
        )?;
    }
    Ok(())
}

/// The `cosell reconcile` entry point.
pub async fn main(args: Args) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let aws = AwsClients::from_env().await;
    let lookup = |name: &str| std::env::var(name).ok();
    match run(&args, lookup, &aws, Utc::now(), &mut out).await {
        Ok(exit) => exit.into(),
        Err(error) => {
            let _ = out.flush();
            eprintln!("reconcile could not run: {error:#}");
            Exit::CouldNotCheck.into()
        }
    }
}
