//! The harness of the worker's end-to-end tests: a spawned sandbox (Partner Center, Entra ID,
//! Dataverse, Salesforce), a DynamoDB table and a retry queue with its dead-letter queue on moto,
//! and the worker's app built from the environment a deployment would have (`STORE=dynamodb`).
//!
//! Lambda's event source mapping is played by the test: [`Harness::poll`] receives from the
//! real queue, builds the `SqsEvent`, calls the handler, deletes what succeeded and, instead of
//! waiting out a backoff, makes the failures visible again at once.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use cosell_adapters::aws::{QueueOptions, QueueUrls, ReceivedMessage, SqsQueue, SqsRetryQueue};
use cosell_adapters::{AwsClients, provision_queues, provision_table};
use cosell_domain::ReferralId;
use cosell_domain::ports::{AuditEntry, AuditLog, RetryJob, RetrySource};
use cosell_domain::sync::partner_center_event_key;
use cosell_domain::webhook::WebhookEvent;
use cosell_runtime::{Clients, Connector, Deployed, Stores};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::SALESFORCE_APP_KEY_PEM;
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use retry_worker::queue::QueueError;
use retry_worker::{App, Config, FixedJitter, Invocation, SqsWorkerQueues, WorkerQueues};
use serde_json::{Value, json};

/// The CRM a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    Dataverse,
    Salesforce,
}

impl Crm {
    pub fn service(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }

    pub fn referral_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralidentifier",
            Self::Salesforce => "Referral_Identifier__c",
        }
    }

    /// The control path listing a table / object, and the member holding its rows.
    fn rows(self, table: &str) -> (String, &'static str) {
        match self {
            Self::Dataverse => {
                let set = match table {
                    "opportunity" => "opportunities",
                    "account" => "accounts",
                    _ => "contacts",
                };
                (format!("/_sandbox/dataverse/{set}"), "value")
            }
            Self::Salesforce => {
                let object = match table {
                    "opportunity" => "Opportunity",
                    "account" => "Account",
                    _ => "Contact",
                };
                (format!("/_sandbox/salesforce/{object}"), "records")
            }
        }
    }
}

pub use cosell_testkit::moto::{clients as moto, endpoint as moto_endpoint};

pub fn unique(what: &str) -> String {
    cosell_testkit::unique(&format!("cosell-rw-{what}"))
}

/// Records every visibility change (and delegates to SQS).
#[derive(Debug)]
pub struct Recording {
    pub inner: SqsWorkerQueues,
    pub visibility: Mutex<Vec<Duration>>,
    pub dead_lettered: Mutex<usize>,
}

impl WorkerQueues for Recording {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.visibility.lock().unwrap().push(timeout);
        self.inner.change_visibility(receipt_handle, timeout).await
    }

    async fn dead_letter(&self, message: &SqsMessage) -> Result<(), QueueError> {
        *self.dead_lettered.lock().unwrap() += 1;
        self.inner.dead_letter(message).await
    }
}

pub type WorkerApp = App<Deployed, Recording>;

/// The environment a deployment against the sandbox and moto would have.
pub fn environment(
    base: &str,
    crm: Crm,
    table: &str,
    queues: &QueueUrls,
    max_receive_count: u32,
) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("PC_API_BASE_URL", base),
        ("ENTRA_AUTHORITY", base),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "dynamodb"),
        ("TABLE_NAME", table),
        ("RETRY_QUEUE_URL", &queues.queue_url),
        ("DLQ_URL", &queues.dlq_url),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    vars.insert("MAX_RECEIVE_COUNT".into(), max_receive_count.to_string());
    let crm_vars: &[(&str, &str)] = match crm {
        Crm::Dataverse => &[
            ("CRM_KIND", "dataverse"),
            ("DATAVERSE_URL", base),
            ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
            ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
        ],
        Crm::Salesforce => &[
            ("CRM_KIND", "salesforce"),
            ("SALESFORCE_LOGIN_URL", base),
            ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
            ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
            ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
        ],
    };
    vars.extend(
        crm_vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    vars
}

pub struct Harness {
    pub sandbox: RunningSandbox,
    pub control: reqwest::Client,
    pub aws: AwsClients,
    pub table: String,
    pub queues: QueueUrls,
    pub queue: SqsQueue,
    pub dlq: SqsQueue,
    pub app: WorkerApp,
    pub crm: Crm,
    pub env: HashMap<String, String>,
}

impl Harness {
    pub async fn start(crm: Crm, max_receive_count: u32) -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let aws = moto().await;
        let table = unique("table");
        provision_table(&aws.dynamodb, &table)
            .await
            .unwrap_or_else(|e| panic!("provision table {table}: {e}"));
        let queues = provision_queues(
            &aws.sqs,
            &unique("retry"),
            &QueueOptions {
                visibility_timeout: Duration::from_secs(60),
                max_receive_count,
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap();
        let env = environment(&sandbox.base_url, crm, &table, &queues, max_receive_count);
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        let clients = Clients::from_config(&config.sync).unwrap();
        let stores = Stores::dynamo(&aws, &table, &queues.queue_url);
        let connector = Connector::new(
            clients,
            stores,
            config.sync.mapping.clone(),
            config.sync_settings(),
        );
        let queues_port = Recording {
            inner: SqsWorkerQueues::new(aws.sqs.clone(), &queues.queue_url, &queues.dlq_url),
            visibility: Mutex::new(Vec::new()),
            dead_lettered: Mutex::new(0),
        };
        let app = App::new(connector, queues_port, &config);
        Self {
            queue: SqsQueue::new(aws.sqs.clone(), &queues.queue_url),
            dlq: SqsQueue::new(aws.sqs.clone(), &queues.dlq_url),
            sandbox,
            control: reqwest::Client::new(),
            aws,
            table,
            queues,
            app,
            crm,
            env,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url)
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.control.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.control.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    pub async fn inject(&self, fault: Value) {
        self.call(reqwest::Method::POST, "/_sandbox/faults", Some(fault))
            .await;
    }

    pub async fn clear_faults(&self) {
        self.call(reqwest::Method::DELETE, "/_sandbox/faults", None)
            .await;
    }

    pub async fn requests(&self) -> Vec<Value> {
        self.get("/_sandbox/requests").await["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A new Microsoft co-sell referral in the sandbox; its id.
    pub async fn seed_referral(&self) -> String {
        let id = uuid_v4();
        let engagement = uuid_v4();
        self.call(
            reqwest::Method::POST,
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            Some(json!({ "id": id, "engagementId": engagement })),
        )
        .await;
        id
    }

    /// Rows of a CRM table (`opportunity`, `account`, `contact`).
    /// The idempotency records in the table, read as the function's store reads them.
    pub fn idempotency_records(&self) -> cosell_adapters::aws::DynamoIdempotencyStore {
        cosell_adapters::aws::DynamoIdempotencyStore::new(self.aws.dynamodb.clone(), &self.table)
    }

    pub async fn rows(&self, table: &str) -> Vec<Value> {
        let (path, member) = self.crm.rows(table);
        self.get(&path).await[member]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The opportunities of `referral`.
    pub async fn opportunities_of(&self, referral: &str) -> Vec<Value> {
        self.rows("opportunity")
            .await
            .into_iter()
            .filter(|row| row[self.crm.referral_field()] == referral)
            .collect()
    }

    /// Put the retry job of a `referral-created` event of `referral` on the retry queue.
    pub async fn enqueue_created(&self, referral: &str) -> RetryJob {
        let job = created_job(referral);
        SqsRetryQueue::new(self.aws.sqs.clone(), &self.queues.queue_url)
            .try_enqueue(&job, Duration::ZERO)
            .await
            .unwrap();
        job
    }

    /// Receive what is visible (up to 10), as Lambda would hand it over.
    pub async fn receive(&self) -> (Vec<ReceivedMessage>, SqsEvent) {
        let messages = self
            .queue
            .receive(10, Duration::from_secs(2))
            .await
            .unwrap();
        let event = sqs_event(&messages, &self.queues.queue_arn);
        (messages, event)
    }

    /// One poll of the event source mapping: receive, handle at `now`, delete the successes,
    /// make the failures visible again at once. Returns the messages and the answer.
    pub async fn poll(&self, now: DateTime<Utc>) -> (Vec<ReceivedMessage>, SqsBatchResponse) {
        let (messages, event) = self.receive().await;
        let answer = retry_worker::handle(
            &event,
            &self.app,
            &Invocation::new(now, None),
            &FixedJitter(0.5),
        )
        .await;
        let failed: Vec<&str> = answer
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for message in &messages {
            if failed.contains(&message.message_id.as_str()) {
                self.queue
                    .change_visibility(&message.receipt_handle, Duration::ZERO)
                    .await
                    .unwrap();
            } else {
                self.queue.delete(&message.receipt_handle).await.unwrap();
            }
        }
        (messages, answer)
    }

    pub fn visibility(&self) -> Vec<Duration> {
        self.app.queues.visibility.lock().unwrap().clone()
    }

    pub async fn audit(&self, referral: &str) -> Vec<AuditEntry> {
        let id = ReferralId::try_from(referral).unwrap();
        let mut entries = self
            .app
            .connector
            .stores
            .audit
            .by_referral(&id, 100)
            .await
            .unwrap();
        entries.reverse();
        entries
    }

    pub async fn depth(&self, queue: &SqsQueue) -> u64 {
        let depth = queue.depth().await.unwrap();
        depth.visible + depth.in_flight + depth.delayed
    }
}

/// The retry job a webhook function queues for a `referral-created` event it could not sync.
pub fn created_job(referral: &str) -> RetryJob {
    let event: WebhookEvent = serde_json::from_value(json!({
        "EventName": "referral-created",
        "ResourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral}"),
        "ResourceName": "referral",
        "AuditUri": null,
        "ResourceChangeUtcDate": "2026-11-20T10:15:30.1234567+00:00"
    }))
    .unwrap();
    RetryJob {
        source: RetrySource::PartnerCenter,
        key: partner_center_event_key(&event, Utc::now())
            .unwrap()
            .to_string(),
        attempt: 1,
        payload: serde_json::to_value(&event).unwrap(),
    }
}

/// The `SqsEvent` Lambda builds from received messages.
pub fn sqs_event(messages: &[ReceivedMessage], queue_arn: &str) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|message| {
            let attributes: serde_json::Map<String, Value> = message
                .attributes
                .iter()
                .map(|(name, value)| {
                    let data_type = message
                        .attribute_types
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| "String".into());
                    (
                        name.clone(),
                        json!({ "stringValue": value, "dataType": data_type,
                                "stringListValues": [], "binaryListValues": [] }),
                    )
                })
                .collect();
            json!({
                "messageId": message.message_id,
                "receiptHandle": message.receipt_handle,
                "body": message.body,
                "attributes": {
                    "ApproximateReceiveCount": message.receive_count.unwrap_or(1).to_string(),
                    "SentTimestamp": message.sent_at.map(|at| at.timestamp_millis().to_string()).unwrap_or_default(),
                },
                "messageAttributes": attributes,
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// A random UUID as text.
pub fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}
