//! Field mapping configuration. Every CRM column / field name is configurable; the defaults
//! follow Microsoft's Power Automate co-sell connector
//! (docs/partner-center.md#power-automate-co-sell-connector, docs/dataverse.md#opportunity-table,
//! docs/salesforce.md#opportunity-fields).
//!
//! All structs deserialize with `#[serde(default)]`, so a deployment can override only the
//! names that differ in its org (e.g. `{"salesforce":{"account":{"country":"BillingCountryCode"}}}`
//! for orgs with State and Country picklists).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::CrmKind;
use crate::taxonomy::TaxonomyConfig;
use crate::values::CurrencyCode;

/// The whole mapping configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MappingConfig {
    /// Dataverse (Dynamics 365) column names.
    pub dataverse: DataverseFields,
    /// Salesforce field names.
    pub salesforce: SalesforceFields,
    /// Salesforce stage names.
    pub stages: StageNames,
    /// The currency to assume when a CRM record carries none: Salesforce orgs without
    /// multi-currency have no `CurrencyIsoCode`, and a Dataverse read that did not expand the
    /// currency lookup has only its GUID.
    pub default_currency: Option<CurrencyCode>,
    /// A link to the referral in the Partner Center UI, with `{id}` replaced by the referral id.
    /// The UI's URL format is UNKNOWN (undocumented), so no link is written unless configured.
    pub referral_link_template: Option<String>,
    /// The allowed Solution Areas (with their plays) and Partner Roles of referrals created
    /// from the CRM (docs/partner-center.md#solution-area-solution-play-and-partner-role).
    pub taxonomy: TaxonomyConfig,
    /// Column lengths that differ from the CRM's stock ones, by field (`{"notes": 4000}`):
    /// longer Partner Center text is cut to fit (see [`super::fit`]).
    pub max_lengths: MaxLengths,
    /// A referral without a closing date gets, in Salesforce (which requires one), the date it
    /// was created plus this many days (90).
    pub salesforce_close_date_days: u32,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            dataverse: DataverseFields::default(),
            salesforce: SalesforceFields::default(),
            stages: StageNames::default(),
            default_currency: None,
            referral_link_template: None,
            taxonomy: TaxonomyConfig::default(),
            max_lengths: MaxLengths::new(),
            salesforce_close_date_days: 90,
        }
    }
}

impl MappingConfig {
    /// The referral link for an id, when a template is configured.
    pub fn referral_link(&self, referral_id: &str) -> Option<String> {
        self.referral_link_template
            .as_ref()
            .map(|template| template.replace("{id}", referral_id))
    }
}

/// Dataverse column names, per table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseFields {
    /// Opportunity columns.
    pub opportunity: DataverseOpportunityFields,
    /// Account columns.
    pub account: DataverseAccountFields,
    /// Contact columns.
    pub contact: DataverseContactFields,
    /// `statecode` / `statuscode` values.
    pub status_codes: DataverseStatusCodes,
}

/// Dataverse opportunity columns.
///
/// The `msft_*` logical names were observed in a public export of Microsoft's solution, not
/// documented (docs/partner-center.md#custom-crm-fields); they are defaults only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseOpportunityFields {
    /// Table logical name, used in messages.
    pub entity: String,
    /// Entity set name for URLs.
    pub entity_set: String,
    /// Primary key.
    pub id: String,
    /// Topic (name).
    pub name: String,
    /// Estimated revenue: the deal value.
    pub estimated_value: String,
    /// Estimated close date (DateOnly).
    pub estimated_close_date: String,
    /// Description: the notes.
    pub description: String,
    /// Currency lookup (navigation property). Written as `<name>@odata.bind`; read from the
    /// expanded object's ISO code column.
    pub currency: String,
    /// Entity set of the currency table, for the bind path.
    pub currency_entity_set: String,
    /// ISO code column of the currency table.
    pub currency_iso_code: String,
    /// Account lookup.
    pub parent_account: String,
    /// The polymorphic customer lookup, bound to the account.
    pub customer_account: String,
    /// Contact lookup: the customer contact.
    pub parent_contact: String,
    /// State (Open / Won / Lost).
    pub state_code: String,
    /// Status reason.
    pub status_code: String,
    /// "Sync with Partner Center" (Yes/No).
    pub sync: String,
    /// "Referral Identifier".
    pub referral_identifier: String,
    /// "Referral Link".
    pub referral_link: String,
    /// "Audit" (text).
    pub audit: String,
    /// "How can Microsoft help?". Its column type is UNKNOWN; the label text is written, and a
    /// number is read through its `@OData.Community.Display.V1.FormattedValue` annotation.
    pub help: String,
    /// "Microsoft Partner Center Referral Visibility" (Yes/No).
    pub visibility: String,
    /// Solution IDs. Simplification: Microsoft's solution keeps solutions in a related table
    /// ("Microsoft Partner Center Solutions"); here they are one text column with IDs separated
    /// by `;` or `,` (written as `; `).
    pub solutions: String,
    /// "Microsoft CRM Identifier".
    pub microsoft_crm_identifier: String,
    /// Solution Area of a referral created from the opportunity (text or choice column; a
    /// choice is read through its formatted label).
    pub solution_area: String,
    /// Solution Play (text or choice column).
    pub solution_play: String,
    /// Partner Role (text or choice column).
    pub partner_role: String,
}

impl Default for DataverseOpportunityFields {
    fn default() -> Self {
        Self {
            entity: "opportunity".into(),
            entity_set: "opportunities".into(),
            id: "opportunityid".into(),
            name: "name".into(),
            estimated_value: "estimatedvalue".into(),
            estimated_close_date: "estimatedclosedate".into(),
            description: "description".into(),
            currency: "transactioncurrencyid".into(),
            currency_entity_set: "transactioncurrencies".into(),
            currency_iso_code: "isocurrencycode".into(),
            parent_account: "parentaccountid".into(),
            customer_account: "customerid_account".into(),
            parent_contact: "parentcontactid".into(),
            state_code: "statecode".into(),
            status_code: "statuscode".into(),
            sync: "msft_microsoftpartnercenterreferralsync".into(),
            referral_identifier: "msft_microsoftpartnercenterreferralidentifier".into(),
            referral_link: "msft_microsoftpartnercenterreferrallink".into(),
            audit: "msft_microsoftpartnercenterreferralsyncaudit".into(),
            help: "msft_microsoftpartnercenterhelpneed".into(),
            visibility: "msft_microsoftpartnercenterreferralvisible".into(),
            solutions: "msft_microsoftpartnercentersolutions".into(),
            microsoft_crm_identifier: "msft_microsoftcrmidentifier".into(),
            solution_area: "msft_solutionarea".into(),
            solution_play: "msft_solutionplay".into(),
            partner_role: "msft_partnerrole".into(),
        }
    }
}

/// Dataverse account columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseAccountFields {
    /// Table logical name, used in messages.
    pub entity: String,
    /// Entity set name for URLs and binds.
    pub entity_set: String,
    /// Primary key.
    pub id: String,
    /// Company name.
    pub name: String,
    /// Street 1.
    pub address_line1: String,
    /// City.
    pub city: String,
    /// State or province.
    pub state: String,
    /// Postal code.
    pub postal_code: String,
    /// Country: an ISO 3166 two-letter code. For lookup-based country fields, add a custom
    /// two-letter column and configure it here (docs/partner-center.md#default-field-mapping).
    pub country: String,
    /// The collection-valued navigation property to the contacts whose company
    /// (`parentcustomerid`) is the account: a new account and its new contact are created in
    /// one deep-insert request, the contact nested under it
    /// (docs/dataverse.md#service-protection-limits).
    pub contacts: String,
}

impl Default for DataverseAccountFields {
    fn default() -> Self {
        Self {
            entity: "account".into(),
            entity_set: "accounts".into(),
            id: "accountid".into(),
            name: "name".into(),
            address_line1: "address1_line1".into(),
            city: "address1_city".into(),
            state: "address1_stateorprovince".into(),
            postal_code: "address1_postalcode".into(),
            country: "address1_country".into(),
            contacts: "contact_customer_accounts".into(),
        }
    }
}

/// Dataverse contact columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseContactFields {
    /// Table logical name, used in messages.
    pub entity: String,
    /// Entity set name for URLs and binds.
    pub entity_set: String,
    /// Primary key.
    pub id: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Email.
    pub email: String,
    /// Phone.
    pub phone: String,
    /// The contact's company, bound to the account.
    pub parent_account: String,
}

impl Default for DataverseContactFields {
    fn default() -> Self {
        Self {
            entity: "contact".into(),
            entity_set: "contacts".into(),
            id: "contactid".into(),
            first_name: "firstname".into(),
            last_name: "lastname".into(),
            email: "emailaddress1".into(),
            phone: "telephone1".into(),
            parent_account: "parentcustomerid_account".into(),
        }
    }
}

/// Opportunity `statecode` / `statuscode` values (docs/dataverse.md#opportunity-state-and-status).
/// Status reasons can be customised per org, hence configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataverseStatusCodes {
    /// State Open.
    pub open: i64,
    /// State Won.
    pub won_state: i64,
    /// State Lost.
    pub lost_state: i64,
    /// Status "In Progress" (Open).
    pub in_progress: i64,
    /// Status "On Hold" (Open).
    pub on_hold: i64,
    /// Status "Won" (Won).
    pub won: i64,
    /// Status "Canceled" (Lost): declined, expired, or closed otherwise.
    pub canceled: i64,
    /// Status "Out-Sold" (Lost): lost.
    pub out_sold: i64,
}

impl Default for DataverseStatusCodes {
    fn default() -> Self {
        Self {
            open: 0,
            won_state: 1,
            lost_state: 2,
            in_progress: 1,
            on_hold: 2,
            won: 3,
            canceled: 4,
            out_sold: 5,
        }
    }
}

/// Salesforce field names, per object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceFields {
    /// Opportunity fields.
    pub opportunity: SalesforceOpportunityFields,
    /// Account fields.
    pub account: SalesforceAccountFields,
    /// Contact fields.
    pub contact: SalesforceContactFields,
    /// Whether the org has multi-currency (and so `CurrencyIsoCode`). Without it the
    /// currency is [`MappingConfig::default_currency`] and none is written.
    pub multi_currency: bool,
}

impl Default for SalesforceFields {
    fn default() -> Self {
        Self {
            opportunity: SalesforceOpportunityFields::default(),
            account: SalesforceAccountFields::default(),
            contact: SalesforceContactFields::default(),
            multi_currency: true,
        }
    }
}

/// Salesforce Opportunity fields.
///
/// The custom field API names of Microsoft's current managed package are UNKNOWN (the 2020
/// docs show misspelt ones such as `Referral_Identfier_c`); these defaults are the obvious
/// spellings and are meant to be overridden per org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceOpportunityFields {
    /// Object API name, used in messages and URLs.
    pub object: String,
    /// Record id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Amount: the deal value.
    pub amount: String,
    /// Close date (`YYYY-MM-DD`).
    pub close_date: String,
    /// Description: the notes.
    pub description: String,
    /// Currency (multi-currency orgs only).
    pub currency_iso_code: String,
    /// Stage name (see [`StageNames`]).
    pub stage_name: String,
    /// Read-only "closed" flag, used when the stage name is not one of [`StageNames`].
    pub is_closed: String,
    /// Read-only "won" flag, used with `is_closed`.
    pub is_won: String,
    /// Account lookup.
    pub account_id: String,
    /// Account relationship name, for records read with `Account.Name` etc.
    pub account_relationship: String,
    /// Primary contact lookup (read only here).
    pub contact_id: String,
    /// Contact relationship name, for records read with `Contact.Email` etc.
    pub contact_relationship: String,
    /// "Sync with Partner Center" (checkbox).
    pub sync: String,
    /// "Referral Identifier" (External ID; the upsert key).
    pub referral_identifier: String,
    /// "Referral Link".
    pub referral_link: String,
    /// "Audit" (long text).
    pub audit: String,
    /// "How can Microsoft help?" (picklist of the six labels).
    pub help: String,
    /// "Microsoft Partner Center Referral Visibility".
    pub visibility: String,
    /// Solution IDs in one text field, separated by `;` or `,` (see the Dataverse note).
    pub solutions: String,
    /// "Microsoft CRM Identifier".
    pub microsoft_crm_identifier: String,
    /// Solution Area of a referral created from the opportunity (text or picklist).
    pub solution_area: String,
    /// Solution Play (text or picklist).
    pub solution_play: String,
    /// Partner Role (text or picklist).
    pub partner_role: String,
}

impl Default for SalesforceOpportunityFields {
    fn default() -> Self {
        Self {
            object: "Opportunity".into(),
            id: "Id".into(),
            name: "Name".into(),
            amount: "Amount".into(),
            close_date: "CloseDate".into(),
            description: "Description".into(),
            currency_iso_code: "CurrencyIsoCode".into(),
            stage_name: "StageName".into(),
            is_closed: "IsClosed".into(),
            is_won: "IsWon".into(),
            account_id: "AccountId".into(),
            account_relationship: "Account".into(),
            contact_id: "ContactId".into(),
            contact_relationship: "Contact".into(),
            sync: "Sync_with_Partner_Center__c".into(),
            referral_identifier: "Referral_Identifier__c".into(),
            referral_link: "Referral_Link__c".into(),
            audit: "Audit__c".into(),
            help: "How_can_Microsoft_help__c".into(),
            visibility: "Microsoft_Referral_Visibility__c".into(),
            solutions: "Microsoft_Solutions__c".into(),
            microsoft_crm_identifier: "Microsoft_CRM_Identifier__c".into(),
            solution_area: "Solution_Area__c".into(),
            solution_play: "Solution_Play__c".into(),
            partner_role: "Partner_Role__c".into(),
        }
    }
}

/// Salesforce Account fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceAccountFields {
    /// Object API name.
    pub object: String,
    /// Record id.
    pub id: String,
    /// Company name.
    pub name: String,
    /// Billing street.
    pub street: String,
    /// Billing city.
    pub city: String,
    /// Billing state.
    pub state: String,
    /// Billing postal code.
    pub postal_code: String,
    /// Billing country: an ISO 3166 two-letter code (`BillingCountryCode` in orgs with State
    /// and Country picklists).
    pub country: String,
}

impl Default for SalesforceAccountFields {
    fn default() -> Self {
        Self {
            object: "Account".into(),
            id: "Id".into(),
            name: "Name".into(),
            street: "BillingStreet".into(),
            city: "BillingCity".into(),
            state: "BillingState".into(),
            postal_code: "BillingPostalCode".into(),
            country: "BillingCountry".into(),
        }
    }
}

/// Salesforce Contact fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesforceContactFields {
    /// Object API name.
    pub object: String,
    /// Record id.
    pub id: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Email.
    pub email: String,
    /// Phone.
    pub phone: String,
    /// The contact's account.
    pub account_id: String,
}

impl Default for SalesforceContactFields {
    fn default() -> Self {
        Self {
            object: "Contact".into(),
            id: "Id".into(),
            first_name: "FirstName".into(),
            last_name: "LastName".into(),
            email: "Email".into(),
            phone: "Phone".into(),
            account_id: "AccountId".into(),
        }
    }
}

/// Salesforce stage names. Stages are org-specific picklist values: never hard-code them
/// elsewhere. Defaults follow the connector's environment variables ("On-hold stage name",
/// "Active stage name") and the common Closed Won / Closed Lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageNames {
    /// New, not yet accepted co-sell referrals land here.
    pub on_hold: String,
    /// Accepted; moving out of on-hold accepts the referral.
    pub active: String,
    /// Won.
    pub won: String,
    /// Lost (also used for declined and expired).
    pub lost: String,
}

impl Default for StageNames {
    fn default() -> Self {
        Self {
            on_hold: "Prospecting".into(),
            active: "Qualification".into(),
            won: "Closed Won".into(),
            lost: "Closed Lost".into(),
        }
    }
}

/// A text value the connector writes to a CRM column of limited length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextField {
    /// The opportunity's name (topic).
    OpportunityName,
    /// The opportunity's description: the referral's notes.
    Notes,
    /// The account's name.
    AccountName,
    /// The account's street.
    Street,
    /// The account's city.
    City,
    /// The account's state or province.
    State,
    /// The account's postal code.
    PostalCode,
    /// The contact's first name.
    FirstName,
    /// The contact's last name.
    LastName,
    /// The contact's email.
    Email,
    /// The contact's phone.
    Phone,
}

impl TextField {
    /// The length of the stock column, in characters: Dataverse's `MaxLength` and
    /// Salesforce's field length (docs/dataverse.md#column-lengths,
    /// docs/salesforce.md#field-lengths). An org that changed one sets
    /// [`MappingConfig::max_lengths`].
    pub fn stock_length(self, crm: CrmKind) -> usize {
        use TextField as F;
        match (crm, self) {
            (CrmKind::Dataverse, F::OpportunityName) => 300,
            (CrmKind::Dataverse, F::Notes) => 2_000,
            (CrmKind::Dataverse, F::AccountName) => 160,
            (CrmKind::Dataverse, F::Street) => 250,
            (CrmKind::Dataverse, F::City) => 80,
            (CrmKind::Dataverse, F::State | F::FirstName | F::LastName | F::Phone) => 50,
            (CrmKind::Dataverse | CrmKind::Salesforce, F::PostalCode) => 20,
            (CrmKind::Dataverse, F::Email) => 100,
            (CrmKind::Salesforce, F::OpportunityName) => 120,
            (CrmKind::Salesforce, F::Notes) => 32_000,
            (CrmKind::Salesforce, F::AccountName | F::Street) => 255,
            (CrmKind::Salesforce, F::City | F::FirstName | F::Phone) => 40,
            (CrmKind::Salesforce, F::State | F::LastName | F::Email) => 80,
        }
    }

    /// The field's name in an Audit text.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::OpportunityName => "name",
            Self::Notes => "notes",
            Self::AccountName => "account name",
            Self::Street => "street",
            Self::City => "city",
            Self::State => "state",
            Self::PostalCode => "postal code",
            Self::FirstName => "contact first name",
            Self::LastName => "contact last name",
            Self::Email => "contact email",
            Self::Phone => "contact phone",
        }
    }

    /// Whether a cut value still means something: free text does; an email, a phone number or
    /// a postal code cut short is another one, so it is left out instead.
    pub(super) fn can_be_cut(self) -> bool {
        !matches!(self, Self::Email | Self::Phone | Self::PostalCode)
    }
}

/// Overrides of the stock column lengths, by field (`{"notes": 4000}`).
pub type MaxLengths = BTreeMap<TextField, usize>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_configuration_keeps_the_other_defaults() {
        let config: MappingConfig = serde_json::from_value(serde_json::json!({
            "salesforce": { "account": { "country": "BillingCountryCode" }, "multi_currency": false },
            "stages": { "won": "Won" },
            "default_currency": "eur",
            "referral_link_template": "https://partner.example/referrals/{id}"
        }))
        .unwrap();
        assert_eq!(config.salesforce.account.country, "BillingCountryCode");
        assert_eq!(config.salesforce.account.city, "BillingCity");
        assert!(!config.salesforce.multi_currency);
        assert_eq!(config.stages.won, "Won");
        assert_eq!(config.stages.lost, "Closed Lost");
        assert_eq!(
            config.dataverse.opportunity.estimated_value,
            "estimatedvalue"
        );
        assert_eq!(config.default_currency.map(|c| c.as_str()), Some("EUR"));
        assert_eq!(
            config.referral_link("abc").as_deref(),
            Some("https://partner.example/referrals/abc")
        );
        assert_eq!(MappingConfig::default().referral_link("abc"), None);
    }
}
