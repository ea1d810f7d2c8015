//! Handler tests: the `events/partner-center-events/` samples, fed through
//! `lambda_http::request::from_str` into `handler::handle`, against a spawned sandbox
//! (Partner Center, Entra ID, Dataverse, Salesforce) with in-memory stores, for both CRMs.
//!
//! The samples' `X-MS-Certificate-Url` names the sandbox's default port; each test rewrites it
//! to its own sandbox (the header is not signed; the body stays byte-identical). The referral
//! the samples name is created in the sandbox through its Microsoft-initiated endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::signed_events;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use cosell_adapters::AwsClients;
use cosell_adapters::aws::aws_config::{BehaviorVersion, Region, SdkConfig};
use cosell_adapters::http::{HttpClientOptions, WebhookVerifier, build_client};
use cosell_domain::ports::{AuditEvent, IdempotencyStatus, PortError, RetrySource, Service};
use cosell_runtime::clients::{self, Clients};
use cosell_runtime::{Connector, Deployed, Local, Stores};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID, PC_CLIENT_SECRET, PC_REFRESH_TOKEN,
    SALESFORCE_CONSUMER_KEY, SALESFORCE_INTEGRATION_USERNAME, TENANT_ID,
};
use cosell_sandbox::pki::{
    INTERMEDIATE_CERT_PEM, Pki, ROOT_CERT_PEM, SALESFORCE_APP_KEY_PEM, Signer,
};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use lambda_http::{Body, Context, Request, RequestExt, Response};
use partner_center_events::app;
use partner_center_events::{App, Config, handler};
use serde_json::{Value, json};
use signed_events::{
    ENGAGEMENT_ID, MICROSOFT_REFERRAL_ID, REFERRAL_ID, SANDBOX_BASE_URL, TEST_CORRELATION_ID,
};

macro_rules! event_file {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                "../../../../events/partner-center-events/",
                $name,
                ".json"
            )),
        )
    };
}

/// The committed samples, by name.
const EVENTS: [(&str, &str); 11] = [
    event_file!("referral-created"),
    event_file!("referral-updated"),
    event_file!("related-referral-created"),
    event_file!("related-referral-updated"),
    event_file!("test-created"),
    event_file!("unknown-event"),
    event_file!("bad-signature"),
    event_file!("missing-signature"),
    event_file!("malformed-body"),
    event_file!("cert-host-not-allowed"),
    event_file!("rogue-certificate"),
];

fn sample(name: &str) -> &'static str {
    EVENTS
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, json)| *json)
        .unwrap_or_else(|| panic!("no sample {name}"))
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
    /// The sandbox's request-log service of the CRM API.
    fn service(self) -> &'static str {
        match self {
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
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

    fn microsoft_crm_id_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftcrmidentifier",
            Self::Salesforce => "Microsoft_CRM_Identifier__c",
        }
    }

    fn audit_field(self) -> &'static str {
        match self {
            Self::Dataverse => "msft_microsoftpartnercenterreferralsyncaudit",
            Self::Salesforce => "Audit__c",
        }
    }

    /// The control path removing a field of the opportunity table.
    fn remove_field_path(self, field: &str) -> String {
        match self {
            Self::Dataverse => format!("/_sandbox/dataverse/schema/opportunity/{field}"),
            Self::Salesforce => format!("/_sandbox/salesforce/schema/Opportunity/{field}"),
        }
    }
}

/// The environment a deployment against the sandbox would have (`STORE=memory`).
fn environment(base: &str, crm: Crm) -> HashMap<&'static str, String> {
    let mut vars: HashMap<&'static str, String> = [
        ("PC_API_BASE_URL", base),
        ("ENTRA_AUTHORITY", base),
        ("PC_TENANT_ID", TENANT_ID),
        ("PC_CLIENT_ID", PC_CLIENT_ID),
        ("PC_CLIENT_SECRET", PC_CLIENT_SECRET),
        ("PC_REFRESH_TOKEN", PC_REFRESH_TOKEN),
        ("STORE", "memory"),
        ("WEBHOOK_TRUST_ANCHORS_PEM", ROOT_CERT_PEM),
        ("WEBHOOK_INTERMEDIATES_PEM", INTERMEDIATE_CERT_PEM),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect();
    let crm_vars: &[(&'static str, &str)] = match crm {
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
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    vars
}

struct Harness {
    sandbox: RunningSandbox,
    control: reqwest::Client,
    app: App<Local>,
    crm: Crm,
}

impl Harness {
    /// A sandbox, and the app built from the environment of [`environment`] the way `main`
    /// builds it, except the verifier, which also accepts the sandbox's plain-http
    /// certificate URL (`insecure_hosts`: `host:port`; the sandbox's own when empty).
    async fn start(crm: Crm) -> Self {
        Self::start_with(crm, &[]).await
    }

    async fn start_with(crm: Crm, extra_insecure_hosts: &[String]) -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let vars = environment(&sandbox.base_url, crm);
        let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        let http = build_client(&HttpClientOptions::default()).unwrap();
        let mut insecure = vec![sandbox.addr.to_string()];
        insecure.extend_from_slice(extra_insecure_hosts);
        let clients = Clients {
            partner_center: clients::partner_center(http.clone(), &config.sync.partner_center)
                .unwrap(),
            crm: clients::crm(http, &config.sync.crm, &config.sync.mapping).unwrap(),
        };
        let stores = Stores::in_memory(config.sync.idempotency_ttl);
        Self {
            app: App {
                connector: Connector::new(
                    clients,
                    stores,
                    config.sync.mapping.clone(),
                    config.sync_settings(),
                ),
                verifier: WebhookVerifier::with_insecure_hosts(
                    app::verifier_settings(&config.webhook),
                    &insecure,
                )
                .unwrap(),
                max_body_bytes: config.max_body_bytes,
            },
            sandbox,
            control: reqwest::Client::new(),
            crm,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url)
    }

    /// The sample `name` as a request, its certificate URL pointed at this sandbox, after
    /// `edit` changed its JSON.
    fn request_with(&self, name: &str, edit: impl FnOnce(&mut Value)) -> Request {
        let mut event: Value = serde_json::from_str(sample(name)).unwrap();
        if let Some(url) = event["headers"]["x-ms-certificate-url"].as_str() {
            let url = url.replace(SANDBOX_BASE_URL, &self.sandbox.base_url);
            event["headers"]["x-ms-certificate-url"] = Value::String(url);
        }
        edit(&mut event);
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    fn request(&self, name: &str) -> Request {
        self.request_with(name, |_| {})
    }

    /// The sample `name` with `body` in its place, signed again with the sandbox's key.
    fn request_with_body(&self, name: &str, body: String) -> Request {
        self.request_with(name, |event| {
            let signature = Pki::embedded().sign(Signer::Leaf, body.as_bytes());
            event["headers"]["authorization"] = Value::String(format!("Signature {signature}"));
            event["headers"]["content-length"] = Value::String(body.len().to_string());
            event["body"] = Value::String(body);
        })
    }

    /// The `referral-created` sample with `body` in its place, signed again.
    async fn send_body(&self, body: &str) -> (u16, Value) {
        self.handle(self.request_with_body("referral-created", body.to_owned()))
            .await
    }

    async fn handle(&self, request: Request) -> (u16, Value) {
        answer(handler::handle(request, &self.app).await.unwrap())
    }

    async fn send(&self, name: &str) -> (u16, Value) {
        self.handle(self.request(name)).await
    }

    /// The sample `name` for the referral's latest change, as Partner Center sends it: stamped
    /// with the referral's `updatedDateTime` (the samples carry a fixed date) and signed again.
    async fn send_latest(&self, name: &str) -> (u16, Value) {
        let changed = self.referral(REFERRAL_ID).await["updatedDateTime"].clone();
        let sample: Value = serde_json::from_str(sample(name)).unwrap();
        let mut body: Value = serde_json::from_str(sample["body"].as_str().unwrap()).unwrap();
        body["ResourceChangeUtcDate"] = changed;
        self.handle(self.request_with_body(name, body.to_string()))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.control.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
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

    /// The partner's referral the samples name: an incoming Microsoft co-sell referral.
    async fn seed_referral(&self) {
        self.call(
            reqwest::Method::POST,
            "/_sandbox/partner-center/referrals/microsoft-initiated",
            Some(json!({ "id": REFERRAL_ID, "engagementId": ENGAGEMENT_ID })),
        )
        .await;
    }

    async fn referral(&self, id: &str) -> Value {
        self.get(&format!("/_sandbox/partner-center/referrals/{id}"))
            .await
    }

    /// Replace a referral with `edit` applied to its stored JSON; a new `eTag` and
    /// `updatedDateTime` are assigned.
    async fn change_referral(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let mut referral = self.referral(id).await;
        edit(&mut referral);
        let object = referral.as_object_mut().unwrap();
        object.remove("eTag");
        object.remove("updatedDateTime");
        self.call(
            reqwest::Method::PUT,
            &format!("/_sandbox/partner-center/referrals/{id}"),
            Some(referral),
        )
        .await;
    }

    /// Every API request the sandbox received (control calls and certificate downloads are
    /// not logged).
    async fn requests(&self) -> Vec<Value> {
        self.get("/_sandbox/requests").await["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn clear_requests(&self) {
        self.call(reqwest::Method::DELETE, "/_sandbox/requests", None)
            .await;
    }

    /// `(service, method)` → count.
    async fn tally(&self) -> BTreeMap<(String, String), usize> {
        let mut tally = BTreeMap::new();
        for request in self.requests().await {
            let key = (
                request["service"].as_str().unwrap_or_default().to_owned(),
                request["method"].as_str().unwrap_or_default().to_owned(),
            );
            *tally.entry(key).or_default() += 1;
        }
        tally
    }

    async fn requests_of(&self, service: &str) -> Vec<Value> {
        self.requests()
            .await
            .into_iter()
            .filter(|request| request["service"] == service)
            .collect()
    }

    async fn inject(&self, fault: Value) {
        self.call(reqwest::Method::POST, "/_sandbox/faults", Some(fault))
            .await;
    }

    /// The CRM's opportunities of the samples' referral.
    async fn opportunities(&self) -> Vec<Value> {
        let all = match self.crm {
            Crm::Dataverse => self.get("/_sandbox/dataverse/opportunities").await["value"].clone(),
            Crm::Salesforce => {
                self.get("/_sandbox/salesforce/Opportunity").await["records"].clone()
            }
        };
        all.as_array()
            .unwrap()
            .iter()
            .filter(|row| row[self.crm.referral_field()] == REFERRAL_ID)
            .cloned()
            .collect()
    }

    async fn the_opportunity(&self) -> Value {
        let mut opportunities = self.opportunities().await;
        assert_eq!(opportunities.len(), 1, "{opportunities:#?}");
        opportunities.remove(0)
    }

    /// Nothing in any store, and no API request at the sandbox.
    async fn assert_nothing_written(&self) {
        let stores = &self.app.connector.stores;
        assert!(
            stores.audit.entries().is_empty(),
            "{:?}",
            stores.audit.entries()
        );
        assert!(stores.idempotency.records().is_empty());
        assert!(stores.links.links().is_empty());
        assert!(stores.retry_queue.jobs().is_empty());
        assert_eq!(self.requests().await, Vec::<Value>::new());
    }

    fn audit_events(&self) -> Vec<AuditEvent> {
        self.app
            .connector
            .stores
            .audit
            .entries()
            .into_iter()
            .map(|entry| entry.event)
            .collect()
    }
}

fn answer(response: Response<Body>) -> (u16, Value) {
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "every answer is JSON"
    );
    let status = response.status().as_u16();
    let body = serde_json::from_slice(response.body().as_ref()).unwrap();
    (status, body)
}

/// Runs a scenario for Dataverse and for Salesforce.
macro_rules! for_both_crms {
    ($($name:ident => $scenario:ident;)*) => {
        mod dataverse {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$scenario(super::Crm::Dataverse).await;
                }
            )*
        }
        mod salesforce {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$scenario(super::Crm::Salesforce).await;
                }
            )*
        }
    };
}

for_both_crms! {
    a_created_referral_becomes_one_opportunity_linked_back => created_referral_becomes_one_opportunity;
    sequential_duplicates_change_nothing_and_call_nothing => sequential_duplicates_change_nothing;
    concurrent_duplicates_create_one_opportunity => concurrent_duplicates_create_one_opportunity;
    an_updated_referral_updates_the_opportunity => updated_referral_updates_the_opportunity;
    the_echo_of_our_write_back_makes_no_crm_call => echo_of_our_write_back_is_skipped;
    an_unavailable_crm_enqueues_a_retry_and_answers_200 => unavailable_crm_enqueues_a_retry;
    a_missing_crm_field_is_audited_with_the_fix => missing_crm_field_needs_attention;
    related_referral_events_write_microsofts_side_to_the_opportunity => related_referral_events_update_the_opportunity;
    rejected_requests_write_nothing => rejected_requests_write_nothing;
    test_and_unknown_events_are_acknowledged_without_calls => test_and_unknown_events_call_nothing;
}

/// Microsoft changes a referral whose opportunity the seller has won in the Dataverse app: the
/// closed row is read-only, Dataverse (the sandbox) refuses the write, and the handler says what
/// happened (`closed_in_crm`, not Dataverse's "reopen it first"), writing nothing more to the
/// row, not even the Audit text.
#[tokio::test]
async fn dataverse_a_change_to_a_referral_whose_deal_was_won_is_said_and_not_written() {
    let crm = Crm::Dataverse;
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    assert_eq!(h.send("referral-created").await.0, 200);
    let won = h.the_opportunity().await;
    let id = won[crm.id_field()].as_str().unwrap().to_owned();
    h.call(
        reqwest::Method::POST,
        &format!("/_sandbox/dataverse/opportunities/{id}/win"),
        None,
    )
    .await;
    let closed = h.the_opportunity().await;
    h.change_referral(REFERRAL_ID, |referral| {
        referral["details"]["notes"] = json!("The customer added a second plant.");
    })
    .await;

    let (status, body) = h.send_latest("referral-updated").await;

    assert_eq!(
        (status, body),
        (200, json!({ "status": "needs_attention" }))
    );
    assert_eq!(
        h.the_opportunity().await,
        closed,
        "nothing written to the row"
    );
    assert!(h.audit_events().iter().any(|event| matches!(
        event,
        AuditEvent::Failed { reason, fix } if reason.contains("closed in Dataverse") && fix.contains("reopen")
    )));
}

// ---------------------------------------------------------------------------------------------
// Scenarios (both CRMs)
// ---------------------------------------------------------------------------------------------

async fn created_referral_becomes_one_opportunity(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;

    let (status, body) = h.send("referral-created").await;

    assert_eq!((status, body), (200, json!({ "status": "created" })));
    let opportunity = h.the_opportunity().await;
    assert_eq!(opportunity[crm.name_field()], "Test Cosell Invite_20");
    assert_eq!(opportunity[crm.amount_field()].as_f64(), Some(50000.0));
    assert!(
        opportunity[crm.notes_field()]
            .as_str()
            .unwrap()
            .starts_with("Customer is looking to leverage Dynamics 365"),
        "{opportunity:#?}"
    );
    assert_eq!(opportunity[crm.sync_field()], true);
    let crm_id = opportunity[crm.id_field()].as_str().unwrap();
    let referral = h.referral(REFERRAL_ID).await;
    assert_eq!(referral["externalReferenceId"], crm_id);

    let link = h.app.connector.stores.links.links();
    assert_eq!(link.len(), 1);
    assert_eq!(link[0].referral_id.to_string(), REFERRAL_ID);
    assert_eq!(link[0].crm.native(), crm_id);
    let events = h.audit_events();
    assert!(events.contains(&AuditEvent::Created), "{events:?}");
    assert!(events.contains(&AuditEvent::WrittenBack), "{events:?}");
    let entries = h.app.connector.stores.audit.entries();
    assert!(
        entries
            .iter()
            .all(|entry| entry.correlation_id.as_deref()
                == Some("1d0f4a9e-0001-4000-8000-000000000001")),
        "the Function URL request id is the correlation id without a Lambda context"
    );
    // One idempotency record, the delivery's: the create lock is the link's own item (a
    // claim), which the saved link replaced.
    let records = h.app.connector.stores.idempotency.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].key.as_str().starts_with("pc:"));
    assert_eq!(records[0].status, IdempotencyStatus::Completed);
}

async fn sequential_duplicates_change_nothing(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    assert_eq!(h.send("referral-created").await.0, 200);
    let opportunity = h.the_opportunity().await;
    h.clear_requests().await;

    for _ in 0..5 {
        let (status, body) = h.send("referral-created").await;
        assert_eq!(
            (status, body),
            (200, json!({ "status": "duplicate_skipped" }))
        );
    }

    assert_eq!(h.requests().await, Vec::<Value>::new());
    assert_eq!(h.the_opportunity().await, opportunity);
    assert!(h.app.connector.stores.retry_queue.jobs().is_empty());
}

async fn concurrent_duplicates_create_one_opportunity(crm: Crm) {
    // What one delivery costs, measured on a sandbox of its own.
    let baseline = Harness::start(crm).await;
    baseline.seed_referral().await;
    assert_eq!(baseline.send("referral-created").await.0, 200);
    let one_delivery = baseline.tally().await;

    let h = Harness::start(crm).await;
    h.seed_referral().await;
    let answers = tokio::join!(
        h.send("referral-created"),
        h.send("referral-created"),
        h.send("referral-created"),
        h.send("referral-created"),
        h.send("referral-created"),
    );
    let answers = [answers.0, answers.1, answers.2, answers.3, answers.4];

    let created = answers
        .iter()
        .filter(|answer| **answer == (200, json!({ "status": "created" })))
        .count();
    assert_eq!(created, 1, "{answers:?}");
    for answer in &answers {
        assert!(
            [
                (200, json!({ "status": "created" })),
                (409, json!({ "status": "in_progress" })),
                (200, json!({ "status": "duplicate_skipped" })),
            ]
            .contains(answer),
            "{answer:?}"
        );
    }
    h.the_opportunity().await;
    assert_eq!(h.tally().await, one_delivery);
}

async fn updated_referral_updates_the_opportunity(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    assert_eq!(h.send("referral-created").await.0, 200);
    h.change_referral(REFERRAL_ID, |referral| {
        referral["details"]["dealValue"] = json!(75000);
        referral["details"]["notes"] = json!("The customer added a second plant.");
    })
    .await;
    h.clear_requests().await;

    let (status, body) = h.send_latest("referral-updated").await;

    assert_eq!((status, body), (200, json!({ "status": "updated" })));
    let opportunity = h.the_opportunity().await;
    assert_eq!(opportunity[crm.amount_field()].as_f64(), Some(75000.0));
    assert_eq!(
        opportunity[crm.notes_field()],
        "The customer added a second plant."
    );
    // The referral already carries the opportunity's id: no write-back.
    let partner_center = h.requests_of("partner-center").await;
    assert_eq!(partner_center.len(), 1, "{partner_center:?}");
    assert_eq!(partner_center[0]["method"], "GET");
    assert!(h.audit_events().contains(&AuditEvent::Updated));
}

async fn echo_of_our_write_back_is_skipped(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    assert_eq!(h.send("referral-created").await.0, 200);
    let opportunity = h.the_opportunity().await;
    h.clear_requests().await;

    // The `referral-updated` our own externalReferenceId patch raised, stamped with the time
    // the PATCH's answer gave: known as an echo without reading the referral.
    let (status, body) = h.send_latest("referral-updated").await;

    assert_eq!((status, body), (200, json!({ "status": "echo_skipped" })));
    let requests = h.requests().await;
    assert_eq!(requests, Vec::<Value>::new(), "no call at all");
    assert_eq!(h.the_opportunity().await, opportunity);
    assert!(h.audit_events().contains(&AuditEvent::EchoSkipped));
}

async fn unavailable_crm_enqueues_a_retry(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    h.inject(json!({ "service": crm.service(), "status": 503, "count": 100 }))
        .await;

    let (status, body) = h.send("referral-created").await;

    assert_eq!((status, body), (200, json!({ "status": "retry_enqueued" })));
    let jobs = h.app.connector.stores.retry_queue.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (job, _delay) = &jobs[0];
    assert_eq!(job.attempt, 1);
    assert_eq!(job.source, RetrySource::PartnerCenter);
    assert_eq!(job.payload["EventName"], "referral-created");
    assert!(
        h.audit_events()
            .contains(&AuditEvent::RetryEnqueued { attempt: 1 })
    );
    assert!(h.opportunities().await.is_empty());
    assert!(
        h.requests_of(crm.service())
            .await
            .iter()
            .all(|request| request["status"] == 503 && request["injected"] == true)
    );
    let referral = h.referral(REFERRAL_ID).await;
    assert!(referral["externalReferenceId"].is_null(), "{referral:#?}");
}

async fn missing_crm_field_needs_attention(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    // The co-sell solution's "Sync with Partner Center" field is missing in this org.
    let field = crm.sync_field();
    h.call(reqwest::Method::DELETE, &crm.remove_field_path(field), None)
        .await;

    let (status, body) = h.send("referral-created").await;

    assert_eq!(
        (status, body),
        (200, json!({ "status": "needs_attention" }))
    );
    let failures: Vec<_> = h
        .app
        .connector
        .stores
        .audit
        .entries()
        .into_iter()
        .filter_map(|entry| match entry.event {
            AuditEvent::Failed { reason, fix } => Some((reason, fix)),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (reason, fix) = &failures[0];
    assert!(
        reason.contains(field),
        "the reason names the field: {reason}"
    );
    assert!(
        fix.contains("field mapping"),
        "the fix says what to do: {fix}"
    );
    assert!(h.app.connector.stores.retry_queue.jobs().is_empty());
    assert!(h.opportunities().await.is_empty());
}

async fn related_referral_events_update_the_opportunity(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    assert_eq!(h.send("referral-created").await.0, 200);
    // Microsoft's referral of the same engagement, carrying Microsoft's CRM id.
    let mut microsoft = h.referral(REFERRAL_ID).await;
    let object = microsoft.as_object_mut().unwrap();
    for member in ["eTag", "updatedDateTime", "links", "inviteContext"] {
        object.remove(member);
    }
    object.insert("id".into(), json!(MICROSOFT_REFERRAL_ID));
    object.insert("organizationId".into(), json!("msft"));
    object.insert("organizationName".into(), json!("Microsoft"));
    object.insert("direction".into(), json!("Outgoing"));
    object.insert("status".into(), json!("Active"));
    object.insert("substatus".into(), json!("Accepted"));
    object.insert("externalReferenceId".into(), json!("7-3FQ8ZK2M1"));
    h.call(
        reqwest::Method::PUT,
        &format!("/_sandbox/partner-center/referrals/{MICROSOFT_REFERRAL_ID}"),
        Some(microsoft),
    )
    .await;

    let (status, body) = h.send("related-referral-created").await;

    assert_eq!((status, body), (200, json!({ "status": "updated" })));
    let opportunity = h.the_opportunity().await;
    assert_eq!(opportunity[crm.microsoft_crm_id_field()], "7-3FQ8ZK2M1");
    let audit = opportunity[crm.audit_field()].as_str().unwrap_or_default();
    assert!(audit.contains("Microsoft's referral is"), "{audit}");

    h.change_referral(MICROSOFT_REFERRAL_ID, |referral| {
        referral["status"] = json!("Closed");
        referral["substatus"] = json!("Won");
    })
    .await;
    let (status, body) = h.send("related-referral-updated").await;

    assert_eq!((status, body), (200, json!({ "status": "updated" })));
    let audit = h.the_opportunity().await[crm.audit_field()]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(audit.contains("Microsoft's referral is"), "{audit}");
    assert!(audit.contains("Won"), "{audit}");
}

async fn rejected_requests_write_nothing(crm: Crm) {
    let h = Harness::start(crm).await;
    // The referral exists, so a request that got through would have changed something.
    h.seed_referral().await;

    for (name, expected_status, expected_code) in [
        ("bad-signature", 401, "unauthorized"),
        ("rogue-certificate", 401, "unauthorized"),
        ("cert-host-not-allowed", 401, "unauthorized"),
        ("missing-signature", 400, "missing_signature_headers"),
        ("malformed-body", 400, "malformed_body"),
    ] {
        let (status, body) = h.send(name).await;
        assert_eq!(status, expected_status, "{name}: {body}");
        assert_eq!(body["code"], expected_code, "{name}: {body}");
        assert!(body["message"].is_string(), "{name}: {body}");
        assert_eq!(body.as_object().unwrap().len(), 2, "{name}: {body}");
    }

    h.assert_nothing_written().await;
    assert!(h.opportunities().await.is_empty());
}

async fn test_and_unknown_events_call_nothing(crm: Crm) {
    let h = Harness::start(crm).await;

    assert_eq!(
        h.send("test-created").await,
        (200, json!({ "status": "acknowledged" }))
    );
    assert_eq!(
        h.send("unknown-event").await,
        (200, json!({ "status": "ignored" }))
    );

    h.assert_nothing_written().await;
}

// ---------------------------------------------------------------------------------------------
// The edge itself (one CRM is enough)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_base64_encoded_body_is_verified_on_its_decoded_bytes() {
    use base64::Engine as _;
    let h = Harness::start(Crm::Dataverse).await;
    h.seed_referral().await;
    let request = h.request_with("referral-created", |event| {
        let body = event["body"].as_str().unwrap().to_owned();
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
        event["isBase64Encoded"] = json!(true);
    });
    assert!(matches!(request.body(), Body::Binary(_)));

    assert_eq!(
        h.handle(request).await,
        (200, json!({ "status": "created" }))
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_before_verification() {
    let h = Harness::start(Crm::Dataverse).await;
    let request = h.request_with("referral-created", |event| {
        let padded = format!(
            "{}{}",
            event["body"].as_str().unwrap(),
            " ".repeat(64 * 1024)
        );
        event["body"] = json!(padded);
    });

    let (status, body) = h.handle(request).await;

    assert_eq!(status, 413);
    assert_eq!(body["code"], "payload_too_large");
    h.assert_nothing_written().await;
}

#[tokio::test]
async fn only_post_is_accepted() {
    let h = Harness::start(Crm::Dataverse).await;
    let request = h.request_with("referral-created", |event| {
        event["requestContext"]["http"]["method"] = json!("GET");
    });

    let response = handler::handle(request, &h.app).await.unwrap();

    assert_eq!(response.headers()["allow"], "POST");
    let (status, body) = answer(response);
    assert_eq!(status, 405);
    assert_eq!(body["code"], "method_not_allowed");
    h.assert_nothing_written().await;
}

#[tokio::test]
async fn an_unreachable_certificate_is_503_so_partner_center_delivers_again() {
    // A loopback port nothing listens on, allowed as a certificate host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_host = closed.local_addr().unwrap().to_string();
    drop(closed);
    let h = Harness::start_with(Crm::Dataverse, std::slice::from_ref(&closed_host)).await;
    let request = h.request_with("referral-created", |event| {
        event["headers"]["x-ms-certificate-url"] = json!(format!(
            "http://{closed_host}/cert/pcnotifications-dispatch.microsoft.com.cer"
        ));
    });

    let (status, body) = h.handle(request).await;

    assert_eq!(status, 503);
    assert_eq!(body["code"], "certificate_unavailable");
    h.assert_nothing_written().await;
}

#[tokio::test]
async fn an_unavailable_idempotency_store_is_503_and_the_body_says_nothing_internal() {
    let h = Harness::start(Crm::Dataverse).await;
    h.seed_referral().await;
    h.app
        .connector
        .stores
        .idempotency
        .fail_next(PortError::Transient {
            service: Service::IdempotencyStore,
            reason: "ProvisionedThroughputExceededException on table cosell".into(),
            retry_after: None,
        });

    let (status, body) = h.send("referral-created").await;

    assert_eq!(status, 503);
    assert_eq!(body["code"], "idempotency_unavailable");
    assert!(!body.to_string().contains("Provisioned"), "{body}");
    assert!(h.opportunities().await.is_empty());
    // Partner Center delivers it again, and then it runs.
    assert_eq!(
        h.send("referral-created").await,
        (200, json!({ "status": "created" }))
    );
}

#[tokio::test]
async fn the_lambda_request_id_is_the_correlation_id() {
    let h = Harness::start(Crm::Salesforce).await;
    h.seed_referral().await;
    let mut context = Context::default();
    context.request_id = "lambda-request-7".to_owned();
    context.deadline = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 60_000;
    let request = h.request("referral-created").with_lambda_context(context);

    assert_eq!(h.handle(request).await.0, 200);

    let entries = h.app.connector.stores.audit.entries();
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|entry| entry.correlation_id.as_deref() == Some("lambda-request-7"))
    );
}

/// Everything logged by this test binary, as JSON lines: a process-wide subscriber (a
/// thread-scoped one misses events while other tests run concurrently: tracing caches callsite
/// interest globally).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        use lambda_http::tracing::subscriber;
        let captured = Captured::default();
        let writer = captured.clone();
        subscriber::fmt()
            .json()
            .with_max_level(lambda_http::tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .init();
        captured
    })
}

#[tokio::test]
async fn each_request_logs_one_line_without_body_contact_data_or_tokens() {
    let captured = captured_logs();
    let h = Harness::start(Crm::Dataverse).await;
    h.seed_referral().await;
    for (name, request_id) in [
        ("referral-created", "log-test-1"),
        ("referral-created", "log-test-2"),
        ("bad-signature", "log-test-3"),
    ] {
        let mut context = Context::default();
        context.request_id = request_id.to_owned();
        h.handle(h.request(name).with_lambda_context(context)).await;
    }

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let all: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let lines: Vec<&Value> = all
        .iter()
        .filter(|line| {
            line["fields"]["correlation_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("log-test-"))
        })
        .collect();
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    for line in &lines {
        assert_eq!(line["fields"]["message"], "partner center webhook handled");
    }
    let outcomes: Vec<_> = lines
        .iter()
        .map(|line| line["fields"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["created", "duplicate_skipped", "unauthorized"]);
    let created = &lines[0]["fields"];
    assert_eq!(created["correlation_id"], "log-test-1");
    assert_eq!(created["event_name"], "referral-created");
    assert_eq!(created["referral_id"], REFERRAL_ID);
    assert_eq!(created["status"], 200);
    assert!(created["elapsed_ms"].is_u64());
    assert_eq!(created["warnings"], 0);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[2]["level"], "WARN");
    assert_eq!(lines[2]["fields"]["status"], 401);

    // Nothing the function and the adapters log (the sandbox's own logs aside) carries the
    // body, contact data or a credential.
    let ours: Vec<String> = all
        .iter()
        .filter(|line| {
            let target = line["target"].as_str().unwrap_or_default();
            !target.starts_with("cosell_sandbox")
        })
        .map(Value::to_string)
        .collect();
    for secret in [
        "sue.smith@contoso.com",
        "Smith",
        "Contoso Customer Inc",
        "1234567890",
        PC_REFRESH_TOKEN,
        PC_CLIENT_SECRET,
        DATAVERSE_CLIENT_SECRET,
        "Bearer ",
        "Signature ",
        "ResourceChangeUtcDate",
    ] {
        assert!(
            ours.iter().all(|line| !line.contains(secret)),
            "{secret} was logged: {ours:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Samples and the production instantiation
// ---------------------------------------------------------------------------------------------

#[test]
fn the_committed_samples_are_what_the_generator_writes() {
    let generated = signed_events::all();
    assert_eq!(generated.len(), EVENTS.len());
    for event in generated {
        assert_eq!(
            sample(event.name),
            event.json,
            "events/partner-center-events/{}.json is stale: run \
             `cargo run -p partner-center-events --example sign_events`",
            event.name
        );
    }
}

#[test]
fn every_sample_is_a_function_url_request() {
    for (name, json) in EVENTS {
        let request =
            lambda_http::request::from_str(json).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(request.method(), "POST", "{name}");
        assert!(
            matches!(
                request.request_context_ref(),
                Some(lambda_http::request::RequestContext::ApiGatewayV2(_))
            ),
            "{name}"
        );
    }
    assert!(sample("test-created").contains(TEST_CORRELATION_ID));
}

/// `lambda_http::run` needs a `Send` handler future: checked for both instantiations `main`
/// builds.
fn production_future(
    request: Request,
    app: &App<Deployed>,
) -> impl Future<Output = Result<Response<Body>, lambda_http::Error>> + Send + '_ {
    handler::handle(request, app)
}

fn local_future(
    request: Request,
    app: &App<Local>,
) -> impl Future<Output = Result<Response<Body>, lambda_http::Error>> + Send + '_ {
    handler::handle(request, app)
}

#[tokio::test]
async fn the_production_instantiation_is_send_and_answers() {
    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    let h = Harness::start(Crm::Dataverse).await;
    let vars = environment(&h.sandbox.base_url, Crm::Dataverse);
    let mut vars = vars;
    vars.insert("STORE", "dynamodb".into());
    vars.insert("TABLE_NAME", "cosell-test".into());
    vars.insert(
        "RETRY_QUEUE_URL",
        "http://127.0.0.1:1/000000000000/retry".into(),
    );
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    // No AWS call is made: the request is rejected before the stores are touched.
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .build();
    let aws = AwsClients::from_conf(&sdk);
    let connector = Connector::new(
        Clients::from_config(&config.sync).unwrap(),
        Stores::dynamo(&aws, "cosell-test", "http://127.0.0.1:1/000000000000/retry"),
        config.sync.mapping.clone(),
        config.sync_settings(),
    );
    let app: App<Deployed> = App::new(connector, &config).unwrap();

    let response = assert_send(production_future(h.request("missing-signature"), &app))
        .await
        .unwrap();
    assert_eq!(answer(response).0, 400);
    let response = assert_send(local_future(h.request("missing-signature"), &h.app))
        .await
        .unwrap();
    assert_eq!(answer(response).0, 400);
}

#[tokio::test]
async fn the_production_verifier_refuses_the_sandbox_certificate_url() {
    // `Clients::from_config` in a build without the `sandbox` feature: plain http is never
    // accepted, so a correctly signed sample pointing at the sandbox is 401.
    let h = Harness::start(Crm::Dataverse).await;
    h.seed_referral().await;
    let vars = environment(&h.sandbox.base_url, Crm::Dataverse);
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let connector = Connector::new(
        Clients::from_config(&config.sync).unwrap(),
        Stores::in_memory(config.sync.idempotency_ttl),
        config.sync.mapping.clone(),
        config.sync_settings(),
    );
    let app: App<Local> = App::new(connector, &config).unwrap();

    let (status, body) = answer(
        handler::handle(h.request("referral-created"), &app)
            .await
            .unwrap(),
    );

    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    assert!(app.connector.stores.audit.entries().is_empty());
    assert_eq!(h.requests().await, Vec::<Value>::new());
}

/// Partner Center whose first referral read panics (a bug reached by one odd event), then
/// answers as the real client does.
struct PanicsOnce {
    inner: cosell_adapters::http::HttpPartnerCenter,
    panicked: std::sync::atomic::AtomicBool,
}

impl cosell_domain::PartnerCenter for PanicsOnce {
    async fn get_referral(
        &self,
        id: &cosell_domain::ReferralId,
    ) -> Result<cosell_domain::Referral, PortError> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let text = "Duplicate record\u{a0}jane@contoso.com";
            let at = text.find('\u{a0}').unwrap() + 1;
            // A byte index inside a multi-byte character.
            panic!("{}", text.get(..at).unwrap());
        }
        self.inner.get_referral(id).await
    }

    async fn list_referrals(
        &self,
        query: &cosell_domain::ReferralQuery,
    ) -> Result<cosell_domain::ReferralPage, PortError> {
        self.inner.list_referrals(query).await
    }

    async fn create_referral(
        &self,
        referral: &cosell_domain::Referral,
    ) -> Result<cosell_domain::Referral, PortError> {
        self.inner.create_referral(referral).await
    }

    async fn patch_referral(
        &self,
        id: &cosell_domain::ReferralId,
        if_match: Option<&cosell_domain::ETag>,
        ops: &[cosell_domain::PatchOp],
    ) -> Result<cosell_domain::Patched, PortError> {
        self.inner.patch_referral(id, if_match, ops).await
    }
}

/// The local ports with [`PanicsOnce`] for Partner Center.
struct PanickyPorts;

impl cosell_domain::Ports for PanickyPorts {
    type PartnerCenter = PanicsOnce;
    type Crm = cosell_adapters::http::crm::AnyCrm;
    type Idempotency = cosell_domain::in_memory::InMemoryIdempotencyStore;
    type RetryQueue = cosell_domain::in_memory::InMemoryRetryQueue;
    type Audit = cosell_domain::in_memory::InMemoryAuditLog;
    type Links = cosell_domain::in_memory::InMemoryLinkStore;
}

#[tokio::test]
async fn a_panic_in_one_event_is_answered_500_and_the_instance_goes_on() {
    let h = Harness::start(Crm::Dataverse).await;
    h.seed_referral().await;
    let vars = environment(&h.sandbox.base_url, Crm::Dataverse);
    let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let http = build_client(&HttpClientOptions::default()).unwrap();
    let clients = Clients::<PanickyPorts> {
        partner_center: PanicsOnce {
            inner: clients::partner_center(http.clone(), &config.sync.partner_center).unwrap(),
            panicked: std::sync::atomic::AtomicBool::new(false),
        },
        crm: clients::crm(http, &config.sync.crm, &config.sync.mapping).unwrap(),
    };
    let app = App {
        connector: Connector::new(
            clients,
            Stores {
                idempotency: cosell_domain::in_memory::InMemoryIdempotencyStore::new(
                    config.sync.idempotency_ttl,
                ),
                retry_queue: cosell_domain::in_memory::InMemoryRetryQueue::new(),
                audit: cosell_domain::in_memory::InMemoryAuditLog::new(),
                links: cosell_domain::in_memory::InMemoryLinkStore::new(),
            },
            config.sync.mapping.clone(),
            config.sync_settings(),
        ),
        verifier: WebhookVerifier::with_insecure_hosts(
            app::verifier_settings(&config.webhook),
            [h.sandbox.addr.to_string()],
        )
        .unwrap(),
        max_body_bytes: config.max_body_bytes,
    };

    let (status, body) = answer(
        handler::handle(h.request("referral-created"), &app)
            .await
            .unwrap(),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal_error"))
    );
    assert!(!body.to_string().contains("jane"), "{body}");

    // The same instance handles the next event: another referral's delivery syncs.
    let (status, body) = answer(
        handler::handle(h.request("referral-updated"), &app)
            .await
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
}

/// Bodies as real senders deviate from the documented one: each is read as the referral event
/// it is (200 `created`), none refused.
#[tokio::test]
async fn real_world_spellings_of_the_event_body_are_read() {
    let uri =
        format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{REFERRAL_ID}");
    let documented = json!({
        "EventName": "referral-created", "ResourceUri": uri, "ResourceName": "referral",
        "AuditUri": null, "ResourceChangeUtcDate": "2026-11-20T10:15:30.1234567+00:00",
    })
    .to_string();
    let bodies = [
        // A UTF-8 byte-order mark before the JSON.
        format!("\u{feff}{documented}"),
        // Member names in another letter case.
        json!({
            "EventName": "referral-created", "ResourceURI": uri, "ResourceName": "referral",
            "AuditUri": null, "ResourceChangeUTCDate": "2026-11-20T10:15:30.1234567+00:00",
        })
        .to_string(),
        // Both spellings of the audit member the documentation uses.
        json!({
            "EventName": "referral-created", "ResourceUri": uri, "ResourceName": "referral",
            "AuditUri": null, "AuditUrl": null,
            "ResourceChangeUtcDate": "2026-11-20T10:15:30.1234567+00:00",
        })
        .to_string(),
        // An optional member of an unusable type, escaped slashes, an upper-case id with a
        // trailing slash, a date as epoch milliseconds, an unknown member.
        format!(
            r#"{{"EventName":"Referral-Created","ResourceUri":"https:\/\/api.partnercenter.microsoft.com\/engagements\/v1\/referrals\/{}\/","ResourceName":["referral"],"AuditUri":{{"href":"x"}},"ResourceChangeUtcDate":1795169730123,"Extra":{{"a":[1,2]}}}}"#,
            REFERRAL_ID.to_uppercase()
        ),
    ];
    for body in bodies {
        let h = Harness::start(Crm::Dataverse).await;
        h.seed_referral().await;
        assert_eq!(
            h.send_body(&body).await,
            (200, json!({ "status": "created" })),
            "{body}"
        );
    }
}

/// A referral from Microsoft whose text is longer than the CRM's columns (Partner Center
/// documents no lengths) reaches the CRM cut to fit, and its Audit column says which fields were
/// cut, by name only; on Salesforce, which requires a Close Date, a referral without one gets
/// one, said the same way.
async fn a_referral_longer_than_the_crms_columns_is_created_cut_to_fit(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed_referral().await;
    h.change_referral(REFERRAL_ID, |referral| {
        referral["name"] = json!(format!("Contoso {}", "n".repeat(320)));
        referral["details"]["notes"] = json!(format!("Customer {}", "é".repeat(2_500)));
        referral["details"]
            .as_object_mut()
            .unwrap()
            .remove("closingDateTime");
    })
    .await;

    let (status, body) = h.send_latest("referral-created").await;

    assert_eq!((status, &body), (200, &json!({ "status": "created" })));
    let opportunity = h.the_opportunity().await;
    let (name_max, notes_max) = match crm {
        Crm::Dataverse => (300, 2_000),
        Crm::Salesforce => (120, 32_000),
    };
    let name = opportunity[crm.name_field()].as_str().unwrap();
    assert_eq!(name.chars().count(), name_max);
    assert!(name.starts_with("Contoso nnn") && name.ends_with('…'));
    let notes = opportunity[crm.notes_field()].as_str().unwrap();
    assert_eq!(notes.chars().count(), notes_max.min(2_509), "{crm:?}");
    let audit = opportunity[crm.audit_field()].as_str().unwrap();
    assert!(
        audit.contains(&format!("name cut to {name_max} characters")),
        "{audit}"
    );
    assert_eq!(
        audit.contains("notes cut"),
        crm == Crm::Dataverse,
        "{audit}"
    );
    assert!(
        !audit.contains("nnnn") && !audit.contains("éé"),
        "no value: {audit}"
    );
    match crm {
        // The referral's creation date plus 90 days.
        Crm::Salesforce => {
            assert!(audit.contains("Close Date set to"), "{audit}");
            assert!(opportunity["CloseDate"].is_string(), "{opportunity}");
        }
        Crm::Dataverse => assert!(opportunity["estimatedclosedate"].is_null(), "{opportunity}"),
    }
}

#[tokio::test]
async fn dataverse_a_referral_longer_than_the_crms_columns_is_created_cut_to_fit() {
    a_referral_longer_than_the_crms_columns_is_created_cut_to_fit(Crm::Dataverse).await;
}

#[tokio::test]
async fn salesforce_a_referral_longer_than_the_crms_columns_is_created_cut_to_fit() {
    a_referral_longer_than_the_crms_columns_is_created_cut_to_fit(Crm::Salesforce).await;
}
