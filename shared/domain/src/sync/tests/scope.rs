//! Which referrals and events the sync takes, and how: closed referrals, lost links, referrals
//! created from the CRM, leads out of scope, links to another CRM, a missing role, test and
//! unknown events.

use super::*;

#[test]
fn a_closed_referral_updates_the_crm_stage_but_is_never_patched() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.status = Some(ReferralStatus::Closed);
        r.substatus = Some(ReferralSubstatus::Won);
        // A back-link pointing elsewhere would normally be corrected, but a won referral takes
        // no change.
        r.external_reference_id = Some("something-else".into());
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(
        world.crm.stored(&crm).opportunity.stage,
        Some(OpportunityStage::Won)
    );
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        1,
        "only the first sync"
    );

    let changed = world.pc.edit(id, |r| {
        r.substatus = Some(ReferralSubstatus::Declined);
        r.details.as_mut().unwrap().notes = Some("Customer went elsewhere".into());
    });
    world.outcome(&webhook("referral-updated", REFERRAL, changed), at(400));
    assert_eq!(
        world.crm.stored(&crm).opportunity.stage,
        Some(OpportunityStage::Lost(LostReason::Declined)),
        "Declined → lost"
    );
}

#[test]
fn a_referral_closed_before_it_reached_the_crm_is_ignored() {
    let world = World::new();
    let mut referral = co_sell_referral();
    referral.status = Some(ReferralStatus::Closed);
    referral.substatus = Some(ReferralSubstatus::Expired);
    world.pc.insert(referral);

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(1)), at(100));

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(outcome.http_status(), 200);
    assert!(world.crm.opportunities().is_empty());
    assert_eq!(
        world.crm.calls.get("find_opportunity_by_referral"),
        1,
        "checked"
    );
    assert_eq!(world.crm_calls(), 1, "nothing created");
    assert_eq!(world.pc.calls.get("patch_referral"), 0);
}

#[test]
fn a_referral_updated_whose_link_was_lost_updates_the_existing_opportunity() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    // The link table was restored from an old backup.
    let links = InMemoryLinkStore::new();
    let world = World { links, ..world };
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("New notes".into());
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
}

#[test]
fn a_referral_created_from_the_crm_updates_the_opportunity_its_external_reference_names() {
    let world = World::new();
    let crm = world.crm.seed(Opportunity {
        name: Some("Contoso ERP (from CRM)".into()),
        sync: true,
        ..Opportunity::default()
    });
    let mut referral = co_sell_referral();
    referral.external_reference_id = Some(crm.native());
    let id = world.pc.insert(referral);

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(world.crm.opportunities().len(), 1, "no second opportunity");
    // The record differs from the referral, and with no link (no base) a difference is a
    // conflict that an older read of the referral must not win: the referral is read again
    // after the record (simulation seed 212), the record is not.
    assert_eq!(world.crm.calls.get("get_opportunity"), 1);
    assert_eq!(world.pc.calls.get("get_referral"), 2);
    assert_eq!(world.crm.calls.get("create_account"), 0);
    assert_eq!(world.crm.stored(&crm).opportunity.referral_id, Some(id));
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        0,
        "the back-link is there"
    );
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
}

#[test]
fn a_lead_outside_the_configured_scope_is_ignored() {
    let mut world = World::new();
    let mut lead = co_sell_referral();
    lead.referral_type = Some(crate::referral::ReferralType::Independent);
    lead.qualification = Some(crate::referral::ReferralQualification::Direct);
    world.pc.insert(lead);
    let event = webhook("referral-created", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.crm_calls(), 0);

    world.settings.referral_scope = ReferralScope::All;
    assert!(matches!(
        world.outcome(&webhook("referral-created", REFERRAL, at(2)), at(200)),
        Outcome::Created { .. }
    ));
}

#[test]
fn a_link_to_another_crm_needs_attention() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world.links.insert(Link {
        last_referral: None,
        crm_seen: None,
        version: 0,
        referral_id: id,
        crm: CrmRecordId::try_from("salesforce:006000000000001").unwrap(),
        last_referral_etag: None,
        last_referral_updated: None,
        last_fingerprint_to_crm: None,
        last_fingerprint_to_pc: None,
        last_stage_to_pc: None,
        microsoft_invited: false,
        last_crm_modified: None,
        updated_at: at(0),
        synced_fields: std::collections::BTreeMap::new(),
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(1)), at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "wrong_crm",
            ..
        }
    ));
    assert_eq!(world.crm_calls(), 0);
}

#[test]
fn an_access_denied_read_needs_attention_and_names_the_missing_role() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.pc.fail_next(
        "get_referral",
        PortError::AccessDenied {
            service: Service::PartnerCenter,
            missing_role: Some("Referrals admin".into()),
            message: "403 Forbidden".into(),
        },
    );

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::NeedsAttention { code, message } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(code, "access_denied");
    assert_eq!(
        message,
        "Partner Center denied access: 403 Forbidden. Fix: Grant the Referrals admin role to \
         the connector's user."
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn the_test_event_is_acknowledged_without_any_call() {
    let world = World::new();
    let event: WebhookEvent = serde_json::from_value(json!({
        "EventName": "test-created",
        "ResourceUri": "http://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/c0bfd694-3075-4ec5-9a3c-733d3a890a1f",
        "ResourceName": "test",
        "AuditUri": null,
        "ResourceChangeUtcDate": "2017-11-16T16:19:06.3520276+00:00"
    }))
    .unwrap();

    let handled = world.handle(&event, at(100)).unwrap();

    assert_eq!(handled.outcome, Outcome::Acknowledged);
    assert_eq!(handled.http_status(), 200);
    assert_eq!(
        world.pc_calls()
            + world.crm_calls()
            + world.idempotency.calls().total()
            + world.audit.calls().total(),
        0
    );
}

#[test]
fn an_unknown_event_is_ignored_with_http_200() {
    let world = World::new();
    let event = webhook("subscription-updated", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    let Outcome::Ignored { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("subscription-updated"));
    assert_eq!(outcome.http_status(), 200);
    assert_eq!(world.pc_calls() + world.idempotency.calls().total(), 0);
}

#[test]
fn an_event_without_a_referral_id_needs_attention_without_any_service_call() {
    let world = World::new();
    let event = webhook("referral-created", "{{ReferralID}}", at(1));

    let outcome = world.outcome(&event, at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "invalid_event",
            ..
        }
    ));
    assert_eq!(outcome.http_status(), 200);
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
    assert!(world.audit.entries()[0].needs_attention());
}
