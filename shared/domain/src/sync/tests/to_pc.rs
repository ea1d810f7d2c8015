//! CRM → Partner Center against the same fakes as Partner Center → CRM.

use super::*;
use crate::mapping::MappingConfig;
use crate::opportunity::{AssistanceRequest, OpportunityField, RejectedValue};
use crate::ports::SyncDirection;
use crate::status::ReferralState;

const CONNECTOR_USER: &str = "9b1e6c7a-0000-4000-8000-00000000c0de";
const SELLER: &str = "3f0c1d2e-0000-4000-8000-0000000005e1";
const LINK_TEMPLATE: &str = "https://partner.microsoft.com/dashboard/referrals/v2/{id}";

/// A co-sell opportunity a seller keeps in the CRM, ready to share.
fn seller_opportunity() -> Opportunity {
    Opportunity {
        name: Some("Fabrikam rollout".into()),
        deal_value: Some(usd(25_000)),
        closing_date: NaiveDate::from_ymd_opt(2027, 9, 30),
        notes: Some("Phase 1".into()),
        stage: Some(OpportunityStage::Active),
        account: Account {
            name: Some("Fabrikam Customer".into()),
            city: Some("Oslo".into()),
            postal_code: Some("0150".into()),
            country: Some(crate::values::CountryCode::try_from("NO").unwrap()),
            ..Account::default()
        },
        contact: Some(Contact {
            first_name: Some("Kari".into()),
            last_name: Some("Nordmann".into()),
            email: Some("kari@fabrikam.example".into()),
            phone: None,
        }),
        solutions: vec![crate::ids::SolutionId::try_from("SOL-34104-EBB").unwrap()],
        help: Some(AssistanceRequest::ProofOfConceptOrDemo),
        visible_to_microsoft: true,
        sync: true,
        ..Opportunity::default()
    }
}

impl World {
    fn to_pc() -> Self {
        let mut world = Self::new();
        world.settings.crm_connector_user_id = Some(CONNECTOR_USER.into());
        world.mapping.referral_link_template = Some(LINK_TEMPLATE.into());
        world
    }

    /// The record as the CRM holds it now.
    fn crm_read(&self, record: &CrmRecordId) -> CrmOpportunity {
        self.crm.read(record, &self.crm.stored(record))
    }

    /// A seller's edit of the record in the CRM.
    fn crm_edit(&self, record: &CrmRecordId, change: impl FnOnce(&mut Opportunity)) {
        let mut state = lock(&self.crm.state);
        let stored = state.opportunities.get_mut(record).unwrap();
        change(&mut stored.opportunity);
        // A save is a new row version.
        stored.version += 1;
    }

    /// The Dataverse webhook of operation `operation` on `record`, carrying the record.
    fn crm_change(&self, record: &CrmRecordId, operation: u32, writer: &str) -> CrmChange {
        CrmChange {
            key: dataverse_change_key(&format!("op-{operation}"), record).unwrap(),
            record: record.clone(),
            writer: Some(writer.into()),
            opportunity: Some(self.crm_read(record)),
            modified_at: None,
            sent_image: None,
        }
    }

    fn sync_crm(&self, change: &CrmChange, now: DateTime<Utc>) -> Outcome {
        let handled = block_on(handle_crm_change(
            &self.deps(),
            change,
            &Self::delivery(now),
        ))
        .unwrap();
        assert!(handled.warnings.is_empty(), "{:?}", handled.warnings);
        handled.outcome
    }

    /// A seller's opportunity shared to Partner Center once; returns the record and the
    /// referral.
    fn shared(&self, opportunity: Opportunity) -> (CrmRecordId, ReferralId) {
        let record = self.crm.seed(opportunity);
        let outcome = self.sync_crm(&self.crm_change(&record, 1, SELLER), at(100));
        assert_eq!(
            outcome,
            Outcome::Created {
                crm: record.clone()
            }
        );
        let referral = self.crm.stored(&record).opportunity.referral_id.unwrap();
        (record, referral)
    }

    fn crm_audit(&self, record: &CrmRecordId) -> String {
        self.crm.stored(record).audit.unwrap_or_default()
    }

    fn patches(&self) -> Vec<SentPatch> {
        lock(&self.pc.patches).clone()
    }

    /// The referrals of deals (the invitations of Microsoft left out).
    fn deal_referrals(&self) -> usize {
        lock(&self.pc.referrals)
            .values()
            .filter(|r| !crate::mapping::invites_microsoft(r))
            .count()
    }

    /// The CRM writes made so far (opportunity upserts and Audit texts).
    fn crm_writes(&self) -> usize {
        self.crm.calls.get("upsert_opportunity") + self.crm.calls.get("write_audit")
    }

    /// The referral is closed as won, and the link says the close was sent.
    fn assert_closed_as_won(&self, id: ReferralId) {
        assert_eq!(
            self.pc.referral(id).state(),
            Some(ReferralState::closed(ReferralSubstatus::Won))
        );
        assert_eq!(
            self.links.link(&id).unwrap().last_stage_to_pc,
            Some(OpportunityStage::Won)
        );
    }

    /// The id of the deal's referral (not an invitation) made from `record`.
    fn deal_referral(&self, record: &CrmRecordId) -> ReferralId {
        lock(&self.pc.referrals)
            .values()
            .find(|r| r.external_reference_id.as_deref() == Some(record.native().as_str()))
            .and_then(|r| r.referral_id().ok())
            .expect("the deal's referral")
    }

    /// The partner's invitations of Microsoft.
    fn invitations(&self) -> Vec<Referral> {
        lock(&self.pc.referrals)
            .values()
            .filter(|r| crate::mapping::invites_microsoft(r))
            .cloned()
            .collect()
    }
}

fn paths(ops: &[PatchOp]) -> Vec<&str> {
    ops.iter().map(|op| op.path.as_str()).collect()
}

#[test]
fn turning_sync_on_creates_exactly_one_referral_and_writes_its_id_and_link_back_to_the_crm() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());

    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));

    assert_eq!(
        outcome,
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(
        world.pc.calls.get("create_referral"),
        2,
        "the deal's referral and, help being asked for, the invitation of Microsoft"
    );
    assert_eq!(world.pc_calls(), 2, "two POSTs, nothing else");
    let stored = world.crm.stored(&record).opportunity;
    let id = stored.referral_id.expect("referral id written back");
    assert_eq!(
        stored.referral_link.as_deref(),
        Some(LINK_TEMPLATE.replace("{id}", &id.to_string()).as_str())
    );
    assert_eq!(
        world.crm.calls.get("upsert_opportunity"),
        1,
        "one write-back"
    );
    let audit = world.crm_audit(&record);
    assert!(
        audit.ends_with(&format!("Created Partner Center referral {id}")),
        "{audit}"
    );

    let referral = world.pc.referral(id);
    assert_eq!(referral.name.as_deref(), Some("Fabrikam rollout"));
    assert_eq!(referral.external_reference_id, Some(record.native()));
    assert_eq!(referral.state(), Some(ReferralState::accepted()));
    let details = referral.details.as_ref().unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(25_000)));
    assert_eq!(details.currency.as_deref(), Some("USD"));

    let invitations = world.invitations();
    assert_eq!(invitations.len(), 1);
    let invitation = &invitations[0];
    assert_eq!(invitation.engagement_id, referral.engagement_id);
    assert_eq!(
        invitation.external_reference_id, None,
        "not linked to the opportunity"
    );
    assert_eq!(invitation.target.len(), 1);
    assert_eq!(
        invitation.target[0].target_type,
        Some(crate::referral::TargetType::BusinessProfileLocation)
    );
    assert_eq!(invitation.name, referral.name);

    let link = world.links.link(&id).unwrap();
    assert_eq!(link.crm, record);
    assert!(link.microsoft_invited);
    assert_eq!(link.last_referral_etag, referral.etag());
    assert_eq!(
        link.last_fingerprint_to_pc,
        Some(seller_opportunity().fingerprint())
    );
    assert_eq!(link.last_stage_to_pc, Some(OpportunityStage::Active));
    assert_eq!(
        world.audit_events(),
        vec![
            AuditEvent::Received,
            AuditEvent::Created,
            AuditEvent::WrittenBack
        ]
    );
    assert!(
        world
            .audit
            .entries()
            .iter()
            .all(|e| e.direction == Some(SyncDirection::ToPartnerCenter)
                && e.crm.as_ref() == Some(&record))
    );

    // The referral-created event our POST raises is our own echo: no CRM call.
    let crm_calls = world.crm_calls();
    let echo = world.outcome(
        &webhook("referral-created", &id.to_string(), at(1)),
        at(101),
    );
    assert_eq!(echo, Outcome::EchoSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    // So is the invitation's: ignored, never an opportunity of its own.
    let invitation_id = invitation.referral_id().unwrap();
    let ignored = world.outcome(
        &webhook("referral-created", &invitation_id.to_string(), at(2)),
        at(102),
    );
    assert!(matches!(ignored, Outcome::Ignored { .. }), "{ignored:?}");
    assert_eq!(world.crm_calls(), crm_calls);
}

#[test]
fn a_duplicate_crm_delivery_makes_no_partner_center_call() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    let change = world.crm_change(&record, 1, SELLER);
    world.sync_crm(&change, at(100));
    let (pc, crm) = (world.pc_calls(), world.crm_calls());

    for n in 0..3 {
        assert_eq!(
            world.sync_crm(&change, at(101 + n)),
            Outcome::DuplicateSkipped
        );
    }

    assert_eq!(world.pc_calls(), pc);
    assert_eq!(world.crm_calls(), crm);
    assert_eq!(world.deal_referrals(), 1);
    assert_eq!(world.invitations().len(), 1);
}

#[test]
fn our_own_write_back_coming_back_from_the_crm_makes_no_partner_center_call() {
    let world = World::to_pc();
    let (record, _) = world.shared(seller_opportunity());
    let (pc, idempotency) = (world.pc_calls(), world.idempotency.calls().total());

    // The write-back's webhook, written by the connector's user (GUID in another case).
    let echo = world.crm_change(&record, 2, &CONNECTOR_USER.to_uppercase());
    let outcome = world.sync_crm(&echo, at(110));

    assert_eq!(outcome, Outcome::EchoSkipped);
    assert_eq!(world.pc_calls(), pc);
    assert_eq!(
        world.idempotency.calls().total(),
        idempotency,
        "not even a key"
    );
    assert_eq!(world.audit_events().last(), Some(&AuditEvent::EchoSkipped));
}

#[test]
fn a_change_whose_fingerprint_was_already_sent_makes_no_partner_center_call() {
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    let pc = world.pc_calls();

    // A Salesforce-style change without a known writer: only the ids changed (the write-back),
    // or a field outside the mapping.
    let mut change = world.crm_change(&record, 2, SELLER);
    change.writer = None;
    let outcome = world.sync_crm(&change, at(110));

    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.pc_calls(), pc);
    assert_eq!(
        world.audit_events().last(),
        Some(&AuditEvent::UnchangedSkipped)
    );
    assert_eq!(world.links.link(&id).unwrap().crm, record);
}

#[test]
fn an_update_patches_only_the_changed_fields_with_if_match() {
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    let before = world.pc.referral(id);
    world.crm_edit(&record, |o| {
        o.deal_value = Some(usd(30_000));
        o.notes = Some("Phase 1 and 2".into());
        o.account.city = Some("Bergen".into()); // not an update field
    });

    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    let patches = world.patches();
    assert_eq!(patches.len(), 1);
    let (patched, if_match, ops) = &patches[0];
    assert_eq!(*patched, id);
    assert_eq!(
        if_match,
        &before.etag(),
        "If-Match the eTag the link holds, the referral's"
    );
    assert_eq!(paths(ops), ["/details/dealValue", "/details/notes"]);
    assert!(
        ops.iter()
            .all(|op| op.op == crate::referral::PatchOperation::Replace)
    );
    assert_eq!(
        world.pc.calls.get("get_referral"),
        0,
        "planned against the referral the link holds, not read again"
    );
    assert_eq!(
        world.pc.calls.get("create_referral"),
        2,
        "only the first (and its invitation of Microsoft)"
    );
    let after = world.pc.referral(id);
    let details = after.details.as_ref().unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(30_000)));
    assert_eq!(details.notes.as_deref(), Some("Phase 1 and 2"));
    // The Audit column still says the record is in sync with its referral: not rewritten.
    assert!(
        world
            .crm_audit(&record)
            .ends_with(&format!("Created Partner Center referral {id}"))
    );
    let link = world.links.link(&id).unwrap();
    assert_eq!(link.last_referral_etag, after.etag());
    assert_eq!(
        link.last_fingerprint_to_pc,
        Some(world.crm.stored(&record).opportunity.fingerprint())
    );

    // The referral-updated event our PATCH raises is our own echo, known without a read: the
    // PATCH's answer gave the link the referral's updatedDateTime.
    let crm_calls = world.crm_calls();
    let reads = world.pc.calls.get("get_referral");
    let changed = after.updated().unwrap();
    let echo = world.outcome(
        &webhook("referral-updated", &id.to_string(), changed),
        at(111),
    );
    assert_eq!(echo, Outcome::EchoSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(world.pc.calls.get("get_referral"), reads);
}

fn assert_no_conflict_audited(world: &World) {
    let events = world.audit_events();
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, AuditEvent::ConflictResolved { .. })),
        "{events:?}"
    );
}

/// Partner Center starts a deal the partner creates as Active/Accepted, whatever stage the
/// record was at (a Salesforce opportunity at the on-hold stage "Prospecting", say). That is
/// Partner Center's rule, not an edit on both sides: the seller's next update is no conflict,
/// and the CRM takes the accepted stage once, audited as an update.
#[test]
fn a_deal_created_from_a_record_on_hold_takes_partner_centers_accepted_stage_without_a_conflict() {
    let world = World::to_pc();
    let (record, id) = world.shared(Opportunity {
        stage: Some(OpportunityStage::OnHold),
        ..seller_opportunity()
    });
    assert_eq!(
        world.pc.referral(id).status,
        Some(ReferralStatus::Active),
        "a deal the partner creates starts accepted"
    );
    assert_eq!(
        world.crm.stored(&record).opportunity.stage,
        Some(OpportunityStage::Active),
        "Partner Center's start reaches the record with the create's write-back"
    );
    assert_eq!(
        world.crm.calls.get("upsert_opportunity"),
        1,
        "that one write"
    );
    world.crm_edit(&record, |o| o.deal_value = Some(usd(30_000)));
    let crm_writes = world.crm_writes();

    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_no_conflict_audited(&world);
    let details = world.pc.referral(id).details.unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(30_000)));
    assert_eq!(
        world.crm.stored(&record).opportunity.stage,
        Some(OpportunityStage::Active)
    );
    assert_eq!(
        world.crm_writes(),
        crm_writes,
        "the stage is agreed: nothing more for the CRM"
    );
    // Both sides now agree: the next update is no conflict either.
    world.crm_edit(&record, |o| o.notes = Some("Phase 2".into()));
    let outcome = world.sync_crm(&world.crm_change(&record, 3, SELLER), at(120));
    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_no_conflict_audited(&world);
}

#[test]
fn a_run_whose_read_is_older_than_what_partner_center_was_sent_is_retried_not_patched() {
    // The simulation's seed 38 (no faults): a run read the record, the seller saved again, and
    // another sync of the record sent that later save to Partner Center before this run read
    // the referral. This run's PATCH, conditional on the referral just read, would have sent
    // the older value over the later one.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.deal_value = Some(usd(30_000)));
    lock(&world.crm.after_read).push_back(Box::new(|o: &mut Opportunity| {
        o.deal_value = Some(usd(40_000));
    }));
    world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(40_000));
    });
    let change = CrmChange {
        opportunity: None,
        ..world.crm_change(&record, 2, SELLER)
    };

    let outcome = world.sync_crm(&change, at(110));

    assert!(
        matches!(outcome, Outcome::RetryEnqueued { .. }),
        "{outcome:?}"
    );
    assert!(world.patches().is_empty(), "the older value is not sent");
    assert_eq!(world.crm.calls.get("get_opportunity"), 2, "read once more");
    // The retry reads the record as it is now: both sides already hold the later save.
    let (job, _) = world.queue.take_all().remove(0);
    world.retry(&job, at(200));
    assert!(world.patches().is_empty());
    let details = world.pc.referral(id).details.unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(40_000)));
    assert_eq!(
        world.crm.stored(&record).opportunity.deal_value,
        Some(usd(40_000))
    );
}

#[test]
fn an_invalid_opportunity_makes_no_partner_center_call_and_its_audit_field_names_the_fix() {
    type Break = fn(&mut CrmOpportunity);
    let cases: [(&str, Break, &str, &str); 3] = [
        (
            "missing solution",
            |c| c.opportunity.solutions.clear(),
            "Solution ID is required",
            "add a solution ID such as \"SOL-34104-EBB\" to msft_microsoftpartnercentersolutions",
        ),
        (
            "bad country",
            |c| {
                c.opportunity.account.country = None;
                c.rejected.push(RejectedValue {
                    field: OpportunityField::Country,
                    crm_field: "address1_country".into(),
                    found: "USA".into(),
                });
            },
            "\"USA\"",
            "to a two-letter code such as \"US\"",
        ),
        (
            "missing contact with help",
            |c| c.opportunity.contact = None,
            "a customer contact is required when Microsoft's help is requested",
            "link a customer contact",
        ),
    ];
    for (case, break_it, reason, fix) in cases {
        let world = World::to_pc();
        let record = world.crm.seed(seller_opportunity());
        let mut change = world.crm_change(&record, 1, SELLER);
        break_it(change.opportunity.as_mut().unwrap());

        let outcome = world.sync_crm(&change, at(100));

        let Outcome::NeedsAttention { code, message } = &outcome else {
            panic!("{case}: {outcome:?}");
        };
        assert_eq!(*code, "invalid_opportunity", "{case}");
        assert!(message.contains(reason), "{case}: {message}");
        assert_eq!(world.pc_calls(), 0, "{case}: no Partner Center call");
        let audit = world.crm_audit(&record);
        assert!(audit.contains("Sync failed:"), "{case}: {audit}");
        assert!(audit.contains(reason), "{case}: {audit}");
        let (_, fixes) = audit.split_once(" Fix: ").unwrap();
        assert!(
            fixes.to_lowercase().contains(&fix.to_lowercase()),
            "{case}: {audit}"
        );
        assert!(!audit.contains("Kari") && !audit.contains("fabrikam.example"));
        assert!(world.links.links().is_empty(), "{case}");
        assert!(
            matches!(world.audit_events().last(), Some(AuditEvent::Failed { .. })),
            "{case}"
        );
    }
}

#[test]
fn a_created_referral_and_its_invitation_of_microsoft_carry_the_taxonomy() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert_eq!(
        outcome,
        Outcome::Created {
            crm: record.clone()
        }
    );
    let id = world.crm.stored(&record).opportunity.referral_id.unwrap();
    let expected = [
        ("solutionArea", "AI Business Solutions"),
        ("solutionPlay", "Copilot and Agents at Work"),
        ("partnerRole", "Advisory"),
    ];
    for sent in [world.pc.referral(id), world.invitations().remove(0)] {
        let json = serde_json::to_value(&sent).unwrap();
        for (member, value) in expected {
            assert_eq!(json[member], value, "{member}: {json}");
        }
    }
}

#[test]
fn a_missing_or_unknown_taxonomy_value_is_refused_before_any_partner_center_call() {
    let allowed = MappingConfig::default().taxonomy.first_allowed();
    type Break = fn(&mut CrmOpportunity);
    let cases: [(&str, Break, &str, &str); 3] = [
        (
            "missing area",
            |c| c.taxonomy.solution_area = None,
            "the Solution Area is missing; Partner Center's referral member \"solutionArea\"",
            "set msft_solutionarea on the opportunity to one of: \"AI Business Solutions\"",
        ),
        (
            "unknown role",
            |c| {
                c.taxonomy.partner_role = None;
                c.rejected.push(RejectedValue {
                    field: OpportunityField::PartnerRole,
                    crm_field: "msft_partnerrole".into(),
                    found: "Reseller".into(),
                });
            },
            "Partner Role \"Reseller\" is not allowed for Partner Center's referral member \
             \"partnerRole\"",
            "set msft_partnerrole on the opportunity to one of: \"Advisory\", \"Implementation\"",
        ),
        (
            "missing play",
            |c| c.taxonomy.solution_play = None,
            "the Solution Play is missing",
            "set msft_solutionplay on the opportunity to one of: \"Copilot and Agents at Work\"",
        ),
    ];
    for (case, break_it, reason, fix) in cases {
        let world = World::to_pc();
        let record = world
            .crm
            .seed_with_taxonomy(seller_opportunity(), allowed.clone());
        let mut change = world.crm_change(&record, 1, SELLER);
        break_it(change.opportunity.as_mut().unwrap());

        let outcome = world.sync_crm(&change, at(100));

        let Outcome::NeedsAttention { code, message } = &outcome else {
            panic!("{case}: {outcome:?}");
        };
        assert_eq!(*code, "invalid_opportunity", "{case}");
        assert!(message.contains(reason), "{case}: {message}");
        assert_eq!(world.pc_calls(), 0, "{case}: no Partner Center call");
        let audit = world.crm_audit(&record);
        assert!(audit.contains(reason), "{case}: {audit}");
        assert!(
            audit.to_lowercase().contains(&fix.to_lowercase()),
            "{case}: {audit}"
        );
        assert!(world.links.links().is_empty(), "{case}");
    }
}

#[test]
fn an_update_of_a_linked_referral_does_not_need_the_taxonomy() {
    let world = World::to_pc();
    let (record, _) = world.shared(seller_opportunity());
    {
        let mut state = lock(&world.crm.state);
        state.opportunities.get_mut(&record).unwrap().taxonomy = Default::default();
    }
    world.crm_edit(&record, |o| o.notes = Some("Phase 2".into()));
    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));
    assert!(matches!(outcome, Outcome::Updated { .. }), "{outcome:?}");
}

#[test]
fn a_referral_id_partner_center_does_not_know_needs_attention() {
    let world = World::to_pc();
    let unknown = ReferralId::try_from("0d6a2d0e-0000-4000-8000-00000000dead").unwrap();
    let record = world.crm.seed(Opportunity {
        referral_id: Some(unknown),
        ..seller_opportunity()
    });

    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));

    let Outcome::NeedsAttention { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "unknown_referral");
    assert!(message.contains(&unknown.to_string()), "{message}");
    assert_eq!(world.pc.calls.get("get_referral"), 1);
    assert_eq!(
        world.pc.calls.get("create_referral") + world.pc.calls.get("patch_referral"),
        0,
        "neither silently re-created nor patched"
    );
    let audit = world.crm_audit(&record);
    assert!(
        audit.contains("msft_microsoftpartnercenterreferralidentifier"),
        "{audit}"
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_referral_in_a_terminal_state_is_never_patched_and_the_audit_says_why() {
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.pc.edit(id, |r| {
        r.status = Some(ReferralStatus::Closed);
        r.substatus = Some(ReferralSubstatus::Lost);
    });
    world.crm_edit(&record, |o| o.notes = Some("Customer came back".into()));

    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));

    let Outcome::NeedsAttention { code, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "terminal_referral");
    // The PATCH planned against the referral the link holds was conditional on its eTag:
    // refused (412), then the referral was read and found closed.
    assert!(world.patches().is_empty(), "never patched");
    let audit = world.crm_audit(&record);
    assert!(audit.contains("terminal state"), "{audit}");
    assert!(audit.contains("/details/notes"), "{audit}");
    assert!(
        audit.contains("Fix: Leave the referral as it is"),
        "{audit}"
    );

    // Found again (a redelivery under another key, reconcile's job): reported once. The Audit
    // column already says it; rewriting it would only change its time and raise a CRM change
    // that reconcile takes up again, a loop of calls.
    let writes = world.crm.calls.get("write_audit");
    let outcome = world.sync_crm(&world.crm_change(&record, 3, SELLER), at(120));
    assert!(
        matches!(outcome, Outcome::NeedsAttention { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        world.crm.calls.get("write_audit"),
        writes,
        "not written again"
    );
    assert_eq!(world.crm_audit(&record), audit);
}

#[test]
fn a_referral_is_closed_as_won_only_when_the_crm_stage_changes_to_won() {
    // An edit that leaves the stage open does not close it.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.notes = Some("Signed".into()));
    world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));
    assert_eq!(paths(&world.patches()[0].2), ["/details/notes"]);
    assert_eq!(
        world.pc.referral(id).state(),
        Some(ReferralState::accepted())
    );

    // An explicit change to Won closes it (a record already won when its referral was
    // created: a_record_closed_before_its_first_sync_closes_its_new_referral_and_stays_closed).
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.stage = Some(OpportunityStage::Won));
    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));
    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(paths(&world.patches()[0].2), ["/status", "/substatus"]);
    world.assert_closed_as_won(id);
}

#[test]
fn a_change_with_sync_off_is_ignored_without_any_call() {
    let world = World::to_pc();
    let record = world.crm.seed(Opportunity {
        sync: false,
        ..seller_opportunity()
    });

    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
    assert_eq!(world.idempotency.calls().total(), 0);
    assert!(world.audit.entries().is_empty());

    // A body too large to carry the record: read once, still no Partner Center call.
    let mut change = world.crm_change(&record, 2, SELLER);
    change.opportunity = None;
    let outcome = world.sync_crm(&change, at(101));
    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.crm.calls.get("get_opportunity"), 1);
    assert_eq!(world.pc_calls(), 0);
}

#[test]
fn a_partner_center_outage_enqueues_a_retry_of_the_crm_record() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    world.pc.fail_next(
        "create_referral",
        transient(Service::PartnerCenter, Some(45)),
    );
    let change = world.crm_change(&record, 1, SELLER);

    let outcome = world.sync_crm(&change, at(100));

    assert_eq!(
        outcome,
        Outcome::RetryEnqueued {
            attempt: 1,
            delay: Duration::from_secs(45)
        }
    );
    let jobs = world.queue.jobs();
    assert_eq!(jobs.len(), 1);
    let (job, _) = &jobs[0];
    assert_eq!(job.source, RetrySource::Dataverse);
    assert_eq!(job.key, change.key.as_str());
    assert_eq!(job.payload["record"], json!(record));
    let payload = job.payload.to_string();
    assert!(
        !payload.contains("kari") && !payload.contains("Kari"),
        "no contact data on the queue: {payload}"
    );
    assert_eq!(
        world.idempotency.record(&change.key).unwrap().status,
        IdempotencyStatus::Completed
    );
    assert!(world.crm.stored(&record).opportunity.referral_id.is_none());
}

#[test]
fn a_dataverse_change_whose_first_invocation_died_is_synced_by_its_follow_up() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    let change = world.crm_change(&record, 1, SELLER);
    // The first invocation took the change and died (a killed instance): the key stays held
    // until its deadline. Dataverse's one retry finds it held, and will not deliver again.
    world.idempotency.insert(IdempotencyRecord {
        key: change.key.clone(),
        status: IdempotencyStatus::InProgress,
        expires_at: at(100 + 3600),
        in_progress_until: Some(at(125)),
        response: None,
        payload_hash: None,
    });

    assert_eq!(world.sync_crm(&change, at(100)), Outcome::InProgress);
    assert_eq!(world.deal_referrals(), 0);

    // Its follow-up, delivered by the queue after the holder's deadline, creates the referral.
    let (job, delay) = world.queue.take_all().remove(0);
    assert_eq!((job.key.as_str(), job.attempt), (change.key.as_str(), 0));
    assert!(delay >= std::time::Duration::from_secs(25), "{delay:?}");
    assert_eq!(
        world.retry(&job, at(140)),
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(world.deal_referrals(), 1);
    assert!(world.crm.stored(&record).opportunity.referral_id.is_some());
}

#[test]
fn a_replayed_crm_retry_job_creates_the_referral_once() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    world
        .pc
        .fail_next("create_referral", transient(Service::PartnerCenter, None));
    world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    let (job, _) = world.queue.take_all().remove(0);

    let first = world.retry(&job, at(130));
    let replay = world.retry(&job, at(131));

    assert_eq!(
        first,
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(replay, Outcome::DuplicateSkipped);
    assert_eq!(world.deal_referrals(), 1);
    assert_eq!(world.invitations().len(), 1);
    assert_eq!(
        world.pc.calls.get("create_referral"),
        3,
        "the failed one, the retry and its invitation"
    );
    assert_eq!(
        world.crm.calls.get("get_opportunity"),
        1,
        "the retry re-reads"
    );
    assert!(world.crm.stored(&record).opportunity.referral_id.is_some());
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_failed_write_back_is_finished_by_the_retry_without_a_second_referral() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));

    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    let (job, _) = world.queue.take_all().remove(0);

    let retried = world.retry(&job, at(130));

    assert_eq!(retried, Outcome::UnchangedSkipped);
    assert_eq!(
        world.pc.calls.get("create_referral"),
        2,
        "the deal's referral once, and the invitation the first run did not get to"
    );
    assert_eq!(world.deal_referrals(), 1);
    assert_eq!(world.invitations().len(), 1);
    assert!(world.links.links()[0].microsoft_invited);
    let referral = world.links.links()[0].referral_id;
    assert_eq!(
        world.crm.stored(&record).opportunity.referral_id,
        Some(referral)
    );
}

#[test]
fn a_crm_retry_job_without_a_record_needs_attention() {
    let world = World::to_pc();
    let job = RetryJob {
        source: RetrySource::Salesforce,
        key: "sf:04l000000000001".into(),
        attempt: 1,
        payload: json!({ "record": "dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c" }),
    };

    let outcome = world.retry(&job, at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "invalid_retry_job",
            ..
        }
    ));
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
}

#[test]
fn connector_writes_are_recognised_by_user_id() {
    let mut settings = SyncSettings {
        crm_connector_user_id: Some(CONNECTOR_USER.into()),
        ..SyncSettings::default()
    };
    assert!(settings.is_connector_write(Some(&CONNECTOR_USER.to_uppercase())));
    assert!(settings.is_connector_write(Some(&format!("{{{CONNECTOR_USER}}}"))));
    assert!(!settings.is_connector_write(Some(SELLER)));
    assert!(!settings.is_connector_write(None));
    settings.crm_connector_user_id = Some("005Ab0000000001".into());
    assert!(settings.is_connector_write(Some("005Ab0000000001AAA")));
    assert!(settings.is_connector_write(Some(" 005Ab0000000001 ")));
    assert!(
        !settings.is_connector_write(Some("005AB0000000001")),
        "15 characters: case counts"
    );
    assert!(!settings.is_connector_write(Some("005Ab0000000002AAA")));
    settings.crm_connector_user_id = None;
    assert!(!settings.is_connector_write(Some(CONNECTOR_USER)));
}

#[test]
fn crm_change_keys_follow_the_documented_forms() {
    let record = CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap();
    assert_eq!(
        dataverse_change_key("0a1b", &record).unwrap().as_str(),
        "dv:0a1b:6d81597f-0f9f-e711-8122-000d3aa2331c"
    );
    assert!(dataverse_change_key(" ", &record).is_err());
    assert_eq!(
        salesforce_change_key("04l000000000001AAA")
            .unwrap()
            .as_str(),
        "sf:04l000000000001AAA"
    );
}

#[test]
fn the_crm_handler_and_its_retry_are_send() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    let deps = world.deps();
    let meta = World::delivery(at(100));
    let change = world.crm_change(&record, 1, SELLER);
    let handled = block_on(assert_send(handle_crm_change(&deps, &change, &meta)));
    assert!(matches!(handled.unwrap().outcome, Outcome::Created { .. }));
    let job = RetryJob {
        source: RetrySource::Dataverse,
        key: change.key.to_string(),
        attempt: 1,
        payload: json!({ "record": record }),
    };
    let retried = block_on(assert_send(run_retry_job(&deps, &job, &meta)));
    assert_eq!(retried.unwrap().outcome, Outcome::UnchangedSkipped);
}

#[test]
fn a_deal_without_help_asked_is_independent_and_invites_nobody() {
    let world = World::to_pc();
    let record = world.crm.seed(Opportunity {
        help: None,
        ..seller_opportunity()
    });
    world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert_eq!(world.pc.calls.get("create_referral"), 1);
    assert!(world.invitations().is_empty());
    assert!(!world.links.links()[0].microsoft_invited);
}

#[test]
fn a_failed_invitation_is_sent_once_by_the_retry() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    // The deal's referral is created; the invitation of Microsoft meets an outage.
    world.pc.fail_after(
        "create_referral",
        1,
        transient(Service::PartnerCenter, None),
    );
    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(world.deal_referrals(), 1);
    assert!(world.invitations().is_empty());
    assert!(!world.links.links()[0].microsoft_invited);

    let (job, _) = world.queue.take_all().remove(0);
    assert_eq!(world.retry(&job, at(130)), Outcome::UnchangedSkipped);
    assert_eq!(world.deal_referrals(), 1, "no second deal referral");
    assert_eq!(world.invitations().len(), 1);
    assert!(world.links.links()[0].microsoft_invited);

    // A later change of the deal does not look for the invitation again.
    let lists = world.pc.calls.get("list_referrals");
    world.crm_edit(&record, |o| o.notes = Some("Phase 2".into()));
    world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));
    assert_eq!(world.pc.calls.get("list_referrals"), lists);
    assert_eq!(world.invitations().len(), 1);
}

#[test]
fn an_invitation_sent_before_the_link_knew_it_is_not_sent_again() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    // A link stored before invitations were tracked.
    let mut link = world.links.links()[0].clone();
    link.microsoft_invited = false;
    world.links.insert(link);

    world.crm_edit(&record, |o| o.notes = Some("Phase 2".into()));
    world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));
    assert_eq!(
        world.invitations().len(),
        1,
        "found in the engagement, not re-sent"
    );
    assert_eq!(world.pc.calls.get("create_referral"), 2);
    assert!(world.links.links()[0].microsoft_invited);
}

#[test]
fn a_create_whose_answer_was_lost_is_found_by_the_retry_not_made_twice() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    lock(&world.pc.lost_answers).push_back(transient(Service::PartnerCenter, None));
    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(world.deal_referrals(), 1, "Partner Center stored it");
    assert!(world.links.links().is_empty(), "but the run did not know");

    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert_eq!(
        retried,
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(world.deal_referrals(), 1, "found, not created again");
    assert_eq!(world.invitations().len(), 1);
    let link = &world.links.links()[0];
    assert_eq!(
        world.crm.stored(&record).opportunity.referral_id,
        Some(link.referral_id)
    );
    assert!(link.microsoft_invited);
    assert_eq!(
        world.pc.calls.get("create_referral"),
        2,
        "the lost one and the invitation"
    );
}

/// The retry searches the referrals changed since the record's first delivery (less a small
/// clock skew), in pages by `updatedDateTime`: busy Partner Center tenants change thousands of
/// referrals in the minutes before, which it does not page through (the 10,000-change soak left
/// creates unconfirmed when the skew was 15 minutes and 20 pages).
#[test]
fn a_create_whose_answer_was_lost_is_found_among_thousands_of_referrals_changed_before_it() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    // 2,500 referrals changed by others in the 15 minutes before the create.
    for n in 0..2_500_i64 {
        let mut referral = co_sell_referral();
        referral.id = Some(
            uuid::Uuid::from_u128(0xb05e_0000_0000_4000_8000_0000_0000_0000 + n as u128)
                .to_string(),
        );
        world.pc.insert_at(
            referral,
            at(10_000 - 900) + chrono::Duration::milliseconds(n * 360),
        );
    }
    world.pc.set_clock(at(10_000));
    lock(&world.pc.lost_answers).push_back(transient(Service::PartnerCenter, None));
    let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(10_000));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    let lists = world.pc.calls.get("list_referrals");

    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(10_300));

    assert_eq!(
        retried,
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(world.deal_referrals(), 2_501, "found, not created again");
    let pages = world.pc.calls.get("list_referrals") - lists;
    assert!(pages <= 5, "{pages} pages read");
}

/// The seller saves the record while the create's answer is lost: the retry adopts the
/// referral (made from the earlier read) and merges the save into it in the same run, rather
/// than leaving the sides apart until some later change (simulation seed 1041).
#[test]
fn a_save_made_while_a_create_answer_was_lost_reaches_the_adopted_referral() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    lock(&world.pc.lost_answers).push_back(transient(Service::PartnerCenter, None));
    world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    world.crm_edit(&record, |o| o.deal_value = Some(usd(31_000)));

    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));

    assert_eq!(
        retried,
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(world.deal_referrals(), 1, "adopted, not created again");
    let link = &world.links.links()[0];
    let referral = world.pc.referral(link.referral_id);
    assert_eq!(
        referral.details.unwrap().deal_value,
        Some(Decimal::from(31_000)),
        "the seller's save reached Partner Center"
    );
    assert_eq!(
        world.crm.stored(&record).opportunity.referral_id,
        Some(link.referral_id)
    );
}

#[test]
fn a_retried_create_that_never_reached_partner_center_creates_the_referral_once() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    world
        .pc
        .fail_next("create_referral", transient(Service::PartnerCenter, None));
    world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));
    assert_eq!(world.deal_referrals(), 0);
    let (job, _) = world.queue.take_all().remove(0);
    assert_eq!(
        world.retry(&job, at(400)),
        Outcome::Created {
            crm: record.clone()
        }
    );
    assert_eq!(world.deal_referrals(), 1);
    assert_eq!(
        world.pc.calls.get("list_referrals"),
        1,
        "one look for an earlier create"
    );
}

#[test]
fn a_record_whose_referral_another_delivery_is_creating_is_retried_not_created_twice() {
    let world = World::to_pc();
    let record = world.crm.seed(seller_opportunity());
    // The Create webhook's run holds the lock on creating the referral when the Update's
    // arrives: no POST, it runs again later.
    let held = crate::ports::IdempotencyKey::new("create", &record.to_string()).unwrap();
    block_on(crate::ports::IdempotencyStore::acquire(
        &world.idempotency,
        &held,
        at(99),
        at(300),
    ))
    .unwrap();
    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(world.pc.calls.get("create_referral"), 0);

    block_on(crate::ports::IdempotencyStore::release(
        &world.idempotency,
        &held,
    ))
    .unwrap();
    assert!(matches!(
        world.sync_crm(&world.crm_change(&record, 1, SELLER), at(101)),
        Outcome::Created { .. }
    ));
    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert!(!matches!(retried, Outcome::Created { .. }), "{retried:?}");
    assert_eq!(world.deal_referrals(), 1);
}

/// A Microsoft referral synced to the CRM while New (the opportunity on hold), then changed
/// by the seller in the CRM before anyone accepted it; the outcome of that change's sync. The
/// patches sent before (the CRM id written into the referral) are forgotten.
fn held_change(world: &World) -> (ReferralId, CrmRecordId, Outcome) {
    let (id, record, _) = world.synced_referral();
    lock(&world.pc.patches).clear();
    assert_eq!(
        world.crm.stored(&record).opportunity.stage,
        Some(OpportunityStage::OnHold)
    );
    world.crm_edit(&record, |o| {
        o.deal_value = Some(usd(60_000));
        o.notes = Some("Supply chain, phase 2".into());
    });
    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));
    (id, record, outcome)
}

#[test]
fn a_sellers_change_to_a_referral_not_yet_accepted_is_held_and_the_audit_field_says_to_accept_it_first()
 {
    let world = World::to_pc();
    let (id, record, outcome) = held_change(&world);

    assert_eq!(
        outcome,
        Outcome::HeldUntilAccepted {
            crm: record.clone()
        }
    );
    assert_eq!(outcome.log_name(), "held_until_accepted");
    assert!(world.patches().is_empty(), "{:?}", world.patches());
    let Some(AuditEvent::HeldUntilAccepted { reason, fix }) = world.audit_events().pop() else {
        panic!("{:?}", world.audit_events());
    };
    assert!(
        reason.contains("dealValue") && reason.contains("notes") && reason.contains("not accepted"),
        "{reason}"
    );
    assert!(
        fix.contains("Accept the referral first")
            && fix.contains("In Progress")
            && fix.contains("sent"),
        "{fix}"
    );
    let audit = world.crm_audit(&record);
    assert!(
        audit.contains("Change not sent yet") && audit.contains("Fix: Accept the referral first"),
        "{audit}"
    );
    assert!(!audit.contains("No mapped field changed"), "{audit}");
    let link = world.links.link(&id).unwrap();
    assert_ne!(
        link.last_fingerprint_to_pc,
        Some(world.crm.stored(&record).opportunity.fingerprint()),
        "the held change does not count as sent"
    );
}

#[test]
fn a_held_change_is_sent_with_the_acceptance_when_the_seller_moves_the_opportunity_to_in_progress()
{
    let world = World::to_pc();
    let (id, record, _) = held_change(&world);

    world.crm_edit(&record, |o| o.stage = Some(OpportunityStage::Active));
    let outcome = world.sync_crm(&world.crm_change(&record, 3, SELLER), at(120));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    let patches = world.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        paths(&patches[0].2),
        [
            "/details/dealValue",
            "/details/notes",
            "/status",
            "/substatus"
        ]
    );
    let referral = world.pc.referral(id);
    assert_eq!(referral.status, Some(ReferralStatus::Active));
    let details = referral.details.as_ref().unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(60_000)));
    assert_eq!(details.notes.as_deref(), Some("Supply chain, phase 2"));
}

#[test]
fn a_held_change_is_sent_by_the_next_sync_once_the_referral_is_accepted_in_partner_center() {
    let world = World::to_pc();
    let (id, record, first) = held_change(&world);
    assert_ne!(
        first,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert!(world.patches().is_empty(), "{:?}", world.patches());

    // Accepted in Partner Center; the record's change is synced again (a retry, a redelivery,
    // or reconcile finding the opportunity differs from what Partner Center was sent).
    world.pc.edit(id, |r| {
        r.status = Some(ReferralStatus::Active);
        r.substatus = Some(ReferralSubstatus::Accepted);
    });
    let outcome = world.sync_crm(&world.crm_change(&record, 3, SELLER), at(130));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    let patches = world.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        paths(&patches[0].2),
        ["/details/dealValue", "/details/notes"]
    );
    let details = world.pc.referral(id).details.unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(60_000)));
}

#[test]
fn a_412_on_the_patch_is_retried_with_the_record_read_again_not_over_the_newer_write() {
    // Two syncs of one record at once: ours read the record ("older"), then another sync of a
    // later save wrote "newer" to the referral between our GET and our PATCH. Planning our
    // older read again on the re-read referral would overwrite the newer value.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.notes = Some("older".into()));
    let change = world.crm_change(&record, 2, SELLER);
    world.crm_edit(&record, |o| o.notes = Some("newer".into()));
    lock(&world.pc.before_patch).push_back(Box::new(|r: &mut Referral| {
        r.details.as_mut().unwrap().notes = Some("newer".into());
    }));
    // The read path: a link that does not hold the referral (see
    // `a_referral_changed_since_the_link_saw_it_is_read_after_the_412_and_merged` for the other).
    let mut link = world.links.link(&id).unwrap();
    link.last_referral = None;
    world.links.insert(link);

    let outcome = world.sync_crm(&change, at(110));

    assert!(
        matches!(outcome, Outcome::RetryEnqueued { .. }),
        "{outcome:?}"
    );
    let notes = world.pc.referral(id).details.unwrap().notes;
    assert_eq!(notes.as_deref(), Some("newer"), "the newer write stays");
    let (job, _) = world.queue.jobs().pop().expect("a retry job");
    assert_eq!(
        world.retry(&job, at(140)),
        Outcome::UnchangedSkipped,
        "the retry reads the record as it is now: nothing left to send"
    );
    let notes = world.pc.referral(id).details.unwrap().notes;
    assert_eq!(notes.as_deref(), Some("newer"));
}

#[test]
fn a_plain_update_costs_the_patch_alone() {
    // Issue 11: a CRM → Partner Center update is one PATCH (the referral the link holds, no
    // read) and no CRM write while the Audit column says the record is in sync.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    let audit = world.crm_audit(&record);
    assert!(
        audit.contains(" Created Partner Center referral "),
        "{audit}"
    );
    let (writes, pc) = (world.crm_writes(), world.pc_calls());

    world.crm_edit(&record, |o| o.deal_value = Some(usd(35_000)));
    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(120));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(world.pc_calls() - pc, 1, "the PATCH alone");
    assert_eq!(
        world.crm_writes(),
        writes,
        "the Audit column already says so"
    );
    assert_eq!(world.crm_audit(&record), audit, "kept with its first time");
    let details = world.pc.referral(id).details.unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(35_000)));
}

#[test]
fn the_audit_column_is_rewritten_only_when_it_stops_saying_in_sync() {
    use crate::ports::AuditEntry;
    let id = ReferralId::try_from("4111fffc-7f33-4a1c-9f1a-000000000001").unwrap();
    let other = ReferralId::try_from("4111fffc-7f33-4a1c-9f1a-000000000002").unwrap();
    let entry = AuditEntry {
        at: at(200),
        direction: Some(SyncDirection::ToPartnerCenter),
        referral_id: Some(id),
        crm: None,
        correlation_id: None,
        event: AuditEvent::Updated,
    };
    let shown = |event: AuditEvent, direction: SyncDirection, referral: ReferralId| {
        AuditEntry {
            at: at(100),
            direction: Some(direction),
            referral_id: Some(referral),
            event,
            ..entry.clone()
        }
        .crm_text()
    };
    let in_sync = |text: &str| crate::sync::to_pc::shows_in_sync(Some(text), &entry);
    for event in [
        AuditEvent::Created,
        AuditEvent::Updated,
        AuditEvent::WrittenBack,
    ] {
        for direction in [SyncDirection::ToPartnerCenter, SyncDirection::ToCrm] {
            assert!(in_sync(&shown(event.clone(), direction, id)), "{event:?}");
            assert!(
                !in_sync(&shown(event.clone(), direction, other)),
                "{event:?}"
            );
        }
    }
    let failed = AuditEvent::Failed {
        reason: "r".into(),
        fix: "f".into(),
    };
    assert!(!in_sync(&shown(failed, SyncDirection::ToPartnerCenter, id)));
    let updated = shown(AuditEvent::Updated, SyncDirection::ToPartnerCenter, id);
    assert!(!in_sync(&format!("{updated}. Conflict on notes: kept")));
    assert!(!crate::sync::to_pc::shows_in_sync(None, &entry));
    assert!(!in_sync(""));
}

#[test]
fn a_referral_changed_since_the_link_saw_it_is_read_after_the_412_and_merged() {
    // The PATCH planned against the referral the link holds is conditional on its eTag: a
    // change made in Partner Center since (its event not handled yet) refuses it, and the
    // change is planned again on the referral read, merging both sides' changes.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("From Microsoft".into());
    });
    world.crm_edit(&record, |o| o.deal_value = Some(usd(30_000)));

    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));

    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        2,
        "one refused, one taken"
    );
    assert_eq!(world.pc.calls.get("get_referral"), 1, "read after the 412");
    let patches = world.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(paths(&patches[0].2), ["/details/dealValue"]);
    let details = world.pc.referral(id).details.unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(30_000)));
    assert_eq!(details.notes.as_deref(), Some("From Microsoft"));
    assert_eq!(
        world.crm.stored(&record).opportunity.notes.as_deref(),
        Some("From Microsoft"),
        "Partner Center's change reaches the CRM in the same run"
    );
    assert_no_conflict_audited(&world);
    // The link now holds the referral as patched: the next change is not read first.
    world.crm_edit(&record, |o| o.deal_value = Some(usd(35_000)));
    let outcome = world.sync_crm(&world.crm_change(&record, 3, SELLER), at(120));
    assert_eq!(
        outcome,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(world.pc.calls.get("get_referral"), 1);
}

#[test]
fn a_late_image_is_not_sent_over_a_newer_change_synced_before_it() {
    // The webhook of an earlier save arrives after a later save was synced (delivery retries,
    // out of order): its image is older than what Partner Center holds.
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.notes = Some("first".into()));
    let late = CrmChange {
        modified_at: Some(at(101)),
        ..world.crm_change(&record, 2, SELLER)
    };
    world.crm_edit(&record, |o| o.notes = Some("second".into()));
    let second = CrmChange {
        modified_at: Some(at(102)),
        ..world.crm_change(&record, 3, SELLER)
    };
    assert_eq!(
        world.sync_crm(&second, at(110)),
        Outcome::Updated {
            crm: record.clone()
        }
    );

    world.sync_crm(&late, at(120));

    let notes = world.pc.referral(id).details.unwrap().notes;
    assert_eq!(
        notes.as_deref(),
        Some("second"),
        "the late image is not sent"
    );
}

#[test]
fn a_retry_compares_with_the_referral_not_with_what_the_link_says_was_sent() {
    // The link says "second" was sent, but Partner Center holds "first" (a change there the
    // link does not know of yet): a retry does not skip as unchanged by the link; it merges
    // with the referral, and both sides end equal under the policy (notes: Partner Center's).
    let world = World::to_pc();
    let (record, id) = world.shared(seller_opportunity());
    world.crm_edit(&record, |o| o.notes = Some("second".into()));
    let change = world.crm_change(&record, 2, SELLER);
    world.sync_crm(&change, at(110));
    world.pc.edit(id, |r: &mut Referral| {
        r.details.as_mut().unwrap().notes = Some("first".into());
    });
    let job = RetryJob {
        source: RetrySource::Dataverse,
        key: change.key.to_string(),
        attempt: 1,
        payload: json!({ "record": record }),
    };
    let reads = world.pc.calls.get("get_referral");

    world.retry(&job, at(140));

    assert_eq!(
        world.pc.calls.get("get_referral"),
        reads + 1,
        "the referral is read"
    );
    let in_pc = world.pc.referral(id).details.unwrap().notes;
    let in_crm = world.crm.stored(&record).opportunity.notes;
    assert_eq!(in_pc, in_crm, "the sides end equal");
}

/// The close of a record closed before its first sync fails after the create (a throttled
/// PATCH, an instance killed): the link says what Partner Center holds, the deal still open,
/// so the record's next sync sends the close rather than taking it as unchanged (simulation
/// seed 48631).
#[test]
fn a_close_that_did_not_follow_the_create_is_sent_by_the_next_sync() {
    let world = World::to_pc();
    let record = world.crm.seed(Opportunity {
        stage: Some(OpportunityStage::Won),
        ..seller_opportunity()
    });
    world
        .pc
        .fail_next("patch_referral", transient(Service::PartnerCenter, None));

    let first = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));

    assert!(matches!(first, Outcome::RetryEnqueued { .. }), "{first:?}");
    let id = world.deal_referral(&record);
    assert_eq!(
        world.pc.referral(id).state(),
        Some(ReferralState::accepted())
    );
    let again = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));
    assert_eq!(
        again,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    assert_eq!(
        world.pc.referral(id).state(),
        Some(ReferralState::closed(ReferralSubstatus::Won))
    );
    assert_eq!(
        world.crm.stored(&record).opportunity.stage,
        Some(OpportunityStage::Won)
    );
}

/// A record won or lost before its first sync (or whose close was handled before its create):
/// Partner Center starts the deal Active, and the connector then closes the referral as the
/// record says; it never writes Active back, which would reopen the seller's closed deal.
#[test]
fn a_record_closed_before_its_first_sync_closes_its_new_referral_and_stays_closed() {
    for (stage, substatus) in [
        (OpportunityStage::Won, ReferralSubstatus::Won),
        (
            OpportunityStage::Lost(crate::opportunity::LostReason::Lost),
            ReferralSubstatus::Lost,
        ),
    ] {
        let world = World::to_pc();
        let record = world.crm.seed(Opportunity {
            stage: Some(stage),
            ..seller_opportunity()
        });

        let outcome = world.sync_crm(&world.crm_change(&record, 1, SELLER), at(100));

        assert_eq!(
            outcome,
            Outcome::Created {
                crm: record.clone()
            }
        );
        let stored = world.crm.stored(&record).opportunity;
        assert_eq!(stored.stage, Some(stage), "the record stays closed");
        // A closed Dataverse row is read-only: no write-back, no Audit text; the link and the
        // referral's external reference link them, and the audit log says so once.
        assert_eq!(stored.referral_id, None);
        assert_eq!(world.crm_writes(), 0, "nothing written to the closed row");
        let id = world.deal_referral(&record);
        assert!(
            world.audit.entries().iter().any(|e| e.crm.as_ref() == Some(&record)
                && matches!(&e.event, AuditEvent::Failed { reason, .. } if reason.contains("read-only"))),
            "the audit log says why the id is not on the record"
        );
        assert_eq!(
            world.pc.referral(id).state(),
            Some(ReferralState {
                status: ReferralStatus::Closed,
                substatus: Some(substatus),
            })
        );
        assert_eq!(
            (
                world.pc.calls.get("create_referral"),
                world.pc.calls.get("patch_referral")
            ),
            (2, 1),
            "the deal, Microsoft's invitation, then the close"
        );
        let link = world.links.link(&id).unwrap();
        assert_eq!(link.last_stage_to_pc, Some(stage));

        // Its next notification has nothing to send, and nothing reopens.
        let again = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));
        assert_eq!(again, Outcome::UnchangedSkipped);
        assert_eq!(world.crm.stored(&record).opportunity.stage, Some(stage));
        assert_eq!(world.pc.calls.get("patch_referral"), 1);
    }
}

/// A seller closes the deal in Dataverse while its first sync runs: the referral is created,
/// and the write-back is refused, the row being closed and read-only by then. That is not the
/// partner's to fix ("reopen it" would be wrong): the sync runs again, finds the record closed,
/// closes the referral and writes nothing to the row (simulation seed 695).
#[test]
fn a_close_made_while_the_first_sync_runs_is_sent_by_the_next_run() {
    let world = World::to_pc();
    world.crm.keep_closed_rows_read_only();
    let record = world.crm.seed(seller_opportunity());
    let change = world.crm_change(&record, 1, SELLER);
    lock(&world.crm.before_upsert).push_back(Box::new(|o: &mut Opportunity| {
        o.stage = Some(OpportunityStage::Won);
    }));

    let first = world.sync_crm(&change, at(100));

    assert!(matches!(first, Outcome::RetryEnqueued { .. }), "{first:?}");
    let id = world.deal_referral(&record);
    assert!(
        !world.audit.entries().iter().any(
            |e| matches!(&e.event, AuditEvent::Failed { reason, .. } if reason.contains("Reopen"))
        ),
        "the partner is not told to reopen the deal"
    );
    let writes = world.crm_writes();

    // The retry, or the close's own notification.
    let again = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(200));

    assert_eq!(
        again,
        Outcome::Updated {
            crm: record.clone()
        }
    );
    world.assert_closed_as_won(id);
    let stored = world.crm.stored(&record).opportunity;
    assert_eq!(stored.stage, Some(OpportunityStage::Won));
    assert_eq!(
        world.crm_writes(),
        writes,
        "nothing more is written to the closed row"
    );
}

/// Microsoft changes a referral's notes as the seller closes its deal in Dataverse: the close
/// reaches the referral, and Partner Center's notes, which won the merge, cannot reach the
/// closed (read-only) row. That is said once, in the audit log, with what to do, and nothing
/// is written to the row (simulation seed 1443, which retried the refused write forever).
#[test]
fn partner_centers_change_to_a_closed_dataverse_row_is_said_once_and_not_written() {
    let world = World::to_pc();
    world.crm.keep_closed_rows_read_only();
    let (record, id) = world.shared(seller_opportunity());
    world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("From Microsoft".into());
    });
    world.crm_edit(&record, |o| o.stage = Some(OpportunityStage::Won));
    let writes = world.crm_writes();

    let outcome = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(110));

    let Outcome::NeedsAttention { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "closed_in_crm");
    assert!(
        message.contains("notes") && message.contains("reopen"),
        "{message}"
    );
    assert_eq!(
        world.pc.referral(id).state(),
        Some(ReferralState::closed(ReferralSubstatus::Won))
    );
    let stored = world.crm.stored(&record).opportunity;
    assert_eq!(stored.stage, Some(OpportunityStage::Won));
    assert_eq!(stored.notes.as_deref(), Some("Phase 1"));
    assert_eq!(
        world.crm_writes(),
        writes,
        "nothing is written to the closed row"
    );
    let said = |world: &World| {
        world
            .audit
            .entries()
            .iter()
            .filter(|e| {
                e.crm.as_ref() == Some(&record)
                    && matches!(&e.event, AuditEvent::Failed { fix, .. } if fix.contains("reopen"))
            })
            .count()
    };
    assert_eq!(said(&world), 1);

    // Redelivered: said once.
    let again = world.sync_crm(&world.crm_change(&record, 2, SELLER), at(120));
    assert_eq!(again, Outcome::DuplicateSkipped);
    assert_eq!(said(&world), 1, "said once");
    // The fields Partner Center won keep their base: they still count as its change.
    let link = world.links.link(&id).unwrap();
    assert_ne!(
        link.synced_fields.get(SharedField::Notes.name()),
        Some(&SharedField::Notes.hash(&Opportunity {
            notes: Some("From Microsoft".into()),
            ..Opportunity::default()
        })),
    );
}
