//! The scheduler: one seed drives users' edits on both sides, webhook deliveries (late,
//! reordered, duplicated, dropped), retry jobs, reconciliation runs, faults and the
//! interleaving of concurrent syncs. After quiescence the invariants are checked.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Utc};
use cosell_adapters::crm_wire::dataverse::RemoteExecutionContext;
use cosell_domain::OpportunityStage;
use cosell_domain::budget::{Budget, BudgetPolicy};
use cosell_domain::ids::{CrmRecordId, ReferralId};
use cosell_domain::in_memory::{
    InMemoryApiBudget, InMemoryAuditLog, InMemoryCheckpointStore, InMemoryIdempotencyStore,
    InMemoryRetryQueue,
};
use cosell_domain::mapping::{MappingConfig, invites_microsoft};
use cosell_domain::opportunity::LostReason;
use cosell_domain::ports::{AuditEntry, AuditEvent, AuditLog, IdempotencyKey, Ports, RetryJob};
use cosell_domain::reconcile::{
    FixedClock, ReconcileDeps, ReconcileError, ReconcilePorts, ReconcileReport, ReconcileRun,
    ReconcileSettings, reconcile,
};
use cosell_domain::sync::{
    CrmChange, Delivery, Deps, Handled, RetryPolicy, Side, SyncError, SyncSettings,
    dataverse_change_key, handle_crm_change, handle_partner_center_event, run_retry_job,
};
use cosell_domain::webhook::WebhookEvent;
use serde_json::json;

use crate::faults::{FaultRates, Faulty, FaultyPorts, Injector};
use crate::world::{CrmEvent, PcEvent, SimClock, SimCrm, SimLinks, SimPartnerCenter};

/// What one seed runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Scheduler steps before quiescence.
    pub steps: u32,
    /// Fault rates.
    pub faults: FaultRates,
    /// Webhooks dropped (per mille).
    pub drop_webhooks: u32,
    /// Reconciliation runs (periodically and after quiescence).
    pub reconcile: bool,
    /// Users of both sides may edit the same deal at once (the trigger of defect 5). Off: a
    /// Microsoft user edits only referrals Microsoft created, a seller only opportunities
    /// sellers created.
    pub concurrent_edits: bool,
    /// Sellers close their deals as won or lost, often before the first sync.
    pub seller_closes: bool,
    /// Keep the schedule (for a reproduction).
    pub trace: bool,
    /// A fix undone, to show that the simulation finds the defect it fixed (a mutation test).
    pub undone_fix: Option<UndoneFix>,
}

/// A fix the simulation can undo in its own model of a delivery (the production code keeps
/// the fix; the simulation keys the delivery as the code did before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoneFix {
    /// Defect 4: a Dataverse change keyed by its `OperationId` even when that is the nil GUID
    /// (a step registered synchronously), so every later change of the record shares the key.
    NilOperationId,
    /// Defect 1: a webhook delivery does not know that an earlier delivery of the record ran
    /// (the audit log answers no entries of the record), so it does not look for the referral
    /// an earlier attempt may have created and lost the answer of; only retry jobs look.
    EarlierDeliveries,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            steps: 60,
            faults: FaultRates::default(),
            drop_webhooks: 30,
            reconcile: true,
            concurrent_edits: true,
            seller_closes: true,
            trace: false,
            undone_fix: None,
        }
    }
}

impl Config {
    /// Every invariant is expected to hold: the triggers of the known defects are off.
    pub fn without_known_defects() -> Self {
        Self {
            faults: FaultRates {
                lost_create_answers: false,
                ..FaultRates::default()
            },
            concurrent_edits: false,
            ..Self::default()
        }
    }
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// Two referrals (not invitations) carry one opportunity's id (defect 1).
    DuplicateReferral,
    /// Two opportunities carry one referral id.
    DuplicateOpportunity,
    /// A synced record has no counterpart: a change was lost.
    MissingCounterpart,
    /// The shared fields differ, or a user's latest edit is not on both sides although no
    /// audited conflict chose the other side's value (defect 5; docs/conflicts.md).
    Diverged,
    /// A failure was audited without a fix.
    AuditWithoutFix,
    /// More Partner Center + CRM calls per change than the bound.
    TooManyCalls,
    /// Queues did not drain.
    NoQuiescence,
    /// A seller's close (won or lost) was undone in the CRM, or its referral does not show it.
    CloseNotKept,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// What was found.
    pub detail: String,
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// The schedule (when traced): steps, deliveries, faults, outcomes.
    pub trace: Vec<String>,
    /// Users' changes made.
    pub changes: u64,
    /// Partner Center + CRM calls made.
    pub api_calls: u64,
    /// Faults injected.
    pub faults: u64,
}

/// Partner Center + CRM calls allowed per user change, retries, echoes and reconciliation
/// included (the average over a seed).
pub const MAX_CALLS_PER_CHANGE: u64 = 40;

/// The ports the simulation runs the core against (before faults).
#[derive(Debug)]
pub struct Sim;

impl Ports for Sim {
    type PartnerCenter = SimPartnerCenter;
    type Crm = SimCrm;
    type Idempotency = InMemoryIdempotencyStore;
    type RetryQueue = InMemoryRetryQueue;
    type Audit = InMemoryAuditLog;
    type Links = SimLinks;
}

/// The faulty ports of one run.
type Faulted<'d> = FaultyPorts<'d, Sim>;

/// What a reconciliation run uses.
#[derive(Debug)]
struct RecPorts<'d>(std::marker::PhantomData<&'d ()>);

impl<'d> ReconcilePorts for RecPorts<'d> {
    type PartnerCenter = Faulty<'d, SimPartnerCenter>;
    type Crm = Faulty<'d, SimCrm>;
    type RetryQueue = Faulty<'d, InMemoryRetryQueue>;
    type Links = Faulty<'d, SimLinks>;
    type Checkpoints = InMemoryCheckpointStore;
    type Budget = InMemoryApiBudget;
}

struct Stores {
    clock: Arc<SimClock>,
    pc: SimPartnerCenter,
    crm: SimCrm,
    idempotency: InMemoryIdempotencyStore,
    queue: InMemoryRetryQueue,
    audit: InMemoryAuditLog,
    links: SimLinks,
    checkpoints: InMemoryCheckpointStore,
    budget: InMemoryApiBudget,
}

struct Wrapped<'d> {
    pc: Faulty<'d, SimPartnerCenter>,
    crm: Faulty<'d, SimCrm>,
    idempotency: Faulty<'d, InMemoryIdempotencyStore>,
    queue: Faulty<'d, InMemoryRetryQueue>,
    audit: Faulty<'d, InMemoryAuditLog>,
    links: Faulty<'d, SimLinks>,
}

/// A delivery waiting for its time.
#[derive(Debug, Clone)]
enum Delivering {
    Pc {
        event: PcEvent,
        attempt: u32,
    },
    Crm {
        event: Box<CrmEvent>,
        read: bool,
        attempt: u32,
    },
    Retry {
        job: RetryJob,
        receives: u32,
    },
    Reconcile,
}

impl Delivering {
    fn label(&self) -> String {
        match self {
            Self::Pc { event, attempt } => {
                format!(
                    "pc {} {} #{attempt}",
                    event.name,
                    short(&event.referral.to_string())
                )
            }
            Self::Crm {
                event,
                read,
                attempt,
            } => format!(
                "crm op{} {} by {} {}#{attempt}",
                event.operation,
                short(&event.record.to_string()),
                if event.writer == crate::world::SELLER {
                    "seller"
                } else {
                    "connector"
                },
                if *read { "(read) " } else { "" }
            ),
            Self::Retry { job, receives } => format!(
                "retry {:?} {} attempt {} receive {receives}",
                job.source,
                short(&job.key),
                job.attempt
            ),
            Self::Reconcile => "reconcile".into(),
        }
    }
}

fn short(text: &str) -> String {
    let tail: String = text.chars().rev().take(6).collect();
    tail.chars().rev().collect()
}

enum Done {
    Sync(Result<Handled, SyncError>),
    Reconcile(Result<ReconcileReport, ReconcileError>),
}

struct Task<'a> {
    id: u64,
    what: Delivering,
    started: DateTime<Utc>,
    future: Pin<Box<dyn Future<Output = Done> + 'a>>,
}

/// A user's edit, to tell which value should win.
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    at: i64,
    referral: Option<ReferralId>,
    record: Option<CrmRecordId>,
    notes: String,
    deal_value: u64,
}

/// The Lambda timeout the deliveries run under.
const DEADLINE_MS: i64 = 30_000;
/// Receives of a retry job before it is dead-lettered.
const MAX_RECEIVES: u32 = 10;

struct Run<'a> {
    cfg: &'a Config,
    rng: fastrand::Rng,
    stores: &'a Stores,
    faults: &'a Injector,
    hook_deps: Deps<'a, Faulted<'a>>,
    worker_deps: Deps<'a, Faulted<'a>>,
    rec_deps: (&'a Wrapped<'a>, &'a BudgetPolicy, &'a SyncSettings),
    pending: Vec<(i64, u64, Delivering)>,
    tasks: Vec<Task<'a>>,
    next_id: u64,
    trace: Vec<String>,
    edits: Vec<Edit>,
    ms_referrals: Vec<ReferralId>,
    seller_records: Vec<CrmRecordId>,
    /// The seller's closes, by record.
    closes: BTreeMap<CrmRecordId, OpportunityStage>,
    changes: u64,
    dead_letters: u64,
}

impl<'a> Run<'a> {
    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let at = self.stores.clock.millis();
            self.trace
                .push(format!("{:>9.3}s {}", at as f64 / 1000.0, line()));
        }
    }

    fn now_ms(&self) -> i64 {
        self.stores.clock.millis()
    }

    fn schedule(&mut self, due: i64, what: Delivering) {
        self.next_id += 1;
        self.pending.push((due, self.next_id, what));
    }

    /// The webhooks the services raised, late, reordered, duplicated or dropped.
    fn collect_events(&mut self, lossy: bool) {
        let now = self.now_ms();
        for event in self.stores.pc.take_events() {
            if lossy && self.rng.u32(0..1000) < self.cfg.drop_webhooks {
                self.log(|| {
                    format!(
                        "drop pc {} {}",
                        event.name,
                        short(&event.referral.to_string())
                    )
                });
                continue;
            }
            let copies = if lossy && self.rng.u32(0..10) == 0 {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let due = now + self.rng.i64(0..8_000);
                self.schedule(
                    due,
                    Delivering::Pc {
                        event: event.clone(),
                        attempt: 0,
                    },
                );
            }
        }
        for event in self.stores.crm.take_events() {
            if lossy && self.rng.u32(0..1000) < self.cfg.drop_webhooks {
                self.log(|| format!("drop crm op{}", event.operation));
                continue;
            }
            let copies = if lossy && self.rng.u32(0..10) == 0 {
                2
            } else {
                1
            };
            let read = self.rng.bool();
            for _ in 0..copies {
                let due = now + self.rng.i64(0..8_000);
                self.schedule(
                    due,
                    Delivering::Crm {
                        event: Box::new(event.clone()),
                        read,
                        attempt: 0,
                    },
                );
            }
        }
        for (job, delay) in self.stores.queue.take_all() {
            let due = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
            self.schedule(due, Delivering::Retry { job, receives: 1 });
        }
    }

    fn delivery(&self) -> Delivery {
        let now = self.stores.clock.now();
        Delivery {
            correlation_id: Some(format!("d{}", self.next_id)),
            deadline: now + chrono::Duration::milliseconds(DEADLINE_MS),
            now,
        }
    }

    fn start(&mut self, what: Delivering) {
        self.next_id += 1;
        let id = self.next_id;
        let meta = self.delivery();
        let started = meta.now;
        self.log(|| format!("start task {id}: {}", what.label()));
        let future: Pin<Box<dyn Future<Output = Done> + 'a>> = match &what {
            Delivering::Pc { event, .. } => {
                let deps = self.hook_deps;
                let event = webhook(event);
                Box::pin(async move {
                    Done::Sync(handle_partner_center_event(&deps, &event, &meta).await)
                })
            }
            Delivering::Crm { event, read, .. } => {
                let deps = self.hook_deps;
                let change = crm_change(event, *read, self.cfg.undone_fix);
                Box::pin(async move { Done::Sync(handle_crm_change(&deps, &change, &meta).await) })
            }
            Delivering::Retry { job, .. } => {
                let deps = self.worker_deps;
                let job = job.clone();
                Box::pin(async move { Done::Sync(run_retry_job(&deps, &job, &meta).await) })
            }
            Delivering::Reconcile => {
                let (wrapped, policy, sync) = self.rec_deps;
                let stores = self.stores;
                let run = ReconcileRun {
                    now: meta.now,
                    since: None,
                    dry_run: false,
                    deadline: None,
                };
                Box::pin(async move {
                    let clock = FixedClock(run.now);
                    let deps: ReconcileDeps<'_, RecPorts<'_>> = ReconcileDeps {
                        partner_center: &wrapped.pc,
                        crm: &wrapped.crm,
                        retry_queue: &wrapped.queue,
                        links: &wrapped.links,
                        checkpoints: &stores.checkpoints,
                        budget: Budget {
                            counter: &stores.budget,
                            policy,
                        },
                        clock: &clock,
                    };
                    let settings = ReconcileSettings::default();
                    Done::Reconcile(reconcile(deps, sync, &settings, &run).await)
                })
            }
        };
        self.tasks.push(Task {
            id,
            what,
            started,
            future,
        });
    }

    /// Poll one task (chosen by the seed) once.
    fn poll_one(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let index = self.rng.usize(0..self.tasks.len());
        let id = self.tasks[index].id;
        let deadline = self.tasks[index].started + chrono::Duration::milliseconds(DEADLINE_MS);
        if self.stores.clock.now() > deadline {
            // Lambda stops the invocation at its deadline.
            let task = self.tasks.swap_remove(index);
            self.log(|| format!("task {id} timed out; its delivery comes again"));
            self.redeliver(task.what, task.started, None, true);
            return;
        }
        self.faults.set_current(id);
        let mut cx = Context::from_waker(Waker::noop());
        let polled = self.tasks[index].future.as_mut().poll(&mut cx);
        for fault in self.faults.take_log() {
            self.log(|| fault);
        }
        if self.faults.take_crash(id) {
            let task = self.tasks.swap_remove(index);
            self.log(|| format!("task {id} crashed; its delivery comes again after the deadline"));
            self.redeliver(task.what, task.started, None, true);
            return;
        }
        if let Poll::Ready(done) = polled {
            let task = self.tasks.swap_remove(index);
            self.finished(task, done);
        }
    }

    fn finished(&mut self, task: Task<'a>, done: Done) {
        let id = task.id;
        match done {
            Done::Reconcile(result) => {
                let text = match &result {
                    Ok(report) => format!("reconcile queued {}", report.planned.len()),
                    Err(error) => format!("reconcile failed: {error}"),
                };
                self.log(|| format!("task {id} done: {text}"));
            }
            Done::Sync(result) => {
                let (again, retry_after) = match &result {
                    Ok(handled) => {
                        let outcome = &handled.outcome;
                        self.log(|| {
                            format!(
                                "task {id} done: {}{}",
                                outcome.log_name(),
                                outcome
                                    .log_detail()
                                    .map(|d| format!(" ({d})"))
                                    .unwrap_or_default()
                            )
                        });
                        let again = match task.what {
                            Delivering::Retry { .. } => outcome.redeliver_later(),
                            _ => outcome.http_status() != 200,
                        };
                        let retry_after = match outcome {
                            cosell_domain::sync::Outcome::RetryLater { retry_after, .. } => {
                                *retry_after
                            }
                            _ => None,
                        };
                        (again, retry_after)
                    }
                    Err(error) => {
                        self.log(|| format!("task {id} done: {}", error.log_name()));
                        (true, None)
                    }
                };
                if again {
                    self.redeliver(task.what, task.started, retry_after, false);
                }
            }
        }
    }

    /// The sender delivers again: a webhook after a backoff (a crashed one after its deadline),
    /// a retry job after its visibility timeout, until it is dead-lettered.
    fn redeliver(
        &mut self,
        what: Delivering,
        started: DateTime<Utc>,
        retry_after: Option<std::time::Duration>,
        crashed: bool,
    ) {
        let start_ms = (started - SimClock::epoch()).num_milliseconds();
        let after_deadline = start_ms + DEADLINE_MS + 1_000 + self.rng.i64(0..60_000);
        let now = self.now_ms();
        let base = if crashed {
            after_deadline
        } else {
            now + 30_000
        };
        match what {
            Delivering::Pc { event, attempt } => {
                let due = base + i64::from(attempt) * 30_000;
                self.schedule(
                    due,
                    Delivering::Pc {
                        event,
                        attempt: attempt + 1,
                    },
                );
            }
            Delivering::Crm {
                event,
                read,
                attempt,
            } => {
                let due = base + i64::from(attempt) * 30_000;
                self.schedule(
                    due,
                    Delivering::Crm {
                        event,
                        read,
                        attempt: attempt + 1,
                    },
                );
            }
            Delivering::Retry { job, receives } => {
                if receives >= MAX_RECEIVES {
                    self.dead_letter(&job, receives);
                    return;
                }
                let wait = retry_after
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
                    .unwrap_or(0)
                    .max(30_000 * i64::from(receives));
                self.schedule(
                    base.max(now + wait),
                    Delivering::Retry {
                        job,
                        receives: receives + 1,
                    },
                );
            }
            Delivering::Reconcile => {}
        }
    }

    /// What the retry worker does on the last receive: audit the job as dead-lettered, with
    /// the fix.
    fn dead_letter(&mut self, job: &RetryJob, receives: u32) {
        self.dead_letters += 1;
        self.log(|| {
            format!(
                "dead-lettered {} after {receives} receives",
                short(&job.key)
            )
        });
        let entry = AuditEntry {
            at: self.stores.clock.now(),
            direction: None,
            referral_id: None,
            crm: None,
            correlation_id: None,
            event: AuditEvent::Failed {
                reason: format!(
                    "retry job {} failed {receives} times and was dead-lettered.",
                    job.key
                ),
                fix: "Redrive the dead-letter queue once the service is back (cosell redrive)."
                    .into(),
            },
        };
        let appended = crate::exec::block_on(self.stores.audit.append(&entry));
        if appended.is_err() {
            self.log(|| "dead letter not audited".into());
        }
    }

    fn start_due(&mut self) {
        let now = self.now_ms();
        self.pending.sort_by_key(|(due, seq, _)| (*due, *seq));
        let due: Vec<Delivering> = {
            let split = self.pending.partition_point(|(d, _, _)| *d <= now);
            self.pending
                .drain(..split)
                .map(|(_, _, what)| what)
                .collect()
        };
        for what in due {
            self.start(what);
        }
    }

    /// One user action, as the seed chooses.
    fn act(&mut self, step: u32) {
        let stores = self.stores;
        let n = u64::from(step);
        match self.rng.u32(0..100) {
            0..12 => {
                let id = stores.pc.microsoft_creates(n);
                self.ms_referrals.push(id);
                self.note_edit(Some(id), None, format!("ms-initial-{n}"), 1000 + n);
                self.log(|| format!("microsoft creates referral {}", short(&id.to_string())));
            }
            12..24 => {
                let id = stores.crm.seller_creates(n);
                self.seller_records.push(id.clone());
                self.note_edit(
                    None,
                    Some(id.clone()),
                    format!("seller-initial-{n}"),
                    2000 + n,
                );
                self.log(|| format!("seller creates opportunity {}", short(&id.to_string())));
            }
            24..44 => {
                let referrals: Vec<ReferralId> = if self.cfg.concurrent_edits {
                    stores
                        .pc
                        .referrals()
                        .into_iter()
                        .filter(|(_, r)| !invites_microsoft(r))
                        .map(|(id, _)| id)
                        .collect()
                } else {
                    self.ms_referrals.clone()
                };
                if !referrals.is_empty() {
                    let id = referrals[self.rng.usize(0..referrals.len())];
                    let notes = format!("ms-{n}");
                    if stores.pc.microsoft_edits(id, &notes, 5000 + n) {
                        self.note_edit(Some(id), None, notes, 5000 + n);
                        self.log(|| {
                            format!(
                                "microsoft edits referral {} (ms-{n})",
                                short(&id.to_string())
                            )
                        });
                    }
                }
            }
            44..64 => {
                let records: Vec<CrmRecordId> = if self.cfg.concurrent_edits {
                    stores.crm.opportunities().into_keys().collect()
                } else {
                    self.seller_records.clone()
                };
                if !records.is_empty() {
                    let id = records[self.rng.usize(0..records.len())].clone();
                    let notes = format!("seller-{n}");
                    if stores.crm.seller_edits(&id, &notes, 7000 + n) {
                        self.note_edit(None, Some(id.clone()), notes, 7000 + n);
                        self.log(|| {
                            format!(
                                "seller edits opportunity {} (seller-{n})",
                                short(&id.to_string())
                            )
                        });
                    }
                }
            }
            64..72 if self.cfg.concurrent_edits => {
                // Both sides of one linked deal at once.
                let linked: Vec<(CrmRecordId, ReferralId)> = stores
                    .crm
                    .opportunities()
                    .into_iter()
                    .filter_map(|(id, s)| s.opportunity.referral_id.map(|r| (id, r)))
                    .collect();
                if !linked.is_empty() {
                    let (record, referral) = linked[self.rng.usize(0..linked.len())].clone();
                    let ms = format!("ms-{n}");
                    let seller = format!("seller-{n}");
                    if stores.crm.seller_edits(&record, &seller, 7000 + n) {
                        self.note_edit(None, Some(record.clone()), seller, 7000 + n);
                    }
                    stores.clock.advance(self.rng.i64(1..3_000));
                    if stores.pc.microsoft_edits(referral, &ms, 5000 + n) {
                        self.note_edit(Some(referral), None, ms, 5000 + n);
                    }
                    self.log(|| {
                        format!(
                            "seller edits {} and microsoft edits {} at once (step {n})",
                            short(&record.to_string()),
                            short(&referral.to_string())
                        )
                    });
                }
            }
            76..80 if self.cfg.seller_closes && !self.seller_records.is_empty() => {
                // Often soon after the create: before its first sync, or with its close
                // handled first.
                let id = self.seller_records[self.rng.usize(0..self.seller_records.len())].clone();
                let stage = if self.rng.bool() {
                    OpportunityStage::Won
                } else {
                    OpportunityStage::Lost(LostReason::Lost)
                };
                if stores.crm.seller_closes(&id, stage) {
                    self.changes += 1;
                    self.closes.insert(id.clone(), stage);
                    self.log(|| format!("seller closes {} as {stage:?}", short(&id.to_string())));
                }
            }
            72..76 if self.cfg.reconcile => {
                self.log(|| "reconcile run".into());
                self.start(Delivering::Reconcile);
            }
            _ => {}
        }
    }

    fn note_edit(
        &mut self,
        referral: Option<ReferralId>,
        record: Option<CrmRecordId>,
        notes: String,
        deal_value: u64,
    ) {
        self.changes += 1;
        self.edits.push(Edit {
            at: self.now_ms(),
            referral,
            record,
            notes,
            deal_value,
        });
    }

    /// Run every task to its end (or crash), polling in a seed-chosen order.
    fn drain_tasks(&mut self) {
        let mut polls: u32 = 0;
        while !self.tasks.is_empty() && polls < 100_000 {
            self.poll_one();
            polls += 1;
            if polls.is_multiple_of(4) {
                self.stores.clock.advance(self.rng.i64(0..300));
            }
        }
    }

    /// Faults off, every queue drained, reconciliation until nothing changes.
    fn quiesce(&mut self) -> bool {
        self.faults.set_enabled(false);
        self.log(|| "quiescence: faults off".into());
        let mut quiet_reconciles = 0;
        for _ in 0..400 {
            self.collect_events(false);
            self.drain_tasks();
            self.collect_events(false);
            if !self.pending.is_empty() {
                let next = self.pending.iter().map(|(d, _, _)| *d).min().unwrap_or(0);
                self.stores.clock.advance_to(next);
                self.start_due();
                continue;
            }
            if !self.cfg.reconcile || quiet_reconciles >= 2 {
                return true;
            }
            // Quiet: a reconciliation run, and everything it queued, changed nothing on either
            // side (a job it queues for a change already handled, say one whose failure the
            // Audit column already reports, ends as a duplicate without a call).
            let before = self.fingerprint();
            self.stores.clock.advance(60_000);
            self.start(Delivering::Reconcile);
            for _ in 0..100 {
                self.drain_tasks();
                self.collect_events(false);
                let Some(next) = self.pending.iter().map(|(d, _, _)| *d).min() else {
                    break;
                };
                self.stores.clock.advance_to(next);
                self.start_due();
            }
            if self.pending.is_empty() && self.fingerprint() == before {
                quiet_reconciles += 1;
            } else {
                quiet_reconciles = 0;
            }
        }
        false
    }

    /// What the two sides hold (to tell when reconciliation stops changing anything).
    fn fingerprint(&self) -> String {
        let referrals = self.stores.pc.referrals();
        let opportunities = self.stores.crm.opportunities();
        format!(
            "{:?}|{:?}",
            referrals
                .values()
                .map(|r| r.e_tag.clone())
                .collect::<Vec<_>>(),
            opportunities
                .values()
                .map(|o| o.version)
                .collect::<Vec<_>>()
        )
    }
}

fn webhook(event: &PcEvent) -> WebhookEvent {
    let value = json!({
        "EventName": event.name,
        "ResourceUri": format!(
            "https://api.partnercenter.microsoft.com/engagements/v1/referrals/{}",
            event.referral
        ),
        "ResourceName": "referral",
        "AuditUri": null,
        "ResourceChangeUtcDate": event.changed.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    });
    serde_json::from_value(value).unwrap_or_else(|error| panic!("a valid webhook event: {error}"))
}

/// The delivery of a CRM save, keyed as crm-events keys it: the webhook body goes through
/// `RemoteExecutionContext::change_id`. Every fourth save comes from a step registered
/// synchronously, whose `OperationId` Dataverse sends as the nil GUID (the trigger of defect 4:
/// keyed by it, every later change of the record would be skipped as a duplicate); its post
/// image carries the row version.
fn crm_change(event: &CrmEvent, read: bool, undone: Option<UndoneFix>) -> CrmChange {
    let synchronous = event.operation.is_multiple_of(4);
    let operation = if synchronous {
        uuid::Uuid::nil()
    } else {
        uuid::Uuid::from_u128(
            0x0b00_0000_0000_4000_8000_0000_0000_0000 + u128::from(event.operation),
        )
    };
    let row = event.record.native();
    let body = json!({
        "MessageName": "Update",
        "PrimaryEntityName": "opportunity",
        "PrimaryEntityId": row,
        "OperationId": operation.to_string(),
        "Mode": if synchronous { 0 } else { 1 },
        "InputParameters": [{"key": "Target", "value": {"LogicalName": "opportunity", "Id": row, "Attributes": []}}],
        "PostEntityImages": [{"key": "postimage", "value": {
            "LogicalName": "opportunity",
            "Id": row,
            "Attributes": [{"key": "versionnumber", "value": event.version}],
        }}],
    })
    .to_string();
    let context = RemoteExecutionContext::parse(&body)
        .unwrap_or_else(|error| panic!("a valid webhook body: {error}"));
    let key = match undone {
        // Before the fix: the key was the `OperationId` and the record, whatever the id.
        Some(UndoneFix::NilOperationId) => {
            IdempotencyKey::new("dv", &format!("{operation}:{}", event.record.native()))
        }
        None | Some(UndoneFix::EarlierDeliveries) => {
            dataverse_change_key(&context.change_id(body.as_bytes()), &event.record)
        }
    }
    .unwrap_or_else(|error| panic!("a valid change key: {error}"));
    CrmChange {
        key,
        record: event.record.clone(),
        writer: Some(event.writer.clone()),
        // As crm-events passes it: the image only when it turns sync off; otherwise the core
        // reads the record as it is now (an image may be older than a change synced since).
        opportunity: (!read && !event.snapshot.opportunity.sync).then(|| event.snapshot.clone()),
        modified_at: Some(event.modified_at),
        // Dataverse's writer is the operation's own.
        sent_image: None,
    }
}

/// Run one seed.
pub fn run_seed(seed: u64, cfg: &Config) -> Report {
    let clock = Arc::new(SimClock::default());
    let stores = Stores {
        pc: SimPartnerCenter::new(clock.clone()),
        crm: SimCrm::new(clock.clone()),
        clock,
        idempotency: InMemoryIdempotencyStore::default(),
        queue: InMemoryRetryQueue::new(),
        audit: InMemoryAuditLog::new(),
        links: SimLinks::default(),
        checkpoints: InMemoryCheckpointStore::new(),
        budget: InMemoryApiBudget::new(),
    };
    let faults = Injector::new(seed, cfg.faults);
    faults.set_hide_crm_history(cfg.undone_fix == Some(UndoneFix::EarlierDeliveries));
    let wrapped = Wrapped {
        pc: Faulty::new(&stores.pc, &faults),
        crm: Faulty::new(&stores.crm, &faults),
        idempotency: Faulty::new(&stores.idempotency, &faults),
        queue: Faulty::new(&stores.queue, &faults),
        audit: Faulty::new(&stores.audit, &faults),
        links: Faulty::new(&stores.links, &faults),
    };
    let mapping = MappingConfig::default();
    let hook_settings = SyncSettings {
        partner_organization_id: Some(crate::world::PARTNER_ORG.into()),
        crm_connector_user_id: Some(crate::world::CONNECTOR_USER.into()),
        ..SyncSettings::default()
    };
    let worker_settings = SyncSettings {
        retry_policy: RetryPolicy::Redeliver,
        ..hook_settings.clone()
    };
    let policy = BudgetPolicy::default();
    let deps = |settings| Deps {
        partner_center: &wrapped.pc,
        crm: &wrapped.crm,
        idempotency: &wrapped.idempotency,
        retry_queue: &wrapped.queue,
        audit: &wrapped.audit,
        links: &wrapped.links,
        mapping: &mapping,
        settings,
    };
    let mut run = Run {
        cfg,
        rng: fastrand::Rng::with_seed(seed),
        stores: &stores,
        faults: &faults,
        hook_deps: deps(&hook_settings),
        worker_deps: deps(&worker_settings),
        rec_deps: (&wrapped, &policy, &hook_settings),
        pending: Vec::new(),
        tasks: Vec::new(),
        next_id: 0,
        trace: Vec::new(),
        edits: Vec::new(),
        ms_referrals: Vec::new(),
        seller_records: Vec::new(),
        closes: BTreeMap::new(),
        changes: 0,
        dead_letters: 0,
    };
    run.log(|| format!("seed {seed}: {cfg:?}"));
    for step in 0..cfg.steps {
        run.act(step);
        run.collect_events(true);
        run.start_due();
        for _ in 0..run.rng.usize(1..8) {
            run.poll_one();
        }
        stores.clock.advance(run.rng.i64(0..3_000));
    }
    let quiet = run.quiesce();
    let mut violations = crate::check::check(
        &stores.pc,
        &stores.crm,
        &stores.audit,
        &run.edits,
        &run.closes,
    );
    if !quiet {
        violations.push(Violation {
            invariant: Invariant::NoQuiescence,
            detail: "queues still busy after 400 rounds".into(),
        });
    }
    let api_calls = stores.pc.calls() + stores.crm.calls();
    if api_calls > MAX_CALLS_PER_CHANGE * run.changes.max(1) {
        violations.push(Violation {
            invariant: Invariant::TooManyCalls,
            detail: format!(
                "{api_calls} Partner Center + CRM calls for {} changes (bound {MAX_CALLS_PER_CHANGE} per change)",
                run.changes
            ),
        });
    }
    let _ = &run.dead_letters;
    Report {
        seed,
        violations,
        trace: std::mem::take(&mut run.trace),
        changes: run.changes,
        api_calls,
        faults: faults.injected(),
    }
}

/// The first seed in `seeds` breaking `invariant` (with its report), if any.
pub fn first_failing(
    seeds: impl IntoIterator<Item = u64>,
    cfg: &Config,
    invariant: Option<Invariant>,
) -> Option<Report> {
    seeds
        .into_iter()
        .map(|seed| run_seed(seed, cfg))
        .find(|report| {
            report
                .violations
                .iter()
                .any(|v| invariant.is_none_or(|i| v.invariant == i))
        })
}

/// The latest user edit of either side of a deal.
pub(crate) fn latest_edit<'e>(
    edits: &'e [Edit],
    referral: &ReferralId,
    record: &CrmRecordId,
) -> Option<&'e Edit> {
    edits
        .iter()
        .filter(|e| e.referral.as_ref() == Some(referral) || e.record.as_ref() == Some(record))
        .max_by_key(|e| e.at)
}

/// The notes of an edit.
pub(crate) fn edit_notes(edit: &Edit) -> &str {
    &edit.notes
}

/// The deal value of an edit.
pub(crate) fn edit_deal_value(edit: &Edit) -> u64 {
    edit.deal_value
}

/// The side an edit was made on.
pub(crate) fn edit_side(edit: &Edit) -> Side {
    if edit.referral.is_some() {
        Side::PartnerCenter
    } else {
        Side::Crm
    }
}

pub(crate) type EditLog = [Edit];
