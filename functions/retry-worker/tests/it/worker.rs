//! The worker end to end against moto's real SQS queues and DynamoDB table and the in-process
//! sandbox: retries with growing backoff, the dead-letter queue and `cosell redrive`, and a
//! malformed message in a batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use chrono::Utc;
use cosell_adapters::aws::OutgoingMessage;
use cosell_cli::redrive::{Mode, Options, redrive};
use cosell_domain::ports::AuditEvent;
use retry_worker::Backoff;
use serde_json::json;
use support::{Crm, Harness};

fn created_count(entries: &[cosell_domain::ports::AuditEntry]) -> usize {
    entries
        .iter()
        .filter(|entry| entry.event == AuditEvent::Created)
        .count()
}

#[tokio::test]
async fn a_crm_answering_503_three_times_is_retried_with_growing_delays_then_syncs_once() {
    for crm in [Crm::Dataverse, Crm::Salesforce] {
        three_503s_then_one_opportunity(crm).await;
    }
}

async fn three_503s_then_one_opportunity(crm: Crm) {
    let h = Harness::start(crm, 5).await;
    let referral = h.seed_referral().await;
    h.enqueue_created(&referral).await;
    h.inject(json!({ "service": crm.service(), "status": 503, "count": 3 }))
        .await;

    for delivery in 1..=3u32 {
        let (messages, answer) = h.poll(Utc::now()).await;
        assert_eq!(messages.len(), 1, "{crm:?} delivery {delivery}");
        assert_eq!(messages[0].receive_count, Some(delivery));
        assert_eq!(
            answer.batch_item_failures.len(),
            1,
            "{crm:?} delivery {delivery} is reported failed"
        );
        assert_eq!(
            answer.batch_item_failures[0].item_identifier,
            messages[0].message_id
        );
        assert!(h.opportunities_of(&referral).await.is_empty());
    }
    let delays = h.visibility();
    assert_eq!(delays.len(), 3, "{delays:?}");
    assert!(
        delays.windows(2).all(|pair| pair[0] < pair[1]),
        "growing: {delays:?}"
    );
    assert!(
        delays.iter().all(|d| *d <= Backoff::DEFAULT_MAX),
        "{delays:?}"
    );
    assert_eq!(
        delays,
        [
            Duration::from_millis(22_500),
            Duration::from_secs(45),
            Duration::from_secs(90)
        ],
        "base 30 s doubling, jitter 0.5 of the upper half"
    );

    let (messages, answer) = h.poll(Utc::now()).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].receive_count, Some(4));
    assert!(answer.batch_item_failures.is_empty(), "{answer:?}");
    assert_eq!(h.opportunities_of(&referral).await.len(), 1, "{crm:?}");
    assert_eq!(
        h.rows("opportunity").await.len(),
        1,
        "{crm:?}: nothing else"
    );
    assert_eq!(created_count(&h.audit(&referral).await), 1);
    assert_eq!(h.depth(&h.queue).await, 0, "deleted");
    assert_eq!(h.depth(&h.dlq).await, 0);
    let injected = h
        .requests()
        .await
        .into_iter()
        .filter(|r| r["injected"] == true)
        .count();
    assert_eq!(injected, 3, "one CRM call failed per delivery");
}

#[tokio::test]
async fn a_job_failing_max_receive_count_times_is_dead_lettered_and_redriven_exactly_once() {
    let h = Harness::start(Crm::Dataverse, 3).await;
    let referral = h.seed_referral().await;
    let job = h.enqueue_created(&referral).await;
    h.inject(json!({ "service": "dataverse", "status": 503, "count": 1000 }))
        .await;

    for _ in 0..3 {
        let (messages, answer) = h.poll(Utc::now()).await;
        assert_eq!(messages.len(), 1);
        assert_eq!(answer.batch_item_failures.len(), 1);
    }
    assert_eq!(
        h.visibility().last(),
        Some(&Duration::ZERO),
        "the last failure is visible at once, for SQS to dead-letter it"
    );
    let audit = h.audit(&referral).await;
    let failed: Vec<_> = audit
        .iter()
        .filter_map(|entry| match &entry.event {
            AuditEvent::Failed { reason, fix } => Some((reason.clone(), fix.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{audit:#?}");
    assert!(failed[0].0.contains("after 3 deliveries"), "{failed:?}");
    assert!(failed[0].0.contains("dead-letter queue"), "{failed:?}");
    assert!(failed[0].1.contains("cosell redrive"), "{failed:?}");

    // The next receive finds it over maxReceiveCount: SQS (moto) moves it to the DLQ.
    let (messages, _) = h.receive().await;
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(h.depth(&h.queue).await, 0);
    assert_eq!(h.depth(&h.dlq).await, 1);

    // A dry run lists it and moves nothing.
    let listed = redrive(
        &h.aws.sqs,
        &h.queues.dlq_url,
        &h.queues.queue_url,
        &Options {
            dry_run: true,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.mode, Mode::DryRun);
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(listed.jobs[0].key.as_deref(), Some(job.key.as_str()));
    assert_eq!(listed.jobs[0].source.as_deref(), Some("partner_center"));
    assert_eq!(listed.jobs[0].attempt, Some(1));
    assert!(listed.jobs[0].first_seen.is_some());
    assert_eq!((listed.moved, listed.failed), (0, 0));
    assert_eq!(h.depth(&h.dlq).await, 1, "still there");
    assert_eq!(h.depth(&h.queue).await, 0);

    // The cause is fixed; redrive brings it back (moto has no StartMessageMoveTask: moved one
    // by one) and the worker syncs it once.
    h.clear_faults().await;
    let moved = redrive(
        &h.aws.sqs,
        &h.queues.dlq_url,
        &h.queues.queue_url,
        &Options::default(),
    )
    .await
    .unwrap();
    assert_eq!(moved.mode, Mode::OneByOne, "{moved:?}");
    assert_eq!((moved.moved, moved.failed), (1, 0), "{moved:?}");
    assert_eq!(moved.exit().code(), 0);
    assert_eq!(h.depth(&h.dlq).await, 0);

    let (messages, answer) = h.poll(Utc::now()).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        serde_json::from_str::<cosell_domain::ports::RetryJob>(&messages[0].body).unwrap(),
        job,
        "the same job, body and attributes"
    );
    assert_eq!(messages[0].attributes["source"], "partner_center");
    assert_eq!(messages[0].attributes["attempt"], "1");
    assert!(answer.batch_item_failures.is_empty(), "{answer:?}");
    assert_eq!(h.opportunities_of(&referral).await.len(), 1);
    let audit = h.audit(&referral).await;
    assert_eq!(created_count(&audit), 1, "{audit:#?}");

    // A second redrive moves nothing and changes nothing.
    let requests = h.requests().await.len();
    let again = redrive(
        &h.aws.sqs,
        &h.queues.dlq_url,
        &h.queues.queue_url,
        &Options::default(),
    )
    .await
    .unwrap();
    assert_eq!((again.moved, again.failed), (0, 0), "{again:?}");
    assert!(again.jobs.is_empty());
    assert_eq!(h.depth(&h.queue).await, 0);
    let (messages, _) = h.receive().await;
    assert!(messages.is_empty());
    assert_eq!(h.requests().await.len(), requests, "no service call");
    assert_eq!(h.opportunities_of(&referral).await.len(), 1);
    assert_eq!(h.audit(&referral).await, audit);
}

#[tokio::test]
async fn a_malformed_body_is_dead_lettered_without_failing_the_rest_of_the_batch() {
    let h = Harness::start(Crm::Dataverse, 5).await;
    let first = h.seed_referral().await;
    let second = h.seed_referral().await;
    h.enqueue_created(&first).await;
    h.queue
        .send(&OutgoingMessage {
            body: "{\"source\": \"partner_center\", \"key\": ".into(),
            string_attributes: vec![("source".into(), "partner_center".into())],
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    h.enqueue_created(&second).await;

    let (messages, answer) = h.poll(Utc::now()).await;

    assert_eq!(messages.len(), 3, "one batch of three");
    assert!(
        answer.batch_item_failures.is_empty(),
        "the malformed one is not a failure: {answer:?}"
    );
    assert_eq!(h.opportunities_of(&first).await.len(), 1);
    assert_eq!(h.opportunities_of(&second).await.len(), 1);
    assert_eq!(h.depth(&h.queue).await, 0);
    let dead = h.dlq.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, "{\"source\": \"partner_center\", \"key\": ");
    assert_eq!(dead[0].attributes["source"], "partner_center");
    assert_eq!(*h.app.queues.dead_lettered.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_job_over_the_days_background_budget_is_queued_again_not_run_and_not_lost() {
    use cosell_adapters::aws::{AnyApiBudget, Metering};
    use cosell_domain::budget::BudgetPolicy;
    use cosell_domain::ports::ApiBudget;

    let mut h = Harness::start(Crm::Dataverse, 5).await;
    // 10 calls a day, of which background work (retries, reconcile) may use 8: all 8 are used.
    let now = Utc::now();
    let counter = AnyApiBudget::memory();
    counter.add(now.date_naive(), 8).await.unwrap();
    let policy = BudgetPolicy {
        daily_budget: 10,
        webhook_reserved_share: 0.2,
        ..BudgetPolicy::default()
    };
    h.app.connector.metering = Metering::new(counter, policy);
    let referral = h.seed_referral().await;
    h.enqueue_created(&referral).await;
    let calls_before = h.requests().await.len();

    let (messages, answer) = h.poll(now).await;

    assert_eq!(messages.len(), 1);
    assert!(answer.batch_item_failures.is_empty(), "{answer:?}");
    assert!(
        h.opportunities_of(&referral).await.is_empty(),
        "not run today"
    );
    assert_eq!(h.requests().await.len(), calls_before, "no service call");
    // The job waits on the queue as a fresh message (delayed: its receives start at zero
    // again), so the next day's poll runs it; none lost.
    let depth = h.queue.depth().await.unwrap();
    assert_eq!((depth.visible, depth.delayed), (0, 1), "{depth:?}");
    assert_eq!(h.depth(&h.dlq).await, 0);
}
