//! Partner Center → CRM: a new referral, its redeliveries and echoes, its updates and
//! the 412s of the write-back.

use super::*;

#[test]
fn a_new_referral_creates_one_opportunity_with_its_customer_and_writes_the_id_back() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));

    let handled = world.handle(&event, at(100)).unwrap();

    let Outcome::Created { crm } = &handled.outcome else {
        panic!("{:?}", handled.outcome);
    };
    assert_eq!(handled.http_status(), 200);
    let records = world.crm.opportunities();
    assert_eq!(records.len(), 1);
    let stored = &records[crm];
    let o = &stored.opportunity;
    assert_eq!(o.name.as_deref(), Some("Contoso ERP"));
    assert_eq!(o.deal_value, Some(usd(50_000)));
    assert_eq!(o.closing_date, NaiveDate::from_ymd_opt(2027, 6, 30));
    assert_eq!(o.notes.as_deref(), Some("Supply chain"));
    assert_eq!(o.stage, Some(OpportunityStage::OnHold), "New → on hold");
    assert_eq!(o.referral_id, Some(id));
    assert!(o.sync && o.visible_to_microsoft);
    assert_eq!(o.account.country.map(|c| c.as_str()), Some("US"));
    let state = lock(&world.crm.state);
    assert_eq!(state.accounts.len(), 1);
    assert_eq!(state.contacts.len(), 1);
    assert_eq!(stored.account.as_ref(), Some(&state.accounts[0].0));
    assert_eq!(stored.contact.as_ref(), Some(&state.contacts[0].0));
    assert_eq!(state.contacts[0].1.as_ref(), Some(&state.accounts[0].0));
    drop(state);
    assert!(
        stored
            .audit
            .as_deref()
            .is_some_and(|a| a.contains("Created from Partner Center referral"))
    );

    let referral = world.pc.referral(id);
    assert_eq!(referral.external_reference_id, Some(crm.native()));

    // Budget: GET, upsert, PATCH, plus the account and contact look-ups and creates.
    let pc = &world.pc.calls;
    let crm_calls = &world.crm.calls;
    assert_eq!(pc.get("get_referral") + pc.get("patch_referral"), 2);
    assert_eq!(crm_calls.get("upsert_opportunity"), 1);
    assert_eq!(world.pc_calls() + crm_calls.get("upsert_opportunity"), 3);
    assert_eq!(
        crm_calls.get("find_account") + crm_calls.get("create_account"),
        2
    );
    assert_eq!(
        crm_calls.get("find_contact_by_email") + crm_calls.get("create_contact"),
        2
    );
    assert_eq!(world.crm_calls(), 5);

    let link = world.links.link(&id).unwrap();
    assert_eq!(&link.crm, crm);
    assert_eq!(
        link.last_referral_etag,
        referral.etag(),
        "the eTag after our PATCH"
    );
    assert_eq!(
        link.last_fingerprint_to_crm,
        Some(o.fingerprint()),
        "what the CRM was given"
    );
    assert_eq!(
        world.audit_events(),
        vec![
            AuditEvent::Received,
            AuditEvent::Created,
            AuditEvent::WrittenBack
        ]
    );
    let entries = world.audit.entries();
    assert!(entries.iter().all(|e| e.referral_id == Some(id)
        && e.correlation_id.as_deref() == Some("req-1")
        && e.direction == Some(crate::ports::SyncDirection::ToCrm)));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    let record = world.idempotency.record(&key).unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed);
    assert_eq!(record.expires_at, at(100 + 3600));
    assert_eq!(record.response.unwrap()["outcome"], "created");
}

#[test]
fn five_redeliveries_of_the_same_event_make_no_further_calls() {
    let world = World::new();
    let (_, _, event) = world.synced_referral();
    let (pc, crm, links, audit) = (
        world.pc_calls(),
        world.crm_calls(),
        world.links.calls().total(),
        world.audit.calls().total(),
    );
    let acquired = world.idempotency.calls().get("acquire");

    for n in 0..5 {
        assert_eq!(
            world.outcome(&event, at(200 + n)),
            Outcome::DuplicateSkipped
        );
    }

    assert_eq!(world.pc_calls(), pc);
    assert_eq!(world.crm_calls(), crm);
    assert_eq!(world.links.calls().total(), links);
    assert_eq!(world.crm.opportunities().len(), 1);
    // A duplicate is answered by the failed acquire alone: no audit entry (the
    // `DuplicateSkipped` metric counts it), no other store call.
    assert_eq!(world.audit.calls().total(), audit);
    assert!(!world.audit_events().contains(&AuditEvent::DuplicateSkipped));
    assert_eq!(world.idempotency.calls().get("acquire"), acquired + 5);
}

#[test]
fn a_concurrent_duplicate_is_answered_in_progress_and_applies_nothing() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));
    // Another invocation holds the delivery until its Lambda deadline.
    let key = partner_center_event_key(&event, at(100)).unwrap();
    world.idempotency.insert(IdempotencyRecord {
        key: key.clone(),
        status: IdempotencyStatus::InProgress,
        expires_at: at(100 + 3600),
        in_progress_until: Some(at(130)),
        response: None,
        payload_hash: None,
    });

    let outcome = world.outcome(&event, at(110));

    assert_eq!(outcome, Outcome::InProgress);
    assert_eq!(outcome.http_status(), 409);
    assert!(outcome.redeliver_later());
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
    assert!(world.crm.opportunities().is_empty());
    assert!(world.audit.entries().is_empty());
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::InProgress
    );

    // The holder died: after its deadline the redelivery takes over, once.
    assert!(matches!(
        world.outcome(&event, at(131)),
        Outcome::Created { .. }
    ));
    assert_eq!(world.crm.opportunities().len(), 1);
}

#[test]
fn a_delivery_found_in_progress_is_followed_up_after_the_holders_deadline() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    let hold = |until| {
        world.idempotency.insert(IdempotencyRecord {
            key: key.clone(),
            status: IdempotencyStatus::InProgress,
            expires_at: at(100 + 3600),
            in_progress_until: Some(until),
            response: None,
            payload_hash: None,
        });
    };
    // Another invocation of the function holds the delivery until its deadline (at most this
    // one's: it started earlier, with the same timeout).
    hold(at(130));

    assert_eq!(world.outcome(&event, at(110)), Outcome::InProgress);

    // The delivery itself is queued again, under its own key, visible after this invocation's
    // deadline (30 s away) and a margin.
    let jobs = world.queue.take_all();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (job, delay) = &jobs[0];
    assert_eq!((job.key.as_str(), job.attempt), (key.as_str(), 0));
    assert_eq!(*delay, std::time::Duration::from_secs(35));
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);

    // The holder died and the sender never delivered again: the follow-up takes over, once.
    assert!(matches!(world.retry(job, at(145)), Outcome::Created { .. }));
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::Completed
    );
    // Replayed, or after a holder that finished: a duplicate, without a service call.
    let calls = world.pc_calls() + world.crm_calls();
    assert_eq!(world.retry(job, at(146)), Outcome::DuplicateSkipped);
    assert_eq!(world.pc_calls() + world.crm_calls(), calls);
    assert_eq!(world.crm.opportunities().len(), 1);
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn the_echo_of_our_own_write_back_makes_no_call_at_all() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let crm_calls = world.crm_calls();
    let reads = world.pc.calls.get("get_referral");
    // Our PATCH raised referral-updated.
    let changed = world
        .pc
        .referral(id)
        .updated_date_time
        .and_then(|d| d.instant())
        .unwrap();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(200));

    assert_eq!(outcome, Outcome::EchoSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    // The write-back's answer gave the link the referral's updatedDateTime: the event's
    // ResourceChangeUtcDate is not later, so the referral is not read again.
    assert_eq!(world.pc.calls.get("get_referral"), reads);
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
    let last = world.audit.entries().pop().unwrap();
    assert_eq!(last.event, AuditEvent::EchoSkipped);
    assert_eq!(last.crm, Some(crm));
}

#[test]
fn a_write_back_without_a_returned_etag_still_costs_no_crm_call_on_the_echo() {
    let world = World::new();
    *lock(&world.pc.patch_returns_no_etag) = true;
    let (id, _, _) = world.synced_referral();
    assert_eq!(world.links.link(&id).unwrap().last_referral_etag, None);
    let crm_calls = world.crm_calls();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(3)), at(200));

    // Recognised by content instead of by eTag.
    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
}

#[test]
fn a_real_update_in_partner_center_updates_the_opportunity_once() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        let details = r.details.as_mut().unwrap();
        details.deal_value = Some(Decimal::from(75_000));
        details.notes = Some("Supply chain and apps".into());
        r.name = Some("Renamed in Partner Center".into());
        r.status = Some(ReferralStatus::Active);
        r.substatus = Some(ReferralSubstatus::Accepted);
    });
    let event = webhook("referral-updated", REFERRAL, changed);
    let before = world.crm.calls.snapshot();

    assert_eq!(
        world.outcome(&event, at(300)),
        Outcome::Updated { crm: crm.clone() }
    );
    assert_eq!(world.outcome(&event, at(301)), Outcome::DuplicateSkipped);

    let stored = world.crm.stored(&crm);
    assert_eq!(stored.opportunity.deal_value, Some(usd(75_000)));
    assert_eq!(
        stored.opportunity.notes.as_deref(),
        Some("Supply chain and apps")
    );
    assert_eq!(
        stored.opportunity.stage,
        Some(OpportunityStage::Active),
        "Accepted → active stage"
    );
    assert_eq!(
        stored.opportunity.name.as_deref(),
        Some("Contoso ERP"),
        "the update scope leaves the name to the CRM user"
    );
    assert!(
        stored
            .audit
            .as_deref()
            .is_some_and(|a| a.contains("Updated from Partner Center referral"))
    );
    let after = world.crm.calls.snapshot();
    assert_eq!(
        after["upsert_opportunity"],
        before["upsert_opportunity"] + 1
    );
    assert_eq!(
        after.get("get_opportunity"),
        before.get("get_opportunity"),
        "the record is as the create left it (Link::crm_seen): planned unread, written with \
         If-Match on that version (docs/conflicts.md#what-it-costs)"
    );
    assert_eq!(
        world.crm_calls(),
        before.values().sum::<usize>() + 1,
        "one CRM write, no read, no look-ups"
    );
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        1,
        "the back-link is already there"
    );
    let link = world.links.link(&id).unwrap();
    assert_eq!(link.last_referral_etag, world.pc.referral(id).etag());
    assert_eq!(
        link.last_fingerprint_to_crm,
        Some(referral_to_opportunity_fingerprint(&world, id))
    );
    // The link keeps the record as this write left it, agreeing with the new base.
    let seen = link.crm_seen.as_ref().expect("the write's version is kept");
    assert_eq!(seen.version, stored.version.to_string());
    assert_eq!(
        seen.agreeing_version(&link.synced_fields),
        Some(seen.version.as_str())
    );
}

#[test]
fn a_record_saved_since_the_link_saw_it_is_read_after_the_412_and_merged() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    // A seller's save the link has not seen: another field, a new row version.
    {
        let mut state = lock(&world.crm.state);
        let stored = state.opportunities.get_mut(&crm).unwrap();
        stored.opportunity.closing_date = chrono::NaiveDate::from_ymd_opt(2027, 3, 31);
        stored.version += 1;
    }
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("Microsoft: pilot first".into());
    });
    let before = world.crm.calls.snapshot();

    assert_eq!(
        world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300)),
        Outcome::Updated { crm: crm.clone() }
    );

    let stored = world.crm.stored(&crm).opportunity;
    assert_eq!(stored.notes.as_deref(), Some("Microsoft: pilot first"));
    assert_eq!(
        stored.closing_date,
        chrono::NaiveDate::from_ymd_opt(2027, 3, 31),
        "the seller's save is kept"
    );
    let after = world.crm.calls.snapshot();
    assert_eq!(
        after["upsert_opportunity"],
        before["upsert_opportunity"] + 2,
        "the unread write answered 412, then the merged one"
    );
    assert_eq!(
        after.get("get_opportunity").copied().unwrap_or(0),
        before.get("get_opportunity").copied().unwrap_or(0) + 1,
        "read once, after the 412"
    );
}

fn referral_to_opportunity_fingerprint(world: &World, id: ReferralId) -> String {
    crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping).fingerprint()
}

#[test]
fn an_update_that_changes_no_mapped_field_writes_nothing_to_the_crm() {
    let world = World::new();
    let (id, _, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.status_reason = Some("Seller reassigned".into());
    });
    let crm_calls = world.crm_calls();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        world.pc.referral(id).etag(),
        "the link's eTag is refreshed"
    );
    assert_eq!(
        world.audit_events().last(),
        Some(&AuditEvent::UnchangedSkipped)
    );
}

#[test]
fn a_412_on_the_write_back_rereads_the_referral_once_and_retries_once() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    // Someone changes an unmapped field between our GET and our PATCH.
    lock(&world.pc.before_patch).push_back(Box::new(|r: &mut Referral| {
        r.status_reason = Some("touched".into());
    }));

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::Created { crm } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(world.pc.calls.get("get_referral"), 2, "one re-read");
    assert_eq!(world.pc.calls.get("patch_referral"), 2, "one retry");
    let referral = world.pc.referral(id);
    assert_eq!(referral.external_reference_id, Some(crm.native()));
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        referral.etag(),
        "the CRM holds the re-read content, so our PATCH's echo is recognised"
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_412_caused_by_a_real_change_does_not_hide_that_change_as_an_echo() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    lock(&world.pc.before_patch).push_back(Box::new(|r: &mut Referral| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(60_000));
    }));
    let Outcome::Created { crm } =
        world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100))
    else {
        panic!("not created");
    };
    assert_eq!(world.links.link(&id).unwrap().last_referral_etag, None);

    // The events of the other change and of our PATCH both arrive; the first syncs the change.
    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(2)), at(200));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(
        world.crm.stored(&crm).opportunity.deal_value,
        Some(usd(60_000))
    );
    assert_eq!(
        world.outcome(&webhook("referral-updated", REFERRAL, at(3)), at(201)),
        Outcome::EchoSkipped
    );
}

#[test]
fn a_second_412_after_the_reread_is_retried_later() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    for _ in 0..2 {
        world.pc.fail_next(
            "patch_referral",
            PortError::PreconditionFailed {
                service: Service::PartnerCenter,
            },
        );
    }

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert_eq!(
        outcome,
        Outcome::RetryEnqueued {
            attempt: 1,
            delay: Duration::from_secs(30)
        }
    );
    assert_eq!(world.pc.calls.get("patch_referral"), 2);
    assert_eq!(world.pc.calls.get("get_referral"), 2);
}

#[test]
fn a_referral_whose_opportunity_another_delivery_is_creating_is_retried_not_created_twice() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    // Another delivery of the new referral holds the claim on creating its opportunity...
    let held = ReferralId::try_from(REFERRAL).unwrap();
    let claim = block_on(crate::ports::LinkStore::claim(
        &world.links,
        &held,
        at(99),
        at(300),
    ))
    .unwrap();
    assert_eq!(claim, crate::ports::Claim::Claimed { earlier: false });
    // ...when this one arrives: nothing is created, it runs again later.
    let updated = webhook("referral-updated", REFERRAL, at(2));
    let outcome = world.outcome(&updated, at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    assert!(world.crm.opportunities().is_empty());
    assert!(
        lock(&world.crm.state).accounts.is_empty(),
        "no account made either"
    );

    // The other delivery creates the opportunity (here: its claim freed, the event again).
    block_on(crate::ports::LinkStore::release_claim(&world.links, &held)).unwrap();
    let created = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(101));
    assert!(matches!(created, Outcome::Created { .. }), "{created:?}");
    // The retry finds the link: no second opportunity, account or contact.
    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert!(!matches!(retried, Outcome::Created { .. }), "{retried:?}");
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(lock(&world.crm.state).accounts.len(), 1);
}

#[test]
fn a_referral_created_redelivered_after_a_run_killed_past_its_crm_write_finds_that_opportunity() {
    // The simulation's seed 81: a run of `referral-created` was killed after the CRM stored the
    // opportunity and before anything was linked or written back. Its claim lapsed at its
    // deadline; the redelivery must look the opportunity up by the referral id rather than
    // take the new referral's shortcut and create it again.
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert_eq!(
        block_on(crate::ports::IdempotencyStore::acquire(
            &world.idempotency,
            &key,
            at(100),
            at(130)
        ))
        .unwrap(),
        crate::ports::AcquireOutcome::Acquired
    );
    let claim = block_on(crate::ports::LinkStore::claim(
        &world.links,
        &id,
        at(100),
        at(130),
    ))
    .unwrap();
    assert_eq!(claim, crate::ports::Claim::Claimed { earlier: false });
    let mut written =
        crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping);
    written.referral_id = Some(id);
    let crm = world.crm.seed(written);

    let outcome = world.outcome(&event, at(131));

    assert!(
        !matches!(outcome, Outcome::Created { .. }),
        "found, not created again: {outcome:?}"
    );
    assert_eq!(world.crm.opportunities().len(), 1, "no second opportunity");
    assert_eq!(world.crm.calls.get("find_opportunity_by_referral"), 1);
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(crm.native()),
        "linked back"
    );
}

#[test]
fn the_first_run_of_a_new_referral_does_not_search_for_its_opportunity() {
    let world = World::new();
    world.pc.insert(co_sell_referral());

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert!(matches!(outcome, Outcome::Created { .. }), "{outcome:?}");
    assert_eq!(world.crm.calls.get("find_opportunity_by_referral"), 0);
}

/// The customer's account and contact and the opportunity, counted.
fn customer_counts(world: &World) -> (usize, usize, usize) {
    let state = lock(&world.crm.state);
    (
        state.accounts.len(),
        state.contacts.len(),
        state.opportunities.len(),
    )
}

#[test]
fn a_new_referral_on_a_combining_crm_takes_one_find_and_one_write() {
    let world = World::new();
    world.crm.combine();
    world.pc.insert(co_sell_referral());

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::Created { crm } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(customer_counts(&world), (1, 1, 1));
    let calls = &world.crm.calls;
    assert_eq!(calls.get("find_customer"), 1);
    assert_eq!(calls.get("upsert_opportunity"), 1);
    assert_eq!(world.crm_calls(), 2, "instead of up to 5");
    let stored = world.crm.stored(crm);
    let state = lock(&world.crm.state);
    assert_eq!(stored.account.as_ref(), Some(&state.accounts[0].0));
    assert_eq!(stored.contact.as_ref(), Some(&state.contacts[0].0));
    assert_eq!(state.contacts[0].1.as_ref(), Some(&state.accounts[0].0));
}

#[test]
fn the_combined_find_matches_an_existing_account_and_only_the_contact_is_created() {
    let world = World::new();
    world.crm.combine();
    let id = world.pc.insert(co_sell_referral());
    let customer = crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping);
    let existing = block_on(crate::ports::CrmStore::create_account(
        &world.crm,
        &customer.account,
    ))
    .unwrap();
    let before = world.crm_calls();

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::Created { crm } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(customer_counts(&world), (1, 1, 1), "no second account");
    assert_eq!(world.crm.stored(crm).account, Some(existing.clone()));
    assert_eq!(lock(&world.crm.state).contacts[0].1, Some(existing));
    assert_eq!(world.crm_calls() - before, 2);
}

#[test]
fn a_combined_write_that_fails_leaves_nothing_and_its_retry_creates_each_record_once() {
    let world = World::new();
    world.crm.combine();
    world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Salesforce, None));

    let first = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert!(matches!(first, Outcome::RetryEnqueued { .. }), "{first:?}");
    assert_eq!(customer_counts(&world), (0, 0, 0), "all or none");
    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert!(matches!(retried, Outcome::Created { .. }), "{retried:?}");
    assert_eq!(customer_counts(&world), (1, 1, 1));
}

#[test]
fn a_crash_after_the_combined_write_creates_nothing_twice() {
    // The combined write took effect, then its answer was lost (the run died before the
    // write-back): the retry finds the opportunity by its referral id, and would find the
    // account and contact made with it.
    let world = World::new();
    world.crm.combine();
    let id = world.pc.insert(co_sell_referral());
    lock(&world.crm.lost_upsert_answers).push_back(transient(Service::Salesforce, None));

    let first = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert!(matches!(first, Outcome::RetryEnqueued { .. }), "{first:?}");
    assert_eq!(customer_counts(&world), (1, 1, 1), "written at once");
    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert!(!matches!(retried, Outcome::Created { .. }), "{retried:?}");
    assert_eq!(customer_counts(&world), (1, 1, 1), "nothing made twice");
    let crm = world.links.link(&id).unwrap().crm;
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(crm.native())
    );
}

#[test]
fn a_failed_write_back_after_the_combined_write_creates_nothing_twice() {
    let world = World::new();
    world.crm.combine();
    world.pc.insert(co_sell_referral());
    world
        .pc
        .fail_next("patch_referral", transient(Service::PartnerCenter, None));

    let event = webhook("referral-created", REFERRAL, at(1));
    let first = world.outcome(&event, at(100));
    assert_eq!(customer_counts(&world), (1, 1, 1), "{first:?}");
    for (job, _) in world.queue.take_all() {
        world.retry(&job, at(400));
    }
    world.outcome(&webhook("referral-updated", REFERRAL, at(2)), at(500));

    assert_eq!(customer_counts(&world), (1, 1, 1), "nothing made twice");
    assert_eq!(
        world.crm.calls.get("find_customer"),
        1,
        "found once, before the write"
    );
}

/// Microsoft changes a referral whose deal the seller has closed in Dataverse, where a closed
/// row is read-only: the write is refused. That is said as what it is (not as Dataverse's
/// "reopen it first"), with what to do, and nothing more is written to the row, not even the
/// Audit text.
#[test]
fn partner_centers_change_to_a_closed_dataverse_row_is_said_as_such_and_not_written() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    world.crm.keep_closed_rows_read_only();
    lock(&world.crm.state)
        .opportunities
        .get_mut(&crm)
        .unwrap()
        .opportunity
        .stage = Some(OpportunityStage::Won);
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("From Microsoft".into());
    });
    let event = webhook("referral-updated", REFERRAL, changed);
    let audit_before = world.crm.stored(&crm).audit;

    let outcome = world.outcome(&event, at(300));

    let Outcome::NeedsAttention { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "closed_in_crm");
    assert!(
        message.contains("notes") && message.contains("closed in Dataverse"),
        "{message}"
    );
    let stored = world.crm.stored(&crm);
    assert_eq!(stored.opportunity.notes.as_deref(), Some("Supply chain"));
    assert_eq!(
        stored.audit, audit_before,
        "no Audit text on the closed row"
    );
    assert_eq!(world.crm.calls.get("write_audit"), 0);
    assert!(world.audit.entries().iter().any(|e| {
        e.crm.as_ref() == Some(&crm)
            && matches!(&e.event, AuditEvent::Failed { fix, .. } if fix.contains("reopen"))
    }));
}
