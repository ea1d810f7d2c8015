//! What the Dataverse and Salesforce opportunity bodies share: the connector's own columns
//! (Dataverse) or fields (Salesforce), written under each CRM's configured names.

use serde_json::{Map, Value};

use super::config::{DataverseOpportunityFields, SalesforceOpportunityFields};
use super::read;
use crate::opportunity::Opportunity;

/// The configured names of the connector's own opportunity columns / fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectorFields<'a> {
    sync: &'a str,
    help: &'a str,
    visibility: &'a str,
    solutions: &'a str,
    referral_identifier: &'a str,
    referral_link: &'a str,
    microsoft_crm_identifier: &'a str,
    audit: &'a str,
}

/// `ConnectorFields` of each CRM's opportunity field names (the same names in both).
macro_rules! connector_fields_of {
    ($($fields:ty),*) => {$(
        impl<'a> From<&'a $fields> for ConnectorFields<'a> {
            fn from(f: &'a $fields) -> Self {
                Self {
                    sync: &f.sync,
                    help: &f.help,
                    visibility: &f.visibility,
                    solutions: &f.solutions,
                    referral_identifier: &f.referral_identifier,
                    referral_link: &f.referral_link,
                    microsoft_crm_identifier: &f.microsoft_crm_identifier,
                    audit: &f.audit,
                }
            }
        }
    )*};
}

connector_fields_of!(DataverseOpportunityFields, SalesforceOpportunityFields);

/// Appends the connector's own fields to an opportunity body, in this order: when creating,
/// the sync flag, help, visibility and solutions (only when there are any); always the
/// referral id, referral link, Microsoft CRM identifier and audit text, each only when set.
pub(crate) fn put_connector_fields(
    body: &mut Map<String, Value>,
    f: ConnectorFields<'_>,
    opportunity: &Opportunity,
    create: bool,
    audit: Option<&str>,
) {
    if create {
        body.insert(f.sync.to_owned(), opportunity.sync.into());
        read::put(
            body,
            f.help,
            opportunity.help.as_ref().map(|h| h.label().to_owned()),
        );
        body.insert(
            f.visibility.to_owned(),
            opportunity.visible_to_microsoft.into(),
        );
        if !opportunity.solutions.is_empty() {
            body.insert(
                f.solutions.to_owned(),
                read::join_solutions(&opportunity.solutions).into(),
            );
        }
    }
    read::put(
        body,
        f.referral_identifier,
        opportunity.referral_id.map(|id| id.to_string()),
    );
    read::put(body, f.referral_link, opportunity.referral_link.clone());
    read::put(
        body,
        f.microsoft_crm_identifier,
        opportunity.microsoft_crm_id.clone(),
    );
    read::put(body, f.audit, audit);
}
