//! [`CheckpointStore`] on the connector's DynamoDB table: the reconciliation checkpoint.
//!
//! Item: `pk = RECONCILE`, `sk = CHECKPOINT`, `entity = checkpoint`, `checkpoint` (S, the
//! [`Checkpoint`] as JSON: per side `since` and `after` (the last record handled); `last_run`,
//! `last_enqueued`) and `updated_at`. One writer at a time (the scheduled function; a backfill
//! never writes it); read strongly consistent.

use aws_sdk_dynamodb::Client;
use cosell_domain::ports::{Checkpoint, CheckpointStore};
use cosell_domain::{PortError, Service};

use crate::aws::item::{get_s, s};
use crate::aws::table::{ENTITY, PK, SK, keys};
use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// The JSON attribute.
const CHECKPOINT: &str = "checkpoint";

fn service() -> Service {
    Service::Other("the reconciliation checkpoint".to_owned())
}

/// The reconciliation checkpoint on the connector's table.
#[derive(Debug, Clone)]
pub struct DynamoCheckpointStore {
    client: Client,
    table: String,
}

impl DynamoCheckpointStore {
    /// A store on `table`, using a client built once per cold start.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// [`CheckpointStore::load`], with the adapter's error.
    pub async fn try_load(&self) -> Result<Option<Checkpoint>, AwsAdapterError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::CHECKPOINT_PK))
            .key(SK, s(keys::CHECKPOINT_SK))
            .consistent_read(true)
            .send()
            .await
            .on_table(&self.table)?;
        let Some(item) = found.item() else {
            return Ok(None);
        };
        let corrupt = |reason: String| AwsAdapterError::CorruptItem {
            resource: AwsResource::Table(self.table.clone()),
            key: format!("{} / {}", keys::CHECKPOINT_PK, keys::CHECKPOINT_SK),
            what: "reconciliation checkpoint",
            reason,
        };
        let text = get_s(item, CHECKPOINT)
            .ok_or_else(|| corrupt(format!("the {CHECKPOINT} attribute is missing")))?;
        serde_json::from_str(text)
            .map(Some)
            .map_err(|error| corrupt(error.to_string()))
    }

    /// [`CheckpointStore::save`], with the adapter's error.
    pub async fn try_save(&self, checkpoint: &Checkpoint) -> Result<(), AwsAdapterError> {
        let text =
            serde_json::to_string(checkpoint).map_err(|source| AwsAdapterError::Serialize {
                what: "the reconciliation checkpoint",
                source,
            })?;
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(keys::CHECKPOINT_PK))
            .item(SK, s(keys::CHECKPOINT_SK))
            .item(ENTITY, s("checkpoint"))
            .item(CHECKPOINT, s(text));
        if let Some(at) = checkpoint.last_run {
            request = request.item("updated_at", s(keys::timestamp(at)));
        }
        request.send().await.on_table(&self.table)?;
        Ok(())
    }
}

impl CheckpointStore for DynamoCheckpointStore {
    #[tracing::instrument(skip_all, fields(table = %self.table))]
    async fn load(&self) -> Result<Option<Checkpoint>, PortError> {
        self.try_load()
            .await
            .map_err(|e| e.into_port_error(service()))
    }

    #[tracing::instrument(skip_all, fields(table = %self.table))]
    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), PortError> {
        self.try_save(checkpoint)
            .await
            .map_err(|e| e.into_port_error(service()))
    }
}
