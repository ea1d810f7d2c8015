//! The fault-injecting decorator: [`FaultyPorts`] wraps another [`Ports`] and, as the seed
//! decides, answers a port call with a 5xx / 429 ([`PortError::Transient`]) or a 412
//! ([`PortError::PreconditionFailed`]), applies a write and then loses its answer (a timeout
//! after the write took effect), or crashes the running sync before or after the call (its
//! future never resumes; the scheduler drops it).

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cosell_domain::ids::{CrmKind, CrmRecordId, ETag, ReferralId};
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity};
use cosell_domain::ports::{
    AcquireOutcome, ApiRequest, AuditEntry, AuditLog, Claim, CombinedOperation, Commit, CrmStore,
    FoundCustomer, IdempotencyKey, IdempotencyStore, Link, LinkStore, OpportunityPage,
    OpportunityQuery, OpportunityWrite, PartnerCenter, Patched, PortError, Ports, ReferralQuery,
    RetryJob, RetryQueue, Service, Upserted, create_customer, customer_keys, find_customer_plainly,
};
use cosell_domain::referral::{PatchOp, Referral, ReferralPage};
use serde_json::Value;

use crate::world::lock;

/// How often each fault strikes a port call (per mille).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRates {
    /// A 5xx or 429 before the call.
    pub transient: u32,
    /// A 412 before a conditional write (`PATCH` with `If-Match`, a link `put`).
    pub precondition: u32,
    /// A write applied whose answer is lost (a timeout after it took effect).
    pub lost_answer: u32,
    /// The sync crashes before or after the call.
    pub crash: u32,
    /// Whether a `POST /referrals` may lose its answer or crash after it took effect (the
    /// trigger of defect 1).
    pub lost_create_answers: bool,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            transient: 30,
            precondition: 30,
            lost_answer: 40,
            crash: 8,
            lost_create_answers: true,
        }
    }
}

impl FaultRates {
    /// No fault at all (`--no-faults`).
    pub fn none() -> Self {
        Self {
            transient: 0,
            precondition: 0,
            lost_answer: 0,
            crash: 0,
            lost_create_answers: false,
        }
    }
}

/// What the decorator does with one call, decided from the seed.
#[derive(Debug)]
enum Step {
    Go,
    Fail(PortError),
    Crash,
}

/// The seeded source of faults, shared by every decorated port.
#[derive(Debug)]
pub struct Injector {
    rng: Mutex<fastrand::Rng>,
    enabled: AtomicBool,
    rates: FaultRates,
    current_task: AtomicU64,
    crashed: Mutex<BTreeSet<u64>>,
    log: Mutex<Vec<String>>,
    injected: AtomicU64,
    /// Inside a commit: its link and entry writes are parts of one write (on DynamoDB one
    /// `TransactWriteItems`), so they get no faults of their own.
    within_commit: AtomicBool,
    /// The audit log answers no entries of a CRM record ([`crate::UndoneFix::EarlierDeliveries`]).
    hide_crm_history: AtomicBool,
}

impl Injector {
    /// Faults from `seed` at `rates`, enabled.
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        Self {
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15)),
            enabled: AtomicBool::new(true),
            rates,
            current_task: AtomicU64::new(0),
            crashed: Mutex::default(),
            log: Mutex::default(),
            injected: AtomicU64::new(0),
            within_commit: AtomicBool::new(false),
            hide_crm_history: AtomicBool::new(false),
        }
    }

    /// Turn faults on or off (off for quiescence).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Make the audit log answer no entries of a CRM record (undoes defect 1's fix).
    pub fn set_hide_crm_history(&self, hide: bool) {
        self.hide_crm_history.store(hide, Ordering::Relaxed);
    }

    /// The task the scheduler is about to poll.
    pub fn set_current(&self, task: u64) {
        self.current_task.store(task, Ordering::Relaxed);
    }

    /// Whether `task` crashed (its future must be dropped).
    pub fn take_crash(&self, task: u64) -> bool {
        lock(&self.crashed).remove(&task)
    }

    /// The faults injected so far, in order.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.log))
    }

    /// How many faults were injected.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self, per_mille: u32) -> bool {
        per_mille > 0 && lock(&self.rng).u32(0..1000) < per_mille
    }

    fn note(&self, what: String) {
        self.injected.fetch_add(1, Ordering::Relaxed);
        let task = self.current_task.load(Ordering::Relaxed);
        lock(&self.log).push(format!("task {task}: {what}"));
    }

    fn crash(&self, call: &str, when: &str) -> Step {
        self.note(format!("crash {when} {call}"));
        lock(&self.crashed).insert(self.current_task.load(Ordering::Relaxed));
        Step::Crash
    }

    /// Whether faults are injected now.
    fn active(&self) -> bool {
        self.enabled.load(Ordering::Relaxed) && !self.within_commit.load(Ordering::Relaxed)
    }

    fn before(&self, call: &'static str, service: Service, conditional: bool) -> Step {
        if !self.active() {
            return Step::Go;
        }
        if self.roll(self.rates.crash) {
            return self.crash(call, "before");
        }
        if self.roll(self.rates.transient) {
            let (reason, retry_after) = if lock(&self.rng).bool() {
                ("503 Service Unavailable", None)
            } else {
                ("429 Too Many Requests", Some(Duration::from_secs(5)))
            };
            self.note(format!("{reason} on {call}"));
            return Step::Fail(PortError::Transient {
                service,
                reason: reason.into(),
                retry_after,
            });
        }
        if conditional && self.roll(self.rates.precondition) {
            self.note(format!("412 on {call}"));
            return Step::Fail(PortError::PreconditionFailed { service });
        }
        Step::Go
    }

    /// After a call: `None` when the sync crashes now.
    fn after<T>(
        &self,
        call: &'static str,
        service: Service,
        write: bool,
        result: Result<T, PortError>,
    ) -> Option<Result<T, PortError>> {
        if !self.active() || !write || result.is_err() {
            return Some(result);
        }
        if call == "pc.create_referral" && !self.rates.lost_create_answers {
            return Some(result);
        }
        if self.roll(self.rates.crash) {
            self.crash(call, "after");
            return None;
        }
        if self.roll(self.rates.lost_answer) {
            self.note(format!("timeout after {call} took effect"));
            return Some(Err(PortError::Transient {
                service,
                reason: "timed out after the request was sent".into(),
                retry_after: None,
            }));
        }
        Some(result)
    }
}

/// One decorated port.
#[derive(Debug)]
pub struct Faulty<'d, T> {
    inner: &'d T,
    faults: &'d Injector,
}

impl<'d, T> Faulty<'d, T> {
    /// `inner` with faults from `faults`.
    pub fn new(inner: &'d T, faults: &'d Injector) -> Self {
        Self { inner, faults }
    }
}

/// Run one decorated call: a fault before, the call, a fault after.
macro_rules! faulty {
    ($self:ident, $call:literal, $service:expr, conditional = $cond:expr, write = $write:expr, $body:expr) => {{
        match $self.faults.before($call, $service, $cond) {
            Step::Go => {}
            Step::Fail(error) => return Err(error),
            Step::Crash => return std::future::pending().await,
        }
        let result = $body.await;
        match $self.faults.after($call, $service, $write, result) {
            Some(result) => result,
            None => std::future::pending().await,
        }
    }};
}

impl<P: PartnerCenter> PartnerCenter for Faulty<'_, P> {
    async fn get_referral(&self, id: &ReferralId) -> Result<Referral, PortError> {
        faulty!(
            self,
            "pc.get_referral",
            Service::PartnerCenter,
            conditional = false,
            write = false,
            self.inner.get_referral(id)
        )
    }

    async fn list_referrals(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        faulty!(
            self,
            "pc.list_referrals",
            Service::PartnerCenter,
            conditional = false,
            write = false,
            self.inner.list_referrals(query)
        )
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, PortError> {
        faulty!(
            self,
            "pc.create_referral",
            Service::PartnerCenter,
            conditional = false,
            write = true,
            self.inner.create_referral(referral)
        )
    }

    async fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Patched, PortError> {
        faulty!(
            self,
            "pc.patch_referral",
            Service::PartnerCenter,
            conditional = if_match.is_some(),
            write = true,
            self.inner.patch_referral(id, if_match, ops)
        )
    }
}

impl<C: CrmStore> CrmStore for Faulty<'_, C> {
    fn kind(&self) -> CrmKind {
        self.inner.kind()
    }

    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        faulty!(
            self,
            "crm.find_opportunity_by_referral",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.find_opportunity_by_referral(referral_id)
        )
    }

    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        faulty!(
            self,
            "crm.get_opportunity",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.get_opportunity(id)
        )
    }

    /// One call, or (new records on a CRM that does not combine them) each record's create
    /// and then the upsert, each with its own faults.
    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        let records = write.new_records();
        let plain = records > 0
            && self
                .inner
                .combined_request(CombinedOperation::CreateWithCustomer { records })
                .is_none();
        let (account, contact) = if plain {
            create_customer(self, write).await?
        } else {
            (None, None)
        };
        let linked = write.linked(account.as_ref(), contact.as_ref());
        let write = if plain { &linked } else { write };
        faulty!(
            self,
            "crm.upsert_opportunity",
            Service::Dataverse,
            conditional = false,
            write = true,
            self.inner.upsert_opportunity(write)
        )
    }

    /// One call when the CRM combines the look-ups, else each look-up with its own faults.
    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        let (account, email) = customer_keys(account, email);
        let lookups = u64::from(account.is_some()) + u64::from(email.is_some());
        if self
            .inner
            .combined_request(CombinedOperation::FindCustomer { lookups })
            .is_none()
        {
            return find_customer_plainly(self, account, email).await;
        }
        faulty!(
            self,
            "crm.find_customer",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.find_customer(account, email)
        )
    }

    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        self.inner.combined_request(operation)
    }

    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        faulty!(
            self,
            "crm.find_account",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.find_account(name, postal_code)
        )
    }

    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        faulty!(
            self,
            "crm.create_account",
            Service::Dataverse,
            conditional = false,
            write = true,
            self.inner.create_account(account)
        )
    }

    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        faulty!(
            self,
            "crm.find_contact_by_email",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.find_contact_by_email(email)
        )
    }

    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        faulty!(
            self,
            "crm.create_contact",
            Service::Dataverse,
            conditional = false,
            write = true,
            self.inner.create_contact(contact, account)
        )
    }

    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        faulty!(
            self,
            "crm.write_audit",
            Service::Dataverse,
            conditional = false,
            write = true,
            self.inner.write_audit(opportunity, text)
        )
    }

    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        faulty!(
            self,
            "crm.list_opportunities",
            Service::Dataverse,
            conditional = false,
            write = false,
            self.inner.list_opportunities(query)
        )
    }
}

impl<I: IdempotencyStore> IdempotencyStore for Faulty<'_, I> {
    async fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> Result<AcquireOutcome, PortError> {
        faulty!(
            self,
            "idempotency.acquire",
            Service::IdempotencyStore,
            conditional = false,
            write = false,
            self.inner.acquire(key, now, in_progress_until)
        )
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        faulty!(
            self,
            "idempotency.complete",
            Service::IdempotencyStore,
            conditional = false,
            write = false,
            self.inner.complete(key, response, expires_at)
        )
    }

    async fn release(&self, key: &IdempotencyKey) -> Result<(), PortError> {
        faulty!(
            self,
            "idempotency.release",
            Service::IdempotencyStore,
            conditional = false,
            write = false,
            self.inner.release(key)
        )
    }

    /// The delivery's one write: a 5xx / 429 before it (nothing written), a 412 when it saves a
    /// link, its answer lost after it took effect, a crash before or after it. All or nothing
    /// as on DynamoDB (one `TransactWriteItems`): the link and entry writes inside it get no
    /// faults of their own. (The in-memory stores answer at once, so no other task runs while
    /// the faults are held off.)
    async fn commit<L: LinkStore, A: AuditLog>(
        &self,
        links: &L,
        audit: &A,
        commit: &Commit<'_>,
    ) -> Result<(), PortError> {
        faulty!(
            self,
            "idempotency.commit",
            Service::IdempotencyStore,
            conditional = commit.link.is_some(),
            write = true,
            async {
                self.faults.within_commit.store(true, Ordering::Relaxed);
                let committed = self.inner.commit(links, audit, commit).await;
                self.faults.within_commit.store(false, Ordering::Relaxed);
                committed
            }
        )
    }
}

impl<Q: RetryQueue> RetryQueue for Faulty<'_, Q> {
    async fn enqueue(&self, job: &RetryJob, delay: Duration) -> Result<(), PortError> {
        faulty!(
            self,
            "queue.enqueue",
            Service::RetryQueue,
            conditional = false,
            write = false,
            self.inner.enqueue(job, delay)
        )
    }
}

impl<A: AuditLog> AuditLog for Faulty<'_, A> {
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError> {
        faulty!(
            self,
            "audit.append",
            Service::AuditLog,
            conditional = false,
            write = false,
            self.inner.append(entry)
        )
    }

    async fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        faulty!(
            self,
            "audit.by_referral",
            Service::AuditLog,
            conditional = false,
            write = false,
            self.inner.by_referral(referral_id, limit)
        )
    }

    async fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        let found = faulty!(
            self,
            "audit.by_crm_record",
            Service::AuditLog,
            conditional = false,
            write = false,
            self.inner.by_crm_record(crm, limit)
        );
        if self.faults.hide_crm_history.load(Ordering::Relaxed) {
            return found.map(|_| Vec::new());
        }
        found
    }

    async fn needs_attention(&self, limit: usize) -> Result<Vec<AuditEntry>, PortError> {
        faulty!(
            self,
            "audit.needs_attention",
            Service::AuditLog,
            conditional = false,
            write = false,
            self.inner.needs_attention(limit)
        )
    }
}

impl<L: LinkStore> LinkStore for Faulty<'_, L> {
    async fn get_by_referral(&self, referral_id: &ReferralId) -> Result<Option<Link>, PortError> {
        faulty!(
            self,
            "links.get_by_referral",
            Service::LinkStore,
            conditional = false,
            write = false,
            self.inner.get_by_referral(referral_id)
        )
    }

    async fn get_by_crm(&self, crm: &CrmRecordId) -> Result<Option<Link>, PortError> {
        faulty!(
            self,
            "links.get_by_crm",
            Service::LinkStore,
            conditional = false,
            write = false,
            self.inner.get_by_crm(crm)
        )
    }

    async fn put(&self, link: &Link) -> Result<(), PortError> {
        faulty!(
            self,
            "links.put",
            Service::LinkStore,
            conditional = true,
            write = true,
            self.inner.put(link)
        )
    }

    async fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        faulty!(
            self,
            "links.claim",
            Service::LinkStore,
            conditional = false,
            write = true,
            self.inner.claim(referral_id, now, until)
        )
    }

    async fn release_claim(&self, referral_id: &ReferralId) -> Result<(), PortError> {
        faulty!(
            self,
            "links.release_claim",
            Service::LinkStore,
            conditional = false,
            write = true,
            self.inner.release_claim(referral_id)
        )
    }
}

/// [`Ports`] whose six ports are those of `X`, decorated with faults.
#[derive(Debug)]
pub struct FaultyPorts<'d, X>(PhantomData<&'d X>);

impl<'d, X> Ports for FaultyPorts<'d, X>
where
    X: Ports + 'd,
    X::PartnerCenter: 'd,
    X::Crm: 'd,
    X::Idempotency: 'd,
    X::RetryQueue: 'd,
    X::Audit: 'd,
    X::Links: 'd,
{
    type PartnerCenter = Faulty<'d, X::PartnerCenter>;
    type Crm = Faulty<'d, X::Crm>;
    type Idempotency = Faulty<'d, X::Idempotency>;
    type RetryQueue = Faulty<'d, X::RetryQueue>;
    type Audit = Faulty<'d, X::Audit>;
    type Links = Faulty<'d, X::Links>;
}
