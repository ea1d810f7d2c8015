//! `cosell audit` against moto, with a timeline made by the real functions: the sandbox's
//! signed Partner Center webhook and Dataverse webhook are delivered to the real handlers of
//! `partner-center-events` and `crm-events` (DynamoDB / SQS stores on moto), and the retry job
//! is run by the real `retry-worker` handler. A referral created in Partner Center is synced
//! to Dataverse, updated in the CRM, fails with a 503, is retried (503 again: dead-lettered),
//! redriven with `cosell redrive`'s [`redrive`](cosell_cli::redrive::redrive) (which audits
//! the jobs it moved: [`record_redriven`](cosell_cli::redrive::record_redriven)) and synced; a
//! later change fails for good and shows up under `--needs-attention` with its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::ops;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use chrono::Utc;
use cosell_adapters::aws::sqs::SqsQueue;
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::{HttpPartnerCenter, WebhookVerifier};
use cosell_adapters::{DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, SqsRetryQueue};
use cosell_cli::audit::{self, Args};
use cosell_cli::context::{Deployment, Exit, OpsConfig};
use cosell_domain::ports::{
    AuditEntry, AuditEvent, AuditLog, PortError, Ports, RetryJob, RetryQueue, SyncDirection,
};
use cosell_domain::webhook::{EventName, WebhookRegistration};
use cosell_domain::{CrmRecordId, ReferralId};
use cosell_runtime::clients::Clients;
use cosell_runtime::{Connector, Stores};
use cosell_sandbox::identities::{DATAVERSE_APP_USER_ID, DATAVERSE_SELLER_USER_ID};
use lambda_http::{Body, RequestExt as _};
use ops::{Crm, World};
use reqwest::Method;
use serde_json::{Value, json};

const WEBHOOK_KEY: &str = "audit-test-dataverse-webhook-key";
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Harness: Function URL stand-ins around the real handlers

type Handler = Arc<
    dyn Fn(lambda_http::Request) -> Pin<Box<dyn Future<Output = (u16, Vec<u8>)> + Send>>
        + Send
        + Sync,
>;

/// Serves `handler` on a free loopback port; its base URL.
async fn bridge(handler: Handler) -> String {
    async fn forward(State(handler): State<Handler>, request: AxumRequest) -> AxumResponse {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1024 * 1024).await.unwrap();
        let mut lambda = lambda_http::Request::new(Body::Binary(body.to_vec()));
        *lambda.method_mut() = parts.method;
        // A Function URL event carries the query string parsed, as lambda_http exposes it.
        let query: std::collections::HashMap<String, String> = parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        *lambda.uri_mut() = parts.uri;
        *lambda.headers_mut() = parts.headers;
        let mut context = lambda_http::Context::default();
        context.request_id = uuid_like();
        let lambda = lambda
            .with_query_string_parameters(query)
            .with_lambda_context(context);
        let (status, bytes) = handler(lambda).await;
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            AxumBody::from(bytes),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(forward).with_state(handler);
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn uuid_like() -> String {
    ops::unique("request")
}

/// The retry queue of `crm-events` in this test: the real SQS queue, without the delay (the
/// retry-worker handler runs the job at once instead of 30 s later).
struct Undelayed(SqsRetryQueue);

/// The functions' ports on moto, as deployed.
struct OnMoto;

impl Ports for OnMoto {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type Idempotency = DynamoIdempotencyStore;
    type RetryQueue = SqsRetryQueue;
    type Audit = DynamoAuditLog;
    type Links = DynamoLinkStore;
}

/// `crm-events`' ports: on moto, its retry jobs due at once.
struct OnMotoUndelayed;

impl Ports for OnMotoUndelayed {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type Idempotency = DynamoIdempotencyStore;
    type RetryQueue = Undelayed;
    type Audit = DynamoAuditLog;
    type Links = DynamoLinkStore;
}

impl RetryQueue for Undelayed {
    async fn enqueue(&self, job: &RetryJob, _delay: Duration) -> Result<(), PortError> {
        self.0.enqueue(job, Duration::ZERO).await
    }
}

struct Scenario {
    world: World,
    log: DynamoAuditLog,
}

impl Scenario {
    async fn start() -> Self {
        // A job dead-letters after one failed retry (the worker and the queue agree).
        let options = cosell_adapters::QueueOptions {
            max_receive_count: 1,
            ..cosell_adapters::QueueOptions::default()
        };
        let mut world = World::start_with(Crm::Dataverse, options).await;
        world.set("MAX_RECEIVE_COUNT", "1");
        world.set("DATAVERSE_WEBHOOK_KEY", WEBHOOK_KEY);
        world.set("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID);
        world.set("DLQ_URL", &world.queues.dlq_url.clone());
        let aws = world.aws.clone();
        let table = world.table.clone();
        let queue_url = world.queues.queue_url.clone();
        let stores = || Stores::<OnMoto> {
            idempotency: DynamoIdempotencyStore::new(aws.dynamodb.clone(), &table),
            retry_queue: SqsRetryQueue::new(aws.sqs.clone(), &queue_url),
            audit: DynamoAuditLog::new(aws.dynamodb.clone(), &table),
            links: DynamoLinkStore::new(aws.dynamodb.clone(), &table),
        };

        // partner-center-events, its verifier accepting the sandbox's plain-http certificate URL.
        let config = partner_center_events::Config::from_lookup(world.lookup()).unwrap();
        let pce = Arc::new(partner_center_events::App {
            connector: Connector::new(
                Clients::from_config(&config.sync).unwrap(),
                stores(),
                config.sync.mapping.clone(),
                config.sync_settings(),
            ),
            verifier: WebhookVerifier::with_insecure_hosts(
                partner_center_events::app::verifier_settings(&config.webhook),
                [world.sandbox.addr.to_string()],
            )
            .unwrap(),
            max_body_bytes: config.max_body_bytes,
        });
        let pce_url = bridge(Arc::new(move |request| {
            let app = Arc::clone(&pce);
            Box::pin(async move {
                let response = partner_center_events::handler::handle(request, &app)
                    .await
                    .unwrap();
                (response.status().as_u16(), response.body().to_vec())
            })
        }))
        .await;

        // crm-events.
        let config = crm_events::Config::from_lookup(world.lookup()).unwrap();
        let base = stores();
        let crm_stores = Stores::<OnMotoUndelayed> {
            idempotency: base.idempotency,
            retry_queue: Undelayed(base.retry_queue),
            audit: base.audit,
            links: base.links,
        };
        let connector = Connector::new(
            Clients::from_config(&config.sync).unwrap(),
            crm_stores,
            config.sync.mapping.clone(),
            config.sync_settings(),
        );
        let crm = Arc::new(crm_events::App::new(connector, &config));
        let crm_url = bridge(Arc::new(move |request| {
            let app = Arc::clone(&crm);
            Box::pin(async move {
                let response = crm_events::handler::handle(request, &app).await.unwrap();
                (response.status().as_u16(), response.body().to_vec())
            })
        }))
        .await;

        // Partner Center's webhook → partner-center-events; Dataverse's → crm-events.
        let deployment =
            Deployment::new(OpsConfig::from_lookup(world.lookup()).unwrap(), None).unwrap();
        deployment
            .registration_client()
            .unwrap()
            .register(&WebhookRegistration {
                webhook_url: Some(format!("{pce_url}/")),
                webhook_events: EventName::REFERRAL_EVENTS.to_vec(),
                ..WebhookRegistration::default()
            })
            .await
            .unwrap();
        world
            .control(
                Method::PUT,
                "/_sandbox/dataverse/webhook",
                Some(json!({"url": format!("{crm_url}/dataverse"),
                            "authtype": "WebhookKey", "authvalue": WEBHOOK_KEY})),
            )
            .await;
        let log = DynamoAuditLog::new(world.aws.dynamodb.clone(), &world.table);
        Self { world, log }
    }

    /// Waits until the sandbox has finished every webhook delivery.
    async fn settle(&self) {
        let started = Instant::now();
        loop {
            let deliveries = self
                .world
                .control(Method::GET, "/_sandbox/deliveries", None)
                .await;
            let items = deliveries
                .as_array()
                .cloned()
                .or_else(|| deliveries["deliveries"].as_array().cloned())
                .unwrap_or_default();
            if items.iter().all(|d| d["finished"] == json!(true)) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "deliveries unfinished: {deliveries:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the referral's audit log holds an entry `wanted` accepts; the entries.
    async fn wait_for(
        &self,
        referral: &ReferralId,
        wanted: impl Fn(&AuditEntry) -> bool,
    ) -> Vec<AuditEntry> {
        let started = Instant::now();
        loop {
            let entries = self.log.by_referral(referral, 100).await.unwrap();
            if entries.iter().any(&wanted) {
                return entries;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "not audited yet: {entries:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The seller changes the opportunity (as Dataverse's UI would): the row as stored, with
    /// `edit` applied, written back as the seller; the webhook goes to `crm-events`.
    async fn seller_edits(&self, opportunity: &str, edit: impl FnOnce(&mut Value)) {
        let path = format!("/_sandbox/dataverse/opportunities/{opportunity}");
        let mut row = self.world.control(Method::GET, &path, None).await;
        edit(&mut row);
        self.world
            .control(
                Method::PUT,
                &format!("{path}?as_user={DATAVERSE_SELLER_USER_ID}"),
                Some(row),
            )
            .await;
    }

    async fn fault(&self, status: u16, count: u32) {
        self.world
            .control(
                Method::POST,
                "/_sandbox/faults",
                Some(json!({"service": "partner-center", "method": "PATCH",
                            "status": status, "count": count})),
            )
            .await;
    }

    /// Receives the retry job from SQS and runs it through the real `retry-worker` handler;
    /// deletes it when the worker reports it done (as the Lambda event source would). Whether
    /// it was done.
    async fn run_retry_worker(&self) -> bool {
        let config = retry_worker::Config::from_lookup(self.world.lookup()).unwrap();
        let aws = &self.world.aws;
        let table = &self.world.table;
        let stores = Stores::<OnMoto> {
            idempotency: DynamoIdempotencyStore::new(aws.dynamodb.clone(), table),
            retry_queue: SqsRetryQueue::new(aws.sqs.clone(), &config.retry_queue_url),
            audit: DynamoAuditLog::new(aws.dynamodb.clone(), table),
            links: DynamoLinkStore::new(aws.dynamodb.clone(), table),
        };
        let clients = Clients::from_config(&config.sync).unwrap();
        let mapping = config.sync.mapping.clone();
        let app = retry_worker::App::new(
            Connector::new(clients, stores, mapping, config.sync_settings()),
            retry_worker::SqsWorkerQueues::new(
                aws.sqs.clone(),
                &config.retry_queue_url,
                &config.dlq_url,
            ),
            &config,
        );
        let queue = SqsQueue::new(aws.sqs.clone(), &config.retry_queue_url);
        let received = queue.receive(1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(received.len(), 1, "one retry job on the queue");
        let job = &received[0];
        let mut message = SqsMessage::default();
        message.message_id = Some(job.message_id.clone());
        message.receipt_handle = Some(job.receipt_handle.clone());
        message.body = Some(job.body.clone());
        message.attributes.insert(
            "ApproximateReceiveCount".into(),
            job.receive_count.unwrap_or(1).to_string(),
        );
        let mut event = SqsEvent::default();
        event.records.push(message);
        let answer = retry_worker::handle(
            &event,
            &app,
            &retry_worker::Invocation::new(Utc::now(), None),
            &retry_worker::FixedJitter(0.5),
        )
        .await;
        if answer.batch_item_failures.is_empty() {
            queue.delete(&job.receipt_handle).await.unwrap();
            true
        } else {
            false
        }
    }

    /// The job the worker gave up on moves to the dead-letter queue (SQS moves it on the next
    /// receive past `maxReceiveCount`); `cosell redrive` moves it back.
    async fn dead_letter_and_redrive(&self) {
        let sqs = &self.world.aws.sqs;
        let queues = &self.world.queues;
        let retry = SqsQueue::new(sqs.clone(), &queues.queue_url);
        let dlq = SqsQueue::new(sqs.clone(), &queues.dlq_url);
        let started = Instant::now();
        while dlq.depth().await.unwrap().visible == 0 {
            assert!(retry.receive(1, Duration::ZERO).await.unwrap().is_empty());
            assert!(
                started.elapsed() < DEADLINE,
                "the job never reached the DLQ"
            );
        }
        let report = cosell_cli::redrive::redrive(
            sqs,
            &queues.dlq_url,
            &queues.queue_url,
            &cosell_cli::redrive::Options {
                use_move_task: false,
                ..cosell_cli::redrive::Options::default()
            },
        )
        .await
        .unwrap();
        assert_eq!((report.moved, report.failed), (1, 0), "{report:?}");
        let unwritten = cosell_cli::redrive::record_redriven(&self.log, &report, Utc::now()).await;
        assert_eq!(unwritten, 0);
    }
}

fn kinds(entries: &[AuditEntry]) -> Vec<(Option<SyncDirection>, String)> {
    entries
        .iter()
        .map(|e| {
            let kind = serde_json::to_value(&e.event).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned();
            (e.direction, kind)
        })
        .collect()
}

/// Whether `wanted` appears in `found` in this order (other entries may come between).
fn in_order(found: &[(Option<SyncDirection>, String)], wanted: &[(SyncDirection, &str)]) -> bool {
    let mut rest = found.iter();
    wanted
        .iter()
        .all(|(direction, kind)| rest.any(|(d, k)| *d == Some(*direction) && k == kind))
}

async fn audit_text(log: &DynamoAuditLog, args: Args) -> (String, Exit) {
    let mut out = Vec::new();
    let exit = audit::run_with(log, &args, &mut out).await.unwrap();
    (String::from_utf8(out).unwrap(), exit)
}

fn args(id: Option<&str>, needs_attention: bool, json: bool) -> Args {
    Args {
        id: id.map(str::to_owned),
        needs_attention,
        limit: audit::DEFAULT_LIMIT,
        json,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timeline_follows_a_referral_through_both_functions_a_503_and_its_retry() {
    let s = Scenario::start().await;
    use SyncDirection::{ToCrm, ToPartnerCenter};

    // 1. Microsoft creates a co-sell referral in Partner Center → synced to Dataverse.
    let referral = s
        .world
        .control(
            Method::POST,
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            Some(json!({})),
        )
        .await;
    let referral = ReferralId::try_from(referral["id"].as_str().unwrap()).unwrap();
    let entries = s
        .wait_for(&referral, |e| e.event == AuditEvent::Created)
        .await;
    s.settle().await;
    let opportunity = entries
        .iter()
        .find_map(|e| e.crm.clone())
        .expect("the created opportunity is audited");
    let CrmRecordId::Dataverse(row) = &opportunity else {
        panic!("{opportunity:?}")
    };
    let row = row.to_string();

    // 2. The seller accepts it in the CRM (on hold → in progress) and raises the value; the
    //    Partner Center PATCH answers 503 (twice: here and on the first retry) → a retry job.
    s.fault(503, 2).await;
    s.seller_edits(&row, |r| {
        r["statuscode"] = json!(1);
        r["estimatedvalue"] = json!(125_000);
    })
    .await;
    s.settle().await;
    s.wait_for(&referral, |e| {
        matches!(e.event, AuditEvent::RetryEnqueued { attempt: 1 })
    })
    .await;

    // 3. The retry worker runs the job: 503 again, and it has used its receives → audited as
    //    dead-lettered. An operator redrives it; the worker runs it again: updated.
    assert!(!s.run_retry_worker().await, "the first retry fails");
    s.wait_for(&referral, AuditEntry::needs_attention).await;
    s.dead_letter_and_redrive().await;
    assert!(s.run_retry_worker().await, "the redriven retry succeeds");
    s.wait_for(&referral, |e| {
        e.event == AuditEvent::Updated && e.direction == Some(ToPartnerCenter)
    })
    .await;
    // The PATCH's own `referral-updated` is delivered meanwhile (should it arrive before the
    // retry's commit, it is not yet known as an echo and runs as a change, whose commit then
    // loses to the retry's and is retried): the timelines below are read once nothing is in
    // flight, so both reads see the same entries.
    s.settle().await;

    // The timeline, by referral id and by CRM record id: the same, oldest first.
    let target = audit::parse_target(&referral.to_string()).unwrap();
    let timeline = audit::timeline(&s.log, &target, 100).await.unwrap();
    let found = kinds(&timeline);
    assert!(
        in_order(
            &found,
            &[
                (ToCrm, "received"),
                (ToCrm, "created"),
                (ToPartnerCenter, "received"),
                (ToPartnerCenter, "retry_enqueued"),
                (ToPartnerCenter, "failed"),
            ]
        ),
        "{found:#?}"
    );
    // Then the operator's redrive (no direction of its own), then the successful run.
    let failed = found
        .iter()
        .position(|(d, k)| *d == Some(ToPartnerCenter) && k == "failed")
        .unwrap();
    let redriven = found
        .iter()
        .position(|(d, k)| d.is_none() && k == "redriven")
        .unwrap_or_else(|| panic!("no redrive in {found:#?}"));
    let updated = found
        .iter()
        .rposition(|(d, k)| *d == Some(ToPartnerCenter) && k == "updated")
        .unwrap();
    assert!(failed < redriven && redriven < updated, "{found:#?}");
    assert!(
        timeline.windows(2).all(|w| w[0].at <= w[1].at),
        "oldest first"
    );
    let by_crm = audit::timeline(
        &s.log,
        &audit::parse_target(&opportunity.to_string()).unwrap(),
        100,
    )
    .await
    .unwrap();
    assert_eq!(by_crm, timeline, "the CRM id reaches the same timeline");
    let by_bare_guid = audit::timeline(&s.log, &audit::parse_target(&row).unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(by_bare_guid, timeline);

    let (text, exit) = audit_text(&s.log, args(Some(&referral.to_string()), false, false)).await;
    println!("{text}");
    assert_eq!(exit, Exit::Healthy, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("timeline of {referral}")),
        "{text}"
    );
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in:\n{text}"))
    };
    assert!(position("created the CRM opportunity") < position("retry enqueued (attempt 1)"));
    assert!(position("retry enqueued (attempt 1)") < position("FAILED:"));
    assert!(position("FAILED:") < position("redriven from the dead-letter queue"));
    assert!(
        position("redriven from the dead-letter queue")
            < position("updated the Partner Center referral")
    );
    // Newest last: the final line is the newest entry (the echo of the connector's own PATCH).
    let newest = timeline.iter().map(|e| e.at).max().unwrap();
    let newest = newest.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(
        lines.last().unwrap().starts_with(&newest),
        "newest last:\n{text}"
    );

    let (text, exit) = audit_text(&s.log, args(None, true, false)).await;
    assert_eq!(
        (text.trim(), exit),
        ("nothing needs attention", Exit::Healthy)
    );

    // 4. A later change is refused for good (403): a failure with its fix, and the record
    //    needs attention.
    s.fault(403, 1).await;
    s.seller_edits(&row, |r| r["estimatedvalue"] = json!(130_000))
        .await;
    s.settle().await;
    s.wait_for(&referral, AuditEntry::needs_attention).await;

    let (text, exit) = audit_text(&s.log, args(Some(&referral.to_string()), false, false)).await;
    assert_eq!(exit, Exit::Problems, "{text}");
    assert!(text.contains("FAILED:"), "{text}");
    assert!(text.contains("fix: "), "{text}");
    assert!(text.contains("open problem"), "{text}");

    let (text, exit) = audit_text(&s.log, args(None, true, false)).await;
    assert_eq!(exit, Exit::Problems, "{text}");
    assert!(text.contains(&format!("referral {referral}")), "{text}");
    assert!(text.contains("fix: "), "{text}");

    let (json_text, _) =
        audit_text(&s.log, args(Some(&opportunity.to_string()), false, true)).await;
    let json: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json["open_problem"], true);
    // The failure is the latest outcome (only the echo of the audit text written to the CRM
    // may follow it).
    let entries = json["entries"].as_array().unwrap();
    let failed = entries
        .iter()
        .rposition(|e| e["event"]["kind"] == "failed")
        .expect("the failure is in the timeline");
    assert!(
        entries[failed]["event"]["fix"]
            .as_str()
            .is_some_and(|f| !f.is_empty())
    );
    assert!(
        entries[failed + 1..]
            .iter()
            .all(|e| e["event"]["kind"] == "echo_skipped" || e["event"]["kind"] == "received"),
        "{json_text}"
    );

    // 5. The same counts as the metrics, without CloudWatch: `cosell status --json` counts the
    //    day's outcomes from the audit log under the outcome metrics' names, and
    //    `cosell audit --needs-attention --json` counts the records behind NeedsAttention.
    let (json_text, _) = audit_text(&s.log, args(None, true, true)).await;
    let attention: Value = serde_json::from_str(&json_text).unwrap();
    let open = attention["count"].as_u64().unwrap();
    assert!(open >= 1, "{json_text}");
    let status_args = cosell_cli::status::Args {
        table: s.world.table.clone(),
        queue_url: s.world.queues.queue_url.clone(),
        dlq_url: None,
        json: true,
    };
    let mut out = Vec::new();
    cosell_cli::status::run(
        &status_args,
        &s.world.aws,
        s.world.lookup(),
        Utc::now(),
        &mut out,
    )
    .await
    .unwrap();
    let status: Value = serde_json::from_slice(&out).unwrap();
    let outcomes = &status["outcomes_today"];
    for name in ["Created", "Updated", "NeedsAttention", "RetryEnqueued"] {
        assert!(
            outcomes[name].as_u64().is_some_and(|n| n >= 1),
            "{name}: {status}"
        );
    }
    assert!(
        outcomes["NeedsAttention"].as_u64().unwrap() >= open,
        "{status}"
    );
    let names: Vec<&str> = cosell_domain::metrics::OUTCOMES
        .iter()
        .map(|spec| spec.name)
        .collect();
    for name in outcomes.as_object().unwrap().keys() {
        assert!(
            names.contains(&name.as_str()),
            "{name} is no outcome metric"
        );
    }
}

#[tokio::test]
async fn unknown_ids_are_exit_1_and_bad_ids_are_refused() {
    let world = World::start(Crm::Dataverse).await;
    let log = DynamoAuditLog::new(world.aws.dynamodb.clone(), &world.table);
    let (text, exit) = audit_text(
        &log,
        args(Some("4111fffc-f9ee-4d53-bba6-569135228642"), false, false),
    )
    .await;
    assert_eq!(exit, Exit::Problems);
    assert!(text.contains("no audit entries"), "{text}");
    // "Not synced although no error": the two usual causes are named.
    assert!(
        text.contains("webhook registration with `cosell doctor`"),
        "{text}"
    );
    assert!(text.contains("Sync with Partner Center flag"), "{text}");
    assert!(audit::parse_target("not an id").is_err());
    let target = audit::parse_target("salesforce:0065g00000AbCdEAAV").unwrap();
    assert_eq!(target.crm_records.len(), 1);
}
