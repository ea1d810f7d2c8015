//! What the handler and end-to-end tests of `crm-events` share: the CRM they run against (its
//! field names), the function's environment for the sandbox, and the seller's records.
#![allow(dead_code)]

use cosell_domain::CrmRecordId;
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_REFRESH_TOKEN, SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USER_ID,
    SALESFORCE_INTEGRATION_USERNAME, SALESFORCE_ORG_ID, TENANT_ID,
};
use cosell_sandbox::pki::SALESFORCE_APP_KEY_PEM;
use serde_json::{Value, json};

/// The Dataverse WebhookKey the function is configured with.
pub const WEBHOOK_KEY: &str = "sandbox-dataverse-webhook-key";
/// The secret of the Salesforce Outbound Message URL.
pub const ENDPOINT_SECRET: &str = "sandbox-salesforce-endpoint-secret";
/// The solution the seller's opportunities name.
pub const SOLUTION: &str = "SOL-34104-EBB";

/// The CRM a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    Dataverse,
    Salesforce,
}

impl Crm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }

    pub fn referral_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralidentifier",
            Self::Salesforce => "Referral_Identifier__c",
        }
    }

    pub fn audit_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralsyncaudit",
            Self::Salesforce => "Audit__c",
        }
    }

    pub fn solutions_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercentersolutions",
            Self::Salesforce => "Microsoft_Solutions__c",
        }
    }

    /// "How can Microsoft help?" (a solution and a contact are required once help is asked).
    pub fn help_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterhelpneed",
            Self::Salesforce => "How_can_Microsoft_help__c",
        }
    }

    /// The Solution Area, Solution Play and Partner Role fields (every referral created from
    /// the CRM carries them).
    pub fn solution_area_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_solutionarea",
            Self::Salesforce => "Solution_Area__c",
        }
    }

    pub fn solution_play_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_solutionplay",
            Self::Salesforce => "Solution_Play__c",
        }
    }

    pub fn partner_role_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_partnerrole",
            Self::Salesforce => "Partner_Role__c",
        }
    }

    /// The allowed taxonomy the seed gives each CRM's opportunities (Solution Area, Solution
    /// Play, Partner Role), as configured by default.
    pub fn taxonomy(self) -> [&'static str; 3] {
        match self {
            Self::Dataverse => ["Security", "Data Security", "Implementation"],
            Self::Salesforce => [
                "Cloud & AI Platforms",
                "Migrate and Modernize Your Estate",
                "Managed Services",
            ],
        }
    }

    pub fn country_field(self) -> &'static str {
        match self {
            Self::Dataverse => "address1_country",
            Self::Salesforce => "BillingCountry",
        }
    }

    pub fn contact_field(self) -> &'static str {
        match self {
            Self::Dataverse => "parentcontactid",
            Self::Salesforce => "ContactId",
        }
    }

    pub fn amount_field(self) -> &'static str {
        match self {
            Self::Dataverse => "estimatedvalue",
            Self::Salesforce => "Amount",
        }
    }

    pub fn name_field(self) -> &'static str {
        match self {
            Self::Dataverse => "name",
            Self::Salesforce => "Name",
        }
    }

    /// The connector's own user in the CRM (its writes are echoes).
    pub fn connector_user(self) -> &'static str {
        match self {
            Self::Dataverse => DATAVERSE_APP_USER_ID,
            Self::Salesforce => SALESFORCE_INTEGRATION_USER_ID,
        }
    }

    pub fn record_id(self, native: &str) -> CrmRecordId {
        CrmRecordId::try_from(format!("{}:{native}", self.name())).unwrap()
    }

    /// The sandbox control path of the opportunity `id`.
    pub fn opportunity_path(self, id: &str) -> String {
        match self {
            Self::Dataverse => format!("/_sandbox/dataverse/opportunities/{id}"),
            Self::Salesforce => format!("/_sandbox/salesforce/Opportunity/{id}"),
        }
    }

    /// The function's environment against the sandbox at `base` (in-memory stores; the
    /// end-to-end test replaces `STORE` and adds the table and queue).
    pub fn environment(self, base: &str) -> Vec<(&'static str, String)> {
        let common: [(&'static str, &str); 7] = [
            ("PC_API_BASE_URL", base),
            ("ENTRA_AUTHORITY", base),
            ("PC_TENANT_ID", TENANT_ID),
            ("PC_CLIENT_ID", PC_CLIENT_ID),
            ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
            ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
            ("STORE", "memory"),
        ];
        let crm: &[(&'static str, &str)] = match self {
            Self::Dataverse => &[
                ("CRM_KIND", "dataverse"),
                ("DATAVERSE_URL", base),
                ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
                ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
                ("DATAVERSE_WEBHOOK_KEY", WEBHOOK_KEY),
                ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
            ],
            Self::Salesforce => &[
                ("CRM_KIND", "salesforce"),
                ("SALESFORCE_LOGIN_URL", base),
                ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
                ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
                ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
                ("SALESFORCE_ENDPOINT_SECRET", ENDPOINT_SECRET),
                ("SALESFORCE_ORGANIZATION_ID", SALESFORCE_ORG_ID),
                (
                    "SALESFORCE_CONNECTOR_USER_ID",
                    SALESFORCE_INTEGRATION_USER_ID,
                ),
            ],
        };
        common
            .iter()
            .chain(crm)
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect()
    }

    /// The seller's `n`th opportunity (1 to 255) with sync on, all of one account (in
    /// `country`) and, in Dataverse, one contact: the control-API `PUT`s that seed them, the
    /// opportunity last, and its id. Dataverse asks for Microsoft's help; the Salesforce seed
    /// sets no `ContactId` (no primary contact), so it asks for none.
    pub fn seed(self, n: u8, country: &str) -> (Vec<(String, Value)>, String) {
        match self {
            Self::Dataverse => {
                let id = format!("6d81597f-0000-4000-8000-{:012x}", 0xe0 + u32::from(n));
                let (account, contact) = (
                    "6d81597f-0000-4000-8000-0000000000a1",
                    "6d81597f-0000-4000-8000-0000000000c1",
                );
                let puts = vec![
                    (
                        format!("/_sandbox/dataverse/accounts/{account}"),
                        json!({"name": "Fourth Coffee", "address1_city": "Seattle",
                               "address1_country": country}),
                    ),
                    (
                        format!("/_sandbox/dataverse/contacts/{contact}"),
                        json!({"firstname": "Dana", "lastname": "Reyes",
                               "emailaddress1": "dana@fourthcoffee.example"}),
                    ),
                    (
                        self.opportunity_path(&id),
                        json!({
                            "name": "Fourth Coffee ERP", "estimatedvalue": 25000,
                            "estimatedclosedate": "2027-06-30",
                            "_parentaccountid_value": account, "_parentcontactid_value": contact,
                            "msft_microsoftpartnercenterreferralsync": true,
                            "msft_microsoftpartnercenterhelpneed": "Proof of concept or demo",
                            "msft_microsoftpartnercentersolutions": SOLUTION,
                            // Spelled as a seller might: matched to the configured values.
                            "msft_solutionarea": "security",
                            "msft_solutionplay": "data-security",
                            "msft_partnerrole": "Implementation",
                        }),
                    ),
                ];
                (puts, id)
            }
            Self::Salesforce => {
                let (account, id) = ("001000000000001", format!("006{n:012}"));
                let puts = vec![
                    (
                        format!("/_sandbox/salesforce/Account/{account}"),
                        json!({"Name": "Fourth Coffee", "BillingCity": "Seattle",
                               "BillingCountry": country}),
                    ),
                    (
                        self.opportunity_path(&id),
                        json!({
                            "Name": "Fourth Coffee ERP", "StageName": "Prospecting",
                            "CloseDate": "2027-06-30", "Amount": 25000,
                            "CurrencyIsoCode": "USD", "AccountId": account,
                            "Sync_with_Partner_Center__c": true,
                            "Microsoft_Solutions__c": SOLUTION,
                            "Solution_Area__c": "Cloud & AI Platforms",
                            "Solution_Play__c": "Migrate and Modernize Your Estate",
                            "Partner_Role__c": "Managed Services",
                        }),
                    ),
                ];
                (puts, id)
            }
        }
    }
}

/// Whether a referral (as the sandbox lists it) targets Microsoft: the partner's invitation of
/// Microsoft to a Shared deal's engagement.
pub fn invites_microsoft(referral: &Value) -> bool {
    referral["target"]
        .as_array()
        .is_some_and(|targets| targets.iter().any(|t| t["id"] == "msft"))
}
