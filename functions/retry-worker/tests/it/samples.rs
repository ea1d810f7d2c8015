//! Handler tests on the committed samples (`events/retry-worker/`), against the in-process
//! sandbox with in-memory stores and a recording queue port (no AWS): what each message's
//! answer is, which visibility it gets, what is dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sample_harness;

use std::time::Duration;

use chrono::Utc;
use cosell_domain::ports::AuditEvent;
use sample_harness::{Harness, REFERRAL, SECOND_REFERRAL, sample};
use serde_json::json;

#[tokio::test]
async fn the_referral_created_sample_creates_one_opportunity_and_is_deleted() {
    let h = Harness::start().await;
    h.seed(REFERRAL).await;
    let event = sample("referral-created-job");

    assert!(h.handle(&event).await.is_empty());
    assert_eq!(h.opportunities_of(REFERRAL).await, 1);
    assert!(h.visibility().is_empty());
    let events: Vec<_> = h
        .app
        .connector
        .stores
        .audit
        .entries()
        .into_iter()
        .map(|e| (e.event, e.correlation_id))
        .collect();
    assert!(
        events.contains(&(
            AuditEvent::Created,
            Some("5f0c3c2e-7a1b-4c55-9e21-0d6b1c9a0001".into())
        )),
        "the message id is the correlation id: {events:?}"
    );
    assert!(
        h.app.connector.stores.retry_queue.jobs().is_empty(),
        "nothing chained"
    );

    // A replay of the same message is a duplicate: deleted, nothing written.
    assert!(h.handle(&event).await.is_empty());
    assert_eq!(h.opportunities_of(REFERRAL).await, 1);
}

#[tokio::test]
async fn the_batch_sample_dead_letters_the_malformed_body_and_runs_the_rest() {
    let h = Harness::start().await;
    h.seed(REFERRAL).await;
    h.seed(SECOND_REFERRAL).await;

    let failures = h.handle(&sample("batch-with-malformed-body")).await;

    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(h.opportunities_of(REFERRAL).await, 1);
    assert_eq!(h.opportunities_of(SECOND_REFERRAL).await, 1);
    let dead = h.app.queues.dead_letters.lock().unwrap().clone();
    assert_eq!(
        dead,
        [Some("{\"source\":\"partner_center\",\"key\":".to_owned())]
    );
}

#[tokio::test]
async fn a_429_with_retry_after_hides_the_job_at_least_that_long_and_chains_nothing() {
    let h = Harness::start().await;
    h.seed(REFERRAL).await;
    h.post(
        "/_sandbox/faults",
        json!({ "service": "dataverse", "status": 429, "retry_after": 600, "count": 1 }),
    )
    .await;
    let event = sample("referral-created-job");

    let failures = h.handle(&event).await;

    assert_eq!(failures, ["5f0c3c2e-7a1b-4c55-9e21-0d6b1c9a0001"]);
    let visibility = h.visibility();
    assert_eq!(visibility.len(), 1);
    assert_eq!(
        visibility[0].0,
        event.records[0].receipt_handle.clone().unwrap()
    );
    assert_eq!(
        visibility[0].1,
        Duration::from_secs(600),
        "Retry-After over the 30 s backoff"
    );
    assert!(
        h.app.connector.stores.retry_queue.jobs().is_empty(),
        "nothing chained"
    );
    assert!(
        h.app.connector.stores.idempotency.records().is_empty(),
        "the key was released"
    );

    // The redelivery syncs it.
    assert!(h.handle(&event).await.is_empty());
    assert_eq!(h.opportunities_of(REFERRAL).await, 1);
}

#[tokio::test]
async fn a_job_in_progress_elsewhere_comes_back_after_a_short_visibility() {
    let h = Harness::start().await;
    h.seed(REFERRAL).await;
    let event = sample("referral-created-job");
    let job: cosell_domain::ports::RetryJob =
        serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
    let key =
        cosell_domain::ports::IdempotencyKey::try_from(format!("{}#attempt-1", job.key)).unwrap();
    let now = Utc::now();
    cosell_domain::ports::IdempotencyStore::acquire(
        &h.app.connector.stores.idempotency,
        &key,
        now,
        now + chrono::TimeDelta::minutes(5),
    )
    .await
    .unwrap();

    let failures = h.handle(&event).await;

    assert_eq!(failures.len(), 1);
    assert_eq!(h.visibility()[0].1, Duration::from_secs(30));
    assert_eq!(h.opportunities_of(REFERRAL).await, 0);
}
