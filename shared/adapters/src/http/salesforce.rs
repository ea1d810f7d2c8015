//! [`SalesforceStore`]: the domain's [`CrmStore`] port over the Salesforce REST API
//! (`{instance_url}/services/data/v62.0/`, docs/salesforce.md#rest-api).
//!
//! Every request goes through an [`AuthorizedClient`] with a [`SalesforceJwtBearer`] token:
//! the base URL is the token's `instance_url` (so a refreshed session that names another
//! instance is followed), one refresh on 401, every other failure classified by
//! [`super::response`] (a 403 `REQUEST_LIMIT_EXCEEDED` is transient with a long wait). Field
//! names come from [`MappingConfig::salesforce`]; bodies are built and records read only by
//! the domain's mapping functions. The `Sforce-Limit-Info: api-usage=<used>/<max>` header of
//! every successful answer is kept ([`SalesforceStore::api_usage`]) and logged when the org's
//! daily allocation runs low.
//!
//! # Requests per operation
//!
//! | Operation | Requests |
//! |---|---|
//! | [`find_opportunity_by_referral`](CrmStore::find_opportunity_by_referral) | 1 `GET sobjects/Opportunity/<External ID field>/<referral id>` (404 → `None`; several matches (300) → permanent). The Account and Contact are **not** read (use `get_opportunity`) |
//! | [`get_opportunity`](CrmStore::get_opportunity) | exactly 1 SOQL `GET query?q=SELECT Id, …, Account.Name, Account.BillingPostalCode, …, Contact.Email, … FROM Opportunity WHERE Id = '<id>'` ([`opportunity_soql`](SalesforceStore::opportunity_soql); child-to-parent relationship fields, docs/salesforce.md#related-records-in-one-query): an unset `AccountId` / `ContactId` comes back as a `null` parent; no record is `NotFound`. `ContactId` exists from API v46.0 |
//! | [`upsert_opportunity`](CrmStore::upsert_opportunity) | exactly 1 `PATCH`: `sobjects/Opportunity/<External ID field>/<referral id>` (201 `created:true` / 200 `created:false`), or with a record id `sobjects/Opportunity/<id>` (204, never creates) |
//! | [`upsert_opportunity`](CrmStore::upsert_opportunity) with [`new_account`](OpportunityWrite::new_account) / [`new_contact`](OpportunityWrite::new_contact) | exactly 1 Composite `POST composite` (`allOrNone: true`): `POST sobjects/Account` (`account`), `POST sobjects/Contact` with its account `@{account.id}` (`contact`), then the upsert by External ID with `AccountId` / `ContactId` from those references or the ids given; all of them or none are written |
//! | [`find_customer`](CrmStore::find_customer) | exactly 1 Composite `POST composite` holding the two SOQL queries of `find_account` and `find_contact_by_email` (only those with a key; none: no request) |
//! | [`find_account`](CrmStore::find_account), [`find_contact_by_email`](CrmStore::find_contact_by_email) | 1 SOQL `GET query?q=SELECT Id FROM … WHERE … ORDER BY CreatedDate ASC LIMIT 1` |
//! | [`create_account`](CrmStore::create_account), [`create_contact`](CrmStore::create_contact) | 1 `POST sobjects/<Object>` (201 `{id}`) |
//! | [`write_audit`](CrmStore::write_audit) | 1 `PATCH sobjects/Opportunity/<id>` of the audit field |
//! | [`list_opportunities`](CrmStore::list_opportunities) | 1 SOQL `GET query?q=SELECT Id, Name, <sync>, <referral id>, LastModifiedDate, LastModifiedById FROM Opportunity WHERE <sync> = true AND (LastModifiedDate > <t> OR (LastModifiedDate = <t> AND Id > '<last>')) ORDER BY LastModifiedDate ASC, Id ASC LIMIT <page>` per page (keyset paging; no `nextRecordsUrl` kept) |
//!
//! The upsert key field is [`SalesforceOpportunityFields::referral_identifier`] (default
//! `Referral_Identifier__c`; it must be an External ID field). It is left out of the body of an
//! upsert by that key and written into the record on an update by id.
//!
//! A Composite request is one API call whatever its subrequests
//! ([`CrmStore::combined_request`]: [`ApiRequest::SalesforceComposite`]); a failed subrequest is
//! mapped to the error the plain request gives (a 300 on the upsert is the duplicate-referral
//! error, a missing External ID field the configuration error), and with `allOrNone` nothing
//! of the request stays written (docs/salesforce.md#composite-requests).
//!
//! The opportunity's contact is written as `ContactId` (the primary contact, API v46.0 and
//! later) only when the opportunity is created by an upsert of the create scope; Salesforce
//! sets it on create only.
//!
//! [`SalesforceOpportunityFields::referral_identifier`]: cosell_domain::mapping::SalesforceOpportunityFields::referral_identifier

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cosell_domain::ids::{CrmKind, CrmRecordId, ReferralId, SalesforceId};
use cosell_domain::mapping::BodyScope;
use cosell_domain::mapping::{
    MappingConfig, SalesforceRecord, opportunity_from_salesforce, salesforce_account_body,
    salesforce_contact_body, salesforce_opportunity_body,
};
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity};
use cosell_domain::ports::{
    ApiRequest, CombinedOperation, CrmStore, FoundCustomer, ListedOpportunity, OpportunityPage,
    OpportunityQuery, OpportunityWrite, PortError, Service, Upserted, customer_keys,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::AuthorizedClient;
use super::response::{HttpAdapterError, RequestContext, classify, read_json};
use super::tokens::{AccessToken, SalesforceJwtBearer};
use crate::crm_wire::salesforce::{
    CompositeRequest, CompositeResponse, CompositeSubrequest, CompositeSubresponse,
};

/// The REST API version used.
pub const DEFAULT_SALESFORCE_API_VERSION: &str = "v62.0";
/// Above this share of the daily API allocation, each answer logs a warning.
const USAGE_WARNING_RATIO: f64 = 0.9;
/// The creation time of every record, to pick the oldest of several matches.
const CREATED_DATE_FIELD: &str = "CreatedDate";

/// Settings of a [`SalesforceStore`].
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    /// The REST API version, [`DEFAULT_SALESFORCE_API_VERSION`] (`v62.0`; `62.0` is accepted).
    /// Upserts need v46.0 or later to say whether they created the record.
    pub api_version: String,
    /// Object and field names, stage names, multi-currency.
    pub mapping: MappingConfig,
}

impl SalesforceConfig {
    /// Settings with the default API version.
    pub fn new(mapping: MappingConfig) -> Self {
        Self {
            api_version: DEFAULT_SALESFORCE_API_VERSION.to_owned(),
            mapping,
        }
    }
}

/// The org's API usage from the last `Sforce-Limit-Info: api-usage=<used>/<max>` header: calls
/// made in the rolling 24 hours and the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiUsage {
    /// Requests used.
    pub used: u64,
    /// The daily allocation.
    pub max: u64,
}

impl ApiUsage {
    /// Reads `api-usage=18/5000` (other members such as `api-bursts=…` are ignored).
    pub fn parse(header: &str) -> Option<Self> {
        header.split([',', ';']).find_map(|part| {
            let (name, value) = part.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("api-usage") {
                return None;
            }
            let (used, max) = value.trim().split_once('/')?;
            Some(Self {
                used: used.trim().parse().ok()?,
                max: max.trim().parse().ok()?,
            })
        })
    }

    /// `used / max` (0 when `max` is 0).
    pub fn ratio(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            // Precision loss only beyond 2^53 requests.
            self.used as f64 / self.max as f64
        }
    }
}

/// The [`CrmStore`] over the Salesforce REST API. Cheap to clone (clones share the token cache
/// and the usage figure).
#[derive(Debug, Clone)]
pub struct SalesforceStore {
    client: AuthorizedClient,
    /// `v62.0`
    version: String,
    mapping: Arc<MappingConfig>,
    usage: Arc<Mutex<Option<ApiUsage>>>,
}

/// A create answer `{"id","success","errors"}` / an upsert answer (`created` since v46).
#[derive(Debug, Deserialize)]
struct SaveResult {
    id: String,
    #[serde(default)]
    created: Option<bool>,
}

/// A SOQL answer.
#[derive(Debug, Deserialize)]
struct QueryResult {
    #[serde(default)]
    records: Vec<Map<String, Value>>,
}

/// A SOQL answer of a listing page. With `LIMIT` at most [`MAX_LIST_PAGE`] there is one
/// batch: no `nextRecordsUrl` (a query locator) is followed or kept.
#[derive(Debug, Deserialize)]
struct QueryPage {
    #[serde(default)]
    records: Vec<Map<String, Value>>,
}

/// The largest listing page asked for: Salesforce's default query batch (2,000 records), so a
/// page is always one answer (docs/salesforce.md#soql-queries-and-query-locators).
pub const MAX_LIST_PAGE: u32 = 2_000;

/// When a record was last modified, and by whom (system fields).
const LAST_MODIFIED_DATE_FIELD: &str = "LastModifiedDate";
const LAST_MODIFIED_BY_FIELD: &str = "LastModifiedById";

/// A Salesforce date-time (`2026-01-02T03:04:05.000+0000`, or RFC 3339).
fn salesforce_datetime(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|at| at.with_timezone(&chrono::Utc))
}

/// `'text'` as a SOQL string literal: `\` and `'` (and `"`, line breaks, tabs) escaped.
fn soql_string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('\'');
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '\'' => literal.push_str("\\'"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            '\r' => literal.push_str("\\r"),
            '\t' => literal.push_str("\\t"),
            other => literal.push(other),
        }
    }
    literal.push('\'');
    literal
}

fn salesforce_error(message: impl Into<String>) -> PortError {
    PortError::Permanent {
        service: Service::Salesforce,
        message: message.into(),
    }
}

/// The Salesforce id of `record`, or a permanent error when it belongs to the other CRM.
fn salesforce_id(record: &CrmRecordId, what: &str) -> Result<SalesforceId, PortError> {
    match record {
        CrmRecordId::Salesforce(id) => Ok(id.clone()),
        CrmRecordId::Dataverse(_) => Err(salesforce_error(format!(
            "the {what} {record} is a Dataverse record, but this connector writes to Salesforce: \
             check the CRM the link or the referral's externalReferenceId names"
        ))),
    }
}

/// An id field of a record.
fn record_id(record: &Map<String, Value>, field: &str) -> Option<SalesforceId> {
    record
        .get(field)
        .and_then(Value::as_str)
        .and_then(|text| SalesforceId::try_from(text).ok())
}

impl SalesforceStore {
    /// The SOQL of one [`CrmStore::list_opportunities`] page: `SELECT Id, Name, <sync>,
    /// <referral id>, LastModifiedDate, LastModifiedById FROM Opportunity WHERE <sync> = true
    /// AND (LastModifiedDate > <t> OR (LastModifiedDate = <t> AND Id > '<last>')) ORDER BY
    /// LastModifiedDate ASC, Id ASC LIMIT <n>` (`LastModifiedDate >= <t>` for the first page).
    /// The service compares and orders the ids alike; the code never compares them
    /// (docs/salesforce.md#soql-queries-and-query-locators).
    pub fn list_soql(&self, query: &OpportunityQuery) -> Result<String, PortError> {
        let f = &self.mapping.salesforce.opportunity;
        let at = query
            .modified_since
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let changed = match &query.after {
            None => format!("{LAST_MODIFIED_DATE_FIELD} >= {at}"),
            Some(record) => {
                let last = salesforce_id(record, "opportunity")?;
                format!(
                    "({LAST_MODIFIED_DATE_FIELD} > {at} OR ({LAST_MODIFIED_DATE_FIELD} = {at} AND \
                     {id} > {last}))",
                    id = f.id,
                    last = soql_string(last.as_str()),
                )
            }
        };
        Ok(format!(
            "SELECT {id}, {name}, {sync}, {referral}, {LAST_MODIFIED_DATE_FIELD}, \
             {LAST_MODIFIED_BY_FIELD} FROM {object} WHERE {sync} = true AND {changed} ORDER BY \
             {LAST_MODIFIED_DATE_FIELD} ASC, {id} ASC LIMIT {limit}",
            id = f.id,
            name = f.name,
            sync = f.sync,
            referral = f.referral_identifier,
            object = f.object,
            limit = query.top.clamp(1, MAX_LIST_PAGE),
        ))
    }

    /// The store; the instance URL comes with each token. Fails only on an unusable API
    /// version.
    pub fn new(
        http: reqwest::Client,
        tokens: SalesforceJwtBearer,
        config: SalesforceConfig,
    ) -> Result<Self, HttpAdapterError> {
        let raw = config.api_version.trim().trim_matches('/');
        let number = raw.strip_prefix('v').unwrap_or(raw);
        let valid = number.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
        if !valid {
            return Err(HttpAdapterError::Config(format!(
                "the Salesforce API version '{}' must look like v62.0",
                config.api_version
            )));
        }
        Ok(Self {
            client: AuthorizedClient::new(http, tokens),
            version: format!("v{number}"),
            mapping: Arc::new(config.mapping),
            usage: Arc::default(),
        })
    }

    /// The mapping configuration in use.
    pub fn mapping(&self) -> &MappingConfig {
        &self.mapping
    }

    /// The org's API usage as of the last successful answer (`None` before the first call).
    pub fn api_usage(&self) -> Option<ApiUsage> {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // -----------------------------------------------------------------------------------------
    // Plumbing
    // -----------------------------------------------------------------------------------------

    fn ctx(operation: &'static str) -> RequestContext {
        RequestContext::new(Service::Salesforce, operation)
    }

    /// `{instance}/services/data/{version}/{segments…}?{query}`, each segment percent-encoded.
    fn url_on(
        &self,
        instance: &Url,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Url, HttpAdapterError> {
        let mut url = instance.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| {
                HttpAdapterError::Config(format!(
                    "the Salesforce instance URL {instance} cannot take a path"
                ))
            })?
            .pop_if_empty()
            .extend(["services", "data", self.version.as_str()])
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends one REST request to the token's instance (JSON body when given).
    async fn send(
        &self,
        ctx: &RequestContext,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Map<String, Value>>,
    ) -> Result<reqwest::Response, HttpAdapterError> {
        let body = body
            .map(|body| serde_json::to_vec(body).map(Bytes::from))
            .transpose()
            .map_err(|error| {
                HttpAdapterError::Config(format!("the body could not be serialised: {error}"))
            })?;
        // The URL on the current token's instance; a refreshed token normally names the same.
        let token = self.client.tokens().token().await?;
        let instance = token.instance_url().cloned().ok_or_else(|| {
            HttpAdapterError::decode(ctx, "the Salesforce token carries no instance_url")
        })?;
        let url = self.url_on(&instance, segments, query)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        tracing::debug!(method = %method, path = url.path(), "Salesforce request");
        let response = self
            .client
            .send(ctx, |http, token: &AccessToken| {
                let url = token
                    .instance_url()
                    .filter(|other| **other != instance)
                    .and_then(|other| self.url_on(other, segments, query).ok())
                    .unwrap_or_else(|| url.clone());
                let request = http.request(method.clone(), url).headers(headers.clone());
                match &body {
                    Some(body) => request.body(body.clone()),
                    None => request,
                }
            })
            .await?;
        self.record_usage(response.headers());
        Ok(response)
    }

    fn record_usage(&self, headers: &HeaderMap) {
        let Some(usage) = headers
            .get("sforce-limit-info")
            .and_then(|value| value.to_str().ok())
            .and_then(ApiUsage::parse)
        else {
            return;
        };
        if usage.ratio() >= USAGE_WARNING_RATIO {
            tracing::warn!(
                used = usage.used,
                max = usage.max,
                "the Salesforce org has used most of its daily API allocation"
            );
        } else {
            tracing::debug!(used = usage.used, max = usage.max, "Salesforce API usage");
        }
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) = Some(usage);
    }

    /// The first row of a SOQL query's answer; its `Id`.
    async fn query_id(
        &self,
        ctx: &RequestContext,
        soql: &str,
    ) -> Result<Option<SalesforceId>, PortError> {
        let response = self
            .send(ctx, Method::GET, &["query"], &[("q", soql)], None)
            .await?;
        let result: QueryResult = read_json(ctx, response).await?;
        Ok(result.records.first().and_then(|row| record_id(row, "Id")))
    }

    /// `POST sobjects/<object>`; the new record's id.
    async fn create(
        &self,
        ctx: &RequestContext,
        object: &str,
        body: &Map<String, Value>,
    ) -> Result<SalesforceId, PortError> {
        let response = self
            .send(ctx, Method::POST, &["sobjects", object], &[], Some(body))
            .await?;
        let saved: SaveResult = read_json(ctx, response).await?;
        SalesforceId::try_from(saved.id.as_str()).map_err(|error| {
            HttpAdapterError::decode(ctx, format!("the created id is not an id: {error}")).into()
        })
    }

    // -----------------------------------------------------------------------------------------
    // Opportunities
    // -----------------------------------------------------------------------------------------

    /// The Opportunity fields the mapping reads (the currency only in multi-currency orgs).
    fn opportunity_fields(&self) -> Vec<&str> {
        let sf = &self.mapping.salesforce;
        let f = &sf.opportunity;
        let mut fields = vec![
            f.id.as_str(),
            f.name.as_str(),
            f.amount.as_str(),
            f.close_date.as_str(),
            f.description.as_str(),
            f.stage_name.as_str(),
            f.is_closed.as_str(),
            f.is_won.as_str(),
            f.account_id.as_str(),
            f.contact_id.as_str(),
            f.sync.as_str(),
            f.referral_identifier.as_str(),
            f.referral_link.as_str(),
            f.help.as_str(),
            f.visibility.as_str(),
            f.solutions.as_str(),
            f.microsoft_crm_identifier.as_str(),
            f.solution_area.as_str(),
            f.solution_play.as_str(),
            f.partner_role.as_str(),
            f.audit.as_str(),
        ];
        if sf.multi_currency {
            fields.push(&f.currency_iso_code);
        }
        fields
    }

    /// The select list of an Opportunity with its parents: its own fields, then
    /// `Account.<field>` and `Contact.<field>` through the configured relationship names
    /// (docs/salesforce.md#related-records-in-one-query).
    pub fn opportunity_select(&self) -> String {
        let sf = &self.mapping.salesforce;
        let f = &sf.opportunity;
        let a = &sf.account;
        let c = &sf.contact;
        let account = [
            &a.id,
            &a.name,
            &a.street,
            &a.city,
            &a.state,
            &a.postal_code,
            &a.country,
        ]
        .map(|field| format!("{}.{field}", f.account_relationship));
        let contact = [&c.id, &c.first_name, &c.last_name, &c.email, &c.phone]
            .map(|field| format!("{}.{field}", f.contact_relationship));
        self.opportunity_fields()
            .into_iter()
            .map(str::to_owned)
            .chain(account)
            .chain(contact)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `SELECT <opportunity_select> FROM Opportunity WHERE Id = '<id>'`.
    pub fn opportunity_soql(&self, id: &SalesforceId) -> String {
        let f = &self.mapping.salesforce.opportunity;
        format!(
            "SELECT {} FROM {} WHERE {} = {}",
            self.opportunity_select(),
            f.object,
            f.id,
            soql_string(id.as_str())
        )
    }

    // -----------------------------------------------------------------------------------------
    // Composite requests
    // -----------------------------------------------------------------------------------------

    /// The path and query of a REST request, as a Composite subrequest names it:
    /// `/services/data/v62.0/{segments…}?{query}`.
    fn subrequest_url(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<String, HttpAdapterError> {
        let base = Url::parse("https://instance.invalid/").map_err(|error| {
            HttpAdapterError::Config(format!("the Composite base URL is invalid: {error}"))
        })?;
        let url = self.url_on(&base, segments, query)?;
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// A subrequest of `method` on `segments`.
    fn subrequest(
        &self,
        method: &Method,
        segments: &[&str],
        query: &[(&str, &str)],
        reference_id: &str,
        body: Option<Map<String, Value>>,
    ) -> Result<CompositeSubrequest, HttpAdapterError> {
        Ok(CompositeSubrequest {
            method: method.as_str().to_owned(),
            url: self.subrequest_url(segments, query)?,
            reference_id: reference_id.to_owned(),
            body: body.map(Value::Object),
        })
    }

    /// Sends one Composite request (one API call) and reads its answer; one answer per
    /// subrequest is expected.
    async fn composite(
        &self,
        ctx: &RequestContext,
        request: &CompositeRequest,
    ) -> Result<CompositeResponse, PortError> {
        let body = match serde_json::to_value(request) {
            Ok(Value::Object(body)) => body,
            Ok(_) | Err(_) => {
                return Err(HttpAdapterError::Config(
                    "the Composite request could not be serialised".to_owned(),
                )
                .into());
            }
        };
        let response = self
            .send(ctx, Method::POST, &["composite"], &[], Some(&body))
            .await?;
        let answer: CompositeResponse = read_json(ctx, response).await?;
        if let Some(missing) = request
            .composite_request
            .iter()
            .find(|sub| answer.get(&sub.reference_id).is_none())
        {
            return Err(HttpAdapterError::decode(
                ctx,
                format!(
                    "the Composite answer has no answer for the subrequest {}",
                    missing.reference_id
                ),
            )
            .into());
        }
        Ok(answer)
    }

    /// The answer of subrequest `reference_id` as the plain request's error when it failed:
    /// classified like a plain answer (the subrequest's status and body), with the resource
    /// and operation of `ctx`.
    fn subresponse_error(ctx: &RequestContext, answer: &CompositeSubresponse) -> HttpAdapterError {
        match StatusCode::from_u16(answer.http_status_code) {
            Ok(status) => classify(ctx, status, &HeaderMap::new(), &answer.body.to_string()),
            Err(_) => HttpAdapterError::decode(
                ctx,
                format!(
                    "the Composite subrequest {} answered no valid status ({})",
                    answer.reference_id, answer.http_status_code
                ),
            ),
        }
    }

    /// The first row's `Id` of a query subrequest's answer.
    fn queried_id(
        ctx: &RequestContext,
        answer: &CompositeSubresponse,
    ) -> Result<Option<SalesforceId>, PortError> {
        if !answer.succeeded() {
            return Err(Self::subresponse_error(ctx, answer).into());
        }
        let result: QueryResult = serde_json::from_value(answer.body.clone()).map_err(|error| {
            HttpAdapterError::decode(
                ctx,
                format!("the query answer is not a query result: {error}"),
            )
        })?;
        Ok(result.records.first().and_then(|row| record_id(row, "Id")))
    }

    /// `SELECT Id FROM Account WHERE Name = … [AND BillingPostalCode = …] ORDER BY CreatedDate
    /// ASC LIMIT 1`.
    fn account_soql(&self, name: &str, postal_code: Option<&str>) -> String {
        let f = &self.mapping.salesforce.account;
        let mut soql = format!(
            "SELECT {} FROM {} WHERE {} = {}",
            f.id,
            f.object,
            f.name,
            soql_string(name.trim())
        );
        if let Some(postal_code) = postal_code.map(str::trim).filter(|p| !p.is_empty()) {
            soql.push_str(&format!(
                " AND {} = {}",
                f.postal_code,
                soql_string(postal_code)
            ));
        }
        soql.push_str(&format!(" ORDER BY {CREATED_DATE_FIELD} ASC LIMIT 1"));
        soql
    }

    /// `SELECT Id FROM Contact WHERE Email = … ORDER BY CreatedDate ASC LIMIT 1`.
    fn contact_soql(&self, email: &str) -> String {
        let f = &self.mapping.salesforce.contact;
        format!(
            "SELECT {} FROM {} WHERE {} = {} ORDER BY {CREATED_DATE_FIELD} ASC LIMIT 1",
            f.id,
            f.object,
            f.email,
            soql_string(email.trim())
        )
    }

    /// The new opportunity with its new account and/or contact, in one Composite request
    /// (`allOrNone`): see the module docs.
    async fn create_with_customer(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        const ACCOUNT: &str = "newAccount";
        const CONTACT: &str = "newContact";
        const OPPORTUNITY: &str = "opportunity";
        let sf = &self.mapping.salesforce;
        let f = &sf.opportunity;
        let existing_account = write
            .account
            .map(|account| salesforce_id(account, "account"))
            .transpose()?;
        let existing_contact = write
            .contact
            .map(|contact| salesforce_id(contact, "contact"))
            .transpose()?;
        let account_ref = format!("@{{{ACCOUNT}.id}}");
        let contact_ref = format!("@{{{CONTACT}.id}}");
        let account_value = match (write.new_account, &existing_account) {
            (Some(_), _) => Some(account_ref),
            (None, Some(id)) => Some(id.as_str().to_owned()),
            (None, None) => None,
        };
        let mut subrequests = Vec::with_capacity(3);
        let account_ctx = Self::ctx("create an account");
        if let Some(account) = write.new_account {
            let body = salesforce_account_body(account, &self.mapping);
            subrequests.push(self.subrequest(
                &Method::POST,
                &["sobjects", sf.account.object.as_str()],
                &[],
                ACCOUNT,
                Some(body),
            )?);
        }
        let contact_ctx = Self::ctx("create a contact");
        if let Some(contact) = write.new_contact {
            let mut body = salesforce_contact_body(contact, None, &self.mapping);
            if let Some(account) = &account_value {
                body.insert(
                    sf.contact.account_id.clone(),
                    Value::String(account.clone()),
                );
            }
            subrequests.push(self.subrequest(
                &Method::POST,
                &["sobjects", sf.contact.object.as_str()],
                &[],
                CONTACT,
                Some(body),
            )?);
        }
        let mut body = salesforce_opportunity_body(
            write.opportunity,
            None,
            write.audit,
            write.scope,
            &self.mapping,
        );
        body.remove(&f.referral_identifier);
        if let Some(account) = account_value {
            body.insert(f.account_id.clone(), Value::String(account));
        }
        let contact_value = match (write.new_contact, &existing_contact) {
            (Some(_), _) => Some(contact_ref),
            (None, Some(id)) => Some(id.as_str().to_owned()),
            (None, None) => None,
        };
        if let Some(contact) = contact_value {
            body.insert(f.contact_id.clone(), Value::String(contact));
        }
        let referral = write.referral_id.to_string();
        subrequests.push(self.subrequest(
            &Method::PATCH,
            &[
                "sobjects",
                f.object.as_str(),
                f.referral_identifier.as_str(),
                referral.as_str(),
            ],
            &[],
            OPPORTUNITY,
            Some(body),
        )?);
        let ctx = Self::ctx("create an opportunity with its customer (Composite)")
            .with_resource(format!("the {} field {}", f.object, f.referral_identifier));
        let request = CompositeRequest {
            all_or_none: true,
            composite_request: subrequests,
        };
        let answer = self.composite(&ctx, &request).await?;
        if let Some(failed) = answer.failure() {
            let cause = match failed.reference_id.as_str() {
                ACCOUNT => Self::subresponse_error(&account_ctx, failed),
                CONTACT => Self::subresponse_error(&contact_ctx, failed),
                _ => Self::subresponse_error(&ctx, failed),
            };
            return Err(self.upsert_error(cause, &referral));
        }
        let upserted = answer
            .get(OPPORTUNITY)
            .ok_or_else(|| HttpAdapterError::decode(&ctx, "no answer for the upsert"))?;
        let saved: SaveResult = serde_json::from_value(upserted.body.clone()).map_err(|error| {
            HttpAdapterError::decode(
                &ctx,
                format!(
                    "the upsert answered {} without the record id ({error}); API versions                      before v46.0 do: configure API version v46.0 or later",
                    upserted.http_status_code
                ),
            )
        })?;
        let id = SalesforceId::try_from(saved.id.as_str()).map_err(|error| {
            HttpAdapterError::decode(&ctx, format!("the upserted id is not an id: {error}"))
        })?;
        Ok(Upserted {
            id: CrmRecordId::Salesforce(id),
            created: saved.created.unwrap_or(upserted.http_status_code == 201),
            version: None,
        })
    }

    /// The error of an upsert by the referral id: a missing External ID field and several
    /// records with the referral (300) get their own errors (with the fix), others as classified.
    fn upsert_error(&self, error: HttpAdapterError, referral: &str) -> PortError {
        match error {
            HttpAdapterError::NotFound { message, .. }
                if message.to_ascii_lowercase().contains("external id field") =>
            {
                self.missing_external_id(&message)
            }
            HttpAdapterError::Rejected { status: 300, .. } => self.duplicate_referral(referral),
            error => error.into(),
        }
    }

    fn missing_external_id(&self, message: &str) -> PortError {
        let f = &self.mapping.salesforce.opportunity;
        salesforce_error(format!(
            "{message}. Fix: the {} field {} must exist, be visible to the integration user and \
             be marked External ID (or configure the field the org uses)",
            f.object, f.referral_identifier
        ))
    }

    fn duplicate_referral(&self, referral: &str) -> PortError {
        let f = &self.mapping.salesforce.opportunity;
        salesforce_error(format!(
            "several {} records carry referral {referral} in {} (300 Multiple Choices): merge \
             them or clear the field on all but one, then retry",
            f.object, f.referral_identifier
        ))
    }
}

impl CrmStore for SalesforceStore {
    fn kind(&self) -> CrmKind {
        CrmKind::Salesforce
    }

    /// `GET sobjects/Opportunity/<External ID field>/<referral id>` (see the module docs).
    #[tracing::instrument(skip_all, fields(referral_id = %referral_id))]
    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        let f = &self.mapping.salesforce.opportunity;
        let key = referral_id.to_string();
        let ctx = Self::ctx("find the opportunity of a referral").with_resource(format!(
            "the {} with {} {key}",
            f.object, f.referral_identifier
        ));
        let segments = [
            "sobjects",
            f.object.as_str(),
            f.referral_identifier.as_str(),
            key.as_str(),
        ];
        let response = match self.send(&ctx, Method::GET, &segments, &[], None).await {
            Ok(response) => response,
            Err(HttpAdapterError::NotFound { message, .. })
                if message.to_ascii_lowercase().contains("external id field") =>
            {
                return Err(self.missing_external_id(&message));
            }
            Err(HttpAdapterError::NotFound { .. }) => return Ok(None),
            Err(HttpAdapterError::Rejected { status: 300, .. }) => {
                return Err(self.duplicate_referral(&key));
            }
            Err(error) => return Err(error.into()),
        };
        let row: Map<String, Value> = read_json(&ctx, response).await?;
        Ok(Some(opportunity_from_salesforce(
            &SalesforceRecord::new(&row),
            &self.mapping,
        )))
    }

    /// One page of a keyset walk ([`list_soql`](Self::list_soql)), bounded by `LIMIT`. No
    /// `nextRecordsUrl` is followed or kept. Only those fields are read, so the items are not
    /// [`complete`](ListedOpportunity::complete) (reconciliation reads a changed record in full
    /// with `get_opportunity`): with every mapped field, long descriptions included, the
    /// service may answer in batches smaller than `LIMIT`
    /// (docs/salesforce.md#related-records-in-one-query), and a page must be one answer.
    #[tracing::instrument(skip_all)]
    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        let ctx = Self::ctx("list the opportunities modified since the checkpoint");
        let soql = self.list_soql(query)?;
        let response = self
            .send(&ctx, Method::GET, &["query"], &[("q", &soql)], None)
            .await?;
        let page: QueryPage = read_json(&ctx, response).await?;
        let items = page
            .records
            .iter()
            .map(|row| ListedOpportunity {
                opportunity: opportunity_from_salesforce(
                    &SalesforceRecord::new(row),
                    &self.mapping,
                ),
                modified_at: row
                    .get(LAST_MODIFIED_DATE_FIELD)
                    .and_then(Value::as_str)
                    .and_then(salesforce_datetime),
                modified_by: row
                    .get(LAST_MODIFIED_BY_FIELD)
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                complete: false,
            })
            .collect();
        Ok(OpportunityPage { items })
    }

    /// One SOQL query of the Opportunity with its Account's and Contact's fields
    /// ([`opportunity_soql`](Self::opportunity_soql); see the module docs). No record is
    /// [`PortError::NotFound`].
    #[tracing::instrument(skip_all, fields(crm = %id))]
    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        let id = salesforce_id(id, "opportunity")?;
        let f = &self.mapping.salesforce.opportunity;
        let what = format!("{} {}", f.object, id.as_str());
        let ctx = Self::ctx("read an opportunity").with_resource(what.clone());
        let soql = self.opportunity_soql(&id);
        let response = self
            .send(&ctx, Method::GET, &["query"], &[("q", &soql)], None)
            .await?;
        let result: QueryResult = read_json(&ctx, response).await?;
        let row = result.records.first().ok_or(PortError::NotFound {
            service: Service::Salesforce,
            what,
        })?;
        Ok(opportunity_from_salesforce(
            &SalesforceRecord::new(row),
            &self.mapping,
        ))
    }

    /// The upsert (see the module docs). [`OpportunityWrite::if_match`] is not sent: a
    /// Salesforce record update takes no `If-Match`, and `get_opportunity` reports no version
    /// (docs/conflicts.md#what-it-costs).
    #[tracing::instrument(skip_all, fields(referral_id = %write.referral_id, record = ?write.record.map(ToString::to_string), scope = ?write.scope))]
    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        if write.new_records() > 0 {
            if write.record.is_some() || write.scope != BodyScope::Create {
                return Err(salesforce_error(
                    "new accounts and contacts are written only with a new opportunity (an \
                     upsert by the referral id of the create scope): this is a defect of the \
                     connector, report it",
                ));
            }
            return self.create_with_customer(write).await;
        }
        let f = &self.mapping.salesforce.opportunity;
        let record = write
            .record
            .map(|record| salesforce_id(record, "opportunity"))
            .transpose()?;
        let account = write
            .account
            .map(|account| salesforce_id(account, "account"))
            .transpose()?;
        let contact = write
            .contact
            .filter(|_| record.is_none() && write.scope == BodyScope::Create)
            .map(|contact| salesforce_id(contact, "contact"))
            .transpose()?;
        let mut body = salesforce_opportunity_body(
            write.opportunity,
            account.as_ref(),
            write.audit,
            write.scope,
            &self.mapping,
        );
        if let Some(contact) = contact {
            body.insert(
                f.contact_id.clone(),
                Value::String(contact.as_str().to_owned()),
            );
        }
        let referral = write.referral_id.to_string();
        match record {
            Some(id) => {
                body.insert(
                    f.referral_identifier.clone(),
                    Value::String(referral.clone()),
                );
                let ctx = Self::ctx("update an opportunity").with_resource(format!(
                    "{} {}",
                    f.object,
                    id.as_str()
                ));
                self.send(
                    &ctx,
                    Method::PATCH,
                    &["sobjects", f.object.as_str(), id.as_str()],
                    &[],
                    Some(&body),
                )
                .await?;
                Ok(Upserted {
                    id: CrmRecordId::Salesforce(id),
                    created: false,
                    version: None,
                })
            }
            None => {
                body.remove(&f.referral_identifier);
                let ctx = Self::ctx("upsert an opportunity by its referral id")
                    .with_resource(format!("the {} field {}", f.object, f.referral_identifier));
                let segments = [
                    "sobjects",
                    f.object.as_str(),
                    f.referral_identifier.as_str(),
                    referral.as_str(),
                ];
                let response = self
                    .send(&ctx, Method::PATCH, &segments, &[], Some(&body))
                    .await
                    .map_err(|error| self.upsert_error(error, &referral))?;
                let status = response.status();
                if status == StatusCode::NO_CONTENT {
                    return Err(HttpAdapterError::decode(
                        &ctx,
                        "the upsert answered 204 without the record id (API versions before \
                         v46.0 do); configure API version v46.0 or later",
                    )
                    .into());
                }
                let saved: SaveResult = read_json(&ctx, response).await?;
                let id = SalesforceId::try_from(saved.id.as_str()).map_err(|error| {
                    HttpAdapterError::decode(&ctx, format!("the upserted id is not an id: {error}"))
                })?;
                Ok(Upserted {
                    id: CrmRecordId::Salesforce(id),
                    created: saved.created.unwrap_or(status == StatusCode::CREATED),
                    version: None,
                })
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Accounts, contacts, audit
    // -----------------------------------------------------------------------------------------

    /// SOQL on Account by name and billing postal code (by name alone when no postal code is
    /// given); the oldest match.
    #[tracing::instrument(skip_all)]
    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        let soql = self.account_soql(name, postal_code);
        let ctx = Self::ctx("find an account");
        Ok(self
            .query_id(&ctx, &soql)
            .await?
            .map(CrmRecordId::Salesforce))
    }

    /// `POST sobjects/Account`.
    #[tracing::instrument(skip_all)]
    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        let body = salesforce_account_body(account, &self.mapping);
        let ctx = Self::ctx("create an account");
        let id = self
            .create(&ctx, &self.mapping.salesforce.account.object, &body)
            .await?;
        Ok(CrmRecordId::Salesforce(id))
    }

    /// SOQL on Contact by email; the oldest match.
    #[tracing::instrument(skip_all)]
    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        let soql = self.contact_soql(email);
        let ctx = Self::ctx("find a contact");
        Ok(self
            .query_id(&ctx, &soql)
            .await?
            .map(CrmRecordId::Salesforce))
    }

    /// `POST sobjects/Contact`, linked to its account when given.
    #[tracing::instrument(skip_all)]
    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        let account = account
            .map(|account| salesforce_id(account, "account"))
            .transpose()?;
        let body = salesforce_contact_body(contact, account.as_ref(), &self.mapping);
        let ctx = Self::ctx("create a contact");
        let id = self
            .create(&ctx, &self.mapping.salesforce.contact.object, &body)
            .await?;
        Ok(CrmRecordId::Salesforce(id))
    }

    /// The account and contact queries of `find_account` / `find_contact_by_email` in one
    /// Composite request (see the module docs).
    #[tracing::instrument(skip_all)]
    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        const ACCOUNT: &str = "account";
        const CONTACT: &str = "contact";
        let (account, email) = customer_keys(account, email);
        let mut subrequests = Vec::with_capacity(2);
        if let Some((name, postal_code)) = account {
            let soql = self.account_soql(name, postal_code);
            subrequests.push(self.subrequest(
                &Method::GET,
                &["query"],
                &[("q", &soql)],
                ACCOUNT,
                None,
            )?);
        }
        if let Some(email) = email {
            let soql = self.contact_soql(email);
            subrequests.push(self.subrequest(
                &Method::GET,
                &["query"],
                &[("q", &soql)],
                CONTACT,
                None,
            )?);
        }
        if subrequests.is_empty() {
            return Ok(FoundCustomer::default());
        }
        let ctx = Self::ctx("find the customer's account and contact (Composite)");
        let request = CompositeRequest {
            all_or_none: false,
            composite_request: subrequests,
        };
        let answer = self.composite(&ctx, &request).await?;
        let found = |reference: &str, operation: &'static str| {
            answer
                .get(reference)
                .map(|sub| Self::queried_id(&Self::ctx(operation), sub))
                .transpose()
                .map(|id| id.flatten().map(CrmRecordId::Salesforce))
        };
        Ok(FoundCustomer {
            account: found(ACCOUNT, "find an account")?,
            contact: found(CONTACT, "find a contact")?,
        })
    }

    /// Both combined operations are one Composite request: one API call. A close is the plain
    /// update (`StageName`), no request of its own.
    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        let subrequests = match operation {
            CombinedOperation::FindCustomer { lookups } => lookups,
            CombinedOperation::CreateWithCustomer { records } => records + 1,
            CombinedOperation::WriteAndClose => return None,
        };
        Some(ApiRequest::SalesforceComposite { subrequests })
    }

    /// `PATCH sobjects/Opportunity/<id>` of the audit field.
    #[tracing::instrument(skip_all, fields(crm = %opportunity))]
    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        let id = salesforce_id(opportunity, "opportunity")?;
        let f = &self.mapping.salesforce.opportunity;
        let mut body = Map::new();
        body.insert(f.audit.clone(), Value::String(text.to_owned()));
        let ctx = Self::ctx("write the audit field").with_resource(format!(
            "{} {}",
            f.object,
            id.as_str()
        ));
        self.send(
            &ctx,
            Method::PATCH,
            &["sobjects", f.object.as_str(), id.as_str()],
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn soql_literals_escape_quotes_and_backslashes() {
        assert_eq!(soql_string("O'Brien"), r"'O\'Brien'");
        assert_eq!(soql_string(r"a\b"), r"'a\\b'");
        assert_eq!(soql_string("x\ny\"z"), r#"'x\ny\"z'"#);
        assert_eq!(soql_string("plain"), "'plain'");
    }

    #[test]
    fn dates_are_read_in_both_forms() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(
            salesforce_datetime("2026-01-02T03:04:05.000+0000"),
            Some(at)
        );
        assert_eq!(salesforce_datetime("2026-01-02T03:04:05Z"), Some(at));
        assert_eq!(salesforce_datetime("yesterday"), None);
    }

    #[test]
    fn api_usage_is_read_from_the_limit_header() {
        assert_eq!(
            ApiUsage::parse("api-usage=18/5000"),
            Some(ApiUsage {
                used: 18,
                max: 5000
            })
        );
        assert_eq!(
            ApiUsage::parse("api-bursts=1/750, api-usage=10018/100000"),
            Some(ApiUsage {
                used: 10018,
                max: 100_000
            })
        );
        assert_eq!(ApiUsage::parse("per-app-api-usage=1/2"), None);
        assert!(ApiUsage { used: 95, max: 100 }.ratio() >= USAGE_WARNING_RATIO);
        assert!(ApiUsage { used: 1, max: 0 }.ratio() < USAGE_WARNING_RATIO);
    }

    #[test]
    fn a_dataverse_id_is_refused_with_a_permanent_error() {
        let id = CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap();
        let err = salesforce_id(&id, "opportunity").unwrap_err();
        assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
    }
}
