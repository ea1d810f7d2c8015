//! The conflict policy (docs/conflicts.md#the-policy): edits on both sides of one deal at
//! once, in both directions. No edit is lost without an audited conflict, and both sides end
//! with the same values.

use super::*;

const SELLER: &str = "3f0c1d2e-0000-4000-8000-0000000005e1";

/// A co-sell referral already accepted, synced once to a new opportunity.
fn accepted_deal(world: &World) -> (ReferralId, CrmRecordId) {
    let mut referral = co_sell_referral();
    referral.status = Some(ReferralStatus::Active);
    referral.substatus = Some(ReferralSubstatus::Accepted);
    let id = world.pc.insert(referral);
    let Outcome::Created { crm } =
        world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100))
    else {
        panic!("not created");
    };
    (id, crm)
}

/// A seller's edit in the CRM (its webhook not delivered yet).
fn seller_edits(world: &World, record: &CrmRecordId, change: impl FnOnce(&mut Opportunity)) {
    let mut state = lock(&world.crm.state);
    let stored = state.opportunities.get_mut(record).unwrap();
    change(&mut stored.opportunity);
    // A save is a new row version.
    stored.version += 1;
}

/// A Microsoft user's edit in Partner Center; its `referral-updated` webhook.
fn microsoft_edits(
    world: &World,
    id: ReferralId,
    change: impl FnOnce(&mut Referral),
) -> WebhookEvent {
    let changed = world.pc.edit(id, change);
    webhook("referral-updated", REFERRAL, changed)
}

/// The seller's save as the CRM's webhook carries it (the record as it was saved).
fn seller_webhook(record: &CrmRecordId, saved: &CrmOpportunity, operation: u32) -> CrmChange {
    CrmChange {
        key: dataverse_change_key(&format!("op-{operation}"), record).unwrap(),
        record: record.clone(),
        writer: Some(SELLER.into()),
        opportunity: Some(saved.clone()),
        modified_at: None,
        sent_image: None,
    }
}

fn sync_crm(world: &World, change: &CrmChange, now: DateTime<Utc>) -> Outcome {
    block_on(handle_crm_change(
        &world.deps(),
        change,
        &World::delivery(now),
    ))
    .unwrap()
    .outcome
}

fn crm_read(world: &World, record: &CrmRecordId) -> CrmOpportunity {
    world.crm.read(record, &world.crm.stored(record))
}

/// The audited conflicts, as stored (the audit log's JSON).
fn conflicts(world: &World) -> Vec<serde_json::Value> {
    world
        .audit
        .entries()
        .into_iter()
        .map(|entry| serde_json::to_value(&entry.event).unwrap())
        .filter(|event| event["kind"] == "conflict_resolved")
        .collect()
}

fn pc_notes(world: &World, id: ReferralId) -> Option<String> {
    world.pc.referral(id).details.and_then(|d| d.notes)
}

fn pc_deal_value(world: &World, id: ReferralId) -> Option<Decimal> {
    world.pc.referral(id).details.and_then(|d| d.deal_value)
}

#[test]
fn partner_center_to_crm_keeps_a_sellers_edit_of_another_field_made_seconds_earlier() {
    let world = World::new();
    let (id, record) = accepted_deal(&world);

    // The seller raises the deal value; seconds later Microsoft rewrites the notes.
    seller_edits(&world, &record, |o| o.deal_value = Some(usd(60_000)));
    let event = microsoft_edits(&world, id, |r| {
        r.details.as_mut().unwrap().notes = Some("Microsoft: customer wants a pilot".into());
    });
    let outcome = world.outcome(&event, at(200));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    let stored = world.crm.stored(&record).opportunity;
    assert_eq!(
        stored.deal_value,
        Some(usd(60_000)),
        "the seller's edit is not overwritten"
    );
    assert_eq!(
        stored.notes.as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    // Both sides equal: the seller's value went to Partner Center in the same sync.
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
    assert!(
        conflicts(&world).is_empty(),
        "different fields: no conflict"
    );

    // The seller's webhook arrives afterwards: nothing left to send, nothing reverted.
    let saved = crm_read(&world, &record);
    sync_crm(&world, &seller_webhook(&record, &saved, 2), at(210));
    assert_eq!(
        pc_notes(&world, id).as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
}

#[test]
fn an_edit_of_the_same_field_on_both_sides_goes_to_its_owner_with_one_audited_conflict() {
    let world = World::new();
    let (id, record) = accepted_deal(&world);

    // Both sides change the deal value and the notes within seconds.
    seller_edits(&world, &record, |o| {
        o.deal_value = Some(usd(60_000));
        o.notes = Some("Seller: phase 2 agreed".into());
    });
    let seller_saved = crm_read(&world, &record);
    let event = microsoft_edits(&world, id, |r| {
        let details = r.details.as_mut().unwrap();
        details.deal_value = Some(Decimal::from(70_000));
        details.notes = Some("Microsoft: customer wants a pilot".into());
    });
    world.outcome(&event, at(200));

    // The policy: the CRM owns the deal value, Partner Center the notes.
    let stored = world.crm.stored(&record).opportunity;
    assert_eq!(stored.deal_value, Some(usd(60_000)));
    assert_eq!(
        stored.notes.as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
    assert_eq!(
        pc_notes(&world, id).as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    let audited = conflicts(&world);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(
        audited[0]["fields"],
        json!([
            { "field": "deal_value", "winner": "crm" },
            { "field": "notes", "winner": "partner_center" },
        ])
    );
    let text = audited[0].to_string();
    for value in ["60000", "70000", "phase 2", "pilot"] {
        assert!(!text.contains(value), "the audit names no value: {text}");
    }
    assert!(
        world
            .crm
            .stored(&record)
            .audit
            .is_some_and(|a| a.contains("Changed on both sides")),
        "the seller sees why their notes were replaced"
    );

    // The seller's webhook, carrying the record as saved before the connector's write, comes
    // late: the notes that lost are not sent to Partner Center.
    sync_crm(&world, &seller_webhook(&record, &seller_saved, 2), at(210));
    assert_eq!(
        pc_notes(&world, id).as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    assert_eq!(
        world.crm.stored(&record).opportunity.notes.as_deref(),
        Some("Microsoft: customer wants a pilot")
    );
    assert_eq!(conflicts(&world).len(), 1, "one conflict, audited once");
}

#[test]
fn a_conflict_is_audited_before_its_write_so_a_run_that_dies_after_it_still_explains_it() {
    // The simulation's most frequent divergence: the conflict's entry was kept for the run's
    // commit, and a run that died after the write that resolved it (or lost its commit) left
    // the loss unexplained; its retry then found both sides equal, with no conflict to record.
    let world = World::new();
    let (id, record) = accepted_deal(&world);
    seller_edits(&world, &record, |o| o.deal_value = Some(usd(60_000)));
    let event = microsoft_edits(&world, id, |r| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(70_000));
    });
    // The opportunity is written; then the store is gone: the commit and its second try fail.
    for _ in 0..2 {
        world.idempotency.fail_next_call_of(
            "complete",
            PortError::Transient {
                service: crate::Service::IdempotencyStore,
                reason: "the instance stopped".into(),
                retry_after: None,
            },
        );
    }

    let handled = world.handle(&event, at(200)).unwrap();

    assert!(!handled.warnings.is_empty(), "the lost commit is a warning");
    assert_eq!(
        world.crm.stored(&record).opportunity.deal_value,
        Some(usd(60_000)),
        "the CRM, the owner, won: Microsoft's value is lost"
    );
    let audited = conflicts(&world);
    assert_eq!(audited.len(), 1, "the loss is explained: {audited:?}");
    assert_eq!(
        audited[0]["fields"],
        json!([{ "field": "deal_value", "winner": "crm" }])
    );
}

#[test]
fn crm_to_partner_center_keeps_a_microsoft_edit_of_another_field_made_seconds_earlier() {
    let world = World::new();
    let (id, record) = accepted_deal(&world);

    // Microsoft rewrites the notes (its webhook not delivered yet); the seller then raises the
    // deal value and the CRM's webhook arrives first.
    microsoft_edits(&world, id, |r| {
        r.details.as_mut().unwrap().notes = Some("Microsoft: customer wants a pilot".into());
    });
    seller_edits(&world, &record, |o| o.deal_value = Some(usd(60_000)));
    let saved = crm_read(&world, &record);
    let outcome = sync_crm(&world, &seller_webhook(&record, &saved, 2), at(200));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(
        pc_notes(&world, id).as_deref(),
        Some("Microsoft: customer wants a pilot"),
        "Microsoft's edit is not overwritten"
    );
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
    assert_eq!(
        world.crm.stored(&record).opportunity.notes.as_deref(),
        Some("Microsoft: customer wants a pilot"),
        "both sides equal: Microsoft's notes went to the CRM in the same sync"
    );
    assert!(conflicts(&world).is_empty());
}

#[test]
fn a_held_change_is_not_overwritten_when_the_referral_is_accepted_in_partner_center() {
    let world = World::new();
    // Microsoft's referral, New: the opportunity is on hold.
    let (id, record, _) = world.synced_referral();
    assert_eq!(
        world.crm.stored(&record).opportunity.stage,
        Some(OpportunityStage::OnHold)
    );
    // The seller raises the deal value; Partner Center takes no change yet: held.
    seller_edits(&world, &record, |o| o.deal_value = Some(usd(60_000)));
    let saved = crm_read(&world, &record);
    let held = sync_crm(&world, &seller_webhook(&record, &saved, 2), at(200));
    assert_eq!(
        held,
        Outcome::HeldUntilAccepted {
            crm: record.clone()
        }
    );
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(50_000)));

    // Accepted in Partner Center.
    let event = microsoft_edits(&world, id, |r| {
        r.status = Some(ReferralStatus::Active);
        r.substatus = Some(ReferralSubstatus::Accepted);
    });
    world.outcome(&event, at(300));

    let stored = world.crm.stored(&record).opportunity;
    assert_eq!(stored.stage, Some(OpportunityStage::Active));
    assert_eq!(
        stored.deal_value,
        Some(usd(60_000)),
        "the acceptance does not overwrite the held change"
    );
    assert_eq!(
        pc_deal_value(&world, id),
        Some(Decimal::from(60_000)),
        "the held change is sent once accepted"
    );
    assert!(conflicts(&world).is_empty());
}

#[test]
fn a_partner_center_change_of_no_shared_field_reads_nothing_and_overwrites_nothing() {
    let world = World::new();
    let (id, record) = accepted_deal(&world);
    seller_edits(&world, &record, |o| {
        o.notes = Some("Seller: phase 2 agreed".into())
    });

    // A rename in Partner Center: no shared field changed since the last sync.
    let event = microsoft_edits(&world, id, |r| r.name = Some("Contoso ERP, renamed".into()));
    let reads = world.crm.calls.get("get_opportunity");
    world.outcome(&event, at(200));

    assert_eq!(world.crm.calls.get("get_opportunity"), reads, "no read");
    assert_eq!(
        world.crm.stored(&record).opportunity.notes.as_deref(),
        Some("Seller: phase 2 agreed")
    );
}

/// Found by the simulation (seed 37, no injected faults): an opportunity whose link was never
/// saved (the run that created it stopped first) was updated without `If-Match` on the version
/// it was found at, so a save made in between was not merged — the CRM's older deal value went
/// to Partner Center while the CRM kept the newer one.
#[test]
fn an_unlinked_opportunity_is_not_written_over_a_save_made_after_it_was_found() {
    let world = World::new();
    let mut referral = co_sell_referral();
    referral.status = Some(ReferralStatus::Active);
    referral.substatus = Some(ReferralSubstatus::Accepted);
    let id = world.pc.insert(referral);
    // Its opportunity exists, made by a run that stopped before saving the link.
    let mut made = crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping);
    made.referral_id = Some(id);
    let record = world.crm.seed(made);
    assert!(world.links.link(&id).is_none());

    // Microsoft changes the deal value; a seller saves another value just before the
    // connector's write reaches the CRM.
    let event = microsoft_edits(&world, id, |r| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(80_000));
    });
    lock(&world.crm.before_upsert).push_back(Box::new(|o: &mut Opportunity| {
        o.deal_value = Some(usd(60_000));
    }));
    let outcome = world.outcome(&event, at(200));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { .. }),
        "the write finds the record changed since it was found: {outcome:?}"
    );
    let (job, _) = world.queue.take_all().pop().unwrap();
    world.retry(&job, at(260));

    // Merged with the seller's save: the seller's deal value (the CRM owns it) on both sides.
    assert_eq!(
        world.crm.stored(&record).opportunity.deal_value,
        Some(usd(60_000))
    );
    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
}

/// Found by the simulation (seed 16864): a run's CRM write whose link lost to another sync's
/// (that sync sent Partner Center an older read of the record) is not in the link, and the
/// event's echo markers say the referral is up to date. The run's retry job checks the CRM
/// instead of trusting them: its write conditional on the version the link kept answers 412,
/// the record is read, and the value the CRM holds goes to Partner Center.
#[test]
fn a_retry_job_finds_a_crm_write_its_lost_link_did_not_record_and_converges() {
    let world = World::new();
    let (id, record) = accepted_deal(&world);
    // Another sync sends Partner Center the seller's notes and links them as agreed.
    seller_edits(&world, &record, |o| o.notes = Some("seller".into()));
    let saved = crm_read(&world, &record);
    sync_crm(&world, &seller_webhook(&record, &saved, 2), at(210));
    assert_eq!(pc_notes(&world, id).as_deref(), Some("seller"));
    // The earlier attempt's write, which the link does not know.
    seller_edits(&world, &record, |o| {
        o.notes = Some("written by the attempt whose link lost".into())
    });
    let event = webhook("referral-created", REFERRAL, at(1));
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: "pc:lost-link".into(),
        attempt: 1,
        payload: serde_json::to_value(&event).unwrap(),
    };
    let deps = world.deps();
    let retried = block_on(run_retry_job(&deps, &job, &World::delivery(at(300)))).unwrap();

    assert!(
        matches!(retried.outcome, Outcome::Updated { .. }),
        "{:?}",
        retried.outcome
    );
    assert_eq!(
        pc_notes(&world, id).as_deref(),
        Some("written by the attempt whose link lost"),
        "both sides hold the CRM's value"
    );
    assert_eq!(
        world.crm.stored(&record).opportunity.notes.as_deref(),
        Some("written by the attempt whose link lost")
    );
}

#[test]
fn notes_cut_to_fit_the_crm_are_no_change_to_send_back_to_partner_center() {
    let world = World::new();
    let long_notes = format!("Microsoft: {}", "pilot ".repeat(400));
    let mut referral = co_sell_referral();
    referral.status = Some(ReferralStatus::Active);
    referral.substatus = Some(ReferralSubstatus::Accepted);
    referral.details.as_mut().unwrap().notes = Some(long_notes.clone());
    let id = world.pc.insert(referral);
    let Outcome::Created { crm: record } =
        world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100))
    else {
        panic!("not created");
    };
    let stored = world.crm.stored(&record).opportunity;
    let cut = stored.notes.unwrap();
    assert_eq!(cut.chars().count(), 2_000);

    // The seller raises the deal value: it reaches Partner Center, the cut notes do not.
    seller_edits(&world, &record, |o| o.deal_value = Some(usd(60_000)));
    let saved = crm_read(&world, &record);
    sync_crm(&world, &seller_webhook(&record, &saved, 2), at(200));

    assert_eq!(pc_deal_value(&world, id), Some(Decimal::from(60_000)));
    assert_eq!(pc_notes(&world, id).as_ref(), Some(&long_notes));
    assert!(conflicts(&world).is_empty());
    // Partner Center's next event leaves both as they are.
    let event = microsoft_edits(&world, id, |_| {});
    world.outcome(&event, at(300));
    assert_eq!(world.crm.stored(&record).opportunity.notes, Some(cut));
    assert_eq!(pc_notes(&world, id), Some(long_notes));
    assert!(conflicts(&world).is_empty());
}
