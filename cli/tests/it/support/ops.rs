//! Shared by the operator-command tests: a sandbox, moto clients, a provisioned table and
//! queues, and the deployment's environment pointing at them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use cosell_adapters::{AwsClients, QueueOptions, QueueUrls, provision_queues, provision_table};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET,
    PC_ORGANIZATION_ID, PC_REFRESH_TOKEN, SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USERNAME,
    TENANT_ID,
};
use cosell_sandbox::pki::{INTERMEDIATE_CERT_PEM, ROOT_CERT_PEM, SALESFORCE_APP_KEY_PEM};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use serde_json::Value;

/// This deployment's Function URL in the tests.
pub const OUR_URL: &str = "https://pce.example.lambda-url.us-east-1.on.aws/";

/// Which CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    Dataverse,
    Salesforce,
}

pub use cosell_testkit::moto::clients as moto;

/// A name no other test uses.
pub fn unique(what: &str) -> String {
    cosell_testkit::unique(&format!("cosell-cli-{what}"))
}

/// One test's world: the sandbox, moto, a table and the retry queue with its DLQ.
pub struct World {
    pub sandbox: RunningSandbox,
    pub aws: AwsClients,
    pub table: String,
    pub queues: QueueUrls,
    pub crm: Crm,
    pub vars: HashMap<String, String>,
    pub http: reqwest::Client,
}

impl World {
    pub async fn start(crm: Crm) -> Self {
        Self::start_with(crm, QueueOptions::default()).await
    }

    /// [`World::start`] with the given queue options (e.g. a `maxReceiveCount` of 1).
    pub async fn start_with(crm: Crm, options: QueueOptions) -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let aws = moto().await;
        let table = unique("table");
        provision_table(&aws.dynamodb, &table).await.unwrap();
        let queues = provision_queues(&aws.sqs, &unique("retry"), &options)
            .await
            .unwrap();
        let base = sandbox.base_url.clone();
        let mut vars: HashMap<String, String> = [
            ("PC_API_BASE_URL", base.as_str()),
            ("PC_WEBHOOKS_BASE_URL", base.as_str()),
            ("ENTRA_AUTHORITY", base.as_str()),
            ("PC_TENANT_ID", TENANT_ID),
            ("PC_CLIENT_ID", PC_CLIENT_ID),
            ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
            ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
            ("PC_PARTNER_ORGANIZATION_ID", PC_ORGANIZATION_ID),
            ("PC_WEBHOOK_URL", OUR_URL),
            ("STORE", "dynamodb"),
            ("TABLE_NAME", table.as_str()),
            ("RETRY_QUEUE_URL", queues.queue_url.as_str()),
            ("WEBHOOK_TRUST_ANCHORS_PEM", ROOT_CERT_PEM),
            ("WEBHOOK_INTERMEDIATES_PEM", INTERMEDIATE_CERT_PEM),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let crm_vars: Vec<(&str, &str)> = match crm {
            Crm::Dataverse => vec![
                ("CRM_KIND", "dataverse"),
                ("DATAVERSE_URL", base.as_str()),
                ("DATAVERSE_TENANT_ID", TENANT_ID),
                ("DATAVERSE_CLIENT_ID", DATAVERSE_CLIENT_ID),
                ("DATAVERSE_CLIENT_SECRET", DATAVERSE_CLIENT_SECRET),
            ],
            Crm::Salesforce => vec![
                ("CRM_KIND", "salesforce"),
                ("SALESFORCE_LOGIN_URL", base.as_str()),
                ("SALESFORCE_CONSUMER_KEY", SALESFORCE_CONSUMER_KEY),
                ("SALESFORCE_USERNAME", SALESFORCE_INTEGRATION_USERNAME),
                ("SALESFORCE_PRIVATE_KEY", SALESFORCE_APP_KEY_PEM),
            ],
        };
        vars.extend(
            crm_vars
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        Self {
            sandbox,
            aws,
            table,
            queues,
            crm,
            vars,
            http: reqwest::Client::new(),
        }
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_owned(), value.to_owned());
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |name| self.vars.get(name).cloned()
    }

    /// A control-API call; asserts a 2xx answer.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.sandbox.base_url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}
