//! CRM → Partner Center: what the `crm-events` function and the retry worker run for a change
//! of a CRM opportunity (a Dataverse webhook, one Salesforce Outbound Message notification).
//!
//! Before the delivery's key is taken (no call at all):
//!
//! - **Own write**: the change was written by the connector's CRM user
//!   ([`SyncSettings::crm_connector_user_id`]) → `EchoSkipped` (audited).
//! - **Sync off**: the opportunity in the event has "Sync with Partner Center" off → `Ignored`.
//!
//! Under the key (see [`super::runner`]):
//!
//! 1. The opportunity is the event's, or (a Dataverse body over 256 KB, a retry) read with
//!    [`CrmStore::get_opportunity`]; sync off → `Ignored`.
//! 2. Its referral: the record's referral id, else the one of its [`Link`].
//! 3. **Echo / unchanged**: its fingerprint is what the CRM was last given from Partner Center
//!    (`EchoSkipped`) or what Partner Center was last sent (`UnchangedSkipped`): no Partner
//!    Center call (a write-back an earlier run could not finish is finished).
//! 4. **Validate** ([`validate_for_partner_center`]; for a record without a referral
//!    [`validate_new_referral`], which also wants its Solution Area, Solution Play and Partner
//!    Role): on failure no Partner Center call; the
//!    problems and their fixes go to the record's Audit field (`NeedsAttention`).
//! 5. **No referral** → `POST` the referral ([`referral_create_body`]), save the link (with the
//!    referral's `eTag`, so the `referral-created` event it raises is recognised as our echo),
//!    then write the referral id and link back to the record with the Audit text (`Created`).
//!    A retry job, or a delivery of a record delivered before, first looks for the referral an
//!    earlier attempt may have created before its answer was lost (by `externalReferenceId`, among the referrals updated since the record's
//!    first delivery) and adopts it instead of creating a second one. A deal asking for
//!    Microsoft's help is `Shared`: Microsoft is invited to its engagement with a second
//!    referral, once ([`Link::microsoft_invited`]). Partner Center starts the deal Active: a
//!    record already won or lost (closed before its first sync, or its close handled before
//!    its create) has its close sent right after, as in step 6, and is never reopened.
//! 6. **A referral** → plan against the referral the link keeps (its last read or PATCH
//!    answer) and `PATCH` with `If-Match` on its eTag, no read; anything the kept referral
//!    cannot tell, or a 412, takes the read path ([`update_as_seen`]): `GET` it (404 →
//!    `NeedsAttention`: the record names a referral Partner Center does not know), merge the
//!    shared fields with it (docs/conflicts.md#the-policy:
//!    what Partner Center changed is kept and written to the CRM with the Audit text, a field
//!    both changed goes to its owner and is audited), then `PATCH` only the update fields that
//!    differ ([`referral_patch`]) with `If-Match` (a 412 is retried with the record read again:
//!    see [`update`]). A webhook's copy of the record that shows a shared field changed since
//!    the last sync is read again first (docs/conflicts.md#late-crm-webhooks). A close
//!    as won or lost is sent only when the CRM stage moved since the last sync
//!    ([`Link::last_stage_to_pc`]); a referral in a terminal state is never changed
//!    (`NeedsAttention`, the Audit field says why). Nothing differs → `UnchangedSkipped`. The
//!    Audit field is not rewritten while it says the record is in sync ([`shows_in_sync`]).
//!
//! Transient failures are retried through a [`RetryJob`] of source Dataverse / Salesforce whose
//! payload names the record only (no contact data): the retry re-reads the record.
//!
//! [`SyncSettings::crm_connector_user_id`]: super::SyncSettings::crm_connector_user_id
//! [`RetryJob`]: crate::ports::RetryJob

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deps::{Delivery, Deps};
use super::merge::{
    FieldConflict, Merge, SharedField, Side, agreed_fields, conflict_text, field_hashes,
};
use super::outcome::{Handled, Outcome, SyncError};
use super::runner::list_engagement;
use super::runner::{
    Failure, Journal, Problem, Run, attempt_key, capitalize, creating, exactly_once, finish,
    needs_attention, sentence,
};
use crate::datetime::WireDateTime;
use crate::error::ParseError;
use crate::ids::{CrmKind, CrmRecordId, ETag, EngagementId, ReferralId};
use crate::mapping::{
    BodyScope, MappingConfig, held_until_accepted, invites_microsoft, is_shared_deal,
    microsoft_invitation_body, referral_create_body, referral_patch, referral_to_crm_opportunity,
    shared_deal_body, stage_of,
};
use crate::opportunity::{CrmOpportunity, Opportunity};
use crate::ports::{
    AuditEntry, AuditEvent, AuditLog, CrmSeen, CrmStore, IdempotencyKey, Link, LinkStore,
    OpportunityWrite, PartnerCenter, Patched, PortError, Ports, ReferralQuery, RetryJob,
    RetrySource, SyncDirection,
};
use crate::referral::{PatchOp, Referral, ReferralType};
use crate::status::TransitionError;
use crate::validation::ValidationProblem;
use crate::validation::{
    NewReferral, ValidatedOpportunity, validate_for_partner_center, validate_new_referral,
};

/// One change of a CRM opportunity, as the `crm-events` function parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmChange {
    /// The delivery's idempotency key: [`dataverse_change_key`] / [`salesforce_change_key`].
    pub key: IdempotencyKey,
    /// The opportunity that changed.
    pub record: CrmRecordId,
    /// Who made the change (Dataverse `InitiatingUserId` / `UserId`, Salesforce
    /// `LastModifiedById`), when the event says.
    pub writer: Option<String>,
    /// The opportunity as the event carries it; `None` to read it from the CRM (a Dataverse
    /// body over 256 KB carries no attributes).
    pub opportunity: Option<CrmOpportunity>,
    /// When the record was modified, as the event's image says (Dataverse `modifiedon`,
    /// Salesforce `LastModifiedDate`): an image no newer than the last change synced
    /// ([`Link::last_crm_modified`]) is not used (see [`sync_change`]).
    pub modified_at: Option<DateTime<Utc>>,
    /// The opportunity as a Salesforce Outbound Message carries it. A message holds the record
    /// as it is when sent, not as its change left it (docs/salesforce.md#delivery-and-retries):
    /// a seller's change sent, or sent again, after one of the connector's writes names the
    /// connector as its writer. Such a change is the connector's own only while this image
    /// holds nothing new for Partner Center (`is_own_write`). `None` for Dataverse, whose
    /// writer is the operation's own.
    pub sent_image: Option<Opportunity>,
}

/// The idempotency key of a Dataverse webhook delivery: `dv:<change>:<record>`, where the
/// change is the adapters' `RemoteExecutionContext::change_id`: the `OperationId` (Dataverse retries a
/// delivery with the same one), or for a synchronous step, whose `OperationId` is nil, the row
/// version or a hash of the body.
///
/// A nil GUID is refused: it is the same for every change, so keying on it would skip every
/// change after the first as a duplicate.
pub fn dataverse_change_key(
    operation_id: &str,
    record: &CrmRecordId,
) -> Result<IdempotencyKey, ParseError> {
    let operation_id = operation_id.trim();
    if operation_id.is_empty() {
        return Err(ParseError::empty(
            "OperationId",
            "the webhook's OperationId",
        ));
    }
    if uuid::Uuid::parse_str(operation_id).is_ok_and(|id| id.is_nil()) {
        return Err(ParseError::invalid(
            "OperationId",
            operation_id,
            "an OperationId other than the nil GUID, or the change id of the delivery",
        ));
    }
    IdempotencyKey::new("dv", &format!("{operation_id}:{}", record.native()))
}

/// The idempotency key of one Salesforce Outbound Message notification: `sf:<notification Id>`
/// (a redelivered message keeps its notification ids).
pub fn salesforce_change_key(notification_id: &str) -> Result<IdempotencyKey, ParseError> {
    IdempotencyKey::new("sf", notification_id.trim())
}

/// What a retry job of a CRM change carries: the record, never its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CrmRetryPayload {
    record: CrmRecordId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer: Option<String>,
}

/// The retry source of a CRM.
fn retry_source(kind: CrmKind) -> RetrySource {
    match kind {
        CrmKind::Dataverse => RetrySource::Dataverse,
        CrmKind::Salesforce => RetrySource::Salesforce,
    }
}

/// Handle one change of a CRM opportunity, exactly once (see the module docs).
///
/// `Err` means the delivery could not be taken on or parked: answer
/// [`SyncError::http_status`] (Dataverse retries 503 once; for Salesforce, do not acknowledge
/// the notification) so the CRM delivers it again.
pub async fn handle_crm_change<X: Ports>(
    deps: &Deps<'_, X>,
    change: &CrmChange,
    meta: &Delivery,
) -> Result<Handled, SyncError> {
    let own_write = is_own_write(deps, change).await;
    handle_crm_change_known(deps, change, meta, own_write).await
}

/// Whether `change` is the connector's own write coming back, to skip without a call: its
/// writer is the connector's user and, for a Salesforce message, its image holds nothing new for
/// Partner Center (see [`CrmChange::sent_image`]; one read of the link): in every shared field,
/// what both sides agreed on, or Partner Center's own value as the link last saw it (the stage a
/// partner's new deal starts at, written back with its referral id, is the second). A message
/// without a link to compare with is synced like any other change.
pub(crate) async fn is_own_write<X: Ports>(deps: &Deps<'_, X>, change: &CrmChange) -> bool {
    if !deps.settings.is_connector_write(change.writer.as_deref()) {
        return false;
    }
    let Some(image) = &change.sent_image else {
        return true;
    };
    let Ok(Some(link)) = deps.links.get_by_crm(&change.record).await else {
        return false;
    };
    if link.agrees_with(image) {
        return true;
    }
    let Some(referral) = link.referral_seen() else {
        return false;
    };
    let (partner_center, _) = referral_to_crm_opportunity(&referral, deps.mapping, deps.crm.kind());
    SharedField::ALL.iter().all(|field| {
        let sent = field.hash(image);
        link.synced_fields.get(field.name()) == Some(&sent) || field.hash(&partner_center) == sent
    })
}

/// [`handle_crm_change`] once [`is_own_write`] is known.
pub(crate) async fn handle_crm_change_known<X: Ports>(
    deps: &Deps<'_, X>,
    change: &CrmChange,
    meta: &Delivery,
    own_write: bool,
) -> Result<Handled, SyncError> {
    let journal = Journal::new(deps.audit, SyncDirection::ToPartnerCenter, meta);
    if own_write {
        journal
            .record(AuditEvent::EchoSkipped, Some(&change.record))
            .await;
        return Ok(finish(Outcome::EchoSkipped, journal));
    }
    if change
        .opportunity
        .as_ref()
        .is_some_and(|o| !o.opportunity.sync)
    {
        return Ok(finish(sync_off(), journal));
    }
    let retry_key = change.key.to_string();
    process(
        deps,
        change,
        meta,
        journal,
        change.key.clone(),
        &retry_key,
        0,
    )
    .await
}

/// A Dataverse or Salesforce retry job: the record is read again and synced under the key of
/// the job's attempt.
pub(super) async fn run_crm_retry_job<X: Ports>(
    deps: &Deps<'_, X>,
    job: &RetryJob,
    meta: &Delivery,
) -> Result<Handled, SyncError> {
    let journal = Journal::new(deps.audit, SyncDirection::ToPartnerCenter, meta);
    let payload = serde_json::from_value::<CrmRetryPayload>(job.payload.clone())
        .ok()
        .filter(|p| retry_source(p.record.kind()) == job.source);
    match (
        payload,
        IdempotencyKey::try_from(job.key.as_str()),
        attempt_key(job),
    ) {
        (Some(payload), Ok(original), Ok(key)) => {
            let change = CrmChange {
                key: original,
                record: payload.record,
                writer: payload.writer,
                opportunity: None,
                modified_at: None,
                sent_image: None,
            };
            process(deps, &change, meta, journal, key, &job.key, job.attempt).await
        }
        _ => {
            let problem = Problem {
                code: "invalid_retry_job",
                reason: format!(
                    "retry job {:?} (attempt {}, source {:?}) names no CRM opportunity of that \
                     CRM.",
                    job.key, job.attempt, job.source
                ),
                fix: "Remove the message from the queue; if an opportunity is missing in Partner \
                      Center, change it in the CRM to sync it again."
                    .to_owned(),
                crm: None,
            };
            let outcome = needs_attention(deps, &journal, problem).await;
            Ok(finish(outcome, journal))
        }
    }
}

fn sync_off() -> Outcome {
    Outcome::Ignored {
        reason: "\"Sync with Partner Center\" is off on the opportunity".to_owned(),
    }
}

/// The change under `key`.
async fn process<X: Ports>(
    deps: &Deps<'_, X>,
    change: &CrmChange,
    meta: &Delivery,
    journal: Journal<'_, X::Audit>,
    key: IdempotencyKey,
    retry_key: &str,
    attempt: u32,
) -> Result<Handled, SyncError> {
    let payload = CrmRetryPayload {
        record: change.record.clone(),
        writer: change.writer.clone(),
    };
    // Serialising a record id and a string cannot fail.
    let payload = serde_json::to_value(payload).unwrap_or(Value::Null);
    let run = Run {
        key,
        retry_key,
        attempt,
        source: retry_source(change.record.kind()),
        payload: &payload,
    };
    let sync = async {
        journal
            .record(AuditEvent::Received, Some(&change.record))
            .await;
        sync_change(deps, &journal, change, attempt > 0).await
    };
    let outcome = exactly_once(deps, meta, &run, &journal, sync).await?;
    Ok(finish(outcome, journal))
}

/// Steps 1–6 of the module docs; `retrying` for a retry job's run.
async fn sync_change<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    change: &CrmChange,
    retrying: bool,
) -> Result<Outcome, Failure> {
    let record = &change.record;
    if record.kind() != deps.crm.kind() {
        return Err(Failure::Problem(Problem {
            code: "wrong_crm",
            reason: format!(
                "the change is about {record}, a {} record, but this connector syncs {}.",
                record.kind(),
                deps.crm.kind()
            ),
            fix: "Point the CRM's webhook or outbound message at the connector deployed for that \
                  CRM."
                .to_owned(),
            crm: None,
        }));
    }
    let read = match change.opportunity {
        Some(_) => None,
        None => Some(read_record(deps, record).await?),
    };
    let named = read
        .as_ref()
        .or(change.opportunity.as_ref())
        .and_then(|c| c.opportunity.referral_id);
    let stored_link = link_of(deps, record, named).await?;
    // An image no newer than the last change synced is a late delivery (or one of two saves
    // in the same second): Partner Center may already hold something newer, so the record is
    // read as it is now.
    let stale = matches!(
        (change.modified_at, stored_link.as_ref().and_then(|l| l.last_crm_modified)),
        (Some(image), Some(synced)) if image <= synced
    );
    // What the sync sends is as of: the image's time, or for a record read now, now (the
    // CRM's clock may differ a little from ours: a later image within that skew is read too,
    // which costs one read and loses nothing).
    let owned;
    let (candidate, as_of) = match (read, &change.opportunity) {
        (None, Some(image)) if !stale => (image, change.modified_at),
        (read, _) => {
            owned = match read {
                Some(read) => read,
                None => read_record(deps, record).await?,
            };
            (&owned, Some(journal.now()))
        }
    };
    let opportunity = &candidate.opportunity;
    if !opportunity.sync {
        return Ok(sync_off());
    }

    let link = stored_link
        // A link to another referral than the one the record names is not this record's.
        .filter(|link| {
            opportunity
                .referral_id
                .is_none_or(|id| id == link.referral_id)
        });
    // A webhook's copy of the record may be older than a later save, or than the connector's
    // own write (a conflict Partner Center won): a shared field it shows changed since the last
    // sync is checked by reading the record (docs/conflicts.md#late-crm-webhooks).
    let reread;
    let claims_change = change.opportunity.is_some()
        && link
            .as_ref()
            .is_some_and(|link| shows_shared_change(link, opportunity));
    let candidate = if claims_change {
        reread = deps
            .crm
            .get_opportunity(record)
            .await
            .map_err(Failure::port(Some(record)))?;
        &reread
    } else {
        candidate
    };
    let opportunity = &candidate.opportunity;
    if !opportunity.sync {
        return Ok(sync_off());
    }
    let referral_id = opportunity
        .referral_id
        .or_else(|| link.as_ref().map(|l| l.referral_id));
    if let Some(id) = referral_id {
        journal.set_referral(id);
    }

    let fingerprint = opportunity.fingerprint();
    if let Some(link) = &link {
        let echo = link.is_echo_from_crm(&fingerprint);
        // A Shared deal whose invitation of Microsoft an earlier run could not send is not
        // "unchanged": the update step sends it.
        let owes_invitation = !link.microsoft_invited && is_shared_deal(opportunity);
        // What the link says Partner Center was sent is not trusted after a late image or
        // when retrying: another sync of the record may have run in between, and a write of
        // theirs may have landed after a newer one (its link then failed, hence the retry).
        // `update` compares with the referral itself instead.
        let verify = stale || retrying;
        if echo || (!verify && link.is_unchanged_for_pc(&fingerprint) && !owes_invitation) {
            finish_write_back(deps, journal, record, opportunity, link.referral_id).await?;
            let (event, outcome) = if echo {
                (AuditEvent::EchoSkipped, Outcome::EchoSkipped)
            } else {
                (AuditEvent::UnchangedSkipped, Outcome::UnchangedSkipped)
            };
            journal.record(event, Some(record)).await;
            return Ok(outcome);
        }
    }

    journal.set_shown(candidate.audit.as_deref());
    let invalid =
        |problems: Vec<ValidationProblem>| Failure::Problem(invalid_opportunity(&problems, record));
    match referral_id {
        // A new referral also needs its Solution Area, Solution Play and Partner Role
        // (docs/partner-center.md#solution-area-solution-play-and-partner-role): checked
        // here, before any Partner Center call.
        None => {
            let new = validate_new_referral(candidate, deps.mapping).map_err(invalid)?;
            let sync = Outbound {
                record,
                validated: new.validated(),
                fingerprint,
                link: link.as_ref(),
                retrying,
                as_of,
                version: candidate.version.as_deref(),
                audit: candidate.audit.as_deref(),
            };
            let subject = record.to_string();
            let created = Box::pin(create(deps, journal, &sync, &new));
            creating(deps.idempotency, journal, &subject, Some(record), created).await
        }
        Some(id) => {
            let validated =
                validate_for_partner_center(candidate, deps.mapping).map_err(invalid)?;
            let sync = Outbound {
                record,
                validated: &validated,
                fingerprint,
                link: link.as_ref(),
                retrying,
                as_of,
                version: candidate.version.as_deref(),
                audit: candidate.audit.as_deref(),
            };
            update(deps, journal, &sync, id).await
        }
    }
}

async fn read_record<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
) -> Result<CrmOpportunity, Failure> {
    deps.crm
        .get_opportunity(record)
        .await
        .map_err(Failure::port(Some(record)))
}

/// The record's link. A record that names its referral (every record synced once, its
/// write-back done) is looked up by that referral: a strongly consistent read of the link's
/// own item. Only a record without one is looked up by its CRM id (an index, eventually
/// consistent).
async fn link_of<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
    named: Option<ReferralId>,
) -> Result<Option<Link>, Failure> {
    let found = match named {
        Some(referral) => deps
            .links
            .get_by_referral(&referral)
            .await
            .map(|link| link.filter(|link| link.crm == *record)),
        None => deps.links.get_by_crm(record).await,
    };
    found.map_err(Failure::port(Some(record)))
}

/// Whether the record shows a shared field changed since the link's base (never for a link
/// without one).
fn shows_shared_change(link: &Link, opportunity: &Opportunity) -> bool {
    !link.synced_fields.is_empty()
        && SharedField::ALL
            .iter()
            .any(|field| link.synced_fields.get(field.name()) != Some(&field.hash(opportunity)))
}

/// What steps 5 and 6 work on.
struct Outbound<'s> {
    record: &'s CrmRecordId,
    validated: &'s ValidatedOpportunity,
    fingerprint: String,
    link: Option<&'s Link>,
    /// A retry job's run: an earlier attempt may have created the referral already.
    retrying: bool,
    /// The time the opportunity sent is as of: the image's [`CrmChange::modified_at`], or when
    /// read, the time of the read.
    as_of: Option<DateTime<Utc>>,
    /// The record's version as read or delivered, when known: Partner Center's values are
    /// written to it only while it is unchanged (a 412 retries, merging again).
    version: Option<&'s str>,
    /// The record's Audit text as read or delivered.
    audit: Option<&'s str>,
}

/// The merge of one CRM → Partner Center update (docs/conflicts.md#the-policy).
#[derive(Debug)]
struct Merged {
    /// What Partner Center is asked to hold: the CRM's values, without the fields Partner
    /// Center changed (or won), with Partner Center's stage where it won.
    desired: Opportunity,
    /// The CRM's values.
    crm: Opportunity,
    /// Partner Center's values.
    partner_center: Opportunity,
    /// The fields Partner Center won: its values go to the CRM.
    to_crm: Vec<SharedField>,
    /// The conflicts.
    conflicts: Vec<FieldConflict>,
    /// The base before the sync.
    base: BTreeMap<String, String>,
}

impl Merged {
    /// The values the CRM is given: Partner Center's, of the fields it won.
    fn crm_values(&self) -> Opportunity {
        let mut values = Opportunity::default();
        for field in &self.to_crm {
            field.copy(&self.partner_center, &mut values);
        }
        values
    }

    /// The link's merge state once `ops` reached Partner Center and the CRM got
    /// [`Merged::crm_values`].
    fn settle(&self, link: &mut Link, sync: &Outbound<'_>, ops: &[PatchOp]) {
        self.settle_as(link, sync, ops, true);
    }

    /// [`Merged::settle`], the CRM having got [`Merged::crm_values`] or not (`crm_written`:
    /// a closed Dataverse row takes no write, and the fields Partner Center won then keep
    /// their base, so they still count as Partner Center's change once the row is reopened).
    fn settle_as(&self, link: &mut Link, sync: &Outbound<'_>, ops: &[PatchOp], crm_written: bool) {
        let to_crm: &[SharedField] = if crm_written { &self.to_crm } else { &[] };
        let mut partner_center = self.partner_center.clone();
        for field in SharedField::ALL {
            let sent = match field {
                SharedField::Stage => ops.iter().any(|op| op.path == "/status"),
                _ => {
                    !ops.is_empty() && field.is_set(&self.desired) && !self.to_crm.contains(&field)
                }
            };
            if sent {
                field.copy(&self.desired, &mut partner_center);
            }
        }
        let mut crm = self.crm.clone();
        for field in to_crm {
            field.copy(&self.partner_center, &mut crm);
        }
        link.synced_fields = agreed_fields(&self.base, &partner_center, &crm);
        // The CRM's content after the write: its next webhook carrying it is nothing new.
        if !to_crm.is_empty() {
            let mut after = sync.opportunity().clone();
            for field in to_crm {
                field.copy(&self.partner_center, &mut after);
            }
            link.last_fingerprint_to_pc = Some(after.fingerprint());
        }
    }

    /// The record's Audit text: `entry`'s, and the conflicts.
    fn audit_text(&self, entry: crate::ports::AuditEntry) -> String {
        let mut text = entry.crm_text();
        if !self.conflicts.is_empty() {
            text.push_str(". ");
            text.push_str(&conflict_text(&self.conflicts));
        }
        text
    }

    /// Audit the conflicts durably *before* the writes that resolve them: once a write has
    /// overwritten the losing side, a crash (or a lost commit) must not leave the loss
    /// unexplained, and the retry then finds both sides equal and no conflict to record. A
    /// write that fails afterwards is retried and resolves the same conflict the same way (the
    /// entry may then be written twice); the entry not written fails the run before any write.
    async fn audit_conflicts<A: AuditLog>(
        &self,
        journal: &Journal<'_, A>,
        record: &CrmRecordId,
    ) -> Result<(), Failure> {
        if self.conflicts.is_empty() {
            return Ok(());
        }
        let event = AuditEvent::ConflictResolved {
            fields: self.conflicts.clone(),
        };
        journal.record(event, Some(record)).await;
        journal.flush().await.map_err(Failure::port(Some(record)))
    }
}

impl Outbound<'_> {
    fn opportunity(&self) -> &Opportunity {
        self.validated.opportunity()
    }

    /// The stage to compare a CRM close with: the one last synced, else (an older link, a
    /// record linked by someone else) the referral's own.
    fn explicit_close(&self, current: &Referral) -> bool {
        let desired = self.opportunity().stage;
        let previous = self
            .link
            .and_then(|l| l.last_stage_to_pc)
            .or_else(|| stage_of(current.status.as_ref(), current.substatus.as_ref()));
        desired.is_some_and(|s| s.is_closed())
            && previous.map(|s| s.coarse()) != desired.map(|s| s.coarse())
    }

    /// The merge against `current` (see [`Merged`]). With a link stored before the base
    /// existed the CRM's values are sent, as before the policy; without a link (a referral id
    /// entered by hand, a link an earlier run could not save) each differing field goes to its
    /// owner.
    fn merged(&self, current: &Referral, mapping: &MappingConfig, crm: CrmKind) -> Merged {
        // Partner Center's values as the CRM holds them: a value cut to fit is no change.
        let (partner_center, _) = referral_to_crm_opportunity(current, mapping, crm);
        let crm = self.opportunity().clone();
        let mut desired = crm.clone();
        let base = self
            .link
            .map(|l| l.synced_fields.clone())
            .unwrap_or_default();
        let mut merged = Merged {
            desired: desired.clone(),
            crm: crm.clone(),
            partner_center,
            to_crm: Vec::new(),
            conflicts: Vec::new(),
            base,
        };
        // A link stored before the base existed: the CRM's values are sent, as before.
        if self.link.is_some() && merged.base.is_empty() {
            return merged;
        }
        let merge = Merge::new(
            self.link.map(|_| &merged.base),
            &merged.partner_center,
            &crm,
        );
        merged.to_crm = merge
            .won_by(Side::PartnerCenter, Side::Crm, &merged.partner_center)
            .collect();
        for (field, resolution) in &merge.fields {
            let crm_wins = resolution.winner(Side::Crm) == Some(Side::Crm);
            match field {
                // The stage keeps its transition rules; where Partner Center's stage wins it is
                // what Partner Center is asked to hold, so no transition is sent.
                SharedField::Stage if merged.to_crm.contains(field) => {
                    desired.stage = merged.partner_center.stage;
                }
                SharedField::Stage => {}
                _ if !crm_wins => field.clear(&mut desired),
                _ => {}
            }
        }
        merged.conflicts = merge.conflicts();
        merged.desired = desired;
        merged
    }

    /// The link after a sync to Partner Center.
    fn link_after(
        &self,
        referral_id: ReferralId,
        referral: &Referral,
        etag: Option<ETag>,
        microsoft_invited: bool,
        now: DateTime<Utc>,
    ) -> Link {
        let updated = referral
            .updated_date_time
            .as_ref()
            .and_then(WireDateTime::instant);
        Link {
            referral_id,
            crm: self.record.clone(),
            last_referral_updated: updated
                .or_else(|| self.link.and_then(|l| l.last_referral_updated)),
            last_fingerprint_to_crm: self.link.and_then(|l| l.last_fingerprint_to_crm.clone()),
            last_fingerprint_to_pc: Some(self.fingerprint.clone()),
            last_stage_to_pc: self
                .opportunity()
                .stage
                .or_else(|| self.link.and_then(|l| l.last_stage_to_pc)),
            microsoft_invited,
            last_crm_modified: self.as_of.max(self.link.and_then(|l| l.last_crm_modified)),
            updated_at: now,
            version: self.link.map_or(0, |l| l.version),
            synced_fields: self
                .link
                .map(|l| l.synced_fields.clone())
                .unwrap_or_default(),
            last_referral: (etag.is_some() && etag == referral.etag())
                .then(|| Link::referral_text(referral))
                .flatten(),
            last_referral_etag: etag,
            // The record as this sync read it: a later Partner Center change is planned
            // against it while it is unchanged (a 412 otherwise).
            crm_seen: CrmSeen::at(self.version.map(str::to_owned), self.opportunity()),
        }
    }
}

/// Step 5: create the referral.
///
/// The link is saved before the id is written back to the CRM, so a retry after a failed
/// write-back finds the referral by the link and only finishes the write-back (rather than
/// creating a second referral). Only when both fail can a retry create the referral again.
async fn create<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    new: &NewReferral,
) -> Result<Outcome, Failure> {
    let record = sync.record;
    let earlier = if sync.retrying || delivered_before(deps, journal, record).await? {
        created_earlier(deps, journal, sync).await?
    } else {
        None
    };
    let adopted = earlier.is_some();
    let body = referral_create_body(new, &deps.settings.partner_team);
    let created = match earlier {
        Some(referral) => referral,
        None => {
            // The delivery's `Received` entry, durable before the create (or no create):
            // should this run crash or lose its commit, the next delivery knows an earlier one
            // ran and looks for the referral it may have made instead of making a second one.
            journal.flush().await.map_err(Failure::port(Some(record)))?;
            deps.partner_center
                .create_referral(&body)
                .await
                .map_err(Failure::port(Some(record)))?
        }
    };
    let referral_id = created.referral_id().map_err(|error| {
        Failure::Problem(Problem {
            code: "invalid_response",
            reason: sentence(&format!(
                "Partner Center created the referral but answered without its id: {error}"
            )),
            fix: format!(
                "Find the referral named {:?} in Partner Center and enter its id in {} on the \
                 opportunity; do not turn sync off and on again, which would create another one.",
                sync.opportunity().name.as_deref().unwrap_or_default(),
                referral_id_field(deps.mapping, record.kind())
            ),
            crm: Some(record.clone()),
        })
    })?;
    journal.set_referral(referral_id);
    journal.record(AuditEvent::Created, Some(record)).await;

    let mut link = sync.link_after(referral_id, &created, created.etag(), false, journal.now());
    // The referral was made from the opportunity: the merge's base is what was sent, the
    // record's values. Where Partner Center stored something else, that is Partner Center's
    // change, as any other. Its stage is written with the write-back below: Partner Center
    // starts a deal the partner creates Active/Accepted whatever stage was sent
    // (docs/partner-center.md#referral-status-rules), so a record at the on-hold stage moves to
    // the active one at once, in the write the create makes anyway; the next sync finds both
    // sides at that stage, agreed (or, should the write-back fail, merges it as Partner
    // Center's change). A referral adopted from an earlier attempt was sent older values, and
    // either side may have changed since: only what both hold alike is agreed, the rest goes
    // to its owner, audited.
    let mut started = Opportunity::default();
    let (stored, _) = referral_to_crm_opportunity(&created, deps.mapping, deps.crm.kind());
    // A record closed before its referral existed (won or lost before the first sync, or its
    // close handled before its create): Partner Center starts the deal Active all the same.
    // Writing that stage back would reopen the seller's closed deal, so the close goes the
    // other way instead, as the record's change since the referral's start, right after it.
    let closed_first = !adopted
        && sync.opportunity().stage.is_some_and(|s| s.is_closed())
        && !stored.stage.is_some_and(|s| s.is_closed());
    if adopted {
        link.synced_fields = agreed_fields(&link.synced_fields, &stored, sync.opportunity());
        // Partner Center holds what the earlier attempt sent, not necessarily the record as
        // read now: nothing is known to have been sent (the merge below sends what differs),
        // and the stage it holds is the referral's own (a close since is still to be sent).
        link.last_fingerprint_to_pc = None;
        link.last_stage_to_pc = stored.stage.or(link.last_stage_to_pc);
    } else {
        link.synced_fields = field_hashes(sync.opportunity());
        if closed_first {
            link.synced_fields.insert(
                SharedField::Stage.name().to_owned(),
                SharedField::Stage.hash(&stored),
            );
            link.last_stage_to_pc = stored.stage;
            // What Partner Center holds until the close lands: should this run end before
            // it, the record's next sync finds the close still to send (simulation seed 48631).
            let mut sent = sync.opportunity().clone();
            SharedField::Stage.copy(&stored, &mut sent);
            link.last_fingerprint_to_pc = Some(sent.fingerprint());
        } else if SharedField::Stage.is_set(&stored)
            && SharedField::Stage.hash(&stored) != SharedField::Stage.hash(sync.opportunity())
        {
            SharedField::Stage.copy(&stored, &mut started);
            // The record after the write-back: its own notification has nothing new.
            let mut after = sync.opportunity().clone();
            SharedField::Stage.copy(&stored, &mut after);
            link.last_fingerprint_to_pc = Some(after.fingerprint());
        }
    }
    let saved = deps.links.put(&link).await;
    if closed_first && record.kind().closed_is_read_only() {
        // The closed row takes no write: the link (and the referral's external reference)
        // link the two; said once, in the audit log.
        journal
            .record(not_written_back(record, referral_id), Some(record))
            .await;
    } else {
        let text = journal.entry(AuditEvent::Created, Some(record)).crm_text();
        write_values(deps, record, referral_id, &started, &text, None)
            .await
            .map_err(Failure::port(Some(record)))?;
        journal.record(AuditEvent::WrittenBack, Some(record)).await;
    }
    saved.map_err(Failure::port(Some(record)))?;

    // The Shared flow's second step. Should it fail, the retry finds the link (not invited
    // yet) and sends it from the update step.
    if is_shared_deal(sync.opportunity())
        && let Ok(engagement) = created.engagement_id()
    {
        if adopted {
            // The earlier attempt may have sent the invitation too.
            ensure_invitation(deps, sync, &created).await?;
        } else {
            invite_microsoft(deps, sync, &engagement, &body).await?;
        }
        // The link as just stored (`put` stored it one version up).
        let invited = Link {
            microsoft_invited: true,
            version: link.version + 1,
            ..link.clone()
        };
        journal.keep_link(invited, true);
        link.microsoft_invited = true;
    }
    if adopted || closed_first {
        // The adopted referral holds an earlier read of the record, and the record may have
        // changed since (a seller's save while the answer was lost, whose own notification may
        // already have been taken as unchanged, or never come): merged now, as an update, so
        // the two sides do not stay apart until some later change (simulation seed 1041).
        // A record closed first sends its close the same way.
        let stored = Link {
            version: link.version + 1,
            ..link
        };
        let adopted = Outbound {
            link: Some(&stored),
            fingerprint: sync.fingerprint.clone(),
            ..*sync
        };
        update(deps, journal, &adopted, referral_id).await?;
    }
    Ok(Outcome::Created {
        crm: record.clone(),
    })
}

/// How many of a record's newest audit entries tell when its first delivery arrived.
const FIRST_DELIVERY_ENTRIES: usize = 50;
/// How many pages of recently updated referrals a retried create searches at most (a rare
/// path: only after an attempt that got no answer; each page is one call).
const MAX_CREATED_EARLIER_PAGES: usize = 50;
/// The page size asked for in that search (the service's default is UNKNOWN).
const CREATED_EARLIER_PAGE: u32 = 100;
/// Clock skew between this connector and Partner Center allowed for in that search. The
/// earlier attempt's POST came after its delivery's `Received` entry was durable, so Partner
/// Center stamped the referral after that entry's time on its own clock; Lambda's clock is
/// NTP-synchronised (Amazon Time Sync), as a cloud service's is, so two minutes is generous.
/// Every minute more is a minute of a busy tenant's referral changes to page through (15
/// minutes left creates unconfirmed at about 6 changes a second in the soak).
const CREATED_EARLIER_SKEW_MINUTES: i64 = 2;

/// Whether an earlier delivery of `record` ran before this one (its audit trail has an entry
/// of another delivery): that run may have created the referral and lost the answer (a timeout
/// after Partner Center stored it, a crash, the Lambda deadline), and a webhook redelivery of
/// the change (a new Dataverse `OperationId`, a second save) is not a retry job. The first
/// delivery of a new opportunity costs one audit read and no Partner Center call.
async fn delivered_before<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    record: &CrmRecordId,
) -> Result<bool, Failure> {
    let entries = deps
        .audit
        .by_crm_record(record, FIRST_DELIVERY_ENTRIES)
        .await
        .map_err(Failure::port(Some(record)))?;
    Ok(entries.iter().any(|entry| {
        entry.at < journal.now() || entry.correlation_id.as_deref() != journal.correlation_id()
    }))
}

/// The referral an earlier attempt of this create may have made: a timeout or a 5xx can come
/// after Partner Center stored it. Searched among the referrals updated since the record's
/// oldest audited delivery (`updatedDateTime ge …`, the documented filter, paged by that time) by its
/// `externalReferenceId` (whether that member is filterable is UNKNOWN, so it is compared
/// here). Too many candidates to search → a person decides, rather than a second referral.
async fn created_earlier<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
) -> Result<Option<Referral>, Failure> {
    let record = sync.record;
    let entries = deps
        .audit
        .by_crm_record(record, FIRST_DELIVERY_ENTRIES)
        .await
        .map_err(Failure::port(Some(record)))?;
    let first = entries
        .iter()
        .map(|entry| entry.at)
        .min()
        .unwrap_or_else(|| journal.now());
    let native = record.native();
    // Keyset paging: each page starts at the newest `updatedDateTime` of the one before
    // (inclusive). A referral changed during the search moves forward in that order, so it is
    // still met; with `@odata.nextLink` (a position) it could move past the pages read.
    let mut since = first - chrono::Duration::minutes(CREATED_EARLIER_SKEW_MINUTES);
    for _ in 0..MAX_CREATED_EARLIER_PAGES {
        let query = ReferralQuery {
            updated_since: Some(since),
            top: Some(CREATED_EARLIER_PAGE),
            ..ReferralQuery::default()
        };
        let page = deps
            .partner_center
            .list_referrals(&query)
            .await
            .map_err(Failure::port(Some(record)))?;
        let newest = page
            .value
            .iter()
            .filter_map(|r| r.updated_date_time.as_ref().and_then(WireDateTime::instant))
            .max();
        let more = page.next_link.is_some();
        let found = page.value.into_iter().find(|referral| {
            referral.external_reference_id.as_deref().map(str::trim) == Some(native.as_str())
                && !invites_microsoft(referral)
        });
        if found.is_some() {
            return Ok(found);
        }
        match newest {
            _ if !more => return Ok(None),
            Some(newest) if newest > since => since = newest,
            // A whole page at one instant: paging cannot go past it.
            _ => break,
        }
    }
    Err(Failure::Problem(Problem {
        code: "create_unconfirmed",
        reason: format!(
            "an earlier attempt to create the referral of {record} failed without an answer, and \
             more than {MAX_CREATED_EARLIER_PAGES} pages of referrals (or a whole page at one \
             instant) changed since, so whether it was created could not be checked."
        ),
        fix: format!(
            "Search Partner Center for a referral whose external reference is {native}: if there \
             is one, enter its id in {} on the opportunity; if not, change the opportunity to \
             sync it again.",
            referral_id_field(deps.mapping, record.kind())
        ),
        crm: Some(record.clone()),
    }))
}

/// Send the Shared deal's invitation of Microsoft unless the link says it was sent; `true`
/// when the deal's engagement has one now. A link stored before invitations were tracked (or
/// a run that failed after sending) is checked against the engagement's referrals first, so
/// Microsoft is never invited twice.
async fn ensure_invitation<X: Ports>(
    deps: &Deps<'_, X>,
    sync: &Outbound<'_>,
    current: &Referral,
) -> Result<bool, Failure> {
    if sync.link.is_some_and(|l| l.microsoft_invited) {
        return Ok(true);
    }
    let shared = current.referral_type == Some(ReferralType::Shared);
    let engagement = current.engagement_id().ok();
    let (true, true, Some(engagement)) = (is_shared_deal(sync.opportunity()), shared, engagement)
    else {
        return Ok(false);
    };
    let referrals = list_engagement(deps.partner_center, engagement)
        .await
        .map_err(|failure| match failure {
            Failure::Port { error, .. } => Failure::port(Some(sync.record))(error),
            problem => problem,
        })?;
    if !referrals.iter().any(invites_microsoft) {
        invite_microsoft(deps, sync, &engagement, current).await?;
    }
    Ok(true)
}

/// `POST` the referral that invites Microsoft to the deal's `engagement`, with the taxonomy of
/// the partner's own referral `own` (as created, or as Partner Center holds it).
async fn invite_microsoft<X: Ports>(
    deps: &Deps<'_, X>,
    sync: &Outbound<'_>,
    engagement: &EngagementId,
    own: &Referral,
) -> Result<(), Failure> {
    let shared = shared_deal_body(sync.validated, &deps.settings.partner_team, own);
    deps.partner_center
        .create_referral(&microsoft_invitation_body(&shared, engagement))
        .await
        .map(|_| ())
        .map_err(Failure::port(Some(sync.record)))
}

/// Partner Center changed since the link's state (or there is no link): perhaps another sync
/// of this record sent a later save of it there after this run read the record, and this
/// run's older values would then overwrite it (its PATCH is conditional on the referral just
/// read, which already holds the later save). So the record is read again (one CRM read, only when Partner Center
/// changed since the last sync); saved since this run read it → a 412: the run is retried with
/// the record read again (docs/conflicts.md#late-crm-webhooks).
async fn superseded_check<X: Ports>(
    deps: &Deps<'_, X>,
    sync: &Outbound<'_>,
    current: &Referral,
) -> Result<(), Failure> {
    let changed = current
        .updated_date_time
        .as_ref()
        .and_then(WireDateTime::instant);
    // Without a link (lost, or not saved by the run that created the referral) nothing tells
    // what Partner Center was sent last, and the merge gives every difference to its owner:
    // a record read before another sync sent a later save would win with its older values
    // (simulation seed 487 with `--no-concurrent-edits`). So it is checked too.
    let check = match sync.link {
        None => true,
        Some(link) => matches!(
            (link.last_referral_updated, changed),
            (Some(synced), Some(changed)) if changed > synced
        ),
    };
    if !check {
        return Ok(());
    }
    let record = sync.record;
    let now = deps
        .crm
        .get_opportunity(record)
        .await
        .map_err(Failure::port(Some(record)))?;
    let saved_since = match (sync.version, now.version.as_deref()) {
        (Some(read), Some(now)) => read != now,
        _ => now.opportunity.fingerprint() != sync.fingerprint,
    };
    if saved_since {
        return Err(Failure::port(Some(record))(PortError::PreconditionFailed {
            service: crate::Service::from(deps.crm.kind()),
        }));
    }
    Ok(())
}

/// Step 6: update the referral, merged field by field with what Partner Center changed
/// (docs/conflicts.md#the-policy): only the fields the CRM changed (or won) are sent, and the
/// fields Partner Center changed (or won) are written to the CRM with the sync's Audit text
/// (the write the sync makes anyway), so both sides hold the same values.
///
/// Planned first against the referral as the link last saw it, without reading it
/// ([`update_as_seen`]); read when that cannot tell.
async fn update<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
) -> Result<Outcome, Failure> {
    if let Some(seen) = sync.link.and_then(Link::referral_seen)
        && let Some(outcome) = update_as_seen(deps, journal, sync, referral_id, &seen).await?
    {
        return Ok(outcome);
    }
    let record = sync.record;
    let current = match deps.partner_center.get_referral(&referral_id).await {
        Ok(referral) => referral,
        Err(PortError::NotFound { .. }) => {
            return Err(Failure::Problem(unknown_referral(
                deps.mapping,
                record,
                referral_id,
            )));
        }
        Err(error) => return Err(Failure::port(Some(record))(error)),
    };
    update_read(deps, journal, sync, referral_id, &current).await
}

/// Step 6 without reading the referral (docs/conflicts.md#what-it-costs): planned against
/// the referral as the link last saw it ([`Link::referral_seen`]) and sent conditional on its
/// `eTag`, so a PATCH that lands was planned against exactly what Partner Center held. Only
/// the plain case: something to send, nothing held, no conflict, no invitation owed, not a
/// retry. Anything else, or a 412 (Partner Center changed since), is `None`: the referral is
/// read and the change planned again ([`update_read`]).
async fn update_as_seen<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
    seen: &Referral,
) -> Result<Option<Outcome>, Failure> {
    let invited = sync.link.is_some_and(|l| l.microsoft_invited);
    if sync.retrying || (!invited && is_shared_deal(sync.opportunity())) {
        return Ok(None);
    }
    let merged = sync.merged(seen, deps.mapping, deps.crm.kind());
    let Ok(ops) = referral_patch(seen, &merged.desired, sync.explicit_close(seen)) else {
        return Ok(None);
    };
    if ops.is_empty()
        || !merged.conflicts.is_empty()
        || !held_until_accepted(seen, &merged.desired).is_empty()
    {
        return Ok(None);
    }
    let record = sync.record;
    let patched = match deps
        .partner_center
        .patch_referral(&referral_id, seen.etag().as_ref(), &ops)
        .await
    {
        Ok(patched) => patched,
        Err(PortError::PreconditionFailed { .. }) => return Ok(None),
        Err(error) => return Err(Failure::port(Some(record))(error)),
    };
    let sent = Sent {
        current: seen,
        patched,
        invited,
        merged: &merged,
        ops: &ops,
    };
    updated(deps, journal, sync, referral_id, sent)
        .await
        .map(Some)
}

/// Step 6 with the referral as just read.
async fn update_read<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
    current: &Referral,
) -> Result<Outcome, Failure> {
    let record = sync.record;
    superseded_check(deps, sync, current).await?;
    let invited = ensure_invitation(deps, sync, current).await?;
    let explicit_close = sync.explicit_close(current);
    let plan = |referral: &Referral| {
        let merged = sync.merged(referral, deps.mapping, deps.crm.kind());
        referral_patch(referral, &merged.desired, explicit_close)
            .map(|ops| (ops, merged))
            .map_err(|error| Failure::Problem(not_applicable(&error, record)))
    };

    let (ops, merged) = plan(current)?;
    let held = held_until_accepted(current, &merged.desired);
    if ops.is_empty() && !held.is_empty() {
        return hold_until_accepted(
            deps,
            journal,
            sync,
            referral_id,
            current,
            &held,
            invited,
            &merged,
        )
        .await;
    }
    if ops.is_empty() {
        let mut link =
            sync.link_after(referral_id, current, current.etag(), invited, journal.now());
        merged.settle(&mut link, sync, &ops);
        if merged.to_crm.is_empty() {
            journal.keep_link(link, true);
            finish_write_back(deps, journal, record, sync.opportunity(), referral_id).await?;
            journal
                .record(AuditEvent::UnchangedSkipped, Some(record))
                .await;
            return Ok(Outcome::UnchangedSkipped);
        }
        // Nothing for Partner Center, but its changes for the CRM.
        let text = merged.audit_text(journal.entry(AuditEvent::WrittenBack, Some(record)));
        merged.audit_conflicts(journal, record).await?;
        return to_crm_then_link(
            deps,
            journal,
            sync,
            referral_id,
            &merged,
            &link,
            &ops,
            &text,
        )
        .await;
    }

    // A 412: the referral changed since it was read — perhaps by another sync of this record
    // with a later version of it. Re-planning this run's read on the re-read referral could
    // overwrite that later version, so the change is retried with the record read again.
    merged.audit_conflicts(journal, record).await?;
    let patched = deps
        .partner_center
        .patch_referral(&referral_id, current.etag().as_ref(), &ops)
        .await
        .map_err(Failure::port(Some(record)))?;
    let sent = Sent {
        current,
        patched,
        invited,
        merged: &merged,
        ops: &ops,
    };
    updated(deps, journal, sync, referral_id, sent).await
}

/// A PATCH of step 6 that Partner Center took.
struct Sent<'a> {
    /// The referral it was planned against.
    current: &'a Referral,
    /// Partner Center's answer.
    patched: Patched,
    /// Whether the deal's engagement invites Microsoft.
    invited: bool,
    /// The merge.
    merged: &'a Merged,
    /// What was sent.
    ops: &'a [PatchOp],
}

/// After the PATCH: the link, and Partner Center's values of the fields it won (or the
/// Audit text) to the CRM.
async fn updated<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
    sent: Sent<'_>,
) -> Result<Outcome, Failure> {
    let record = sync.record;
    let Sent {
        current,
        patched,
        invited,
        merged,
        ops,
    } = sent;
    journal.record(AuditEvent::Updated, Some(record)).await;

    let mut link = sync.link_after(referral_id, current, patched.etag, invited, journal.now());
    // After a conditional PATCH nothing came in between: the answer's time is the state the
    // link holds, so the PATCH's own event is known as an echo without a read.
    if current.etag().is_some() {
        link.last_referral_updated = patched.updated.or(link.last_referral_updated);
    }
    link.last_referral = patched.referral.as_deref().and_then(Link::referral_text);
    merged.settle(&mut link, sync, ops);
    let entry = journal.entry(AuditEvent::Updated, Some(record));
    let in_sync = merged.conflicts.is_empty() && shows_in_sync(sync.audit, &entry);
    let text = merged.audit_text(entry);
    if !merged.to_crm.is_empty() {
        return to_crm_then_link(deps, journal, sync, referral_id, merged, &link, ops, &text).await;
    }
    journal.keep_link(link, true);
    if is_read_only(record, sync.opportunity()) {
        // A closed Dataverse row takes no write (not even the Audit text): the audit log has it.
    } else if sync.opportunity().referral_id == Some(referral_id) {
        if !in_sync {
            let written = deps.crm.write_audit(record, &text).await;
            journal.tolerate(written);
        }
    } else {
        write_back(deps, record, referral_id, &text)
            .await
            .map_err(Failure::port(Some(record)))?;
        journal.record(AuditEvent::WrittenBack, Some(record)).await;
    }
    Ok(Outcome::Updated {
        crm: record.clone(),
    })
}

/// Step 6 when the referral is still New and the opportunity on hold but its update fields
/// differ: Partner Center takes no change before the referral is accepted ("changes made while
/// on hold don't sync"). Nothing is sent; the link keeps what was last *sent* and the merge's
/// base of the held fields (so the change counts as unsent and goes out with the acceptance —
/// from the CRM, or from Partner Center, whose acceptance the merge does not let overwrite
/// it), and the record's Audit field says how to send it.
#[allow(
    clippy::too_many_arguments,
    reason = "the update step's state, passed on as it is"
)]
async fn hold_until_accepted<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
    current: &Referral,
    held: &[String],
    invited: bool,
    merged: &Merged,
) -> Result<Outcome, Failure> {
    let record = sync.record;
    let mut link = sync.link_after(referral_id, current, current.etag(), invited, journal.now());
    merged.settle(&mut link, sync, &[]);
    link.last_fingerprint_to_pc = sync.link.and_then(|l| l.last_fingerprint_to_pc.clone());
    link.last_stage_to_pc = sync.link.and_then(|l| l.last_stage_to_pc);
    let fields: Vec<&str> = held
        .iter()
        .map(|path| path.rsplit('/').next().unwrap_or(path))
        .collect();
    let event = AuditEvent::HeldUntilAccepted {
        reason: format!(
            "Partner Center has not accepted referral {referral_id} yet (it is New and the \
             opportunity is on hold), and it takes no change before that; the change to {} \
             waits.",
            fields.join(", ")
        ),
        fix: format!(
            "Accept the referral first: {} — that accepts it in Partner Center and the change \
             is sent with it. If it is accepted in Partner Center instead, the change is sent then: the \
             acceptance does not overwrite it (docs/conflicts.md#held-changes).",
            accept_in_crm(deps.mapping, record.kind())
        ),
    };
    let text = merged.audit_text(journal.entry(event.clone(), Some(record)));
    merged.audit_conflicts(journal, record).await?;
    if merged.to_crm.is_empty() {
        journal.keep_link(link, true);
        finish_write_back(deps, journal, record, sync.opportunity(), referral_id).await?;
        let written = deps.crm.write_audit(record, &text).await;
        journal.tolerate(written);
    } else {
        write_values(
            deps,
            record,
            referral_id,
            &merged.crm_values(),
            &text,
            sync.version,
        )
        .await
        .map_err(Failure::port(Some(record)))?;
        journal.keep_link(link, true);
    }
    journal.record(event, Some(record)).await;
    Ok(Outcome::HeldUntilAccepted {
        crm: record.clone(),
    })
}

/// How a seller accepts a referral from the CRM: the opportunity's active stage.
fn accept_in_crm(mapping: &MappingConfig, kind: CrmKind) -> String {
    match kind {
        CrmKind::Dataverse => format!(
            "set the opportunity's Status Reason from On Hold ({}) to In Progress ({})",
            mapping.dataverse.status_codes.on_hold, mapping.dataverse.status_codes.in_progress
        ),
        CrmKind::Salesforce => format!(
            "move the opportunity's Stage from {} to {}",
            mapping.stages.on_hold, mapping.stages.active
        ),
    }
}

/// Write the referral id and link (and `audit`) to the record: an update of the record by its
/// id that sets only those.
async fn write_back<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
    referral_id: ReferralId,
    audit: &str,
) -> Result<(), PortError> {
    write_values(
        deps,
        record,
        referral_id,
        &Opportunity::default(),
        audit,
        None,
    )
    .await
}

/// Partner Center's values (of the fields it won) to the CRM with the Audit text, then the
/// link: in that order, so a retry finds the sides equal (the conflicts are audited before).
/// A closed Dataverse row takes none ([`Problem::closed_in_crm`]).
#[allow(
    clippy::too_many_arguments,
    reason = "the update step's state, passed on as it is"
)]
async fn to_crm_then_link<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    sync: &Outbound<'_>,
    referral_id: ReferralId,
    merged: &Merged,
    link: &Link,
    ops: &[PatchOp],
    text: &str,
) -> Result<Outcome, Failure> {
    let record = sync.record;
    if is_read_only(record, sync.opportunity()) {
        let mut link = link.clone();
        merged.settle_as(&mut link, sync, ops, false);
        journal.keep_link(link, true);
        let problem = Problem::closed_in_crm(record, referral_id, &merged.to_crm);
        return Ok(needs_attention(deps, journal, problem).await);
    }
    write_values(
        deps,
        record,
        referral_id,
        &merged.crm_values(),
        text,
        sync.version,
    )
    .await
    .map_err(Failure::port(Some(record)))?;
    journal.keep_link(link.clone(), true);
    Ok(Outcome::Updated {
        crm: record.clone(),
    })
}

/// Write the referral id and link, the update fields set in `values` (Partner Center's values
/// of the fields it won) and `audit` to the record: an update of the record by its id that
/// sets only those.
async fn write_values<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
    referral_id: ReferralId,
    values: &Opportunity,
    audit: &str,
    if_match: Option<&str>,
) -> Result<(), PortError> {
    let ids = Opportunity {
        referral_id: Some(referral_id),
        referral_link: deps.mapping.referral_link(&referral_id.to_string()),
        ..values.clone()
    };
    let write = OpportunityWrite {
        referral_id: &referral_id,
        record: Some(record),
        opportunity: &ids,
        account: None,
        contact: None,
        new_account: None,
        new_contact: None,
        audit: Some(audit),
        scope: BodyScope::Update,
        if_match,
    };
    match deps.crm.upsert_opportunity(&write).await {
        Ok(_) => Ok(()),
        Err(error) => Err(closed_meanwhile(deps, record, error).await),
    }
}

/// A write refused because the record was closed while this run synced it (a seller's close
/// in Dataverse, where a closed row is read-only) is not the partner's to fix: the sync runs
/// again, finds the record closed, sends the close and writes nothing (simulation seed 695).
/// Any other refusal, or a record still open, stays as it was.
async fn closed_meanwhile<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
    error: PortError,
) -> PortError {
    if !refused_by_a_closed_row(deps, record, &error).await {
        return error;
    }
    PortError::Transient {
        service: error.service().clone(),
        reason: "the opportunity was closed (won or lost) while it was synced; it is synced \
                 again as closed"
            .to_owned(),
        retry_after: None,
    }
}

/// Whether `error`, a CRM write's answer, is a closed Dataverse row's refusal (read-only until
/// reopened, docs/dataverse.md#closing-an-opportunity): a permanent refusal of a Dataverse
/// write, and the row, read once, closed. The refusal's own text is not relied on.
pub(crate) async fn refused_by_a_closed_row<X: Ports>(
    deps: &Deps<'_, X>,
    record: &CrmRecordId,
    error: &PortError,
) -> bool {
    matches!(error, PortError::Permanent { .. })
        && record.kind().closed_is_read_only()
        && deps
            .crm
            .get_opportunity(record)
            .await
            .is_ok_and(|found| is_read_only(record, &found.opportunity))
}

/// The write-back of an earlier run that could not finish it: when the record does not carry
/// its referral id yet.
async fn finish_write_back<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    record: &CrmRecordId,
    opportunity: &Opportunity,
    referral_id: ReferralId,
) -> Result<(), Failure> {
    if opportunity.referral_id == Some(referral_id) {
        return Ok(());
    }
    if is_read_only(record, opportunity) {
        return Ok(());
    }
    let text = journal
        .entry(AuditEvent::WrittenBack, Some(record))
        .crm_text();
    write_back(deps, record, referral_id, &text)
        .await
        .map_err(Failure::port(Some(record)))?;
    journal.record(AuditEvent::WrittenBack, Some(record)).await;
    Ok(())
}

/// Whether the record takes no write: a closed opportunity of a CRM that keeps closed records
/// read-only (Dataverse).
pub(crate) fn is_read_only(record: &CrmRecordId, opportunity: &Opportunity) -> bool {
    record.kind().closed_is_read_only() && opportunity.stage.is_some_and(|s| s.is_closed())
}

/// The audit entry of a referral created for a record closed before its first sync, which a
/// CRM that keeps closed records read-only cannot take the referral id on.
fn not_written_back(record: &CrmRecordId, referral_id: ReferralId) -> AuditEvent {
    AuditEvent::Failed {
        reason: format!(
            "the opportunity was closed before its first sync: Partner Center referral \
             {referral_id} was created and closed, but the closed opportunity is read-only, so \
             the referral id was not written to it."
        ),
        fix: format!(
            "Nothing to do: the referral is linked to opportunity {} (its external reference \
             names it; cosell audit shows the link). To see the id on the opportunity, reopen it: \
             the sync that follows writes the id and closes it again as its referral is.",
            record.native()
        ),
    }
}

/// Whether the Audit column already says the record is in sync with `entry`'s referral: a
/// success message of either direction (created, updated, linked) naming that referral, with
/// nothing appended, whatever its time. A plain update after it does not rewrite the column (a
/// CRM call per save saved); the audit log keeps every entry with its time
/// (docs/troubleshooting.md#the-audit-column).
pub(super) fn shows_in_sync(shown: Option<&str>, entry: &AuditEntry) -> bool {
    let Some(shown) = shown else {
        return false;
    };
    [
        AuditEvent::Created,
        AuditEvent::Updated,
        AuditEvent::WrittenBack,
    ]
    .into_iter()
    .flat_map(|event| {
        [SyncDirection::ToPartnerCenter, SyncDirection::ToCrm].map(|direction| AuditEntry {
            event: event.clone(),
            direction: Some(direction),
            ..entry.clone()
        })
    })
    .any(|success| super::runner::same_message(shown, &success.crm_text()))
}

/// The configured CRM field of the referral id.
fn referral_id_field(mapping: &MappingConfig, kind: CrmKind) -> &str {
    match kind {
        CrmKind::Dataverse => &mapping.dataverse.opportunity.referral_identifier,
        CrmKind::Salesforce => &mapping.salesforce.opportunity.referral_identifier,
    }
}

/// `message` split at its `Fix:` into what went wrong and what to do.
fn reason_and_fix(message: &str) -> (String, Option<String>) {
    match message.split_once(" Fix: ") {
        Some((reason, fix)) => (sentence(reason), Some(sentence(&capitalize(fix.trim())))),
        None => (sentence(message), None),
    }
}

/// Every validation problem, in one failure: the reasons, then the fixes in the same order.
fn invalid_opportunity(problems: &[ValidationProblem], record: &CrmRecordId) -> Problem {
    let (reasons, fixes): (Vec<String>, Vec<Option<String>>) = problems
        .iter()
        .map(|problem| reason_and_fix(&problem.to_string()))
        .unzip();
    let codes: Vec<&str> = problems.iter().map(ValidationProblem::code).collect();
    Problem {
        code: "invalid_opportunity",
        reason: format!(
            "Not sent to Partner Center ({}): {}",
            codes.join(", "),
            reasons.join(" ")
        ),
        fix: fixes.into_iter().flatten().collect::<Vec<_>>().join(" "),
        crm: Some(record.clone()),
    }
}

/// A referral change Partner Center would refuse (a terminal referral above all).
fn not_applicable(error: &TransitionError, record: &CrmRecordId) -> Problem {
    let code = match error {
        TransitionError::Terminal { .. } => "terminal_referral",
        _ => "invalid_transition",
    };
    let (reason, fix) = reason_and_fix(&format!("The {error}"));
    Problem {
        code,
        reason: format!("Partner Center was not changed: {reason}"),
        fix: fix.unwrap_or_else(|| "Check the referral in Partner Center.".to_owned()),
        crm: Some(record.clone()),
    }
}

fn unknown_referral(mapping: &MappingConfig, record: &CrmRecordId, id: ReferralId) -> Problem {
    let field = referral_id_field(mapping, record.kind());
    Problem {
        code: "unknown_referral",
        reason: format!(
            "the opportunity is linked to Partner Center referral {id}, which Partner Center does \
             not know (404)."
        ),
        fix: format!(
            "Correct {field} on the opportunity, or clear it (and its link) to share the \
             opportunity as a new referral; check that the connector's Partner Center user holds \
             the Referrals admin or Referral user role."
        ),
        crm: Some(record.clone()),
    }
}
