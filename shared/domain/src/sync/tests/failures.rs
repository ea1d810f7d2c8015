//! Partner Center → CRM when a service or store fails: retries, released keys and the
//! needs-attention audit.

use super::*;

#[test]
fn a_crm_outage_enqueues_a_retry_with_backoff_and_completes_the_key() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.crm.fail_next(
        "upsert_opportunity",
        transient(Service::Dataverse, Some(120)),
    );
    let event = webhook("referral-created", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    assert_eq!(
        outcome,
        Outcome::RetryEnqueued {
            attempt: 1,
            delay: Duration::from_secs(120)
        },
        "Retry-After wins over the 30 s backoff"
    );
    assert_eq!(outcome.http_status(), 200);
    let jobs = world.queue.jobs();
    assert_eq!(jobs.len(), 1);
    let (job, delay) = &jobs[0];
    assert_eq!(*delay, Duration::from_secs(120));
    assert_eq!(job.source, RetrySource::PartnerCenter);
    assert_eq!(job.attempt, 1);
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert_eq!(job.key, key.as_str());
    assert_eq!(
        serde_json::from_value::<WebhookEvent>(job.payload.clone()).unwrap(),
        event
    );
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::Completed
    );
    assert!(world.crm.opportunities().is_empty());
    assert_eq!(
        world.audit_events().last(),
        Some(&AuditEvent::RetryEnqueued { attempt: 1 })
    );

    // Partner Center's own redelivery does not queue the retry twice.
    assert_eq!(world.outcome(&event, at(101)), Outcome::DuplicateSkipped);
    assert_eq!(world.queue.jobs().len(), 1);
}

#[test]
fn when_the_retry_cannot_be_queued_the_key_is_released_and_the_sender_retries() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    world.queue.fail_next(transient(Service::RetryQueue, None));
    let event = webhook("referral-created", REFERRAL, at(1));

    let error = world.handle(&event, at(100)).unwrap_err();

    assert!(matches!(error, SyncError::RetryNotScheduled { .. }));
    assert_eq!(error.http_status(), 503);
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert!(world.idempotency.record(&key).is_none(), "released");
    assert_eq!(world.idempotency.calls().get("release"), 1, "the key");
    assert_eq!(
        world.links.calls().get("release_claim"),
        1,
        "the claim on creating the opportunity"
    );
    assert!(world.queue.jobs().is_empty());

    // Partner Center's redelivery runs the sync again.
    assert!(matches!(
        world.outcome(&event, at(160)),
        Outcome::Created { .. }
    ));
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        lock(&world.crm.state).accounts.len(),
        1,
        "the account made before the failure is found again"
    );
}

#[test]
fn an_unavailable_idempotency_store_makes_the_sender_deliver_again() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world
        .idempotency
        .fail_next(transient(Service::IdempotencyStore, None));

    let error = world
        .handle(&webhook("referral-created", REFERRAL, at(1)), at(100))
        .unwrap_err();

    assert!(matches!(error, SyncError::Idempotency(_)));
    assert_eq!(error.http_status(), 503);
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
}

#[test]
fn a_crm_validation_error_needs_attention_and_writes_the_fix_to_the_crm_audit_field() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(1));
    });
    world.crm.fail_next(
        "upsert_opportunity",
        PortError::Permanent {
            service: Service::Dataverse,
            message: "estimatedvalue: the value is below the minimum".into(),
        },
    );
    let event = webhook("referral-updated", REFERRAL, changed);

    let outcome = world.outcome(&event, at(300));

    let Outcome::NeedsAttention { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "rejected");
    assert!(message.contains("estimatedvalue"), "{message}");
    assert!(message.contains("Fix:"), "{message}");
    assert_eq!(outcome.http_status(), 200);
    let audit = world.crm.stored(&crm).audit.unwrap();
    assert!(
        audit.contains("Sync failed:") && audit.contains("estimatedvalue"),
        "{audit}"
    );
    assert!(audit.contains("Fix: Correct the value"), "{audit}");
    assert!(world.queue.jobs().is_empty(), "never retried");
    let failed = world.audit.entries().pop().unwrap();
    assert!(failed.needs_attention());
    assert_eq!(failed.crm, Some(crm));
    assert_eq!(world.outcome(&event, at(301)), Outcome::DuplicateSkipped);
}
