//! Partner Center referral ⇄ [`Opportunity`].
//!
//! - [`referral_to_opportunity`]: PC → CRM, tolerant (anything unreadable is left out).
//! - [`referral_create_body`]: a validated CRM opportunity → a partner-created referral.
//! - [`referral_patch`]: the JSON Patch for the CRM → PC update fields that differ.

use serde_json::Value;

use super::config::MappingConfig;
use crate::datetime::WireDateTime;
use crate::ids::{EngagementId, SolutionId};
use crate::opportunity::{
    Account, AssistanceRequest, Contact, LostReason, Opportunity, OpportunityStage,
};
use crate::referral::{
    Address, AssistanceRequestCode, Consent, CustomerProfile, InviteContext, Member, PatchOp,
    Referral, ReferralDetails, ReferralQualification, ReferralRequirements, ReferralTarget,
    ReferralType, SolutionTag, SolutionType, TargetType,
};
use crate::serde_helpers::decimal_to_json;
use crate::status::TransitionError;
use crate::status::{ReferralState, ReferralStatus, ReferralSubstatus};
use crate::validation::{NewReferral, ValidatedOpportunity};
use crate::values::{CountryCode, CurrencyCode, Money};

/// The stage a referral state maps to: New → on hold, Active → active, Closed/Won → won,
/// Closed/Lost|Declined|Expired (or undocumented) → lost with that reason. Without a status,
/// a terminal substatus alone still decides; otherwise `None`.
pub fn stage_of(
    status: Option<&ReferralStatus>,
    substatus: Option<&ReferralSubstatus>,
) -> Option<OpportunityStage> {
    let closed = |substatus: Option<&ReferralSubstatus>| match substatus {
        Some(ReferralSubstatus::Won) => OpportunityStage::Won,
        Some(ReferralSubstatus::Lost) => OpportunityStage::Lost(LostReason::Lost),
        Some(ReferralSubstatus::Declined) => OpportunityStage::Lost(LostReason::Declined),
        Some(ReferralSubstatus::Expired) => OpportunityStage::Lost(LostReason::Expired),
        _ => OpportunityStage::Lost(LostReason::Other),
    };
    match status {
        Some(ReferralStatus::New) => Some(OpportunityStage::OnHold),
        Some(ReferralStatus::Active) => Some(OpportunityStage::Active),
        Some(ReferralStatus::Closed) => Some(closed(substatus)),
        Some(ReferralStatus::Other(_)) | None => match substatus {
            Some(s) if s.is_terminal() => Some(closed(Some(s))),
            Some(ReferralSubstatus::Accepted) => Some(OpportunityStage::Active),
            Some(ReferralSubstatus::Pending | ReferralSubstatus::Received) => {
                Some(OpportunityStage::OnHold)
            }
            _ => None,
        },
    }
}

/// Map a Partner Center referral to the canonical opportunity (PC → CRM).
///
/// Tolerant: an unreadable country, currency or solution id is left out rather than failing
/// the sync. The customer contact is the first member of `customerProfile.team` with an email
/// (else the first member). Solutions come
/// from `details.requirements.solutions` and `SolutionProfile` targets. Visibility is
/// `consentToShareReferralWithMicrosoftSellers` when present, else whether the referral is
/// shared or came from Microsoft. Referrals from Partner Center arrive with sync on.
pub fn referral_to_opportunity(referral: &Referral, config: &MappingConfig) -> Opportunity {
    let details = referral.details.as_ref();
    let customer = referral.customer_profile.as_ref();
    let address = customer.and_then(|c| c.address.as_ref());

    // The default only stands in for a currency the referral does not give: one it gives
    // that is not ISO 4217 ("EURO", "US$") leaves the deal value out, never relabelled
    // (`fit::referral_to_crm_opportunity` says so in the record's Audit column).
    let currency = match details
        .and_then(|d| d.currency.as_deref())
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        Some(text) => CurrencyCode::try_from(text).ok(),
        None => config.default_currency,
    };
    let deal_value = details
        .and_then(|d| d.deal_value)
        .zip(currency)
        .map(|(amount, currency)| Money::new(amount, currency));

    let mut solutions: Vec<SolutionId> = Vec::new();
    let from_requirements = details
        .and_then(|d| d.requirements.as_ref())
        .into_iter()
        .flat_map(|r| r.solutions.iter().filter_map(|s| s.id.as_deref()));
    let from_targets = referral
        .target
        .iter()
        .filter(|t| t.target_type == Some(TargetType::SolutionProfile))
        .filter_map(|t| t.id.as_deref());
    for id in from_requirements.chain(from_targets) {
        if let Ok(id) = SolutionId::try_from(id)
            && !solutions.contains(&id)
        {
            solutions.push(id);
        }
    }

    let invite = referral.invite_context.as_ref();
    let help = invite
        .and_then(|i| i.assistance_request_code.as_ref())
        .and_then(|code| match code {
            AssistanceRequestCode::Unknown => None,
            other => Some(AssistanceRequest::parse(other.as_str())),
        });
    let from_microsoft = invite
        .and_then(|i| i.invited_by.as_ref())
        .and_then(|by| by.organization_id.as_deref())
        .is_some_and(|org| org.eq_ignore_ascii_case("msft"));
    let visible_to_microsoft = referral
        .consent
        .as_ref()
        .and_then(|c| c.consent_to_share_referral_with_microsoft_sellers)
        .unwrap_or(referral.referral_type == Some(ReferralType::Shared) || from_microsoft);

    let referral_id = referral.referral_id().ok();
    // The first member with an email (the only way a contact is matched), else the first.
    let contact = customer
        .and_then(|c| {
            let has_email = |member: &&Member| {
                member
                    .email
                    .as_deref()
                    .is_some_and(|email| !email.trim().is_empty())
            };
            c.team.iter().find(has_email).or_else(|| c.team.first())
        })
        .map(contact_of)
        .filter(|c| !c.is_empty());

    Opportunity {
        name: referral.name.clone(),
        deal_value,
        closing_date: details
            .and_then(|d| d.closing_date_time.as_ref())
            .and_then(WireDateTime::date),
        notes: details.and_then(|d| d.notes.clone()),
        stage: stage_of(referral.status.as_ref(), referral.substatus.as_ref()),
        account: Account {
            name: customer.and_then(|c| c.name.clone()),
            address_line1: address.and_then(|a| a.address_line1.clone()),
            city: address.and_then(|a| a.city.clone()),
            state: address.and_then(|a| a.state.clone()),
            postal_code: address.and_then(|a| a.postal_code.clone()),
            country: address
                .and_then(|a| a.country.as_deref())
                .and_then(|c| CountryCode::try_from(c).ok()),
        },
        contact,
        solutions,
        help,
        visible_to_microsoft,
        sync: true,
        referral_id,
        referral_link: referral_id.and_then(|id| config.referral_link(&id.to_string())),
        microsoft_crm_id: None,
    }
}

fn contact_of(member: &Member) -> Contact {
    Contact {
        first_name: member.first_name.clone(),
        last_name: member.last_name.clone(),
        email: member.email.clone(),
        phone: member.phone_number.clone(),
    }
}

fn member_of(contact: &Contact) -> Member {
    Member {
        first_name: contact.first_name.clone(),
        last_name: contact.last_name.clone(),
        phone_number: contact.phone.clone(),
        email: contact.email.clone(),
        ..Member::default()
    }
}

/// The body for `POST /v1.0/engagements/referrals` from a validated CRM opportunity.
///
/// Partner-created deals start Active/Accepted. With help requested the referral is `Shared`,
/// carries `inviteContext.assistanceRequestCode` and `consentToShareReferralWithMicrosoftSellers:
/// true`; without help it is `Independent` and shared with Microsoft sellers only if the
/// opportunity is marked visible. Solutions go to `details.requirements.solutions` (type
/// `Name`) and to `target` (type `SolutionProfile`); the customer contact to
/// `customerProfile.team`; the CRM record id to `externalReferenceId`. Setting "Sync with
/// Partner Center" is the seller's decision to share, so both data-sharing consents are `true`.
///
/// `partner_team` is the partner's own sales team (the UI requires at least one member with
/// name, phone and email); the opportunity model does not carry the CRM owner.
///
/// The record's Solution Area, Solution Play and Partner Role go to the top-level members
/// `solutionArea`, `solutionPlay` and `partnerRole` as strings, spelled as configured. Their
/// JSON shape is UNKNOWN (the create page names the members and types only); a string is how
/// every documented referral enum travels
/// (docs/partner-center.md#solution-area-solution-play-and-partner-role).
///
/// The second step of the Shared flow, the referral that invites Microsoft, is
/// [`microsoft_invitation_body`]: it needs the first one's `engagementId`.
pub fn referral_create_body(new: &NewReferral, partner_team: &[Member]) -> Referral {
    let taxonomy = new.taxonomy();
    Referral {
        solution_area: Some(Value::String(taxonomy.solution_area.as_str().to_owned())),
        solution_play: Some(Value::String(taxonomy.solution_play.as_str().to_owned())),
        partner_role: Some(Value::String(taxonomy.partner_role.as_str().to_owned())),
        ..referral_body(new.validated(), partner_team)
    }
}

/// The create body of an already created deal, for the second referral of its Shared flow
/// ([`microsoft_invitation_body`]) when it is sent by a later sync: [`referral_create_body`]'s
/// members, with the Solution Area, Solution Play and Partner Role of `own` (the partner's
/// referral as Partner Center holds it), each falling back to the record's value.
pub fn shared_deal_body(
    validated: &ValidatedOpportunity,
    partner_team: &[Member],
    own: &Referral,
) -> Referral {
    let record = validated.taxonomy();
    let text = |value: Option<&str>| value.map(|v| Value::String(v.to_owned()));
    Referral {
        solution_area: own
            .solution_area
            .clone()
            .or_else(|| text(record.solution_area.as_ref().map(|v| v.as_str()))),
        solution_play: own
            .solution_play
            .clone()
            .or_else(|| text(record.solution_play.as_ref().map(|v| v.as_str()))),
        partner_role: own
            .partner_role
            .clone()
            .or_else(|| text(record.partner_role.as_ref().map(|v| v.as_str()))),
        ..referral_body(validated, partner_team)
    }
}

/// [`referral_create_body`] without the taxonomy.
fn referral_body(validated: &ValidatedOpportunity, partner_team: &[Member]) -> Referral {
    let opportunity = validated.opportunity();
    let help = opportunity.help.as_ref().filter(|h| h.is_known());
    let solutions = &opportunity.solutions;
    let account = &opportunity.account;
    Referral {
        name: opportunity.name.clone(),
        external_reference_id: validated.record().id.as_ref().map(|id| id.native()),
        status: Some(ReferralStatus::Active),
        substatus: Some(ReferralSubstatus::Accepted),
        referral_type: Some(if help.is_some() {
            ReferralType::Shared
        } else {
            ReferralType::Independent
        }),
        qualification: Some(ReferralQualification::SalesQualified),
        customer_profile: Some(CustomerProfile {
            name: account.name.clone(),
            address: Some(Address {
                address_line1: account.address_line1.clone(),
                city: account.city.clone(),
                state: account.state.clone(),
                postal_code: account.postal_code.clone(),
                country: account.country.map(|c| c.as_str().to_owned()),
                ..Address::default()
            }),
            team: opportunity.contact.iter().map(member_of).collect(),
            ..CustomerProfile::default()
        }),
        consent: Some(Consent {
            consent_to_to_share_info_with_others: Some(true),
            consent_to_contact: Some(true),
            consent_to_share_referral_with_microsoft_sellers: Some(
                help.is_some() || opportunity.visible_to_microsoft,
            ),
            ..Consent::default()
        }),
        details: Some(ReferralDetails {
            notes: opportunity.notes.clone(),
            deal_value: opportunity.deal_value.map(|m| m.amount),
            currency: opportunity
                .deal_value
                .map(|m| m.currency.as_str().to_owned()),
            closing_date_time: opportunity.closing_date.map(WireDateTime::from_date),
            requirements: (!solutions.is_empty()).then(|| ReferralRequirements {
                solutions: solutions
                    .iter()
                    .map(|id| SolutionTag {
                        id: Some(id.as_str().to_owned()),
                        solution_type: Some(SolutionType::Name),
                        ..SolutionTag::default()
                    })
                    .collect(),
                ..ReferralRequirements::default()
            }),
            ..ReferralDetails::default()
        }),
        team: partner_team.to_vec(),
        invite_context: help.map(|h| InviteContext {
            assistance_request_code: Some(AssistanceRequestCode::parse(h.code())),
            ..InviteContext::default()
        }),
        target: solutions
            .iter()
            .map(|id| ReferralTarget {
                id: Some(id.as_str().to_owned()),
                target_type: Some(TargetType::SolutionProfile),
                ..ReferralTarget::default()
            })
            .collect(),
        ..Referral::default()
    }
}

/// Whether the opportunity asks for Microsoft's help: its referral is `Shared`, and Microsoft is
/// invited to its engagement with a second referral.
pub fn is_shared_deal(opportunity: &Opportunity) -> bool {
    opportunity.help.as_ref().is_some_and(|h| h.is_known())
}

/// The organization id of Microsoft as a referral target.
const MICROSOFT_TARGET: &str = "msft";

/// The second referral of a Shared deal
/// (docs/partner-center.md#shared-deals-and-related-referrals): the deal's `shared` create body in
/// the same `engagement`, targeted at Microsoft (`{"type": "BusinessProfileLocation", "id":
/// "msft"}`). It carries no `externalReferenceId`: the CRM opportunity stays linked to the
/// partner's own referral only.
pub fn microsoft_invitation_body(shared: &Referral, engagement: &EngagementId) -> Referral {
    Referral {
        engagement_id: Some(engagement.to_string()),
        external_reference_id: None,
        target: vec![ReferralTarget {
            id: Some(MICROSOFT_TARGET.to_owned()),
            target_type: Some(TargetType::BusinessProfileLocation),
            ..ReferralTarget::default()
        }],
        ..shared.clone()
    }
}

/// Whether `referral` is a partner's invitation of Microsoft (it targets `msft`).
pub fn invites_microsoft(referral: &Referral) -> bool {
    referral.target.iter().any(|target| {
        target
            .id
            .as_deref()
            .is_some_and(|id| id.trim().eq_ignore_ascii_case(MICROSOFT_TARGET))
    })
}

fn normalized_text(text: Option<&str>) -> Option<String> {
    text.map(|t| t.replace("\r\n", "\n").trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The update fields (currency, name, deal value, closing date, notes) that differ between a
/// **New** referral (not accepted yet) and an opportunity still on hold in the CRM: the
/// changes [`referral_patch`] holds back ("changes made while on hold don't sync") until the
/// referral is accepted — in Partner Center, or by moving the opportunity to its active stage,
/// which accepts it and sends them with it. Empty when nothing is held.
pub fn held_until_accepted(current: &Referral, desired: &Opportunity) -> Vec<String> {
    let is_new = current
        .state()
        .is_some_and(|s| s.status == ReferralStatus::New);
    if !is_new || desired.stage != Some(OpportunityStage::OnHold) {
        return Vec::new();
    }
    let fields_only = Opportunity {
        stage: None,
        ..desired.clone()
    };
    referral_patch(current, &fields_only, false)
        .map(|ops| ops.into_iter().map(|op| op.path).collect())
        .unwrap_or_default()
}

/// The JSON Patch that brings `current` in line with `desired` for the CRM → Partner Center
/// update fields (docs/partner-center.md#update-field-lists: currency, name, deal value, closing
/// date, notes, state).
///
/// Only `replace` operations, only for fields that differ, and only for values the CRM has
/// (a missing value never clears Partner Center). The rules:
/// - **On hold**: while the referral is still New and the CRM stage is on hold, nothing syncs
///   ("changes made while on hold don't sync").
/// - **Accept**: a New referral whose CRM stage is active becomes Active/Accepted.
/// - **Close**: Won/Lost is sent only when `explicit_close` (the CRM change itself closed the
///   opportunity); a CRM loss becomes `Declined` for a New referral (the partner declines it)
///   and `Lost` otherwise.
/// - **Terminal**: a won, lost, declined or expired referral takes no change at all: when
///   something differs this returns a [`TransitionError`] instead of operations.
///
/// Status and substatus come last, so the other fields land before a close.
pub fn referral_patch(
    current: &Referral,
    desired: &Opportunity,
    explicit_close: bool,
) -> Result<Vec<PatchOp>, TransitionError> {
    let current_state = current.state();
    let current_stage = stage_of(current.status.as_ref(), current.substatus.as_ref());
    let is_new = current_state
        .as_ref()
        .is_some_and(|s| s.status == ReferralStatus::New);
    if is_new && desired.stage == Some(OpportunityStage::OnHold) {
        return Ok(Vec::new());
    }

    let mut ops = Vec::new();
    let details = current.details.as_ref();
    if let Some(money) = desired.deal_value {
        let current_currency = details
            .and_then(|d| d.currency.as_deref())
            .and_then(|c| CurrencyCode::try_from(c).ok());
        if current_currency != Some(money.currency) {
            ops.push(PatchOp::replace(
                "/details/currency",
                money.currency.as_str(),
            ));
        }
    }
    if let Some(name) = normalized_text(desired.name.as_deref())
        && normalized_text(current.name.as_deref()).as_ref() != Some(&name)
    {
        ops.push(PatchOp::replace("/name", name));
    }
    if let Some(money) = desired.deal_value
        && details.and_then(|d| d.deal_value) != Some(money.amount)
    {
        ops.push(PatchOp::replace(
            "/details/dealValue",
            decimal_to_json(money.amount),
        ));
    }
    if let Some(date) = desired.closing_date
        && details
            .and_then(|d| d.closing_date_time.as_ref())
            .and_then(WireDateTime::date)
            != Some(date)
    {
        ops.push(PatchOp::replace(
            "/details/closingDateTime",
            WireDateTime::from_date(date).as_str(),
        ));
    }
    if let Some(notes) = normalized_text(desired.notes.as_deref())
        && normalized_text(details.and_then(|d| d.notes.as_deref())).as_ref() != Some(&notes)
    {
        ops.push(PatchOp::replace("/details/notes", Value::String(notes)));
    }

    let target = match desired.stage {
        Some(OpportunityStage::Active) if is_new => Some(ReferralState::accepted()),
        Some(OpportunityStage::Won) if explicit_close => {
            Some(ReferralState::closed(ReferralSubstatus::Won))
        }
        Some(OpportunityStage::Lost(reason)) if explicit_close => Some(ReferralState::closed(
            if is_new && reason == LostReason::Declined {
                ReferralSubstatus::Declined
            } else {
                ReferralSubstatus::Lost
            },
        )),
        _ => None,
    }
    // Already there (a closed referral stays closed the same way whatever the loss reason).
    .filter(|_| desired.stage.map(|s| s.coarse()) != current_stage.map(|s| s.coarse()))
    .filter(|target| current_state.as_ref() != Some(target));

    if let Some(from) = current_state.as_ref().filter(|s| s.is_terminal())
        && (!ops.is_empty() || target.is_some())
    {
        let mut requested: Vec<String> = ops.iter().map(|op| op.path.clone()).collect();
        if let Some(target) = &target {
            requested.push(format!("state {target}"));
        }
        return Err(TransitionError::Terminal {
            from: from.clone(),
            requested: format!("changes to {}", requested.join(", ")),
        });
    }
    if let Some(target) = target {
        let from =
            current_state.ok_or_else(|| TransitionError::MissingState { to: target.clone() })?;
        from.transition(&target)?;
        ops.push(PatchOp::replace("/status", target.status.as_str()));
        if let Some(substatus) = &target.substatus {
            ops.push(PatchOp::replace("/substatus", substatus.as_str()));
        }
    }
    Ok(ops)
}
