//! The connector's single DynamoDB table: key schema, key builders and [`provision_table`].
//!
//! # Key schema (the SAM template copies this)
//!
//! | | attribute | type | |
//! |---|---|---|---|
//! | table partition key | `pk` | S | |
//! | table sort key | `sk` | S | |
//! | GSI `gsi1` partition / sort key | `gsi1pk` / `gsi1sk` | S / S | lookups by CRM record; projection ALL |
//! | GSI `gsi2` partition / sort key | `gsi2pk` / `gsi2sk` | S / S | sparse "needs attention" index; projection ALL |
//! | TTL attribute | `expiration` | N | epoch seconds |
//!
//! Billing mode `PAY_PER_REQUEST`. In SAM:
//!
//! ```yaml
//! Table:
//!   Type: AWS::DynamoDB::Table
//!   Properties:
//!     BillingMode: PAY_PER_REQUEST
//!     AttributeDefinitions:
//!       - { AttributeName: pk, AttributeType: S }
//!       - { AttributeName: sk, AttributeType: S }
//!       - { AttributeName: gsi1pk, AttributeType: S }
//!       - { AttributeName: gsi1sk, AttributeType: S }
//!       - { AttributeName: gsi2pk, AttributeType: S }
//!       - { AttributeName: gsi2sk, AttributeType: S }
//!     KeySchema:
//!       - { AttributeName: pk, KeyType: HASH }
//!       - { AttributeName: sk, KeyType: RANGE }
//!     GlobalSecondaryIndexes:
//!       - IndexName: gsi1
//!         KeySchema: [{ AttributeName: gsi1pk, KeyType: HASH }, { AttributeName: gsi1sk, KeyType: RANGE }]
//!         Projection: { ProjectionType: ALL }
//!       - IndexName: gsi2
//!         KeySchema: [{ AttributeName: gsi2pk, KeyType: HASH }, { AttributeName: gsi2sk, KeyType: RANGE }]
//!         Projection: { ProjectionType: ALL }
//!     TimeToLiveSpecification: { AttributeName: expiration, Enabled: true }
//! ```
//!
//! # Items
//!
//! Every item also carries `entity` (`idempotency` | `link` | `create_lock` | `audit` |
//! `attention` | `budget` | `checkpoint`).
//!
//! A delivery's writes end in one `TransactWriteItems`: its idempotency record completed (or
//! deleted), its link put and its audit entries put (docs/aws.md#requests-per-event).
//!
//! | item | `pk` | `sk` | `gsi1pk` / `gsi1sk` | `gsi2pk` / `gsi2sk` | other attributes |
//! |---|---|---|---|---|---|
//! | idempotency record | `IDEMPOTENCY#<key>` (\*) | `IDEMPOTENCY` | | | `idempotency_key`, `status` (`INPROGRESS`\|`COMPLETED`), `expiration` (epoch s, TTL), `in_progress_expiration` (epoch ms, the Lambda deadline), `response` (JSON text), `payload_hash`? |
//! | link | `REFERRAL#<referral id>` | `LINK` | `CRM#<dataverse\|salesforce>#<id>` / `LINK` | | the `Link` fields: `referral_id`, `crm`, `last_referral_etag`, `last_referral_updated`, `last_fingerprint_to_crm`, `last_fingerprint_to_pc`, `last_stage_to_pc`, `microsoft_invited`, `updated_at`, `version` (puts are conditional on the version read) |
//! | claim of a referral without a link | `REFERRAL#<referral id>` | `LINK` | | | `entity = create_lock`, `claim_until` (epoch ms, the claiming run's deadline), `expiration` (TTL); replaced by the link, read as no link |
//! | audit entry | `REFERRAL#<id>`, else `CRM#<kind>#<id>`, else `UNATTRIBUTED` | `AUDIT#<RFC 3339 UTC, ms>#<uuid>` | `CRM#<kind>#<id>` / same as `sk` (when the CRM record is known) | | the `AuditEntry` fields: `at`, `direction`, `referral_id`, `crm`, `correlation_id`, `event` (map with `kind`) |
//! | needs attention | the failed record's partition (as for audit entries) | `ATTENTION` | | `ATTENTION` / `<RFC 3339 UTC, ms>` | the failing `AuditEntry` fields |
//! | daily API counter | `BUDGET#<YYYY-MM-DD>` (UTC day) | `BUDGET` | | | `calls` (N, `ADD`ed atomically), `calls_partner_center` / `calls_dataverse` / `calls_salesforce` (N, in the same `ADD`), `expiration` (a week after the day) |
//! | reconciliation checkpoint | `RECONCILE` | `CHECKPOINT` | | | `checkpoint` (the `Checkpoint` as JSON), `updated_at` |
//!
//! (\*) keys longer than DynamoDB's 2048-byte partition key limit are stored as
//! `IDEMPOTENCY#sha256:<hex>`; `idempotency_key` keeps the full key.
//!
//! Times in sort keys are `YYYY-MM-DDTHH:MM:SS.mmmZ`, so string order is time order.
//! DynamoDB deletes expired items lazily (moto never does): readers treat
//! `expiration < now` as absent.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};
use chrono::{DateTime, SecondsFormat, Utc};
use cosell_domain::{CrmRecordId, IdempotencyKey, ReferralId};
use sha2::{Digest, Sha256};

use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// Table partition key.
pub const PK: &str = "pk";
/// Table sort key.
pub const SK: &str = "sk";
/// The index for lookups by CRM record.
pub const GSI1: &str = "gsi1";
/// `gsi1` partition key.
pub const GSI1_PK: &str = "gsi1pk";
/// `gsi1` sort key.
pub const GSI1_SK: &str = "gsi1sk";
/// The sparse "needs attention" index.
pub const GSI2: &str = "gsi2";
/// `gsi2` partition key.
pub const GSI2_PK: &str = "gsi2pk";
/// `gsi2` sort key.
pub const GSI2_SK: &str = "gsi2sk";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expiration";
/// The item type attribute.
pub const ENTITY: &str = "entity";

/// DynamoDB's limit for a partition key value, in bytes.
const MAX_PK_BYTES: usize = 2048;

/// Key builders for the item layout in the module docs.
pub mod keys {
    use super::*;

    /// Sort key of an idempotency record.
    pub const IDEMPOTENCY_SK: &str = "IDEMPOTENCY";
    /// Sort key of a link.
    pub const LINK_SK: &str = "LINK";
    /// Sort key (and `gsi2pk`) of a "needs attention" item.
    pub const ATTENTION: &str = "ATTENTION";
    /// Partition-key prefix of a referral's items.
    pub const REFERRAL_PREFIX: &str = "REFERRAL#";
    /// Partition-key prefix of a CRM record's items.
    pub const CRM_PREFIX: &str = "CRM#";
    /// Sort-key prefix of audit entries.
    pub const AUDIT_PREFIX: &str = "AUDIT#";
    /// Partition of audit entries that name neither a referral nor a CRM record.
    pub const UNATTRIBUTED: &str = "UNATTRIBUTED";
    /// Sort key of a daily API counter.
    pub const BUDGET_SK: &str = "BUDGET";
    /// Partition key of the reconciliation checkpoint.
    pub const CHECKPOINT_PK: &str = "RECONCILE";
    /// Sort key of the reconciliation checkpoint.
    pub const CHECKPOINT_SK: &str = "CHECKPOINT";

    /// `BUDGET#<YYYY-MM-DD>` (the UTC day).
    pub fn budget_pk(day: chrono::NaiveDate) -> String {
        format!("BUDGET#{}", day.format("%Y-%m-%d"))
    }

    /// `IDEMPOTENCY#<key>`, or `IDEMPOTENCY#sha256:<hex>` for keys too long for a partition key.
    pub fn idempotency_pk(key: &IdempotencyKey) -> String {
        let pk = format!("IDEMPOTENCY#{key}");
        if pk.len() <= MAX_PK_BYTES {
            pk
        } else {
            format!(
                "IDEMPOTENCY#sha256:{}",
                hex::encode(Sha256::digest(key.as_str().as_bytes()))
            )
        }
    }

    /// `REFERRAL#<referral id>`.
    pub fn referral_pk(id: &ReferralId) -> String {
        format!("{REFERRAL_PREFIX}{id}")
    }

    /// `CRM#<dataverse|salesforce>#<id>`.
    pub fn crm_pk(crm: &CrmRecordId) -> String {
        format!("{CRM_PREFIX}{}#{}", crm.kind(), crm.native())
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`: sorts as time.
    pub fn timestamp(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// `AUDIT#<timestamp>#<uuid>`.
    pub fn audit_sk(at: DateTime<Utc>) -> String {
        format!(
            "{AUDIT_PREFIX}{}#{}",
            timestamp(at),
            uuid::Uuid::new_v4().simple()
        )
    }
}

/// How long [`provision_table`] waits for a new table to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Create the table with the key schema above if it does not exist, and enable TTL on
/// `expiration`. Idempotent. For local runs, the demo and tests (deployed stacks get the
/// table from the SAM template). An existing table with another key schema is an error.
pub async fn provision_table(client: &Client, name: &str) -> Result<(), AwsAdapterError> {
    let resource = AwsResource::Table(name.to_owned());
    match client.describe_table().table_name(name).send().await {
        Ok(described) => {
            if let Some(table) = described.table() {
                check_schema(table, &resource)?;
            }
        }
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            create_table(client, name).await?;
        }
        Err(err) => return Err(AwsAdapterError::from(err).on_table(name)),
    }
    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(TABLE_ACTIVE_TIMEOUT)
        .await
        .map_err(|err| AwsAdapterError::Misconfigured {
            resource: resource.clone(),
            problem: format!(
                "did not become ACTIVE within {} s: {}",
                TABLE_ACTIVE_TIMEOUT.as_secs(),
                aws_sdk_dynamodb::error::DisplayErrorContext(&err)
            ),
            fix: "check the table in the DynamoDB console and run the provisioning again".into(),
        })?;
    enable_ttl(client, name).await
}

async fn create_table(client: &Client, name: &str) -> Result<(), AwsAdapterError> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
    };
    let index = |index: &str, pk: &str, sk: &str| -> Result<GlobalSecondaryIndex, _> {
        GlobalSecondaryIndex::builder()
            .index_name(index)
            .key_schema(key(pk, KeyType::Hash)?)
            .key_schema(key(sk, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
    };
    let request = (|| {
        Ok::<_, aws_sdk_dynamodb::error::BuildError>(
            client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute(PK)?)
                .attribute_definitions(attribute(SK)?)
                .attribute_definitions(attribute(GSI1_PK)?)
                .attribute_definitions(attribute(GSI1_SK)?)
                .attribute_definitions(attribute(GSI2_PK)?)
                .attribute_definitions(attribute(GSI2_SK)?)
                .key_schema(key(PK, KeyType::Hash)?)
                .key_schema(key(SK, KeyType::Range)?)
                .global_secondary_indexes(index(GSI1, GSI1_PK, GSI1_SK)?)
                .global_secondary_indexes(index(GSI2, GSI2_PK, GSI2_SK)?),
        )
    })()
    .map_err(|err| AwsAdapterError::Misconfigured {
        resource: AwsResource::Table(name.to_owned()),
        problem: format!("could not describe its key schema: {err}"),
        fix: "report this as a bug".into(),
    })?;
    match request.send().await {
        Ok(_) => Ok(()),
        // Someone else created it meanwhile.
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(err) => Err(AwsAdapterError::from(err).on_table(name)),
    }
}

fn check_schema(
    table: &aws_sdk_dynamodb::types::TableDescription,
    resource: &AwsResource,
) -> Result<(), AwsAdapterError> {
    let keys_of = |schema: &[KeySchemaElement]| {
        let find = |wanted: KeyType| {
            schema
                .iter()
                .find(|k| k.key_type() == &wanted)
                .map(|k| k.attribute_name().to_owned())
        };
        (find(KeyType::Hash), find(KeyType::Range))
    };
    let mut problems = Vec::new();
    if keys_of(table.key_schema()) != (Some(PK.into()), Some(SK.into())) {
        problems.push(format!("its key schema is not {PK} (HASH) + {SK} (RANGE)"));
    }
    for (index, pk, sk) in [(GSI1, GSI1_PK, GSI1_SK), (GSI2, GSI2_PK, GSI2_SK)] {
        let found = table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(index));
        match found {
            None => problems.push(format!("it has no global secondary index {index}")),
            Some(gsi) if keys_of(gsi.key_schema()) != (Some(pk.into()), Some(sk.into())) => {
                problems.push(format!("its index {index} is not keyed {pk} + {sk}"));
            }
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AwsAdapterError::Misconfigured {
            resource: resource.clone(),
            problem: problems.join("; "),
            fix: "use another table name, or recreate the table from the SAM template".into(),
        })
    }
}

async fn enable_ttl(client: &Client, name: &str) -> Result<(), AwsAdapterError> {
    let current = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .on_table(name)?;
    let description = current.time_to_live_description();
    let status = description.and_then(|d| d.time_to_live_status());
    let attribute = description.and_then(|d| d.attribute_name());
    match status {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            if attribute == Some(TTL_ATTRIBUTE) =>
        {
            return Ok(());
        }
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
            return Err(AwsAdapterError::Misconfigured {
                resource: AwsResource::Table(name.to_owned()),
                problem: format!(
                    "its TTL attribute is {}, not {TTL_ATTRIBUTE}",
                    attribute.unwrap_or("unknown")
                ),
                fix: format!("set the table's TTL attribute to {TTL_ATTRIBUTE}"),
            });
        }
        _ => {}
    }
    let specification = TimeToLiveSpecification::builder()
        .attribute_name(TTL_ATTRIBUTE)
        .enabled(true)
        .build()
        .map_err(|err| AwsAdapterError::Misconfigured {
            resource: AwsResource::Table(name.to_owned()),
            problem: format!("could not describe its TTL: {err}"),
            fix: "report this as a bug".into(),
        })?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(specification)
        .send()
        .await
        .on_table(name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn keys_follow_the_documented_layout() {
        let referral = ReferralId::try_from("4111fffc-f9ee-4d53-bba6-569135228642").unwrap();
        assert_eq!(
            keys::referral_pk(&referral),
            "REFERRAL#4111fffc-f9ee-4d53-bba6-569135228642"
        );
        let crm = CrmRecordId::try_from("salesforce:006000000000001AAA").unwrap();
        assert_eq!(keys::crm_pk(&crm), "CRM#salesforce#006000000000001AAA");
        let at = Utc.timestamp_opt(1_800_000_000, 5_000_000).unwrap();
        assert_eq!(keys::timestamp(at), "2027-01-15T08:00:00.005Z");
        let sk = keys::audit_sk(at);
        assert!(sk.starts_with("AUDIT#2027-01-15T08:00:00.005Z#"), "{sk}");
        assert_eq!(sk.len(), "AUDIT#2027-01-15T08:00:00.005Z#".len() + 32);
    }

    #[test]
    fn overlong_idempotency_keys_are_hashed_into_the_partition_key() {
        let short = IdempotencyKey::new("pc", "event-1").unwrap();
        assert_eq!(keys::idempotency_pk(&short), "IDEMPOTENCY#pc:event-1");
        // 1000 characters of 3 bytes each: within the domain's limit, over DynamoDB's.
        let long = IdempotencyKey::new("pc", &"€".repeat(1000)).unwrap();
        let pk = keys::idempotency_pk(&long);
        assert!(
            pk.starts_with("IDEMPOTENCY#sha256:") && pk.len() == 19 + 64,
            "{pk}"
        );
    }
}
