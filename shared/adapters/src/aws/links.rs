//! [`LinkStore`] on the connector's DynamoDB table.
//!
//! Item: `pk = REFERRAL#<referral id>`, `sk = LINK`, `gsi1pk = CRM#<dataverse|salesforce>#<id>`,
//! `gsi1sk = LINK`, plus the [`Link`] fields as plain attributes (`referral_id`, `crm`,
//! `last_referral_etag`, `last_referral_updated`, `last_fingerprint_to_crm`,
//! `last_fingerprint_to_pc`, `updated_at`, `version`, `synced_fields` as a map, `last_referral` as
//! JSON text; absent when `None`). Putting a link again
//! replaces it, including its `gsi1` entry when the CRM record changed, but only if it is still
//! at the version the sync read (optimistic concurrency: two syncs of one record at once cannot
//! overwrite each other's link; the loser retries on a fresh read).
//!
//! A referral without a link may hold a claim in the link's place ([`LinkStore::claim`]):
//! `entity = create_lock`, `claim_until` (epoch ms), `expiration` (TTL). Reads treat it as no
//! link; the link put replaces it (it has no `version`).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{Put, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};
use cosell_domain::{Claim, CrmRecordId, Link, LinkStore, PortError, ReferralId, Service};

use crate::aws::item::{Item, from_item, get_s, n, s, to_item};
use crate::aws::table::{ENTITY, GSI1, GSI1_PK, GSI1_SK, PK, SK, TTL_ATTRIBUTE, keys};
use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// The attribute holding [`Link::version`] (its serde name).
const VERSION: &str = "version";
/// The `entity` of a claim ([`LinkStore::claim`]) in a link's place.
pub const CLAIM_ENTITY: &str = "create_lock";
/// Until when a claim is held (epoch ms, the holder's Lambda deadline).
const CLAIM_UNTIL: &str = "claim_until";
/// How long after its deadline a lapsed (or released) claim is kept before TTL removes it: the
/// marker of an earlier holder ([`Claim::Claimed`]'s `earlier`) must outlive every redelivery
/// of the referral's events, the longest being a replay from the dead-letter queue, which
/// keeps messages 14 days (`MessageRetentionPeriod` in infra/template.yaml). A claim that
/// became a link is replaced by it, so only unfinished creates leave one.
const CLAIM_TTL_SECS: i64 = 14 * 24 * 3600;

/// Whether `item` is a claim rather than a link.
fn is_claim(item: &Item) -> bool {
    get_s(item, ENTITY) == Some(CLAIM_ENTITY)
}

/// Epoch milliseconds, rounded up.
fn ceil_millis(at: DateTime<Utc>) -> i64 {
    let millis = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        millis
    } else {
        millis.saturating_add(1)
    }
}

/// The link store on the connector's table.
#[derive(Debug, Clone)]
pub struct DynamoLinkStore {
    client: Client,
    table: String,
}

impl DynamoLinkStore {
    /// A store on `table`, using a client built once per cold start.
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

    /// [`LinkStore::get_by_referral`], with the adapter's error (a strongly consistent read).
    pub async fn try_get_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<Link>, AwsAdapterError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::referral_pk(referral_id)))
            .key(SK, s(keys::LINK_SK))
            .consistent_read(true)
            .send()
            .await
            .on_table(&self.table)?;
        found
            .item()
            .filter(|item| !is_claim(item))
            .map(|item| self.decode(item))
            .transpose()
    }

    /// [`LinkStore::claim`], with the adapter's error: one conditional `PutItem` of a claim
    /// item in the link's place (`entity = create_lock`, `claim_until` in epoch ms, the TTL
    /// [`CLAIM_TTL_SECS`] after it), on `attribute_not_exists(pk) OR (entity = create_lock AND
    /// claim_until < :now_ms)`, with `ReturnValuesOnConditionCheckFailure = ALL_OLD`: a failed
    /// condition answers the link (or another run's live claim) without a read; with
    /// `ReturnValues = ALL_OLD`, a successful one answers the earlier holder's claim it replaced.
    pub async fn try_claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Claim, AwsAdapterError> {
        let until_ms = ceil_millis(until.max(now));
        let expiration = (until_ms / 1000).saturating_add(1 + CLAIM_TTL_SECS);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(keys::referral_pk(referral_id)))
            .item(SK, s(keys::LINK_SK))
            .item(ENTITY, s(CLAIM_ENTITY))
            .item(CLAIM_UNTIL, n(until_ms))
            .item(TTL_ATTRIBUTE, n(expiration))
            .condition_expression(
                "attribute_not_exists(#pk) OR (#entity = :claim AND #until < :now_ms)",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#entity", ENTITY)
            .expression_attribute_names("#until", CLAIM_UNTIL)
            .expression_attribute_values(":claim", s(CLAIM_ENTITY))
            .expression_attribute_values(":now_ms", n(ceil_millis(now)))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let found = match put {
            // The item it replaced, if any, was an earlier holder's lapsed or released claim.
            Ok(put) => {
                return Ok(Claim::Claimed {
                    earlier: put.attributes().is_some_and(|old| !old.is_empty()),
                });
            }
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    match failed.item() {
                        Some(item) if is_claim(item) => return Ok(Claim::Busy),
                        Some(item) => Some(self.decode(item)?),
                        // Emulators without ALL_OLD support: read the link.
                        None => self.try_get_by_referral(referral_id).await?,
                    }
                }
                _ => return Err(AwsAdapterError::from(err).on_table(&self.table)),
            },
        };
        // Not there (any more): a claim changed in between; this run does not hold it.
        Ok(found.map_or(Claim::Busy, |link| Claim::Linked(Box::new(link))))
    }

    /// [`LinkStore::release_claim`], with the adapter's error: one `UpdateItem` that makes the
    /// claim lapse now (`claim_until = 0`), on `entity = create_lock` (a link that replaced it
    /// stays). The item stays until its TTL, as the marker of an earlier holder.
    pub async fn try_release_claim(&self, referral_id: &ReferralId) -> Result<(), AwsAdapterError> {
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(keys::referral_pk(referral_id)))
            .key(SK, s(keys::LINK_SK))
            .update_expression("SET #until = :lapsed")
            .condition_expression("#entity = :claim")
            .expression_attribute_names("#entity", ENTITY)
            .expression_attribute_names("#until", CLAIM_UNTIL)
            .expression_attribute_values(":claim", s(CLAIM_ENTITY))
            .expression_attribute_values(":lapsed", n(0))
            .send()
            .await;
        match released {
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(UpdateItemError::is_conditional_check_failed_exception) =>
            {
                Ok(())
            }
            other => other.map(drop).on_table(&self.table),
        }
    }

    /// [`LinkStore::get_by_crm`], with the adapter's error (`gsi1`, eventually consistent).
    /// Should two referrals claim the record, the most recently updated link wins.
    pub async fn try_get_by_crm(&self, crm: &CrmRecordId) -> Result<Option<Link>, AwsAdapterError> {
        let found = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .key_condition_expression("#pk = :pk AND #sk = :sk")
            .expression_attribute_names("#pk", GSI1_PK)
            .expression_attribute_names("#sk", GSI1_SK)
            .expression_attribute_values(":pk", s(keys::crm_pk(crm)))
            .expression_attribute_values(":sk", s(keys::LINK_SK))
            .send()
            .await
            .on_table(&self.table)?;
        let links = found
            .items()
            .iter()
            .map(|item| self.decode(item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(links.into_iter().max_by_key(|link| link.updated_at))
    }

    /// [`LinkStore::put`], with the adapter's error: one conditional `PutItem` storing
    /// `version + 1` if the stored item is absent, has no `version` (stored before versions
    /// existed) or is still at `link.version` (else a `ConditionalCheckFailedException`,
    /// [`PortError::PreconditionFailed`](cosell_domain::PortError) to the sync).
    pub async fn try_put(&self, link: &Link) -> Result<(), AwsAdapterError> {
        let put = link_put(&self.table, link)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(put.item().clone()))
            .set_condition_expression(Some(
                put.condition_expression().unwrap_or_default().to_owned(),
            ))
            .set_expression_attribute_names(put.expression_attribute_names().cloned())
            .set_expression_attribute_values(put.expression_attribute_values().cloned())
            .send()
            .await
            .on_table(&self.table)?;
        Ok(())
    }

    fn decode(&self, item: &Item) -> Result<Link, AwsAdapterError> {
        from_item(item).map_err(|reason| AwsAdapterError::CorruptItem {
            resource: AwsResource::Table(self.table.clone()),
            key: format!(
                "{} / {}",
                get_s(item, PK).unwrap_or("?"),
                get_s(item, SK).unwrap_or("?")
            ),
            what: "link",
            reason,
        })
    }
}

/// The conditional put of `link` as version `link.version + 1` (see
/// [`DynamoLinkStore::try_put`]), for `PutItem` or a transaction.
pub(crate) fn link_put(table: &str, link: &Link) -> Result<Put, AwsAdapterError> {
    let stored = Link {
        version: link.version + 1,
        ..link.clone()
    };
    let mut item = to_item(&stored).map_err(|source| AwsAdapterError::Serialize {
        what: "a link",
        source,
    })?;
    item.insert(PK.into(), s(keys::referral_pk(&link.referral_id)));
    item.insert(SK.into(), s(keys::LINK_SK));
    item.insert(GSI1_PK.into(), s(keys::crm_pk(&link.crm)));
    item.insert(GSI1_SK.into(), s(keys::LINK_SK));
    item.insert(ENTITY.into(), s("link"));
    Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(
            "attribute_not_exists(#pk) OR attribute_not_exists(#version) OR #version = :read",
        )
        .expression_attribute_names("#pk", PK)
        .expression_attribute_names("#version", VERSION)
        .expression_attribute_values(":read", n(link.version))
        .build()
        .map_err(|error| AwsAdapterError::Misconfigured {
            resource: AwsResource::Table(table.to_owned()),
            problem: format!("a link put could not be built: {error}"),
            fix: "report this as a bug".into(),
        })
}

impl LinkStore for DynamoLinkStore {
    #[tracing::instrument(skip_all, fields(table = %self.table, referral_id = %referral_id))]
    async fn get_by_referral(&self, referral_id: &ReferralId) -> Result<Option<Link>, PortError> {
        self.try_get_by_referral(referral_id)
            .await
            .map_err(|e| e.into_port_error(Service::LinkStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, crm = %crm))]
    async fn get_by_crm(&self, crm: &CrmRecordId) -> Result<Option<Link>, PortError> {
        self.try_get_by_crm(crm)
            .await
            .map_err(|e| e.into_port_error(Service::LinkStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, referral_id = %link.referral_id, crm = %link.crm))]
    async fn put(&self, link: &Link) -> Result<(), PortError> {
        self.try_put(link)
            .await
            .map_err(|e| e.into_port_error(Service::LinkStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, referral_id = %referral_id))]
    async fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        self.try_claim(referral_id, now, until)
            .await
            .map_err(|e| e.into_port_error(Service::LinkStore))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table, referral_id = %referral_id))]
    async fn release_claim(&self, referral_id: &ReferralId) -> Result<(), PortError> {
        self.try_release_claim(referral_id)
            .await
            .map_err(|e| e.into_port_error(Service::LinkStore))
    }
}
