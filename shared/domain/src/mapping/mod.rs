//! Configurable field mapping between Partner Center, the canonical [`Opportunity`] and the
//! two CRMs. Pure functions, `serde_json::Value` in and out; defaults follow Microsoft's Power
//! Automate co-sell connector (docs/partner-center.md#power-automate-co-sell-connector).
//!
//! | Direction | Entry point |
//! |---|---|
//! | PC → model | [`referral_to_opportunity`]; as the CRM can hold it: [`referral_to_crm_opportunity`] |
//! | model → PC (create) | [`referral_create_body`] (from a [`NewReferral`]) |
//! | model → PC (update) | [`referral_patch`] |
//! | Dataverse → model | [`opportunity_from_dataverse`] |
//! | model → Dataverse | [`dataverse_opportunity_body`], [`dataverse_account_body`], [`dataverse_contact_body`] |
//! | Salesforce → model | [`opportunity_from_salesforce`] |
//! | model → Salesforce | [`salesforce_opportunity_body`], [`salesforce_account_body`], [`salesforce_contact_body`] |
//!
//! [`Opportunity`]: crate::opportunity::Opportunity
//! [`NewReferral`]: crate::validation::NewReferral

mod common;
mod config;
mod dataverse;
mod fit;
mod partner_center;
pub(crate) mod read;
mod salesforce;

pub use config::{
    DataverseAccountFields, DataverseContactFields, DataverseFields, DataverseOpportunityFields,
    DataverseStatusCodes, MappingConfig, MaxLengths, SalesforceAccountFields,
    SalesforceContactFields, SalesforceFields, SalesforceOpportunityFields, StageNames, TextField,
};
pub use dataverse::{
    DataverseLinks, DataverseRecord, dataverse_account_body, dataverse_contact_body,
    dataverse_opportunity_body, dataverse_state, opportunity_from_dataverse,
};
pub use fit::referral_to_crm_opportunity;
pub use partner_center::{
    held_until_accepted, invites_microsoft, is_shared_deal, microsoft_invitation_body,
    referral_create_body, referral_patch, referral_to_opportunity, shared_deal_body, stage_of,
};
pub use salesforce::{
    SalesforceRecord, opportunity_from_salesforce, salesforce_account_body,
    salesforce_contact_body, salesforce_opportunity_body, salesforce_stage_name,
};

/// Which fields a CRM body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyScope {
    /// Every mapped field: creating the opportunity from a new referral.
    Create,
    /// The Partner Center → CRM update set (docs/partner-center.md#update-field-lists: currency,
    /// deal value, closing date, notes, status) plus the connector's own columns. The name,
    /// customer, help, visibility and solutions stay as the CRM user left them.
    Update,
}

#[cfg(test)]
mod tests;
