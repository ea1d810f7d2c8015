//! The simulated world: a Partner Center model and a CRM (Dataverse) model implementing the
//! port traits, a simulated clock, and the domain's in-memory stores.
//!
//! Every port call of the models yields once before it acts, so concurrent syncs interleave
//! at each call. Every write raises the webhook the real service would send (the scheduler
//! decides whether it arrives, when, and how often).

#![allow(
    clippy::manual_async_fn,
    reason = "the port impls spell out the trait's `impl Future + Send` signatures"
)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use cosell_domain::ids::{CrmKind, CrmRecordId, DataverseId, ETag, ReferralId};
use cosell_domain::mapping::BodyScope;
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity, Opportunity, RecordRef};
use cosell_domain::ports::{
    CrmStore, ListedOpportunity, OpportunityPage, OpportunityQuery, OpportunityWrite,
    PartnerCenter, Patched, PortError, ReferralQuery, Service, Upserted, create_customer,
};
use cosell_domain::referral::{PatchOp, PatchOperation, Referral, ReferralPage};
use cosell_domain::status::{ReferralStatus, ReferralSubstatus};
use cosell_domain::taxonomy::{TaxonomyConfig, TaxonomyValues};
use serde_json::{Value, json};
use uuid::Uuid;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The partner's Partner Center organization.
pub const PARTNER_ORG: &str = "7d23e5ca-0000-4000-8000-000000000001";
/// The connector's CRM user (its writes come back as changes it skips).
pub const CONNECTOR_USER: &str = "9b1e6c7a-0000-4000-8000-00000000c0de";
/// The seller editing opportunities in the CRM.
pub const SELLER: &str = "3f0c1d2e-0000-4000-8000-0000000005e1";

// ---------------------------------------------------------------------------------------------
// Clock and yielding
// ---------------------------------------------------------------------------------------------

/// The simulated clock, in milliseconds since the simulation's epoch.
#[derive(Debug, Default)]
pub struct SimClock(AtomicI64);

impl SimClock {
    /// The simulation's epoch.
    pub fn epoch() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Milliseconds since the epoch.
    pub fn millis(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        Self::epoch() + chrono::Duration::milliseconds(self.millis())
    }

    /// Move the clock forward.
    pub fn advance(&self, millis: i64) {
        self.0.fetch_add(millis.max(0), Ordering::Relaxed);
    }

    /// Move the clock to `millis` unless it is already past it.
    pub fn advance_to(&self, millis: i64) {
        self.0.fetch_max(millis, Ordering::Relaxed);
    }
}

/// A future that is pending once (waking itself), then ready: the point where the scheduler
/// may run another sync.
#[derive(Debug, Default)]
pub struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Yield to the scheduler once.
pub fn yield_now() -> YieldOnce {
    YieldOnce(false)
}

// ---------------------------------------------------------------------------------------------
// Partner Center
// ---------------------------------------------------------------------------------------------

/// A webhook Partner Center sends for a referral change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcEvent {
    /// `referral-created` or `referral-updated`.
    pub name: &'static str,
    /// The referral.
    pub referral: ReferralId,
    /// Its `ResourceChangeUtcDate`.
    pub changed: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct PcState {
    referrals: BTreeMap<ReferralId, Referral>,
    version: u64,
    next_id: u128,
    last_updated: i64,
    events: Vec<PcEvent>,
}

/// The Partner Center Referrals API model.
#[derive(Debug)]
pub struct SimPartnerCenter {
    clock: std::sync::Arc<SimClock>,
    state: Mutex<PcState>,
    calls: AtomicU64,
}

fn not_found(what: String) -> PortError {
    PortError::NotFound {
        service: Service::PartnerCenter,
        what,
    }
}

impl SimPartnerCenter {
    /// An empty Partner Center.
    pub fn new(clock: std::sync::Arc<SimClock>) -> Self {
        Self {
            clock,
            state: Mutex::default(),
            calls: AtomicU64::new(0),
        }
    }

    /// API calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn touch(&self, state: &mut PcState, referral: &mut Referral) {
        state.version += 1;
        // Strictly increasing, so no two changes share a `ResourceChangeUtcDate`.
        let millis = self.clock.millis().max(state.last_updated + 1);
        state.last_updated = millis;
        referral.e_tag = Some(format!("\"v{}\"", state.version));
        let at = SimClock::epoch() + chrono::Duration::milliseconds(millis);
        referral.updated_date_time = Some(at.into());
    }

    fn raise(state: &mut PcState, name: &'static str, referral: &Referral) {
        if let (Ok(id), Some(changed)) = (
            referral.referral_id(),
            referral
                .updated_date_time
                .as_ref()
                .and_then(cosell_domain::WireDateTime::instant),
        ) {
            state.events.push(PcEvent {
                name,
                referral: id,
                changed,
            });
        }
    }

    fn store_new(&self, mut referral: Referral) -> Referral {
        let mut state = lock(&self.state);
        state.next_id += 1;
        let n = state.next_id;
        referral.id =
            Some(Uuid::from_u128(0x5e11_0000_0000_4000_8000_0000_0000_0000 + n).to_string());
        if referral.engagement_id.is_none() {
            referral.engagement_id =
                Some(Uuid::from_u128(0xe9a9_0000_0000_4000_8000_0000_0000_0000 + n).to_string());
        }
        self.touch(&mut state, &mut referral);
        Self::raise(&mut state, "referral-created", &referral);
        if let Ok(id) = referral.referral_id() {
            state.referrals.insert(id, referral.clone());
        }
        referral
    }

    /// A Microsoft user (or Microsoft's systems) shares a new co-sell referral with the partner.
    pub fn microsoft_creates(&self, n: u64) -> ReferralId {
        let referral: Result<Referral, _> = serde_json::from_value(json!({
            "organizationId": PARTNER_ORG,
            "organizationName": "Fabrikam Partner",
            "name": format!("Deal {n}"),
            "status": "Active",
            "substatus": "Accepted",
            "qualification": "SalesQualified",
            "type": "Shared",
            "direction": "Incoming",
            "target": [ { "type": "SolutionProfile", "id": "SOL-34104-EBB" } ],
            "customerProfile": {
                "name": format!("Customer {n}"),
                "address": { "city": "Redmond", "postalCode": "98052", "country": "US" },
                "team": [ {
                    "firstName": "Sue", "lastName": "Smith", "phoneNumber": "1234567890",
                    "email": format!("sue{n}@contoso.example")
                } ]
            },
            "consent": { "consentToShareReferralWithMicrosoftSellers": true },
            "details": {
                "notes": format!("ms-initial-{n}"),
                "dealValue": 1000 + n,
                "currency": "USD",
                "closingDateTime": "2027-06-30T00:00:00Z"
            },
            "inviteContext": { "invitedBy": { "organizationId": "msft", "organizationName": "Microsoft" } }
        }));
        let stored = referral.map(|r| self.store_new(r));
        stored
            .ok()
            .and_then(|r| r.referral_id().ok())
            .unwrap_or_else(|| ReferralId::from(Uuid::nil()))
    }

    /// A Microsoft user edits a referral's notes and deal value; `false` when it cannot be
    /// edited (unknown or closed).
    pub fn microsoft_edits(&self, id: ReferralId, notes: &str, deal_value: u64) -> bool {
        let mut state = lock(&self.state);
        let Some(mut referral) = state.referrals.get(&id).cloned() else {
            return false;
        };
        if referral.is_terminal() {
            return false;
        }
        let details = referral.details.get_or_insert_with(Default::default);
        details.notes = Some(notes.to_owned());
        details.deal_value = Some(rust_decimal::Decimal::from(deal_value));
        self.touch(&mut state, &mut referral);
        Self::raise(&mut state, "referral-updated", &referral);
        state.referrals.insert(id, referral);
        true
    }

    /// Every referral, by id.
    pub fn referrals(&self) -> BTreeMap<ReferralId, Referral> {
        lock(&self.state).referrals.clone()
    }

    /// The webhooks raised since the last call.
    pub fn take_events(&self) -> Vec<PcEvent> {
        std::mem::take(&mut lock(&self.state).events)
    }

    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn get_now(&self, id: &ReferralId) -> Result<Referral, PortError> {
        self.hit();
        lock(&self.state)
            .referrals
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("referral {id}")))
    }

    /// Pages of 5, filtered as the query asks, oldest change first.
    fn list_now(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        self.hit();
        const PAGE: usize = 5;
        let (query, skip) = match &query.next_link {
            Some(link) => {
                let (skip, rest) = link.split_once('|').unwrap_or(("0", ""));
                let since = rest.split('|').next().unwrap_or("");
                let engagement = rest.split('|').nth(1).unwrap_or("");
                let q = ReferralQuery {
                    updated_since: DateTime::parse_from_rfc3339(since)
                        .ok()
                        .map(|d| d.with_timezone(&Utc)),
                    engagement_id: cosell_domain::EngagementId::try_from(engagement).ok(),
                    ..ReferralQuery::default()
                };
                (q, skip.parse::<usize>().unwrap_or(0))
            }
            None => (query.clone(), 0),
        };
        let state = lock(&self.state);
        let mut matching: Vec<&Referral> = state
            .referrals
            .values()
            .filter(|r| {
                query
                    .engagement_id
                    .is_none_or(|e| r.engagement_id.as_deref() == Some(&e.to_string()))
                    && query
                        .status
                        .as_ref()
                        .is_none_or(|s| r.status.as_ref() == Some(s))
                    && query.updated_since.is_none_or(|since| {
                        r.updated_date_time
                            .as_ref()
                            .and_then(cosell_domain::WireDateTime::instant)
                            .is_some_and(|u| u >= since)
                    })
            })
            .collect();
        matching.sort_by_key(|r| {
            r.updated_date_time
                .as_ref()
                .and_then(cosell_domain::WireDateTime::instant)
        });
        let value: Vec<Referral> = matching
            .iter()
            .skip(skip)
            .take(PAGE)
            .map(|r| (*r).clone())
            .collect();
        let next_link = (skip + PAGE < matching.len()).then(|| {
            format!(
                "{}|{}|{}",
                skip + PAGE,
                query
                    .updated_since
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
                query
                    .engagement_id
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )
        });
        Ok(ReferralPage {
            value,
            next_link,
            ..ReferralPage::default()
        })
    }

    /// Store a referral the connector creates; exposed for the fault layer's "timeout after
    /// the write".
    pub(crate) fn create_now(&self, referral: &Referral) -> Result<Referral, PortError> {
        self.hit();
        // Deals a partner creates start accepted, whatever status the body carries
        // (docs/partner-center.md#referral-status-rules).
        let mut referral = referral.clone();
        referral.status = Some(ReferralStatus::Active);
        referral.substatus = Some(ReferralSubstatus::Accepted);
        Ok(self.store_new(referral))
    }

    pub(crate) fn patch_now(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Patched, PortError> {
        self.hit();
        let mut state = lock(&self.state);
        let current = state
            .referrals
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("referral {id}")))?;
        if let Some(expected) = if_match
            && current.etag().as_ref() != Some(expected)
        {
            return Err(PortError::PreconditionFailed {
                service: Service::PartnerCenter,
            });
        }
        let mut doc = serde_json::to_value(&current).unwrap_or(Value::Null);
        for op in ops {
            if !matches!(op.op, PatchOperation::Add | PatchOperation::Replace) {
                return Err(PortError::Permanent {
                    service: Service::PartnerCenter,
                    message: format!("unsupported patch operation on {}", op.path),
                });
            }
            let segments: Vec<&str> = op.path.trim_start_matches('/').split('/').collect();
            let Some((last, parents)) = segments.split_last() else {
                continue;
            };
            let mut target = &mut doc;
            for segment in parents {
                target = match target {
                    Value::Object(object) => object
                        .entry((*segment).to_owned())
                        .or_insert_with(|| json!({})),
                    other => other,
                };
            }
            let Some(object) = target.as_object_mut() else {
                continue;
            };
            if op.op == PatchOperation::Replace && !object.contains_key(*last) {
                return Err(PortError::Permanent {
                    service: Service::PartnerCenter,
                    message: format!("replace of a missing member {}", op.path),
                });
            }
            object.insert((*last).to_owned(), op.value.clone().unwrap_or(Value::Null));
        }
        let mut referral: Referral =
            serde_json::from_value(doc).map_err(|e| PortError::Permanent {
                service: Service::PartnerCenter,
                message: format!("invalid patch: {e}"),
            })?;
        self.touch(&mut state, &mut referral);
        Self::raise(&mut state, "referral-updated", &referral);
        let patched = Patched::of(&referral);
        state.referrals.insert(*id, referral);
        Ok(patched)
    }
}

impl PartnerCenter for SimPartnerCenter {
    fn get_referral(
        &self,
        id: &ReferralId,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        let id = *id;
        async move {
            yield_now().await;
            self.get_now(&id)
        }
    }

    fn list_referrals(
        &self,
        query: &ReferralQuery,
    ) -> impl Future<Output = Result<ReferralPage, PortError>> + Send {
        async move {
            yield_now().await;
            self.list_now(query)
        }
    }

    fn create_referral(
        &self,
        referral: &Referral,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        async move {
            yield_now().await;
            self.create_now(referral)
        }
    }

    fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> impl Future<Output = Result<Patched, PortError>> + Send {
        async move {
            yield_now().await;
            self.patch_now(id, if_match, ops)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CRM (Dataverse)
// ---------------------------------------------------------------------------------------------

/// An opportunity as the CRM keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOpportunity {
    /// The values.
    pub opportunity: Opportunity,
    /// Its customer account.
    pub account: Option<CrmRecordId>,
    /// Its customer contact.
    pub contact: Option<CrmRecordId>,
    /// The Audit column.
    pub audit: Option<String>,
    /// Bumped by every write.
    pub version: u64,
    /// When it was last written.
    pub modified_at: DateTime<Utc>,
    /// Who wrote it last.
    pub modified_by: String,
}

/// A change the CRM announces (a Dataverse webhook).
#[derive(Debug, Clone)]
pub struct CrmEvent {
    /// The Dataverse `OperationId` (one per save).
    pub operation: u64,
    /// The row version the save gave the record (`versionnumber` of the post image).
    pub version: u64,
    /// The record.
    pub record: CrmRecordId,
    /// Who saved it.
    pub writer: String,
    /// The record as saved (the webhook's attributes).
    pub snapshot: CrmOpportunity,
    /// When it was saved (the image's `modifiedon`).
    pub modified_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct CrmState {
    next: u128,
    operation: u64,
    opportunities: BTreeMap<CrmRecordId, StoredOpportunity>,
    accounts: Vec<(CrmRecordId, Account)>,
    contacts: Vec<(CrmRecordId, String)>,
    events: Vec<CrmEvent>,
}

impl CrmState {
    fn new_id(&mut self) -> CrmRecordId {
        self.next += 1;
        DataverseId::from(Uuid::from_u128(
            0x6d81_597f_0000_0000_0000_0000_0000_0000 + self.next,
        ))
        .into()
    }
}

/// The CRM model (a Dataverse).
#[derive(Debug)]
pub struct SimCrm {
    clock: std::sync::Arc<SimClock>,
    state: Mutex<CrmState>,
    calls: AtomicU64,
}

fn crm_not_found(id: &CrmRecordId) -> PortError {
    PortError::NotFound {
        service: Service::Dataverse,
        what: format!("opportunity {id}"),
    }
}

/// Dataverse keeps a won or lost opportunity read-only until it is reopened: a write that
/// does not reopen it is refused (400, a permanent error naming the fix), as the sandbox and
/// Dataverse do (docs/dataverse.md#closing-an-opportunity).
fn refuse_closed(stored: &StoredOpportunity, reopens: bool) -> Result<(), PortError> {
    match stored.opportunity.stage {
        Some(stage) if stage.is_closed() && !reopens => Err(PortError::Permanent {
            service: Service::Dataverse,
            message: format!(
                "The opportunity is closed ({stage:?}) and can't be updated. Reopen it first."
            ),
        }),
        _ => Ok(()),
    }
}

/// A row version as Dataverse's `@odata.etag` spells it.
fn row_version(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// The record as the CRM answers it.
pub fn read(id: &CrmRecordId, stored: &StoredOpportunity) -> CrmOpportunity {
    CrmOpportunity {
        record: RecordRef {
            crm: CrmKind::Dataverse,
            entity: "opportunity".into(),
            id: Some(id.clone()),
            name: stored.opportunity.name.clone(),
        },
        opportunity: stored.opportunity.clone(),
        rejected: Vec::new(),
        amount: stored.opportunity.deal_value.map(|m| m.amount),
        currency: stored.opportunity.deal_value.map(|m| m.currency),
        version: Some(row_version(stored.version)),
        audit: stored.audit.clone(),
        taxonomy: SELLER_TAXONOMY.clone(),
    }
}

/// The Solution Area, Solution Play and Partner Role every seller's opportunity holds: allowed
/// by the default configuration, so a referral may be created from it.
static SELLER_TAXONOMY: std::sync::LazyLock<TaxonomyValues> =
    std::sync::LazyLock::new(|| TaxonomyConfig::default().first_allowed());

impl SimCrm {
    /// An empty CRM.
    pub fn new(clock: std::sync::Arc<SimClock>) -> Self {
        Self {
            clock,
            state: Mutex::default(),
            calls: AtomicU64::new(0),
        }
    }

    /// API calls answered so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn saved(&self, state: &mut CrmState, id: &CrmRecordId, writer: &str) {
        state.operation += 1;
        let operation = state.operation;
        let now = self.clock.now();
        if let Some(stored) = state.opportunities.get_mut(id) {
            stored.version += 1;
            stored.modified_at = now;
            stored.modified_by = writer.to_owned();
            let snapshot = read(id, stored);
            state.events.push(CrmEvent {
                operation,
                version: stored.version,
                record: id.clone(),
                writer: writer.to_owned(),
                snapshot,
                modified_at: now,
            });
        }
    }

    /// A seller creates an opportunity with "Sync with Partner Center" on.
    pub fn seller_creates(&self, n: u64) -> CrmRecordId {
        let opportunity = Opportunity {
            name: Some(format!("Rollout {n}")),
            deal_value: Some(usd(2000 + n)),
            closing_date: NaiveDate::from_ymd_opt(2027, 9, 30),
            notes: Some(format!("seller-initial-{n}")),
            stage: Some(cosell_domain::OpportunityStage::Active),
            account: Account {
                name: Some(format!("Fabrikam {n}")),
                city: Some("Oslo".into()),
                postal_code: Some("0150".into()),
                country: cosell_domain::CountryCode::try_from("NO").ok(),
                ..Account::default()
            },
            contact: Some(Contact {
                first_name: Some("Kari".into()),
                last_name: Some("Nordmann".into()),
                email: Some(format!("kari{n}@fabrikam.example")),
                phone: None,
            }),
            solutions: cosell_domain::SolutionId::try_from("SOL-34104-EBB")
                .ok()
                .into_iter()
                .collect(),
            visible_to_microsoft: true,
            sync: true,
            ..Opportunity::default()
        };
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.opportunities.insert(
            id.clone(),
            StoredOpportunity {
                opportunity,
                account: None,
                contact: None,
                audit: None,
                version: 0,
                modified_at: self.clock.now(),
                modified_by: SELLER.into(),
            },
        );
        self.saved(&mut state, &id, SELLER);
        id
    }

    /// A seller edits an opportunity's notes and deal value.
    pub fn seller_edits(&self, id: &CrmRecordId, notes: &str, deal_value: u64) -> bool {
        let mut state = lock(&self.state);
        let Some(stored) = state.opportunities.get_mut(id) else {
            return false;
        };
        if stored.opportunity.stage.is_some_and(|s| s.is_closed()) {
            return false;
        }
        stored.opportunity.notes = Some(notes.to_owned());
        stored.opportunity.deal_value = Some(usd(deal_value));
        self.saved(&mut state, id, SELLER);
        true
    }

    /// A seller closes an opportunity as won or lost (in Dataverse the `Win` / `Lose` message);
    /// `false` when it is unknown or already closed.
    pub fn seller_closes(&self, id: &CrmRecordId, stage: cosell_domain::OpportunityStage) -> bool {
        let mut state = lock(&self.state);
        let Some(stored) = state.opportunities.get_mut(id) else {
            return false;
        };
        if stored.opportunity.stage.is_some_and(|s| s.is_closed()) {
            return false;
        }
        stored.opportunity.stage = Some(stage);
        self.saved(&mut state, id, SELLER);
        true
    }

    /// Every opportunity.
    pub fn opportunities(&self) -> BTreeMap<CrmRecordId, StoredOpportunity> {
        lock(&self.state).opportunities.clone()
    }

    /// The changes announced since the last call.
    pub fn take_events(&self) -> Vec<CrmEvent> {
        std::mem::take(&mut lock(&self.state).events)
    }

    /// The row version of `id` as the write's representation answers it.
    fn version_of(&self, state: &CrmState, id: &CrmRecordId) -> Option<String> {
        state
            .opportunities
            .get(id)
            .map(|stored| row_version(stored.version))
    }

    pub(crate) fn upsert_now(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        self.hit();
        let mut state = lock(&self.state);
        let existing = match write.record {
            Some(id) if state.opportunities.contains_key(id) => Some(id.clone()),
            Some(id) => return Err(crm_not_found(id)),
            None => state
                .opportunities
                .iter()
                .find(|(_, s)| s.opportunity.referral_id.as_ref() == Some(write.referral_id))
                .map(|(id, _)| id.clone()),
        };
        let Some(id) = existing else {
            let id = state.new_id();
            let mut opportunity = write.opportunity.clone();
            opportunity.referral_id = Some(*write.referral_id);
            state.opportunities.insert(
                id.clone(),
                StoredOpportunity {
                    opportunity,
                    account: write.account.cloned(),
                    contact: write.contact.cloned(),
                    audit: write.audit.map(str::to_owned),
                    version: 0,
                    modified_at: self.clock.now(),
                    modified_by: CONNECTOR_USER.into(),
                },
            );
            self.saved(&mut state, &id, CONNECTOR_USER);
            let version = self.version_of(&state, &id);
            return Ok(Upserted {
                id,
                created: true,
                version,
            });
        };
        if let (Some(expected), Some(stored)) = (write.if_match, state.opportunities.get(&id))
            && expected != "*"
            && expected != row_version(stored.version)
        {
            // `If-Match` with a version the row has moved past (Dataverse: 412).
            return Err(PortError::PreconditionFailed {
                service: Service::Dataverse,
            });
        }
        if let Some(stored) = state.opportunities.get(&id) {
            let reopens = write.opportunity.stage.is_some_and(|s| !s.is_closed());
            refuse_closed(stored, reopens)?;
        }
        if let Some(stored) = state.opportunities.get_mut(&id) {
            let new = write.opportunity;
            match write.scope {
                BodyScope::Create => stored.opportunity = new.clone(),
                BodyScope::Update => {
                    let o = &mut stored.opportunity;
                    o.deal_value = new.deal_value.or(o.deal_value);
                    o.closing_date = new.closing_date.or(o.closing_date);
                    o.notes = new.notes.clone().or(o.notes.take());
                    o.stage = new.stage.or(o.stage);
                    o.referral_link = new.referral_link.clone().or(o.referral_link.take());
                    o.microsoft_crm_id = new.microsoft_crm_id.clone().or(o.microsoft_crm_id.take());
                }
            }
            stored.opportunity.referral_id = Some(*write.referral_id);
            if let Some(audit) = write.audit {
                stored.audit = Some(audit.to_owned());
            }
        }
        self.saved(&mut state, &id, CONNECTOR_USER);
        let version = self.version_of(&state, &id);
        Ok(Upserted {
            id,
            created: false,
            version,
        })
    }

    pub(crate) fn create_account_now(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        self.hit();
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.accounts.push((id.clone(), account.clone()));
        Ok(id)
    }

    pub(crate) fn create_contact_now(&self, contact: &Contact) -> Result<CrmRecordId, PortError> {
        self.hit();
        let mut state = lock(&self.state);
        let id = state.new_id();
        state
            .contacts
            .push((id.clone(), contact.email.clone().unwrap_or_default()));
        Ok(id)
    }

    pub(crate) fn write_audit_now(&self, id: &CrmRecordId, text: &str) -> Result<(), PortError> {
        self.hit();
        let mut state = lock(&self.state);
        let stored = state
            .opportunities
            .get_mut(id)
            .ok_or_else(|| crm_not_found(id))?;
        refuse_closed(stored, false)?;
        stored.audit = Some(text.to_owned());
        self.saved(&mut state, id, CONNECTOR_USER);
        Ok(())
    }

    /// The accounts and contacts (for duplicate checks).
    pub fn customers(&self) -> (Vec<Account>, Vec<String>) {
        let state = lock(&self.state);
        (
            state.accounts.iter().map(|(_, a)| a.clone()).collect(),
            state.contacts.iter().map(|(_, e)| e.clone()).collect(),
        )
    }
}

/// `amount` US dollars.
pub fn usd(amount: u64) -> cosell_domain::Money {
    cosell_domain::Money {
        amount: rust_decimal::Decimal::from(amount),
        currency: cosell_domain::CurrencyCode::try_from("USD")
            .unwrap_or_else(|_| unreachable_currency()),
    }
}

fn unreachable_currency() -> cosell_domain::CurrencyCode {
    // USD always parses; this is never reached.
    cosell_domain::CurrencyCode::try_from("EUR").unwrap_or_else(|_| unreachable_currency())
}

impl CrmStore for SimCrm {
    fn kind(&self) -> CrmKind {
        CrmKind::Dataverse
    }

    fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<CrmOpportunity>, PortError>> + Send {
        let referral_id = *referral_id;
        async move {
            yield_now().await;
            self.hit();
            let state = lock(&self.state);
            Ok(state
                .opportunities
                .iter()
                .find(|(_, s)| s.opportunity.referral_id == Some(referral_id))
                .map(|(id, s)| read(id, s)))
        }
    }

    fn get_opportunity(
        &self,
        id: &CrmRecordId,
    ) -> impl Future<Output = Result<CrmOpportunity, PortError>> + Send {
        async move {
            yield_now().await;
            self.hit();
            let state = lock(&self.state);
            state
                .opportunities
                .get(id)
                .map(|s| read(id, s))
                .ok_or_else(|| crm_not_found(id))
        }
    }

    /// A Dataverse: the new records first, one request each, then the upsert.
    fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> impl Future<Output = Result<Upserted, PortError>> + Send {
        async move {
            let (account, contact) = create_customer(self, write).await?;
            yield_now().await;
            self.upsert_now(&write.linked(account.as_ref(), contact.as_ref()))
        }
    }

    fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        async move {
            yield_now().await;
            self.hit();
            Ok(lock(&self.state)
                .accounts
                .iter()
                .find(|(_, a)| {
                    a.name.as_deref() == Some(name) && a.postal_code.as_deref() == postal_code
                })
                .map(|(id, _)| id.clone()))
        }
    }

    fn create_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        async move {
            yield_now().await;
            self.create_account_now(account)
        }
    }

    fn find_contact_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        async move {
            yield_now().await;
            self.hit();
            Ok(lock(&self.state)
                .contacts
                .iter()
                .find(|(_, e)| e.eq_ignore_ascii_case(email))
                .map(|(id, _)| id.clone()))
        }
    }

    fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        let _ = account;
        async move {
            yield_now().await;
            self.create_contact_now(contact)
        }
    }

    fn write_audit(
        &self,
        opportunity: &CrmRecordId,
        text: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        async move {
            yield_now().await;
            self.write_audit_now(opportunity, text)
        }
    }

    fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> impl Future<Output = Result<OpportunityPage, PortError>> + Send {
        async move {
            yield_now().await;
            self.hit();
            // Keyset paging, as the adapters ask Dataverse: `(modifiedon, id)` after the
            // query's position, in that order, at most `top`.
            let state = lock(&self.state);
            let after = |id: &CrmRecordId, s: &StoredOpportunity| match &query.after {
                None => s.modified_at >= query.modified_since,
                Some(last) => {
                    s.modified_at > query.modified_since
                        || (s.modified_at == query.modified_since
                            && id.to_string() > last.to_string())
                }
            };
            let mut matching: Vec<(&CrmRecordId, &StoredOpportunity)> = state
                .opportunities
                .iter()
                .filter(|(id, s)| s.opportunity.sync && after(id, s))
                .collect();
            matching.sort_by_key(|(id, s)| (s.modified_at, id.to_string()));
            let items = matching
                .iter()
                .take(query.top as usize)
                .map(|(id, s)| ListedOpportunity {
                    opportunity: read(id, s),
                    modified_at: Some(s.modified_at),
                    modified_by: Some(s.modified_by.clone()),
                    complete: true,
                })
                .collect();
            Ok(OpportunityPage { items })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// The link table with the in-memory store's semantics (versioned `put`), kept in referral
/// order so that `get_by_crm` answers the same link on every run when two name one record
/// (the in-memory store iterates a `HashMap`, whose order differs between runs).
/// Claims of referrals without a link ([`LinkStore::claim`]) are kept with their deadline.
///
/// [`LinkStore::claim`]: cosell_domain::ports::LinkStore::claim
#[derive(Debug, Default)]
pub struct SimLinks(
    Mutex<BTreeMap<ReferralId, cosell_domain::ports::Link>>,
    Mutex<BTreeMap<ReferralId, chrono::DateTime<chrono::Utc>>>,
);

impl cosell_domain::ports::LinkStore for SimLinks {
    async fn get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<cosell_domain::ports::Link>, PortError> {
        Ok(lock(&self.0).get(referral_id).cloned())
    }

    async fn get_by_crm(
        &self,
        crm: &CrmRecordId,
    ) -> Result<Option<cosell_domain::ports::Link>, PortError> {
        Ok(lock(&self.0).values().find(|l| &l.crm == crm).cloned())
    }

    async fn put(&self, link: &cosell_domain::ports::Link) -> Result<(), PortError> {
        let mut links = lock(&self.0);
        let stored = links.get(&link.referral_id).map_or(0, |s| s.version);
        if stored != link.version {
            return Err(PortError::PreconditionFailed {
                service: Service::LinkStore,
            });
        }
        links.insert(
            link.referral_id,
            cosell_domain::ports::Link {
                version: link.version + 1,
                ..link.clone()
            },
        );
        lock(&self.1).remove(&link.referral_id);
        Ok(())
    }

    async fn claim(
        &self,
        referral_id: &ReferralId,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<cosell_domain::ports::Claim, PortError> {
        use cosell_domain::ports::Claim;
        if let Some(link) = lock(&self.0).get(referral_id) {
            return Ok(Claim::Linked(Box::new(link.clone())));
        }
        let mut claims = lock(&self.1);
        Ok(match claims.insert(*referral_id, until) {
            Some(held) if held >= now => {
                claims.insert(*referral_id, held);
                Claim::Busy
            }
            earlier => Claim::Claimed {
                earlier: earlier.is_some(),
            },
        })
    }

    async fn release_claim(&self, referral_id: &ReferralId) -> Result<(), PortError> {
        if let Some(held) = lock(&self.1).get_mut(referral_id) {
            *held = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        }
        Ok(())
    }
}
