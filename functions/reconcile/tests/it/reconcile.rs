//! Reconciliation end to end, against a spawned sandbox (Partner Center, Entra ID, Dataverse,
//! Salesforce) with in-memory stores: referrals created while Partner Center's webhooks are
//! switched off reach the CRM, and an opportunity created while the CRM's notifications are off
//! reaches Partner Center, through one reconcile run and the retry jobs it queued (run as the
//! retry worker runs them); a second run queues and writes nothing. Both CRMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use cosell_domain::in_memory::{InMemoryAuditLog, InMemoryIdempotencyStore};
use cosell_domain::ports::{CrmStore, Link, LinkStore};
use cosell_domain::reconcile::{Reason, Side};
use cosell_domain::sync::{Delivery, Deps, Outcome, run_retry_job};
use cosell_domain::{CrmRecordId, ReferralId, RetrySource};
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_REFRESH_TOKEN, SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USER_ID,
    SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::SALESFORCE_APP_KEY_PEM;
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use reconcile::{App, Config, Local, handler};
use serde_json::{Value, json};

const SOLUTION: &str = "SOL-34104-EBB";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crm {
    Dataverse,
    Salesforce,
}

fn environment(base: &str, crm: Crm) -> HashMap<&'static str, String> {
    let mut vars: Vec<(&'static str, &str)> = vec![
        ("PC_API_BASE_URL", base),
        ("ENTRA_AUTHORITY", base),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "memory"),
        // Small pages, so the run follows nextLinks.
        ("RECONCILE_PAGE_SIZE", "2"),
    ];
    match crm {
        Crm::Dataverse => vars.extend([
            ("CRM_KIND", "dataverse"),
            ("DATAVERSE_URL", base),
            ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
            ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
            ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
        ]),
        Crm::Salesforce => vars.extend([
            ("CRM_KIND", "salesforce"),
            ("SALESFORCE_LOGIN_URL", base),
            ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
            ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
            ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
            (
                "SALESFORCE_CONNECTOR_USER_ID",
                SALESFORCE_INTEGRATION_USER_ID,
            ),
        ]),
    }
    vars.into_iter()
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

struct Harness {
    sandbox: RunningSandbox,
    control: reqwest::Client,
    config: Config,
    app: App<Local>,
    idempotency: InMemoryIdempotencyStore,
    audit: InMemoryAuditLog,
}

impl Harness {
    async fn start(crm: Crm) -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let vars = environment(&sandbox.base_url, crm);
        let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        let app = App::<Local>::local(&config).unwrap();
        Self {
            sandbox,
            control: reqwest::Client::new(),
            idempotency: InMemoryIdempotencyStore::new(config.sync.idempotency_ttl),
            audit: InMemoryAuditLog::new(),
            config,
            app,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .control
            .post(format!("{}{path}", self.sandbox.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn put(&self, path: &str, body: Value) {
        let response = self
            .control
            .put(format!("{}{path}", self.sandbox.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "PUT {path}: {status} {text}");
    }

    /// An opportunity a seller created in the CRM (sync on, no referral yet); its record id.
    async fn seed_opportunity(&self, crm: Crm) -> CrmRecordId {
        match crm {
            Crm::Dataverse => {
                let (opportunity, account, contact) = (
                    "6d81597f-0000-4000-8000-0000000000e1",
                    "6d81597f-0000-4000-8000-0000000000a1",
                    "6d81597f-0000-4000-8000-0000000000c1",
                );
                self.put(
                    &format!("/_sandbox/dataverse/accounts/{account}"),
                    json!({"name": "Fourth Coffee", "address1_city": "Seattle",
                           "address1_country": "US"}),
                )
                .await;
                self.put(
                    &format!("/_sandbox/dataverse/contacts/{contact}"),
                    json!({"firstname": "Dana", "lastname": "Reyes",
                           "emailaddress1": "dana@fourthcoffee.example"}),
                )
                .await;
                self.put(
                    &format!("/_sandbox/dataverse/opportunities/{opportunity}"),
                    json!({
                        "name": "Fourth Coffee ERP", "estimatedvalue": 25000,
                        "estimatedclosedate": "2027-06-30",
                        "_parentaccountid_value": account, "_parentcontactid_value": contact,
                        "msft_microsoftpartnercenterreferralsync": true,
                        "msft_microsoftpartnercenterhelpneed": "Proof of concept or demo",
                        "msft_microsoftpartnercentersolutions": SOLUTION,
                        "msft_solutionarea": "Security", "msft_solutionplay": "Data Security",
                        "msft_partnerrole": "Implementation",
                    }),
                )
                .await;
                CrmRecordId::try_from(format!("dataverse:{opportunity}")).unwrap()
            }
            Crm::Salesforce => {
                let (account, opportunity) = ("001000000000001", "006000000000001");
                self.put(
                    &format!("/_sandbox/salesforce/Account/{account}"),
                    json!({"Name": "Fourth Coffee", "BillingCity": "Seattle",
                           "BillingCountry": "US"}),
                )
                .await;
                self.put(
                    &format!("/_sandbox/salesforce/Opportunity/{opportunity}"),
                    json!({
                        "Name": "Fourth Coffee ERP", "StageName": "Prospecting",
                        "CloseDate": "2027-06-30", "Amount": 25000, "CurrencyIsoCode": "USD",
                        "AccountId": account, "Sync_with_Partner_Center__c": true,
                        "Microsoft_Solutions__c": SOLUTION,
                        "Solution_Area__c": "Security", "Solution_Play__c": "Data Security",
                        "Partner_Role__c": "Implementation",
                    }),
                )
                .await;
                CrmRecordId::try_from(format!("salesforce:{opportunity}")).unwrap()
            }
        }
    }

    /// The connector's requests to `service` so far: `METHOD path?query`, as received.
    async fn calls(&self, service: &str) -> Vec<String> {
        let log: Value = self
            .control
            .get(format!(
                "{}/_sandbox/requests?service={service}",
                self.sandbox.base_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        log["requests"]
            .as_array()
            .unwrap()
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

    /// A seller's save of a column the sync does not map (the probability), read raw and
    /// written back through the control API.
    async fn seller_touch(&self, crm: Crm, record: &CrmRecordId) {
        let column = match crm {
            Crm::Dataverse => "closeprobability",
            Crm::Salesforce => "Probability",
        };
        self.seller_sets(crm, record, column, json!(40)).await;
    }

    /// The link of `record`.
    fn link_of(&self, record: &CrmRecordId) -> Link {
        self.app
            .links
            .links()
            .into_iter()
            .find(|link| link.crm == *record)
            .unwrap()
    }

    /// A seller's save of `column` (`null` clears it).
    async fn seller_sets(&self, crm: Crm, record: &CrmRecordId, column: &str, value: Value) {
        let path = match crm {
            Crm::Dataverse => format!("/_sandbox/dataverse/opportunities/{}", record.native()),
            Crm::Salesforce => format!("/_sandbox/salesforce/Opportunity/{}", record.native()),
        };
        let mut row: Value = self
            .control
            .get(format!("{}{path}", self.sandbox.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let system = match crm {
            Crm::Dataverse => ["modifiedon", "_modifiedby_value", ""],
            Crm::Salesforce => ["LastModifiedDate", "LastModifiedById", "SystemModstamp"],
        };
        let fields = row.as_object_mut().unwrap();
        for name in system {
            fields.remove(name);
        }
        fields.insert(column.to_owned(), value);
        self.put(&path, row).await;
    }

    /// Writes (anything but GET) the sandbox received from the connector so far.
    async fn writes(&self) -> usize {
        let log: Value = self
            .control
            .get(format!("{}/_sandbox/requests", self.sandbox.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        log["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["method"] != "GET" && r["service"] != "entra")
            .filter(|r| r["service"] != "salesforce-auth")
            .count()
    }

    /// Run every queued job as the retry worker would.
    async fn run_jobs(&self, now: DateTime<Utc>) -> Vec<Outcome> {
        let settings = self.app.settings.clone();
        let deps: Deps<'_, cosell_runtime::Local> = Deps {
            partner_center: &self.app.partner_center,
            crm: &self.app.crm,
            idempotency: &self.idempotency,
            retry_queue: &self.app.retry_queue,
            audit: &self.audit,
            links: &self.app.links,
            mapping: &self.config.sync.mapping,
            settings: &settings,
        };
        let meta = Delivery {
            correlation_id: Some("reconcile-test".into()),
            deadline: now + TimeDelta::seconds(60),
            now,
        };
        let mut outcomes = Vec::new();
        for (job, _delay) in self.app.retry_queue.take_all() {
            let handled = run_retry_job(&deps, &job, &meta).await.unwrap();
            outcomes.push(handled.outcome);
        }
        outcomes
    }
}

async fn missed_changes_sync_through_one_run(crm: Crm) {
    let h = Harness::start(crm).await;
    for service in ["partner-center", "dataverse", "salesforce"] {
        h.post(
            "/_sandbox/webhooks",
            json!({"service": service, "enabled": false}),
        )
        .await;
    }
    let mut created = Vec::new();
    for _ in 0..3 {
        let referral = h
            .post(
                "/_sandbox/partner-center/referrals/microsoft-initiated",
                json!({}),
            )
            .await;
        created.push(ReferralId::try_from(referral["id"].as_str().unwrap()).unwrap());
    }
    // And a seller's new opportunity whose notification never arrived.
    let opportunity = h.seed_opportunity(crm).await;
    let now = Utc::now();

    // Dry run: lists, queues and saves nothing.
    let dry = cosell_domain::reconcile::reconcile(
        h.app.deps(),
        &h.app.settings,
        &h.app.reconcile,
        &cosell_domain::reconcile::ReconcileRun {
            now,
            since: None,
            dry_run: true,
            deadline: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.planned.len(), 4, "{dry:?}");
    assert!(h.app.retry_queue.jobs().is_empty());
    assert_eq!(h.app.checkpoints.checkpoint(), None);

    // The run queues one job per referral (following the pages of 2) and one for the
    // opportunity.
    let first = handler::run(&h.app, now).await.unwrap();
    assert!(!first.failed(), "{first:?}");
    assert!(first.referrals.finished && first.opportunities.finished);
    assert_eq!(first.referrals.pages, 2, "3 referrals in pages of 2");
    let mut planned: Vec<ReferralId> = first
        .planned
        .iter()
        .filter(|p| p.side == Side::PartnerCenter)
        .map(|p| {
            assert_eq!(p.reason, Reason::ReferralNotLinked);
            p.referral_id.unwrap()
        })
        .collect();
    planned.sort();
    let mut expected = created.clone();
    expected.sort();
    assert_eq!(planned, expected);
    let from_crm: Vec<_> = first
        .planned
        .iter()
        .filter(|p| p.side == Side::Crm)
        .collect();
    assert_eq!(from_crm.len(), 1, "{:?}", first.planned);
    assert_eq!(from_crm[0].crm.as_ref(), Some(&opportunity));
    assert_eq!(from_crm[0].reason, Reason::OpportunityNotLinked);
    let jobs = h.app.retry_queue.jobs();
    assert_eq!(jobs.len(), 4);
    let crm_source = match crm {
        Crm::Dataverse => RetrySource::Dataverse,
        Crm::Salesforce => RetrySource::Salesforce,
    };
    assert_eq!(
        jobs.iter()
            .filter(|(job, _)| job.source == RetrySource::PartnerCenter)
            .count(),
        3
    );
    assert_eq!(
        jobs.iter()
            .filter(|(job, _)| job.source == crm_source)
            .count(),
        1
    );
    let checkpoint = h.app.checkpoints.checkpoint().unwrap();
    assert_eq!(checkpoint.last_enqueued, 4);
    assert!(checkpoint.referrals.since.is_some() && checkpoint.referrals.after.is_none());
    assert!(checkpoint.opportunities.since.is_some());
    assert!(first.calls >= 3, "list pages are counted: {}", first.calls);
    assert_eq!(
        h.app.budget.count(now.date_naive()),
        i64::try_from(dry.calls + first.calls).unwrap(),
        "both runs' calls are counted"
    );

    // The worker runs them: every referral gets its opportunity, the opportunity its referral.
    let outcomes = h.run_jobs(now).await;
    assert_eq!(outcomes.len(), 4);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Created { .. })),
        "{outcomes:?}"
    );
    for id in &created {
        let found = h.app.crm.find_opportunity_by_referral(id).await.unwrap();
        assert!(found.is_some(), "{id} is in the {crm:?} CRM");
    }
    let linked = h.app.links.links();
    assert_eq!(linked.len(), 4);
    assert!(linked.iter().any(|link| link.crm == opportunity));

    // A second run: the write-backs, the new opportunities and the new referral are the
    // connector's own.
    let writes = h.writes().await;
    let later = now + TimeDelta::minutes(15);
    let second = handler::run(&h.app, later).await.unwrap();
    assert!(!second.failed(), "{second:?}");
    assert!(second.planned.is_empty(), "{:?}", second.planned);
    assert_eq!(second.referrals.in_sync, 4, "{:?}", second.referrals);
    assert_eq!(
        second.opportunities.in_sync, 4,
        "{:?}",
        second.opportunities
    );
    assert!(h.app.retry_queue.jobs().is_empty());
    assert_eq!(h.writes().await, writes, "the second run wrote nothing");
    assert_eq!(h.app.checkpoints.checkpoint().unwrap().last_enqueued, 0);

    // A seller saves a column the sync does not map: the record is compared with what was
    // synced and found in sync. A Dataverse page carries the account and contact, so nothing
    // is read again; a Salesforce record is read again with one query.
    h.seller_touch(crm, &opportunity).await;
    h.control
        .delete(format!("{}/_sandbox/requests", h.sandbox.base_url))
        .send()
        .await
        .unwrap();
    let third = handler::run(&h.app, later + TimeDelta::minutes(15))
        .await
        .unwrap();
    assert!(!third.failed(), "{third:?}");
    assert!(third.planned.is_empty(), "{:?}", third.planned);
    assert!(
        third.opportunities.in_sync >= 1,
        "the touched record was listed and compared: {:?}",
        third.opportunities
    );
    let (service, reads) = match crm {
        Crm::Dataverse => ("dataverse", 0),
        Crm::Salesforce => ("salesforce", 1),
    };
    let calls = h.calls(service).await;
    let native = opportunity.native();
    let reread: Vec<&String> = calls
        .iter()
        .filter(|call| call.contains(&native[..15]) && !call.contains("LastModifiedDate"))
        .filter(|call| !call.contains("%24filter") && !call.contains("$filter"))
        .collect();
    assert_eq!(
        reread.len(),
        reads,
        "reads of the touched record besides the listing: {calls:#?}"
    );

    // A create whose write-back never reached the record (found by the soak): the run that
    // created the referral saved its link and was killed before writing the referral id to the
    // record, and the delivery was given up. The link says synced and the record's last save
    // is older than the link; the record not naming its referral is what shows it.
    let link = h.link_of(&opportunity);
    let referral_field = match crm {
        Crm::Dataverse => "msft_microsoftpartnercenterreferralidentifier",
        Crm::Salesforce => "Referral_Identifier__c",
    };
    h.seller_sets(crm, &opportunity, referral_field, Value::Null)
        .await;
    h.app
        .links
        .put(&Link {
            updated_at: Utc::now() + TimeDelta::seconds(1),
            ..link.clone()
        })
        .await
        .unwrap();
    let fourth = handler::run(&h.app, later + TimeDelta::minutes(30))
        .await
        .unwrap();
    assert!(!fourth.failed(), "{fourth:?}");
    assert_eq!(fourth.planned.len(), 1, "{:?}", fourth.planned);
    assert_eq!(fourth.planned[0].reason, Reason::OpportunityNotWrittenBack);
    let outcomes = h.run_jobs(later + TimeDelta::minutes(30)).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let found = h
        .app
        .crm
        .get_opportunity(&opportunity)
        .await
        .unwrap()
        .opportunity
        .referral_id;
    assert_eq!(
        found,
        Some(link.referral_id),
        "written back by the retry: {outcomes:?}"
    );

    // A seller's save whose notification never came, followed by a write of the connector's
    // (a create's write-back, an Audit text): the connector wrote the record last, yet it holds
    // a change (found by the simulation, seed 77). A Dataverse page carries the whole record,
    // so the run compares its shared fields with what both sides agreed on and queues it; a
    // Salesforce page does not, and there the connector's write is trusted.
    let notes = match crm {
        Crm::Dataverse => "description",
        Crm::Salesforce => "Description",
    };
    // The link as the last sync stored it, before the seller's save (Dataverse stamps
    // `modifiedon` to the second: the save must not fall in the link's second).
    let link = h.link_of(&opportunity);
    h.app
        .links
        .put(&Link {
            updated_at: Utc::now() - TimeDelta::seconds(10),
            last_crm_modified: Some(Utc::now() - TimeDelta::seconds(10)),
            ..link.clone()
        })
        .await
        .unwrap();
    h.seller_sets(crm, &opportunity, notes, json!("Saved by the seller"))
        .await;
    h.app
        .crm
        .write_audit(&opportunity, "Written by the connector")
        .await
        .unwrap();
    let at = later + TimeDelta::minutes(45);
    // A backfill from before the save: the run reads it whatever the checkpoint's position
    // (the whole test runs within a second or two of `modifiedon`).
    let fifth = cosell_domain::reconcile::reconcile(
        h.app.deps(),
        &h.app.settings,
        &h.app.reconcile,
        &cosell_domain::reconcile::ReconcileRun {
            now: at,
            since: Some(Utc::now() - TimeDelta::minutes(5)),
            dry_run: false,
            deadline: None,
        },
    )
    .await
    .unwrap();
    assert!(!fifth.failed(), "{fifth:?}");
    match crm {
        Crm::Dataverse => {
            assert_eq!(fifth.planned.len(), 1, "{:?}", fifth.planned);
            assert_eq!(fifth.planned[0].reason, Reason::OpportunityChanged);
            let outcomes = h.run_jobs(at).await;
            assert_eq!(
                outcomes,
                [Outcome::Updated {
                    crm: opportunity.clone()
                }]
            );
            let referral: Value = h
                .control
                .get(format!(
                    "{}/_sandbox/partner-center/referrals/{}",
                    h.sandbox.base_url, link.referral_id
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(referral["details"]["notes"], "Saved by the seller");
        }
        Crm::Salesforce => assert!(fifth.planned.is_empty(), "{:?}", fifth.planned),
    }
}

#[tokio::test]
async fn missed_changes_sync_with_dataverse_through_one_run() {
    missed_changes_sync_through_one_run(Crm::Dataverse).await;
}

#[tokio::test]
async fn missed_changes_sync_with_salesforce_through_one_run() {
    missed_changes_sync_through_one_run(Crm::Salesforce).await;
}
