//! In-memory implementations of the store ports: [`InMemoryIdempotencyStore`],
//! [`InMemoryAuditLog`], [`InMemoryLinkStore`], [`InMemoryRetryQueue`], [`InMemoryApiBudget`]
//! and [`InMemoryCheckpointStore`].
//!
//! For handler tests and the local demo's embedded stores. Plain `std::sync::Mutex`, no
//! runtime; every future is ready at once and `Send` (no lock is held across an `await`).
//! Each store counts its calls per method ([`CallCounts`]) and can be told to fail
//! ([`InMemoryIdempotencyStore::fail_next`] and the same on the others), so tests can assert
//! what was called and exercise failure paths.
//!
//! The idempotency store follows the Powertools rules of the DynamoDB adapter through
//! [`IdempotencyRecord::acquire_outcome`]: an expired record is absent, and so is an
//! `INPROGRESS` record whose holder's deadline passed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use crate::ids::{CrmRecordId, ReferralId};
use crate::ports::{
    AcquireOutcome, ApiBudget, AuditEntry, AuditLog, Checkpoint, CheckpointStore, Claim,
    IdempotencyKey, IdempotencyRecord, IdempotencyStatus, IdempotencyStore, Link, LinkStore,
    PortError, RetryJob, RetryQueue, ServiceCalls,
};
use crate::sync::SyncSettings;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls per method name, e.g. `acquire` → 2.
#[derive(Debug, Default)]
pub struct CallCounts(Mutex<BTreeMap<&'static str, usize>>);

impl CallCounts {
    /// Count one call of `method` (also for test fakes of the other ports).
    pub fn hit(&self, method: &'static str) {
        *lock(&self.0).entry(method).or_default() += 1;
    }

    /// How often `method` was called.
    pub fn get(&self, method: &str) -> usize {
        lock(&self.0).get(method).copied().unwrap_or_default()
    }

    /// How many calls were made in all.
    pub fn total(&self) -> usize {
        lock(&self.0).values().sum()
    }

    /// Every method called, with its count.
    pub fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        lock(&self.0).clone()
    }
}

/// Errors to answer the next calls with, in order.
#[derive(Debug, Default)]
struct Faults(Mutex<VecDeque<(Option<&'static str>, PortError)>>);

impl Faults {
    fn push(&self, method: Option<&'static str>, error: PortError) {
        lock(&self.0).push_back((method, error));
    }

    /// The first queued error for a call of `method` (or for any call).
    fn next(&self, method: &'static str) -> Option<PortError> {
        let mut queued = lock(&self.0);
        let at = queued
            .iter()
            .position(|(only, _)| only.is_none_or(|only| only == method))?;
        queued.remove(at).map(|(_, error)| error)
    }
}

macro_rules! store_controls {
    ($store:ty) => {
        impl $store {
            /// The calls made so far.
            pub fn calls(&self) -> &CallCounts {
                &self.calls
            }

            /// Make the next call (whatever its method) fail with `error`; queued errors are
            /// used in order.
            pub fn fail_next(&self, error: PortError) {
                self.faults.push(None, error);
            }

            /// Make the next call of `method` fail with `error`.
            pub fn fail_next_call_of(&self, method: &'static str, error: PortError) {
                self.faults.push(Some(method), error);
            }

            /// Count a call and take the queued error for it, if any.
            fn begin(&self, method: &'static str) -> Result<(), PortError> {
                self.calls.hit(method);
                self.faults.next(method).map_or(Ok(()), Err)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/// The idempotency table in memory, with Powertools semantics.
#[derive(Debug)]
pub struct InMemoryIdempotencyStore {
    records: Mutex<HashMap<IdempotencyKey, IdempotencyRecord>>,
    ttl: Duration,
    calls: CallCounts,
    faults: Faults,
}

impl Default for InMemoryIdempotencyStore {
    fn default() -> Self {
        Self::new(SyncSettings::DEFAULT_IDEMPOTENCY_TTL)
    }
}

store_controls!(InMemoryIdempotencyStore);

impl InMemoryIdempotencyStore {
    /// A store whose `INPROGRESS` records expire `ttl` after they were taken (Powertools writes
    /// the record's expiry on acquire too), or at the holder's deadline if that is later.
    pub fn new(ttl: Duration) -> Self {
        Self {
            records: Mutex::default(),
            ttl,
            calls: CallCounts::default(),
            faults: Faults::default(),
        }
    }

    /// The stored record of `key`, expired or not.
    pub fn record(&self, key: &IdempotencyKey) -> Option<IdempotencyRecord> {
        lock(&self.records).get(key).cloned()
    }

    /// Every stored record, in key order.
    pub fn records(&self) -> Vec<IdempotencyRecord> {
        let mut records: Vec<_> = lock(&self.records).values().cloned().collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records
    }

    /// Store `record` as is (e.g. an `INPROGRESS` record of a concurrent invocation).
    pub fn insert(&self, record: IdempotencyRecord) {
        lock(&self.records).insert(record.key.clone(), record);
    }

    fn acquire_now(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> Result<AcquireOutcome, PortError> {
        self.begin("acquire")?;
        let mut records = lock(&self.records);
        let outcome = IdempotencyRecord::acquire_outcome(records.get(key), now);
        if outcome == AcquireOutcome::Acquired {
            let expires_at = crate::sync::later(now, self.ttl).max(in_progress_until);
            records.insert(
                key.clone(),
                IdempotencyRecord {
                    key: key.clone(),
                    status: IdempotencyStatus::InProgress,
                    expires_at,
                    in_progress_until: Some(in_progress_until),
                    response: None,
                    payload_hash: None,
                },
            );
        }
        Ok(outcome)
    }

    fn complete_now(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.begin("complete")?;
        lock(&self.records).insert(
            key.clone(),
            IdempotencyRecord {
                key: key.clone(),
                status: IdempotencyStatus::Completed,
                expires_at,
                in_progress_until: None,
                response: Some(response.clone()),
                payload_hash: None,
            },
        );
        Ok(())
    }

    fn release_now(&self, key: &IdempotencyKey) -> Result<(), PortError> {
        self.begin("release")?;
        lock(&self.records).remove(key);
        Ok(())
    }
}

impl IdempotencyStore for InMemoryIdempotencyStore {
    fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<AcquireOutcome, PortError>> + Send {
        std::future::ready(self.acquire_now(key, now, in_progress_until))
    }

    fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        std::future::ready(self.complete_now(key, response, expires_at))
    }

    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), PortError>> + Send {
        std::future::ready(self.release_now(key))
    }
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

/// The audit log in memory, in append order.
#[derive(Debug, Default)]
pub struct InMemoryAuditLog {
    entries: Mutex<Vec<AuditEntry>>,
    calls: CallCounts,
    faults: Faults,
}

store_controls!(InMemoryAuditLog);

impl InMemoryAuditLog {
    /// A new, empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Vec<AuditEntry> {
        lock(&self.entries).clone()
    }

    fn newest(
        &self,
        method: &'static str,
        limit: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, PortError> {
        self.begin(method)?;
        Ok(lock(&self.entries)
            .iter()
            .rev()
            .filter(|entry| keep(entry))
            .take(limit)
            .cloned()
            .collect())
    }
}

impl AuditLog for InMemoryAuditLog {
    fn append(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), PortError>> + Send {
        let appended = self.begin("append").map(|()| {
            lock(&self.entries).push(entry.clone());
        });
        std::future::ready(appended)
    }

    fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        std::future::ready(self.newest("by_referral", limit, |entry| {
            entry.referral_id.as_ref() == Some(referral_id)
        }))
    }

    fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        std::future::ready(self.newest("by_crm_record", limit, |entry| {
            entry.crm.as_ref() == Some(crm)
        }))
    }

    fn needs_attention(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        std::future::ready(self.newest("needs_attention", limit, AuditEntry::needs_attention))
    }
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// The link table in memory.
#[derive(Debug, Default)]
pub struct InMemoryLinkStore {
    links: Mutex<HashMap<ReferralId, Link>>,
    /// Claims of referrals without a link: until when they are held (a released claim stays,
    /// lapsed, as the marker of an earlier holder).
    claims: Mutex<HashMap<ReferralId, DateTime<Utc>>>,
    calls: CallCounts,
    faults: Faults,
}

store_controls!(InMemoryLinkStore);

impl InMemoryLinkStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The link of a referral, without counting a call.
    pub fn link(&self, referral_id: &ReferralId) -> Option<Link> {
        lock(&self.links).get(referral_id).cloned()
    }

    /// Every link, by referral id.
    pub fn links(&self) -> Vec<Link> {
        let mut links: Vec<_> = lock(&self.links).values().cloned().collect();
        links.sort_by_key(|link| link.referral_id);
        links
    }

    /// Store `link` without counting a call (test and demo set-up).
    pub fn insert(&self, link: Link) {
        lock(&self.links).insert(link.referral_id, link);
    }
}

impl LinkStore for InMemoryLinkStore {
    fn get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        let found = self
            .begin("get_by_referral")
            .map(|()| lock(&self.links).get(referral_id).cloned());
        std::future::ready(found)
    }

    fn get_by_crm(
        &self,
        crm: &CrmRecordId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        let found = self.begin("get_by_crm").map(|()| {
            lock(&self.links)
                .values()
                .find(|link| &link.crm == crm)
                .cloned()
        });
        std::future::ready(found)
    }

    fn put(&self, link: &Link) -> impl Future<Output = Result<(), PortError>> + Send {
        let put = self.begin("put").and_then(|()| {
            let mut links = lock(&self.links);
            let stored = links
                .get(&link.referral_id)
                .map_or(0, |stored| stored.version);
            if stored != link.version {
                return Err(PortError::PreconditionFailed {
                    service: crate::Service::LinkStore,
                });
            }
            let next = Link {
                version: link.version + 1,
                ..link.clone()
            };
            links.insert(link.referral_id, next);
            lock(&self.claims).remove(&link.referral_id);
            Ok(())
        });
        std::future::ready(put)
    }

    fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim, PortError>> + Send {
        let claimed = self.begin("claim").map(|()| {
            if let Some(link) = lock(&self.links).get(referral_id) {
                return Claim::Linked(Box::new(link.clone()));
            }
            let mut claims = lock(&self.claims);
            match claims.insert(*referral_id, until) {
                Some(held) if held >= now => {
                    claims.insert(*referral_id, held);
                    Claim::Busy
                }
                earlier => Claim::Claimed {
                    earlier: earlier.is_some(),
                },
            }
        });
        std::future::ready(claimed)
    }

    fn release_claim(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        let released = self.begin("release_claim").map(|()| {
            if let Some(held) = lock(&self.claims).get_mut(referral_id) {
                *held = DateTime::<Utc>::MIN_UTC;
            }
        });
        std::future::ready(released)
    }
}

// ---------------------------------------------------------------------------------------------
// Retry queue
// ---------------------------------------------------------------------------------------------

/// The retry queue in memory: jobs with their delay, in enqueue order (delays are recorded,
/// not waited for).
#[derive(Debug, Default)]
pub struct InMemoryRetryQueue {
    jobs: Mutex<Vec<(RetryJob, Duration)>>,
    calls: CallCounts,
    faults: Faults,
}

store_controls!(InMemoryRetryQueue);

impl InMemoryRetryQueue {
    /// A new, empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queued jobs and their delays, oldest first.
    pub fn jobs(&self) -> Vec<(RetryJob, Duration)> {
        lock(&self.jobs).clone()
    }

    /// Take every queued job (what a worker would receive), oldest first.
    pub fn take_all(&self) -> Vec<(RetryJob, Duration)> {
        std::mem::take(&mut *lock(&self.jobs))
    }
}

impl RetryQueue for InMemoryRetryQueue {
    fn enqueue(
        &self,
        job: &RetryJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        let queued = self.begin("enqueue").map(|()| {
            lock(&self.jobs).push((job.clone(), delay));
        });
        std::future::ready(queued)
    }
}

// ---------------------------------------------------------------------------------------------
// API budget and reconciliation checkpoint
// ---------------------------------------------------------------------------------------------

/// The daily API counter in memory: per day the total and the calls per service.
#[derive(Debug, Default)]
pub struct InMemoryApiBudget {
    days: Mutex<BTreeMap<NaiveDate, (i64, ServiceCalls)>>,
    calls: CallCounts,
    faults: Faults,
}

store_controls!(InMemoryApiBudget);

impl InMemoryApiBudget {
    /// A counter at 0 for every day.
    pub fn new() -> Self {
        Self::default()
    }

    /// The count of `day`.
    pub fn count(&self, day: NaiveDate) -> i64 {
        lock(&self.days)
            .get(&day)
            .map(|(total, _)| *total)
            .unwrap_or_default()
    }

    /// The calls of `day` per service.
    pub fn by_service(&self, day: NaiveDate) -> ServiceCalls {
        lock(&self.days)
            .get(&day)
            .map(|(_, made)| *made)
            .unwrap_or_default()
    }
}

impl ApiBudget for InMemoryApiBudget {
    fn used(&self, day: NaiveDate) -> impl Future<Output = Result<u64, PortError>> + Send {
        let used = self
            .begin("used")
            .map(|()| u64::try_from(self.count(day)).unwrap_or_default());
        std::future::ready(used)
    }

    fn used_by_service(
        &self,
        day: NaiveDate,
    ) -> impl Future<Output = Result<ServiceCalls, PortError>> + Send {
        std::future::ready(self.begin("used_by_service").map(|()| self.by_service(day)))
    }

    fn record(
        &self,
        day: NaiveDate,
        delta: i64,
        made: ServiceCalls,
    ) -> impl Future<Output = Result<i64, PortError>> + Send {
        let total = self.begin("record").map(|()| {
            let mut days = lock(&self.days);
            let (total, by_service) = days.entry(day).or_default();
            *total = total.saturating_add(delta);
            *by_service = *by_service + made;
            *total
        });
        std::future::ready(total)
    }
}

/// The reconciliation checkpoint in memory.
#[derive(Debug, Default)]
pub struct InMemoryCheckpointStore {
    checkpoint: Mutex<Option<Checkpoint>>,
    calls: CallCounts,
    faults: Faults,
}

store_controls!(InMemoryCheckpointStore);

impl InMemoryCheckpointStore {
    /// No checkpoint yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored checkpoint.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        lock(&self.checkpoint).clone()
    }
}

impl CheckpointStore for InMemoryCheckpointStore {
    fn load(&self) -> impl Future<Output = Result<Option<Checkpoint>, PortError>> + Send {
        std::future::ready(self.begin("load").map(|()| self.checkpoint()))
    }

    fn save(&self, checkpoint: &Checkpoint) -> impl Future<Output = Result<(), PortError>> + Send {
        let saved = self.begin("save").map(|()| {
            *lock(&self.checkpoint) = Some(checkpoint.clone());
        });
        std::future::ready(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{AuditEvent, RetrySource, Service, SyncDirection};
    use chrono::TimeZone;
    use futures::executor::block_on;
    use serde_json::json;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .unwrap()
    }

    fn key(id: &str) -> IdempotencyKey {
        IdempotencyKey::new("pc", id).unwrap()
    }

    #[test]
    fn a_key_is_taken_once_until_completed_and_then_duplicates_get_the_response() {
        let store = InMemoryIdempotencyStore::default();
        let k = key("e1");
        assert_eq!(
            block_on(store.acquire(&k, at(0), at(30))).unwrap(),
            AcquireOutcome::Acquired
        );
        assert_eq!(
            block_on(store.acquire(&k, at(10), at(40))).unwrap(),
            AcquireOutcome::InProgress
        );
        block_on(store.complete(&k, &json!({ "status": 200 }), at(3600))).unwrap();
        assert_eq!(
            block_on(store.acquire(&k, at(20), at(50))).unwrap(),
            AcquireOutcome::Duplicate(json!({ "status": 200 }))
        );
        assert_eq!(store.calls().get("acquire"), 3);
        assert_eq!(store.calls().get("complete"), 1);
    }

    #[test]
    fn an_in_progress_key_whose_holder_timed_out_can_be_taken_over() {
        let store = InMemoryIdempotencyStore::default();
        let k = key("e2");
        block_on(store.acquire(&k, at(0), at(30))).unwrap();
        assert_eq!(
            block_on(store.acquire(&k, at(31), at(60))).unwrap(),
            AcquireOutcome::Acquired
        );
        assert_eq!(store.record(&k).unwrap().in_progress_until, Some(at(60)));
    }

    #[test]
    fn an_expired_completed_record_counts_as_absent_and_a_released_key_is_free() {
        let store = InMemoryIdempotencyStore::default();
        let k = key("e3");
        block_on(store.acquire(&k, at(0), at(30))).unwrap();
        block_on(store.complete(&k, &Value::Null, at(100))).unwrap();
        assert_eq!(
            block_on(store.acquire(&k, at(101), at(130))).unwrap(),
            AcquireOutcome::Acquired
        );
        block_on(store.release(&k)).unwrap();
        assert!(store.record(&k).is_none());
        assert_eq!(
            block_on(store.acquire(&k, at(102), at(130))).unwrap(),
            AcquireOutcome::Acquired
        );
    }

    #[test]
    fn queued_failures_answer_the_next_calls_in_order() {
        let queue = InMemoryRetryQueue::new();
        let down = PortError::Transient {
            service: Service::RetryQueue,
            reason: "503".into(),
            retry_after: None,
        };
        queue.fail_next(down.clone());
        let job = RetryJob {
            source: RetrySource::PartnerCenter,
            key: "pc:1".into(),
            attempt: 1,
            payload: Value::Null,
        };
        assert_eq!(
            block_on(queue.enqueue(&job, Duration::from_secs(30))),
            Err(down)
        );
        block_on(queue.enqueue(&job, Duration::from_secs(30))).unwrap();
        assert_eq!(queue.calls().get("enqueue"), 2);
        assert_eq!(queue.jobs(), vec![(job, Duration::from_secs(30))]);
        assert_eq!(queue.take_all().len(), 1);
        assert!(queue.jobs().is_empty());
    }

    #[test]
    fn the_audit_log_answers_newest_first_per_referral_record_and_failure() {
        let log = InMemoryAuditLog::new();
        let referral = ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap();
        let crm = CrmRecordId::try_from("salesforce:006000000000001").unwrap();
        let entry = |seconds, event| AuditEntry {
            at: at(seconds),
            direction: Some(SyncDirection::ToCrm),
            referral_id: Some(referral),
            crm: (seconds > 0).then(|| crm.clone()),
            correlation_id: None,
            event,
        };
        block_on(log.append(&entry(0, AuditEvent::Received))).unwrap();
        block_on(log.append(&entry(1, AuditEvent::Created))).unwrap();
        let failed = AuditEvent::Failed {
            reason: "r".into(),
            fix: "f".into(),
        };
        block_on(log.append(&entry(2, failed.clone()))).unwrap();
        let newest = block_on(log.by_referral(&referral, 2)).unwrap();
        assert_eq!(
            newest.iter().map(|e| e.at).collect::<Vec<_>>(),
            vec![at(2), at(1)]
        );
        assert_eq!(block_on(log.by_crm_record(&crm, 10)).unwrap().len(), 2);
        let attention = block_on(log.needs_attention(10)).unwrap();
        assert_eq!(attention.len(), 1);
        assert_eq!(attention[0].event, failed);
    }

    #[test]
    fn links_are_found_by_referral_and_by_crm_record() {
        let links = InMemoryLinkStore::new();
        let link = Link {
            last_referral: None,
            crm_seen: None,
            version: 0,
            referral_id: ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            crm: CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap(),
            last_referral_etag: None,
            last_referral_updated: None,
            last_fingerprint_to_crm: None,
            last_fingerprint_to_pc: None,
            last_stage_to_pc: None,
            microsoft_invited: false,
            last_crm_modified: None,
            updated_at: at(0),
            synced_fields: std::collections::BTreeMap::new(),
        };
        block_on(links.put(&link)).unwrap();
        let stored = Link {
            version: 1,
            ..link.clone()
        };
        assert_eq!(
            block_on(links.get_by_crm(&link.crm)).unwrap(),
            Some(stored.clone())
        );
        assert_eq!(
            block_on(links.get_by_referral(&link.referral_id)).unwrap(),
            Some(stored.clone())
        );
        assert_eq!(links.calls().total(), 3);

        // A put of the version read succeeds once; a second put of the same read is refused.
        let changed = Link {
            last_fingerprint_to_pc: Some("a".into()),
            ..stored
        };
        block_on(links.put(&changed)).unwrap();
        let conflict = block_on(links.put(&changed)).unwrap_err();
        assert_eq!(
            conflict,
            PortError::PreconditionFailed {
                service: crate::Service::LinkStore
            }
        );
        assert_eq!(links.link(&link.referral_id).map(|l| l.version), Some(2));
    }
}
