//! Partner Center → CRM: what the `partner-center-events` function and the retry worker run
//! for a Partner Center webhook event.
//!
//! For `referral-created` / `referral-updated`:
//!
//! 1. GET the referral named by the event and look up its [`Link`].
//! 2. **Echo**: the referral's `eTag` is the one our own write-back produced, or it is older than
//!    the last one seen → `EchoSkipped`, no CRM call.
//! 3. Map it to the canonical [`Opportunity`]; if its fingerprint is what the CRM was last
//!    given → `UnchangedSkipped`: no CRM call, the link's `eTag` refreshed (and a write-back an
//!    earlier run could not finish is finished).
//! 4. Find the CRM record: the link's, else the opportunity the referral's
//!    `externalReferenceId` names (a referral created from the CRM carries it; checked with one
//!    read), else (not for `referral-created`, whose referral no CRM record can carry yet)
//!    [`CrmStore::find_opportunity_by_referral`].
//! 5. A new opportunity gets its customer account (matched by name and postal code) and contact
//!    (matched by email) found or created first; then the opportunity is upserted. A linked one
//!    is merged field by field first (docs/conflicts.md#the-policy): when Partner Center changed
//!    a shared field since the last sync the record is read once (not when the link's
//!    [`Link::crm_seen`] shows the CRM changed none since: then the write is conditional on that
//!    version, and a 412 plans again with the read), only the fields Partner Center
//!    changed (or won) are written, the fields the CRM changed (or won) go to Partner Center in
//!    the step 6 patch, and a field both changed goes to its owner and is audited.
//! 6. The CRM id is written back into the referral's `externalReferenceId` (JSON Patch with
//!    `If-Match`; on 412 the referral is re-read once and the patch retried once), and the link
//!    saved with the referral's new `eTag`, so the `referral-updated` our patch raises is
//!    recognised in step 2. The link is written with the delivery's commit (its key completed
//!    and its audit entries, in one write: see [`super::runner`]).
//!
//! A new referral costs one Partner Center GET, one upsert, one PATCH, plus the account and
//! contact look-ups and creates. A redelivery costs nothing (see [`super::runner`]).
//!
//! For `related-referral-created` / `-updated` see [`sync_related`].

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::deps::{Delivery, Deps};
use super::merge::{
    FieldConflict, Merge, SharedField, Side, agreed_fields, conflict_text, field_hashes,
};
use super::outcome::{Handled, Outcome, SyncError};
use super::runner::{
    CREATE_LOCK_RETRY_AFTER, Failure, Journal, Problem, Run, attempt_key, exactly_once, finish,
    list_engagement, needs_attention, sentence,
};
use crate::datetime::WireDateTime;
use crate::error::ParseError;
use crate::ids::{CrmKind, CrmRecordId, DataverseId, ReferralId, SalesforceId};
use crate::mapping::{BodyScope, invites_microsoft, referral_patch, referral_to_crm_opportunity};
use crate::opportunity::{Account, Contact, CrmOpportunity, Opportunity};
use crate::ports::{
    AuditEvent, Claim, CrmSeen, CrmStore, FoundCustomer, IdempotencyKey, Link, LinkStore,
    OpportunityWrite, PartnerCenter, Patched, PortError, Ports, RetryJob, RetrySource, Service,
    SyncDirection, customer_keys,
};
use crate::referral::{PatchOp, PatchOperation, Referral};
use crate::status::ReferralStatus;
use crate::webhook::{EventName, WebhookEvent};

/// The key prefix of Partner Center deliveries.
const KEY_SOURCE: &str = "pc";

/// The Salesforce key prefix of Opportunity records.
const SALESFORCE_OPPORTUNITY_PREFIX: &str = "006";

/// Members that may carry Microsoft's CRM (MSX) id on Microsoft's referral. Partner Center does
/// not document one, so these are guesses, matched case-insensitively.
const MICROSOFT_CRM_ID_MEMBERS: [&str; 4] = [
    "microsoftCrmId",
    "microsoftCrmIdentifier",
    "msxId",
    "msxOpportunityId",
];

/// The idempotency key of a Partner Center event: `pc:` and the SHA-256 (hex) of its event
/// name, `ResourceUri` and `ResourceChangeUtcDate`, so every redelivery of one change shares it
/// and the next change of the same referral does not.
///
/// Events carry no id of their own. Without a `ResourceChangeUtcDate` (no documented event
/// lacks one) the key includes `now` to the second instead: redeliveries then run again, which
/// the sync tolerates (upserts by referral id, fingerprints), rather than hiding every later
/// change of the referral for the key's lifetime.
pub fn partner_center_event_key(
    event: &WebhookEvent,
    now: DateTime<Utc>,
) -> Result<IdempotencyKey, ParseError> {
    let changed = match &event.resource_change_utc_date {
        Some(date) => date.instant().map_or_else(
            || date.as_str().trim().to_owned(),
            |instant| instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        None => format!("received {}", now.timestamp()),
    };
    let mut hash = Sha256::new();
    for part in [
        event.event_name.as_str(),
        event.resource_uri.trim(),
        &changed,
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    IdempotencyKey::new(KEY_SOURCE, &hex::encode(hash.finalize()))
}

/// Handle one Partner Center webhook event (its signature already verified), exactly once.
///
/// `test-created` is acknowledged and events the connector did not register for are ignored,
/// both without any call. Referral events run under the event's idempotency key (see
/// [`partner_center_event_key`]). `Err` means the delivery could not be taken on or parked:
/// answer [`SyncError::http_status`] so Partner Center delivers it again.
pub async fn handle_partner_center_event<X: Ports>(
    deps: &Deps<'_, X>,
    event: &WebhookEvent,
    meta: &Delivery,
) -> Result<Handled, SyncError> {
    if event.is_test() {
        return Ok(done(Outcome::Acknowledged));
    }
    if !event.event_name.is_referral_event() {
        return Ok(done(Outcome::Ignored {
            reason: format!(
                "the {} event is not a referral event",
                event.event_name.as_str()
            ),
        }));
    }
    let journal = Journal::new(deps.audit, SyncDirection::ToCrm, meta);
    let key = match partner_center_event_key(event, meta.now) {
        Ok(key) => key,
        Err(error) => {
            let problem = invalid_event(event, &error);
            let outcome = needs_attention(deps, &journal, problem).await;
            return Ok(finish(outcome, journal));
        }
    };
    let retry_key = key.to_string();
    process(deps, event, meta, journal, key, &retry_key, 0).await
}

/// A Partner Center job from the retry queue: the same sync as the event it carries, under a
/// key of its own attempt. A job that carries no referral event needs attention (and is not
/// retried).
pub(super) async fn run_partner_center_retry_job<X: Ports>(
    deps: &Deps<'_, X>,
    job: &RetryJob,
    meta: &Delivery,
) -> Result<Handled, SyncError> {
    let journal = Journal::new(deps.audit, SyncDirection::ToCrm, meta);
    let event = (job.source == RetrySource::PartnerCenter)
        .then(|| serde_json::from_value::<WebhookEvent>(job.payload.clone()).ok())
        .flatten()
        .filter(|event| event.event_name.is_referral_event());
    let key = attempt_key(job);
    match (event, key) {
        (Some(event), Ok(key)) => {
            process(deps, &event, meta, journal, key, &job.key, job.attempt).await
        }
        _ => {
            let problem = Problem {
                code: "invalid_retry_job",
                reason: format!(
                    "retry job {:?} (attempt {}, source {:?}) carries no Partner Center referral \
                     event.",
                    job.key, job.attempt, job.source
                ),
                fix: "Remove the message from the queue; if a referral is missing in the CRM, \
                      change it in Partner Center to sync it again."
                    .to_owned(),
                crm: None,
            };
            let outcome = needs_attention(deps, &journal, problem).await;
            Ok(finish(outcome, journal))
        }
    }
}

fn done(outcome: Outcome) -> Handled {
    Handled {
        outcome,
        warnings: Vec::new(),
        referral_id: None,
    }
}

fn invalid_event(event: &WebhookEvent, error: &ParseError) -> Problem {
    Problem {
        code: "invalid_event",
        reason: sentence(&format!(
            "the {} event names no referral: {error}",
            event.event_name.as_str()
        )),
        fix: "Nothing, if it came from a documentation sample or a test; otherwise report the \
              event and its ResourceUri to Partner Center support."
            .to_owned(),
        crm: None,
    }
}

/// The referral event under `key`.
async fn process<X: Ports>(
    deps: &Deps<'_, X>,
    event: &WebhookEvent,
    meta: &Delivery,
    journal: Journal<'_, X::Audit>,
    key: IdempotencyKey,
    retry_key: &str,
    attempt: u32,
) -> Result<Handled, SyncError> {
    let referral_id = match event.referral_id() {
        Ok(id) => id,
        Err(error) => {
            let outcome = needs_attention(deps, &journal, invalid_event(event, &error)).await;
            return Ok(finish(outcome, journal));
        }
    };
    journal.set_referral(referral_id);
    // Serialising the parsed event (strings and JSON values) cannot fail.
    let payload = serde_json::to_value(event).unwrap_or(Value::Null);
    let run = Run {
        key,
        retry_key,
        attempt,
        source: RetrySource::PartnerCenter,
        payload: &payload,
    };
    let sync = async {
        journal.record(AuditEvent::Received, None).await;
        match &event.event_name {
            EventName::RelatedReferralCreated | EventName::RelatedReferralUpdated => {
                sync_related(deps, &journal, referral_id).await
            }
            name => {
                let changed = event
                    .resource_change_utc_date
                    .as_ref()
                    .and_then(WireDateTime::instant);
                sync_referral(deps, &journal, name, referral_id, changed, attempt > 0).await
            }
        }
    };
    let outcome = exactly_once(deps, meta, &run, &journal, sync).await?;
    Ok(finish(outcome, journal))
}

/// `referral-created` / `referral-updated` (see the module docs); `changed` is the event's
/// `ResourceChangeUtcDate`.
async fn sync_referral<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    event_name: &EventName,
    referral_id: ReferralId,
    changed: Option<DateTime<Utc>>,
    retrying: bool,
) -> Result<Outcome, Failure> {
    // The link, read by claiming it: without one, this run holds the referral's create lock.
    let claim = deps
        .links
        .claim(&referral_id, journal.now(), journal.deadline())
        .await
        .map_err(Failure::port(None))?;
    let (link, claimed, first) = match claim {
        Claim::Linked(link) => (Some(*link), false, false),
        Claim::Claimed { earlier } => (None, true, !earlier),
        Claim::Busy => (None, false, false),
    };
    // A change the link already holds — the echo of our own write-back, whose answer gave the
    // link its `updatedDateTime`, or a late redelivery — is known without reading the referral.
    // Whether `ResourceChangeUtcDate` is the referral's `updatedDateTime` is UNKNOWN
    // (docs/partner-center.md#webhook-events): read robustly, only a change stamped at or
    // before what the link holds is skipped; a later stamp, or none, reads the referral. A
    // link without an eTag may owe Partner Center its write-back (saved when that failed, for
    // the retry to finish it): read. (A link found here may be older than the referral read
    // next, should another sync of it commit in between: the merge's base only moves for
    // fields both sides agreed on, so an older base merges the same, and the commit's version
    // condition on the link sends this run round again.)
    // Not for a retry job: its earlier attempt may have written the CRM and lost its link to
    // another sync's, which then holds a later change (simulation seed 16864).
    if let (Some(link), Some(changed)) = (&link, changed)
        && !retrying
        && link.crm.kind() == deps.crm.kind()
        && link.last_referral_etag.is_some()
        && link.holds_change_at(changed)
    {
        journal
            .record(AuditEvent::EchoSkipped, Some(&link.crm))
            .await;
        return Ok(Outcome::EchoSkipped);
    }
    let referral = deps.partner_center.get_referral(&referral_id).await;
    let referral = match referral {
        Ok(referral) => referral,
        Err(error) => {
            if claimed {
                let released = deps.links.release_claim(&referral_id).await;
                journal.tolerate(released);
            }
            return Err(Failure::port(None)(error));
        }
    };
    let result = Box::pin(sync_found(
        deps,
        journal,
        event_name,
        referral_id,
        referral,
        link,
        Claimant {
            claimed,
            first,
            read_first: None,
            retrying,
        },
    ))
    .await;
    if claimed && (result.is_err() || !journal.keeps_link()) {
        // No link was made: another delivery may make it now.
        let released = deps.links.release_claim(&referral_id).await;
        journal.tolerate(released);
    }
    result
}

/// Whether a run without a link holds the referral's claim (`claimed`, it may create the
/// opportunity) and whether that is the first claim ever made of it (`first`); `read_first`:
/// the CRM record as read *before* the referral was read again (see [`plan_update`]), the
/// read the merge then uses; `retrying`: a retry job's run, whose earlier attempt may have
/// written the CRM and then lost its link to another sync's.
#[derive(Debug, Clone)]
struct Claimant {
    claimed: bool,
    first: bool,
    read_first: Option<Box<CrmOpportunity>>,
    retrying: bool,
}

/// Steps 2–6, once the referral and its link (or the claim) are known.
async fn sync_found<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    event_name: &EventName,
    referral_id: ReferralId,
    referral: Referral,
    link: Option<Link>,
    claimant: Claimant,
) -> Result<Outcome, Failure> {
    let Claimant {
        claimed,
        first,
        read_first,
        retrying,
    } = claimant;
    let updated = referral
        .updated_date_time
        .as_ref()
        .and_then(WireDateTime::instant);

    match &link {
        Some(link) if link.crm.kind() != deps.crm.kind() => {
            return Err(Failure::Problem(Problem {
                code: "wrong_crm",
                reason: format!(
                    "the referral is linked to {}, a {} record, but this connector syncs to {}.",
                    link.crm,
                    link.crm.kind(),
                    deps.crm.kind()
                ),
                fix: "Point the connector at the CRM the referral was synced to, or delete the \
                      referral's link so the next change creates the opportunity in this CRM."
                    .to_owned(),
                crm: None,
            }));
        }
        Some(link) => {
            let etag = referral.etag();
            let own_write = etag.is_some() && etag == link.last_referral_etag;
            // Not for a retry job: its earlier attempt may have written the CRM and then lost
            // its link to another sync's, whose PATCH is the referral now read; the CRM may
            // then hold that attempt's write, which only a check of the CRM finds (simulation
            // seed 16864). The plan below checks it with a conditional write.
            if !retrying && (own_write || link.is_stale_referral(updated)) {
                journal
                    .record(AuditEvent::EchoSkipped, Some(&link.crm))
                    .await;
                return Ok(Outcome::EchoSkipped);
            }
        }
        None if invites_microsoft(&referral) => {
            return Ok(Outcome::Ignored {
                reason: "the referral is a partner's invitation of Microsoft to an engagement; \
                         the deal syncs through the engagement's own referral"
                    .to_owned(),
            });
        }
        None if !deps.settings.referral_scope.includes(&referral) => {
            return Ok(Outcome::Ignored {
                reason: "the referral is a lead and only co-sell opportunities are synced"
                    .to_owned(),
            });
        }
        None => {}
    }

    // As the CRM can hold it; what had to change to fit goes to the Audit column with the write.
    let (opportunity, fitted) =
        referral_to_crm_opportunity(&referral, deps.mapping, deps.crm.kind());
    let fingerprint = opportunity.fingerprint();

    if let Some(link) = &link
        && link.last_fingerprint_to_crm.as_deref() == Some(fingerprint.as_str())
    {
        let seen = write_back(
            deps,
            journal,
            referral_id,
            &referral,
            &link.crm,
            &fingerprint,
            &[],
        )
        .await
        .map_err(Failure::port(Some(&link.crm)))?;
        journal
            .record(AuditEvent::UnchangedSkipped, Some(&link.crm))
            .await;
        let refreshed = Link {
            last_referral_etag: seen.etag,
            last_referral_updated: seen.updated.or(updated).or(link.last_referral_updated),
            last_referral: seen.referral.as_deref().and_then(Link::referral_text),
            updated_at: journal.now(),
            ..link.clone()
        };
        journal.keep_link(refreshed, false);
        return Ok(Outcome::UnchangedSkipped);
    }

    let (record, located) = match (&link, read_first.as_deref()) {
        (Some(link), _) => (Some(link.crm.clone()), None),
        // Read before the referral was read again: the merge uses that read.
        (None, Some(read)) => (read.record.id.clone(), Some(read.clone())),
        (None, None) => match locate(deps, event_name, &referral, referral_id, first).await? {
            Some((record, found)) => (Some(record), Some(found)),
            None => (None, None),
        },
    };
    if record.is_none() && referral.is_terminal() {
        let state = referral
            .state()
            .map_or_else(|| "closed".to_owned(), |state| state.to_string());
        return Ok(Outcome::Ignored {
            reason: format!("the referral was closed ({state}) before it reached the CRM"),
        });
    }

    // Boxed: the sync's future would otherwise be too large for the stack of a debug build.
    let apply = Box::pin(async {
        let (scope, customer) = match &record {
            Some(_) => (BodyScope::Update, Customer::default()),
            None => (BodyScope::Create, customer(deps, &opportunity).await?),
        };
        let counterpart = match (&record, &link, &located) {
            (None, _, _) => Counterpart::New,
            (Some(record), Some(link), _) => Counterpart::Linked(record, link),
            (Some(_), None, Some(found)) => Counterpart::Unlinked(found),
            // `locate` answers a record with its values.
            (Some(_), None, None) => Counterpart::New,
        };
        // Planned against the record as the link saw it when that needs no read; a record
        // saved since answers 412 and the sync plans again, reading it (one wasted write).
        let mut as_seen = true;
        let (plan, upserted) = loop {
            let planned = plan_update(
                deps,
                counterpart,
                &referral,
                &opportunity,
                read_first.as_deref(),
                as_seen,
                retrying,
            )
            .await?;
            let plan = match planned {
                Planned::Plan(plan) => *plan,
                Planned::Reread(fresh, read) => {
                    let claimant = Claimant {
                        claimed,
                        first,
                        read_first: Some(read),
                        retrying,
                    };
                    // The link read again too: another sync of this deal may have saved a newer
                    // one (the base both sides agreed on) since this run read it, and a merge
                    // against the older base takes that sync's values for a change of the CRM
                    // and of Partner Center both, a conflict whose winner can write an older
                    // value over the newer one (simulation seed 5849, no reconcile to heal it).
                    let link = match &link {
                        Some(_) => deps
                            .links
                            .get_by_referral(&referral_id)
                            .await
                            .map_err(Failure::port(record.as_ref()))?
                            .or_else(|| link.clone()),
                        None => None,
                    };
                    return Box::pin(sync_found(
                        deps,
                        journal,
                        event_name,
                        referral_id,
                        *fresh,
                        link,
                        claimant,
                    ))
                    .await;
                }
            };
            let expected = if record.is_some() {
                AuditEvent::Updated
            } else {
                AuditEvent::Created
            };
            let mut audit_text = journal.entry(expected, record.as_ref()).crm_text();
            if !fitted.is_empty() {
                audit_text.push_str(". To fit the CRM: ");
                audit_text.push_str(&fitted.join("; "));
            }
            let conflicts = plan.conflicts();
            if !conflicts.is_empty() {
                audit_text.push_str(". ");
                audit_text.push_str(&conflict_text(&conflicts));
                // Audited durably before the write that resolves it: should this run crash
                // after it, the retry finds both sides equal and no conflict left to record (a
                // failed write is retried and may record it twice).
                journal
                    .record(
                        AuditEvent::ConflictResolved { fields: conflicts },
                        record.as_ref(),
                    )
                    .await;
                journal
                    .flush()
                    .await
                    .map_err(Failure::port(record.as_ref()))?;
            }
            let write = OpportunityWrite {
                referral_id: &referral_id,
                record: record.as_ref(),
                opportunity: &plan.to_crm,
                account: customer.found.account.as_ref(),
                contact: customer.found.contact.as_ref(),
                new_account: customer.new_account,
                new_contact: customer.new_contact,
                audit: Some(&audit_text),
                scope,
                // Not over a save made since the merge's read: a 412 retries, merging again.
                if_match: plan.crm_version.as_deref(),
            };
            match deps.crm.upsert_opportunity(&write).await {
                Err(PortError::PreconditionFailed { .. }) if plan.seen.is_some() => {
                    as_seen = false;
                }
                Err(error @ PortError::Permanent { .. }) => {
                    return Err(closed_or(deps, record.as_ref(), referral_id, &plan, error).await);
                }
                written => break (plan, written.map_err(Failure::port(record.as_ref()))?),
            }
        };
        let crm = upserted.id;
        let (event, outcome) = if upserted.created {
            (AuditEvent::Created, Outcome::Created { crm: crm.clone() })
        } else {
            (AuditEvent::Updated, Outcome::Updated { crm: crm.clone() })
        };
        journal.record(event, Some(&crm)).await;

        let old_base = link
            .as_ref()
            .map(|l| l.synced_fields.clone())
            .unwrap_or_default();
        let mut saved = Link {
            referral_id,
            crm: crm.clone(),
            last_referral_etag: None,
            last_referral_updated: updated,
            last_fingerprint_to_crm: Some(fingerprint.clone()),
            last_fingerprint_to_pc: link.as_ref().and_then(|l| l.last_fingerprint_to_pc.clone()),
            microsoft_invited: link.as_ref().is_some_and(|l| l.microsoft_invited),
            last_crm_modified: link.as_ref().and_then(|l| l.last_crm_modified),
            version: link.as_ref().map_or(0, |l| l.version),
            // The CRM now holds the stage written to it: a later CRM change closes the referral
            // only when it moves away from it (a stage the CRM kept is not the referral's).
            last_stage_to_pc: plan
                .to_crm
                .stage
                .or_else(|| link.as_ref().and_then(|l| l.last_stage_to_pc)),
            updated_at: journal.now(),
            synced_fields: plan.base_after(&old_base, false),
            last_referral: None,
            crm_seen: plan.crm_after(upserted.version),
        };
        let written_back = write_back(
            deps,
            journal,
            referral_id,
            &referral,
            &crm,
            &fingerprint,
            &plan.to_pc,
        )
        .await;
        match written_back {
            Ok(seen) => {
                saved.last_referral_etag = seen.etag;
                saved.last_referral_updated = seen.updated.or(saved.last_referral_updated);
                saved.last_referral = seen.referral.as_deref().and_then(Link::referral_text);
                saved.synced_fields = plan.base_after(&old_base, true);
                if !plan.to_pc.is_empty() {
                    // Partner Center now holds the CRM's values of the fields it won.
                    saved.last_fingerprint_to_crm = Some(plan.partner_center_after().fingerprint());
                }
            }
            Err(error) => {
                // Remember what the CRM holds, so the retry only finishes the write-back; a
                // retry that still owes Partner Center the CRM's values merges again.
                if !plan.to_pc.is_empty() {
                    saved.last_fingerprint_to_crm = link
                        .as_ref()
                        .and_then(|l| l.last_fingerprint_to_crm.clone());
                }
                journal.keep_link(saved, false);
                return Err(Failure::Port {
                    error,
                    crm: Some(crm),
                });
            }
        }
        // Saved with the delivery's commit: a link that cannot be saved retries the sync.
        journal.keep_link(saved, true);
        Ok(outcome)
    });
    match &record {
        // A new opportunity, with its account and contact: one delivery at a time, the one
        // holding the claim.
        None if !claimed => Err(creating_elsewhere(referral_id)),
        _ => apply.await,
    }
}

/// The failure of a delivery that would create the referral's opportunity while another one
/// holds the claim: retried after it, when the link exists.
fn creating_elsewhere(referral_id: ReferralId) -> Failure {
    Failure::port(None)(PortError::Transient {
        service: Service::LinkStore,
        reason: format!(
            "another delivery is creating the opportunity of referral {referral_id} right now; \
             this one runs again after it"
        ),
        retry_after: Some(CREATE_LOCK_RETRY_AFTER),
    })
}

/// A write the CRM refused: when the record is a closed Dataverse row (read-only until
/// reopened), Partner Center's values cannot reach it, which is said as such
/// ([`Problem::closed_in_crm`]) rather than as the refusal, and nothing more is written to it.
/// Any other refusal stays as it was.
async fn closed_or<X: Ports>(
    deps: &Deps<'_, X>,
    record: Option<&CrmRecordId>,
    referral_id: ReferralId,
    plan: &Plan,
    error: PortError,
) -> Failure {
    match record {
        Some(record) if super::refused_by_a_closed_row(deps, record, &error).await => {
            let fields: Vec<SharedField> = SharedField::ALL
                .into_iter()
                .filter(|field| field.is_set(&plan.to_crm))
                .collect();
            Failure::Problem(Problem::closed_in_crm(record, referral_id, &fields))
        }
        _ => Failure::port(record)(error),
    }
}

/// What a Partner Center → CRM sync writes where: the per-field merge
/// (docs/conflicts.md#the-policy).
#[derive(Debug)]
struct Plan {
    /// What the CRM is given: the referral's values, its shared fields only where Partner
    /// Center's value wins (a field left empty is left as the CRM holds it).
    to_crm: Opportunity,
    /// The referral's values.
    partner_center: Opportunity,
    /// The CRM's values: as read for the merge, or the referral's for a new opportunity;
    /// `None` when unknown (not read).
    crm: Option<Opportunity>,
    /// The patch giving Partner Center the CRM's values of the fields the CRM won.
    to_pc: Vec<PatchOp>,
    /// The fields `to_pc` carries.
    patched: Vec<SharedField>,
    /// The merge, when there was one.
    merge: Option<Merge>,
    /// The version of the CRM record the merge read, when the CRM reports one.
    crm_version: Option<String>,
    /// The shared fields' hashes of the CRM record as the link saw it ([`Link::crm_seen`]),
    /// when the plan was made against them instead of a read.
    seen: Option<BTreeMap<String, String>>,
}

impl Plan {
    fn conflicts(&self) -> Vec<FieldConflict> {
        self.merge
            .as_ref()
            .map(Merge::conflicts)
            .unwrap_or_default()
    }

    /// Partner Center's values once `to_pc` is applied.
    fn partner_center_after(&self) -> Opportunity {
        let mut after = self.partner_center.clone();
        if let Some(crm) = &self.crm {
            for field in &self.patched {
                field.copy(crm, &mut after);
            }
        }
        after
    }

    /// The CRM record after `to_crm` is written, at `version` (the write's answer): what the
    /// link keeps of it ([`Link::crm_seen`]). `None` when the CRM reports no versions, or when
    /// the record's values before the write are unknown (neither read nor seen).
    fn crm_after(&self, version: Option<String>) -> Option<CrmSeen> {
        let mut fields = match (&self.crm, &self.seen) {
            (Some(crm), _) => field_hashes(crm),
            (None, Some(seen)) => seen.clone(),
            (None, None) => return None,
        };
        for field in SharedField::ALL {
            if field.is_set(&self.to_crm) {
                fields.insert(field.name().to_owned(), field.hash(&self.to_crm));
            }
        }
        version.map(|version| CrmSeen { version, fields })
    }

    /// [`Link::synced_fields`] after this sync (`patched`: whether `to_pc` reached Partner
    /// Center).
    fn base_after(
        &self,
        old: &BTreeMap<String, String>,
        patched: bool,
    ) -> BTreeMap<String, String> {
        let partner_center = if patched {
            self.partner_center_after()
        } else {
            self.partner_center.clone()
        };
        match &self.crm {
            Some(crm) => {
                let mut crm = crm.clone();
                for field in SharedField::ALL {
                    if field.is_set(&self.to_crm) {
                        field.copy(&self.to_crm, &mut crm);
                    }
                }
                agreed_fields(old, &partner_center, &crm)
            }
            // Not read: the CRM holds what it was given.
            None => {
                let mut base = old.clone();
                for field in SharedField::ALL {
                    if field.is_set(&self.to_crm) {
                        base.insert(field.name().to_owned(), field.hash(&partner_center));
                    }
                }
                base
            }
        }
    }
}

/// What the referral's CRM counterpart is, for [`plan_update`].
#[derive(Debug, Clone, Copy)]
enum Counterpart<'a> {
    /// None yet: the opportunity is created from the referral.
    New,
    /// The linked record.
    Linked(&'a CrmRecordId, &'a Link),
    /// A record found by its ids but not linked yet, with its values as read.
    Unlinked(&'a CrmOpportunity),
}

/// The [`Plan`] of a sync (docs/conflicts.md#the-policy). A new opportunity gets every value of
/// the referral; so does one linked before the merge's base existed (as before the policy). A
/// record found unlinked is merged without a base (each differing field goes to its owner).
/// With a base, the CRM record is read only when Partner Center changed a shared field since
/// it; that field then goes to the CRM unless the CRM changed it too and owns it, and the
/// fields the CRM changed (and won) go to Partner Center — except the stage, which the CRM →
/// Partner Center rules send, and except to a referral not accepted yet (it takes no change)
/// or closed.
async fn plan_update<X: Ports>(
    deps: &Deps<'_, X>,
    counterpart: Counterpart<'_>,
    referral: &Referral,
    opportunity: &Opportunity,
    read_first: Option<&CrmOpportunity>,
    as_seen: bool,
    retrying: bool,
) -> Result<Planned, Failure> {
    let mut plan = Plan {
        to_crm: opportunity.clone(),
        partner_center: opportunity.clone(),
        crm: matches!(counterpart, Counterpart::New).then(|| opportunity.clone()),
        to_pc: Vec::new(),
        patched: Vec::new(),
        merge: None,
        crm_version: None,
        seen: None,
    };
    let (crm, merge) = match counterpart {
        Counterpart::New => return Ok(Planned::Plan(Box::new(plan))),
        Counterpart::Linked(_, link) if link.synced_fields.is_empty() => {
            return Ok(Planned::Plan(Box::new(plan)));
        }
        Counterpart::Linked(record, link) => {
            let changed = SharedField::ALL.iter().any(|field| {
                link.synced_fields.get(field.name()) != Some(&field.hash(opportunity))
            });
            // The record as this connector's last write (or a CRM → Partner Center sync's
            // read) left it, holding what both sides agreed on: only Partner Center changed, so
            // its changes go to the CRM unread, conditional on that version
            // (docs/conflicts.md#what-it-costs). A retry job's run with nothing changed writes
            // conditionally too: a record saved since (perhaps by its own earlier attempt,
            // whose link another sync overwrote) answers 412 and is merged below (simulation
            // seed 16864).
            let seen = link
                .crm_seen
                .as_ref()
                .filter(|_| as_seen && read_first.is_none() && (changed || retrying));
            if let Some((seen, version)) = seen.and_then(|seen| {
                seen.agreeing_version(&link.synced_fields)
                    .map(|version| (seen, version))
            }) {
                for field in SharedField::ALL {
                    if link.synced_fields.get(field.name()) == Some(&field.hash(opportunity)) {
                        field.clear(&mut plan.to_crm);
                    }
                }
                plan.crm_version = Some(version.to_owned());
                plan.seen = Some(seen.fields.clone());
                return Ok(Planned::Plan(Box::new(plan)));
            }
            // A retry job that found the record saved since (the 412 above, or the read it
            // restarted with) merges it.
            if !changed && !(retrying && (read_first.is_some() || !as_seen)) {
                for field in SharedField::ALL {
                    field.clear(&mut plan.to_crm);
                }
                return Ok(Planned::Plan(Box::new(plan)));
            }
            let read = match read_first {
                Some(read) => read.clone(),
                None => deps
                    .crm
                    .get_opportunity(record)
                    .await
                    .map_err(Failure::port(Some(record)))?,
            };
            // The record changed since the two sides last agreed: a seller's save, or another
            // sync of this deal that wrote a referral read newer than this run's (read before
            // the record, perhaps seconds ago). Merging this run's older read with it would
            // write Partner Center's older values over the newer ones, unaudited, and the CRM
            // write's `If-Match` cannot tell (it is on the record just read). So the referral
            // is read again, after the record: whatever another sync wrote to the record, it
            // had read an older referral than that (found by the simulation, seed 37). The
            // sync then starts over with that read of the record, not a new one: a record read
            // after the second referral read could again be newer than it (seed 644).
            let crm_changed = SharedField::ALL.iter().any(|field| {
                link.synced_fields.get(field.name()) != Some(&field.hash(&read.opportunity))
            });
            if crm_changed && read_first.is_none() {
                return reread(deps, &link.referral_id, record, read).await;
            }
            plan.crm_version = read.version;
            let crm = read.opportunity;
            let merge = Merge::new(Some(&link.synced_fields), opportunity, &crm);
            (crm, merge)
        }
        Counterpart::Unlinked(found) => {
            // As for a linked record that changed: the record was read after the referral, and
            // another sync may have written a newer referral to it in between. With no base,
            // any difference is a conflict Partner Center's older read could win (simulation
            // seed 212 with `--no-concurrent-edits`): the referral is read again first.
            let differs = SharedField::ALL
                .iter()
                .any(|field| field.hash(opportunity) != field.hash(&found.opportunity));
            if let (true, None, Ok(id), Some(record)) = (
                differs,
                read_first,
                referral.referral_id(),
                found.record.id.as_ref(),
            ) {
                return reread(deps, &id, record, found.clone()).await;
            }
            // Not over a save made since `locate` read it (another sync creating or updating
            // the same record meanwhile): a 412 retries, reading it again.
            plan.crm_version = found.version.clone();
            let merge = Merge::new(None, opportunity, &found.opportunity);
            (found.opportunity.clone(), merge)
        }
    };
    let partner_center_wins: Vec<SharedField> = merge
        .won_by(Side::PartnerCenter, Side::PartnerCenter, opportunity)
        .collect();
    for field in SharedField::ALL {
        if !partner_center_wins.contains(&field) {
            field.clear(&mut plan.to_crm);
        }
    }
    let crm_wins: Vec<SharedField> = merge
        .won_by(Side::Crm, Side::PartnerCenter, &crm)
        .filter(|field| *field != SharedField::Stage)
        .collect();
    let accepted = referral
        .state()
        .is_some_and(|state| state.status != ReferralStatus::New);
    if !crm_wins.is_empty() && accepted {
        let mut values = Opportunity::default();
        for field in &crm_wins {
            field.copy(&crm, &mut values);
        }
        // A closed referral takes no change: the CRM keeps its values.
        if let Ok(ops) = referral_patch(referral, &values, false) {
            plan.to_pc = ops;
            plan.patched = crm_wins;
        }
    }
    plan.crm = Some(crm);
    plan.merge = Some(merge);
    Ok(Planned::Plan(Box::new(plan)))
}

/// The referral read again, after its CRM `record` (see [`plan_update`]).
async fn reread<X: Ports>(
    deps: &Deps<'_, X>,
    referral_id: &ReferralId,
    record: &CrmRecordId,
    read: CrmOpportunity,
) -> Result<Planned, Failure> {
    let fresh = deps
        .partner_center
        .get_referral(referral_id)
        .await
        .map_err(Failure::port(Some(record)))?;
    Ok(Planned::Reread(Box::new(fresh), Box::new(read)))
}

/// What [`plan_update`] answers: the plan, or the referral read again after the CRM record
/// (the sync starts over with it).
#[derive(Debug)]
enum Planned {
    Plan(Box<Plan>),
    /// The referral read again, and the record as read before it.
    Reread(Box<Referral>, Box<CrmOpportunity>),
}

/// The CRM opportunity of a referral that has no link yet, with its values as read. `first`:
/// this run holds the first claim of the referral ever made, so no earlier run can have
/// created its opportunity.
async fn locate<X: Ports>(
    deps: &Deps<'_, X>,
    event_name: &EventName,
    referral: &Referral,
    referral_id: ReferralId,
    first: bool,
) -> Result<Option<(CrmRecordId, CrmOpportunity)>, Failure> {
    let crm = deps.crm;
    if let Some(named) = crm_record_named(referral.external_reference_id.as_deref(), crm.kind()) {
        match crm.get_opportunity(&named).await {
            // Not when it carries another referral: then it is that referral's opportunity.
            Ok(found)
                if found
                    .opportunity
                    .referral_id
                    .is_none_or(|id| id == referral_id) =>
            {
                let id = found.record.id.clone().unwrap_or(named);
                return Ok(Some((id, found)));
            }
            Ok(_) | Err(PortError::NotFound { .. }) => {}
            Err(error) => return Err(Failure::port(None)(error)),
        }
    }
    // A new referral's first run makes the search unnecessary: nothing made its opportunity
    // yet. Any earlier claim (released after a failure, or lapsed with a holder that crashed,
    // perhaps after the CRM stored the opportunity) makes this run search first.
    if *event_name == EventName::ReferralCreated && first {
        return Ok(None);
    }
    let found = crm
        .find_opportunity_by_referral(&referral_id)
        .await
        .map_err(Failure::port(None))?;
    Ok(found.and_then(|found| found.record.id.clone().map(|id| (id, found))))
}

/// The customer of a new opportunity: the account (by name and postal code) and contact (by
/// email) found with one [`CrmStore::find_customer`], and those to create with the
/// opportunity (in its upsert, [`OpportunityWrite::new_account`] /
/// [`OpportunityWrite::new_contact`]) when not found.
///
/// A contact without an email is not created: it could not be matched again, so a retry would
/// create it twice. The opportunity is created without a contact then.
///
/// Crash safety: a CRM that writes the new records with the opportunity at once (Salesforce)
/// leaves all of them or none; one that writes them one by one (Dataverse) leaves those made
/// before a crash. Either way a retry finds what was made and creates only the rest, and the
/// opportunity is upserted by its referral id.
async fn customer<'o, X: Ports>(
    deps: &Deps<'_, X>,
    opportunity: &'o Opportunity,
) -> Result<Customer<'o>, Failure> {
    let account = &opportunity.account;
    let name = account.name.as_deref();
    let contact = opportunity.contact.as_ref();
    let email = contact.and_then(|contact| contact.email.as_deref());
    let (keys, email) = customer_keys(
        name.map(|name| (name, account.postal_code.as_deref())),
        email,
    );
    let found = deps
        .crm
        .find_customer(keys, email)
        .await
        .map_err(Failure::port(None))?;
    let new_account = (keys.is_some() && found.account.is_none()).then_some(account);
    let new_contact = contact.filter(|_| email.is_some() && found.contact.is_none());
    Ok(Customer {
        found,
        new_account,
        new_contact,
    })
}

/// What [`customer`] answers: the records found, and those to create with the opportunity.
#[derive(Debug, Default)]
struct Customer<'o> {
    found: FoundCustomer,
    new_account: Option<&'o Account>,
    new_contact: Option<&'o Contact>,
}

/// Write `crm` into the referral's `externalReferenceId` when it names something else (with
/// `values`, the CRM's values of the fields it won, in the same PATCH), and return the `eTag`
/// the link should keep: one of a referral version whose mapped content the CRM holds (`None`
/// when unknown, so the next event is compared by content instead).
///
/// A terminal referral takes no change, so nothing is written to it. On 412 the referral is
/// re-read once and the back-link retried once with the fresh `eTag`; a second 412, or a 412
/// on a patch carrying `values` (planned against the referral as read), is an error (a
/// retried job starts over and merges again).
async fn write_back<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    referral_id: ReferralId,
    referral: &Referral,
    crm: &CrmRecordId,
    fingerprint: &str,
    values: &[PatchOp],
) -> Result<Patched, PortError> {
    let link_back = needs_write_back(referral, crm);
    if !link_back && values.is_empty() {
        return Ok(Patched::of(referral));
    }
    let pc = deps.partner_center;
    let mut ops: Vec<PatchOp> = link_back
        .then(|| back_link(referral, crm))
        .into_iter()
        .collect();
    ops.extend_from_slice(values);
    let patched = pc
        .patch_referral(&referral_id, referral.etag().as_ref(), &ops)
        .await;
    let seen = match patched {
        Ok(patched) => ours(patched, referral.etag().is_some()),
        // The CRM's values were planned against the referral as read: a retry merges again.
        Err(error @ PortError::PreconditionFailed { .. }) if !values.is_empty() => {
            return Err(error);
        }
        Err(PortError::PreconditionFailed { .. }) => {
            let fresh = pc.get_referral(&referral_id).await?;
            // Someone else's change came in between: it raises its own event, which must not
            // look like our echo unless the CRM already holds its content.
            let (fresh_opportunity, _) =
                referral_to_crm_opportunity(&fresh, deps.mapping, deps.crm.kind());
            let same = fresh_opportunity.fingerprint() == fingerprint;
            if !needs_write_back(&fresh, crm) {
                return Ok(if same {
                    Patched::of(&fresh)
                } else {
                    Patched::default()
                });
            }
            let patched = pc
                .patch_referral(
                    &referral_id,
                    fresh.etag().as_ref(),
                    &[back_link(&fresh, crm)],
                )
                .await?;
            if same {
                ours(patched, fresh.etag().is_some())
            } else {
                Patched::default()
            }
        }
        Err(error) => return Err(error),
    };
    journal.record(AuditEvent::WrittenBack, Some(crm)).await;
    Ok(seen)
}

/// What a write-back's answer tells of the referral. Its `updatedDateTime` is kept only after
/// a conditional PATCH: an unconditional one may have landed on someone else's change made
/// since our read, whose event that time would then hide.
fn ours(patched: Patched, conditional: bool) -> Patched {
    if conditional {
        patched
    } else {
        Patched {
            updated: None,
            ..patched
        }
    }
}

fn needs_write_back(referral: &Referral, crm: &CrmRecordId) -> bool {
    !referral.is_terminal()
        && crm_record_named(referral.external_reference_id.as_deref(), crm.kind()).as_ref()
            != Some(crm)
}

/// The JSON Patch operation setting `externalReferenceId` to the CRM's own id (the form
/// [`crate::mapping::referral_create_body`] writes): `replace` when the member is there, `add`
/// when it is not (RFC 6902 `replace` needs an existing member).
fn back_link(referral: &Referral, crm: &CrmRecordId) -> PatchOp {
    let op = if referral.external_reference_id.is_some() {
        PatchOperation::Replace
    } else {
        PatchOperation::Add
    };
    PatchOp {
        op,
        path: "/externalReferenceId".to_owned(),
        value: Some(Value::String(crm.native())),
        from: None,
    }
}

/// The record of this CRM an `externalReferenceId` names: `dataverse:<GUID>` /
/// `salesforce:<id>`, or the CRM's own id form (a GUID for Dataverse, an Opportunity id
/// starting `006` for Salesforce).
fn crm_record_named(text: Option<&str>, kind: CrmKind) -> Option<CrmRecordId> {
    let text = text?.trim();
    if let Ok(id) = CrmRecordId::try_from(text) {
        return (id.kind() == kind).then_some(id);
    }
    match kind {
        CrmKind::Dataverse => DataverseId::try_from(text).ok().map(CrmRecordId::from),
        CrmKind::Salesforce => SalesforceId::try_from(text)
            .ok()
            .filter(|id| id.key_prefix() == SALESFORCE_OPPORTUNITY_PREFIX)
            .map(CrmRecordId::from),
    }
}

/// `related-referral-created` / `-updated`: another organization's referral of one of our
/// engagements changed (Microsoft accepted, declined or closed its side of a co-sell deal).
///
/// Which referral the event names is UNKNOWN
/// (docs/partner-center.md#shared-deals-and-related-referrals), so both readings work: the named
/// referral is read, the engagement's referrals listed (`engagementId eq …`), and the partner's own
/// one is the first of them that is linked to a CRM record (and, when a partner organization is
/// configured, belongs to it). Microsoft's side is the most recently updated other organization's
/// referral, preferring one owned by Microsoft (`organizationId` `msft` or an organization name
/// containing "Microsoft").
///
/// Written to the partner's CRM opportunity: the Audit field with Microsoft's status, and the
/// "Microsoft CRM Identifier" when one is found. Partner Center documents no member for
/// Microsoft's CRM id, so it is read robustly: a member named `microsoftCrmId`,
/// `microsoftCrmIdentifier`, `msxId` or `msxOpportunityId` (any case) on Microsoft's referral,
/// else its `externalReferenceId` when Microsoft owns it (the slot a referral's owner keeps its
/// own CRM id in). Another partner's `externalReferenceId` is never taken for Microsoft's.
async fn sync_related<X: Ports>(
    deps: &Deps<'_, X>,
    journal: &Journal<'_, X::Audit>,
    referral_id: ReferralId,
) -> Result<Outcome, Failure> {
    let named = deps
        .partner_center
        .get_referral(&referral_id)
        .await
        .map_err(Failure::port(None))?;
    let Ok(engagement) = named.engagement_id() else {
        return Ok(Outcome::Ignored {
            reason: "the related referral carries no engagementId".to_owned(),
        });
    };
    let mut referrals = list_engagement(deps.partner_center, engagement).await?;
    referrals.retain(|r| r.referral_id().ok() != Some(referral_id));
    referrals.insert(0, named);

    let mut own = None;
    for referral in &referrals {
        if deps.settings.is_partners(referral) == Some(false) {
            continue;
        }
        let Ok(id) = referral.referral_id() else {
            continue;
        };
        if let Some(link) = deps
            .links
            .get_by_referral(&id)
            .await
            .map_err(Failure::port(None))?
        {
            own = Some((id, link));
            break;
        }
    }
    let Some((own_id, link)) = own else {
        return Ok(Outcome::Ignored {
            reason: "no referral of the engagement is linked to a CRM opportunity".to_owned(),
        });
    };
    journal.set_referral(own_id);

    let microsoft = referrals
        .iter()
        .filter(|r| r.referral_id().ok() != Some(own_id))
        .filter(|r| deps.settings.is_partners(r) != Some(true))
        .max_by_key(|r| {
            (
                is_microsofts(r),
                r.updated_date_time.as_ref().and_then(WireDateTime::instant),
            )
        });
    let Some(microsoft) = microsoft else {
        return Ok(Outcome::Ignored {
            reason: "the engagement has no other organization's referral".to_owned(),
        });
    };

    let microsoft_crm_id = microsoft_crm_id(microsoft);
    let state = microsoft
        .state()
        .map_or_else(|| "without a status".to_owned(), |state| state.to_string());
    let whose = if is_microsofts(microsoft) {
        "Microsoft's"
    } else {
        "The other organization's"
    };
    let at = journal.now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut text = format!("{at} {whose} referral is {state}");
    if let Some(id) = &microsoft_crm_id {
        text.push_str(&format!("; Microsoft CRM identifier {id}"));
    }

    let crm = link.crm;
    match microsoft_crm_id {
        Some(microsoft_crm_id) => {
            // The update scope writes only what is set: the identifier and the audit text.
            let opportunity = Opportunity {
                referral_id: Some(own_id),
                microsoft_crm_id: Some(microsoft_crm_id),
                ..Opportunity::default()
            };
            let write = OpportunityWrite {
                referral_id: &own_id,
                record: Some(&crm),
                opportunity: &opportunity,
                account: None,
                contact: None,
                new_account: None,
                new_contact: None,
                audit: Some(&text),
                scope: BodyScope::Update,
                if_match: None,
            };
            deps.crm
                .upsert_opportunity(&write)
                .await
                .map_err(Failure::port(Some(&crm)))?;
        }
        None => deps
            .crm
            .write_audit(&crm, &text)
            .await
            .map_err(Failure::port(Some(&crm)))?,
    }
    journal.record(AuditEvent::Updated, Some(&crm)).await;
    Ok(Outcome::Updated { crm })
}

fn is_microsofts(referral: &Referral) -> bool {
    referral
        .organization_id
        .as_deref()
        .is_some_and(|org| org.trim().eq_ignore_ascii_case("msft"))
        || referral
            .organization_name
            .as_deref()
            .is_some_and(|name| name.to_lowercase().contains("microsoft"))
}

/// Microsoft's CRM id on Microsoft's referral (see [`sync_related`]).
fn microsoft_crm_id(referral: &Referral) -> Option<String> {
    let non_empty = |text: &str| {
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    referral
        .extra
        .iter()
        .filter(|(key, _)| {
            MICROSOFT_CRM_ID_MEMBERS
                .iter()
                .any(|member| key.eq_ignore_ascii_case(member))
        })
        .find_map(|(_, value)| value.as_str().and_then(non_empty))
        .or_else(|| {
            is_microsofts(referral)
                .then_some(referral.external_reference_id.as_deref())
                .flatten()
                .and_then(non_empty)
        })
}
