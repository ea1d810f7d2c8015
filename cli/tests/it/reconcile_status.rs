//! `cosell reconcile` and `cosell status` against moto (table, retry queue and its DLQ) and the
//! sandbox: referrals created while Partner Center's webhooks are off are listed by a dry-run
//! backfill, queued by a real one, and a checkpointed run saves the checkpoint that `status`
//! then shows with the day's API calls (in all and per service) and the queue depths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::ops;

use chrono::{TimeDelta, Utc};
use cosell_adapters::aws::sqs::{OutgoingMessage, SqsQueue};
use cosell_cli::context::Exit;
use cosell_cli::{reconcile, status};
use ops::{Crm, World};
use reqwest::Method;
use serde_json::{Value, json};

async fn depth(world: &World, url: &str) -> u64 {
    let depth = SqsQueue::new(world.aws.sqs.clone(), url)
        .depth()
        .await
        .unwrap();
    depth.visible + depth.delayed + depth.in_flight
}

fn text(buffer: Vec<u8>) -> String {
    String::from_utf8(buffer).unwrap()
}

#[tokio::test]
async fn reconcile_backfills_and_status_shows_calls_queues_and_the_checkpoint() {
    let mut world = World::start(Crm::Dataverse).await;
    world.set("DAILY_API_BUDGET", "1000");
    world
        .control(
            Method::POST,
            "/_sandbox/webhooks",
            Some(json!({"service": "partner-center", "enabled": false})),
        )
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let referral = world
            .control(
                Method::POST,
                "/_sandbox/partner-center/referrals/microsoft-initiated",
                Some(json!({})),
            )
            .await;
        ids.push(referral["id"].as_str().unwrap().to_owned());
    }
    let now = Utc::now();
    let since = reconcile::parse_since(&now.date_naive().to_string()).unwrap();

    // A dry-run backfill lists both, queues nothing.
    let args = reconcile::Args {
        since: Some(since),
        dry_run: true,
        max_items: None,
        json: false,
    };
    let mut out = Vec::new();
    let exit = reconcile::run(&args, world.lookup(), &world.aws, now, &mut out)
        .await
        .unwrap();
    let printed = text(out);
    assert_eq!(exit, Exit::Healthy, "{printed}");
    assert!(printed.contains("dry run: nothing is queued"), "{printed}");
    for id in &ids {
        assert!(
            printed.contains(&format!("would queue referral: referral {id}")),
            "{printed}"
        );
    }
    assert!(!printed.contains('@'), "no contact data: {printed}");
    assert_eq!(depth(&world, &world.queues.queue_url).await, 0);

    // The backfill for real: two jobs on the queue, the checkpoint untouched.
    let args = reconcile::Args {
        dry_run: false,
        json: true,
        ..args
    };
    let mut out = Vec::new();
    let exit = reconcile::run(&args, world.lookup(), &world.aws, now, &mut out)
        .await
        .unwrap();
    assert_eq!(exit, Exit::Healthy);
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["planned"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(
        report["checkpoint"],
        Value::Null,
        "a backfill saves no checkpoint"
    );
    assert_eq!(depth(&world, &world.queues.queue_url).await, 2);

    // A checkpointed run (as the schedule runs it) saves the checkpoint.
    let args = reconcile::Args {
        since: None,
        json: false,
        ..args
    };
    let later = now + TimeDelta::minutes(1);
    let mut out = Vec::new();
    let exit = reconcile::run(&args, world.lookup(), &world.aws, later, &mut out)
        .await
        .unwrap();
    assert_eq!(exit, Exit::Healthy, "{}", text(out));

    // Status: the calls of the three runs, the queued jobs, the checkpoint; healthy.
    let status_args = status::Args {
        table: world.table.clone(),
        queue_url: world.queues.queue_url.clone(),
        dlq_url: None,
        json: true,
    };
    let mut out = Vec::new();
    let exit = status::run(&status_args, &world.aws, world.lookup(), later, &mut out)
        .await
        .unwrap();
    let shown: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(exit, Exit::Healthy, "{shown}");
    assert!(shown["calls_today"].as_u64().unwrap() >= 3, "{shown}");
    assert_eq!(shown["daily_budget"], 1000);
    assert_eq!(shown["background_limit"], 800);
    // Per service, in each one's unit: reconciliation read both sides of a Dataverse
    // deployment, and counted without a reservation, so the services add up to the total.
    let by_service = &shown["calls_today_by_service"];
    let (partner_center, dataverse) = (
        by_service["partner_center"].as_u64().unwrap(),
        by_service["dataverse"].as_u64().unwrap(),
    );
    assert!(partner_center >= 1 && dataverse >= 1, "{shown}");
    assert_eq!(by_service["salesforce"], 0, "{shown}");
    assert_eq!(
        partner_center + dataverse,
        shown["calls_today"].as_u64().unwrap(),
        "{shown}"
    );
    let calls = shown["calls_today"].as_f64().unwrap();
    assert_eq!(
        shown["budget_used_percent"].as_f64(),
        Some((calls / 1000.0 * 100.0 * 100.0).round() / 100.0),
        "the ApiBudgetUsedPercent metric's figure: {shown}"
    );
    assert!(shown["outcomes_today"].is_object(), "{shown}");
    assert!(
        shown["retry_queue"]["visible"].as_u64().unwrap() >= 2,
        "{shown}"
    );
    assert_eq!(shown["dead_letter_queue"]["visible"], 0);
    assert_eq!(
        shown["last_reconcile"]["last_run"],
        json!(later.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    );
    assert!(shown["problems"].as_array().unwrap().is_empty());

    // A job in the dead-letter queue is a problem, with the way out.
    SqsQueue::new(world.aws.sqs.clone(), &world.queues.dlq_url)
        .send(&OutgoingMessage {
            body: "{}".into(),
            ..OutgoingMessage::default()
        })
        .await
        .unwrap();
    let status_args = status::Args {
        json: false,
        ..status_args
    };
    let mut out = Vec::new();
    let exit = status::run(&status_args, &world.aws, world.lookup(), later, &mut out)
        .await
        .unwrap();
    let printed = text(out);
    assert_eq!(exit, Exit::Problems, "{printed}");
    assert!(printed.contains("API calls today"), "{printed}");
    assert!(
        printed.contains(&format!(
            "  per service: Partner Center {partner_center} requests, Dataverse {dataverse} \
             requests\n"
        )),
        "{printed}"
    );
    assert!(
        printed.contains("Dead-letter queue: 1 waiting"),
        "{printed}"
    );
    assert!(printed.contains("cosell redrive"), "{printed}");
    assert!(printed.contains("Last reconcile: "), "{printed}");
}
