//! `cosell redrive`: move the retry jobs in the dead-letter queue back to the retry queue, after
//! the cause of their failure was fixed.
//!
//! 1. `--dry-run` lists what would move (job key, source, attempt, receive count, first seen)
//!    and moves nothing: the messages are received hidden for a moment and made visible again
//!    at once.
//! 2. Otherwise `StartMessageMoveTask` (SQS moves the messages itself, at most 500 a second)
//!    when the endpoint implements it; an endpoint that does not (an emulator) is detected and
//!    the messages are moved one by one: receive → send to the retry queue with the same body
//!    and message attributes → delete from the dead-letter queue.
//!
//! A replayed job whose effect already happened changes nothing: each job runs under the
//! idempotency key of its attempt, and the syncs upsert by referral id. A progress bar is
//! drawn on standard error when it is a terminal; the summary line says how many moved and how
//! many failed. Exit 0 all moved (or nothing to move), 1 some failed, 2 the queues could not
//! be read.
//!
//! | Variable / flag | Required | Meaning |
//! |---|---|---|
//! | `--queue-url` / `RETRY_QUEUE_URL` | yes | the retry queue the jobs go back to |
//! | `--dlq-url` / `DLQ_URL` (or `DEAD_LETTER_QUEUE_URL`) | no | its dead-letter queue; default: the retry queue's `RedrivePolicy` target |
//! | `TABLE_NAME` | no | the connector's table: each job moved gets a `redriven` audit entry (a move task's jobs are listed first) |

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use cosell_adapters::AwsAdapterError;
use cosell_adapters::aws::aws_sdk_sqs::Client;
use cosell_adapters::aws::aws_sdk_sqs::types::QueueAttributeName;
use cosell_adapters::aws::{AwsClients, DynamoAuditLog, MoveTaskStart, ReceivedMessage, SqsQueue};
use cosell_domain::ports::{AuditEntry, AuditEvent, AuditLog, RetryJob};
use cosell_domain::webhook::WebhookEvent;
use cosell_domain::{CrmRecordId, ReferralId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::context::{Exit, Output};

/// `cosell redrive`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The retry queue the jobs go back to.
    #[arg(long, env = "RETRY_QUEUE_URL")]
    pub queue_url: String,
    /// The dead-letter queue (default: `DEAD_LETTER_QUEUE_URL`, else the retry queue's
    /// `RedrivePolicy` target).
    #[arg(long, env = "DLQ_URL")]
    pub dlq_url: Option<String>,
    /// List what would move, move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Move the messages one by one even where `StartMessageMoveTask` is available.
    #[arg(long)]
    pub no_move_task: bool,
    /// Move at most this many messages (one by one only).
    #[arg(long, default_value_t = Options::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How [`redrive`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// List, move nothing.
    pub dry_run: bool,
    /// Try `StartMessageMoveTask` first.
    pub use_move_task: bool,
    /// Stop after this many messages.
    pub limit: usize,
    /// Draw a progress line on standard error.
    pub progress: bool,
}

impl Options {
    /// The default `--limit`.
    pub const DEFAULT_LIMIT: usize = 10_000;
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            use_move_task: true,
            limit: Self::DEFAULT_LIMIT,
            progress: false,
        }
    }
}

/// How the jobs were (or would be) moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Mode {
    /// Listed only.
    DryRun,
    /// SQS moves them (`StartMessageMoveTask`).
    MoveTask {
        /// The task handle (`aws sqs list-message-move-tasks` shows its progress).
        task_handle: String,
    },
    /// Moved one by one.
    OneByOne,
}

/// One job in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadJob {
    /// The SQS message id.
    pub message_id: String,
    /// The job's idempotency key (`None`: the body is not a retry job).
    pub key: Option<String>,
    /// Where it came from (`partner_center`, `dataverse`, `salesforce`, `reconcile`).
    pub source: Option<String>,
    /// Its retry attempt.
    pub attempt: Option<u32>,
    /// The referral it syncs (Partner Center jobs).
    pub referral_id: Option<String>,
    /// The CRM record it syncs (Dataverse and Salesforce jobs).
    pub crm_record: Option<String>,
    /// `ApproximateReceiveCount` (this listing's receive included).
    pub receive_count: Option<u32>,
    /// When it was first sent (`SentTimestamp`).
    pub first_seen: Option<DateTime<Utc>>,
}

impl DeadJob {
    fn of(message: &ReceivedMessage) -> Self {
        let job = serde_json::from_str::<RetryJob>(&message.body).ok();
        Self {
            message_id: message.message_id.clone(),
            key: job.as_ref().map(|job| job.key.clone()),
            source: job
                .as_ref()
                .map(|job| match serde_json::to_value(job.source) {
                    Ok(serde_json::Value::String(source)) => source,
                    _ => format!("{:?}", job.source),
                }),
            attempt: job.as_ref().map(|job| job.attempt),
            referral_id: job.as_ref().and_then(|job| {
                serde_json::from_value::<WebhookEvent>(job.payload.clone())
                    .ok()
                    .and_then(|event| event.referral_id().ok())
                    .map(|id| id.to_string())
            }),
            crm_record: job.as_ref().and_then(|job| {
                job.payload
                    .get("record")
                    .and_then(|record| serde_json::from_value::<CrmRecordId>(record.clone()).ok())
                    .map(|record| record.to_string())
            }),
            receive_count: message.receive_count,
            first_seen: message.sent_at,
        }
    }
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// How.
    #[serde(flatten)]
    pub mode: Mode,
    /// The jobs listed (dry run) or moved one by one.
    pub jobs: Vec<DeadJob>,
    /// Moved (or, for a move task, visible in the dead-letter queue when it started; for a dry
    /// run, 0).
    pub moved: usize,
    /// Could not be moved (they stay in the dead-letter queue).
    pub failed: usize,
    /// Why, one line per failure.
    pub failures: Vec<String>,
}

impl Report {
    /// 0 all moved, 1 some failed.
    pub fn exit(&self) -> Exit {
        if self.failed == 0 {
            Exit::Healthy
        } else {
            Exit::Problems
        }
    }
}

/// How long a listed or moved message stays hidden in the dead-letter queue.
const HIDE: Duration = Duration::from_secs(60);

/// How long one receive waits for messages.
const WAIT: Duration = Duration::from_secs(1);

/// Move (or list) the dead-letter queue's jobs back to `queue_url` (see the
/// [module docs](self)). `Err`: a queue could not be read at all.
pub async fn redrive(
    client: &Client,
    dlq_url: &str,
    queue_url: &str,
    options: &Options,
) -> Result<Report, AwsAdapterError> {
    let dlq = SqsQueue::new(client.clone(), dlq_url);
    let queue = SqsQueue::new(client.clone(), queue_url);
    let waiting = dlq.depth().await?.visible;
    let mut progress = Progress::new(options.progress, waiting);

    if options.dry_run {
        return Ok(Report {
            mode: Mode::DryRun,
            jobs: list(&dlq, options.limit).await?,
            moved: 0,
            failed: 0,
            failures: Vec::new(),
        });
    }

    if options.use_move_task && waiting > 0 {
        let destination = queue.arn().await?;
        // What the task will move, for the report and the audit.
        let jobs = list(&dlq, options.limit).await?;
        if let MoveTaskStart::Started(task) = dlq.start_move_task(Some(&destination)).await? {
            return Ok(Report {
                mode: Mode::MoveTask {
                    task_handle: task.task_handle,
                },
                jobs,
                moved: usize::try_from(waiting).unwrap_or(usize::MAX),
                failed: 0,
                failures: Vec::new(),
            });
        }
    }

    let mut report = Report {
        mode: Mode::OneByOne,
        jobs: Vec::new(),
        moved: 0,
        failed: 0,
        failures: Vec::new(),
    };
    let mut seen = HashSet::new();
    while report.moved + report.failed < options.limit {
        let batch = dlq.receive_hidden(10, WAIT, HIDE).await?;
        let fresh: Vec<_> = batch
            .into_iter()
            .filter(|message| seen.insert(message.message_id.clone()))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for message in fresh {
            match move_one(&dlq, &queue, &message).await {
                Ok(()) => {
                    report.moved += 1;
                    report.jobs.push(DeadJob::of(&message));
                }
                Err(why) => {
                    report.failed += 1;
                    report
                        .failures
                        .push(format!("message {}: {why}", message.message_id));
                }
            }
            progress.set(report.moved, report.failed);
        }
    }
    progress.finish();
    Ok(report)
}

/// The jobs waiting in the dead-letter queue (up to `limit`), visible again at once: a listing
/// moves nothing.
async fn list(dlq: &SqsQueue, limit: usize) -> Result<Vec<DeadJob>, AwsAdapterError> {
    let listed = receive_all(dlq, limit).await?;
    for message in &listed {
        let _ = dlq
            .change_visibility(&message.receipt_handle, Duration::ZERO)
            .await;
    }
    Ok(listed.iter().map(DeadJob::of).collect())
}

/// Send one message to the retry queue, then delete it from the dead-letter queue.
async fn move_one(
    dlq: &SqsQueue,
    queue: &SqsQueue,
    message: &ReceivedMessage,
) -> Result<(), String> {
    if let Err(error) = queue.send(&message.to_outgoing()).await {
        // Back at once, so a later redrive finds it.
        let _ = dlq
            .change_visibility(&message.receipt_handle, Duration::ZERO)
            .await;
        return Err(format!("not sent to the retry queue: {error}"));
    }
    dlq.delete(&message.receipt_handle).await.map_err(|error| {
        format!(
            "sent to the retry queue but not deleted from the dead-letter queue ({error}); it \
             will be replayed twice, which changes nothing the second time"
        )
    })
}

/// Append a [`AuditEvent::Redriven`] entry for every job a redrive moved (one by one) or handed
/// to a move task (so `cosell audit` shows when an operator replayed it); returns how many
/// could not be written.
pub async fn record_redriven(audit: &impl AuditLog, report: &Report, at: DateTime<Utc>) -> usize {
    let mut failed = 0;
    for job in &report.jobs {
        let referral_id = job
            .referral_id
            .as_deref()
            .and_then(|id| ReferralId::try_from(id).ok());
        let crm = job
            .crm_record
            .as_deref()
            .and_then(|record| serde_json::from_value::<CrmRecordId>(record.into()).ok());
        if referral_id.is_none() && crm.is_none() {
            continue;
        }
        let entry = AuditEntry {
            at,
            direction: None,
            referral_id,
            crm,
            correlation_id: Some(job.message_id.clone()),
            event: AuditEvent::Redriven,
        };
        if audit.append(&entry).await.is_err() {
            failed += 1;
        }
    }
    failed
}

/// Every message of `queue` (up to `limit`), received hidden.
async fn receive_all(
    queue: &SqsQueue,
    limit: usize,
) -> Result<Vec<ReceivedMessage>, AwsAdapterError> {
    let mut all: Vec<ReceivedMessage> = Vec::new();
    let mut seen = HashSet::new();
    while all.len() < limit {
        let batch = queue.receive_hidden(10, WAIT, HIDE).await?;
        let before = all.len();
        all.extend(
            batch
                .into_iter()
                .filter(|message| seen.insert(message.message_id.clone())),
        );
        if all.len() == before {
            break;
        }
    }
    Ok(all)
}

/// The dead-letter queue named by the retry queue's `RedrivePolicy`.
pub async fn dead_letter_queue_of(client: &Client, queue_url: &str) -> Result<Option<String>> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .with_context(|| format!("reading the RedrivePolicy of {queue_url}"))?;
    let Some(policy) = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
    else {
        return Ok(None);
    };
    let policy: serde_json::Value =
        serde_json::from_str(policy).context("the RedrivePolicy is not JSON")?;
    let Some(name) = policy["deadLetterTargetArn"]
        .as_str()
        .and_then(|arn| arn.rsplit(':').next())
    else {
        return Ok(None);
    };
    let found = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("looking up the dead-letter queue {name}"))?;
    Ok(found.queue_url().map(str::to_owned))
}

/// `cosell redrive`: run, print, exit 0 / 1 / 2.
pub async fn main(args: Args) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    match run(&args, &mut out).await {
        Ok(exit) => exit.into(),
        Err(error) => {
            let _ = out.flush();
            eprintln!("redrive could not run: {error:#}");
            Exit::CouldNotCheck.into()
        }
    }
}

async fn run(args: &Args, out: &mut dyn Write) -> Result<Exit> {
    let aws = AwsClients::from_env().await;
    let dlq_url = match args
        .dlq_url
        .clone()
        .or_else(|| std::env::var("DEAD_LETTER_QUEUE_URL").ok())
        .filter(|url| !url.trim().is_empty())
    {
        Some(url) => url,
        None => dead_letter_queue_of(&aws.sqs, &args.queue_url)
            .await?
            .context(
                "the retry queue has no RedrivePolicy: pass --dlq-url (or set DLQ_URL) to name \
                 its dead-letter queue",
            )?,
    };
    let options = Options {
        dry_run: args.dry_run,
        use_move_task: !args.no_move_task,
        limit: args.limit,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let report = redrive(&aws.sqs, &dlq_url, &args.queue_url, &options)
        .await
        .with_context(|| format!("redriving {dlq_url} to {}", args.queue_url))?;
    let table = std::env::var("TABLE_NAME")
        .ok()
        .filter(|table| !table.trim().is_empty());
    if let (Some(table), Mode::OneByOne | Mode::MoveTask { .. }) = (table, &report.mode) {
        let audit = DynamoAuditLog::new(aws.dynamodb.clone(), table);
        let unwritten = record_redriven(&audit, &report, Utc::now()).await;
        if unwritten > 0 {
            eprintln!("{unwritten} audit entr(ies) of the redrive could not be written");
        }
    }
    if Output::from_flag(args.json).is_json() {
        Output::write_json(out, &report)?;
    } else {
        print(&report, out)?;
    }
    Ok(report.exit())
}

/// The human report: one line per job, then the summary line.
pub fn print(report: &Report, out: &mut dyn Write) -> Result<()> {
    if !report.jobs.is_empty() {
        writeln!(
            out,
            "{:<20} {:<15} {:>7} {:>8} {:<20} {:<38} key",
            "message", "source", "attempt", "receives", "first seen", "referral / CRM record"
        )?;
    }
    for job in &report.jobs {
        writeln!(
            out,
            "{:<20} {:<15} {:>7} {:>8} {:<20} {:<38} {}",
            short(&job.message_id),
            job.source.as_deref().unwrap_or("(malformed)"),
            job.attempt
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            job.receive_count
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            job.first_seen.map_or_else(
                || "-".to_owned(),
                |at| at.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            job.referral_id
                .as_deref()
                .or(job.crm_record.as_deref())
                .unwrap_or("-"),
            job.key.as_deref().unwrap_or("-"),
        )?;
    }
    for failure in &report.failures {
        writeln!(out, "failed: {failure}")?;
    }
    match &report.mode {
        Mode::DryRun => writeln!(
            out,
            "dry run: {} job(s) would move; nothing was moved",
            report.jobs.len()
        )?,
        Mode::MoveTask { task_handle } => writeln!(
            out,
            "moved: {} (StartMessageMoveTask {task_handle}; `aws sqs list-message-move-tasks` \
             shows its progress), failed: 0",
            report.moved
        )?,
        Mode::OneByOne => writeln!(out, "moved: {}, failed: {}", report.moved, report.failed)?,
    }
    Ok(())
}

fn short(id: &str) -> String {
    id.chars().take(20).collect()
}

/// A progress bar on standard error (terminals only).
#[derive(Debug)]
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(enabled: bool, total: u64) -> Self {
        Self(enabled.then(|| {
            let style = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}").map_or_else(
                |_| ProgressStyle::default_bar(),
                |style| style.progress_chars("#-"),
            );
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(style)
        }))
    }

    fn set(&mut self, moved: usize, failed: usize) {
        let Some(bar) = &self.0 else {
            return;
        };
        let done = u64::try_from(moved + failed).unwrap_or(u64::MAX);
        if bar.length().is_some_and(|total| done > total) {
            bar.set_length(done);
        }
        bar.set_message(format!("moved {moved} failed {failed}"));
        bar.set_position(done);
    }

    /// Leaves the bar as it was last drawn (nothing when nothing moved).
    fn finish(&self) {
        match &self.0 {
            Some(bar) if bar.position() > 0 => bar.abandon(),
            Some(bar) => bar.finish_and_clear(),
            None => {}
        }
    }
}
