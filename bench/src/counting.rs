//! Call counting around the real stores:
//!
//! * [`Counted`] — a decorator implementing each store port (idempotency, retry queue, audit,
//!   links) by delegating to the DynamoDB / SQS adapter it wraps, counting every port call as
//!   `dynamodb:<store>.<method>` or `sqs:<store>.<method>`;
//! * [`AwsRequestCounter`] — an AWS SDK interceptor counting the requests that actually go on
//!   the wire, as `<service>:<Operation>` (`dynamodb:PutItem`), retries included;
//! * [`IoGauge`] — the process CPU time spent while at least one port call is in flight, fed by
//!   [`Counted`] (the stores) and [`Gauged`] (the Partner Center and CRM clients), so the
//!   handler's CPU can be split into its own part and the part inside the ports.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use chrono::{DateTime, Utc};
use cosell_adapters::aws::aws_sdk_dynamodb::config::ConfigBag;
use cosell_domain::ids::{CrmKind, CrmRecordId, ETag, ReferralId};
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity};
use cosell_domain::ports::{
    AcquireOutcome, ApiRequest, AuditEntry, AuditEvent, AuditLog, Claim, CombinedOperation, Commit,
    CrmStore, FoundCustomer, IdempotencyKey, IdempotencyStore, Link, LinkStore, OpportunityPage,
    OpportunityQuery, OpportunityWrite, PartnerCenter, PortError, ReferralQuery, RetryJob,
    RetryQueue, Upserted,
};
use cosell_domain::referral::{PatchOp, Referral, ReferralPage};
use serde_json::Value;

use crate::system::process_cpu_time;

/// Counts per key. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct CallCounter(Mutex<BTreeMap<String, u64>>);

impl CallCounter {
    /// Count one call of `key`.
    pub fn hit(&self, key: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(key) {
            Some(count) => *count += 1,
            None => {
                counts.insert(key.to_owned(), 1);
            }
        }
    }

    /// Every key with its count so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The calls made between two snapshots (keys that did not change are left out).
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(key, count)| {
            let difference = count.saturating_sub(before.get(key).copied().unwrap_or_default());
            (difference > 0).then(|| (key.clone(), difference))
        })
        .collect()
}

/// The process CPU time spent while at least one port call is in flight: the **union** of the
/// in-flight intervals, so port calls running at once (a `join` in the domain, concurrent
/// copies of an event) are counted once, not once per call. Cheap to share (`Arc`).
///
/// On the benchmark's `current_thread` runtime everything runs on the calling thread, so while
/// a port call is in flight the process's CPU goes to that call (its adapter, the AWS SDK or
/// HTTP client stack, their background connection tasks and the kernel's network stack) —
/// or to other tasks that happen to run meanwhile (another concurrent copy's own code).
#[derive(Debug, Default)]
pub struct IoGauge(Mutex<GaugeState>);

#[derive(Debug, Default)]
struct GaugeState {
    /// Port calls in flight.
    depth: usize,
    /// Process CPU time when `depth` last went from 0 to 1.
    since: Duration,
    /// Closed intervals so far.
    total: Duration,
}

/// One port call in flight; leaving it (also when its future is dropped unfinished) closes it.
#[derive(Debug)]
struct InFlight<'a>(&'a IoGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

impl IoGauge {
    /// Run `port_call`, counting the process CPU time while it is in flight. Pass a lazily
    /// built future (an `async` block) so that work done when the call's future is built
    /// also counts.
    pub async fn time<F: Future>(&self, port_call: F) -> F::Output {
        let _in_flight = self.enter();
        port_call.await
    }

    /// The CPU time of the closed in-flight intervals so far (read it when no call is in
    /// flight).
    pub fn total(&self) -> Duration {
        self.state().total
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GaugeState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self) -> InFlight<'_> {
        let mut state = self.state();
        if state.depth == 0 {
            state.since = process_cpu_time();
        }
        state.depth += 1;
        InFlight(self)
    }

    fn exit(&self) {
        let mut state = self.state();
        state.depth = state.depth.saturating_sub(1);
        if state.depth == 0 {
            let spent = process_cpu_time().saturating_sub(state.since);
            state.total += spent;
        }
    }
}

/// A store port wrapped so every call is counted under `<service>:<store>.<method>` and its
/// CPU time goes to an [`IoGauge`].
#[derive(Debug, Clone)]
pub struct Counted<T> {
    inner: T,
    counter: Arc<CallCounter>,
    gauge: Arc<IoGauge>,
    /// `dynamodb:idempotency`, `sqs:retry_queue`, …
    prefix: &'static str,
    /// Audit logs and idempotency stores: counts the audit events appended (and committed), by
    /// [`audit_event_name`], and the duplicates the idempotency store answered.
    events: Option<Arc<CallCounter>>,
}

impl<T> Counted<T> {
    /// `inner`, counting into `counter` with keys `<prefix>.<method>` and timing its calls
    /// with `gauge`.
    pub fn new(
        inner: T,
        counter: Arc<CallCounter>,
        gauge: Arc<IoGauge>,
        prefix: &'static str,
    ) -> Self {
        Self {
            inner,
            counter,
            gauge,
            prefix,
            events: None,
        }
    }

    /// Also count each audit event appended into `events` (an audit log's outcomes, for
    /// answers that do not name them, such as a SOAP acknowledgement).
    pub fn recording_audit_events(self, events: Arc<CallCounter>) -> Self {
        Self {
            events: Some(events),
            ..self
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    fn hit(&self, method: &str) {
        self.counter.hit(&format!("{}.{method}", self.prefix));
    }
}

impl<T: IdempotencyStore> IdempotencyStore for Counted<T> {
    fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<AcquireOutcome, PortError>> + Send {
        self.hit("acquire");
        let timed = self
            .gauge
            .time(async move { self.inner.acquire(key, now, in_progress_until).await });
        async move {
            let acquired = timed.await;
            // A duplicate leaves no audit entry: its outcome is the failed acquire's.
            if let (Some(events), Ok(AcquireOutcome::Duplicate(_))) = (&self.events, &acquired) {
                events.hit(audit_event_name(&AuditEvent::DuplicateSkipped));
            }
            acquired
        }
    }

    fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("complete");
        self.gauge
            .time(async move { self.inner.complete(key, response, expires_at).await })
    }

    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("release");
        self.gauge
            .time(async move { self.inner.release(key).await })
    }

    fn commit<L: LinkStore, A: AuditLog>(
        &self,
        links: &L,
        audit: &A,
        commit: &Commit<'_>,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("commit");
        if let Some(events) = &self.events {
            for entry in commit.entries {
                events.hit(audit_event_name(&entry.event));
            }
        }
        self.gauge
            .time(async move { self.inner.commit(links, audit, commit).await })
    }
}

impl<T: RetryQueue> RetryQueue for Counted<T> {
    fn enqueue(
        &self,
        job: &RetryJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("enqueue");
        self.gauge
            .time(async move { self.inner.enqueue(job, delay).await })
    }
}

impl<T: AuditLog> AuditLog for Counted<T> {
    fn append(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("append");
        if let Some(events) = &self.events {
            events.hit(audit_event_name(&entry.event));
        }
        self.gauge
            .time(async move { self.inner.append(entry).await })
    }

    fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("by_referral");
        self.gauge
            .time(async move { self.inner.by_referral(referral_id, limit).await })
    }

    fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("by_crm_record");
        self.gauge
            .time(async move { self.inner.by_crm_record(crm, limit).await })
    }

    fn needs_attention(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("needs_attention");
        self.gauge
            .time(async move { self.inner.needs_attention(limit).await })
    }
}

impl<T: LinkStore> LinkStore for Counted<T> {
    fn get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        self.hit("get_by_referral");
        self.gauge
            .time(async move { self.inner.get_by_referral(referral_id).await })
    }

    fn get_by_crm(
        &self,
        crm: &CrmRecordId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        self.hit("get_by_crm");
        self.gauge
            .time(async move { self.inner.get_by_crm(crm).await })
    }

    fn put(&self, link: &Link) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("put");
        self.gauge.time(async move { self.inner.put(link).await })
    }

    fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim, PortError>> + Send {
        self.hit("claim");
        self.gauge
            .time(async move { self.inner.claim(referral_id, now, until).await })
    }

    fn release_claim(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("release_claim");
        self.gauge
            .time(async move { self.inner.release_claim(referral_id).await })
    }
}

/// A Partner Center or CRM client wrapped so the CPU time of every call goes to an
/// [`IoGauge`] (the adapter's request building and (de)serialisation, its token cache, the
/// HTTP client stack).
#[derive(Debug, Clone)]
pub struct Gauged<T> {
    inner: T,
    gauge: Arc<IoGauge>,
}

impl<T> Gauged<T> {
    /// `inner`, timing its calls with `gauge`.
    pub fn new(inner: T, gauge: Arc<IoGauge>) -> Self {
        Self { inner, gauge }
    }

    /// The wrapped client.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<P: PartnerCenter> PartnerCenter for Gauged<P> {
    async fn get_referral(&self, id: &ReferralId) -> Result<Referral, PortError> {
        self.gauge
            .time(async { self.inner.get_referral(id).await })
            .await
    }

    async fn list_referrals(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        self.gauge
            .time(async { self.inner.list_referrals(query).await })
            .await
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, PortError> {
        self.gauge
            .time(async { self.inner.create_referral(referral).await })
            .await
    }

    async fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<cosell_domain::Patched, PortError> {
        self.gauge
            .time(async { self.inner.patch_referral(id, if_match, ops).await })
            .await
    }
}

impl<C: CrmStore> CrmStore for Gauged<C> {
    fn kind(&self) -> CrmKind {
        self.inner.kind()
    }

    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        self.gauge
            .time(async { self.inner.find_opportunity_by_referral(referral_id).await })
            .await
    }

    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        self.gauge
            .time(async { self.inner.get_opportunity(id).await })
            .await
    }

    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        self.gauge
            .time(async { self.inner.upsert_opportunity(write).await })
            .await
    }

    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        self.gauge
            .time(async { self.inner.find_account(name, postal_code).await })
            .await
    }

    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        self.gauge
            .time(async { self.inner.create_account(account).await })
            .await
    }

    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        self.gauge
            .time(async { self.inner.find_contact_by_email(email).await })
            .await
    }

    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        self.gauge
            .time(async { self.inner.create_contact(contact, account).await })
            .await
    }

    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        self.gauge
            .time(async { self.inner.write_audit(opportunity, text).await })
            .await
    }

    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        self.gauge
            .time(async { self.inner.find_customer(account, email).await })
            .await
    }

    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        self.inner.combined_request(operation)
    }

    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        self.gauge
            .time(async { self.inner.list_opportunities(query).await })
            .await
    }
}

/// The outcome name of an audit event (`created`, `echo_skipped`, `needs_attention`, …), as
/// the handler's JSON answers name outcomes; `received` / `written_back` accompany others.
pub fn audit_event_name(event: &AuditEvent) -> &'static str {
    match event {
        AuditEvent::Received => "received",
        AuditEvent::DuplicateSkipped => "duplicate_skipped",
        AuditEvent::UnchangedSkipped => "unchanged_skipped",
        AuditEvent::HeldUntilAccepted { .. } => "held_until_accepted",
        AuditEvent::EchoSkipped => "echo_skipped",
        AuditEvent::Created => "created",
        AuditEvent::Updated => "updated",
        AuditEvent::WrittenBack => "written_back",
        AuditEvent::Failed { .. } => "needs_attention",
        AuditEvent::RetryEnqueued { .. } => "retry_enqueued",
        AuditEvent::Redriven => "redriven",
        AuditEvent::ConflictResolved { .. } => "conflict_resolved",
    }
}

/// An AWS SDK interceptor counting each request attempt sent, as `<service>:<Operation>`
/// (service lower-cased: `dynamodb:PutItem`, `sqs:SendMessage`).
#[derive(Debug, Clone)]
pub struct AwsRequestCounter(pub Arc<CallCounter>);

impl Intercept for AwsRequestCounter {
    fn name(&self) -> &'static str {
        "cosell-bench-aws-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let key = cfg.load::<Metadata>().map_or_else(
            || "unknown:unknown".to_owned(),
            |metadata| {
                format!(
                    "{}:{}",
                    metadata.service().to_ascii_lowercase(),
                    metadata.name()
                )
            },
        );
        self.0.hit(&key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosell_domain::in_memory::{InMemoryIdempotencyStore, InMemoryLinkStore};

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn deltas_keep_only_what_changed() {
        let before = BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 5)]);
        let after = BTreeMap::from([
            ("a".to_owned(), 2),
            ("b".to_owned(), 7),
            ("c".to_owned(), 1),
        ]);
        assert_eq!(
            delta(&before, &after),
            BTreeMap::from([("b".to_owned(), 2), ("c".to_owned(), 1)])
        );
    }

    #[test]
    fn the_decorator_counts_each_port_call_and_delegates() {
        let counter = Arc::new(CallCounter::default());
        let gauge = Arc::new(IoGauge::default());
        let store = Counted::new(
            InMemoryIdempotencyStore::new(Duration::from_secs(60)),
            counter.clone(),
            gauge.clone(),
            "dynamodb:idempotency",
        );
        let links = Counted::new(
            InMemoryLinkStore::new(),
            counter.clone(),
            gauge.clone(),
            "dynamodb:links",
        );
        let key = IdempotencyKey::new("pc", "event-1").expect("a key");
        let now = Utc::now();
        let until = now + chrono::TimeDelta::seconds(30);

        let first = block_on(store.acquire(&key, now, until)).expect("acquired");
        let second = block_on(store.acquire(&key, now, until)).expect("answered");
        let referral = ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").expect("an id");
        let link = block_on(links.get_by_referral(&referral)).expect("answered");

        assert_eq!(first, AcquireOutcome::Acquired);
        assert_eq!(second, AcquireOutcome::InProgress);
        assert_eq!(link, None);
        assert_eq!(store.inner().calls().get("acquire"), 2, "delegated");
        assert_eq!(
            counter.snapshot(),
            BTreeMap::from([
                ("dynamodb:idempotency.acquire".to_owned(), 2),
                ("dynamodb:links.get_by_referral".to_owned(), 1),
            ])
        );
        assert_eq!(gauge.state().depth, 0, "every call left the gauge");
    }

    /// Burns CPU (a few ms) without sleeping.
    fn burn() {
        let mut x = 0_u64;
        for i in 0..3_000_000_u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
    }

    /// A port call: CPU, a suspension (the other calls run), CPU again.
    async fn port_call() {
        burn();
        tokio::task::yield_now().await;
        burn();
    }

    #[test]
    fn overlapping_port_calls_are_counted_once() {
        let gauge = IoGauge::default();
        let spans = Mutex::new(Duration::ZERO);
        // Each call's own span, start to end (what summing the calls would count).
        let (gauge, spans) = (&gauge, &spans);
        let timed_call = move || async move {
            gauge
                .time(async {
                    let started = process_cpu_time();
                    port_call().await;
                    *spans.lock().expect("spans") += process_cpu_time().saturating_sub(started);
                })
                .await;
        };

        let before = process_cpu_time();
        block_on(async { tokio::join!(timed_call(), timed_call()) });
        let elapsed = process_cpu_time().saturating_sub(before);

        let total = gauge.total();
        let summed = *spans.lock().expect("spans");
        assert!(total > Duration::ZERO);
        assert!(total <= elapsed, "{total:?} within the {elapsed:?} spent");
        // The two calls overlap (each ran while the other was suspended): their spans add up
        // to more than the union, which the gauge counts.
        assert!(summed > total, "summed {summed:?} > union {total:?}");
        assert_eq!(gauge.state().depth, 0);

        // A call after them adds to the total.
        block_on(gauge.time(async { burn() }));
        assert!(gauge.total() > total);
    }

    #[test]
    fn a_dropped_port_call_leaves_the_gauge() {
        let gauge = IoGauge::default();
        block_on(async {
            tokio::select! {
                biased;
                () = gauge.time(port_call()) => panic!("the call is suspended, not finished"),
                () = std::future::ready(()) => {}
            }
        });
        assert_eq!(gauge.state().depth, 0, "the dropped call left");
        assert!(gauge.total() > Duration::ZERO, "its first half counted");
    }
}
