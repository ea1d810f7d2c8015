//! Checking a CRM opportunity before it may go to Partner Center
//! (docs/partner-center.md#validation-rules).
//!
//! [`validate_for_partner_center`] returns every problem at once, each naming the record, the
//! configured CRM field and the fix, or a [`ValidatedOpportunity`]. A referral is created only
//! from a [`NewReferral`], which [`validate_new_referral`] returns when the record also holds
//! an allowed Solution Area, Solution Play and Partner Role
//! (docs/partner-center.md#solution-area-solution-play-and-partner-role): the only input
//! [`crate::mapping::referral_create_body`] accepts.

use crate::error::quoted;
use crate::ids::CrmKind;
use crate::mapping::MappingConfig;
use crate::opportunity::{
    AssistanceRequest, CrmOpportunity, Opportunity, OpportunityField, RecordRef,
};
use crate::taxonomy::{Taxonomy, TaxonomyField, TaxonomyValues};
use crate::values::{CountryCode, DealValue};

/// A CRM opportunity that passed [`validate_for_partner_center`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedOpportunity(CrmOpportunity);

impl ValidatedOpportunity {
    /// The CRM record.
    pub fn record(&self) -> &RecordRef {
        &self.0.record
    }

    /// The opportunity.
    pub fn opportunity(&self) -> &Opportunity {
        &self.0.opportunity
    }

    /// The deal value, known to be greater than zero.
    pub fn deal_value(&self) -> Option<DealValue> {
        self.0
            .opportunity
            .deal_value
            .and_then(|m| DealValue::try_from(m.amount).ok())
    }

    /// The taxonomy values the record holds (each allowed; any may be missing).
    pub fn taxonomy(&self) -> &TaxonomyValues {
        &self.0.taxonomy
    }

    /// Back to the unchecked form.
    pub fn into_inner(self) -> CrmOpportunity {
        self.0
    }
}

/// A CRM opportunity a referral may be created from: it passed
/// [`validate_for_partner_center`] and holds a complete, allowed [`Taxonomy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReferral {
    validated: ValidatedOpportunity,
    taxonomy: Taxonomy,
}

impl NewReferral {
    /// The validated opportunity.
    pub fn validated(&self) -> &ValidatedOpportunity {
        &self.validated
    }

    /// The CRM record.
    pub fn record(&self) -> &RecordRef {
        self.validated.record()
    }

    /// The opportunity.
    pub fn opportunity(&self) -> &Opportunity {
        self.validated.opportunity()
    }

    /// Its Solution Area, Solution Play and Partner Role.
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }
}

/// The CRM field names the messages refer to, as configured.
struct Fields {
    sync: String,
    name: String,
    deal_value: String,
    currency: String,
    closing_date: String,
    country: String,
    solutions: String,
    contact: String,
    help: String,
    referral_id: String,
    solution_area: String,
    solution_play: String,
    partner_role: String,
}

impl Fields {
    fn of(crm: CrmKind, config: &MappingConfig) -> Self {
        match crm {
            CrmKind::Dataverse => {
                let o = &config.dataverse.opportunity;
                Self {
                    sync: o.sync.clone(),
                    name: o.name.clone(),
                    deal_value: o.estimated_value.clone(),
                    currency: o.currency.clone(),
                    closing_date: o.estimated_close_date.clone(),
                    country: config.dataverse.account.country.clone(),
                    solutions: o.solutions.clone(),
                    contact: o.parent_contact.clone(),
                    help: o.help.clone(),
                    referral_id: o.referral_identifier.clone(),
                    solution_area: o.solution_area.clone(),
                    solution_play: o.solution_play.clone(),
                    partner_role: o.partner_role.clone(),
                }
            }
            CrmKind::Salesforce => {
                let sf = &config.salesforce;
                let o = &sf.opportunity;
                Self {
                    sync: o.sync.clone(),
                    name: o.name.clone(),
                    deal_value: o.amount.clone(),
                    currency: if sf.multi_currency {
                        o.currency_iso_code.clone()
                    } else {
                        "the connector's default_currency setting".to_owned()
                    },
                    closing_date: o.close_date.clone(),
                    country: sf.account.country.clone(),
                    solutions: o.solutions.clone(),
                    contact: o.contact_id.clone(),
                    help: o.help.clone(),
                    referral_id: o.referral_identifier.clone(),
                    solution_area: o.solution_area.clone(),
                    solution_play: o.solution_play.clone(),
                    partner_role: o.partner_role.clone(),
                }
            }
        }
    }

    /// The CRM field of a taxonomy member.
    fn of_taxonomy(&self, field: TaxonomyField) -> &str {
        match field {
            TaxonomyField::SolutionArea => &self.solution_area,
            TaxonomyField::SolutionPlay => &self.solution_play,
            TaxonomyField::PartnerRole => &self.partner_role,
        }
    }
}

/// Check everything [`validate_for_partner_center`] checks and, for the referral about to be
/// created, its taxonomy: the Solution Area, Solution Play (one of the area's) and Partner Role
/// are present and among the configured values
/// (docs/partner-center.md#solution-area-solution-play-and-partner-role). Partner Center
/// requires them on services co-sell referrals; what makes a referral one is not documented,
/// so every referral created from the CRM carries them.
///
/// Returns all problems at once; each taxonomy problem names the CRM field (as configured),
/// the Partner Center member and the allowed values.
pub fn validate_new_referral(
    candidate: &CrmOpportunity,
    config: &MappingConfig,
) -> Result<NewReferral, Vec<ValidationProblem>> {
    let checked = validate_for_partner_center(candidate, config);
    let record = &candidate.record;
    let fields = Fields::of(record.crm, config);
    let values = &candidate.taxonomy;
    let area = values.solution_area.as_ref();
    let mut problems = Vec::new();
    for member in TaxonomyField::ALL {
        let field = fields.of_taxonomy(member).to_owned();
        let allowed = config.taxonomy.allowed(member, area);
        let rejected = candidate.rejected(OpportunityField::of_taxonomy(member));
        if let Some(rejected) = rejected {
            problems.push(ValidationProblem::TaxonomyValueUnknown {
                record: record.clone(),
                field,
                member,
                found: rejected.found.clone(),
                area: (member == TaxonomyField::SolutionPlay)
                    .then(|| area.map(|a| a.as_str().to_owned()))
                    .flatten(),
                allowed,
            });
        } else if !values.has(member) {
            problems.push(ValidationProblem::TaxonomyValueMissing {
                record: record.clone(),
                field,
                member,
                allowed,
            });
        }
    }
    match (checked, values.complete()) {
        (Ok(validated), Some(taxonomy)) if problems.is_empty() => Ok(NewReferral {
            validated,
            taxonomy,
        }),
        (checked, _) => {
            let mut all = checked.err().unwrap_or_default();
            all.extend(problems);
            Err(all)
        }
    }
}

/// Check everything Partner Center needs before a referral is created or updated:
///
/// - "Sync with Partner Center" is on;
/// - the opportunity has a name;
/// - the deal value is greater than 0 and the closing date is set;
/// - the currency is a valid ISO 4217 code;
/// - the customer country is an ISO 3166-1 two-letter code;
/// - with Microsoft's help requested: at least one solution ("Solution ID is required") and a
///   customer contact with a name and an email or phone;
/// - "How can Microsoft help?" is one of the six options; the stored referral id and the
///   solution ids are well-formed.
///
/// Returns all problems at once.
pub fn validate_for_partner_center(
    candidate: &CrmOpportunity,
    config: &MappingConfig,
) -> Result<ValidatedOpportunity, Vec<ValidationProblem>> {
    let record = &candidate.record;
    let opportunity = &candidate.opportunity;
    let fields = Fields::of(record.crm, config);
    let found = |field: OpportunityField| candidate.rejected(field).map(|r| r.found.clone());
    let mut problems = Vec::new();

    if !opportunity.sync {
        problems.push(ValidationProblem::SyncFlagOff {
            record: record.clone(),
            field: fields.sync.clone(),
        });
    }
    if opportunity
        .name
        .as_deref()
        .is_none_or(|n| n.trim().is_empty())
    {
        problems.push(ValidationProblem::NameMissing {
            record: record.clone(),
            field: fields.name.clone(),
        });
    }

    match candidate.amount {
        Some(amount) if DealValue::try_from(amount).is_ok() => {}
        amount => problems.push(ValidationProblem::DealValueMissing {
            record: record.clone(),
            field: fields.deal_value.clone(),
            found: found(OpportunityField::DealValue)
                .or_else(|| amount.map(|a| a.normalize().to_string())),
        }),
    }
    if candidate.currency.is_none() {
        problems.push(ValidationProblem::CurrencyInvalid {
            record: record.clone(),
            field: fields.currency.clone(),
            found: found(OpportunityField::Currency),
        });
    }
    if opportunity.closing_date.is_none() {
        problems.push(ValidationProblem::ClosingDateMissing {
            record: record.clone(),
            field: fields.closing_date.clone(),
            found: found(OpportunityField::ClosingDate),
        });
    }

    if opportunity.account.country.is_none() {
        let found = found(OpportunityField::Country);
        let suggestion = found.as_deref().and_then(CountryCode::suggest);
        problems.push(ValidationProblem::CountryCodeInvalid {
            record: record.clone(),
            field: fields.country.clone(),
            account: opportunity.account.name.clone(),
            found,
            suggestion,
        });
    }

    if opportunity.wants_help() {
        if opportunity.solutions.is_empty() {
            problems.push(ValidationProblem::SolutionIdMissing {
                record: record.clone(),
                field: fields.solutions.clone(),
            });
        }
        let detail = match &opportunity.contact {
            None => Some("no customer contact is linked"),
            Some(c) if !c.has_name() && !c.is_reachable() => {
                Some("the linked contact has no name and no email or phone")
            }
            Some(c) if !c.has_name() => Some("the linked contact has no first or last name"),
            Some(c) if !c.is_reachable() => Some("the linked contact has no email or phone"),
            Some(_) => None,
        };
        if let Some(detail) = detail {
            problems.push(ValidationProblem::ContactMissingForHelp {
                record: record.clone(),
                field: fields.contact.clone(),
                detail,
            });
        }
    }
    if let Some(AssistanceRequest::Unknown(raw)) = &opportunity.help {
        problems.push(ValidationProblem::HelpOptionUnknown {
            record: record.clone(),
            field: fields.help.clone(),
            found: raw.clone(),
        });
    }
    for rejected in &candidate.rejected {
        match rejected.field {
            OpportunityField::Solution => problems.push(ValidationProblem::SolutionIdInvalid {
                record: record.clone(),
                field: fields.solutions.clone(),
                found: rejected.found.clone(),
            }),
            OpportunityField::ReferralId => problems.push(ValidationProblem::ReferralIdInvalid {
                record: record.clone(),
                field: fields.referral_id.clone(),
                found: rejected.found.clone(),
            }),
            _ => {}
        }
    }

    if problems.is_empty() {
        Ok(ValidatedOpportunity(candidate.clone()))
    } else {
        Err(problems)
    }
}

/// One reason why a CRM opportunity may not go to Partner Center yet
/// (docs/partner-center.md#validation-rules).
///
/// Every message names the record, the CRM field (as configured) and the fix, and reads like
/// an instruction a CRM admin can act on. [`ValidationProblem::code`] is stable for dashboards
/// and tests. No message carries contact names, emails or phone numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationProblem {
    /// "Sync with Partner Center" is off.
    #[error(
        "{record}: \"Sync with Partner Center\" is off, so the opportunity is not shared. Fix: \
         set {field} on the opportunity to Yes when the deal should go to Partner Center."
    )]
    SyncFlagOff {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the flag.
        field: String,
    },
    /// The opportunity has no name.
    #[error("{record}: the opportunity has no name. Fix: fill in {field} on the opportunity.")]
    NameMissing {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the name.
        field: String,
    },
    /// Help from Microsoft was requested but no solution is attached.
    #[error(
        "{record}: Solution ID is required: a co-sell opportunity (Microsoft help requested) needs \
         at least one Partner Center solution. Fix: add a solution ID such as \"SOL-34104-EBB\" to \
         {field} on the opportunity."
    )]
    SolutionIdMissing {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the solution IDs.
        field: String,
    },
    /// A solution ID is malformed.
    #[error(
        "{record}: solution ID {found:?} is not valid (it must be one word of at most 100 \
         characters, without spaces, commas or semicolons). Fix: correct {field} on the \
         opportunity, e.g. \"SOL-34104-EBB\"; separate several IDs with \";\"."
    )]
    SolutionIdInvalid {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the solution IDs.
        field: String,
        /// The malformed value.
        found: String,
    },
    /// The customer country is missing or not an ISO 3166-1 alpha-2 code.
    #[error(
        "{record}: {problem}. Fix: set {field} on {account} to a two-letter code such as \
         \"{example}\".",
        problem = country_problem(found.as_deref()),
        account = account_phrase(account.as_deref()),
        example = suggestion.as_ref().map_or("US", CountryCode::as_str),
    )]
    CountryCodeInvalid {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the country.
        field: String,
        /// The customer account's name, when known.
        account: Option<String>,
        /// The value found, if any.
        found: Option<String>,
        /// The code the value most likely means (e.g. `US` for `"USA"`).
        suggestion: Option<CountryCode>,
    },
    /// Help from Microsoft was requested but the customer contact is missing or incomplete.
    #[error(
        "{record}: a customer contact is required when Microsoft's help is requested, and {detail}. \
         Fix: link a customer contact with first name, last name and an email or phone through \
         {field} on the opportunity, or clear \"How can Microsoft help?\"."
    )]
    ContactMissingForHelp {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field (or lookup) that links the contact.
        field: String,
        /// What is missing, without any contact data (e.g. "the contact has no email or phone").
        detail: &'static str,
    },
    /// The deal value is missing, zero, negative or not a number.
    #[error(
        "{record}: {problem}. Fix: set {field} on the opportunity to the expected deal value, \
         greater than 0.",
        problem = deal_value_problem(found.as_deref())
    )]
    DealValueMissing {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the value.
        field: String,
        /// The value found, if any.
        found: Option<String>,
    },
    /// The closing date is missing or unreadable.
    #[error(
        "{record}: {problem}. Fix: set {field} on the opportunity to the date the customer \
         expects to close (YYYY-MM-DD).",
        problem = closing_date_problem(found.as_deref())
    )]
    ClosingDateMissing {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the date.
        field: String,
        /// The value found, if any.
        found: Option<String>,
    },
    /// The currency is missing or not an ISO 4217 code.
    #[error(
        "{record}: {problem}. Fix: set {field} on the opportunity to a currency whose ISO 4217 \
         code is valid, such as \"USD\" or \"EUR\" (and make sure the currency exists in the CRM).",
        problem = currency_problem(found.as_deref())
    )]
    CurrencyInvalid {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the currency.
        field: String,
        /// The value found, if any.
        found: Option<String>,
    },
    /// "How can Microsoft help?" holds a value that is not one of the six documented options.
    #[error(
        "{record}: \"How can Microsoft help?\" value {found:?} is not a Partner Center option. \
         Fix: set {field} on the opportunity to one of: {options}, or leave it empty.",
        options = AssistanceRequest::LABELS.join("; ")
    )]
    HelpOptionUnknown {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the help option.
        field: String,
        /// The value found.
        found: String,
    },
    /// A Solution Area, Solution Play or Partner Role is missing from a record a referral is
    /// to be created from.
    #[error(
        "{record}: the {member} is missing; Partner Center's referral member \"{pc}\" needs it \
         on every referral the connector creates. Fix: set {field} on the opportunity to one of: \
         {options}.",
        pc = member.partner_center_member(),
        options = options(allowed)
    )]
    TaxonomyValueMissing {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the value.
        field: String,
        /// Which member.
        member: TaxonomyField,
        /// The allowed values (a play's: those of the record's area, when known).
        allowed: Vec<String>,
    },
    /// A Solution Area, Solution Play or Partner Role is not one of the configured values (a
    /// play: not one of the record's area).
    #[error(
        "{record}: {member} {found:?} is not allowed for Partner Center's referral member \
         \"{pc}\"{of_area}. Fix: set {field} on the opportunity to one of: {options} (the \
         allowed values are the taxonomy of MAPPING_CONFIG_JSON).",
        found = quoted(found),
        pc = member.partner_center_member(),
        of_area = area.as_ref().map(|a| format!(" with Solution Area {a:?}")).unwrap_or_default(),
        options = options(allowed)
    )]
    TaxonomyValueUnknown {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the value.
        field: String,
        /// Which member.
        member: TaxonomyField,
        /// The value found.
        found: String,
        /// The record's Solution Area, for a play.
        area: Option<String>,
        /// The allowed values.
        allowed: Vec<String>,
    },
    /// The referral identifier stored on the opportunity is not a GUID.
    #[error(
        "{record}: the stored Partner Center referral identifier {found:?} is not a GUID. Fix: \
         clear {field} on the opportunity (the connector fills it in) or restore the original \
         referral ID."
    )]
    ReferralIdInvalid {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the identifier.
        field: String,
        /// The value found.
        found: String,
    },
}

impl ValidationProblem {
    /// A stable, machine-readable code for the problem.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SyncFlagOff { .. } => "sync_flag_off",
            Self::NameMissing { .. } => "name_missing",
            Self::SolutionIdMissing { .. } => "solution_id_missing",
            Self::SolutionIdInvalid { .. } => "solution_id_invalid",
            Self::CountryCodeInvalid { .. } => "country_code_invalid",
            Self::ContactMissingForHelp { .. } => "contact_missing_for_help",
            Self::DealValueMissing { .. } => "deal_value_missing",
            Self::ClosingDateMissing { .. } => "closing_date_missing",
            Self::CurrencyInvalid { .. } => "currency_invalid",
            Self::HelpOptionUnknown { .. } => "help_option_unknown",
            Self::ReferralIdInvalid { .. } => "referral_id_invalid",
            Self::TaxonomyValueMissing { .. } => "taxonomy_value_missing",
            Self::TaxonomyValueUnknown { .. } => "taxonomy_value_unknown",
        }
    }

    /// The opportunity the problem is about.
    pub fn record(&self) -> &RecordRef {
        match self {
            Self::SyncFlagOff { record, .. }
            | Self::NameMissing { record, .. }
            | Self::SolutionIdMissing { record, .. }
            | Self::SolutionIdInvalid { record, .. }
            | Self::CountryCodeInvalid { record, .. }
            | Self::ContactMissingForHelp { record, .. }
            | Self::DealValueMissing { record, .. }
            | Self::ClosingDateMissing { record, .. }
            | Self::CurrencyInvalid { record, .. }
            | Self::HelpOptionUnknown { record, .. }
            | Self::ReferralIdInvalid { record, .. }
            | Self::TaxonomyValueMissing { record, .. }
            | Self::TaxonomyValueUnknown { record, .. } => record,
        }
    }

    /// The CRM field (as configured) the admin has to change.
    pub fn field(&self) -> &str {
        match self {
            Self::SyncFlagOff { field, .. }
            | Self::NameMissing { field, .. }
            | Self::SolutionIdMissing { field, .. }
            | Self::SolutionIdInvalid { field, .. }
            | Self::CountryCodeInvalid { field, .. }
            | Self::ContactMissingForHelp { field, .. }
            | Self::DealValueMissing { field, .. }
            | Self::ClosingDateMissing { field, .. }
            | Self::CurrencyInvalid { field, .. }
            | Self::HelpOptionUnknown { field, .. }
            | Self::ReferralIdInvalid { field, .. }
            | Self::TaxonomyValueMissing { field, .. }
            | Self::TaxonomyValueUnknown { field, .. } => field,
        }
    }
}

/// Allowed values as a message lists them: `"A", "B", "C"`.
fn options(allowed: &[String]) -> String {
    allowed
        .iter()
        .map(|value| format!("{value:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn country_problem(found: Option<&str>) -> String {
    match found {
        None => "the customer country is missing; Partner Center requires an ISO 3166-1 \
                 two-letter code"
            .to_owned(),
        Some(found) => format!(
            "customer country {found:?} is not an ISO 3166-1 two-letter code",
            found = quoted(found)
        ),
    }
}

fn account_phrase(account: Option<&str>) -> String {
    match account {
        Some(name) => format!("account {:?}", quoted(name)),
        None => "the customer account".to_owned(),
    }
}

fn deal_value_problem(found: Option<&str>) -> String {
    match found {
        None => "the deal value is missing".to_owned(),
        Some(found) => format!(
            "the deal value {:?} is not a number greater than 0",
            quoted(found)
        ),
    }
}

fn closing_date_problem(found: Option<&str>) -> String {
    match found {
        None => "the closing date is missing".to_owned(),
        Some(found) => format!("the closing date {:?} is not a date", quoted(found)),
    }
}

fn currency_problem(found: Option<&str>) -> String {
    match found {
        None => "the currency is missing".to_owned(),
        Some(found) => format!("the currency {:?} is not an ISO 4217 code", quoted(found)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CrmRecordId, SolutionId};
    use crate::mapping::{
        DataverseRecord, SalesforceRecord, opportunity_from_dataverse, opportunity_from_salesforce,
    };
    use serde_json::{Map, Value, json};

    const OPPORTUNITY_ID: &str = "6d81597f-0f9f-e711-8122-000d3aa2331c";
    /// Contact data that must never show up in a message.
    const SECRETS: [&str; 4] = ["Sue", "Smith", "sue.smith@contoso.com", "425 555 0100"];

    fn obj(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    /// A Dataverse opportunity that passes every rule.
    fn good_dataverse_row() -> Map<String, Value> {
        obj(json!({
            "opportunityid": OPPORTUNITY_ID,
            "name": "Contoso ERP",
            "estimatedvalue": 50000,
            "estimatedclosedate": "2026-06-30",
            "transactioncurrencyid": { "isocurrencycode": "USD" },
            "msft_microsoftpartnercenterreferralsync": true,
            "msft_microsoftpartnercenterhelpneed": "Proof of concept or demo",
            "msft_microsoftpartnercentersolutions": "SOL-34104-EBB",
            "parentaccountid": { "name": "Contoso", "address1_country": "us" },
            "parentcontactid": { "firstname": "Sue", "lastname": "Smith", "emailaddress1": "sue.smith@contoso.com", "telephone1": "+1 425 555 0100" }
        }))
    }

    fn dataverse(row: &Map<String, Value>) -> CrmOpportunity {
        opportunity_from_dataverse(&DataverseRecord::new(row), &MappingConfig::default())
    }

    fn problems(row: &Map<String, Value>) -> Vec<ValidationProblem> {
        validate_for_partner_center(&dataverse(row), &MappingConfig::default()).unwrap_err()
    }

    fn only_problem(row: &Map<String, Value>) -> ValidationProblem {
        let mut all = problems(row);
        assert_eq!(all.len(), 1, "{all:#?}");
        all.remove(0)
    }

    fn assert_actionable(problem: &ValidationProblem, code: &str, field: &str) {
        let message = problem.to_string();
        assert_eq!(problem.code(), code, "{message}");
        assert_eq!(problem.field(), field);
        assert!(
            message.starts_with(&format!(
                "Opportunity \"Contoso ERP\" (opportunity {OPPORTUNITY_ID}):"
            )),
            "{message}"
        );
        assert!(message.contains(field), "names the field: {message}");
        assert!(message.contains("Fix: "), "names the fix: {message}");
        for secret in SECRETS {
            assert!(!message.contains(secret), "leaks contact data: {message}");
        }
    }

    #[test]
    fn a_complete_co_sell_opportunity_passes() {
        let candidate = dataverse(&good_dataverse_row());
        let validated = validate_for_partner_center(&candidate, &MappingConfig::default()).unwrap();
        assert_eq!(
            validated.record().id,
            Some(CrmRecordId::try_from(format!("dataverse:{OPPORTUNITY_ID}")).unwrap())
        );
        assert_eq!(
            validated.deal_value().map(|v| v.amount()),
            Some(50000.into())
        );
        assert_eq!(
            validated.opportunity().solutions,
            vec![SolutionId::try_from("SOL-34104-EBB").unwrap()]
        );
    }

    #[test]
    fn the_sync_flag_must_be_on() {
        let mut row = good_dataverse_row();
        row.insert(
            "msft_microsoftpartnercenterreferralsync".into(),
            json!(false),
        );
        let problem = only_problem(&row);
        assert_actionable(
            &problem,
            "sync_flag_off",
            "msft_microsoftpartnercenterreferralsync",
        );
        assert!(problem.to_string().contains("to Yes"));
    }

    #[test]
    fn a_co_sell_opportunity_needs_a_solution_id() {
        let mut row = good_dataverse_row();
        row.remove("msft_microsoftpartnercentersolutions");
        let problem = only_problem(&row);
        assert_actionable(
            &problem,
            "solution_id_missing",
            "msft_microsoftpartnercentersolutions",
        );
        assert!(
            problem.to_string().contains("Solution ID is required"),
            "{problem}"
        );
    }

    #[test]
    fn without_help_no_solution_or_contact_is_required() {
        let mut row = good_dataverse_row();
        row.remove("msft_microsoftpartnercenterhelpneed");
        row.remove("msft_microsoftpartnercentersolutions");
        row.remove("parentcontactid");
        assert!(validate_for_partner_center(&dataverse(&row), &MappingConfig::default()).is_ok());
    }

    #[test]
    fn malformed_solution_ids_are_reported_with_what_was_found() {
        let mut row = good_dataverse_row();
        row.insert(
            "msft_microsoftpartnercentersolutions".into(),
            json!("SOL-34104-EBB; SOL 1"),
        );
        let problem = only_problem(&row);
        assert_actionable(
            &problem,
            "solution_id_invalid",
            "msft_microsoftpartnercentersolutions",
        );
        assert!(problem.to_string().contains("\"SOL 1\""), "{problem}");
    }

    #[test]
    fn the_country_must_be_a_two_letter_code_and_the_message_says_what_was_found() {
        let mut row = good_dataverse_row();
        row.insert(
            "parentaccountid".into(),
            json!({ "name": "Contoso", "address1_country": "USA" }),
        );
        let problem = only_problem(&row);
        assert_actionable(&problem, "country_code_invalid", "address1_country");
        assert_eq!(
            problem.to_string(),
            format!(
                "Opportunity \"Contoso ERP\" (opportunity {OPPORTUNITY_ID}): customer country \"USA\" is not \
                 an ISO 3166-1 two-letter code. Fix: set address1_country on account \"Contoso\" to a \
                 two-letter code such as \"US\"."
            )
        );

        row.insert(
            "parentaccountid".into(),
            json!({ "name": "Contoso", "address1_country": "Deutschland" }),
        );
        let problem = only_problem(&row);
        assert!(problem.to_string().contains("\"Deutschland\""), "{problem}");

        row.insert("parentaccountid".into(), json!({ "name": "Contoso" }));
        let problem = only_problem(&row);
        assert_actionable(&problem, "country_code_invalid", "address1_country");
        assert!(
            problem.to_string().contains("country is missing"),
            "{problem}"
        );
    }

    #[test]
    fn help_requires_a_reachable_named_contact() {
        let cases = [
            (None, "no customer contact is linked"),
            (
                Some(json!({ "emailaddress1": "sue.smith@contoso.com" })),
                "has no first or last name",
            ),
            (
                Some(json!({ "firstname": "Sue", "lastname": "Smith" })),
                "has no email or phone",
            ),
        ];
        for (contact, detail) in cases {
            let mut row = good_dataverse_row();
            match contact {
                Some(contact) => row.insert("parentcontactid".into(), contact),
                None => row.remove("parentcontactid"),
            };
            let problem = only_problem(&row);
            assert_actionable(&problem, "contact_missing_for_help", "parentcontactid");
            assert!(problem.to_string().contains(detail), "{problem}");
        }
        let mut phone_only = good_dataverse_row();
        phone_only.insert(
            "parentcontactid".into(),
            json!({ "lastname": "Smith", "telephone1": "+1 425 555 0100" }),
        );
        assert!(
            validate_for_partner_center(&dataverse(&phone_only), &MappingConfig::default()).is_ok()
        );
    }

    #[test]
    fn the_deal_value_must_be_greater_than_zero() {
        for (value, shown) in [
            (None, None),
            (Some(json!(0)), Some("\"0\"")),
            (Some(json!(-5)), Some("\"-5\"")),
            (Some(json!("ten")), Some("\"ten\"")),
        ] {
            let mut row = good_dataverse_row();
            match value {
                Some(value) => row.insert("estimatedvalue".into(), value),
                None => row.remove("estimatedvalue"),
            };
            let problem = only_problem(&row);
            assert_actionable(&problem, "deal_value_missing", "estimatedvalue");
            let message = problem.to_string();
            match shown {
                Some(shown) => assert!(message.contains(shown), "{message}"),
                None => assert!(message.contains("deal value is missing"), "{message}"),
            }
        }
    }

    #[test]
    fn the_closing_date_is_required() {
        let mut row = good_dataverse_row();
        row.remove("estimatedclosedate");
        assert_actionable(
            &only_problem(&row),
            "closing_date_missing",
            "estimatedclosedate",
        );
        row.insert("estimatedclosedate".into(), json!("next quarter"));
        let problem = only_problem(&row);
        assert_actionable(&problem, "closing_date_missing", "estimatedclosedate");
        assert!(
            problem
                .to_string()
                .contains("\"next quarter\" is not a date"),
            "{problem}"
        );
    }

    #[test]
    fn the_currency_must_be_a_valid_iso_4217_code() {
        let mut row = good_dataverse_row();
        row.insert(
            "transactioncurrencyid".into(),
            json!({ "isocurrencycode": "EURO" }),
        );
        let problem = only_problem(&row);
        assert_actionable(&problem, "currency_invalid", "transactioncurrencyid");
        assert!(
            problem
                .to_string()
                .contains("\"EURO\" is not an ISO 4217 code"),
            "{problem}"
        );
        row.remove("transactioncurrencyid");
        let problem = only_problem(&row);
        assert!(
            problem.to_string().contains("currency is missing"),
            "{problem}"
        );
    }

    #[test]
    fn unknown_help_options_and_bad_referral_ids_are_reported() {
        let mut row = good_dataverse_row();
        row.insert(
            "msft_microsoftpartnercenterhelpneed".into(),
            json!("Marketing funds"),
        );
        row.insert(
            "msft_microsoftpartnercenterreferralidentifier".into(),
            json!("REF-1"),
        );
        let all = problems(&row);
        let codes: Vec<&str> = all.iter().map(ValidationProblem::code).collect();
        assert_eq!(codes, ["help_option_unknown", "referral_id_invalid"]);
        assert_actionable(
            &all[0],
            "help_option_unknown",
            "msft_microsoftpartnercenterhelpneed",
        );
        assert!(
            all[0].to_string().contains("Proof of concept or demo"),
            "{}",
            all[0]
        );
        assert_actionable(
            &all[1],
            "referral_id_invalid",
            "msft_microsoftpartnercenterreferralidentifier",
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let row = obj(
            json!({ "opportunityid": OPPORTUNITY_ID, "name": "Contoso ERP", "msft_microsoftpartnercenterhelpneed": "General or other" }),
        );
        let codes: Vec<&str> = problems(&row).iter().map(ValidationProblem::code).collect();
        assert_eq!(
            codes,
            [
                "sync_flag_off",
                "deal_value_missing",
                "currency_invalid",
                "closing_date_missing",
                "country_code_invalid",
                "solution_id_missing",
                "contact_missing_for_help",
            ]
        );
        let unnamed = obj(json!({}));
        let all = problems(&unnamed);
        assert!(all.iter().any(|p| p.code() == "name_missing"));
        assert!(
            all[0]
                .to_string()
                .starts_with("Opportunity (no name) (opportunity, not saved yet):"),
            "{}",
            all[0]
        );
    }

    /// [`good_dataverse_row`] with an allowed taxonomy: a referral may be created from it.
    fn new_referral_row() -> Map<String, Value> {
        let mut row = good_dataverse_row();
        row.insert("msft_solutionarea".into(), json!("Security"));
        row.insert("msft_solutionplay".into(), json!("data security"));
        row.insert("msft_partnerrole".into(), json!("Implementation"));
        row
    }

    fn new_referral_problems(row: &Map<String, Value>) -> Vec<ValidationProblem> {
        validate_new_referral(&dataverse(row), &MappingConfig::default()).unwrap_err()
    }

    #[test]
    fn a_new_referral_carries_the_configured_spelling_of_its_taxonomy() {
        let new = validate_new_referral(&dataverse(&new_referral_row()), &MappingConfig::default())
            .unwrap();
        let taxonomy = new.taxonomy();
        assert_eq!(taxonomy.solution_area.as_str(), "Security");
        assert_eq!(taxonomy.solution_play.as_str(), "Data Security");
        assert_eq!(taxonomy.partner_role.as_str(), "Implementation");
        assert_eq!(new.record().name.as_deref(), Some("Contoso ERP"));
        // An update of an existing referral does not need it.
        assert!(
            validate_for_partner_center(
                &dataverse(&good_dataverse_row()),
                &MappingConfig::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_missing_taxonomy_value_names_both_fields_and_the_allowed_values() {
        let mut row = new_referral_row();
        row.remove("msft_partnerrole");
        let all = new_referral_problems(&row);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_actionable(&all[0], "taxonomy_value_missing", "msft_partnerrole");
        assert_eq!(
            all[0].to_string(),
            format!(
                "Opportunity \"Contoso ERP\" (opportunity {OPPORTUNITY_ID}): the Partner Role is \
                 missing; Partner Center's referral member \"partnerRole\" needs it on every \
                 referral the connector creates. Fix: set msft_partnerrole on the opportunity to \
                 one of: \"Advisory\", \"Implementation\", \"Managed Services\", \"Licensing\"."
            )
        );

        let none = new_referral_problems(&good_dataverse_row());
        let fields: Vec<(&str, &str)> = none.iter().map(|p| (p.code(), p.field())).collect();
        assert_eq!(
            fields,
            [
                ("taxonomy_value_missing", "msft_solutionarea"),
                ("taxonomy_value_missing", "msft_solutionplay"),
                ("taxonomy_value_missing", "msft_partnerrole"),
            ]
        );
        let area = none[0].to_string();
        assert!(
            area.contains("\"solutionArea\"")
                && area
                    .contains("\"AI Business Solutions\", \"Cloud & AI Platforms\", \"Security\""),
            "{area}"
        );
    }

    #[test]
    fn an_unknown_taxonomy_value_is_quoted_with_the_allowed_values() {
        let mut row = new_referral_row();
        row.insert("msft_solutionarea".into(), json!("Modern Work"));
        let all = new_referral_problems(&row);
        // The play is then checked against every area's plays: "Data Security" is one.
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_actionable(&all[0], "taxonomy_value_unknown", "msft_solutionarea");
        let message = all[0].to_string();
        assert!(
            message.contains(
                "Solution Area \"Modern Work\" is not allowed for Partner Center's \
                              referral member \"solutionArea\""
            ) && message.contains(
                "one of: \"AI Business Solutions\", \"Cloud & AI Platforms\", \"Security\""
            ) && message.contains("MAPPING_CONFIG_JSON"),
            "{message}"
        );
    }

    #[test]
    fn a_play_of_another_area_is_refused_with_the_area_s_plays() {
        let mut row = new_referral_row();
        row.insert(
            "msft_solutionplay".into(),
            json!("Unify Your Data Platform"),
        );
        let all = new_referral_problems(&row);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_actionable(&all[0], "taxonomy_value_unknown", "msft_solutionplay");
        let message = all[0].to_string();
        assert!(
            message.contains(
                "Solution Play \"Unify Your Data Platform\" is not allowed for Partner Center's \
                 referral member \"solutionPlay\" with Solution Area \"Security\""
            ) && message.contains(
                "one of: \"Data Security\", \"Modern SecOps with Unified Platform\", \"Protect \
                 Cloud, AI Platform and Apps\""
            ),
            "{message}"
        );
    }

    #[test]
    fn taxonomy_problems_come_with_every_other_problem() {
        let mut row = good_dataverse_row();
        row.remove("estimatedvalue");
        row.insert("msft_partnerrole".into(), json!("Reseller"));
        let codes: Vec<&str> = new_referral_problems(&row)
            .iter()
            .map(ValidationProblem::code)
            .collect();
        assert_eq!(
            codes,
            [
                "deal_value_missing",
                "taxonomy_value_missing",
                "taxonomy_value_missing",
                "taxonomy_value_unknown",
            ]
        );
    }

    #[test]
    fn salesforce_taxonomy_messages_name_the_configured_salesforce_fields() {
        let mut config = MappingConfig::default();
        config.salesforce.opportunity.partner_role = "Co_Sell_Role__c".into();
        let row = obj(json!({
            "Id": "006000000000001", "Name": "Contoso ERP", "Amount": 100, "CloseDate": "2026-06-30",
            "CurrencyIsoCode": "USD", "Sync_with_Partner_Center__c": "true",
            "Account": { "Name": "Contoso", "BillingCountry": "US" },
            "Solution_Area__c": "Security", "Solution_Play__c": "Data Security",
            "Co_Sell_Role__c": "Broker"
        }));
        let candidate = opportunity_from_salesforce(&SalesforceRecord::new(&row), &config);
        let all = validate_new_referral(&candidate, &config).unwrap_err();
        let fields: Vec<(&str, &str)> = all.iter().map(|p| (p.code(), p.field())).collect();
        assert_eq!(fields, [("taxonomy_value_unknown", "Co_Sell_Role__c")]);
        assert!(all[0].to_string().contains("\"partnerRole\""), "{}", all[0]);
        let mut ok = row.clone();
        ok.insert("Co_Sell_Role__c".into(), json!("managed services"));
        let candidate = opportunity_from_salesforce(&SalesforceRecord::new(&ok), &config);
        let new = validate_new_referral(&candidate, &config).unwrap();
        assert_eq!(new.taxonomy().partner_role.as_str(), "Managed Services");
    }

    #[test]
    fn dataverse_choices_and_lookups_are_read_by_their_label() {
        let mut row = new_referral_row();
        row.insert("msft_solutionarea".into(), json!(100_000_002));
        row.insert(
            "msft_solutionarea@OData.Community.Display.V1.FormattedValue".into(),
            json!("Security"),
        );
        row.insert(
            "msft_partnerrole".into(),
            json!({ "Id": "5a3f2c1e-0000-0000-0000-000000000001", "LogicalName": "msft_partnerrole", "Name": "Advisory" }),
        );
        let new = validate_new_referral(&dataverse(&row), &MappingConfig::default()).unwrap();
        assert_eq!(new.taxonomy().solution_area.as_str(), "Security");
        assert_eq!(new.taxonomy().partner_role.as_str(), "Advisory");
    }

    #[test]
    fn salesforce_messages_name_the_configured_salesforce_fields() {
        let mut config = MappingConfig::default();
        config.salesforce.account.country = "BillingCountryCode".into();
        let row = obj(json!({
            "Id": "006000000000001", "Name": "Contoso ERP", "Amount": 0, "CloseDate": "2026-06-30",
            "CurrencyIsoCode": "usd", "Sync_with_Partner_Center__c": true,
            "How_can_Microsoft_help__c": "Quotes or licensing",
            "Account": { "Name": "Contoso", "BillingCountryCode": "United States" }
        }));
        let candidate = opportunity_from_salesforce(&SalesforceRecord::new(&row), &config);
        let all = validate_for_partner_center(&candidate, &config).unwrap_err();
        let fields: Vec<(&str, &str)> = all.iter().map(|p| (p.code(), p.field())).collect();
        assert_eq!(
            fields,
            [
                ("deal_value_missing", "Amount"),
                ("country_code_invalid", "BillingCountryCode"),
                ("solution_id_missing", "Microsoft_Solutions__c"),
                ("contact_missing_for_help", "ContactId"),
            ]
        );
        let message = all[1].to_string();
        assert!(
            message.starts_with("Opportunity \"Contoso ERP\" (Opportunity 006000000000001AAA):"),
            "{message}"
        );
        assert!(
            message.contains("\"United States\"") && message.contains("such as \"US\""),
            "{message}"
        );
    }
}
