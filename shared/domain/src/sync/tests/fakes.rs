//! The fakes a sync test runs against: Partner Center and a CRM (a Dataverse) that keep
//! referrals (with eTags, `updatedDateTime` and JSON Patch application) and CRM records, count
//! every call per method and answer queued failures, and the [`World`] that wires them to the
//! in-memory stores. Their futures never pend; `block_on` (re-exported here) drives them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeZone, Utc};
pub(super) use futures::executor::block_on;
use serde_json::{Value, json};
use uuid::Uuid;

use super::fixtures::{PARTNER_ORG, REFERRAL, co_sell_referral, webhook};
use crate::ids::{CrmKind, CrmRecordId, DataverseId, ETag, ReferralId};
use crate::in_memory::{
    CallCounts, InMemoryAuditLog, InMemoryIdempotencyStore, InMemoryLinkStore, InMemoryRetryQueue,
};
use crate::mapping::{BodyScope, MappingConfig};
use crate::opportunity::{
    Account, Contact, CrmOpportunity, Opportunity, OpportunityStage, RecordRef,
};
use crate::ports::{
    ApiRequest, AuditEvent, CombinedOperation, CrmStore, FoundCustomer, OpportunityWrite,
    PartnerCenter, Patched, PortError, Ports, ReferralQuery, RetryJob, Service, Upserted,
    customer_keys, find_customer_plainly,
};
use crate::referral::{PatchOp, PatchOperation, Referral, ReferralPage};
use crate::status::{ReferralStatus, ReferralSubstatus};
use crate::sync::{
    Delivery, Deps, Handled, Outcome, SyncError, SyncSettings, handle_partner_center_event,
    run_retry_job,
};
use crate::taxonomy::TaxonomyValues;
use crate::webhook::WebhookEvent;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn assert_send<T: Send>(value: T) -> T {
    value
}

pub(super) fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fake Partner Center
// ---------------------------------------------------------------------------------------------

pub(super) type Edit = Box<dyn FnOnce(&mut Referral) + Send>;

/// A PATCH as sent: the referral, the `If-Match` and the operations.
pub(super) type SentPatch = (ReferralId, Option<ETag>, Vec<PatchOp>);

#[derive(Default)]
pub(super) struct FakePartnerCenter {
    pub(super) referrals: Mutex<HashMap<ReferralId, Referral>>,
    version: Mutex<i64>,
    pub(super) calls: CallCounts,
    failures: Mutex<HashMap<&'static str, VecDeque<PortError>>>,
    /// Errors answered to the next creates after storing the referral.
    pub(super) lost_answers: Mutex<VecDeque<PortError>>,
    /// Failures due at a given call of a method: (method, call number, error).
    delayed_failures: Mutex<Vec<(&'static str, usize, PortError)>>,
    /// Someone else's edits, applied just before the next PATCH is checked.
    pub(super) before_patch: Mutex<VecDeque<Edit>>,
    /// Answer PATCH without the new eTag (an adapter without `return=representation`).
    pub(super) patch_returns_no_etag: Mutex<bool>,
    /// Every PATCH Partner Center took: the referral, the `If-Match` and the operations.
    pub(super) patches: Mutex<Vec<SentPatch>>,
}

impl FakePartnerCenter {
    /// A new version: a fresh eTag and `updatedDateTime`.
    fn touch(&self, referral: &mut Referral) {
        let mut version = lock(&self.version);
        *version += 1;
        referral.e_tag = Some(format!("\"v{}\"", *version));
        referral.updated_date_time = Some(at(*version).into());
    }

    /// Partner Center's clock: the next change is stamped one second after `instant`.
    pub(super) fn set_clock(&self, instant: DateTime<Utc>) {
        *lock(&self.version) = (instant - at(0)).num_seconds();
    }

    /// A referral last changed at `updated` (another user's, not the connector's).
    pub(super) fn insert_at(&self, mut referral: Referral, updated: DateTime<Utc>) -> ReferralId {
        self.touch(&mut referral);
        referral.updated_date_time = Some(updated.into());
        let id = referral.referral_id().unwrap();
        lock(&self.referrals).insert(id, referral);
        id
    }

    pub(super) fn insert(&self, mut referral: Referral) -> ReferralId {
        self.touch(&mut referral);
        let id = referral.referral_id().unwrap();
        lock(&self.referrals).insert(id, referral);
        id
    }

    /// A change made in Partner Center (by a person or Microsoft).
    pub(super) fn edit(&self, id: ReferralId, change: impl FnOnce(&mut Referral)) -> DateTime<Utc> {
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

    pub(super) fn referral(&self, id: ReferralId) -> Referral {
        lock(&self.referrals)[&id].clone()
    }

    pub(super) fn fail_next(&self, method: &'static str, error: PortError) {
        lock(&self.failures)
            .entry(method)
            .or_default()
            .push_back(error);
    }

    /// `method` succeeds `after` more times, then fails once with `error`.
    pub(super) fn fail_after(&self, method: &'static str, after: usize, error: PortError) {
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
        let updated = |r: &Referral| r.updated_date_time.as_ref().and_then(|d| d.instant());
        let mut value: Vec<Referral> = lock(&self.referrals)
            .values()
            .filter(|r| engagement.is_none() || r.engagement_id == engagement)
            .filter(|r| {
                query
                    .updated_since
                    .is_none_or(|since| updated(r) >= Some(since))
            })
            .cloned()
            .collect();
        // `$orderby=updatedDateTime asc`, pages of `$top` (100 when absent).
        value.sort_by(|a, b| (updated(a), &a.id).cmp(&(updated(b), &b.id)));
        let top = query.top.map_or(100, |top| top as usize);
        let more = value.len() > top;
        value.truncate(top);
        Ok(ReferralPage {
            value,
            next_link: more.then(|| "more".to_owned()),
            ..ReferralPage::default()
        })
    }

    fn patch_now(
        &self,
        id: &ReferralId,
        if_match: Option<&ETag>,
        ops: &[PatchOp],
    ) -> Result<Patched, PortError> {
        self.begin("patch_referral")?;
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
        // The patches Partner Center took (a 412 changes nothing).
        lock(&self.patches).push((*id, if_match.cloned(), ops.to_vec()));
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
            Patched::default()
        } else {
            Patched::of(referral)
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
            // Deals a partner creates start accepted, whatever status the body carries
            // (docs/partner-center.md#referral-status-rules).
            referral.status = Some(ReferralStatus::Active);
            referral.substatus = Some(ReferralSubstatus::Accepted);
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
    ) -> impl Future<Output = Result<Patched, PortError>> + Send {
        std::future::ready(self.patch_now(id, if_match, ops))
    }
}

// ---------------------------------------------------------------------------------------------
// Fake CRM (a Dataverse)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    pub(super) opportunity: Opportunity,
    pub(super) account: Option<CrmRecordId>,
    pub(super) contact: Option<CrmRecordId>,
    pub(super) audit: Option<String>,
    /// The row version (Dataverse's `versionnumber`), bumped by every write.
    pub(super) version: u64,
    /// The Solution Area, Solution Play and Partner Role the record holds.
    pub(super) taxonomy: TaxonomyValues,
}

#[derive(Default, Clone)]
pub(super) struct CrmState {
    next: u128,
    pub(super) opportunities: BTreeMap<CrmRecordId, Stored>,
    pub(super) accounts: Vec<(CrmRecordId, Account)>,
    pub(super) contacts: Vec<(CrmRecordId, Option<CrmRecordId>)>,
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
pub(super) struct FakeCrm {
    pub(super) state: Mutex<CrmState>,
    pub(super) calls: CallCounts,
    failures: Mutex<HashMap<&'static str, VecDeque<PortError>>>,
    /// Saves made by sellers just before the connector's next upsert reaches the CRM.
    pub(super) before_upsert: Mutex<VecDeque<CrmEdit>>,
    /// Saves made by sellers right after the connector's next read of a record.
    pub(super) after_read: Mutex<VecDeque<CrmEdit>>,
    /// Combine as Salesforce's Composite resource does: `find_customer` is one call, and an
    /// upsert with new records one call writing them all or none. Off: a Dataverse, one call
    /// per request.
    pub(super) combined: std::sync::atomic::AtomicBool,
    /// Errors answered to the next upserts after they took effect (a lost answer).
    pub(super) lost_upsert_answers: Mutex<VecDeque<PortError>>,
    /// Refuse writes to a won or lost row that do not reopen it, as Dataverse does (400).
    closed_read_only: std::sync::atomic::AtomicBool,
}

/// What Dataverse answers a write to a closed opportunity (the sandbox's wording).
pub(super) fn closed_row_refused() -> PortError {
    PortError::Permanent {
        service: Service::Dataverse,
        message: "The opportunity is closed (statecode 1 Won) and can't be updated. Reopen it \
                  first."
            .to_owned(),
    }
}

/// A seller's save of a record.
pub(super) type CrmEdit = Box<dyn FnOnce(&mut Opportunity) + Send>;

impl FakeCrm {
    pub(super) fn fail_next(&self, method: &'static str, error: PortError) {
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

    pub(super) fn opportunities(&self) -> BTreeMap<CrmRecordId, Stored> {
        lock(&self.state).opportunities.clone()
    }

    pub(super) fn stored(&self, id: &CrmRecordId) -> Stored {
        lock(&self.state).opportunities[id].clone()
    }

    /// An opportunity a seller created in the CRM, with an allowed taxonomy.
    pub(super) fn seed(&self, opportunity: Opportunity) -> CrmRecordId {
        self.seed_with_taxonomy(
            opportunity,
            MappingConfig::default().taxonomy.first_allowed(),
        )
    }

    /// An opportunity a seller created in the CRM, with the taxonomy given.
    pub(super) fn seed_with_taxonomy(
        &self,
        opportunity: Opportunity,
        taxonomy: TaxonomyValues,
    ) -> CrmRecordId {
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.opportunities.insert(
            id.clone(),
            Stored {
                opportunity,
                account: None,
                contact: None,
                audit: None,
                version: 1,
                taxonomy,
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

    /// Combining as Salesforce does ([`FakeCrm::combined`]).
    pub(super) fn combine(&self) {
        self.combined
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn combines(&self) -> bool {
        self.combined.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn find_account_now(&self, name: &str, postal_code: Option<&str>) -> Option<CrmRecordId> {
        lock(&self.state)
            .accounts
            .iter()
            .find(|(_, a)| {
                a.name.as_deref() == Some(name) && a.postal_code.as_deref() == postal_code
            })
            .map(|(id, _)| id.clone())
    }

    fn find_contact_now(&self, email: &str) -> Option<CrmRecordId> {
        let state = lock(&self.state);
        state
            .contact_emails
            .iter()
            .position(|e| e.eq_ignore_ascii_case(email))
            .map(|i| state.contacts[i].0.clone())
    }

    fn create_account_now(&self, account: &Account) -> CrmRecordId {
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.accounts.push((id.clone(), account.clone()));
        id
    }

    fn create_contact_now(&self, contact: &Contact, account: Option<&CrmRecordId>) -> CrmRecordId {
        let mut state = lock(&self.state);
        let id = state.new_id();
        state.contacts.push((id.clone(), account.cloned()));
        state
            .contact_emails
            .push(contact.email.clone().unwrap_or_default());
        id
    }

    /// An upsert with its new records: in one call, all or none, when combining; else each
    /// record by its own call first (as the Dataverse adapter does).
    fn upsert_with_customer(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        let upserted = if write.new_records() == 0 {
            self.upsert_now(write)
        } else if self.combines() {
            self.begin("upsert_opportunity")?;
            let before = lock(&self.state).clone();
            let account = write
                .new_account
                .map(|account| self.create_account_now(account))
                .or_else(|| write.account.cloned());
            let contact = write
                .new_contact
                .map(|contact| self.create_contact_now(contact, account.as_ref()))
                .or_else(|| write.contact.cloned());
            let upserted = self.upsert_unchecked(&write.linked(account.as_ref(), contact.as_ref()));
            if upserted.is_err() {
                *lock(&self.state) = before;
            }
            upserted
        } else {
            let account = match write.new_account {
                Some(account) => {
                    self.begin("create_account")?;
                    Some(self.create_account_now(account))
                }
                None => write.account.cloned(),
            };
            let contact = match write.new_contact {
                Some(contact) => {
                    self.begin("create_contact")?;
                    Some(self.create_contact_now(contact, account.as_ref()))
                }
                None => write.contact.cloned(),
            };
            self.upsert_now(&write.linked(account.as_ref(), contact.as_ref()))
        }?;
        match lock(&self.lost_upsert_answers).pop_front() {
            Some(lost) => Err(lost),
            None => Ok(upserted),
        }
    }

    /// From now on, refuse writes to a won or lost row as Dataverse does.
    pub(super) fn keep_closed_rows_read_only(&self) {
        self.closed_read_only
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a write setting `stage` is refused on `stored` ([`FakeCrm::closed_read_only`]).
    fn refuses(&self, stored: &Opportunity, stage: Option<OpportunityStage>) -> bool {
        self.closed_read_only
            .load(std::sync::atomic::Ordering::Relaxed)
            && stored.stage.is_some_and(|s| s.is_closed())
            && stage.is_none_or(|s| s.is_closed())
    }

    fn upsert_now(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        self.begin("upsert_opportunity")?;
        self.upsert_unchecked(write)
    }

    fn upsert_unchecked(&self, write: &OpportunityWrite<'_>) -> Result<Upserted, PortError> {
        let mut state = lock(&self.state);
        let edits: Vec<CrmEdit> = lock(&self.before_upsert).drain(..).collect();
        for edit in edits {
            let target = write.record.cloned().or_else(|| {
                state
                    .opportunities
                    .iter()
                    .find(|(_, s)| s.opportunity.referral_id.as_ref() == Some(write.referral_id))
                    .map(|(id, _)| id.clone())
            });
            if let Some(stored) = target.and_then(|id| state.opportunities.get_mut(&id)) {
                edit(&mut stored.opportunity);
                stored.version += 1;
            }
        }
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
                    version: 1,
                    taxonomy: TaxonomyValues::default(),
                },
            );
            return Ok(Upserted {
                id,
                created: true,
                version: Some("1".to_owned()),
            });
        };
        let stored = state.opportunities.get_mut(&id).unwrap();
        if self.refuses(&stored.opportunity, write.opportunity.stage) {
            return Err(closed_row_refused());
        }
        // `If-Match` with a version the row has moved past: Dataverse answers 412.
        if let Some(expected) = write.if_match
            && expected != "*"
            && expected != stored.version.to_string()
        {
            return Err(PortError::PreconditionFailed {
                service: Service::Dataverse,
            });
        }
        stored.version += 1;
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
        let version = Some(stored.version.to_string());
        Ok(Upserted {
            id,
            created: false,
            version,
        })
    }

    pub(super) fn read(&self, id: &CrmRecordId, stored: &Stored) -> CrmOpportunity {
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
            version: Some(stored.version.to_string()),
            audit: stored.audit.clone(),
            taxonomy: stored.taxonomy.clone(),
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
            let mut state = lock(&self.state);
            let found = state
                .opportunities
                .get(id)
                .map(|s| self.read(id, s))
                .ok_or_else(|| Self::not_found(id));
            let edits: Vec<CrmEdit> = lock(&self.after_read).drain(..).collect();
            if let Some(stored) = state.opportunities.get_mut(id) {
                for edit in edits {
                    edit(&mut stored.opportunity);
                    stored.version += 1;
                }
            }
            found
        });
        std::future::ready(found)
    }

    fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> impl Future<Output = Result<Upserted, PortError>> + Send {
        std::future::ready(self.upsert_with_customer(write))
    }

    fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        let found = self
            .begin("find_account")
            .map(|()| self.find_account_now(name, postal_code));
        std::future::ready(found)
    }

    fn create_account(
        &self,
        account: &Account,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        let created = self
            .begin("create_account")
            .map(|()| self.create_account_now(account));
        std::future::ready(created)
    }

    fn find_contact_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<CrmRecordId>, PortError>> + Send {
        let found = self
            .begin("find_contact_by_email")
            .map(|()| self.find_contact_now(email));
        std::future::ready(found)
    }

    fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> impl Future<Output = Result<CrmRecordId, PortError>> + Send {
        let created = self
            .begin("create_contact")
            .map(|()| self.create_contact_now(contact, account));
        std::future::ready(created)
    }

    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        if !self.combines() {
            return find_customer_plainly(self, account, email).await;
        }
        let (account, email) = customer_keys(account, email);
        if account.is_none() && email.is_none() {
            return Ok(FoundCustomer::default());
        }
        self.begin("find_customer")?;
        Ok(FoundCustomer {
            account: account
                .and_then(|(name, postal_code)| self.find_account_now(name, postal_code)),
            contact: email.and_then(|email| self.find_contact_now(email)),
        })
    }

    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        let subrequests = match operation {
            CombinedOperation::FindCustomer { lookups } => lookups,
            CombinedOperation::CreateWithCustomer { records } => records + 1,
            // Closes as the plain update does (Salesforce's stage).
            CombinedOperation::WriteAndClose => return None,
        };
        self.combines()
            .then_some(ApiRequest::SalesforceComposite { subrequests })
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
            if self.refuses(&stored.opportunity, None) {
                return Err(closed_row_refused());
            }
            stored.audit = Some(text.to_owned());
            stored.version += 1;
            Ok(())
        });
        std::future::ready(written)
    }
}

// ---------------------------------------------------------------------------------------------
// The world a test runs in
// ---------------------------------------------------------------------------------------------

/// The ports a test runs against: fakes of the services, the in-memory stores.
pub(super) struct Fakes;

impl Ports for Fakes {
    type PartnerCenter = FakePartnerCenter;
    type Crm = FakeCrm;
    type Idempotency = InMemoryIdempotencyStore;
    type RetryQueue = InMemoryRetryQueue;
    type Audit = InMemoryAuditLog;
    type Links = InMemoryLinkStore;
}

pub(super) type TestDeps<'a> = Deps<'a, Fakes>;

pub(super) struct World {
    pub(super) pc: FakePartnerCenter,
    pub(super) crm: FakeCrm,
    pub(super) idempotency: InMemoryIdempotencyStore,
    pub(super) queue: InMemoryRetryQueue,
    pub(super) audit: InMemoryAuditLog,
    pub(super) links: InMemoryLinkStore,
    pub(super) mapping: MappingConfig,
    pub(super) settings: SyncSettings,
}

impl World {
    pub(super) fn new() -> Self {
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

    pub(super) fn deps(&self) -> TestDeps<'_> {
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

    pub(super) fn delivery(now: DateTime<Utc>) -> Delivery {
        Delivery {
            correlation_id: Some("req-1".into()),
            deadline: now + chrono::Duration::seconds(30),
            now,
        }
    }

    pub(super) fn handle(
        &self,
        event: &WebhookEvent,
        now: DateTime<Utc>,
    ) -> Result<Handled, SyncError> {
        block_on(handle_partner_center_event(
            &self.deps(),
            event,
            &Self::delivery(now),
        ))
    }

    pub(super) fn outcome(&self, event: &WebhookEvent, now: DateTime<Utc>) -> Outcome {
        let handled = self.handle(event, now).unwrap();
        assert!(handled.warnings.is_empty(), "{:?}", handled.warnings);
        handled.outcome
    }

    pub(super) fn retry(&self, job: &RetryJob, now: DateTime<Utc>) -> Outcome {
        block_on(run_retry_job(&self.deps(), job, &Self::delivery(now)))
            .unwrap()
            .outcome
    }

    pub(super) fn pc_calls(&self) -> usize {
        self.pc.calls.total()
    }

    pub(super) fn crm_calls(&self) -> usize {
        self.crm.calls.total()
    }

    pub(super) fn audit_events(&self) -> Vec<AuditEvent> {
        self.audit.entries().into_iter().map(|e| e.event).collect()
    }

    /// A new co-sell referral synced once; returns its id, its CRM record and the event.
    pub(super) fn synced_referral(&self) -> (ReferralId, CrmRecordId, WebhookEvent) {
        let id = self.pc.insert(co_sell_referral());
        let event = webhook("referral-created", REFERRAL, at(1));
        let Outcome::Created { crm } = self.outcome(&event, at(100)) else {
            panic!("not created");
        };
        (id, crm, event)
    }
}
