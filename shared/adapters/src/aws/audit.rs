//! [`AuditLog`] on the connector's DynamoDB table.
//!
//! Entries: `pk = REFERRAL#<id>` (or `CRM#<kind>#<id>` when no referral is known, or
//! `UNATTRIBUTED`), `sk = AUDIT#<RFC 3339 UTC with ms>#<uuid>`, and `gsi1pk = CRM#<kind>#<id>`,
//! `gsi1sk = sk` when the CRM record is known; the [`AuditEntry`] fields as plain attributes
//! (`event` is a map with its `kind`). Lists are newest first (`ScanIndexForward = false`).
//!
//! "Needs attention" means the record's latest outcome is a failure: appending a `Failed` entry
//! also puts an `ATTENTION` item in the record's partition (`sk = ATTENTION`,
//! `gsi2pk = ATTENTION`, `gsi2sk = <timestamp>`) carrying the entry; appending a later success
//! (`Created`, `Updated`, `WrittenBack`, `UnchangedSkipped`) deletes the `ATTENTION` items of
//! the referral and of the CRM record it names. Both writes are conditional on the timestamp
//! (`gsi2sk <= :at`), so an older entry arriving late neither hides nor replaces a newer
//! failure. [`AuditLog::needs_attention`] queries the sparse `gsi2`.
//!
//! Entries expire [`AUDIT_RETENTION_DAYS`] after they happened (the table's TTL attribute);
//! `ATTENTION` items do not: an open problem stays listed until a success clears it.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use cosell_domain::{
    AuditEntry, AuditEvent, AuditLog, CrmRecordId, PortError, ReferralId, Service,
};

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

    /// [`AuditLog::append`], with the adapter's error.
    pub async fn try_append(&self, entry: &AuditEntry) -> Result<(), AwsAdapterError> {
        let partition = partition_of(entry);
        let at = keys::timestamp(entry.at);
        let attributes = to_item(entry).map_err(|source| AwsAdapterError::Serialize {
            what: "an audit entry",
            source,
        })?;

        let mut item = attributes.clone();
        let sk = keys::audit_sk(entry.at);
        if let Some(crm) = &entry.crm {
            item.insert(GSI1_PK.into(), s(keys::crm_pk(crm)));
            item.insert(GSI1_SK.into(), s(sk.clone()));
        }
        item.insert(PK.into(), s(partition.clone()));
        item.insert(SK.into(), s(sk));
        item.insert(ENTITY.into(), s("audit"));
        let expires = entry.at + chrono::Duration::days(AUDIT_RETENTION_DAYS);
        item.insert(TTL_ATTRIBUTE.into(), n(expires.timestamp()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .on_table(&self.table)?;

        if entry.needs_attention() {
            self.flag(partition, &at, attributes).await
        } else if is_success(&entry.event) {
            let mut partitions = Vec::with_capacity(2);
            partitions.extend(entry.referral_id.as_ref().map(keys::referral_pk));
            partitions.extend(entry.crm.as_ref().map(keys::crm_pk));
            for partition in partitions {
                self.clear(partition, &at).await?;
            }
            Ok(())
        } else {
            Ok(())
        }
    }

    /// Put the record's `ATTENTION` item, unless a newer failure is already there.
    async fn flag(
        &self,
        partition: String,
        at: &str,
        mut item: Item,
    ) -> Result<(), AwsAdapterError> {
        item.insert(PK.into(), s(partition));
        item.insert(SK.into(), s(keys::ATTENTION));
        item.insert(GSI2_PK.into(), s(keys::ATTENTION));
        item.insert(GSI2_SK.into(), s(at));
        item.insert(ENTITY.into(), s("attention"));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #at <= :at")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#at", GSI2_SK)
            .expression_attribute_values(":at", s(at))
            .send()
            .await;
        match put {
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            other => other.map(drop).on_table(&self.table),
        }
    }

    /// Delete the record's `ATTENTION` item, unless it holds a newer failure.
    async fn clear(&self, partition: String, at: &str) -> Result<(), AwsAdapterError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(partition))
            .key(SK, s(keys::ATTENTION))
            .condition_expression("#at <= :at")
            .expression_attribute_names("#at", GSI2_SK)
            .expression_attribute_values(":at", s(at))
            .send()
            .await;
        match delete {
            // Nothing to clear, or a newer failure.
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(DeleteItemError::ConditionalCheckFailedException(_))
                ) =>
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

    /// [`AuditLog::needs_attention`], with the adapter's error.
    pub async fn try_needs_attention(
        &self,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AwsAdapterError> {
        self.newest(
            Listing {
                index: Some(GSI2),
                pk_attribute: GSI2_PK,
                pk: keys::ATTENTION.into(),
                sk_attribute: GSI2_SK,
                sk_prefix: None,
            },
            limit,
        )
        .await
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

/// An outcome that ends a record's "needs attention".
fn is_success(event: &AuditEvent) -> bool {
    matches!(
        event,
        AuditEvent::Created
            | AuditEvent::Updated
            | AuditEvent::WrittenBack
            | AuditEvent::UnchangedSkipped
    )
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
