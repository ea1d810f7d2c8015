//! One scheduled run: the EventBridge event's content is ignored; the run reads the clock
//! once, reconciles, logs one line and answers its summary (ids, reasons and counts only).
//!
//! A side that failed (Partner Center or the CRM unavailable) makes the invocation fail after
//! the checkpoint of the pages done is saved, so the function's error alarm sees it; the next
//! scheduled run continues where this one stopped.
//!
//! The run stops [`DEADLINE_MARGIN`] before the invocation's deadline (checked before every
//! record), saving where it stands, so the Lambda timeout never kills it before its checkpoint
//! is saved.

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use cosell_domain::reconcile::{
    ReconcileError, ReconcilePorts, ReconcileReport, ReconcileRun, reconcile,
};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

use cosell_domain::metrics::Metric;
use cosell_runtime::edge::{Panicked, contain};
use cosell_runtime::metrics;

use crate::app::App;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The checkpoint could not be read or saved.
    #[error(transparent)]
    Checkpoint(#[from] ReconcileError),
    /// A side stopped early; what was done is saved.
    #[error("reconciliation stopped early: {0}")]
    Incomplete(String),
    /// The run panicked (caught: the instance goes on; the next scheduled run starts from the
    /// saved checkpoint).
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

impl From<RunError> for lambda_runtime::Diagnostic {
    fn from(error: RunError) -> Self {
        let error_type = match &error {
            RunError::Checkpoint(_) => "ReconcileCheckpointError",
            RunError::Incomplete(_) => "ReconcileIncomplete",
            RunError::Panicked(_) => "ReconcilePanicked",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// How long before the invocation's deadline a run stops: room for the record in hand, the
/// checkpoint's save and the answer.
pub const DEADLINE_MARGIN: TimeDelta = TimeDelta::seconds(20);

/// The Lambda handler: the scheduled event is ignored. Ends with the invocation's metrics
/// document (`cosell_runtime::metrics`).
pub async fn handle<X: ReconcilePorts>(
    event: LambdaEvent<Value>,
    app: &App<X>,
) -> Result<Value, RunError> {
    let started = Instant::now();
    let result = handle_event(event, app).await;
    if matches!(result, Err(RunError::Panicked(_))) {
        metrics::count(Metric::InternalError, 1);
    }
    metrics::flush(started.elapsed());
    result
}

async fn handle_event<X: ReconcilePorts>(
    event: LambdaEvent<Value>,
    app: &App<X>,
) -> Result<Value, RunError> {
    let deadline = i64::try_from(event.context.deadline)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .and_then(|deadline| deadline.checked_sub_signed(DEADLINE_MARGIN));
    let report = contain(run_until(app, Utc::now(), deadline)).await??;
    let summary = summary(&report);
    if report.failed() {
        let errors = [&report.referrals.error, &report.opportunities.error]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        return Err(RunError::Incomplete(errors));
    }
    Ok(summary)
}

/// One run at `now` (tests pass the instant) without a deadline, with its log line.
pub async fn run<X: ReconcilePorts>(
    app: &App<X>,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, ReconcileError> {
    run_until(app, now, None).await
}

/// One run at `now` that stops at `deadline` (on the wall clock), with its log line.
pub async fn run_until<X: ReconcilePorts>(
    app: &App<X>,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> Result<ReconcileReport, ReconcileError> {
    let run = ReconcileRun {
        now,
        since: None,
        dry_run: false,
        deadline,
    };
    let report = reconcile(app.deps(), &app.settings, &app.reconcile, &run).await?;
    metrics::count(Metric::ReconcileEnqueued, report.planned.len() as u64);
    metrics::count(
        Metric::ReconcileInSync,
        (report.referrals.in_sync + report.opportunities.in_sync) as u64,
    );
    tracing::info!(
        referrals_examined = report.referrals.examined,
        opportunities_examined = report.opportunities.examined,
        enqueued = report.planned.len(),
        calls = report.calls,
        referrals_finished = report.referrals.finished,
        opportunities_finished = report.opportunities.finished,
        deferred_until = ?report.deferred_until,
        deadline_reached = report.deadline_reached,
        referrals_error = ?report.referrals.error,
        opportunities_error = ?report.opportunities.error,
        "reconciliation run"
    );
    Ok(report)
}

/// The invocation's answer: counts and the checkpoint, not the list of records.
pub fn summary(report: &ReconcileReport) -> Value {
    serde_json::json!({
        "enqueued": report.planned.len(),
        "calls": report.calls,
        "referrals": report.referrals,
        "opportunities": report.opportunities,
        "deferred_until": report.deferred_until,
        "deadline_reached": report.deadline_reached,
        "checkpoint": report.checkpoint,
    })
}
