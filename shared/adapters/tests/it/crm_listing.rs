//! Reconciliation's listing of the CRM opportunities changed since a checkpoint, against the
//! sandbox: every page is bounded by the page size asked for (Salesforce's own batch is 2,000
//! records, more than one run handles), pages follow one another by `(modified, id)` from the
//! last record handled, with no query locator or next-page link kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use chrono::{NaiveDate, TimeZone, Utc};
use cosell_adapters::http::SalesforceJwtBearer;
use cosell_adapters::http::dataverse::{DataverseConfig, DataverseStore};
use cosell_adapters::http::salesforce::{SalesforceConfig, SalesforceStore};
use cosell_adapters::http::tokens::dataverse_scope;
use cosell_domain::ids::ReferralId;
use cosell_domain::mapping::{BodyScope, MappingConfig};
use cosell_domain::opportunity::{Account, Contact, Opportunity, OpportunityStage};
use cosell_domain::ports::{CrmStore, OpportunityQuery, OpportunityWrite};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, SALESFORCE_INTEGRATION_USERNAME,
};
use uuid::Uuid;

use common::Harness;

fn dataverse(h: &Harness) -> DataverseStore {
    let tokens = h.app_credentials(
        DATAVERSE_CLIENT_ID,
        DATAVERSE_CLIENT_SECRET,
        &dataverse_scope(h.base()),
    );
    DataverseStore::new(
        h.http.clone(),
        tokens,
        DataverseConfig::new(h.base(), MappingConfig::default()),
    )
    .unwrap()
}

fn salesforce(h: &Harness) -> SalesforceStore {
    let tokens = SalesforceJwtBearer::new(
        h.http.clone(),
        h.salesforce_config(SALESFORCE_INTEGRATION_USERNAME),
    )
    .unwrap();
    SalesforceStore::new(
        h.http.clone(),
        tokens,
        SalesforceConfig::new(MappingConfig::default()),
    )
    .unwrap()
}

/// The opportunity of `referral` with sync on, created or updated.
async fn write<C: CrmStore>(crm: &C, referral: ReferralId, name: &str, scope: BodyScope) {
    let opportunity = Opportunity {
        name: Some(name.to_owned()),
        closing_date: NaiveDate::from_ymd_opt(2027, 3, 31),
        stage: Some(OpportunityStage::OnHold),
        account: Account::default(),
        sync: true,
        referral_id: Some(referral),
        ..Opportunity::default()
    };
    crm.upsert_opportunity(&OpportunityWrite {
        referral_id: &referral,
        record: None,
        opportunity: &opportunity,
        account: None,
        contact: None,
        new_account: None,
        new_contact: None,
        audit: None,
        scope,
        if_match: None,
    })
    .await
    .unwrap();
}

/// `count` opportunities with sync on, written in the same second (ties on the timestamp).
async fn seed<C: CrmStore>(crm: &C, count: usize) -> Vec<ReferralId> {
    let mut referrals = Vec::new();
    for n in 0..count {
        let referral = ReferralId::from(Uuid::new_v4());
        write(crm, referral, &format!("Deal {n}"), BodyScope::Create).await;
        referrals.push(referral);
    }
    referrals
}

fn first_page(top: u32) -> OpportunityQuery {
    OpportunityQuery {
        modified_since: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
        after: None,
        top,
    }
}

/// Walks the listing page by page from the last record of each; after the first page, one
/// record already read is changed (it moves to the end). Returns the referral ids read, in
/// order, and the number of pages.
async fn walk<C: CrmStore>(h: &Harness, crm: &C, top: u32) -> (Vec<ReferralId>, usize) {
    let mut read = Vec::new();
    let mut query = first_page(top);
    let mut pages = 0;
    loop {
        let page = crm.list_opportunities(&query).await.unwrap();
        pages += 1;
        assert!(
            page.items.len() <= top as usize,
            "a page holds at most the page size: {}",
            page.items.len()
        );
        read.extend(
            page.items
                .iter()
                .map(|item| item.opportunity.opportunity.referral_id.unwrap()),
        );
        if pages == 1 {
            h.advance_clock(5).await;
            write(crm, read[0], "Deal changed", BodyScope::Update).await;
        }
        let Some(last) = page
            .items
            .last()
            .filter(|_| page.items.len() == top as usize)
        else {
            break;
        };
        query = OpportunityQuery {
            modified_since: last.modified_at.unwrap(),
            after: last.opportunity.record.id.clone(),
            top,
        };
        assert!(pages < 20, "the walk ends");
    }
    (read, pages)
}

fn assert_walked(seeded: &[ReferralId], read: &[ReferralId]) {
    for referral in seeded {
        assert!(read.contains(referral), "{referral} never read: {read:?}");
    }
    assert_eq!(
        read.iter().filter(|r| **r == read[0]).count(),
        2,
        "only the record changed during the walk is read twice: {read:?}"
    );
    assert_eq!(read.len(), seeded.len() + 1);
}

#[tokio::test]
async fn salesforce_listing_honours_the_page_size() {
    let h = Harness::start().await;
    let sf = salesforce(&h);
    seed(&sf, 5).await;
    let page = sf.list_opportunities(&first_page(2)).await.unwrap();
    assert_eq!(page.items.len(), 2, "a page holds at most the page size");
}

#[tokio::test]
async fn dataverse_listing_honours_the_page_size() {
    let h = Harness::start().await;
    let dv = dataverse(&h);
    seed(&dv, 5).await;
    let page = dv.list_opportunities(&first_page(2)).await.unwrap();
    assert_eq!(page.items.len(), 2, "a page holds at most the page size");
}

#[tokio::test]
async fn salesforce_keyset_pages_read_every_record_once_and_a_changed_one_again() {
    let h = Harness::start().await;
    let sf = salesforce(&h);
    let seeded = seed(&sf, 7).await;
    let (read, pages) = walk(&h, &sf, 2).await;
    assert_walked(&seeded, &read);
    assert_eq!(pages, 5, "4 full pages of 2 and an empty one");
    let queries: Vec<String> = h
        .requests("salesforce")
        .await
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .filter(|path| path.contains("/query"))
        .collect();
    assert!(
        queries
            .iter()
            .all(|path| path.split('?').next().unwrap().ends_with("/query")),
        "no query locator is requested: {queries:?}"
    );
}

#[tokio::test]
async fn dataverse_keyset_pages_read_every_record_once_and_a_changed_one_again() {
    let h = Harness::start().await;
    let dv = dataverse(&h);
    let seeded = seed(&dv, 7).await;
    let (read, pages) = walk(&h, &dv, 2).await;
    assert_walked(&seeded, &read);
    assert_eq!(pages, 5, "4 full pages of 2 and an empty one");
}

#[tokio::test]
async fn a_dataverse_page_carries_each_record_as_a_read_does_in_one_request() {
    let h = Harness::start().await;
    let dv = dataverse(&h);
    let account = dv
        .create_account(&Account {
            name: Some("Contoso".into()),
            postal_code: Some("98052".into()),
            ..Account::default()
        })
        .await
        .unwrap();
    let contact = dv
        .create_contact(
            &Contact {
                first_name: Some("Sue".into()),
                last_name: Some("Smith".into()),
                email: Some("sue@contoso.example".into()),
                phone: None,
            },
            Some(&account),
        )
        .await
        .unwrap();
    let referral = ReferralId::from(Uuid::new_v4());
    let opportunity = Opportunity {
        name: Some("Deal".into()),
        deal_value: Some(
            serde_json::from_value(serde_json::json!({"amount": "10", "currency": "GBP"})).unwrap(),
        ),
        sync: true,
        referral_id: Some(referral),
        ..Opportunity::default()
    };
    let id = dv
        .upsert_opportunity(&OpportunityWrite {
            referral_id: &referral,
            record: None,
            opportunity: &opportunity,
            account: Some(&account),
            contact: Some(&contact),
            new_account: None,
            new_contact: None,
            audit: None,
            scope: BodyScope::Create,
            if_match: None,
        })
        .await
        .unwrap()
        .id;
    seed(&dv, 1).await;

    h.delete("/_sandbox/requests").await;
    let page = dv.list_opportunities(&first_page(10)).await.unwrap();
    assert_eq!(
        h.requests("dataverse").await.len(),
        1,
        "one request per page"
    );
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|item| item.complete));
    let listed = page
        .items
        .iter()
        .find(|item| item.opportunity.record.id.as_ref() == Some(&id))
        .expect("listed");
    let read = dv.get_opportunity(&id).await.unwrap();
    assert_eq!(listed.opportunity.opportunity, read.opportunity);
    assert_eq!(
        listed.opportunity.opportunity.account.name.as_deref(),
        Some("Contoso")
    );
    assert_eq!(
        listed
            .opportunity
            .opportunity
            .contact
            .as_ref()
            .and_then(|c| c.email.as_deref()),
        Some("sue@contoso.example")
    );
    assert_eq!(
        listed
            .opportunity
            .opportunity
            .deal_value
            .map(|m| m.currency.as_str()),
        Some("GBP")
    );
}

#[tokio::test]
async fn a_salesforce_page_is_not_complete() {
    let h = Harness::start().await;
    let sf = salesforce(&h);
    seed(&sf, 1).await;
    let page = sf.list_opportunities(&first_page(10)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(
        !page.items[0].complete,
        "reconciliation reads a changed Salesforce record again"
    );
}
