//! The measurement: for each CRM, a sandbox process, a fresh DynamoDB table and SQS queue on
//! moto, the function's [`App`] built as `main` builds it (stores wrapped in [`Counted`],
//! clients in [`Gauged`], both timing their calls with one [`IoGauge`]), and the event kinds
//! run through the real [`handler::handle`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use chrono::{SecondsFormat, Utc};
use cosell_adapters::AwsClients;
use cosell_adapters::aws::aws_config::{self, BehaviorVersion, Region};
use cosell_adapters::aws::{
    DynamoAuditLog, DynamoIdempotencyStore, DynamoLinkStore, QueueOptions, QueueUrls,
    SqsRetryQueue, aws_sdk_dynamodb, aws_sdk_sqs, provision_queues, provision_table,
};
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::{HttpPartnerCenter, WebhookVerifier};
use cosell_domain::ids::CrmKind;
use cosell_domain::ports::Ports;
use cosell_runtime::clients::{self, Clients};
use cosell_runtime::{Connector, Stores, SyncConfig};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::{INTERMEDIATE_CERT_PEM, ROOT_CERT_PEM, SALESFORCE_APP_KEY_PEM};
use lambda_http::{Body, Request, Response};
use partner_center_events::app;
use partner_center_events::{App, Config, handler};
use tokio::task::JoinSet;

use crate::counting::{AwsRequestCounter, CallCounter, Counted, Gauged, IoGauge, delta};
use crate::events::{EventFactory, SignedEvent};
use crate::report::{
    CrmRun, Kind, LoadAverage, OpportunityCheck, Report, Settings, evaluate, method_notes,
};
use crate::sandbox::{Control, SandboxProcess};
use crate::stats::{EventSample, KindReport};
use crate::system::{Machine, Source, load_average, peak_rss_kib, process_cpu_time, status_kib};

/// What [`run`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Events per kind.
    pub events: usize,
    /// Copies fired at once per concurrent duplicate (at least 2).
    pub copies: usize,
    /// The CRMs, in order.
    pub crms: Vec<CrmKind>,
    /// The `cosell-sandbox` binary.
    pub sandbox_bin: PathBuf,
    /// The DynamoDB / SQS endpoint (moto).
    pub aws_endpoint: String,
    /// The AWS region to name.
    pub region: String,
    /// Where the sandbox logs go.
    pub log_dir: PathBuf,
}

/// The moto endpoint: `COSELL_MOTO_ENDPOINT`, else `AWS_ENDPOINT_URL`.
pub fn aws_endpoint_from_env() -> anyhow::Result<String> {
    endpoint_from(|name| std::env::var(name).ok())
}

fn endpoint_from(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    ["COSELL_MOTO_ENDPOINT", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|name| lookup(name).filter(|value| !value.trim().is_empty()))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| {
            anyhow!(
                "no DynamoDB/SQS endpoint: start moto (scripts/test.sh starts one) or set \
                 AWS_ENDPOINT_URL (e.g. `python3 scripts/moto_server.py -H 127.0.0.1 -p 5058 &` \
                 and export COSELL_MOTO_ENDPOINT=http://127.0.0.1:5058)"
            )
        })
}

/// The ports as the benchmark runs them: HTTP clients and the real DynamoDB / SQS stores,
/// every call counted and timed by an [`IoGauge`].
#[derive(Debug)]
pub struct Benched;

impl Ports for Benched {
    type PartnerCenter = Gauged<HttpPartnerCenter>;
    type Crm = Gauged<AnyCrm>;
    type Idempotency = Counted<DynamoIdempotencyStore>;
    type RetryQueue = Counted<SqsRetryQueue>;
    type Audit = Counted<DynamoAuditLog>;
    type Links = Counted<DynamoLinkStore>;
}

/// The real stores as the benchmark runs them: counted and timed.
pub(crate) type BenchStores = Stores<Benched>;

/// The function as the benchmark runs it.
pub type BenchApp = App<Benched>;

/// SDK clients pointed at moto, counting their requests.
pub(crate) struct Aws {
    pub(crate) clients: AwsClients,
    pub(crate) requests: Arc<CallCounter>,
}

impl Aws {
    /// Always the given endpoint and test credentials, whatever else the environment says,
    /// so the benchmark never touches a real account.
    pub(crate) async fn connect(endpoint: &str, region: &str) -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(region.to_owned()))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "cosell-bench",
            ))
            .load()
            .await;
        let requests = Arc::new(CallCounter::default());
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&config)
                .interceptor(AwsRequestCounter(requests.clone()))
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&config)
                .interceptor(AwsRequestCounter(requests.clone()))
                .build(),
        );
        Self {
            clients: AwsClients { dynamodb, sqs },
            requests,
        }
    }
}

/// Run the benchmark: every CRM of `options`, then the targets.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if options.events == 0 {
        bail!("--events must be at least 1");
    }
    if options.copies < 2 {
        bail!("--copies must be at least 2 (concurrent duplicates)");
    }
    let load_at_start = load_average();
    let machine = Machine::detect();
    let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let aws = Aws::connect(&options.aws_endpoint, &options.region).await;
    let mut runs = Vec::new();
    for crm in &options.crms {
        eprintln!("measuring {crm} …");
        runs.push(
            run_crm(options, &aws, *crm)
                .await
                .with_context(|| format!("benchmark against {crm}"))?,
        );
    }
    let targets: Vec<_> = runs.iter().flat_map(evaluate).collect();
    Ok(Report {
        benchmark: "partner-center-events".into(),
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
            concurrent_copies: options.copies,
            crms: options.crms.iter().map(ToString::to_string).collect(),
            aws_endpoint: options.aws_endpoint.clone(),
        },
        method: method_notes(),
        runs,
        peak_rss_kib: peak_rss_kib(),
        ok: targets.iter().all(|target| target.ok),
        targets,
    })
}

/// The environment a deployment against the sandbox would have (`STORE=dynamodb`).
pub(crate) fn environment(
    base_url: &str,
    crm: CrmKind,
    table: &str,
    queue_url: &str,
) -> HashMap<&'static str, String> {
    let mut vars: HashMap<&'static str, String> = [
        ("PC_API_BASE_URL", base_url),
        ("ENTRA_AUTHORITY", base_url),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "dynamodb"),
        ("TABLE_NAME", table),
        ("RETRY_QUEUE_URL", queue_url),
        ("WEBHOOK_TRUST_ANCHORS_PEM", ROOT_CERT_PEM),
        ("WEBHOOK_INTERMEDIATES_PEM", INTERMEDIATE_CERT_PEM),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect();
    let crm_vars: &[(&'static str, &str)] = match crm {
        CrmKind::Dataverse => &[
            ("CRM_KIND", "dataverse"),
            ("DATAVERSE_URL", base_url),
            ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
            ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
        ],
        CrmKind::Salesforce => &[
            ("CRM_KIND", "salesforce"),
            ("SALESFORCE_LOGIN_URL", base_url),
            ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
            ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
            ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
        ],
    };
    vars.extend(
        crm_vars
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    vars
}

/// The app `main` would build from that environment, except that the verifier also accepts
/// the sandbox's plain-http certificate URL, the stores are counted and every port call is
/// timed by `gauge`.
fn build_app(
    sandbox: &SandboxProcess,
    crm: CrmKind,
    aws: &Aws,
    table: &str,
    queues: &QueueUrls,
    counter: &Arc<CallCounter>,
    gauge: &Arc<IoGauge>,
) -> anyhow::Result<BenchApp> {
    let vars = environment(&sandbox.base_url, crm, table, &queues.queue_url);
    let config = Config::from_lookup(|name| vars.get(name).cloned())?;
    let stores = counted_stores(aws, table, &queues.queue_url, counter, gauge);
    Ok(App {
        connector: Connector::new(
            gauged_clients(&config.sync, gauge)?,
            stores,
            config.sync.mapping.clone(),
            config.sync_settings(),
        ),
        verifier: WebhookVerifier::with_insecure_hosts(
            app::verifier_settings(&config.webhook),
            [sandbox.addr.to_string()],
        )?,
        max_body_bytes: config.max_body_bytes,
    })
}

/// The HTTP clients as `main` builds them, each wrapped to time its calls.
pub(crate) fn gauged_clients(
    sync: &SyncConfig,
    gauge: &Arc<IoGauge>,
) -> anyhow::Result<Clients<Benched>> {
    let http = clients::http_client()?;
    Ok(Clients {
        partner_center: Gauged::new(
            clients::partner_center(http.clone(), &sync.partner_center)?,
            gauge.clone(),
        ),
        crm: Gauged::new(clients::crm(http, &sync.crm, &sync.mapping)?, gauge.clone()),
    })
}

/// The real DynamoDB / SQS stores, each counted into `counter` and timed by `gauge`.
pub(crate) fn counted_stores(
    aws: &Aws,
    table: &str,
    queue_url: &str,
    counter: &Arc<CallCounter>,
    gauge: &Arc<IoGauge>,
) -> BenchStores {
    let dynamodb = &aws.clients.dynamodb;
    Stores {
        idempotency: Counted::new(
            DynamoIdempotencyStore::new(dynamodb.clone(), table),
            counter.clone(),
            gauge.clone(),
            "dynamodb:idempotency",
        ),
        retry_queue: Counted::new(
            SqsRetryQueue::new(aws.clients.sqs.clone(), queue_url),
            counter.clone(),
            gauge.clone(),
            "sqs:retry_queue",
        ),
        audit: Counted::new(
            DynamoAuditLog::new(dynamodb.clone(), table),
            counter.clone(),
            gauge.clone(),
            "dynamodb:audit",
        ),
        links: Counted::new(
            DynamoLinkStore::new(dynamodb.clone(), table),
            counter.clone(),
            gauge.clone(),
            "dynamodb:links",
        ),
    }
}

/// Measures events through the handler.
struct Meter<'a> {
    app: Arc<BenchApp>,
    control: &'a Control,
    crm: CrmKind,
    stores: Arc<CallCounter>,
    aws_requests: Arc<CallCounter>,
    /// The CPU time spent in port calls.
    gauge: Arc<IoGauge>,
}

/// The handler's answer: its `status`, else its error `code`, else `http_<status>`.
fn outcome(response: &Response<Body>) -> String {
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_ref()).unwrap_or_default();
    body["status"]
        .as_str()
        .or_else(|| body["code"].as_str())
        .map_or_else(
            || format!("http_{}", response.status().as_u16()),
            str::to_owned,
        )
}

impl Meter<'_> {
    /// One event: the requests (one, or the concurrent copies) handled, timed and counted.
    /// The sandbox's request log is read (and cleared) afterwards, outside the timed span.
    async fn measure(&self, requests: Vec<Request>) -> anyhow::Result<EventSample> {
        let stores_before = self.stores.snapshot();
        let aws_before = self.aws_requests.snapshot();
        let io_before = self.gauge.total();
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        let outcomes = match <[Request; 1]>::try_from(requests) {
            Ok([request]) => {
                let response = handler::handle(request, &self.app)
                    .await
                    .map_err(|error| anyhow!("the handler failed: {error}"))?;
                vec![outcome(&response)]
            }
            Err(requests) => {
                let mut copies = JoinSet::new();
                for request in requests {
                    let app = self.app.clone();
                    copies.spawn(async move {
                        handler::handle(request, &app)
                            .await
                            .map(|response| outcome(&response))
                            .map_err(|error| anyhow!("the handler failed: {error}"))
                    });
                }
                let mut outcomes = Vec::new();
                while let Some(joined) = copies.join_next().await {
                    outcomes.push(joined.context("a concurrent copy panicked")??);
                }
                outcomes
            }
        };
        let latency = started.elapsed();
        let cpu = process_cpu_time().saturating_sub(cpu_before);
        let io_cpu = self.gauge.total().saturating_sub(io_before);
        let stores = delta(&stores_before, &self.stores.snapshot());
        let aws_requests = delta(&aws_before, &self.aws_requests.snapshot());
        let external = self.control.take_requests(self.crm).await?;
        Ok(EventSample {
            latency,
            cpu,
            io_cpu,
            outcomes,
            external,
            stores,
            aws_requests,
        })
    }

    /// Each event in turn (one invocation at a time).
    async fn each(
        &self,
        factory: &EventFactory,
        events: &[SignedEvent],
    ) -> anyhow::Result<Vec<EventSample>> {
        let requests = events
            .iter()
            .map(|event| factory.request(event))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.control.clear_requests().await?;
        let mut samples = Vec::with_capacity(requests.len());
        for request in requests {
            samples.push(self.measure(vec![request]).await?);
        }
        Ok(samples)
    }
}

/// Seed `count` fresh referrals tagged `<run>-<prefix><i>`; their ids.
async fn seed(
    control: &Control,
    run_id: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = uuid::Uuid::new_v4().to_string();
        control
            .seed_referral(&id, &format!("{run_id}-{prefix}{i:05}"))
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// What one CRM's run works in: its own sandbox process, table and queues on moto.
pub(crate) struct RunEnv {
    pub run_id: String,
    pub sandbox: SandboxProcess,
    pub control: Control,
    pub table: String,
    pub queues: QueueUrls,
}

impl RunEnv {
    /// Starts the sandbox (its log `sandbox-<function>-<crm>.log`) and provisions the table
    /// and queues of a run of `function` against `crm`.
    pub(crate) async fn start(
        options: &Options,
        aws: &Aws,
        function: &str,
        crm: CrmKind,
    ) -> anyhow::Result<Self> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let log = options
            .log_dir
            .join(format!("sandbox-{function}-{crm}.log"));
        let sandbox = SandboxProcess::start(&options.sandbox_bin, &log).await?;
        let control = Control::new(&sandbox.base_url)?;
        let table = format!("cosell-bench-{function}-{crm}-{run_id}");
        provision_table(&aws.clients.dynamodb, &table)
            .await
            .with_context(|| format!("creating the DynamoDB table {table} on moto"))?;
        let queues = provision_queues(
            &aws.clients.sqs,
            &format!("{table}-retry"),
            &QueueOptions::default(),
        )
        .await
        .with_context(|| format!("creating the SQS queues {table}-retry on moto"))?;
        Ok(Self {
            run_id,
            sandbox,
            control,
            table,
            queues,
        })
    }

    /// Best effort: the run's table and queues are not needed any more.
    pub(crate) async fn remove(&self, aws: &Aws) {
        let _ = aws
            .clients
            .dynamodb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await;
        for url in [&self.queues.queue_url, &self.queues.dlq_url] {
            let _ = aws.clients.sqs.delete_queue().queue_url(url).send().await;
        }
    }
}

/// Everything measured against one CRM.
async fn run_crm(options: &Options, aws: &Aws, crm: CrmKind) -> anyhow::Result<CrmRun> {
    let env = RunEnv::start(options, aws, "partner-center-events", crm).await?;
    let result = measure_crm(options, aws, crm, &env).await;
    env.remove(aws).await;
    result
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
        table,
        queues,
    } = env;
    let counter = Arc::new(CallCounter::default());
    let gauge = Arc::new(IoGauge::default());
    let app = build_app(sandbox, crm, aws, table, queues, &counter, &gauge)?;
    let meter = Meter {
        app: Arc::new(app),
        control,
        crm,
        stores: counter,
        aws_requests: aws.requests.clone(),
        gauge,
    };
    let factory = EventFactory::new(&sandbox.base_url, run_id);
    let n = options.events;
    let mut referrals = Vec::new();

    // Cold start: the first event of a fresh app (tokens, certificate, connections).
    let warm = seed(control, run_id, "w", 1).await?;
    let cold = meter
        .each(&factory, &[factory.event("referral-created", &warm[0])])
        .await?;
    let cold_start = KindReport::summarize("cold_start", 1, &cold);
    referrals.extend(warm);

    // new: a fresh referral each (its own customer: account and contact created).
    let ids = seed(control, run_id, "n", n).await?;
    let created: Vec<SignedEvent> = ids
        .iter()
        .map(|id| factory.event("referral-created", id))
        .collect();
    let new = meter.each(&factory, &created).await?;

    // echo: the referral-updated our own write-back raised (the referral is unchanged since),
    // stamped with the referral's updatedDateTime, as Partner Center stamps a change.
    let mut echoes = Vec::with_capacity(ids.len());
    for id in &ids {
        let changed = control.referral_updated(id).await?;
        echoes.push(factory.event_at("referral-updated", id, changed));
    }
    let echo = meter.each(&factory, &echoes).await?;

    // updated: a seller changed the referral (its event stamped with the change's time).
    let mut updates = Vec::with_capacity(ids.len());
    for (revision, id) in (1_u64..).zip(&ids) {
        control.change_referral(id, revision).await?;
        let changed = control.referral_updated(id).await?;
        updates.push(factory.event_at("referral-updated", id, changed));
    }
    let updated = meter.each(&factory, &updates).await?;

    // duplicate: Partner Center redelivers the completed referral-created events as they were.
    let duplicate = meter.each(&factory, &created).await?;
    referrals.extend(ids);

    // concurrent_duplicate: k copies of a fresh referral's referral-created at once.
    let fresh = seed(control, run_id, "c", n).await?;
    let mut groups = Vec::with_capacity(n);
    for id in &fresh {
        let event = factory.event("referral-created", id);
        groups.push(
            (0..options.copies)
                .map(|_| factory.request(&event))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
    }
    control.clear_requests().await?;
    let mut concurrent = Vec::with_capacity(n);
    for group in groups {
        concurrent.push(meter.measure(group).await?);
    }
    referrals.extend(fresh);

    let counts = control.opportunities_per_referral(crm).await?;
    let opportunities = OpportunityCheck::of(referrals.iter().map(String::as_str), &counts);
    let sandbox_peak_rss_kib = std::fs::read_to_string(format!("/proc/{}/status", sandbox.pid()))
        .ok()
        .and_then(|status| status_kib(&status, "VmHWM"));

    let kinds = Kind::ALL
        .into_iter()
        .map(|kind| {
            let (samples, copies) = match kind {
                Kind::New => (&new, 1),
                Kind::Updated => (&updated, 1),
                Kind::Duplicate => (&duplicate, 1),
                Kind::Echo => (&echo, 1),
                Kind::ConcurrentDuplicate => (&concurrent, options.copies),
            };
            KindReport::summarize(kind.name(), copies, samples)
        })
        .collect();
    Ok(CrmRun {
        crm: crm.to_string(),
        cold_start,
        kinds,
        opportunities,
        referrals: None,
        sandbox_peak_rss_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_moto_then_the_sdk_variable_else_a_clear_error() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        assert_eq!(
            endpoint_from(env(&[
                ("COSELL_MOTO_ENDPOINT", "http://127.0.0.1:5058"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ]))
            .expect("an endpoint"),
            "http://127.0.0.1:5058"
        );
        assert_eq!(
            endpoint_from(env(&[
                ("COSELL_MOTO_ENDPOINT", " "),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ]))
            .expect("an endpoint"),
            "http://127.0.0.1:9"
        );
        let error = endpoint_from(env(&[]))
            .expect_err("no endpoint")
            .to_string();
        assert!(
            error.contains("start moto (scripts/test.sh starts one) or set AWS_ENDPOINT_URL"),
            "{error}"
        );
    }

    #[test]
    fn the_environment_is_a_valid_dynamodb_configuration_for_both_crms() {
        for crm in [CrmKind::Dataverse, CrmKind::Salesforce] {
            let vars = environment("http://127.0.0.1:8700", crm, "t", "http://q/1/retry");
            let config = Config::from_lookup(|name| vars.get(name).cloned())
                .unwrap_or_else(|error| panic!("{crm}: {error}"));
            assert_eq!(
                config.sync.store,
                cosell_runtime::StoreConfig::DynamoDb {
                    table_name: "t".into(),
                    retry_queue_url: "http://q/1/retry".into(),
                }
            );
        }
    }

    #[test]
    fn answers_are_read_as_status_or_code() {
        let answer = |status: u16, body: &str| {
            Response::builder()
                .status(status)
                .body(Body::Text(body.to_owned()))
                .expect("a response")
        };
        assert_eq!(outcome(&answer(200, r#"{"status":"created"}"#)), "created");
        assert_eq!(
            outcome(&answer(401, r#"{"code":"unauthorized","message":"no"}"#)),
            "unauthorized"
        );
        assert_eq!(outcome(&answer(502, "oops")), "http_502");
    }
}
