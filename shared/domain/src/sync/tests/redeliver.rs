//! [`RetryPolicy::Redeliver`]: the retry worker's mode, in which the caller delivers a job
//! again instead of the sync queueing the next attempt.

use super::*;
use crate::ports::IdempotencyStore as _;
use crate::sync::runner::attempt_key;

fn worker_world() -> World {
    let mut world = World::new();
    world.settings.retry_policy = RetryPolicy::Redeliver;
    world
}

fn job(attempt: u32) -> RetryJob {
    let event = webhook("referral-created", REFERRAL, at(1));
    RetryJob {
        source: RetrySource::PartnerCenter,
        key: partner_center_event_key(&event, at(1)).unwrap().to_string(),
        attempt,
        payload: serde_json::to_value(&event).unwrap(),
    }
}

#[test]
fn a_retryable_failure_releases_the_key_and_queues_nothing_for_the_caller_to_redeliver() {
    let world = worker_world();
    world.pc.insert(co_sell_referral());
    world.crm.fail_next(
        "upsert_opportunity",
        transient(Service::Dataverse, Some(120)),
    );
    let job = job(1);

    let outcome = world.retry(&job, at(100));

    let Outcome::RetryLater {
        retry_after,
        reason,
        referral_id,
        crm,
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(120)));
    assert!(reason.contains("503"), "{reason}");
    assert_eq!(
        referral_id.map(|id| id.to_string()).as_deref(),
        Some(REFERRAL)
    );
    assert_eq!(*crm, None);
    assert!(outcome.redeliver_later());
    assert_eq!(outcome.log_name(), "retry_later");
    assert!(world.queue.jobs().is_empty(), "no chained job");
    assert_eq!(
        world.idempotency.record(&attempt_key(&job).unwrap()),
        None,
        "released, so the redelivery runs the sync"
    );
    assert!(
        !world.audit_events().iter().any(|event| matches!(
            event,
            AuditEvent::RetryEnqueued { .. } | AuditEvent::Failed { .. }
        )),
        "{:?}",
        world.audit_events()
    );

    // The redelivery of the same message succeeds, once.
    let Outcome::Created { .. } = world.retry(&job, at(400)) else {
        panic!("not created");
    };
    assert_eq!(world.retry(&job, at(401)), Outcome::DuplicateSkipped);
    assert_eq!(world.crm.opportunities().len(), 1);
}

#[test]
fn the_attempt_limit_is_the_callers_not_max_attempts() {
    let world = worker_world();
    world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    let late = job(SyncSettings::DEFAULT_MAX_ATTEMPTS + 5);

    let outcome = world.retry(&late, at(100));

    assert!(
        matches!(
            outcome,
            Outcome::RetryLater {
                retry_after: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn permanent_failures_still_need_attention_under_redelivery() {
    let world = worker_world();
    world.pc.insert(co_sell_referral());
    world.crm.fail_next(
        "upsert_opportunity",
        PortError::Permanent {
            service: Service::Dataverse,
            message: "bad value".into(),
        },
    );

    let outcome = world.retry(&job(1), at(100));

    assert!(
        matches!(
            outcome,
            Outcome::NeedsAttention {
                code: "rejected",
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(!outcome.redeliver_later());
}

#[test]
fn the_webhook_functions_keep_enqueueing() {
    assert_eq!(SyncSettings::default().retry_policy, RetryPolicy::Enqueue);
}

#[test]
fn a_run_killed_after_the_crm_write_is_taken_over_after_its_deadline_without_a_duplicate() {
    let world = worker_world();
    let id = world.pc.insert(co_sell_referral());
    let job = job(1);
    let key = attempt_key(&job).unwrap();
    // The killed run: it held the key until its deadline and its upsert reached the CRM.
    assert_eq!(
        block_on(world.idempotency.acquire(&key, at(100), at(130))).unwrap(),
        crate::ports::AcquireOutcome::Acquired
    );
    let mut written = referral_to_opportunity_of(&world, id);
    written.referral_id = Some(id);
    let crm = world.crm.seed(written);

    assert_eq!(
        world.retry(&job, at(120)),
        Outcome::InProgress,
        "before the deadline"
    );
    let outcome = world.retry(&job, at(131));

    assert_eq!(
        outcome,
        Outcome::Updated { crm: crm.clone() },
        "upserted by referral id"
    );
    assert_eq!(world.crm.opportunities().len(), 1, "no duplicate");
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(crm.native()),
        "linked back"
    );
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::Completed
    );
}

fn referral_to_opportunity_of(world: &World, id: ReferralId) -> Opportunity {
    crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping)
}
