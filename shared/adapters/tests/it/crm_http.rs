//! The CRM adapters ([`DataverseStore`], [`SalesforceStore`], [`AnyCrm`]) against the sandbox
//! (`cosell_sandbox::spawn`), with tokens from the real flows: Entra client credentials for
//! Dataverse, the Salesforce JWT bearer grant for Salesforce. What landed where is read raw
//! through the sandbox's control API; request counts come from `/_sandbox/requests`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use chrono::NaiveDate;
use cosell_adapters::http::SalesforceJwtBearer;
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::dataverse::{DataverseConfig, DataverseStore};
use cosell_adapters::http::salesforce::{ApiUsage, SalesforceConfig, SalesforceStore};
use cosell_adapters::http::tokens::dataverse_scope;
use cosell_domain::budget::Metered;
use cosell_domain::ids::{CrmKind, CrmRecordId, DataverseId, ReferralId, SalesforceId, SolutionId};
use cosell_domain::mapping::{BodyScope, MappingConfig};
use cosell_domain::opportunity::{
    Account, AssistanceRequest, Contact, LostReason, Opportunity, OpportunityStage,
};
use cosell_domain::ports::{
    ApiService, CrmStore, FoundCustomer, OpportunityWrite, PortError, Service, ServiceCalls,
    Upserted,
};
use cosell_domain::values::{CountryCode, Money};
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, SALESFORCE_INTEGRATION_USERNAME,
};
use serde_json::{Value, json};
use uuid::Uuid;

use common::Harness;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

impl Harness {
    fn dataverse(&self) -> DataverseStore {
        let tokens = self.app_credentials(
            DATAVERSE_CLIENT_ID,
            DATAVERSE_CLIENT_SECRET,
            &dataverse_scope(self.base()),
        );
        DataverseStore::new(
            self.http.clone(),
            tokens,
            DataverseConfig::new(self.base(), MappingConfig::default()),
        )
        .unwrap()
    }

    fn salesforce(&self) -> SalesforceStore {
        let tokens = SalesforceJwtBearer::new(
            self.http.clone(),
            self.salesforce_config(SALESFORCE_INTEGRATION_USERNAME),
        )
        .unwrap();
        SalesforceStore::new(
            self.http.clone(),
            tokens,
            SalesforceConfig::new(MappingConfig::default()),
        )
        .unwrap()
    }

    /// `METHOD path` of each request of `service`, in order.
    async fn calls(&self, service: &str) -> Vec<String> {
        self.requests(service)
            .await
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    async fn statuses(&self, service: &str) -> Vec<u64> {
        self.requests(service)
            .await
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    }

    async fn clear_requests(&self) {
        self.delete("/_sandbox/requests").await;
    }

    async fn dataverse_row(&self, set: &str, id: &CrmRecordId) -> Value {
        self.get(&format!("/_sandbox/dataverse/{set}/{}", id.native()))
            .await
    }

    async fn dataverse_rows(&self, set: &str) -> Vec<Value> {
        self.get(&format!("/_sandbox/dataverse/{set}")).await["value"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn salesforce_record(&self, object: &str, id: &CrmRecordId) -> Value {
        self.get(&format!("/_sandbox/salesforce/{object}/{}", id.native()))
            .await
    }

    async fn salesforce_records(&self, object: &str) -> Vec<Value> {
        self.get(&format!("/_sandbox/salesforce/{object}")).await["records"]
            .as_array()
            .cloned()
            .unwrap()
    }

    /// Two Salesforce opportunities carrying `referral`.
    async fn seed_duplicate_referral(&self, referral: &ReferralId) {
        for id in ["006000000000011", "006000000000012"] {
            self.put(
                &format!("/_sandbox/salesforce/Opportunity/{id}"),
                json!({
                    "Name": "Duplicate",
                    "StageName": "Prospecting",
                    "CloseDate": "2027-06-30",
                    "Referral_Identifier__c": referral.to_string(),
                }),
            )
            .await;
        }
    }
}

/// The service and message of a [`PortError::Permanent`]; any other error fails the test.
fn permanent(err: &PortError) -> (&Service, &str) {
    match err {
        PortError::Permanent { service, message } => (service, message.as_str()),
        other => panic!("expected Permanent, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn new_referral_id() -> ReferralId {
    ReferralId::from(Uuid::new_v4())
}

fn money(amount: &str, currency: &str) -> Money {
    serde_json::from_value(json!({ "amount": amount, "currency": currency })).unwrap()
}

fn customer() -> Account {
    Account {
        name: Some("O'Neil's Bakery & Co".into()),
        address_line1: Some("Hauptstraße 1".into()),
        city: Some("Berlin".into()),
        state: Some("Berlin".into()),
        postal_code: Some("10115".into()),
        country: Some(CountryCode::try_from("DE").unwrap()),
    }
}

fn customer_contact() -> Contact {
    Contact {
        first_name: Some("Siobhan".into()),
        last_name: Some("O'Neil".into()),
        email: Some("siobhan.o'neil@bakery.example".into()),
        phone: Some("+49 30 1234567".into()),
    }
}

/// A new co-sell opportunity as the sync core would write it.
fn opportunity(referral: ReferralId) -> Opportunity {
    Opportunity {
        name: Some("Bakery ERP rollout".into()),
        deal_value: Some(money("50000.5", "EUR")),
        closing_date: NaiveDate::from_ymd_opt(2027, 3, 31),
        notes: Some("Customer wants a proof of concept first.".into()),
        stage: Some(OpportunityStage::OnHold),
        account: customer(),
        contact: Some(customer_contact()),
        solutions: vec![
            SolutionId::try_from("SOL-34104-EBB").unwrap(),
            SolutionId::try_from("Dynamics365forSales").unwrap(),
        ],
        help: Some(AssistanceRequest::ProofOfConceptOrDemo),
        visible_to_microsoft: true,
        sync: true,
        referral_id: Some(referral),
        referral_link: Some(format!(
            "https://partner.microsoft.com/referrals/{referral}"
        )),
        microsoft_crm_id: None,
    }
}

fn write<'a>(
    referral: &'a ReferralId,
    opportunity: &'a Opportunity,
    scope: BodyScope,
) -> OpportunityWrite<'a> {
    OpportunityWrite {
        referral_id: referral,
        record: None,
        opportunity,
        account: None,
        contact: None,
        new_account: None,
        new_contact: None,
        audit: None,
        scope,
        if_match: None,
    }
}

/// Upserts a new opportunity (create scope, no account, contact or audit); its record id.
async fn create_opportunity<C: CrmStore>(
    crm: &C,
    referral: &ReferralId,
    opportunity: &Opportunity,
) -> CrmRecordId {
    crm.upsert_opportunity(&write(referral, opportunity, BodyScope::Create))
        .await
        .unwrap()
        .id
}

/// Upserts `new` again with a grown deal (62000 EUR, "Scope grew.", active) in the update
/// scope: the same record as `first`, updated, not created.
async fn update_the_same_record<C: CrmStore>(
    crm: &C,
    referral: &ReferralId,
    new: &Opportunity,
    first: &Upserted,
) {
    let changed = Opportunity {
        deal_value: Some(money("62000", "EUR")),
        notes: Some("Scope grew.".into()),
        stage: Some(OpportunityStage::Active),
        ..new.clone()
    };
    let second = crm
        .upsert_opportunity(&write(referral, &changed, BodyScope::Update))
        .await
        .unwrap();
    assert_eq!(
        (&second.id, second.created),
        (&first.id, false),
        "the same record, updated"
    );
}

fn assert_transient(err: &PortError, service: Service) {
    assert!(
        matches!(err, PortError::Transient { service: s, .. } if *s == service),
        "expected a transient {service} error, got {err:?}"
    );
    assert!(err.is_retryable());
}

// ---------------------------------------------------------------------------------------------
// Dataverse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dataverse_upsert_creates_once_then_updates_the_same_record() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    let account = dv.create_account(&customer()).await.unwrap();
    let contact = dv
        .create_contact(&customer_contact(), Some(&account))
        .await
        .unwrap();
    let new = opportunity(referral);
    h.clear_requests().await;

    let first = dv
        .upsert_opportunity(&OpportunityWrite {
            account: Some(&account),
            contact: Some(&contact),
            audit: Some("2027-01-15T08:00:00Z Created from Partner Center"),
            ..write(&referral, &new, BodyScope::Create)
        })
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.id.kind(), CrmKind::Dataverse);
    let calls = h.calls("dataverse").await;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(
        calls[0].starts_with("GET /api/data/v9.2/transactioncurrencies?")
            && calls[0].contains("$filter=isocurrencycode%20eq%20%27EUR%27"),
        "{calls:#?}"
    );
    assert!(
        calls[1].starts_with(&format!(
            "PATCH /api/data/v9.2/opportunities(msft_microsoftpartnercenterreferralidentifier='{referral}')"
        )),
        "{calls:#?}"
    );

    // Mapped fields in their columns.
    let row = h.dataverse_row("opportunities", &first.id).await;
    assert_eq!(row["name"], "Bakery ERP rollout");
    assert_eq!(row["estimatedvalue"].as_f64(), Some(50000.5));
    assert_eq!(row["estimatedclosedate"], "2027-03-31");
    assert_eq!(
        row["description"],
        "Customer wants a proof of concept first."
    );
    assert_eq!(
        row["_transactioncurrencyid_value"],
        cosell_sandbox::dataverse::currency_id("EUR").unwrap()
    );
    assert_eq!(row["_parentaccountid_value"], account.native());
    assert_eq!(row["_customerid_value"], account.native());
    assert_eq!(row["_parentcontactid_value"], contact.native());
    assert_eq!(
        (row["statecode"].as_i64(), row["statuscode"].as_i64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        row["msft_microsoftpartnercenterreferralidentifier"],
        referral.to_string()
    );
    assert_eq!(row["msft_microsoftpartnercenterreferralsync"], true);
    assert_eq!(row["msft_microsoftpartnercenterreferralvisible"], true);
    assert_eq!(
        row["msft_microsoftpartnercenterhelpneed"],
        "Proof of concept or demo"
    );
    assert_eq!(
        row["msft_microsoftpartnercentersolutions"],
        "SOL-34104-EBB; Dynamics365forSales"
    );
    assert_eq!(
        row["msft_microsoftpartnercenterreferrallink"],
        format!("https://partner.microsoft.com/referrals/{referral}")
    );
    assert_eq!(
        row["msft_microsoftpartnercenterreferralsyncaudit"],
        "2027-01-15T08:00:00Z Created from Partner Center"
    );
    assert_eq!(
        row["_modifiedby_value"],
        cosell_sandbox::identities::DATAVERSE_APP_USER_ID
    );

    // The same referral again: an update of the same row, one request (currency cached).
    h.clear_requests().await;
    update_the_same_record(&dv, &referral, &new, &first).await;
    assert_eq!(h.calls("dataverse").await.len(), 1);
    let row = h.dataverse_row("opportunities", &first.id).await;
    assert_eq!(row["estimatedvalue"].as_f64(), Some(62000.0));
    assert_eq!(row["description"], "Scope grew.");
    assert_eq!(row["statuscode"].as_i64(), Some(1));
    assert_eq!(
        row["name"], "Bakery ERP rollout",
        "the update scope keeps the name"
    );
    assert_eq!(h.dataverse_rows("opportunities").await.len(), 1);
    assert!(h.requests("entra").await.is_empty(), "the token is cached");
}

#[tokio::test]
async fn dataverse_find_and_get_round_trip_through_the_mapping() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    assert!(
        dv.find_opportunity_by_referral(&referral)
            .await
            .unwrap()
            .is_none()
    );
    let account = dv.create_account(&customer()).await.unwrap();
    let contact = dv
        .create_contact(&customer_contact(), Some(&account))
        .await
        .unwrap();
    let written = opportunity(referral);
    let upserted = dv
        .upsert_opportunity(&OpportunityWrite {
            account: Some(&account),
            contact: Some(&contact),
            ..write(&referral, &written, BodyScope::Create)
        })
        .await
        .unwrap();

    h.clear_requests().await;
    let found = dv
        .find_opportunity_by_referral(&referral)
        .await
        .unwrap()
        .expect("found by its referral id");
    assert_eq!(found.record.id.as_ref(), Some(&upserted.id));
    assert_eq!(found.opportunity.referral_id, Some(referral));
    assert_eq!(found.opportunity.deal_value, written.deal_value);
    assert_eq!(
        h.calls("dataverse").await.len(),
        1,
        "one request, the currency expanded"
    );

    h.clear_requests().await;
    let read = dv.get_opportunity(&upserted.id).await.unwrap();
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    assert_eq!(read.opportunity, written);
    assert_eq!(read.record.id.as_ref(), Some(&upserted.id));
    assert_eq!(read.record.crm, CrmKind::Dataverse);
    assert_eq!(
        read.opportunity.account.name.as_deref(),
        Some("O'Neil's Bakery & Co")
    );
    assert_eq!(
        read.opportunity.account.postal_code.as_deref(),
        Some("10115")
    );
    let contact = read.opportunity.contact.as_ref().expect("the contact");
    assert_eq!(
        contact.email.as_deref(),
        Some("siobhan.o'neil@bakery.example")
    );
    assert_eq!(contact.first_name.as_deref(), Some("Siobhan"));
    assert_eq!(
        read.opportunity.deal_value.map(|m| m.currency.as_str()),
        Some("EUR")
    );
    let calls = h.calls("dataverse").await;
    assert_eq!(
        calls.len(),
        1,
        "one request carries the account, contact and currency (was 3: opportunity, account, \
         contact): {calls:#?}"
    );
    assert!(
        calls[0].starts_with(&format!(
            "GET /api/data/v9.2/opportunities({})?",
            upserted.id.native()
        )) && calls[0].contains("$expand="),
        "{calls:#?}"
    );

    // A fresh instance reads the currency from the same request (was a 4th request).
    let cold = h.dataverse();
    h.clear_requests().await;
    assert_eq!(
        cold.get_opportunity(&upserted.id)
            .await
            .unwrap()
            .opportunity,
        written
    );
    let calls = h.calls("dataverse").await;
    assert_eq!(calls.len(), 1, "{calls:#?}");

    // Without an account or contact the read is the same one request; they read as unset.
    let bare_referral = new_referral_id();
    let bare = Opportunity {
        account: Account::default(),
        contact: None,
        ..opportunity(bare_referral)
    };
    let bare_id = create_opportunity(&dv, &bare_referral, &bare).await;
    h.clear_requests().await;
    let read = dv.get_opportunity(&bare_id).await.unwrap();
    assert_eq!(read.opportunity.account, Account::default());
    assert_eq!(read.opportunity.contact, None);
    assert_eq!(h.calls("dataverse").await.len(), 1);

    let missing = CrmRecordId::Dataverse(DataverseId::from(Uuid::new_v4()));
    let err = dv.get_opportunity(&missing).await.unwrap_err();
    assert!(matches!(err, PortError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn dataverse_accounts_and_contacts_are_found_after_creation() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let account = customer();
    assert_eq!(
        dv.find_account("O'Neil's Bakery & Co", Some("10115"))
            .await
            .unwrap(),
        None
    );
    let id = dv.create_account(&account).await.unwrap();
    let row = h.dataverse_row("accounts", &id).await;
    assert_eq!(row["name"], "O'Neil's Bakery & Co");
    assert_eq!(row["address1_postalcode"], "10115");
    assert_eq!(row["address1_country"], "DE");
    assert_eq!(row["address1_line1"], "Hauptstraße 1");

    h.clear_requests().await;
    assert_eq!(
        dv.find_account("O'Neil's Bakery & Co", Some("10115"))
            .await
            .unwrap(),
        Some(id.clone())
    );
    assert_eq!(h.calls("dataverse").await.len(), 1);
    assert_eq!(
        dv.find_account("O'Neil's Bakery & Co", None).await.unwrap(),
        Some(id.clone())
    );
    assert_eq!(
        dv.find_account("O'Neil's Bakery & Co", Some("80331"))
            .await
            .unwrap(),
        None,
        "another postal code is another customer"
    );

    let email = "siobhan.o'neil@bakery.example";
    assert_eq!(dv.find_contact_by_email(email).await.unwrap(), None);
    let contact = dv
        .create_contact(&customer_contact(), Some(&id))
        .await
        .unwrap();
    assert_eq!(
        dv.find_contact_by_email(email).await.unwrap(),
        Some(contact.clone())
    );
    let row = h.dataverse_row("contacts", &contact).await;
    assert_eq!(row["emailaddress1"], email);
    assert_eq!(row["lastname"], "O'Neil");
    assert_eq!(row["_parentcustomerid_value"], id.native());
}

#[tokio::test]
async fn dataverse_write_audit_patches_only_the_audit_column_and_never_creates() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    let opportunity = opportunity(referral);
    let id = create_opportunity(&dv, &referral, &opportunity).await;
    h.clear_requests().await;
    dv.write_audit(
        &id,
        "2027-01-16T09:00:00Z Sync failed: Fix: add a solution.",
    )
    .await
    .unwrap();
    assert_eq!(
        h.calls("dataverse").await,
        [format!(
            "PATCH /api/data/v9.2/opportunities({})",
            id.native()
        )]
    );
    let row = h.dataverse_row("opportunities", &id).await;
    assert_eq!(
        row["msft_microsoftpartnercenterreferralsyncaudit"],
        "2027-01-16T09:00:00Z Sync failed: Fix: add a solution."
    );
    assert_eq!(row["name"], "Bakery ERP rollout");

    let missing = CrmRecordId::Dataverse(DataverseId::from(Uuid::new_v4()));
    let err = dv.write_audit(&missing, "x").await.unwrap_err();
    assert!(matches!(err, PortError::NotFound { .. }), "{err:?}");
    assert_eq!(h.dataverse_rows("opportunities").await.len(), 1);
}

#[tokio::test]
async fn dataverse_update_by_record_id_sets_the_referral_and_never_creates() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let seeded = Uuid::new_v4();
    h.put(
        &format!("/_sandbox/dataverse/opportunities/{seeded}"),
        json!({ "name": "Created by a seller", "estimatedclosedate": "2027-06-30" }),
    )
    .await;
    let record = CrmRecordId::Dataverse(DataverseId::from(seeded));
    let referral = new_referral_id();
    let values = opportunity(referral);
    h.clear_requests().await;
    let upserted = dv
        .upsert_opportunity(&OpportunityWrite {
            record: Some(&record),
            ..write(&referral, &values, BodyScope::Update)
        })
        .await
        .unwrap();
    assert_eq!((&upserted.id, upserted.created), (&record, false));
    let calls = h.calls("dataverse").await;
    assert_eq!(
        calls.last().unwrap(),
        &format!("PATCH /api/data/v9.2/opportunities({seeded})?$select=opportunityid")
    );
    // The answer's version is the row's version after the write, as a read reports it.
    let read = dv.get_opportunity(&record).await.unwrap();
    assert!(upserted.version.is_some());
    assert_eq!(upserted.version, read.version);
    let row = h.dataverse_row("opportunities", &record).await;
    assert_eq!(
        row["msft_microsoftpartnercenterreferralidentifier"],
        referral.to_string()
    );
    assert_eq!(row["name"], "Created by a seller");
    assert_eq!(row["estimatedvalue"].as_f64(), Some(50000.5));
    assert_eq!(
        dv.find_opportunity_by_referral(&referral)
            .await
            .unwrap()
            .and_then(|found| found.record.id),
        Some(record.clone())
    );

    // A record id that does not exist is NotFound, not a new row.
    let gone = CrmRecordId::Dataverse(DataverseId::from(Uuid::new_v4()));
    let other = new_referral_id();
    let err = dv
        .upsert_opportunity(&OpportunityWrite {
            record: Some(&gone),
            ..write(&other, &values, BodyScope::Update)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::NotFound { .. }), "{err:?}");
    assert_eq!(h.dataverse_rows("opportunities").await.len(), 1);

    let salesforce = CrmRecordId::try_from("salesforce:006000000000001").unwrap();
    let err = dv
        .upsert_opportunity(&OpportunityWrite {
            record: Some(&salesforce),
            ..write(&other, &values, BodyScope::Update)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
}

/// Dataverse refuses to close an opportunity by setting its state: the other columns are
/// written first, then `WinOpportunity` / `LoseOpportunity` closes it; two requests.
#[tokio::test]
async fn dataverse_closes_an_opportunity_through_its_win_and_lose_actions() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let metered = Metered::new(&dv);
    for (stage, state) in [
        (OpportunityStage::Won, (1, 3)),
        (OpportunityStage::Lost(LostReason::Declined), (2, 4)),
        (OpportunityStage::Lost(LostReason::Lost), (2, 5)),
    ] {
        let referral = new_referral_id();
        let values = opportunity(referral);
        let record = create_opportunity(&dv, &referral, &values).await;
        let closed = Opportunity {
            stage: Some(stage),
            notes: Some("Closed in Partner Center.".into()),
            ..values.clone()
        };
        h.clear_requests().await;
        let before = metered.made();
        let upserted = metered
            .upsert_opportunity(&OpportunityWrite {
                record: Some(&record),
                ..write(&referral, &closed, BodyScope::Update)
            })
            .await
            .unwrap();
        assert_eq!(upserted.id, record);
        assert_eq!(
            upserted.version, None,
            "the row is read before its next write"
        );
        let calls: Vec<String> = h
            .calls("dataverse")
            .await
            .into_iter()
            .map(|call| call.split('?').next().unwrap_or_default().to_owned())
            .collect();
        let action = if stage == OpportunityStage::Won {
            "POST /api/data/v9.2/WinOpportunity"
        } else {
            "POST /api/data/v9.2/LoseOpportunity"
        };
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls[0].starts_with("PATCH /api/data/v9.2/opportunities("),
            "{calls:?}"
        );
        assert_eq!(calls[1], action, "{calls:?}");
        assert_eq!(
            metered.made().total() - before.total(),
            2,
            "the update and the action, one request each"
        );
        let row = h.dataverse_row("opportunities", &record).await;
        assert_eq!(
            (row["statecode"].as_i64(), row["statuscode"].as_i64()),
            (Some(state.0), Some(state.1)),
            "{stage:?}"
        );
        assert_eq!(row["description"], "Closed in Partner Center.");
    }
}

#[tokio::test]
async fn dataverse_an_unknown_currency_is_permanent_with_the_fix_and_writes_nothing() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    let swedish = Opportunity {
        deal_value: Some(money("1000", "SEK")),
        ..opportunity(referral)
    };
    let err = dv
        .upsert_opportunity(&write(&referral, &swedish, BodyScope::Create))
        .await
        .unwrap_err();
    let (service, message) = permanent(&err);
    assert_eq!(*service, Service::Dataverse);
    assert!(
        message.contains("currency SEK is not set up in Dataverse"),
        "{message}"
    );
    assert!(
        message.contains("Settings → Business Management → Currencies"),
        "{message}"
    );
    assert!(!err.is_retryable());
    assert!(
        h.calls("dataverse")
            .await
            .iter()
            .all(|call| call.starts_with("GET ")),
        "nothing written"
    );
    assert!(h.dataverse_rows("opportunities").await.is_empty());
}

#[tokio::test]
async fn dataverse_a_503_is_transient_and_a_429_carries_its_retry_after() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    h.inject(json!({ "service": "dataverse", "status": 503, "count": 1 }))
        .await;
    let err = dv.find_account("Fabrikam", None).await.unwrap_err();
    assert_transient(&err, Service::Dataverse);
    assert_eq!(dv.find_account("Fabrikam", None).await.unwrap(), None);

    h.inject(json!({ "service": "dataverse", "status": 429, "count": 1, "retry_after": 37 }))
        .await;
    let err = dv
        .find_contact_by_email("someone@example.com")
        .await
        .unwrap_err();
    assert_transient(&err, Service::Dataverse);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(37)));
    assert!(err.to_string().contains("Rate limit is exceeded"), "{err}");
    assert_eq!(h.statuses("dataverse").await, [503, 200, 429]);
}

#[tokio::test]
async fn dataverse_a_removed_column_is_permanent_naming_the_column() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    let values = opportunity(referral);
    let id = create_opportunity(&dv, &referral, &values).await;
    h.delete("/_sandbox/dataverse/schema/opportunity/msft_microsoftpartnercenterhelpneed")
        .await;

    let other = new_referral_id();
    let values = opportunity(other);
    let err = dv
        .upsert_opportunity(&write(&other, &values, BodyScope::Create))
        .await
        .unwrap_err();
    let (_, message) = permanent(&err);
    assert!(
        message.contains("msft_microsoftpartnercenterhelpneed"),
        "{message}"
    );
    assert!(!err.is_retryable());

    let err = dv.get_opportunity(&id).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("msft_microsoftpartnercenterhelpneed"),
        "{err}"
    );
}

#[tokio::test]
async fn dataverse_an_expired_token_is_refreshed_transparently_exactly_once() {
    let h = Harness::start().await;
    let dv = h.dataverse();
    assert_eq!(dv.find_account("Fabrikam", None).await.unwrap(), None);
    assert_eq!(h.requests("entra").await.len(), 1);

    h.advance_clock(3700).await;
    let id = dv.create_account(&customer()).await.unwrap();
    assert_eq!(id.kind(), CrmKind::Dataverse);
    assert_eq!(h.requests("entra").await.len(), 2, "exactly one refresh");
    assert_eq!(h.statuses("dataverse").await, [200, 401, 201]);
}

// ---------------------------------------------------------------------------------------------
// Salesforce
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn salesforce_upsert_creates_once_then_updates_the_same_record() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    let account = sf.create_account(&customer()).await.unwrap();
    let new = opportunity(referral);
    h.clear_requests().await;

    let first = sf
        .upsert_opportunity(&OpportunityWrite {
            account: Some(&account),
            audit: Some("2027-01-15T08:00:00Z Created from Partner Center"),
            ..write(&referral, &new, BodyScope::Create)
        })
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.id.kind(), CrmKind::Salesforce);
    assert_eq!(
        h.calls("salesforce").await,
        [format!(
            "PATCH /services/data/v62.0/sobjects/Opportunity/Referral_Identifier__c/{referral}"
        )]
    );

    let record = h.salesforce_record("Opportunity", &first.id).await;
    assert_eq!(record["Name"], "Bakery ERP rollout");
    assert_eq!(record["Amount"].as_f64(), Some(50000.5));
    assert_eq!(record["CurrencyIsoCode"], "EUR");
    assert_eq!(record["CloseDate"], "2027-03-31");
    assert_eq!(
        record["Description"],
        "Customer wants a proof of concept first."
    );
    assert_eq!(record["StageName"], "Prospecting");
    assert_eq!(record["AccountId"], account.native());
    assert_eq!(record["Referral_Identifier__c"], referral.to_string());
    assert_eq!(record["Sync_with_Partner_Center__c"], true);
    assert_eq!(
        record["How_can_Microsoft_help__c"],
        "Proof of concept or demo"
    );
    assert_eq!(
        record["Microsoft_Solutions__c"],
        "SOL-34104-EBB; Dynamics365forSales"
    );
    assert_eq!(
        record["Referral_Link__c"],
        format!("https://partner.microsoft.com/referrals/{referral}")
    );
    assert_eq!(
        record["Audit__c"],
        "2027-01-15T08:00:00Z Created from Partner Center"
    );
    assert_eq!(
        record["LastModifiedById"],
        cosell_sandbox::identities::SALESFORCE_INTEGRATION_USER_ID
    );

    h.clear_requests().await;
    update_the_same_record(&sf, &referral, &new, &first).await;
    assert_eq!(h.calls("salesforce").await.len(), 1);
    let record = h.salesforce_record("Opportunity", &first.id).await;
    assert_eq!(record["Amount"].as_f64(), Some(62000.0));
    assert_eq!(record["StageName"], "Qualification");
    assert_eq!(record["Description"], "Scope grew.");
    assert_eq!(h.salesforce_records("Opportunity").await.len(), 1);
    assert!(
        h.requests("salesforce-auth").await.is_empty(),
        "the token is cached"
    );
}

#[tokio::test]
async fn salesforce_find_and_get_round_trip_through_the_mapping() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    assert!(
        sf.find_opportunity_by_referral(&referral)
            .await
            .unwrap()
            .is_none()
    );
    let account = sf.create_account(&customer()).await.unwrap();
    // Salesforce links contacts through OpportunityContactRole, which is not written: the
    // round trip covers everything else.
    let written = Opportunity {
        contact: None,
        ..opportunity(referral)
    };
    let upserted = sf
        .upsert_opportunity(&OpportunityWrite {
            account: Some(&account),
            ..write(&referral, &written, BodyScope::Create)
        })
        .await
        .unwrap();

    h.clear_requests().await;
    let found = sf
        .find_opportunity_by_referral(&referral)
        .await
        .unwrap()
        .expect("found by its referral id");
    assert_eq!(found.record.id.as_ref(), Some(&upserted.id));
    assert_eq!(found.opportunity.referral_id, Some(referral));
    assert_eq!(h.calls("salesforce").await.len(), 1);

    h.clear_requests().await;
    let read = sf.get_opportunity(&upserted.id).await.unwrap();
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    assert_eq!(read.opportunity, written);
    assert_eq!(read.record.crm, CrmKind::Salesforce);
    let calls = h.calls("salesforce").await;
    assert_eq!(
        calls.len(),
        1,
        "one SOQL query carries the account (was 2: the record, then its account): {calls:#?}"
    );
    assert!(
        calls[0].starts_with("GET /services/data/v62.0/query?q="),
        "{calls:#?}"
    );

    // A primary contact (set when the record is created, e.g. by a seller) comes in the same
    // query.
    let contact = sf
        .create_contact(&customer_contact(), Some(&account))
        .await
        .unwrap();
    let mut raw = h.salesforce_record("Opportunity", &upserted.id).await;
    raw["ContactId"] = json!(contact.native());
    h.put(
        &format!("/_sandbox/salesforce/Opportunity/{}", upserted.id.native()),
        raw,
    )
    .await;
    h.clear_requests().await;
    let read = sf.get_opportunity(&upserted.id).await.unwrap();
    assert_eq!(
        read.opportunity,
        Opportunity {
            contact: Some(customer_contact()),
            ..written.clone()
        }
    );
    assert_eq!(h.calls("salesforce").await.len(), 1);

    let missing = CrmRecordId::Salesforce(SalesforceId::try_from("006000000000077").unwrap());
    let err = sf.get_opportunity(&missing).await.unwrap_err();
    assert!(matches!(err, PortError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn salesforce_accounts_and_contacts_are_found_after_creation() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    assert_eq!(
        sf.find_account("O'Neil's Bakery & Co", Some("10115"))
            .await
            .unwrap(),
        None
    );
    let id = sf.create_account(&customer()).await.unwrap();
    let record = h.salesforce_record("Account", &id).await;
    assert_eq!(record["Name"], "O'Neil's Bakery & Co");
    assert_eq!(record["BillingPostalCode"], "10115");
    assert_eq!(record["BillingCountry"], "DE");

    h.clear_requests().await;
    assert_eq!(
        sf.find_account("O'Neil's Bakery & Co", Some("10115"))
            .await
            .unwrap(),
        Some(id.clone())
    );
    let calls = h.calls("salesforce").await;
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].starts_with("GET /services/data/v62.0/query?q="),
        "{calls:?}"
    );
    assert_eq!(
        sf.find_account("O'Neil's Bakery & Co", Some("80331"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        sf.find_account(r"Back\slash", None).await.unwrap(),
        None,
        "a backslash is escaped, not a syntax error"
    );

    let email = "siobhan.o'neil@bakery.example";
    assert_eq!(sf.find_contact_by_email(email).await.unwrap(), None);
    let contact = sf
        .create_contact(&customer_contact(), Some(&id))
        .await
        .unwrap();
    assert_eq!(
        sf.find_contact_by_email(email).await.unwrap(),
        Some(contact.clone())
    );
    let record = h.salesforce_record("Contact", &contact).await;
    assert_eq!(record["Email"], email);
    assert_eq!(record["AccountId"], id.native());
}

#[tokio::test]
async fn salesforce_write_audit_patches_the_audit_field() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    let values = opportunity(referral);
    let id = create_opportunity(&sf, &referral, &values).await;
    h.clear_requests().await;
    sf.write_audit(
        &id,
        "2027-01-16T09:00:00Z Sync failed: Fix: add a solution.",
    )
    .await
    .unwrap();
    assert_eq!(
        h.calls("salesforce").await,
        [format!(
            "PATCH /services/data/v62.0/sobjects/Opportunity/{}",
            id.native()
        )]
    );
    let record = h.salesforce_record("Opportunity", &id).await;
    assert_eq!(
        record["Audit__c"],
        "2027-01-16T09:00:00Z Sync failed: Fix: add a solution."
    );
}

#[tokio::test]
async fn salesforce_update_by_record_id_sets_the_referral_and_never_creates() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let seeded = SalesforceId::try_from("006000000000009").unwrap();
    h.put(
        &format!("/_sandbox/salesforce/Opportunity/{}", seeded.as_str()),
        json!({ "Name": "Created by a seller", "StageName": "Prospecting", "CloseDate": "2027-06-30" }),
    )
    .await;
    let record = CrmRecordId::Salesforce(seeded.clone());
    let referral = new_referral_id();
    let values = opportunity(referral);
    h.clear_requests().await;
    let upserted = sf
        .upsert_opportunity(&OpportunityWrite {
            record: Some(&record),
            ..write(&referral, &values, BodyScope::Update)
        })
        .await
        .unwrap();
    assert_eq!(
        upserted,
        Upserted {
            id: record.clone(),
            created: false,
            version: None,
        }
    );
    assert_eq!(
        h.calls("salesforce").await,
        [format!(
            "PATCH /services/data/v62.0/sobjects/Opportunity/{}",
            seeded.as_str()
        )]
    );
    let stored = h.salesforce_record("Opportunity", &record).await;
    assert_eq!(stored["Referral_Identifier__c"], referral.to_string());
    assert_eq!(stored["Name"], "Created by a seller");
    assert_eq!(stored["Amount"].as_f64(), Some(50000.5));
    assert_eq!(h.salesforce_records("Opportunity").await.len(), 1);

    let gone = CrmRecordId::Salesforce(SalesforceId::try_from("006000000000088").unwrap());
    let err = sf
        .upsert_opportunity(&OpportunityWrite {
            record: Some(&gone),
            ..write(&referral, &values, BodyScope::Update)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::NotFound { .. }), "{err:?}");
    assert_eq!(h.salesforce_records("Opportunity").await.len(), 1);
}

#[tokio::test]
async fn salesforce_a_503_and_the_daily_request_limit_are_transient() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    h.inject(json!({ "service": "salesforce", "status": 503, "count": 1 }))
        .await;
    let err = sf.find_account("Fabrikam", None).await.unwrap_err();
    assert_transient(&err, Service::Salesforce);
    assert_eq!(sf.find_account("Fabrikam", None).await.unwrap(), None);

    let usage = sf.api_usage().expect("Sforce-Limit-Info recorded");
    assert_eq!(usage.max, 100_000);
    assert!(usage.used >= 1, "{usage:?}");

    h.post(
        "/_sandbox/salesforce/limits",
        json!({ "daily": 50, "used": 50 }),
    )
    .await;
    let err = sf
        .find_contact_by_email("someone@example.com")
        .await
        .unwrap_err();
    assert_transient(&err, Service::Salesforce);
    assert!(err.retry_after().unwrap() >= Duration::from_secs(3600));
    assert!(err.to_string().contains("REQUEST_LIMIT_EXCEEDED"), "{err}");
    assert_eq!(h.statuses("salesforce").await, [503, 200, 403]);

    h.post(
        "/_sandbox/salesforce/limits",
        json!({ "daily": 50, "used": 3 }),
    )
    .await;
    sf.find_account("Fabrikam", None).await.unwrap();
    assert_eq!(sf.api_usage(), Some(ApiUsage { used: 4, max: 50 }));
}

#[tokio::test]
async fn salesforce_a_removed_field_is_permanent_naming_the_field() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    h.delete("/_sandbox/salesforce/schema/Opportunity/How_can_Microsoft_help__c")
        .await;
    let referral = new_referral_id();
    let values = opportunity(referral);
    let err = sf
        .upsert_opportunity(&write(&referral, &values, BodyScope::Create))
        .await
        .unwrap_err();
    let (service, message) = permanent(&err);
    assert_eq!(*service, Service::Salesforce);
    assert!(message.contains("How_can_Microsoft_help__c"), "{message}");
    assert!(h.salesforce_records("Opportunity").await.is_empty());

    h.delete("/_sandbox/salesforce/schema/Opportunity/Referral_Identifier__c")
        .await;
    let err = sf
        .find_opportunity_by_referral(&referral)
        .await
        .unwrap_err();
    let (_, message) = permanent(&err);
    assert!(message.contains("Referral_Identifier__c"), "{message}");
    assert!(message.contains("External ID"), "{message}");
}

#[tokio::test]
async fn salesforce_an_expired_session_is_refreshed_transparently_exactly_once() {
    let h = Harness::with_config(SandboxConfig {
        token_lifetime: Duration::from_secs(120),
        ..SandboxConfig::default()
    })
    .await;
    let sf = h.salesforce();
    assert_eq!(sf.find_account("Fabrikam", None).await.unwrap(), None);
    assert_eq!(h.requests("salesforce-auth").await.len(), 1);

    // Past the session's end by the sandbox clock, still within the JWT assertion's lifetime.
    h.advance_clock(130).await;
    let id = sf.create_account(&customer()).await.unwrap();
    assert_eq!(id.kind(), CrmKind::Salesforce);
    assert_eq!(
        h.requests("salesforce-auth").await.len(),
        2,
        "exactly one refresh"
    );
    assert_eq!(h.statuses("salesforce").await, [200, 401, 201]);
}

#[tokio::test]
async fn salesforce_duplicate_referral_ids_are_permanent() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    h.seed_duplicate_referral(&referral).await;
    let err = sf
        .find_opportunity_by_referral(&referral)
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("several"), "{err}");
    let values = opportunity(referral);
    let err = sf
        .upsert_opportunity(&write(&referral, &values, BodyScope::Update))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("several"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// AnyCrm
// ---------------------------------------------------------------------------------------------

/// A handler written once against the port.
async fn customer_id<C: CrmStore>(crm: &C) -> CrmRecordId {
    match crm.find_account("Fabrikam", Some("98052")).await.unwrap() {
        Some(id) => id,
        None => crm
            .create_account(&Account {
                name: Some("Fabrikam".into()),
                postal_code: Some("98052".into()),
                ..Account::default()
            })
            .await
            .unwrap(),
    }
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::test]
async fn any_crm_dispatches_to_the_configured_store() {
    let h = Harness::start().await;
    let dataverse = AnyCrm::from(h.dataverse());
    let salesforce = AnyCrm::from(h.salesforce());
    // Handler futures over the port stay `Send` (what `lambda_http::run` needs).
    let referral = new_referral_id();
    assert_send(dataverse.find_opportunity_by_referral(&referral))
        .await
        .unwrap();
    assert_send(customer_id(&salesforce)).await;
    assert_eq!(dataverse.kind(), CrmKind::Dataverse);
    assert_eq!(salesforce.kind(), CrmKind::Salesforce);

    let dv = customer_id(&dataverse).await;
    assert_eq!(customer_id(&dataverse).await, dv);
    assert_eq!(dv.kind(), CrmKind::Dataverse);
    let sf = customer_id(&salesforce).await;
    assert_eq!(customer_id(&salesforce).await, sf);
    assert_eq!(sf.kind(), CrmKind::Salesforce);

    let values = opportunity(referral);
    for crm in [&dataverse, &salesforce] {
        let upserted = crm
            .upsert_opportunity(&write(&referral, &values, BodyScope::Create))
            .await
            .unwrap();
        assert!(upserted.created);
        crm.write_audit(&upserted.id, "audited").await.unwrap();
        let found = crm
            .find_opportunity_by_referral(&referral)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.record.id, Some(upserted.id.clone()));
        assert_eq!(found.record.crm, crm.kind());
    }
}

// ---------------------------------------------------------------------------------------------
// A new opportunity's customer: one find, one write
// ---------------------------------------------------------------------------------------------

/// The write of a new opportunity with what `find_customer` did not find.
fn new_opportunity_write<'a>(
    referral: &'a ReferralId,
    values: &'a Opportunity,
    found: &'a FoundCustomer,
) -> OpportunityWrite<'a> {
    OpportunityWrite {
        account: found.account.as_ref(),
        contact: found.contact.as_ref(),
        new_account: found.account.is_none().then_some(&values.account),
        new_contact: values.contact.as_ref().filter(|_| found.contact.is_none()),
        audit: Some("2027-01-15T08:00:00Z Created from Partner Center"),
        ..write(referral, values, BodyScope::Create)
    }
}

/// `find_customer` with the opportunity's account and contact.
async fn find_customer_of<C: CrmStore>(crm: &C, values: &Opportunity) -> FoundCustomer {
    let account = &values.account;
    crm.find_customer(
        account
            .name
            .as_deref()
            .map(|name| (name, account.postal_code.as_deref())),
        values.contact.as_ref().and_then(|c| c.email.as_deref()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn salesforce_a_new_referral_costs_one_composite_find_and_one_composite_write() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    let values = opportunity(referral);
    sf.find_account("warm-up", None).await.unwrap();
    let usage_before = sf.api_usage().unwrap();
    h.clear_requests().await;
    let metered = Metered::new(&sf);

    let found = find_customer_of(&metered, &values).await;
    assert_eq!(found, FoundCustomer::default());
    let upserted = metered
        .upsert_opportunity(&new_opportunity_write(&referral, &values, &found))
        .await
        .unwrap();

    assert!(upserted.created);
    assert_eq!(
        h.calls("salesforce").await,
        [
            "POST /services/data/v62.0/composite",
            "POST /services/data/v62.0/composite"
        ],
        "was up to 5 requests: 2 queries, 2 creates, 1 upsert"
    );
    assert_eq!(
        metered.made(),
        ServiceCalls::of(ApiService::Salesforce, 2),
        "a Composite request is one API call"
    );
    assert_eq!(sf.api_usage().unwrap().used, usage_before.used + 2);
    let accounts = h.salesforce_records("Account").await;
    let contacts = h.salesforce_records("Contact").await;
    assert_eq!((accounts.len(), contacts.len()), (1, 1));
    let account = accounts[0]["Id"].as_str().unwrap();
    assert_eq!(accounts[0]["Name"], "O'Neil's Bakery & Co");
    assert_eq!(contacts[0]["AccountId"], account);
    assert_eq!(contacts[0]["Email"], "siobhan.o'neil@bakery.example");
    let record = h.salesforce_record("Opportunity", &upserted.id).await;
    assert_eq!(record["AccountId"], account);
    assert_eq!(record["ContactId"], contacts[0]["Id"]);
    assert_eq!(record["Referral_Identifier__c"], referral.to_string());
    let read = sf.get_opportunity(&upserted.id).await.unwrap();
    assert_eq!(read.opportunity.account, values.account);

    // Found again as one request: nothing left to create.
    h.clear_requests().await;
    let again = find_customer_of(&metered, &values).await;
    assert_eq!(
        again.account.as_ref().map(CrmRecordId::native),
        Some(account.to_owned())
    );
    assert!(again.contact.is_some());
    assert_eq!(h.calls("salesforce").await.len(), 1);
}

#[tokio::test]
async fn salesforce_an_existing_account_is_matched_by_the_composite_find_not_duplicated() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let existing = sf.create_account(&customer()).await.unwrap();
    let referral = new_referral_id();
    let values = opportunity(referral);
    h.clear_requests().await;

    let found = find_customer_of(&sf, &values).await;
    assert_eq!(found.account.as_ref(), Some(&existing));
    assert_eq!(found.contact, None);
    let upserted = sf
        .upsert_opportunity(&new_opportunity_write(&referral, &values, &found))
        .await
        .unwrap();

    assert_eq!(h.calls("salesforce").await.len(), 2);
    let accounts = h.salesforce_records("Account").await;
    assert_eq!(accounts.len(), 1, "no duplicate account");
    let contacts = h.salesforce_records("Contact").await;
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["AccountId"], existing.native());
    let record = h.salesforce_record("Opportunity", &upserted.id).await;
    assert_eq!(record["AccountId"], existing.native());
    assert_eq!(record["ContactId"], contacts[0]["Id"]);
}

#[tokio::test]
async fn salesforce_a_failed_composite_write_creates_nothing_and_keeps_the_plain_errors() {
    let h = Harness::start().await;
    let sf = h.salesforce();
    let referral = new_referral_id();
    let values = opportunity(referral);
    let nothing = FoundCustomer::default();
    let write = new_opportunity_write(&referral, &values, &nothing);

    // A field the opportunity needs is missing: permanent, naming it; all or none.
    h.delete("/_sandbox/salesforce/schema/Opportunity/How_can_Microsoft_help__c")
        .await;
    let err = sf.upsert_opportunity(&write).await.unwrap_err();
    let (service, message) = permanent(&err);
    assert_eq!(*service, Service::Salesforce);
    assert!(message.contains("How_can_Microsoft_help__c"), "{message}");
    assert!(
        h.salesforce_records("Account").await.is_empty(),
        "rolled back"
    );
    assert!(
        h.salesforce_records("Contact").await.is_empty(),
        "rolled back"
    );
    assert!(h.salesforce_records("Opportunity").await.is_empty());

    // The External ID field missing: the configuration error with its fix.
    let h = Harness::start().await;
    let sf = h.salesforce();
    h.delete("/_sandbox/salesforce/schema/Opportunity/Referral_Identifier__c")
        .await;
    let err = sf.upsert_opportunity(&write).await.unwrap_err();
    let (_, message) = permanent(&err);
    assert!(message.contains("Referral_Identifier__c"), "{message}");
    assert!(message.contains("External ID"), "{message}");
    assert!(
        h.salesforce_records("Account").await.is_empty(),
        "rolled back"
    );

    // Two opportunities with the referral (300 on the upsert): the duplicate-referral error.
    let h = Harness::start().await;
    let sf = h.salesforce();
    h.seed_duplicate_referral(&referral).await;
    let err = sf.upsert_opportunity(&write).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("several"), "{err}");
    assert!(
        h.salesforce_records("Account").await.is_empty(),
        "rolled back"
    );
}

#[tokio::test]
async fn dataverse_creates_a_new_account_with_its_contact_in_one_deep_insert_then_the_opportunity()
{
    let h = Harness::start().await;
    let dv = h.dataverse();
    let referral = new_referral_id();
    let values = opportunity(referral);
    let metered = Metered::new(&dv);

    let found = find_customer_of(&metered, &values).await;
    assert_eq!(found, FoundCustomer::default());
    assert_eq!(metered.made(), ServiceCalls::of(ApiService::Dataverse, 2));
    h.clear_requests().await;
    let upserted = metered
        .upsert_opportunity(&new_opportunity_write(&referral, &values, &found))
        .await
        .unwrap();

    assert!(upserted.created);
    assert_eq!(
        metered.made(),
        ServiceCalls::of(ApiService::Dataverse, 4),
        "the deep insert and the upsert, one request each"
    );
    let writes: Vec<String> = h
        .calls("dataverse")
        .await
        .into_iter()
        .filter(|call| !call.contains("transactioncurrencies"))
        .map(|call| call.split('?').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes[0].starts_with("POST ") && writes[0].ends_with("/accounts"),
        "{writes:?}"
    );
    assert!(writes[1].starts_with("PATCH "), "{writes:?}");
    let accounts = h.dataverse_rows("accounts").await;
    let contacts = h.dataverse_rows("contacts").await;
    assert_eq!((accounts.len(), contacts.len()), (1, 1));
    assert_eq!(
        contacts[0]["_parentcustomerid_value"], accounts[0]["accountid"],
        "the nesting makes the account the contact's company"
    );
    let read = dv.get_opportunity(&upserted.id).await.unwrap();
    assert_eq!(read.opportunity.account, values.account);
    assert_eq!(read.opportunity.contact, values.contact);
    let again = find_customer_of(&dv, &values).await;
    assert!(again.account.is_some() && again.contact.is_some());

    // Unmetered, a new account alone: its own request, then the upsert.
    let other = new_referral_id();
    let values = Opportunity {
        account: Account {
            name: Some("Fabrikam".into()),
            ..Account::default()
        },
        contact: None,
        ..opportunity(other)
    };
    let nothing = FoundCustomer::default();
    let upserted = dv
        .upsert_opportunity(&new_opportunity_write(&other, &values, &nothing))
        .await
        .unwrap();
    assert_eq!(h.dataverse_rows("accounts").await.len(), 2);
    let read = dv.get_opportunity(&upserted.id).await.unwrap();
    assert_eq!(read.opportunity.account.name.as_deref(), Some("Fabrikam"));

    // A deep insert Dataverse refuses creates neither row.
    let other = new_referral_id();
    let refused = opportunity(other);
    h.delete("/_sandbox/dataverse/schema/contact/telephone1")
        .await;
    let err = dv
        .upsert_opportunity(&new_opportunity_write(
            &other,
            &refused,
            &FoundCustomer::default(),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    assert_eq!(h.dataverse_rows("accounts").await.len(), 2, "rolled back");
    assert_eq!(h.dataverse_rows("contacts").await.len(), 1, "rolled back");
}
