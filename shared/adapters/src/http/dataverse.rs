//! [`DataverseStore`]: the domain's [`CrmStore`] port over the Dataverse Web API
//! (`{environment url}/api/data/v9.2/`, docs/dataverse.md#web-api).
//!
//! Every request goes through an [`AuthorizedClient`] with an app-only
//! [`EntraClientCredentials`] token (scope [`super::tokens::dataverse_scope`]): bearer token,
//! one refresh on 401, every other failure classified by [`super::response`]. Headers follow
//! docs/dataverse.md#url-and-headers: `Accept: application/json`, `OData-MaxVersion: 4.0`,
//! `OData-Version: 4.0`, plus `If-None-Match: null` on reads and `Content-Type: application/json`
//! on writes. Column and table names come from [`MappingConfig::dataverse`]; bodies are built and
//! rows read only by the domain's mapping functions.
//!
//! # Requests per operation
//!
//! | Operation | Requests |
//! |---|---|
//! | [`find_opportunity_by_referral`](CrmStore::find_opportunity_by_referral) | exactly 1 `GET opportunities?$filter=<referral column> eq '…'&$select=…&$top=1&$expand=<currency>($select=isocurrencycode)`. The account and contact are **not** read (the result's `account` is empty and `contact` `None`; use `get_opportunity` for them) |
//! | [`get_opportunity`](CrmStore::get_opportunity) | exactly 1 `GET opportunities(<id>)?$select=…&$expand=<account>($select=…),<contact>($select=…),<currency>($select=isocurrencycode)` ([`opportunity_expand`](DataverseStore::opportunity_expand); docs/dataverse.md#related-rows-in-one-read): an unset lookup expands to `null` |
//! | [`upsert_opportunity`](CrmStore::upsert_opportunity) | exactly 1 `PATCH`, + 1 `GET transactioncurrencies?$filter=isocurrencycode eq '…'` the first time a currency is written (cached per instance); first, with both [`new_account`](OpportunityWrite::new_account) and [`new_contact`](OpportunityWrite::new_contact), 1 `POST accounts` with the contact nested (a deep insert, [`combined_request`](CrmStore::combined_request): [`ApiRequest::DataverseRequests`] of 2), or with one of them 1 `POST`, as `create_account` / `create_contact` make it ([`find_customer`](CrmStore::find_customer) is the default, the two look-ups) |
//! | [`find_account`](CrmStore::find_account), [`find_contact_by_email`](CrmStore::find_contact_by_email) | 1 `GET` with `$filter`, `$select` of the primary key, `$top=1` |
//! | [`create_account`](CrmStore::create_account), [`create_contact`](CrmStore::create_contact) | 1 `POST` (`Prefer: return=representation`, `$select` of the primary key) |
//! | [`write_audit`](CrmStore::write_audit) | 1 `PATCH opportunities(<id>)` with `If-Match: *` |
//! | [`list_opportunities`](CrmStore::list_opportunities) | 1 `GET opportunities?$filter=<sync> eq true and (modifiedon gt <t> or (modifiedon eq <t> and opportunityid gt <last>))&$orderby=modifiedon asc,opportunityid asc&$top=<page>&$expand=…` per page (keyset paging, no `@odata.nextLink` kept; docs/dataverse.md#paging); each row carries its account, contact and currency as `get_opportunity` reads them |
//!
//! # Upserts
//!
//! Without [`OpportunityWrite::record`] the opportunity is upserted by the alternate key on the
//! referral-identifier column: `PATCH opportunities(<column>='<referral id>')` with
//! `Prefer: return=representation` and `$select=<primary key>`, so the answer says whether it
//! was created (201) or updated (200) and carries the id. The key column is left out of the
//! body (docs/dataverse.md#update-and-upsert-by-alternate-key: "don't repeat key values in the
//! body"). With a record id the row is patched by its id (`Prefer: return=representation`, `$select`
//! of the primary key, so the answer carries the row's new `@odata.etag`) with `If-Match: *` (update only: a missing
//! row is [`PortError::NotFound`], never a new row), or with the row version the sync read
//! ([`OpportunityWrite::if_match`], the `@odata.etag` of `get_opportunity`; a save made since is
//! [`PortError::PreconditionFailed`], docs/conflicts.md#what-it-costs), and the referral id is
//! written into the key column.
//!
//! The deal's currency is bound through `transactioncurrencyid@odata.bind`; the
//! `transactioncurrency` row of an ISO code is looked up once per instance (or not at all when
//! a read already expanded it). A currency the
//! environment lacks is a [`PortError::Permanent`] naming where to add it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::crm_wire::dataverse::lookup_value_key;
use bytes::Bytes;
use cosell_domain::ids::{CrmKind, CrmRecordId, DataverseId, ReferralId};
use cosell_domain::mapping::{
    DataverseLinks, DataverseRecord, MappingConfig, dataverse_account_body, dataverse_contact_body,
    dataverse_opportunity_body, opportunity_from_dataverse,
};
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity};
use cosell_domain::ports::{
    ApiRequest, CombinedOperation, CrmStore, ListedOpportunity, OpportunityPage, OpportunityQuery,
    OpportunityWrite, PortError, Service, Upserted, create_customer,
};
use cosell_domain::values::CurrencyCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;
use uuid::Uuid;

use super::AuthorizedClient;
use super::response::{HttpAdapterError, RequestContext, read_json, redacted_path};
use super::tokens::{AccessToken, EntraClientCredentials};

/// The Web API version used.
pub const DEFAULT_DATAVERSE_API_VERSION: &str = "v9.2";

/// Primary key of the system `transactioncurrency` table (not configurable: a system table).
const CURRENCY_ID_COLUMN: &str = "transactioncurrencyid";
/// Creation time of every row, to pick the oldest of several matches deterministically.
const CREATED_ON_COLUMN: &str = "createdon";
/// Asks for option-set labels next to their numbers (the "How can Microsoft help?" column may
/// be a choice column in some orgs).
const PREFER_FORMATTED_VALUES: &str =
    "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue\"";
const PREFER_REPRESENTATION: &str = "return=representation";
/// The annotation carrying a row's version in a Web API answer.
const ODATA_ETAG: &str = "@odata.etag";

/// Settings of a [`DataverseStore`].
#[derive(Debug, Clone)]
pub struct DataverseConfig {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com` (the sandbox: its base URL).
    /// The token scope is [`super::tokens::dataverse_scope`] of the same URL.
    pub environment_url: String,
    /// The Web API version, [`DEFAULT_DATAVERSE_API_VERSION`].
    pub api_version: String,
    /// Table and column names, status codes.
    pub mapping: MappingConfig,
}

impl DataverseConfig {
    /// Settings for `environment_url` with the default API version.
    pub fn new(environment_url: impl Into<String>, mapping: MappingConfig) -> Self {
        Self {
            environment_url: environment_url.into(),
            api_version: DEFAULT_DATAVERSE_API_VERSION.to_owned(),
            mapping,
        }
    }
}

/// The `transactioncurrency` rows seen (written, or read expanded), by ISO code.
#[derive(Debug, Default)]
struct CurrencyCache {
    by_code: HashMap<CurrencyCode, DataverseId>,
}

/// The [`CrmStore`] over the Dataverse Web API. Cheap to clone (clones share the token cache
/// and the currency cache).
#[derive(Debug, Clone)]
pub struct DataverseStore {
    client: AuthorizedClient,
    /// `{environment url}/api/data/v9.2/`
    base: Url,
    mapping: Arc<MappingConfig>,
    currencies: Arc<Mutex<CurrencyCache>>,
}

/// A collection answer (`{"value": [...]}`).
#[derive(Debug, Deserialize)]
struct Collection {
    #[serde(default)]
    value: Vec<Map<String, Value>>,
}

/// A collection page (`{"value": [...]}`; with `$top` there is no `@odata.nextLink`).
#[derive(Debug, Deserialize)]
struct CollectionPage {
    #[serde(default)]
    value: Vec<Map<String, Value>>,
}

/// When a row was last modified, and by whom (system columns).
const MODIFIED_ON_COLUMN: &str = "modifiedon";
const MODIFIED_BY_VALUE: &str = "_modifiedby_value";

/// `'text'` as an OData string literal (`'` doubled).
fn odata_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The query string of `pairs`, keys as given (`$filter`, not `%24filter`), values
/// percent-encoded with `%20` for spaces.
fn odata_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            format!("{key}={}", encoded.replace('+', "%20"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn dataverse_error(message: impl Into<String>) -> PortError {
    PortError::Permanent {
        service: Service::Dataverse,
        message: message.into(),
    }
}

/// The Dataverse id of `record`, or a permanent error when it belongs to the other CRM.
fn dataverse_id(record: &CrmRecordId, what: &str) -> Result<DataverseId, PortError> {
    match record {
        CrmRecordId::Dataverse(id) => Ok(*id),
        CrmRecordId::Salesforce(_) => Err(dataverse_error(format!(
            "the {what} {record} is a Salesforce record, but this connector writes to Dataverse: \
             check the CRM the link or the referral's externalReferenceId names"
        ))),
    }
}

/// A GUID column of a row.
fn guid(row: &Map<String, Value>, column: &str) -> Option<DataverseId> {
    row.get(column)
        .and_then(Value::as_str)
        .and_then(|text| DataverseId::try_from(text).ok())
}

/// The id at the end of an `OData-EntityId` header (`…/accounts(7eb682f1-…)`).
fn entity_id_header(headers: &HeaderMap) -> Option<DataverseId> {
    let text = headers.get("odata-entityid")?.to_str().ok()?;
    let inner = text.trim().strip_suffix(')')?;
    let (_, id) = inner.rsplit_once('(')?;
    DataverseId::try_from(id).ok()
}

impl DataverseStore {
    /// The store for `config.environment_url`, authenticating with `tokens` (whose scope must
    /// be that environment's `/.default`). Fails only on an unusable URL.
    pub fn new(
        http: reqwest::Client,
        tokens: EntraClientCredentials,
        config: DataverseConfig,
    ) -> Result<Self, HttpAdapterError> {
        let environment = config.environment_url.trim().trim_end_matches('/');
        let version = config.api_version.trim().trim_matches('/');
        let base = Url::parse(&format!("{environment}/api/data/{version}/")).map_err(|error| {
            HttpAdapterError::Config(format!(
                "the Dataverse environment URL '{}' is not a URL: {error}",
                config.environment_url
            ))
        })?;
        if !matches!(base.scheme(), "https" | "http")
            || base.host().is_none()
            || base.query().is_some()
            || base.fragment().is_some()
            || version.is_empty()
        {
            return Err(HttpAdapterError::Config(format!(
                "the Dataverse environment URL '{}' must be an absolute https URL such as \
                 https://contoso.crm.dynamics.com, and the API version (e.g. v9.2) must be set",
                config.environment_url
            )));
        }
        Ok(Self {
            client: AuthorizedClient::new(http, tokens),
            base,
            mapping: Arc::new(config.mapping),
            currencies: Arc::default(),
        })
    }

    /// The Web API root, `{environment url}/api/data/v9.2/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The mapping configuration in use.
    pub fn mapping(&self) -> &MappingConfig {
        &self.mapping
    }

    // -----------------------------------------------------------------------------------------
    // Plumbing
    // -----------------------------------------------------------------------------------------

    fn ctx(operation: &'static str) -> RequestContext {
        RequestContext::new(Service::Dataverse, operation)
    }

    /// `{base}{segment}?{query}`; `segment` is one path segment such as `opportunities(<id>)`
    /// (percent-encoded where a path segment needs it).
    fn url(&self, segment: &str, query: &[(&str, String)]) -> Result<Url, HttpAdapterError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                HttpAdapterError::Config(format!("{} cannot take a path", self.base.as_str()))
            })?
            .pop_if_empty()
            .push(segment);
        if !query.is_empty() {
            url.set_query(Some(&odata_query(query)));
        }
        Ok(url)
    }

    /// Sends one Web API request with the OData headers, `extra` headers and a JSON body.
    async fn send(
        &self,
        ctx: &RequestContext,
        method: Method,
        url: Url,
        body: Option<&Map<String, Value>>,
        extra: &[(&'static str, &str)],
    ) -> Result<reqwest::Response, HttpAdapterError> {
        let body = body
            .map(|body| serde_json::to_vec(body).map(Bytes::from))
            .transpose()
            .map_err(|error| {
                HttpAdapterError::Config(format!("the body could not be serialised: {error}"))
            })?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert("OData-MaxVersion", HeaderValue::from_static("4.0"));
        headers.insert("OData-Version", HeaderValue::from_static("4.0"));
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        } else if method == Method::GET {
            // Overrides any browser-style caching of the previous answer
            // (docs/dataverse.md#url-and-headers).
            headers.insert("If-None-Match", HeaderValue::from_static("null"));
        }
        for (name, value) in extra {
            // A row version read from Dataverse is visible ASCII; anything else is refused.
            let value = HeaderValue::from_str(value).map_err(|_| {
                HttpAdapterError::Config(format!("the {name} header value is not valid"))
            })?;
            headers.append(HeaderName::from_static(name), value);
        }
        tracing::debug!(method = %method, path = %redacted_path(url.path()), "Dataverse request");
        self.client
            .send(ctx, |http, _: &AccessToken| {
                let request = http
                    .request(method.clone(), url.clone())
                    .headers(headers.clone());
                match &body {
                    Some(body) => request.body(body.clone()),
                    None => request,
                }
            })
            .await
    }

    /// The rows of a collection `GET`.
    async fn get_rows(
        &self,
        ctx: &RequestContext,
        url: Url,
        extra: &[(&'static str, &'static str)],
    ) -> Result<Vec<Map<String, Value>>, HttpAdapterError> {
        let response = self.send(ctx, Method::GET, url, None, extra).await?;
        Ok(read_json::<Collection>(ctx, response).await?.value)
    }

    /// The id of the row a create or upsert wrote: the `pk` member of the representation, or
    /// the `OData-EntityId` header of a 204; with the row's version after the write, when the
    /// answer gives it (the representation's `@odata.etag`, else an `ETag` header).
    async fn written(
        ctx: &RequestContext,
        response: reqwest::Response,
        pk: &str,
    ) -> Result<(DataverseId, Option<String>), HttpAdapterError> {
        let header = entity_id_header(response.headers());
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if response.status() == StatusCode::NO_CONTENT {
            let id = header.ok_or_else(|| {
                HttpAdapterError::decode(ctx, "a 204 answer without an OData-EntityId header")
            })?;
            return Ok((id, etag));
        }
        let row: Map<String, Value> = read_json(ctx, response).await?;
        let version = row
            .get(ODATA_ETAG)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(etag);
        let id = guid(&row, pk).or(header).ok_or_else(|| {
            HttpAdapterError::decode(ctx, format!("the answer carries no {pk} GUID"))
        })?;
        Ok((id, version))
    }

    /// The first row of `set` matching `filter`, oldest first; its primary key.
    async fn find_id(
        &self,
        ctx: &RequestContext,
        set: &str,
        pk: &str,
        filter: String,
    ) -> Result<Option<DataverseId>, PortError> {
        let url = self.url(
            set,
            &[
                ("$select", pk.to_owned()),
                ("$filter", filter),
                ("$orderby", format!("{CREATED_ON_COLUMN} asc")),
                ("$top", "1".to_owned()),
            ],
        )?;
        let rows = self.get_rows(ctx, url, &[]).await?;
        Ok(rows.first().and_then(|row| guid(row, pk)))
    }

    /// `POST {set}` with `Prefer: return=representation`; the new row's primary key.
    async fn create(
        &self,
        ctx: &RequestContext,
        set: &str,
        pk: &str,
        body: &Map<String, Value>,
    ) -> Result<DataverseId, PortError> {
        let url = self.url(set, &[("$select", pk.to_owned())])?;
        let response = self
            .send(
                ctx,
                Method::POST,
                url,
                Some(body),
                &[("prefer", PREFER_REPRESENTATION)],
            )
            .await?;
        Ok(Self::written(ctx, response, pk).await?.0)
    }

    // -----------------------------------------------------------------------------------------
    // Currencies
    // -----------------------------------------------------------------------------------------

    fn cache(&self) -> std::sync::MutexGuard<'_, CurrencyCache> {
        self.currencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remember_currency(&self, code: CurrencyCode, id: DataverseId) {
        let mut cache = self.cache();
        cache.by_code.insert(code, id);
    }

    /// The `transactioncurrency` row of `code`: cached, or one
    /// `GET transactioncurrencies?$filter=isocurrencycode eq '…'`. A currency the environment
    /// lacks is permanent (an administrator adds it; a miss is not cached, so the next sync
    /// after that finds it).
    pub async fn currency_id(&self, code: CurrencyCode) -> Result<DataverseId, PortError> {
        if let Some(id) = self.cache().by_code.get(&code).copied() {
            return Ok(id);
        }
        let f = &self.mapping.dataverse.opportunity;
        let ctx = Self::ctx("look up a currency");
        let url = self.url(
            &f.currency_entity_set,
            &[
                ("$select", CURRENCY_ID_COLUMN.to_owned()),
                (
                    "$filter",
                    format!("{} eq {}", f.currency_iso_code, odata_string(code.as_str())),
                ),
                ("$top", "1".to_owned()),
            ],
        )?;
        let rows = self.get_rows(&ctx, url, &[]).await?;
        let Some(id) = rows.first().and_then(|row| guid(row, CURRENCY_ID_COLUMN)) else {
            return Err(dataverse_error(format!(
                "currency {code} is not set up in Dataverse: add it under Settings → Business \
                 Management → Currencies (ISO currency code {code}), then retry the sync",
                code = code.as_str()
            )));
        };
        self.remember_currency(code, id);
        Ok(id)
    }

    // -----------------------------------------------------------------------------------------
    // Opportunities
    // -----------------------------------------------------------------------------------------

    /// The opportunity columns the mapping reads.
    /// The query options of one [`CrmStore::list_opportunities`] page: the keyset condition
    /// in `$filter`, the order `(modifiedon, <id>)` and `$top` (docs/dataverse.md#paging).
    /// Comparing the primary key with `gt` lets the service order and compare the GUIDs
    /// alike (SQL Server does not order them as their text); the code never compares them.
    pub fn list_query(&self, query: &OpportunityQuery) -> Result<Vec<(&str, String)>, PortError> {
        let f = &self.mapping.dataverse.opportunity;
        let at = query
            .modified_since
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let changed = match &query.after {
            None => format!("{MODIFIED_ON_COLUMN} ge {at}"),
            Some(record) => {
                let last = dataverse_id(record, "opportunity")?;
                format!(
                    "({MODIFIED_ON_COLUMN} gt {at} or ({MODIFIED_ON_COLUMN} eq {at} and {} gt {last}))",
                    f.id
                )
            }
        };
        Ok(vec![
            (
                "$select",
                format!(
                    "{},{MODIFIED_ON_COLUMN},{MODIFIED_BY_VALUE}",
                    self.opportunity_select()
                ),
            ),
            ("$filter", format!("{} eq true and {changed}", f.sync)),
            ("$orderby", format!("{MODIFIED_ON_COLUMN} asc,{} asc", f.id)),
            ("$top", query.top.max(1).to_string()),
            ("$expand", self.opportunity_expand()),
        ])
    }

    fn opportunity_select(&self) -> String {
        let f = &self.mapping.dataverse.opportunity;
        [
            f.id.clone(),
            f.name.clone(),
            f.estimated_value.clone(),
            f.estimated_close_date.clone(),
            f.description.clone(),
            lookup_value_key(&f.currency),
            lookup_value_key(&f.parent_account),
            lookup_value_key(&f.parent_contact),
            f.state_code.clone(),
            f.status_code.clone(),
            f.sync.clone(),
            f.referral_identifier.clone(),
            f.referral_link.clone(),
            f.help.clone(),
            f.visibility.clone(),
            f.solutions.clone(),
            f.microsoft_crm_identifier.clone(),
            f.solution_area.clone(),
            f.solution_play.clone(),
            f.partner_role.clone(),
            f.audit.clone(),
        ]
        .join(",")
    }

    fn account_select(&self) -> String {
        let f = &self.mapping.dataverse.account;
        [
            &f.id,
            &f.name,
            &f.address_line1,
            &f.city,
            &f.state,
            &f.postal_code,
            &f.country,
        ]
        .map(String::as_str)
        .join(",")
    }

    fn contact_select(&self) -> String {
        let f = &self.mapping.dataverse.contact;
        [&f.id, &f.first_name, &f.last_name, &f.email, &f.phone]
            .map(String::as_str)
            .join(",")
    }

    /// The `$expand` of an opportunity read: its account, contact and currency lookups
    /// (single-valued navigation properties named like the lookups), each with its own
    /// `$select` (docs/dataverse.md#related-rows-in-one-read).
    pub fn opportunity_expand(&self) -> String {
        let f = &self.mapping.dataverse.opportunity;
        format!(
            "{}($select={}),{}($select={}),{}($select={})",
            f.parent_account,
            self.account_select(),
            f.parent_contact,
            self.contact_select(),
            f.currency,
            f.currency_iso_code,
        )
    }

    /// An opportunity row read with [`opportunity_expand`](Self::opportunity_expand): the
    /// expanded account, contact and currency are read from the row (`null` when the lookup is
    /// unset); the currency seen is remembered for later writes.
    fn expanded_opportunity(&self, row: &Map<String, Value>) -> CrmOpportunity {
        let f = &self.mapping.dataverse.opportunity;
        if let Some(currency) = row.get(&f.currency).and_then(Value::as_object)
            && let (Some(id), Some(code)) = (
                guid(currency, CURRENCY_ID_COLUMN),
                currency
                    .get(&f.currency_iso_code)
                    .and_then(Value::as_str)
                    .and_then(|text| CurrencyCode::try_from(text).ok()),
            )
        {
            self.remember_currency(code, id);
        }
        let related = |property: &str| row.get(property).and_then(Value::as_object);
        let record = DataverseRecord {
            opportunity: row,
            account: related(&f.parent_account),
            contact: related(&f.parent_contact),
            currency: None,
        };
        opportunity_from_dataverse(&record, &self.mapping)
    }
}

impl CrmStore for DataverseStore {
    fn kind(&self) -> CrmKind {
        CrmKind::Dataverse
    }

    /// `GET opportunities?$filter=<referral column> eq '<id>'` (see the module docs).
    #[tracing::instrument(skip_all, fields(referral_id = %referral_id))]
    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        let f = &self.mapping.dataverse.opportunity;
        let ctx = Self::ctx("find the opportunity of a referral");
        let url = self.url(
            &f.entity_set,
            &[
                ("$select", self.opportunity_select()),
                (
                    "$filter",
                    format!(
                        "{} eq {}",
                        f.referral_identifier,
                        odata_string(&referral_id.to_string())
                    ),
                ),
                ("$top", "1".to_owned()),
                (
                    "$expand",
                    format!("{}($select={})", f.currency, f.currency_iso_code),
                ),
            ],
        )?;
        let rows = self
            .get_rows(&ctx, url, &[("prefer", PREFER_FORMATTED_VALUES)])
            .await?;
        Ok(rows.first().map(|row| self.expanded_opportunity(row)))
    }

    /// `GET opportunities?$filter=<sync column> eq true and (modifiedon gt <t> or (modifiedon eq
    /// <t> and <id> gt <last id>))&$orderby=modifiedon asc,<id> asc&$top=<n>`
    /// ([`list_query`](Self::list_query)): one page of a keyset walk, bounded by `$top`. No
    /// `@odata.nextLink` is followed or kept. Each row carries its account, contact and currency.
    #[tracing::instrument(skip_all)]
    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        let f = &self.mapping.dataverse.opportunity;
        let ctx = Self::ctx("list the opportunities modified since the checkpoint");
        let url = self.url(&f.entity_set, &self.list_query(query)?)?;
        let response = self
            .send(
                &ctx,
                Method::GET,
                url,
                None,
                &[("prefer", PREFER_FORMATTED_VALUES)],
            )
            .await?;
        let page: CollectionPage = read_json(&ctx, response).await?;
        let items = page
            .value
            .iter()
            .map(|row| ListedOpportunity {
                opportunity: self.expanded_opportunity(row),
                modified_at: row
                    .get(MODIFIED_ON_COLUMN)
                    .and_then(Value::as_str)
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                    .map(|at| at.with_timezone(&chrono::Utc)),
                modified_by: row
                    .get(MODIFIED_BY_VALUE)
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                complete: true,
            })
            .collect();
        Ok(OpportunityPage { items })
    }

    /// `GET opportunities(<id>)?$select=…&$expand=<account>(…),<contact>(…),<currency>(…)`:
    /// the row with its account, contact and currency in one request (see the module docs).
    #[tracing::instrument(skip_all, fields(crm = %id))]
    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        let id = dataverse_id(id, "opportunity")?;
        let f = &self.mapping.dataverse.opportunity;
        let ctx = Self::ctx("read an opportunity").with_resource(format!("{} {id}", f.entity));
        let url = self.url(
            &format!("{}({id})", f.entity_set),
            &[
                ("$select", self.opportunity_select()),
                ("$expand", self.opportunity_expand()),
            ],
        )?;
        let response = self
            .send(
                &ctx,
                Method::GET,
                url,
                None,
                &[("prefer", PREFER_FORMATTED_VALUES)],
            )
            .await?;
        let row: Map<String, Value> = read_json(&ctx, response).await?;
        Ok(self.expanded_opportunity(&row))
    }

    /// The upsert (see the module docs): a new account and its new contact first in one
    /// deep-insert request ([`create_account_with_contact`](Self::create_account_with_contact)),
    /// or a new account or contact alone in one request ([`create_customer`]); then the
    /// opportunity.
    #[tracing::instrument(skip_all, fields(referral_id = %write.referral_id, record = ?write.record.map(ToString::to_string), scope = ?write.scope))]
    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        let (account, contact) = match (write.new_account, write.new_contact) {
            (None, None) => return self.upsert_linked(write).await,
            (Some(account), Some(contact)) => {
                let (account, contact) = self.create_account_with_contact(account, contact).await?;
                (Some(account), Some(contact))
            }
            _ => create_customer(self, write).await?,
        };
        self.upsert_linked(&write.linked(account.as_ref(), contact.as_ref()))
            .await
    }

    /// A new account with its new contact: the deep insert and the upsert, two requests (see
    /// [`upsert_opportunity`](CrmStore::upsert_opportunity)); anything else is made request by
    /// request.
    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        match operation {
            CombinedOperation::CreateWithCustomer { records: 2 }
            | CombinedOperation::WriteAndClose => {
                Some(ApiRequest::DataverseRequests { requests: 2 })
            }
            _ => None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Accounts, contacts, audit
    // -----------------------------------------------------------------------------------------

    /// `GET accounts?$filter=name eq '…' and address1_postalcode eq '…'` (by name alone when no
    /// postal code is given); the oldest match.
    #[tracing::instrument(skip_all)]
    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        let f = &self.mapping.dataverse.account;
        let mut filter = format!("{} eq {}", f.name, odata_string(name.trim()));
        if let Some(postal_code) = postal_code.map(str::trim).filter(|p| !p.is_empty()) {
            filter.push_str(&format!(
                " and {} eq {}",
                f.postal_code,
                odata_string(postal_code)
            ));
        }
        let ctx = Self::ctx("find an account");
        let found = self.find_id(&ctx, &f.entity_set, &f.id, filter).await?;
        Ok(found.map(CrmRecordId::Dataverse))
    }

    /// `POST accounts`.
    #[tracing::instrument(skip_all)]
    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        let f = &self.mapping.dataverse.account;
        let body = dataverse_account_body(account, &self.mapping);
        let ctx = Self::ctx("create an account");
        let id = self.create(&ctx, &f.entity_set, &f.id, &body).await?;
        Ok(CrmRecordId::Dataverse(id))
    }

    /// `GET contacts?$filter=emailaddress1 eq '…'`; the oldest match.
    #[tracing::instrument(skip_all)]
    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        let f = &self.mapping.dataverse.contact;
        let filter = format!("{} eq {}", f.email, odata_string(email.trim()));
        let ctx = Self::ctx("find a contact");
        let found = self.find_id(&ctx, &f.entity_set, &f.id, filter).await?;
        Ok(found.map(CrmRecordId::Dataverse))
    }

    /// `POST contacts`, bound to its account when given.
    #[tracing::instrument(skip_all)]
    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        let f = &self.mapping.dataverse.contact;
        let account = account
            .map(|account| dataverse_id(account, "account"))
            .transpose()?;
        let body = dataverse_contact_body(contact, account, &self.mapping);
        let ctx = Self::ctx("create a contact");
        let id = self.create(&ctx, &f.entity_set, &f.id, &body).await?;
        Ok(CrmRecordId::Dataverse(id))
    }

    /// `PATCH opportunities(<id>)` of the audit column, `If-Match: *` (never creates).
    #[tracing::instrument(skip_all, fields(crm = %opportunity))]
    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        let id = dataverse_id(opportunity, "opportunity")?;
        let f = &self.mapping.dataverse.opportunity;
        let mut body = Map::new();
        body.insert(f.audit.clone(), Value::String(text.to_owned()));
        let ctx = Self::ctx("write the audit column").with_resource(format!("{} {id}", f.entity));
        let url = self.url(&format!("{}({id})", f.entity_set), &[])?;
        self.send(&ctx, Method::PATCH, url, Some(&body), &[("if-match", "*")])
            .await?;
        Ok(())
    }
}

impl DataverseStore {
    /// `POST accounts` with the new contact nested in the account's contacts
    /// ([`DataverseAccountFields::contacts`](cosell_domain::mapping::DataverseAccountFields)):
    /// a deep insert, one request that creates both rows or neither, the contact's company set
    /// to the account by the nesting. The contact's primary key is chosen here (Dataverse takes
    /// a primary key given on create), so its id is known without reading it back; the
    /// account's comes from the answer. docs/dataverse.md#service-protection-limits.
    async fn create_account_with_contact(
        &self,
        account: &Account,
        contact: &Contact,
    ) -> Result<(CrmRecordId, CrmRecordId), PortError> {
        let f = &self.mapping.dataverse;
        let contact_id = DataverseId::from(Uuid::new_v4());
        let mut nested = dataverse_contact_body(contact, None, &self.mapping);
        nested.insert(f.contact.id.clone(), Value::String(contact_id.to_string()));
        let mut body = dataverse_account_body(account, &self.mapping);
        body.insert(
            f.account.contacts.clone(),
            Value::Array(vec![Value::Object(nested)]),
        );
        let ctx = Self::ctx("create an account with its contact");
        let account_id = self
            .create(&ctx, &f.account.entity_set, &f.account.id, &body)
            .await?;
        Ok((
            CrmRecordId::Dataverse(account_id),
            CrmRecordId::Dataverse(contact_id),
        ))
    }

    /// The upsert of a write with nothing left to create (see the module docs).
    async fn upsert_linked(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        let f = &self.mapping.dataverse.opportunity;
        let record = write
            .record
            .map(|record| dataverse_id(record, "opportunity"))
            .transpose()?;
        let links = DataverseLinks {
            currency: match write.opportunity.deal_value {
                Some(money) => Some(self.currency_id(money.currency).await?),
                None => None,
            },
            account: write
                .account
                .map(|account| dataverse_id(account, "account"))
                .transpose()?,
            contact: write
                .contact
                .map(|contact| dataverse_id(contact, "contact"))
                .transpose()?,
        };
        let mut body = dataverse_opportunity_body(
            write.opportunity,
            &links,
            write.audit,
            write.scope,
            &self.mapping,
        );
        let referral = write.referral_id.to_string();
        // Dataverse refuses to close an opportunity by setting its state ("use the
        // WinOpportunityRequest message instead"): the other columns are written first (a
        // closed row is read-only), then the row is closed by its action.
        let close = self.take_close(&mut body);
        let upserted = match record {
            Some(id) => {
                body.insert(f.referral_identifier.clone(), Value::String(referral));
                let ctx =
                    Self::ctx("update an opportunity").with_resource(format!("{} {id}", f.entity));
                // The representation carries the row's new version (Link::crm_seen).
                let url = self.url(
                    &format!("{}({id})", f.entity_set),
                    &[("$select", f.id.clone())],
                )?;
                // The version the sync read, so a save made since is not overwritten (412).
                let if_match = write.if_match.unwrap_or("*");
                let response = self
                    .send(
                        &ctx,
                        Method::PATCH,
                        url,
                        Some(&body),
                        &[("if-match", if_match), ("prefer", PREFER_REPRESENTATION)],
                    )
                    .await?;
                let (_, version) = Self::written(&ctx, response, &f.id).await?;
                Upserted {
                    id: CrmRecordId::Dataverse(id),
                    created: false,
                    version,
                }
            }
            None => {
                // The key is in the URL; on update Dataverse drops it from the body anyway.
                body.remove(&f.referral_identifier);
                let ctx = Self::ctx("upsert an opportunity by its referral id");
                let url = self.url(
                    &format!(
                        "{}({}={})",
                        f.entity_set,
                        f.referral_identifier,
                        odata_string(&referral)
                    ),
                    &[("$select", f.id.clone())],
                )?;
                let response = self
                    .send(
                        &ctx,
                        Method::PATCH,
                        url,
                        Some(&body),
                        &[("prefer", PREFER_REPRESENTATION)],
                    )
                    .await?;
                let created = match response.status() {
                    StatusCode::CREATED => true,
                    StatusCode::OK => false,
                    other => {
                        tracing::warn!(status = %other, "the upsert answer does not say whether it created the row; assuming an update");
                        false
                    }
                };
                let (id, version) = Self::written(&ctx, response, &f.id).await?;
                Upserted {
                    id: CrmRecordId::Dataverse(id),
                    created,
                    version,
                }
            }
        };
        let Some(close) = close else {
            return Ok(upserted);
        };
        self.close(&upserted.id, close).await?;
        // The action answers no version: the row is read before it is next written.
        Ok(Upserted {
            version: None,
            ..upserted
        })
    }

    /// Takes `statecode` / `statuscode` out of an opportunity body that closes the row (the
    /// won or lost state), for [`Self::close`].
    fn take_close(&self, body: &mut Map<String, Value>) -> Option<Close> {
        let f = &self.mapping.dataverse.opportunity;
        let codes = &self.mapping.dataverse.status_codes;
        let state = body.get(&f.state_code).and_then(Value::as_i64)?;
        let won = if state == codes.won_state {
            true
        } else if state == codes.lost_state {
            false
        } else {
            return None;
        };
        body.remove(&f.state_code);
        let status = body
            .remove(&f.status_code)
            .and_then(|status| status.as_i64());
        Some(Close { won, status })
    }

    /// `POST WinOpportunity` / `POST LoseOpportunity` (unbound actions): closes the opportunity
    /// with the status reason and an `opportunityclose` activity, as the documented way to
    /// close one (docs/dataverse.md#closing-an-opportunity).
    async fn close(&self, opportunity: &CrmRecordId, close: Close) -> Result<(), PortError> {
        let f = &self.mapping.dataverse.opportunity;
        let id = dataverse_id(opportunity, "opportunity")?;
        let (action, subject) = if close.won {
            (
                "WinOpportunity",
                "Won: the referral was closed as won in Partner Center",
            )
        } else {
            (
                "LoseOpportunity",
                "Lost: the referral was closed in Partner Center",
            )
        };
        let mut activity = Map::new();
        activity.insert("subject".into(), Value::String(subject.into()));
        activity.insert(
            "opportunityid@odata.bind".into(),
            Value::String(format!("/{}({id})", f.entity_set)),
        );
        let mut body = Map::new();
        if let Some(status) = close.status {
            body.insert("Status".into(), status.into());
        }
        body.insert("OpportunityClose".into(), Value::Object(activity));
        let ctx = Self::ctx(if close.won {
            "close an opportunity as won"
        } else {
            "close an opportunity as lost"
        })
        .with_resource(format!("{} {id}", f.entity));
        let url = self.url(action, &[])?;
        self.send(&ctx, Method::POST, url, Some(&body), &[]).await?;
        Ok(())
    }
}

/// How [`DataverseStore::close`] closes an opportunity.
#[derive(Debug, Clone, Copy)]
struct Close {
    /// Won (`WinOpportunity`) or lost (`LoseOpportunity`).
    won: bool,
    /// The status reason (`statuscode`) to close with.
    status: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    use crate::http::EntraClientCredentialsConfig;
    use crate::http::tokens::dataverse_scope;

    fn store(url: &str) -> Result<DataverseStore, HttpAdapterError> {
        let tokens = EntraClientCredentials::new(
            reqwest::Client::new(),
            EntraClientCredentialsConfig {
                authority: "https://login.microsoftonline.com".into(),
                tenant: "tenant".into(),
                client_id: "client".into(),
                client_secret: SecretString::from("secret"),
                scope: dataverse_scope("https://contoso.crm.dynamics.com"),
                credential_label: None,
            },
        )?;
        DataverseStore::new(
            reqwest::Client::new(),
            tokens,
            DataverseConfig::new(url, MappingConfig::default()),
        )
    }

    #[test]
    fn odata_literals_double_quotes_and_queries_keep_dollar_keys() {
        assert_eq!(odata_string("O'Brien"), "'O''Brien'");
        assert_eq!(
            odata_query(&[
                ("$filter", "name eq 'A & B'".to_owned()),
                ("$top", "1".into())
            ]),
            "$filter=name%20eq%20%27A%20%26%20B%27&$top=1"
        );
    }

    #[test]
    fn urls_keep_key_segments_and_encode_what_a_segment_needs() {
        let dv = store("https://contoso.crm.dynamics.com/").unwrap();
        assert_eq!(
            dv.base_url().as_str(),
            "https://contoso.crm.dynamics.com/api/data/v9.2/"
        );
        let url = dv
            .url(
                "opportunities(msft_x='4111fffc-f9ee-4d53-bba6-569135228642')",
                &[("$select", "opportunityid".into())],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://contoso.crm.dynamics.com/api/data/v9.2/opportunities(msft_x='4111fffc-f9ee-4d53-bba6-569135228642')?$select=opportunityid"
        );
        let odd = dv.url("accounts(name='a/b?c')", &[]).unwrap();
        assert_eq!(odd.path(), "/api/data/v9.2/accounts(name='a%2Fb%3Fc')");
        assert!(store("contoso.crm.dynamics.com").is_err());
    }

    #[test]
    fn entity_id_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "odata-entityid",
            HeaderValue::from_static(
                "https://x.crm.dynamics.com/api/data/v9.2/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)",
            ),
        );
        assert_eq!(
            entity_id_header(&headers).map(|id| id.to_string()),
            Some("7eb682f1-ca75-e511-80d4-00155d2a68d1".to_owned())
        );
    }

    #[test]
    fn a_salesforce_id_is_refused_with_a_permanent_error() {
        let id = CrmRecordId::try_from("salesforce:006000000000001").unwrap();
        let err = dataverse_id(&id, "opportunity").unwrap_err();
        assert!(matches!(err, PortError::Permanent { .. }), "{err:?}");
        assert!(err.to_string().contains("Salesforce record"), "{err}");
    }
}
