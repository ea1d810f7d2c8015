//! The exactly-once machinery both sync directions and the retry worker share.
//!
//! [`exactly_once`] takes the delivery's idempotency key, runs the sync, and settles its result
//! with AWS Powertools semantics:
//!
//! | Sync result | Idempotency key | Also | Outcome |
//! |---|---|---|---|
//! | done (any [`Outcome`]) | completed, response stored | | that outcome |
//! | retryable [`PortError`] | completed | [`RetryJob`] `attempt + 1` queued, `RetryEnqueued` audited | `RetryEnqueued` |
//! | retryable, queue down | released | | `Err(SyncError)` (sender redelivers) |
//! | retryable, last attempt | completed | `Failed` audited, CRM Audit field written | `NeedsAttention` |
//! | permanent | completed | `Failed` audited, CRM Audit field written | `NeedsAttention` |
//!
//! Under [`RetryPolicy::Redeliver`] (the retry worker) a retryable error instead releases the
//! key, queues nothing and ends [`Outcome::RetryLater`]: the worker lets SQS deliver the same
//! message again after a backoff, and the queue's `maxReceiveCount` bounds the attempts.
//!
//! A completed key makes redeliveries [`Outcome::DuplicateSkipped`] with no service call; a key
//! held by a running invocation makes them [`Outcome::InProgress`], and a webhook delivery
//! that finds it held is also queued as a follow-up job for after the holder's deadline, in case
//! the holder died and the sender does not deliver again ([`follow_up`]).
//!
//! The store writes of a run are one commit ([`IdempotencyStore::commit`]): while the sync
//! runs, its audit entries and its final link are kept in the [`Journal`]; the key's completion
//! (or release), the link and the entries are then written together (on DynamoDB one
//! `TransactWriteItems`, docs/aws.md#requests-per-event). A link that cannot be saved with it
//! retries the sync, as a failed link write did.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::deps::{Delivery, Deps, later};
use super::outcome::{Handled, Outcome, RetryPolicy, SyncError};
use crate::error::ParseError;
use crate::ids::{CrmRecordId, EngagementId, ReferralId};
use crate::ports::{
    AcquireOutcome, AuditEntry, AuditEvent, AuditLog, Commit, CrmStore, IdempotencyKey,
    IdempotencyStore, KeyAfter, Link, PartnerCenter, PortError, Ports, ReferralQuery, RetryJob,
    RetryQueue, RetrySource, Service, SyncDirection,
};
use crate::referral::Referral;

/// One run of a delivery: which key it holds and how to schedule it again.
#[derive(Debug, Clone)]
pub(crate) struct Run<'r> {
    /// The key this run acquires (a retry attempt has its own, so a replayed message is a
    /// duplicate of that attempt only).
    pub key: IdempotencyKey,
    /// The delivery's key, carried by every retry job of it.
    pub retry_key: &'r str,
    /// 0 for the delivery itself, n for the n-th retry.
    pub attempt: u32,
    /// Where a retry job says it came from.
    pub source: RetrySource,
    /// What a retry job processes again.
    pub payload: &'r Value,
}

/// Why a sync stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A port failed; its variant decides between retry and attention.
    Port {
        /// The error.
        error: PortError,
        /// The CRM record concerned, when known (its Audit field gets the failure).
        crm: Option<CrmRecordId>,
    },
    /// Something only a person can fix, found by the sync itself.
    Problem(Problem),
}

impl Failure {
    /// A closure turning a port error into a failure about `crm`.
    pub fn port(crm: Option<&CrmRecordId>) -> impl FnOnce(PortError) -> Self {
        let crm = crm.cloned();
        move |error| Self::Port { error, crm }
    }
}

/// A failure that needs a person: what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Stable code.
    pub code: &'static str,
    /// What went wrong (no contact data).
    pub reason: String,
    /// What to do about it.
    pub fix: String,
    /// The CRM record concerned, when known.
    pub crm: Option<CrmRecordId>,
}

/// [`Problem::closed_in_crm`]'s code.
pub(crate) const CLOSED_IN_CRM: &str = "closed_in_crm";

impl Problem {
    /// Partner Center's values of `fields` cannot reach a closed Dataverse row (read-only until
    /// reopened, docs/dataverse.md#closing-an-opportunity): nothing is written to it, not even
    /// the Audit text ([`needs_attention`] writes none for this code).
    pub fn closed_in_crm(
        record: &CrmRecordId,
        referral_id: ReferralId,
        fields: &[super::merge::SharedField],
    ) -> Self {
        let names: Vec<&str> = fields.iter().map(|field| field.name()).collect();
        let changed = if names.is_empty() {
            "a value".to_owned()
        } else {
            names.join(", ")
        };
        Self {
            code: CLOSED_IN_CRM,
            reason: format!(
                "Partner Center changed {changed} of referral {referral_id} after the opportunity \
                 was closed in Dataverse, where a closed opportunity takes no change: it keeps \
                 its values."
            ),
            fix: "Nothing, if the closed deal's values stand. To take Partner Center's, reopen \
                  the opportunity and enter them (the referral shows them), then close it again."
                .to_owned(),
            crm: Some(record.clone()),
        }
    }

    /// The problem a permanent port error stands for.
    pub fn from_port(error: &PortError, crm: Option<CrmRecordId>) -> Self {
        let service = error.service();
        let (code, fix) = match error {
            PortError::Permanent { .. } => (
                "rejected",
                format!(
                    "correct the value or the field mapping named in the message in {service}, \
                     then change the referral again (or redrive it)"
                ),
            ),
            PortError::NotFound { .. } if *service == Service::PartnerCenter => (
                "not_found",
                "check that the referral still exists and that the connector's Partner Center \
                 user holds the Referrals admin or Referral user role"
                    .to_owned(),
            ),
            PortError::NotFound { .. } => (
                "not_found",
                format!(
                    "the record was deleted or is hidden from the connector's user in {service}: \
                     restore it or grant access, then redrive the referral"
                ),
            ),
            PortError::AccessDenied { missing_role, .. } => (
                "access_denied",
                match missing_role {
                    Some(role) => format!("grant the {role} role to the connector's user"),
                    None => format!(
                        "grant the connector's user in {service} the permission the message \
                         names"
                    ),
                },
            ),
            PortError::Transient { .. } | PortError::PreconditionFailed { .. } => (
                "retries_exhausted",
                format!(
                    "check that {service} is reachable and the connector's credentials are \
                     valid, then redrive the referral"
                ),
            ),
        };
        let reason = match error {
            // Its message carries the role hint, which is the fix here.
            PortError::AccessDenied { message, .. } => {
                format!("{service} denied access: {message}")
            }
            other => other.to_string(),
        };
        Self {
            code,
            reason: sentence(&reason),
            fix: sentence(&capitalize(&fix)),
            crm,
        }
    }

    /// A retryable error that kept failing until the last attempt.
    fn exhausted(error: &PortError, attempts: u32, crm: Option<CrmRecordId>) -> Self {
        let mut problem = Self::from_port(error, crm);
        problem.code = "retries_exhausted";
        problem.reason = sentence(&format!("still failing after {attempts} attempts: {error}"));
        problem
    }
}

/// `text` with its first letter in upper case.
pub(crate) fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// `text` ending with a full stop (unless it already ends with punctuation).
pub(crate) fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.ends_with(['.', '!', '?']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The audit trail of one run, with the tolerated failures of its best-effort writes.
///
/// Shared by reference between the runner and the sync it runs (hence the `Mutex`; it is never
/// held across an `await`).
#[derive(Debug)]
pub(crate) struct Journal<'a, A> {
    audit: &'a A,
    direction: SyncDirection,
    correlation_id: Option<String>,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    referral_id: Mutex<Option<ReferralId>>,
    warnings: Mutex<Vec<PortError>>,
    /// While the run holds its key: the entries kept for its commit (`None`: appended at once).
    pending: Mutex<Option<Vec<AuditEntry>>>,
    /// The link the run saves with its commit.
    link: Mutex<Option<PendingLink>>,
    /// The CRM record's Audit column as the run read it (a failure already shown there is not
    /// written again).
    shown: Mutex<Option<String>>,
}

/// A link saved with the run's commit.
#[derive(Debug, Clone)]
pub(crate) struct PendingLink {
    /// The link.
    pub link: Link,
    /// Whether the run failed if it cannot be saved (it is then retried); otherwise it is
    /// saved if it can.
    pub required: bool,
}

impl<'a, A: AuditLog> Journal<'a, A> {
    /// A journal writing to `audit`.
    pub fn new(audit: &'a A, direction: SyncDirection, meta: &Delivery) -> Self {
        Self {
            audit,
            direction,
            correlation_id: meta.correlation_id.clone(),
            now: meta.now,
            deadline: meta.deadline,
            referral_id: Mutex::new(None),
            warnings: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            link: Mutex::new(None),
            shown: Mutex::new(None),
        }
    }

    /// Note the CRM record's Audit column as read.
    pub fn set_shown(&self, audit: Option<&str>) {
        *self.shown.lock().unwrap_or_else(PoisonError::into_inner) = audit.map(str::to_owned);
    }

    /// Whether the Audit column as read shows `text` already, whatever its time.
    fn shows(&self, text: &str) -> bool {
        self.shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .is_some_and(|shown| same_message(shown, text))
    }

    /// From now on keep entries for the commit instead of appending them.
    fn defer(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.get_or_insert_with(Vec::new);
    }

    /// The entries kept so far (they stay kept: a commit that failed is made again with them).
    fn kept_entries(&self) -> Vec<AuditEntry> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default()
    }

    /// Save `link` with the run's commit (instead of a [`LinkStore::put`] of its own): one write
    /// fewer. `required`: the run is retried when it cannot be saved.
    ///
    /// [`LinkStore::put`]: crate::ports::LinkStore::put
    pub fn keep_link(&self, link: Link, required: bool) {
        *self.link.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(PendingLink { link, required });
    }

    /// Append the entries kept so far now, before a write that cannot be undone and must be
    /// known to a later delivery should this run crash before its commit (the create of a
    /// referral: the next delivery looks for it when an earlier one ran). An entry that could
    /// not be appended stays kept (for the commit) and fails the flush: the write must not
    /// happen without its marker.
    pub async fn flush(&self) -> Result<(), PortError> {
        let kept = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (at, entry) in kept.iter().enumerate() {
            if let Err(error) = self.audit.append(entry).await {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let later = pending.take().unwrap_or_default();
                let mut unwritten = kept.get(at..).map(<[_]>::to_vec).unwrap_or_default();
                unwritten.extend(later);
                *pending = Some(unwritten);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Whether a link is kept for the commit.
    pub fn keeps_link(&self) -> bool {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn take_link(&self) -> Option<PendingLink> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The delivery's instant.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The delivery's correlation id, when known.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The referral later entries are about.
    pub fn set_referral(&self, referral_id: ReferralId) {
        *self
            .referral_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(referral_id);
    }

    /// The referral this run is about, once known.
    pub fn referral(&self) -> Option<ReferralId> {
        *self
            .referral_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// When the invocation running it is stopped (the Lambda deadline).
    pub fn deadline(&self) -> DateTime<Utc> {
        self.deadline
    }

    /// The referral the run is about, once known.
    pub fn referral_id(&self) -> Option<ReferralId> {
        *self
            .referral_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An entry of this run.
    pub fn entry(&self, event: AuditEvent, crm: Option<&CrmRecordId>) -> AuditEntry {
        AuditEntry {
            at: self.now,
            direction: Some(self.direction),
            referral_id: *self
                .referral_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            crm: crm.cloned(),
            correlation_id: self.correlation_id.clone(),
            event,
        }
    }

    /// Append an entry (kept for the commit while the run holds its key); a failure is kept
    /// as a warning.
    pub async fn record(&self, event: AuditEvent, crm: Option<&CrmRecordId>) {
        let entry = self.entry(event, crm);
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pending) = pending.as_mut() {
                pending.push(entry);
                return;
            }
        }
        let appended = self.audit.append(&entry).await;
        self.tolerate(appended);
    }

    /// Keep the error of a best-effort write as a warning.
    pub fn tolerate(&self, result: Result<(), PortError>) {
        if let Err(error) = result {
            self.warn(error);
        }
    }

    /// Keep a warning.
    pub fn warn(&self, error: PortError) {
        self.warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(error);
    }

    /// The warnings kept so far.
    pub fn into_warnings(self) -> Vec<PortError> {
        self.warnings
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The finished run: `outcome` with the journal's warnings.
pub(crate) fn finish<A: AuditLog>(outcome: Outcome, journal: Journal<'_, A>) -> Handled {
    let referral_id = journal.referral_id();
    Handled {
        outcome,
        warnings: journal.into_warnings(),
        referral_id,
    }
}

/// When the delivery that found the create locked runs again.
pub(crate) const CREATE_LOCK_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Run `work` — creating the counterpart of `subject` (a CRM record's referral, a referral's
/// opportunity with its account and contact) — under a short lock, the idempotency key
/// `create:<subject>`. Two deliveries of one new record arriving together (a Dataverse Create
/// and Update, a `referral-created` and `referral-updated`) carry different keys, so the
/// exactly-once key alone would let both create; the second one finds the lock taken, fails
/// as retryable and runs again later, when the link exists.
///
/// The lock is held until the invocation's deadline (so a holder that was killed frees it, as
/// its delivery's own key) and is simply left to expire after a successful create: one write
/// fewer per new record, and the other delivery's retry, which comes after it, finds the link.
/// A failed create releases it at once.
pub(crate) async fn creating<I, A, T>(
    store: &I,
    journal: &Journal<'_, A>,
    subject: &str,
    crm: Option<&CrmRecordId>,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure>
where
    I: IdempotencyStore,
    A: AuditLog,
{
    let key = IdempotencyKey::new("create", subject).map_err(|error| {
        Failure::port(crm)(PortError::Permanent {
            service: Service::IdempotencyStore,
            message: format!("no create lock for {subject}: {error}"),
        })
    })?;
    let now = journal.now();
    let acquired = store
        .acquire(&key, now, journal.deadline())
        .await
        .map_err(Failure::port(crm))?;
    if acquired != AcquireOutcome::Acquired {
        return Err(Failure::port(crm)(PortError::Transient {
            service: Service::IdempotencyStore,
            reason: format!(
                "another delivery is creating the counterpart of {subject} right now; this one \
                 runs again after it"
            ),
            retry_after: Some(CREATE_LOCK_RETRY_AFTER),
        }));
    }
    let result = work.await;
    if result.is_err() {
        let released = store.release(&key).await;
        journal.tolerate(released);
    }
    result
}

/// The key a retry job's attempt runs under: its own, so a replayed message is a duplicate of
/// that attempt only; a follow-up ([`follow_up`], attempt 0) runs under the delivery's own key.
pub(crate) fn attempt_key(job: &RetryJob) -> Result<IdempotencyKey, ParseError> {
    if job.attempt == FOLLOW_UP_ATTEMPT {
        return IdempotencyKey::try_from(job.key.clone());
    }
    IdempotencyKey::try_from(format!("{}#attempt-{}", job.key, job.attempt))
}

/// The attempt number of a follow-up job: the delivery itself, delivered again by the queue.
pub(crate) const FOLLOW_UP_ATTEMPT: u32 = 0;

/// How long after this invocation's deadline a follow-up job becomes visible.
const FOLLOW_UP_MARGIN: Duration = Duration::from_secs(5);

/// A webhook delivery found its key held by another invocation. That invocation may finish the
/// delivery, or may have died (a timeout, a crash, a killed instance hold the key until its
/// Lambda deadline); a sender that delivers only once more (Dataverse retries once, right away)
/// would then find it held again and give up, leaving the change to reconciliation. So the
/// delivery is also queued as a follow-up job (attempt [`FOLLOW_UP_ATTEMPT`], the delivery's own
/// key) that becomes visible after this invocation's deadline, by when the holder's, which
/// started earlier in the same function, has passed: the retry worker then finds the key
/// completed (a duplicate: one conditional write, no service call) or free (the holder died:
/// it runs the delivery). The answer stays [`Outcome::InProgress`], so a sender that does
/// deliver again still can. A queue that fails only loses this safety net (a warning).
///
/// Not for the retry worker ([`RetryPolicy::Redeliver`]): its message comes back by itself.
async fn follow_up<X: Ports>(
    deps: &Deps<'_, X>,
    meta: &Delivery,
    run: &Run<'_>,
    journal: &Journal<'_, X::Audit>,
) {
    if deps.settings.retry_policy != RetryPolicy::Enqueue || run.attempt != FOLLOW_UP_ATTEMPT {
        return;
    }
    let job = RetryJob {
        source: run.source,
        key: run.retry_key.to_owned(),
        attempt: FOLLOW_UP_ATTEMPT,
        payload: run.payload.clone(),
    };
    let remaining = (meta.deadline - meta.now).to_std().unwrap_or_default();
    let delay = remaining
        .saturating_add(FOLLOW_UP_MARGIN)
        .min(RetryJob::MAX_DELAY);
    let queued = deps.retry_queue.enqueue(&job, delay).await;
    journal.tolerate(queued);
}

/// Run `sync` at most once for `run.key` (see the module docs).
///
/// `sync` is a future, so nothing of it runs before the key is taken. While it runs, its audit
/// entries and its final link are kept in the journal; once it is over they are written with
/// the key's completion (or release) in one [`IdempotencyStore::commit`]. A duplicate costs the
/// one failed conditional write of `acquire` and leaves no audit entry (the `DuplicateSkipped`
/// metric counts it).
pub(crate) async fn exactly_once<X: Ports>(
    deps: &Deps<'_, X>,
    meta: &Delivery,
    run: &Run<'_>,
    journal: &Journal<'_, X::Audit>,
    sync: impl Future<Output = Result<Outcome, Failure>>,
) -> Result<Outcome, SyncError> {
    let acquired = deps
        .idempotency
        .acquire(&run.key, meta.now, meta.deadline)
        .await
        .map_err(SyncError::Idempotency)?;
    match acquired {
        AcquireOutcome::Acquired => {}
        AcquireOutcome::Duplicate(_) => return Ok(Outcome::DuplicateSkipped),
        AcquireOutcome::InProgress => {
            follow_up(deps, meta, run, journal).await;
            return Ok(Outcome::InProgress);
        }
    }
    journal.defer();

    let outcome = match sync.await {
        Ok(outcome) => outcome,
        Err(failure) => match settle(deps, run, journal, failure).await {
            Ok(outcome) => outcome,
            Err(error) => {
                release(deps, run, journal).await;
                return Err(error);
            }
        },
    };
    let link = journal.take_link();
    let committed = complete(deps, meta, run, journal, &outcome, link.as_ref()).await;
    let Err(error) = committed else {
        return Ok(outcome);
    };
    if *error.service() == Service::AuditLog {
        // Only entries were lost (a store writing them one by one): the run is done.
        journal.warn(error);
        return Ok(outcome);
    }
    let Some(link) = link.filter(|_| !is_settled_failure(&outcome)) else {
        journal.warn(error);
        return Ok(outcome);
    };
    if !link.required {
        // Saved if it can be: the run is done without it.
        journal.warn(error);
        let again = complete(deps, meta, run, journal, &outcome, None).await;
        journal.tolerate(again);
        return Ok(outcome);
    }
    // The link could not be saved (another sync changed it, or the write failed): as a failed
    // link write, the run is retried.
    let failure = Failure::Port {
        error,
        crm: Some(link.link.crm.clone()),
    };
    let outcome = match settle(deps, run, journal, failure).await {
        Ok(outcome) => outcome,
        Err(error) => {
            release(deps, run, journal).await;
            return Err(error);
        }
    };
    let again = complete(deps, meta, run, journal, &outcome, None).await;
    journal.tolerate(again);
    Ok(outcome)
}

/// Whether `outcome` is already a failure's (retried or calling for attention): a link that
/// could not be saved with it changes nothing.
fn is_settled_failure(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::RetryEnqueued { .. } | Outcome::NeedsAttention { .. } | Outcome::RetryLater { .. }
    )
}

/// Commit the run: its key completed with `outcome`'s response (released when the caller runs
/// it again, [`Outcome::RetryLater`]), `link` saved, the journal's entries appended.
async fn complete<X: Ports>(
    deps: &Deps<'_, X>,
    meta: &Delivery,
    run: &Run<'_>,
    journal: &Journal<'_, X::Audit>,
    outcome: &Outcome,
    link: Option<&PendingLink>,
) -> Result<(), PortError> {
    let response = outcome.response();
    let key_after = if matches!(outcome, Outcome::RetryLater { .. }) {
        // The caller delivers the job again: the redelivery must run the sync, not skip it.
        KeyAfter::Released
    } else {
        KeyAfter::Completed {
            response: &response,
            expires_at: later(meta.now, deps.settings.idempotency_ttl),
        }
    };
    let entries = journal.kept_entries();
    let commit = Commit {
        key: &run.key,
        key_after,
        link: link.map(|pending| &pending.link),
        entries: &entries,
    };
    deps.idempotency
        .commit(deps.links, deps.audit, &commit)
        .await
}

/// Release the key (the sender delivers the delivery again) with the journal's entries.
async fn release<X: Ports>(deps: &Deps<'_, X>, run: &Run<'_>, journal: &Journal<'_, X::Audit>) {
    let entries = journal.kept_entries();
    let commit = Commit {
        key: &run.key,
        key_after: KeyAfter::Released,
        link: None,
        entries: &entries,
    };
    let released = deps
        .idempotency
        .commit(deps.links, deps.audit, &commit)
        .await;
    journal.tolerate(released);
}

/// Turn a failure into a retry or a call for attention.
async fn settle<X: Ports>(
    deps: &Deps<'_, X>,
    run: &Run<'_>,
    journal: &Journal<'_, X::Audit>,
    failure: Failure,
) -> Result<Outcome, SyncError> {
    let problem = match failure {
        Failure::Port { error, crm }
            if error.is_retryable() && deps.settings.retry_policy == RetryPolicy::Redeliver =>
        {
            return Ok(Outcome::RetryLater {
                retry_after: error.retry_after(),
                reason: sentence(&error.to_string()),
                referral_id: journal.referral(),
                crm,
            });
        }
        Failure::Port { error, crm } if error.is_retryable() => {
            if run.attempt >= deps.settings.max_attempts {
                Problem::exhausted(&error, run.attempt.saturating_add(1), crm)
            } else {
                return schedule_retry(deps, run, journal, error, crm.as_ref()).await;
            }
        }
        Failure::Port { error, crm } => Problem::from_port(&error, crm),
        Failure::Problem(problem) => problem,
    };
    Ok(needs_attention(deps, journal, problem).await)
}

async fn schedule_retry<X: Ports>(
    deps: &Deps<'_, X>,
    run: &Run<'_>,
    journal: &Journal<'_, X::Audit>,
    cause: PortError,
    crm: Option<&CrmRecordId>,
) -> Result<Outcome, SyncError> {
    let job = RetryJob {
        source: run.source,
        key: run.retry_key.to_owned(),
        attempt: run.attempt.saturating_add(1),
        payload: run.payload.clone(),
    };
    let delay = job.delay(cause.retry_after());
    if let Err(enqueue) = deps.retry_queue.enqueue(&job, delay).await {
        return Err(SyncError::RetryNotScheduled {
            cause: Box::new(cause),
            enqueue: Box::new(enqueue),
        });
    }
    journal
        .record(
            AuditEvent::RetryEnqueued {
                attempt: job.attempt,
            },
            crm,
        )
        .await;
    Ok(Outcome::RetryEnqueued {
        attempt: job.attempt,
        delay,
    })
}

/// Audit the problem, write it to the CRM record's Audit field when one is known, and report
/// it.
pub(crate) async fn needs_attention<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    problem: Problem,
) -> Outcome {
    let Problem {
        code,
        reason,
        fix,
        crm,
    } = problem;
    let message = format!("{reason} Fix: {fix}");
    let event = AuditEvent::Failed { reason, fix };
    // A closed Dataverse row takes no write, not even this one.
    if let Some(crm) = crm.as_ref().filter(|_| code != CLOSED_IN_CRM) {
        let text = journal.entry(event.clone(), Some(crm)).crm_text();
        // Shown already (the same failure found again, by a redelivery or reconcile): a write
        // would only change its time, cost a CRM call and raise a CRM change of its own, which
        // reconcile would take up again. Reported once; the audit log keeps every entry.
        if !journal.shows(&text) {
            let written = deps.crm.write_audit(crm, &text).await;
            journal.tolerate(written);
        }
    }
    journal.record(event, crm.as_ref()).await;
    Outcome::NeedsAttention { code, message }
}

/// Whether two Audit column texts (`<UTC time> <message>`) say the same, whatever their time.
pub(crate) fn same_message(shown: &str, text: &str) -> bool {
    fn message(text: &str) -> Option<&str> {
        text.split_once(' ').map(|(_, message)| message.trim())
    }
    matches!((message(shown), message(text)), (Some(a), Some(b)) if a == b)
}
/// How many pages of an engagement's referrals are read at most (an engagement has a handful).
const MAX_ENGAGEMENT_PAGES: usize = 10;

/// Every referral of an engagement (following `@odata.nextLink`, at most
/// [`MAX_ENGAGEMENT_PAGES`] pages).
pub(crate) async fn list_engagement<P: PartnerCenter>(
    pc: &P,
    engagement: EngagementId,
) -> Result<Vec<Referral>, Failure> {
    let mut query = ReferralQuery {
        engagement_id: Some(engagement),
        ..ReferralQuery::default()
    };
    let mut referrals = Vec::new();
    for _ in 0..MAX_ENGAGEMENT_PAGES {
        let page = pc
            .list_referrals(&query)
            .await
            .map_err(Failure::port(None))?;
        referrals.extend(page.value);
        match page.next_link {
            Some(next_link) => {
                query = ReferralQuery {
                    next_link: Some(next_link),
                    ..ReferralQuery::default()
                }
            }
            None => break,
        }
    }
    Ok(referrals)
}
