//! The two queue calls the worker makes besides answering the batch: hide a failed message for
//! its backoff, and send a malformed one straight to the dead-letter queue ([`WorkerQueues`]),
//! with their SQS implementation ([`SqsWorkerQueues`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::SqsMessage;
use cosell_adapters::aws::aws_sdk_sqs::Client;
use cosell_adapters::aws::{OutgoingMessage, ReceivedMessage, SqsQueue};

/// A queue call failed (the message says which and why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// The worker's queue calls (the port; SQS in production, a recorder in unit tests).
pub trait WorkerQueues: Send + Sync {
    /// Hide the retry queue's message `receipt_handle` for `timeout` from now.
    fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Send `message` (body and message attributes) to the dead-letter queue.
    fn dead_letter(
        &self,
        message: &SqsMessage,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// The retry queue and its dead-letter queue on SQS.
#[derive(Debug, Clone)]
pub struct SqsWorkerQueues {
    retry: SqsQueue,
    dlq: SqsQueue,
}

impl SqsWorkerQueues {
    /// The queues at `retry_queue_url` and `dlq_url`, with a client built once per cold start.
    pub fn new(client: Client, retry_queue_url: &str, dlq_url: &str) -> Self {
        Self {
            retry: SqsQueue::new(client.clone(), retry_queue_url),
            dlq: SqsQueue::new(client, dlq_url),
        }
    }
}

impl WorkerQueues for SqsWorkerQueues {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.retry
            .change_visibility(receipt_handle, timeout)
            .await
            .map_err(|error| QueueError(error.to_string()))
    }

    async fn dead_letter(&self, message: &SqsMessage) -> Result<(), QueueError> {
        self.dlq
            .send(&outgoing(message))
            .await
            .map(drop)
            .map_err(|error| QueueError(error.to_string()))
    }
}

/// The same body and message attributes, to send on.
pub fn outgoing(message: &SqsMessage) -> OutgoingMessage {
    let mut attributes = HashMap::new();
    let mut attribute_types = HashMap::new();
    for (name, attribute) in &message.message_attributes {
        if let Some(value) = &attribute.string_value {
            attributes.insert(name.clone(), value.clone());
            attribute_types.insert(
                name.clone(),
                attribute
                    .data_type
                    .clone()
                    .unwrap_or_else(|| "String".to_owned()),
            );
        }
    }
    ReceivedMessage {
        message_id: String::new(),
        receipt_handle: String::new(),
        body: message.body.clone().unwrap_or_default(),
        attributes,
        receive_count: None,
        attribute_types,
        sent_at: None,
    }
    .to_outgoing()
}
