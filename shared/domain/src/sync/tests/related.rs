//! Related referrals: Microsoft's side of an engagement updates the partner's opportunity.

use super::*;

#[test]
fn a_related_referral_event_updates_the_partner_side_opportunity() {
    let world = World::new();
    let (own, crm, _) = world.synced_referral();
    world.pc.insert(microsoft_referral());
    let crm_before = world.crm.calls.snapshot();

    let outcome = world.outcome(
        &webhook("related-referral-updated", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(
        stored.opportunity.microsoft_crm_id.as_deref(),
        Some("7-3FHL2QZ9X")
    );
    let audit = stored.audit.unwrap();
    assert!(
        audit.contains("Microsoft's referral is Active/Accepted") && audit.contains("7-3FHL2QZ9X"),
        "{audit}"
    );
    assert_eq!(
        stored.opportunity.deal_value,
        Some(usd(50_000)),
        "nothing else is touched"
    );
    assert_eq!(world.pc.calls.get("list_referrals"), 1);
    assert_eq!(
        world.crm_calls(),
        crm_before.values().sum::<usize>() + 1,
        "one CRM write"
    );
    let last = world.audit.entries().pop().unwrap();
    assert_eq!(last.event, AuditEvent::Updated);
    assert_eq!(
        last.referral_id,
        Some(own),
        "audited on the partner's referral"
    );
}

#[test]
fn a_related_referral_event_naming_the_partners_own_referral_finds_microsofts_side() {
    let world = World::new();
    let (_, crm, _) = world.synced_referral();
    let mut microsoft = microsoft_referral();
    microsoft.external_reference_id = None;
    microsoft
        .extra
        .insert("MsxId".into(), json!("7-MSX-FROM-MEMBER"));
    microsoft.status = Some(ReferralStatus::Closed);
    microsoft.substatus = Some(ReferralSubstatus::Declined);
    world.pc.insert(microsoft);

    let outcome = world.outcome(
        &webhook("related-referral-updated", REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(
        stored.opportunity.microsoft_crm_id.as_deref(),
        Some("7-MSX-FROM-MEMBER")
    );
    assert!(stored.audit.unwrap().contains("Closed/Declined"));
}

#[test]
fn another_partners_external_reference_is_not_taken_for_microsofts_crm_id() {
    let world = World::new();
    let (_, crm, _) = world.synced_referral();
    let mut other = microsoft_referral();
    other.organization_name = Some("Northwind Traders".into());
    other.external_reference_id = Some("northwind-crm-42".into());
    world.pc.insert(other);

    let outcome = world.outcome(
        &webhook("related-referral-created", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(stored.opportunity.microsoft_crm_id, None);
    assert!(
        stored
            .audit
            .unwrap()
            .contains("The other organization's referral is Active/Accepted")
    );
    assert_eq!(world.crm.calls.get("write_audit"), 1);
}

#[test]
fn a_related_referral_of_an_unlinked_engagement_is_ignored() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.pc.insert(microsoft_referral());

    let outcome = world.outcome(
        &webhook("related-referral-created", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.crm_calls(), 0);
}
