//! Dataverse (Dynamics 365) ⇄ [`Opportunity`].
//!
//! Reading takes the opportunity's attributes as a JSON object (column → value), either as the
//! Web API returns them or as an adapter decoded them from a webhook's `Attributes` key/value
//! list, plus the account and contact rows when the caller has them. Writing produces the JSON
//! bodies for `POST`/`PATCH` on `opportunities`, `accounts` and `contacts`.

use std::fmt;

use serde_json::{Map, Value};

use super::BodyScope;
use super::common;
use super::config::MappingConfig;
use super::read::{self, Read, Rejections};
use crate::ids::{CrmKind, CrmRecordId, DataverseId};
use crate::opportunity::{
    Account, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityField, OpportunityStage,
    RecordRef,
};
use crate::serde_helpers::decimal_to_json;
use crate::values::{CurrencyCode, Money};

/// The annotation carrying a row's version in a Web API answer.
const ODATA_ETAG: &str = "@odata.etag";

/// A Dataverse opportunity as read, with the related rows the caller could get.
///
/// `account` and `contact` may be left `None` when the opportunity row carries them expanded
/// (`$expand=parentaccountid(...)`, `parentcontactid(...)`); the currency likewise comes from
/// an expanded `transactioncurrencyid`, from `currency`, or from
/// [`MappingConfig::default_currency`].
#[derive(Clone, Copy)]
pub struct DataverseRecord<'a> {
    /// The opportunity's columns.
    pub opportunity: &'a Map<String, Value>,
    /// The customer account's columns.
    pub account: Option<&'a Map<String, Value>>,
    /// The customer contact's columns.
    pub contact: Option<&'a Map<String, Value>>,
    /// The opportunity's currency, resolved by the caller from its `transactioncurrency` row.
    pub currency: Option<CurrencyCode>,
}

impl<'a> DataverseRecord<'a> {
    /// An opportunity row without related rows.
    pub fn new(opportunity: &'a Map<String, Value>) -> Self {
        Self {
            opportunity,
            account: None,
            contact: None,
            currency: None,
        }
    }
}

impl fmt::Debug for DataverseRecord<'_> {
    /// Column names only: the values may hold contact data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys =
            |map: Option<&Map<String, Value>>| map.map(|m| m.keys().cloned().collect::<Vec<_>>());
        f.debug_struct("DataverseRecord")
            .field("opportunity_columns", &keys(Some(self.opportunity)))
            .field("account_columns", &keys(self.account))
            .field("contact_columns", &keys(self.contact))
            .field("currency", &self.currency)
            .finish()
    }
}

/// The related rows an opportunity body binds to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataverseLinks {
    /// The `transactioncurrency` row of the deal's currency.
    pub currency: Option<DataverseId>,
    /// The customer account.
    pub account: Option<DataverseId>,
    /// The customer contact.
    pub contact: Option<DataverseId>,
}

/// Read a Dataverse opportunity into the canonical model.
pub fn opportunity_from_dataverse(
    record: &DataverseRecord<'_>,
    config: &MappingConfig,
) -> CrmOpportunity {
    let row = record.opportunity;
    let f = &config.dataverse.opportunity;
    let mut rejected = Rejections::default();

    let name = read::text(row, &f.name);
    let id = read::text(row, &f.id)
        .and_then(|id| DataverseId::try_from(id.as_str()).ok())
        .map(CrmRecordId::Dataverse);

    let amount = rejected.take(
        read::decimal(row, &f.estimated_value),
        OpportunityField::DealValue,
        &f.estimated_value,
    );
    let currency =
        dataverse_currency(row, record.currency, config, &mut rejected).or(config.default_currency);
    let deal_value = amount
        .zip(currency)
        .map(|(amount, currency)| Money::new(amount, currency));

    let account_row = record
        .account
        .or_else(|| read::object(row, &f.parent_account));
    let contact_row = record
        .contact
        .or_else(|| read::object(row, &f.parent_contact));

    let opportunity = Opportunity {
        name: name.clone(),
        deal_value,
        closing_date: rejected.take(
            read::date(row, &f.estimated_close_date),
            OpportunityField::ClosingDate,
            &f.estimated_close_date,
        ),
        notes: read::text(row, &f.description),
        stage: dataverse_stage(row, config, &mut rejected),
        account: account_row
            .map(|a| dataverse_account(a, config, &mut rejected))
            .unwrap_or_default(),
        contact: contact_row.and_then(|c| {
            let cf = &config.dataverse.contact;
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
            crm: CrmKind::Dataverse,
            entity: f.entity.clone(),
            id,
            name,
        },
        opportunity,
        rejected: rejected.0,
        amount,
        currency,
        version: read::text(row, ODATA_ETAG),
        audit: read::text(row, &f.audit),
        taxonomy,
    }
}

/// The currency: the expanded lookup's ISO code, an ISO code column on the row itself, or the
/// caller's resolved currency.
fn dataverse_currency(
    row: &Map<String, Value>,
    resolved: Option<CurrencyCode>,
    config: &MappingConfig,
    rejected: &mut Rejections,
) -> Option<CurrencyCode> {
    let f = &config.dataverse.opportunity;
    let from_row = match read::object(row, &f.currency) {
        Some(expanded) => read::currency(expanded, &f.currency_iso_code),
        None => read::currency(row, &f.currency_iso_code),
    };
    rejected
        .take(from_row, OpportunityField::Currency, &f.currency)
        .or(resolved)
}

/// The stage from `statecode` / `statuscode` (either may be missing in a partial webhook).
fn dataverse_stage(
    row: &Map<String, Value>,
    config: &MappingConfig,
    rejected: &mut Rejections,
) -> Option<OpportunityStage> {
    let f = &config.dataverse.opportunity;
    let codes = &config.dataverse.status_codes;
    let state = rejected.take(
        read::integer(row, &f.state_code),
        OpportunityField::Stage,
        &f.state_code,
    );
    let status = rejected.take(
        read::integer(row, &f.status_code),
        OpportunityField::Stage,
        &f.status_code,
    );
    let lost = |status: Option<i64>| {
        if status == Some(codes.canceled) {
            OpportunityStage::Lost(LostReason::Declined)
        } else {
            OpportunityStage::Lost(LostReason::Lost)
        }
    };
    match (state, status) {
        (Some(s), _) if s == codes.won_state => Some(OpportunityStage::Won),
        (Some(s), status) if s == codes.lost_state => Some(lost(status)),
        (Some(s), status) if s == codes.open => Some(if status == Some(codes.on_hold) {
            OpportunityStage::OnHold
        } else {
            OpportunityStage::Active
        }),
        (Some(other), _) => {
            rejected.take::<()>(
                Read::Rejected(other.to_string()),
                OpportunityField::Stage,
                &f.state_code,
            );
            None
        }
        (None, Some(s)) if s == codes.on_hold => Some(OpportunityStage::OnHold),
        (None, Some(s)) if s == codes.in_progress => Some(OpportunityStage::Active),
        (None, Some(s)) if s == codes.won => Some(OpportunityStage::Won),
        (None, Some(s)) if s == codes.out_sold || s == codes.canceled => Some(lost(Some(s))),
        (None, _) => None,
    }
}

fn dataverse_account(
    row: &Map<String, Value>,
    config: &MappingConfig,
    rejected: &mut Rejections,
) -> Account {
    let f = &config.dataverse.account;
    Account {
        name: read::text(row, &f.name),
        address_line1: read::text(row, &f.address_line1),
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

/// `statecode` / `statuscode` for a stage: on hold 0/2, active 0/1, won 1/3, lost 2/5
/// (Out-Sold), declined / expired / other 2/4 (Canceled).
pub fn dataverse_state(stage: OpportunityStage, config: &MappingConfig) -> (i64, i64) {
    let codes = &config.dataverse.status_codes;
    match stage {
        OpportunityStage::OnHold => (codes.open, codes.on_hold),
        OpportunityStage::Active => (codes.open, codes.in_progress),
        OpportunityStage::Won => (codes.won_state, codes.won),
        OpportunityStage::Lost(LostReason::Lost) => (codes.lost_state, codes.out_sold),
        OpportunityStage::Lost(LostReason::Declined | LostReason::Expired | LostReason::Other) => {
            (codes.lost_state, codes.canceled)
        }
    }
}

fn bind(entity_set: &str, id: DataverseId) -> String {
    format!("/{entity_set}({id})")
}

/// The body for creating or updating a Dataverse opportunity.
///
/// Only mapped fields that are set are included; `None` never clears a CRM column.
/// [`BodyScope::Update`] is the Partner Center → CRM update set (currency, deal value, closing
/// date, notes, state) plus the connector's own columns (referral id and link, Microsoft CRM
/// identifier, audit). A won or lost `statecode`/`statuscode` is not written by the update: the
/// adapter takes it out and closes the row through the `WinOpportunity` / `LoseOpportunity`
/// actions (docs/dataverse.md#closing-an-opportunity).
pub fn dataverse_opportunity_body(
    opportunity: &Opportunity,
    links: &DataverseLinks,
    audit: Option<&str>,
    scope: BodyScope,
    config: &MappingConfig,
) -> Map<String, Value> {
    let f = &config.dataverse.opportunity;
    let mut body = Map::new();
    let create = scope == BodyScope::Create;
    if create {
        read::put(&mut body, &f.name, opportunity.name.clone());
    }
    read::put(
        &mut body,
        &f.estimated_value,
        opportunity.deal_value.map(|m| decimal_to_json(m.amount)),
    );
    read::put(
        &mut body,
        &format!("{}@odata.bind", f.currency),
        links.currency.map(|id| bind(&f.currency_entity_set, id)),
    );
    read::put(
        &mut body,
        &f.estimated_close_date,
        opportunity
            .closing_date
            .map(|d| d.format("%Y-%m-%d").to_string()),
    );
    read::put(&mut body, &f.description, opportunity.notes.clone());
    if create {
        let accounts = &config.dataverse.account.entity_set;
        read::put(
            &mut body,
            &format!("{}@odata.bind", f.parent_account),
            links.account.map(|id| bind(accounts, id)),
        );
        read::put(
            &mut body,
            &format!("{}@odata.bind", f.customer_account),
            links.account.map(|id| bind(accounts, id)),
        );
        read::put(
            &mut body,
            &format!("{}@odata.bind", f.parent_contact),
            links
                .contact
                .map(|id| bind(&config.dataverse.contact.entity_set, id)),
        );
    }
    if let Some(stage) = opportunity.stage {
        let (state, status) = dataverse_state(stage, config);
        body.insert(f.state_code.clone(), state.into());
        body.insert(f.status_code.clone(), status.into());
    }
    common::put_connector_fields(&mut body, f.into(), opportunity, create, audit);
    body
}

/// The body for creating a Dataverse account.
pub fn dataverse_account_body(account: &Account, config: &MappingConfig) -> Map<String, Value> {
    let f = &config.dataverse.account;
    let mut body = Map::new();
    read::put(&mut body, &f.name, account.name.clone());
    read::put(&mut body, &f.address_line1, account.address_line1.clone());
    read::put(&mut body, &f.city, account.city.clone());
    read::put(&mut body, &f.state, account.state.clone());
    read::put(&mut body, &f.postal_code, account.postal_code.clone());
    read::put(&mut body, &f.country, account.country.map(|c| c.as_str()));
    body
}

/// The body for creating a Dataverse contact, bound to its account when given.
pub fn dataverse_contact_body(
    contact: &Contact,
    account: Option<DataverseId>,
    config: &MappingConfig,
) -> Map<String, Value> {
    let f = &config.dataverse.contact;
    let mut body = Map::new();
    read::put(&mut body, &f.first_name, contact.first_name.clone());
    read::put(&mut body, &f.last_name, contact.last_name.clone());
    read::put(&mut body, &f.email, contact.email.clone());
    read::put(&mut body, &f.phone, contact.phone.clone());
    read::put(
        &mut body,
        &format!("{}@odata.bind", f.parent_account),
        account.map(|id| bind(&config.dataverse.account.entity_set, id)),
    );
    body
}
