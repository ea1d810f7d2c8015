//! `dynamodb-table`, `retry-queue`, `dead-letter-queue`: the deployment's AWS stores and
//! queues are reachable, and nothing waits in the dead-letter queue.

use cosell_adapters::aws::aws_sdk_sqs::types::QueueAttributeName;
use cosell_adapters::aws::{AwsClients, SqsQueue};
use cosell_runtime::StoreConfig;
use serde_json::Value;

use super::{Check, Status, lacking};
use crate::context::Deployment;

pub(super) const DEPLOY_FIX: &str = "deploy the stack (it creates the table and queues) and \
                                     check the names in TABLE_NAME / RETRY_QUEUE_URL and the \
                                     credentials' IAM permissions";

/// The DynamoDB store of a deployment: its table name, retry queue URL and clients (`None`
/// with `STORE=memory`).
pub(super) struct AwsStore<'a> {
    pub table_name: &'a str,
    pub retry_queue_url: &'a str,
    pub aws: &'a AwsClients,
}

impl<'a> AwsStore<'a> {
    pub(super) fn of(deployment: &'a Deployment) -> Option<Self> {
        match (&deployment.config.sync.store, &deployment.aws) {
            (
                StoreConfig::DynamoDb {
                    table_name,
                    retry_queue_url,
                    ..
                },
                Some(aws),
            ) => Some(Self {
                table_name,
                retry_queue_url,
                aws,
            }),
            _ => None,
        }
    }
}

fn memory_store(name: &'static str) -> Check {
    Check::with_fix(
        name,
        Status::Warn,
        "STORE=memory: nothing survives the function instance",
        "set STORE=dynamodb with TABLE_NAME and RETRY_QUEUE_URL for a deployment",
    )
}

/// `dynamodb-table`: the table is reachable and has its two indexes.
pub async fn check_table(deployment: &Deployment) -> Check {
    const NAME: &str = "dynamodb-table";
    let Some(store) = AwsStore::of(deployment) else {
        return memory_store(NAME);
    };
    let (table_name, aws) = (store.table_name, store.aws);
    match aws
        .dynamodb
        .describe_table()
        .table_name(table_name)
        .send()
        .await
    {
        Ok(found) => {
            let indexes: Vec<&str> = found
                .table()
                .map(|t| {
                    t.global_secondary_indexes()
                        .iter()
                        .filter_map(|i| i.index_name())
                        .collect()
                })
                .unwrap_or_default();
            let missing = lacking(["gsi1", "gsi2"], |i| indexes.contains(i), str::to_owned);
            Check::unless_missing(
                NAME,
                &missing,
                || format!("{table_name} is reachable, with gsi1 and gsi2"),
                |missing| {
                    (
                        format!("{table_name} lacks the index(es) {missing}"),
                        DEPLOY_FIX.to_owned(),
                    )
                },
            )
        }
        Err(error) => {
            let not_found = error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception());
            Check::with_fix(
                NAME,
                if not_found {
                    Status::Problem
                } else {
                    Status::CouldNotCheck
                },
                format!(
                    "{table_name}: {}",
                    cosell_adapters::aws::aws_sdk_dynamodb::error::DisplayErrorContext(&error)
                ),
                DEPLOY_FIX,
            )
        }
    }
}

/// `retry-queue`: the retry queue is reachable.
pub async fn check_retry_queue(deployment: &Deployment) -> Check {
    const NAME: &str = "retry-queue";
    let Some(store) = AwsStore::of(deployment) else {
        return memory_store(NAME);
    };
    let (retry_queue_url, aws) = (store.retry_queue_url, store.aws);
    match SqsQueue::new(aws.sqs.clone(), retry_queue_url)
        .depth()
        .await
    {
        Ok(depth) => Check::ok(
            NAME,
            format!(
                "reachable: {} waiting, {} in flight, {} delayed",
                depth.visible, depth.in_flight, depth.delayed
            ),
        ),
        Err(error) => Check::problem(NAME, format!("{retry_queue_url}: {error}"), DEPLOY_FIX),
    }
}

/// The dead-letter queue's URL: `DLQ_URL`, else the target of the retry queue's
/// `RedrivePolicy`.
async fn dead_letter_queue(
    aws: &AwsClients,
    configured: Option<&str>,
    retry_queue_url: &str,
) -> Result<Option<String>, String> {
    if let Some(url) = configured {
        return Ok(Some(url.to_owned()));
    }
    let attributes = aws
        .sqs
        .get_queue_attributes()
        .queue_url(retry_queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|error| {
            cosell_adapters::aws::aws_sdk_sqs::error::DisplayErrorContext(&error).to_string()
        })?;
    let Some(policy) = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
    else {
        return Ok(None);
    };
    let policy: Value = serde_json::from_str(policy).map_err(|e| e.to_string())?;
    let Some(name) = policy["deadLetterTargetArn"]
        .as_str()
        .and_then(|arn| arn.rsplit(':').next())
    else {
        return Ok(None);
    };
    SqsQueue::by_name(aws.sqs.clone(), name)
        .await
        .map(|queue| Some(queue.url().to_owned()))
        .map_err(|e| e.to_string())
}

/// `dead-letter-queue`: the dead-letter queue is empty (every message there is a sync that
/// gave up).
pub async fn check_dead_letter_queue(deployment: &Deployment) -> Check {
    const NAME: &str = "dead-letter-queue";
    let Some(store) = AwsStore::of(deployment) else {
        return memory_store(NAME);
    };
    let (retry_queue_url, aws) = (store.retry_queue_url, store.aws);
    let url = match dead_letter_queue(
        aws,
        deployment.config.dead_letter_queue_url.as_deref(),
        retry_queue_url,
    )
    .await
    {
        Ok(Some(url)) => url,
        Ok(None) => {
            return Check::problem(
                NAME,
                "the retry queue has no dead-letter queue (no RedrivePolicy): failing jobs are \
                 retried until they expire",
                DEPLOY_FIX,
            );
        }
        Err(error) => {
            return Check::with_fix(NAME, Status::CouldNotCheck, error, DEPLOY_FIX);
        }
    };
    match SqsQueue::new(aws.sqs.clone(), &url).depth().await {
        Ok(depth) if depth.visible + depth.in_flight + depth.delayed == 0 => {
            Check::ok(NAME, "empty")
        }
        Ok(depth) => Check::problem(
            NAME,
            format!(
                "{} message(s) in the dead-letter queue: syncs that gave up",
                depth.visible + depth.in_flight + depth.delayed
            ),
            "see why with `cosell audit --needs-attention`, fix the cause, then move them back \
             with `cosell redrive`",
        ),
        Err(error) => Check::with_fix(
            NAME,
            Status::CouldNotCheck,
            format!("{url}: {error}"),
            DEPLOY_FIX,
        ),
    }
}
