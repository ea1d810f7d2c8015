//! How a run pages through the referrals while they change: a fake Partner Center that
//! filters, orders and pages as the service does, and a writer (the retry worker's write-backs)
//! that moves referrals already read to a later `updatedDateTime` between two pages.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeZone, Utc};
use futures::FutureExt;
use futures::executor::block_on;
use serde_json::json;

use super::*;
use crate::budget::BudgetPolicy;
use crate::ids::{CrmKind, CrmRecordId, ETag};
use crate::in_memory::{
    InMemoryApiBudget, InMemoryCheckpointStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use crate::opportunity::{Account, Contact, CrmOpportunity};
use crate::ports::{OpportunityPage, OpportunityWrite, Service, Upserted};
use crate::referral::{PatchOp, ReferralPage};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .unwrap()
}

fn referral_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn referral(n: usize, updated: DateTime<Utc>) -> Referral {
    serde_json::from_value(json!({
        "id": referral_id(n),
        "engagementId": "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
        "name": format!("Deal {n}"),
        "status": "New",
        "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Shared",
        "direction": "Incoming",
        "eTag": format!("etag-{n}-0"),
        "updatedDateTime": WireDateTime::from(updated).to_string(),
    }))
    .unwrap()
}

/// Partner Center's referral listing: `updatedDateTime ge …` ordered by `updatedDateTime`
/// (ties in no particular order: here the reverse of the id), at most `$top` per page, and a
/// `nextLink` whose `$skiptoken` is an offset into the same query, evaluated anew on every page
/// (as the sandbox's, and as any offset-based continuation behaves while records change).
#[derive(Default)]
struct FakePartnerCenter {
    referrals: Mutex<Vec<Referral>>,
    /// After each listing, move the first referral of the page not moved before to a later
    /// `updatedDateTime` (a write-back of the sync reconciliation queued for it).
    write_back_read: bool,
    /// The listing call (1-based) that never answers: the run is killed there.
    hang_on_call: Option<usize>,
    calls: AtomicUsize,
    written_back: Mutex<HashSet<String>>,
    clock: AtomicUsize,
}

impl FakePartnerCenter {
    fn with(count: usize) -> Self {
        Self {
            referrals: Mutex::new((0..count).map(|n| referral(n, at(n as i64))).collect()),
            ..Self::default()
        }
    }

    fn page(&self, query: &ReferralQuery) -> ReferralPage {
        let (since, top, skip) = match query.next_link.as_deref() {
            Some(link) => {
                let mut parts = link.split('|');
                let skip: usize = parts.next().unwrap().parse().unwrap();
                let top: usize = parts.next().unwrap().parse().unwrap();
                let since = parts
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
                (since, top, skip)
            }
            None => (
                query.updated_since,
                query.top.map_or(100, |top| top as usize),
                0,
            ),
        };
        let mut matching: Vec<Referral> = lock(&self.referrals)
            .iter()
            .filter(|r| {
                let updated = r.updated_date_time.as_ref().and_then(WireDateTime::instant);
                since.is_none_or(|since| updated.is_some_and(|u| u >= since))
            })
            .cloned()
            .collect();
        matching.sort_by(|a, b| {
            let key = |r: &Referral| r.updated_date_time.as_ref().and_then(WireDateTime::instant);
            key(a).cmp(&key(b)).then_with(|| b.id.cmp(&a.id))
        });
        let value: Vec<Referral> = matching.iter().skip(skip).take(top).cloned().collect();
        let next_link = (skip + top < matching.len()).then(|| {
            format!(
                "{}|{top}|{}",
                skip + top,
                since.map(|s| s.to_rfc3339()).unwrap_or_default()
            )
        });
        ReferralPage {
            value,
            next_link,
            ..ReferralPage::default()
        }
    }

    /// The retry worker's write-back of a referral read on `page`: a later `updatedDateTime`.
    fn write_back(&self, page: &ReferralPage) {
        let mut written = lock(&self.written_back);
        let Some(id) = page
            .value
            .iter()
            .filter_map(|r| r.id.clone())
            .find(|id| !written.contains(id))
        else {
            return;
        };
        written.insert(id.clone());
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) as i64;
        let mut referrals = lock(&self.referrals);
        if let Some(r) = referrals.iter_mut().find(|r| r.id.as_deref() == Some(&id)) {
            r.updated_date_time = Some(WireDateTime::from(at(5_000 + tick)));
            r.e_tag = Some(format!("etag-{id}-{tick}"));
        }
    }
}

impl PartnerCenter for FakePartnerCenter {
    fn get_referral(
        &self,
        id: &ReferralId,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        std::future::ready(Err(PortError::NotFound {
            service: Service::PartnerCenter,
            what: format!("referral {id}"),
        }))
    }

    fn list_referrals(
        &self,
        query: &ReferralQuery,
    ) -> impl Future<Output = Result<ReferralPage, PortError>> + Send {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let hang = self.hang_on_call == Some(call);
        let page = self.page(query);
        if self.write_back_read && !hang {
            self.write_back(&page);
        }
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(page)
        }
    }

    fn create_referral(
        &self,
        _referral: &Referral,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn patch_referral(
        &self,
        _id: &ReferralId,
        _if_match: Option<&ETag>,
        _ops: &[PatchOp],
    ) -> impl Future<Output = Result<crate::ports::Patched, PortError>> + Send {
        std::future::ready(Err(unused()))
    }
}

fn unused() -> PortError {
    PortError::Permanent {
        service: Service::Other("test".into()),
        message: "not used by reconciliation".into(),
    }
}

/// A CRM with no opportunities to list (these tests are about the referrals).
struct NoCrm;

impl CrmStore for NoCrm {
    fn kind(&self) -> CrmKind {
        CrmKind::Dataverse
    }

    fn find_opportunity_by_referral(
        &self,
        _referral: &ReferralId,
    ) -> impl Future<Output = Result<Option<CrmOpportunity>, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn get_opportunity(
        &self,
        _id: &CrmRecordId,
    ) -> impl Future<Output = Result<CrmOpportunity, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn upsert_opportunity(
        &self,
        _write: &OpportunityWrite<'_>,
    ) -> impl Future<Output = Result<Upserted, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn find_account(
        &self,
        _name: &str,
        _postal_code: Option<&str>,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn create_account(
        &self,
        _account: &Account,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn find_contact_by_email(
        &self,
        _email: &str,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn create_contact(
        &self,
        _contact: &Contact,
        _account: Option<&CrmRecordId>,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn write_audit(
        &self,
        _opportunity: &CrmRecordId,
        _text: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn find_customer(
        &self,
        _account: Option<(&str, Option<&str>)>,
        _email: Option<&str>,
    ) -> impl Future<Output = Result<crate::ports::FoundCustomer, PortError>> + Send {
        std::future::ready(Err(unused()))
    }

    fn list_opportunities(
        &self,
        _query: &OpportunityQuery,
    ) -> impl Future<Output = Result<OpportunityPage, PortError>> + Send {
        std::future::ready(Ok(OpportunityPage::default()))
    }
}

/// A clock that moves one second each time it is read.
#[derive(Debug)]
struct Ticking(AtomicUsize);

impl Clock for Ticking {
    fn now(&self) -> DateTime<Utc> {
        at(10_000 + self.0.fetch_add(1, Ordering::SeqCst) as i64)
    }
}

/// The checkpoint store, counting saves.
#[derive(Default)]
struct Checkpoints {
    inner: InMemoryCheckpointStore,
    saves: AtomicUsize,
}

impl CheckpointStore for Checkpoints {
    fn load(&self) -> impl Future<Output = Result<Option<Checkpoint>, PortError>> + Send {
        self.inner.load()
    }

    fn save(&self, checkpoint: &Checkpoint) -> impl Future<Output = Result<(), PortError>> + Send {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.inner.save(checkpoint)
    }
}

struct TestPorts;

impl ReconcilePorts for TestPorts {
    type PartnerCenter = FakePartnerCenter;
    type Crm = NoCrm;
    type RetryQueue = InMemoryRetryQueue;
    type Links = InMemoryLinkStore;
    type Checkpoints = Checkpoints;
    type Budget = InMemoryApiBudget;
}

struct World {
    partner_center: FakePartnerCenter,
    queue: InMemoryRetryQueue,
    links: InMemoryLinkStore,
    checkpoints: Checkpoints,
    budget: InMemoryApiBudget,
    policy: BudgetPolicy,
    clock: Ticking,
}

impl World {
    fn new(partner_center: FakePartnerCenter) -> Self {
        Self {
            partner_center,
            queue: InMemoryRetryQueue::new(),
            links: InMemoryLinkStore::new(),
            checkpoints: Checkpoints::default(),
            budget: InMemoryApiBudget::new(),
            policy: BudgetPolicy::default(),
            clock: Ticking(AtomicUsize::new(0)),
        }
    }

    fn deps(&self) -> ReconcileDeps<'_, TestPorts> {
        ReconcileDeps {
            partner_center: &self.partner_center,
            crm: &NoCrm,
            retry_queue: &self.queue,
            links: &self.links,
            checkpoints: &self.checkpoints,
            budget: Budget {
                counter: &self.budget,
                policy: &self.policy,
            },
            clock: &self.clock,
        }
    }

    fn run(&self, settings: &ReconcileSettings) -> ReconcileReport {
        block_on(self.run_future(settings, now_run())).unwrap()
    }

    async fn run_future(
        &self,
        settings: &ReconcileSettings,
        run: ReconcileRun,
    ) -> Result<ReconcileReport, ReconcileError> {
        let sync = SyncSettings::default();
        reconcile(self.deps(), &sync, settings, &run).await
    }

    /// The referrals a job was queued for (by any run).
    fn queued(&self) -> BTreeSet<String> {
        self.queue
            .jobs()
            .iter()
            .filter_map(|(job, _)| {
                job.key
                    .strip_prefix("reconcile:pc:")
                    .and_then(|rest| rest.split(':').next())
                    .map(str::to_owned)
            })
            .collect()
    }
}

fn now_run() -> ReconcileRun {
    ReconcileRun {
        now: at(10_000),
        since: None,
        dry_run: false,
        deadline: None,
    }
}

fn settings(page_size: u32, max_items: usize) -> ReconcileSettings {
    ReconcileSettings {
        page_size,
        max_items,
        ..ReconcileSettings::default()
    }
}

fn all(count: usize) -> BTreeSet<String> {
    (0..count).map(referral_id).collect()
}

/// The end-to-end finding: write-backs during a pass move referrals across page boundaries.
/// Read by position, the referrals behind a moved one shift forward and some are never read;
/// read by `(updatedDateTime, id)` from the last one handled, every referral is read (a moved
/// one again, later: harmless).
#[test]
fn referrals_that_change_during_a_paged_run_are_never_skipped() {
    let world = World::new(FakePartnerCenter {
        write_back_read: true,
        ..FakePartnerCenter::with(40)
    });
    let report = world.run(&settings(10, 1_000));
    assert_eq!(report.referrals.error, None);
    assert!(report.referrals.finished, "{:?}", report.referrals);
    let missing: Vec<String> = all(40).difference(&world.queued()).cloned().collect();
    assert!(missing.is_empty(), "never read: {missing:?}");
}

/// A run killed in the middle of its pass (the Lambda timeout) keeps the pages it finished:
/// the checkpoint is saved after every page, and the next run continues after the last one
/// without skipping any referral and without reading the finished pages again.
#[test]
fn a_run_killed_mid_pass_keeps_its_progress_and_the_next_run_resumes_without_skipping() {
    let world = World::new(FakePartnerCenter {
        hang_on_call: Some(3),
        ..FakePartnerCenter::with(40)
    });
    let settings = settings(10, 1_000);
    // The third listing never answers: the run is dropped there (killed).
    let killed = world.run_future(&settings, now_run()).now_or_never();
    assert!(killed.is_none(), "the run was still waiting for page 3");
    assert!(
        world.checkpoints.saves.load(Ordering::SeqCst) >= 2,
        "the checkpoint is saved after each page"
    );
    let saved = world.checkpoints.inner.checkpoint();
    assert!(saved.is_some(), "the progress of two pages is saved");
    assert_eq!(world.queued().len(), 20, "two pages were queued");

    let report = world.run(&settings);
    assert!(report.referrals.finished, "{:?}", report.referrals);
    let missing: Vec<String> = all(40).difference(&world.queued()).cloned().collect();
    assert!(missing.is_empty(), "never read: {missing:?}");
    assert!(
        report.referrals.examined <= 20,
        "the next run continues after the pages done: examined {}",
        report.referrals.examined
    );
}

/// The item cap holds within a page: a run stops at `max_items` records even when a page
/// holds more, saves where it stopped, and the next run continues from there.
#[test]
fn the_item_cap_is_checked_per_record_not_only_between_pages() {
    let world = World::new(FakePartnerCenter::with(30));
    let settings = settings(20, 5);
    let first = world.run(&settings);
    assert_eq!(first.referrals.examined, 5, "{:?}", first.referrals);
    assert!(!first.referrals.finished);
    assert_eq!(world.queued(), all(5));
    let mut runs = 1;
    while world.queued().len() < 30 {
        let report = world.run(&settings);
        assert!(report.referrals.examined <= 5, "{:?}", report.referrals);
        runs += 1;
        assert!(runs <= 8, "progress stalled: {:?}", world.queued().len());
    }
    assert_eq!(world.queued(), all(30));
}

/// The run's deadline is checked before every record: a run that reaches it stops there,
/// saves where it stands, and the next run continues without skipping.
#[test]
fn a_run_stops_at_its_deadline_within_a_page_and_saves_where_it_stands() {
    let world = World::new(FakePartnerCenter::with(30));
    let settings = settings(100, 1_000);
    let run = ReconcileRun {
        // The clock moves a second per read: the run reads it once per record.
        deadline: Some(at(10_007)),
        ..now_run()
    };
    let first = block_on(world.run_future(&settings, run)).unwrap();
    assert!(first.deadline_reached);
    assert!(!first.referrals.finished);
    assert!(
        (1..30).contains(&first.referrals.examined),
        "{:?}",
        first.referrals
    );
    assert_eq!(world.queued().len(), first.referrals.examined);
    let saved = world.checkpoints.inner.checkpoint().unwrap();
    assert_eq!(
        saved.referrals.after.map(|after| after.ids),
        Some(vec![referral_id(first.referrals.examined - 1)])
    );
    let second = world.run(&settings);
    assert!(second.referrals.finished);
    assert_eq!(second.referrals.examined, 30 - first.referrals.examined);
    assert_eq!(world.queued(), all(30));
}
