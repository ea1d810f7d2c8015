//! [`AuditLog`] on the connector's DynamoDB table.
//!
//! Entries: `pk = REFERRAL#<id>` (or `CRM#<kind>#<id>` when no referral is known, or
//! `UNATTRIBUTED`), `sk = AUDIT#<RFC 3339 UTC with ms>#<uuid>`, and `gsi1pk = CRM#<kind>#<id>`,
//! `gsi1sk = sk` when the CRM record is known; the [`AuditEntry`] fields as plain attributes
//! (`event` is a map with its `kind`). Lists are newest first (`ScanIndexForward = false`).
//!
//! "Needs attention" means the record's latest outcome is a failure. Appending a `Failed` entry
//! also puts an `ATTENTION` item in the record's partition (`sk = ATTENTION`,
//! `gsi2pk = ATTENTION`, `gsi2sk = <timestamp>`) carrying the entry, unless a newer failure is
//! there (conditional on `gsi2sk <= :at`, so an older failure arriving late replaces nothing).
//! A success writes nothing beyond its entry: the sync path stays at one request per entry.
//! Instead [`AuditLog::needs_attention`] reads the sparse `gsi2` and drops each `ATTENTION`
//! item followed by a strictly later success (`Created`, `Updated`, `WrittenBack`,
//! `UnchangedSkipped`) of its referral or CRM record, deleting it on the way; an older success
//! arriving late resolves nothing.
//!
//! Entries expire [`AUDIT_RETENTION_DAYS`] after they happened (the table's TTL attribute);
//! `ATTENTION` items do not: an open problem stays listed until a success resolves it.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::Select;
use cosell_domain::{AuditEntry, AuditLog, CrmRecordId, PortError, ReferralId, Service};

use crate::aws::item::{Item, from_item, get_s, n, s, to_item};
use crate::aws::table::{
    ENTITY, GSI1, GSI1_PK, GSI1_SK, GSI2, GSI2_PK, GSI2_SK, PK, SK, TTL_ATTRIBUTE, keys,
};

/// How long audit entries are kept (DynamoDB TTL): a little over a year, so a deal's history
/// covers its whole sales cycle and a year-on-year comparison.
pub const AUDIT_RETENTION_DAYS: i64 = 400;
use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// The audit log on the connector's table.
#[derive(Debug, Clone)]
pub struct DynamoAuditLog {
    client: Client,
    table: String,
}

/// Where to list entries from.
struct Listing<'a> {
    index: Option<&'a str>,
    pk_attribute: &'a str,
    pk: String,
    sk_attribute: &'a str,
    sk_prefix: Option<&'a str>,
}

impl DynamoAuditLog {
    /// A log on `table`, using a client built once per cold start.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// [`AuditLog::append`], with the adapter's error: one `PutItem`, and for a failure a
    /// second one, the `ATTENTION` item (unless a newer failure is there already).
    pub async fn try_append(&self, entry: &AuditEntry) -> Result<(), AwsAdapterError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(entry_put_item(entry)?))
            .send()
            .await
            .on_table(&self.table)?;
        self.try_flag_attention(entry).await
    }

    /// For an entry that needs attention (a failure), put its `ATTENTION` item unless a newer
    /// failure is there already (one conditional `PutItem`); nothing for other entries.
    pub(crate) async fn try_flag_attention(
        &self,
        entry: &AuditEntry,
    ) -> Result<(), AwsAdapterError> {
        if !entry.needs_attention() {
            return Ok(());
        }
        let mut flag = to_item(entry).map_err(|source| AwsAdapterError::Serialize {
            what: "an audit entry",
            source,
        })?;
        let at = keys::timestamp(entry.at);
        flag.insert(PK.into(), s(partition_of(entry)));
        flag.insert(SK.into(), s(keys::ATTENTION));
        flag.insert(GSI2_PK.into(), s(keys::ATTENTION));
        flag.insert(GSI2_SK.into(), s(&at));
        flag.insert(ENTITY.into(), s("attention"));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(flag))
            .condition_expression("attribute_not_exists(#pk) OR #at <= :at")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#at", GSI2_SK)
            .expression_attribute_values(":at", s(at))
            .send()
            .await;
        match put {
            // A newer failure is there.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(PutItemError::is_conditional_check_failed_exception) =>
            {
                Ok(())
            }
            other => other.map(drop).on_table(&self.table),
        }
    }

    /// [`AuditLog::by_referral`], with the adapter's error.
    pub async fn try_by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        self.newest(
            Listing {
                index: None,
                pk_attribute: PK,
                pk: keys::referral_pk(referral_id),
                sk_attribute: SK,
                sk_prefix: Some(keys::AUDIT_PREFIX),
            },
            limit,
        )
        .await
    }

    /// [`AuditLog::by_crm_record`], with the adapter's error.
    pub async fn try_by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        self.newest(
            Listing {
                index: Some(GSI1),
                pk_attribute: GSI1_PK,
                pk: keys::crm_pk(crm),
                sk_attribute: GSI1_SK,
                sk_prefix: Some(keys::AUDIT_PREFIX),
            },
            limit,
        )
        .await
    }

    /// Every audit entry written at `since` or later (oldest first), read with a filtered
    /// `Scan` of the table: an operator's count (`cosell status`), not a sync's path — it reads
    /// the whole table.
    pub async fn try_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        let from = format!("{}{}", keys::AUDIT_PREFIX, keys::timestamp(since));
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("#entity = :audit AND #sk >= :from")
                .expression_attribute_names("#entity", ENTITY)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":audit", s("audit"))
                .expression_attribute_values(":from", s(from.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .on_table(&self.table)?;
            for item in page.items() {
                entries.push(self.decode(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        entries.sort_by_key(|entry| entry.at);
        Ok(entries)
    }

    /// [`AuditLog::needs_attention`], with the adapter's error: the `ATTENTION` items newest
    /// first, less those a later success has resolved (each checked with one `Query`, and
    /// deleted once found resolved, so the next listing skips it for free).
    pub async fn try_needs_attention(
        &self,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        let mut open = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", GSI2_PK)
                .expression_attribute_values(":pk", s(keys::ATTENTION))
                .scan_index_forward(false)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .on_table(&self.table)?;
            for item in page.items() {
                let entry = self.decode(item)?;
                let (Some(partition), Some(at)) = (get_s(item, PK), get_s(item, GSI2_SK)) else {
                    continue;
                };
                if self.resolved(partition, at).await? {
                    self.forget(partition, at).await;
                    continue;
                }
                open.push(entry);
                if open.len() >= limit {
                    return Ok(open);
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(open),
            }
        }
    }

    /// Whether the record of `partition` had a success after its failure at `at`: an entry of
    /// the referral's partition, or of the CRM record's index, strictly later (a success
    /// earlier in the failing run itself does not count). The index is eventually consistent,
    /// so a success of the last moments may not count yet.
    async fn resolved(&self, partition: &str, at: &str) -> Result<bool, AwsAdapterError> {
        let (index, pk, sk) = if partition.starts_with(keys::REFERRAL_PREFIX) {
            (None, PK, SK)
        } else if partition.starts_with(keys::CRM_PREFIX) {
            (Some(GSI1), GSI1_PK, GSI1_SK)
        } else {
            return Ok(false);
        };
        // Sort keys are `AUDIT#<at>#<uuid>` (hex): `~` sorts after all of one instant.
        let after = format!("{}{at}#~", keys::AUDIT_PREFIX);
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(index.map(str::to_owned))
            .set_consistent_read(index.is_none().then_some(true))
            .key_condition_expression("#pk = :pk AND #sk > :after")
            .filter_expression("#event.#kind IN (:k0, :k1, :k2, :k3)")
            .expression_attribute_names("#pk", pk)
            .expression_attribute_names("#sk", sk)
            .expression_attribute_names("#event", "event")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":pk", s(partition))
            .expression_attribute_values(":after", s(after))
            .select(Select::Count);
        for (i, kind) in SUCCESS_KINDS.iter().enumerate() {
            query = query.expression_attribute_values(format!(":k{i}"), s(*kind));
        }
        let mut start = None;
        loop {
            let page = query
                .clone()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .on_table(&self.table)?;
            if page.count() > 0 {
                return Ok(true);
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(false),
            }
        }
    }

    /// Delete a resolved `ATTENTION` item, unless a new failure replaced it meanwhile. Only
    /// saves later listings a check, so a failure (a listing user without `DeleteItem`) is
    /// ignored.
    async fn forget(&self, partition: &str, at: &str) {
        let _ = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(partition))
            .key(SK, s(keys::ATTENTION))
            .condition_expression("#at = :at")
            .expression_attribute_names("#at", GSI2_SK)
            .expression_attribute_values(":at", s(at))
            .send()
            .await;
    }

    /// Up to `limit` entries of one partition, newest first, across result pages.
    async fn newest(
        &self,
        listing: Listing<'_>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        let mut entries = Vec::new();
        let mut start = None;
        while entries.len() < limit {
            let page_limit = i32::try_from(limit - entries.len()).unwrap_or(i32::MAX);
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(listing.index.map(str::to_owned))
                .expression_attribute_names("#pk", listing.pk_attribute)
                .expression_attribute_values(":pk", s(listing.pk.clone()))
                .scan_index_forward(false)
                .limit(page_limit)
                .set_exclusive_start_key(start.take());
            query = match listing.sk_prefix {
                Some(prefix) => query
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_names("#sk", listing.sk_attribute)
                    .expression_attribute_values(":prefix", s(prefix)),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let page = query.send().await.on_table(&self.table)?;
            for item in page.items() {
                entries.push(self.decode(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }

    fn decode(&self, item: &Item) -> Result<AuditEntry, AwsAdapterError> {
        from_item(item).map_err(|reason| AwsAdapterError::CorruptItem {
            resource: AwsResource::Table(self.table.clone()),
            key: format!(
                "{} / {}",
                get_s(item, PK).unwrap_or("?"),
                get_s(item, SK).unwrap_or("?")
            ),
            what: "audit entry",
            reason,
        })
    }
}

/// The partition an entry belongs to: its referral, else its CRM record.
fn partition_of(entry: &AuditEntry) -> String {
    match (&entry.referral_id, &entry.crm) {
        (Some(referral), _) => keys::referral_pk(referral),
        (None, Some(crm)) => keys::crm_pk(crm),
        (None, None) => keys::UNATTRIBUTED.to_owned(),
    }
}

/// The `event.kind`s of the outcomes that end a record's "needs attention" (`Created`,
/// `Updated`, `WrittenBack`, `UnchangedSkipped`; pinned by a test against the serde names).
const SUCCESS_KINDS: [&str; 4] = ["created", "updated", "written_back", "unchanged_skipped"];

/// The item of `entry` (its attributes, keys, the CRM index keys and the TTL), as `PutItem`
/// or a transaction's `Put` stores it.
pub(crate) fn entry_put_item(entry: &AuditEntry) -> Result<Item, AwsAdapterError> {
    let attributes = to_item(entry).map_err(|source| AwsAdapterError::Serialize {
        what: "an audit entry",
        source,
    })?;
    Ok(entry_item(entry, partition_of(entry), attributes))
}

/// The entry's own item: its attributes, keys, the CRM index keys and the TTL.
fn entry_item(entry: &AuditEntry, partition: String, mut item: Item) -> Item {
    let sk = keys::audit_sk(entry.at);
    if let Some(crm) = &entry.crm {
        item.insert(GSI1_PK.into(), s(keys::crm_pk(crm)));
        item.insert(GSI1_SK.into(), s(sk.clone()));
    }
    item.insert(PK.into(), s(partition));
    item.insert(SK.into(), s(sk));
    item.insert(ENTITY.into(), s("audit"));
    let expires = entry.at + chrono::Duration::days(AUDIT_RETENTION_DAYS);
    item.insert(TTL_ATTRIBUTE.into(), n(expires.timestamp()));
    item
}

impl AuditLog for DynamoAuditLog {
    #[tracing::instrument(skip_all, fields(table = %self.table))]
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError> {
        self.try_append(entry)
            .await
            .map_err(|e| e.into_port_error(Service::AuditLog))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, referral_id = %referral_id))]
    async fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        self.try_by_referral(referral_id, limit)
            .await
            .map_err(|e| e.into_port_error(Service::AuditLog))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, crm = %crm))]
    async fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        self.try_by_crm_record(crm, limit)
            .await
            .map_err(|e| e.into_port_error(Service::AuditLog))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table))]
    async fn needs_attention(&self, limit: usize) -> Result<Vec<AuditEntry>, PortError> {
        self.try_needs_attention(limit)
            .await
            .map_err(|e| e.into_port_error(Service::AuditLog))
    }
}

#[cfg(test)]
mod tests {
    use cosell_domain::AuditEvent;

    use super::SUCCESS_KINDS;

    #[test]
    fn success_kinds_are_the_stored_kinds_of_the_success_events() {
        let kinds: Vec<String> = [
            AuditEvent::Created,
            AuditEvent::Updated,
            AuditEvent::WrittenBack,
            AuditEvent::UnchangedSkipped,
        ]
        .iter()
        .map(|event| {
            let value = serde_json::to_value(event).unwrap_or_default();
            value["kind"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
        assert_eq!(kinds, SUCCESS_KINDS);
    }
}
