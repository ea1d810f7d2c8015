//! The sync core against in-memory stores and test fakes of Partner Center and the CRM.
//!
//! The fakes keep referrals (with eTags, `updatedDateTime` and JSON Patch application) and CRM
//! records, count every call per method, and answer queued failures. Their futures never pend,
//! so a no-op waker drives them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::ids::{CrmKind, CrmRecordId, DataverseId, ETag, ReferralId};
use crate::in_memory::{
    CallCounts, InMemoryAuditLog, InMemoryIdempotencyStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use crate::mapping::{BodyScope, MappingConfig};
use crate::opportunity::{
    Account, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityStage, RecordRef,
};
use crate::ports::Ports;
use crate::ports::{
    AuditEvent, CrmStore, IdempotencyRecord, IdempotencyStatus, Link, OpportunityWrite,
    PartnerCenter, PortError, ReferralQuery, RetryJob, RetrySource, Service, Upserted,
};
use crate::referral::{PatchOp, PatchOperation, Referral, ReferralPage};
use crate::status::{ReferralStatus, ReferralSubstatus};
use crate::values::{CurrencyCode, Money};
use crate::webhook::WebhookEvent;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drive a future whose leaves are always ready.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the fakes never pend"),
    }
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .unwrap()
}

const PARTNER_ORG: &str = "7d23e5ca-0000-4000-8000-000000000001";
const MICROSOFT_ORG: &str = "a5d7fd06-0000-4000-8000-00000000beef";
const REFERRAL: &str = "4111fffc-f9ee-4d53-bba6-569135228642";
const ENGAGEMENT: &str = "37ef26aa-1d15-4533-9f93-a69bd33ab1e5";
const MICROSOFT_REFERRAL: &str = "0a7a9a4e-6c1b-4a4e-9d65-7f1b0c0de001";

fn transient(service: Service, retry_after: Option<u64>) -> PortError {
    PortError::Transient {
        service,
        reason: "503 Service Unavailable".into(),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

/// A Microsoft co-sell invitation to the partner, as the sandbox seeds it: New/Pending, Shared,
/// owned by the partner's organization.
fn co_sell_referral() -> Referral {
    serde_json::from_value(json!({
        "id": REFERRAL,
        "engagementId": ENGAGEMENT,
        "organizationId": PARTNER_ORG,
        "organizationName": "Fabrikam Partner",
        "name": "Contoso ERP",
        "status": "New",
        "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Shared",
        "direction": "Incoming",
        "target": [ { "type": "SolutionProfile", "id": "SOL-34104-EBB" } ],
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": {
                "addressLine1": "One Microsoft Way",
                "city": "Redmond",
                "state": "WA",
                "postalCode": "98052",
                "country": "US"
            },
            "team": [ {
                "firstName": "Sue",
                "lastName": "Smith",
                "phoneNumber": "1234567890",
                "email": "sue.smith@contoso.com"
            } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": {
            "notes": "Supply chain",
            "dealValue": 50000,
            "currency": "USD",
            "closingDateTime": "2027-06-30T00:00:00Z"
        },
        "inviteContext": { "invitedBy": { "organizationId": "msft", "organizationName": "Microsoft" } }
    }))
    .unwrap()
}

/// Microsoft's own referral of the same engagement, accepted, carrying its CRM id.
fn microsoft_referral() -> Referral {
    serde_json::from_value(json!({
        "id": MICROSOFT_REFERRAL,
        "engagementId": ENGAGEMENT,
        "organizationId": MICROSOFT_ORG,
        "organizationName": "Microsoft",
        "externalReferenceId": "7-3FHL2QZ9X",
        "status": "Active",
        "substatus": "Accepted",
        "type": "Shared",
        "direction": "Outgoing"
    }))
    .unwrap()
}

fn webhook(name: &str, referral: &str, changed: DateTime<Utc>) -> WebhookEvent {
    serde_json::from_value(json!({
        "EventName": name,
        "ResourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral}"),
        "ResourceName": "referral",
        "AuditUri": null,
        "ResourceChangeUtcDate": changed.to_rfc3339()
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fake Partner Center
// ---------------------------------------------------------------------------------------------

type Edit = Box<dyn FnOnce(&mut Referral) + Send>;

/// A PATCH as sent: the referral, the `If-Match` and the operations.
type SentPatch = (ReferralId, Option<ETag>, Vec<PatchOp>);

#[derive(Default)]
struct FakePartnerCenter {
    referrals: Mutex<HashMap<ReferralId, Referral>>,
    version: Mutex<i64>,
    calls: CallCounts,
    failures: Mutex<HashMap<&'static str, VecDeque<PortError>>>,
    /// Errors answered to the next creates after storing the referral.
    lost_answers: Mutex<VecDeque<PortError>>,
    /// Failures due at a given call of a method: (method, call number, error).
    delayed_failures: Mutex<Vec<(&'static str, usize, PortError)>>,
    /// Someone else's edits, applied just before the next PATCH is checked.
    before_patch: Mutex<VecDeque<Edit>>,
    /// Answer PATCH without the new eTag (an adapter without `return=representation`).
    patch_returns_no_etag: Mutex<bool>,
    /// Every PATCH as sent: the referral, the `If-Match` and the operations.
    patches: Mutex<Vec<SentPatch>>,
}

impl FakePartnerCenter {
    /// A new version: a fresh eTag and `updatedDateTime`.
    fn touch(&self, referral: &mut Referral) {
        let mut version = lock(&self.version);
        *version += 1;
        referral.e_tag = Some(format!("\"v{}\"", *version));
        referral.updated_date_time = Some(at(*version).into());
    }

    fn insert(&self, mut referral: Referral) -> ReferralId {
        self.touch(&mut referral);
        let id = referral.referral_id().unwrap();
        lock(&self.referrals).insert(id, referral);
        id
    }

    /// A change made in Partner Center (by a person or Microsoft).
    fn edit(&self, id: ReferralId, change: impl FnOnce(&mut Referral)) -> DateTime<Utc> {
        let mut referrals = lock(&self.referrals);
        let referral = referrals.get_mut(&id).unwrap();
        change(referral);
        self.touch(referral);
        referral
            .updated_date_time
            .as_ref()
            .and_then(|d| d.instant())
            .unwrap()
    }

    fn referral(&self, id: ReferralId) -> Referral {
        lock(&self.referrals)[&id].clone()
    }

    fn fail_next(&self, method: &'static str, error: PortError) {
        lock(&self.failures)
            .entry(method)
            .or_default()
            .push_back(error);
    }

    /// `method` succeeds `after` more times, then fails once with `error`.
    fn fail_after(&self, method: &'static str, after: usize, error: PortError) {
        lock(&self.delayed_failures).push((method, self.calls.get(method) + after, error));
    }

    fn begin(&self, method: &'static str) -> Result<(), PortError> {
        self.calls.hit(method);
        let due = {
            let mut delayed = lock(&self.delayed_failures);
            let calls = self.calls.get(method);
            delayed
                .iter()
                .position(|(m, at, _)| *m == method && calls == at + 1)
                .map(|index| delayed.remove(index).2)
        };
        if let Some(error) = due {
            return Err(error);
        }
        lock(&self.failures)
            .get_mut(method)
            .and_then(VecDeque::pop_front)
            .map_or(Ok(()), Err)
    }

    fn get_now(&self, id: &ReferralId) -> Result<Referral, PortError> {
        self.begin("get_referral")?;
        lock(&self.referrals)
            .get(id)
            .cloned()
            .ok_or_else(|| PortError::NotFound {
                service: Service::PartnerCenter,
                what: format!("referral {id}"),
            })
    }

    fn list_now(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        self.begin("list_referrals")?;
        let engagement = query.engagement_id.map(|e| e.to_string());
        let mut value: Vec<Referral> = lock(&self.referrals)
            .values()
            .filter(|r| engagement.is_none() || r.engagement_id == engagement)
            .cloned()
            .collect();
        value.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ReferralPage {
            value,
            ..ReferralPage::default()
        })
    }

    fn patch_now(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Option<ETag>, PortError> {
        self.begin("patch_referral")?;
        lock(&self.patches).push((*id, if_match.cloned(), ops.to_vec()));
        let edits: Vec<Edit> = lock(&self.before_patch).drain(..).collect();
        for edit in edits {
            self.edit(*id, edit);
        }
        let mut referrals = lock(&self.referrals);
        let referral = referrals.get_mut(id).ok_or_else(|| PortError::NotFound {
            service: Service::PartnerCenter,
            what: format!("referral {id}"),
        })?;
        if let Some(expected) = if_match
            && referral.etag().as_ref() != Some(expected)
        {
            return Err(PortError::PreconditionFailed {
                service: Service::PartnerCenter,
            });
        }
        let mut json = serde_json::to_value(&*referral).unwrap();
        for op in ops {
            assert!(
                matches!(op.op, PatchOperation::Add | PatchOperation::Replace),
                "Partner Center supports add and replace only"
            );
            let mut target = &mut json;
            let segments: Vec<&str> = op.path.trim_start_matches('/').split('/').collect();
            let (last, parents) = segments.split_last().unwrap();
            for segment in parents {
                target = target
                    .as_object_mut()
                    .unwrap()
                    .entry(segment.to_string())
                    .or_insert_with(|| json!({}));
            }
            let object = target.as_object_mut().unwrap();
            if op.op == PatchOperation::Replace {
                assert!(
                    object.contains_key(*last),
                    "replace of a missing {}",
                    op.path
                );
            }
            object.insert(last.to_string(), op.value.clone().unwrap_or(Value::Null));
        }
        *referral = serde_json::from_value(json).unwrap();
        self.touch(referral);
        Ok(if *lock(&self.patch_returns_no_etag) {
            None
        } else {
            referral.etag()
        })
    }
}

impl PartnerCenter for FakePartnerCenter {
    fn get_referral(
        &self,
        id: &ReferralId,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        std::future::ready(self.get_now(id))
    }

    fn list_referrals(
        &self,
        query: &ReferralQuery,
    ) -> impl Future<Output = Result<ReferralPage, PortError>> + Send {
        std::future::ready(self.list_now(query))
    }

    fn create_referral(
        &self,
        referral: &Referral,
    ) -> impl Future<Output = Result<Referral, PortError>> + Send {
        let created = self.begin("create_referral").map(|()| {
            let mut referral = referral.clone();
            let n = lock(&self.referrals).len() as u128 + 1;
            if referral.id.is_none() {
                referral.id = Some(
                    Uuid::from_u128(0x5e11_0000_0000_4000_8000_0000_0000_0000 + n).to_string(),
                );
            }
            // A new referral starts an engagement unless it joins one.
            if referral.engagement_id.is_none() {
                referral.engagement_id = Some(
                    Uuid::from_u128(0xe9a9_0000_0000_4000_8000_0000_0000_0000 + n).to_string(),
                );
            }
            let id = self.insert(referral);
            self.referral(id)
        });
        // The referral was stored, but the answer is lost (a timeout, a 5xx after the write).
        let lost = lock(&self.lost_answers).pop_front();
        std::future::ready(match (created, lost) {
            (Ok(_), Some(error)) => Err(error),
            (created, _) => created,
        })
    }

    fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> impl Future<Output = Result<Option<ETag>, PortError>> + Send {
        std::future::ready(self.patch_now(id, if_match, ops))
    }
}

// ---------------------------------------------------------------------------------------------
// Fake CRM (a Dataverse)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Stored {
    opportunity: Opportunity,
    account: Option<CrmRecordId>,
    contact: Option<CrmRecordId>,
    audit: Option<String>,
}

#[derive(Default)]
struct CrmState {
    next: u128,
    opportunities: BTreeMap<CrmRecordId, Stored>,
    accounts: Vec<(CrmRecordId, Account)>,
    contacts: Vec<(CrmRecordId, Option<CrmRecordId>)>,
    contact_emails: Vec<String>,
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

#[derive(Default)]
struct FakeCrm {
    state: Mutex<CrmState>,
    calls: CallCounts,
    failures: Mutex<HashMap<&'static str, VecDeque<PortError>>>,
}

impl FakeCrm {
    fn fail_next(&self, method: &'static str, error: PortError) {
        lock(&self.failures)
            .entry(method)
            .or_default()
            .push_back(error);
    }

    fn begin(&self, method: &'static str) -> Result<(), PortError> {
        self.calls.hit(method);
        lock(&self.failures)
            .get_mut(method)
            .and_then(VecDeque::pop_front)
            .map_or(Ok(()), Err)
    }

    fn opportunities(&self) -> BTreeMap<CrmRecordId, Stored> {
        lock(&self.state).opportunities.clone()
    }

    fn stored(&self, id: &CrmRecordId) -> Stored {
        lock(&self.state).opportunities[id].clone()
    }

    /// An opportunity a seller created in the CRM.
    fn seed(&self, opportunity: Opportunity) -> CrmRecordId {
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.opportunities.insert(
            id.clone(),
            Stored {
                opportunity,
                account: None,
                contact: None,
                audit: None,
            },
        );
        id
    }

    fn not_found(id: &CrmRecordId) -> PortError {
        PortError::NotFound {
            service: Service::Dataverse,
            what: format!("opportunity {id}"),
        }
    }

    fn upsert_now(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        self.begin("upsert_opportunity")?;
        let mut state = lock(&self.state);
        let existing = match write.record {
            Some(id) if state.opportunities.contains_key(id) => Some(id.clone()),
            Some(id) => return Err(Self::not_found(id)),
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
                Stored {
                    opportunity,
                    account: write.account.cloned(),
                    contact: write.contact.cloned(),
                    audit: write.audit.map(str::to_owned),
                },
            );
            return Ok(Upserted { id, created: true });
        };
        let stored = state.opportunities.get_mut(&id).unwrap();
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
        Ok(Upserted { id, created: false })
    }

    fn read(&self, id: &CrmRecordId, stored: &Stored) -> CrmOpportunity {
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
        }
    }
}

impl CrmStore for FakeCrm {
    fn kind(&self) -> CrmKind {
        CrmKind::Dataverse
    }

    fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> impl Future<Output = Result<Option<CrmOpportunity>, PortError>> + Send {
        let found = self.begin("find_opportunity_by_referral").map(|()| {
            let state = lock(&self.state);
            state
                .opportunities
                .iter()
                .find(|(_, s)| s.opportunity.referral_id.as_ref() == Some(referral_id))
                .map(|(id, s)| self.read(id, s))
        });
        std::future::ready(found)
    }

    fn get_opportunity(
        &self,
        id: &CrmRecordId,
    ) -> impl Future<Output = Result<CrmOpportunity, PortError>> + Send {
        let found = self.begin("get_opportunity").and_then(|()| {
            let state = lock(&self.state);
            state
                .opportunities
                .get(id)
                .map(|s| self.read(id, s))
                .ok_or_else(|| Self::not_found(id))
        });
        std::future::ready(found)
    }

    fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> impl Future<Output = Result<Upserted, PortError>> + Send {
        std::future::ready(self.upsert_now(write))
    }

    fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        let found = self.begin("find_account").map(|()| {
            lock(&self.state)
                .accounts
                .iter()
                .find(|(_, a)| {
                    a.name.as_deref() == Some(name) && a.postal_code.as_deref() == postal_code
                })
                .map(|(id, _)| id.clone())
        });
        std::future::ready(found)
    }

    fn create_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        let created = self.begin("create_account").map(|()| {
            let mut state = lock(&self.state);
            let id = state.new_id();
            state.accounts.push((id.clone(), account.clone()));
            id
        });
        std::future::ready(created)
    }

    fn find_contact_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        let found = self.begin("find_contact_by_email").map(|()| {
            let state = lock(&self.state);
            state
                .contact_emails
                .iter()
                .position(|e| e.eq_ignore_ascii_case(email))
                .map(|i| state.contacts[i].0.clone())
        });
        std::future::ready(found)
    }

    fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        let created = self.begin("create_contact").map(|()| {
            let mut state = lock(&self.state);
            let id = state.new_id();
            state.contacts.push((id.clone(), account.cloned()));
            state
                .contact_emails
                .push(contact.email.clone().unwrap_or_default());
            id
        });
        std::future::ready(created)
    }

    fn write_audit(
        &self,
        opportunity: &CrmRecordId,
        text: &str,
    ) -> impl Future<Output = Result<(), PortError>> + Send {
        let written = self.begin("write_audit").and_then(|()| {
            let mut state = lock(&self.state);
            let stored = state
                .opportunities
                .get_mut(opportunity)
                .ok_or_else(|| Self::not_found(opportunity))?;
            stored.audit = Some(text.to_owned());
            Ok(())
        });
        std::future::ready(written)
    }
}

// ---------------------------------------------------------------------------------------------
// The world a test runs in
// ---------------------------------------------------------------------------------------------

/// The ports a test runs against: fakes of the services, the in-memory stores.
struct Fakes;

impl Ports for Fakes {
    type PartnerCenter = FakePartnerCenter;
    type Crm = FakeCrm;
    type Idempotency = InMemoryIdempotencyStore;
    type RetryQueue = InMemoryRetryQueue;
    type Audit = InMemoryAuditLog;
    type Links = InMemoryLinkStore;
}

type TestDeps<'a> = Deps<'a, Fakes>;

struct World {
    pc: FakePartnerCenter,
    crm: FakeCrm,
    idempotency: InMemoryIdempotencyStore,
    queue: InMemoryRetryQueue,
    audit: InMemoryAuditLog,
    links: InMemoryLinkStore,
    mapping: MappingConfig,
    settings: SyncSettings,
}

impl World {
    fn new() -> Self {
        Self {
            pc: FakePartnerCenter::default(),
            crm: FakeCrm::default(),
            idempotency: InMemoryIdempotencyStore::default(),
            queue: InMemoryRetryQueue::new(),
            audit: InMemoryAuditLog::new(),
            links: InMemoryLinkStore::new(),
            mapping: MappingConfig::default(),
            settings: SyncSettings {
                partner_organization_id: Some(PARTNER_ORG.into()),
                ..SyncSettings::default()
            },
        }
    }

    fn deps(&self) -> TestDeps<'_> {
        Deps {
            partner_center: &self.pc,
            crm: &self.crm,
            idempotency: &self.idempotency,
            retry_queue: &self.queue,
            audit: &self.audit,
            links: &self.links,
            mapping: &self.mapping,
            settings: &self.settings,
        }
    }

    fn delivery(now: DateTime<Utc>) -> Delivery {
        Delivery {
            correlation_id: Some("req-1".into()),
            deadline: now + chrono::Duration::seconds(30),
            now,
        }
    }

    fn handle(&self, event: &WebhookEvent, now: DateTime<Utc>) -> Result<Handled, SyncError> {
        block_on(handle_partner_center_event(
            &self.deps(),
            event,
            &Self::delivery(now),
        ))
    }

    fn outcome(&self, event: &WebhookEvent, now: DateTime<Utc>) -> Outcome {
        let handled = self.handle(event, now).unwrap();
        assert!(handled.warnings.is_empty(), "{:?}", handled.warnings);
        handled.outcome
    }

    fn retry(&self, job: &RetryJob, now: DateTime<Utc>) -> Outcome {
        block_on(run_retry_job(&self.deps(), job, &Self::delivery(now)))
            .unwrap()
            .outcome
    }

    fn pc_calls(&self) -> usize {
        self.pc.calls.total()
    }

    fn crm_calls(&self) -> usize {
        self.crm.calls.total()
    }

    fn audit_events(&self) -> Vec<AuditEvent> {
        self.audit.entries().into_iter().map(|e| e.event).collect()
    }

    /// A new co-sell referral synced once; returns its id, its CRM record and the event.
    fn synced_referral(&self) -> (ReferralId, CrmRecordId, WebhookEvent) {
        let id = self.pc.insert(co_sell_referral());
        let event = webhook("referral-created", REFERRAL, at(1));
        let Outcome::Created { crm } = self.outcome(&event, at(100)) else {
            panic!("not created");
        };
        (id, crm, event)
    }
}

fn usd(amount: i64) -> Money {
    Money::new(
        Decimal::from(amount),
        CurrencyCode::try_from("USD").unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// Partner Center → CRM
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_referral_creates_one_opportunity_with_its_customer_and_writes_the_id_back() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));

    let handled = world.handle(&event, at(100)).unwrap();

    let Outcome::Created { crm } = &handled.outcome else {
        panic!("{:?}", handled.outcome);
    };
    assert_eq!(handled.http_status(), 200);
    let records = world.crm.opportunities();
    assert_eq!(records.len(), 1);
    let stored = &records[crm];
    let o = &stored.opportunity;
    assert_eq!(o.name.as_deref(), Some("Contoso ERP"));
    assert_eq!(o.deal_value, Some(usd(50_000)));
    assert_eq!(o.closing_date, NaiveDate::from_ymd_opt(2027, 6, 30));
    assert_eq!(o.notes.as_deref(), Some("Supply chain"));
    assert_eq!(o.stage, Some(OpportunityStage::OnHold), "New → on hold");
    assert_eq!(o.referral_id, Some(id));
    assert!(o.sync && o.visible_to_microsoft);
    assert_eq!(o.account.country.map(|c| c.as_str()), Some("US"));
    let state = lock(&world.crm.state);
    assert_eq!(state.accounts.len(), 1);
    assert_eq!(state.contacts.len(), 1);
    assert_eq!(stored.account.as_ref(), Some(&state.accounts[0].0));
    assert_eq!(stored.contact.as_ref(), Some(&state.contacts[0].0));
    assert_eq!(state.contacts[0].1.as_ref(), Some(&state.accounts[0].0));
    drop(state);
    assert!(
        stored
            .audit
            .as_deref()
            .is_some_and(|a| a.contains("Created from Partner Center referral"))
    );

    let referral = world.pc.referral(id);
    assert_eq!(referral.external_reference_id, Some(crm.native()));

    // Budget: GET, upsert, PATCH, plus the account and contact look-ups and creates.
    let pc = &world.pc.calls;
    let crm_calls = &world.crm.calls;
    assert_eq!(pc.get("get_referral") + pc.get("patch_referral"), 2);
    assert_eq!(crm_calls.get("upsert_opportunity"), 1);
    assert_eq!(world.pc_calls() + crm_calls.get("upsert_opportunity"), 3);
    assert_eq!(
        crm_calls.get("find_account") + crm_calls.get("create_account"),
        2
    );
    assert_eq!(
        crm_calls.get("find_contact_by_email") + crm_calls.get("create_contact"),
        2
    );
    assert_eq!(world.crm_calls(), 5);

    let link = world.links.link(&id).unwrap();
    assert_eq!(&link.crm, crm);
    assert_eq!(
        link.last_referral_etag,
        referral.etag(),
        "the eTag after our PATCH"
    );
    assert_eq!(
        link.last_fingerprint_to_crm,
        Some(o.fingerprint()),
        "what the CRM was given"
    );
    assert_eq!(
        world.audit_events(),
        vec![
            AuditEvent::Received,
            AuditEvent::Created,
            AuditEvent::WrittenBack
        ]
    );
    let entries = world.audit.entries();
    assert!(entries.iter().all(|e| e.referral_id == Some(id)
        && e.correlation_id.as_deref() == Some("req-1")
        && e.direction == Some(crate::ports::SyncDirection::ToCrm)));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    let record = world.idempotency.record(&key).unwrap();
    assert_eq!(record.status, IdempotencyStatus::Completed);
    assert_eq!(record.expires_at, at(100 + 3600));
    assert_eq!(record.response.unwrap()["outcome"], "created");
}

#[test]
fn five_redeliveries_of_the_same_event_make_no_further_calls() {
    let world = World::new();
    let (_, _, event) = world.synced_referral();
    let (pc, crm, links) = (
        world.pc_calls(),
        world.crm_calls(),
        world.links.calls().total(),
    );

    for n in 0..5 {
        assert_eq!(
            world.outcome(&event, at(200 + n)),
            Outcome::DuplicateSkipped
        );
    }

    assert_eq!(world.pc_calls(), pc);
    assert_eq!(world.crm_calls(), crm);
    assert_eq!(world.links.calls().total(), links);
    assert_eq!(world.crm.opportunities().len(), 1);
    let skipped = world
        .audit_events()
        .into_iter()
        .filter(|e| *e == AuditEvent::DuplicateSkipped)
        .count();
    assert_eq!(skipped, 5);
}

#[test]
fn a_concurrent_duplicate_is_answered_in_progress_and_applies_nothing() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let event = webhook("referral-created", REFERRAL, at(1));
    // Another invocation holds the delivery until its Lambda deadline.
    let key = partner_center_event_key(&event, at(100)).unwrap();
    world.idempotency.insert(IdempotencyRecord {
        key: key.clone(),
        status: IdempotencyStatus::InProgress,
        expires_at: at(100 + 3600),
        in_progress_until: Some(at(130)),
        response: None,
        payload_hash: None,
    });

    let outcome = world.outcome(&event, at(110));

    assert_eq!(outcome, Outcome::InProgress);
    assert_eq!(outcome.http_status(), 409);
    assert!(outcome.redeliver_later());
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
    assert!(world.crm.opportunities().is_empty());
    assert!(world.audit.entries().is_empty());
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::InProgress
    );

    // The holder died: after its deadline the redelivery takes over, once.
    assert!(matches!(
        world.outcome(&event, at(131)),
        Outcome::Created { .. }
    ));
    assert_eq!(world.crm.opportunities().len(), 1);
}

#[test]
fn the_echo_of_our_own_write_back_makes_no_crm_call() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let crm_calls = world.crm_calls();
    // Our PATCH raised referral-updated.
    let changed = world
        .pc
        .referral(id)
        .updated_date_time
        .and_then(|d| d.instant())
        .unwrap();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(200));

    assert_eq!(outcome, Outcome::EchoSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
    let last = world.audit.entries().pop().unwrap();
    assert_eq!(last.event, AuditEvent::EchoSkipped);
    assert_eq!(last.crm, Some(crm));
}

#[test]
fn a_write_back_without_a_returned_etag_still_costs_no_crm_call_on_the_echo() {
    let world = World::new();
    *lock(&world.pc.patch_returns_no_etag) = true;
    let (id, _, _) = world.synced_referral();
    assert_eq!(world.links.link(&id).unwrap().last_referral_etag, None);
    let crm_calls = world.crm_calls();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(3)), at(200));

    // Recognised by content instead of by eTag.
    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
}

#[test]
fn a_real_update_in_partner_center_updates_the_opportunity_once() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        let details = r.details.as_mut().unwrap();
        details.deal_value = Some(Decimal::from(75_000));
        details.notes = Some("Supply chain and apps".into());
        r.name = Some("Renamed in Partner Center".into());
        r.status = Some(ReferralStatus::Active);
        r.substatus = Some(ReferralSubstatus::Accepted);
    });
    let event = webhook("referral-updated", REFERRAL, changed);
    let before = world.crm.calls.snapshot();

    assert_eq!(
        world.outcome(&event, at(300)),
        Outcome::Updated { crm: crm.clone() }
    );
    assert_eq!(world.outcome(&event, at(301)), Outcome::DuplicateSkipped);

    let stored = world.crm.stored(&crm);
    assert_eq!(stored.opportunity.deal_value, Some(usd(75_000)));
    assert_eq!(
        stored.opportunity.notes.as_deref(),
        Some("Supply chain and apps")
    );
    assert_eq!(
        stored.opportunity.stage,
        Some(OpportunityStage::Active),
        "Accepted → active stage"
    );
    assert_eq!(
        stored.opportunity.name.as_deref(),
        Some("Contoso ERP"),
        "the update scope leaves the name to the CRM user"
    );
    assert!(
        stored
            .audit
            .as_deref()
            .is_some_and(|a| a.contains("Updated from Partner Center referral"))
    );
    let after = world.crm.calls.snapshot();
    assert_eq!(
        after["upsert_opportunity"],
        before["upsert_opportunity"] + 1
    );
    assert_eq!(
        world.crm_calls(),
        before.values().sum::<usize>() + 1,
        "one CRM write, no look-ups"
    );
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        1,
        "the back-link is already there"
    );
    let link = world.links.link(&id).unwrap();
    assert_eq!(link.last_referral_etag, world.pc.referral(id).etag());
    assert_eq!(
        link.last_fingerprint_to_crm,
        Some(referral_to_opportunity_fingerprint(&world, id))
    );
}

fn referral_to_opportunity_fingerprint(world: &World, id: ReferralId) -> String {
    crate::mapping::referral_to_opportunity(&world.pc.referral(id), &world.mapping).fingerprint()
}

#[test]
fn an_update_that_changes_no_mapped_field_writes_nothing_to_the_crm() {
    let world = World::new();
    let (id, _, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.status_reason = Some("Seller reassigned".into());
    });
    let crm_calls = world.crm_calls();

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        world.pc.referral(id).etag(),
        "the link's eTag is refreshed"
    );
    assert_eq!(
        world.audit_events().last(),
        Some(&AuditEvent::UnchangedSkipped)
    );
}

#[test]
fn a_412_on_the_write_back_rereads_the_referral_once_and_retries_once() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    // Someone changes an unmapped field between our GET and our PATCH.
    lock(&world.pc.before_patch).push_back(Box::new(|r: &mut Referral| {
        r.status_reason = Some("touched".into());
    }));

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::Created { crm } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(world.pc.calls.get("get_referral"), 2, "one re-read");
    assert_eq!(world.pc.calls.get("patch_referral"), 2, "one retry");
    let referral = world.pc.referral(id);
    assert_eq!(referral.external_reference_id, Some(crm.native()));
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        referral.etag(),
        "the CRM holds the re-read content, so our PATCH's echo is recognised"
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_412_caused_by_a_real_change_does_not_hide_that_change_as_an_echo() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    lock(&world.pc.before_patch).push_back(Box::new(|r: &mut Referral| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(60_000));
    }));
    let Outcome::Created { crm } =
        world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100))
    else {
        panic!("not created");
    };
    assert_eq!(world.links.link(&id).unwrap().last_referral_etag, None);

    // The events of the other change and of our PATCH both arrive; the first syncs the change.
    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(2)), at(200));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(
        world.crm.stored(&crm).opportunity.deal_value,
        Some(usd(60_000))
    );
    assert_eq!(
        world.outcome(&webhook("referral-updated", REFERRAL, at(3)), at(201)),
        Outcome::EchoSkipped
    );
}

#[test]
fn a_second_412_after_the_reread_is_retried_later() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    for _ in 0..2 {
        world.pc.fail_next(
            "patch_referral",
            PortError::PreconditionFailed {
                service: Service::PartnerCenter,
            },
        );
    }

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert_eq!(
        outcome,
        Outcome::RetryEnqueued {
            attempt: 1,
            delay: Duration::from_secs(30)
        }
    );
    assert_eq!(world.pc.calls.get("patch_referral"), 2);
    assert_eq!(world.pc.calls.get("get_referral"), 2);
}

#[test]
fn a_crm_outage_enqueues_a_retry_with_backoff_and_completes_the_key() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.crm.fail_next(
        "upsert_opportunity",
        transient(Service::Dataverse, Some(120)),
    );
    let event = webhook("referral-created", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    assert_eq!(
        outcome,
        Outcome::RetryEnqueued {
            attempt: 1,
            delay: Duration::from_secs(120)
        },
        "Retry-After wins over the 30 s backoff"
    );
    assert_eq!(outcome.http_status(), 200);
    let jobs = world.queue.jobs();
    assert_eq!(jobs.len(), 1);
    let (job, delay) = &jobs[0];
    assert_eq!(*delay, Duration::from_secs(120));
    assert_eq!(job.source, RetrySource::PartnerCenter);
    assert_eq!(job.attempt, 1);
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert_eq!(job.key, key.as_str());
    assert_eq!(
        serde_json::from_value::<WebhookEvent>(job.payload.clone()).unwrap(),
        event
    );
    assert_eq!(
        world.idempotency.record(&key).unwrap().status,
        IdempotencyStatus::Completed
    );
    assert!(world.crm.opportunities().is_empty());
    assert_eq!(
        world.audit_events().last(),
        Some(&AuditEvent::RetryEnqueued { attempt: 1 })
    );

    // Partner Center's own redelivery does not queue the retry twice.
    assert_eq!(world.outcome(&event, at(101)), Outcome::DuplicateSkipped);
    assert_eq!(world.queue.jobs().len(), 1);
}

#[test]
fn when_the_retry_cannot_be_queued_the_key_is_released_and_the_sender_retries() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    world.queue.fail_next(transient(Service::RetryQueue, None));
    let event = webhook("referral-created", REFERRAL, at(1));

    let error = world.handle(&event, at(100)).unwrap_err();

    assert!(matches!(error, SyncError::RetryNotScheduled { .. }));
    assert_eq!(error.http_status(), 503);
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert!(world.idempotency.record(&key).is_none(), "released");
    assert_eq!(
        world.idempotency.calls().get("release"),
        2,
        "the delivery's key and the lock on creating the opportunity"
    );
    assert!(world.queue.jobs().is_empty());

    // Partner Center's redelivery runs the sync again.
    assert!(matches!(
        world.outcome(&event, at(160)),
        Outcome::Created { .. }
    ));
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        lock(&world.crm.state).accounts.len(),
        1,
        "the account made before the failure is found again"
    );
}

#[test]
fn an_unavailable_idempotency_store_makes_the_sender_deliver_again() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world
        .idempotency
        .fail_next(transient(Service::IdempotencyStore, None));

    let error = world
        .handle(&webhook("referral-created", REFERRAL, at(1)), at(100))
        .unwrap_err();

    assert!(matches!(error, SyncError::Idempotency(_)));
    assert_eq!(error.http_status(), 503);
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
}

#[test]
fn a_crm_validation_error_needs_attention_and_writes_the_fix_to_the_crm_audit_field() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().deal_value = Some(Decimal::from(1));
    });
    world.crm.fail_next(
        "upsert_opportunity",
        PortError::Permanent {
            service: Service::Dataverse,
            message: "estimatedvalue: the value is below the minimum".into(),
        },
    );
    let event = webhook("referral-updated", REFERRAL, changed);

    let outcome = world.outcome(&event, at(300));

    let Outcome::NeedsAttention { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, "rejected");
    assert!(message.contains("estimatedvalue"), "{message}");
    assert!(message.contains("Fix:"), "{message}");
    assert_eq!(outcome.http_status(), 200);
    let audit = world.crm.stored(&crm).audit.unwrap();
    assert!(
        audit.contains("Sync failed:") && audit.contains("estimatedvalue"),
        "{audit}"
    );
    assert!(audit.contains("Fix: Correct the value"), "{audit}");
    assert!(world.queue.jobs().is_empty(), "never retried");
    let failed = world.audit.entries().pop().unwrap();
    assert!(failed.needs_attention());
    assert_eq!(failed.crm, Some(crm));
    assert_eq!(world.outcome(&event, at(301)), Outcome::DuplicateSkipped);
}

#[test]
fn a_closed_referral_updates_the_crm_stage_but_is_never_patched() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    let changed = world.pc.edit(id, |r| {
        r.status = Some(ReferralStatus::Closed);
        r.substatus = Some(ReferralSubstatus::Won);
        // A back-link pointing elsewhere would normally be corrected, but a won referral takes
        // no change.
        r.external_reference_id = Some("something-else".into());
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(
        world.crm.stored(&crm).opportunity.stage,
        Some(OpportunityStage::Won)
    );
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        1,
        "only the first sync"
    );

    let changed = world.pc.edit(id, |r| {
        r.substatus = Some(ReferralSubstatus::Declined);
        r.details.as_mut().unwrap().notes = Some("Customer went elsewhere".into());
    });
    world.outcome(&webhook("referral-updated", REFERRAL, changed), at(400));
    assert_eq!(
        world.crm.stored(&crm).opportunity.stage,
        Some(OpportunityStage::Lost(LostReason::Declined)),
        "Declined → lost"
    );
}

#[test]
fn a_referral_closed_before_it_reached_the_crm_is_ignored() {
    let world = World::new();
    let mut referral = co_sell_referral();
    referral.status = Some(ReferralStatus::Closed);
    referral.substatus = Some(ReferralSubstatus::Expired);
    world.pc.insert(referral);

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(1)), at(100));

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(outcome.http_status(), 200);
    assert!(world.crm.opportunities().is_empty());
    assert_eq!(
        world.crm.calls.get("find_opportunity_by_referral"),
        1,
        "checked"
    );
    assert_eq!(world.crm_calls(), 1, "nothing created");
    assert_eq!(world.pc.calls.get("patch_referral"), 0);
}

#[test]
fn a_referral_updated_whose_link_was_lost_updates_the_existing_opportunity() {
    let world = World::new();
    let (id, crm, _) = world.synced_referral();
    // The link table was restored from an old backup.
    let links = InMemoryLinkStore::new();
    let world = World { links, ..world };
    let changed = world.pc.edit(id, |r| {
        r.details.as_mut().unwrap().notes = Some("New notes".into());
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, changed), at(300));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
}

#[test]
fn a_referral_created_from_the_crm_updates_the_opportunity_its_external_reference_names() {
    let world = World::new();
    let crm = world.crm.seed(Opportunity {
        name: Some("Contoso ERP (from CRM)".into()),
        sync: true,
        ..Opportunity::default()
    });
    let mut referral = co_sell_referral();
    referral.external_reference_id = Some(crm.native());
    let id = world.pc.insert(referral);

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    assert_eq!(world.crm.opportunities().len(), 1, "no second opportunity");
    assert_eq!(world.crm.calls.get("get_opportunity"), 1);
    assert_eq!(world.crm.calls.get("create_account"), 0);
    assert_eq!(world.crm.stored(&crm).opportunity.referral_id, Some(id));
    assert_eq!(
        world.pc.calls.get("patch_referral"),
        0,
        "the back-link is there"
    );
    assert_eq!(world.links.link(&id).unwrap().crm, crm);
}

#[test]
fn a_lead_outside_the_configured_scope_is_ignored() {
    let mut world = World::new();
    let mut lead = co_sell_referral();
    lead.referral_type = Some(crate::referral::ReferralType::Independent);
    lead.qualification = Some(crate::referral::ReferralQualification::Direct);
    world.pc.insert(lead);
    let event = webhook("referral-created", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.crm_calls(), 0);

    world.settings.referral_scope = ReferralScope::All;
    assert!(matches!(
        world.outcome(&webhook("referral-created", REFERRAL, at(2)), at(200)),
        Outcome::Created { .. }
    ));
}

#[test]
fn a_link_to_another_crm_needs_attention() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world.links.insert(Link {
        version: 0,
        referral_id: id,
        crm: CrmRecordId::try_from("salesforce:006000000000001").unwrap(),
        last_referral_etag: None,
        last_referral_updated: None,
        last_fingerprint_to_crm: None,
        last_fingerprint_to_pc: None,
        last_stage_to_pc: None,
        microsoft_invited: false,
        updated_at: at(0),
    });

    let outcome = world.outcome(&webhook("referral-updated", REFERRAL, at(1)), at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "wrong_crm",
            ..
        }
    ));
    assert_eq!(world.crm_calls(), 0);
}

#[test]
fn an_access_denied_read_needs_attention_and_names_the_missing_role() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.pc.fail_next(
        "get_referral",
        PortError::AccessDenied {
            service: Service::PartnerCenter,
            missing_role: Some("Referrals admin".into()),
            message: "403 Forbidden".into(),
        },
    );

    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));

    let Outcome::NeedsAttention { code, message } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(code, "access_denied");
    assert_eq!(
        message,
        "Partner Center denied access: 403 Forbidden. Fix: Grant the Referrals admin role to \
         the connector's user."
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn the_test_event_is_acknowledged_without_any_call() {
    let world = World::new();
    let event: WebhookEvent = serde_json::from_value(json!({
        "EventName": "test-created",
        "ResourceUri": "http://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/c0bfd694-3075-4ec5-9a3c-733d3a890a1f",
        "ResourceName": "test",
        "AuditUri": null,
        "ResourceChangeUtcDate": "2017-11-16T16:19:06.3520276+00:00"
    }))
    .unwrap();

    let handled = world.handle(&event, at(100)).unwrap();

    assert_eq!(handled.outcome, Outcome::Acknowledged);
    assert_eq!(handled.http_status(), 200);
    assert_eq!(
        world.pc_calls()
            + world.crm_calls()
            + world.idempotency.calls().total()
            + world.audit.calls().total(),
        0
    );
}

#[test]
fn an_unknown_event_is_ignored_with_http_200() {
    let world = World::new();
    let event = webhook("subscription-updated", REFERRAL, at(1));

    let outcome = world.outcome(&event, at(100));

    let Outcome::Ignored { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("subscription-updated"));
    assert_eq!(outcome.http_status(), 200);
    assert_eq!(world.pc_calls() + world.idempotency.calls().total(), 0);
}

#[test]
fn an_event_without_a_referral_id_needs_attention_without_any_service_call() {
    let world = World::new();
    let event = webhook("referral-created", "{{ReferralID}}", at(1));

    let outcome = world.outcome(&event, at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "invalid_event",
            ..
        }
    ));
    assert_eq!(outcome.http_status(), 200);
    assert_eq!(world.pc_calls() + world.crm_calls(), 0);
    assert!(world.audit.entries()[0].needs_attention());
}

// ---------------------------------------------------------------------------------------------
// Related referrals
// ---------------------------------------------------------------------------------------------

#[test]
fn a_related_referral_event_updates_the_partner_side_opportunity() {
    let world = World::new();
    let (own, crm, _) = world.synced_referral();
    world.pc.insert(microsoft_referral());
    let crm_before = world.crm.calls.snapshot();

    let outcome = world.outcome(
        &webhook("related-referral-updated", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(
        stored.opportunity.microsoft_crm_id.as_deref(),
        Some("7-3FHL2QZ9X")
    );
    let audit = stored.audit.unwrap();
    assert!(
        audit.contains("Microsoft's referral is Active/Accepted") && audit.contains("7-3FHL2QZ9X"),
        "{audit}"
    );
    assert_eq!(
        stored.opportunity.deal_value,
        Some(usd(50_000)),
        "nothing else is touched"
    );
    assert_eq!(world.pc.calls.get("list_referrals"), 1);
    assert_eq!(
        world.crm_calls(),
        crm_before.values().sum::<usize>() + 1,
        "one CRM write"
    );
    let last = world.audit.entries().pop().unwrap();
    assert_eq!(last.event, AuditEvent::Updated);
    assert_eq!(
        last.referral_id,
        Some(own),
        "audited on the partner's referral"
    );
}

#[test]
fn a_related_referral_event_naming_the_partners_own_referral_finds_microsofts_side() {
    let world = World::new();
    let (_, crm, _) = world.synced_referral();
    let mut microsoft = microsoft_referral();
    microsoft.external_reference_id = None;
    microsoft
        .extra
        .insert("MsxId".into(), json!("7-MSX-FROM-MEMBER"));
    microsoft.status = Some(ReferralStatus::Closed);
    microsoft.substatus = Some(ReferralSubstatus::Declined);
    world.pc.insert(microsoft);

    let outcome = world.outcome(
        &webhook("related-referral-updated", REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(
        stored.opportunity.microsoft_crm_id.as_deref(),
        Some("7-MSX-FROM-MEMBER")
    );
    assert!(stored.audit.unwrap().contains("Closed/Declined"));
}

#[test]
fn another_partners_external_reference_is_not_taken_for_microsofts_crm_id() {
    let world = World::new();
    let (_, crm, _) = world.synced_referral();
    let mut other = microsoft_referral();
    other.organization_name = Some("Northwind Traders".into());
    other.external_reference_id = Some("northwind-crm-42".into());
    world.pc.insert(other);

    let outcome = world.outcome(
        &webhook("related-referral-created", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert_eq!(outcome, Outcome::Updated { crm: crm.clone() });
    let stored = world.crm.stored(&crm);
    assert_eq!(stored.opportunity.microsoft_crm_id, None);
    assert!(
        stored
            .audit
            .unwrap()
            .contains("The other organization's referral is Active/Accepted")
    );
    assert_eq!(world.crm.calls.get("write_audit"), 1);
}

#[test]
fn a_related_referral_of_an_unlinked_engagement_is_ignored() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    world.pc.insert(microsoft_referral());

    let outcome = world.outcome(
        &webhook("related-referral-created", MICROSOFT_REFERRAL, at(5)),
        at(300),
    );

    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(world.crm_calls(), 0);
}

// ---------------------------------------------------------------------------------------------
// Retry jobs
// ---------------------------------------------------------------------------------------------

#[test]
fn a_retry_job_runs_the_sync_once_even_when_the_message_is_replayed() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world
        .crm
        .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    let (job, _) = world.queue.take_all().remove(0);

    let first = world.retry(&job, at(130));
    let replay = world.retry(&job, at(131));

    let Outcome::Created { crm } = first else {
        panic!("{first:?}");
    };
    assert_eq!(replay, Outcome::DuplicateSkipped);
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(
        world.crm.calls.get("upsert_opportunity"),
        2,
        "the failed one and the retry"
    );
    assert_eq!(world.pc.calls.get("patch_referral"), 1);
    let state = lock(&world.crm.state);
    assert_eq!((state.accounts.len(), state.contacts.len()), (1, 1));
    drop(state);
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(crm.native())
    );
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_failed_write_back_is_finished_by_the_retry_without_touching_the_crm_again() {
    let world = World::new();
    let id = world.pc.insert(co_sell_referral());
    world
        .pc
        .fail_next("patch_referral", transient(Service::PartnerCenter, None));
    let outcome = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    assert!(matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }));
    let link = world.links.link(&id).unwrap();
    assert_eq!(
        link.last_referral_etag, None,
        "not an echo candidate until written back"
    );
    let crm_calls = world.crm_calls();
    let (job, _) = world.queue.take_all().remove(0);

    let outcome = world.retry(&job, at(130));

    assert_eq!(outcome, Outcome::UnchangedSkipped);
    assert_eq!(world.crm_calls(), crm_calls);
    assert_eq!(
        world.pc.referral(id).external_reference_id,
        Some(link.crm.native())
    );
    assert_eq!(
        world.links.link(&id).unwrap().last_referral_etag,
        world.pc.referral(id).etag()
    );
}

#[test]
fn a_retry_that_keeps_failing_backs_off_and_needs_attention_after_the_last_attempt() {
    let mut world = World::new();
    world.settings.max_attempts = 2;
    world.pc.insert(co_sell_referral());
    for _ in 0..3 {
        world
            .crm
            .fail_next("upsert_opportunity", transient(Service::Dataverse, None));
    }
    world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(100));
    let (first, _) = world.queue.take_all().remove(0);

    assert_eq!(
        world.retry(&first, at(130)),
        Outcome::RetryEnqueued {
            attempt: 2,
            delay: Duration::from_secs(60)
        }
    );
    let (second, _) = world.queue.take_all().remove(0);
    assert_eq!(second.key, first.key);
    let last = world.retry(&second, at(200));

    let Outcome::NeedsAttention { code, message } = last else {
        panic!("{last:?}");
    };
    assert_eq!(code, "retries_exhausted");
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(world.queue.jobs().is_empty());
}

#[test]
fn a_retry_job_without_a_partner_center_event_needs_attention() {
    let world = World::new();
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: "pc:abc".into(),
        attempt: 1,
        payload: json!({ "unexpected": true }),
    };

    let outcome = world.retry(&job, at(100));

    assert!(matches!(
        outcome,
        Outcome::NeedsAttention {
            code: "invalid_retry_job",
            ..
        }
    ));
    assert!(!outcome.redeliver_later());
    assert_eq!(world.pc_calls() + world.queue.calls().total(), 0);
}

// ---------------------------------------------------------------------------------------------
// Keys, outcomes, settings
// ---------------------------------------------------------------------------------------------

#[test]
fn redeliveries_share_a_key_and_other_changes_do_not() {
    let event = webhook("referral-updated", REFERRAL, at(1));
    let key = partner_center_event_key(&event, at(100)).unwrap();
    assert!(key.as_str().starts_with("pc:") && key.as_str().len() == 3 + 64);

    // The same delivery, in camelCase and with the date written with 7 fractional digits.
    let same: WebhookEvent = serde_json::from_value(json!({
        "eventName": "ReferralUpdated",
        "resourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{REFERRAL}"),
        "resourceChangeUtcDate": "2027-01-15T08:00:01.0000000+00:00"
    }))
    .unwrap();
    assert_eq!(partner_center_event_key(&same, at(999)).unwrap(), key);

    let later = webhook("referral-updated", REFERRAL, at(2));
    let created = webhook("referral-created", REFERRAL, at(1));
    let other = webhook("referral-updated", MICROSOFT_REFERRAL, at(1));
    for different in [later, created, other] {
        assert_ne!(partner_center_event_key(&different, at(100)).unwrap(), key);
    }
}

#[test]
fn outcomes_map_to_http_statuses_and_log_names() {
    let crm = CrmRecordId::try_from("dataverse:6d81597f-0f9f-e711-8122-000d3aa2331c").unwrap();
    let cases = [
        (Outcome::Acknowledged, 200, "acknowledged"),
        (Outcome::Ignored { reason: "x".into() }, 200, "ignored"),
        (Outcome::DuplicateSkipped, 200, "duplicate_skipped"),
        (Outcome::InProgress, 409, "in_progress"),
        (Outcome::EchoSkipped, 200, "echo_skipped"),
        (Outcome::UnchangedSkipped, 200, "unchanged_skipped"),
        (Outcome::Created { crm: crm.clone() }, 200, "created"),
        (Outcome::Updated { crm: crm.clone() }, 200, "updated"),
        (
            Outcome::RetryEnqueued {
                attempt: 2,
                delay: Duration::from_secs(60),
            },
            200,
            "retry_enqueued",
        ),
        (
            Outcome::NeedsAttention {
                code: "rejected",
                message: "m".into(),
            },
            200,
            "needs_attention",
        ),
    ];
    for (outcome, status, name) in cases {
        assert_eq!(outcome.http_status(), status, "{outcome:?}");
        assert_eq!(outcome.log_name(), name);
        assert_eq!(outcome.response()["outcome"], name);
    }
    assert_eq!(
        Outcome::Created { crm: crm.clone() }.response()["crm"],
        json!(crm.to_string())
    );
}

#[test]
fn referral_categories_follow_the_documented_table() {
    use crate::referral::{ReferralQualification as Q, ReferralType as T};
    let referral = |kind: T, qualification: Q, inviter: Option<&str>| {
        let mut r = co_sell_referral();
        r.referral_type = Some(kind);
        r.qualification = Some(qualification);
        r.invite_context = inviter.map(|org| {
            serde_json::from_value(json!({ "invitedBy": { "organizationId": org } })).unwrap()
        });
        r
    };
    let cases = [
        (
            T::Independent,
            Q::Direct,
            Some("msft"),
            ReferralCategory::MarketplaceLead,
        ),
        (
            T::Independent,
            Q::Direct,
            None,
            ReferralCategory::MarketplaceLead,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            Some("msft"),
            ReferralCategory::QualifiedLead,
        ),
        (
            T::Independent,
            Q::MarketingQualified,
            Some("MSFT"),
            ReferralCategory::QualifiedLead,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            Some(PARTNER_ORG),
            ReferralCategory::CoSell,
        ),
        (
            T::Independent,
            Q::SalesQualified,
            None,
            ReferralCategory::CoSell,
        ),
        (
            T::Shared,
            Q::SalesQualified,
            Some("msft"),
            ReferralCategory::CoSell,
        ),
    ];
    for (kind, qualification, inviter, expected) in cases {
        let r = referral(kind.clone(), qualification.clone(), inviter);
        assert_eq!(
            ReferralCategory::of(&r),
            expected,
            "{kind:?} {qualification:?} {inviter:?}"
        );
        assert_eq!(
            ReferralScope::CoSellOnly.includes(&r),
            expected == ReferralCategory::CoSell
        );
        assert!(ReferralScope::All.includes(&r));
    }
}

#[test]
fn the_partners_referrals_are_told_apart_by_organization() {
    let settings = SyncSettings {
        partner_organization_id: Some(PARTNER_ORG.to_uppercase()),
        ..SyncSettings::default()
    };
    assert_eq!(settings.is_partners(&co_sell_referral()), Some(true));
    assert_eq!(settings.is_partners(&microsoft_referral()), Some(false));
    assert_eq!(
        SyncSettings::default().is_partners(&microsoft_referral()),
        None
    );
    assert_eq!(
        SyncSettings::default().idempotency_ttl,
        Duration::from_secs(3600)
    );
}

#[test]
fn the_handler_and_retry_futures_are_send() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let deps = world.deps();
    let meta = World::delivery(at(100));
    let event = webhook("referral-created", REFERRAL, at(1));
    let handled = block_on(assert_send(handle_partner_center_event(
        &deps, &event, &meta,
    )));
    assert!(matches!(handled.unwrap().outcome, Outcome::Created { .. }));
    let job = RetryJob {
        source: RetrySource::PartnerCenter,
        key: "pc:x".into(),
        attempt: 1,
        payload: serde_json::to_value(&event).unwrap(),
    };
    let retried = block_on(assert_send(run_retry_job(&deps, &job, &meta)));
    assert_eq!(retried.unwrap().outcome, Outcome::EchoSkipped);
}

#[test]
fn audit_and_completion_failures_are_reported_as_warnings_not_failures() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    let down = transient(Service::AuditLog, None);
    world.audit.fail_next(down.clone());

    let handled = world
        .handle(&webhook("referral-created", REFERRAL, at(1)), at(100))
        .unwrap();

    assert!(matches!(handled.outcome, Outcome::Created { .. }));
    assert_eq!(handled.warnings, vec![down]);
}

// ---------------------------------------------------------------------------------------------
// CRM → Partner Center
// ---------------------------------------------------------------------------------------------

mod redeliver;
mod to_pc;

#[test]
fn a_referral_whose_opportunity_another_delivery_is_creating_is_retried_not_created_twice() {
    let world = World::new();
    world.pc.insert(co_sell_referral());
    // Another delivery of the new referral holds the lock on creating its opportunity...
    let held =
        crate::ports::IdempotencyKey::new("create", &format!("referral:{REFERRAL}")).unwrap();
    block_on(crate::ports::IdempotencyStore::acquire(
        &world.idempotency,
        &held,
        at(99),
        at(300),
    ))
    .unwrap();
    // ...when this one arrives: nothing is created, it runs again later.
    let updated = webhook("referral-updated", REFERRAL, at(2));
    let outcome = world.outcome(&updated, at(100));
    assert!(
        matches!(outcome, Outcome::RetryEnqueued { attempt: 1, .. }),
        "{outcome:?}"
    );
    assert!(world.crm.opportunities().is_empty());
    assert!(
        lock(&world.crm.state).accounts.is_empty(),
        "no account made either"
    );

    // The other delivery creates the opportunity (here: its lock freed, the event again).
    block_on(crate::ports::IdempotencyStore::release(
        &world.idempotency,
        &held,
    ))
    .unwrap();
    let created = world.outcome(&webhook("referral-created", REFERRAL, at(1)), at(101));
    assert!(matches!(created, Outcome::Created { .. }), "{created:?}");
    // The retry finds the link: no second opportunity, account or contact.
    let (job, _) = world.queue.take_all().remove(0);
    let retried = world.retry(&job, at(400));
    assert!(!matches!(retried, Outcome::Created { .. }), "{retried:?}");
    assert_eq!(world.crm.opportunities().len(), 1);
    assert_eq!(lock(&world.crm.state).accounts.len(), 1);
}
