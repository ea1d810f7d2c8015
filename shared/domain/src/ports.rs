//! The port traits the adapters implement, and the value types they exchange.
//!
//! Ports are capability-sized (a function's signature mirrors its IAM policy), statically
//! dispatched (handlers are generic over them; no `dyn`, no `async_trait`), and use
//! return-position `impl Future<Output = …> + Send`, so a handler future stays `Send` for
//! `lambda_http::run`. No runtime is assumed.
//!
//! Every port returns [`PortError`], whose variants make the retry decision explicit.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Add;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ParseError;
use crate::ids::{CrmKind, CrmRecordId, ETag, EngagementId, ReferralId};
use crate::mapping::BodyScope;
use crate::opportunity::{Account, Contact, CrmOpportunity, Opportunity, OpportunityStage};
use crate::referral::{PatchOp, Referral, ReferralPage};
use crate::status::ReferralStatus;
use crate::sync::FieldConflict;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The external service a port talks to, for messages and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// The Partner Center Referrals API.
    PartnerCenter,
    /// The Partner Center webhook registration API.
    PartnerCenterWebhooks,
    /// Token endpoints (Microsoft Entra ID, Salesforce OAuth).
    Identity,
    /// The Dataverse Web API.
    Dataverse,
    /// The Salesforce REST API.
    Salesforce,
    /// The idempotency table.
    IdempotencyStore,
    /// The retry queue.
    RetryQueue,
    /// The audit log table.
    AuditLog,
    /// The referral ⇄ CRM link table.
    LinkStore,
    /// Anything else.
    Other(String),
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PartnerCenter => "Partner Center",
            Self::PartnerCenterWebhooks => "Partner Center webhooks",
            Self::Identity => "the identity provider",
            Self::Dataverse => "Dataverse",
            Self::Salesforce => "Salesforce",
            Self::IdempotencyStore => "the idempotency store",
            Self::RetryQueue => "the retry queue",
            Self::AuditLog => "the audit log",
            Self::LinkStore => "the link store",
            Self::Other(name) => name,
        })
    }
}

impl From<CrmKind> for Service {
    fn from(kind: CrmKind) -> Self {
        match kind {
            CrmKind::Dataverse => Self::Dataverse,
            CrmKind::Salesforce => Self::Salesforce,
        }
    }
}

/// The one error type of every port. The variant decides whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Worth retrying later: 5xx, 429, timeouts, a token still rejected after a refresh.
    #[error(
        "{service} is temporarily unavailable: {reason}{}",
        retry_hint(retry_after)
    )]
    Transient {
        /// The service.
        service: Service,
        /// What happened (no secrets, no contact data).
        reason: String,
        /// How long the service asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Will fail again unchanged: validation errors and other 4xx. The message is actionable.
    #[error("{service} rejected the request: {message}")]
    Permanent {
        /// The service.
        service: Service,
        /// What to fix.
        message: String,
    },
    /// The record does not exist (404).
    #[error("{service}: {what} was not found")]
    NotFound {
        /// The service.
        service: Service,
        /// What was looked for, e.g. "referral 4111fffc-…".
        what: String,
    },
    /// The record changed since it was read (412 on `If-Match`).
    #[error(
        "{service}: the record changed since it was read (412 Precondition Failed); it will be \
         re-read and the change applied again"
    )]
    PreconditionFailed {
        /// The service.
        service: Service,
    },
    /// The credentials lack a permission (401 after refresh / 403).
    #[error("{service} denied access: {message}{}", role_hint(missing_role))]
    AccessDenied {
        /// The service.
        service: Service,
        /// The role or permission to grant, when known (e.g. "Referrals admin").
        missing_role: Option<String>,
        /// What was denied.
        message: String,
    },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| format!(" (retry after {} s)", d.as_secs()))
}

fn role_hint(role: &Option<String>) -> String {
    role.as_ref().map_or_else(String::new, |r| {
        format!(". Fix: grant the {r} role to the connector's user")
    })
}

impl PortError {
    /// Whether the operation should be retried: transient failures, and a failed precondition
    /// (a retried job re-reads the record first, so the second attempt uses a fresh ETag).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. } | Self::PreconditionFailed { .. }
        )
    }

    /// The wait the service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The service that failed.
    pub fn service(&self) -> &Service {
        match self {
            Self::Transient { service, .. }
            | Self::Permanent { service, .. }
            | Self::NotFound { service, .. }
            | Self::PreconditionFailed { service }
            | Self::AccessDenied { service, .. } => service,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partner Center
// ---------------------------------------------------------------------------------------------

/// A query for `GET /v1.0/engagements/referrals`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralQuery {
    /// Only referrals updated at or after this instant (`updatedDateTime ge …`; documented as
    /// filterable only in the 2019 docs). Written at full precision (Partner Center's
    /// timestamps carry 100 ns), so a page can start exactly at a referral already read.
    pub updated_since: Option<DateTime<Utc>>,
    /// Only referrals of this engagement (the related referrals).
    pub engagement_id: Option<EngagementId>,
    /// Only referrals in this status.
    pub status: Option<ReferralStatus>,
    /// Page size (`$top`); the service's default and maximum are UNKNOWN.
    pub top: Option<u32>,
    /// Continue from a previous page's `@odata.nextLink` (used as is; the other fields are
    /// ignored then).
    pub next_link: Option<String>,
}

impl ReferralQuery {
    /// The OData `$filter` expression for the set conditions, `None` when there are none.
    pub fn odata_filter(&self) -> Option<String> {
        let mut clauses = Vec::new();
        if let Some(since) = self.updated_since {
            clauses.push(format!(
                "updatedDateTime ge {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ));
        }
        if let Some(engagement) = &self.engagement_id {
            clauses.push(format!("engagementId eq '{engagement}'"));
        }
        if let Some(status) = &self.status {
            clauses.push(format!(
                "status eq '{}'",
                status.as_str().replace('\'', "''")
            ));
        }
        (!clauses.is_empty()).then(|| clauses.join(" and "))
    }
}

/// The Partner Center Referrals API.
pub trait PartnerCenter: Send + Sync {
    /// `GET /v1.0/engagements/referrals/{id}`, including its `eTag`.
    fn get_referral(
        &self,
        id: &ReferralId,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send;

    /// One page of `GET /v1.0/engagements/referrals`.
    fn list_referrals(
        &self,
        query: &ReferralQuery,
    ) -> impl Future<Output = Result<ReferralPage, PortError>> + Send;

    /// `POST /v1.0/engagements/referrals`; returns the created referral.
    fn create_referral(
        &self,
        referral: &Referral,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send;

    /// `PATCH /v1.0/engagements/referrals/{id}` with JSON Patch; `If-Match` when given
    /// (a mismatch is [`PortError::PreconditionFailed`]).
    ///
    /// Returns what the answer says the referral now is (send `Prefer: return=representation`
    /// and read the returned referral's `eTag` and `updatedDateTime`, or the `ETag` response
    /// header). The sync core keeps both so the `referral-updated` event that its own
    /// write-back raises is recognised as an echo, by its `ResourceChangeUtcDate`, without
    /// reading the referral again.
    fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> impl Future<Output = Result<Patched, PortError>> + Send;
}

/// Partner Center's answer to a PATCH, as far as it says: each member `None` when it did not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patched {
    /// The referral's new `eTag`.
    pub etag: Option<ETag>,
    /// Its new `updatedDateTime`.
    pub updated: Option<DateTime<Utc>>,
    /// The referral as the answer returned it (`Prefer: return=representation`).
    pub referral: Option<Box<Referral>>,
}

impl Patched {
    /// What a returned referral says.
    pub fn of(referral: &Referral) -> Self {
        Self {
            etag: referral.etag(),
            updated: referral.updated(),
            referral: Some(Box::new(referral.clone())),
        }
    }

    /// Only the `eTag` (an answer without a body).
    pub fn etag(etag: Option<ETag>) -> Self {
        Self {
            etag,
            updated: None,
            referral: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CRM
// ---------------------------------------------------------------------------------------------

/// What to write when upserting an opportunity keyed by its referral id.
#[derive(Debug, Clone, Copy)]
pub struct OpportunityWrite<'a> {
    /// The key (the CRM's "Referral Identifier" column / External ID field).
    pub referral_id: &'a ReferralId,
    /// The opportunity to update when it is already known (linked, or named by the referral's
    /// `externalReferenceId` because it was created from the CRM and may not carry the referral
    /// id yet): update that record by its id and set its referral id, instead of upserting by
    /// the referral id (which would create a second opportunity). `None`: upsert by
    /// `referral_id`.
    pub record: Option<&'a CrmRecordId>,
    /// The values.
    pub opportunity: &'a Opportunity,
    /// The customer account to link (create only).
    pub account: Option<&'a CrmRecordId>,
    /// The customer contact to link (create only).
    pub contact: Option<&'a CrmRecordId>,
    /// An account to create with the opportunity and link to it instead of
    /// [`account`](Self::account) (create only: `record` is `None`, the scope
    /// [`BodyScope::Create`]). The adapter creates it before the opportunity: Salesforce in the
    /// same Composite request (all or none), others by one request each
    /// ([`create_customer`]).
    pub new_account: Option<&'a Account>,
    /// A contact to create with the opportunity (create only), linked to the new account or
    /// else to [`account`](Self::account), and to the opportunity instead of
    /// [`contact`](Self::contact). Only a contact with an email is given: one without could
    /// not be found again, so a retry would create it twice.
    pub new_contact: Option<&'a Contact>,
    /// Text for the Audit column.
    pub audit: Option<&'a str>,
    /// Which fields to write.
    pub scope: BodyScope,
    /// Update `record` only while it is still at this version ([`CrmOpportunity::version`]):
    /// [`PortError::PreconditionFailed`] when it changed since it was read. `None`: update
    /// whatever the version (`If-Match: *`). An adapter whose CRM has no conditional update
    /// (Salesforce) writes unconditionally (docs/conflicts.md#what-it-costs).
    pub if_match: Option<&'a str>,
}

impl<'a> OpportunityWrite<'a> {
    /// How many records the write creates before the opportunity
    /// ([`new_account`](Self::new_account), [`new_contact`](Self::new_contact)).
    pub fn new_records(&self) -> u64 {
        u64::from(self.new_account.is_some()) + u64::from(self.new_contact.is_some())
    }

    /// This write linking the `account` and `contact` made for it, with nothing left to
    /// create: the plain upsert that follows [`create_customer`].
    pub fn linked<'b>(
        &self,
        account: Option<&'b CrmRecordId>,
        contact: Option<&'b CrmRecordId>,
    ) -> OpportunityWrite<'b>
    where
        'a: 'b,
    {
        OpportunityWrite {
            account,
            contact,
            new_account: None,
            new_contact: None,
            ..*self
        }
    }
}

/// The plain requests a write's new records take on a CRM without combined writes: create
/// [`OpportunityWrite::new_account`], then [`OpportunityWrite::new_contact`] linked to it (or
/// to [`OpportunityWrite::account`]). The account and contact to link then (the given ones
/// when nothing is new); upsert [`OpportunityWrite::linked`] to them next.
pub async fn create_customer<C: CrmStore + ?Sized>(
    crm: &C,
    write: &OpportunityWrite<'_>,
) -> Result<(Option<CrmRecordId>, Option<CrmRecordId>), PortError> {
    let account = match write.new_account {
        Some(account) => Some(crm.create_account(account).await?),
        None => write.account.cloned(),
    };
    let contact = match write.new_contact {
        Some(contact) => Some(crm.create_contact(contact, account.as_ref()).await?),
        None => write.contact.cloned(),
    };
    Ok((account, contact))
}

/// What [`CrmStore::find_customer`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FoundCustomer {
    /// The oldest account with the name and postal code.
    pub account: Option<CrmRecordId>,
    /// The oldest contact with the email.
    pub contact: Option<CrmRecordId>,
}

/// The keys a customer is matched by, trimmed, each `None` when there is nothing to look
/// for: the account's name (and postal code), the contact's email. Idempotent: every layer
/// of [`CrmStore::find_customer`] applies it.
pub fn customer_keys<'a>(
    account: Option<(&'a str, Option<&'a str>)>,
    email: Option<&'a str>,
) -> (Option<(&'a str, Option<&'a str>)>, Option<&'a str>) {
    let account = account
        .map(|(name, postal_code)| (name.trim(), postal_code.map(str::trim)))
        .filter(|(name, _)| !name.is_empty());
    let email = email.map(str::trim).filter(|email| !email.is_empty());
    (account, email)
}

/// What [`CrmStore::find_customer`] does with plain requests: [`CrmStore::find_account`],
/// then [`CrmStore::find_contact_by_email`], each only with a key to look for.
pub async fn find_customer_plainly<C: CrmStore + ?Sized>(
    crm: &C,
    account: Option<(&str, Option<&str>)>,
    email: Option<&str>,
) -> Result<FoundCustomer, PortError> {
    let (account, email) = customer_keys(account, email);
    let account = match account {
        Some((name, postal_code)) => crm.find_account(name, postal_code).await?,
        None => None,
    };
    let contact = match email {
        Some(email) => crm.find_contact_by_email(email).await?,
        None => None,
    };
    Ok(FoundCustomer { account, contact })
}

/// An operation a CRM may make in one combined request instead of several plain ones
/// ([`CrmStore::combined_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CombinedOperation {
    /// [`CrmStore::find_customer`] with this many lookups (1 or 2; none makes no request).
    FindCustomer {
        /// The account and/or contact looked for.
        lookups: u64,
    },
    /// [`CrmStore::upsert_opportunity`] creating this many records before the opportunity
    /// ([`OpportunityWrite::new_records`], 1 or 2).
    CreateWithCustomer {
        /// The account and/or contact created.
        records: u64,
    },
    /// [`CrmStore::upsert_opportunity`] of a write that closes the opportunity (its stage won
    /// or lost): a CRM that closes by a request of its own (Dataverse's `WinOpportunity` /
    /// `LoseOpportunity`) makes two.
    WriteAndClose,
}

/// The result of an upsert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Upserted {
    /// The opportunity.
    pub id: CrmRecordId,
    /// Whether it was created (rather than updated).
    pub created: bool,
    /// The record's version right after this write, when the answer gives it (Dataverse: the
    /// row's `@odata.etag`, asked for with `Prefer: return=representation`); `None` when the
    /// CRM has no conditional update (Salesforce). Kept in [`Link::crm_seen`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One CRM (implemented once for Dataverse, once for Salesforce).
pub trait CrmStore: Send + Sync {
    /// Which CRM this is.
    fn kind(&self) -> CrmKind;

    /// The opportunity carrying this referral id, if any.
    fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<CrmOpportunity>, PortError>> + Send;

    /// An opportunity with its account and contact ([`PortError::NotFound`] if absent).
    fn get_opportunity(
        &self,
        id: &CrmRecordId,
    ) -> impl Future<Output = Result<CrmOpportunity, PortError>> + Send;

    /// Create or update the opportunity keyed by its referral id.
    fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> impl Future<Output = Result<Upserted, PortError>> + Send;

    /// An account by company name and postal code (how the connector matches customers).
    fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send;

    /// Create an account.
    fn create_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send;

    /// A contact by email.
    fn find_contact_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send;

    /// Create a contact, linked to its account when given.
    fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send;

    /// The oldest account with this name (and postal code) and the oldest contact with this
    /// email, looked up as [`find_account`](Self::find_account) and
    /// [`find_contact_by_email`](Self::find_contact_by_email) do ([`customer_keys`]: trimmed, an
    /// empty key is not looked for).
    ///
    /// The default makes the two plain requests ([`find_customer_plainly`]); a CRM that
    /// combines them in one request says so in [`combined_request`](Self::combined_request).
    fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> impl Future<Output = Result<FoundCustomer, PortError>> + Send {
        find_customer_plainly(self, account, email)
    }

    /// What this CRM charges for `operation` when it makes it its own way, all of it charged
    /// before the call ([`ApiRequest::SalesforceComposite`]: one Composite request;
    /// [`ApiRequest::DataverseRequests`]: a new account deep-inserted with its contact, then the
    /// upsert); `None` (the default): it makes the plain requests one by one, each charged as a
    /// plain request (a decorator then goes through its own plain methods:
    /// [`find_customer_plainly`], [`create_customer`]).
    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        let _ = operation;
        None
    }

    /// Write the opportunity's Audit column.
    fn write_audit(
        &self,
        opportunity: &CrmRecordId,
        text: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// One page of the opportunities with "Sync with Partner Center" on that were modified at
    /// or after [`OpportunityQuery::modified_since`] (after [`OpportunityQuery::after`] when
    /// given), ordered by `(modified, id)`, at most [`OpportunityQuery::top`] of them (what
    /// reconciliation reads).
    /// Like [`CrmStore::find_opportunity_by_referral`], the account and contact are not read.
    ///
    /// The default answers [`PortError::Permanent`]: an adapter that cannot list does not
    /// take part in reconciliation.
    fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> impl Future<Output = Result<OpportunityPage, PortError>> + Send {
        let _ = query;
        let service = Service::from(self.kind());
        async move {
            Err(PortError::Permanent {
                service,
                message: "this CRM adapter cannot list opportunities".to_owned(),
            })
        }
    }
}

/// A query for [`CrmStore::list_opportunities`]: one page of a keyset walk in the order
/// `(modified, id)` (docs/dataverse.md#paging, docs/salesforce.md#soql-queries-and-query-locators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpportunityQuery {
    /// Without [`after`](Self::after): only opportunities modified at or after this instant
    /// (Dataverse `modifiedon ge …`, Salesforce `LastModifiedDate >= …`). With it: the
    /// instant of that record.
    pub modified_since: DateTime<Utc>,
    /// The last record handled, modified at [`modified_since`](Self::modified_since): only
    /// opportunities modified after that instant, or at it with a greater id (the service
    /// compares and orders the ids, so the client never needs their collation).
    pub after: Option<CrmRecordId>,
    /// At most this many opportunities (Dataverse `$top`, SOQL `LIMIT`): every page is
    /// bounded, whatever the service's own batch size.
    pub top: u32,
}

/// One opportunity of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedOpportunity {
    /// The opportunity: in full when [`complete`](Self::complete), else at least its id, sync
    /// flag and referral id.
    pub opportunity: CrmOpportunity,
    /// When it was last modified (Dataverse `modifiedon`, Salesforce `LastModifiedDate`).
    pub modified_at: Option<DateTime<Utc>>,
    /// Who modified it last (Dataverse `_modifiedby_value`, Salesforce `LastModifiedById`).
    pub modified_by: Option<String>,
    /// The listing read the record as [`CrmStore::get_opportunity`] does (its account, contact
    /// and currency included), so it can be compared without reading it again.
    pub complete: bool,
}

/// One page of [`CrmStore::list_opportunities`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpportunityPage {
    /// The opportunities on this page, in the order `(modified, id)`; fewer than the query's
    /// `top` only on the last page. No continuation is kept: the next page is asked for from
    /// the last record handled ([`OpportunityQuery::after`]).
    pub items: Vec<ListedOpportunity>,
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

const KEY_EXPECTED: &str = "a non-empty idempotency key of at most 1024 characters";

/// The idempotency key of one delivery, e.g. `pc:<event hash>` or `sf:<notification id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest accepted key.
    pub const MAX_LEN: usize = 1024;

    /// `<source>:<id>`.
    pub fn new(source: &str, id: &str) -> Result<Self, ParseError> {
        Self::try_from(format!("{source}:{id}"))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = ParseError;
    fn try_from(key: String) -> Result<Self, ParseError> {
        if key.trim().is_empty() {
            Err(ParseError::empty("idempotency key", KEY_EXPECTED))
        } else if key.chars().count() > Self::MAX_LEN {
            Err(ParseError::invalid("idempotency key", &key, KEY_EXPECTED))
        } else {
            Ok(Self(key))
        }
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = ParseError;
    fn try_from(key: &str) -> Result<Self, ParseError> {
        Self::try_from(key.to_owned())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

/// The stored status of an idempotency record. `EXPIRED` is never stored: it is computed on
/// read ([`IdempotencyRecord::state_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdempotencyStatus {
    /// Someone is processing the delivery.
    #[serde(rename = "INPROGRESS")]
    InProgress,
    /// Processed; the response is stored.
    #[serde(rename = "COMPLETED")]
    Completed,
}

/// An idempotency record, with AWS Powertools semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The key.
    pub key: IdempotencyKey,
    /// Stored status.
    pub status: IdempotencyStatus,
    /// After this instant the record counts as absent (the TTL attribute; DynamoDB deletes
    /// expired items lazily, days later, so readers must check it themselves).
    pub expires_at: DateTime<Utc>,
    /// For `INPROGRESS`: the holder's deadline (the Lambda deadline); after it, another
    /// invocation may take over.
    pub in_progress_until: Option<DateTime<Utc>>,
    /// For `COMPLETED`: the response to hand to duplicates.
    pub response: Option<Value>,
    /// Optional hash of the payload, to detect a reused key with a different payload.
    pub payload_hash: Option<String>,
}

/// What an idempotency record means at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyState<'a> {
    /// No live record: the delivery may be processed.
    Absent,
    /// Another invocation holds it and is within its deadline.
    InProgress,
    /// Already processed; the stored response, if any.
    Completed(Option<&'a Value>),
}

/// The outcome of [`IdempotencyStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The caller holds the key and must `complete` or `release` it.
    Acquired,
    /// Already processed: here is the stored response (`null` if none was stored).
    Duplicate(Value),
    /// Another invocation is processing it: answer so the sender retries later, or report a
    /// batch item failure.
    InProgress,
}

impl IdempotencyRecord {
    /// The record's meaning at `now`, as Powertools reads it: an expired record
    /// (`expires_at < now`) is absent, and so is an `INPROGRESS` record whose holder's deadline
    /// passed (`in_progress_until < now`).
    pub fn state_at(&self, now: DateTime<Utc>) -> IdempotencyState<'_> {
        if self.expires_at < now {
            return IdempotencyState::Absent;
        }
        match self.status {
            IdempotencyStatus::InProgress => match self.in_progress_until {
                Some(deadline) if deadline < now => IdempotencyState::Absent,
                _ => IdempotencyState::InProgress,
            },
            IdempotencyStatus::Completed => IdempotencyState::Completed(self.response.as_ref()),
        }
    }

    /// The outcome of acquiring a key whose current record is `existing` (the conditional
    /// write `attribute_not_exists(pk) OR expiration < now OR (INPROGRESS AND
    /// in_progress_expiration < now)`, as a pure function).
    pub fn acquire_outcome(existing: Option<&Self>, now: DateTime<Utc>) -> AcquireOutcome {
        match existing.map(|record| record.state_at(now)) {
            None | Some(IdempotencyState::Absent) => AcquireOutcome::Acquired,
            Some(IdempotencyState::InProgress) => AcquireOutcome::InProgress,
            Some(IdempotencyState::Completed(response)) => {
                AcquireOutcome::Duplicate(response.cloned().unwrap_or(Value::Null))
            }
        }
    }
}

/// The idempotency table.
pub trait IdempotencyStore: Send + Sync {
    /// Take the key for processing until `in_progress_until`, unless a live record exists.
    fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<AcquireOutcome, PortError>> + Send;

    /// Mark the key processed, storing the response for duplicates until `expires_at`.
    fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Give the key up after a failure, so a retry can process it.
    fn release(&self, key: &IdempotencyKey) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Settle a delivery: complete or release its key, save its link and append its audit
    /// entries, all or nothing — [`Commit`] says what.
    ///
    /// A store that keeps the link and the audit entries next to its idempotency records (the
    /// DynamoDB table: one `TransactWriteItems`) writes them itself and ignores `links` and
    /// `audit`. The default is for a store that keeps only idempotency records: it writes
    /// through `links` and `audit`: the link first (when its version condition fails nothing
    /// else is written), then the key, then the entries.
    ///
    /// Errors: [`PortError::PreconditionFailed`] when the link changed since it was read
    /// (nothing written); an error of [`Service::AuditLog`] when only entries could not be
    /// appended (the link and the key were written); any other error leaves it unknown whether
    /// the commit took effect.
    fn commit<L: LinkStore, A: AuditLog>(
        &self,
        links: &L,
        audit: &A,
        commit: &Commit<'_>,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        async move {
            if let Some(link) = commit.link {
                links.put(link).await?;
            }
            match commit.key_after {
                KeyAfter::Completed {
                    response,
                    expires_at,
                } => self.complete(commit.key, response, expires_at).await?,
                KeyAfter::Released => self.release(commit.key).await?,
            }
            let mut appended = Ok(());
            for entry in commit.entries {
                if let Err(error) = audit.append(entry).await {
                    appended = Err(error);
                }
            }
            appended
        }
    }
}

/// What becomes of the delivery's key in a [`Commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAfter<'a> {
    /// Processed: duplicates get `response` until `expires_at`.
    Completed {
        /// The stored response.
        response: &'a Value,
        /// When the record expires.
        expires_at: DateTime<Utc>,
    },
    /// Given up, so the delivery runs again.
    Released,
}

/// Everything a delivery's run writes to the stores once it is over
/// ([`IdempotencyStore::commit`]): its key settled, its link saved, its audit entries
/// appended, in one write.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The delivery's key.
    pub key: &'a IdempotencyKey,
    /// Completed or released.
    pub key_after: KeyAfter<'a>,
    /// The link to save, on the same condition as [`LinkStore::put`].
    pub link: Option<&'a Link>,
    /// The run's audit entries, in order.
    pub entries: &'a [AuditEntry],
}

// ---------------------------------------------------------------------------------------------
// Retry queue
// ---------------------------------------------------------------------------------------------

/// Where a retried job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrySource {
    /// A Partner Center webhook event.
    PartnerCenter,
    /// A Dataverse webhook.
    Dataverse,
    /// A Salesforce Outbound Message notification.
    Salesforce,
    /// A reconciliation run.
    Reconcile,
}

/// A job on the retry queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryJob {
    /// Where it came from.
    pub source: RetrySource,
    /// Its idempotency / deduplication key.
    pub key: String,
    /// 1 for the first retry; 0 for a follow-up of the delivery itself, queued when it found
    /// another invocation holding it (run under the delivery's own key).
    pub attempt: u32,
    /// What to process again (the event, never tokens).
    pub payload: Value,
}

impl RetryJob {
    /// The first wait.
    pub const BASE_DELAY: Duration = Duration::from_secs(30);
    /// The longest wait (SQS `DelaySeconds` tops out at 900).
    pub const MAX_DELAY: Duration = Duration::from_secs(900);

    /// The same job, one attempt later.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1),
            ..self.clone()
        }
    }

    /// How long to wait before this attempt: 30 s doubling per attempt, at least the
    /// service's `Retry-After`, at most 15 minutes.
    pub fn delay(&self, retry_after: Option<Duration>) -> Duration {
        let exponent = self.attempt.saturating_sub(1).min(16);
        let backoff = Self::BASE_DELAY.saturating_mul(1 << exponent);
        backoff
            .max(retry_after.unwrap_or_default())
            .min(Self::MAX_DELAY)
    }
}

/// The retry queue.
pub trait RetryQueue: Send + Sync {
    /// Put a job on the queue, visible after `delay`.
    fn enqueue(
        &self,
        job: &RetryJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

/// Which way a sync went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    /// Partner Center → CRM.
    ToCrm,
    /// CRM → Partner Center.
    ToPartnerCenter,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A change event arrived.
    Received,
    /// The same delivery arrived again; skipped.
    DuplicateSkipped,
    /// Nothing mapped changed; skipped.
    UnchangedSkipped,
    /// A CRM change to a referral Partner Center has not accepted yet (New, the opportunity on
    /// hold): not sent, and not forgotten — it is sent once the referral is accepted.
    HeldUntilAccepted {
        /// What was held and why (no contact data).
        reason: String,
        /// What the seller or admin does to send it.
        fix: String,
    },
    /// Our own write came back as an event; skipped.
    EchoSkipped,
    /// A record was created on the other side.
    Created,
    /// A record was updated on the other side.
    Updated,
    /// Ids / links / audit were written back to the source.
    WrittenBack,
    /// The sync failed and needs a person: why, and what to do.
    Failed {
        /// What went wrong (no contact data).
        reason: String,
        /// What to do about it.
        fix: String,
    },
    /// Put on the retry queue.
    RetryEnqueued {
        /// The attempt that will run.
        attempt: u32,
    },
    /// Moved back from the dead-letter queue by an operator.
    Redriven,
    /// Both sides changed the same fields since the last sync; each field's owner won
    /// (docs/conflicts.md#the-policy) and the other side was overwritten. Names the fields and
    /// winners only, never a value.
    ConflictResolved {
        /// The fields and who won each.
        fields: Vec<FieldConflict>,
    },
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// Which way, when it applies.
    pub direction: Option<SyncDirection>,
    /// The referral, when known.
    pub referral_id: Option<ReferralId>,
    /// The CRM record, when known.
    pub crm: Option<CrmRecordId>,
    /// The delivery / request correlation id, when known.
    pub correlation_id: Option<String>,
    /// What happened.
    pub event: AuditEvent,
}

impl AuditEvent {
    /// The outcome metric (`cosell_domain::metrics::OUTCOMES`) this entry stands for, so the
    /// CLI's counts from the audit log carry the metrics' names: `Failed` is `NeedsAttention`;
    /// `Received`, `WrittenBack`, `Redriven` and `ConflictResolved` are steps, not outcomes.
    pub fn metric_name(&self) -> Option<&'static str> {
        match self {
            Self::DuplicateSkipped => Some("DuplicateSkipped"),
            Self::UnchangedSkipped => Some("UnchangedSkipped"),
            Self::HeldUntilAccepted { .. } => Some("HeldUntilAccepted"),
            Self::EchoSkipped => Some("EchoSkipped"),
            Self::Created => Some("Created"),
            Self::Updated => Some("Updated"),
            Self::Failed { .. } => Some("NeedsAttention"),
            Self::RetryEnqueued { .. } => Some("RetryEnqueued"),
            // A conflict is resolved within an Updated / Created sync, which counts it.
            Self::Received | Self::WrittenBack | Self::Redriven | Self::ConflictResolved { .. } => {
                None
            }
        }
    }
}

impl AuditEntry {
    /// Whether this entry needs a person (a failure).
    pub fn needs_attention(&self) -> bool {
        matches!(self.event, AuditEvent::Failed { .. })
    }

    /// One line for the CRM's Audit column, e.g.
    /// `2026-01-05T10:00:00Z Updated Partner Center referral 4111fffc-…`.
    pub fn crm_text(&self) -> String {
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let target = match self.direction {
            Some(SyncDirection::ToPartnerCenter) => "Partner Center referral",
            _ => "from Partner Center referral",
        };
        let referral = self
            .referral_id
            .map_or_else(String::new, |id| format!(" {id}"));
        match &self.event {
            AuditEvent::Failed { reason, fix } => {
                format!("{at} Sync failed: {reason} Fix: {fix}")
            }
            AuditEvent::Created => format!("{at} Created {target}{referral}"),
            AuditEvent::Updated => format!("{at} Updated {target}{referral}"),
            AuditEvent::WrittenBack => format!("{at} Linked to Partner Center referral{referral}"),
            AuditEvent::RetryEnqueued { attempt } => {
                format!("{at} Sync delayed; retry {attempt} is scheduled")
            }
            AuditEvent::Received => format!("{at} Change received"),
            AuditEvent::DuplicateSkipped => format!("{at} Duplicate delivery skipped"),
            AuditEvent::UnchangedSkipped => format!("{at} No mapped field changed"),
            AuditEvent::HeldUntilAccepted { reason, fix } => {
                format!("{at} Change not sent yet: {reason} Fix: {fix}")
            }
            AuditEvent::EchoSkipped => format!("{at} Own change skipped"),
            AuditEvent::Redriven => format!("{at} Retried by an operator"),
            AuditEvent::ConflictResolved { fields } => {
                format!("{at} {}", crate::sync::conflict_text(fields))
            }
        }
    }
}

/// The audit log.
pub trait AuditLog: Send + Sync {
    /// Append an entry.
    fn append(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The newest entries of a referral, newest first.
    fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send;

    /// The newest entries of a CRM record, newest first.
    fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send;

    /// The newest entries that need attention (failures), newest first.
    fn needs_attention(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, PortError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// The link between a referral and its CRM opportunity, with what was last synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The referral.
    pub referral_id: ReferralId,
    /// The CRM opportunity.
    pub crm: CrmRecordId,
    /// The referral's `eTag` when last read or written.
    pub last_referral_etag: Option<ETag>,
    /// The referral's `updatedDateTime` when last read.
    pub last_referral_updated: Option<DateTime<Utc>>,
    /// [`Opportunity::fingerprint`] of what was last written to the CRM.
    pub last_fingerprint_to_crm: Option<String>,
    /// [`Opportunity::fingerprint`] of what was last sent to Partner Center.
    pub last_fingerprint_to_pc: Option<String>,
    /// The CRM opportunity's stage when the two sides were last synced (sent to Partner Center,
    /// or written to the CRM from it): a CRM change closes the referral as won or lost only when
    /// its stage differs from this one (an explicit close). Absent in links stored before it
    /// existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stage_to_pc: Option<OpportunityStage>,
    /// When the CRM record was last modified, as the newest change synced to Partner Center
    /// said (Dataverse `modifiedon`, Salesforce `LastModifiedDate` of the event's image): a
    /// delivery whose image is not newer arrived late, or in the same second as another, and
    /// the record is read as it is now instead. Absent in links stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_crm_modified: Option<DateTime<Utc>>,
    /// A Shared deal created from the CRM: its second referral, inviting Microsoft to the
    /// engagement, exists (false in links stored before it existed: checked on the next sync).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub microsoft_invited: bool,
    /// When the link was last changed.
    pub updated_at: DateTime<Utc>,
    /// The stored version this link was read at (0: new, or stored before versions existed).
    /// [`LinkStore::put`] stores it plus one, and refuses when the stored version is another:
    /// two syncs of one record at once cannot overwrite each other's link.
    #[serde(default)]
    pub version: u64,
    /// Per shared field ([`SharedField::name`]), the first 16 hex digits of the SHA-256 of the
    /// value both sides last agreed on: the base of the three-way merge
    /// (docs/conflicts.md#the-policy). Hashes, never values: no contact data in the link table.
    /// Empty in links stored before it existed (the direction's source wins, as before).
    ///
    /// [`SharedField::name`]: crate::sync::SharedField::name
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub synced_fields: BTreeMap<String, String>,
    /// The referral as last read or returned by a PATCH, as JSON text, without its customer,
    /// team, inviter or unknown members ([`Referral::without_parties`]: no contact data in the
    /// link table). A CRM change is planned against it instead of reading the referral again,
    /// but only while its `eTag` is [`Link::last_referral_etag`]: the PATCH is conditional on
    /// that eTag, so a referral changed since answers 412 and the change takes the read path
    /// (docs/conflicts.md#what-it-costs). See [`Link::referral_text`], [`Link::referral_seen`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_referral: Option<String>,
    /// The CRM record as this connector's last write left it: its version and the hashes of
    /// its shared fields. A Partner Center change is planned against it instead of reading the
    /// record, but only while those hashes are the merge's base (the CRM changed nothing since
    /// the sides agreed); the write is conditional on that version, so a record saved since
    /// answers 412 and the change takes the read path (docs/conflicts.md#what-it-costs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_seen: Option<CrmSeen>,
}

/// The CRM record right after a write of this connector ([`Link::crm_seen`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmSeen {
    /// Its version then ([`Upserted::version`]).
    pub version: String,
    /// Per shared field, the hash of the value it then held (as [`Link::synced_fields`]).
    pub fields: BTreeMap<String, String>,
}

impl CrmSeen {
    /// The record as seen at `version`, when the CRM reports versions.
    pub fn at(version: Option<String>, crm: &crate::opportunity::Opportunity) -> Option<Self> {
        version.map(|version| Self {
            version,
            fields: crate::sync::field_hashes(crm),
        })
    }

    /// Its version, when the record then held, in every shared field, the value both sides
    /// agreed on: a change planned against it needs no read of the record.
    pub fn agreeing_version(&self, base: &BTreeMap<String, String>) -> Option<&str> {
        let agrees = crate::sync::SharedField::ALL.iter().all(|field| {
            let name = field.name();
            base.get(name).is_some_and(|hash| {
                hash != crate::sync::NOT_AGREED && self.fields.get(name) == Some(hash)
            })
        });
        agrees.then_some(self.version.as_str())
    }
}

impl Link {
    /// A CRM change whose mapped content equals what we last wrote to the CRM is our own
    /// write coming back: skip it.
    pub fn is_echo_from_crm(&self, fingerprint: &str) -> bool {
        self.last_fingerprint_to_crm.as_deref() == Some(fingerprint)
    }

    /// A CRM change whose mapped content equals what we last sent to Partner Center has
    /// nothing new for Partner Center: skip it.
    pub fn is_unchanged_for_pc(&self, fingerprint: &str) -> bool {
        self.last_fingerprint_to_pc.as_deref() == Some(fingerprint)
    }

    /// Whether `opportunity` holds, in every shared field, the value both sides last agreed on
    /// (the merge's base, [`Link::synced_fields`]); a link without a base agrees with anything.
    pub fn agrees_with(&self, opportunity: &crate::opportunity::Opportunity) -> bool {
        self.synced_fields.is_empty()
            || crate::sync::SharedField::ALL
                .iter()
                .all(|field| self.synced_fields.get(field.name()) == Some(&field.hash(opportunity)))
    }

    /// [`Link::last_referral`] of `referral`.
    pub fn referral_text(referral: &Referral) -> Option<String> {
        serde_json::to_string(&referral.without_parties()).ok()
    }

    /// The referral as the link last saw it, when that is the state its `eTag` names (a PATCH
    /// conditional on [`Link::last_referral_etag`] then applies to exactly this referral).
    pub fn referral_seen(&self) -> Option<Referral> {
        let etag = self.last_referral_etag.as_ref()?;
        let referral: Referral = serde_json::from_str(self.last_referral.as_deref()?).ok()?;
        (referral.etag().as_ref() == Some(etag)).then_some(referral)
    }

    /// A referral read that is older than the last one seen (out-of-order delivery): skip it.
    pub fn is_stale_referral(&self, updated: Option<DateTime<Utc>>) -> bool {
        matches!((self.last_referral_updated, updated), (Some(last), Some(seen)) if seen < last)
    }

    /// A change of the referral made at `changed` (a webhook's `ResourceChangeUtcDate`) is
    /// already in the state the link holds: made at or before its `updatedDateTime`.
    pub fn holds_change_at(&self, changed: DateTime<Utc>) -> bool {
        self.last_referral_updated
            .is_some_and(|last| changed <= last)
    }
}

/// The referral ⇄ CRM link table.
pub trait LinkStore: Send + Sync {
    /// The link of a referral.
    fn get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send;

    /// The link of a CRM record.
    fn get_by_crm(
        &self,
        crm: &CrmRecordId,
    ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send;

    /// Create or replace a link, as version `link.version + 1`, only if the stored link is
    /// still at `link.version` (or absent, or stored without a version);
    /// [`PortError::PreconditionFailed`] otherwise (another sync changed it since it was read:
    /// retry on a fresh read). A saved link replaces a claim ([`LinkStore::claim`]).
    fn put(&self, link: &Link) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The link of a referral, read by claiming it: when there is none (and no live claim),
    /// the caller holds the referral's create lock until `until` and may create its CRM
    /// counterpart; the link it saves then replaces the claim, and
    /// [`LinkStore::release_claim`] gives the claim up after a failure. A claim nobody
    /// releases lapses at `until` (a holder that crashed).
    ///
    /// One request instead of a read and a lock: a conditional write of the link's own item
    /// that, when it fails, answers the item it found (the link, or another run's claim).
    fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim, PortError>> + Send;

    /// Give up this run's claim of a referral (no effect on a link). The claim stays as a lapsed
    /// one, so the next claim reports the earlier holder ([`Claim::Claimed`]'s `earlier`).
    fn release_claim(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<(), PortError>> + Send;
}

/// What [`LinkStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The referral's link.
    Linked(Box<Link>),
    /// No link: the caller holds the referral's create lock. `earlier`: another run claimed
    /// the referral before (and released its claim after a failure, or let it lapse: a holder
    /// that crashed). That run may have created the counterpart and not linked it (its answer
    /// lost to a timeout, a crash before its commit), so the caller looks for it before
    /// creating one.
    Claimed {
        /// Whether another run claimed the referral before.
        earlier: bool,
    },
    /// No link, and another run holds the create lock.
    Busy,
}

// ---------------------------------------------------------------------------------------------
// Reconciliation checkpoint
// ---------------------------------------------------------------------------------------------

/// Where one side of reconciliation (Partner Center referrals, CRM opportunities) stands.
///
/// A checkpoint written by an earlier version (with a saved next-page link, `resume`) reads
/// as one without a position: its pass starts again from `since` (harmless: jobs are keyed by
/// version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileCursor {
    /// Changes at or after this instant (minus the overlap) are read by the next pass; `None`
    /// before the first finished pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// The last record handled by an unfinished pass (a run stopped at its item limit, its
    /// deadline or the budget, or was killed): the next run continues after it. Saved after
    /// every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ReconcilePosition>,
}

/// The last record a pass handled, in the order `(changed, id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcilePosition {
    /// When it changed (`updatedDateTime`, `modifiedon`, `LastModifiedDate`), as the service
    /// reported it.
    pub at: DateTime<Utc>,
    /// The records handled that changed at `at`, in the order read; the last one is where the
    /// pass stands. Partner Center cannot order by id, so all of them are kept there (the
    /// next page skips them); a CRM orders by id, so only the last is kept.
    pub ids: Vec<String>,
}

/// The reconciliation checkpoint: one item in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Partner Center referrals (`updatedDateTime`).
    #[serde(default)]
    pub referrals: ReconcileCursor,
    /// CRM opportunities (`modifiedon` / `LastModifiedDate`).
    #[serde(default)]
    pub opportunities: ReconcileCursor,
    /// When a run last saved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<DateTime<Utc>>,
    /// How many jobs that run enqueued.
    #[serde(default)]
    pub last_enqueued: u64,
}

/// Where the reconciliation checkpoint is kept.
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint, `None` before the first run.
    fn load(&self) -> impl Future<Output = Result<Option<Checkpoint>, PortError>> + Send;

    /// Replace the checkpoint.
    fn save(&self, checkpoint: &Checkpoint) -> impl Future<Output = Result<(), PortError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// API budget
// ---------------------------------------------------------------------------------------------

/// A service whose calls the budget counts, each in the unit its own limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiService {
    /// The Partner Center Referrals API: HTTP requests.
    PartnerCenter,
    /// The Dataverse Web API: requests as its service protection limits count them.
    Dataverse,
    /// The Salesforce REST API: API calls against the org's daily allocation.
    Salesforce,
}

impl ApiService {
    /// Every service, in the order they are shown.
    pub const ALL: [Self; 3] = [Self::PartnerCenter, Self::Dataverse, Self::Salesforce];

    /// `"partner_center"`, `"dataverse"` or `"salesforce"` (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerCenter => "partner_center",
            Self::Dataverse => "dataverse",
            Self::Salesforce => "salesforce",
        }
    }
}

impl fmt::Display for ApiService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PartnerCenter => "Partner Center",
            Self::Dataverse => "Dataverse",
            Self::Salesforce => "Salesforce",
        })
    }
}

impl From<CrmKind> for ApiService {
    fn from(kind: CrmKind) -> Self {
        match kind {
            CrmKind::Dataverse => Self::Dataverse,
            CrmKind::Salesforce => Self::Salesforce,
        }
    }
}

/// One request to a service, as that service counts it ([`ApiRequest::units`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRequest {
    /// One plain request (every port call today).
    Plain(ApiService),
    /// A Salesforce Composite request (`/composite`, up to 25 subrequests).
    SalesforceComposite {
        /// The subrequests it carries.
        subrequests: u64,
    },
    /// A Dataverse `$batch` request.
    DataverseBatch {
        /// The requests inside it (change sets included request by request).
        requests: u64,
    },
    /// Plain Dataverse requests one port call makes one after the other (a new account
    /// deep-inserted with its contact, then the opportunity's upsert).
    DataverseRequests {
        /// How many.
        requests: u64,
    },
}

impl ApiRequest {
    /// The service it is sent to.
    pub fn service(self) -> ApiService {
        match self {
            Self::Plain(service) => service,
            Self::SalesforceComposite { .. } => ApiService::Salesforce,
            Self::DataverseBatch { .. } | Self::DataverseRequests { .. } => ApiService::Dataverse,
        }
    }

    /// What its service charges for it: a plain request 1; a Salesforce Composite request one
    /// API call whatever its subrequests; a Dataverse `$batch` each inner request (service
    /// protection limits count them; an empty batch is still one request); plain requests one
    /// each.
    pub fn units(self) -> u64 {
        match self {
            Self::Plain(_) | Self::SalesforceComposite { .. } => 1,
            Self::DataverseBatch { requests } | Self::DataverseRequests { requests } => {
                requests.max(1)
            }
        }
    }
}

/// Calls per service, each in its service's unit ([`ApiRequest::units`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCalls {
    /// Partner Center requests.
    #[serde(default)]
    pub partner_center: u64,
    /// Dataverse requests (each request inside a `$batch`).
    #[serde(default)]
    pub dataverse: u64,
    /// Salesforce API calls (a Composite request is one).
    #[serde(default)]
    pub salesforce: u64,
}

impl ServiceCalls {
    /// `units` of `service`.
    pub fn of(service: ApiService, units: u64) -> Self {
        Self::default().with(service, units)
    }

    /// These calls and `units` more of `service`.
    #[must_use]
    pub fn with(mut self, service: ApiService, units: u64) -> Self {
        let slot = match service {
            ApiService::PartnerCenter => &mut self.partner_center,
            ApiService::Dataverse => &mut self.dataverse,
            ApiService::Salesforce => &mut self.salesforce,
        };
        *slot = slot.saturating_add(units);
        self
    }

    /// Count one `request` in its service's unit.
    pub fn count(&mut self, request: ApiRequest) {
        *self = self.with(request.service(), request.units());
    }

    /// The calls of `service`.
    pub fn get(&self, service: ApiService) -> u64 {
        match service {
            ApiService::PartnerCenter => self.partner_center,
            ApiService::Dataverse => self.dataverse,
            ApiService::Salesforce => self.salesforce,
        }
    }

    /// Every service with its calls, in [`ApiService::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (ApiService, u64)> + '_ {
        ApiService::ALL
            .into_iter()
            .map(|service| (service, self.get(service)))
    }

    /// All services together.
    pub fn total(&self) -> u64 {
        self.iter()
            .fold(0, |total, (_, calls)| total.saturating_add(calls))
    }

    /// No call counted.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

impl Add for ServiceCalls {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        other
            .iter()
            .fold(self, |sum, (service, calls)| sum.with(service, calls))
    }
}

/// The daily counter of Partner Center and CRM calls (one counter per UTC day): the total the
/// budget admits against, and the calls made per service, each in its service's unit.
pub trait ApiBudget: Send + Sync {
    /// The calls counted on `day` (the total, reservations included).
    fn used(&self, day: NaiveDate) -> impl Future<Output = Result<u64, PortError>> + Send;

    /// The calls made on `day` per service. Reservations are in the total only, so the
    /// services add up to [`used`](Self::used) once every sync has settled.
    fn used_by_service(
        &self,
        day: NaiveDate,
    ) -> impl Future<Output = Result<ServiceCalls, PortError>> + Send;

    /// Add `delta` (negative to give back a reservation) to `day`'s total atomically;
    /// the new total.
    fn add(
        &self,
        day: NaiveDate,
        delta: i64,
    ) -> impl Future<Output = Result<i64, PortError>> + Send {
        self.record(day, delta, ServiceCalls::default())
    }

    /// Add `delta` to `day`'s total and `made` to its per-service counts, atomically in one
    /// write; the new total.
    fn record(
        &self,
        day: NaiveDate,
        delta: i64,
        made: ServiceCalls,
    ) -> impl Future<Output = Result<i64, PortError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// The ports of one sync, as one type
// ---------------------------------------------------------------------------------------------

/// The six ports a sync runs against, named once: the sync core, the handlers and the
/// decorators (metering, fault injection) are generic over one `X: Ports` instead of six type
/// parameters.
///
/// An implementation is a type-level list (usually a unit struct such as the runtime's
/// `Production`); the values are held by whoever owns them (a function's `App`) and lent to a
/// sync through [`Deps`](crate::sync::Deps).
pub trait Ports {
    /// The Partner Center Referrals API.
    type PartnerCenter: PartnerCenter;
    /// The CRM (Dataverse or Salesforce).
    type Crm: CrmStore;
    /// The idempotency table.
    type Idempotency: IdempotencyStore;
    /// The retry queue.
    type RetryQueue: RetryQueue;
    /// The audit log.
    type Audit: AuditLog;
    /// The referral ⇄ CRM link table.
    type Links: LinkStore;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use futures::executor::block_on;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .unwrap()
    }

    fn record(status: IdempotencyStatus, expires: i64, deadline: Option<i64>) -> IdempotencyRecord {
        IdempotencyRecord {
            key: IdempotencyKey::new("pc", "event-1").unwrap(),
            status,
            expires_at: at(expires),
            in_progress_until: deadline.map(at),
            response: Some(serde_json::json!({ "status": 200 })),
            payload_hash: None,
        }
    }

    #[test]
    fn idempotency_records_follow_powertools_expiry_semantics() {
        use IdempotencyStatus::{Completed, InProgress};
        let response = serde_json::json!({ "status": 200 });
        let cases = [
            // (status, expires_at, in_progress_until, now, expected)
            (
                Completed,
                100,
                None,
                50,
                IdempotencyState::Completed(Some(&response)),
            ),
            (
                Completed,
                100,
                None,
                100,
                IdempotencyState::Completed(Some(&response)),
            ),
            (Completed, 100, None, 101, IdempotencyState::Absent),
            (InProgress, 100, Some(60), 50, IdempotencyState::InProgress),
            (InProgress, 100, Some(60), 60, IdempotencyState::InProgress),
            (InProgress, 100, Some(60), 61, IdempotencyState::Absent),
            (InProgress, 100, None, 99, IdempotencyState::InProgress),
            (InProgress, 100, Some(200), 101, IdempotencyState::Absent),
        ];
        for (status, expires, deadline, now, expected) in cases {
            let record = record(status, expires, deadline);
            assert_eq!(
                record.state_at(at(now)),
                expected,
                "{status:?} {expires} {deadline:?} at {now}"
            );
        }
    }

    #[test]
    fn acquiring_a_key_depends_only_on_the_live_record() {
        let now = at(50);
        assert_eq!(
            IdempotencyRecord::acquire_outcome(None, now),
            AcquireOutcome::Acquired
        );
        let done = record(IdempotencyStatus::Completed, 100, None);
        assert_eq!(
            IdempotencyRecord::acquire_outcome(Some(&done), now),
            AcquireOutcome::Duplicate(serde_json::json!({ "status": 200 }))
        );
        assert_eq!(
            IdempotencyRecord::acquire_outcome(Some(&done), at(101)),
            AcquireOutcome::Acquired
        );
        let busy = record(IdempotencyStatus::InProgress, 100, Some(60));
        assert_eq!(
            IdempotencyRecord::acquire_outcome(Some(&busy), now),
            AcquireOutcome::InProgress
        );
        assert_eq!(
            IdempotencyRecord::acquire_outcome(Some(&busy), at(61)),
            AcquireOutcome::Acquired
        );
    }

    #[test]
    fn idempotency_statuses_are_stored_in_powertools_spelling() {
        assert_eq!(
            serde_json::to_string(&IdempotencyStatus::InProgress).unwrap(),
            "\"INPROGRESS\""
        );
        assert_eq!(
            serde_json::to_string(&IdempotencyStatus::Completed).unwrap(),
            "\"COMPLETED\""
        );
        assert!(IdempotencyKey::try_from("").is_err());
        assert!(IdempotencyKey::try_from("x".repeat(1025)).is_err());
    }

    #[test]
    fn only_transient_and_precondition_failures_are_retried() {
        let transient = PortError::Transient {
            service: Service::PartnerCenter,
            reason: "429 Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(57)),
        };
        assert!(transient.is_retryable());
        assert_eq!(transient.retry_after(), Some(Duration::from_secs(57)));
        assert!(transient.to_string().contains("retry after 57 s"));
        assert!(
            PortError::PreconditionFailed {
                service: Service::Dataverse
            }
            .is_retryable()
        );
        let denied = PortError::AccessDenied {
            service: Service::PartnerCenter,
            missing_role: Some("Referrals admin".into()),
            message: "403 Forbidden".into(),
        };
        assert!(!denied.is_retryable());
        assert!(
            denied
                .to_string()
                .contains("grant the Referrals admin role"),
            "{denied}"
        );
        for permanent in [
            PortError::Permanent {
                service: Service::Salesforce,
                message: "INVALID_FIELD".into(),
            },
            PortError::NotFound {
                service: Service::Dataverse,
                what: "opportunity x".into(),
            },
        ] {
            assert!(!permanent.is_retryable());
            assert_eq!(permanent.retry_after(), None);
        }
    }

    #[test]
    fn retry_delays_back_off_exponentially_within_sqs_limits() {
        let job = RetryJob {
            source: RetrySource::PartnerCenter,
            key: "pc:1".into(),
            attempt: 1,
            payload: Value::Null,
        };
        assert_eq!(job.delay(None), Duration::from_secs(30));
        assert_eq!(job.next_attempt().delay(None), Duration::from_secs(60));
        assert_eq!(job.next_attempt().attempt, 2);
        assert_eq!(
            job.delay(Some(Duration::from_secs(57))),
            Duration::from_secs(57)
        );
        let late = RetryJob { attempt: 40, ..job };
        assert_eq!(late.delay(None), RetryJob::MAX_DELAY);
        assert_eq!(
            late.delay(Some(Duration::from_secs(3600))),
            RetryJob::MAX_DELAY
        );
    }

    #[test]
    fn referral_queries_build_an_odata_filter() {
        let query = ReferralQuery {
            updated_since: Some(at(0)),
            engagement_id: Some(
                EngagementId::try_from("37ef26aa-1d15-4533-9f93-a69bd33ab1e5").unwrap(),
            ),
            status: Some(ReferralStatus::Active),
            ..ReferralQuery::default()
        };
        assert_eq!(
            query.odata_filter().unwrap(),
            "updatedDateTime ge 2027-01-15T08:00:00Z and engagementId eq \
             '37ef26aa-1d15-4533-9f93-a69bd33ab1e5' and status eq 'Active'"
        );
        assert_eq!(ReferralQuery::default().odata_filter(), None);
        // A page starts exactly at a referral already read: the instant keeps its 100 ns.
        let precise = ReferralQuery {
            updated_since: Some(
                DateTime::parse_from_rfc3339("2019-02-23T02:05:23.2931817Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            ..ReferralQuery::default()
        };
        assert_eq!(
            precise.odata_filter().unwrap(),
            "updatedDateTime ge 2019-02-23T02:05:23.293181700Z"
        );
    }

    #[test]
    fn audit_events_serialize_with_a_kind_tag_and_failures_need_attention() {
        let entry = AuditEntry {
            at: at(0),
            direction: Some(SyncDirection::ToPartnerCenter),
            referral_id: None,
            crm: Some(CrmRecordId::try_from("salesforce:006000000000001").unwrap()),
            correlation_id: None,
            event: AuditEvent::Failed {
                reason: "Solution ID is required.".into(),
                fix: "Add a solution ID.".into(),
            },
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["event"]["kind"], "failed");
        assert_eq!(serde_json::from_value::<AuditEntry>(json).unwrap(), entry);
        assert!(entry.needs_attention());
        assert_eq!(
            entry.crm_text(),
            "2027-01-15T08:00:00Z Sync failed: Solution ID is required. Fix: Add a solution ID."
        );
        let created = AuditEntry {
            event: AuditEvent::Created,
            referral_id: Some(
                ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            ),
            ..entry
        };
        assert!(!created.needs_attention());
        assert!(
            created
                .crm_text()
                .ends_with("Created Partner Center referral 4111fffc-f9ee-4d53-bba6-569135228642")
        );
    }

    #[test]
    fn links_recognise_echoes_and_stale_reads() {
        let link = Link {
            last_referral: None,
            crm_seen: None,
            version: 0,
            referral_id: ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            crm: CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap(),
            last_referral_etag: None,
            last_referral_updated: Some(at(10)),
            last_fingerprint_to_crm: Some("abc".into()),
            last_fingerprint_to_pc: Some("def".into()),
            last_stage_to_pc: None,
            microsoft_invited: false,
            last_crm_modified: None,
            updated_at: at(10),
            synced_fields: BTreeMap::new(),
        };
        assert!(link.is_echo_from_crm("abc") && !link.is_echo_from_crm("def"));
        assert!(link.is_unchanged_for_pc("def"));
        assert!(link.is_stale_referral(Some(at(9))));
        assert!(!link.is_stale_referral(Some(at(10))) && !link.is_stale_referral(None));
    }

    /// An in-memory link store: proves the port is implementable without a runtime and that
    /// its futures are `Send`.
    #[derive(Debug, Default)]
    struct MemoryLinks(Mutex<HashMap<ReferralId, Link>>);

    impl LinkStore for MemoryLinks {
        fn get_by_referral(
            &self,
            referral_id: &ReferralId,
        ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
            let found = self.0.lock().unwrap().get(referral_id).cloned();
            async move { Ok(found) }
        }

        fn get_by_crm(
            &self,
            crm: &CrmRecordId,
        ) -> impl Future<Output = Result<Option<Link>, PortError>> + Send {
            let found = self
                .0
                .lock()
                .unwrap()
                .values()
                .find(|l| &l.crm == crm)
                .cloned();
            async move { Ok(found) }
        }

        fn put(&self, link: &Link) -> impl Future<Output = Result<(), PortError>> + Send {
            self.0
                .lock()
                .unwrap()
                .insert(link.referral_id, link.clone());
            async { Ok(()) }
        }

        fn claim(
            &self,
            referral_id: &ReferralId,
            _now: DateTime<Utc>,
            _until: DateTime<Utc>,
        ) -> impl Future<Output = Result<Claim, PortError>> + Send {
            let found = self.0.lock().unwrap().get(referral_id).cloned();
            async move {
                Ok(found.map_or(Claim::Claimed { earlier: false }, |link| {
                    Claim::Linked(Box::new(link))
                }))
            }
        }

        async fn release_claim(&self, _referral_id: &ReferralId) -> Result<(), PortError> {
            Ok(())
        }
    }

    fn assert_send<T: Send>(value: T) -> T {
        value
    }

    async fn remember<S: LinkStore>(store: &S, link: &Link) -> Result<Option<Link>, PortError> {
        store.put(link).await?;
        store.get_by_crm(&link.crm).await
    }

    #[test]
    fn a_generic_handler_over_a_port_runs_and_stays_send() {
        let store = MemoryLinks::default();
        let link = Link {
            last_referral: None,
            crm_seen: None,
            version: 0,
            referral_id: ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap(),
            crm: CrmRecordId::try_from("salesforce:006000000000001").unwrap(),
            last_referral_etag: Some(ETag::try_from("\"1\"").unwrap()),
            last_referral_updated: None,
            last_fingerprint_to_crm: None,
            last_fingerprint_to_pc: None,
            last_stage_to_pc: None,
            microsoft_invited: false,
            last_crm_modified: None,
            updated_at: at(0),
            synced_fields: BTreeMap::new(),
        };
        let found = block_on(assert_send(remember(&store, &link))).unwrap();
        assert_eq!(found, Some(link.clone()));
        assert_eq!(
            block_on(store.get_by_referral(&link.referral_id)).unwrap(),
            Some(link)
        );
    }
}
