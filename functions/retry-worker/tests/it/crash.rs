//! The worker process is killed (SIGKILL) after the CRM write and before the idempotency record
//! completes; the redelivery, after the killed run's in-progress expiry (its Lambda deadline),
//! completes the job without a duplicate.
//!
//! The child is the crate's `run_once` example (the handler once, configuration from the
//! environment, DynamoDB on moto). The sandbox applies the CRM's opportunity write and then
//! holds its *response* (`delay_after_ms`); the test polls the sandbox's request log until the
//! write was seen, then kills the child.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use cosell_domain::ports::{AuditEvent, IdempotencyStatus};
use retry_worker::{FixedJitter, Invocation};
use serde_json::{Value, json};
use support::{Crm, Harness, moto_endpoint};

/// The killed run's Lambda deadline, from its start.
const CHILD_DEADLINE_SECS: i64 = 20;

/// `target/<profile>/examples/run_once`: built by `cargo test` with the tests, or here when only
/// this test target was built (`cargo test -p retry-worker --test it crash`).
fn run_once() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("run_once{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "retry-worker", "--example", "run_once"])
            .status()
            .unwrap();
        assert!(built.success(), "building the run_once example failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The path of Salesforce's Composite resource.
const COMPOSITE: &str = "/services/data/v62.0/composite";

#[tokio::test]
async fn a_worker_killed_after_the_crm_write_completes_on_redelivery_without_a_duplicate() {
    for crm in [Crm::Dataverse, Crm::Salesforce] {
        killed_after_the_crm_write(crm).await;
    }
}

async fn killed_after_the_crm_write(crm: Crm) {
    let h = Harness::start(crm, 5).await;
    let referral = h.seed_referral().await;
    let job = h.enqueue_created(&referral).await;
    let (messages, event) = h.receive().await;
    assert_eq!(messages.len(), 1);
    // The opportunity's write is applied, its answer held: on Dataverse the upsert (the first
    // PATCH of a new referral), on Salesforce the second Composite request (the first finds the
    // customer; the second writes it with the opportunity, all or none).
    let write = match crm {
        Crm::Dataverse => "PATCH",
        Crm::Salesforce => {
            h.inject(json!({"service": crm.service(), "method": "POST", "path_prefix": COMPOSITE, "count": 1}))
                .await;
            "POST"
        }
    };
    h.inject(json!({
        "service": crm.service(),
        "method": write,
        "count": 1,
        "delay_after_ms": 120_000
    }))
    .await;

    let mut child = Command::new(run_once())
        .envs(&h.env)
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("WORKER_DEADLINE_SECS", CHILD_DEADLINE_SECS.to_string())
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&event).unwrap().as_bytes())
        .unwrap();

    // Wait (bounded) until the sandbox applied the write, then kill the worker.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let writes = h
            .requests()
            .await
            .iter()
            .filter(|request: &&Value| {
                request["service"] == crm.service() && request["method"] == write
            })
            .count();
        let written = match crm {
            Crm::Dataverse => writes >= 1,
            Crm::Salesforce => writes >= 2,
        };
        if written {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{crm:?}: the worker exited ({status}) before the CRM write");
        }
        assert!(Instant::now() < until, "{crm:?}: no CRM write within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    let killed_at = Utc::now();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status}");

    // The write happened; nothing recorded it as done.
    assert_eq!(h.opportunities_of(&referral).await.len(), 1, "{crm:?}");
    let key = cosell_domain::ports::IdempotencyKey::try_from(format!(
        "{}#attempt-{}",
        job.key, job.attempt
    ))
    .unwrap();
    let record = h.idempotency_records().get(&key).await.unwrap().unwrap();
    assert_eq!(record.status, IdempotencyStatus::InProgress, "{crm:?}");
    let written = (
        h.rows("opportunity").await.len(),
        h.rows("account").await.len(),
        h.rows("contact").await.len(),
    );

    // SQS delivers it again (here: at once); the in-progress record has expired by then.
    h.queue
        .change_visibility(&messages[0].receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let (again, event) = h.receive().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, Some(2));
    // The child read its clock after `killed_at`: its deadline is before this.
    let now = killed_at + TimeDelta::seconds(CHILD_DEADLINE_SECS + 1);
    let answer = retry_worker::handle(
        &event,
        &h.app,
        &Invocation::new(now, None),
        &FixedJitter(0.5),
    )
    .await;

    assert!(answer.batch_item_failures.is_empty(), "{crm:?}: {answer:?}");
    assert_eq!(
        h.opportunities_of(&referral).await.len(),
        1,
        "{crm:?}: no duplicate"
    );
    assert_eq!(
        (
            h.rows("opportunity").await.len(),
            h.rows("account").await.len(),
            h.rows("contact").await.len(),
        ),
        written,
        "{crm:?}: no second opportunity, account or contact"
    );
    let record = h.idempotency_records().get(&key).await.unwrap().unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed, "{crm:?}");
    let referral_now = h
        .get(&format!("/_sandbox/partner-center/referrals/{referral}"))
        .await;
    let opportunity = &h.opportunities_of(&referral).await[0];
    let id_field = match crm {
        Crm::Dataverse => "opportunityid",
        Crm::Salesforce => "Id",
    };
    assert_eq!(
        referral_now["externalReferenceId"], opportunity[id_field],
        "{crm:?}: linked back"
    );
    let audit = h.audit(&referral).await;
    assert!(
        audit
            .iter()
            .any(|e| matches!(e.event, AuditEvent::Created | AuditEvent::Updated)),
        "{audit:#?}"
    );
}
