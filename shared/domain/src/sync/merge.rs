//! The conflict policy: a per-field three-way merge of the shared fields against what was
//! last synced (docs/conflicts.md#the-policy).
//!
//! The fields both directions write after a deal exists — deal value (amount and currency),
//! closing date, notes and stage — are merged one by one. The [`Link`] keeps, per field, a
//! short hash of the value both sides last agreed on ([`Link::synced_fields`]; never the values
//! themselves, so no contact data sits in the link table). For each field:
//!
//! | Partner Center since the base | CRM since the base | Result |
//! |---|---|---|
//! | unchanged | unchanged | nothing to do |
//! | changed | unchanged | Partner Center's value goes to the CRM |
//! | unchanged | changed | the CRM's value goes to Partner Center |
//! | changed | changed, to the same value | nothing to do |
//! | changed | changed, to different values | a **conflict**: the field's owner ([`CONFLICT_POLICY`]) wins, the loser side is overwritten, and one [`AuditEvent::ConflictResolved`] names the fields and their winners (never the values) |
//!
//! No clock decides: Partner Center's `updatedDateTime` and the CRM's modification time come
//! from two clocks, and a webhook can arrive long after the change. "Changed" means "differs
//! from the last synced hash". A link without hashes (stored before they existed) merges
//! nothing: the direction's source wins, as before, and the hashes are stored from then on. Two
//! records not linked yet have no base: every differing field goes to its owner, audited, the
//! same answer in both directions.
//!
//! Writes and calls (docs/conflicts.md#what-it-costs): Partner Center → CRM reads the CRM
//! record once before it writes a shared field (the CRM's values are needed to merge), and
//! writes with `If-Match` on the version that read reported (Dataverse's `@odata.etag`; a 412
//! retries and merges again; Salesforce has no `If-Match` on record updates, so there the write
//! stays unconditional). The read is skipped when Partner Center changed no shared field since
//! the base, so echoes, redeliveries and unchanged referrals cost nothing more. A true
//! conditional write without the read would need the record's version in the link, which the
//! connector does not learn from its own writes. CRM → Partner Center reads the
//! referral anyway, so its merge costs no call; a CRM webhook's copy of the record that shows a
//! shared field changed is checked by reading the record, since the copy may be older than a
//! later save or the connector's own write (docs/conflicts.md#late-crm-webhooks).
//!
//! [`Link`]: crate::ports::Link
//! [`Link::synced_fields`]: crate::ports::Link::synced_fields
//! [`AuditEvent::ConflictResolved`]: crate::ports::AuditEvent::ConflictResolved

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::opportunity::Opportunity;

/// A side of the sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Partner Center (the referral; Microsoft's sellers and the partner's Partner Center users).
    PartnerCenter,
    /// The CRM opportunity (the partner's sellers).
    Crm,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PartnerCenter => "Partner Center",
            Self::Crm => "the CRM",
        })
    }
}

/// A field both directions write once the deal exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedField {
    /// The deal value with its currency.
    DealValue,
    /// The expected closing date.
    ClosingDate,
    /// The notes / description.
    Notes,
    /// The stage (Partner Center's status and substatus).
    Stage,
}

/// Who wins a conflict, per shared field (docs/conflicts.md#the-policy).
pub const CONFLICT_POLICY: [(SharedField, Side); 4] = [
    // The seller's forecast: the partner's revenue and its timing.
    (SharedField::DealValue, Side::Crm),
    (SharedField::ClosingDate, Side::Crm),
    // What Microsoft's sellers and Partner Center users write for the deal.
    (SharedField::Notes, Side::PartnerCenter),
    // Partner Center's lifecycle (accepted, declined, expired, closed) is authoritative: a
    // closed referral takes no change at all.
    (SharedField::Stage, Side::PartnerCenter),
];

impl SharedField {
    /// Every shared field.
    pub const ALL: [SharedField; 4] =
        [Self::DealValue, Self::ClosingDate, Self::Notes, Self::Stage];

    /// The stable name (the key in [`Link::synced_fields`](crate::ports::Link::synced_fields)
    /// and in audit entries).
    pub fn name(self) -> &'static str {
        match self {
            Self::DealValue => "deal_value",
            Self::ClosingDate => "closing_date",
            Self::Notes => "notes",
            Self::Stage => "stage",
        }
    }

    /// The field of a [`SharedField::name`].
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }

    /// The side that wins a conflict on this field.
    pub fn owner(self) -> Side {
        CONFLICT_POLICY
            .iter()
            .find(|(field, _)| *field == self)
            .map_or(Side::Crm, |(_, side)| *side)
    }

    /// The side that wins a conflict on this field between these values: its
    /// [`owner`](Self::owner), except that a closed stage wins over an open one on either side
    /// (docs/conflicts.md#the-policy). Partner Center's closed referral takes no change, and
    /// the connector never reopens a deal a seller closed: Partner Center starts every deal
    /// Active, so an open stage there says nothing against the seller's close.
    pub fn conflict_winner(self, partner_center: &Opportunity, crm: &Opportunity) -> Side {
        let closed = |o: &Opportunity| o.stage.is_some_and(|s| s.is_closed());
        match (self, closed(partner_center), closed(crm)) {
            (Self::Stage, false, true) => Side::Crm,
            (Self::Stage, true, false) => Side::PartnerCenter,
            _ => self.owner(),
        }
    }

    /// The canonical text of the field's value (as [`Opportunity::fingerprint`] normalises
    /// it), `None` when the opportunity has none.
    fn canonical(self, opportunity: &Opportunity) -> Option<String> {
        match self {
            Self::DealValue => opportunity
                .deal_value
                .map(|m| format!("{} {}", m.amount.normalize(), m.currency.as_str())),
            Self::ClosingDate => opportunity
                .closing_date
                .map(|d| d.format("%Y-%m-%d").to_string()),
            Self::Notes => opportunity
                .notes
                .as_deref()
                .map(|n| n.replace("\r\n", "\n").trim().to_owned())
                .filter(|n| !n.is_empty()),
            Self::Stage => opportunity.stage.map(|s| s.coarse().to_owned()),
        }
    }

    /// Whether the opportunity has a value for the field (a missing value never clears the
    /// other side).
    pub fn is_set(self, opportunity: &Opportunity) -> bool {
        self.canonical(opportunity).is_some()
    }

    /// The first 16 hex digits of the SHA-256 of the field's name and canonical value (an
    /// absent value hashes too, so "cleared" is a value of its own).
    pub fn hash(self, opportunity: &Opportunity) -> String {
        let mut digest = Sha256::new();
        digest.update(self.name().as_bytes());
        digest.update([0]);
        match self.canonical(opportunity) {
            Some(value) => {
                digest.update([1]);
                digest.update(value.as_bytes());
            }
            None => digest.update([0]),
        }
        let mut hex = hex::encode(digest.finalize());
        hex.truncate(16);
        hex
    }

    /// Copy the field's value from `from` into `to`.
    pub fn copy(self, from: &Opportunity, to: &mut Opportunity) {
        match self {
            Self::DealValue => to.deal_value = from.deal_value,
            Self::ClosingDate => to.closing_date = from.closing_date,
            Self::Notes => to.notes.clone_from(&from.notes),
            Self::Stage => to.stage = from.stage,
        }
    }

    /// Clear the field in `opportunity` (so a write leaves it as the other side holds it).
    pub fn clear(self, opportunity: &mut Opportunity) {
        match self {
            Self::DealValue => opportunity.deal_value = None,
            Self::ClosingDate => opportunity.closing_date = None,
            Self::Notes => opportunity.notes = None,
            Self::Stage => opportunity.stage = None,
        }
    }
}

/// The hash of every shared field of `opportunity`, by field name.
pub fn field_hashes(opportunity: &Opportunity) -> BTreeMap<String, String> {
    SharedField::ALL
        .iter()
        .map(|field| (field.name().to_owned(), field.hash(opportunity)))
        .collect()
}

/// How one field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Both sides hold the same value.
    Same,
    /// Only this side changed since the base: its value goes across.
    Changed(Side),
    /// Both sides changed to different values: the owner's value wins.
    Conflict {
        /// The field's owner.
        winner: Side,
    },
    /// No base is known (a link stored before the hashes existed): the direction's source
    /// wins, as before the policy.
    NoBase,
}

impl Resolution {
    /// The side whose value both sides should hold, `source` for [`Resolution::NoBase`];
    /// `None` when they agree.
    pub fn winner(self, source: Side) -> Option<Side> {
        match self {
            Self::Same => None,
            Self::Changed(side) | Self::Conflict { winner: side } => Some(side),
            Self::NoBase => Some(source),
        }
    }
}

/// One conflict that was resolved: the field and who won. Never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldConflict {
    /// The field.
    pub field: SharedField,
    /// The side whose value both sides now hold.
    pub winner: Side,
}

/// The per-field merge of one deal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// Each shared field's resolution, in [`SharedField::ALL`] order.
    pub fields: Vec<(SharedField, Resolution)>,
}

impl Merge {
    /// Merge Partner Center's and the CRM's values against the last synced hashes `base`.
    ///
    /// `None`: the two records are not linked yet (the counterpart was found by its ids, e.g.
    /// after a run that created it stopped before saving the link, or a seller entered the
    /// referral id by hand). Nothing tells which side changed, so every field that differs is
    /// a conflict its owner wins — the same answer in both directions, so the sides converge.
    pub fn new(
        base: Option<&BTreeMap<String, String>>,
        partner_center: &Opportunity,
        crm: &Opportunity,
    ) -> Self {
        let fields = SharedField::ALL
            .iter()
            .map(|&field| {
                let pc = field.hash(partner_center);
                let cr = field.hash(crm);
                let conflict = Resolution::Conflict {
                    winner: field.conflict_winner(partner_center, crm),
                };
                let resolution = match base.map(|base| base.get(field.name())) {
                    _ if pc == cr => Resolution::Same,
                    None => conflict,
                    Some(Some(base)) if base == NOT_AGREED => conflict,
                    Some(None) => Resolution::NoBase,
                    Some(Some(base)) if *base == cr => Resolution::Changed(Side::PartnerCenter),
                    Some(Some(base)) if *base == pc => Resolution::Changed(Side::Crm),
                    Some(Some(_)) => conflict,
                };
                (field, resolution)
            })
            .collect();
        Self { fields }
    }

    /// The fields whose winner is `side` (with `source` winning where no base is known), and
    /// whose value `side` has (a missing value never clears the other side).
    pub fn won_by<'m>(
        &'m self,
        side: Side,
        source: Side,
        value_of_side: &'m Opportunity,
    ) -> impl Iterator<Item = SharedField> + 'm {
        self.fields
            .iter()
            .filter(move |(field, resolution)| {
                resolution.winner(source) == Some(side) && field.is_set(value_of_side)
            })
            .map(|(field, _)| *field)
    }

    /// The conflicts, with their winners.
    pub fn conflicts(&self) -> Vec<FieldConflict> {
        self.fields
            .iter()
            .filter_map(|(field, resolution)| match resolution {
                Resolution::Conflict { winner } => Some(FieldConflict {
                    field: *field,
                    winner: *winner,
                }),
                _ => None,
            })
            .collect()
    }
}

/// The base of a field the two sides have not agreed on since they were linked. The merge
/// gives a difference in it to the field's owner, as for records not linked yet; only a field
/// missing from the base (a link stored before bases existed) lets the direction's source win.
/// Without it, a link made while the sides differed (a create racing a seller's save) would
/// look like such an old link, and the next sync from the other side would overwrite the
/// seller's save unaudited.
pub const NOT_AGREED: &str = "-";

/// The base after a sync: every field both sides now hold the same value of gets that value's
/// hash; the others keep their old base (so the side that changed stays "changed"), or
/// [`NOT_AGREED`] when they had none.
pub fn agreed_fields(
    base: &BTreeMap<String, String>,
    partner_center: &Opportunity,
    crm: &Opportunity,
) -> BTreeMap<String, String> {
    let mut agreed = base.clone();
    for field in SharedField::ALL {
        let pc = field.hash(partner_center);
        if pc == field.hash(crm) {
            agreed.insert(field.name().to_owned(), pc);
        } else {
            agreed
                .entry(field.name().to_owned())
                .or_insert_with(|| NOT_AGREED.to_owned());
        }
    }
    agreed
}

/// The text of a resolved conflict for the CRM's Audit field and the audit log: the fields
/// and who won, never a value.
pub fn conflict_text(conflicts: &[FieldConflict]) -> String {
    let parts: Vec<String> = conflicts
        .iter()
        .map(|c| format!("{} ({} kept)", c.field.name(), c.winner))
        .collect();
    format!(
        "Changed on both sides since the last sync: {}; see docs/conflicts.md",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opportunity::OpportunityStage;
    use crate::values::{CurrencyCode, Money};
    use chrono::NaiveDate;
    use rust_decimal::Decimal;

    fn deal(notes: &str, value: i64) -> Opportunity {
        Opportunity {
            notes: Some(notes.into()),
            deal_value: Some(Money::new(
                Decimal::from(value),
                CurrencyCode::try_from("USD").unwrap(),
            )),
            closing_date: NaiveDate::from_ymd_opt(2027, 6, 30),
            stage: Some(OpportunityStage::Active),
            ..Opportunity::default()
        }
    }

    fn resolution(merge: &Merge, field: SharedField) -> Resolution {
        merge
            .fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, r)| *r)
            .unwrap()
    }

    #[test]
    fn hashes_are_short_stable_across_equivalent_forms_and_never_hold_the_value() {
        let a = deal("Supply chain\r\n", 50_000);
        let mut b = deal("Supply chain", 50_000);
        b.deal_value = Some(Money::new(
            Decimal::new(5_000_000, 2),
            CurrencyCode::try_from("usd").unwrap(),
        ));
        assert_eq!(field_hashes(&a), field_hashes(&b));
        for hash in field_hashes(&a).values() {
            assert_eq!(hash.len(), 16);
            assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
            assert!(!hash.contains("Supply"));
        }
        let cleared = Opportunity {
            notes: None,
            ..a.clone()
        };
        assert_ne!(
            SharedField::Notes.hash(&cleared),
            SharedField::Notes.hash(&a)
        );
    }

    #[test]
    fn only_one_side_changed_goes_across_and_both_changed_is_a_conflict_the_owner_wins() {
        let base = field_hashes(&deal("base", 1));
        // PC changed the notes, the CRM the deal value: no conflict.
        let merge = Merge::new(Some(&base), &deal("ms", 1), &deal("base", 2));
        assert_eq!(
            resolution(&merge, SharedField::Notes),
            Resolution::Changed(Side::PartnerCenter)
        );
        assert_eq!(
            resolution(&merge, SharedField::DealValue),
            Resolution::Changed(Side::Crm)
        );
        assert_eq!(resolution(&merge, SharedField::Stage), Resolution::Same);
        assert!(merge.conflicts().is_empty());

        // Both changed both: each field's owner wins.
        let merge = Merge::new(Some(&base), &deal("ms", 3), &deal("seller", 4));
        assert_eq!(
            merge.conflicts(),
            vec![
                FieldConflict {
                    field: SharedField::DealValue,
                    winner: Side::Crm
                },
                FieldConflict {
                    field: SharedField::Notes,
                    winner: Side::PartnerCenter
                },
            ]
        );
        // Both changed to the same value: nothing to do.
        let merge = Merge::new(Some(&base), &deal("same", 1), &deal("same", 1));
        assert!(merge.fields.iter().all(|(_, r)| *r == Resolution::Same));
    }

    /// Found by the simulation (seed 13, `--no-concurrent-edits`): a link made while the
    /// sides differed had an empty base, so the next Partner Center → CRM sync took it for a
    /// link stored before bases existed, and Partner Center's older deal value overwrote the
    /// seller's newer one, unaudited.
    #[test]
    fn a_field_the_sides_did_not_agree_on_when_linked_goes_to_its_owner() {
        let base = agreed_fields(&BTreeMap::new(), &deal("ms", 1), &deal("seller", 2));
        assert_eq!(
            base.get(SharedField::DealValue.name()).map(String::as_str),
            Some(NOT_AGREED)
        );
        let merge = Merge::new(Some(&base), &deal("ms", 1), &deal("seller", 3));
        assert_eq!(
            resolution(&merge, SharedField::DealValue),
            Resolution::Conflict { winner: Side::Crm }
        );
        assert_eq!(
            resolution(&merge, SharedField::Notes),
            Resolution::Conflict {
                winner: Side::PartnerCenter
            }
        );
        // Agreed later: a normal base from then on.
        let later = agreed_fields(&base, &deal("ms", 3), &deal("seller", 3));
        assert_eq!(
            later.get(SharedField::DealValue.name()),
            Some(&SharedField::DealValue.hash(&deal("seller", 3)))
        );
    }

    #[test]
    fn without_a_base_the_source_wins_and_a_missing_value_never_clears() {
        let merge = Merge::new(Some(&BTreeMap::new()), &deal("ms", 1), &deal("seller", 1));
        assert_eq!(resolution(&merge, SharedField::Notes), Resolution::NoBase);
        let pc = deal("ms", 1);
        let won: Vec<_> = merge
            .won_by(Side::PartnerCenter, Side::PartnerCenter, &pc)
            .collect();
        assert_eq!(won, vec![SharedField::Notes]);

        let base = field_hashes(&deal("base", 1));
        let mut crm = deal("base", 1);
        crm.notes = None;
        let merge = Merge::new(Some(&base), &deal("base", 1), &crm);
        assert_eq!(
            resolution(&merge, SharedField::Notes),
            Resolution::Changed(Side::Crm)
        );
        assert_eq!(merge.won_by(Side::Crm, Side::Crm, &crm).count(), 0);
    }

    #[test]
    fn the_agreed_base_moves_only_where_both_sides_hold_one_value() {
        let base = field_hashes(&deal("base", 1));
        let agreed = agreed_fields(&base, &deal("ms", 2), &deal("seller", 2));
        assert_eq!(agreed["notes"], base["notes"]);
        assert_eq!(
            agreed["deal_value"],
            SharedField::DealValue.hash(&deal("x", 2))
        );
    }

    #[test]
    fn unlinked_records_that_differ_are_a_conflict_each_owner_wins() {
        let merge = Merge::new(None, &deal("ms", 1), &deal("seller", 2));
        assert_eq!(
            merge.conflicts(),
            vec![
                FieldConflict {
                    field: SharedField::DealValue,
                    winner: Side::Crm
                },
                FieldConflict {
                    field: SharedField::Notes,
                    winner: Side::PartnerCenter
                },
            ]
        );
        let same = Merge::new(None, &deal("x", 1), &deal("x", 1));
        assert!(same.conflicts().is_empty());
    }

    #[test]
    fn a_closed_stage_wins_a_stage_conflict_over_an_open_one_on_either_side() {
        let staged = |stage: OpportunityStage| Opportunity {
            stage: Some(stage),
            ..deal("x", 1)
        };
        let lost = OpportunityStage::Lost(crate::opportunity::LostReason::Lost);
        let stage_winner = |pc: OpportunityStage, crm: OpportunityStage| {
            resolution(
                &Merge::new(None, &staged(pc), &staged(crm)),
                SharedField::Stage,
            )
        };
        // The seller's close is never undone by Partner Center's Active start.
        assert_eq!(
            stage_winner(OpportunityStage::Active, OpportunityStage::Won),
            Resolution::Conflict { winner: Side::Crm }
        );
        // Partner Center's close is not undone by an open record.
        assert_eq!(
            stage_winner(lost, OpportunityStage::Active),
            Resolution::Conflict {
                winner: Side::PartnerCenter
            }
        );
        // Otherwise the owner, Partner Center.
        for (pc, crm) in [
            (OpportunityStage::Active, OpportunityStage::OnHold),
            (lost, OpportunityStage::Won),
        ] {
            assert_eq!(
                stage_winner(pc, crm),
                Resolution::Conflict {
                    winner: Side::PartnerCenter
                }
            );
        }
        // The same with a base both sides moved from.
        let base = field_hashes(&staged(OpportunityStage::OnHold));
        let merge = Merge::new(
            Some(&base),
            &staged(OpportunityStage::Active),
            &staged(OpportunityStage::Won),
        );
        assert_eq!(
            resolution(&merge, SharedField::Stage),
            Resolution::Conflict { winner: Side::Crm }
        );
    }

    #[test]
    fn every_shared_field_has_one_owner_and_the_conflict_text_names_no_value() {
        for field in SharedField::ALL {
            assert_eq!(
                CONFLICT_POLICY.iter().filter(|(f, _)| *f == field).count(),
                1
            );
        }
        let text = conflict_text(&[FieldConflict {
            field: SharedField::Notes,
            winner: Side::PartnerCenter,
        }]);
        assert_eq!(
            text,
            "Changed on both sides since the last sync: notes (Partner Center kept); see \
             docs/conflicts.md"
        );
    }
}
