//! [`IdempotencyStore`] on the connector's DynamoDB table, with AWS Powertools semantics.
//!
//! Item: `pk = IDEMPOTENCY#<key>`, `sk = IDEMPOTENCY`, `status` (`INPROGRESS` | `COMPLETED`),
//! `expiration` (epoch s; the TTL attribute), `in_progress_expiration` (epoch ms; the
//! holder's Lambda deadline), `response` (JSON text), `payload_hash` (optional),
//! `idempotency_key` (the full key).
//!
//! `acquire` is one conditional `PutItem`:
//! `attribute_not_exists(pk) OR expiration < :now OR (#status = :inprogress AND
//! in_progress_expiration < :now_ms)` with `ReturnValuesOnConditionCheckFailure = ALL_OLD`; when
//! the condition fails, the returned old item is decoded and the domain's pure rule
//! ([`IdempotencyRecord::acquire_outcome`]) says `Duplicate(response)` or `InProgress`.
//! Stored instants and `:now` / `:now_ms` are all rounded *up* to the stored precision (s / ms):
//! a record never expires early, and the condition agrees with the pure rule on the decoded
//! record (`stored < now` ⇔ `stored < ceil(now)` for whole numbers). Expired records count as absent (DynamoDB deletes them lazily, moto never).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use cosell_domain::{
    AcquireOutcome, AuditLog, Commit, IdempotencyKey, IdempotencyRecord, IdempotencyStatus,
    IdempotencyStore, KeyAfter, LinkStore, PortError, Service,
};
use serde_json::Value;

use crate::aws::audit::{DynamoAuditLog, entry_put_item};
use crate::aws::item::{Item, get_i64, get_s, n, s};
use crate::aws::links::link_put;
use crate::aws::table::{ENTITY, PK, SK, TTL_ATTRIBUTE, keys};
use crate::error::{AwsAdapterError, AwsResource, FailureKind, SdkResultExt};

const STATUS: &str = "status";
const IN_PROGRESS_EXPIRATION: &str = "in_progress_expiration";
const RESPONSE: &str = "response";
const PAYLOAD_HASH: &str = "payload_hash";
const KEY: &str = "idempotency_key";
const INPROGRESS: &str = "INPROGRESS";
const COMPLETED: &str = "COMPLETED";

/// The completion of a key: `COMPLETED` with its response and expiry.
const COMPLETE_UPDATE: &str = "SET #status = :completed, #response = :response, \
                               #expiration = :expiration, #entity = :entity, #key = :key \
                               REMOVE #in_progress_expiration";

/// An update expression's attribute names (`#name` → attribute).
type ExpressionNames = HashMap<String, String>;
/// An update expression's values (`:value` → value).
type ExpressionValues = HashMap<String, AttributeValue>;

/// The attribute names and values of [`COMPLETE_UPDATE`] for `key` (the response stored as
/// JSON text): the same for a lone `UpdateItem` and inside a commit's transaction.
fn completion_attributes(
    key: &IdempotencyKey,
    response: &Value,
    expires_at: DateTime<Utc>,
) -> Result<(ExpressionNames, ExpressionValues), AwsAdapterError> {
    let response =
        serde_json::to_string(response).map_err(|source| AwsAdapterError::Serialize {
            what: "the idempotency response",
            source,
        })?;
    let names = [
        ("#status", STATUS),
        ("#response", RESPONSE),
        ("#expiration", TTL_ATTRIBUTE),
        ("#entity", ENTITY),
        ("#key", KEY),
        ("#in_progress_expiration", IN_PROGRESS_EXPIRATION),
    ]
    .into_iter()
    .map(|(name, attribute)| (name.to_owned(), attribute.to_owned()))
    .collect();
    let values = [
        (":completed", s(COMPLETED)),
        (":response", s(response)),
        (":expiration", n(ceil_secs(expires_at))),
        (":entity", s("idempotency")),
        (":key", s(key.as_str())),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    Ok((names, values))
}

const ACQUIRE_CONDITION: &str = "attribute_not_exists(#pk) OR #expiration < :now OR \
                                 (#status = :inprogress AND #in_progress_expiration < :now_ms)";

/// The idempotency store on the connector's table.
#[derive(Debug, Clone)]
pub struct DynamoIdempotencyStore {
    client: Client,
    table: String,
    in_progress_ttl: Duration,
}

impl DynamoIdempotencyStore {
    /// How long past its holder's deadline an abandoned `INPROGRESS` record is kept before
    /// TTL removes it (Powertools' default expiry).
    pub const DEFAULT_IN_PROGRESS_TTL: Duration = Duration::from_secs(3600);

    /// A store on `table`, using a client built once per cold start.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            in_progress_ttl: Self::DEFAULT_IN_PROGRESS_TTL,
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The stored record of `key`, as stored (possibly expired: use
    /// [`IdempotencyRecord::state_at`] to read it).
    pub async fn get(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, AwsAdapterError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::idempotency_pk(key)))
            .key(SK, s(keys::IDEMPOTENCY_SK))
            .consistent_read(true)
            .send()
            .await
            .on_table(&self.table)?;
        found.item().map(|item| self.decode(key, item)).transpose()
    }

    /// [`IdempotencyStore::acquire`], with the adapter's error.
    pub async fn try_acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> Result<AcquireOutcome, AwsAdapterError> {
        let expiration = ceil_secs(in_progress_until.max(now))
            .saturating_add(i64::try_from(self.in_progress_ttl.as_secs()).unwrap_or(i64::MAX));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(keys::idempotency_pk(key)))
            .item(SK, s(keys::IDEMPOTENCY_SK))
            .item(ENTITY, s("idempotency"))
            .item(KEY, s(key.as_str()))
            .item(STATUS, s(INPROGRESS))
            .item(TTL_ATTRIBUTE, n(expiration))
            .item(IN_PROGRESS_EXPIRATION, n(ceil_millis(in_progress_until)))
            .condition_expression(ACQUIRE_CONDITION)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#expiration", TTL_ATTRIBUTE)
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_names("#in_progress_expiration", IN_PROGRESS_EXPIRATION)
            .expression_attribute_values(":now", n(ceil_secs(now)))
            .expression_attribute_values(":now_ms", n(ceil_millis(now)))
            .expression_attribute_values(":inprogress", s(INPROGRESS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match put {
            Ok(_) => return Ok(AcquireOutcome::Acquired),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    match failed.item() {
                        Some(item) => Some(self.decode(key, item)?),
                        // Emulators without ALL_OLD support: read the record.
                        None => self.get(key).await?,
                    }
                }
                _ => return Err(AwsAdapterError::from(err).on_table(&self.table)),
            },
        };
        match IdempotencyRecord::acquire_outcome(old.as_ref(), now) {
            // The condition failed on a record the rule calls absent: it changed in between
            // (or clocks disagree). Never claim a key that was not written: report it as busy so
            // the sender retries.
            AcquireOutcome::Acquired => {
                tracing::warn!(
                    table = %self.table,
                    key = %key,
                    "idempotency condition failed on a record that reads as absent; reporting in progress"
                );
                Ok(AcquireOutcome::InProgress)
            }
            outcome => Ok(outcome),
        }
    }

    /// [`IdempotencyStore::complete`], with the adapter's error.
    pub async fn try_complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> Result<(), AwsAdapterError> {
        let (names, values) = completion_attributes(key, response, expires_at)?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(keys::idempotency_pk(key)))
            .key(SK, s(keys::IDEMPOTENCY_SK))
            .update_expression(COMPLETE_UPDATE)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .on_table(&self.table)?;
        Ok(())
    }

    /// [`IdempotencyStore::commit`], with the adapter's error: one `TransactWriteItems` holding
    /// the key's completion (`Update`) or release (`Delete`), the link's conditional `Put` and
    /// one `Put` per audit entry; all or nothing. Then, for each entry that needs attention,
    /// its `ATTENTION` item (a conditional `PutItem` that must not cancel the transaction: only
    /// failures pay it).
    ///
    /// A cancellation whose reason for the link is `ConditionalCheckFailed` is
    /// [`FailureKind::ConditionFailed`] (the link changed since it was read); a conflict with
    /// another transaction or throttling is [`FailureKind::Throttled`].
    pub async fn try_commit(&self, commit: &Commit<'_>) -> Result<(), AwsAdapterError> {
        let mut actions = Vec::with_capacity(commit.entries.len() + 2);
        actions.push(self.settle_key(commit)?);
        let link_at = commit.link.map(|_| actions.len());
        if let Some(link) = commit.link {
            actions.push(
                TransactWriteItem::builder()
                    .put(link_put(&self.table, link)?)
                    .build(),
            );
        }
        let room = MAX_TRANSACTION_ITEMS.saturating_sub(actions.len());
        let (within, beyond) = commit.entries.split_at(commit.entries.len().min(room));
        for entry in within {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(entry_put_item(entry)?))
                .build()
                .map_err(|error| self.unbuildable("an audit entry", &error))?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        if let Err(err) = sent {
            return Err(self.transaction_error(err, link_at));
        }
        let audit = DynamoAuditLog::new(self.client.clone(), self.table.clone());
        for entry in beyond {
            audit.try_append(entry).await?;
        }
        for entry in within {
            audit.try_flag_attention(entry).await?;
        }
        Ok(())
    }

    /// The key's part of a commit: its completion or its release.
    fn settle_key(&self, commit: &Commit<'_>) -> Result<TransactWriteItem, AwsAdapterError> {
        let pk = s(keys::idempotency_pk(commit.key));
        let sk = s(keys::IDEMPOTENCY_SK);
        let action = match commit.key_after {
            KeyAfter::Completed {
                response,
                expires_at,
            } => {
                let (names, values) = completion_attributes(commit.key, response, expires_at)?;
                let update = Update::builder()
                    .table_name(&self.table)
                    .key(PK, pk)
                    .key(SK, sk)
                    .update_expression(COMPLETE_UPDATE)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(|error| self.unbuildable("the key's completion", &error))?;
                TransactWriteItem::builder().update(update).build()
            }
            KeyAfter::Released => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key(PK, pk)
                    .key(SK, sk)
                    .build()
                    .map_err(|error| self.unbuildable("the key's release", &error))?;
                TransactWriteItem::builder().delete(delete).build()
            }
        };
        Ok(action)
    }

    fn unbuildable(&self, what: &str, error: &dyn std::error::Error) -> AwsAdapterError {
        AwsAdapterError::Misconfigured {
            resource: AwsResource::Table(self.table.clone()),
            problem: format!("{what} could not be put into a transaction: {error}"),
            fix: "report this as a bug".into(),
        }
    }

    /// The error of a failed commit: a cancellation is classified by its reasons (the link's
    /// condition, or a conflict / throttling).
    fn transaction_error(
        &self,
        err: SdkError<TransactWriteItemsError, HttpResponse>,
        link_at: Option<usize>,
    ) -> AwsAdapterError {
        let reasons: Vec<Option<String>> = match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(canceled)) => canceled
                .cancellation_reasons()
                .iter()
                .map(|reason| reason.code().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let mut error = AwsAdapterError::from(err).on_table(&self.table);
        if let AwsAdapterError::Call { kind, detail, .. } = &mut error {
            if let Some(classified) = cancellation_kind(&reasons, link_at) {
                *kind = classified;
            }
            if !reasons.is_empty() {
                let codes: Vec<&str> = reasons
                    .iter()
                    .map(|code| code.as_deref().unwrap_or("None"))
                    .collect();
                detail.push_str(&format!(" (cancellation reasons: {})", codes.join(", ")));
            }
        }
        error
    }

    /// [`IdempotencyStore::release`], with the adapter's error.
    pub async fn try_release(&self, key: &IdempotencyKey) -> Result<(), AwsAdapterError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(keys::idempotency_pk(key)))
            .key(SK, s(keys::IDEMPOTENCY_SK))
            .send()
            .await
            .on_table(&self.table)?;
        Ok(())
    }

    fn decode(
        &self,
        key: &IdempotencyKey,
        item: &Item,
    ) -> Result<IdempotencyRecord, AwsAdapterError> {
        let corrupt = |reason: String| AwsAdapterError::CorruptItem {
            resource: AwsResource::Table(self.table.clone()),
            key: format!("{} / {}", keys::idempotency_pk(key), keys::IDEMPOTENCY_SK),
            what: "idempotency record",
            reason,
        };
        let status = match get_s(item, STATUS) {
            Some(INPROGRESS) => IdempotencyStatus::InProgress,
            Some(COMPLETED) => IdempotencyStatus::Completed,
            other => return Err(corrupt(format!("status is {other:?}"))),
        };
        let expires_at = get_i64(item, TTL_ATTRIBUTE)
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| corrupt(format!("no valid {TTL_ATTRIBUTE} (epoch seconds)")))?;
        let in_progress_until = match item.get(IN_PROGRESS_EXPIRATION) {
            None => None,
            Some(_) => Some(
                get_i64(item, IN_PROGRESS_EXPIRATION)
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "{IN_PROGRESS_EXPIRATION} is not epoch milliseconds"
                        ))
                    })?,
            ),
        };
        let response = get_s(item, RESPONSE)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt(format!("{RESPONSE} is not JSON: {e}")))?;
        Ok(IdempotencyRecord {
            key: key.clone(),
            status,
            expires_at,
            in_progress_until,
            response,
            payload_hash: get_s(item, PAYLOAD_HASH).map(str::to_owned),
        })
    }
}

/// The most actions one `TransactWriteItems` takes.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// How a cancelled commit is classified, from its per-action reasons (in the order of the
/// actions; `None` or `"None"` for an action that did not cause it): the link's condition is a
/// failed precondition; a conflict with another transaction or throttling is throttling.
fn cancellation_kind(reasons: &[Option<String>], link_at: Option<usize>) -> Option<FailureKind> {
    let code = |at: usize| reasons.get(at).and_then(Option::as_deref);
    if link_at.and_then(code) == Some("ConditionalCheckFailed") {
        return Some(FailureKind::ConditionFailed);
    }
    let busy = reasons.iter().flatten().any(|code| {
        matches!(
            code.as_str(),
            "TransactionConflict"
                | "ThrottlingError"
                | "ProvisionedThroughputExceeded"
                | "RequestLimitExceeded"
        )
    });
    busy.then_some(FailureKind::Throttled)
}

/// Epoch seconds, rounded up.
fn ceil_secs(at: DateTime<Utc>) -> i64 {
    let secs = at.timestamp();
    if at.timestamp_subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// Epoch milliseconds, rounded up.
fn ceil_millis(at: DateTime<Utc>) -> i64 {
    let millis = at.timestamp_millis();
    if !at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        millis.saturating_add(1)
    } else {
        millis
    }
}

impl IdempotencyStore for DynamoIdempotencyStore {
    #[tracing::instrument(skip_all, fields(table = %self.table, key = %key))]
    async fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> Result<AcquireOutcome, PortError> {
        self.try_acquire(key, now, in_progress_until)
            .await
            .map_err(|e| e.into_port_error(Service::IdempotencyStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, key = %key))]
    async fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.try_complete(key, response, expires_at)
            .await
            .map_err(|e| e.into_port_error(Service::IdempotencyStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, key = %key))]
    async fn release(&self, key: &IdempotencyKey) -> Result<(), PortError> {
        self.try_release(key)
            .await
            .map_err(|e| e.into_port_error(Service::IdempotencyStore))
    }

    /// One `TransactWriteItems` on this table ([`DynamoIdempotencyStore::try_commit`]): the
    /// deployment's link store and audit log are this table, so `links` and `audit` are not
    /// used.
    #[tracing::instrument(skip_all, fields(table = %self.table, key = %commit.key))]
    async fn commit<L: LinkStore, A: AuditLog>(
        &self,
        _links: &L,
        _audit: &A,
        commit: &Commit<'_>,
    ) -> Result<(), PortError> {
        self.try_commit(commit)
            .await
            .map_err(|e| e.into_port_error(Service::IdempotencyStore))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn conditions_compare_against_now_rounded_up_to_the_stored_precision() {
        let whole = Utc.timestamp_opt(100, 0).unwrap();
        assert_eq!((ceil_secs(whole), ceil_millis(whole)), (100, 100_000));
        let fraction = Utc.timestamp_opt(100, 500_000_001).unwrap();
        assert_eq!((ceil_secs(fraction), ceil_millis(fraction)), (101, 100_501));
        let exact_ms = Utc.timestamp_opt(100, 5_000_000).unwrap();
        assert_eq!(ceil_millis(exact_ms), 100_005);
    }
}
