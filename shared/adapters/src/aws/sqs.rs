//! [`RetryQueue`] on SQS, a small [`SqsQueue`] handle (receive / delete / send / change
//! visibility / start a message move task: the building blocks of the retry worker and of a DLQ
//! redrive), and [`provision_queues`] for local runs and tests.
//!
//! A retry message's body is the [`RetryJob`] as JSON; its message attributes are `source`
//! (String, e.g. `partner_center`) and `attempt` (Number). `DelaySeconds` is the requested delay
//! clamped to SQS's 0..=900.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};
use cosell_domain::{PortError, RetryJob, RetryQueue, Service};

use crate::error::{AwsAdapterError, AwsResource, SdkResultExt};

/// The longest `DelaySeconds` SQS accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// A queue, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id.
    pub message_id: String,
    /// The handle to delete it or change its visibility with.
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// The string and number message attributes.
    pub attributes: HashMap<String, String>,
    /// How often it has been received (`ApproximateReceiveCount`), when reported.
    pub receive_count: Option<u32>,
    /// The data type of each message attribute of [`ReceivedMessage::attributes`] (`String`,
    /// `Number`, or a custom `Number.x` / `String.x`).
    pub attribute_types: HashMap<String, String>,
    /// When it was first sent to its queue (`SentTimestamp`), when reported.
    pub sent_at: Option<DateTime<Utc>>,
}

impl ReceivedMessage {
    /// The same body and message attributes (`Number…` attributes as numbers, all others as
    /// strings), to send to another queue without delay.
    pub fn to_outgoing(&self) -> OutgoingMessage {
        let mut names: Vec<&String> = self.attributes.keys().collect();
        names.sort();
        let mut message = OutgoingMessage {
            body: self.body.clone(),
            ..OutgoingMessage::default()
        };
        for name in names {
            let value = self.attributes[name].clone();
            let is_number = self
                .attribute_types
                .get(name)
                .is_some_and(|data_type| data_type.starts_with("Number"));
            if is_number {
                message.number_attributes.push((name.clone(), value));
            } else {
                message.string_attributes.push((name.clone(), value));
            }
        }
        message
    }
}

/// A started message move task (`StartMessageMoveTask`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTask {
    /// The task handle (to list or cancel it).
    pub task_handle: String,
}

/// What [`SqsQueue::start_move_task`] found.
#[derive(Debug)]
pub enum MoveTaskStart {
    /// The endpoint started the task.
    Started(MoveTask),
    /// The endpoint does not implement `StartMessageMoveTask` (an emulator): move the messages
    /// one by one instead.
    Unsupported(AwsAdapterError),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body.
    pub body: String,
    /// String message attributes.
    pub string_attributes: Vec<(String, String)>,
    /// Number message attributes.
    pub number_attributes: Vec<(String, String)>,
    /// Delivery delay (clamped to [`MAX_DELAY`]).
    pub delay: Duration,
}

/// Approximate message counts of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Still delayed.
    pub delayed: u64,
}

impl SqsQueue {
    /// A handle on the queue at `url`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// The queue named `name` in the client's account and region.
    pub async fn by_name(client: Client, name: &str) -> Result<Self, AwsAdapterError> {
        let found = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .on_queue(name)?;
        let url = found
            .queue_url()
            .ok_or_else(|| AwsAdapterError::MissingOutput {
                action: "sqs:GetQueueUrl",
                resource: AwsResource::Queue(name.to_owned()),
                what: "queue URL",
            })?
            .to_owned();
        Ok(Self::new(client, url))
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue ARN.
    pub async fn arn(&self) -> Result<String, AwsAdapterError> {
        let attributes = self.attributes(&[QueueAttributeName::QueueArn]).await?;
        attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .ok_or_else(|| AwsAdapterError::MissingOutput {
                action: "sqs:GetQueueAttributes",
                resource: AwsResource::Queue(self.url.clone()),
                what: "QueueArn",
            })
    }

    /// Approximate message counts.
    pub async fn depth(&self) -> Result<QueueDepth, AwsAdapterError> {
        let attributes = self
            .attributes(&[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ])
            .await?;
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    async fn attributes(
        &self,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, AwsAdapterError> {
        let found = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .on_queue(&self.url)?;
        Ok(found.attributes().cloned().unwrap_or_default())
    }

    /// Send one message; returns its message id.
    pub async fn send(&self, message: &OutgoingMessage) -> Result<String, AwsAdapterError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body)
            .delay_seconds(delay_seconds(message.delay));
        for (name, value, data_type) in message
            .string_attributes
            .iter()
            .map(|(n, v)| (n, v, "String"))
            .chain(
                message
                    .number_attributes
                    .iter()
                    .map(|(n, v)| (n, v, "Number")),
            )
        {
            let attribute = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
                .map_err(|err| AwsAdapterError::Misconfigured {
                    resource: AwsResource::Queue(self.url.clone()),
                    problem: format!("message attribute {name} could not be built: {err}"),
                    fix: "report this as a bug".into(),
                })?;
            request = request.message_attributes(name, attribute);
        }
        let sent = request.send().await.on_queue(&self.url)?;
        Ok(sent.message_id().unwrap_or_default().to_owned())
    }

    /// Receive up to `max` (1..=10) messages, long-polling up to `wait` (at most 20 s), with
    /// their message attributes and receive counts.
    pub async fn receive(
        &self,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, AwsAdapterError> {
        self.receive_for(max, wait, None).await
    }

    /// [`SqsQueue::receive`], hiding the messages for `visibility` instead of the queue's
    /// visibility timeout.
    pub async fn receive_hidden(
        &self,
        max: u8,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, AwsAdapterError> {
        self.receive_for(max, wait, Some(visibility)).await
    }

    async fn receive_for(
        &self,
        max: u8,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, AwsAdapterError> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::from(max.clamp(1, 10)))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .set_visibility_timeout(visibility.map(visibility_seconds))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .on_queue(&self.url)?;
        Ok(received
            .messages()
            .iter()
            .map(|message| ReceivedMessage {
                message_id: message.message_id().unwrap_or_default().to_owned(),
                receipt_handle: message.receipt_handle().unwrap_or_default().to_owned(),
                body: message.body().unwrap_or_default().to_owned(),
                attributes: message
                    .message_attributes()
                    .map(|attributes| {
                        attributes
                            .iter()
                            .filter_map(|(k, v)| {
                                v.string_value().map(|value| (k.clone(), value.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                receive_count: message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|count| count.parse().ok()),
                attribute_types: message
                    .message_attributes()
                    .map(|attributes| {
                        attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), v.data_type().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                sent_at: message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|millis| millis.parse::<i64>().ok())
                    .and_then(DateTime::from_timestamp_millis),
            })
            .collect())
    }

    /// Hide a received message for `timeout` from now (`ChangeMessageVisibility`; 0 makes it
    /// visible again at once, at most 12 hours).
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), AwsAdapterError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_seconds(timeout))
            .send()
            .await
            .on_queue(&self.url)?;
        Ok(())
    }

    /// Ask SQS to move this dead-letter queue's messages back to their source queue
    /// (`StartMessageMoveTask`, or to `destination_arn` when given). An endpoint that does not
    /// implement the action (moto answers 500 `NotImplemented`, others 400
    /// `UnsupportedOperation` / `InvalidAction`) is reported as
    /// [`MoveTaskStart::Unsupported`], not as an error.
    pub async fn start_move_task(
        &self,
        destination_arn: Option<&str>,
    ) -> Result<MoveTaskStart, AwsAdapterError> {
        let source_arn = self.arn().await?;
        let started = self
            .client
            .start_message_move_task()
            .source_arn(&source_arn)
            .set_destination_arn(destination_arn.map(str::to_owned))
            // Once: an endpoint without the action answers 500, which the SDK would retry.
            .customize()
            .config_override(
                aws_sdk_sqs::config::Config::builder()
                    .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .on_queue(&self.url);
        match started {
            Ok(task) => Ok(MoveTaskStart::Started(MoveTask {
                task_handle: task.task_handle().unwrap_or_default().to_owned(),
            })),
            Err(error) if is_unsupported(&error) => Ok(MoveTaskStart::Unsupported(error)),
            Err(error) => Err(error),
        }
    }

    /// Delete a received message.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), AwsAdapterError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .on_queue(&self.url)?;
        Ok(())
    }
}

/// Whether an error says the endpoint does not implement the action: an error code saying so,
/// or a 500 without any AWS error code (moto's answer to an action it lacks is a bare HTML
/// "Internal Server Error"). Moving the messages one by one works everywhere, so a false
/// positive costs speed only.
fn is_unsupported(error: &AwsAdapterError) -> bool {
    match error.code() {
        Some(code) => {
            matches!(
                code,
                "NotImplemented"
                    | "UnsupportedOperation"
                    | "InvalidAction"
                    | "UnknownOperationException"
            ) || error
                .to_string()
                .to_ascii_lowercase()
                .contains("not implemented")
        }
        None => error.kind() == crate::error::FailureKind::ServerError,
    }
}

/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

fn visibility_seconds(timeout: Duration) -> i32 {
    // 43 200 fits an i32.
    i32::try_from(timeout.min(MAX_VISIBILITY).as_secs()).unwrap_or(43_200)
}

fn delay_seconds(delay: Duration) -> i32 {
    // 900 fits an i32.
    i32::try_from(delay.min(MAX_DELAY).as_secs()).unwrap_or(900)
}

/// The retry queue.
#[derive(Debug, Clone)]
pub struct SqsRetryQueue {
    queue: SqsQueue,
}

impl SqsRetryQueue {
    /// The retry queue at `queue_url`, using a client built once per cold start.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            queue: SqsQueue::new(client, queue_url),
        }
    }

    /// The underlying queue.
    pub fn queue(&self) -> &SqsQueue {
        &self.queue
    }

    /// The message [`RetryQueue::enqueue`] sends for `job`.
    pub fn message(job: &RetryJob, delay: Duration) -> Result<OutgoingMessage, AwsAdapterError> {
        let serialize = |source| AwsAdapterError::Serialize {
            what: "a retry job",
            source,
        };
        let source = match serde_json::to_value(job.source).map_err(serialize)? {
            serde_json::Value::String(source) => source,
            other => other.to_string(),
        };
        Ok(OutgoingMessage {
            body: serde_json::to_string(job).map_err(serialize)?,
            string_attributes: vec![("source".into(), source)],
            number_attributes: vec![("attempt".into(), job.attempt.to_string())],
            delay,
        })
    }

    /// [`RetryQueue::enqueue`], with the adapter's error; returns the message id.
    pub async fn try_enqueue(
        &self,
        job: &RetryJob,
        delay: Duration,
    ) -> Result<String, AwsAdapterError> {
        self.queue.send(&Self::message(job, delay)?).await
    }
}

impl RetryQueue for SqsRetryQueue {
    #[tracing::instrument(skip_all, fields(queue = %self.queue.url, key = %job.key, attempt = job.attempt))]
    async fn enqueue(&self, job: &RetryJob, delay: Duration) -> Result<(), PortError> {
        self.try_enqueue(job, delay)
            .await
            .map(drop)
            .map_err(|e| e.into_port_error(Service::RetryQueue))
    }
}

/// Settings of the queues [`provision_queues`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays hidden (set it to at least 6× the consumer Lambda's
    /// timeout in a deployment).
    pub visibility_timeout: Duration,
    /// Receives before a message moves to the dead-letter queue.
    pub max_receive_count: u32,
    /// How long the dead-letter queue keeps messages.
    pub dlq_retention: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(180),
            max_receive_count: 5,
            dlq_retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// The queues [`provision_queues`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    /// The retry queue's URL.
    pub queue_url: String,
    /// The retry queue's ARN.
    pub queue_arn: String,
    /// The dead-letter queue's URL.
    pub dlq_url: String,
    /// The dead-letter queue's ARN.
    pub dlq_arn: String,
}

/// Create (or update) the queue `name` and its dead-letter queue `<name>-dlq`, with a
/// `RedrivePolicy` of `options.max_receive_count` and the visibility timeout. Idempotent. For
/// local runs and tests (deployed stacks get the queues from the SAM template).
pub async fn provision_queues(
    client: &Client,
    name: &str,
    options: &QueueOptions,
) -> Result<QueueUrls, AwsAdapterError> {
    let dlq_name = format!("{name}-dlq");
    let dlq = ensure_queue(client, &dlq_name).await?;
    set_attributes(
        &dlq,
        [(
            QueueAttributeName::MessageRetentionPeriod,
            options.dlq_retention.as_secs().to_string(),
        )],
    )
    .await?;
    let dlq_arn = dlq.arn().await?;

    let queue = ensure_queue(client, name).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": options.max_receive_count,
    });
    set_attributes(
        &queue,
        [
            (
                QueueAttributeName::VisibilityTimeout,
                options.visibility_timeout.as_secs().to_string(),
            ),
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        ],
    )
    .await?;
    let queue_arn = queue.arn().await?;
    Ok(QueueUrls {
        queue_url: queue.url,
        queue_arn,
        dlq_url: dlq.url,
        dlq_arn,
    })
}

/// The queue `name`, created without attributes when missing (attributes are set separately,
/// so an existing queue with other attributes is updated instead of refused).
async fn ensure_queue(client: &Client, name: &str) -> Result<SqsQueue, AwsAdapterError> {
    match SqsQueue::by_name(client.clone(), name).await {
        Ok(queue) => return Ok(queue),
        Err(err) if err.kind() == crate::error::FailureKind::ResourceNotFound => {}
        Err(err) => return Err(err),
    }
    let created = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .on_queue(name);
    match created {
        Ok(created) => match created.queue_url() {
            Some(url) => Ok(SqsQueue::new(client.clone(), url)),
            None => SqsQueue::by_name(client.clone(), name).await,
        },
        // Created concurrently by someone else.
        Err(err)
            if err.code().is_some_and(|c| {
                c.contains("QueueAlreadyExists") || c.contains("QueueNameExists")
            }) =>
        {
            SqsQueue::by_name(client.clone(), name).await
        }
        Err(err) => Err(err),
    }
}

async fn set_attributes(
    queue: &SqsQueue,
    attributes: impl IntoIterator<Item = (QueueAttributeName, String)>,
) -> Result<(), AwsAdapterError> {
    queue
        .client
        .set_queue_attributes()
        .queue_url(&queue.url)
        .set_attributes(Some(attributes.into_iter().collect()))
        .send()
        .await
        .on_queue(&queue.url)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosell_domain::RetrySource;

    #[test]
    fn retry_messages_carry_the_job_as_json_with_source_and_attempt_attributes() {
        let job = RetryJob {
            source: RetrySource::PartnerCenter,
            key: "pc:1".into(),
            attempt: 3,
            payload: serde_json::json!({ "EventName": "referral-updated" }),
        };
        let message = SqsRetryQueue::message(&job, Duration::from_secs(5000)).unwrap();
        assert_eq!(
            serde_json::from_str::<RetryJob>(&message.body).unwrap(),
            job
        );
        assert_eq!(
            message.string_attributes,
            vec![("source".to_owned(), "partner_center".to_owned())]
        );
        assert_eq!(
            message.number_attributes,
            vec![("attempt".to_owned(), "3".to_owned())]
        );
        assert_eq!(delay_seconds(message.delay), 900);
        assert_eq!(delay_seconds(Duration::from_millis(1500)), 1);
        assert_eq!(delay_seconds(Duration::ZERO), 0);
    }
}
