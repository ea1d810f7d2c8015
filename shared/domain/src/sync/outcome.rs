//! What a sync run ended with ([`Outcome`]), the side failures it tolerated ([`Handled`]), and
//! the failures that make the sender deliver again ([`SyncError`]).

use std::time::Duration;

use serde_json::{Value, json};

use crate::ids::{CrmRecordId, ReferralId};
use crate::ports::PortError;

/// Who runs a sync again after a retryable failure (a 5xx, 429 or timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RetryPolicy {
    /// The sync queues a [`RetryJob`](crate::ports::RetryJob) of the next attempt (with its
    /// own delay) and completes the delivery's key: the webhook functions, whose sender must
    /// get an answer now.
    #[default]
    Enqueue,
    /// The caller delivers the same job again itself (the retry worker: a batch item failure
    /// with a longer visibility timeout). Nothing is queued, the key is released so the
    /// redelivery runs the sync again, and the outcome is [`Outcome::RetryLater`]. The
    /// attempt limit is the queue's `maxReceiveCount`, not
    /// [`SyncSettings::max_attempts`](super::SyncSettings::max_attempts).
    Redeliver,
}

/// How one delivery ended. Every variant is an expected result; the HTTP layer answers
/// [`Outcome::http_status`], the retry worker acknowledges the message unless
/// [`Outcome::redeliver_later`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The `test-created` validation event: nothing to do.
    Acknowledged,
    /// Not for this connector (an unknown event, a lead outside the configured scope, a
    /// referral closed before it reached the CRM, a related referral of an unlinked deal).
    Ignored {
        /// Why, for the log.
        reason: String,
    },
    /// The same delivery was processed already.
    DuplicateSkipped,
    /// The same delivery is being processed by another invocation: the sender should deliver
    /// it again later.
    InProgress,
    /// The referral change is our own write-back coming back (or an out-of-order older read).
    EchoSkipped,
    /// No mapped field changed since the last sync to the CRM (or, CRM → Partner Center, to
    /// Partner Center).
    UnchangedSkipped,
    /// CRM → Partner Center: the opportunity changed, but its referral is not accepted yet
    /// (New, the opportunity on hold) and Partner Center takes no change before that; the
    /// record's Audit field says to accept it first. Sent once the referral is accepted.
    HeldUntilAccepted {
        /// The opportunity.
        crm: CrmRecordId,
    },
    /// An opportunity was created (CRM → Partner Center: a referral was created for it).
    Created {
        /// The opportunity.
        crm: CrmRecordId,
    },
    /// An opportunity was updated (CRM → Partner Center: its referral was updated).
    Updated {
        /// The opportunity.
        crm: CrmRecordId,
    },
    /// A service was unavailable; the sync is scheduled again.
    RetryEnqueued {
        /// The attempt that will run (1 for the first retry).
        attempt: u32,
        /// When it will run.
        delay: Duration,
    },
    /// A service was unavailable and, under [`RetryPolicy::Redeliver`], the caller delivers
    /// the job again: nothing was queued and the key was released.
    RetryLater {
        /// The service's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// What failed (no contact data), for the log and a dead-letter audit entry.
        reason: String,
        /// The referral concerned, when known.
        referral_id: Option<ReferralId>,
        /// The CRM record concerned, when known.
        crm: Option<CrmRecordId>,
    },
    /// The sync failed in a way a retry cannot fix; the audit log (and the CRM record's Audit
    /// field, when known) says what to do.
    NeedsAttention {
        /// A stable code for dashboards and tests, e.g. `rejected`, `access_denied`.
        code: &'static str,
        /// What went wrong and the fix.
        message: String,
    },
}

impl Outcome {
    /// The HTTP status for the webhook sender: 409 for [`Outcome::InProgress`] (deliver again
    /// later), 503 for [`Outcome::RetryLater`] (never produced for a webhook), 200 for
    /// everything else, failures included, so Partner Center does not retry what only a
    /// person can fix.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InProgress => 409,
            Self::RetryLater { .. } => 503,
            _ => 200,
        }
    }

    /// The short detail a log line carries next to [`Self::log_name`]: the problem code, why
    /// an event was ignored, or when the retry runs. Never contact data.
    pub fn log_detail(&self) -> Option<String> {
        match self {
            Self::NeedsAttention { code, .. } => Some((*code).to_owned()),
            Self::Ignored { reason } => Some(reason.clone()),
            Self::RetryEnqueued { attempt, delay } => {
                Some(format!("retry attempt {attempt} in {} s", delay.as_secs()))
            }
            Self::RetryLater { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }

    /// A stable snake_case name for logs and metrics.
    pub fn log_name(&self) -> &'static str {
        match self {
            Self::Acknowledged => "acknowledged",
            Self::Ignored { .. } => "ignored",
            Self::DuplicateSkipped => "duplicate_skipped",
            Self::InProgress => "in_progress",
            Self::EchoSkipped => "echo_skipped",
            Self::UnchangedSkipped => "unchanged_skipped",
            Self::HeldUntilAccepted { .. } => "held_until_accepted",
            Self::Created { .. } => "created",
            Self::Updated { .. } => "updated",
            Self::RetryEnqueued { .. } => "retry_enqueued",
            Self::RetryLater { .. } => "retry_later",
            Self::NeedsAttention { .. } => "needs_attention",
        }
    }

    /// The CloudWatch metric that counts this outcome (PascalCase; the catalogue of every
    /// metric is [`crate::metrics`], see docs/aws.md#embedded-metric-format). The match is
    /// exhaustive, so a new outcome cannot go uncounted.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::Acknowledged => "Acknowledged",
            Self::Ignored { .. } => "Ignored",
            Self::DuplicateSkipped => "DuplicateSkipped",
            Self::InProgress => "InProgress",
            Self::EchoSkipped => "EchoSkipped",
            Self::UnchangedSkipped => "UnchangedSkipped",
            Self::HeldUntilAccepted { .. } => "HeldUntilAccepted",
            Self::Created { .. } => "Created",
            Self::Updated { .. } => "Updated",
            Self::RetryEnqueued { .. } => "RetryEnqueued",
            Self::RetryLater { .. } => "RetryLater",
            Self::NeedsAttention { .. } => "NeedsAttention",
        }
    }

    /// Whether a queue consumer should let the message come back (report a batch item
    /// failure): while another invocation holds the same delivery, or when it is to deliver
    /// the job again ([`Outcome::RetryLater`]).
    pub fn redeliver_later(&self) -> bool {
        matches!(self, Self::InProgress | Self::RetryLater { .. })
    }

    /// The referral concerned, when the outcome names one.
    pub fn referral_id(&self) -> Option<ReferralId> {
        match self {
            Self::RetryLater { referral_id, .. } => *referral_id,
            _ => None,
        }
    }

    /// The CRM record the run created or updated.
    pub fn crm(&self) -> Option<&CrmRecordId> {
        match self {
            Self::Created { crm } | Self::Updated { crm } => Some(crm),
            Self::RetryLater { crm, .. } => crm.as_ref(),
            _ => None,
        }
    }

    /// The response stored with a completed idempotency record.
    pub fn response(&self) -> Value {
        let mut response = json!({ "outcome": self.log_name(), "status": self.http_status() });
        match self {
            Self::Created { crm } | Self::Updated { crm } | Self::HeldUntilAccepted { crm } => {
                response["crm"] = json!(crm);
            }
            Self::RetryEnqueued { attempt, delay } => {
                response["attempt"] = json!(attempt);
                response["delay_seconds"] = json!(delay.as_secs());
            }
            Self::RetryLater { retry_after, .. } => {
                response["retry_after_seconds"] = json!(retry_after.map(|d| d.as_secs()));
            }
            Self::NeedsAttention { code, .. } => {
                response["code"] = json!(code);
            }
            Self::Ignored { reason } => {
                response["reason"] = json!(reason);
            }
            _ => {}
        }
        response
    }
}

/// A finished run: its outcome, and the store writes that failed without failing the sync
/// (an audit entry that could not be appended, an idempotency record that could not be
/// completed). The edge logs each warning once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// How the delivery ended.
    pub outcome: Outcome,
    /// Tolerated failures, in order.
    pub warnings: Vec<PortError>,
    /// The referral the run was about, when it got to know it (for the log line: a CRM change
    /// that created a referral names it only here).
    pub referral_id: Option<ReferralId>,
}

impl Handled {
    /// [`Outcome::http_status`].
    pub fn http_status(&self) -> u16 {
        self.outcome.http_status()
    }
}

/// The delivery could not be taken on or parked: answer so the sender delivers it again
/// (HTTP 503, an SQS batch item failure). No change was recorded as done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The idempotency store did not answer, so the delivery could not be taken.
    #[error("the delivery could not be taken on: {0}")]
    Idempotency(PortError),
    /// A service was unavailable and the retry could not be queued either; the idempotency
    /// key was released so the redelivery runs the sync again.
    #[error(
        "{cause}; the retry could not be scheduled ({enqueue}), so the delivery was left for \
         the sender to deliver again"
    )]
    RetryNotScheduled {
        /// Why the sync needed a retry.
        cause: Box<PortError>,
        /// Why the retry queue refused it.
        enqueue: Box<PortError>,
    },
}

impl SyncError {
    /// 503: deliver again later.
    pub fn http_status(&self) -> u16 {
        503
    }

    /// A stable snake_case name for logs and metrics.
    pub fn log_name(&self) -> &'static str {
        match self {
            Self::Idempotency(_) => "idempotency_unavailable",
            Self::RetryNotScheduled { .. } => "retry_not_scheduled",
        }
    }
}
