//! Call counting around the real stores:
//!
//! * [`Counted`] — a decorator implementing each store port (idempotency, retry queue, audit,
//!   links) by delegating to the DynamoDB / SQS adapter it wraps, counting every port call as
//!   `dynamodb:<store>.<method>` or `sqs:<store>.<method>`;
//! * [`AwsRequestCounter`] — an AWS SDK interceptor counting the requests that actually go on
//!   the wire, as `<service>:<Operation>` (`dynamodb:PutItem`), retries included.

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
use cosell_domain::ids::{CrmRecordId, ReferralId};
use cosell_domain::ports::{
    AcquireOutcome, AuditEntry, AuditEvent, AuditLog, IdempotencyKey, IdempotencyStore, Link,
    LinkStore, PortError, RetryJob, RetryQueue,
};
use serde_json::Value;

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

/// A store port wrapped so every call is counted under `<service>:<store>.<method>`.
#[derive(Debug, Clone)]
pub struct Counted<T> {
    inner: T,
    counter: Arc<CallCounter>,
    /// `dynamodb:idempotency`, `sqs:retry_queue`, …
    prefix: &'static str,
    /// Audit logs only: counts the events appended, by [`audit_event_name`].
    events: Option<Arc<CallCounter>>,
}

impl<T> Counted<T> {
    /// `inner`, counting into `counter` with keys `<prefix>.<method>`.
    pub fn new(inner: T, counter: Arc<CallCounter>, prefix: &'static str) -> Self {
        Self {
            inner,
            counter,
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
        self.inner.acquire(key, now, in_progress_until)
    }

    fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("complete");
        self.inner.complete(key, response, expires_at)
    }

    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("release");
        self.inner.release(key)
    }
}

impl<T: RetryQueue> RetryQueue for Counted<T> {
    fn enqueue(
        &self,
        job: &RetryJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("enqueue");
        self.inner.enqueue(job, delay)
    }
}

impl<T: AuditLog> AuditLog for Counted<T> {
    fn append(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("append");
        if let Some(events) = &self.events {
            events.hit(audit_event_name(&entry.event));
        }
        self.inner.append(entry)
    }

    fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("by_referral");
        self.inner.by_referral(referral_id, limit)
    }

    fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("by_crm_record");
        self.inner.by_crm_record(crm, limit)
    }

    fn needs_attention(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send {
        self.hit("needs_attention");
        self.inner.needs_attention(limit)
    }
}

impl<T: LinkStore> LinkStore for Counted<T> {
    fn get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        self.hit("get_by_referral");
        self.inner.get_by_referral(referral_id)
    }

    fn get_by_crm(
        &self,
        crm: &CrmRecordId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
        self.hit("get_by_crm");
        self.inner.get_by_crm(crm)
    }

    fn put(&self, link: &Link) -> impl Future<Output = Result<(), PortError>> + Send {
        self.hit("put");
        self.inner.put(link)
    }
}

/// The outcome name of an audit event (`created`, `echo_skipped`, `needs_attention`, …), as
/// the handler's JSON answers name outcomes; `received` / `written_back` accompany others.
pub fn audit_event_name(event: &AuditEvent) -> &'static str {
    match event {
        AuditEvent::Received => "received",
        AuditEvent::DuplicateSkipped => "duplicate_skipped",
        AuditEvent::UnchangedSkipped => "unchanged_skipped",
        AuditEvent::EchoSkipped => "echo_skipped",
        AuditEvent::Created => "created",
        AuditEvent::Updated => "updated",
        AuditEvent::WrittenBack => "written_back",
        AuditEvent::Failed { .. } => "needs_attention",
        AuditEvent::RetryEnqueued { .. } => "retry_enqueued",
        AuditEvent::Redriven => "redriven",
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
        let store = Counted::new(
            InMemoryIdempotencyStore::new(Duration::from_secs(60)),
            counter.clone(),
            "dynamodb:idempotency",
        );
        let links = Counted::new(InMemoryLinkStore::new(), counter.clone(), "dynamodb:links");
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
    }
}
