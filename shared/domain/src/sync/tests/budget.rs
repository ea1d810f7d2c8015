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
