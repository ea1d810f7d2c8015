//! The samples' harness: the in-process sandbox, in-memory stores and a recording queue port
//! (no AWS), shared by `samples.rs` and `log_line.rs`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::Utc;
use cosell_runtime::{Connector, Local};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    TENANT_ID,
};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use retry_worker::queue::QueueError;
use retry_worker::{App, Config, FixedJitter, Invocation, WorkerQueues};
use serde_json::{Value, json};

pub const REFERRAL: &str = "6b8f2f5e-3c1a-4e0b-9d7a-1f2e3d4c5b01";
pub const SECOND_REFERRAL: &str = "6b8f2f5e-3c1a-4e0b-9d7a-1f2e3d4c5b02";

pub fn sample(name: &str) -> SqsEvent {
    let text = match name {
        "referral-created-job" => {
            include_str!("../../../../../events/retry-worker/referral-created-job.json")
        }
        "batch-with-malformed-body" => {
            include_str!("../../../../../events/retry-worker/batch-with-malformed-body.json")
        }
        other => panic!("no sample {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Records the queue calls.
#[derive(Debug, Default)]
pub struct Recorder {
    pub visibility: Mutex<Vec<(String, Duration)>>,
    pub dead_letters: Mutex<Vec<Option<String>>>,
}

impl WorkerQueues for Recorder {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.visibility
            .lock()
            .unwrap()
            .push((receipt_handle.to_owned(), timeout));
        Ok(())
    }

    async fn dead_letter(&self, message: &SqsMessage) -> Result<(), QueueError> {
        self.dead_letters.lock().unwrap().push(message.body.clone());
        Ok(())
    }
}

pub type TestApp = App<Local, Recorder>;

pub struct Harness {
    pub sandbox: RunningSandbox,
    pub control: reqwest::Client,
    pub app: TestApp,
}

impl Harness {
    pub async fn start() -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let base = sandbox.base_url.as_str();
        let vars: HashMap<&str, &str> = HashMap::from([
            ("PC_API_BASE_URL", base),
            ("ENTRA_AUTHORITY", base),
            ("PC_TENANT_ID", TENANT_ID),
            ("PC_CLIENT_ID", PC_CLIENT_ID),
            ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
            ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
            ("STORE", "memory"),
            ("CRM_KIND", "dataverse"),
            ("DATAVERSE_URL", base),
            ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
            ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
            (
                "RETRY_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/retry",
            ),
            ("DLQ_URL", "https://sqs.eu-west-1.amazonaws.com/1/retry-dlq"),
            ("MAX_RECEIVE_COUNT", "3"),
        ]);
        let config = Config::from_lookup(|name| vars.get(name).map(|v| (*v).to_owned())).unwrap();
        let connector = Connector::local(&config.sync, config.sync_settings()).unwrap();
        let app = App::new(connector, Recorder::default(), &config);
        Self {
            sandbox,
            control: reqwest::Client::new(),
            app,
        }
    }

    pub async fn post(&self, path: &str, body: Value) {
        let response = self
            .control
            .post(format!("{}{path}", self.sandbox.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "POST {path}");
    }

    pub async fn seed(&self, id: &str) {
        self.post(
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            json!({ "id": id, "engagementId": uuid::Uuid::new_v4() }),
        )
        .await;
    }

    pub async fn opportunities_of(&self, referral: &str) -> usize {
        let all: Value = self
            .control
            .get(format!(
                "{}/_sandbox/dataverse/opportunities",
                self.sandbox.base_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["msft_microsoftpartnercenterreferralidentifier"] == referral)
            .count()
    }

    pub async fn handle(&self, event: &SqsEvent) -> Vec<String> {
        retry_worker::handle(
            event,
            &self.app,
            &Invocation::new(Utc::now(), None),
            &FixedJitter(1.0),
        )
        .await
        .batch_item_failures
        .into_iter()
        .map(|failure| failure.item_identifier)
        .collect()
    }

    pub fn visibility(&self) -> Vec<(String, Duration)> {
        self.app.queues.visibility.lock().unwrap().clone()
    }
}
