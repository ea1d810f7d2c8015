//! Retry jobs: one sync per job however often it is delivered, backoff, and the last attempt.

use super::*;

#[test]
fn a_retry_job_runs_the_sync_once_even_when_the_message_is_replayed() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    let (job, _) = world.queue.take_all().remove(0);

    let first = world.retry(&job, at(130));
    let replay = world.retry(&job, at(131));

    let Outcome::Created { crm } = first else {
        panic!("{first:?}");
    };
    assert_eq!(replay, Outcome::DuplicateSkipped);
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        world.crm.calls.get("upsert_opportunity"),
        2,
        "the failed one and the retry"
    );
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
    let state = lock(&world.crm.state);
    assert_eq!((state.accounts.len(), state.contacts.len()), (1, 1));
    drop(state);
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(crm.native())
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_failed_write_back_is_finished_by_the_retry_without_touching_the_crm_again() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world
        .pc
        .fail_next("patch_referral", transient(Service::PartnerCenter, None));
    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    assert!(matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }));
    let link = world.links.link(&id).unwrap();
    assert_eq!(
        link.last_referral_etag, None,
        "not an echo candidate until written back"
    );
    let crm_calls = world.crm_calls();
    let (job, _) = world.queue.take_all().remove(0);

    let outcome = world.retry(&job, at(130));

    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(link.crm.native())
    );
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        world.pc.referral(id).etag()
    );
}

#[test]
fn a_retry_that_keeps_failing_backs_off_and_needs_attention_after_the_last_attempt() {
    let mut world = World::new();
    world.settings.max_attempts = 2;
    world.pc.insert(co_sell_referral());
    for _ in 0..3 {
        world
            .crm
            .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    }
    world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    let (first, _) = world.queue.take_all().remove(0);

    assert_eq!(
        world.retry(&first, at(130)),
        Outcome::RetryEnqueued {
            attempt: 2,
            delay: Duration::from_secs(60)
        }
    );
    let (second, _) = world.queue.take_all().remove(0);
    assert_eq!(second.key, first.key);
    let last = world.retry(&second, at(200));

    let Outcome::NeedsAttention { code, message } = last else {
        panic!("{last:?}");
    };
    assert_eq!(code, "retries_exhausted");
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_retry_job_without_a_partner_center_event_needs_attention() {
    let world = World::new();
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: "pc:abc".into(),
        attempt: 1,
        payload: json!({ "unexpected": true }),
    };

    let outcome = world.retry(&job, at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "invalid_retry_job",
            ..
        }
    ));
    assert!(!outcome.redeliver_later());
    assert_eq!(world.pc_calls() + world.queue.calls().total(), 0);
}
