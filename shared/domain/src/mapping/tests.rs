//! Mapping tests: Partner Center ⇄ model ⇄ Dataverse / Salesforce, both ways.

use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::*;
use crate::ids::{CrmKind, CrmRecordId, DataverseId, ReferralId, SalesforceId, SolutionId};
use crate::opportunity::{
    Account, AssistanceRequest, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityField,
    OpportunityStage, RecordRef,
};
use crate::referral::{
    AssistanceRequestCode, PatchOp, Referral, ReferralType, SolutionType, TargetType,
};
use crate::status::TransitionError;
use crate::status::{ReferralStatus, ReferralSubstatus};
use crate::validation::validate_new_referral;
use crate::values::{CountryCode, CurrencyCode, Money};

const CREATE_RESPONSE: &str = include_str!("../../tests/data/create-referral-response.json");
const CREATE_REQUEST: &str = include_str!("../../tests/data/create-referral-request.json");
const SALESFORCE_CREATED: &str =
    include_str!("../../tests/data/salesforce-rest-create-success.json");

const USD_ID: &str = "7eb682f1-ca75-e511-80d4-00155d2a68d1";
const ACCOUNT_ID: &str = "0b3d5c7e-0000-4000-8000-000000000001";
const CONTACT_ID: &str = "0b3d5c7e-0000-4000-8000-000000000002";
const OPPORTUNITY_ID: &str = "6d81597f-0f9f-e711-8122-000d3aa2331c";

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn usd() -> CurrencyCode {
    CurrencyCode::try_from("USD").unwrap()
}

fn config() -> MappingConfig {
    MappingConfig {
        referral_link_template: Some("https://partner.example/referrals/{id}".into()),
        ..MappingConfig::default()
    }
}

fn response_referral() -> Referral {
    serde_json::from_str(CREATE_RESPONSE).unwrap()
}

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

// --- Partner Center → model ---------------------------------------------------------------

#[test]
fn a_referral_maps_to_the_canonical_opportunity() {
    let opportunity = referral_to_opportunity(&response_referral(), &config());
    assert_eq!(opportunity.name.as_deref(), Some("Test Cosell Invite_20"));
    assert_eq!(
        opportunity.deal_value,
        Some(Money::new(dec("50000"), usd()))
    );
    assert_eq!(
        opportunity.closing_date, None,
        "the response sample omits closingDateTime"
    );
    assert!(
        opportunity
            .notes
            .as_deref()
            .unwrap()
            .starts_with("Customer is looking")
    );
    assert_eq!(opportunity.stage, Some(OpportunityStage::Active));
    assert_eq!(
        opportunity.account.name.as_deref(),
        Some("Contoso Customer Inc")
    );
    assert_eq!(
        opportunity.account.address_line1.as_deref(),
        Some("One Microsoft Way")
    );
    assert_eq!(opportunity.account.city.as_deref(), Some("Redmond"));
    assert_eq!(opportunity.account.state.as_deref(), Some("WA"));
    assert_eq!(opportunity.account.postal_code.as_deref(), Some("98052"));
    assert_eq!(
        opportunity.account.country,
        Some(CountryCode::try_from("US").unwrap())
    );
    let contact = opportunity.contact.as_ref().unwrap();
    assert_eq!(
        contact.email.as_deref(),
        Some("sue.smith@contoso.com"),
        "first customer team member"
    );
    assert_eq!(contact.phone.as_deref(), Some("1234567890"));
    let solutions: Vec<&str> = opportunity
        .solutions
        .iter()
        .map(SolutionId::as_str)
        .collect();
    assert_eq!(solutions, ["Dynamics365forFieldService", "SOL-34104-EBB"]);
    assert_eq!(opportunity.help, None);
    assert!(
        opportunity.visible_to_microsoft,
        "shared and invited by Microsoft"
    );
    assert!(opportunity.sync);
    assert_eq!(
        opportunity.referral_id.unwrap().to_string(),
        "4111fffc-f9ee-4d53-bba6-569135228642"
    );
    assert_eq!(
        opportunity.referral_link.as_deref(),
        Some("https://partner.example/referrals/4111fffc-f9ee-4d53-bba6-569135228642")
    );
}

#[test]
fn referral_states_map_to_stages() {
    let cases = [
        (Some("New"), Some("Pending"), Some(OpportunityStage::OnHold)),
        (
            Some("New"),
            Some("Received"),
            Some(OpportunityStage::OnHold),
        ),
        (
            Some("Active"),
            Some("Accepted"),
            Some(OpportunityStage::Active),
        ),
        (Some("Closed"), Some("Won"), Some(OpportunityStage::Won)),
        (
            Some("Closed"),
            Some("Lost"),
            Some(OpportunityStage::Lost(LostReason::Lost)),
        ),
        (
            Some("Closed"),
            Some("Declined"),
            Some(OpportunityStage::Lost(LostReason::Declined)),
        ),
        (
            Some("Closed"),
            Some("Expired"),
            Some(OpportunityStage::Lost(LostReason::Expired)),
        ),
        (
            Some("Closed"),
            Some("Error"),
            Some(OpportunityStage::Lost(LostReason::Other)),
        ),
        (None, Some("Won"), Some(OpportunityStage::Won)),
        (None, None, None),
        (Some("Archived"), None, None),
    ];
    for (status, substatus, expected) in cases {
        let status = status.map(ReferralStatus::parse);
        let substatus = substatus.map(ReferralSubstatus::parse);
        assert_eq!(
            stage_of(status.as_ref(), substatus.as_ref()),
            expected,
            "{status:?}/{substatus:?}"
        );
    }
}

#[test]
fn unreadable_partner_center_values_are_left_out_not_fatal() {
    let referral: Referral = serde_json::from_value(json!({
        "name": "Odd",
        "details": { "dealValue": 10, "currency": "EURO", "closingDateTime": "someday" },
        "customerProfile": { "address": { "country": "USA" }, "team": [{}] },
        "inviteContext": { "assistanceRequestCode": "Unknown" },
        "target": [{ "id": "SOL 1", "type": "SolutionProfile" }]
    }))
    .unwrap();
    let opportunity = referral_to_opportunity(&referral, &MappingConfig::default());
    assert_eq!(opportunity.deal_value, None);
    assert_eq!(opportunity.closing_date, None);
    assert_eq!(opportunity.account.country, None);
    assert_eq!(opportunity.contact, None);
    assert_eq!(opportunity.help, None);
    assert!(opportunity.solutions.is_empty());
    assert!(!opportunity.visible_to_microsoft);
}

#[test]
fn the_customer_contact_is_the_first_team_member_with_an_email() {
    let referral: Referral = serde_json::from_value(json!({
        "customerProfile": { "team": [
            { "firstName": "No", "lastName": "Email", "phoneNumber": "1" },
            { "firstName": "Joe", "lastName": "Hansen", "email": " " },
            { "firstName": "Sue", "lastName": "Smith", "email": "sue.smith@contoso.com" }
        ] }
    }))
    .unwrap();
    let contact = referral_to_opportunity(&referral, &MappingConfig::default())
        .contact
        .unwrap();
    assert_eq!(contact.email.as_deref(), Some("sue.smith@contoso.com"));
    assert_eq!(contact.last_name.as_deref(), Some("Smith"));

    // Without any email, the first member still names the contact.
    let referral: Referral = serde_json::from_value(json!({
        "customerProfile": { "team": [
            { "firstName": "No", "lastName": "Email" },
            { "firstName": "Other" }
        ] }
    }))
    .unwrap();
    let contact = referral_to_opportunity(&referral, &MappingConfig::default())
        .contact
        .unwrap();
    assert_eq!(contact.last_name.as_deref(), Some("Email"));
}

#[test]
fn dot_nets_unset_closing_date_is_no_closing_date() {
    let referral: Referral = serde_json::from_value(json!({
        "details": { "closingDateTime": "0001-01-01T00:00:00" }
    }))
    .unwrap();
    let opportunity = referral_to_opportunity(&referral, &MappingConfig::default());
    assert_eq!(opportunity.closing_date, None);
}

// --- model → Dataverse → model ---------------------------------------------------------------

fn dataverse_links() -> DataverseLinks {
    DataverseLinks {
        currency: Some(DataverseId::try_from(USD_ID).unwrap()),
        account: Some(DataverseId::try_from(ACCOUNT_ID).unwrap()),
        contact: Some(DataverseId::try_from(CONTACT_ID).unwrap()),
    }
}

fn with_help(mut opportunity: Opportunity) -> Opportunity {
    opportunity.help = Some(AssistanceRequest::ProofOfConceptOrDemo);
    opportunity.closing_date = NaiveDate::from_ymd_opt(2026, 6, 30);
    opportunity.microsoft_crm_id = Some("7-ABCDEF".into());
    opportunity
}

#[test]
fn the_dataverse_opportunity_body_uses_the_default_columns() {
    let opportunity = with_help(referral_to_opportunity(&response_referral(), &config()));
    let body = dataverse_opportunity_body(
        &opportunity,
        &dataverse_links(),
        Some("synced"),
        BodyScope::Create,
        &config(),
    );
    assert_eq!(body["name"], "Test Cosell Invite_20");
    assert_eq!(body["estimatedvalue"], json!(50000));
    assert_eq!(body["estimatedclosedate"], "2026-06-30");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .starts_with("Customer is looking")
    );
    assert_eq!(
        body["transactioncurrencyid@odata.bind"],
        format!("/transactioncurrencies({USD_ID})")
    );
    assert_eq!(
        body["parentaccountid@odata.bind"],
        format!("/accounts({ACCOUNT_ID})")
    );
    assert_eq!(
        body["customerid_account@odata.bind"],
        format!("/accounts({ACCOUNT_ID})")
    );
    assert_eq!(
        body["parentcontactid@odata.bind"],
        format!("/contacts({CONTACT_ID})")
    );
    assert_eq!(body["statecode"], 0);
    assert_eq!(body["statuscode"], 1);
    assert_eq!(body["msft_microsoftpartnercenterreferralsync"], true);
    assert_eq!(
        body["msft_microsoftpartnercenterreferralidentifier"],
        "4111fffc-f9ee-4d53-bba6-569135228642"
    );
    assert!(
        body["msft_microsoftpartnercenterreferrallink"]
            .as_str()
            .unwrap()
            .ends_with("4111fffc-f9ee-4d53-bba6-569135228642")
    );
    assert_eq!(
        body["msft_microsoftpartnercenterreferralsyncaudit"],
        "synced"
    );
    assert_eq!(
        body["msft_microsoftpartnercenterhelpneed"],
        "Proof of concept or demo"
    );
    assert_eq!(body["msft_microsoftpartnercenterreferralvisible"], true);
    assert_eq!(
        body["msft_microsoftpartnercentersolutions"],
        "Dynamics365forFieldService; SOL-34104-EBB"
    );
    assert_eq!(body["msft_microsoftcrmidentifier"], "7-ABCDEF");
    assert_eq!(body.len(), 18, "{body:#?}");
}

#[test]
fn the_dataverse_update_body_carries_only_the_pc_to_crm_update_fields() {
    let opportunity = referral_to_opportunity(&response_referral(), &config());
    let body = dataverse_opportunity_body(
        &opportunity,
        &dataverse_links(),
        None,
        BodyScope::Update,
        &config(),
    );
    let keys: Vec<&str> = body.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "estimatedvalue",
            "transactioncurrencyid@odata.bind",
            "description",
            "statecode",
            "statuscode",
            "msft_microsoftpartnercenterreferralidentifier",
            "msft_microsoftpartnercenterreferrallink",
        ]
    );
}

#[test]
fn dataverse_states_follow_the_connector_status_reasons() {
    let config = MappingConfig::default();
    let cases = [
        (OpportunityStage::OnHold, (0, 2)),
        (OpportunityStage::Active, (0, 1)),
        (OpportunityStage::Won, (1, 3)),
        (OpportunityStage::Lost(LostReason::Lost), (2, 5)),
        (OpportunityStage::Lost(LostReason::Declined), (2, 4)),
        (OpportunityStage::Lost(LostReason::Expired), (2, 4)),
        (OpportunityStage::Lost(LostReason::Other), (2, 4)),
    ];
    for (stage, expected) in cases {
        assert_eq!(dataverse_state(stage, &config), expected, "{stage:?}");
    }
}

#[test]
fn account_and_contact_bodies_use_the_default_columns() {
    let config = MappingConfig::default();
    let opportunity = referral_to_opportunity(&response_referral(), &config);
    let account = dataverse_account_body(&opportunity.account, &config);
    assert_eq!(
        Value::Object(account),
        json!({
            "name": "Contoso Customer Inc", "address1_line1": "One Microsoft Way",
            "address1_city": "Redmond", "address1_stateorprovince": "WA",
            "address1_postalcode": "98052", "address1_country": "US"
        })
    );
    let contact = dataverse_contact_body(
        opportunity.contact.as_ref().unwrap(),
        Some(DataverseId::try_from(ACCOUNT_ID).unwrap()),
        &config,
    );
    assert_eq!(
        Value::Object(contact),
        json!({
            "firstname": "Sue", "lastname": "Smith", "emailaddress1": "sue.smith@contoso.com",
            "telephone1": "1234567890", "parentcustomerid_account@odata.bind": format!("/accounts({ACCOUNT_ID})")
        })
    );
}

/// What the Web API returns for the row written from `body` (lookups expanded).
fn dataverse_row_from(
    body: &Map<String, Value>,
    account: &Map<String, Value>,
    contact: &Map<String, Value>,
) -> Map<String, Value> {
    let mut row = body.clone();
    row.retain(|key, _| !key.ends_with("@odata.bind"));
    row.insert("opportunityid".into(), json!(OPPORTUNITY_ID));
    row.insert(
        "transactioncurrencyid".into(),
        json!({ "isocurrencycode": "USD" }),
    );
    row.insert("parentaccountid".into(), Value::Object(account.clone()));
    row.insert("parentcontactid".into(), Value::Object(contact.clone()));
    row
}

#[test]
fn referral_to_dataverse_and_back_preserves_every_mapped_field() {
    let config = config();
    let original = with_help(referral_to_opportunity(&response_referral(), &config));
    let body = dataverse_opportunity_body(
        &original,
        &dataverse_links(),
        None,
        BodyScope::Create,
        &config,
    );
    let account = dataverse_account_body(&original.account, &config);
    let contact = dataverse_contact_body(original.contact.as_ref().unwrap(), None, &config);
    let row = dataverse_row_from(&body, &account, &contact);

    let read = opportunity_from_dataverse(&DataverseRecord::new(&row), &config);
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    assert_eq!(read.opportunity, original);
    assert_eq!(read.opportunity.fingerprint(), original.fingerprint());
    assert_eq!(read.record.crm, CrmKind::Dataverse);
    assert_eq!(
        read.record.id,
        Some(CrmRecordId::try_from(format!("dataverse:{OPPORTUNITY_ID}")).unwrap())
    );
    assert_eq!(read.record.name.as_deref(), Some("Test Cosell Invite_20"));

    // The same row with the account and contact passed separately.
    let mut bare = row.clone();
    bare.remove("parentaccountid");
    bare.remove("parentcontactid");
    let separate = DataverseRecord {
        account: Some(&account),
        contact: Some(&contact),
        ..DataverseRecord::new(&bare)
    };
    assert_eq!(
        opportunity_from_dataverse(&separate, &config).opportunity,
        original
    );
}

#[test]
fn every_referral_state_survives_a_dataverse_round_trip_up_to_the_loss_reason() {
    let config = MappingConfig::default();
    for stage in [
        OpportunityStage::OnHold,
        OpportunityStage::Active,
        OpportunityStage::Won,
        OpportunityStage::Lost(LostReason::Lost),
        OpportunityStage::Lost(LostReason::Declined),
        OpportunityStage::Lost(LostReason::Expired),
    ] {
        let opportunity = Opportunity {
            stage: Some(stage),
            ..Opportunity::default()
        };
        let body = dataverse_opportunity_body(
            &opportunity,
            &DataverseLinks::default(),
            None,
            BodyScope::Create,
            &config,
        );
        let read = opportunity_from_dataverse(&DataverseRecord::new(&body), &config).opportunity;
        assert_eq!(
            read.stage.map(|s| s.coarse()),
            Some(stage.coarse()),
            "{stage:?}"
        );
    }
}

#[test]
fn dataverse_values_decoded_from_a_webhook_are_read() {
    // Attributes as an adapter decodes them from a RemoteExecutionContext Target entity.
    let row = obj(json!({
        "opportunityid": OPPORTUNITY_ID.to_uppercase(),
        "name": "Contoso ERP",
        "estimatedvalue": { "__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1234.56 },
        "estimatedclosedate": "/Date(1782777600000)/",
        "statecode": { "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 0 },
        "statuscode": { "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 2 },
        "transactioncurrencyid": { "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts", "Id": USD_ID, "LogicalName": "transactioncurrency", "Name": "US Dollar" },
        "msft_microsoftpartnercenterreferralsync": true,
        "msft_microsoftpartnercenterhelpneed": { "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 100000002 },
        "msft_microsoftpartnercenterhelpneed@OData.Community.Display.V1.FormattedValue": "Proof of concept or demo",
        "modifiedon": "/Date(1506384247000)/"
    }));
    let record = DataverseRecord {
        currency: Some(usd()),
        ..DataverseRecord::new(&row)
    };
    let read = opportunity_from_dataverse(&record, &MappingConfig::default());
    let opportunity = &read.opportunity;
    assert_eq!(
        opportunity.deal_value,
        Some(Money::new(dec("1234.56"), usd()))
    );
    assert_eq!(
        opportunity.closing_date,
        NaiveDate::from_ymd_opt(2026, 6, 30)
    );
    assert_eq!(opportunity.stage, Some(OpportunityStage::OnHold));
    assert_eq!(
        opportunity.help,
        Some(AssistanceRequest::ProofOfConceptOrDemo)
    );
    assert!(opportunity.sync);
    assert_eq!(
        read.record.id.as_ref().map(CrmRecordId::native).as_deref(),
        Some(OPPORTUNITY_ID)
    );
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
}

#[test]
fn dataverse_values_that_cannot_be_read_are_kept_as_rejected() {
    let row = obj(json!({
        "estimatedvalue": "lots",
        "estimatedclosedate": "end of quarter",
        "transactioncurrencyid": { "isocurrencycode": "EURO" },
        "parentaccountid": { "name": "Contoso", "address1_country": "USA" },
        "msft_microsoftpartnercentersolutions": "SOL-1; not valid",
        "msft_microsoftpartnercenterreferralidentifier": "{{ReferralID}}",
        "statecode": 7
    }));
    let read = opportunity_from_dataverse(&DataverseRecord::new(&row), &MappingConfig::default());
    let found = |field| {
        read.rejected(field)
            .map(|r| (r.crm_field.as_str(), r.found.as_str()))
    };
    assert_eq!(
        found(OpportunityField::DealValue),
        Some(("estimatedvalue", "lots"))
    );
    assert_eq!(
        found(OpportunityField::ClosingDate),
        Some(("estimatedclosedate", "end of quarter"))
    );
    assert_eq!(
        found(OpportunityField::Currency),
        Some(("transactioncurrencyid", "EURO"))
    );
    assert_eq!(
        found(OpportunityField::Country),
        Some(("address1_country", "USA"))
    );
    assert_eq!(
        found(OpportunityField::Solution),
        Some(("msft_microsoftpartnercentersolutions", "not valid"))
    );
    assert_eq!(
        found(OpportunityField::ReferralId).map(|f| f.1),
        Some("{{ReferralID}}")
    );
    assert_eq!(found(OpportunityField::Stage), Some(("statecode", "7")));
    assert_eq!(
        read.opportunity.solutions,
        vec![SolutionId::try_from("SOL-1").unwrap()]
    );
    assert_eq!(read.opportunity.stage, None);
}

#[test]
fn a_dataverse_record_without_currency_uses_the_configured_default() {
    let row = obj(json!({ "estimatedvalue": 10 }));
    let none = opportunity_from_dataverse(&DataverseRecord::new(&row), &MappingConfig::default());
    assert_eq!(none.opportunity.deal_value, None);
    assert_eq!(none.amount, Some(dec("10")));
    let config = MappingConfig {
        default_currency: Some(usd()),
        ..MappingConfig::default()
    };
    let defaulted = opportunity_from_dataverse(&DataverseRecord::new(&row), &config);
    assert_eq!(
        defaulted.opportunity.deal_value,
        Some(Money::new(dec("10"), usd()))
    );
}

#[test]
fn dataverse_record_debug_output_shows_column_names_only() {
    let row = obj(json!({ "name": "x" }));
    let contact = obj(json!({ "emailaddress1": "sue.smith@contoso.com", "firstname": "Sue" }));
    let record = DataverseRecord {
        contact: Some(&contact),
        ..DataverseRecord::new(&row)
    };
    let debug = format!("{record:?}");
    assert!(
        debug.contains("emailaddress1") && !debug.contains("sue.smith") && !debug.contains("Sue"),
        "{debug}"
    );
}

// --- model → Salesforce → model --------------------------------------------------------------

fn salesforce_ids() -> (SalesforceId, SalesforceId) {
    let created: Value = serde_json::from_str(SALESFORCE_CREATED).unwrap();
    let account = SalesforceId::try_from(created["id"].as_str().unwrap()).unwrap();
    let opportunity = SalesforceId::try_from("006000000000001").unwrap();
    (account, opportunity)
}

#[test]
fn the_salesforce_bodies_use_the_default_fields() {
    let config = config();
    let (account_id, _) = salesforce_ids();
    let opportunity = with_help(referral_to_opportunity(&response_referral(), &config));
    let body = salesforce_opportunity_body(
        &opportunity,
        Some(&account_id),
        Some("synced"),
        BodyScope::Create,
        &config,
    );
    assert_eq!(body["Name"], "Test Cosell Invite_20");
    assert_eq!(body["Amount"], json!(50000));
    assert_eq!(body["CurrencyIsoCode"], "USD");
    assert_eq!(body["CloseDate"], "2026-06-30");
    assert_eq!(body["StageName"], "Qualification");
    assert_eq!(body["AccountId"], "001D000000IqhSLIAZ");
    assert_eq!(body["Sync_with_Partner_Center__c"], true);
    assert_eq!(
        body["Referral_Identifier__c"],
        "4111fffc-f9ee-4d53-bba6-569135228642"
    );
    assert!(body["Referral_Link__c"].is_string());
    assert_eq!(body["Audit__c"], "synced");
    assert_eq!(
        body["How_can_Microsoft_help__c"],
        "Proof of concept or demo"
    );
    assert_eq!(body["Microsoft_Referral_Visibility__c"], true);
    assert_eq!(
        body["Microsoft_Solutions__c"],
        "Dynamics365forFieldService; SOL-34104-EBB"
    );
    assert_eq!(body["Microsoft_CRM_Identifier__c"], "7-ABCDEF");
    assert!(body["Description"].is_string());
    assert_eq!(body.len(), 15, "{body:#?}");

    let account = salesforce_account_body(&opportunity.account, &config);
    assert_eq!(
        Value::Object(account),
        json!({
            "Name": "Contoso Customer Inc", "BillingStreet": "One Microsoft Way", "BillingCity": "Redmond",
            "BillingState": "WA", "BillingPostalCode": "98052", "BillingCountry": "US"
        })
    );
    let contact = salesforce_contact_body(
        opportunity.contact.as_ref().unwrap(),
        Some(&account_id),
        &config,
    );
    assert_eq!(
        Value::Object(contact),
        json!({
            "FirstName": "Sue", "LastName": "Smith", "Email": "sue.smith@contoso.com",
            "Phone": "1234567890", "AccountId": "001D000000IqhSLIAZ"
        })
    );
}

#[test]
fn the_salesforce_update_body_leaves_name_account_and_flags_alone() {
    let opportunity = referral_to_opportunity(&response_referral(), &config());
    let body = salesforce_opportunity_body(&opportunity, None, None, BodyScope::Update, &config());
    let keys: Vec<&str> = body.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "Amount",
            "CurrencyIsoCode",
            "Description",
            "StageName",
            "Referral_Identifier__c",
            "Referral_Link__c"
        ]
    );
}

#[test]
fn referral_to_salesforce_and_back_preserves_every_mapped_field() {
    let config = config();
    let (account_id, opportunity_id) = salesforce_ids();
    let original = with_help(referral_to_opportunity(&response_referral(), &config));
    let mut row = salesforce_opportunity_body(
        &original,
        Some(&account_id),
        None,
        BodyScope::Create,
        &config,
    );
    row.insert("Id".into(), json!(opportunity_id.as_15()));
    row.insert(
        "attributes".into(),
        json!({ "type": "Opportunity", "url": "/services/data/v62.0/sobjects/Opportunity/x" }),
    );
    row.insert(
        "Account".into(),
        Value::Object(salesforce_account_body(&original.account, &config)),
    );
    let contact = salesforce_contact_body(original.contact.as_ref().unwrap(), None, &config);

    let read = opportunity_from_salesforce(
        &SalesforceRecord {
            contact: Some(&contact),
            ..SalesforceRecord::new(&row)
        },
        &config,
    );
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    assert_eq!(read.opportunity, original);
    assert_eq!(read.record.crm, CrmKind::Salesforce);
    assert_eq!(
        read.record.id,
        Some(CrmRecordId::Salesforce(opportunity_id))
    );
}

#[test]
fn salesforce_stages_use_the_configured_names_then_the_closed_flags() {
    let config = MappingConfig {
        stages: StageNames {
            won: "Deal Won".into(),
            ..StageNames::default()
        },
        ..MappingConfig::default()
    };
    let cases = [
        (
            json!({ "StageName": "prospecting" }),
            Some(OpportunityStage::OnHold),
        ),
        (
            json!({ "StageName": "Qualification" }),
            Some(OpportunityStage::Active),
        ),
        (
            json!({ "StageName": "Deal Won" }),
            Some(OpportunityStage::Won),
        ),
        (
            json!({ "StageName": "Closed Lost" }),
            Some(OpportunityStage::Lost(LostReason::Lost)),
        ),
        (
            json!({ "StageName": "Signed", "IsClosed": true, "IsWon": true }),
            Some(OpportunityStage::Won),
        ),
        (
            json!({ "StageName": "Dead", "IsClosed": "true", "IsWon": "false" }),
            Some(OpportunityStage::Lost(LostReason::Lost)),
        ),
        (
            json!({ "StageName": "Negotiation/Review", "IsClosed": false }),
            Some(OpportunityStage::Active),
        ),
        (json!({}), None),
    ];
    for (row, expected) in cases {
        let row = obj(row);
        let read = opportunity_from_salesforce(&SalesforceRecord::new(&row), &config);
        assert_eq!(read.opportunity.stage, expected, "{row:?}");
    }
    let lost = Opportunity {
        stage: Some(OpportunityStage::Lost(LostReason::Declined)),
        ..Opportunity::default()
    };
    let body = salesforce_opportunity_body(&lost, None, None, BodyScope::Update, &config);
    assert_eq!(body["StageName"], "Closed Lost");
}

#[test]
fn single_currency_salesforce_orgs_use_the_default_currency_and_write_none() {
    let mut config = MappingConfig {
        default_currency: Some(CurrencyCode::try_from("EUR").unwrap()),
        ..MappingConfig::default()
    };
    config.salesforce.multi_currency = false;
    // Outbound Message fields arrive as text.
    let row = obj(
        json!({ "Id": "006000000000001AAA", "Amount": "50000.0", "CloseDate": "2026-06-30", "CurrencyIsoCode": "USD" }),
    );
    let read = opportunity_from_salesforce(&SalesforceRecord::new(&row), &config);
    assert_eq!(
        read.opportunity.deal_value,
        Some(Money::new(
            dec("50000"),
            CurrencyCode::try_from("EUR").unwrap()
        ))
    );
    let body =
        salesforce_opportunity_body(&read.opportunity, None, None, BodyScope::Update, &config);
    assert!(!body.contains_key("CurrencyIsoCode"));
    assert_eq!(body["Amount"], json!(50000));
}

// --- model → Partner Center --------------------------------------------------------------------

fn crm_opportunity(opportunity: Opportunity) -> CrmOpportunity {
    let amount = opportunity.deal_value.map(|m| m.amount);
    let currency = opportunity.deal_value.map(|m| m.currency);
    CrmOpportunity {
        record: RecordRef {
            crm: CrmKind::Dataverse,
            entity: "opportunity".into(),
            id: Some(CrmRecordId::try_from(format!("dataverse:{OPPORTUNITY_ID}")).unwrap()),
            name: opportunity.name.clone(),
        },
        opportunity,
        rejected: Vec::new(),
        amount,
        currency,
        audit: None,
        version: None,
        taxonomy: MappingConfig::default().taxonomy.first_allowed(),
    }
}

fn partner_opportunity(help: bool) -> Opportunity {
    Opportunity {
        name: Some("Contoso ERP".into()),
        deal_value: Some(Money::new(dec("1234.56"), usd())),
        closing_date: NaiveDate::from_ymd_opt(2026, 6, 30),
        notes: Some("Supply chain".into()),
        stage: Some(OpportunityStage::Active),
        account: Account {
            name: Some("Contoso".into()),
            address_line1: Some("One Microsoft Way".into()),
            city: Some("Redmond".into()),
            state: Some("WA".into()),
            postal_code: Some("98052".into()),
            country: Some(CountryCode::try_from("US").unwrap()),
        },
        contact: Some(Contact {
            first_name: Some("Sue".into()),
            last_name: Some("Smith".into()),
            email: Some("sue.smith@contoso.com".into()),
            phone: None,
        }),
        solutions: vec![SolutionId::try_from("SOL-34104-EBB").unwrap()],
        help: help.then_some(AssistanceRequest::ProofOfConceptOrDemo),
        visible_to_microsoft: false,
        sync: true,
        referral_id: None,
        referral_link: None,
        microsoft_crm_id: None,
    }
}

#[test]
fn a_co_sell_opportunity_becomes_a_shared_referral_asking_for_help() {
    let validated = validate_new_referral(
        &crm_opportunity(partner_opportunity(true)),
        &MappingConfig::default(),
    )
    .unwrap();
    let referral = referral_create_body(&validated, &[]);
    assert_eq!(referral.status, Some(ReferralStatus::Active));
    assert_eq!(referral.substatus, Some(ReferralSubstatus::Accepted));
    assert_eq!(referral.referral_type, Some(ReferralType::Shared));
    assert_eq!(
        referral
            .invite_context
            .as_ref()
            .unwrap()
            .assistance_request_code,
        Some(AssistanceRequestCode::ProofOfConceptOrDemo)
    );
    let consent = referral.consent.as_ref().unwrap();
    assert_eq!(
        consent.consent_to_share_referral_with_microsoft_sellers,
        Some(true)
    );
    let solution = &referral
        .details
        .as_ref()
        .unwrap()
        .requirements
        .as_ref()
        .unwrap()
        .solutions[0];
    assert_eq!(solution.id.as_deref(), Some("SOL-34104-EBB"));
    assert_eq!(solution.solution_type, Some(SolutionType::Name));
    assert_eq!(
        referral.target[0].target_type,
        Some(TargetType::SolutionProfile)
    );
    assert_eq!(
        referral.external_reference_id.as_deref(),
        Some(OPPORTUNITY_ID)
    );

    let json = serde_json::to_value(&referral).unwrap();
    assert_eq!(json["details"]["dealValue"], json!(1234.56));
    assert_eq!(json["details"]["currency"], "USD");
    assert_eq!(json["details"]["closingDateTime"], "2026-06-30T00:00:00Z");
    assert_eq!(
        json["customerProfile"]["team"][0]["email"],
        "sue.smith@contoso.com"
    );
    assert_eq!(json["customerProfile"]["address"]["country"], "US");
    assert_eq!(json["consent"]["consentToToShareInfoWithOthers"], true);
    assert_eq!(json["type"], "Shared");
    // The taxonomy: top-level strings, spelled as configured.
    assert_eq!(json["solutionArea"], "AI Business Solutions");
    assert_eq!(json["solutionPlay"], "Copilot and Agents at Work");
    assert_eq!(json["partnerRole"], "Advisory");
    // Same shape as the published create request.
    let sample: Value = serde_json::from_str(CREATE_REQUEST).unwrap();
    for key in [
        "name",
        "type",
        "target",
        "customerProfile",
        "consent",
        "details",
    ] {
        assert!(
            sample.get(key).is_some() && json.get(key).is_some(),
            "{key}"
        );
    }
}

#[test]
fn without_help_the_referral_is_independent_and_private_unless_visible() {
    let validated = validate_new_referral(
        &crm_opportunity(partner_opportunity(false)),
        &MappingConfig::default(),
    )
    .unwrap();
    let referral = referral_create_body(&validated, &[]);
    assert_eq!(referral.referral_type, Some(ReferralType::Independent));
    assert!(referral.invite_context.is_none());
    assert_eq!(
        referral
            .consent
            .as_ref()
            .unwrap()
            .consent_to_share_referral_with_microsoft_sellers,
        Some(false)
    );
    let mut visible = partner_opportunity(false);
    visible.visible_to_microsoft = true;
    let validated =
        validate_new_referral(&crm_opportunity(visible), &MappingConfig::default()).unwrap();
    let referral = referral_create_body(&validated, &[]);
    assert_eq!(
        referral
            .consent
            .as_ref()
            .unwrap()
            .consent_to_share_referral_with_microsoft_sellers,
        Some(true)
    );
}

#[test]
fn a_created_referral_maps_back_to_the_same_opportunity() {
    let original = partner_opportunity(true);
    let validated = validate_new_referral(
        &crm_opportunity(original.clone()),
        &MappingConfig::default(),
    )
    .unwrap();
    let mut referral = referral_create_body(&validated, &[]);
    referral.id = Some("4111fffc-f9ee-4d53-bba6-569135228642".into());
    let back = referral_to_opportunity(
        &serde_json::from_value(serde_json::to_value(&referral).unwrap()).unwrap(),
        &MappingConfig::default(),
    );
    let expected = Opportunity {
        visible_to_microsoft: true,
        referral_id: Some(ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap()),
        ..original
    };
    assert_eq!(back, expected);
}

// --- CRM → Partner Center updates ----------------------------------------------------------------

fn current(state: (&str, &str)) -> Referral {
    let mut referral = response_referral();
    referral.status = Some(ReferralStatus::parse(state.0));
    referral.substatus = Some(ReferralSubstatus::parse(state.1));
    referral
}

fn desired_from(referral: &Referral) -> Opportunity {
    referral_to_opportunity(referral, &MappingConfig::default())
}

#[test]
fn an_unchanged_opportunity_produces_no_patch() {
    let referral = current(("Active", "Accepted"));
    assert_eq!(
        referral_patch(&referral, &desired_from(&referral), true).unwrap(),
        vec![]
    );
}

#[test]
fn only_changed_update_fields_are_replaced_in_order() {
    let referral = current(("Active", "Accepted"));
    let mut desired = desired_from(&referral);
    desired.name = Some("Renamed deal".into());
    desired.deal_value = Some(Money::new(
        dec("60000.50"),
        CurrencyCode::try_from("EUR").unwrap(),
    ));
    desired.closing_date = NaiveDate::from_ymd_opt(2026, 6, 30);
    desired.notes = Some("New notes".into());
    desired.account.city = Some("Seattle".into()); // not an update field
    let ops = referral_patch(&referral, &desired, false).unwrap();
    assert_eq!(
        ops,
        vec![
            PatchOp::replace("/details/currency", "EUR"),
            PatchOp::replace("/name", "Renamed deal"),
            PatchOp::replace("/details/dealValue", json!(60000.5)),
            PatchOp::replace("/details/closingDateTime", "2026-06-30T00:00:00Z"),
            PatchOp::replace("/details/notes", "New notes"),
        ]
    );
    let json = serde_json::to_value(&ops).unwrap();
    assert_eq!(
        json[0],
        json!({ "op": "replace", "path": "/details/currency", "value": "EUR" })
    );
}

#[test]
fn equal_values_in_other_spellings_are_not_changes() {
    let mut referral = current(("Active", "Accepted"));
    let details = referral.details.as_mut().unwrap();
    details.deal_value = Some(dec("50000.00"));
    details.currency = Some("usd".into());
    details.notes = Some(format!("  {}\r\n", details.notes.clone().unwrap()));
    details.closing_date_time = Some(crate::datetime::WireDateTime::parse(
        "2026-06-30T00:00:00.0000000",
    ));
    let mut desired = desired_from(&current(("Active", "Accepted")));
    desired.closing_date = NaiveDate::from_ymd_opt(2026, 6, 30);
    assert_eq!(referral_patch(&referral, &desired, true).unwrap(), vec![]);
}

#[test]
fn missing_crm_values_never_clear_partner_center() {
    let referral = current(("Active", "Accepted"));
    let desired = Opportunity {
        stage: Some(OpportunityStage::Active),
        ..Opportunity::default()
    };
    assert_eq!(referral_patch(&referral, &desired, true).unwrap(), vec![]);
}

#[test]
fn moving_out_of_on_hold_accepts_a_new_referral() {
    let referral = current(("New", "Pending"));
    let mut desired = desired_from(&referral);
    desired.stage = Some(OpportunityStage::Active);
    let ops = referral_patch(&referral, &desired, false).unwrap();
    assert_eq!(
        ops,
        vec![
            PatchOp::replace("/status", "Active"),
            PatchOp::replace("/substatus", "Accepted")
        ]
    );
}

#[test]
fn changes_made_while_on_hold_do_not_sync() {
    let referral = current(("New", "Received"));
    let mut desired = desired_from(&referral);
    desired.name = Some("Renamed while on hold".into());
    assert_eq!(desired.stage, Some(OpportunityStage::OnHold));
    assert_eq!(referral_patch(&referral, &desired, true).unwrap(), vec![]);
}

#[test]
fn won_and_lost_are_sent_only_for_an_explicit_close() {
    let referral = current(("Active", "Accepted"));
    let mut won = desired_from(&referral);
    won.stage = Some(OpportunityStage::Won);
    assert_eq!(referral_patch(&referral, &won, false).unwrap(), vec![]);
    assert_eq!(
        referral_patch(&referral, &won, true).unwrap(),
        vec![
            PatchOp::replace("/status", "Closed"),
            PatchOp::replace("/substatus", "Won")
        ]
    );

    let mut lost = desired_from(&referral);
    lost.stage = Some(OpportunityStage::Lost(LostReason::Declined));
    assert_eq!(
        referral_patch(&referral, &lost, true).unwrap(),
        vec![
            PatchOp::replace("/status", "Closed"),
            PatchOp::replace("/substatus", "Lost")
        ]
    );
    let new = current(("New", "Pending"));
    let mut declined = desired_from(&new);
    declined.stage = Some(OpportunityStage::Lost(LostReason::Declined));
    assert_eq!(
        referral_patch(&new, &declined, true).unwrap(),
        vec![
            PatchOp::replace("/status", "Closed"),
            PatchOp::replace("/substatus", "Declined")
        ]
    );
}

#[test]
fn terminal_referrals_get_no_operation_but_an_error_naming_the_fix() {
    for substatus in ["Won", "Lost", "Declined", "Expired"] {
        let referral = current(("Closed", substatus));
        // Nothing differs: nothing to do, no error.
        let same = desired_from(&referral);
        assert_eq!(
            referral_patch(&referral, &same, true).unwrap(),
            vec![],
            "{substatus}"
        );
        // Something differs: refused.
        let mut changed = same.clone();
        changed.name = Some("Renamed after close".into());
        let err = referral_patch(&referral, &changed, true).unwrap_err();
        assert!(
            matches!(err, TransitionError::Terminal { .. }),
            "{substatus}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("Closed/{substatus}")) && message.contains("/name"),
            "{message}"
        );
        assert!(message.contains("Fix:"), "{message}");
    }
    let won = current(("Closed", "Won"));
    let mut reopen = desired_from(&won);
    reopen.stage = Some(OpportunityStage::Lost(LostReason::Lost));
    assert!(matches!(
        referral_patch(&won, &reopen, true),
        Err(TransitionError::Terminal { .. })
    ));
}

#[test]
fn a_referral_without_status_cannot_be_closed() {
    let mut referral = response_referral();
    referral.status = None;
    referral.substatus = None;
    let mut desired = desired_from(&response_referral());
    desired.stage = Some(OpportunityStage::Won);
    assert!(matches!(
        referral_patch(&referral, &desired, true),
        Err(TransitionError::MissingState { .. })
    ));
}
