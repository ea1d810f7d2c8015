//! Domain errors: building a value ([`ParseError`]), moving a referral between states
//! ([`TransitionError`]) and checking a CRM opportunity before it may go to Partner Center
//! ([`ValidationProblem`]).
//!
//! None of these carry customer contact data: only identifiers, opportunity and account names,
//! and the offending value of non-personal fields (a country code, a currency, a solution ID).

use crate::opportunity::RecordRef;
use crate::status::ReferralState;
use crate::values::CountryCode;

/// The longest offending value quoted back in a [`ParseError`]; longer input is cut.
const MAX_QUOTED: usize = 80;

/// A value could not be turned into a domain type. Names the field and the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value was empty or only whitespace.
    #[error("{field} is empty; expected {expected}")]
    Empty {
        /// What was being parsed, e.g. `"referral id"`.
        field: &'static str,
        /// The expected format, e.g. `"a GUID such as 4111fffc-f9ee-4d53-bba6-569135228642"`.
        expected: &'static str,
    },
    /// The value did not have the expected format.
    #[error("{field} {found:?} is not valid; expected {expected}")]
    Invalid {
        /// What was being parsed.
        field: &'static str,
        /// The value that was found (cut to 80 characters).
        found: String,
        /// The expected format.
        expected: &'static str,
    },
}

impl ParseError {
    /// The error for an empty value.
    pub(crate) fn empty(field: &'static str, expected: &'static str) -> Self {
        Self::Empty { field, expected }
    }

    /// The error for a malformed value; `found` is quoted back, cut to a sane length.
    pub(crate) fn invalid(field: &'static str, found: &str, expected: &'static str) -> Self {
        let found = if found.chars().count() > MAX_QUOTED {
            let mut cut: String = found.chars().take(MAX_QUOTED).collect();
            cut.push('…');
            cut
        } else {
            found.to_owned()
        };
        Self::Invalid {
            field,
            found,
            expected,
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field, .. } | Self::Invalid { field, .. } => field,
        }
    }
}

/// A referral state change that Partner Center does not allow
/// (docs/partner-center.md#referral-status-rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The referral is closed (won, lost, declined, expired, or an undocumented closed substatus).
    #[error(
        "referral is {from}, a terminal state: Partner Center does not accept any change to won, \
         lost, declined or expired referrals (requested: {requested}). Fix: leave the referral \
         as it is; if the deal is still alive, share it again as a new opportunity"
    )]
    Terminal {
        /// The current state.
        from: ReferralState,
        /// What was requested: a target state or the list of changed fields.
        requested: String,
    },
    /// The target status is not reachable from the current status.
    #[error(
        "referral status cannot move from {from} to {to}: from {from_status} Partner Center \
         allows only {allowed}. Fix: set the CRM stage to one that maps to {allowed}",
        from_status = from.status
    )]
    StatusNotAllowed {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// The statuses allowed from there, e.g. `"Active or Closed"`.
        allowed: &'static str,
    },
    /// The target substatus does not belong to the target status.
    #[error(
        "referral cannot move from {from} to {to}: with status {to_status} the substatus must be \
         {allowed}. Fix: pick a substatus that belongs to {to_status}",
        to_status = to.status
    )]
    SubstatusNotAllowed {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// The substatuses allowed with it, e.g. `"Won, Lost, Declined or Expired"`.
        allowed: &'static str,
    },
    /// One side is not a documented state (for example a status added by Partner Center later).
    #[error(
        "referral cannot move from {from} to {to}: {unknown} is not a documented Partner Center \
         state. Fix: check the referral in Partner Center and change its state there"
    )]
    UnknownState {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// Which of the two is unknown, spelled out.
        unknown: String,
    },
    /// The current referral carries no status at all, so no change can be checked.
    #[error(
        "referral has no status, so the change to {to} cannot be checked. Fix: re-read the \
         referral from Partner Center and try again"
    )]
    MissingState {
        /// The requested state.
        to: ReferralState,
    },
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
        options = crate::opportunity::AssistanceRequest::LABELS.join("; ")
    )]
    HelpOptionUnknown {
        /// The opportunity.
        record: RecordRef,
        /// The CRM field holding the help option.
        field: String,
        /// The value found.
        found: String,
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
            | Self::ReferralIdInvalid { record, .. } => record,
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
            | Self::ReferralIdInvalid { field, .. } => field,
        }
    }
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

/// Cut a quoted value so a message stays readable.
fn quoted(value: &str) -> String {
    if value.chars().count() > MAX_QUOTED {
        let mut cut: String = value.chars().take(MAX_QUOTED).collect();
        cut.push('…');
        cut
    } else {
        value.to_owned()
    }
}
