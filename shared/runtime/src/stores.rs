//! The stores a deployed function runs with: DynamoDB and SQS (`STORE=dynamodb`), or memory
//! for local runs (`STORE=memory`). One enum per port, so a function has one port type set
//! ([`Deployed`]) whichever store the configuration names, and `main` needs no `match`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cosell_adapters::aws::{
    AwsClients, DynamoAuditLog, DynamoCheckpointStore, DynamoIdempotencyStore, DynamoLinkStore,
    SqsRetryQueue,
};
use cosell_adapters::http::HttpPartnerCenter;
use cosell_adapters::http::crm::AnyCrm;
use cosell_domain::in_memory::{
    InMemoryAuditLog, InMemoryCheckpointStore, InMemoryIdempotencyStore, InMemoryLinkStore,
    InMemoryRetryQueue,
};
use cosell_domain::ports::{
    AcquireOutcome, AuditEntry, AuditLog, Checkpoint, CheckpointStore, Claim, Commit,
    IdempotencyKey, IdempotencyStore, Link, LinkStore, PortError, Ports, RetryJob, RetryQueue,
};
use cosell_domain::{CrmRecordId, ReferralId};
use serde_json::Value;

use crate::config::StoreConfig;

/// The ports of a deployed function: the HTTP clients and the configured stores.
#[derive(Debug)]
pub struct Deployed;

impl Ports for Deployed {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type Idempotency = AnyIdempotencyStore;
    type RetryQueue = AnyRetryQueue;
    type Audit = AnyAuditLog;
    type Links = AnyLinkStore;
}

/// The ports of a local run or a test: the HTTP clients and the in-memory stores, typed so a
/// test can read what they hold.
#[derive(Debug)]
pub struct Local;

impl Ports for Local {
    type PartnerCenter = HttpPartnerCenter;
    type Crm = AnyCrm;
    type Idempotency = InMemoryIdempotencyStore;
    type RetryQueue = InMemoryRetryQueue;
    type Audit = InMemoryAuditLog;
    type Links = InMemoryLinkStore;
}

/// The idempotency store, retry queue, audit log and link store of port set `X`.
pub struct Stores<X: Ports> {
    /// The idempotency table.
    pub idempotency: X::Idempotency,
    /// The retry queue.
    pub retry_queue: X::RetryQueue,
    /// The audit log.
    pub audit: X::Audit,
    /// The referral ⇄ CRM link table.
    pub links: X::Links,
}

impl<X: Ports> std::fmt::Debug for Stores<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores<Deployed> {
    /// The stores `config` names; the AWS clients are built only for DynamoDB / SQS.
    pub async fn from_config(config: &StoreConfig, idempotency_ttl: Duration) -> Self {
        match config {
            StoreConfig::DynamoDb {
                table_name,
                retry_queue_url,
            } => Self::dynamo(&AwsClients::from_env().await, table_name, retry_queue_url),
            StoreConfig::Memory => Stores::<Local>::in_memory(idempotency_ttl).into(),
        }
    }

    /// The DynamoDB table and SQS queue (`STORE=dynamodb`).
    pub fn dynamo(aws: &AwsClients, table_name: &str, retry_queue_url: &str) -> Self {
        Self {
            idempotency: AnyIdempotencyStore::DynamoDb(DynamoIdempotencyStore::new(
                aws.dynamodb.clone(),
                table_name,
            )),
            retry_queue: AnyRetryQueue::Sqs(SqsRetryQueue::new(aws.sqs.clone(), retry_queue_url)),
            audit: AnyAuditLog::DynamoDb(DynamoAuditLog::new(aws.dynamodb.clone(), table_name)),
            links: AnyLinkStore::DynamoDb(DynamoLinkStore::new(aws.dynamodb.clone(), table_name)),
        }
    }
}

impl Stores<Local> {
    /// In-memory stores remembering a processed delivery for `idempotency_ttl` (`STORE=memory`,
    /// and the handler tests).
    pub fn in_memory(idempotency_ttl: Duration) -> Self {
        Self {
            idempotency: InMemoryIdempotencyStore::new(idempotency_ttl),
            retry_queue: InMemoryRetryQueue::new(),
            audit: InMemoryAuditLog::new(),
            links: InMemoryLinkStore::new(),
        }
    }
}

impl From<Stores<Local>> for Stores<Deployed> {
    fn from(stores: Stores<Local>) -> Self {
        Self {
            idempotency: AnyIdempotencyStore::Memory(stores.idempotency),
            retry_queue: AnyRetryQueue::Memory(stores.retry_queue),
            audit: AnyAuditLog::Memory(stores.audit),
            links: AnyLinkStore::Memory(stores.links),
        }
    }
}

/// The idempotency store `STORE` names.
#[derive(Debug)]
pub enum AnyIdempotencyStore {
    /// The DynamoDB table.
    DynamoDb(DynamoIdempotencyStore),
    /// In memory, per instance.
    Memory(InMemoryIdempotencyStore),
}

/// The retry queue `STORE` names.
#[derive(Debug)]
pub enum AnyRetryQueue {
    /// The SQS queue.
    Sqs(SqsRetryQueue),
    /// In memory, per instance.
    Memory(InMemoryRetryQueue),
}

/// The audit log `STORE` names.
#[derive(Debug)]
pub enum AnyAuditLog {
    /// The DynamoDB table.
    DynamoDb(DynamoAuditLog),
    /// In memory, per instance.
    Memory(InMemoryAuditLog),
}

/// The link store `STORE` names.
#[derive(Debug)]
pub enum AnyLinkStore {
    /// The DynamoDB table.
    DynamoDb(DynamoLinkStore),
    /// In memory, per instance.
    Memory(InMemoryLinkStore),
}

/// The reconciliation checkpoint `STORE` names.
#[derive(Debug)]
pub enum AnyCheckpointStore {
    /// The DynamoDB table.
    DynamoDb(DynamoCheckpointStore),
    /// In memory, per instance.
    Memory(InMemoryCheckpointStore),
}

/// Both variants of an `Any*` store run the same call.
macro_rules! either {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Self::DynamoDb($store) => $call.await,
            Self::Memory($store) => $call.await,
        }
    };
}

impl IdempotencyStore for AnyIdempotencyStore {
    async fn acquire(
        &self,
        key: &IdempotencyKey,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
    ) -> Result<AcquireOutcome, PortError> {
        either!(self, store => store.acquire(key, now, in_progress_until))
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        response: &Value,
        expires_at: DateTime<Utc>,
    ) -> Result<(), PortError> {
        either!(self, store => store.complete(key, response, expires_at))
    }

    async fn release(&self, key: &IdempotencyKey) -> Result<(), PortError> {
        either!(self, store => store.release(key))
    }

    async fn commit<L: LinkStore, A: AuditLog>(
        &self,
        links: &L,
        audit: &A,
        commit: &Commit<'_>,
    ) -> Result<(), PortError> {
        either!(self, store => store.commit(links, audit, commit))
    }
}

impl RetryQueue for AnyRetryQueue {
    async fn enqueue(&self, job: &RetryJob, delay: Duration) -> Result<(), PortError> {
        match self {
            Self::Sqs(queue) => queue.enqueue(job, delay).await,
            Self::Memory(queue) => queue.enqueue(job, delay).await,
        }
    }
}

impl AuditLog for AnyAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError> {
        either!(self, log => log.append(entry))
    }

    async fn by_referral(
        &self,
        referral_id: &ReferralId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        either!(self, log => log.by_referral(referral_id, limit))
    }

    async fn by_crm_record(
        &self,
        crm: &CrmRecordId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PortError> {
        either!(self, log => log.by_crm_record(crm, limit))
    }

    async fn needs_attention(&self, limit: usize) -> Result<Vec<AuditEntry>, PortError> {
        either!(self, log => log.needs_attention(limit))
    }
}

impl LinkStore for AnyLinkStore {
    async fn get_by_referral(&self, referral_id: &ReferralId) -> Result<Option<Link>, PortError> {
        either!(self, links => links.get_by_referral(referral_id))
    }

    async fn get_by_crm(&self, crm: &CrmRecordId) -> Result<Option<Link>, PortError> {
        either!(self, links => links.get_by_crm(crm))
    }

    async fn put(&self, link: &Link) -> Result<(), PortError> {
        either!(self, links => links.put(link))
    }

    async fn claim(
        &self,
        referral_id: &ReferralId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Claim, PortError> {
        either!(self, links => links.claim(referral_id, now, until))
    }

    async fn release_claim(&self, referral_id: &ReferralId) -> Result<(), PortError> {
        either!(self, links => links.release_claim(referral_id))
    }
}

impl CheckpointStore for AnyCheckpointStore {
    async fn load(&self) -> Result<Option<Checkpoint>, PortError> {
        either!(self, store => store.load())
    }

    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), PortError> {
        either!(self, store => store.save(checkpoint))
    }
}
