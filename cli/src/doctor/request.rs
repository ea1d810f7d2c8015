//! The raw requests the Partner Center and CRM checks send, and the reading of their answers.

use cosell_adapters::http::dataverse::DEFAULT_DATAVERSE_API_VERSION;
use cosell_adapters::http::salesforce::DEFAULT_SALESFORCE_API_VERSION;
use cosell_adapters::http::{AccessToken, AuthorizedClient, HttpAdapterError, RequestContext};
use cosell_domain::ports::Service;
use reqwest::Method;
use serde_json::Value;

use crate::context::Deployment;

/// Sends `method url` (absolute, or relative to the Salesforce token's instance URL when it
/// starts with `/services/`) with `body`; the answer's JSON (`null` when empty).
pub(super) async fn call(
    client: &AuthorizedClient,
    ctx: &RequestContext,
    method: Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&'static str, &'static str)],
) -> Result<Value, HttpAdapterError> {
    let response = client
        .send(ctx, |http, token: &AccessToken| {
            let url = match token.instance_url() {
                Some(instance) if url.starts_with("/services/") => {
                    format!("{}{url}", instance.as_str().trim_end_matches('/'))
                }
                _ => url.to_owned(),
            };
            let mut request = http
                .request(method.clone(), url)
                .header(reqwest::header::ACCEPT, "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await?;
    let bytes = response.bytes().await.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| HttpAdapterError::decode(ctx, format!("not JSON: {error}")))
}

/// `GET url` (see [`call`]).
pub(super) async fn get(
    client: &AuthorizedClient,
    ctx: &RequestContext,
    url: &str,
) -> Result<Value, HttpAdapterError> {
    call(client, ctx, Method::GET, url, None, &[]).await
}

/// The Dataverse Web API root (no trailing slash).
pub(super) fn dataverse_root(url: &str) -> String {
    format!(
        "{}/api/data/{DEFAULT_DATAVERSE_API_VERSION}",
        url.trim().trim_end_matches('/')
    )
}

/// The Salesforce REST root, relative to the instance URL.
pub(super) fn salesforce_root() -> String {
    format!("/services/data/{DEFAULT_SALESFORCE_API_VERSION}")
}

/// A client with the CRM's token.
pub(super) fn crm_client(deployment: &Deployment) -> AuthorizedClient {
    AuthorizedClient::new(deployment.http.clone(), deployment.credentials.crm.clone())
}

/// The `describe` of a Salesforce object.
pub(super) async fn salesforce_describe(
    client: &AuthorizedClient,
    ctx: &RequestContext,
    object: &str,
) -> Result<Value, HttpAdapterError> {
    get(
        client,
        ctx,
        &format!("{}/sobjects/{object}/describe", salesforce_root()),
    )
    .await
}

/// The `describe` of a Salesforce object, with the CRM's client.
pub(super) async fn describe_object(
    deployment: &Deployment,
    object: &str,
) -> Result<Value, HttpAdapterError> {
    let ctx = RequestContext::new(Service::Salesforce, format!("describe {object}"))
        .with_resource(format!("the object {object}"));
    salesforce_describe(&crm_client(deployment), &ctx, object).await
}

/// The `key` of each item of a JSON array (none when `items` is not one).
pub(super) fn names(items: &Value, key: &str) -> Vec<String> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The values of a Salesforce picklist field in a describe result.
pub(super) fn picklist(describe: &Value, field: &str) -> Option<Vec<String>> {
    describe["fields"]
        .as_array()?
        .iter()
        .find(|f| f["name"].as_str() == Some(field))
        .map(|f| names(&f["picklistValues"], "value"))
}
