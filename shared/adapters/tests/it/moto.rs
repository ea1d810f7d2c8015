//! The AWS adapters against moto (DynamoDB + SQS), one test binary.
//!
//! `scripts/test.sh` starts moto and exports `COSELL_MOTO_ENDPOINT` (plus `AWS_ENDPOINT_URL`,
//! dummy credentials and `AWS_REGION`). Without `COSELL_MOTO_ENDPOINT` every test here fails
//! with instructions: they never skip silently. Each test uses its own table / queues.

// Helpers outside `#[test]` fns unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use cosell_adapters::aws::audit::AUDIT_RETENTION_DAYS;
use cosell_adapters::aws::aws_sdk_dynamodb::{self, types::AttributeValue};
use cosell_adapters::aws::aws_sdk_sqs;
use cosell_adapters::aws::sqs::SqsQueue;
use cosell_adapters::{
    AwsClients, DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, QueueOptions,
    SqsRetryQueue, provision_queues, provision_table,
};
use cosell_domain::{
    AcquireOutcome, AuditEntry, AuditEvent, AuditLog, Claim, Commit, CrmRecordId, ETag,
    IdempotencyKey, IdempotencyStore, KeyAfter, Link, LinkStore, PortError, ReferralId, RetryJob,
    RetryQueue, RetrySource, Service, SyncDirection,
};
use serde_json::json;

use cosell_testkit::unique;

/// Clients pointed at moto (the test kit's: never a real account).
type Moto = AwsClients;

async fn moto() -> Moto {
    cosell_testkit::moto::clients().await
}

async fn table(moto: &Moto, what: &str) -> String {
    let name = unique(what);
    provision_table(&moto.dynamodb, &name)
        .await
        .unwrap_or_else(|e| panic!("provision table {name}: {e}"));
    name
}

fn key(id: &str) -> IdempotencyKey {
    IdempotencyKey::new("pc", id).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn referral(id: &str) -> ReferralId {
    ReferralId::try_from(id).unwrap()
}

fn crm(id: &str) -> CrmRecordId {
    CrmRecordId::try_from(id).unwrap()
}

const REFERRAL_A: &str = "4111fffc-f9ee-4d53-bba6-569135228642";
const REFERRAL_B: &str = "37ef26aa-1d15-4533-9f93-a69bd33ab1e5";
const DATAVERSE_A: &str = "dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c";
const SALESFORCE_A: &str = "salesforce:006000000000001AAA";
const SALESFORCE_B: &str = "salesforce:006000000000002AAA";

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idempotency_acquire_is_exclusive_until_completed_then_returns_the_stored_response() {
    let moto = moto().await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), table(&moto, "idem").await);
    let key = key("event-1");
    let now = Utc::now();

    let first = store.acquire(&key, now, now + secs(30)).await.unwrap();
    assert_eq!(first, AcquireOutcome::Acquired);
    let second = store
        .acquire(&key, now + secs(1), now + secs(31))
        .await
        .unwrap();
    assert_eq!(second, AcquireOutcome::InProgress);

    let response = json!({ "status": 200, "body": "created" });
    store
        .complete(&key, &response, now + secs(3600))
        .await
        .unwrap();
    let third = store
        .acquire(&key, now + secs(2), now + secs(32))
        .await
        .unwrap();
    assert_eq!(third, AcquireOutcome::Duplicate(response.clone()));

    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(stored.response, Some(response));
    assert_eq!(stored.in_progress_until, None);
}

#[tokio::test]
async fn idempotency_in_progress_record_past_its_holders_deadline_is_taken_over() {
    let moto = moto().await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), table(&moto, "idem").await);
    let key = key("event-deadline");
    let now = Utc::now();

    assert_eq!(
        store.acquire(&key, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );
    // At the deadline itself the holder still owns it; just after, it is abandoned.
    assert_eq!(
        store
            .acquire(&key, now + secs(30), now + secs(60))
            .await
            .unwrap(),
        AcquireOutcome::InProgress
    );
    assert_eq!(
        store
            .acquire(
                &key,
                now + secs(30) + TimeDelta::milliseconds(1),
                now + secs(90)
            )
            .await
            .unwrap(),
        AcquireOutcome::Acquired
    );
}

/// Writes an idempotency item in the documented layout, the way another writer (or an old
/// record moto never expired) would leave it.
async fn put_raw_idempotency_item(
    moto: &Moto,
    table: &str,
    key: &IdempotencyKey,
    status: &str,
    expiration: DateTime<Utc>,
) {
    moto.dynamodb
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(format!("IDEMPOTENCY#{key}")))
        .item("sk", AttributeValue::S("IDEMPOTENCY".into()))
        .item("status", AttributeValue::S(status.into()))
        .item(
            "expiration",
            AttributeValue::N(expiration.timestamp().to_string()),
        )
        .item("response", AttributeValue::S(r#"{"status":200}"#.into()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn idempotency_expired_completed_record_counts_as_absent() {
    let moto = moto().await;
    let table = table(&moto, "idem").await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), table.clone());
    let now = Utc::now();

    let live = key("event-live");
    put_raw_idempotency_item(&moto, &table, &live, "COMPLETED", now + secs(60)).await;
    assert_eq!(
        store.acquire(&live, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Duplicate(json!({ "status": 200 }))
    );

    let expired = key("event-expired");
    put_raw_idempotency_item(&moto, &table, &expired, "COMPLETED", now - secs(10)).await;
    assert_eq!(
        store.acquire(&expired, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );

    // The same through the port: completed with an expiry that has passed by the next delivery.
    let completed = key("event-completed");
    assert_eq!(
        store
            .acquire(&completed, now, now + secs(30))
            .await
            .unwrap(),
        AcquireOutcome::Acquired
    );
    store
        .complete(&completed, &json!("done"), now + secs(5))
        .await
        .unwrap();
    assert_eq!(
        store
            .acquire(&completed, now + secs(4), now + secs(34))
            .await
            .unwrap(),
        AcquireOutcome::Duplicate(json!("done"))
    );
    assert_eq!(
        store
            .acquire(&completed, now + secs(6), now + secs(36))
            .await
            .unwrap(),
        AcquireOutcome::Acquired
    );
}

#[tokio::test]
async fn idempotency_release_lets_a_retry_acquire() {
    let moto = moto().await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), table(&moto, "idem").await);
    let key = key("event-release");
    let now = Utc::now();

    assert_eq!(
        store.acquire(&key, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );
    store.release(&key).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(
        store.acquire(&key, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );
    // Releasing a key nobody holds is fine.
    store.release(&self::key("never-acquired")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_twenty_concurrent_acquires_of_one_key_yield_exactly_one_holder() {
    let moto = moto().await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), table(&moto, "idem").await);
    let key = key("event-race");
    let now = Utc::now();

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.acquire(&key, now, now + secs(30)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    let acquired = outcomes
        .iter()
        .filter(|o| **o == AcquireOutcome::Acquired)
        .count();
    let in_progress = outcomes
        .iter()
        .filter(|o| **o == AcquireOutcome::InProgress)
        .count();
    assert_eq!((acquired, in_progress), (1, 19), "{outcomes:?}");
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn links_are_found_by_referral_and_by_crm_record() {
    let moto = moto().await;
    let links = DynamoLinkStore::new(moto.dynamodb.clone(), table(&moto, "links").await);
    let now = Utc::now();
    let link = Link {
        referral_id: referral(REFERRAL_A),
        crm: crm(DATAVERSE_A),
        last_referral_etag: Some(
            ETag::try_from("\"2500ec5a-0000-0000-0000-5bf4967d0000\"").unwrap(),
        ),
        last_referral_updated: Some(now - secs(60)),
        last_fingerprint_to_crm: Some("abc".into()),
        last_fingerprint_to_pc: None,
        last_stage_to_pc: None,
        microsoft_invited: false,
        last_crm_modified: None,
        updated_at: now,
        version: 0,
        // The merge's base: hashes per field, stored as a map.
        synced_fields: std::collections::BTreeMap::from([
            ("notes".to_owned(), "0123456789abcdef".to_owned()),
            ("stage".to_owned(), "fedcba9876543210".to_owned()),
        ]),
        // The referral as last seen, as JSON text (no contact data).
        last_referral: Some(
            r#"{"id":"4111fffc-7f33-4a1c-9f1a-000000000001","eTag":"\"2500ec5a-0000-0000-0000-5bf4967d0000\"","details":{"dealValue":12345.67}}"#
                .to_owned(),
        ),
        // The CRM record as the last write left it: its version and its shared fields' hashes.
        crm_seen: Some(cosell_domain::CrmSeen {
            version: "W/\"1234567\"".to_owned(),
            fields: std::collections::BTreeMap::from([(
                "notes".to_owned(),
                "0123456789abcdef".to_owned(),
            )]),
        }),
    };

    assert_eq!(
        links.get_by_referral(&link.referral_id).await.unwrap(),
        None
    );
    links.put(&link).await.unwrap();
    // Stored one version up.
    let stored = Link {
        version: 1,
        ..link.clone()
    };
    assert_eq!(
        links.get_by_referral(&link.referral_id).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        links.get_by_crm(&link.crm).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(links.get_by_crm(&crm(SALESFORCE_A)).await.unwrap(), None);
    assert_eq!(
        links.get_by_referral(&referral(REFERRAL_B)).await.unwrap(),
        None
    );

    // Re-linking the referral to another record moves the CRM lookup with it.
    let relinked = Link {
        crm: crm(SALESFORCE_A),
        last_fingerprint_to_pc: Some("def".into()),
        updated_at: now + secs(1),
        ..stored.clone()
    };
    links.put(&relinked).await.unwrap();
    let relinked = Link {
        version: 2,
        ..relinked
    };
    assert_eq!(links.get_by_crm(&link.crm).await.unwrap(), None);
    assert_eq!(
        links.get_by_crm(&crm(SALESFORCE_A)).await.unwrap(),
        Some(relinked.clone())
    );
    assert_eq!(
        links.get_by_referral(&link.referral_id).await.unwrap(),
        Some(relinked)
    );
}

#[tokio::test]
async fn a_link_changed_since_it_was_read_is_not_overwritten() {
    let moto = moto().await;
    let table = table(&moto, "link-versions").await;
    let links = DynamoLinkStore::new(moto.dynamodb.clone(), &table);
    let now = Utc::now();
    let link = Link {
        last_referral: None,
        crm_seen: None,
        referral_id: referral(REFERRAL_A),
        crm: crm(DATAVERSE_A),
        last_referral_etag: None,
        last_referral_updated: None,
        last_fingerprint_to_crm: None,
        last_fingerprint_to_pc: None,
        last_stage_to_pc: None,
        microsoft_invited: false,
        last_crm_modified: None,
        updated_at: now,
        version: 0,
        synced_fields: std::collections::BTreeMap::new(),
    };
    links.put(&link).await.unwrap();
    let read = links
        .get_by_referral(&link.referral_id)
        .await
        .unwrap()
        .unwrap();

    // Two syncs read version 1; the first one's write wins, the second is refused.
    let first = Link {
        last_fingerprint_to_crm: Some("from partner center".into()),
        ..read.clone()
    };
    let second = Link {
        last_fingerprint_to_pc: Some("from the crm".into()),
        ..read
    };
    links.put(&first).await.unwrap();
    let refused = links.put(&second).await.unwrap_err();
    assert_eq!(
        refused,
        PortError::PreconditionFailed {
            service: Service::LinkStore
        }
    );
    let now_stored = links
        .get_by_referral(&link.referral_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now_stored.version, 2);
    assert_eq!(
        now_stored.last_fingerprint_to_crm.as_deref(),
        Some("from partner center")
    );
    assert_eq!(now_stored.last_fingerprint_to_pc, None);

    // A link stored before versions existed (no `version` attribute) is replaced as version 0.
    let mut legacy = cosell_adapters::aws::item::to_item(&Link {
        referral_id: referral(REFERRAL_B),
        ..link.clone()
    })
    .unwrap();
    legacy.remove("version");
    legacy.insert(
        "pk".into(),
        AttributeValue::S(format!("REFERRAL#{REFERRAL_B}")),
    );
    legacy.insert("sk".into(), AttributeValue::S("LINK".into()));
    moto.dynamodb
        .put_item()
        .table_name(&table)
        .set_item(Some(legacy))
        .send()
        .await
        .unwrap();
    let old = links
        .get_by_referral(&referral(REFERRAL_B))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.version, 0);
    links.put(&old).await.unwrap();
    assert_eq!(
        links
            .get_by_referral(&referral(REFERRAL_B))
            .await
            .unwrap()
            .map(|l| l.version),
        Some(1)
    );
}

fn new_link(referral_id: &str, crm_id: &str, now: DateTime<Utc>) -> Link {
    Link {
        last_referral: None,
        crm_seen: None,
        referral_id: referral(referral_id),
        crm: crm(crm_id),
        last_referral_etag: None,
        last_referral_updated: None,
        last_fingerprint_to_crm: None,
        last_fingerprint_to_pc: None,
        last_stage_to_pc: None,
        microsoft_invited: false,
        last_crm_modified: None,
        updated_at: now,
        version: 0,
        synced_fields: std::collections::BTreeMap::new(),
    }
}

#[tokio::test]
async fn a_commit_writes_the_key_the_link_and_the_entries_together_or_nothing() {
    let moto = moto().await;
    let table = table(&moto, "commit").await;
    let store = DynamoIdempotencyStore::new(moto.dynamodb.clone(), &table);
    let links = DynamoLinkStore::new(moto.dynamodb.clone(), &table);
    let audit = DynamoAuditLog::new(moto.dynamodb.clone(), &table);
    let now = Utc::now();
    let event = key("commit-1");
    assert_eq!(
        store.acquire(&event, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );
    let link = new_link(REFERRAL_A, DATAVERSE_A, now);
    let entries = [
        entry(
            now,
            Some(REFERRAL_A),
            Some(DATAVERSE_A),
            AuditEvent::Received,
        ),
        entry(
            now,
            Some(REFERRAL_A),
            Some(DATAVERSE_A),
            AuditEvent::Created,
        ),
        entry(now, Some(REFERRAL_A), Some(DATAVERSE_A), failed("later")),
    ];
    let response = json!({ "status": "created" });
    let commit = Commit {
        key: &event,
        key_after: KeyAfter::Completed {
            response: &response,
            expires_at: now + secs(3600),
        },
        link: Some(&link),
        entries: &entries,
    };
    store.commit(&links, &audit, &commit).await.unwrap();

    assert_eq!(
        store.acquire(&event, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Duplicate(response.clone())
    );
    let stored = links
        .get_by_referral(&referral(REFERRAL_A))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 1);
    let listed = audit.by_referral(&referral(REFERRAL_A), 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    // The failure's "needs attention" marker follows the transaction.
    assert_eq!(audit.needs_attention(10).await.unwrap().len(), 1);

    // A second run that read the link before the first saved it: its commit is cancelled
    // whole (the link's condition), its key stays in progress and no entry is added.
    let other = key("commit-2");
    store.acquire(&other, now, now + secs(30)).await.unwrap();
    let stale = Link {
        last_fingerprint_to_pc: Some("stale".into()),
        ..link.clone()
    };
    let late = [entry(
        now,
        Some(REFERRAL_A),
        Some(DATAVERSE_A),
        AuditEvent::Updated,
    )];
    let cancelled = store
        .commit(
            &links,
            &audit,
            &Commit {
                key: &other,
                key_after: KeyAfter::Completed {
                    response: &response,
                    expires_at: now + secs(3600),
                },
                link: Some(&stale),
                entries: &late,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        cancelled,
        PortError::PreconditionFailed {
            service: Service::IdempotencyStore
        }
    );
    assert_eq!(
        store.acquire(&other, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::InProgress
    );
    assert_eq!(
        audit
            .by_referral(&referral(REFERRAL_A), 10)
            .await
            .unwrap()
            .len(),
        3
    );

    // Released with its entries: the key can be taken again.
    store
        .commit(
            &links,
            &audit,
            &Commit {
                key: &other,
                key_after: KeyAfter::Released,
                link: None,
                entries: &late,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.acquire(&other, now, now + secs(30)).await.unwrap(),
        AcquireOutcome::Acquired
    );
    assert_eq!(
        audit
            .by_referral(&referral(REFERRAL_A), 10)
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn a_referral_without_a_link_is_claimed_once_and_its_link_replaces_the_claim() {
    let moto = moto().await;
    let table = table(&moto, "claim").await;
    let links = DynamoLinkStore::new(moto.dynamodb.clone(), &table);
    let now = Utc::now();
    let id = referral(REFERRAL_A);

    assert_eq!(
        links.claim(&id, now, now + secs(30)).await.unwrap(),
        Claim::Claimed { earlier: false }
    );
    // Held: another run finds it busy; readers see no link.
    assert_eq!(
        links
            .claim(&id, now + secs(1), now + secs(31))
            .await
            .unwrap(),
        Claim::Busy
    );
    assert_eq!(links.get_by_referral(&id).await.unwrap(), None);
    // Past its holder's deadline it is taken over, told that an earlier run held it (that
    // run may have created the opportunity before it crashed).
    assert_eq!(
        links
            .claim(&id, now + secs(31), now + secs(61))
            .await
            .unwrap(),
        Claim::Claimed { earlier: true }
    );
    // Released: claimed again at once, the release remembered as an earlier holder.
    links.release_claim(&id).await.unwrap();
    assert_eq!(
        links
            .claim(&id, now + secs(32), now + secs(62))
            .await
            .unwrap(),
        Claim::Claimed { earlier: true }
    );
    // Another referral's first claim has no earlier holder.
    let other = referral(REFERRAL_B);
    assert_eq!(
        links.claim(&other, now, now + secs(30)).await.unwrap(),
        Claim::Claimed { earlier: false }
    );

    // The link replaces the claim; a claim then answers the link, and a release keeps it.
    let link = new_link(REFERRAL_A, SALESFORCE_A, now);
    links.put(&link).await.unwrap();
    let stored = links.get_by_referral(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(
        links
            .claim(&id, now + secs(33), now + secs(63))
            .await
            .unwrap(),
        Claim::Linked(Box::new(stored.clone()))
    );
    links.release_claim(&id).await.unwrap();
    assert_eq!(links.get_by_referral(&id).await.unwrap(), Some(stored));
    assert_eq!(
        links
            .get_by_crm(&crm(SALESFORCE_A))
            .await
            .unwrap()
            .map(|l| l.referral_id),
        Some(id)
    );
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

fn entry(
    at: DateTime<Utc>,
    referral_id: Option<&str>,
    crm_id: Option<&str>,
    event: AuditEvent,
) -> AuditEntry {
    AuditEntry {
        at,
        direction: Some(SyncDirection::ToCrm),
        referral_id: referral_id.map(referral),
        crm: crm_id.map(crm),
        correlation_id: Some("delivery-1".into()),
        event,
    }
}

fn failed(reason: &str) -> AuditEvent {
    AuditEvent::Failed {
        reason: reason.into(),
        fix: "Fix it.".into(),
    }
}

#[tokio::test]
async fn audit_entries_are_listed_newest_first_by_referral_and_by_crm_record() {
    let moto = moto().await;
    let log = DynamoAuditLog::new(moto.dynamodb.clone(), table(&moto, "audit").await);
    let t0 = Utc::now();
    let received = entry(t0, Some(REFERRAL_A), None, AuditEvent::Received);
    let created = entry(
        t0 + secs(1),
        Some(REFERRAL_A),
        Some(SALESFORCE_A),
        AuditEvent::Created,
    );
    let retry = entry(
        t0 + secs(2),
        Some(REFERRAL_A),
        Some(SALESFORCE_A),
        AuditEvent::RetryEnqueued { attempt: 2 },
    );
    // A CRM-side entry before the link was known: only the CRM record.
    let crm_only = entry(
        t0 + secs(3),
        None,
        Some(SALESFORCE_A),
        AuditEvent::EchoSkipped,
    );
    let other = entry(t0 + secs(4), Some(REFERRAL_B), None, AuditEvent::Received);
    // Appended out of order on purpose.
    for e in [&created, &crm_only, &received, &other, &retry] {
        log.append(e).await.unwrap();
    }

    assert_eq!(
        log.by_referral(&referral(REFERRAL_A), 10).await.unwrap(),
        vec![retry.clone(), created.clone(), received.clone()]
    );
    assert_eq!(
        log.by_referral(&referral(REFERRAL_A), 2).await.unwrap(),
        vec![retry.clone(), created.clone()]
    );
    assert_eq!(
        log.by_crm_record(&crm(SALESFORCE_A), 10).await.unwrap(),
        vec![crm_only.clone(), retry.clone(), created.clone()]
    );
    assert_eq!(
        log.by_crm_record(&crm(SALESFORCE_A), 1).await.unwrap(),
        vec![crm_only]
    );
    assert!(
        log.by_crm_record(&crm(SALESFORCE_B), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        log.by_referral(&referral(REFERRAL_A), 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Every entry carries the table's TTL attribute: it expires after the retention period.
    let items = moto
        .dynamodb
        .query()
        .table_name(log.table())
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("REFERRAL#{REFERRAL_B}")))
        .send()
        .await
        .unwrap();
    let item = &items.items()[0];
    let expiration: i64 = item["expiration"].as_n().unwrap().parse().unwrap();
    let expected = (t0 + secs(4)).timestamp() + AUDIT_RETENTION_DAYS * 86_400;
    assert_eq!(expiration, expected);
}

#[tokio::test]
async fn needs_attention_shows_a_failure_until_a_later_success_of_the_same_record() {
    let moto = moto().await;
    let log = DynamoAuditLog::new(moto.dynamodb.clone(), table(&moto, "attention").await);
    let t0 = Utc::now();
    let referral_failed = entry(
        t0,
        Some(REFERRAL_A),
        Some(SALESFORCE_A),
        failed("Solution ID is required."),
    );
    let crm_failed = entry(t0 + secs(2), None, Some(SALESFORCE_B), failed("Bad stage."));
    log.append(&referral_failed).await.unwrap();
    log.append(&crm_failed).await.unwrap();
    assert_eq!(
        log.needs_attention(10).await.unwrap(),
        vec![crm_failed.clone(), referral_failed.clone()]
    );
    assert_eq!(
        log.needs_attention(1).await.unwrap(),
        vec![crm_failed.clone()]
    );

    // Neither a non-outcome event nor a success older than the failure clears it.
    log.append(&entry(
        t0 + secs(3),
        None,
        Some(SALESFORCE_B),
        AuditEvent::Received,
    ))
    .await
    .unwrap();
    log.append(&entry(
        t0 + secs(1),
        None,
        Some(SALESFORCE_B),
        AuditEvent::Updated,
    ))
    .await
    .unwrap();
    assert_eq!(log.needs_attention(10).await.unwrap().len(), 2);
    // The late success is in the history all the same.
    let history = log.by_crm_record(&crm(SALESFORCE_B), 10).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.event == AuditEvent::Updated && e.at == t0 + secs(1)),
        "{history:?}"
    );
    // Nor does an older failure arriving late replace the newer one.
    log.append(&entry(
        t0 + secs(1),
        None,
        Some(SALESFORCE_B),
        failed("Old news."),
    ))
    .await
    .unwrap();
    assert_eq!(
        log.needs_attention(10).await.unwrap(),
        vec![crm_failed.clone(), referral_failed.clone()]
    );

    // A later success of the referral clears the referral's failure only.
    log.append(&entry(
        t0 + secs(4),
        Some(REFERRAL_A),
        Some(SALESFORCE_A),
        AuditEvent::Created,
    ))
    .await
    .unwrap();
    assert_eq!(
        log.needs_attention(10).await.unwrap(),
        vec![crm_failed.clone()]
    );

    // A newer failure replaces the older one; a later "unchanged" clears it.
    let crm_failed_again = entry(t0 + secs(5), None, Some(SALESFORCE_B), failed("Still bad."));
    log.append(&crm_failed_again).await.unwrap();
    assert_eq!(
        log.needs_attention(10).await.unwrap(),
        vec![crm_failed_again]
    );
    log.append(&entry(
        t0 + secs(6),
        None,
        Some(SALESFORCE_B),
        AuditEvent::UnchangedSkipped,
    ))
    .await
    .unwrap();
    assert!(log.needs_attention(10).await.unwrap().is_empty());

    // The failures stay in the history.
    assert_eq!(
        log.by_referral(&referral(REFERRAL_A), 10).await.unwrap()[1],
        referral_failed
    );
}

// ---------------------------------------------------------------------------------------------
// Retry queue
// ---------------------------------------------------------------------------------------------

fn job(attempt: u32) -> RetryJob {
    RetryJob {
        source: RetrySource::Salesforce,
        key: "sf:04l000000000001".into(),
        attempt,
        payload: json!({ "notification": { "Id": "04l000000000001" } }),
    }
}

#[tokio::test]
async fn retry_enqueue_delivers_the_job_with_source_and_attempt_attributes() {
    let moto = moto().await;
    let urls = provision_queues(&moto.sqs, &unique("retry"), &QueueOptions::default())
        .await
        .unwrap();
    let retry = SqsRetryQueue::new(moto.sqs.clone(), &urls.queue_url);

    let job = job(2);
    retry.enqueue(&job, Duration::ZERO).await.unwrap();
    let received = retry
        .queue()
        .receive(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(received.len(), 1, "{received:?}");
    let message = &received[0];
    assert_eq!(
        serde_json::from_str::<RetryJob>(&message.body).unwrap(),
        job
    );
    assert_eq!(message.attributes["source"], "salesforce");
    assert_eq!(message.attributes["attempt"], "2");
    assert_eq!(message.receive_count, Some(1));

    retry.queue().delete(&message.receipt_handle).await.unwrap();
    assert_eq!(retry.queue().depth().await.unwrap().visible, 0);
}

#[tokio::test]
async fn retry_enqueue_delay_hides_the_message_until_it_is_due() {
    let moto = moto().await;
    let urls = provision_queues(&moto.sqs, &unique("delay"), &QueueOptions::default())
        .await
        .unwrap();
    let retry = SqsRetryQueue::new(moto.sqs.clone(), &urls.queue_url);

    let sent = Instant::now();
    retry
        .enqueue(&job(1), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        retry
            .queue()
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "a message delayed 5 s was visible at once"
    );
    assert_eq!(retry.queue().depth().await.unwrap().delayed, 1);
    // Long-poll until it shows up (bounded).
    let mut received = Vec::new();
    while received.is_empty() && sent.elapsed() < Duration::from_secs(30) {
        received = retry
            .queue()
            .receive(10, Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert_eq!(received.len(), 1, "the delayed message never arrived");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(4500),
        "delivered after {waited:?}, before its 5 s delay"
    );
}

#[tokio::test]
async fn a_message_received_max_receive_count_times_lands_in_the_dead_letter_queue() {
    let moto = moto().await;
    let options = QueueOptions {
        visibility_timeout: Duration::ZERO,
        max_receive_count: 2,
        ..QueueOptions::default()
    };
    let urls = provision_queues(&moto.sqs, &unique("dlq"), &options)
        .await
        .unwrap();
    let retry = SqsRetryQueue::new(moto.sqs.clone(), &urls.queue_url);
    let dlq = SqsQueue::new(moto.sqs.clone(), &urls.dlq_url);
    let job = job(5);
    retry.enqueue(&job, Duration::ZERO).await.unwrap();

    // A consumer that keeps failing: receives without deleting.
    let mut receives = 0;
    loop {
        let received = retry
            .queue()
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap();
        if received.is_empty() {
            break;
        }
        receives += 1;
        assert_eq!(received[0].receive_count, Some(receives));
        assert!(
            receives <= options.max_receive_count,
            "never moved to the DLQ"
        );
    }
    assert_eq!(receives, options.max_receive_count);

    let dead = dlq.receive(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        serde_json::from_str::<RetryJob>(&dead[0].body).unwrap(),
        job
    );
    assert_eq!(dead[0].attributes["attempt"], "5");
}

// ---------------------------------------------------------------------------------------------
// Provisioning, configuration and errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn provisioning_is_idempotent() {
    let moto = moto().await;
    let name = table(&moto, "again").await;
    provision_table(&moto.dynamodb, &name).await.unwrap();
    let ttl = moto
        .dynamodb
        .describe_time_to_live()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expiration")
    );

    let queue = unique("again");
    let first = provision_queues(&moto.sqs, &queue, &QueueOptions::default())
        .await
        .unwrap();
    let changed = QueueOptions {
        max_receive_count: 3,
        visibility_timeout: Duration::from_secs(60),
        ..QueueOptions::default()
    };
    let second = provision_queues(&moto.sqs, &queue, &changed).await.unwrap();
    assert_eq!(first, second);
    assert!(
        first.dlq_url.ends_with(&format!("{queue}-dlq")),
        "{first:?}"
    );
    let attributes = moto
        .sqs
        .get_queue_attributes()
        .queue_url(&second.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    use aws_sdk_sqs::types::QueueAttributeName as A;
    assert_eq!(attributes[&A::VisibilityTimeout], "60");
    let redrive: serde_json::Value = serde_json::from_str(&attributes[&A::RedrivePolicy]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], second.dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
}

#[tokio::test]
async fn from_env_clients_reach_the_endpoint_in_aws_endpoint_url() {
    let endpoint = cosell_testkit::moto::endpoint();
    assert_eq!(
        std::env::var("AWS_ENDPOINT_URL").ok().as_deref(),
        Some(endpoint.as_str()),
        "AWS_ENDPOINT_URL must point at moto too: {}",
        cosell_testkit::RUN_TEST_SH
    );
    let clients = AwsClients::from_env().await;
    let name = unique("env");
    provision_table(&clients.dynamodb, &name).await.unwrap();
    let moto = moto().await;
    let described = moto
        .dynamodb
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.table().and_then(|t| t.table_name()),
        Some(name.as_str())
    );
}

#[tokio::test]
async fn a_missing_table_is_a_permanent_error_naming_the_table() {
    let moto = moto().await;
    let name = unique("missing");
    let links = DynamoLinkStore::new(moto.dynamodb.clone(), name.clone());
    let err = links
        .get_by_referral(&referral(REFERRAL_A))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::Permanent { message, .. }
            if message.contains(&format!("table {name} does not exist"))),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let retry = SqsRetryQueue::new(
        moto.sqs.clone(),
        format!(
            "{}/123456789012/{}",
            cosell_testkit::moto::endpoint(),
            unique("missing")
        ),
    );
    let err = retry.enqueue(&job(1), Duration::ZERO).await.unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("sqs:SendMessage"),
        "{err:?}"
    );
}

#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no credentials in this test",
            ),
        ))
    }
}

#[tokio::test]
async fn missing_credentials_are_access_denied_with_a_credentials_fix() {
    let moto = moto().await;
    let config = moto
        .dynamodb
        .config()
        .to_builder()
        .credentials_provider(NoCredentials)
        .build();
    let store = DynamoIdempotencyStore::new(aws_sdk_dynamodb::Client::from_conf(config), "cosell");
    let now = Utc::now();
    let err = store
        .acquire(&key("no-credentials"), now, now + secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PortError::AccessDenied { message, .. }
            if message.contains("dynamodb:PutItem on table cosell")
                && message.contains("give the connector valid AWS credentials")),
        "{err:?}"
    );
}
