//! Reconciliation: catch up on changes whose webhook never arrived.
//!
//! One [`reconcile`] run reads, per side, the changes since the checkpoint and queues a sync
//! for every record whose version differs from its [`Link`]:
//!
//! | Side | Listing | In sync (nothing queued) | Queued |
//! |---|---|---|---|
//! | Partner Center | [`PartnerCenter::list_referrals`] with `updatedDateTime ge <position>`, `$orderby=updatedDateTime asc`, `$top` | the link's `eTag` is the referral's, or the link saw this `updatedDateTime` or a newer one | a [`RetryJob`] carrying a synthetic `referral-updated` event, as the webhook would have |
//! | CRM | [`CrmStore::list_opportunities`] (sync on, after `(modified, id)` of the position, at most a page) | the connector wrote it last (in a Dataverse listing: and its shared fields hold what both sides last agreed on), or it was saved before its link was, or its fingerprint is what either side was last given (a linked record that does not carry its referral id is queued whatever its fingerprint: its write-back never arrived) | a Dataverse / Salesforce [`RetryJob`] naming the record |
//!
//! A referral with no link is queued unless the connector would ignore it anyway (a lead
//! outside the [`ReferralScope`](crate::sync::ReferralScope), another organization's referral,
//! the partner's invitation of Microsoft to an engagement, a closed one). A job's key names the record and its version (`reconcile:pc:<id>:<version>`),
//! so queueing the same version twice (overlapping runs) syncs it once.
//!
//! # Paging: by key, never by position
//!
//! Records change while a pass reads them (the retry worker writes back the referrals this
//! pass queued, sellers edit opportunities), and a change moves a record to the end of the
//! order by change time. Paging by position (`$skip`, a `$skiptoken` offset, a query locator
//! taken once) then shifts the records behind it across a page boundary: some are read twice,
//! others never. So every page is a new query from the last record handled, in the order
//! `(changed, id)`:
//!
//! - CRM: "modified after `t`, or at `t` with an id greater than the last one", ordered by
//!   `(modified, id)`, at most [`ReconcileSettings::page_size`] (Dataverse `$top`, SOQL
//!   `LIMIT`; docs/dataverse.md#paging, docs/salesforce.md#soql-queries-and-query-locators).
//! - Partner Center orders by `updatedDateTime` only (ordering or filtering by `id` is not
//!   documented; docs/partner-center.md#listing-filtering-and-paging): the page is
//!   "`updatedDateTime ge t`", and the referrals already handled at `t` (kept by id in the
//!   position) are skipped; `$top` is the page size plus their number, so a page always holds
//!   new ones.
//!
//! A record that changes during the pass moves to a later position and is read again there
//! (harmless: jobs are keyed by version); none is skipped. No continuation link or query
//! locator is kept (they expire, and they page by position).
//!
//! # Checkpoint
//!
//! Each side keeps a [`ReconcileCursor`]. A pass reads from `since − overlap` (clock skew and
//! changes committed late). The position (the last record handled) is saved after every page,
//! so a run killed at its deadline loses at most one page. Work per run is bounded per record,
//! not per page: [`ReconcileSettings::max_items`] per side, [`ReconcileRun::deadline`] (read on
//! the run's [`Clock`]), and the background API budget (before each page); a run that stops
//! saves where it stopped and the next run continues after it. When a pass reaches its last
//! page, `since` becomes the newest change it saw (the service's own clock, so the connector's
//! clock does not matter). A backfill ([`ReconcileRun::since`]) reads from the given instant
//! and leaves the checkpoint alone. A dry run queues and saves nothing and lists what it would
//! queue.
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
use crate::opportunity::OpportunityStage;
use crate::ports::{
    ApiBudget, Checkpoint, CheckpointStore, CrmStore, IdempotencyKey, Link, LinkStore,
    ListedOpportunity, OpportunityQuery, PartnerCenter, PortError, ReconcileCursor,
    ReconcilePosition, ReferralQuery, RetryJob, RetryQueue, RetrySource,
};
use crate::referral::Referral;
use crate::sync::SyncSettings;
use crate::webhook::{EventName, WebhookEvent};

/// How much one run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Records examined per side and run, at most (checked before every record).
    pub max_items: usize,
    /// Records asked for per page, on both sides (Partner Center `$top`, Dataverse `$top`,
    /// SOQL `LIMIT`).
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
    /// The most Partner Center referrals one position keeps at its instant (they share one
    /// `updatedDateTime`, to 100 ns): beyond it the side stops with an error rather than skip.
    pub const MAX_TIES: usize = 1_000;
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
    /// Stop (saving where the run stands) once the run's [`Clock`] reaches this instant; the
    /// caller leaves room before its own hard limit for one record and the checkpoint's save.
    pub deadline: Option<DateTime<Utc>>,
}

/// What a run reads the time from, to keep its [`ReconcileRun::deadline`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock stopped at one instant: for runs without a deadline, and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
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
    /// The clock the deadline is checked on.
    pub clock: &'a dyn Clock,
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
    /// The opportunity is linked but does not carry its referral id: the write-back of the
    /// run that created the referral never reached it.
    OpportunityNotWrittenBack,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReferralNotLinked => "referral not in the CRM yet",
            Self::ReferralChanged => "referral changed since its last sync",
            Self::OpportunityNotLinked => "opportunity not in Partner Center yet",
            Self::OpportunityChanged => "opportunity changed since its last sync",
            Self::OpportunityNotWrittenBack => {
                "opportunity linked, its referral id not written back"
            }
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
    /// Whether the side stopped at the run's item limit.
    pub capped: bool,
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
    /// The run reached its deadline: it stopped where it stood (saved), the next continues.
    pub deadline_reached: bool,
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

/// Where one side's pass stands: where it started, and the last record it handled.
#[derive(Debug, Clone)]
struct Walk {
    /// The pass's first instant (inclusive).
    since: DateTime<Utc>,
    /// The cursor's `since` before this pass (kept until the pass ends).
    previous_since: Option<DateTime<Utc>>,
    /// The last record handled.
    after: Option<ReconcilePosition>,
    /// Keep every id handled at the position's instant (Partner Center, which cannot order
    /// by id), or only the last one (a CRM, which can).
    keep_ties: bool,
    /// The pass reached its last page.
    finished: bool,
}

impl Walk {
    fn start(
        cursor: Option<&ReconcileCursor>,
        run: &ReconcileRun,
        settings: &ReconcileSettings,
        keep_ties: bool,
    ) -> Self {
        if let Some(since) = run.since {
            return Self {
                since,
                previous_since: None,
                after: None,
                keep_ties,
                finished: false,
            };
        }
        let cursor = cursor.cloned().unwrap_or_default();
        let since = cursor.since.map_or_else(
            || minus(run.now, settings.first_lookback),
            |since| minus(since, settings.overlap),
        );
        Self {
            since,
            previous_since: cursor.since,
            after: cursor.after,
            keep_ties,
            finished: false,
        }
    }

    /// Where the next page starts (inclusive).
    fn from(&self) -> DateTime<Utc> {
        self.after.as_ref().map_or(self.since, |after| after.at)
    }

    /// The records at [`from`](Self::from) already handled.
    fn handled_at_from(&self) -> usize {
        self.after.as_ref().map_or(0, |after| after.ids.len())
    }

    /// The last record handled, when there is one at [`from`](Self::from).
    fn last_id(&self) -> Option<&str> {
        self.after
            .as_ref()
            .and_then(|after| after.ids.last())
            .map(String::as_str)
    }

    /// Whether a record listed again was handled already: it sorts before the position, or it
    /// is one of the records handled at the position's instant.
    fn seen(&self, at: Option<DateTime<Utc>>, id: Option<&str>) -> bool {
        match (&self.after, at) {
            (Some(after), Some(at)) => {
                at < after.at
                    || (at == after.at && id.is_some_and(|id| after.ids.iter().any(|s| s == id)))
            }
            _ => false,
        }
    }

    /// A record handled: the position moves to it. A record without a time or an id cannot
    /// be a position (it is handled, the position stays).
    fn handled(&mut self, at: Option<DateTime<Utc>>, id: Option<&str>) -> Result<(), String> {
        let (Some(at), Some(id)) = (at, id) else {
            return Ok(());
        };
        match &mut self.after {
            Some(after) if at < after.at => {}
            Some(after) if at == after.at => {
                if !self.keep_ties {
                    after.ids.clear();
                } else if after.ids.len() >= ReconcileSettings::MAX_TIES {
                    return Err(format!(
                        "more than {} records changed at {}: the service orders them by time \
                         only, so paging cannot go past them without skipping some",
                        ReconcileSettings::MAX_TIES,
                        stamp(at)
                    ));
                }
                after.ids.push(id.to_owned());
            }
            _ => {
                self.after = Some(ReconcilePosition {
                    at,
                    ids: vec![id.to_owned()],
                });
            }
        }
        Ok(())
    }

    /// The cursor to save: the position of an unfinished pass, or, once the pass ended, the
    /// newest change it saw as the next pass's `since`.
    fn cursor(&self) -> ReconcileCursor {
        if self.finished {
            ReconcileCursor {
                since: newest(self.previous_since, self.after.as_ref().map(|a| a.at)),
                after: None,
            }
        } else {
            ReconcileCursor {
                since: self.previous_since,
                after: self.after.clone(),
            }
        }
    }
}

/// What stops a side before the end of a page: checked before every record.
struct Limits<'a> {
    max_items: usize,
    deadline: Option<DateTime<Utc>>,
    clock: &'a dyn Clock,
}

impl Limits<'_> {
    /// Whether the side must stop now; records why in `report`.
    fn reached(&self, side: Side, report: &mut ReconcileReport) -> bool {
        if report.deadline_reached {
            return true;
        }
        if self
            .deadline
            .is_some_and(|deadline| self.clock.now() >= deadline)
        {
            report.deadline_reached = true;
            return true;
        }
        let side = report.side_mut(side);
        if side.examined >= self.max_items {
            side.capped = true;
            return true;
        }
        false
    }
}

impl ReconcileReport {
    fn side_mut(&mut self, side: Side) -> &mut SideReport {
        match side {
            Side::PartnerCenter => &mut self.referrals,
            Side::Crm => &mut self.opportunities,
        }
    }
}

/// The checkpoint as the run moves it, saved after every page (not in a dry run or a
/// backfill).
struct Progress {
    checkpoint: Checkpoint,
    saving: bool,
    now: DateTime<Utc>,
}

impl Progress {
    async fn save<S: CheckpointStore>(
        &mut self,
        store: &S,
        side: Side,
        walk: &Walk,
        enqueued: usize,
    ) -> Result<(), ReconcileError> {
        let cursor = walk.cursor();
        match side {
            Side::PartnerCenter => self.checkpoint.referrals = cursor,
            Side::Crm => self.checkpoint.opportunities = cursor,
        }
        if !self.saving {
            return Ok(());
        }
        self.checkpoint.last_run = Some(self.now);
        self.checkpoint.last_enqueued = u64::try_from(enqueued).unwrap_or(u64::MAX);
        store
            .save(&self.checkpoint)
            .await
            .map_err(ReconcileError::SaveCheckpoint)
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
    let limits = Limits {
        max_items: settings.max_items,
        deadline: run.deadline,
        clock: ports.clock,
    };
    let mut progress = Progress {
        checkpoint: checkpoint.clone().unwrap_or_default(),
        saving: !backfill && !run.dry_run,
        now: run.now,
    };
    let ctx = Ctx {
        ports: &ports,
        gate: &gate,
        limits: &limits,
        sync,
        settings,
        run,
    };

    let mut referrals_walk = Walk::start(
        checkpoint.as_ref().map(|c| &c.referrals),
        run,
        settings,
        true,
    );
    let referrals_done = referrals(
        &ctx,
        &partner_center,
        &mut referrals_walk,
        &mut progress,
        &mut report,
    )
    .await;
    let opportunities_done = match referrals_done {
        Ok(()) => {
            let mut walk = Walk::start(
                checkpoint.as_ref().map(|c| &c.opportunities),
                run,
                settings,
                false,
            );
            opportunities(&ctx, &crm, &mut walk, &mut progress, &mut report).await
        }
        Err(error) => Err(error),
    };

    let made = partner_center.made() + crm.made();
    report.calls = made.total();
    // Counting is best effort: a counter that does not answer must not repeat the run.
    count(ports.budget, run.now, made).await.ok();
    opportunities_done?;
    if progress.saving {
        // Also when nothing moved: `last_run` and `last_enqueued` say the run happened.
        progress.checkpoint.last_run = Some(run.now);
        progress.checkpoint.last_enqueued = u64::try_from(report.planned.len()).unwrap_or(u64::MAX);
        ports
            .checkpoints
            .save(&progress.checkpoint)
            .await
            .map_err(ReconcileError::SaveCheckpoint)?;
        report.checkpoint = Some(progress.checkpoint);
    }
    Ok(report)
}

/// What both sides' passes share.
struct Ctx<'c, X: ReconcilePorts> {
    ports: &'c ReconcileDeps<'c, X>,
    gate: &'c Gate<'c, 'c, X::Budget, X::PartnerCenter, X::Crm>,
    limits: &'c Limits<'c>,
    sync: &'c SyncSettings,
    settings: &'c ReconcileSettings,
    run: &'c ReconcileRun,
}

impl<X: ReconcilePorts> Ctx<'_, X> {
    /// Whether `side` must stop before its next page: a limit of the run is reached, or the
    /// day's budget is spent (then `report.deferred_until` says until when).
    async fn page_stop(&self, side: Side, report: &mut ReconcileReport) -> bool {
        if self.limits.reached(side, report) {
            return true;
        }
        if let Some(until) = self.gate.spent().await {
            report.deferred_until = Some(until);
            return true;
        }
        false
    }
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

/// The referrals' pass: pages of `updatedDateTime ge <position>` ordered by `updatedDateTime`,
/// the referrals handled at the position's instant skipped by id
/// (docs/partner-center.md#listing-filtering-and-paging). The checkpoint is saved after every
/// page; only a checkpoint that cannot be saved ends the run with an error.
async fn referrals<X: ReconcilePorts>(
    ctx: &Ctx<'_, X>,
    partner_center: &Metered<'_, X::PartnerCenter>,
    walk: &mut Walk,
    progress: &mut Progress,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    report.referrals.since = Some(walk.since);
    loop {
        if ctx.page_stop(Side::PartnerCenter, report).await {
            break;
        }
        // Room for the referrals handled at the instant the page starts at, which come again.
        let skipped = u32::try_from(walk.handled_at_from()).unwrap_or(u32::MAX);
        let top = ctx.settings.page_size.max(1).saturating_add(skipped);
        let query = ReferralQuery {
            updated_since: Some(walk.from()),
            top: Some(top),
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
        // A page shorter than asked for, without a next link, is the last one. (The service's
        // largest page is UNKNOWN: a `nextLink` says there is more even on a short page.)
        let more = page.next_link.is_some() || page.value.len() >= top as usize;
        let before = walk.after.clone();
        let mut stopped = false;
        for referral in &page.value {
            let updated = referral
                .updated_date_time
                .as_ref()
                .and_then(WireDateTime::instant);
            if walk.seen(updated, referral.id.as_deref()) {
                continue;
            }
            if ctx.limits.reached(Side::PartnerCenter, report) {
                stopped = true;
                break;
            }
            report.referrals.examined += 1;
            let step = referral_step(ctx.ports, ctx.sync, ctx.run, referral, updated, report)
                .await
                .map_err(|error| error.to_string())
                .and_then(|()| walk.handled(updated, referral.id.as_deref()));
            if let Err(error) = step {
                report.referrals.error = Some(error);
                stopped = true;
                break;
            }
        }
        let moved = walk.after != before;
        if !stopped && !more {
            walk.finished = true;
        }
        if moved || walk.finished {
            progress
                .save(
                    ctx.ports.checkpoints,
                    Side::PartnerCenter,
                    walk,
                    report.planned.len(),
                )
                .await?;
        }
        if stopped || walk.finished {
            break;
        }
        if !moved {
            report.referrals.error = Some(no_progress("Partner Center", walk));
            break;
        }
    }
    report.referrals.finished = walk.finished;
    Ok(())
}

/// A full page of records all handled already: the service did not order or filter as asked.
/// The side stops rather than read the same page again.
fn no_progress(service: &str, walk: &Walk) -> String {
    format!(
        "{service} listed no record after the one handled last (changed at {}); the listing \
         does not follow the order asked for, so this pass stops here",
        stamp(walk.from())
    )
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

/// Whether a record the connector wrote last is in sync: when its shared fields hold what
/// both sides last agreed on. Otherwise the connector's write (a create's write-back, an Audit
/// text) may carry a seller's save made just before it whose own notification never came, and
/// the record is compared like any other. The link tells them apart: it is stored after the
/// connector's writes (then the record is in sync), except a create's, whose write-back
/// follows it (then the fingerprint says whether anything but the referral id changed). Found
/// by the simulation (seed 77). Only with a listing that carries the whole record (Dataverse):
/// a Salesforce page does not, and reading every record the connector wrote would double a
/// pass's calls, so there the connector's write is trusted as before. And not for a record on
/// hold: a change held until the referral is accepted differs from the base on purpose, and
/// each run holding it writes its Audit text again, so every pass would queue it again (it is
/// sent when the referral is accepted, from either side).
fn connector_write_in_sync(listed: &ListedOpportunity, link: Option<&Link>) -> bool {
    let opportunity = &listed.opportunity.opportunity;
    !listed.complete
        || opportunity.stage == Some(OpportunityStage::OnHold)
        || link.is_none_or(|link| link.agrees_with(opportunity))
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

/// The opportunities' pass: pages after `(modified, id)` of the position, ordered by it, at
/// most a page size each (docs/dataverse.md#paging,
/// docs/salesforce.md#soql-queries-and-query-locators). The checkpoint is saved after every
/// page.
async fn opportunities<X: ReconcilePorts>(
    ctx: &Ctx<'_, X>,
    crm: &Metered<'_, X::Crm>,
    walk: &mut Walk,
    progress: &mut Progress,
    report: &mut ReconcileReport,
) -> Result<(), ReconcileError> {
    report.opportunities.since = Some(walk.since);
    loop {
        if ctx.page_stop(Side::Crm, report).await {
            break;
        }
        let top = ctx.settings.page_size.max(1);
        let query = OpportunityQuery {
            modified_since: walk.from(),
            after: walk.last_id().and_then(|id| CrmRecordId::try_from(id).ok()),
            top,
        };
        let page = match crm.list_opportunities(&query).await {
            Ok(page) => page,
            Err(error) => {
                report.opportunities.error = Some(error.to_string());
                break;
            }
        };
        report.opportunities.pages += 1;
        let more = page.items.len() >= top as usize;
        let before = walk.after.clone();
        let mut stopped = false;
        for listed in &page.items {
            let id = listed
                .opportunity
                .record
                .id
                .as_ref()
                .map(ToString::to_string);
            if walk.seen(listed.modified_at, id.as_deref()) {
                continue;
            }
            if ctx.limits.reached(Side::Crm, report) {
                stopped = true;
                break;
            }
            report.opportunities.examined += 1;
            let step = opportunity_step(ctx.ports, crm, ctx.sync, ctx.run, listed, report)
                .await
                .map_err(|error| error.to_string())
                .and_then(|()| walk.handled(listed.modified_at, id.as_deref()));
            if let Err(error) = step {
                report.opportunities.error = Some(error);
                stopped = true;
                break;
            }
        }
        let moved = walk.after != before;
        if !stopped && !more {
            walk.finished = true;
        }
        if moved || walk.finished {
            progress
                .save(ctx.ports.checkpoints, Side::Crm, walk, report.planned.len())
                .await?;
        }
        if stopped || walk.finished {
            break;
        }
        if !moved {
            report.opportunities.error = Some(no_progress("The CRM", walk));
            break;
        }
    }
    report.opportunities.finished = walk.finished;
    Ok(())
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
    let link = ports.links.get_by_crm(&record).await?.filter(|link| {
        opportunity
            .opportunity
            .referral_id
            .is_none_or(|id| id == link.referral_id)
    });
    if sync.is_connector_write(listed.modified_by.as_deref())
        && connector_write_in_sync(listed, link.as_ref())
    {
        report.opportunities.in_sync += 1;
        return Ok(());
    }
    let reason = match &link {
        None => Reason::OpportunityNotLinked,
        // Linked, yet the record does not name its referral: the run that created the referral
        // saved the link and stopped before its write-back (an instance killed, a delivery
        // given up after it). Nothing else would show it: the link says synced, and the
        // record's last save is older than the link (found by the soak).
        Some(link) if opportunity.opportunity.referral_id.is_none() => {
            if closed_and_sent(&record, &opportunity.opportunity, link) {
                report.opportunities.in_sync += 1;
                return Ok(());
            }
            Reason::OpportunityNotWrittenBack
        }
        Some(link) => {
            // The save is one a sync already took: not newer than the newest modification the
            // link saw. (Not the link's own time: a run that read the record before a seller's
            // save can store its link after it, and the save would pass for synced — simulation
            // seed 3682.) Otherwise the record is compared with what was synced.
            let seen = matches!(
                (listed.modified_at, link.last_crm_modified),
                (Some(at), Some(seen)) if at <= seen
            );
            if seen {
                report.opportunities.in_sync += 1;
                return Ok(());
            }
            // Compare the whole record: as listed when the listing carries its account and
            // contact, else read again.
            let fingerprint = if listed.complete {
                opportunity.opportunity.fingerprint()
            } else {
                crm.get_opportunity(&record)
                    .await?
                    .opportunity
                    .fingerprint()
            };
            if link.is_echo_from_crm(&fingerprint) || link.is_unchanged_for_pc(&fingerprint) {
                report.opportunities.in_sync += 1;
                return Ok(());
            }
            Reason::OpportunityChanged
        }
    };
    // The record's version where the listing has one (Dataverse's row version): its
    // modification time is stamped to the second, and two saves in one second would share the
    // key, the second skipped as a duplicate of the first.
    let mut version = match opportunity.version.as_deref() {
        Some(row) if row.chars().any(|c| c.is_ascii_alphanumeric()) => {
            let row: String = row.chars().filter(char::is_ascii_alphanumeric).collect();
            format!("v{row}")
        }
        _ => listed.modified_at.map_or_else(|| stamp(run.now), stamp),
    };
    if let (Reason::OpportunityNotWrittenBack, Some(link)) = (reason, &link) {
        // The record's version may be one an earlier job (its create) already ran under: the
        // link's version tells this job apart, and the next after it, should it fail too.
        version = format!("{version}:link-{}", link.version);
    }
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

/// A linked record that does not carry its referral id is in sync when it is closed and
/// read-only (Dataverse): closed before its first sync, it cannot take the id, and that sync
/// said so once. Only once its close reached the referral, though: a close made while the
/// first sync ran, its own webhook lost, is still to be sent (simulation seed 695).
fn closed_and_sent(
    record: &CrmRecordId,
    opportunity: &crate::opportunity::Opportunity,
    link: &Link,
) -> bool {
    crate::sync::is_read_only(record, opportunity)
        && link.last_stage_to_pc.map(|s| s.coarse()) == opportunity.stage.map(|s| s.coarse())
}

#[cfg(test)]
mod paging_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_row_without_its_referral_id_is_in_sync_once_its_close_was_sent() {
        use crate::opportunity::{Opportunity, OpportunityStage};
        use std::collections::BTreeMap;
        let record =
            CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap();
        let won = Opportunity {
            stage: Some(OpportunityStage::Won),
            ..Opportunity::default()
        };
        let link = |stage| Link {
            referral_id: ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            crm: record.clone(),
            last_referral: None,
            crm_seen: None,
            version: 0,
            last_referral_etag: None,
            last_referral_updated: None,
            last_fingerprint_to_crm: None,
            last_fingerprint_to_pc: None,
            last_stage_to_pc: stage,
            microsoft_invited: false,
            last_crm_modified: None,
            updated_at: Utc::now(),
            synced_fields: BTreeMap::new(),
        };
        assert!(closed_and_sent(
            &record,
            &won,
            &link(Some(OpportunityStage::Won))
        ));
        // Closed while its first sync ran: the close is still to be sent.
        assert!(!closed_and_sent(
            &record,
            &won,
            &link(Some(OpportunityStage::Active))
        ));
        assert!(!closed_and_sent(&record, &won, &link(None)));
        // An open row takes its write-back.
        let open = Opportunity {
            stage: Some(OpportunityStage::Active),
            ..Opportunity::default()
        };
        assert!(!closed_and_sent(
            &record,
            &open,
            &link(Some(OpportunityStage::Active))
        ));
        // Salesforce keeps a closed record writable.
        let salesforce = CrmRecordId::try_from("salesforce:006000000000001AAA").unwrap();
        assert!(!closed_and_sent(
            &salesforce,
            &won,
            &link(Some(OpportunityStage::Won))
        ));
    }

    /// A record the connector wrote last (seed 77 of the simulation): in sync when its shared
    /// fields are the agreed ones, or its listing is partial (Salesforce), or it is on hold (a
    /// held change differs from the base on purpose); otherwise compared like any record.
    #[test]
    fn a_record_the_connector_wrote_last_is_in_sync_only_when_it_holds_the_agreed_values() {
        use crate::ids::CrmKind;
        use crate::opportunity::{CrmOpportunity, Opportunity, RecordRef};
        use crate::ports::ListedOpportunity;
        use crate::sync::field_hashes;
        let agreed = Opportunity {
            notes: Some("agreed".into()),
            stage: Some(OpportunityStage::Active),
            ..Opportunity::default()
        };
        let listed = |opportunity: Opportunity, complete: bool| ListedOpportunity {
            opportunity: CrmOpportunity {
                record: RecordRef {
                    crm: CrmKind::Dataverse,
                    entity: "opportunity".into(),
                    id: None,
                    name: None,
                },
                opportunity,
                rejected: Vec::new(),
                amount: None,
                currency: None,
                taxonomy: Default::default(),
                version: None,
                audit: None,
            },
            modified_at: None,
            modified_by: None,
            complete,
        };
        let link = Link {
            last_referral: None,
            crm_seen: None,
            version: 1,
            referral_id: ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            crm: CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap(),
            last_referral_etag: None,
            last_referral_updated: None,
            last_fingerprint_to_crm: None,
            last_fingerprint_to_pc: None,
            last_stage_to_pc: None,
            microsoft_invited: false,
            last_crm_modified: None,
            updated_at: at("2026-12-06T10:00:00Z"),
            synced_fields: field_hashes(&agreed),
        };
        let saved = Opportunity {
            notes: Some("a seller's save".into()),
            ..agreed.clone()
        };
        let held = Opportunity {
            stage: Some(OpportunityStage::OnHold),
            ..saved.clone()
        };
        assert!(connector_write_in_sync(
            &listed(agreed.clone(), true),
            Some(&link)
        ));
        assert!(!connector_write_in_sync(
            &listed(saved.clone(), true),
            Some(&link)
        ));
        assert!(connector_write_in_sync(
            &listed(saved.clone(), false),
            Some(&link)
        ));
        assert!(connector_write_in_sync(&listed(held, true), Some(&link)));
        assert!(connector_write_in_sync(&listed(saved, true), None));
    }

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
            deadline: None,
        }
    }

    fn position(instant: &str, ids: &[&str]) -> ReconcilePosition {
        ReconcilePosition {
            at: at(instant),
            ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        }
    }

    #[test]
    fn a_pass_starts_at_the_checkpoint_minus_the_overlap_or_the_first_lookback() {
        let settings = ReconcileSettings::default();
        let first = Walk::start(None, &run("2027-01-15T10:00:00Z"), &settings, true);
        assert_eq!(first.since, at("2027-01-14T10:00:00Z"));
        assert_eq!(first.from(), first.since);
        let cursor = ReconcileCursor {
            since: Some(at("2027-01-15T09:00:00Z")),
            after: Some(position("2027-01-15T09:30:00Z", &["a", "b"])),
        };
        let resumed = Walk::start(Some(&cursor), &run("2027-01-15T10:00:00Z"), &settings, true);
        assert_eq!(resumed.since, at("2027-01-15T08:55:00Z"));
        assert_eq!(resumed.from(), at("2027-01-15T09:30:00Z"));
        assert_eq!(resumed.handled_at_from(), 2);
        assert_eq!(resumed.last_id(), Some("b"));
        let backfill = ReconcileRun {
            since: Some(at("2026-12-01T00:00:00Z")),
            ..run("2027-01-15T10:00:00Z")
        };
        let started = Walk::start(Some(&cursor), &backfill, &settings, true);
        assert_eq!(started.since, at("2026-12-01T00:00:00Z"));
        assert_eq!(started.after, None);
    }

    #[test]
    fn the_position_moves_by_time_then_id_and_skips_what_was_handled() {
        let settings = ReconcileSettings::default();
        let mut walk = Walk::start(None, &run("2027-01-15T10:00:00Z"), &settings, true);
        let t1 = Some(at("2027-01-15T09:00:00Z"));
        let t2 = Some(at("2027-01-15T09:00:01Z"));
        walk.handled(t1, Some("a")).unwrap();
        walk.handled(t1, Some("b")).unwrap();
        assert_eq!(
            walk.after,
            Some(position("2027-01-15T09:00:00Z", &["a", "b"]))
        );
        assert!(walk.seen(t1, Some("a")) && walk.seen(t1, Some("b")));
        assert!(
            !walk.seen(t1, Some("c")),
            "another record at the same instant is new"
        );
        assert!(walk.seen(Some(at("2027-01-15T08:00:00Z")), Some("z")));
        assert!(
            !walk.seen(t2, Some("a")),
            "a record that changed again is read again"
        );
        assert!(!walk.seen(None, Some("a")));
        walk.handled(t2, Some("a")).unwrap();
        assert_eq!(walk.after, Some(position("2027-01-15T09:00:01Z", &["a"])));
        // No time or no id: handled, the position stays.
        walk.handled(None, Some("x")).unwrap();
        walk.handled(t2, None).unwrap();
        assert_eq!(walk.after, Some(position("2027-01-15T09:00:01Z", &["a"])));
        // A CRM keeps only the last id (it filters by id itself).
        let mut crm = Walk::start(None, &run("2027-01-15T10:00:00Z"), &settings, false);
        crm.handled(t1, Some("a")).unwrap();
        crm.handled(t1, Some("b")).unwrap();
        assert_eq!(crm.after, Some(position("2027-01-15T09:00:00Z", &["b"])));
    }

    #[test]
    fn too_many_referrals_at_one_instant_stop_the_side_instead_of_skipping() {
        let settings = ReconcileSettings::default();
        let mut walk = Walk::start(None, &run("2027-01-15T10:00:00Z"), &settings, true);
        let t = Some(at("2027-01-15T09:00:00Z"));
        for n in 0..ReconcileSettings::MAX_TIES {
            walk.handled(t, Some(&n.to_string())).unwrap();
        }
        assert!(walk.handled(t, Some("one more")).is_err());
    }

    #[test]
    fn the_cursor_keeps_the_position_until_the_pass_ends() {
        let previous = ReconcileCursor {
            since: Some(at("2027-01-15T09:00:00Z")),
            after: None,
        };
        let settings = ReconcileSettings::default();
        let mut walk = Walk::start(
            Some(&previous),
            &run("2027-01-15T10:00:00Z"),
            &settings,
            true,
        );
        // Nothing handled yet: unchanged.
        assert_eq!(walk.cursor(), previous);
        walk.handled(Some(at("2027-01-15T09:40:00Z")), Some("a"))
            .unwrap();
        assert_eq!(
            walk.cursor(),
            ReconcileCursor {
                since: Some(at("2027-01-15T09:00:00Z")),
                after: Some(position("2027-01-15T09:40:00Z", &["a"])),
            }
        );
        // The pass ended: `since` is the newest change seen, never earlier than before.
        walk.finished = true;
        assert_eq!(
            walk.cursor(),
            ReconcileCursor {
                since: Some(at("2027-01-15T09:40:00Z")),
                after: None,
            }
        );
        let mut empty = Walk::start(
            Some(&previous),
            &run("2027-01-15T10:00:00Z"),
            &settings,
            true,
        );
        empty.finished = true;
        assert_eq!(empty.cursor(), previous);
        let mut older = Walk::start(
            Some(&previous),
            &run("2027-01-15T10:00:00Z"),
            &settings,
            true,
        );
        older
            .handled(Some(at("2027-01-15T08:58:00Z")), Some("a"))
            .unwrap();
        older.finished = true;
        assert_eq!(older.cursor().since, Some(at("2027-01-15T09:00:00Z")));
    }

    #[test]
    fn an_old_checkpoint_with_a_saved_next_link_reads_without_a_position() {
        let old: ReconcileCursor = serde_json::from_value(serde_json::json!({
            "since": "2027-01-15T09:00:00Z",
            "resume": "https://example.invalid/referrals?$skiptoken=abc",
            "pass_newest": "2027-01-15T09:30:00Z"
        }))
        .unwrap();
        assert_eq!(
            old,
            ReconcileCursor {
                since: Some(at("2027-01-15T09:00:00Z")),
                after: None,
            }
        );
    }
}
