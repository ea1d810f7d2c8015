//! The sync core within the daily API budget: the calls a sync makes are settled per service.

use super::*;
use crate::budget::{Budget, BudgetPolicy, Metered, handle_partner_center_event_within_budget};
use crate::in_memory::InMemoryApiBudget;
use crate::ports::{ApiBudget, ApiService, CrmStore, PartnerCenter, ServiceCalls};

#[test]
fn metered_ports_count_each_call_as_one_request_of_their_service() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    let pc = Metered::new(&world.pc);
    let crm = Metered::new(&world.crm);

    block_on(pc.get_referral(&id)).unwrap();
    block_on(crm.find_account("Contoso", None)).unwrap();
    block_on(crm.find_contact_by_email("someone@contoso.com")).unwrap();

    assert_eq!(pc.made(), ServiceCalls::of(ApiService::PartnerCenter, 1));
    assert_eq!(crm.made(), ServiceCalls::of(ApiService::Dataverse, 2));
    assert_eq!(pc.calls() + crm.calls(), 3);
}

#[test]
fn a_webhook_sync_settles_the_calls_it_made_per_service() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let counter = InMemoryApiBudget::new();
    let policy = BudgetPolicy::default();
    let budget = Budget {
        counter: &counter,
        policy: &policy,
    };
    let now = at(100);
    let event = webhook("referral-created", REFERRAL, at(1));

    let handled = block_on(handle_partner_center_event_within_budget(
        &world.deps(),
        budget,
        &event,
        &World::delivery(now),
    ))
    .unwrap();

    assert!(
        matches!(handled.outcome, Outcome::Created { .. }),
        "{handled:?}"
    );
    let day = now.date_naive();
    let made = block_on(counter.used_by_service(day)).unwrap();
    assert_eq!(
        made,
        ServiceCalls {
            partner_center: u64::try_from(world.pc_calls()).unwrap(),
            dataverse: u64::try_from(world.crm_calls()).unwrap(),
            salesforce: 0,
        }
    );
    assert!(made.partner_center > 0 && made.dataverse > 0, "{made:?}");
    // The reservation was replaced by the calls made: the total is their sum.
    assert_eq!(block_on(counter.used(day)).unwrap(), made.total());
    assert_eq!(
        counter.calls().get("record"),
        2,
        "the reservation and one settle"
    );
}

#[test]
fn a_combined_find_and_write_are_charged_one_request_each() {
    let world = World::new();
    world.crm.combine();
    world.pc.insert(co_sell_referral());
    let counter = InMemoryApiBudget::new();
    let policy = BudgetPolicy::default();
    let budget = Budget {
        counter: &counter,
        policy: &policy,
    };
    let now = at(100);

    let handled = block_on(handle_partner_center_event_within_budget(
        &world.deps(),
        budget,
        &webhook("referral-created", REFERRAL, at(1)),
        &World::delivery(now),
    ))
    .unwrap();

    assert!(
        matches!(handled.outcome, Outcome::Created { .. }),
        "{handled:?}"
    );
    let made = block_on(counter.used_by_service(now.date_naive())).unwrap();
    // The fake combines as Salesforce does: its two combined requests are charged as
    // Composite requests, one API call each.
    assert_eq!(made.salesforce, 2, "{made:?}");
    assert_eq!(made.dataverse, 0, "{made:?}");
    assert_eq!(world.crm_calls(), 2);
}

#[test]
fn a_crm_without_combined_requests_is_charged_each_plain_request() {
    let world = World::new();
    let crm = Metered::new(&world.crm);
    let account = crate::opportunity::Account {
        name: Some("Contoso".into()),
        ..Default::default()
    };

    let found = block_on(crm.find_customer(Some(("  Contoso ", None)), Some(" "))).unwrap();
    assert_eq!(found, crate::ports::FoundCustomer::default());
    assert_eq!(
        crm.made(),
        ServiceCalls::of(ApiService::Dataverse, 1),
        "no email to look for"
    );
    let referral = ReferralId::try_from(REFERRAL).unwrap();
    let opportunity = crate::opportunity::Opportunity::default();
    let write = crate::ports::OpportunityWrite {
        referral_id: &referral,
        record: None,
        opportunity: &opportunity,
        account: None,
        contact: None,
        new_account: Some(&account),
        new_contact: None,
        audit: None,
        scope: crate::mapping::BodyScope::Create,
        if_match: None,
    };
    let upserted = block_on(crm.upsert_opportunity(&write)).unwrap();

    assert_eq!(crm.made(), ServiceCalls::of(ApiService::Dataverse, 3));
    assert_eq!(world.crm.calls.get("create_account"), 1);
    assert_eq!(
        world.crm.stored(&upserted.id).account,
        Some(lock(&world.crm.state).accounts[0].0.clone())
    );
}
