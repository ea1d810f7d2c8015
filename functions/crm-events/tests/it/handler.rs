//! Handler tests: real CRM notifications, fed through `lambda_http::request::from_str` into
//! `handler::handle`, against a spawned sandbox (Partner Center, Entra ID, Dataverse,
//! Salesforce) with in-memory stores, for both CRMs.
//!
//! The notifications are the sandbox's own: its Dataverse webhook and Salesforce Outbound
//! Message are pointed at a small capture server, and each captured request (path, query,
//! headers, body) becomes a Function URL request event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request as AxumRequest, State};
use cosell_runtime::{Connector, Local};
use cosell_sandbox::identities::{
    DATAVERSE_CLIENT_SECRET, PC_CLIENT_SECRET, PC_REFRESH_TOKEN, SALESFORCE_ORG_ID,
};
use cosell_sandbox::{RunningSandbox, SandboxConfig};
use crm_events::{App, Config, handler};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use support::{Crm, ENDPOINT_SECRET, WEBHOOK_KEY, invites_microsoft};

macro_rules! event_file {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../../../events/crm-events/", $name, ".json")),
        )
    };
}

/// The committed samples, by name.
const EVENTS: [(&str, &str); 6] = [
    event_file!("dataverse-create"),
    event_file!("dataverse-update"),
    event_file!("dataverse-size-exceeded"),
    event_file!("dataverse-win"),
    event_file!("salesforce-single"),
    event_file!("salesforce-batch"),
];

// ---------------------------------------------------------------------------------------------
// Harness

/// A request the sandbox sent to the capture server.
#[derive(Debug, Clone)]
struct Captured {
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

type Inbox = Arc<Mutex<Vec<Captured>>>;

async fn capture(State(inbox): State<Inbox>, req: AxumRequest) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let salesforce = parts.uri.path().contains("salesforce");
    inbox.lock().unwrap().push(Captured {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect(),
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    let body = if salesforce {
        cosell_adapters::crm_wire::salesforce::ack_response().to_owned()
    } else {
        String::new()
    };
    axum::response::Response::new(axum::body::Body::from(body))
}

struct Harness {
    sandbox: RunningSandbox,
    control: reqwest::Client,
    app: App<Local>,
    crm: Crm,
    inbox: Inbox,
    seen: Mutex<usize>,
}

impl Harness {
    async fn start(crm: Crm) -> Self {
        let sandbox = cosell_sandbox::spawn(SandboxConfig::default())
            .await
            .unwrap();
        let vars: HashMap<&str, String> = crm.environment(&sandbox.base_url).into_iter().collect();
        let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        let connector = Connector::local(&config.sync, config.sync_settings()).unwrap();
        let app = App::new(connector, &config);

        let inbox = Inbox::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let capture_url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(capture)
            .with_state(inbox.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let h = Self {
            sandbox,
            control: reqwest::Client::new(),
            app,
            crm,
            inbox,
            seen: Mutex::new(0),
        };
        match crm {
            Crm::Dataverse => {
                h.put(
                    "/_sandbox/dataverse/webhook",
                    json!({"url": format!("{capture_url}/dataverse"),
                           "authtype": "WebhookKey", "authvalue": WEBHOOK_KEY}),
                )
                .await;
            }
            Crm::Salesforce => {
                let mut definition = h.get("/_sandbox/salesforce/outbound-message").await;
                definition["url"] = json!(format!("{capture_url}/salesforce/{ENDPOINT_SECRET}"));
                h.put("/_sandbox/salesforce/outbound-message", definition)
                    .await;
            }
        }
        h
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url)
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.control.get(self.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }

    async fn put(&self, path: &str, body: Value) {
        let response = self
            .control
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "PUT {path}: {status} {text}");
    }

    /// The next request the sandbox sent to the capture server.
    async fn next_delivery(&self) -> Captured {
        for _ in 0..200 {
            {
                let inbox = self.inbox.lock().unwrap();
                let mut seen = self.seen.lock().unwrap();
                if inbox.len() > *seen {
                    *seen += 1;
                    return inbox[*seen - 1].clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sandbox sent no notification");
    }

    /// The next request the sandbox sent whose body contains `text` (earlier ones skipped).
    async fn next_delivery_containing(&self, text: &str) -> Captured {
        loop {
            let captured = self.next_delivery().await;
            if captured.body.contains(text) {
                return captured;
            }
        }
    }

    /// Seeds an account, a contact and an opportunity with sync on (as `as_user`, the seller
    /// when `None`); `edit` changes the opportunity first. Returns the opportunity id.
    async fn seed(&self, as_user: Option<&str>, edit: impl FnOnce(&mut Value)) -> String {
        self.seed_nth(1, as_user, edit).await
    }

    /// [`Self::seed`] of the `n`th opportunity (1 to 255), all of the same account.
    async fn seed_nth(
        &self,
        n: u8,
        as_user: Option<&str>,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let query = as_user.map(|u| format!("?as_user={u}")).unwrap_or_default();
        let (mut puts, id) = self.crm.seed(n, "US");
        let (path, mut opportunity) = puts.pop().unwrap();
        for (path, body) in puts {
            self.put(&path, body).await;
        }
        edit(&mut opportunity);
        self.put(&format!("{path}{query}"), opportunity).await;
        id
    }

    async fn record(&self, id: &str) -> Value {
        self.get(&self.crm.opportunity_path(id)).await
    }

    /// The referrals of deals (the partner's invitations of Microsoft are [`Self::invitations`]).
    async fn referrals(&self) -> Vec<Value> {
        let mut all = self.all_referrals().await;
        all.retain(|referral| !invites_microsoft(referral));
        all
    }

    /// The partner's invitations of Microsoft (the second referral of a Shared deal).
    async fn invitations(&self) -> Vec<Value> {
        let mut all = self.all_referrals().await;
        all.retain(invites_microsoft);
        all
    }

    async fn all_referrals(&self) -> Vec<Value> {
        self.get("/_sandbox/partner-center/referrals").await["referrals"]
            .as_array()
            .cloned()
            .unwrap()
    }

    async fn partner_center_calls(&self) -> usize {
        self.get("/_sandbox/requests?service=partner-center").await["count"]
            .as_u64()
            .unwrap() as usize
    }

    /// The referrals Partner Center was asked to create (`POST`s of the referrals API).
    async fn partner_center_posts(&self) -> usize {
        let log = self.get("/_sandbox/requests?service=partner-center").await;
        log["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == "/v1.0/engagements/referrals")
            .count()
    }

    async fn clear_requests(&self) {
        self.control
            .delete(self.url("/_sandbox/requests"))
            .send()
            .await
            .unwrap();
    }

    /// A Dataverse delivery handled before, delivered again: a duplicate, no Partner Center call.
    async fn redelivery_is_a_duplicate(&self, captured: &Captured) {
        self.clear_requests().await;
        let (status, body) = self.deliver(captured).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"status":"duplicate_skipped"}"#)
        );
        assert_eq!(self.partner_center_calls().await, 0);
    }

    /// Closes a Dataverse opportunity in the app (`win` or `lose`), as the seller by default.
    async fn close(&self, id: &str, outcome: &str, as_user: Option<&str>) {
        let query = as_user.map(|u| format!("?as_user={u}")).unwrap_or_default();
        let path = format!("/_sandbox/dataverse/opportunities/{id}/{outcome}{query}");
        let response = self.control.post(self.url(&path)).send().await.unwrap();
        assert!(response.status().is_success(), "POST {path}: {response:?}");
    }

    async fn handle(&self, request: Request) -> (u16, String) {
        answer(handler::handle(request, &self.app).await.unwrap())
    }

    async fn deliver(&self, captured: &Captured) -> (u16, String) {
        self.handle(request(captured, |_| {})).await
    }
}

fn answer(response: Response<Body>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = String::from_utf8(response.body().to_vec()).unwrap();
    (status, body)
}

/// A Function URL request event carrying `captured`, after `edit`.
fn request(captured: &Captured, edit: impl FnOnce(&mut Value)) -> Request {
    let query: serde_json::Map<String, Value> =
        url::form_urlencoded::parse(captured.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
    let headers: serde_json::Map<String, Value> = captured
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": captured.path,
        "rawQueryString": captured.query,
        "headers": headers,
        "queryStringParameters": query,
        "requestContext": {
            "accountId": "anonymous", "apiId": "crmevents",
            "domainName": "crmevents.lambda-url.eu-west-1.on.aws", "domainPrefix": "crmevents",
            "http": {"method": "POST", "path": captured.path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": "sandbox"},
            "requestId": "crm-events-test", "routeKey": "$default", "stage": "$default",
            "time": "20/Nov/2026:10:15:30 +0000", "timeEpoch": 1795169730000u64
        },
        "body": captured.body,
        "isBase64Encoded": false
    });
    if query.is_empty() {
        event
            .as_object_mut()
            .unwrap()
            .remove("queryStringParameters");
    }
    edit(&mut event);
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn with_body(captured: &Captured, body: &str) -> Captured {
    Captured {
        body: body.to_owned(),
        ..captured.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Both CRMs

macro_rules! both_crms {
    ($($name:ident),* $(,)?) => {
        mod dataverse {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Crm::Dataverse).await;
                }
            )*
        }
        mod salesforce {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Crm::Salesforce).await;
                }
            )*
        }
    };
}

both_crms!(
    a_seller_change_creates_one_referral_and_writes_its_id_back,
    the_same_delivery_again_calls_partner_center_zero_times,
    our_own_write_back_echo_calls_partner_center_zero_times,
    a_missing_solution_calls_nothing_and_the_audit_field_names_the_fix,
    a_created_referral_carries_the_solution_area_play_and_partner_role,
    a_missing_or_unknown_taxonomy_value_calls_nothing_and_names_both_fields,
    a_wrong_or_missing_secret_is_401,
    malformed_bodies_are_400,
);

async fn a_seller_change_creates_one_referral_and_writes_its_id_back(crm: Crm) {
    let h = Harness::start(crm).await;
    let id = h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let (status, body) = h.deliver(&delivery).await;
    assert_eq!(status, 200, "{body}");
    if crm == Crm::Salesforce {
        assert!(body.contains("<Ack>true</Ack>"), "{body}");
    } else {
        assert_eq!(body, r#"{"status":"created"}"#);
    }
    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 1, "{referrals:?}");
    let record = h.record(&id).await;
    assert_eq!(
        record[crm.referral_field()].as_str(),
        referrals[0]["id"].as_str(),
        "{record}"
    );
    // The Dataverse seed asks for Microsoft's help: a Shared deal, and Microsoft is invited to
    // its engagement with a second referral. The Salesforce seed asks for none.
    let invitations = h.invitations().await;
    if crm == Crm::Dataverse {
        assert_eq!(invitations.len(), 1, "{invitations:#?}");
        assert_eq!(invitations[0]["engagementId"], referrals[0]["engagementId"]);
        assert_eq!(referrals[0]["type"], "Shared");
        assert!(invitations[0]["externalReferenceId"].is_null());
    } else {
        assert!(invitations.is_empty(), "{invitations:#?}");
    }
}

async fn the_same_delivery_again_calls_partner_center_zero_times(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    assert_eq!(h.deliver(&delivery).await.0, 200);
    h.clear_requests().await;
    let (status, body) = h.deliver(&delivery).await;
    assert_eq!(status, 200, "{body}");
    if crm == Crm::Dataverse {
        assert_eq!(body, r#"{"status":"duplicate_skipped"}"#);
    }
    assert_eq!(h.partner_center_calls().await, 0);
    assert_eq!(h.referrals().await.len(), 1);
}

async fn our_own_write_back_echo_calls_partner_center_zero_times(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    assert_eq!(h.deliver(&delivery).await.0, 200);
    // The connector's write-back of the referral id raises a notification of its own.
    let echo = h.next_delivery().await;
    h.clear_requests().await;
    let (status, body) = h.deliver(&echo).await;
    assert_eq!(status, 200, "{body}");
    if crm == Crm::Dataverse {
        assert_eq!(body, r#"{"status":"echo_skipped"}"#);
    }
    assert_eq!(h.partner_center_calls().await, 0);

    // A change seeded as the connector user is an echo too.
    h.seed(Some(crm.connector_user()), |o| {
        o[crm.name_field()] = json!("Renamed by the connector");
    })
    .await;
    let own = h.next_delivery_containing("Renamed by the connector").await;
    assert_eq!(h.deliver(&own).await.0, 200);
    assert_eq!(h.partner_center_calls().await, 0);
    assert_eq!(h.referrals().await.len(), 1);
}

/// An Outbound Message carries the record as it is when Salesforce sends it: a seller's change
/// sent (or sent again) after one of the connector's writes names the connector's user as
/// `LastModifiedById`. It is synced, not skipped as the connector's own echo.
#[tokio::test]
async fn salesforce_a_sellers_change_sent_after_a_connector_write_is_synced() {
    let h = Harness::start(Crm::Salesforce).await;
    let id = h.seed(None, |_| {}).await;
    assert_eq!(h.deliver(&h.next_delivery().await).await.0, 200);
    // The connector's own write-back, holding what both sides agreed on: an echo, no call.
    let echo = h.next_delivery().await;
    h.clear_requests().await;
    assert_eq!(h.deliver(&echo).await.0, 200);
    assert_eq!(h.partner_center_calls().await, 0);
    // The seller raises the amount, a shared field.
    let mut edited = h.record(&id).await;
    edited["Amount"] = json!(99000);
    for key in ["LastModifiedById", "LastModifiedDate", "attributes"] {
        edited.as_object_mut().unwrap().remove(key);
    }
    h.put(&h.crm.opportunity_path(&id), edited).await;
    let change = h.next_delivery_containing("99000").await;
    let seller = change
        .body
        .lines()
        .find(|line| line.contains("LastModifiedById"))
        .unwrap();
    let sent_after_our_write = change.body.replace(
        seller,
        &format!(
            "<sf:LastModifiedById>{}</sf:LastModifiedById>",
            Crm::Salesforce.connector_user()
        ),
    );
    h.clear_requests().await;

    let (status, body) = h.deliver(&with_body(&change, &sent_after_our_write)).await;

    assert_eq!(status, 200, "{body}");
    assert!(h.partner_center_calls().await > 0, "skipped as an echo");
    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 1);
    assert_eq!(referrals[0]["details"]["dealValue"], json!(99000));
}

async fn a_missing_solution_calls_nothing_and_the_audit_field_names_the_fix(crm: Crm) {
    let h = Harness::start(crm).await;
    let id = h
        .seed(None, |o| {
            o.as_object_mut().unwrap().remove(crm.solutions_field());
            o[crm.help_field()] = json!("Proof of concept or demo");
        })
        .await;
    let delivery = h.next_delivery().await;
    h.clear_requests().await;
    let (status, body) = h.deliver(&delivery).await;
    assert_eq!(status, 200, "{body}");
    if crm == Crm::Dataverse {
        assert_eq!(body, r#"{"status":"needs_attention"}"#);
    }
    assert_eq!(h.partner_center_calls().await, 0);
    assert!(h.referrals().await.is_empty());
    let record = h.record(&id).await;
    let audit = record[crm.audit_field()].as_str().unwrap_or_default();
    assert!(audit.contains(crm.solutions_field()), "{audit}");
    assert!(audit.to_lowercase().contains("fix"), "{audit}");
}

async fn a_created_referral_carries_the_solution_area_play_and_partner_role(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    assert_eq!(h.deliver(&delivery).await.0, 200);
    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 1, "{referrals:?}");
    let members = ["solutionArea", "solutionPlay", "partnerRole"];
    for (member, value) in members.into_iter().zip(crm.taxonomy()) {
        assert_eq!(referrals[0][member], value, "{member}: {:#}", referrals[0]);
    }
}

/// A taxonomy case: its name, how it breaks the opportunity, the problem and what the Audit
/// field must name.
type TaxonomyCase = (
    &'static str,
    fn(Crm, &mut Value),
    &'static str,
    &'static [&'static str],
);

async fn a_missing_or_unknown_taxonomy_value_calls_nothing_and_names_both_fields(crm: Crm) {
    let cases: [TaxonomyCase; 3] = [
        (
            "missing solution play",
            |crm, o| {
                o.as_object_mut().unwrap().remove(crm.solution_play_field());
            },
            "the Solution Play is missing",
            &["\"solutionPlay\"", "to one of: \""],
        ),
        (
            "unknown solution area",
            |crm, o| o[crm.solution_area_field()] = json!("Modern Work"),
            "Solution Area \"Modern Work\" is not allowed",
            &[
                "\"solutionArea\"",
                "\"AI Business Solutions\", \"Cloud & AI Platforms\", \"Security\"",
            ],
        ),
        (
            "empty partner role",
            |crm, o| o[crm.partner_role_field()] = json!(""),
            "the Partner Role is missing",
            &["\"partnerRole\"", "\"Advisory\", \"Implementation\""],
        ),
    ];
    for (case, break_it, reason, says) in cases {
        let h = Harness::start(crm).await;
        let id = h.seed(None, |o| break_it(crm, o)).await;
        let delivery = h.next_delivery().await;
        h.clear_requests().await;
        let (status, body) = h.deliver(&delivery).await;
        assert_eq!(status, 200, "{case}: {body}");
        if crm == Crm::Dataverse {
            assert_eq!(body, r#"{"status":"needs_attention"}"#, "{case}");
        }
        assert_eq!(h.partner_center_calls().await, 0, "{case}");
        assert!(h.referrals().await.is_empty(), "{case}");
        let record = h.record(&id).await;
        let audit = record[crm.audit_field()].as_str().unwrap_or_default();
        assert!(audit.contains(reason), "{case}: {audit}");
        let field = match case {
            "missing solution play" => crm.solution_play_field(),
            "unknown solution area" => crm.solution_area_field(),
            _ => crm.partner_role_field(),
        };
        assert!(audit.contains(field), "{case}: {audit}");
        for text in says {
            assert!(audit.contains(text), "{case}: {text}: {audit}");
        }
    }
}

async fn a_wrong_or_missing_secret_is_401(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let wrong = match crm {
        Crm::Dataverse => Captured {
            query: "code=wrong".into(),
            ..delivery.clone()
        },
        Crm::Salesforce => Captured {
            path: "/salesforce/wrong".into(),
            ..delivery.clone()
        },
    };
    let missing = match crm {
        Crm::Dataverse => Captured {
            query: String::new(),
            ..delivery.clone()
        },
        Crm::Salesforce => Captured {
            path: "/salesforce".into(),
            ..delivery.clone()
        },
    };
    h.clear_requests().await;
    for captured in [wrong, missing] {
        assert_eq!(h.deliver(&captured).await.0, 401, "{captured:?}");
    }
    assert_eq!(h.partner_center_calls().await, 0);
    // The secret may also come as `?token=` (Salesforce) and through the watch prefix.
    if crm == Crm::Salesforce {
        let token = Captured {
            path: "/lambda-url/crm-events/salesforce".into(),
            query: format!("token={ENDPOINT_SECRET}"),
            ..delivery.clone()
        };
        assert_eq!(h.deliver(&token).await.0, 200);
    } else {
        let prefixed = Captured {
            path: "/lambda-url/crm-events/dataverse".into(),
            ..delivery.clone()
        };
        assert_eq!(h.deliver(&prefixed).await.0, 200);
    }
}

async fn malformed_bodies_are_400(crm: Crm) {
    let h = Harness::start(crm).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    h.clear_requests().await;
    let bodies: &[&str] = match crm {
        Crm::Dataverse => &["{", "[]", r#"{"MessageName": "Update"}"#],
        Crm::Salesforce => &[
            "<not-xml",
            r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/></soapenv:Envelope>"#,
        ],
    };
    for body in bodies {
        let (status, text) = h.deliver(&with_body(&delivery, body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        if crm == Crm::Salesforce {
            assert!(text.contains("<soapenv:Fault>"), "{text}");
        }
    }
    assert_eq!(h.partner_center_calls().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Salesforce only

#[tokio::test]
async fn salesforce_a_message_from_another_org_is_401() {
    let h = Harness::start(Crm::Salesforce).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    assert!(delivery.body.contains(SALESFORCE_ORG_ID));
    let other = delivery
        .body
        .replace(SALESFORCE_ORG_ID, "00D000000000001AAA");
    h.clear_requests().await;
    let (status, body) = h.deliver(&with_body(&delivery, &other)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(h.partner_center_calls().await, 0);
    // The 15-character form of the configured org is the same org.
    let short = delivery
        .body
        .replace(SALESFORCE_ORG_ID, &SALESFORCE_ORG_ID[..15]);
    assert_eq!(h.deliver(&with_body(&delivery, &short)).await.0, 200);
}

#[tokio::test]
async fn salesforce_a_batch_of_100_with_one_failing_is_a_soap_fault_and_the_redelivery_completes_without_duplicates()
 {
    use cosell_adapters::crm_wire::salesforce::OutboundMessage;
    use cosell_domain::ports::{IdempotencyRecord, IdempotencyStatus};
    use cosell_domain::sync::salesforce_change_key;

    let h = Harness::start(Crm::Salesforce).await;
    let mut ids = Vec::new();
    for n in 1..=100 {
        ids.push(h.seed_nth(n, None, |_| {}).await);
    }
    let response = h
        .control
        .post(h.url("/_sandbox/salesforce/outbound-messages/batch"))
        .json(&json!({ "ids": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    // The seeds sent a message each too: the batch is the one with 100 notifications.
    let mut batch = None;
    for _ in 0..=ids.len() {
        let captured = h.next_delivery().await;
        let message = OutboundMessage::parse(&captured.body).unwrap();
        if message.notifications.len() == ids.len() {
            batch = Some((captured, message));
            break;
        }
    }
    let (batch, message) = batch.expect("the batch message was delivered");

    // Another invocation (within its deadline) holds one notification in the middle.
    let held = &message.notifications[49];
    let key = salesforce_change_key(&held.id).unwrap();
    let record = |in_progress_until| IdempotencyRecord {
        key: key.clone(),
        status: IdempotencyStatus::InProgress,
        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        in_progress_until: Some(in_progress_until),
        response: None,
        payload_hash: None,
    };
    let idempotency = &h.app.connector.stores.idempotency;
    idempotency.insert(record(chrono::Utc::now() + chrono::Duration::hours(1)));

    let (status, body) = h.deliver(&batch).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("<soapenv:Fault>"), "{body}");
    assert!(!body.contains("<Ack>true</Ack>"), "{body}");
    assert_eq!(h.referrals().await.len(), 99);
    let held_id = held.record_id().unwrap();
    assert!(h.record(held_id).await[Crm::Salesforce.referral_field()].is_null());

    // The holder's deadline passes (its invocation timed out): the key is free again.
    idempotency.insert(record(chrono::Utc::now() - chrono::Duration::seconds(1)));
    let (status, body) = h.deliver(&batch).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Ack>true</Ack>"), "{body}");
    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 100);
    let mut referral_ids: Vec<_> = referrals.iter().map(|r| r["id"].clone()).collect();
    referral_ids.sort_by_key(ToString::to_string);
    referral_ids.dedup();
    assert_eq!(referral_ids.len(), 100);
    assert!(h.record(held_id).await[Crm::Salesforce.referral_field()].is_string());
    assert_eq!(h.partner_center_posts().await, 100);
}

#[tokio::test]
async fn salesforce_an_xxe_attempt_is_400() {
    let h = Harness::start(Crm::Salesforce).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let xxe = delivery.body.replacen(
        "<soapenv:Envelope",
        "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><soapenv:Envelope",
        1,
    );
    let xxe = xxe.replacen("<sf:Name>", "<sf:Name>&xxe;", 1);
    h.clear_requests().await;
    let (status, body) = h.deliver(&with_body(&delivery, &xxe)).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("root:"), "{body}");
    assert_eq!(h.partner_center_calls().await, 0);
}

#[tokio::test]
async fn salesforce_a_body_over_the_cap_is_413() {
    let h = Harness::start(Crm::Salesforce).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let big = format!("{}{}", delivery.body, " ".repeat(h.app.max_body_bytes));
    assert_eq!(h.deliver(&with_body(&delivery, &big)).await.0, 413);
}

#[tokio::test]
async fn dataverse_a_size_exceeded_body_is_re_read_and_synced() {
    let h = Harness::start(Crm::Dataverse).await;
    let id = h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let mut context: Value = serde_json::from_str(&delivery.body).unwrap();
    for member in [
        "InputParameters",
        "PostEntityImages",
        "PreEntityImages",
        "ParentContext",
    ] {
        context.as_object_mut().unwrap().remove(member);
    }
    let mut stripped = with_body(&delivery, &context.to_string());
    stripped
        .headers
        .push(("x-ms-dynamics-msg-size-exceeded".into(), "true".into()));
    let (status, body) = h.deliver(&stripped).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"status":"created"}"#);
    let record = h.record(&id).await;
    assert!(record[Crm::Dataverse.referral_field()].is_string());
}

#[tokio::test]
async fn dataverse_a_retry_after_a_503_still_creates_one_referral() {
    use cosell_domain::ports::{PortError, Service};

    let h = Harness::start(Crm::Dataverse).await;
    let id = h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;

    // The idempotency table does not answer: the delivery is not taken on.
    h.app
        .connector
        .stores
        .idempotency
        .fail_next(PortError::Transient {
            service: Service::IdempotencyStore,
            reason: "throttled".into(),
            retry_after: None,
        });
    let (status, body) = h.deliver(&delivery).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("idempotency_unavailable"), "{body}");
    assert!(h.referrals().await.is_empty());
    assert_eq!(h.partner_center_posts().await, 0);

    // Dataverse delivers once more after a 503: the same request.
    let (status, body) = h.deliver(&delivery).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"created"}"#));
    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 1, "{referrals:?}");
    assert_eq!(
        h.record(&id).await[Crm::Dataverse.referral_field()].as_str(),
        referrals[0]["id"].as_str()
    );

    h.redelivery_is_a_duplicate(&delivery).await;
    assert_eq!(h.referrals().await.len(), 1);
}

#[tokio::test]
async fn dataverse_other_tables_and_messages_are_ignored() {
    let h = Harness::start(Crm::Dataverse).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let mut context: Value = serde_json::from_str(&delivery.body).unwrap();
    context["MessageName"] = json!("Delete");
    h.clear_requests().await;
    let (status, body) = h.deliver(&with_body(&delivery, &context.to_string())).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ignored"}"#));
    assert_eq!(h.partner_center_calls().await, 0);
}

/// A seller's close in the Dataverse app is the `Win` / `Lose` message, which carries no image
/// of the row: the handler reads the row and closes the referral; the connector's own close
/// (through the same actions) is an echo.
#[tokio::test]
async fn dataverse_a_sellers_close_in_the_app_closes_the_referral() {
    for (outcome, status, substatus) in [("win", "Closed", "Won"), ("lose", "Closed", "Lost")] {
        let h = Harness::start(Crm::Dataverse).await;
        let id = h.seed(None, |_| {}).await;
        let created = h.next_delivery().await;
        assert_eq!(h.deliver(&created).await.0, 200);
        let echo = h.next_delivery().await;
        assert_eq!(h.deliver(&echo).await.0, 200);

        h.close(&id, outcome, None).await;
        let message = if outcome == "win" { "Win" } else { "Lose" };
        let close = h
            .next_delivery_containing(&format!(r#""MessageName":"{message}""#))
            .await;
        let (code, body) = h.deliver(&close).await;
        assert_eq!((code, body.as_str()), (200, r#"{"status":"updated"}"#));
        let referrals = h.referrals().await;
        assert_eq!(referrals.len(), 1, "{referrals:#?}");
        let referral = &referrals[0];
        assert_eq!(referral["status"], status, "{referral:#}");
        assert_eq!(referral["substatus"], substatus, "{referral:#}");
        h.redelivery_is_a_duplicate(&close).await;
    }

    // The connector's own close raises the message too, as an echo.
    let h = Harness::start(Crm::Dataverse).await;
    let id = h.seed(None, |_| {}).await;
    let created = h.next_delivery().await;
    assert_eq!(h.deliver(&created).await.0, 200);
    h.close(&id, "win", Some(Crm::Dataverse.connector_user()))
        .await;
    let close = h.next_delivery_containing(r#""MessageName":"Win""#).await;
    h.clear_requests().await;
    let (code, body) = h.deliver(&close).await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"echo_skipped"}"#));
    assert_eq!(h.partner_center_calls().await, 0);
}

/// The seller closes the deal after turning sync on and before its create is delivered: the
/// create's sync finds the row closed, creates the referral and closes it, writes nothing to
/// the read-only row and reports nothing for the partner to fix; the close's own `Win` then has
/// nothing left to do. (A close made during that sync, after its read, is the domain's
/// `a_close_made_while_the_first_sync_runs_is_sent_by_the_next_run`.)
#[tokio::test]
async fn dataverse_a_close_made_before_the_create_is_handled_closes_the_new_referral() {
    let h = Harness::start(Crm::Dataverse).await;
    let id = h.seed(None, |_| {}).await;
    let created = h.next_delivery().await;
    h.close(&id, "win", None).await;
    let close = h.next_delivery_containing(r#""MessageName":"Win""#).await;

    let (code, body) = h.deliver(&created).await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"created"}"#));
    let (code, body) = h.deliver(&close).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("needs_attention"), "{body}");

    let referrals = h.referrals().await;
    assert_eq!(referrals.len(), 1, "{referrals:#?}");
    assert_eq!(referrals[0]["status"], "Closed", "{:#}", referrals[0]);
    assert_eq!(referrals[0]["substatus"], "Won", "{:#}", referrals[0]);
}

// ---------------------------------------------------------------------------------------------
// The log line

/// Everything logged by this test binary, as JSON lines: a process-wide subscriber (a
/// thread-scoped one misses events while other tests run concurrently: tracing caches callsite
/// interest globally).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> &'static Logs {
    static CAPTURED: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        use lambda_http::tracing::subscriber;
        let logs = Logs::default();
        let writer = logs.clone();
        subscriber::fmt()
            .json()
            .with_max_level(lambda_http::tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

#[tokio::test]
async fn each_request_logs_one_line_without_body_contact_data_or_secrets() {
    use lambda_http::RequestExt as _;
    use lambda_http::lambda_runtime::Context;

    let logs = captured_logs();
    let h = Harness::start(Crm::Dataverse).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let wrong = Captured {
        query: "code=wrong".into(),
        ..delivery.clone()
    };
    for (captured, request_id) in [
        (&delivery, "crm-log-test-1"),
        (&delivery, "crm-log-test-2"),
        (&wrong, "crm-log-test-3"),
    ] {
        let mut context = Context::default();
        context.request_id = request_id.to_owned();
        h.handle(request(captured, |_| {}).with_lambda_context(context))
            .await;
    }

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let all: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let lines: Vec<&Value> = all
        .iter()
        .filter(|line| {
            line["fields"]["correlation_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("crm-log-test-"))
        })
        .collect();
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    let outcomes: Vec<_> = lines
        .iter()
        .map(|line| line["fields"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["created", "duplicate_skipped", "unauthorized"]);
    let created = &lines[0]["fields"];
    assert_eq!(created["message"], "crm change handled");
    assert_eq!(created["correlation_id"], "crm-log-test-1");
    assert_eq!(created["crm"], "dataverse");
    assert_eq!(created["record_id"], "6d81597f-0000-4000-8000-0000000000e1");
    assert_eq!(created["status"], 200);
    assert_eq!(
        created["referral_id"].as_str(),
        h.referrals().await[0]["id"].as_str(),
        "the line names the referral the change created"
    );
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[2]["level"], "WARN");
    assert_eq!(lines[2]["fields"]["status"], 401);

    // Nothing the function and the adapters log (the sandbox's own logs aside) carries the
    // body, contact data or a credential.
    let ours: Vec<String> = all
        .iter()
        .filter(|line| {
            !line["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with("cosell_sandbox")
        })
        .map(Value::to_string)
        .collect();
    for secret in [
        "dana@fourthcoffee.example",
        "Reyes",
        "Fourth Coffee",
        WEBHOOK_KEY,
        PC_REFRESH_TOKEN,
        PC_CLIENT_SECRET,
        DATAVERSE_CLIENT_SECRET,
        "Bearer ",
        "InputParameters",
    ] {
        assert!(
            ours.iter().all(|line| !line.contains(secret)),
            "{secret} was logged: {ours:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The committed samples

#[test]
fn every_sample_is_a_function_url_post_to_a_crm_route() {
    for (name, text) in EVENTS {
        let event: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event["requestContext"]["http"]["method"], "POST", "{name}");
        let request = lambda_http::request::from_str(text).unwrap();
        let path = request.uri().path().to_owned();
        let body = std::str::from_utf8(request.body()).unwrap();
        if name.starts_with("dataverse") {
            assert!(path.ends_with("/dataverse"), "{name}");
            let context = cosell_adapters::crm_wire::dataverse::RemoteExecutionContext::parse(body)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(context.closes_an_opportunity(), name == "dataverse-win");
            assert_eq!(
                context.closed_opportunity_id().map(|id| id.to_string()),
                Some("6d81597f-0000-4000-8000-0000000000e1".to_owned()),
                "{name}"
            );
        } else {
            assert!(path.contains("/salesforce/"), "{name}");
            let message = cosell_adapters::crm_wire::salesforce::OutboundMessage::parse(body)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(message.is_from_organization(SALESFORCE_ORG_ID), "{name}");
        }
    }
}

/// Regenerates `events/crm-events/` from what the sandbox sends:
/// `cargo test -p crm-events --test it -- --ignored write_the_samples`.
#[tokio::test]
#[ignore = "writes events/crm-events/"]
async fn write_the_samples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/crm-events");
    let h = Harness::start(Crm::Dataverse).await;
    let id = h.seed(None, |_| {}).await;
    let create = h.next_delivery().await;
    h.seed(None, |o| o["estimatedvalue"] = json!(30000)).await;
    let update = h.next_delivery().await;
    let mut context: Value = serde_json::from_str(&update.body).unwrap();
    for member in [
        "InputParameters",
        "PostEntityImages",
        "PreEntityImages",
        "ParentContext",
    ] {
        context.as_object_mut().unwrap().remove(member);
    }
    let mut exceeded = with_body(&update, &context.to_string());
    exceeded
        .headers
        .push(("x-ms-dynamics-msg-size-exceeded".into(), "true".into()));
    h.close(&id, "win", None).await;
    let win = h.next_delivery_containing(r#""MessageName":"Win""#).await;
    for (name, captured) in [
        ("dataverse-create", &create),
        ("dataverse-update", &update),
        ("dataverse-size-exceeded", &exceeded),
        ("dataverse-win", &win),
    ] {
        write_sample(&dir, name, &h.sandbox.base_url, captured);
    }

    let h = Harness::start(Crm::Salesforce).await;
    let id = h.seed(None, |_| {}).await;
    let single = h.next_delivery().await;
    h.control
        .post(h.url("/_sandbox/salesforce/outbound-messages/batch"))
        .json(&json!({"ids": [id, id]}))
        .send()
        .await
        .unwrap();
    let batch = h.next_delivery().await;
    write_sample(&dir, "salesforce-single", &h.sandbox.base_url, &single);
    write_sample(&dir, "salesforce-batch", &h.sandbox.base_url, &batch);
}

fn write_sample(dir: &std::path::Path, name: &str, base_url: &str, captured: &Captured) {
    let normalise = |text: &str| {
        text.replace(base_url, "http://127.0.0.1:8700")
            .replace(base_url.trim_start_matches("http://"), "127.0.0.1:8700")
    };
    let captured = Captured {
        path: captured.path.clone(),
        query: captured.query.clone(),
        headers: captured
            .headers
            .iter()
            .filter(|(k, _)| k != "host" && k != "content-length")
            .map(|(k, v)| (k.clone(), normalise(v)))
            .chain([(
                "host".to_owned(),
                "crmevents.lambda-url.eu-west-1.on.aws".to_owned(),
            )])
            .collect(),
        body: normalise(&captured.body),
    };
    let mut event = Value::Null;
    request(&captured, |e| event = e.clone());
    let text = serde_json::to_string_pretty(&event).unwrap() + "\n";
    std::fs::write(dir.join(format!("{name}.json")), text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bodies as real senders deviate from the documented ones

#[tokio::test]
async fn a_dataverse_body_spelled_otherwise_is_read() {
    let h = Harness::start(Crm::Dataverse).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    // A byte-order mark, escaped slashes, `Key` for `key`, a number as text, an unknown member.
    let body = delivery
        .body
        .replace('/', "\\/")
        .replace("\"key\":", "\"Key\":")
        .replace("\"Mode\":1", "\"Mode\":\"1\"")
        .replacen('{', "{\"SomethingNew\":{\"x\":[null]},", 1);
    let body = format!("\u{feff}{body}");
    let answer = h.deliver(&with_body(&delivery, &body)).await;
    assert_eq!(answer, (200, r#"{"status":"created"}"#.to_owned()));
    assert_eq!(h.referrals().await.len(), 1);
}

#[tokio::test]
async fn an_outbound_message_spelled_otherwise_is_acknowledged() {
    let h = Harness::start(Crm::Salesforce).await;
    let id = h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    // A byte-order mark, CRLF line ends, another envelope prefix, white space around an id, a
    // comment.
    let body = delivery
        .body
        .replace("soapenv:", "soap:")
        .replace("xmlns:soapenv=", "xmlns:soap=")
        .replace('\n', "\r\n")
        .replace(&format!(">{id}<"), &format!(">\r\n  {id}\r\n <"))
        .replace("<Notification>", "<!-- batched --><Notification>");
    let body = format!("\u{feff}{body}");
    let (status, answer) = h.deliver(&with_body(&delivery, &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<Ack>true</Ack>"), "{answer}");
    assert_eq!(h.referrals().await.len(), 1);
}

/// Salesforce batches up to 100 notifications, each with every field the message lists; long
/// text fields (32,000 characters at most) take such a message past a megabyte, and a refused
/// message would come back unchanged for 24 hours.
#[tokio::test]
async fn an_outbound_message_of_many_long_notifications_is_acknowledged() {
    let h = Harness::start(Crm::Salesforce).await;
    h.seed(None, |_| {}).await;
    let delivery = h.next_delivery().await;
    let body = &delivery.body;
    let start = body.find("<Notification>").unwrap();
    let end = body.rfind("</Notification>").unwrap() + "</Notification>".len();
    let one = &body[start..end];
    let notification_id = &one[one.find("<Id>").unwrap() + 4..one.find("</Id>").unwrap()];
    let description = "x".repeat(32_000);
    let batch: String = (0..40)
        .map(|n| {
            one.replace(
                notification_id,
                &format!("{}{n:03}", &notification_id[..15]),
            )
            .replace(
                "</sf:Name>",
                &format!("</sf:Name><sf:Description>{description}</sf:Description>"),
            )
        })
        .collect();
    let body = format!("{}{batch}{}", &body[..start], &body[end..]);
    assert!(body.len() > 1_300_000, "{}", body.len());
    let (status, answer) = h.deliver(&with_body(&delivery, &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<Ack>true</Ack>"), "{answer}");
}
