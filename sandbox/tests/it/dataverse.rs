//! Contract tests of the Dataverse stand-in: Web API (create, read, upsert by id and
//! alternate key, conditional requests, errors, auth, faults, queries) and webhooks
//! (`RemoteExecutionContext` shape, auth per target, writer ids, retries, size limit).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{Listener, Received, TestSandbox};
use cosell_sandbox::SandboxConfig;
use cosell_sandbox::dataverse::currency_id;
use cosell_sandbox::identities::{DATAVERSE_APP_USER_ID, DATAVERSE_SELLER_USER_ID};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const SAMPLE_CONTEXT: &str =
    include_str!("../data/dataverse/dataverse-webhook-remoteexecutioncontext.2021.json");
const SAMPLE_412: &str =
    include_str!("../data/dataverse/dataverse-webapi-error-412-concurrency-update.json");
const SAMPLE_404: &str =
    include_str!("../data/dataverse/dataverse-webapi-error-404-upsert-if-match.json");

const OPPORTUNITY_KEY: &str = "msft_microsoftpartnercenterreferralidentifier";

/// A sandbox, a Web API token of the connector's application user and request helpers.
struct Dv {
    ts: TestSandbox,
    token: String,
}

impl Dv {
    async fn start() -> Self {
        Self::with(TestSandbox::start().await).await
    }

    /// Dataverse webhooks also go to `listener` (the configured default target).
    async fn with_listener(listener: &Listener) -> Self {
        Self::with(
            TestSandbox::with_config(SandboxConfig {
                retry_backoff: Duration::from_millis(10),
                dataverse_webhook_url: Some(listener.url.clone()),
                ..SandboxConfig::default()
            })
            .await,
        )
        .await
    }

    async fn with(ts: TestSandbox) -> Self {
        let mut dv = Self {
            ts,
            token: String::new(),
        };
        dv.token = dv.token_for(DATAVERSE_APP_USER_ID, None).await;
        dv
    }

    async fn token_for(&self, subject: &str, expires_in: Option<i64>) -> String {
        let mut request = json!({ "audience": self.ts.sandbox.base_url, "subject": subject });
        if let Some(seconds) = expires_in {
            request["expires_in"] = json!(seconds);
        }
        let body: Value = self
            .ts
            .http
            .post(self.ts.url("/_sandbox/tokens"))
            .json(&request)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    fn api(&self, path: &str) -> String {
        self.ts.url(&format!("/api/data/v9.2/{path}"))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.ts
            .http
            .request(method, self.api(path))
            .bearer_auth(&self.token)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
    }

    async fn get(&self, path: &str) -> Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post(&self, set: &str, body: Value, representation: bool) -> Response {
        let mut request = self.request(reqwest::Method::POST, set).json(&body);
        if representation {
            request = request.header("Prefer", "return=representation");
        }
        request.send().await.unwrap()
    }

    async fn patch(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.request(reqwest::Method::PATCH, path).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// `POST` + `return=representation`, asserting 201; returns the row.
    async fn create(&self, set: &str, body: Value) -> Value {
        let response = self.post(set, body, true).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn seed(&self, set: &str, id: &str, body: Value, as_user: Option<&str>) -> Response {
        let mut url = self.ts.url(&format!("/_sandbox/dataverse/{set}/{id}"));
        if let Some(user) = as_user {
            url = format!("{url}?as_user={user}");
        }
        self.ts.http.put(url).json(&body).send().await.unwrap()
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.ts.http.request(method, self.ts.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Registers a webhook `serviceendpoint` (contract 8) through the Web API.
    async fn register_webhook(&self, url: &str, authtype: i64, authvalue: &str) -> String {
        let row = self
            .create(
                "serviceendpoints",
                json!({
                    "name": "cosell-sync",
                    "contract": 8,
                    "authtype": authtype,
                    "authvalue": authvalue,
                    "url": url,
                    "messageformat": 2,
                }),
            )
            .await;
        row["serviceendpointid"].as_str().unwrap().to_owned()
    }

    /// Waits (polling the sandbox's delivery log) until `count` Dataverse deliveries exist
    /// and all of them are finished.
    async fn finished_deliveries(&self, count: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let body: Value = self
                .ts
                .http
                .get(self.ts.url("/_sandbox/deliveries"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let records: Vec<Value> = body["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["service"] == "dataverse")
                .cloned()
                .collect();
            if records.len() >= count && records.iter().all(|d| d["finished"] == true) {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries not finished: {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

async fn error_of(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// `{key, value}` list → value of `key`.
fn kv<'a>(list: &'a Value, key: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|p| p["key"] == key)
        .map(|p| &p["value"])
}

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn target(context: &Value) -> &Value {
    kv(&context["InputParameters"], "Target").unwrap()
}

fn post_image(context: &Value) -> &Value {
    kv(&context["PostEntityImages"], "PostImage").unwrap()
}

fn attr<'a>(entity: &'a Value, name: &str) -> Option<&'a Value> {
    kv(&entity["Attributes"], name)
}

fn attr_names(entity: &Value) -> Vec<String> {
    entity["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn create_answers_204_with_the_entity_id_and_get_reads_the_row_back() {
    let dv = Dv::start().await;
    let response = dv
        .post(
            "accounts",
            json!({ "name": "Contoso", "address1_postalcode": "98052", "address1_country": "US" }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let entity_id = header(&response, "OData-EntityId").unwrap();
    let prefix = format!("{}/api/data/v9.2/accounts(", dv.ts.sandbox.base_url);
    let id = entity_id
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap();
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{entity_id}");

    let response = dv.get(&format!("accounts({id})")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let etag_header = header(&response, "ETag").unwrap();
    let row: Value = response.json().await.unwrap();
    assert_eq!(
        row["@odata.context"],
        format!(
            "{}/api/data/v9.2/$metadata#accounts/$entity",
            dv.ts.sandbox.base_url
        )
    );
    assert_eq!(row["accountid"], id);
    assert_eq!(row["name"], "Contoso");
    assert_eq!(row["telephone1"], Value::Null, "unset columns read as null");
    let version = row["versionnumber"].as_u64().unwrap();
    assert_eq!(row["@odata.etag"], format!("W/\"{version}\""));
    assert_eq!(etag_header, format!("W/\"{version}\""));
    assert!(row["createdon"].as_str().unwrap().ends_with('Z'));
    assert_eq!(row["_createdby_value"], DATAVERSE_APP_USER_ID);
    assert_eq!(row["_modifiedby_value"], DATAVERSE_APP_USER_ID);
    assert_eq!(row["_ownerid_value"], DATAVERSE_APP_USER_ID);
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(0), json!(1))
    );

    let response = dv.get(&format!("accounts({})", guid())).await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.starts_with("account With Id = ") && message.ends_with(" Does Not Exist"));
}

#[tokio::test]
async fn create_with_return_representation_answers_201_with_lookups_as_value_properties() {
    let dv = Dv::start().await;
    let account = dv.create("accounts", json!({ "name": "Fabrikam" })).await;
    let account_id = account["accountid"].as_str().unwrap();
    let eur = currency_id("EUR").unwrap();
    let response = dv
        .post(
            "opportunities",
            json!({
                "name": "Fabrikam cloud migration",
                "estimatedvalue": 125000.5,
                "estimatedclosedate": "2026-09-30",
                "parentaccountid@odata.bind": format!("/accounts({account_id})"),
                "customerid_account@odata.bind": format!("/accounts({account_id})"),
                "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({eur})"),
                "msft_microsoftpartnercenterreferralidentifier": "REF-100",
            }),
            true,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "OData-EntityId"), None);
    let row: Value = response.json().await.unwrap();
    assert_eq!(row["_parentaccountid_value"], account_id);
    assert_eq!(row["_customerid_value"], account_id);
    assert_eq!(row["_transactioncurrencyid_value"], eur);
    assert_eq!(row["estimatedvalue"], 125000.5);
    assert_eq!(row["estimatedclosedate"], "2026-09-30");
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(0), json!(1))
    );
    assert!(row.get("parentaccountid").is_none());

    let id = row["opportunityid"].as_str().unwrap();
    let annotated: Value = dv
        .request(
            reqwest::Method::GET,
            &format!("opportunities({id})?$select=_customerid_value,name"),
        )
        .header("Prefer", "odata.include-annotations=\"*\"")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        annotated["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "account"
    );
    assert_eq!(annotated["opportunityid"], id, "the key is always selected");
    assert!(annotated.get("estimatedvalue").is_none());

    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", "estimatedclosedate": "2026-09-30T00:00:00Z" }),
            false,
        )
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("Edm.Date"), "{message}");
}

#[tokio::test]
async fn a_deep_insert_creates_the_account_with_its_contact_or_neither() {
    let dv = Dv::start().await;
    let contact_id = guid();
    let account = dv
        .create(
            "accounts",
            json!({
                "name": "Contoso",
                "contact_customer_accounts": [
                    { "contactid": contact_id, "firstname": "Sue", "lastname": "Smith",
                      "emailaddress1": "sue@contoso.example" }
                ],
            }),
        )
        .await;
    let account_id = account["accountid"].as_str().unwrap();
    assert!(account.get("contact_customer_accounts").is_none());
    let contact = dv.get_json(&format!("contacts({contact_id})")).await;
    assert_eq!(
        contact["contactid"], contact_id,
        "the primary key given is kept"
    );
    assert_eq!(contact["_parentcustomerid_value"], account_id);
    assert_eq!(contact["fullname"], "Sue Smith");

    // A nested row Dataverse refuses: neither row is created.
    let before = dv.get_json("accounts").await["value"]
        .as_array()
        .unwrap()
        .len();
    let response = dv
        .post(
            "accounts",
            json!({
                "name": "Fabrikam",
                "contact_customer_accounts": [{ "lastname": "Doe", "nosuchcolumn": 1 }],
            }),
            false,
        )
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("nosuchcolumn"), "{message}");
    let after = dv.get_json("accounts").await["value"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        after, before,
        "the account was rolled back with its contact"
    );
    assert!(
        dv.get_json("contacts?$filter=lastname eq 'Doe'").await["value"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Not an array of objects, or nested on an update: refused.
    let (status, ..) = error_of(
        dv.post(
            "accounts",
            json!({ "name": "x", "contact_customer_accounts": {} }),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, ..) = error_of(
        dv.patch(
            &format!("accounts({account_id})"),
            json!({ "contact_customer_accounts": [{ "lastname": "Late" }] }),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn upsert_by_id_creates_with_201_then_updates_with_200() {
    let dv = Dv::start().await;
    let id = guid();
    let path = format!("opportunities({id})");
    let prefer = [("Prefer", "return=representation")];
    let response = dv.patch(&path, json!({ "name": "First" }), &prefer).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["opportunityid"], id.as_str());
    let response = dv.patch(&path, json!({ "name": "Second" }), &prefer).await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "Second");
    assert_ne!(updated["@odata.etag"], created["@odata.etag"]);

    let response = dv
        .patch(&path, json!({ "description": "plain" }), &[])
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&response, "OData-EntityId").unwrap(),
        format!(
            "{}/api/data/v9.2/opportunities({id})",
            dv.ts.sandbox.base_url
        )
    );
    let row = dv.get_json(&path).await;
    assert_eq!(
        (row["name"].clone(), row["description"].clone()),
        (json!("Second"), json!("plain"))
    );
}

#[tokio::test]
async fn upsert_by_alternate_key_creates_then_updates_the_same_row() {
    let dv = Dv::start().await;
    let path = format!("opportunities({OPPORTUNITY_KEY}='O''Brien-7')");
    let response = dv.patch(&path, json!({ "name": "Referral 7" }), &[]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let entity_id = header(&response, "OData-EntityId").unwrap();
    let row = dv.get_json(&path).await;
    assert_eq!(
        row[OPPORTUNITY_KEY], "O'Brien-7",
        "the key value comes from the URL"
    );
    let id = row["opportunityid"].as_str().unwrap().to_owned();
    assert!(entity_id.ends_with(&format!("opportunities({id})")));

    let response = dv
        .patch(
            &path,
            json!({ "name": "Referral 7 (updated)" }),
            &[("Prefer", "return=representation")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["opportunityid"], id.as_str());
    let all = dv.get_json("opportunities?$select=name").await;
    assert_eq!(all["value"].as_array().unwrap().len(), 1);

    // Other tables' keys, multi-key syntax and an undefined key.
    let response = dv
        .patch("accounts(accountnumber='A-1')", json!({ "name": "A" }), &[])
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = dv
        .patch(
            "contacts(emailaddress1='ann@contoso.com')",
            json!({ "firstname": "Ann", "lastname": "Lee" }),
            &[],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let contact = dv
        .get_json("contacts(emailaddress1='ann@contoso.com')")
        .await;
    assert_eq!(contact["fullname"], "Ann Lee");
    let response = dv.get("accounts(name='A')").await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("not defined") && message.contains("accountnumber"),
        "{message}"
    );
    let response = dv.get("accounts(accountnumber='A-1',name='A')").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Alternate-key values stay unique.
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "dup", OPPORTUNITY_KEY: "O'Brien-7" }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn if_match_star_on_a_missing_row_is_404_with_the_documented_message() {
    let dv = Dv::start().await;
    let sample: Value = serde_json::from_str(SAMPLE_404).unwrap();
    let id = guid();
    let response = dv
        .patch(
            &format!("accounts({id})"),
            json!({ "name": "x" }),
            &[("If-Match", "*")],
        )
        .await;
    let (status, code, message) = error_of(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code, sample["error"]["code"].as_str().unwrap());
    let expected = sample["error"]["message"]
        .as_str()
        .unwrap()
        .replace("00000000-0000-0000-0000-000000000001", &id);
    assert_eq!(message, expected);
    let response = dv
        .patch(
            &format!("opportunities({OPPORTUNITY_KEY}='missing')"),
            json!({ "name": "x" }),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        dv.get_json("accounts").await["value"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn if_none_match_star_on_an_existing_row_is_412() {
    let dv = Dv::start().await;
    let id = guid();
    let path = format!("accounts({id})");
    let create_only = [("If-None-Match", "*")];
    let response = dv.patch(&path, json!({ "name": "x" }), &create_only).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = dv.patch(&path, json!({ "name": "y" }), &create_only).await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(message, "A record with matching key values already exists.");
    assert_eq!(dv.get_json(&path).await["name"], "x");
}

#[tokio::test]
async fn a_stale_etag_is_412_with_the_documented_concurrency_message() {
    let dv = Dv::start().await;
    let sample: Value = serde_json::from_str(SAMPLE_412).unwrap();
    let row = dv.create("opportunities", json!({ "name": "v1" })).await;
    let id = row["opportunityid"].as_str().unwrap();
    let path = format!("opportunities({id})");
    let first = row["@odata.etag"].as_str().unwrap().to_owned();
    let response = dv
        .patch(&path, json!({ "name": "v2" }), &[("If-Match", &first)])
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = dv
        .patch(&path, json!({ "name": "v3" }), &[("If-Match", &first)])
        .await;
    let (status, code, message) = error_of(response).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(code, sample["error"]["code"].as_str().unwrap());
    assert_eq!(message, sample["error"]["message"].as_str().unwrap());
    assert_eq!(dv.get_json(&path).await["name"], "v2");
}

#[tokio::test]
async fn conditional_get_answers_304_while_the_row_is_unchanged() {
    let dv = Dv::start().await;
    let row = dv.create("accounts", json!({ "name": "Litware" })).await;
    let path = format!("accounts({})", row["accountid"].as_str().unwrap());
    let etag = row["@odata.etag"].as_str().unwrap().to_owned();
    let conditional = |etag: String| {
        dv.request(reqwest::Method::GET, &path)
            .header("If-None-Match", etag)
            .send()
    };
    assert_eq!(
        conditional(etag.clone()).await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        conditional("null".into()).await.unwrap().status(),
        StatusCode::OK
    );
    dv.patch(&path, json!({ "telephone1": "555" }), &[]).await;
    assert_eq!(conditional(etag).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_entity_set_is_404_with_the_segment_error() {
    let dv = Dv::start().await;
    let (status, code, message) = error_of(dv.get("xyz").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code, "0x8006088a");
    assert_eq!(message, "Resource not found for the segment 'xyz'.");
    let (status, ..) = error_of(dv.post("Accounts", json!({}), false).await).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "entity set names are case-sensitive"
    );
}

#[tokio::test]
async fn malformed_json_is_400_with_a_dataverse_error_body() {
    let dv = Dv::start().await;
    let response = dv
        .request(reqwest::Method::POST, "opportunities")
        .header("Content-Type", "application/json")
        .body("{\"name\": \"unterminated")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code, "0x80048d19");
    assert!(message.contains("Invalid JSON"), "{message}");
}

#[tokio::test]
async fn an_unknown_column_is_400_naming_it_and_metadata_follows_the_schema() {
    let dv = Dv::start().await;
    let response = dv
        .post("opportunities", json!({ "name": "x", "foo_bar": 1 }), false)
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains(
            "Invalid property 'foo_bar' was found in entity 'Microsoft.Dynamics.CRM.opportunity'."
        ),
        "{message}"
    );

    let attributes = "EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName";
    let names = |body: Value| -> Vec<String> {
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["LogicalName"].as_str().unwrap().to_owned())
            .collect()
    };
    let column = "msft_microsoftpartnercenterreferrallink";
    assert!(names(dv.get_json(attributes).await).contains(&column.to_owned()));

    // The org lacks the custom column: writes naming it fail, metadata no longer lists it.
    let path = format!("/_sandbox/dataverse/schema/opportunity/{column}");
    let response = dv.control(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!names(dv.get_json(attributes).await).contains(&column.to_owned()));
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", column: "https://x" }),
            false,
        )
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains(&format!("Invalid property '{column}'")),
        "{message}"
    );
    let response = dv.get(&format!("opportunities?$select={column}")).await;
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "0x0"));
    assert_eq!(
        message,
        format!(
            "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.opportunity'."
        )
    );

    let response = dv.control(reqwest::Method::PUT, &path, None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", column: "https://x" }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Removing the alternate-key column removes the key too.
    let key_path = format!("/_sandbox/dataverse/schema/opportunities/{OPPORTUNITY_KEY}");
    dv.control(reqwest::Method::DELETE, &key_path, None).await;
    let keys = dv
        .get_json("EntityDefinitions(LogicalName='opportunity')/Keys")
        .await;
    assert!(keys["value"].as_array().unwrap().is_empty());
    dv.control(reqwest::Method::PUT, &key_path, None).await;
    let keys = dv
        .get_json("EntityDefinitions(LogicalName='opportunity')/Keys")
        .await;
    assert_eq!(keys["value"][0]["KeyAttributes"], json!([OPPORTUNITY_KEY]));
}

#[tokio::test]
async fn choice_column_metadata_lists_its_options() {
    let dv = Dv::start().await;
    let body = dv
        .get_json(
            "EntityDefinitions(LogicalName='opportunity')/Attributes?$filter=LogicalName eq 'statuscode'",
        )
        .await;
    let options = body["value"][0]["OptionSet"]["Options"].as_array().unwrap();
    let values: Vec<i64> = options
        .iter()
        .map(|o| o["Value"].as_i64().unwrap())
        .collect();
    assert_eq!(values, vec![1, 2, 3, 4, 5]);
    assert!(options[1]["Label"]["UserLocalizedLabel"]["Label"].is_string());
    let text = dv
        .get_json(
            "EntityDefinitions(LogicalName='opportunity')/Attributes?$filter=LogicalName eq 'name'",
        )
        .await;
    assert!(text["value"][0].get("OptionSet").is_none());
}

#[tokio::test]
async fn a_missing_wrong_or_unknown_token_is_401() {
    let dv = Dv::start().await;
    let response = dv.ts.http.get(dv.api("accounts")).send().await.unwrap();
    assert!(
        header(&response, "WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer authorization_uri=")
    );
    let (status, ..) = error_of(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let response = dv
        .ts
        .http
        .get(dv.api("accounts"))
        .bearer_auth("sbx.nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let other: Value = dv
        .ts
        .http
        .post(dv.ts.url("/_sandbox/tokens"))
        .json(&json!({ "audience": "https://api.partner.microsoft.com", "subject": DATAVERSE_APP_USER_ID }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = dv
        .ts
        .http
        .get(dv.api("accounts"))
        .bearer_auth(other["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A trailing slash on the audience is the same environment.
    let slash: Value = dv
        .ts
        .http
        .post(dv.ts.url("/_sandbox/tokens"))
        .json(&json!({ "audience": format!("{}/", dv.ts.sandbox.base_url), "subject": DATAVERSE_APP_USER_ID }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = dv
        .ts
        .http
        .get(dv.api("accounts"))
        .bearer_auth(slash["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A token of someone who is not a user of the environment.
    let stranger = dv.token_for(&guid(), None).await;
    let response = dv
        .ts
        .http
        .get(dv.api("accounts"))
        .bearer_auth(stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let dv = Dv::start().await;
    assert_eq!(dv.get("accounts").await.status(), StatusCode::OK);
    let response = dv
        .control(
            reqwest::Method::POST,
            "/_sandbox/clock",
            Some(json!({ "advance_secs": 7200 })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _, message) = error_of(dv.get("accounts").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn an_injected_429_carries_retry_after_and_the_dataverse_error_body() {
    let dv = Dv::start().await;
    dv.ts
        .inject(json!({
            "service": "dataverse",
            "status": 429,
            "count": 1,
            "retry_after": 7,
            "error_code": "0x80072322",
            "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        }))
        .await;
    let response = dv.get("accounts").await;
    assert_eq!(header(&response, "Retry-After").as_deref(), Some("7"));
    let (status, code, message) = error_of(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code, "0x80072322");
    assert!(message.starts_with("Number of requests exceeded"));
    assert_eq!(dv.get("accounts").await.status(), StatusCode::OK);

    let requests = dv.ts.requests(Some("dataverse")).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(
        (
            requests[0]["status"].clone(),
            requests[0]["injected"].clone()
        ),
        (json!(429), json!(true))
    );
    assert_eq!(
        (
            requests[1]["status"].clone(),
            requests[1]["injected"].clone()
        ),
        (json!(200), json!(false))
    );
}

#[tokio::test]
async fn filter_select_orderby_top_and_paging_query_accounts() {
    let dv = Dv::start().await;
    for (name, postal, employees) in [
        ("Contoso", "98052", 50),
        ("Contoso", "10001", 70),
        ("O'Neil & Co", "98052", 60),
    ] {
        dv.create(
            "accounts",
            json!({ "name": name, "address1_postalcode": postal, "numberofemployees": employees }),
        )
        .await;
    }
    let found = dv
        .get_json("accounts?$filter=name eq 'contoso' and address1_postalcode eq '98052'&$select=name,address1_postalcode")
        .await;
    let value = found["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "{found}");
    assert_eq!(value[0]["address1_postalcode"], "98052");
    assert!(value[0].get("numberofemployees").is_none());
    assert!(
        value[0]["@odata.etag"]
            .as_str()
            .unwrap()
            .starts_with("W/\"")
    );
    assert!(
        found["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("#accounts(name,address1_postalcode)")
    );

    let quoted = dv
        .get_json("accounts?$filter=name eq 'O''Neil %26 Co'")
        .await;
    assert_eq!(quoted["value"].as_array().unwrap().len(), 1);

    let ordered = dv
        .get_json(
            "accounts?$orderby=numberofemployees desc&$top=2&$select=numberofemployees&$count=true",
        )
        .await;
    let employees: Vec<i64> = ordered["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["numberofemployees"].as_i64().unwrap())
        .collect();
    assert_eq!(employees, vec![70, 60]);
    assert_eq!(ordered["@odata.count"], 3, "$count ignores $top");

    let mut page: Value = dv
        .request(reqwest::Method::GET, "accounts?$orderby=numberofemployees")
        .header("Prefer", "odata.maxpagesize=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    let next = page["@odata.nextLink"].as_str().unwrap().to_owned();
    page = dv
        .ts
        .http
        .get(next)
        .bearer_auth(&dv.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
    assert_eq!(page["value"][0]["numberofemployees"], 70);
    assert!(page.get("@odata.nextLink").is_none());

    // Lookups filter on their _x_value property with an unquoted GUID.
    let account = dv.create("accounts", json!({ "name": "Parent" })).await;
    let parent = account["accountid"].as_str().unwrap();
    dv.create(
        "opportunities",
        json!({ "name": "child", "parentaccountid@odata.bind": format!("/accounts({parent})") }),
    )
    .await;
    dv.create("opportunities", json!({ "name": "orphan" }))
        .await;
    let children = dv
        .get_json(&format!(
            "opportunities?$filter=_parentaccountid_value eq {parent}&$select=name"
        ))
        .await;
    assert_eq!(children["value"].as_array().unwrap().len(), 1);
    assert_eq!(children["value"][0]["name"], "child");

    for bad in [
        "accounts?$filter=Name eq 'x'",
        "accounts?$filter=name eq",
        "accounts?$skip=1",
    ] {
        assert_eq!(dv.get(bad).await.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn statuscode_must_belong_to_statecode_and_closed_opportunities_are_read_only() {
    let dv = Dv::start().await;
    let row = dv.create("opportunities", json!({ "name": "Deal" })).await;
    let id = row["opportunityid"].as_str().unwrap();
    let path = format!("opportunities({id})");
    let close = |status: i64| {
        json!({
            "Status": status,
            "OpportunityClose": {
                "subject": "closed",
                "opportunityid@odata.bind": format!("/opportunities({id})"),
            },
        })
    };
    let response = dv
        .patch(&path, json!({ "statecode": 1, "statuscode": 1 }), &[])
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("not a valid status code for state code OpportunityState.Won"),
        "{message}"
    );
    let response = dv.patch(&path, json!({ "statuscode": 2 }), &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "On Hold is an Open status"
    );
    let response = dv
        .patch(&path, json!({ "closeprobability": 101 }), &[])
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("outside the valid range"), "{message}");

    // An update does not close an opportunity: its actions do.
    let response = dv.patch(&path, json!({ "statecode": 1 }), &[]).await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("use the WinOpportunityRequest message instead"),
        "{message}"
    );
    let response = dv.post("WinOpportunity", close(5), false).await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "Out-Sold is no Won status");
    assert!(message.contains("not a valid status code"), "{message}");
    let response = dv.post("WinOpportunity", close(3), false).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let won = dv.get_json(&path).await;
    assert_eq!(
        (won["statecode"].clone(), won["statuscode"].clone()),
        (json!(1), json!(3))
    );

    let response = dv
        .patch(&path, json!({ "description": "late note" }), &[])
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("closed"), "{message}");

    let response = dv
        .patch(
            &path,
            json!({ "statecode": 0, "statuscode": 1, "description": "reopened" }),
            &[],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(dv.get_json(&path).await["description"], "reopened");

    let response = dv
        .patch(&path, json!({ "statecode": 2, "statuscode": 5 }), &[])
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("use the LoseOpportunityRequest message instead"),
        "{message}"
    );
    let response = dv.post("LoseOpportunity", close(5), false).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "Lost / Out-Sold");
    let lost = dv.get_json(&path).await;
    assert_eq!(
        (lost["statecode"].clone(), lost["statuscode"].clone()),
        (json!(2), json!(5))
    );
    let response = dv.post("LoseOpportunity", close(4), false).await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("already closed"), "{message}");
}

#[tokio::test]
async fn a_bind_to_a_missing_row_is_404_and_a_lookup_needs_a_bind() {
    let dv = Dv::start().await;
    let missing = guid();
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", "parentaccountid@odata.bind": format!("/accounts({missing})") }),
            false,
        )
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        message,
        format!("account With Id = {missing} Does Not Exist")
    );

    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", "parentaccountid": missing }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", "customerid@odata.bind": format!("/accounts({missing})") }),
            false,
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "customerid binds as customerid_account"
    );
    let response = dv
        .post(
            "opportunities",
            json!({ "name": "x", "customerid_contact@odata.bind": "/accounts(accountnumber='A-9')" }),
            false,
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "wrong target set"
    );
    assert!(
        dv.get_json("opportunities").await["value"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn reference_data_is_seeded_and_reseeded_after_reset() {
    let dv = Dv::start().await;
    let currencies = dv
        .get_json("transactioncurrencies?$select=isocurrencycode")
        .await;
    assert_eq!(currencies["value"].as_array().unwrap().len(), 8);
    let eur = dv
        .get_json("transactioncurrencies?$filter=isocurrencycode eq 'EUR'&$select=transactioncurrencyid,currencysymbol")
        .await;
    assert_eq!(
        eur["value"][0]["transactioncurrencyid"],
        currency_id("EUR").unwrap()
    );
    let me = dv.get_json("WhoAmI").await;
    assert_eq!(me["UserId"], DATAVERSE_APP_USER_ID);
    dv.create("accounts", json!({ "name": "gone after reset" }))
        .await;

    let response = dv
        .control(reqwest::Method::POST, "/_sandbox/reset", None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let token = dv.token_for(DATAVERSE_APP_USER_ID, None).await;
    let body: Value = dv
        .ts
        .http
        .get(
            dv.ts
                .url("/api/data/v9.0/transactioncurrencies?$filter=isocurrencycode eq 'JPY'"),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"][0]["currencyprecision"], 0);
    let users: Value = dv
        .ts
        .http
        .get(dv.ts.url("/api/data/v9.1/systemusers?$select=fullname"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["value"].as_array().unwrap().len(), 2);
    let accounts: Value = dv
        .ts
        .http
        .get(dv.ts.url("/_sandbox/dataverse/accounts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(accounts["value"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_registered_webhook_key_endpoint_receives_the_remote_execution_context() {
    let listener = Listener::start().await;
    let dv = Dv::start().await;
    let endpoint = dv
        .register_webhook(&listener.url, 4, "k3y/with space")
        .await;
    let read = dv.get_json(&format!("serviceendpoints({endpoint})")).await;
    assert!(
        read.get("authvalue").is_none(),
        "authvalue is never returned"
    );
    assert_eq!(read["contract"], 8);

    let account = dv.create("accounts", json!({ "name": "Contoso" })).await;
    let account_id = account["accountid"].as_str().unwrap().to_owned();
    let row = dv
        .create(
            "opportunities",
            json!({
                "name": "Contoso CRM",
                "estimatedvalue": 1234.5,
                "estimatedclosedate": "2026-06-30",
                "parentaccountid@odata.bind": format!("/accounts({account_id})"),
                "msft_microsoftpartnercenterreferralsync": true,
            }),
        )
        .await;
    let id = row["opportunityid"].as_str().unwrap();

    let received = listener.next().await;
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(received.uri.query().unwrap().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    assert_eq!(
        query,
        vec![("code".to_owned(), "k3y/with space".to_owned())]
    );
    assert_eq!(
        received.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        received.header("x-ms-dynamics-entity-name").as_deref(),
        Some("opportunity")
    );
    assert_eq!(
        received.header("x-ms-dynamics-request-name").as_deref(),
        Some("Create")
    );
    assert_eq!(
        received.header("x-ms-dynamics-organization").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(received.header("x-ms-dynamics-msg-size-exceeded"), None);
    let context = received.json();
    assert_eq!(
        received.header("x-ms-correlation-request-id").unwrap(),
        context["CorrelationId"].as_str().unwrap()
    );
    assert_eq!(context["MessageName"], "Create");
    assert_eq!(context["PrimaryEntityName"], "opportunity");
    assert_eq!(context["PrimaryEntityId"], id);
    assert_eq!(context["UserId"], DATAVERSE_APP_USER_ID);
    assert_eq!(context["InitiatingUserId"], DATAVERSE_APP_USER_ID);
    assert_eq!(
        (
            context["Depth"].clone(),
            context["Mode"].clone(),
            context["Stage"].clone()
        ),
        (json!(1), json!(1), json!(40))
    );
    assert_eq!(context["RequestId"], Value::Null);
    assert_eq!(context["ParentContext"], Value::Null);
    assert_eq!(context["PreEntityImages"], json!([]));
    assert_eq!(
        context["OutputParameters"],
        json!([{ "key": "id", "value": id }])
    );
    assert_eq!(
        context["OwningExtension"]["LogicalName"],
        "sdkmessageprocessingstep"
    );
    assert!(
        context["OperationCreatedOn"]
            .as_str()
            .unwrap()
            .starts_with("/Date(")
    );

    // Same members as the documented sample, at the top and in Target / references.
    let sample: Value = serde_json::from_str(SAMPLE_CONTEXT).unwrap();
    assert_eq!(keys_of(&context), keys_of(&sample));
    assert_eq!(keys_of(target(&context)), keys_of(target(&sample)));
    assert_eq!(
        keys_of(&context["OwningExtension"]),
        keys_of(&sample["OwningExtension"])
    );
    assert_eq!(
        keys_of(post_image(&context)),
        keys_of(&sample["PostEntityImages"][0]["value"])
    );
    let sample_reference = attr(target(&sample), "modifiedby").unwrap();

    let target = target(&context);
    assert_eq!(
        target["__type"],
        "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
    );
    assert_eq!(target["LogicalName"], "opportunity");
    assert_eq!(
        attr(target, "estimatedvalue").unwrap(),
        &json!({ "__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1234.5 })
    );
    let parent = attr(target, "parentaccountid").unwrap();
    assert_eq!(keys_of(parent), keys_of(sample_reference));
    assert_eq!(
        parent["__type"],
        "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"
    );
    assert_eq!(
        (
            parent["Id"].as_str().unwrap(),
            parent["LogicalName"].as_str().unwrap()
        ),
        (account_id.as_str(), "account")
    );
    let modifiedby = attr(target, "modifiedby").unwrap();
    assert_eq!(
        (modifiedby["Id"].clone(), modifiedby["LogicalName"].clone()),
        (json!(DATAVERSE_APP_USER_ID), json!("systemuser"))
    );
    let expected_date = chrono::NaiveDate::from_ymd_opt(2026, 6, 30)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    assert_eq!(
        attr(target, "estimatedclosedate").unwrap(),
        &json!(format!("/Date({expected_date})/"))
    );
    assert_eq!(
        attr(target, "statecode").unwrap(),
        &json!({ "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 0 })
    );
    assert_eq!(
        attr(target, "msft_microsoftpartnercenterreferralsync").unwrap(),
        &json!(true)
    );
    assert_eq!(attr(target, "opportunityid").unwrap(), &json!(id));
    let createdon = attr(target, "createdon").unwrap().as_str().unwrap();
    assert!(
        createdon.starts_with("/Date(") && createdon.ends_with(")/"),
        "{createdon}"
    );

    let image = post_image(&context);
    assert!(
        image.get("__type").is_none(),
        "images carry no __type, as in the sample"
    );
    let names = attr_names(image);
    for column in [
        "opportunityid",
        "name",
        "estimatedvalue",
        "estimatedclosedate",
        "parentaccountid",
        "statecode",
        "statuscode",
        "ownerid",
        "transactioncurrencyid",
        "createdon",
        "modifiedon",
        "modifiedby",
        "createdby",
        "versionnumber",
        "msft_microsoftpartnercenterreferralsync",
    ] {
        assert!(
            names.contains(&column.to_owned()),
            "{column} missing from {names:?}"
        );
    }
    assert!(
        !names.contains(&"description".to_owned()),
        "null columns are left out"
    );
    assert_eq!(
        attr(image, "transactioncurrencyid").unwrap()["Id"],
        currency_id("USD").unwrap()
    );

    // Accounts fire no webhook (only opportunity steps are registered by default).
    assert_eq!(dv.finished_deliveries(1).await.len(), 1);
    assert!(listener.is_quiet(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn a_seller_seed_and_an_app_user_write_carry_different_user_ids() {
    let listener = Listener::start().await;
    let dv = Dv::with_listener(&listener).await;
    let id = guid();
    let response = dv
        .seed(
            "opportunities",
            &id,
            json!({
                "name": "Seeded by a seller",
                "estimatedvalue": 10,
                OPPORTUNITY_KEY: "REF-SEED",
                "description": "from the UI",
            }),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let seeded: Value = response.json().await.unwrap();
    assert_eq!(seeded["_modifiedby_value"], DATAVERSE_SELLER_USER_ID);
    let created = listener.next().await.json();
    assert_eq!(created["MessageName"], "Create");
    assert_eq!(created["UserId"], DATAVERSE_SELLER_USER_ID);
    assert_eq!(created["InitiatingUserId"], DATAVERSE_SELLER_USER_ID);

    let response = dv
        .patch(
            &format!("opportunities({OPPORTUNITY_KEY}='REF-SEED')"),
            json!({ "msft_microsoftpartnercenterreferralsyncaudit": "synced" }),
            &[],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let updated = listener.next().await.json();
    assert_eq!(updated["MessageName"], "Update");
    assert_eq!(updated["UserId"], DATAVERSE_APP_USER_ID);
    assert_ne!(updated["CorrelationId"], created["CorrelationId"]);
    assert_eq!(updated["OutputParameters"], json!([]));
    assert_eq!(
        attr_names(target(&updated)),
        vec![
            "opportunityid",
            "msft_microsoftpartnercenterreferralsyncaudit",
            "modifiedon",
            "modifiedby",
            "modifiedonbehalfby"
        ]
    );
    assert_eq!(
        attr(target(&updated), "modifiedonbehalfby"),
        Some(&Value::Null)
    );
    let image = post_image(&updated);
    assert_eq!(attr(image, "name").unwrap(), "Seeded by a seller");
    assert_eq!(
        attr(image, "msft_microsoftpartnercenterreferralsyncaudit").unwrap(),
        "synced"
    );

    // A seed replacing the row as another user: Update with only the changed columns.
    let response = dv
        .seed(
            "opportunities",
            &id,
            json!({ "name": "Renamed in the UI", "estimatedvalue": 10, OPPORTUNITY_KEY: "REF-SEED" }),
            Some(DATAVERSE_APP_USER_ID),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let replaced = listener.next().await.json();
    assert_eq!(replaced["MessageName"], "Update");
    assert_eq!(replaced["UserId"], DATAVERSE_APP_USER_ID);
    let changed = attr_names(target(&replaced));
    assert!(
        changed.contains(&"name".to_owned()) && changed.contains(&"description".to_owned()),
        "{changed:?}"
    );
    assert!(
        !changed.contains(&"estimatedvalue".to_owned()),
        "{changed:?}"
    );
    let raw: Value = dv
        .ts
        .http
        .get(
            dv.ts
                .url(&format!("/_sandbox/dataverse/opportunities/{id}")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["name"], "Renamed in the UI");
    assert_eq!(raw["description"], Value::Null);
    assert_eq!(raw["_createdby_value"], DATAVERSE_SELLER_USER_ID);
}

/// A close is the `Win` / `Lose` message, not an `Update`: the `opportunityclose` activity and
/// the status reason as input parameters, no target, no image.
#[tokio::test]
async fn a_close_raises_the_win_or_lose_message_with_its_opportunity_close() {
    let listener = Listener::start().await;
    let dv = Dv::with_listener(&listener).await;
    let won = dv.create("opportunities", json!({ "name": "won" })).await;
    let won = won["opportunityid"].as_str().unwrap().to_owned();
    assert_eq!(listener.next().await.json()["MessageName"], "Create");
    let response = dv
        .post(
            "WinOpportunity",
            json!({
                "Status": 3,
                "OpportunityClose": {
                    "subject": "won",
                    "opportunityid@odata.bind": format!("/opportunities({won})"),
                },
            }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let win = listener.next().await.json();
    assert_eq!(win["MessageName"], "Win");
    assert_eq!(win["PrimaryEntityName"], "opportunity");
    assert_eq!(win["UserId"], DATAVERSE_APP_USER_ID);
    let close = kv(&win["InputParameters"], "OpportunityClose").unwrap();
    assert_eq!(close["LogicalName"], "opportunityclose");
    assert_eq!(attr(close, "opportunityid").unwrap()["Id"], json!(won));
    assert_eq!(
        kv(&win["InputParameters"], "Status").unwrap()["Value"],
        json!(3)
    );
    assert!(kv(&win["InputParameters"], "Target").is_none());
    assert_eq!(win["PostEntityImages"], json!([]));

    // The seller's close in the app (the control route), with the default lost status.
    let lost = dv.create("opportunities", json!({ "name": "lost" })).await;
    let lost = lost["opportunityid"].as_str().unwrap().to_owned();
    assert_eq!(listener.next().await.json()["MessageName"], "Create");
    let response = dv
        .ts
        .http
        .post(
            dv.ts
                .url(&format!("/_sandbox/dataverse/opportunities/{lost}/lose")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let lose = listener.next().await.json();
    assert_eq!(lose["MessageName"], "Lose");
    assert_eq!(lose["UserId"], DATAVERSE_SELLER_USER_ID);
    let close = kv(&lose["InputParameters"], "OpportunityClose").unwrap();
    assert_eq!(attr(close, "opportunityid").unwrap()["Id"], json!(lost));
    let row = dv.get_json(&format!("opportunities({lost})")).await;
    assert_eq!(row["statecode"], json!(2));
    assert_eq!(
        kv(&lose["InputParameters"], "Status").unwrap()["Value"],
        row["statuscode"]
    );
}

#[tokio::test]
async fn a_503_from_the_listener_is_retried_exactly_once_with_the_same_body() {
    let listener = Listener::scripted(Vec::new(), 503, "").await;
    let dv = Dv::with_listener(&listener).await;
    dv.create("opportunities", json!({ "name": "retry me" }))
        .await;
    let first: Received = listener.next().await;
    let second: Received = listener.next().await;
    assert_eq!(
        first.body, second.body,
        "OperationId and CorrelationId stay the same"
    );
    let deliveries = dv.finished_deliveries(1).await;
    assert_eq!(deliveries.len(), 1);
    let attempts = deliveries[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["status"] == 503));
    assert_eq!(deliveries[0]["delivered"], false);
    assert!(listener.is_quiet(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn a_500_from_the_listener_is_not_retried() {
    let listener = Listener::scripted(Vec::new(), 500, "").await;
    let dv = Dv::with_listener(&listener).await;
    dv.create("opportunities", json!({ "name": "no retry" }))
        .await;
    listener.next().await;
    let deliveries = dv.finished_deliveries(1).await;
    assert_eq!(deliveries[0]["attempts"].as_array().unwrap().len(), 1);
    assert!(listener.is_quiet(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn size_exceeded_sets_the_header_and_drops_images_and_input_parameters() {
    let listener = Listener::start().await;
    let dv = Dv::with_listener(&listener).await;
    let response = dv
        .control(
            reqwest::Method::POST,
            "/_sandbox/dataverse/webhook-options",
            Some(json!({ "size_exceeded": true })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let row = dv
        .create("opportunities", json!({ "name": "forced" }))
        .await;
    let received = listener.next().await;
    assert_eq!(
        received
            .header("x-ms-dynamics-msg-size-exceeded")
            .as_deref(),
        Some("true")
    );
    let context = received.json();
    for member in [
        "ParentContext",
        "InputParameters",
        "PreEntityImages",
        "PostEntityImages",
    ] {
        assert!(context.get(member).is_none(), "{member} should be dropped");
    }
    assert_eq!(context["PrimaryEntityName"], "opportunity");
    assert_eq!(context["PrimaryEntityId"], row["opportunityid"]);

    // A real 300 KB body (a long audit trail) trips the limit by itself.
    dv.control(
        reqwest::Method::POST,
        "/_sandbox/dataverse/webhook-options",
        Some(json!({ "size_exceeded": false })),
    )
    .await;
    dv.create("opportunities", json!({ "name": "small" })).await;
    let small = listener.next().await;
    assert_eq!(small.header("x-ms-dynamics-msg-size-exceeded"), None);
    assert!(small.json().get("PostEntityImages").is_some());
    let audit = "x".repeat(300 * 1024);
    dv.post(
        "opportunities",
        json!({ "name": "big", "msft_microsoftpartnercenterreferralsyncaudit": audit }),
        false,
    )
    .await;
    let big = listener.next().await;
    assert_eq!(
        big.header("x-ms-dynamics-msg-size-exceeded").as_deref(),
        Some("true")
    );
    assert!(big.body.len() < 256 * 1024);
    assert!(big.json().get("InputParameters").is_none());
}

#[tokio::test]
async fn header_and_query_string_auth_reach_their_targets() {
    let header_listener = Listener::start().await;
    let query_listener = Listener::start().await;
    let dv = Dv::start().await;
    let response = dv
        .control(
            reqwest::Method::PUT,
            "/_sandbox/dataverse/webhook",
            Some(json!({
                "url": header_listener.url,
                "authtype": "HttpHeader",
                "authvalue": "<settings><setting name=\"x-api-key\" value=\"h3ader\"/><setting name=\"x-other\" value=\"2\"/></settings>",
            })),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    dv.register_webhook(
        &query_listener.url,
        6,
        "<settings><setting name=\"key1\" value=\"v 1\"/><setting name=\"key2\" value=\"v2\"/></settings>",
    )
    .await;
    let response = dv
        .post(
            "serviceendpoints",
            json!({ "name": "bad", "contract": 8, "authtype": 5, "authvalue": "not xml", "url": query_listener.url }),
            false,
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    dv.create("opportunities", json!({ "name": "auth" })).await;
    let by_header = header_listener.next().await;
    assert_eq!(by_header.header("x-api-key").as_deref(), Some("h3ader"));
    assert_eq!(by_header.header("x-other").as_deref(), Some("2"));
    assert_eq!(by_header.uri.query(), None);
    let by_query = query_listener.next().await;
    assert_eq!(by_query.uri.query(), Some("key1=v+1&key2=v2"));
    assert_eq!(by_query.header("x-api-key"), None);
    let (a, b) = (by_header.json(), by_query.json());
    assert_eq!(
        a["CorrelationId"], b["CorrelationId"],
        "one write, one correlation id"
    );
    assert_ne!(a["OperationId"], b["OperationId"], "one operation per step");

    // Without a default target only the registered endpoint is called.
    dv.control(reqwest::Method::DELETE, "/_sandbox/dataverse/webhook", None)
        .await;
    dv.create("opportunities", json!({ "name": "after clear" }))
        .await;
    query_listener.next().await;
    assert_eq!(dv.finished_deliveries(3).await.len(), 3);
    assert!(header_listener.is_quiet(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn webhook_options_select_tables_filtering_attributes_and_pre_images() {
    let listener = Listener::start().await;
    let dv = Dv::with_listener(&listener).await;
    let options: Value = dv
        .control(
            reqwest::Method::POST,
            "/_sandbox/dataverse/webhook-options",
            Some(json!({ "entities": ["opportunity", "account"], "filtering_attributes": ["name"], "pre_image": true })),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(options["entities"], json!(["opportunity", "account"]));
    let account = dv.create("accounts", json!({ "name": "A" })).await;
    let created = listener.next().await;
    assert_eq!(
        created.header("x-ms-dynamics-entity-name").as_deref(),
        Some("account")
    );
    let path = format!("accounts({})", account["accountid"].as_str().unwrap());
    dv.patch(&path, json!({ "telephone1": "1" }), &[]).await; // not a filtering attribute
    dv.patch(&path, json!({ "name": "B" }), &[]).await;
    let updated = listener.next().await.json();
    assert_eq!(updated["MessageName"], "Update");
    assert_eq!(attr(target(&updated), "name").unwrap(), "B");
    let pre = kv(&updated["PreEntityImages"], "PreImage").unwrap();
    assert_eq!(attr(pre, "name").unwrap(), "A");
    assert_eq!(attr(pre, "telephone1").unwrap(), "1");
    assert_eq!(dv.finished_deliveries(2).await.len(), 2);
    assert!(listener.is_quiet(Duration::from_millis(100)).await);
}

#[tokio::test]
async fn control_seeds_validate_columns_and_raw_reads_need_no_token() {
    let dv = Dv::start().await;
    let id = guid();
    let response = dv
        .seed(
            "opportunities",
            &id,
            json!({ "name": "x", "nope": 1 }),
            None,
        )
        .await;
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("Invalid property 'nope'"), "{message}");
    let response = dv
        .seed(
            "opportunities",
            &id,
            json!({
                "@odata.etag": "W/\"1\"",
                "name": "Won deal",
                "statecode": 1,
                "statuscode": 3,
                "_parentaccountid_value": guid(),
                "modifiedon": "2025-01-02T03:04:05Z",
            }),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let raw: Value = dv
        .ts
        .http
        .get(
            dv.ts
                .url(&format!("/_sandbox/dataverse/opportunities/{id}")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["modifiedon"], "2025-01-02T03:04:05Z");
    assert_eq!(raw["statuscode"], 3);
    let mut via_api = dv.get_json(&format!("opportunities({id})")).await;
    via_api.as_object_mut().unwrap().remove("@odata.context");
    assert_eq!(via_api, raw);
    let response = dv
        .seed(
            "opportunities",
            &guid(),
            json!({ "statecode": 1, "statuscode": 4 }),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let missing = dv
        .ts
        .http
        .get(
            dv.ts
                .url(&format!("/_sandbox/dataverse/accounts/{}", guid())),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expand_reads_the_related_rows_in_one_request_with_their_own_select() {
    let dv = Dv::start().await;
    let account = dv
        .create(
            "accounts",
            json!({ "name": "Contoso", "address1_postalcode": "98052", "telephone1": "555" }),
        )
        .await;
    let account_id = account["accountid"].as_str().unwrap();
    let contact = dv
        .create(
            "contacts",
            json!({ "firstname": "Sue", "lastname": "Smith", "emailaddress1": "sue@contoso.com" }),
        )
        .await;
    let contact_id = contact["contactid"].as_str().unwrap();
    let eur = cosell_sandbox_currency("EUR");
    let with_parents = dv
        .create(
            "opportunities",
            json!({
                "name": "with parents",
                "parentaccountid@odata.bind": format!("/accounts({account_id})"),
                "parentcontactid@odata.bind": format!("/contacts({contact_id})"),
                "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({eur})"),
            }),
        )
        .await;
    let id = with_parents["opportunityid"].as_str().unwrap();
    let orphan = dv
        .create("opportunities", json!({ "name": "orphan" }))
        .await;
    let orphan_id = orphan["opportunityid"].as_str().unwrap();
    dv.control(reqwest::Method::DELETE, "/_sandbox/requests", None)
        .await;

    let expand = "$expand=parentaccountid($select=name,address1_postalcode),\
                  parentcontactid($select=emailaddress1,firstname),\
                  transactioncurrencyid($select=isocurrencycode)";
    let row = dv
        .get_json(&format!("opportunities({id})?$select=name&{expand}"))
        .await;
    assert_eq!(row["name"], "with parents");
    assert!(
        row.get("_parentaccountid_value").is_none(),
        "$select still limits the row's own columns: {row}"
    );
    let parent = &row["parentaccountid"];
    assert_eq!(parent["name"], "Contoso");
    assert_eq!(parent["address1_postalcode"], "98052");
    assert_eq!(
        parent["accountid"], account_id,
        "the primary key always comes"
    );
    assert!(parent["@odata.etag"].as_str().unwrap().starts_with("W/\""));
    assert!(parent.get("telephone1").is_none(), "$select inside $expand");
    assert_eq!(row["parentcontactid"]["emailaddress1"], "sue@contoso.com");
    assert_eq!(row["parentcontactid"]["firstname"], "Sue");
    assert!(row["parentcontactid"].get("lastname").is_none());
    assert_eq!(row["transactioncurrencyid"]["isocurrencycode"], "EUR");
    assert_eq!(row["transactioncurrencyid"]["transactioncurrencyid"], eur);
    assert!(
        row["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("#opportunities(name,parentaccountid(name,address1_postalcode),parentcontactid(emailaddress1,firstname),transactioncurrencyid(isocurrencycode))/$entity"),
        "{}",
        row["@odata.context"]
    );

    // An unset lookup expands to null.
    let bare = dv
        .get_json(&format!("opportunities({orphan_id})?$select=name&{expand}"))
        .await;
    assert_eq!(bare["parentaccountid"], Value::Null);
    assert_eq!(bare["parentcontactid"], Value::Null);
    assert_eq!(
        bare["transactioncurrencyid"]["isocurrencycode"], "USD",
        "the default currency"
    );

    // A collection read expands every row.
    let listed = dv
        .get_json(&format!(
            "opportunities?$select=name&$filter=name eq 'with parents'&{expand}"
        ))
        .await;
    assert_eq!(listed["value"][0]["parentaccountid"]["name"], "Contoso");

    // A Customer lookup has one navigation property per table.
    let customer = dv
        .create(
            "opportunities",
            json!({
                "name": "customer",
                "customerid_account@odata.bind": format!("/accounts({account_id})"),
            }),
        )
        .await;
    let customer_id = customer["opportunityid"].as_str().unwrap();
    let both = dv
        .get_json(&format!(
            "opportunities({customer_id})?$select=name&$expand=customerid_account($select=name),customerid_contact($select=fullname)"
        ))
        .await;
    assert_eq!(both["customerid_account"]["name"], "Contoso");
    assert_eq!(both["customerid_contact"], Value::Null);

    let requests = dv.ts.requests(Some("dataverse")).await;
    assert_eq!(
        requests.len(),
        5,
        "one logged request per read: {requests:#?}"
    );
}

#[tokio::test]
async fn expand_errors_follow_the_service() {
    let dv = Dv::start().await;
    let row = dv.create("opportunities", json!({ "name": "x" })).await;
    let id = row["opportunityid"].as_str().unwrap();
    let error = |query: String| {
        let dv = &dv;
        async move { error_of(dv.get(&format!("opportunities({id})?{query}")).await).await }
    };
    let (status, code, message) = error("$expand=parentaccount($select=name)".into()).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "0x0"));
    assert_eq!(
        message,
        "Could not find a property named 'parentaccount' on type 'Microsoft.Dynamics.CRM.opportunity'."
    );
    let (status, _, message) = error("$expand=parentaccountid($select=nme)".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message,
        "Could not find a property named 'nme' on type 'Microsoft.Dynamics.CRM.account'."
    );
    let (status, _, message) = error("$expand=name".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.ends_with("Only navigation properties can be expanded."),
        "{message}"
    );
    let (status, _, message) = error("$expand=parentaccountid($select=name".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("Syntax error in $expand"), "{message}");
    let (status, ..) = error("$expand=parentaccountid($top=1)".into()).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    let (status, ..) = error("$expand=parentaccountid($count=true)".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let audit = "createdby,modifiedby,createdonbehalfby,modifiedonbehalfby,transactioncurrencyid";
    let sixteen = format!(
        "parentaccountid($expand={audit},primarycontactid),parentcontactid($expand={audit}),\
         createdby,modifiedby,createdonbehalfby"
    );
    let (status, _, message) = error(format!("$expand={sixteen}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("maximum limit"), "{message}");
    let response = dv
        .request(reqwest::Method::POST, "accounts?$expand=primarycontactid")
        .header("Prefer", "return=representation")
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
}

fn cosell_sandbox_currency(iso: &str) -> &'static str {
    cosell_sandbox::dataverse::currency_id(iso).unwrap()
}
