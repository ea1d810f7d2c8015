//! The SQS batch handler: each message is a [`RetryJob`] of either webhook function, run again
//! through the shared sync core ([`run_retry_job_within_budget`]) under
//! [`RetryPolicy::Redeliver`]; the answer lists the messages SQS must deliver again
//! (`ReportBatchItemFailures`).
//!
//! | Message | Answer | Also |
//! |---|---|---|
//! | body is not a retry job | success (deleted) | sent to the dead-letter queue as is, one error line |
//! | synced, skipped, ignored, duplicate | success (deleted) | |
//! | the day's background API budget is spent | success (deleted) | the same job queued again as a fresh message, for the next UTC day (not a receive towards `MAX_RECEIVE_COUNT`) |
//! | needs attention (permanent failure) | success (deleted) | the sync core audited it with the fix |
//! | retryable failure ([`Outcome::RetryLater`]), or the idempotency store is down | batch item failure | hidden for [`Backoff::delay`] of its `ApproximateReceiveCount` (honouring `Retry-After`) |
//! | the same, on receive `MAX_RECEIVE_COUNT` | batch item failure | audited as dead-lettered with the fix (`cosell redrive`); visibility 0, so SQS moves it to the dead-letter queue at once |
//! | another invocation holds the job ([`Outcome::InProgress`]) | batch item failure | hidden for `IN_PROGRESS_VISIBILITY_SECS` |
//!
//! Every message logs exactly one line (`correlation_id` = the message id, `referral_id`,
//! `event_name`, `outcome`, `receive_count`, `visibility_secs`, …), never the body, contact
//! data or tokens. A failed visibility change is logged and the message is still reported: it
//! comes back after the queue's own visibility timeout.
//!
//! [`Backoff::delay`]: crate::backoff::Backoff::delay
//! [`RetryPolicy::Redeliver`]: cosell_domain::sync::RetryPolicy::Redeliver

use std::convert::Infallible;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, TimeDelta, Utc};
use cosell_domain::budget::run_retry_job_within_budget;
use cosell_domain::ports::{
    AuditEntry, AuditEvent, AuditLog, CrmStore, Ports, RetryJob, RetrySource, SyncDirection,
};
use cosell_domain::sync::{Delivery, Handled, Outcome, SyncError};
use cosell_domain::webhook::WebhookEvent;
use cosell_domain::{CrmRecordId, ReferralId};
use lambda_runtime::LambdaEvent;

use cosell_domain::metrics::Metric;
use cosell_runtime::edge::contain;
use cosell_runtime::metrics;

use crate::app::App;
use crate::backoff::{Jitter, RandomJitter};
use crate::queue::WorkerQueues;

/// The deadline assumed without a Lambda context (local runs, tests).
pub const FALLBACK_DEADLINE: Duration = Duration::from_secs(30);

/// The instant and deadline of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation {
    /// Now, read once.
    pub now: DateTime<Utc>,
    /// The Lambda deadline: until then each job's idempotency key is held in progress.
    pub deadline: DateTime<Utc>,
}

impl Invocation {
    /// `now` with the Lambda context's deadline (milliseconds since the epoch; a missing or
    /// past one counts as [`FALLBACK_DEADLINE`] from now).
    pub fn new(now: DateTime<Utc>, deadline_ms: Option<u64>) -> Self {
        let deadline = deadline_ms
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(DateTime::from_timestamp_millis)
            .filter(|deadline| *deadline > now)
            .unwrap_or_else(|| {
                now + TimeDelta::from_std(FALLBACK_DEADLINE).unwrap_or(TimeDelta::zero())
            });
        Self { now, deadline }
    }
}

/// What becomes of one message.
///
/// A later "defer this job until T" (an exhausted API budget) is one more arm of the
/// per-message step answering `Redeliver { visibility: Some(T - now) }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: SQS deletes it.
    Delete,
    /// A batch item failure: SQS delivers it again, after `visibility` when given (else the
    /// queue's visibility timeout).
    Redeliver {
        /// The visibility timeout set on it.
        visibility: Option<Duration>,
    },
}

/// The Lambda runtime's entry: [`handle`] with the invocation's clock and deadline and random
/// jitter.
pub async fn on_event<X: Ports, M: WorkerQueues>(
    event: LambdaEvent<SqsEvent>,
    app: &App<X, M>,
) -> Result<SqsBatchResponse, Infallible> {
    let invocation = Invocation::new(Utc::now(), Some(event.context.deadline));
    Ok(handle(&event.payload, app, &invocation, &RandomJitter).await)
}

/// Handle one batch (see the [module docs](self)). Messages run one after the other; the
/// answer lists the ids of those to deliver again.
pub async fn handle<X: Ports, M, J>(
    event: &SqsEvent,
    app: &App<X, M>,
    invocation: &Invocation,
    jitter: &J,
) -> SqsBatchResponse
where
    M: WorkerQueues,
    J: Jitter,
{
    let batch_started = Instant::now();
    let mut response = SqsBatchResponse::default();
    for message in &event.records {
        let started = Instant::now();
        let mut line = LogLine::new(message);
        let disposition = match contain(process(message, app, invocation, jitter, &mut line)).await
        {
            Ok(disposition) => disposition,
            // The other messages of the batch go on; this one comes back (and, failing every
            // time, ends in the dead-letter queue).
            Err(panicked) => {
                metrics::count(Metric::InternalError, 1);
                line.warnings.push(panicked.to_string());
                Disposition::Redeliver { visibility: None }
            }
        };
        if let Disposition::Redeliver { visibility } = disposition {
            line.visibility_secs = visibility.map(|v| v.as_secs());
            if let Some(visibility) = visibility {
                let receipt = message.receipt_handle.as_deref().unwrap_or_default();
                if let Err(error) = app.queues.change_visibility(receipt, visibility).await {
                    line.warnings
                        .push(format!("visibility not changed: {error}"));
                }
            }
            match &message.message_id {
                Some(id) => response.add_failure(id.clone()),
                None => line
                    .warnings
                    .push("no message id: the failure cannot be reported".into()),
            }
        }
        line.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        line.emit(disposition);
    }
    metrics::flush(batch_started.elapsed());
    response
}

/// One message (see the [module docs](self)).
async fn process<X: Ports, M, J>(
    message: &SqsMessage,
    app: &App<X, M>,
    invocation: &Invocation,
    jitter: &J,
    line: &mut LogLine,
) -> Disposition
where
    M: WorkerQueues,
    J: Jitter,
{
    let job = match parse(message) {
        Ok(job) => job,
        Err(reason) => {
            metrics::count(Metric::MalformedJob, 1);
            line.outcome = "malformed";
            line.detail = Some(reason);
            return match app.queues.dead_letter(message).await {
                Ok(()) => Disposition::Delete,
                Err(error) => {
                    // Reported instead: the queue's redrive policy dead-letters it in the end.
                    line.warnings
                        .push(format!("not sent to the dead-letter queue: {error}"));
                    Disposition::Redeliver { visibility: None }
                }
            };
        }
    };
    line.describe(&job);
    let delivery = Delivery {
        correlation_id: message.message_id.clone(),
        deadline: invocation.deadline,
        now: invocation.now,
    };
    let (retry_after, reason, referral_id, crm) = match run_retry_job_within_budget(
        &app.connector.deps(),
        app.connector.budget(),
        &job,
        &delivery,
    )
    .await
    {
        Ok(handled) => {
            line.handled(&handled);
            match handled.outcome {
                Outcome::RetryLater {
                    retry_after,
                    reason,
                    referral_id,
                    crm,
                } => (retry_after, reason, referral_id, crm),
                Outcome::InProgress => {
                    return Disposition::Redeliver {
                        visibility: Some(app.worker.in_progress_visibility),
                    };
                }
                _ => return Disposition::Delete,
            }
        }
        Err(error) => {
            metrics::count(Metric::DeliveryFailed, 1);
            line.outcome = error.log_name();
            line.detail = Some(error.to_string());
            (None, sync_error_reason(&error), line.referral(), None)
        }
    };

    let receive_count = line.receive_count.unwrap_or(1);
    if receive_count >= app.worker.max_receive_count {
        metrics::count(Metric::DeadLettered, 1);
        line.outcome = "dead_lettered";
        let dead = DeadLetter {
            job: &job,
            receive_count,
            reason: &reason,
            referral_id,
            crm: crm.as_ref(),
            correlation_id: message.message_id.clone(),
            at: invocation.now,
        };
        if let Err(error) = dead.record(app).await {
            line.warnings.push(format!("not audited: {error}"));
        }
        // Visible at once: the next receive moves it to the dead-letter queue.
        return Disposition::Redeliver {
            visibility: Some(Duration::ZERO),
        };
    }
    let delay = app
        .worker
        .backoff
        .delay(receive_count, retry_after, jitter.fraction());
    Disposition::Redeliver {
        visibility: Some(delay),
    }
}

/// The message's retry job, or why it is none (no body content: it may hold anything).
fn parse(message: &SqsMessage) -> Result<RetryJob, String> {
    let body = message
        .body
        .as_deref()
        .ok_or_else(|| "the message has no body".to_owned())?;
    serde_json::from_str::<RetryJob>(body).map_err(|error| {
        format!(
            "the body ({} bytes) is not a retry job: {} at line {} column {}",
            body.len(),
            classify(&error),
            error.line(),
            error.column()
        )
    })
}

fn classify(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of another shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

fn sync_error_reason(error: &SyncError) -> String {
    let text = error.to_string();
    if text.ends_with('.') {
        text
    } else {
        format!("{text}.")
    }
}

fn direction(source: RetrySource) -> Option<SyncDirection> {
    match source {
        RetrySource::PartnerCenter => Some(SyncDirection::ToCrm),
        RetrySource::Dataverse | RetrySource::Salesforce => Some(SyncDirection::ToPartnerCenter),
        RetrySource::Reconcile => None,
    }
}

/// A job that failed on its last receive: it goes to the dead-letter queue.
struct DeadLetter<'a> {
    job: &'a RetryJob,
    receive_count: u32,
    reason: &'a str,
    referral_id: Option<ReferralId>,
    crm: Option<&'a CrmRecordId>,
    correlation_id: Option<String>,
    at: DateTime<Utc>,
}

impl DeadLetter<'_> {
    /// The fix an operator applies.
    const FIX: &'static str = "Fix the cause named in the reason (the service's availability, \
                               credentials or permissions), then run `cosell redrive` to move \
                               the job from the dead-letter queue back to the retry queue.";

    /// Audit it (and write it to the CRM record's Audit field when one is known, best effort).
    async fn record<X: Ports, M>(&self, app: &App<X, M>) -> Result<(), cosell_domain::PortError> {
        let entry = AuditEntry {
            at: self.at,
            direction: direction(self.job.source),
            referral_id: self.referral_id,
            crm: self.crm.cloned(),
            correlation_id: self.correlation_id.clone(),
            event: AuditEvent::Failed {
                reason: format!(
                    "Still failing after {} deliveries of retry attempt {}; the job goes to the \
                     dead-letter queue. Last error: {}",
                    self.receive_count, self.job.attempt, self.reason
                ),
                fix: Self::FIX.to_owned(),
            },
        };
        if let Some(crm) = self.crm {
            // Best effort: the CRM is what may be down.
            let _ = app.connector.crm.write_audit(crm, &entry.crm_text()).await;
        }
        app.connector.stores.audit.append(&entry).await
    }
}

/// The one log line of a message.
#[derive(Debug, Default)]
struct LogLine {
    correlation_id: Option<String>,
    receive_count: Option<u32>,
    source: Option<&'static str>,
    attempt: Option<u32>,
    event_name: Option<String>,
    referral_id: Option<String>,
    crm_record: Option<String>,
    outcome: &'static str,
    detail: Option<String>,
    visibility_secs: Option<u64>,
    elapsed_ms: u64,
    warnings: Vec<String>,
}

impl LogLine {
    fn new(message: &SqsMessage) -> Self {
        Self {
            correlation_id: message.message_id.clone(),
            receive_count: message
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|count| count.parse().ok()),
            outcome: "unknown",
            ..Self::default()
        }
    }

    fn describe(&mut self, job: &RetryJob) {
        self.attempt = Some(job.attempt);
        self.source = Some(match job.source {
            RetrySource::PartnerCenter => "partner_center",
            RetrySource::Dataverse => "dataverse",
            RetrySource::Salesforce => "salesforce",
            RetrySource::Reconcile => "reconcile",
        });
        match job.source {
            RetrySource::PartnerCenter => {
                if let Ok(event) = serde_json::from_value::<WebhookEvent>(job.payload.clone()) {
                    self.event_name = Some(event.event_name.as_str().to_owned());
                    self.referral_id = event.referral_id().ok().map(|id| id.to_string());
                }
            }
            _ => {
                self.event_name = Some("crm-change".to_owned());
                self.crm_record = job
                    .payload
                    .get("record")
                    .and_then(|record| serde_json::from_value::<CrmRecordId>(record.clone()).ok())
                    .map(|record| record.to_string());
            }
        }
    }

    fn handled(&mut self, handled: &Handled) {
        metrics::outcome(&handled.outcome);
        self.outcome = handled.outcome.log_name();
        self.detail = handled.outcome.log_detail();
        if let Some(crm) = handled.outcome.crm() {
            self.crm_record = Some(crm.to_string());
        }
        if let Some(referral) = handled.outcome.referral_id().or(handled.referral_id) {
            self.referral_id = Some(referral.to_string());
        }
        self.warnings
            .extend(handled.warnings.iter().map(ToString::to_string));
    }

    fn referral(&self) -> Option<ReferralId> {
        self.referral_id
            .as_deref()
            .and_then(|id| ReferralId::try_from(id).ok())
    }

    fn emit(&self, disposition: Disposition) {
        let correlation_id = self.correlation_id.as_deref().unwrap_or_default();
        let event_name = self.event_name.as_deref().unwrap_or_default();
        let referral_id = self.referral_id.as_deref().unwrap_or_default();
        let crm_record = self.crm_record.as_deref().unwrap_or_default();
        let source = self.source.unwrap_or_default();
        let detail = self.detail.as_deref().unwrap_or_default();
        let receive_count = self.receive_count.unwrap_or_default();
        let attempt = self.attempt.unwrap_or_default();
        let visibility_secs = self.visibility_secs.unwrap_or_default();
        let redeliver = matches!(disposition, Disposition::Redeliver { .. });
        let warnings = self.warnings.len();
        let warning_messages = self.warnings.join(" | ");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    correlation_id,
                    event_name,
                    referral_id,
                    crm_record,
                    source,
                    attempt,
                    outcome = self.outcome,
                    redeliver,
                    receive_count,
                    visibility_secs,
                    elapsed_ms = self.elapsed_ms,
                    detail,
                    warnings,
                    warning_messages,
                    "retry job"
                )
            };
        }
        match self.outcome {
            "malformed" | "dead_lettered" | "needs_attention" => line!(error),
            _ if redeliver || warnings > 0 => line!(warn),
            _ => line!(info),
        }
    }
}
