//! End to end: the real `crm-events` binary on the sandbox's local Lambda (five instances
//! behind a Function URL), against the sandbox
//! (Partner Center, Entra ID, Dataverse, Salesforce; in-process, on a free port) and DynamoDB +
//! SQS on moto — for Dataverse and for Salesforce.
//!
//! The sandbox's Dataverse webhook and Salesforce Outbound Message point at a relay of the test,
//! which forwards each delivery to the function's URL and hands the function's answer back to
//! the sandbox (so the sandbox's own redelivery rules apply: Dataverse retries once after a
//! 502/503/504, Salesforce until `<Ack>true</Ack>`), keeping every exchange for the assertions.
//! The relay can also *hold* a delivery's idempotency key in DynamoDB while forwarding it, as
//! another invocation of the function would, to make the function refuse it once.
//! Asynchronous effects are awaited by polling with bounded deadlines, never by sleeping.
//!
//! Prerequisite (`scripts/test.sh` provides it): moto, with `COSELL_MOTO_ENDPOINT` exported.
//! Without it the tests fail with instructions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request as AxumRequest, State};
use chrono::Utc;
use cosell_adapters::crm_wire::dataverse::RemoteExecutionContext;
use cosell_adapters::crm_wire::salesforce::OutboundMessage;
use cosell_adapters::{
    AwsClients, DynamoAuditLog, DynamoIdempotencyStore, QueueOptions, provision_queues,
    provision_table,
};
use cosell_domain::sync::{dataverse_change_key, salesforce_change_key};
use cosell_domain::{AuditEvent, IdempotencyKey};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use cosell_testkit::local_lambda::{self as e2e, LocalFunction, ScratchDir};
use serde_json::{Value, json};
use support::{Crm, ENDPOINT_SECRET, WEBHOOK_KEY, invites_microsoft};

/// The function's binary (and package) name.
const FUNCTION: &str = "crm-events";
/// How long a delivery (with the sandbox's redeliveries) may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dataverse_end_to_end_on_the_local_lambda() {
    end_to_end(Crm::Dataverse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn salesforce_end_to_end_on_the_local_lambda() {
    end_to_end(Crm::Salesforce).await;
}

// ---------------------------------------------------------------------------------------------
// The scenario (both CRMs)

async fn end_to_end(crm: Crm) {
    let started = Instant::now();
    let e = E2e::start(crm).await;
    e.step(started, "watch ready");

    // 1. A seller turns sync on: one referral, its id written back; the write-back's own
    // notification (the connector user's change) is an echo that calls Partner Center zero times.
    let first = e.seed(1, |_| {}).await;
    e.wait_exchanges(2).await;
    let referrals = e.referrals().await;
    assert_eq!(referrals.len(), 1, "{referrals:#?}");
    let referral_id = referrals[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        referrals[0]["externalReferenceId"],
        crm.record_id(&first).native().as_str()
    );
    assert_eq!(
        e.record(&first).await[crm.referral_field()].as_str(),
        Some(referral_id.as_str())
    );
    // The seed asks for Microsoft's help only in Dataverse: there the deal is Shared and
    // Microsoft is invited to its engagement with a second referral.
    let invitations = e.all_referrals().await.len() - referrals.len();
    let expected = usize::from(crm == Crm::Dataverse);
    assert_eq!(invitations, expected);
    assert_eq!(e.partner_center("POST").await, 1 + expected);
    // Every referral created (the invitation of Microsoft too) carries the record's Solution
    // Area, Solution Play and Partner Role, spelled as configured.
    for referral in e.all_referrals().await {
        let members = ["solutionArea", "solutionPlay", "partnerRole"];
        for (member, value) in members.into_iter().zip(crm.taxonomy()) {
            assert_eq!(referral[member], value, "{member}: {referral:#}");
        }
    }
    let audit = e.audit(&first).await;
    assert!(audit.contains(&AuditEvent::Created), "{audit:?}");
    assert!(audit.contains(&AuditEvent::EchoSkipped), "{audit:?}");
    e.step(started, "1 created, echo skipped");

    // 2. An update: one JSON Patch, no new referral.
    e.clear_requests().await;
    let since = e.exchanges().len();
    e.seed(1, |o| o[crm.amount_field()] = json!(40000)).await;
    // The seller's change (its audit-field write-back may raise an echo too, skipped).
    e.wait_until(since, |x| x.body.contains("40000")).await;
    assert_eq!(e.partner_center("PATCH").await, 1);
    assert_eq!(e.partner_center("POST").await, 0);
    let referral = e.referral(&referral_id).await;
    assert_eq!(
        referral["details"]["dealValue"].as_f64(),
        Some(40000.0),
        "{referral:#}"
    );
    // Partner Center started the deal accepted whatever stage the record was at (the Salesforce
    // seed is at the on-hold stage): that is no conflict to resolve on every update.
    let audit = e.audit(&first).await;
    assert!(
        !audit
            .iter()
            .any(|event| matches!(event, AuditEvent::ConflictResolved { .. })),
        "{audit:?}"
    );
    e.step(started, "2 updated");

    // 3. The same delivery again: zero Partner Center calls, still one referral.
    e.clear_requests().await;
    let delivered = e
        .exchanges()
        .into_iter()
        .skip(since)
        .find(|x| x.body.contains("40000"))
        .unwrap();
    let (status, _) = e
        .post(&delivered.path, &delivered.query, &delivered.body)
        .await;
    assert_eq!(status, 200);
    assert_eq!(e.partner_center_calls().await, 0);
    assert_eq!(e.referrals().await.len(), 1);
    e.step(started, "3 redelivery");

    // 4. Missing solution, a country that is not ISO 3166-1 alpha-2, no customer contact while
    // Microsoft's help is asked for: no Partner Center call, and the record's audit field names
    // the field and the fix.
    e.clear_requests().await;
    // A missing Solution Area and an unknown Partner Role: the same, the message naming the
    // CRM field, the Partner Center member and the allowed values.
    let cases: [(u8, &str, &str, &[&str]); 5] = [
        (2, "missing solution", crm.solutions_field(), &[]),
        (4, "country USA", crm.country_field(), &[]),
        (5, "no contact", crm.contact_field(), &[]),
        (
            6,
            "missing solution area",
            crm.solution_area_field(),
            &[
                "\"solutionArea\"",
                "\"AI Business Solutions\", \"Cloud & AI Platforms\", \"Security\"",
            ],
        ),
        (
            7,
            "unknown partner role",
            crm.partner_role_field(),
            &[
                "Partner Role \"Reseller\" is not allowed",
                "\"partnerRole\"",
                "\"Advisory\", \"Implementation\", \"Managed Services\", \"Licensing\"",
            ],
        ),
    ];
    for (n, case, field, says) in cases {
        let since = e.exchanges().len();
        let country = if n == 4 { "USA" } else { "US" };
        let incomplete = e
            .seed_with(n, country, |o| {
                o[crm.help_field()] = json!("Proof of concept or demo");
                let o = o.as_object_mut().unwrap();
                match n {
                    2 => o.remove(crm.solutions_field()),
                    5 => o.remove("_parentcontactid_value"),
                    6 => o.remove(crm.solution_area_field()),
                    7 => o.insert(crm.partner_role_field().into(), json!("Reseller")),
                    _ => None,
                };
            })
            .await;
        e.wait_until(since, |x| x.body.contains(&incomplete)).await;
        let audit_field = e.record(&incomplete).await[crm.audit_field()]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(audit_field.contains(field), "{case}: {audit_field}");
        assert!(audit_field.contains("Fix:"), "{case}: {audit_field}");
        for text in says {
            assert!(audit_field.contains(text), "{case}: {text}: {audit_field}");
        }
    }
    assert_eq!(e.partner_center_calls().await, 0);
    assert_eq!(e.referrals().await.len(), 1);
    e.step(started, "4 validation");

    // 5. Rejected requests: wrong secret → 401, malformed → 400; nothing called.
    e.clear_requests().await;
    let genuine = e.exchanges()[0].clone();
    let (wrong_path, wrong_query) = match crm {
        Crm::Dataverse => (genuine.path.clone(), "code=wrong".to_owned()),
        Crm::Salesforce => (
            genuine.path.replace(ENDPOINT_SECRET, "wrong"),
            String::new(),
        ),
    };
    assert_eq!(
        e.post(&wrong_path, &wrong_query, &genuine.body).await.0,
        401
    );
    let malformed: &[&str] = match crm {
        Crm::Dataverse => &["{", "[]"],
        Crm::Salesforce => &["<not-xml"],
    };
    for body in malformed {
        let (status, text) = e.post(&genuine.path, &genuine.query, body).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    if crm == Crm::Salesforce {
        let xxe = genuine
            .body
            .replacen(
                "<soapenv:Envelope",
                "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><soapenv:Envelope",
                1,
            )
            .replacen("<sf:Name>", "<sf:Name>&xxe;", 1);
        let (status, text) = e.post(&genuine.path, &genuine.query, &xxe).await;
        assert_eq!(status, 400, "{text}");
        assert!(!text.contains("root:"), "{text}");
    }
    assert_eq!(e.partner_center_calls().await, 0);
    e.step(started, "5 rejected");

    // 6. The CRM's redelivery after the function refused a delivery it could not take on
    // (another invocation held it): still exactly one referral per opportunity.
    match crm {
        Crm::Dataverse => dataverse_retry_after_503(&e).await,
        Crm::Salesforce => salesforce_batch_of_100_with_one_held(&e).await,
    }
    e.step(started, "6 redelivery after a refusal");
    assert!(!e.watch.instance_exited(), "{}", e.watch.log_tail(40));
    assert_metrics(&e.watch, crm);
}

/// The metrics: one CloudWatch EMF document per invocation on the instances' stdout (the local
/// Lambda's log file, as CloudWatch Logs receives it on AWS), of this function and CRM, counting
/// every outcome the run produced (step 6's refusal: another invocation held the change) and the
/// calls per service.
fn assert_metrics(watch: &LocalFunction, crm: Crm) {
    use cosell_testkit::emf;
    let crm_calls = match crm {
        Crm::Dataverse => "DataverseCalls",
        Crm::Salesforce => "SalesforceCalls",
    };
    // (No Dataverse step of this run is a completed duplicate: its redelivery meets the change
    // still in progress.)
    let duplicate = match crm {
        Crm::Dataverse => "InProgress",
        Crm::Salesforce => "DuplicateSkipped",
    };
    let totals = emf::assert_counted(
        &watch.emf_documents(),
        FUNCTION,
        crm.name(),
        &[
            "Created",
            "EchoSkipped",
            "Updated",
            duplicate,
            "NeedsAttention",
            "InProgress",
            "Rejected",
            "PartnerCenterCalls",
            crm_calls,
            "ApiCallsToday",
        ],
    );
    assert!(totals["NeedsAttention"] >= 5.0, "{totals:?}");
    assert!(totals["Rejected"] >= 2.0, "{totals:?}");
}

/// Dataverse retries a delivery once after a 503: the first attempt finds the key held, the
/// retry creates the referral.
async fn dataverse_retry_after_503(e: &E2e) {
    let before = e.referrals().await.len();
    e.hold_next(1);
    let since = e.exchanges().len();
    let id = e.seed(3, |_| {}).await;
    // The held delivery is the first about the record (an echo of the write-back can only
    // follow a success); its attempts are the exchanges with its body.
    let held = e
        .wait_until(since, |x| x.body.contains(&id) && x.status == 503)
        .await
        .into_iter()
        .find(|x| x.body.contains(&id) && x.status == 503)
        .unwrap()
        .body;
    let exchanges = e
        .wait_until(since, |x| x.body == held && x.status == 200)
        .await;
    let attempts: Vec<&Exchange> = exchanges[since..]
        .iter()
        .filter(|x| x.body == held)
        .collect();
    let statuses: Vec<u16> = attempts.iter().map(|x| x.status).collect();
    assert_eq!(statuses, [503, 200], "{attempts:#?}");
    assert!(attempts[0].answer.contains("in_progress"), "{attempts:#?}");
    let referrals = e.referrals().await;
    assert_eq!(referrals.len(), before + 1);
    let linked: Vec<_> = referrals
        .iter()
        .filter(|r| r["externalReferenceId"] == id.as_str())
        .collect();
    assert_eq!(linked.len(), 1, "{referrals:#?}");
}

/// A Salesforce message of 100 notifications, one held by another invocation: SOAP fault, no
/// Ack; Salesforce's redelivery completes it with 100 referrals, none twice.
async fn salesforce_batch_of_100_with_one_held(e: &E2e) {
    let before = e.referrals().await.len();
    e.webhooks(false).await;
    let mut ids = Vec::new();
    for n in 10..110 {
        ids.push(e.seed(n, |_| {}).await);
    }
    e.webhooks(true).await;
    e.clear_requests().await;
    e.hold_next(50);
    let since = e.exchanges().len();
    e.sandbox_post(
        "/_sandbox/salesforce/outbound-messages/batch",
        json!({ "ids": ids }),
    )
    .await;
    let of_100 =
        |x: &Exchange| OutboundMessage::parse(&x.body).is_ok_and(|m| m.notifications.len() == 100);
    let exchanges = e.wait_until(since, |x| of_100(x) && x.status == 200).await;
    let batch: Vec<&Exchange> = exchanges[since..].iter().filter(|x| of_100(x)).collect();
    assert!(batch.len() >= 2, "{batch:#?}");
    assert_eq!(batch[0].status, 500, "{}", batch[0].answer);
    assert!(batch[0].answer.contains("<soapenv:Fault>"));
    assert!(!batch[0].answer.contains("<Ack>true</Ack>"));
    let last = batch.last().unwrap();
    assert!(last.answer.contains("<Ack>true</Ack>"), "{}", last.answer);
    assert_eq!(
        last.body, batch[0].body,
        "Salesforce resent the same message"
    );
    // The referral count and the POSTs say each notification was applied once.
    let referrals = e.referrals().await;
    assert_eq!(referrals.len(), before + 100);
    assert_eq!(e.partner_center("POST").await, 100);
    for id in &ids {
        assert!(
            e.record(id).await[Crm::Salesforce.referral_field()].is_string(),
            "{id} has no referral id"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// One delivery the relay forwarded, with the function's answer.
#[derive(Debug, Clone)]
struct Exchange {
    path: String,
    query: String,
    body: String,
    status: u16,
    answer: String,
}

/// The relay between the sandbox and the function.
#[derive(Clone)]
struct Relay {
    function_url: String,
    http: reqwest::Client,
    idempotency: Arc<DynamoIdempotencyStore>,
    crm: Crm,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    /// Hold the key of the n-th notification (1-based) of the next delivery while forwarding it.
    hold: Arc<Mutex<Option<usize>>>,
}

impl Relay {
    /// The idempotency key of the `n`-th notification of a delivery body.
    fn key(&self, body: &str, n: usize) -> IdempotencyKey {
        match self.crm {
            Crm::Dataverse => {
                let context = RemoteExecutionContext::parse(body).unwrap();
                let record = self.crm.record_id(&context.primary_entity_id.to_string());
                dataverse_change_key(&context.operation_id.unwrap().to_string(), &record).unwrap()
            }
            Crm::Salesforce => {
                let message = OutboundMessage::parse(body).unwrap();
                salesforce_change_key(&message.notifications[n - 1].id).unwrap()
            }
        }
    }
}

async fn relay(State(relay): State<Relay>, req: AxumRequest) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let held = relay
        .hold
        .lock()
        .unwrap()
        .take()
        .map(|n| relay.key(&body, n));
    if let Some(key) = &held {
        let now = Utc::now();
        relay
            .idempotency
            .try_acquire(key, now, now + chrono::Duration::hours(1))
            .await
            .unwrap();
    }
    let mut url = format!("{}{}", relay.function_url, path.trim_start_matches('/'));
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let mut request = relay.http.post(url).body(body.clone());
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    // A transport failure is answered 502 (the sandbox redelivers) and kept as status 0.
    let (status, content_type, answer) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").cloned();
            (
                status,
                content_type,
                response.text().await.unwrap_or_default(),
            )
        }
        Err(error) => (0, None, error.to_string()),
    };
    if let Some(key) = &held {
        relay.idempotency.try_release(key).await.unwrap();
    }
    relay.exchanges.lock().unwrap().push(Exchange {
        path,
        query,
        body,
        status,
        answer: answer.clone(),
    });
    let mut out = axum::response::Response::new(axum::body::Body::from(answer));
    *out.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    if let Some(content_type) = content_type {
        out.headers_mut().insert("content-type", content_type);
    }
    out
}

struct E2e {
    crm: Crm,
    watch: LocalFunction,
    sandbox: RunningSandbox,
    http: reqwest::Client,
    relay: Relay,
    audit: DynamoAuditLog,
    // Dropped last: it holds the watch log (kept when the test fails).
    _scratch: ScratchDir,
}

impl E2e {
    async fn start(crm: Crm) -> Self {
        let moto = e2e::require_prerequisites();
        let region = cosell_testkit::moto::region();
        let aws = AwsClients::from_conf(&cosell_testkit::moto::sdk_config_at(&moto).await);
        let name = cosell_testkit::unique(&format!("cosell-e2e-crm-{}", crm.name()));
        provision_table(&aws.dynamodb, &name)
            .await
            .unwrap_or_else(|error| panic!("provision table {name} in moto ({moto}): {error}"));
        let queues = provision_queues(&aws.sqs, &name, &QueueOptions::default())
            .await
            .unwrap_or_else(|error| panic!("provision queues {name} in moto ({moto}): {error}"));
        let sandbox = cosell_sandbox::spawn(SandboxConfig {
            // Room between the refusal and the redelivery; bounded either way.
            retry_backoff: Duration::from_millis(200),
            ..SandboxConfig::default()
        })
        .await
        .expect("start the sandbox");
        let scratch = ScratchDir::new(&format!("cosell-e2e-crm-{}", crm.name()));
        let base = sandbox.base_url.clone();
        let mut env: HashMap<String, String> = crm
            .environment(&base)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        env.extend(
            [
                ("STORE", "dynamodb".to_owned()),
                ("TABLE_NAME", name.clone()),
                ("RETRY_QUEUE_URL", queues.queue_url.clone()),
                ("AWS_ENDPOINT_URL", moto.clone()),
                ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
                ("AWS_REGION", region),
                ("RUST_LOG", "info".to_owned()),
            ]
            .map(|(name, value)| (name.to_owned(), value)),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let watch = LocalFunction::start(
            FUNCTION,
            env!("CARGO_BIN_EXE_crm-events"),
            &env,
            &scratch.path("logs"),
        )
        .await;

        let relay = Relay {
            function_url: watch.url(),
            http: http.clone(),
            idempotency: Arc::new(DynamoIdempotencyStore::new(aws.dynamodb.clone(), &name)),
            crm,
            exchanges: Arc::default(),
            hold: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(self::relay)
            .with_state(relay.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let e = Self {
            crm,
            watch,
            sandbox,
            http,
            relay,
            audit: DynamoAuditLog::new(aws.dynamodb.clone(), &name),
            _scratch: scratch,
        };
        match crm {
            Crm::Dataverse => {
                e.sandbox_put(
                    "/_sandbox/dataverse/webhook",
                    json!({"url": format!("{relay_url}/dataverse"),
                           "authtype": "WebhookKey", "authvalue": WEBHOOK_KEY}),
                )
                .await;
            }
            Crm::Salesforce => {
                let mut definition = e.sandbox_get("/_sandbox/salesforce/outbound-message").await;
                definition["url"] = json!(format!("{relay_url}/salesforce/{ENDPOINT_SECRET}"));
                e.sandbox_put("/_sandbox/salesforce/outbound-message", definition)
                    .await;
            }
        }
        e
    }

    fn step(&self, started: Instant, what: &str) {
        eprintln!(
            "[{}] {what} after {:.1} s",
            self.crm.name(),
            started.elapsed().as_secs_f64()
        );
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url)
    }

    async fn sandbox_get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }

    async fn sandbox_put(&self, path: &str, body: Value) {
        let response = self
            .http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            response.text().await.unwrap()
        );
    }

    async fn sandbox_post(&self, path: &str, body: Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "POST {path}: {status} {}",
            response.text().await.unwrap()
        );
    }

    /// Switches the CRM's notifications off (recorded, not sent) or on.
    async fn webhooks(&self, enabled: bool) {
        self.sandbox_post(
            "/_sandbox/webhooks",
            json!({ "service": self.crm.name(), "enabled": enabled }),
        )
        .await;
    }

    /// POSTs a request of the test's own to the function (path as the relay saw it).
    async fn post(&self, path: &str, query: &str, body: &str) -> (u16, String) {
        let mut url = format!("{}{}", self.watch.url(), path.trim_start_matches('/'));
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let content_type = match self.crm {
            Crm::Dataverse => "application/json",
            Crm::Salesforce => "text/xml; charset=utf-8",
        };
        let response = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    fn hold_next(&self, notification: usize) {
        *self.relay.hold.lock().unwrap() = Some(notification);
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.relay.exchanges.lock().unwrap().clone()
    }

    /// Waits (bounded) until the relay forwarded `count` deliveries in all.
    async fn wait_exchanges(&self, count: usize) -> Vec<Exchange> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let exchanges = self.exchanges();
            if exchanges.len() >= count {
                return exchanges;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} deliveries after {} s: {exchanges:#?}\n{}",
                exchanges.len(),
                DELIVERY_TIMEOUT.as_secs(),
                self.watch.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until a delivery after the first `since` satisfies `done`.
    async fn wait_until(&self, since: usize, done: impl Fn(&Exchange) -> bool) -> Vec<Exchange> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let exchanges = self.exchanges();
            if exchanges.iter().skip(since).any(&done) {
                return exchanges;
            }
            assert!(
                Instant::now() < deadline,
                "no such delivery after {} s: {:#?}\n{}",
                DELIVERY_TIMEOUT.as_secs(),
                &exchanges[since.min(exchanges.len())..],
                self.watch.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Seeds the `n`th opportunity (with its account and contact) as the seller, sync on;
    /// `edit` changes it first. Returns its id.
    async fn seed(&self, n: u8, edit: impl FnOnce(&mut Value)) -> String {
        self.seed_with(n, "US", edit).await
    }

    /// [`Self::seed`] with the account's country set to `country`.
    async fn seed_with(&self, n: u8, country: &str, edit: impl FnOnce(&mut Value)) -> String {
        let (mut puts, id) = self.crm.seed(n, country);
        let (path, mut opportunity) = puts.pop().unwrap();
        for (path, body) in puts {
            self.sandbox_put(&path, body).await;
        }
        if let Ok(mut current) = self.try_record(&id).await {
            // An update, written by the seller (the Salesforce sandbox takes the writer from
            // the record when it names one).
            current.as_object_mut().unwrap().remove("LastModifiedById");
            opportunity = current;
        }
        edit(&mut opportunity);
        self.sandbox_put(&path, opportunity).await;
        id
    }

    async fn try_record(&self, id: &str) -> Result<Value, u16> {
        let path = self.crm.opportunity_path(id);
        let response = self.http.get(self.url(&path)).send().await.unwrap();
        if response.status().is_success() {
            Ok(response.json().await.unwrap())
        } else {
            Err(response.status().as_u16())
        }
    }

    async fn record(&self, id: &str) -> Value {
        self.try_record(id)
            .await
            .unwrap_or_else(|status| panic!("opportunity {id}: HTTP {status}"))
    }

    /// The referrals of deals (the invitations of Microsoft of Shared deals left out).
    async fn referrals(&self) -> Vec<Value> {
        let mut all = self.all_referrals().await;
        all.retain(|referral| !invites_microsoft(referral));
        all
    }

    async fn all_referrals(&self) -> Vec<Value> {
        self.sandbox_get("/_sandbox/partner-center/referrals").await["referrals"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn referral(&self, id: &str) -> Value {
        self.referrals()
            .await
            .into_iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no referral {id}"))
    }

    async fn partner_center_log(&self) -> Vec<Value> {
        self.sandbox_get("/_sandbox/requests?service=partner-center")
            .await["requests"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn partner_center_calls(&self) -> usize {
        self.partner_center_log().await.len()
    }

    /// Referrals API calls with `method` (token requests are Entra's, not counted).
    async fn partner_center(&self, method: &str) -> usize {
        self.partner_center_log()
            .await
            .iter()
            .filter(|r| r["method"] == method)
            .count()
    }

    async fn clear_requests(&self) {
        self.http
            .delete(self.url("/_sandbox/requests"))
            .send()
            .await
            .unwrap();
    }

    /// The audit events of an opportunity, oldest first.
    async fn audit(&self, id: &str) -> Vec<AuditEvent> {
        let mut entries = self
            .audit
            .try_by_crm_record(&self.crm.record_id(id), 100)
            .await
            .unwrap();
        entries.reverse();
        entries.into_iter().map(|entry| entry.event).collect()
    }
}
