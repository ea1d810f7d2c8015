//! Dataverse (Dynamics 365) stand-in: the Web API and webhooks (docs/dataverse.md).
//!
//! # Web API — `/api/data/{v9.0|v9.1|v9.2}/…`
//!
//! Every request needs `Authorization: Bearer <token>` issued for audience = the sandbox
//! base URL (trailing slash optional; Entra `client_credentials` with scope
//! `{base_url}/.default`, or `POST /_sandbox/tokens`). The token's subject is the acting
//! `systemuserid` and must be a row of `systemusers`.
//!
//! | method | path | statuses |
//! |---|---|---|
//! | GET | `/{set}` with `$select`, `$filter`, `$orderby`, `$top`, `$count`, `$expand` (single-valued navigation properties, see `expand.rs`); `Prefer: odata.maxpagesize=n` pages with `@odata.nextLink` | 200, 400, 401, 403, 404, 501 (`$apply`, `fetchXml`, `$filter`/`$orderby`/`$top` inside `$expand`) |
//! | GET | `/{set}({id})`, `/{set}(key='v',…)` with `$select`, `$expand`; `If-None-Match: W/"n"` | 200, 304, 400, 401, 404 |
//! | POST | `/{set}` create; `Prefer: return=representation` | 204 + `OData-EntityId`, 201 + body, 400, 401, 404, 412 (duplicate key) |
//! | PATCH | `/{set}({id})`, `/{set}(key='v',…)` upsert; `If-Match: *` / `If-Match: W/"n"` / `If-None-Match: *`; `Prefer: return=representation` | 204 + `OData-EntityId`, 201 (created) / 200 (updated) + body, 400, 401, 404, 412 |
//! | GET | `/WhoAmI` (or `WhoAmI()`) | 200, 401 |
//! | GET | `/EntityDefinitions`, `/EntityDefinitions(LogicalName='x')`, `…/Attributes`, `…/Keys` (`$select`, `$filter`); choice columns (`statecode`, `statuscode`, picklists) carry `OptionSet.Options[{Value, Label}]` inline | 200, 400, 401, 404 |
//! | DELETE | `/{set}({id})`; GET of `/{set}({id})/{property}` | 501 (not implemented by the sandbox) |
//! | other methods | | 405 |
//!
//! `$select`, `$filter` and `$orderby` name lookups by their read name
//! (`_parentaccountid_value`); property names are case-sensitive; unquoted GUID literals
//! work (`_parentaccountid_value eq 6d81…`); `$skip` is refused (400) as in Dataverse;
//! `$count=true` counts every match. A 403 `0x80072560` "The user is not a member of the
//! organization." answers tokens whose subject is not an enabled `systemusers` row.
//!
//! Entity sets: `opportunities`, `accounts`, `contacts`, `transactioncurrencies` (USD,
//! EUR, GBP, CAD, AUD, JPY, INR, CHF; ids from [`currency_id`]), `systemusers` (the
//! connector's application user and a seller, see `identities.rs`), `serviceendpoints`
//! (webhook registrations; `authvalue` is write-only). Alternate keys:
//! `opportunities(msft_microsoftpartnercenterreferralidentifier='…')`,
//! `accounts(accountnumber='…')`, `contacts(emailaddress1='…')`.
//!
//! Errors use the Dataverse body `{"error":{"code","message"}}`: unknown entity set →
//! 404 `0x8006088a` "Resource not found for the segment 'x'."; unknown `$select`/`$filter`
//! property → 400 `0x0` "Could not find a property named 'x' on type
//! 'Microsoft.Dynamics.CRM.opportunity'."; unknown column in a write → 400 `0x80048d19`
//! "… Invalid property 'x' was found in entity 'Microsoft.Dynamics.CRM.opportunity'.";
//! malformed JSON → 400 `0x80048d19`; missing row → 404 "opportunity With Id = … Does Not
//! Exist"; stale `If-Match` → 412 "The version of the existing record doesn't match the
//! RowVersion property provided."; `If-None-Match: *` on an existing row → 412 "A record
//! with matching key values already exists."; missing/unknown/expired token or wrong
//! audience → 401 (+ `WWW-Authenticate: Bearer authorization_uri=…, resource_id=…`).
//!
//! Write rules: `@odata.bind` (`parentaccountid@odata.bind: "/accounts(<id>)"`,
//! `customerid_account@odata.bind`, `customerid_contact@odata.bind`,
//! `transactioncurrencyid@odata.bind`, `ownerid@odata.bind: "/systemusers(<id>)"`, by id
//! or alternate key; `null` clears) reads back as `_x_value`; values are type-checked
//! (`estimatedclosedate` is `Edm.Date` `YYYY-MM-DD`, money is a JSON number, …); the
//! server sets `createdon`/`modifiedon` (UTC `Z`), `_createdby_value`/`_modifiedby_value`
//! (acting user), `_ownerid_value`, `versionnumber` (one counter for the environment, the
//! ETag `W/"n"`), `statecode` 0 / `statuscode` 1 on create, and a default currency (USD)
//! on opportunities. `statuscode` must belong to `statecode` (opportunity: 0 Open → 1/2,
//! 1 Won → 3, 2 Lost → 4/5; account/contact: 0 → 1, 1 → 2); a `statecode` without
//! `statuscode` gets the state's default status. A Won/Lost opportunity is read-only: a
//! PATCH that changes other columns without reopening (`statecode` 0) gets 400.
//! Alternate-key values are unique (412).
//!
//! # Webhooks
//!
//! A close (`WinOpportunity` / `LoseOpportunity`, or the control route below) raises the `Win` /
//! `Lose` message instead: `InputParameters` `OpportunityClose` (an `opportunityclose` entity
//! whose `opportunityid` references the row) and `Status`, no images, and the nil GUID as
//! `PrimaryEntityId` (as plug-in authors report for these messages).
//!
//! After each create/update of an opportunity (other tables via the webhook options), a
//! `RemoteExecutionContext` (shaped like the documented sample; Mode 1 async, Stage 40
//! PostOperation, `PostEntityImages` `[{"key":"PostImage",…}]` with every non-null
//! column) is POSTed to every `serviceendpoints` row with `contract` 8 and to the
//! default target (`SandboxConfig::dataverse_webhook_url`, or the one set with
//! `PUT /_sandbox/dataverse/webhook`). Auth per target: `authtype` 4 WebhookKey →
//! `?code=<authvalue>`, 5 HttpHeader → headers, 6 HttpQueryString → query pairs (5/6 take
//! `<settings><setting name="k" value="v"/></settings>`). Delivery retries once, only
//! after 502/503/504.
//!
//! # Control API (no auth, not logged, never faulted)
//!
//! | method | path | statuses |
//! |---|---|---|
//! | PUT | `/_sandbox/dataverse/{set}/{id}?as_user=<systemuserid>` — seed/replace a row given exactly as the Web API returns it (default writer: the seller); emits the Create/Update webhook | 201 created / 200 replaced + row (header `x-sandbox-deliveries`), 400, 404, 409 |
//! | POST | `/_sandbox/dataverse/opportunities/{id}/win` or `…/lose` `?status=<statuscode>&as_user=<systemuserid>` — a close in the app (default: the seller), as `WinOpportunity` / `LoseOpportunity`; emits the `Win` / `Lose` webhook | 200 + row (header `x-sandbox-deliveries`), 400, 404 |
//! | GET | `/_sandbox/dataverse/{set}/{id}` — raw read | 200, 404 |
//! | GET | `/_sandbox/dataverse/{set}` — every row | 200, 404 |
//! | PUT | `/_sandbox/dataverse/webhook` `{"url","authtype"?,"authvalue"?}` — default target (`authtype` 4/5/6 or `WebhookKey`/`HttpHeader`/`HttpQueryString`) | 204, 400 |
//! | DELETE | `/_sandbox/dataverse/webhook` — no default target (not even the configured one) | 204 |
//! | GET, POST | `/_sandbox/dataverse/webhook-options` `{"size_exceeded","entities","filtering_attributes","pre_image","honour_bypass_headers"}` (POST merges) | 200, 400 |
//! | GET | `/_sandbox/dataverse/schema/{table}` — columns, keys, states | 200, 404 |
//! | DELETE | `/_sandbox/dataverse/schema/{table}/{column}` — remove a column (and its data) | 204, 404 |
//! | PUT | `/_sandbox/dataverse/schema/{table}/{column}` — restore a standard column, or add one with a body such as `{"type":"String","max_length":100}` | 204, 400, 404 |
//!
//! `{table}` is the logical name (`opportunity`) or the entity set (`opportunities`).
//!
//! # Choices where the reference is silent (UNKNOWN / [?])
//!
//! - Error `code`s: the documented ones (`0x8006088a`, `0x0`); others frequently empty
//!   per the docs, so the fixtures' `""` is used for 404/412; `0x80048d19` for payload
//!   errors ("Error identified in Payload provided by the user…", as real services answer).
//! - A bind to a missing row → 404 "`<table> With Id = <id> Does Not Exist`" (the platform's
//!   ObjectDoesNotExist error, 404 like a missing target row).
//! - `If-Match: W/"n"` on a missing row → 404 (an `If-Match` makes the PATCH update-only).
//! - With `Prefer: return=representation` no `OData-EntityId` header (documented for
//!   POST; assumed for PATCH too).
//! - Webhook `Content-Type: application/json`; `x-ms-dynamics-organization` = the host of
//!   the base URL; `x-ms-correlation-request-id` = `CorrelationId`;
//!   `x-ms-dynamics-msg-size-exceeded: true`. Over 256 KB the four members are removed
//!   (not emptied). `CorrelationId` is per write, `OperationId` per write and target; both
//!   are unchanged on the retry (the body is re-sent as is). Update `Target` = the columns
//!   the request wrote (Dataverse does not diff; a seed, like a form save, sends only
//!   changed columns) + the primary key, `modifiedon`, `modifiedby`, `modifiedonbehalfby`.
//!   Post image = non-null columns. `OperationCreatedOn` is UTC without offset.
//! - Custom co-sell column types (see `schema.rs`), the alternate keys (a real org needs
//!   them created) and the `authvalue` settings XML (`[3p]`) follow the robust reading.
//! - Whether `MSCRM.BypassBusinessLogicExecution: CustomAsync` /
//!   `MSCRM.BypassCustomPluginExecution: true` suppress a webhook step is [?]: by default
//!   they do not (the connector must filter on `UserId`); the webhook option
//!   `honour_bypass_headers` switches suppression on.
//! - Creating a row in a closed state with a compatible status is allowed; moving a closed
//!   opportunity between Won and Lost without reopening is allowed (only state columns
//!   change).
//! - Port 80/443 restriction on webhook URLs is not enforced (the listeners use free ports).

mod control;
mod expand;
mod keys;
mod schema;
mod store;
mod webapi;
mod webhook;

use std::collections::HashMap;

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::errors;
use crate::records::Table;
use crate::state::AppState;

pub use schema::{Access, Column, Kind, TableDef};
pub use webhook::{ControlTarget, Options as WebhookOptions};

/// Webhook payloads above this size lose their images and input parameters.
pub const WEBHOOK_SIZE_LIMIT: usize = 256 * 1024;

/// The seeded `transactioncurrencies` rows: ISO code, id, name, symbol.
pub const CURRENCIES: &[(&str, &str, &str, &str)] = &[
    (
        "USD",
        "0c1d7e0a-0000-4000-8000-000000000840",
        "US Dollar",
        "$",
    ),
    ("EUR", "0c1d7e0a-0000-4000-8000-000000000978", "Euro", "€"),
    (
        "GBP",
        "0c1d7e0a-0000-4000-8000-000000000826",
        "Pound Sterling",
        "£",
    ),
    (
        "CAD",
        "0c1d7e0a-0000-4000-8000-000000000124",
        "Canadian Dollar",
        "CA$",
    ),
    (
        "AUD",
        "0c1d7e0a-0000-4000-8000-000000000036",
        "Australian Dollar",
        "A$",
    ),
    ("JPY", "0c1d7e0a-0000-4000-8000-000000000392", "Yen", "¥"),
    (
        "INR",
        "0c1d7e0a-0000-4000-8000-000000000356",
        "Indian Rupee",
        "₹",
    ),
    (
        "CHF",
        "0c1d7e0a-0000-4000-8000-000000000756",
        "Swiss Franc",
        "CHF",
    ),
];

/// `transactioncurrencyid` of a seeded currency (`"USD"` is the base currency).
pub fn currency_id(iso: &str) -> Option<&'static str> {
    CURRENCIES
        .iter()
        .find(|(code, ..)| code.eq_ignore_ascii_case(iso))
        .map(|(_, id, ..)| *id)
}

/// In-memory state of this service: schema, rows and webhook settings.
#[derive(Debug)]
pub struct State {
    schema: Vec<TableDef>,
    tables: HashMap<&'static str, Table>,
    /// Last `versionnumber` handed out (one counter for the environment, like SQL rowversion).
    version: u64,
    hook: webhook::Settings,
}

impl Default for State {
    fn default() -> Self {
        let schema = schema::default_tables();
        let tables = schema
            .iter()
            .map(|t| (t.logical, Table::default()))
            .collect();
        let mut state = Self {
            schema,
            tables,
            version: 1_000_000,
            hook: webhook::Settings::default(),
        };
        state.seed_reference_data();
        state
    }
}

/// API routes.
pub fn routes() -> Router<AppState> {
    webapi::routes()
}

/// Seeding routes under `/_sandbox/`.
pub fn control_routes() -> Router<AppState> {
    control::routes()
}

/// A Web API error, rendered as `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 for an unknown entity set, function or segment.
    pub fn segment(segment: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "0x8006088a",
            format!("Resource not found for the segment '{segment}'."),
        )
    }

    /// 400 for an unknown property in `$select`, `$filter`, `$orderby`.
    pub fn no_property(name: &str, def: &TableDef) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "0x0",
            format!(
                "Could not find a property named '{name}' on type '{}'.",
                def.entity_type()
            ),
        )
    }

    /// 400 for a payload the OData reader rejects (wrapped like the service does).
    pub fn payload(set: &str, inner: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "0x80048d19",
            format!(
                "Error identified in Payload provided by the user for Entity :'{set}', For more \
                 information on this error please follow this help link \
                 https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : {inner}"
            ),
        )
    }

    /// 400 for an unknown column in a write.
    pub fn invalid_property(name: &str, def: &TableDef) -> Self {
        Self::payload(
            def.set,
            format!(
                "Microsoft.Crm.CrmException: Invalid property '{name}' was found in entity '{}'.",
                def.entity_type()
            ),
        )
    }

    /// 404 for a missing row (message as in the documented sample).
    pub fn does_not_exist(logical: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "",
            format!("{logical} With Id = {id} Does Not Exist"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "0x0", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = errors::dataverse(self.status, self.code, &self.message);
        response
            .headers_mut()
            .insert("odata-version", HeaderValue::from_static("4.0"));
        response
    }
}
