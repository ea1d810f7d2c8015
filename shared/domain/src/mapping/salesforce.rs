//! Salesforce ⇄ [`Opportunity`].
//!
//! Reading takes the Opportunity record JSON (REST `GET`, a SOQL row with `Account.*` /
//! `Contact.*` relationship fields, or Outbound Message fields decoded to text by the
//! adapter), plus the Account and Contact records when the caller has them. Writing produces
//! the JSON bodies for the sObject REST API.

use std::fmt;

use serde_json::{Map, Value};

use super::BodyScope;
use super::common;
use super::config::MappingConfig;
use super::read::{self, Rejections};
use crate::ids::{CrmKind, CrmRecordId, SalesforceId};
use crate::opportunity::{
    Account, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityField, OpportunityStage,
    RecordRef,
};
use crate::serde_helpers::decimal_to_json;
use crate::values::Money;

/// A Salesforce Opportunity as read, with the related records the caller could get.
///
/// `account` / `contact` may be left `None` when the opportunity carries them as relationship
/// objects (`"Account": {"Name": …}`, `"Contact": {…}`).
#[derive(Clone, Copy)]
pub struct SalesforceRecord<'a> {
    /// The Opportunity's fields.
    pub opportunity: &'a Map<String, Value>,
    /// The Account's fields.
    pub account: Option<&'a Map<String, Value>>,
    /// The Contact's fields.
    pub contact: Option<&'a Map<String, Value>>,
}

impl<'a> SalesforceRecord<'a> {
    /// An Opportunity without related records.
    pub fn new(opportunity: &'a Map<String, Value>) -> Self {
        Self {
            opportunity,
            account: None,
            contact: None,
        }
    }
}

impl fmt::Debug for SalesforceRecord<'_> {
    /// Field names only: the values may hold contact data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys =
            |map: Option<&Map<String, Value>>| map.map(|m| m.keys().cloned().collect::<Vec<_>>());
        f.debug_struct("SalesforceRecord")
            .field("opportunity_fields", &keys(Some(self.opportunity)))
            .field("account_fields", &keys(self.account))
            .field("contact_fields", &keys(self.contact))
            .finish()
    }
}

/// Read a Salesforce Opportunity into the canonical model.
pub fn opportunity_from_salesforce(
    record: &SalesforceRecord<'_>,
    config: &MappingConfig,
) -> CrmOpportunity {
    let row = record.opportunity;
    let sf = &config.salesforce;
    let f = &sf.opportunity;
    let mut rejected = Rejections::default();

    let name = read::text(row, &f.name);
    let id = read::text(row, &f.id)
        .and_then(|id| SalesforceId::try_from(id.as_str()).ok())
        .map(CrmRecordId::Salesforce);

    let amount = rejected.take(
        read::decimal(row, &f.amount),
        OpportunityField::DealValue,
        &f.amount,
    );
    let currency = if sf.multi_currency {
        rejected.take(
            read::currency(row, &f.currency_iso_code),
            OpportunityField::Currency,
            &f.currency_iso_code,
        )
    } else {
        None
    }
    .or(config.default_currency);
    let deal_value = amount
        .zip(currency)
        .map(|(amount, currency)| Money::new(amount, currency));

    let account_row = record
        .account
        .or_else(|| read::object(row, &f.account_relationship));
    let contact_row = record
        .contact
        .or_else(|| read::object(row, &f.contact_relationship));

    let opportunity = Opportunity {
        name: name.clone(),
        deal_value,
        closing_date: rejected.take(
            read::date(row, &f.close_date),
            OpportunityField::ClosingDate,
            &f.close_date,
        ),
        notes: read::text(row, &f.description),
        stage: salesforce_stage(row, config),
        account: account_row
            .map(|a| salesforce_account(a, config, &mut rejected))
            .unwrap_or_default(),
        contact: contact_row.and_then(|c| {
            let cf = &sf.contact;
            read::contact(c, &cf.first_name, &cf.last_name, &cf.email, &cf.phone)
        }),
        solutions: read::solutions(row, &f.solutions, &mut rejected),
        help: read::help(row, &f.help),
        visible_to_microsoft: rejected
            .take(
                read::boolean(row, &f.visibility),
                OpportunityField::Flag,
                &f.visibility,
            )
            .unwrap_or(false),
        sync: rejected
            .take(read::boolean(row, &f.sync), OpportunityField::Flag, &f.sync)
            .unwrap_or(false),
        referral_id: rejected.take(
            read::referral_id(row, &f.referral_identifier),
            OpportunityField::ReferralId,
            &f.referral_identifier,
        ),
        referral_link: read::text(row, &f.referral_link),
        microsoft_crm_id: read::text(row, &f.microsoft_crm_identifier),
    };
    let taxonomy = read::taxonomy(
        row,
        &read::TaxonomyKeys {
            solution_area: &f.solution_area,
            solution_play: &f.solution_play,
            partner_role: &f.partner_role,
        },
        &config.taxonomy,
        &mut rejected,
    );
    CrmOpportunity {
        record: RecordRef {
            crm: CrmKind::Salesforce,
            entity: f.object.clone(),
            id,
            name,
        },
        opportunity,
        rejected: rejected.0,
        amount,
        currency,
        version: None,
        audit: read::text(row, &f.audit),
        taxonomy,
    }
}

/// The stage: the configured stage names (any case), else the read-only `IsClosed`/`IsWon`
/// flags, else any other named stage counts as active (org-specific open stages).
fn salesforce_stage(row: &Map<String, Value>, config: &MappingConfig) -> Option<OpportunityStage> {
    let f = &config.salesforce.opportunity;
    let names = &config.stages;
    let flag = |key: &str| matches!(read::boolean(row, key), read::Read::Found(true));
    let closed = flag(&f.is_closed);
    let won = flag(&f.is_won);
    match read::text(row, &f.stage_name) {
        Some(stage) if stage.eq_ignore_ascii_case(names.on_hold.trim()) => {
            Some(OpportunityStage::OnHold)
        }
        Some(stage) if stage.eq_ignore_ascii_case(names.active.trim()) => {
            Some(OpportunityStage::Active)
        }
        Some(stage) if stage.eq_ignore_ascii_case(names.won.trim()) => Some(OpportunityStage::Won),
        Some(stage) if stage.eq_ignore_ascii_case(names.lost.trim()) => {
            Some(OpportunityStage::Lost(LostReason::Lost))
        }
        _ if closed && won => Some(OpportunityStage::Won),
        _ if closed => Some(OpportunityStage::Lost(LostReason::Lost)),
        Some(_) => Some(OpportunityStage::Active),
        None => None,
    }
}

fn salesforce_account(
    row: &Map<String, Value>,
    config: &MappingConfig,
    rejected: &mut Rejections,
) -> Account {
    let f = &config.salesforce.account;
    Account {
        name: read::text(row, &f.name),
        address_line1: read::text(row, &f.street),
        city: read::text(row, &f.city),
        state: read::text(row, &f.state),
        postal_code: read::text(row, &f.postal_code),
        country: rejected.take(
            read::country(row, &f.country),
            OpportunityField::Country,
            &f.country,
        ),
    }
}

/// The `StageName` for a stage (every loss maps to the one lost stage).
pub fn salesforce_stage_name(stage: OpportunityStage, config: &MappingConfig) -> &str {
    let names = &config.stages;
    match stage {
        OpportunityStage::OnHold => &names.on_hold,
        OpportunityStage::Active => &names.active,
        OpportunityStage::Won => &names.won,
        OpportunityStage::Lost(_) => &names.lost,
    }
}

/// The body for creating or updating a Salesforce Opportunity.
///
/// Only mapped fields that are set are included. [`BodyScope::Update`] is the Partner Center →
/// CRM update set (currency, amount, close date, description, stage) plus the connector's own
/// fields. For an upsert by `Referral_Identifier__c` the adapter puts the id in the URL and
/// may drop that field from the body (whether Salesforce accepts the key in both places is not
/// documented in our references).
pub fn salesforce_opportunity_body(
    opportunity: &Opportunity,
    account_id: Option<&SalesforceId>,
    audit: Option<&str>,
    scope: BodyScope,
    config: &MappingConfig,
) -> Map<String, Value> {
    let sf = &config.salesforce;
    let f = &sf.opportunity;
    let create = scope == BodyScope::Create;
    let mut body = Map::new();
    if create {
        read::put(&mut body, &f.name, opportunity.name.clone());
    }
    read::put(
        &mut body,
        &f.amount,
        opportunity.deal_value.map(|m| decimal_to_json(m.amount)),
    );
    if sf.multi_currency {
        read::put(
            &mut body,
            &f.currency_iso_code,
            opportunity.deal_value.map(|m| m.currency.as_str()),
        );
    }
    read::put(
        &mut body,
        &f.close_date,
        opportunity
            .closing_date
            .map(|d| d.format("%Y-%m-%d").to_string()),
    );
    read::put(&mut body, &f.description, opportunity.notes.clone());
    read::put(
        &mut body,
        &f.stage_name,
        opportunity
            .stage
            .map(|s| salesforce_stage_name(s, config).to_owned()),
    );
    if create {
        read::put(&mut body, &f.account_id, account_id.map(|id| id.as_str()));
    }
    common::put_connector_fields(&mut body, f.into(), opportunity, create, audit);
    body
}

/// The body for creating a Salesforce Account.
pub fn salesforce_account_body(account: &Account, config: &MappingConfig) -> Map<String, Value> {
    let f = &config.salesforce.account;
    let mut body = Map::new();
    read::put(&mut body, &f.name, account.name.clone());
    read::put(&mut body, &f.street, account.address_line1.clone());
    read::put(&mut body, &f.city, account.city.clone());
    read::put(&mut body, &f.state, account.state.clone());
    read::put(&mut body, &f.postal_code, account.postal_code.clone());
    read::put(&mut body, &f.country, account.country.map(|c| c.as_str()));
    body
}

/// The body for creating a Salesforce Contact, linked to its Account when given.
pub fn salesforce_contact_body(
    contact: &Contact,
    account_id: Option<&SalesforceId>,
    config: &MappingConfig,
) -> Map<String, Value> {
    let f = &config.salesforce.contact;
    let mut body = Map::new();
    read::put(&mut body, &f.first_name, contact.first_name.clone());
    read::put(&mut body, &f.last_name, contact.last_name.clone());
    read::put(&mut body, &f.email, contact.email.clone());
    read::put(&mut body, &f.phone, contact.phone.clone());
    read::put(&mut body, &f.account_id, account_id.map(|id| id.as_str()));
    body
}
