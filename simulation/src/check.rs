//! The invariants checked after quiescence.

use std::collections::BTreeMap;

use cosell_domain::ids::{CrmRecordId, ReferralId};
use cosell_domain::in_memory::InMemoryAuditLog;
use cosell_domain::mapping::invites_microsoft;
use cosell_domain::ports::AuditEvent;

use cosell_domain::sync::{SharedField, Side};
use cosell_domain::{OpportunityStage, ReferralStatus, ReferralSubstatus};

use crate::sim::{
    EditLog, Invariant, Violation, edit_deal_value, edit_notes, edit_side, latest_edit,
};
use crate::world::{SimCrm, SimPartnerCenter};

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Check every invariant of the quiescent world.
pub(crate) fn check(
    pc: &SimPartnerCenter,
    crm: &SimCrm,
    audit: &InMemoryAuditLog,
    edits: &EditLog,
    closes: &BTreeMap<CrmRecordId, OpportunityStage>,
) -> Vec<Violation> {
    let mut found = Vec::new();
    let referrals: BTreeMap<_, _> = pc
        .referrals()
        .into_iter()
        .filter(|(_, r)| !invites_microsoft(r))
        .collect();
    let opportunities: BTreeMap<_, _> = crm
        .opportunities()
        .into_iter()
        .filter(|(_, o)| o.opportunity.sync)
        .collect();
    let entries = audit.entries();

    // At most one counterpart per record, both ways.
    let mut by_external: BTreeMap<String, Vec<ReferralId>> = BTreeMap::new();
    for (id, referral) in &referrals {
        if let Some(external) = referral.external_reference_id.as_deref() {
            by_external
                .entry(external.trim().to_owned())
                .or_default()
                .push(*id);
        }
    }
    for (external, ids) in &by_external {
        if ids.len() > 1 {
            found.push(violation(
                Invariant::DuplicateReferral,
                format!(
                    "{} referrals carry externalReferenceId {external}: {ids:?}",
                    ids.len()
                ),
            ));
        }
    }
    let mut by_referral: BTreeMap<ReferralId, Vec<CrmRecordId>> = BTreeMap::new();
    for (id, stored) in &opportunities {
        if let Some(referral) = stored.opportunity.referral_id {
            by_referral.entry(referral).or_default().push(id.clone());
        }
    }
    for (referral, ids) in &by_referral {
        if ids.len() > 1 {
            found.push(violation(
                Invariant::DuplicateOpportunity,
                format!("{} opportunities carry referral {referral}", ids.len()),
            ));
        }
    }

    // Every synced record has its counterpart: no change lost.
    for (id, stored) in &opportunities {
        match stored.opportunity.referral_id {
            Some(referral) if referrals.contains_key(&referral) => {}
            Some(referral) => found.push(violation(
                Invariant::MissingCounterpart,
                format!("opportunity {id} names referral {referral}, which does not exist"),
            )),
            // Closed before its first sync: a closed Dataverse row takes no write-back, the
            // referral's external reference names it.
            None if stored.opportunity.stage.is_some_and(|s| s.is_closed())
                && id.kind().closed_is_read_only()
                && by_external
                    .get(&id.native())
                    .is_some_and(|ids| ids.len() == 1) => {}
            None => found.push(violation(
                Invariant::MissingCounterpart,
                format!("opportunity {id} (sync on) has no referral"),
            )),
        }
    }
    // A second referral of one opportunity is reported as a duplicate above, not here.
    let duplicates: Vec<ReferralId> = by_external
        .values()
        .filter(|ids| ids.len() > 1)
        .flatten()
        .copied()
        .collect();
    for (id, referral) in &referrals {
        if !referral.is_terminal() && !by_referral.contains_key(id) && !duplicates.contains(id) {
            found.push(violation(
                Invariant::MissingCounterpart,
                format!("referral {id} has no opportunity"),
            ));
        }
    }

    // Both sides hold the same values (the conflict policy always converges), and the latest
    // user edit of each field is on both sides unless an audited conflict on that field chose
    // the other side's value (docs/conflicts.md#the-policy).
    let conflict_lost =
        |referral: &ReferralId, record: &CrmRecordId, field: SharedField, side: Side| {
            entries.iter().any(|e| {
                (e.referral_id.as_ref() == Some(referral) || e.crm.as_ref() == Some(record))
                    && matches!(&e.event, AuditEvent::ConflictResolved { fields }
                    if fields.iter().any(|c| c.field == field && c.winner != side))
            })
        };
    for (record, stored) in &opportunities {
        let Some(referral_id) = stored.opportunity.referral_id else {
            continue;
        };
        let Some(referral) = referrals.get(&referral_id) else {
            continue;
        };
        let details = referral.details.as_ref();
        let pc_notes = details.and_then(|d| d.notes.clone()).unwrap_or_default();
        let crm_notes = stored.opportunity.notes.clone().unwrap_or_default();
        let pc_value = details.and_then(|d| d.deal_value);
        let crm_value = stored.opportunity.deal_value.map(|m| m.amount);
        // A closed referral takes no change (Partner Center refuses it): a difference the
        // seller's close raced (a concurrent sync wrote the other side's older value just as the
        // close went out) can no longer be healed, and must be reported with its fix instead.
        let reported = || {
            entries.iter().any(|e| {
                e.crm.as_ref() == Some(record) && matches!(&e.event, AuditEvent::Failed { .. })
            })
        };
        if (pc_notes != crm_notes || pc_value != crm_value) && referral.is_terminal() && reported()
        {
            continue;
        }
        if pc_notes != crm_notes || pc_value != crm_value {
            found.push(violation(
                Invariant::Diverged,
                format!(
                    "referral {referral_id} and opportunity {record} differ: notes {pc_notes:?} / \
                     {crm_notes:?}, deal value {pc_value:?} / {crm_value:?}"
                ),
            ));
            continue;
        }
        let Some(latest) = latest_edit(edits, &referral_id, record) else {
            continue;
        };
        let side = edit_side(latest);
        if edit_notes(latest) != pc_notes
            && !conflict_lost(&referral_id, record, SharedField::Notes, side)
        {
            found.push(violation(
                Invariant::Diverged,
                format!(
                    "the latest user edit {:?} ({side}) of referral {referral_id} / opportunity \
                     {record} was lost without an audited conflict: both sides hold notes \
                     {pc_notes:?}",
                    edit_notes(latest)
                ),
            ));
        }
        let latest_value = rust_decimal::Decimal::from(edit_deal_value(latest));
        if pc_value != Some(latest_value)
            && !conflict_lost(&referral_id, record, SharedField::DealValue, side)
        {
            found.push(violation(
                Invariant::Diverged,
                format!(
                    "the latest user edit's deal value {latest_value} ({side}) of referral \
                     {referral_id} / opportunity {record} was lost without an audited \
                     conflict: both sides hold {pc_value:?}"
                ),
            ));
        }
    }

    // A seller's close stays in the CRM (the connector never reopens a deal) and reaches its
    // referral: Closed, Won or Lost as the seller chose.
    for (record, closed) in closes {
        let Some(stored) = opportunities.get(record) else {
            continue;
        };
        if stored.opportunity.stage != Some(*closed) {
            found.push(violation(
                Invariant::CloseNotKept,
                format!(
                    "the seller closed opportunity {record} as {closed:?}; it is now {:?}",
                    stored.opportunity.stage
                ),
            ));
            continue;
        }
        let by_reference = || {
            by_external
                .get(&record.native())
                .and_then(|ids| ids.first())
                .copied()
        };
        let Some(referral) = stored
            .opportunity
            .referral_id
            .or_else(by_reference)
            .and_then(|id| referrals.get(&id))
        else {
            continue;
        };
        let expected = match closed {
            OpportunityStage::Won => ReferralSubstatus::Won,
            _ => ReferralSubstatus::Lost,
        };
        if referral.status != Some(ReferralStatus::Closed) || referral.substatus != Some(expected) {
            found.push(violation(
                Invariant::CloseNotKept,
                format!(
                    "opportunity {record} was closed as {closed:?}; its referral is {:?} / {:?}",
                    referral.status, referral.substatus
                ),
            ));
        }
    }

    // Every failure that needs attention says what to do.
    for entry in &entries {
        if let AuditEvent::Failed { reason, fix } = &entry.event
            && fix.trim().is_empty()
        {
            found.push(violation(
                Invariant::AuditWithoutFix,
                format!("audited failure without a fix: {reason}"),
            ));
        }
    }
    found
}
