//! Reconciliation: catch up on changes whose webhook never arrived.
//!
//! One [`reconcile`] run reads, per side, the changes since the checkpoint and queues a sync
//! for every record whose version differs from its [`Link`]:
//!
//! | Side | Listing | In sync (nothing queued) | Queued |
//! |---|---|---|---|
//! | Partner Center | [`PartnerCenter::list_referrals`] with `updatedDateTime ge <since>` | the link's `eTag` is the referral's, or the link saw this `updatedDateTime` or a newer one | a [`RetryJob`] carrying a synthetic `referral-updated` event, as the webhook would have |
//! | CRM | [`CrmStore::list_opportunities`] (sync on, modified since) | the connector wrote it last, or its fingerprint is what either side was last given | a Dataverse / Salesforce [`RetryJob`] naming the record |
//!
//! A referral with no link is queued unless the connector would ignore it anyway (a lead
//! outside the [`ReferralScope`](crate::sync::ReferralScope), another organization's referral,
//! the partner's invitation of Microsoft to an engagement, a closed one). A job's key names the record and its version (`reconcile:pc:<id>:<version>`),
//! so queueing the same version twice (overlapping runs) syncs it once.
//!
//! # Checkpoint
//!
//! Each side keeps a [`ReconcileCursor`]. A pass reads from `since − overlap` (clock skew and
//! changes committed late) page by page. Work per run is bounded
//! ([`ReconcileSettings::max_items`] per side, and the background API budget): a run that stops
//! early saves the next page's link (`resume`), so the cursor only moves past pages whose jobs
//! were all queued; the next run continues there. When a pass reaches its last page, `since`
//! becomes the newest change it saw (the service's own clock, so the connector's clock does
//! not matter). A backfill ([`ReconcileRun::since`]) reads from the given instant and leaves the
//! checkpoint alone. A dry run queues and saves nothing and lists what it would queue.
//!
//! Nothing read is kept or reported beyond ids, versions and reasons (no contact data).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Map;

use crate::budget::{Admit, Budget, CallKind, Metered, admit, count, crm_job, utc_day};
use crate::datetime::WireDateTime;
use crate::ids::{CrmRecordId, ReferralId};
use crate::mapping::invites_microsoft;
use crate::ports::{
    ApiBudget, Checkpoint, CheckpointStore, CrmStore, IdempotencyKey, Link, LinkStore,
    ListedOpportunity, OpportunityQuery, PartnerCenter, PortError, ReconcileCursor, ReferralQuery,
    RetryJob, RetryQueue, RetrySource,
};
use crate::referral::Referral;
use crate::sync::SyncSettings;
use crate::webhook::{EventName, WebhookEvent};

/// How much one run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Records examined per side and run, at most (a run finishes the page it is on).
    pub max_items: usize,
    /// Page size asked for.
    pub page_size: u32,
    /// How far before the checkpoint a pass starts reading.
    pub overlap: Duration,
    /// How far back the first pass (no checkpoint yet) reads.
    pub first_lookback: Duration,
}

impl ReconcileSettings {
    /// The default records per side and run.
    pub const DEFAULT_MAX_ITEMS: usize = 500;
    /// The default page size.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// The default overlap.
    pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(5 * 60);
    /// The default first look-back.
    pub const DEFAULT_FIRST_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            max_items: Self::DEFAULT_MAX_ITEMS,
            page_size: Self::DEFAULT_PAGE_SIZE,
            overlap: Self::DEFAULT_OVERLAP,
            first_lookback: Self::DEFAULT_FIRST_LOOKBACK,
        }
    }
}

/// One run's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileRun {
    /// The current instant (read once by the caller).
    pub now: DateTime<Utc>,
    /// A backfill from this instant (both sides); the checkpoint is neither read nor saved.
    pub since: Option<DateTime<Utc>>,
    /// List what would be queued; queue and save nothing.
    pub dry_run: bool,
}

/// The ports a reconciliation run uses, named once: fewer than a sync's (no idempotency store,
/// no audit log), plus the checkpoint and the API budget.
pub trait ReconcilePorts {
    /// Partner Center.
    type PartnerCenter: PartnerCenter;
    /// The CRM.
    type Crm: CrmStore;
    /// Where the syncs are queued.
    type RetryQueue: RetryQueue;
    /// The links.
    type Links: LinkStore;
    /// The checkpoint.
    type Checkpoints: CheckpointStore;
    /// The API budget's counter.
    type Budget: ApiBudget;
}

/// The ports a run uses, lent by their owner.
#[derive(Debug)]
pub struct ReconcileDeps<'a, X: ReconcilePorts> {
    /// Partner Center.
    pub partner_center: &'a X::PartnerCenter,
    /// The CRM.
    pub crm: &'a X::Crm,
    /// Where the syncs are queued.
    pub retry_queue: &'a X::RetryQueue,
    /// The links.
    pub links: &'a X::Links,
    /// The checkpoint.
    pub checkpoints: &'a X::Checkpoints,
    /// The API budget (reconciliation is background work).
    pub budget: Budget<'a, X::Budget>,
}

/// Which side a change was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A Partner Center referral.
    PartnerCenter,
    /// A CRM opportunity.
    Crm,
}

/// Why a sync is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The referral has no CRM opportunity yet.
    ReferralNotLinked,
    /// The referral changed since it was last synced.
    ReferralChanged,
    /// The opportunity has no referral yet.
    OpportunityNotLinked,
    /// The opportunity changed since it was last synced.
    OpportunityChanged,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReferralNotLinked => "referral not in the CRM yet",
            Self::ReferralChanged => "referral changed since its last sync",
            Self::OpportunityNotLinked => "opportunity not in Partner Center yet",
            Self::OpportunityChanged => "opportunity changed since its last sync",
        })
    }
}

/// One sync queued (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedSync {
    /// Which side changed.
    pub side: Side,
    /// The referral, when known.
    pub referral_id: Option<ReferralId>,
    /// The opportunity, when known.
    pub crm: Option<CrmRecordId>,
    /// Why.
    pub reason: Reason,
    /// When the record changed, when the service says.
    pub changed_at: Option<DateTime<Utc>>,
    /// The job's key.
    pub key: String,
}

/// What a run did on one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SideReport {
    /// Read from this instant.
    pub since: Option<DateTime<Utc>>,
    /// Pages read.
    pub pages: usize,
    /// Records examined.
    pub examined: usize,
    /// Records already in sync.
    pub in_sync: usize,
    /// Records the connector does not sync (leads out of scope, other organizations'
    /// referrals, closed referrals, records without an id).
    pub ignored: usize,
    /// Whether the pass reached its last page.
    pub finished: bool,
    /// Why the side stopped early, if it failed.
    pub error: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Nothing was queued or saved.
    pub dry_run: bool,
    /// Partner Center referrals.
    pub referrals: SideReport,
    /// CRM opportunities.
    pub opportunities: SideReport,
    /// The syncs queued (or that would be).
    pub planned: Vec<PlannedSync>,
    /// Partner Center and CRM calls made.
    pub calls: u64,
    /// The background budget was spent: the rest waits until then.
    pub deferred_until: Option<DateTime<Utc>>,
    /// The checkpoint saved (not for a dry run or a backfill).
    pub checkpoint: Option<Checkpoint>,
}

impl ReconcileReport {
    /// Whether a side failed.
    pub fn failed(&self) -> bool {
        self.referrals.error.is_some() || self.opportunities.error.is_some()
    }
}

/// The run could not start or end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The checkpoint could not be read.
    #[error("the reconciliation checkpoint could not be read: {0}")]
    LoadCheckpoint(PortError),
    /// The checkpoint could not be saved; the next run repeats this one's work (harmless:
    /// jobs are keyed by version).
    #[error("the reconciliation checkpoint could not be saved: {0}")]
    SaveCheckpoint(PortError),
}

fn minus(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_sub_signed(delta))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn newest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.max(b)
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Where a pass over one side starts, and the page to continue from.
#[derive(Debug, Clone)]
struct Start {
    since: DateTime<Utc>,
    resume: Option<String>,
    pass_newest: Option<DateTime<Utc>>,
}

fn start(
    cursor: Option<&ReconcileCursor>,
    run: &ReconcileRun,
    settings: &ReconcileSettings,
) -> Start {
    if let Some(since) = run.since {
        return Start {
            since,
            resume: None,
            pass_newest: None,
        };
    }
    let cursor = cursor.cloned().unwrap_or_default();
    let since = cursor.since.map_or_else(
        || minus(run.now, settings.first_lookback),
        |since| minus(since, settings.overlap),
    );
    Start {
        since,
        resume: cursor.resume,
        pass_newest: cursor.pass_newest,
    }
}

/// The cursor after a pass: moved past the pages fully queued.
fn advanced(previous: Option<&ReconcileCursor>, pass: &Pass) -> ReconcileCursor {
    let previous = previous.cloned().unwrap_or_default();
    if pass.finished {
        ReconcileCursor {
            since: newest(previous.since, pass.newest),
            resume: None,
            pass_newest: None,
        }
    } else if pass.pages_done == 0 {
        previous
    } else {
        ReconcileCursor {
            since: previous.since,
            resume: pass.next_link.clone(),
            pass_newest: pass.newest,
        }
    }
}

/// The progress of one side's pass.
#[derive(Debug, Default)]
struct Pass {
    pages_done: usize,
    next_link: Option<String>,
    newest: Option<DateTime<Utc>>,
    finished: bool,
}

impl Pass {
    /// A page fully handled (all its jobs queued): count it, move the newest change seen, and
    /// keep where the next page starts. `None` when it was the last page.
    fn page_done(
        &mut self,
        page_newest: Option<DateTime<Utc>>,
        next_link: Option<String>,
    ) -> Option<String> {
        self.pages_done += 1;
        self.newest = newest(self.newest, page_newest);
        self.next_link.clone_from(&next_link);
        self.finished = next_link.is_none();
        next_link
    }
}

/// What to do with one record.
enum Verdict {
    InSync,
    Ignored,
    Queue(Reason),
}

/// One reconciliation run (see the module docs).
pub async fn reconcile<X: ReconcilePorts>(
    ports: ReconcileDeps<'_, X>,
    sync: &SyncSettings,
    settings: &ReconcileSettings,
    run: &ReconcileRun,
) -> Result<ReconcileReport, ReconcileError> {
    let backfill = run.since.is_some();
    let checkpoint = if backfill {
        None
    } else {
        ports
            .checkpoints
            .load()
            .await
            .map_err(ReconcileError::LoadCheckpoint)?
    };
    let partner_center = Metered::new(ports.partner_center);
    let crm = Metered::new(ports.crm);
    let mut report = ReconcileReport {
        dry_run: run.dry_run,
        ..ReconcileReport::default()
    };
    let gate = Gate {
        budget: ports.budget,
        now: run.now,
        partner_center: &partner_center,
        crm: &crm,
    };

    let referrals_start = start(checkpoint.as_ref().map(|c| &c.referrals), run, settings);
    let referrals_pass = referrals(
        &ports,
        &partner_center,
        &gate,
        sync,
        settings,
        run,
        &referrals_start,
        &mut report,
    )
    .await;
    let opportunities_start = start(checkpoint.as_ref().map(|c| &c.opportunities), run, settings);
    let opportunities_pass = opportunities(
        &ports,
        &crm,
        &gate,
        sync,
        settings,
        run,
        &opportunities_start,
        &mut report,
    )
    .await;

    report.calls = partner_center.calls().saturating_add(crm.calls());
    // Counting is best effort: a counter that does not answer must not repeat the run.
    count(ports.budget, run.now, report.calls).await.ok();

    if !backfill && !run.dry_run {
        let saved = Checkpoint {
            referrals: advanced(checkpoint.as_ref().map(|c| &c.referrals), &referrals_pass),
            opportunities: advanced(
                checkpoint.as_ref().map(|c| &c.opportunities),
                &opportunities_pass,
            ),
            last_run: Some(run.now),
            last_enqueued: u64::try_from(report.planned.len()).unwrap_or(u64::MAX),
        };
        ports
            .checkpoints
            .save(&saved)
            .await
            .map_err(ReconcileError::SaveCheckpoint)?;
        report.checkpoint = Some(saved);
    }
    Ok(report)
}

/// Reads the background budget before each page.
struct Gate<'a, 'p, B, P, C> {
    budget: Budget<'a, B>,
    now: DateTime<Utc>,
    partner_center: &'a Metered<'p, P>,
    crm: &'a Metered<'p, C>,
}

impl<B: ApiBudget, P, C> Gate<'_, '_, B, P, C> {
    /// `Some(until)` when the background budget (with this run's calls, counted at its end)
    /// has no room for another page. A counter that does not answer does not stop the run.
    async fn spent(&self) -> Option<DateTime<Utc>> {
        let counted = self.budget.counter.used(utc_day(self.now)).await.ok()?;
        let used = counted
            .saturating_add(self.partner_center.calls())
            .saturating_add(self.crm.calls());
        match admit(CallKind::Background, used, self.budget.policy, self.now) {
            Admit::Run => None,
            Admit::Defer { until } => Some(until),
        }
    }
}

/// Queue `job` unless dry; record it as planned.
async fn plan<Q: RetryQueue>(
    queue: &Q,
    run: &ReconcileRun,
    job: &RetryJob,
    planned: PlannedSync,
    report: &mut ReconcileReport,
) -> Result<(), PortError> {
    if !run.dry_run {
        queue.enqueue(job, Duration::ZERO).await?;
    }
    report.planned.push(planned);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Partner Center referrals
// ---------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
async fn referrals<X: ReconcilePorts, MC>(
    ports: &ReconcileDeps<'_, X>,
    partner_center: &Metered<'_, X::PartnerCenter>,
    gate: &Gate<'_, '_, X::Budget, X::PartnerCenter, MC>,
    sync: &SyncSettings,
    settings: &ReconcileSettings,
    run: &ReconcileRun,
    start: &Start,
    report: &mut ReconcileReport,
) -> Pass {
    report.referrals.since = Some(start.since);
    let mut pass = Pass {
        newest: start.pass_newest,
        ..Pass::default()
    };
    let mut next = start.resume.clone();
    loop {
        if report.referrals.examined >= settings.max_items {
            break;
        }
        if let Some(until) = gate.spent().await {
            report.deferred_until = Some(until);
            break;
        }
        let query = ReferralQuery {
            updated_since: Some(start.since),
            top: Some(settings.page_size),
            next_link: next.clone(),
            ..ReferralQuery::default()
        };
        let page = match partner_center.list_referrals(&query).await {
            Ok(page) => page,
            Err(error) => {
                report.referrals.error = Some(error.to_string());
                break;
            }
        };
        report.referrals.pages += 1;
        let mut page_newest = None;
        let mut failed = None;
        for referral in &page.value {
            report.referrals.examined += 1;
            let updated = referral
                .updated_date_time
                .as_ref()
                .and_then(WireDateTime::instant);
            page_newest = newest(page_newest, updated);
            if let Err(error) = referral_step(ports, sync, run, referral, updated, report).await {
                failed = Some(error);
                break;
            }
        }
        if let Some(error) = failed {
            report.referrals.error = Some(error.to_string());
            break;
        }
        match pass.page_done(page_newest, page.next_link) {
            Some(link) => next = Some(link),
            None => break,
        }
    }
    report.referrals.finished = pass.finished;
    pass
}

async fn referral_step<X: ReconcilePorts>(
    ports: &ReconcileDeps<'_, X>,
    sync: &SyncSettings,
    run: &ReconcileRun,
    referral: &Referral,
    updated: Option<DateTime<Utc>>,
    report: &mut ReconcileReport,
) -> Result<(), PortError> {
    let Ok(id) = referral.referral_id() else {
        report.referrals.ignored += 1;
        return Ok(());
    };
    let link = ports.links.get_by_referral(&id).await?;
    let verdict = referral_verdict(referral, updated, link.as_ref(), sync, ports.crm);
    let reason = match verdict {
        Verdict::InSync => {
            report.referrals.in_sync += 1;
            return Ok(());
        }
        Verdict::Ignored => {
            report.referrals.ignored += 1;
            return Ok(());
        }
        Verdict::Queue(reason) => reason,
    };
    let version = updated.map_or_else(
        || {
            referral
                .etag()
                .map_or_else(|| stamp(run.now), |etag| etag.to_string())
        },
        stamp,
    );
    let key = IdempotencyKey::new("reconcile", &format!("pc:{id}:{version}"))
        .map_err(|error| permanent(&error.to_string()))?;
    let event = WebhookEvent {
        event_name: EventName::ReferralUpdated,
        resource_uri: format!(
            "https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}"
        ),
        resource_name: Some("referral".to_owned()),
        audit_uri: None,
        resource_change_utc_date: referral.updated_date_time.clone(),
        extra: Map::new(),
    };
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: key.to_string(),
        attempt: 1,
        // Serialising the event (strings and JSON values) cannot fail.
        payload: serde_json::to_value(&event).unwrap_or_default(),
    };
    let planned = PlannedSync {
        side: Side::PartnerCenter,
        referral_id: Some(id),
        crm: link.map(|l| l.crm),
        reason,
        changed_at: updated,
        key: job.key.clone(),
    };
    plan(ports.retry_queue, run, &job, planned, report).await
}

fn permanent(message: &str) -> PortError {
    PortError::Permanent {
        service: crate::ports::Service::Other("reconciliation".to_owned()),
        message: message.to_owned(),
    }
}

fn referral_verdict<C: CrmStore>(
    referral: &Referral,
    updated: Option<DateTime<Utc>>,
    link: Option<&Link>,
    sync: &SyncSettings,
    crm: &C,
) -> Verdict {
    match link {
        Some(link) if link.crm.kind() != crm.kind() => Verdict::Ignored,
        Some(link) => {
            let etag = referral.etag();
            let same_etag = etag.is_some() && etag == link.last_referral_etag;
            let seen = matches!(
                (link.last_referral_updated, updated),
                (Some(last), Some(seen)) if seen <= last
            );
            if same_etag || (etag.is_none() && seen) || link.is_stale_referral(updated) {
                Verdict::InSync
            } else {
                Verdict::Queue(Reason::ReferralChanged)
            }
        }
        None if invites_microsoft(referral)
            || !sync.referral_scope.includes(referral)
            || sync.is_partners(referral) == Some(false)
            || referral.is_terminal() =>
        {
            Verdict::Ignored
        }
        None => Verdict::Queue(Reason::ReferralNotLinked),
    }
}

// ---------------------------------------------------------------------------------------------
// CRM opportunities
// ---------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
async fn opportunities<X: ReconcilePorts, MP>(
    ports: &ReconcileDeps<'_, X>,
    crm: &Metered<'_, X::Crm>,
    gate: &Gate<'_, '_, X::Budget, MP, X::Crm>,
    sync: &SyncSettings,
    settings: &ReconcileSettings,
    run: &ReconcileRun,
    start: &Start,
    report: &mut ReconcileReport,
) -> Pass {
    report.opportunities.since = Some(start.since);
    let mut pass = Pass {
        newest: start.pass_newest,
        ..Pass::default()
    };
    let mut next = start.resume.clone();
    loop {
        if report.opportunities.examined >= settings.max_items {
            break;
        }
        if let Some(until) = gate.spent().await {
            report.deferred_until = Some(until);
            break;
        }
        let query = OpportunityQuery {
            modified_since: start.since,
            top: Some(settings.page_size),
            next_link: next.clone(),
        };
        let page = match crm.list_opportunities(&query).await {
            Ok(page) => page,
            Err(error) => {
                report.opportunities.error = Some(error.to_string());
                break;
            }
        };
        report.opportunities.pages += 1;
        let mut page_newest = None;
        let mut failed = None;
        for listed in &page.items {
            report.opportunities.examined += 1;
            page_newest = newest(page_newest, listed.modified_at);
            if let Err(error) = opportunity_step(ports, crm, sync, run, listed, report).await {
                failed = Some(error);
                break;
            }
        }
        if let Some(error) = failed {
            report.opportunities.error = Some(error.to_string());
            break;
        }
        match pass.page_done(page_newest, page.next_link) {
            Some(link) => next = Some(link),
            None => break,
        }
    }
    report.opportunities.finished = pass.finished;
    pass
}

async fn opportunity_step<X: ReconcilePorts>(
    ports: &ReconcileDeps<'_, X>,
    crm: &Metered<'_, X::Crm>,
    sync: &SyncSettings,
    run: &ReconcileRun,
    listed: &ListedOpportunity,
    report: &mut ReconcileReport,
) -> Result<(), PortError> {
    let opportunity = &listed.opportunity;
    let Some(record) = opportunity.record.id.clone() else {
        report.opportunities.ignored += 1;
        return Ok(());
    };
    if !opportunity.opportunity.sync || record.kind() != crm.kind() {
        report.opportunities.ignored += 1;
        return Ok(());
    }
    if sync.is_connector_write(listed.modified_by.as_deref()) {
        report.opportunities.in_sync += 1;
        return Ok(());
    }
    let link = ports.links.get_by_crm(&record).await?.filter(|link| {
        opportunity
            .opportunity
            .referral_id
            .is_none_or(|id| id == link.referral_id)
    });
    let reason = match &link {
        None => Reason::OpportunityNotLinked,
        Some(link) => {
            let synced_after = matches!(listed.modified_at, Some(at) if at <= link.updated_at);
            if synced_after {
                report.opportunities.in_sync += 1;
                return Ok(());
            }
            // The listing carries no account or contact: read the whole record to compare.
            let full = crm.get_opportunity(&record).await?;
            let fingerprint = full.opportunity.fingerprint();
            if link.is_echo_from_crm(&fingerprint) || link.is_unchanged_for_pc(&fingerprint) {
                report.opportunities.in_sync += 1;
                return Ok(());
            }
            Reason::OpportunityChanged
        }
    };
    let version = listed.modified_at.map_or_else(|| stamp(run.now), stamp);
    let key = IdempotencyKey::new("reconcile", &format!("crm:{}:{version}", record))
        .map_err(|error| permanent(&error.to_string()))?;
    let job = crm_job(key.as_str(), &record, None);
    let planned = PlannedSync {
        side: Side::Crm,
        referral_id: opportunity
            .opportunity
            .referral_id
            .or_else(|| link.as_ref().map(|l| l.referral_id)),
        crm: Some(record),
        reason,
        changed_at: listed.modified_at,
        key: job.key.clone(),
    };
    plan(ports.retry_queue, run, &job, planned, report).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn run(now: &str) -> ReconcileRun {
        ReconcileRun {
            now: at(now),
            since: None,
            dry_run: false,
        }
    }

    #[test]
    fn a_pass_starts_at_the_checkpoint_minus_the_overlap_or_the_first_lookback() {
        let settings = ReconcileSettings::default();
        let first = start(None, &run("2027-01-15T10:00:00Z"), &settings);
        assert_eq!(first.since, at("2027-01-14T10:00:00Z"));
        let cursor = ReconcileCursor {
            since: Some(at("2027-01-15T09:00:00Z")),
            resume: Some("next".into()),
            pass_newest: Some(at("2027-01-15T09:30:00Z")),
        };
        let resumed = start(Some(&cursor), &run("2027-01-15T10:00:00Z"), &settings);
        assert_eq!(resumed.since, at("2027-01-15T08:55:00Z"));
        assert_eq!(resumed.resume.as_deref(), Some("next"));
        let backfill = ReconcileRun {
            since: Some(at("2026-12-01T00:00:00Z")),
            ..run("2027-01-15T10:00:00Z")
        };
        let started = start(Some(&cursor), &backfill, &settings);
        assert_eq!(started.since, at("2026-12-01T00:00:00Z"));
        assert_eq!(started.resume, None);
    }

    #[test]
    fn the_cursor_moves_only_past_fully_queued_pages() {
        let previous = ReconcileCursor {
            since: Some(at("2027-01-15T09:00:00Z")),
            ..ReconcileCursor::default()
        };
        // Stopped before finishing a page: unchanged.
        let nothing = Pass::default();
        assert_eq!(advanced(Some(&previous), &nothing), previous);
        // Stopped after two pages: `since` stays, the next page and the newest change are kept.
        let partial = Pass {
            pages_done: 2,
            next_link: Some("page-3".into()),
            newest: Some(at("2027-01-15T09:40:00Z")),
            finished: false,
        };
        assert_eq!(
            advanced(Some(&previous), &partial),
            ReconcileCursor {
                since: Some(at("2027-01-15T09:00:00Z")),
                resume: Some("page-3".into()),
                pass_newest: Some(at("2027-01-15T09:40:00Z")),
            }
        );
        // The pass ended: `since` is the newest change seen, never earlier than before.
        let finished = Pass {
            finished: true,
            pages_done: 1,
            newest: Some(at("2027-01-15T09:50:00Z")),
            next_link: None,
        };
        assert_eq!(
            advanced(Some(&previous), &finished).since,
            Some(at("2027-01-15T09:50:00Z"))
        );
        let empty = Pass {
            finished: true,
            pages_done: 1,
            ..Pass::default()
        };
        assert_eq!(advanced(Some(&previous), &empty), previous);
        assert_eq!(
            advanced(None, &finished).since,
            Some(at("2027-01-15T09:50:00Z"))
        );
    }
}
