//! End to end: the real `partner-center-events` binary (built by `cargo test` with the
//! `sandbox` feature of the adapters, which its dev-dependencies enable) on the sandbox's local
//! Lambda (five instances behind a Function URL), against the sandbox (Partner Center, Entra ID, Dataverse, Salesforce;
//! in-process, on a free port) and DynamoDB + SQS on moto — for Dataverse and for Salesforce.
//!
//! The function URL is registered through the sandbox's webhook registration API (app-only
//! token from its Entra endpoint), so the sandbox delivers the signed events itself; the test
//! also POSTs signed requests of its own (re-deliveries, forged and malformed requests) to the
//! same URL. Asynchronous effects are awaited by polling with bounded deadlines, never by
//! sleeping.
//!
//! The function serves one CRM per process, so each test has its own sandbox, table, queues
//! and local Lambda; the two run in parallel. A run takes about 40 s, most of it the 30 s
//! `DelaySeconds` of the first retry job (the other steps run meanwhile).
//!
//! Prerequisite (`scripts/test.sh` provides it): moto, with `COSELL_MOTO_ENDPOINT` exported.
//! Without it the tests fail with instructions: they never skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cosell_adapters::{
    AwsClients, DynamoAuditLog, DynamoLinkStore, QueueOptions, SqsQueue, provision_queues,
    provision_table,
};
use cosell_domain::{AuditEvent, ReferralId, RetryJob, RetrySource};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::{
    INTERMEDIATE_CERT_PEM, LEAF_CERT_PATH, Pki, ROGUE_CERT_PATH, ROOT_CERT_PEM,
    SALESFORCE_APP_KEY_PEM, Signer,
};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use cosell_testkit::local_lambda::{self as e2e, LocalFunction, ScratchDir};
use reqwest::Method;
use serde_json::{Value, json};

/// The function's binary (and package) name.
const FUNCTION: &str = "partner-center-events";
/// How long a sandbox delivery may take to finish (ten attempts of a refused event included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the delayed retry job (30 s `DelaySeconds` for the first retry) may take to become
/// receivable.
const RETRY_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// The four referral events the connector registers for.
const REFERRAL_EVENTS: [&str; 4] = [
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
];

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
// ---------------------------------------------------------------------------------------------

async fn end_to_end(crm: Crm) {
    let started = Instant::now();
    let e = E2e::start(crm).await;
    e.step(started, "watch ready");

    // Only `referral-created` at first: the echo of our write-back is then sent on cue below
    // (step 3), so what it costs can be told from the request log.
    e.register(&["referral-created"]).await;

    // 1. A Microsoft-initiated referral becomes one opportunity, linked back.
    let since = e.deliveries().await.len();
    let a = e.microsoft_referral().await;
    let a_id = id_of(&a);
    let delivered = e.wait_deliveries(since, 1).await;
    assert_accepted_first_time(&delivered, "referral-created");
    let opportunity = e.the_opportunity(&a_id).await;
    e.assert_mapped(&opportunity, &a).await;
    let crm_id = opportunity[crm.id_field()].as_str().unwrap().to_owned();
    assert_eq!(
        e.referral(&a_id).await["externalReferenceId"],
        crm_id.as_str(),
        "the referral's externalReferenceId is the opportunity id"
    );
    let link = e.link(&a_id).await.expect("a link in DynamoDB");
    assert_eq!(link.crm.native(), crm_id);
    let events = e.audit(&a_id).await;
    assert!(events.contains(&AuditEvent::Created), "{events:?}");
    assert!(events.contains(&AuditEvent::WrittenBack), "{events:?}");
    e.step(started, "1 created");

    // 2. Re-deliveries of the exact signed request: 5 sequential, 5 concurrent.
    let redelivery = e.signed_event(
        "referral-created",
        &a_id,
        &event_time(a["createdDateTime"].as_str().unwrap()),
        Signer::Leaf,
    );
    let keys_before = e.table_keys().await;
    e.clear_requests().await;
    for _ in 0..5 {
        assert_eq!(
            e.post(&redelivery).await,
            (200, json!({ "status": "duplicate_skipped" }))
        );
    }
    for answer in e.post_concurrently(&redelivery, 5).await {
        assert_eq!(answer, (200, json!({ "status": "duplicate_skipped" })));
    }
    assert_eq!(e.requests().await, Vec::<Value>::new(), "no service call");
    assert_eq!(e.the_opportunity(&a_id).await, opportunity);
    let duplicates = e
        .audit(&a_id)
        .await
        .iter()
        .filter(|event| **event == AuditEvent::DuplicateSkipped)
        .count();
    assert_eq!(
        duplicates, 0,
        "a re-delivery is answered by the failed write taking its key, unaudited"
    );
    let mut new_keys = e.table_keys().await;
    new_keys.retain(|key| !keys_before.contains(key));
    assert!(
        new_keys.is_empty(),
        "re-deliveries write nothing: {new_keys:?}"
    );
    e.step(started, "2 duplicates");

    // 3. The echo of our write-back: the `referral-updated` the externalReferenceId patch
    // raised (same `ResourceChangeUtcDate`), sent by the sandbox now that it is registered.
    e.register(&REFERRAL_EVENTS).await;
    e.clear_requests().await;
    let since = e.deliveries().await.len();
    e.control(
        Method::POST,
        "/_sandbox/partner-center/events",
        Some(json!({ "eventName": "referral-updated", "referralId": a_id })),
    )
    .await;
    assert_accepted_first_time(&e.wait_deliveries(since, 1).await, "referral-updated");
    let calls = e.calls().await;
    assert_eq!(
        calls,
        Vec::<(String, String)>::new(),
        "the echo is known by its ResourceChangeUtcDate: no call at all"
    );
    assert!(e.audit(&a_id).await.contains(&AuditEvent::EchoSkipped));
    assert_eq!(e.the_opportunity(&a_id).await, opportunity);
    e.step(started, "3 echo");

    // 4. A change of the referral updates the opportunity.
    e.clear_requests().await;
    let since = e.deliveries().await.len();
    e.change_referral(&a_id, |referral| {
        referral["details"]["dealValue"] = json!(75000);
        referral["details"]["notes"] = json!("The customer added a second plant.");
    })
    .await;
    assert_accepted_first_time(&e.wait_deliveries(since, 1).await, "referral-updated");
    let updated = e.the_opportunity(&a_id).await;
    assert_eq!(updated[crm.id_field()], crm_id.as_str());
    assert_eq!(
        updated[crm.amount_field()].as_f64(),
        Some(75000.0),
        "{updated:#}"
    );
    assert_eq!(
        updated[crm.notes_field()],
        "The customer added a second plant."
    );
    let partner_center: Vec<_> = e
        .calls()
        .await
        .into_iter()
        .filter(|(service, _)| service == "partner-center")
        .collect();
    assert_eq!(
        partner_center,
        vec![("partner-center".to_owned(), "GET".to_owned())],
        "no write-back: the referral already names the opportunity"
    );
    assert!(e.audit(&a_id).await.contains(&AuditEvent::Updated));
    e.step(started, "4 updated");

    // 5. Rejected requests write nothing and call nothing.
    let keys_before = e.table_keys().await;
    e.clear_requests().await;
    let changed = "2030-01-01T00:00:00.0000001+00:00";
    let genuine = e.signed_event("referral-updated", &a_id, changed, Signer::Leaf);
    let mut wrong_signature = genuine.clone();
    wrong_signature.body = genuine.body.replace("2030", "2031");
    let rogue = e.signed_event("referral-updated", &a_id, changed, Signer::Rogue);
    let mut foreign_host = genuine.clone();
    foreign_host.certificate_url = format!("https://pcnotifications.example.net{LEAF_CERT_PATH}");
    let mut other_port = genuine.clone();
    other_port.certificate_url = format!("http://127.0.0.1:{}{LEAF_CERT_PATH}", e2e::free_port());
    let mut unsigned = genuine.clone();
    unsigned.signature = None;
    let malformed = e.signed_raw(
        "EventName=referral-updated&ResourceUri=not-json",
        Signer::Leaf,
    );
    for (name, request, status, code) in [
        ("wrong signature", &wrong_signature, 401, "unauthorized"),
        ("rogue certificate", &rogue, 401, "unauthorized"),
        (
            "certificate host not allowed",
            &foreign_host,
            401,
            "unauthorized",
        ),
        (
            "plain-http port not allowed",
            &other_port,
            401,
            "unauthorized",
        ),
        (
            "missing signature",
            &unsigned,
            400,
            "missing_signature_headers",
        ),
        ("malformed body", &malformed, 400, "malformed_body"),
    ] {
        let (answered, body) = e.post(request).await;
        assert_eq!(answered, status, "{name}: {body}");
        assert_eq!(body["code"], code, "{name}: {body}");
    }
    // The sandbox's own tampered and rogue-signed deliveries: refused on every attempt.
    let since = e.deliveries().await.len();
    for (tamper, signer) in [(true, "leaf"), (false, "rogue")] {
        let request = json!({
            "eventName": "referral-updated",
            "referralId": a_id,
            "tamper": tamper,
            "signer": signer,
        });
        e.control(
            Method::POST,
            "/_sandbox/partner-center/events",
            Some(request),
        )
        .await;
    }
    for delivery in e.wait_deliveries(since, 2).await {
        assert_eq!(delivery["delivered"], false, "{delivery:#}");
        let attempts = delivery["attempts"].as_array().unwrap();
        assert!(
            !attempts.is_empty() && attempts.iter().all(|a| a["status"] == 401),
            "{delivery:#}"
        );
    }
    assert_eq!(e.requests().await, Vec::<Value>::new(), "no service call");
    assert_eq!(e.table_keys().await, keys_before, "nothing in DynamoDB");
    assert_eq!(e.the_opportunity(&a_id).await, updated);
    e.assert_queue_empty().await;
    e.step(started, "5 rejected");

    // 6. The CRM answers 503: the delivery is answered 200 and a retry job is queued.
    e.control(
        Method::POST,
        "/_sandbox/faults",
        Some(json!({ "service": crm.service(), "status": 503, "count": 1000 })),
    )
    .await;
    let since = e.deliveries().await.len();
    let d = e.microsoft_referral().await;
    let d_id = id_of(&d);
    assert_accepted_first_time(&e.wait_deliveries(since, 1).await, "referral-created");
    e.control(Method::DELETE, "/_sandbox/faults", None).await;
    assert!(e.opportunities(&d_id).await.is_empty());
    assert!(e.referral(&d_id).await["externalReferenceId"].is_null());
    assert!(
        e.audit(&d_id)
            .await
            .contains(&AuditEvent::RetryEnqueued { attempt: 1 })
    );
    // Received at the end, once its delay is over.
    e.step(started, "6 retry enqueued");

    // 7. Five concurrent first deliveries of one event (the sandbox's own delivery switched
    // off): one opportunity; one invocation runs the sync, the others find the delivery in
    // progress or done (checked at the end, so the steps after this one still run).
    e.webhooks(false).await;
    let b = e.microsoft_referral().await;
    let b_id = id_of(&b);
    let first = e.signed_event(
        "referral-created",
        &b_id,
        &event_time(b["createdDateTime"].as_str().unwrap()),
        Signer::Leaf,
    );
    let answers = e.post_concurrently(&first, 5).await;
    e.webhooks(true).await;
    let b_opportunity = e.the_opportunity(&b_id).await;
    assert_eq!(
        e.referral(&b_id).await["externalReferenceId"],
        b_opportunity[crm.id_field()]
    );
    let lock_held = answers
        .iter()
        .filter(|answer| **answer == (200, json!({ "status": "created" })))
        .count()
        == 1
        && answers.iter().all(|answer| {
            [
                (200, json!({ "status": "created" })),
                (409, json!({ "status": "in_progress" })),
                (200, json!({ "status": "duplicate_skipped" })),
            ]
            .contains(answer)
        });
    let in_progress = answers.iter().filter(|answer| answer.0 == 409).count();
    e.step(started, "7 concurrent first deliveries");

    // 8. A permanent failure (the org lacks the "Sync with Partner Center" field): 200, no
    // retry, and an audit entry that names the field and the fix.
    let field = crm.sync_field();
    e.control(Method::DELETE, &crm.remove_field_path(field), None)
        .await;
    let since = e.deliveries().await.len();
    let c = e.microsoft_referral().await;
    let c_id = id_of(&c);
    assert_accepted_first_time(&e.wait_deliveries(since, 1).await, "referral-created");
    assert!(e.opportunities(&c_id).await.is_empty());
    let failures: Vec<(String, String)> = e
        .audit(&c_id)
        .await
        .into_iter()
        .filter_map(|event| match event {
            AuditEvent::Failed { reason, fix } => Some((reason, fix)),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (reason, fix) = &failures[0];
    assert!(reason.contains(field), "the reason names {field}: {reason}");
    assert!(
        fix.contains("field mapping"),
        "the fix says what to do: {fix}"
    );
    let attention = e.audit_log().try_needs_attention(50).await.unwrap();
    assert!(
        attention
            .iter()
            .any(|entry| entry.referral_id.as_ref().map(ToString::to_string) == Some(c_id.clone())),
        "{attention:?}"
    );
    e.step(started, "8 needs attention");

    // 6 (end). The retry job of the 503, once its delay is over; and (7, end) one follow-up per
    // copy that found the delivery in progress: the delivery itself (attempt 0), visible after
    // that copy's deadline, in case the holder had died.
    let (retries, follow_ups): (Vec<RetryJob>, Vec<RetryJob>) = e
        .receive_retry_jobs(1 + in_progress)
        .await
        .into_iter()
        .partition(|job| job.attempt == 1);
    let [job] = retries.as_slice() else {
        panic!("one retry job of step 6: {retries:#?}");
    };
    assert_eq!(job.source, RetrySource::PartnerCenter);
    assert_eq!(job.payload["EventName"], "referral-created");
    assert!(
        job.payload["ResourceUri"]
            .as_str()
            .is_some_and(|uri| uri.ends_with(&d_id)),
        "{job:?}"
    );
    assert_eq!(follow_ups.len(), in_progress, "{follow_ups:#?}");
    for follow_up in &follow_ups {
        assert_eq!(follow_up.attempt, 0, "{follow_up:?}");
        assert_eq!(follow_up.payload["EventName"], "referral-created");
        assert!(
            follow_up.payload["ResourceUri"]
                .as_str()
                .is_some_and(|uri| uri.ends_with(&b_id)),
            "{follow_up:?}"
        );
    }
    e.assert_queue_empty().await;
    e.step(started, "6 retry job and 7 follow-ups received");

    // Across the run: two opportunities (A and B), no crashed instance.
    let all = e.all_opportunities().await;
    let ours: BTreeSet<String> = all
        .iter()
        .filter_map(|row| row[crm.referral_field()].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        ours,
        BTreeSet::from([a_id.clone(), b_id.clone()]),
        "{all:#?}"
    );
    assert!(
        !e.watch.instance_exited(),
        "a function instance exited during the run\n{}",
        e.watch.log_tail(40)
    );
    assert_metrics(&e.watch, crm);
    assert!(
        lock_held,
        "step 7: more than one invocation ran the sync of one delivery, the idempotency \
         record's in-progress lock did not hold: {answers:?}. (A handler that takes a \
         wrong `Lambda-Runtime-Deadline-Ms` as the invocation deadline writes an in-progress \
         record that has already expired.)"
    );
    e.step(started, "done");
}

/// The metrics: one CloudWatch EMF document per invocation on the instances' stdout (the local
/// Lambda's log file, as CloudWatch Logs receives it on AWS), of this function and CRM, counting
/// every outcome the run produced and the calls per service.
fn assert_metrics(watch: &LocalFunction, crm: Crm) {
    use cosell_testkit::emf;
    let crm_calls = match crm {
        Crm::Dataverse => "DataverseCalls",
        Crm::Salesforce => "SalesforceCalls",
    };
    let totals = emf::assert_counted(
        &watch.emf_documents(),
        FUNCTION,
        crm.name(),
        &[
            "Created",
            "DuplicateSkipped",
            "EchoSkipped",
            "Updated",
            "RetryEnqueued",
            "NeedsAttention",
            "Rejected",
            "PartnerCenterCalls",
            crm_calls,
            "ApiCallsToday",
        ],
    );
    assert!(totals["DuplicateSkipped"] >= 10.0, "{totals:?}");
    assert!(totals["Created"] >= 2.0, "{totals:?}");
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crm {
    Dataverse,
    Salesforce,
}

impl Crm {
    fn name(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }

    /// The sandbox's request-log service of the CRM API (also its fault-injection name).
    fn service(self) -> &'static str {
        self.name()
    }

    /// Request-log services that are calls to the CRM.
    fn services(self) -> &'static [&'static str] {
        match self {
            Self::Dataverse => &["dataverse"],
            Self::Salesforce => &["salesforce", "salesforce-auth"],
        }
    }

    fn opportunities_path(self) -> &'static str {
        match self {
            Self::Dataverse => "/_sandbox/dataverse/opportunities",
            Self::Salesforce => "/_sandbox/salesforce/Opportunity",
        }
    }

    fn rows_member(self) -> &'static str {
        match self {
            Self::Dataverse => "value",
            Self::Salesforce => "records",
        }
    }

    fn referral_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralidentifier",
            Self::Salesforce => "Referral_Identifier__c",
        }
    }

    fn id_field(self) -> &'static str {
        match self {
            Self::Dataverse => "opportunityid",
            Self::Salesforce => "Id",
        }
    }

    fn name_field(self) -> &'static str {
        match self {
            Self::Dataverse => "name",
            Self::Salesforce => "Name",
        }
    }

    fn amount_field(self) -> &'static str {
        match self {
            Self::Dataverse => "estimatedvalue",
            Self::Salesforce => "Amount",
        }
    }

    fn closing_date_field(self) -> &'static str {
        match self {
            Self::Dataverse => "estimatedclosedate",
            Self::Salesforce => "CloseDate",
        }
    }

    fn notes_field(self) -> &'static str {
        match self {
            Self::Dataverse => "description",
            Self::Salesforce => "Description",
        }
    }

    fn sync_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralsync",
            Self::Salesforce => "Sync_with_Partner_Center__c",
        }
    }

    fn remove_field_path(self, field: &str) -> String {
        match self {
            Self::Dataverse => format!("/_sandbox/dataverse/schema/opportunity/{field}"),
            Self::Salesforce => format!("/_sandbox/salesforce/schema/Opportunity/{field}"),
        }
    }

    /// The function's CRM variables, against the sandbox at `base`.
    fn variables(self, base: &str) -> Vec<(&'static str, String)> {
        let vars: Vec<(&'static str, &str)> = match self {
            Self::Dataverse => vec![
                ("CRM_KIND", "dataverse"),
                ("DATAVERSE_URL", base),
                ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
                ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
            ],
            Self::Salesforce => vec![
                ("CRM_KIND", "salesforce"),
                ("SALESFORCE_LOGIN_URL", base),
                ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
                ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
                ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
            ],
        };
        vars.into_iter()
            .map(|(name, value)| (name, value.to_owned()))
            .collect()
    }
}

/// A webhook request as Partner Center sends it.
#[derive(Debug, Clone)]
struct SignedRequest {
    body: String,
    /// `Signature <base64>` for the `Authorization` header.
    signature: Option<String>,
    certificate_url: String,
}

/// One CRM's run: moto resources, the sandbox, the watch.
struct E2e {
    crm: Crm,
    // Dropped first: stops the function before the services it talks to.
    watch: LocalFunction,
    sandbox: RunningSandbox,
    http: reqwest::Client,
    aws: AwsClients,
    table: String,
    queue: SqsQueue,
    dlq: SqsQueue,
    pki: Pki,
    // Dropped last: it holds the watch log (kept when the test fails).
    _scratch: ScratchDir,
}

impl E2e {
    async fn start(crm: Crm) -> Self {
        let moto = e2e::require_prerequisites();
        let region = cosell_testkit::moto::region();
        let aws = AwsClients::from_conf(&cosell_testkit::moto::sdk_config_at(&moto).await);
        let name = cosell_testkit::unique(&format!("cosell-e2e-{}", crm.name()));
        provision_table(&aws.dynamodb, &name)
            .await
            .unwrap_or_else(|error| panic!("provision table {name} in moto ({moto}): {error}"));
        let queues = provision_queues(&aws.sqs, &name, &QueueOptions::default())
            .await
            .unwrap_or_else(|error| panic!("provision queues {name} in moto ({moto}): {error}"));

        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .expect("start the sandbox");
        let scratch = ScratchDir::new(&format!("cosell-e2e-{}", crm.name()));
        let anchors = scratch.write("root.pem", ROOT_CERT_PEM);
        let intermediates = scratch.write("intermediates.pem", INTERMEDIATE_CERT_PEM);

        let base = sandbox.base_url.clone();
        let mut env: HashMap<String, String> = [
            ("PC_API_BASE_URL", base.clone()),
            ("ENTRA_AUTHORITY", base.clone()),
            ("PC_TENANT_ID", TENANT_ID.to_owned()),
            ("PC_CLIENT_ID", PC_CLIENT_ID.to_owned()),
            ("PC_CLIENT_SECRET", PC_CLIENT_SECRET.to_owned()),
            ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN.to_owned()),
            ("STORE", "dynamodb".to_owned()),
            ("TABLE_NAME", name.clone()),
            ("RETRY_QUEUE_URL", queues.queue_url.clone()),
            (
                "WEBHOOK_TRUST_ANCHORS_PEM",
                anchors.to_string_lossy().into_owned(),
            ),
            (
                "WEBHOOK_INTERMEDIATES_PEM",
                intermediates.to_string_lossy().into_owned(),
            ),
            ("SANDBOX_INSECURE_CERT_HOSTS", sandbox.addr.to_string()),
            ("AWS_ENDPOINT_URL", moto.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", region),
        ]
        .into_iter()
        .chain(crm.variables(&base))
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        env.insert("RUST_LOG".into(), "info".into());

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let watch = LocalFunction::start(
            FUNCTION,
            env!("CARGO_BIN_EXE_partner-center-events"),
            &env,
            &scratch.path("logs"),
        )
        .await;
        Self {
            crm,
            watch,
            sandbox,
            http,
            queue: SqsQueue::new(aws.sqs.clone(), queues.queue_url),
            dlq: SqsQueue::new(aws.sqs.clone(), queues.dlq_url),
            aws,
            table: name,
            pki: Pki::embedded(),
            _scratch: scratch,
        }
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

    /// A control-API call that must succeed; its JSON answer (`null` when none).
    async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn get(&self, path: &str) -> Value {
        self.control(Method::GET, path, None).await
    }

    /// Registers the function URL for `events` through the registration API, with an app-only
    /// token from the sandbox's Entra endpoint (POST the first time, PUT afterwards).
    async fn register(&self, events: &[&str]) {
        let token: Value = self
            .http
            .post(self.url(&format!("/{TENANT_ID}/oauth2/v2.0/token")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={PC_CLIENT_ID}&client_secret=\
                 {PC_CLIENT_SECRET}&scope=https%3A%2F%2Fapi.partnercenter.microsoft.com%2F.default"
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["access_token"].as_str().expect("an access token");
        let registered = self
            .http
            .get(self.url("/webhooks/v1/registration"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .is_success();
        let method = if registered {
            Method::PUT
        } else {
            Method::POST
        };
        let response = self
            .http
            .request(method.clone(), self.url("/webhooks/v1/registration"))
            .bearer_auth(token)
            .json(&json!({ "WebhookUrl": self.watch.url(), "WebhookEvents": events }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{method} registration: {status} {body}"
        );
        assert_eq!(body["WebhookUrl"], self.watch.url().as_str(), "{body}");
    }

    /// Switches the sandbox's Partner Center webhook delivery on or off.
    async fn webhooks(&self, enabled: bool) {
        self.control(
            Method::POST,
            "/_sandbox/webhooks",
            Some(json!({ "service": "partner-center", "enabled": enabled })),
        )
        .await;
    }

    /// A new incoming Microsoft co-sell referral (the sandbox emits `referral-created`).
    async fn microsoft_referral(&self) -> Value {
        self.control(
            Method::POST,
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            Some(json!({})),
        )
        .await
    }

    async fn referral(&self, id: &str) -> Value {
        self.get(&format!("/_sandbox/partner-center/referrals/{id}"))
            .await
    }

    /// Replaces a referral with `edit` applied (new `eTag` and `updatedDateTime`; the sandbox
    /// emits `referral-updated`).
    async fn change_referral(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut referral = self.referral(id).await;
        edit(&mut referral);
        let object = referral.as_object_mut().unwrap();
        object.remove("eTag");
        object.remove("updatedDateTime");
        self.control(
            Method::PUT,
            &format!("/_sandbox/partner-center/referrals/{id}"),
            Some(referral),
        )
        .await;
    }

    /// The Partner Center webhook deliveries so far, oldest first.
    async fn deliveries(&self) -> Vec<Value> {
        self.get("/_sandbox/deliveries").await["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|delivery| delivery["service"] == "partner-center")
            .collect()
    }

    /// Waits (bounded) until `count` deliveries after the first `since` have finished; returns
    /// every delivery after `since`.
    async fn wait_deliveries(&self, since: usize, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let fresh: Vec<Value> = self.deliveries().await.into_iter().skip(since).collect();
            if fresh.len() >= count && fresh.iter().all(|d| d["finished"] == true) {
                return fresh;
            }
            assert!(
                Instant::now() < deadline,
                "{count} deliveries did not finish within {} s: {fresh:#?}\n{}",
                DELIVERY_TIMEOUT.as_secs(),
                self.watch.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn requests(&self) -> Vec<Value> {
        self.get("/_sandbox/requests").await["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn clear_requests(&self) {
        self.control(Method::DELETE, "/_sandbox/requests", None)
            .await;
    }

    /// `(service, method)` of every Partner Center and CRM call since the last clear (token
    /// requests to Entra ID left out: a fresh instance signs in first).
    async fn calls(&self) -> Vec<(String, String)> {
        self.requests()
            .await
            .into_iter()
            .map(|request| {
                (
                    request["service"].as_str().unwrap_or_default().to_owned(),
                    request["method"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .filter(|(service, _)| {
                service == "partner-center" || self.crm.services().contains(&service.as_str())
            })
            .collect()
    }

    async fn all_opportunities(&self) -> Vec<Value> {
        self.get(self.crm.opportunities_path()).await[self.crm.rows_member()]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The CRM's opportunities carrying `referral_id`.
    async fn opportunities(&self, referral_id: &str) -> Vec<Value> {
        self.all_opportunities()
            .await
            .into_iter()
            .filter(|row| row[self.crm.referral_field()] == referral_id)
            .collect()
    }

    async fn the_opportunity(&self, referral_id: &str) -> Value {
        let mut found = self.opportunities(referral_id).await;
        assert_eq!(
            found.len(),
            1,
            "one opportunity for {referral_id}: {found:#?}"
        );
        found.remove(0)
    }

    /// The opportunity carries the referral's mapped fields: name, deal value, currency,
    /// closing date, notes, "Sync with Partner Center", and the customer account (name, postal
    /// code, ISO country).
    async fn assert_mapped(&self, opportunity: &Value, referral: &Value) {
        let crm = self.crm;
        let details = &referral["details"];
        let customer = &referral["customerProfile"];
        let context = format!("{opportunity:#}");
        assert_eq!(opportunity[crm.name_field()], referral["name"], "{context}");
        assert_eq!(
            opportunity[crm.amount_field()].as_f64(),
            details["dealValue"].as_f64(),
            "{context}"
        );
        assert_eq!(
            opportunity[crm.notes_field()],
            details["notes"],
            "{context}"
        );
        let closing = details["closingDateTime"].as_str().unwrap();
        assert_eq!(
            opportunity[crm.closing_date_field()].as_str(),
            Some(&closing[..10]),
            "{context}"
        );
        assert_eq!(opportunity[crm.sync_field()], true, "{context}");
        let currency = details["currency"].as_str().unwrap();
        let (account_path, account_fields) = match crm {
            Crm::Dataverse => {
                assert_eq!(
                    opportunity["_transactioncurrencyid_value"].as_str(),
                    cosell_sandbox::dataverse::currency_id(currency),
                    "{context}"
                );
                let account = opportunity["_parentaccountid_value"].as_str();
                (
                    format!("/_sandbox/dataverse/accounts/{}", account.expect(&context)),
                    ["name", "address1_postalcode", "address1_country"],
                )
            }
            Crm::Salesforce => {
                assert_eq!(opportunity["CurrencyIsoCode"], currency, "{context}");
                let account = opportunity["AccountId"].as_str();
                (
                    format!("/_sandbox/salesforce/Account/{}", account.expect(&context)),
                    ["Name", "BillingPostalCode", "BillingCountry"],
                )
            }
        };
        let account = self.get(&account_path).await;
        let [name, postal_code, country] = account_fields.map(|field| account[field].clone());
        assert_eq!(
            (name, postal_code, country),
            (
                customer["name"].clone(),
                customer["address"]["postalCode"].clone(),
                customer["address"]["country"].clone()
            ),
            "{account:#}"
        );
    }

    fn audit_log(&self) -> DynamoAuditLog {
        DynamoAuditLog::new(self.aws.dynamodb.clone(), &self.table)
    }

    /// The referral's audit events in DynamoDB, oldest first.
    async fn audit(&self, referral_id: &str) -> Vec<AuditEvent> {
        let id = ReferralId::try_from(referral_id).unwrap();
        let mut entries = self.audit_log().try_by_referral(&id, 200).await.unwrap();
        entries.reverse();
        entries.into_iter().map(|entry| entry.event).collect()
    }

    async fn link(&self, referral_id: &str) -> Option<cosell_domain::Link> {
        let id = ReferralId::try_from(referral_id).unwrap();
        DynamoLinkStore::new(self.aws.dynamodb.clone(), &self.table)
            .try_get_by_referral(&id)
            .await
            .unwrap()
    }

    /// `(pk, sk)` of every item in the table.
    async fn table_keys(&self) -> BTreeSet<(String, String)> {
        let mut keys = BTreeSet::new();
        let mut start = None;
        loop {
            let page = self
                .aws
                .dynamodb
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .unwrap();
            for item in page.items() {
                let text = |name: &str| {
                    item.get(name)
                        .and_then(|value| value.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                keys.insert((text("pk"), text("sk")));
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return keys,
            }
        }
    }

    async fn assert_queue_empty(&self) {
        for queue in [&self.queue, &self.dlq] {
            let depth = queue.depth().await.unwrap();
            assert_eq!(
                (depth.visible, depth.in_flight, depth.delayed),
                (0, 0, 0),
                "{}",
                queue.url()
            );
        }
    }

    /// Receives (bounded) `count` retry jobs from the queue as their delays end, deleting
    /// each.
    async fn receive_retry_jobs(&self, count: usize) -> Vec<RetryJob> {
        let deadline = Instant::now() + RETRY_JOB_TIMEOUT;
        let mut jobs = Vec::new();
        while jobs.len() < count {
            let received = self
                .queue
                .receive(10, Duration::from_secs(2))
                .await
                .unwrap();
            for message in &received {
                assert_eq!(
                    message.attributes.get("source").map(String::as_str),
                    Some("partner_center")
                );
                self.queue.delete(&message.receipt_handle).await.unwrap();
                jobs.push(serde_json::from_str(&message.body).unwrap());
            }
            let depth = self.queue.depth().await.unwrap();
            assert!(
                Instant::now() < deadline,
                "{} of {count} retry jobs within {} s; queue: {depth:?}",
                jobs.len(),
                RETRY_JOB_TIMEOUT.as_secs()
            );
        }
        assert_eq!(jobs.len(), count, "{jobs:#?}");
        jobs
    }

    /// A Partner Center event for a referral, byte for byte as the sandbox sends it (compact
    /// JSON, members in the documented order), signed by `signer` with its certificate URL.
    fn signed_event(
        &self,
        event_name: &str,
        referral_id: &str,
        changed: &str,
        signer: Signer,
    ) -> SignedRequest {
        let body = format!(
            "{{\"EventName\":{},\"ResourceUri\":{},\"ResourceName\":\"referral\",\
             \"AuditUri\":null,\"ResourceChangeUtcDate\":{}}}",
            json!(event_name),
            json!(format!(
                "{}/engagements/v1/referrals/{referral_id}",
                self.sandbox.base_url
            )),
            json!(changed),
        );
        self.signed_raw(&body, signer)
    }

    fn signed_raw(&self, body: &str, signer: Signer) -> SignedRequest {
        let path = match signer {
            Signer::Leaf => LEAF_CERT_PATH,
            Signer::Rogue => ROGUE_CERT_PATH,
        };
        SignedRequest {
            body: body.to_owned(),
            signature: Some(format!(
                "Signature {}",
                self.pki.sign(signer, body.as_bytes())
            )),
            certificate_url: format!("{}{path}", self.sandbox.base_url),
        }
    }

    /// POSTs a webhook request to the function URL: `(status, JSON answer)`.
    async fn post(&self, request: &SignedRequest) -> (u16, Value) {
        post(&self.http, &self.watch.url(), request).await
    }

    /// POSTs `request` `times` times at once.
    async fn post_concurrently(&self, request: &SignedRequest, times: usize) -> Vec<(u16, Value)> {
        let handles: Vec<_> = (0..times)
            .map(|_| {
                let http = self.http.clone();
                let url = self.watch.url();
                let request = request.clone();
                tokio::spawn(async move { post(&http, &url, &request).await })
            })
            .collect();
        let mut answers = Vec::new();
        for handle in handles {
            answers.push(handle.await.unwrap());
        }
        answers
    }
}

async fn post(http: &reqwest::Client, url: &str, request: &SignedRequest) -> (u16, Value) {
    let mut builder = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-ms-certificate-url", &request.certificate_url)
        .header("x-ms-signature-algorithm", "rsa-sha256")
        .body(request.body.clone());
    if let Some(signature) = &request.signature {
        builder = builder.header("authorization", signature);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("HTTP {status}: not JSON: {text}"));
    (status, body)
}

fn id_of(referral: &Value) -> String {
    referral["id"].as_str().expect("a referral id").to_owned()
}

/// A Partner Center date-time (`…1234567Z`) as a webhook's `ResourceChangeUtcDate`
/// (`…1234567+00:00`).
fn event_time(wire: &str) -> String {
    format!("{}+00:00", wire.trim_end_matches('Z'))
}

/// The deliveries are one `event` each, accepted (2xx) on the first attempt.
fn assert_accepted_first_time(deliveries: &[Value], event: &str) {
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    let delivery = &deliveries[0];
    assert_eq!(delivery["label"], event, "{delivery:#}");
    assert_eq!(delivery["delivered"], true, "{delivery:#}");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{delivery:#}");
    let status = attempts[0]["status"].as_u64().unwrap_or_default();
    assert!((200..300).contains(&status), "{delivery:#}");
}
