//! Reconciliation with the production stores: the checkpoint, links, API counter and audit log
//! in DynamoDB and the jobs on the SQS retry queue, all on moto, against a spawned sandbox
//! (Dataverse). Referrals created while Partner Center's webhooks are switched off reach the CRM
//! through one run and its jobs (received from SQS and run as the retry worker runs them); a
//! second run queues nothing and writes nothing.
//!
//! Needs moto (`scripts/test.sh` starts it and exports `COSELL_MOTO_ENDPOINT`); fails with
//! instructions otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use cosell_adapters::{
    DynamoAuditLog, DynamoIdempotencyStore, QueueOptions, SqsQueue, provision_queues,
    provision_table,
};
use cosell_domain::ports::CrmStore;
use cosell_domain::ports::{ApiBudget as _, CheckpointStore as _};
use cosell_domain::sync::{Delivery, Deps, Outcome, RetryPolicy, run_retry_job};
use cosell_domain::{ReferralId, RetryJob};
use cosell_runtime::stores::{AnyAuditLog, AnyIdempotencyStore};
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_REFRESH_TOKEN, TENANT_ID,
};
use reconcile::{App, Config, handler};
use serde_json::{Value, json};

/// Every message on `queue` as the retry jobs they carry, deleted.
async fn drain(queue: &SqsQueue) -> Vec<RetryJob> {
    let mut jobs = Vec::new();
    loop {
        let messages = queue.receive(10, Duration::ZERO).await.unwrap();
        if messages.is_empty() {
            return jobs;
        }
        for message in messages {
            jobs.push(serde_json::from_str(&message.body).unwrap());
            queue.delete(&message.receipt_handle).await.unwrap();
        }
    }
}

#[tokio::test]
async fn missed_referrals_sync_through_one_run_with_the_stores_on_moto() {
    let aws = cosell_testkit::moto::clients().await;
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let name = format!(
        "cosell-reconcile-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    provision_table(&aws.dynamodb, &name).await.unwrap();
    let queues = provision_queues(&aws.sqs, &name, &QueueOptions::default())
        .await
        .unwrap();
    let queue = SqsQueue::new(aws.sqs.clone(), &queues.queue_url);

    let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
        .await
        .unwrap();
    let base = sandbox.base_url.as_str();
    let vars: HashMap<&str, String> = [
        ("PC_API_BASE_URL", base),
        ("ENTRA_AUTHORITY", base),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "dynamodb"),
        ("TABLE_NAME", name.as_str()),
        ("RETRY_QUEUE_URL", queues.queue_url.as_str()),
        ("CRM_KIND", "dataverse"),
        ("DATAVERSE_URL", base),
        ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
        ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
        ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect();
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let app = App::dynamo(&config, &aws, &name, &queues.queue_url).unwrap();

    let http = reqwest::Client::new();
    let control = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    let switched = control(
        "/_sandbox/webhooks",
        json!({"service": "partner-center", "enabled": false}),
    )
    .await
    .unwrap();
    assert!(switched.status().is_success());
    let mut created = Vec::new();
    for _ in 0..3 {
        let referral: Value = control(
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            json!({}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        created.push(ReferralId::try_from(referral["id"].as_str().unwrap()).unwrap());
    }

    // One run: a job per missed referral on SQS, the checkpoint and the calls in DynamoDB.
    let now = Utc::now();
    let first = handler::run(&app, now).await.unwrap();
    assert!(!first.failed(), "{first:?}");
    let jobs = drain(&queue).await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let checkpoint = app.checkpoints.load().await.unwrap().unwrap();
    assert_eq!(checkpoint.last_enqueued, 3);
    assert!(app.budget.used(now.date_naive()).await.unwrap() >= first.calls);

    // The worker's run of each job: every referral gets its opportunity.
    let settings = cosell_domain::sync::SyncSettings {
        retry_policy: RetryPolicy::Redeliver,
        ..app.settings.clone()
    };
    let idempotency =
        AnyIdempotencyStore::DynamoDb(DynamoIdempotencyStore::new(aws.dynamodb.clone(), &name));
    let audit = AnyAuditLog::DynamoDb(DynamoAuditLog::new(aws.dynamodb.clone(), &name));
    let deps: Deps<'_, cosell_runtime::Deployed> = Deps {
        partner_center: &app.partner_center,
        crm: &app.crm,
        idempotency: &idempotency,
        retry_queue: &app.retry_queue,
        audit: &audit,
        links: &app.links,
        mapping: &config.sync.mapping,
        settings: &settings,
    };
    let meta = Delivery {
        correlation_id: Some("reconcile-moto-test".into()),
        deadline: now + TimeDelta::seconds(60),
        now,
    };
    for job in &jobs {
        let handled = run_retry_job(&deps, job, &meta).await.unwrap();
        assert!(
            matches!(handled.outcome, Outcome::Created { .. }),
            "{handled:?}"
        );
    }
    for id in &created {
        assert!(
            app.crm
                .find_opportunity_by_referral(id)
                .await
                .unwrap()
                .is_some(),
            "{id} is in the CRM"
        );
    }

    // A second run: nothing differs from its link, nothing is queued or written.
    let requests = |http: reqwest::Client| async move {
        let log: Value = http
            .get(format!("{base}/_sandbox/requests"))
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
            .count()
    };
    let writes = requests(http.clone()).await;
    let second = handler::run(&app, now + TimeDelta::minutes(15))
        .await
        .unwrap();
    assert!(!second.failed(), "{second:?}");
    assert!(second.planned.is_empty(), "{:?}", second.planned);
    assert!(drain(&queue).await.is_empty());
    assert_eq!(
        requests(http.clone()).await,
        writes,
        "the second run wrote nothing"
    );
}
