//! The daily API budget: every Partner Center and CRM call is counted per UTC day, and work is
//! admitted against a configurable daily budget.
//!
//! | Item | What |
//! |---|---|
//! | [`BudgetPolicy`], [`CallKind`], [`admit`] | the pure policy: may a sync of this kind run with `used` calls counted today? |
//! | [`ApiService`], [`ApiRequest`], [`ServiceCalls`] | the counting rule: how many units each service charges for one request |
//! | [`Metered`] | a [`PartnerCenter`] / [`CrmStore`] decorator counting the calls made through it, per service |
//! | [`Budget`], [`reserve`], [`settle`] | the atomic reservation against an [`ApiBudget`] counter |
//! | [`handle_partner_center_event_within_budget`], [`handle_crm_change_within_budget`], [`run_retry_job_within_budget`] | the sync core's entry points, metered and deferred when the budget is spent |
//!
//! # Policy
//!
//! Background work (reconciliation, retry jobs) stops at `daily_budget × (1 − reserved share)`;
//! webhook-driven syncs may use the whole budget. A sync is admitted when the calls counted
//! today plus [`BudgetPolicy::calls_per_sync`] (the estimate of one sync's calls) stay within
//! its kind's limit. Admission reserves the estimate with one atomic add (so concurrent
//! invocations cannot all pass on the same reading), and [`settle`] replaces it with the calls
//! actually made.
//!
//! Deferred never means dropped: a deferred webhook sync becomes a [`RetryJob`] queued with a
//! delay, a deferred retry job is queued again as a fresh message (so it does not count
//! towards the queue's `maxReceiveCount`). SQS delays top out at 15 minutes, so a job deferred
//! to the next UTC day comes back every 15 minutes and is deferred again (no API call) until
//! the day turns.
//!
//! A counter that does not answer does not stop syncs: the sync runs unmetered and the failure
//! is a warning (availability over accuracy).
//!
//! # Units
//!
//! Each service limits its own unit, so every settle also records the calls per service
//! ([`ServiceCalls`]) next to the total, each counted as that service charges it
//! ([`ApiRequest::units`]): a plain request is 1; a Salesforce Composite request is one API call
//! whatever its subrequests; a Dataverse `$batch` counts each inner request (service protection
//! limits count them). The admission policy keeps reading the one daily total.

use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::ids::{CrmKind, CrmRecordId, ReferralId};
use crate::opportunity::{Account, Contact, CrmOpportunity};
use crate::ports::{
    ApiBudget, ApiRequest, ApiService, CombinedOperation, CrmStore, FoundCustomer, OpportunityPage,
    OpportunityQuery, OpportunityWrite, PartnerCenter, PortError, Ports, ReferralQuery, RetryJob,
    RetryQueue, RetrySource, Service, ServiceCalls, Upserted, create_customer, customer_keys,
    find_customer_plainly,
};
use crate::referral::{PatchOp, Referral, ReferralPage};
use crate::sync::{
    CrmChange, Delivery, Deps, Handled, Outcome, SyncError, handle_crm_change_known,
    handle_partner_center_event, is_own_write, partner_center_event_key, run_retry_job,
};
use crate::webhook::WebhookEvent;

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// What a sync was started by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A webhook (Partner Center or CRM): may use the whole budget.
    Webhook,
    /// Reconciliation and retry jobs: stop at the budget minus the webhook reserve.
    Background,
}

/// The daily budget and how it is shared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// Calls per UTC day (`DAILY_API_BUDGET`, default 10,000 as the paid Power Automate
    /// connection).
    pub daily_budget: u64,
    /// The share of the budget only webhook syncs may use (`WEBHOOK_RESERVED_SHARE`, 0–1).
    pub webhook_reserved_share: f64,
    /// The calls one sync is assumed to make when it is admitted (a new referral: one
    /// Partner Center read, account and contact look-ups and creates, the upsert, the
    /// write-back).
    pub calls_per_sync: u64,
}

impl BudgetPolicy {
    /// The default daily budget.
    pub const DEFAULT_DAILY_BUDGET: u64 = 10_000;
    /// The default webhook reserve.
    pub const DEFAULT_WEBHOOK_RESERVED_SHARE: f64 = 0.2;
    /// The default estimate of one sync's calls.
    pub const DEFAULT_CALLS_PER_SYNC: u64 = 8;

    /// A policy; the share is clamped to 0–1 (NaN counts as 0).
    pub fn new(daily_budget: u64, webhook_reserved_share: f64) -> Self {
        let share = if webhook_reserved_share.is_nan() {
            0.0
        } else {
            webhook_reserved_share.clamp(0.0, 1.0)
        };
        Self {
            daily_budget,
            webhook_reserved_share: share,
            calls_per_sync: Self::DEFAULT_CALLS_PER_SYNC,
        }
    }

    /// The policy from `DAILY_API_BUDGET` (calls per UTC day, default 10,000),
    /// `WEBHOOK_RESERVED_SHARE` (0–1, default 0.2) and `API_CALLS_PER_SYNC` (default 8), read
    /// through `lookup` (a variable name → its value; blank counts as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ParseError> {
        let var = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let whole =
            |name: &'static str, default: u64| match var(name) {
                None => Ok(default),
                Some(text) => text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ParseError::invalid(name, &text, "a whole number greater than 0")
                }),
            };
        let share = match var("WEBHOOK_RESERVED_SHARE") {
            None => Self::DEFAULT_WEBHOOK_RESERVED_SHARE,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|share| (0.0..=1.0).contains(share))
                .ok_or_else(|| {
                    ParseError::invalid(
                        "WEBHOOK_RESERVED_SHARE",
                        &text,
                        "a share between 0 and 1, e.g. 0.2",
                    )
                })?,
        };
        Ok(Self {
            calls_per_sync: whole("API_CALLS_PER_SYNC", Self::DEFAULT_CALLS_PER_SYNC)?,
            ..Self::new(
                whole("DAILY_API_BUDGET", Self::DEFAULT_DAILY_BUDGET)?,
                share,
            )
        })
    }

    /// The calls `kind` may bring the day's counter to.
    pub fn limit(&self, kind: CallKind) -> u64 {
        match kind {
            CallKind::Webhook => self.daily_budget,
            CallKind::Background => {
                // Exact for every budget below 2^53 calls a day.
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let background =
                    (self.daily_budget as f64 * (1.0 - self.webhook_reserved_share)).floor() as u64;
                background.min(self.daily_budget)
            }
        }
    }
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_DAILY_BUDGET,
            Self::DEFAULT_WEBHOOK_RESERVED_SHARE,
        )
    }
}

/// Whether a sync may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the budget.
    Run,
    /// The budget of its kind is spent: run it at `until` (the next UTC midnight) or later.
    Defer {
        /// When the next day's budget starts.
        until: DateTime<Utc>,
    },
}

/// The pure admission rule: a sync of `kind` may run when `used` calls were counted today and
/// one more sync ([`BudgetPolicy::calls_per_sync`]) stays within its kind's limit.
pub fn admit(kind: CallKind, used: u64, policy: &BudgetPolicy, now: DateTime<Utc>) -> Admit {
    if used.saturating_add(policy.calls_per_sync) <= policy.limit(kind) {
        Admit::Run
    } else {
        Admit::Defer {
            until: next_utc_day(now),
        }
    }
}

/// The UTC day of `now` (the counter's key).
pub fn utc_day(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive()
}

/// The next UTC midnight after `now`.
pub fn next_utc_day(now: DateTime<Utc>) -> DateTime<Utc> {
    utc_day(now)
        .checked_add_days(Days::new(1))
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MAX_UTC, |midnight| midnight.and_utc())
}

/// The queue delay of a job deferred until `until`: the wait, between 1 s and SQS's 15
/// minutes (a longer wait is served by deferring again).
pub fn defer_delay(now: DateTime<Utc>, until: DateTime<Utc>) -> Duration {
    let wait = (until - now).to_std().unwrap_or_default();
    wait.clamp(Duration::from_secs(1), RetryJob::MAX_DELAY)
}

// ---------------------------------------------------------------------------------------------
// Reservation against the counter
// ---------------------------------------------------------------------------------------------

/// A counter and the policy it is read with.
#[derive(Debug)]
pub struct Budget<'a, B> {
    /// The daily counter.
    pub counter: &'a B,
    /// The budget.
    pub policy: &'a BudgetPolicy,
}

impl<B> Clone for Budget<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Budget<'_, B> {}

/// The answer of [`reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Admitted: `calls` were added to `day`'s counter; [`settle`] replaces them with the
    /// calls made.
    Reserved {
        /// The counter's day.
        day: NaiveDate,
        /// The calls reserved.
        calls: u64,
    },
    /// The counter did not answer: run anyway (unmetered); [`settle`] tries to count the
    /// calls made.
    Unmetered {
        /// The counter's day.
        day: NaiveDate,
        /// Why the counter did not answer.
        error: PortError,
    },
    /// Over the budget: nothing was reserved; run at `until` or later.
    Deferred {
        /// When the next day's budget starts.
        until: DateTime<Utc>,
    },
}

impl Reservation {
    /// `Some(until)` when the work must wait.
    pub fn deferred_until(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Deferred { until } => Some(*until),
            _ => None,
        }
    }
}

fn signed(calls: u64) -> i64 {
    i64::try_from(calls).unwrap_or(i64::MAX)
}

/// Reserve one sync's calls for `kind` at `now` ("should this run now, or be deferred until
/// T?"): one atomic add of [`BudgetPolicy::calls_per_sync`]; if the count before it does not
/// [`admit`] the sync, the reservation is given back and the sync is deferred.
pub async fn reserve<B: ApiBudget>(
    budget: Budget<'_, B>,
    kind: CallKind,
    now: DateTime<Utc>,
) -> Reservation {
    let day = utc_day(now);
    let calls = budget.policy.calls_per_sync;
    let total = match budget.counter.add(day, signed(calls)).await {
        Ok(total) => total,
        Err(error) => return Reservation::Unmetered { day, error },
    };
    let before = u64::try_from(total.saturating_sub(signed(calls))).unwrap_or_default();
    match admit(kind, before, budget.policy, now) {
        Admit::Run => Reservation::Reserved { day, calls },
        Admit::Defer { until } => {
            // A failed give-back leaves the count a little high, which only defers work
            // sooner; the deferral stands either way.
            budget.counter.add(day, -signed(calls)).await.ok();
            Reservation::Deferred { until }
        }
    }
}

/// Replace a reservation with the calls actually `made`: the total moves by the difference and
/// each service's count by its calls, in one write. Nothing to do for a deferral.
pub async fn settle<B: ApiBudget>(
    budget: Budget<'_, B>,
    reservation: &Reservation,
    made: ServiceCalls,
) -> Result<(), PortError> {
    let (day, delta) = match reservation {
        Reservation::Reserved {
            day,
            calls: reserved,
        } => (*day, signed(made.total()).saturating_sub(signed(*reserved))),
        Reservation::Unmetered { day, .. } => (*day, signed(made.total())),
        Reservation::Deferred { .. } => return Ok(()),
    };
    if delta == 0 && made.is_empty() {
        return Ok(());
    }
    budget.counter.record(day, delta, made).await.map(|_| ())
}

/// Count the calls `made` outside a reservation (reconciliation counts per run).
pub async fn count<B: ApiBudget>(
    budget: Budget<'_, B>,
    now: DateTime<Utc>,
    made: ServiceCalls,
) -> Result<(), PortError> {
    if made.is_empty() {
        return Ok(());
    }
    budget
        .counter
        .record(utc_day(now), signed(made.total()), made)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Metering decorator
// ---------------------------------------------------------------------------------------------

/// A [`PartnerCenter`] or [`CrmStore`] that counts every call made through it, per service,
/// then delegates. One port call is counted as one plain request of its service (a
/// `get_opportunity` is one request on either CRM, its account and contact read with it),
/// except the operations a CRM may combine ([`CrmStore::combined_request`]): one combined
/// request when it does (a Salesforce Composite request is one API call), else each plain
/// request it is made of, charged one by one.
#[derive(Debug)]
pub struct Metered<'a, T> {
    inner: &'a T,
    made: Mutex<ServiceCalls>,
}

impl<'a, T> Metered<'a, T> {
    /// Count the calls made through `inner`, from 0.
    pub fn new(inner: &'a T) -> Self {
        Self {
            inner,
            made: Mutex::new(ServiceCalls::default()),
        }
    }

    /// The calls made so far, all services together.
    pub fn calls(&self) -> u64 {
        self.made().total()
    }

    /// The calls made so far, per service.
    pub fn made(&self) -> ServiceCalls {
        *self.made.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Count `request` (a port method making a combined request names it here).
    fn hit(&self, request: ApiRequest) {
        self.made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(request);
    }
}

impl<P: PartnerCenter> Metered<'_, P> {
    fn hit_partner_center(&self) {
        self.hit(ApiRequest::Plain(ApiService::PartnerCenter));
    }
}

impl<C: CrmStore> Metered<'_, C> {
    fn hit_crm(&self) {
        self.hit(ApiRequest::Plain(self.inner.kind().into()));
    }
}

impl<P: PartnerCenter> PartnerCenter for Metered<'_, P> {
    async fn get_referral(&self, id: &ReferralId) -> Result<Referral, PortError> {
        self.hit_partner_center();
        self.inner.get_referral(id).await
    }

    async fn list_referrals(&self, query: &ReferralQuery) -> Result<ReferralPage, PortError> {
        self.hit_partner_center();
        self.inner.list_referrals(query).await
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, PortError> {
        self.hit_partner_center();
        self.inner.create_referral(referral).await
    }

    async fn patch_referral(
        &self,
        id: &ReferralId,
        if_match: Option<&crate::ids::ETag>,
        ops: &[PatchOp],
    ) -> Result<crate::ports::Patched, PortError> {
        self.hit_partner_center();
        self.inner.patch_referral(id, if_match, ops).await
    }
}

impl<C: CrmStore> CrmStore for Metered<'_, C> {
    fn kind(&self) -> CrmKind {
        self.inner.kind()
    }

    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        self.hit_crm();
        self.inner.find_opportunity_by_referral(referral_id).await
    }

    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        self.hit_crm();
        self.inner.get_opportunity(id).await
    }

    /// One request, or (new records on a CRM that does not combine them) each record's create
    /// and then the upsert, each charged before it is made.
    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        let records = write.new_records();
        if records == 0 {
            let closes = write
                .opportunity
                .stage
                .is_some_and(|stage| stage.is_closed());
            match self
                .inner
                .combined_request(CombinedOperation::WriteAndClose)
                .filter(|_| closes)
            {
                Some(request) => self.hit(request),
                None => self.hit_crm(),
            }
            return self.inner.upsert_opportunity(write).await;
        }
        let combined = CombinedOperation::CreateWithCustomer { records };
        if let Some(request) = self.inner.combined_request(combined) {
            self.hit(request);
            return self.inner.upsert_opportunity(write).await;
        }
        let (account, contact) = create_customer(self, write).await?;
        self.hit_crm();
        self.inner
            .upsert_opportunity(&write.linked(account.as_ref(), contact.as_ref()))
            .await
    }

    /// One combined request when the CRM makes one, else the plain look-ups one by one.
    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        let (account, email) = customer_keys(account, email);
        let lookups = u64::from(account.is_some()) + u64::from(email.is_some());
        let combined = CombinedOperation::FindCustomer { lookups };
        match self.inner.combined_request(combined) {
            Some(request) => {
                if lookups > 0 {
                    self.hit(request);
                }
                self.inner.find_customer(account, email).await
            }
            None => find_customer_plainly(self, account, email).await,
        }
    }

    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        self.inner.combined_request(operation)
    }

    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        self.hit_crm();
        self.inner.find_account(name, postal_code).await
    }

    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        self.hit_crm();
        self.inner.create_account(account).await
    }

    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        self.hit_crm();
        self.inner.find_contact_by_email(email).await
    }

    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        self.hit_crm();
        self.inner.create_contact(contact, account).await
    }

    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        self.hit_crm();
        self.inner.write_audit(opportunity, text).await
    }

    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        self.hit_crm();
        self.inner.list_opportunities(query).await
    }
}

/// [`Ports`] with the Partner Center and CRM ports of `X` metered.
#[derive(Debug)]
pub struct MeteredPorts<'d, X>(PhantomData<&'d X>);

impl<'d, X> Ports for MeteredPorts<'d, X>
where
    X: Ports + 'd,
    X::PartnerCenter: 'd,
    X::Crm: 'd,
{
    type PartnerCenter = Metered<'d, X::PartnerCenter>;
    type Crm = Metered<'d, X::Crm>;
    type Idempotency = X::Idempotency;
    type RetryQueue = X::RetryQueue;
    type Audit = X::Audit;
    type Links = X::Links;
}

/// `deps` with its Partner Center and CRM ports metered.
fn metered_deps<'m, 'd: 'm, X: Ports>(
    deps: &Deps<'d, X>,
    partner_center: &'m Metered<'d, X::PartnerCenter>,
    crm: &'m Metered<'d, X::Crm>,
) -> Deps<'m, MeteredPorts<'d, X>> {
    Deps {
        partner_center,
        crm,
        idempotency: deps.idempotency,
        retry_queue: deps.retry_queue,
        audit: deps.audit,
        links: deps.links,
        mapping: deps.mapping,
        settings: deps.settings,
    }
}

// ---------------------------------------------------------------------------------------------
// The sync core's entry points within the budget
// ---------------------------------------------------------------------------------------------

fn budget_spent(until: DateTime<Utc>) -> PortError {
    PortError::Transient {
        service: Service::Other("the daily API budget".to_owned()),
        reason: format!(
            "the daily API budget is used up until {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        retry_after: None,
    }
}

/// Queue `job` to run at `until` (at most 15 minutes later: it is deferred again if it comes
/// back early).
async fn defer<Q: RetryQueue>(
    queue: &Q,
    job: &RetryJob,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Handled, SyncError> {
    let delay = defer_delay(now, until);
    match queue.enqueue(job, delay).await {
        Ok(()) => Ok(Handled {
            outcome: Outcome::RetryEnqueued {
                attempt: job.attempt,
                delay,
            },
            warnings: vec![budget_spent(until)],
            referral_id: None,
        }),
        Err(enqueue) => Err(SyncError::RetryNotScheduled {
            cause: Box::new(budget_spent(until)),
            enqueue: Box::new(enqueue),
        }),
    }
}

/// Run `sync` over metered ports and settle the reservation with the calls it made.
macro_rules! metered_run {
    ($budget:expr, $reservation:expr, $deps:expr, |$metered:ident| $call:expr) => {{
        let partner_center = Metered::new($deps.partner_center);
        let crm = Metered::new($deps.crm);
        let result = {
            let $metered = metered_deps($deps, &partner_center, &crm);
            // Boxed: the sync's future is large, and callers join many of them on one stack.
            Box::pin($call).await
        };
        let made = partner_center.made() + crm.made();
        let settled = settle($budget, &$reservation, made).await;
        let mut warnings = Vec::new();
        if let Reservation::Unmetered { error, .. } = $reservation {
            warnings.push(error);
        }
        if let Err(error) = settled {
            warnings.push(error);
        }
        result.map(|mut handled: Handled| {
            handled.warnings.extend(warnings);
            handled
        })
    }};
}

/// [`handle_partner_center_event`] within the budget (a webhook sync): metered, or — the
/// budget spent — queued as a retry job of the event for the next UTC day.
pub async fn handle_partner_center_event_within_budget<B, X: Ports>(
    deps: &Deps<'_, X>,
    budget: Budget<'_, B>,
    event: &WebhookEvent,
    meta: &Delivery,
) -> Result<Handled, SyncError>
where
    B: ApiBudget,
{
    let key = partner_center_event_key(event, meta.now);
    let (true, Ok(key)) = (
        !event.is_test() && event.event_name.is_referral_event(),
        key,
    ) else {
        // No Partner Center or CRM call (or an invalid event the core reports).
        return Box::pin(handle_partner_center_event(deps, event, meta)).await;
    };
    let reservation = reserve(budget, CallKind::Webhook, meta.now).await;
    if let Some(until) = reservation.deferred_until() {
        let job = RetryJob {
            source: RetrySource::PartnerCenter,
            key: key.to_string(),
            attempt: 1,
            // Serialising the parsed event (strings and JSON values) cannot fail.
            payload: serde_json::to_value(event).unwrap_or_default(),
        };
        return defer(deps.retry_queue, &job, meta.now, until).await;
    }
    metered_run!(budget, reservation, deps, |metered| {
        handle_partner_center_event(&metered, event, meta)
    })
}

/// [`handle_crm_change`] within the budget (a webhook sync): metered, or — the budget spent —
/// queued as a retry job of the change for the next UTC day. A change the core settles without
/// a call (the connector's own write, sync off) is never deferred.
pub async fn handle_crm_change_within_budget<B, X: Ports>(
    deps: &Deps<'_, X>,
    budget: Budget<'_, B>,
    change: &CrmChange,
    meta: &Delivery,
) -> Result<Handled, SyncError>
where
    B: ApiBudget,
{
    let own_write = is_own_write(deps, change).await;
    let without_calls = own_write
        || change
            .opportunity
            .as_ref()
            .is_some_and(|o| !o.opportunity.sync);
    if without_calls {
        return Box::pin(handle_crm_change_known(deps, change, meta, own_write)).await;
    }
    let reservation = reserve(budget, CallKind::Webhook, meta.now).await;
    if let Some(until) = reservation.deferred_until() {
        let job = crm_job(
            change.key.as_str(),
            &change.record,
            change.writer.as_deref(),
        );
        return defer(deps.retry_queue, &job, meta.now, until).await;
    }
    metered_run!(budget, reservation, deps, |metered| {
        handle_crm_change_known(&metered, change, meta, own_write)
    })
}

/// [`run_retry_job`] within the budget (background work): metered, or — the background budget
/// spent — the same job queued again as a fresh message for the next UTC day (it does not
/// count towards the queue's `maxReceiveCount`). The retry worker calls this instead of
/// `run_retry_job`, or [`reserve`] / [`settle`] around its own run.
pub async fn run_retry_job_within_budget<B, X: Ports>(
    deps: &Deps<'_, X>,
    budget: Budget<'_, B>,
    job: &RetryJob,
    meta: &Delivery,
) -> Result<Handled, SyncError>
where
    B: ApiBudget,
{
    let reservation = reserve(budget, CallKind::Background, meta.now).await;
    if let Some(until) = reservation.deferred_until() {
        return defer(deps.retry_queue, job, meta.now, until).await;
    }
    metered_run!(budget, reservation, deps, |metered| {
        run_retry_job(&metered, job, meta)
    })
}

/// The retry job of a CRM change (payload: the record only, as the sync core writes it).
pub(crate) fn crm_job(key: &str, record: &CrmRecordId, writer: Option<&str>) -> RetryJob {
    let source = match record.kind() {
        CrmKind::Dataverse => RetrySource::Dataverse,
        CrmKind::Salesforce => RetrySource::Salesforce,
    };
    let mut payload = serde_json::Map::new();
    payload.insert("record".to_owned(), serde_json::json!(record));
    if let Some(writer) = writer {
        payload.insert("writer".to_owned(), serde_json::json!(writer));
    }
    RetryJob {
        source,
        key: key.to_owned(),
        attempt: 1,
        payload: serde_json::Value::Object(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use futures::executor::block_on;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn background_work_stops_at_the_budget_minus_the_webhook_reserve() {
        let policy = BudgetPolicy {
            calls_per_sync: 1,
            ..BudgetPolicy::new(20, 0.2)
        };
        let now = at("2027-01-15T23:59:00Z");
        let midnight = at("2027-01-16T00:00:00Z");
        assert_eq!(policy.limit(CallKind::Webhook), 20);
        assert_eq!(policy.limit(CallKind::Background), 16);
        assert_eq!(admit(CallKind::Background, 15, &policy, now), Admit::Run);
        assert_eq!(
            admit(CallKind::Background, 16, &policy, now),
            Admit::Defer { until: midnight }
        );
        assert_eq!(admit(CallKind::Webhook, 19, &policy, now), Admit::Run);
        assert_eq!(
            admit(CallKind::Webhook, 20, &policy, now),
            Admit::Defer { until: midnight }
        );
    }

    #[test]
    fn a_sync_is_admitted_only_when_its_estimate_fits() {
        let policy = BudgetPolicy {
            calls_per_sync: 8,
            ..BudgetPolicy::new(20, 0.2)
        };
        let now = at("2027-01-15T10:00:00Z");
        assert_eq!(admit(CallKind::Webhook, 12, &policy, now), Admit::Run);
        assert!(matches!(
            admit(CallKind::Webhook, 13, &policy, now),
            Admit::Defer { .. }
        ));
        assert_eq!(admit(CallKind::Background, 8, &policy, now), Admit::Run);
        assert!(matches!(
            admit(CallKind::Background, 9, &policy, now),
            Admit::Defer { .. }
        ));
    }

    #[test]
    fn shares_are_clamped_and_the_default_is_ten_thousand_with_a_fifth_reserved() {
        let policy = BudgetPolicy::default();
        assert_eq!(policy.limit(CallKind::Webhook), 10_000);
        assert_eq!(policy.limit(CallKind::Background), 8_000);
        assert_eq!(BudgetPolicy::new(100, 1.5).limit(CallKind::Background), 0);
        assert_eq!(
            BudgetPolicy::new(100, -1.0).limit(CallKind::Background),
            100
        );
        assert_eq!(
            BudgetPolicy::new(100, f64::NAN).limit(CallKind::Background),
            100
        );
    }

    #[test]
    fn the_policy_is_read_from_the_environment_with_defaults() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            BudgetPolicy::from_lookup(vars(&[])).unwrap(),
            BudgetPolicy::default()
        );
        let policy = BudgetPolicy::from_lookup(vars(&[
            ("DAILY_API_BUDGET", "20"),
            ("WEBHOOK_RESERVED_SHARE", "0.25"),
            ("API_CALLS_PER_SYNC", " 3 "),
        ]))
        .unwrap();
        assert_eq!((policy.daily_budget, policy.calls_per_sync), (20, 3));
        assert_eq!(policy.limit(CallKind::Background), 15);
        for bad in [
            ("DAILY_API_BUDGET", "0"),
            ("DAILY_API_BUDGET", "many"),
            ("WEBHOOK_RESERVED_SHARE", "1.5"),
            ("WEBHOOK_RESERVED_SHARE", "NaN"),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([bad]));
            let error = BudgetPolicy::from_lookup(vars(pairs)).unwrap_err();
            assert!(error.to_string().contains(bad.0), "{error}");
        }
    }

    #[test]
    fn a_reservation_is_taken_atomically_given_back_when_deferred_and_settled_to_the_calls_made() {
        use crate::in_memory::InMemoryApiBudget;
        let counter = InMemoryApiBudget::new();
        let policy = BudgetPolicy::new(20, 0.2);
        let budget = Budget {
            counter: &counter,
            policy: &policy,
        };
        let now = at("2027-01-15T10:00:00Z");
        let day = utc_day(now);

        let first = block_on(reserve(budget, CallKind::Webhook, now));
        assert_eq!(first, Reservation::Reserved { day, calls: 8 });
        assert_eq!(counter.count(day), 8);
        let made = ServiceCalls {
            partner_center: 2,
            dataverse: 3,
            salesforce: 0,
        };
        block_on(settle(budget, &first, made)).unwrap();
        assert_eq!(counter.count(day), 5);
        assert_eq!(counter.by_service(day), made);

        // 5 + 8 fits the background limit of 16; then 10 + 8 does not.
        let second = block_on(reserve(budget, CallKind::Background, now));
        block_on(settle(budget, &second, made)).unwrap();
        let third = block_on(reserve(budget, CallKind::Background, now));
        assert_eq!(
            third,
            Reservation::Deferred {
                until: at("2027-01-16T00:00:00Z")
            }
        );
        assert_eq!(counter.count(day), 10, "the reservation was given back");
        // A webhook still fits: 10 + 8 <= 20.
        assert!(matches!(
            block_on(reserve(budget, CallKind::Webhook, now)),
            Reservation::Reserved { .. }
        ));

        // A counter that fails does not stop the sync; settling counts what was made.
        counter.fail_next(PortError::Transient {
            service: Service::Other("counter".into()),
            reason: "down".into(),
            retry_after: None,
        });
        let unmetered = block_on(reserve(budget, CallKind::Webhook, now));
        assert!(matches!(unmetered, Reservation::Unmetered { .. }));
        block_on(settle(
            budget,
            &unmetered,
            ServiceCalls::of(ApiService::PartnerCenter, 3),
        ))
        .unwrap();
        assert_eq!(counter.count(day), 21);
        // Per service, the calls made; the total also holds the open reservation of 8.
        let by_service = block_on(counter.used_by_service(day)).unwrap();
        assert_eq!(
            by_service,
            ServiceCalls {
                partner_center: 7,
                dataverse: 6,
                salesforce: 0,
            }
        );
        assert_eq!(by_service.total() + 8, 21);
    }

    #[test]
    fn each_service_charges_in_its_own_unit() {
        use ApiService::{Dataverse, PartnerCenter, Salesforce};
        let plain = ApiRequest::Plain(PartnerCenter);
        assert_eq!((plain.service(), plain.units()), (PartnerCenter, 1));
        assert_eq!(ApiRequest::Plain(Salesforce).units(), 1);
        // A Salesforce Composite request is one API call, whatever its subrequests.
        for subrequests in [1, 5, 25] {
            let composite = ApiRequest::SalesforceComposite { subrequests };
            assert_eq!((composite.service(), composite.units()), (Salesforce, 1));
        }
        // A Dataverse $batch counts every request inside it (an empty one is still a request).
        let batch = ApiRequest::DataverseBatch { requests: 7 };
        assert_eq!((batch.service(), batch.units()), (Dataverse, 7));
        assert_eq!(ApiRequest::DataverseBatch { requests: 0 }.units(), 1);
        // Plain Dataverse requests one port call makes in a row are one each.
        let deep_insert_then_upsert = ApiRequest::DataverseRequests { requests: 2 };
        assert_eq!(
            (
                deep_insert_then_upsert.service(),
                deep_insert_then_upsert.units()
            ),
            (Dataverse, 2)
        );
        assert_eq!(ApiService::from(CrmKind::Dataverse), Dataverse);
        assert_eq!(ApiService::from(CrmKind::Salesforce), Salesforce);

        let mut made = ServiceCalls::default();
        assert!(made.is_empty());
        for request in [
            plain,
            plain,
            batch,
            ApiRequest::SalesforceComposite { subrequests: 25 },
        ] {
            made.count(request);
        }
        assert_eq!(
            made,
            ServiceCalls {
                partner_center: 2,
                dataverse: 7,
                salesforce: 1,
            }
        );
        assert_eq!(made.total(), 10);
        assert_eq!(
            made + ServiceCalls::of(Dataverse, 1),
            made.with(Dataverse, 1)
        );
        assert_eq!(
            serde_json::to_value(made).unwrap(),
            serde_json::json!({"partner_center": 2, "dataverse": 7, "salesforce": 1})
        );
        assert_eq!(PartnerCenter.to_string(), "Partner Center");
        assert_eq!(PartnerCenter.as_str(), "partner_center");
    }

    #[test]
    fn metered_counts_every_request_in_its_services_unit() {
        let metered = Metered::new(&());
        metered.hit(ApiRequest::Plain(ApiService::PartnerCenter));
        metered.hit(ApiRequest::Plain(ApiService::Dataverse));
        metered.hit(ApiRequest::DataverseBatch { requests: 4 });
        assert_eq!(
            metered.made(),
            ServiceCalls {
                partner_center: 1,
                dataverse: 5,
                salesforce: 0,
            }
        );
        assert_eq!(metered.calls(), 6);
    }

    #[test]
    fn a_settle_with_the_reserved_total_still_records_the_services_in_one_write() {
        use crate::in_memory::InMemoryApiBudget;
        let counter = InMemoryApiBudget::new();
        let policy = BudgetPolicy::new(20, 0.2);
        let budget = Budget {
            counter: &counter,
            policy: &policy,
        };
        let now = at("2027-01-15T10:00:00Z");
        let day = utc_day(now);
        let reserved = block_on(reserve(budget, CallKind::Webhook, now));
        let made = ServiceCalls::of(ApiService::PartnerCenter, 3).with(ApiService::Salesforce, 5);
        block_on(settle(budget, &reserved, made)).unwrap();
        assert_eq!(counter.count(day), 8);
        assert_eq!(counter.by_service(day), made);
        assert_eq!(
            counter.calls().get("record"),
            2,
            "the reservation, then one settle"
        );

        // Nothing made: the reservation is given back without a per-service count.
        let idle = block_on(reserve(budget, CallKind::Webhook, now));
        block_on(settle(budget, &idle, ServiceCalls::default())).unwrap();
        assert_eq!(counter.count(day), 8);
        // Outside a reservation (a reconcile run), the same single write.
        block_on(count(
            budget,
            now,
            ServiceCalls::of(ApiService::Salesforce, 2),
        ))
        .unwrap();
        assert_eq!(counter.count(day), 10);
        assert_eq!(counter.by_service(day).salesforce, 7);
        // A deferral settles nothing.
        let deferred = Reservation::Deferred {
            until: next_utc_day(now),
        };
        let writes = counter.calls().get("record");
        block_on(settle(budget, &deferred, made)).unwrap();
        assert_eq!(counter.calls().get("record"), writes);
    }

    #[test]
    fn deferrals_wait_for_the_next_utc_day_in_steps_of_at_most_fifteen_minutes() {
        let now = at("2027-01-15T23:59:30Z");
        let until = next_utc_day(now);
        assert_eq!(until, Utc.with_ymd_and_hms(2027, 1, 16, 0, 0, 0).unwrap());
        assert_eq!(defer_delay(now, until), Duration::from_secs(30));
        assert_eq!(
            defer_delay(at("2027-01-15T08:00:00Z"), until),
            RetryJob::MAX_DELAY
        );
        assert_eq!(defer_delay(until, until), Duration::from_secs(1));
        assert_eq!(
            next_utc_day(at("2027-01-16T00:00:00Z")),
            at("2027-01-17T00:00:00Z")
        );
    }
}
