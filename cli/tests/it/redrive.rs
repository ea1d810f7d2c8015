//! `cosell redrive` as an operator runs it (the binary), against moto's SQS: the dead-letter
//! queue found through the retry queue's `RedrivePolicy`, `--dry-run` moving nothing, the move
//! keeping bodies and attributes, and the exit codes. The worker's tests
//! (`functions/retry-worker/tests/worker.rs`) cover the replay end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use cosell_adapters::aws::{OutgoingMessage, SqsQueue};
use cosell_adapters::{
    AwsClients, DynamoAuditLog, QueueOptions, QueueUrls, provision_queues, provision_table,
};
use cosell_domain::CrmRecordId;
use cosell_domain::ports::{AuditEvent, AuditLog as _};
use serde_json::Value;

use cosell_testkit::moto::{clients as moto, endpoint as moto_endpoint};

async fn queues(aws: &AwsClients) -> QueueUrls {
    let name = cosell_testkit::unique("cosell-cli-redrive");
    provision_queues(&aws.sqs, &name, &QueueOptions::default())
        .await
        .unwrap()
}

fn moto_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto_endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

fn cosell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(args)
        .env_remove("DLQ_URL")
        .env_remove("DEAD_LETTER_QUEUE_URL")
        .env_remove("RETRY_QUEUE_URL")
        .env_remove("TABLE_NAME")
        .envs(moto_env())
        .output()
        .unwrap()
}

async fn visible(queue: &SqsQueue) -> u64 {
    queue.depth().await.unwrap().visible
}

#[tokio::test]
async fn dry_run_lists_and_a_redrive_moves_bodies_and_attributes_back() {
    let aws = moto().await;
    let urls = queues(&aws).await;
    let dlq = SqsQueue::new(aws.sqs.clone(), &urls.dlq_url);
    let queue = SqsQueue::new(aws.sqs.clone(), &urls.queue_url);
    let table = format!("{}-table", urls.queue_url.rsplit('/').next().unwrap());
    provision_table(&aws.dynamodb, &table).await.unwrap();
    let job = r#"{"source":"dataverse","key":"dv:1","attempt":2,"payload":{"record":"dataverse:3f0c1d2e-0000-4000-8000-0000000005e1"}}"#;
    for body in [job, "not a job"] {
        dlq.send(&OutgoingMessage {
            body: body.into(),
            string_attributes: vec![("source".into(), "dataverse".into())],
            number_attributes: vec![("attempt".into(), "2".into())],
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    }

    let listed = cosell(&["redrive", "--queue-url", &urls.queue_url, "--dry-run"]);

    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains("dry run: 2 job(s) would move"), "{stdout}");
    assert!(stdout.contains("dv:1"), "{stdout}");
    assert!(stdout.contains("(malformed)"), "{stdout}");
    assert_eq!(visible(&dlq).await, 2, "nothing moved, visible again");
    assert_eq!(visible(&queue).await, 0);

    let moved = Command::new(env!("CARGO_BIN_EXE_cosell"))
        .args(["redrive", "--queue-url", &urls.queue_url, "--json"])
        .env_remove("DLQ_URL")
        .env_remove("DEAD_LETTER_QUEUE_URL")
        .envs(moto_env())
        .env("TABLE_NAME", &table)
        .output()
        .unwrap();

    assert_eq!(
        moved.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let report: Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!(
        report["mode"], "one_by_one",
        "moto lacks StartMessageMoveTask"
    );
    assert_eq!(
        (report["moved"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(visible(&dlq).await, 0);
    let back = queue.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 2);
    let back: Vec<_> = back.into_iter().filter(|m| m.body == job).collect();
    assert_eq!(back.len(), 1, "the job's body unchanged");
    assert_eq!(back[0].attributes["source"], "dataverse");
    assert_eq!(back[0].attributes["attempt"], "2");
    assert_eq!(back[0].attribute_types["attempt"], "Number");

    let record = CrmRecordId::try_from("dataverse:3f0c1d2e-0000-4000-8000-0000000005e1").unwrap();
    let audit = DynamoAuditLog::new(aws.dynamodb.clone(), &table)
        .by_crm_record(&record, 10)
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].event, AuditEvent::Redriven);
    assert!(
        stdout.contains("dataverse:3f0c1d2e"),
        "listed with its record: {stdout}"
    );

    let again = cosell(&[
        "redrive",
        "--queue-url",
        &urls.queue_url,
        "--dlq-url",
        &urls.dlq_url,
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("moved: 0, failed: 0"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

#[tokio::test]
async fn an_unreadable_queue_exits_2() {
    let missing = format!("{}/000000000000/cosell-cli-no-such-queue", moto_endpoint());

    let output = cosell(&["redrive", "--queue-url", &missing, "--dlq-url", &missing]);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("redrive could not run"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
