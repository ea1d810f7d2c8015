//! The daily API counter and the reconciliation checkpoint against moto (DynamoDB).
//!
//! `scripts/test.sh` starts moto and exports `COSELL_MOTO_ENDPOINT`; without it every test here
//! fails with instructions. Each test uses its own table.

#![allow(clippy::unwrap_used)]

use chrono::{NaiveDate, TimeZone, Utc};
use cosell_adapters::aws::aws_sdk_dynamodb;
use cosell_adapters::aws::{DayCount, DynamoApiBudget, DynamoCheckpointStore};
use cosell_adapters::provision_table;
use cosell_domain::ports::{
    ApiBudget, ApiService, Checkpoint, CheckpointStore, ReconcileCursor, ReconcilePosition,
    ServiceCalls,
};

async fn dynamodb() -> aws_sdk_dynamodb::Client {
    cosell_testkit::moto::clients().await.dynamodb
}

async fn table(client: &aws_sdk_dynamodb::Client, what: &str) -> String {
    let name = cosell_testkit::unique(&format!("cosell-it-{what}"));
    provision_table(client, &name).await.unwrap();
    name
}

/// The counter item of 2027-01-15, as stored.
async fn day_item(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    let key = |value: &str| aws_sdk_dynamodb::types::AttributeValue::S(value.into());
    client
        .get_item()
        .table_name(name)
        .key("pk", key("BUDGET#2027-01-15"))
        .key("sk", key("BUDGET"))
        .send()
        .await
        .unwrap()
        .item()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn the_daily_counter_adds_atomically_per_utc_day_and_expires_a_week_later() {
    let client = dynamodb().await;
    let name = table(&client, "budget").await;
    let budget = DynamoApiBudget::new(client.clone(), &name);
    let day = NaiveDate::from_ymd_opt(2027, 1, 15).unwrap();
    let next = day.succ_opt().unwrap();

    assert_eq!(budget.used(day).await.unwrap(), 0);
    // Concurrent adds all land: ADD is atomic.
    let adds = (0..10).map(|_| {
        let budget = budget.clone();
        async move { budget.add(day, 3).await }
    });
    let totals = join_all(adds).await;
    let mut totals: Vec<i64> = totals.into_iter().map(Result::unwrap).collect();
    totals.sort_unstable();
    assert_eq!(totals, (1..=10).map(|n| n * 3).collect::<Vec<_>>());
    assert_eq!(budget.used(day).await.unwrap(), 30);
    // A reservation given back.
    assert_eq!(budget.add(day, -8).await.unwrap(), 22);
    assert_eq!(budget.used(day).await.unwrap(), 22);
    // Days are separate.
    assert_eq!(budget.add(next, 5).await.unwrap(), 5);
    assert_eq!(budget.used(day).await.unwrap(), 22);

    let item = day_item(&client, &name).await;
    let expiration: i64 = item["expiration"].as_n().unwrap().parse().unwrap();
    assert_eq!(
        expiration,
        Utc.with_ymd_and_hms(2027, 1, 23, 0, 0, 0)
            .unwrap()
            .timestamp()
    );
    assert_eq!(item["entity"].as_s().unwrap(), "budget");
}

#[tokio::test]
async fn a_settle_adds_the_calls_per_service_to_the_same_item_next_to_the_total() {
    let client = dynamodb().await;
    let name = table(&client, "budget-services").await;
    let budget = DynamoApiBudget::new(client.clone(), &name);
    let day = NaiveDate::from_ymd_opt(2027, 1, 15).unwrap();

    assert_eq!(
        budget.used_by_service(day).await.unwrap(),
        ServiceCalls::default()
    );
    // A reservation counts in the total only.
    assert_eq!(budget.add(day, 8).await.unwrap(), 8);
    assert_eq!(
        budget.used_by_service(day).await.unwrap(),
        ServiceCalls::default()
    );
    // Its settle: the total moves by the difference, each service by its calls.
    let made = ServiceCalls::of(ApiService::PartnerCenter, 3).with(ApiService::Dataverse, 7);
    assert_eq!(budget.record(day, 2, made).await.unwrap(), 10);
    // Concurrent settles all land: one ADD of the total and the services.
    let settles = (0..5).map(|_| {
        let budget = budget.clone();
        async move {
            budget
                .record(day, 1, ServiceCalls::of(ApiService::Salesforce, 1))
                .await
        }
    });
    let mut totals: Vec<i64> = join_all(settles)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    totals.sort_unstable();
    assert_eq!(totals, vec![11, 12, 13, 14, 15]);

    let expected = ServiceCalls {
        partner_center: 3,
        dataverse: 7,
        salesforce: 5,
    };
    assert_eq!(budget.used(day).await.unwrap(), 15);
    assert_eq!(budget.used_by_service(day).await.unwrap(), expected);
    assert_eq!(
        budget.try_day(day).await.unwrap(),
        DayCount {
            total: 15,
            by_service: expected,
        }
    );
    // The same item, one attribute per service.
    let item = day_item(&client, &name).await;
    for (attribute, calls) in [
        ("calls", "15"),
        ("calls_partner_center", "3"),
        ("calls_dataverse", "7"),
        ("calls_salesforce", "5"),
    ] {
        assert_eq!(item[attribute].as_n().unwrap(), calls, "{attribute}");
    }
}

/// `join_all` without another dependency: the futures are polled concurrently by tokio.
async fn join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_checkpoint_is_saved_and_read_back_whole() {
    let client = dynamodb().await;
    let name = table(&client, "checkpoint").await;
    let store = DynamoCheckpointStore::new(client, &name);
    assert_eq!(store.load().await.unwrap(), None);
    let at = Utc.with_ymd_and_hms(2027, 1, 15, 8, 0, 0).unwrap();
    let checkpoint = Checkpoint {
        referrals: ReconcileCursor {
            since: Some(at),
            after: Some(ReconcilePosition {
                at,
                ids: vec!["4111fffc-f9ee-4d53-bba6-569135228642".into()],
            }),
        },
        opportunities: ReconcileCursor::default(),
        last_run: Some(at),
        last_enqueued: 7,
    };
    store.save(&checkpoint).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(checkpoint.clone()));
    let later = Checkpoint {
        last_enqueued: 0,
        ..checkpoint
    };
    store.save(&later).await.unwrap();
    assert_eq!(store.load().await.unwrap(), Some(later));
}
