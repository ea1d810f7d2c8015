//! The deployed topology on one machine, for `cosell dev` and `cosell soak`: the four real
//! function binaries on the sandbox's local Lambda (`cosell_sandbox::lambda`, described in
//! docs/aws.md#the-local-lambda), wired as `infra/template.yaml` wires them — the two webhook
//! functions behind Function URLs (the sandbox's Partner Center webhook registration and its CRM
//! notifications point at them), the retry queue feeding `retry-worker` in batches of ten with
//! partial batch responses and a dead-letter queue after `maxReceiveCount` receives, `reconcile`
//! on a schedule — against the sandbox and DynamoDB + SQS on moto.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aws_config::{BehaviorVersion, Region};
use cosell_adapters::{AwsClients, QueueOptions, QueueUrls, provision_queues, provision_table};
use cosell_sandbox::lambda::{FunctionSpec, LocalLambda, SqsSource};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use reqwest::Method;
use serde_json::json;

use crate::demo::{
    Crm, DATAVERSE_WEBHOOK_KEY, SALESFORCE_ENDPOINT_SECRET, SandboxClient, crm_events_environment,
};

/// The functions, by binary name.
pub const PARTNER_CENTER_EVENTS: &str = "partner-center-events";
/// See [`PARTNER_CENTER_EVENTS`].
pub const CRM_EVENTS: &str = "crm-events";
/// See [`PARTNER_CENTER_EVENTS`].
pub const RETRY_WORKER: &str = "retry-worker";
/// See [`PARTNER_CENTER_EVENTS`].
pub const RECONCILE: &str = "reconcile";

/// How long an instance may take to start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The CRM the functions sync with.
    pub crm: Crm,
    /// Where the four function binaries are (`target/debug` after `cargo build`).
    pub bin_dir: PathBuf,
    /// Where the functions' logs go (`<function>.log`).
    pub log_dir: PathBuf,
    /// moto's endpoint (DynamoDB and SQS).
    pub moto: String,
    /// Instances of each webhook function (their concurrency).
    pub webhook_instances: usize,
    /// Instances of the retry worker (and pollers of its queue).
    pub retry_instances: usize,
    /// The reconcile schedule's rate (none: run it on demand with [`Stack::reconcile`]).
    pub reconcile_every: Option<Duration>,
    /// The retry queue's visibility timeout and `maxReceiveCount`.
    pub queues: QueueOptions,
    /// The sandbox's settings.
    pub sandbox: SandboxConfig,
    /// More variables for every function (they win over the stack's own).
    pub env: BTreeMap<String, String>,
}

impl StackOptions {
    /// Defaults for `crm`: binaries next to the running executable, moto at `moto`.
    pub fn new(crm: Crm, bin_dir: PathBuf, log_dir: PathBuf, moto: String) -> Self {
        Self {
            crm,
            bin_dir,
            log_dir,
            moto,
            webhook_instances: 4,
            retry_instances: 2,
            reconcile_every: None,
            queues: QueueOptions {
                visibility_timeout: Duration::from_secs(20),
                ..QueueOptions::default()
            },
            sandbox: SandboxConfig::default(),
            env: BTreeMap::new(),
        }
    }
}

/// The running topology; dropping it stops the functions, then the sandbox.
#[derive(Debug)]
pub struct Stack {
    /// The functions (dropped first).
    pub lambda: LocalLambda,
    /// Partner Center, Entra ID, Dataverse and Salesforce.
    pub sandbox: RunningSandbox,
    /// The sandbox's control API.
    pub client: SandboxClient,
    /// DynamoDB and SQS on moto.
    pub aws: AwsClients,
    /// The table (idempotency, links, audit, budget, checkpoints).
    pub table: String,
    /// The retry queue and its dead-letter queue.
    pub queues: QueueUrls,
    /// The CRM.
    pub crm: Crm,
}

impl Stack {
    /// Starts the sandbox, provisions a fresh table and queues in moto, starts the four
    /// functions and points the sandbox's webhooks at them.
    pub async fn start(options: StackOptions) -> Result<Self> {
        for function in [PARTNER_CENTER_EVENTS, CRM_EVENTS, RETRY_WORKER, RECONCILE] {
            let binary = options.bin_dir.join(function);
            if !binary.is_file() {
                bail!(
                    "{} is missing: build the functions first (cargo build -p partner-center-events \
                     --features sandbox -p crm-events -p retry-worker -p reconcile)",
                    binary.display()
                );
            }
        }
        let aws_config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&options.moto)
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await;
        let aws = AwsClients::from_conf(&aws_config);
        let table = format!(
            "cosell-local-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        );
        provision_table(&aws.dynamodb, &table)
            .await
            .with_context(|| format!("provision the table in moto at {}", options.moto))?;
        let queues = provision_queues(&aws.sqs, &table, &options.queues)
            .await
            .with_context(|| format!("provision the queues in moto at {}", options.moto))?;
        let sandbox = cosell_sandbox::spawn(options.sandbox.clone())
            .await
            .context("start the sandbox")?;
        let client = SandboxClient::new(&sandbox.base_url);

        let mut env: BTreeMap<String, String> =
            crm_events_environment(&sandbox.base_url, options.crm)
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
        let max_receive_count = options.queues.max_receive_count.to_string();
        env.extend(
            [
                ("STORE", "dynamodb"),
                ("TABLE_NAME", table.as_str()),
                ("RETRY_QUEUE_URL", queues.queue_url.as_str()),
                ("DLQ_URL", queues.dlq_url.as_str()),
                ("MAX_RECEIVE_COUNT", max_receive_count.as_str()),
                ("SANDBOX_INSECURE_CERT_HOSTS", &sandbox.addr.to_string()),
                ("AWS_ENDPOINT_URL", options.moto.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
                ("RUST_LOG", "info"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        env.extend(options.env.clone());
        let spec = |name: &str, instances: usize, timeout: u64| FunctionSpec {
            name: name.to_owned(),
            binary: options.bin_dir.join(name),
            env: env.clone(),
            instances,
            timeout: Duration::from_secs(timeout),
        };
        // The template's timeouts: 30 s for the webhook functions, 60 s for the retry worker,
        // 300 s for reconcile.
        let functions = vec![
            spec(PARTNER_CENTER_EVENTS, options.webhook_instances, 30),
            spec(CRM_EVENTS, options.webhook_instances, 30),
            spec(RETRY_WORKER, options.retry_instances, 60),
            spec(RECONCILE, 1, 300),
        ];
        let lambda = LocalLambda::start(functions, &options.log_dir)
            .await
            .context("start the local Lambda")?;
        for function in [PARTNER_CENTER_EVENTS, CRM_EVENTS, RETRY_WORKER, RECONCILE] {
            lambda
                .wait_ready(function, READY_TIMEOUT)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        lambda.poll_sqs(
            RETRY_WORKER,
            SqsSource {
                client: aws.sqs.clone(),
                queue_url: queues.queue_url.clone(),
                batch_size: 10,
                pollers: options.retry_instances,
            },
        );
        if let Some(every) = options.reconcile_every {
            lambda.schedule(RECONCILE, every);
        }
        let stack = Self {
            lambda,
            sandbox,
            client,
            aws,
            table,
            queues,
            crm: options.crm,
        };
        stack.point_webhooks().await?;
        Ok(stack)
    }

    /// The sandbox's Partner Center webhook registration and its CRM's notifications point at
    /// the two webhook functions' URLs.
    async fn point_webhooks(&self) -> Result<()> {
        self.client
            .register_webhook(
                Method::POST,
                &self.lambda.function_url(PARTNER_CENTER_EVENTS),
            )
            .await
            .context("register the Partner Center webhook")?;
        let crm_events = self.lambda.function_url(CRM_EVENTS);
        match self.crm {
            Crm::Dynamics => {
                self.client
                    .put(
                        "/_sandbox/dataverse/webhook",
                        &json!({"url": format!("{crm_events}dataverse"), "authtype": "WebhookKey",
                                "authvalue": DATAVERSE_WEBHOOK_KEY}),
                    )
                    .await?;
            }
            Crm::Salesforce => {
                let mut definition = self
                    .client
                    .get("/_sandbox/salesforce/outbound-message")
                    .await?;
                definition["url"] = json!(format!(
                    "{crm_events}salesforce/{SALESFORCE_ENDPOINT_SECRET}"
                ));
                self.client
                    .put("/_sandbox/salesforce/outbound-message", &definition)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs `reconcile` once (as its schedule would) and returns its summary.
    pub async fn reconcile(&self) -> Result<serde_json::Value> {
        let event = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        let answer = self
            .lambda
            .invoke(RECONCILE, event.to_string().into())
            .await
            .map_err(|error| anyhow::anyhow!("reconcile failed: {error}"))?;
        Ok(serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null))
    }

    /// The function URLs and where things are, for people.
    pub fn describe(&self, log_dir: &Path) -> Vec<String> {
        vec![
            format!(
                "sandbox (Partner Center, Entra ID, Dataverse, Salesforce): {}",
                self.sandbox.base_url
            ),
            format!(
                "partner-center-events Function URL: {}",
                self.lambda.function_url(PARTNER_CENTER_EVENTS)
            ),
            format!(
                "crm-events Function URL:            {}",
                self.lambda.function_url(CRM_EVENTS)
            ),
            format!("DynamoDB table: {}", self.table),
            format!("retry queue:    {}", self.queues.queue_url),
            format!("dead letters:   {}", self.queues.dlq_url),
            format!("function logs:  {}/<function>.log", log_dir.display()),
        ]
    }
}

/// Where the function binaries are when `cosell` itself runs from `target/<profile>/`: next to
/// it (a test binary in `target/<profile>/deps/` looks one level up).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The CRM, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrmArg {
    /// Dynamics 365 (Dataverse).
    Dataverse,
    /// Salesforce.
    Salesforce,
}

impl From<CrmArg> for Crm {
    fn from(crm: CrmArg) -> Self {
        match crm {
            CrmArg::Dataverse => Self::Dynamics,
            CrmArg::Salesforce => Self::Salesforce,
        }
    }
}

/// Where the stack runs: shared by `cosell dev` and `cosell soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// The CRM the functions sync with.
    #[arg(long, value_enum, default_value = "dataverse")]
    pub crm: CrmArg,
    /// moto's endpoint (DynamoDB and SQS); without it, moto's server (`scripts/moto_server.py`) is
    /// started on a free port.
    #[arg(long, env = "COSELL_MOTO_ENDPOINT", value_parser = moto_endpoint)]
    pub moto: Option<String>,
    /// Where the function binaries are (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the functions' logs go (default: a new directory under the system's temp dir).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// An `http(s)://` URL: anything else (an empty `COSELL_MOTO_ENDPOINT=`, a bare host) is
/// refused with the fix instead of failing later inside the AWS SDK.
fn moto_endpoint(text: &str) -> Result<String, String> {
    match url::Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.trim().to_owned())
        }
        _ => Err(format!(
            "moto's endpoint must be an http(s) URL such as http://127.0.0.1:5000, not \"{text}\"; \
             unset COSELL_MOTO_ENDPOINT (or leave out --moto) to have moto started here"
        )),
    }
}

impl StackArgs {
    /// The options, and moto when it had to be started here (stopped when dropped).
    pub async fn options(&self) -> Result<(StackOptions, Option<Moto>)> {
        let (endpoint, moto) = match &self.moto {
            Some(endpoint) => (endpoint.clone(), None),
            None => {
                let moto = Moto::start().await?;
                (moto.endpoint.clone(), Some(moto))
            }
        };
        let log_dir = self.log_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("cosell-local-{}", std::process::id()))
        });
        let options = StackOptions::new(
            self.crm.into(),
            self.bin_dir.clone().unwrap_or_else(default_bin_dir),
            log_dir,
            endpoint,
        );
        Ok((options, moto))
    }
}

/// moto's server with this repository's patches (`scripts/moto_server.py`: DynamoDB writes as
/// atomic as in AWS, and moto's memory and time kept flat under load -- plain `moto_server` keeps
/// every object it creates and grew by ~1 GB a minute in a soak). Run as `python3 -c`, so the
/// binary needs no checkout.
const MOTO_SERVER_PY: &str = include_str!("../../scripts/moto_server.py");

/// A moto server ([`MOTO_SERVER_PY`]) child process on a free loopback port.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: tokio::process::Child,
}

impl Moto {
    /// Starts moto's server and waits (bounded) until it answers.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = tokio::process::Command::new("python3")
            .args([
                "-c",
                MOTO_SERVER_PY,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "could not start python3 (moto's server): install moto with `python3 -m pip \
                 install 'moto[server]'` or pass --moto <endpoint>",
            )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_err()
        {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "moto's server exited ({status}): is moto installed for python3? \
                     `python3 -m pip install 'moto[server]'`, or pass --moto <endpoint>"
                );
            }
            if std::time::Instant::now() > deadline {
                bail!("moto's server did not answer on {endpoint} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            endpoint,
            _child: child,
        })
    }
}

/// `cosell dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// The reconcile schedule's rate, in seconds.
    #[arg(long, default_value_t = 300)]
    pub reconcile_every: u64,
}

/// `cosell dev`: starts the stack, prints where everything is, runs until Ctrl-C.
pub async fn dev(args: DevArgs) -> std::process::ExitCode {
    let run = async {
        let (mut options, _moto) = args.stack.options().await?;
        options.reconcile_every = Some(Duration::from_secs(args.reconcile_every.max(1)));
        let log_dir = options.log_dir.clone();
        let stack = Stack::start(options).await?;
        println!("cosell-sync runs locally ({}):", stack.crm.label());
        for line in stack.describe(&log_dir) {
            println!("  {line}");
        }
        println!(
            "Try: curl -X POST {}/_sandbox/partner-center/referrals/microsoft-initiated -d '{{}}' \
             -H 'content-type: application/json'   (Ctrl-C stops everything)",
            stack.sandbox.base_url
        );
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cosell dev: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        stack: StackArgs,
    }

    #[test]
    fn an_empty_or_hostless_moto_endpoint_is_refused_with_the_fix() {
        for bad in [
            "",
            " ",
            "localhost:5000",
            "127.0.0.1:5000",
            "ftp://127.0.0.1",
        ] {
            let error = Command::try_parse_from(["cosell", "--moto", bad]).unwrap_err();
            assert!(
                error.to_string().contains("unset COSELL_MOTO_ENDPOINT"),
                "{bad:?}: {error}"
            );
        }
        let parsed =
            Command::try_parse_from(["cosell", "--moto", " http://127.0.0.1:5000 "]).unwrap();
        assert_eq!(parsed.stack.moto.as_deref(), Some("http://127.0.0.1:5000"));
    }
}
