//! [`LinkStore`] on the connector's DynamoDB table.
//!
//! Item: `pk = REFERRAL#<referral id>`, `sk = LINK`, `gsi1pk = CRM#<dataverse|salesforce>#<id>`,
//! `gsi1sk = LINK`, plus the [`Link`] fields as plain attributes (`referral_id`, `crm`,
//! `last_referral_etag`, `last_referral_updated`, `last_fingerprint_to_crm`,
//! `last_fingerprint_to_pc`, `updated_at`, `version`; absent when `None`). Putting a link again
//! replaces it, including its `gsi1` entry when the CRM record changed, but only if it is still
//! at the version the sync read (optimistic concurrency: two syncs of one record at once cannot
//! overwrite each other's link; the loser retries on a fresh read).

use aws_sdk_dynamodb::Client;
use cosell_domain::{CrmRecordId, Link, LinkStore, PortError, ReferralId, Service};

use crate::aws::item::{Item, from_item, get_s, n, s, to_item};
use crate::aws::table::{ENTITY, GSI1, GSI1_PK, GSI1_SK, PK, SK, keys};
use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// The attribute holding [`Link::version`] (its serde name).
const VERSION: &str = "version";

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
        found.item().map(|item| self.decode(item)).transpose()
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
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(#pk) OR attribute_not_exists(#version) OR #version = :read",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":read", n(link.version))
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
}
