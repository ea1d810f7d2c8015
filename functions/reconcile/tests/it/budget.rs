//! The daily API budget end to end: a burst of referral webhooks against a budget of 20 calls
//! (counter in DynamoDB on moto, Partner Center and Dataverse in a spawned sandbox, other
//! stores in memory). Webhook syncs run while the budget lasts; the rest are queued, and over
//! the following (test-clock) days the deferred jobs complete within each day's budget: every
//! referral ends up as exactly one opportunity.
//!
//! Needs `COSELL_MOTO_ENDPOINT` (`scripts/test.sh` starts moto).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Days, TimeDelta, TimeZone, Utc};
use cosell_adapters::aws::DynamoApiBudget;
use cosell_adapters::provision_table;
use cosell_domain::budget::{
    Budget, handle_partner_center_event_within_budget, run_retry_job_within_budget,
};
use cosell_domain::in_memory::{
    InMemoryAuditLog, InMemoryIdempotencyStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use cosell_domain::ports::ApiBudget;
use cosell_domain::sync::{Delivery, Deps, Outcome};
use cosell_domain::{EventName, ReferralId, WebhookEvent, WireDateTime};
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_REFRESH_TOKEN, TENANT_ID,
};
use reconcile::Config;
use serde_json::{Map, Value, json};

const REFERRALS: usize = 50;
const DAILY_BUDGET: u64 = 20;

async fn dynamo_budget() -> DynamoApiBudget {
    let client = cosell_testkit::moto::clients().await.dynamodb;
    let table = cosell_testkit::unique("cosell-it-budget-burst");
    provision_table(&client, &table).await.unwrap();
    DynamoApiBudget::new(client, table)
}

fn delivery(now: DateTime<Utc>) -> Delivery {
    Delivery {
        correlation_id: None,
        deadline: now + TimeDelta::seconds(60),
        now,
    }
}

#[tokio::test]
async fn a_burst_beyond_the_budget_is_deferred_to_later_days_and_nothing_is_lost() {
    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();
    let base = sandbox.base_url.clone();
    let vars: HashMap<&str, String> = [
        ("PC_API_BASE_URL", base.as_str()),
        ("ENTRA_AUTHORITY", &base),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "memory"),
        ("CRM_KIND", "dataverse"),
        ("DATAVERSE_URL", &base),
        ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
        ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
        ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
        ("DAILY_API_BUDGET", "20"),
        ("WEBHOOK_RESERVED_SHARE", "0.2"),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.to_owned()))
    .collect();
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    assert_eq!(config.budget.daily_budget, DAILY_BUDGET);
    let clients =
        cosell_runtime::Clients::<cosell_runtime::Local>::from_config(&config.sync).unwrap();
    let (partner_center, crm) = (clients.partner_center, clients.crm);
    let counter = dynamo_budget().await;
    let budget = Budget {
        counter: &counter,
        policy: &config.budget,
    };
    let (idempotency, queue, audit, links) = (
        InMemoryIdempotencyStore::new(config.sync.idempotency_ttl),
        InMemoryRetryQueue::new(),
        InMemoryAuditLog::new(),
        InMemoryLinkStore::new(),
    );
    let settings = config.sync_settings();
    let deps: Deps<'_, cosell_runtime::Local> = Deps {
        partner_center: &partner_center,
        crm: &crm,
        idempotency: &idempotency,
        retry_queue: &queue,
        audit: &audit,
        links: &links,
        mapping: &config.sync.mapping,
        settings: &settings,
    };

    // 50 referrals, each announced by a referral-created webhook.
    let control = reqwest::Client::new();
    let mut events = Vec::new();
    for _ in 0..REFERRALS {
        let referral: Value = control
            .post(format!(
                "{base}/_sandbox/partner-center/referrals/microsoft-initiated"
            ))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = referral["id"].as_str().unwrap().to_owned();
        events.push(WebhookEvent {
            event_name: EventName::ReferralCreated,
            resource_uri: format!(
                "https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}"
            ),
            resource_name: Some("referral".into()),
            audit_uri: None,
            resource_change_utc_date: referral["updatedDateTime"]
                .as_str()
                .map(WireDateTime::parse),
            extra: Map::new(),
        });
    }

    let day0 = Utc.with_ymd_and_hms(2027, 3, 1, 9, 0, 0).unwrap();
    let mut created: BTreeMap<ReferralId, usize> = BTreeMap::new();
    let mut record = |outcome: &Outcome, event_or_job: ReferralId| {
        if matches!(outcome, Outcome::Created { .. }) {
            *created.entry(event_or_job).or_default() += 1;
        }
    };

    // Day 0: the webhooks. Syncs run up to the whole budget, the rest are queued.
    let mut ran = 0;
    for event in &events {
        let handled =
            handle_partner_center_event_within_budget(&deps, budget, event, &delivery(day0))
                .await
                .unwrap();
        match &handled.outcome {
            Outcome::Created { .. } => ran += 1,
            Outcome::RetryEnqueued { attempt: 1, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        record(&handled.outcome, event.referral_id().unwrap());
    }
    let used0 = counter.used(day0.date_naive()).await.unwrap();
    assert!(ran >= 1, "webhook syncs proceed while the budget lasts");
    assert!(used0 <= DAILY_BUDGET, "day 0 used {used0}");
    assert_eq!(
        queue.jobs().len(),
        REFERRALS - ran,
        "the rest are deferred, none dropped"
    );
    assert!(
        queue
            .jobs()
            .iter()
            .all(|(_, delay)| delay.as_secs() >= 1 && delay.as_secs() <= 900),
        "SQS delays stay within 15 minutes"
    );

    // The following days: the worker runs what is queued, a little after midnight.
    let background = config
        .budget
        .limit(cosell_domain::budget::CallKind::Background);
    let mut day = 1;
    while !queue.jobs().is_empty() {
        assert!(day <= 60, "the deferred jobs finish within 60 days");
        let now = day0
            .date_naive()
            .checked_add_days(Days::new(day))
            .unwrap()
            .and_hms_opt(0, 10, 0)
            .unwrap()
            .and_utc();
        // One delivery per day is enough here: a job deferred again is queued again.
        for (job, _) in queue.take_all() {
            let handled = run_retry_job_within_budget(&deps, budget, &job, &delivery(now))
                .await
                .unwrap();
            let event: WebhookEvent = serde_json::from_value(job.payload.clone()).unwrap();
            record(&handled.outcome, event.referral_id().unwrap());
            assert!(
                matches!(
                    handled.outcome,
                    Outcome::Created { .. } | Outcome::RetryEnqueued { .. }
                ),
                "{:?}",
                handled.outcome
            );
        }
        let used = counter.used(now.date_naive()).await.unwrap();
        assert!(used <= background, "day {day} used {used} of {background}");
        assert!(used > 0, "day {day} made progress");
        day += 1;
    }

    // Every referral is in the CRM exactly once.
    assert_eq!(created.len(), REFERRALS, "no referral lost");
    assert!(created.values().all(|n| *n == 1), "none synced twice");
    let rows: Value = control
        .get(format!("{base}/_sandbox/dataverse/opportunities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = rows["value"].as_array().or(rows.as_array()).unwrap();
    let field = &config
        .sync
        .mapping
        .dataverse
        .opportunity
        .referral_identifier;
    let mut per_referral: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        if let Some(id) = row[field.as_str()].as_str() {
            *per_referral.entry(id.to_lowercase()).or_default() += 1;
        }
    }
    for event in &events {
        let id = event.referral_id().unwrap().to_string().to_lowercase();
        assert_eq!(per_referral.get(&id), Some(&1), "one opportunity for {id}");
    }
    assert_eq!(per_referral.len(), REFERRALS);
}
