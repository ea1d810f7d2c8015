//! The CRM → Partner Center direction: the real [`crm_events::handler::handle`] on the
//! sandbox's own notifications (Dataverse webhooks, Salesforce Outbound Messages), with the
//! real DynamoDB stores and SQS retry queue on moto.
//!
//! The sandbox (a separate process) delivers each notification to a small capture server in
//! this process, which answers as the CRM expects (200, or a SOAP `<Ack>true</Ack>`); each
//! captured request (path, query, headers, body) becomes a Function URL request event and is
//! handed to the handler one at a time, timed and counted like the other direction. Kinds:
//!
//! | kind | what is sent | expected answer |
//! |---|---|---|
//! | `cold_start` | the first seller change of a freshly built app (tokens, connections) | `created` |
//! | `new` | a seller turned sync on for a fresh opportunity (→ one referral `POST`, write-back) | `created` |
//! | `echo` | the notification the connector's own write-back raised | `echo_skipped` |
//! | `updated` | a seller changed the amount of a synced opportunity (→ one JSON Patch) | `updated` |
//! | `duplicate` | the `new` notifications delivered again, byte for byte | `duplicate_skipped` |
//!
//! A SOAP acknowledgement names no outcome: the outcome is read from the audit events the
//! handler appended (counted by the audit store's decorator), as the JSON answers name them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::{SecondsFormat, Utc};
use cosell_adapters::crm_wire::salesforce::{OutboundMessage, ack_response};
use cosell_domain::ids::CrmKind;
use cosell_sandbox::identities::{
    DATAVERSE_APP_USER_ID, SALESFORCE_INTEGRATION_USER_ID, SALESFORCE_ORG_ID,
};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use crate::counting::{CallCounter, IoGauge, delta};
use crate::report::{
    CrmRun, LoadAverage, ReferralCheck, Report, Settings, TargetCheck, calls_check, dynamodb_check,
    method_notes, own_cpu_check,
};
use crate::sandbox::Control;
use cosell_runtime::Connector;

use crate::scenario::{Aws, Benched, Options, RunEnv, counted_stores, environment, gauged_clients};
use crate::stats::{EventSample, KindReport};
use crate::system::{Machine, Source, load_average, peak_rss_kib, process_cpu_time, status_kib};

/// The Dataverse webhook's `WebhookKey` (the sandbox's webhook and the function).
const WEBHOOK_KEY: &str = "bench-dataverse-webhook-key";
/// The secret in the Salesforce Outbound Message URL.
const ENDPOINT_SECRET: &str = "bench-salesforce-endpoint-secret";
/// The solution every synced opportunity names.
const SOLUTION: &str = "SOL-34104-EBB";
/// How long the sandbox may take to deliver the notifications a step waits for.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most Partner Center + CRM requests a new opportunity may cost: the record with its
/// account and contact read back, the referral `POST`, the write-back `PATCH`, and a
/// Partner Center read.
pub const MAX_NEW_OPPORTUNITY_CALLS: u64 = 6;

/// The kinds of event measured, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A seller turned sync on for a fresh opportunity.
    New,
    /// A seller changed a synced opportunity.
    Updated,
    /// An identical redelivery of a handled notification.
    Duplicate,
    /// The notification the connector's own write-back raised.
    Echo,
}

impl Kind {
    /// The most DynamoDB requests one notification of this kind may make
    /// (docs/aws.md#requests-per-event): a new opportunity takes the key, looks its link up by
    /// the record, takes the create lock, reads the record's audit trail, makes its `Received`
    /// entry durable before the `POST`, saves the link before writing the referral id back and
    /// commits; an update takes the key, reads the link and commits; a duplicate is answered by
    /// the failed conditional write that takes the key; the connector's own write (echo) is
    /// audited without taking a key, and on Salesforce, whose message carries the record as it
    /// is when sent, checked against the link's agreed values first
    /// (docs/salesforce.md#loop-prevention).
    pub fn max_dynamodb_requests(self, crm: &str) -> u64 {
        match self {
            Self::New => 7,
            Self::Updated => 3,
            Self::Duplicate => 1,
            Self::Echo if crm == "salesforce" => 2,
            Self::Echo => 1,
        }
    }

    /// Every kind, in report order.
    pub const ALL: [Self; 4] = [Self::New, Self::Updated, Self::Duplicate, Self::Echo];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Updated => "updated",
            Self::Duplicate => "duplicate",
            Self::Echo => "echo",
        }
    }

    /// The answer expected for this kind.
    pub fn expected_outcome(self) -> &'static str {
        match self {
            Self::New => "created",
            Self::Updated => "updated",
            Self::Duplicate => "duplicate_skipped",
            Self::Echo => "echo_skipped",
        }
    }
}

/// The function as the benchmark runs it: HTTP clients and counted DynamoDB / SQS stores, all
/// timed by an [`IoGauge`].
pub type CrmBenchApp = crm_events::App<Benched>;

// ---------------------------------------------------------------------------------------------
// Captured notifications

/// A request the sandbox sent to the capture server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The path, e.g. `/dataverse` or `/salesforce/<secret>`.
    pub path: String,
    /// The raw query string (Dataverse's `code=`).
    pub query: String,
    /// The headers as sent.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: String,
}

impl Captured {
    /// Whether the connector's own CRM user made the change (Dataverse `InitiatingUserId` /
    /// `UserId`, Salesforce `LastModifiedById` of every notification).
    pub fn written_by_connector(&self) -> bool {
        if let Ok(context) = serde_json::from_str::<Value>(&self.body) {
            let user = context["InitiatingUserId"]
                .as_str()
                .or_else(|| context["UserId"].as_str())
                .unwrap_or_default();
            return user.eq_ignore_ascii_case(DATAVERSE_APP_USER_ID);
        }
        OutboundMessage::parse(&self.body).is_ok_and(|message| {
            !message.notifications.is_empty()
                && message.notifications.iter().all(|notification| {
                    notification
                        .field_text("LastModifiedById")
                        .is_some_and(|id| {
                            cosell_adapters::crm_wire::salesforce::same_salesforce_id(
                                id,
                                SALESFORCE_INTEGRATION_USER_ID,
                            )
                        })
                })
        })
    }
}

/// The Function URL request event (API Gateway HTTP API v2 payload) carrying `captured`,
/// with `request_id` as the request context's id (the function's correlation id).
pub fn function_url_event(captured: &Captured, request_id: &str) -> Value {
    let query: serde_json::Map<String, Value> =
        url::form_urlencoded::parse(captured.query.as_bytes())
            .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
            .collect();
    let headers: serde_json::Map<String, Value> = captured
        .headers
        .iter()
        .filter(|(name, _)| name != "host" && name != "content-length")
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .chain([(
            "host".to_owned(),
            Value::String("crmevents.lambda-url.eu-west-1.on.aws".to_owned()),
        )])
        .collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": captured.path,
        "rawQueryString": captured.query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous", "apiId": "crmevents",
            "domainName": "crmevents.lambda-url.eu-west-1.on.aws", "domainPrefix": "crmevents",
            "http": {"method": "POST", "path": captured.path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "cosell-bench"},
            "requestId": request_id, "routeKey": "$default", "stage": "$default",
            "time": "20/Nov/2026:10:15:30 +0000", "timeEpoch": 1_795_169_730_000_u64
        },
        "body": captured.body,
        "isBase64Encoded": false
    });
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    event
}

/// The handler's answers: a JSON answer's `status` (or error `code`); for any other answer
/// (SOAP) the outcomes among `audit_events` (the audit events appended meanwhile), else `ack`
/// / `http_<status>`.
pub fn outcomes_of(status: u16, body: &[u8], audit_events: &BTreeMap<String, u64>) -> Vec<String> {
    if let Ok(answer) = serde_json::from_slice::<Value>(body)
        && let Some(name) = answer["status"]
            .as_str()
            .or_else(|| answer["code"].as_str())
    {
        return vec![name.to_owned()];
    }
    let outcomes: Vec<String> = audit_events
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "received" | "written_back"))
        .flat_map(|(name, count)| {
            std::iter::repeat_n(name.clone(), usize::try_from(*count).unwrap_or(usize::MAX))
        })
        .collect();
    if !outcomes.is_empty() {
        return outcomes;
    }
    let acknowledged = std::str::from_utf8(body).is_ok_and(|text| text.contains("<Ack>true</Ack>"));
    vec![if acknowledged && status == 200 {
        "ack".to_owned()
    } else {
        format!("http_{status}")
    }]
}

/// The captured requests, and how many of them a step has taken.
#[derive(Debug, Default)]
struct Inbox {
    captured: Vec<Captured>,
    taken: Vec<bool>,
}

type SharedInbox = Arc<Mutex<Inbox>>;

async fn capture(
    axum::extract::State(inbox): axum::extract::State<SharedInbox>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let salesforce = parts.uri.path().contains("/salesforce");
    let captured = Captured {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    {
        let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
        inbox.captured.push(captured);
        inbox.taken.push(false);
    }
    let answer = if salesforce { ack_response() } else { "" };
    axum::response::Response::new(axum::body::Body::from(answer))
}

/// The capture server on a free loopback port; its base URL.
async fn start_capture(inbox: SharedInbox) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the capture server")?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = axum::Router::new().fallback(capture).with_state(inbox);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(url)
}

/// Takes `count` captured notifications not taken yet whose writer is the connector
/// (`connector`) or not, oldest first, waiting for the sandbox to deliver them.
async fn take(inbox: &SharedInbox, connector: bool, count: usize) -> anyhow::Result<Vec<Captured>> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        {
            let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
            let matching: Vec<usize> = (0..inbox.captured.len())
                .filter(|&i| !inbox.taken[i])
                .filter(|&i| inbox.captured[i].written_by_connector() == connector)
                .take(count)
                .collect();
            if matching.len() == count {
                for &i in &matching {
                    inbox.taken[i] = true;
                }
                return Ok(matching
                    .into_iter()
                    .map(|i| inbox.captured[i].clone())
                    .collect());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the sandbox did not deliver {count} {} notifications within {} s",
                if connector { "connector" } else { "seller" },
                DELIVERY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Run the CRM → Partner Center benchmark: every CRM of `options`, then its targets.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if options.events == 0 {
        bail!("--events must be at least 1");
    }
    let load_at_start = load_average();
    let machine = Machine::detect();
    let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let aws = Aws::connect(&options.aws_endpoint, &options.region).await;
    let mut runs = Vec::new();
    for crm in &options.crms {
        eprintln!("measuring crm-events with {crm} …");
        runs.push(
            run_crm(options, &aws, *crm)
                .await
                .with_context(|| format!("crm-events benchmark against {crm}"))?,
        );
    }
    let targets: Vec<_> = runs.iter().flat_map(evaluate).collect();
    let mut method = method_notes();
    method.insert(
        "handler".into(),
        "the real crm_events::handler::handle on the sandbox's own Dataverse webhooks and \
         Salesforce Outbound Messages (captured, then handed over as Function URL requests); \
         HTTP clients to the sandbox (a separate process); DynamoDB and SQS on moto"
            .into(),
    );
    method.insert(
        "outcomes".into(),
        "a JSON answer's status; for a SOAP acknowledgement the audit events the handler \
         appended (one per notification)"
            .into(),
    );
    Ok(Report {
        benchmark: "crm-events".into(),
        timestamp,
        machine_line: machine.line(),
        machine,
        source: Source::detect(),
        load_average: LoadAverage {
            start: load_at_start,
            end: load_average(),
        },
        settings: Settings {
            events_per_kind: options.events,
            concurrent_copies: 0,
            crms: options.crms.iter().map(ToString::to_string).collect(),
            aws_endpoint: options.aws_endpoint.clone(),
        },
        method,
        runs,
        peak_rss_kib: peak_rss_kib(),
        ok: targets.iter().all(|target| target.ok),
        targets,
    })
}

/// `partner-center-events`' environment plus `crm-events`' own variables.
fn crm_environment(
    base_url: &str,
    crm: CrmKind,
    table: &str,
    queue_url: &str,
) -> HashMap<&'static str, String> {
    let mut vars = environment(base_url, crm, table, queue_url);
    let own: [(&'static str, &str); 3] = match crm {
        CrmKind::Dataverse => [
            ("DATAVERSE_WEBHOOK_KEY", WEBHOOK_KEY),
            ("DATAVERSE_CONNECTOR_USER_ID", DATAVERSE_APP_USER_ID),
            ("MAX_BODY_BYTES", "1048576"),
        ],
        CrmKind::Salesforce => [
            ("SALESFORCE_ENDPOINT_SECRET", ENDPOINT_SECRET),
            ("SALESFORCE_ORGANIZATION_ID", SALESFORCE_ORG_ID),
            (
                "SALESFORCE_CONNECTOR_USER_ID",
                SALESFORCE_INTEGRATION_USER_ID,
            ),
        ],
    };
    vars.extend(own.map(|(name, value)| (name, value.to_owned())));
    vars
}

/// The app `main` would build for the run's sandbox, table and queue, except that the stores
/// are counted (`counter`, the audit log's events in `audit_events`) and every port call is
/// timed by `gauge`.
fn build_app(
    env: &RunEnv,
    crm: CrmKind,
    aws: &Aws,
    counter: &Arc<CallCounter>,
    audit_events: &Arc<CallCounter>,
    gauge: &Arc<IoGauge>,
) -> anyhow::Result<CrmBenchApp> {
    let RunEnv {
        sandbox,
        table,
        queues,
        ..
    } = env;
    let vars = crm_environment(&sandbox.base_url, crm, table, &queues.queue_url);
    let config = crm_events::Config::from_lookup(|name| vars.get(name).cloned())?;
    let clients = gauged_clients(&config.sync, gauge)?;
    let mut stores = counted_stores(aws, table, &queues.queue_url, counter, gauge);
    stores.audit = stores.audit.recording_audit_events(audit_events.clone());
    // Entries written with a delivery's commit, and duplicates (no entry).
    stores.idempotency = stores
        .idempotency
        .recording_audit_events(audit_events.clone());
    let connector = Connector::new(
        clients,
        stores,
        config.sync.mapping.clone(),
        config.sync_settings(),
    );
    Ok(crm_events::App::new(connector, &config))
}

/// Measures notifications through the handler.
struct Meter<'a> {
    app: CrmBenchApp,
    control: &'a Control,
    crm: CrmKind,
    stores: Arc<CallCounter>,
    audit_events: Arc<CallCounter>,
    aws_requests: Arc<CallCounter>,
    /// The CPU time spent in port calls.
    gauge: Arc<IoGauge>,
    run_id: String,
    requests: std::sync::atomic::AtomicU64,
}

impl Meter<'_> {
    fn request(&self, captured: &Captured) -> anyhow::Result<Request> {
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = function_url_event(captured, &format!("bench-{}-{n}", self.run_id));
        lambda_http::request::from_str(&event.to_string())
            .map_err(|error| anyhow!("building the Function URL request: {error}"))
    }

    /// Each notification in turn, timed and counted; the sandbox's request log is read and
    /// cleared after each, outside the timed span.
    async fn each(&self, notifications: &[Captured]) -> anyhow::Result<Vec<EventSample>> {
        let requests = notifications
            .iter()
            .map(|captured| self.request(captured))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.control.clear_requests().await?;
        let mut samples = Vec::with_capacity(requests.len());
        for request in requests {
            let stores_before = self.stores.snapshot();
            let audit_before = self.audit_events.snapshot();
            let aws_before = self.aws_requests.snapshot();
            let io_before = self.gauge.total();
            let cpu_before = process_cpu_time();
            let started = Instant::now();
            let response: Response<Body> = crm_events::handler::handle(request, &self.app)
                .await
                .map_err(|error| anyhow!("the handler failed: {error}"))?;
            let latency = started.elapsed();
            let cpu = process_cpu_time().saturating_sub(cpu_before);
            let io_cpu = self.gauge.total().saturating_sub(io_before);
            let stores = delta(&stores_before, &self.stores.snapshot());
            let audit = delta(&audit_before, &self.audit_events.snapshot());
            let aws_requests = delta(&aws_before, &self.aws_requests.snapshot());
            let external = self.control.take_requests(self.crm).await?;
            samples.push(EventSample {
                latency,
                cpu,
                io_cpu,
                outcomes: outcomes_of(response.status().as_u16(), response.body(), &audit),
                external,
                stores,
                aws_requests,
            });
        }
        Ok(samples)
    }
}

async fn run_crm(options: &Options, aws: &Aws, crm: CrmKind) -> anyhow::Result<CrmRun> {
    let env = RunEnv::start(options, aws, "crm-events", crm).await?;
    let result = measure_crm(options, aws, crm, &env).await;
    env.remove(aws).await;
    result
}

/// The `n`th benchmark opportunity's id.
fn opportunity_id(crm: CrmKind, n: usize) -> String {
    match crm {
        CrmKind::Dataverse => format!("be000000-0000-4000-8000-{n:012x}"),
        CrmKind::Salesforce => format!("006{n:012}"),
    }
}

/// The key referrals are counted under: the Dataverse GUID lower-cased, the Salesforce id's
/// 15-character form.
fn opportunity_key(crm: CrmKind, id: &str) -> String {
    match crm {
        CrmKind::Dataverse => id.to_ascii_lowercase(),
        CrmKind::Salesforce => id.get(..15).unwrap_or(id).to_owned(),
    }
}

/// Points the sandbox's notifications at the capture server and seeds the account (and
/// contact) the opportunities belong to.
async fn prepare(control: &Control, crm: CrmKind, capture_url: &str) -> anyhow::Result<()> {
    use reqwest::Method;
    match crm {
        CrmKind::Dataverse => {
            control
                .call(
                    Method::PUT,
                    "/_sandbox/dataverse/webhook",
                    Some(&json!({"url": format!("{capture_url}/dataverse"),
                                 "authtype": "WebhookKey", "authvalue": WEBHOOK_KEY})),
                )
                .await?;
            control
                .call(
                    Method::PUT,
                    "/_sandbox/dataverse/accounts/be000000-0000-4000-8000-0000000000a1",
                    Some(
                        &json!({"name": "Bench Customer", "address1_city": "Seattle",
                                 "address1_country": "US"}),
                    ),
                )
                .await?;
            control
                .call(
                    Method::PUT,
                    "/_sandbox/dataverse/contacts/be000000-0000-4000-8000-0000000000c1",
                    Some(&json!({"firstname": "Bench", "lastname": "Contact",
                                 "emailaddress1": "contact@bench.example"})),
                )
                .await?;
        }
        CrmKind::Salesforce => {
            let mut definition = control
                .call(Method::GET, "/_sandbox/salesforce/outbound-message", None)
                .await?;
            definition["url"] = json!(format!("{capture_url}/salesforce/{ENDPOINT_SECRET}"));
            control
                .call(
                    Method::PUT,
                    "/_sandbox/salesforce/outbound-message",
                    Some(&definition),
                )
                .await?;
            control
                .call(
                    Method::PUT,
                    "/_sandbox/salesforce/Account/001000000000001",
                    Some(&json!({"Name": "Bench Customer", "BillingCity": "Seattle",
                                 "BillingCountry": "US"})),
                )
                .await?;
        }
    }
    Ok(())
}

/// A seller turns sync on for opportunity `n` (the sandbox then delivers its notification).
/// No help from Microsoft is asked for, in either CRM: one co-sell referral per opportunity
/// (a Shared deal would add the invitation of Microsoft as a second `POST`).
async fn seed_opportunity(control: &Control, crm: CrmKind, n: usize) -> anyhow::Result<()> {
    let id = opportunity_id(crm, n);
    let (path, record) = match crm {
        CrmKind::Dataverse => (
            format!("/_sandbox/dataverse/opportunities/{id}"),
            json!({
                "name": format!("Bench opportunity {n}"), "estimatedvalue": 25000,
                "estimatedclosedate": "2027-06-30",
                "_parentaccountid_value": "be000000-0000-4000-8000-0000000000a1",
                "_parentcontactid_value": "be000000-0000-4000-8000-0000000000c1",
                "msft_microsoftpartnercenterreferralsync": true,
                "msft_microsoftpartnercentersolutions": SOLUTION,
                "msft_solutionarea": "Security", "msft_solutionplay": "Data Security",
                "msft_partnerrole": "Implementation",
            }),
        ),
        CrmKind::Salesforce => (
            format!("/_sandbox/salesforce/Opportunity/{id}"),
            json!({
                "Name": format!("Bench opportunity {n}"), "StageName": "Prospecting",
                "CloseDate": "2027-06-30", "Amount": 25000, "CurrencyIsoCode": "USD",
                "AccountId": "001000000000001", "Sync_with_Partner_Center__c": true,
                "Microsoft_Solutions__c": SOLUTION,
                "Solution_Area__c": "Security", "Solution_Play__c": "Data Security",
                "Partner_Role__c": "Implementation",
            }),
        ),
    };
    control
        .call(reqwest::Method::PUT, &path, Some(&record))
        .await?;
    Ok(())
}

/// A seller changes the amount of synced opportunity `n`: its current row with a new value,
/// written back through the control API as the seller.
async fn change_opportunity(
    control: &Control,
    crm: CrmKind,
    n: usize,
    amount: u64,
) -> anyhow::Result<()> {
    let id = opportunity_id(crm, n);
    let (path, field) = match crm {
        CrmKind::Dataverse => (
            format!("/_sandbox/dataverse/opportunities/{id}"),
            "estimatedvalue",
        ),
        CrmKind::Salesforce => (format!("/_sandbox/salesforce/Opportunity/{id}"), "Amount"),
    };
    let mut record = control.call(reqwest::Method::GET, &path, None).await?;
    record[field] = json!(amount);
    if let Some(fields) = record.as_object_mut() {
        // The connector's write-back made it the last modifier: this change is the seller's.
        for audit in ["LastModifiedById", "LastModifiedDate", "SystemModstamp"] {
            fields.remove(audit);
        }
    }
    control
        .call(reqwest::Method::PUT, &path, Some(&record))
        .await?;
    Ok(())
}

async fn measure_crm(
    options: &Options,
    aws: &Aws,
    crm: CrmKind,
    env: &RunEnv,
) -> anyhow::Result<CrmRun> {
    let RunEnv {
        run_id,
        sandbox,
        control,
        ..
    } = env;
    let inbox = SharedInbox::default();
    let capture_url = start_capture(inbox.clone()).await?;
    prepare(control, crm, &capture_url).await?;

    let counter = Arc::new(CallCounter::default());
    let audit_events = Arc::new(CallCounter::default());
    let gauge = Arc::new(IoGauge::default());
    let app = build_app(env, crm, aws, &counter, &audit_events, &gauge)?;
    let meter = Meter {
        app,
        control,
        crm,
        stores: counter,
        audit_events,
        aws_requests: aws.requests.clone(),
        gauge,
        run_id: run_id.to_owned(),
        requests: std::sync::atomic::AtomicU64::new(0),
    };
    let n = options.events;

    // Cold start: opportunity 0 through a freshly built app.
    seed_opportunity(control, crm, 0).await?;
    let warm = take(&inbox, false, 1).await?;
    let cold = meter.each(&warm).await?;
    let cold_start = KindReport::summarize("cold_start", 1, &cold);
    take(&inbox, true, 1).await?;

    // new: a seller turns sync on for opportunities 1..=n.
    for i in 1..=n {
        seed_opportunity(control, crm, i).await?;
    }
    let created = take(&inbox, false, n).await?;
    let new = meter.each(&created).await?;

    // echo: the notifications the write-backs raised.
    let echoes = take(&inbox, true, n).await?;
    let echo = meter.each(&echoes).await?;

    // updated: a seller changes each amount.
    for i in 1..=n {
        let amount = 30_000 + u64::try_from(i).unwrap_or_default();
        change_opportunity(control, crm, i, amount).await?;
    }
    let changes = take(&inbox, false, n).await?;
    let updated = meter.each(&changes).await?;

    // duplicate: the `new` notifications delivered again as they were.
    let duplicate = meter.each(&created).await?;

    let referrals = control
        .call(
            reqwest::Method::GET,
            "/_sandbox/partner-center/referrals",
            None,
        )
        .await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for referral in referrals["referrals"].as_array().into_iter().flatten() {
        if let Some(id) = referral["externalReferenceId"].as_str() {
            *counts.entry(opportunity_key(crm, id)).or_default() += 1;
        }
    }
    let keys: Vec<String> = (0..=n)
        .map(|i| opportunity_key(crm, &opportunity_id(crm, i)))
        .collect();
    let referral_check = ReferralCheck::of(keys.iter().map(String::as_str), &counts);
    let sandbox_peak_rss_kib = std::fs::read_to_string(format!("/proc/{}/status", sandbox.pid()))
        .ok()
        .and_then(|status| status_kib(&status, "VmHWM"));

    let kinds = Kind::ALL
        .into_iter()
        .map(|kind| {
            let samples = match kind {
                Kind::New => &new,
                Kind::Updated => &updated,
                Kind::Duplicate => &duplicate,
                Kind::Echo => &echo,
            };
            KindReport::summarize(kind.name(), 1, samples)
        })
        .collect();
    Ok(CrmRun {
        crm: crm.to_string(),
        cold_start,
        kinds,
        opportunities: Default::default(),
        referrals: Some(referral_check),
        sandbox_peak_rss_kib,
    })
}

/// The targets of one CRM's `crm-events` run.
pub fn evaluate(run: &CrmRun) -> Vec<TargetCheck> {
    let check = |kind: &str, target: String, measured: String, ok: bool| TargetCheck {
        crm: run.crm.clone(),
        kind: kind.to_owned(),
        target,
        measured,
        ok,
    };
    let mut checks = Vec::new();
    for kind in Kind::ALL {
        let Some(report) = run.kinds.iter().find(|report| report.kind == kind.name()) else {
            checks.push(check(
                kind.name(),
                "measured".into(),
                "missing".into(),
                false,
            ));
            continue;
        };
        let expected = kind.expected_outcome();
        let unexpected: BTreeMap<&str, usize> = report
            .outcomes
            .iter()
            .filter(|(outcome, _)| outcome.as_str() != expected)
            .map(|(outcome, count)| (outcome.as_str(), *count))
            .collect();
        checks.push(check(
            kind.name(),
            format!("every answer is {expected:?}"),
            if unexpected.is_empty() {
                format!("{:?}", report.outcomes)
            } else {
                format!("unexpected {unexpected:?}")
            },
            unexpected.is_empty() && report.events > 0,
        ));
        let pc = &report.partner_center_per_event;
        match kind {
            Kind::New => {
                checks.push(check(
                    kind.name(),
                    "a new opportunity makes exactly one Partner Center write (the referral POST)"
                        .into(),
                    format!("{} writes per event", pc.writes),
                    (pc.writes - 1.0).abs() < f64::EPSILON,
                ));
                checks.push(check(
                    kind.name(),
                    format!(
                        "a new opportunity makes at most {MAX_NEW_OPPORTUNITY_CALLS} Partner \
                         Center + CRM calls"
                    ),
                    format!(
                        "max {} per event (mean {})",
                        report.pc_crm_per_event.max, report.pc_crm_per_event.mean
                    ),
                    report.pc_crm_per_event.max <= MAX_NEW_OPPORTUNITY_CALLS,
                ));
            }
            Kind::Updated => checks.push(check(
                kind.name(),
                "an update makes exactly one Partner Center write (one JSON Patch)".into(),
                format!("{} writes per event", pc.writes),
                (pc.writes - 1.0).abs() < f64::EPSILON,
            )),
            Kind::Duplicate => checks.push(check(
                kind.name(),
                "a duplicate makes no external call (Partner Center, CRM, tokens)".into(),
                format!(
                    "max {} per event (mean {})",
                    report.external_per_event.max, report.external_per_event.mean
                ),
                report.external_per_event.max == 0,
            )),
            Kind::Echo => checks.push(check(
                kind.name(),
                "an echo makes no Partner Center call".into(),
                format!("{} per event (max {})", pc.total, pc.max),
                pc.max == 0,
            )),
        }
        if let Some((target, measured, ok)) = calls_check("crm-events", &run.crm, report) {
            checks.push(check(kind.name(), target, measured, ok));
        }
        let (target, measured, ok) = dynamodb_check(kind.max_dynamodb_requests(&run.crm), report);
        checks.push(check(kind.name(), target, measured, ok));
        let (target, measured, ok) = own_cpu_check(report);
        checks.push(check(kind.name(), target, measured, ok));
    }
    let referrals = run.referrals.unwrap_or_default();
    checks.push(check(
        "all",
        "every synced opportunity ends with exactly one referral".into(),
        format!(
            "{} of {} exactly one, {} duplicated, {} missing",
            referrals.exactly_one,
            referrals.opportunities,
            referrals.more_than_one,
            referrals.missing
        ),
        referrals.opportunities > 0 && referrals.exactly_one == referrals.opportunities,
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ExternalCalls, ReadWrite};

    fn captured(path: &str, query: &str, body: &str) -> Captured {
        Captured {
            path: path.into(),
            query: query.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("host".into(), "127.0.0.1:9".into()),
            ],
            body: body.into(),
        }
    }

    #[test]
    fn a_captured_notification_becomes_a_function_url_request_with_its_query() {
        let event = function_url_event(
            &captured("/dataverse", "code=k%26y", r#"{"MessageName":"Create"}"#),
            "bench-1",
        );
        assert_eq!(event["queryStringParameters"]["code"], "k&y");
        assert_eq!(event["requestContext"]["requestId"], "bench-1");
        assert_eq!(
            event["headers"]["host"],
            "crmevents.lambda-url.eu-west-1.on.aws"
        );
        let request = lambda_http::request::from_str(&event.to_string()).expect("a request");
        assert_eq!(request.uri().path(), "/dataverse");
        assert_eq!(request.body().as_ref(), br#"{"MessageName":"Create"}"#);

        let soap = function_url_event(&captured("/salesforce/s", "", "<x/>"), "bench-2");
        assert!(soap.get("queryStringParameters").is_none());
    }

    #[test]
    fn outcomes_come_from_the_json_answer_else_from_the_audit_events() {
        let none = BTreeMap::new();
        assert_eq!(
            outcomes_of(200, br#"{"status":"created"}"#, &none),
            ["created"]
        );
        assert_eq!(
            outcomes_of(401, br#"{"code":"unauthorized","message":"no"}"#, &none),
            ["unauthorized"]
        );
        let audit = BTreeMap::from([
            ("received".to_owned(), 1),
            ("created".to_owned(), 1),
            ("written_back".to_owned(), 1),
        ]);
        assert_eq!(outcomes_of(200, b"<Ack>true</Ack>", &audit), ["created"]);
        assert_eq!(outcomes_of(200, b"<Ack>true</Ack>", &none), ["ack"]);
        assert_eq!(outcomes_of(500, b"<soapenv:Fault/>", &none), ["http_500"]);
    }

    #[test]
    fn the_connector_s_own_writes_are_recognised() {
        let own = captured(
            "/dataverse",
            "",
            &format!(r#"{{"InitiatingUserId":"{DATAVERSE_APP_USER_ID}"}}"#),
        );
        assert!(own.written_by_connector());
        let seller = captured(
            "/dataverse",
            "",
            r#"{"InitiatingUserId":"55555555-5555-4555-8555-555555555555"}"#,
        );
        assert!(!seller.written_by_connector());
        assert!(!captured("/x", "", "not a notification").written_by_connector());
    }

    #[test]
    fn opportunity_ids_and_keys_are_stable_per_crm() {
        assert_eq!(
            opportunity_id(CrmKind::Dataverse, 26),
            "be000000-0000-4000-8000-00000000001a"
        );
        assert_eq!(opportunity_id(CrmKind::Salesforce, 7), "006000000000007");
        assert_eq!(
            opportunity_key(CrmKind::Salesforce, "006000000000007AAA"),
            "006000000000007"
        );
        assert_eq!(opportunity_key(CrmKind::Dataverse, "BE00-A"), "be00-a");
    }

    fn sample(outcome: &str, pc: (u64, u64), crm: (u64, u64), tokens: u64) -> EventSample {
        EventSample {
            latency: Duration::from_millis(10),
            cpu: Duration::from_micros(800),
            io_cpu: Duration::from_micros(500),
            outcomes: vec![outcome.to_owned()],
            external: ExternalCalls {
                partner_center: ReadWrite {
                    reads: pc.0,
                    writes: pc.1,
                },
                crm: ReadWrite {
                    reads: crm.0,
                    writes: crm.1,
                },
                tokens,
                other: 0,
            },
            stores: BTreeMap::new(),
            aws_requests: BTreeMap::new(),
        }
    }

    fn run_with(kinds: Vec<KindReport>, referrals: ReferralCheck) -> CrmRun {
        CrmRun {
            crm: "salesforce".into(),
            cold_start: KindReport::summarize(
                "cold_start",
                1,
                &[sample("created", (0, 1), (3, 1), 2)],
            ),
            kinds,
            opportunities: Default::default(),
            referrals: Some(referrals),
            sandbox_peak_rss_kib: None,
        }
    }

    fn good_kinds() -> Vec<KindReport> {
        vec![
            KindReport::summarize("new", 1, &[sample("created", (0, 1), (1, 1), 0)]),
            KindReport::summarize("updated", 1, &[sample("updated", (0, 1), (1, 0), 0)]),
            KindReport::summarize(
                "duplicate",
                1,
                &[sample("duplicate_skipped", (0, 0), (0, 0), 0)],
            ),
            KindReport::summarize("echo", 1, &[sample("echo_skipped", (0, 0), (0, 0), 0)]),
        ]
    }

    #[test]
    fn a_clean_crm_events_run_meets_every_target_and_each_violation_is_named() {
        let all = ReferralCheck {
            opportunities: 2,
            exactly_one: 2,
            more_than_one: 0,
            missing: 0,
        };
        let checks = evaluate(&run_with(good_kinds(), all));
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        // outcomes × 4, new × 2, updated, duplicate, echo, calls ÷ unavoidable × 4, DynamoDB × 4,
        // own CPU × 4, referrals
        assert_eq!(checks.len(), 22);

        let mut kinds = good_kinds();
        // Two PATCHes, and a referral read before them: over 1.00.
        kinds[1] = KindReport::summarize("updated", 1, &[sample("updated", (1, 2), (1, 0), 0)]);
        kinds[3] = KindReport::summarize("echo", 1, &[sample("echo_skipped", (1, 0), (0, 0), 0)]);
        let doubled = ReferralCheck {
            more_than_one: 1,
            exactly_one: 1,
            ..all
        };
        let failed: Vec<String> = evaluate(&run_with(kinds, doubled))
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.kind)
            .collect();
        assert_eq!(failed, ["updated", "updated", "echo", "echo", "all"]);
    }
}
