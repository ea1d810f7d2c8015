//! The triggers that invoke functions on their own: the SQS event source mapping and the
//! schedule (docs/aws.md#the-local-lambda).

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;

use super::Invoker;

/// An SQS event source mapping: which queue, batches of how many, how many pollers.
#[derive(Debug, Clone)]
pub struct SqsSource {
    /// The SQS client (moto's endpoint in local runs).
    pub client: aws_sdk_sqs::Client,
    /// The queue to poll.
    pub queue_url: String,
    /// At most this many messages per invocation (SQS allows 1 to 10 per receive).
    pub batch_size: i32,
    /// Pollers at once: invocations of the function in parallel.
    pub pollers: usize,
}

/// Polls `source` until the local Lambda stops: each non-empty receive is one invocation of
/// `function`. With `ReportBatchItemFailures` (the template's setting), the messages the
/// answer's `batchItemFailures` names stay on the queue and the others are deleted; an error,
/// a crash or a timeout of the invocation, or an answer naming an id that is not in the batch,
/// leaves the whole batch on the queue. Messages come back after the visibility timeout, and the
/// queue's redrive policy moves one received `maxReceiveCount` times to the dead-letter queue.
pub(super) async fn poll_sqs(
    invoker: Invoker,
    function: String,
    source: SqsSource,
    mut stopped: watch::Receiver<bool>,
) {
    let arn = queue_arn(&source).await;
    let region = source
        .client
        .config()
        .region()
        .map_or_else(|| "us-east-1".to_owned(), ToString::to_string);
    while !*stopped.borrow() {
        let receive = source
            .client
            .receive_message()
            .queue_url(&source.queue_url)
            .max_number_of_messages(source.batch_size.clamp(1, 10))
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send();
        let received = tokio::select! {
            received = receive => received,
            _ = stopped.changed() => return,
        };
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%function, error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "local SQS event source: receive failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = stopped.changed() => return,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|message| lambda_record(message, &arn, &region))
            .collect();
        let payload = match serde_json::to_vec(&event) {
            Ok(payload) => Bytes::from(payload),
            Err(_) => continue,
        };
        let done: Vec<&aws_sdk_sqs::types::Message> = match invoker.invoke(&function, payload).await
        {
            Ok(answer) => succeeded(&messages, &answer),
            Err(error) => {
                tracing::warn!(%function, %error, "local SQS event source: the batch stays on the queue");
                Vec::new()
            }
        };
        delete(&source, &done).await;
    }
}

/// The messages of the batch to delete after the function's answer, by the documented rules of
/// partial batch responses: all when the answer is empty, `null`, `{}` or has an empty or null
/// `batchItemFailures`; all but the ones it names otherwise; none (the whole batch failed) when
/// the answer is not JSON or names an empty id or one that is not in the batch.
pub(super) fn succeeded<'m>(
    messages: &'m [aws_sdk_sqs::types::Message],
    answer: &[u8],
) -> Vec<&'m aws_sdk_sqs::types::Message> {
    let all = || messages.iter().collect();
    if answer.iter().all(u8::is_ascii_whitespace) {
        return all();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return Vec::new();
    };
    if value.is_null()
        || value
            .get("batchItemFailures")
            .is_none_or(serde_json::Value::is_null)
    {
        return all();
    }
    let Ok(response) = serde_json::from_value::<SqsBatchResponse>(value) else {
        return Vec::new();
    };
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.as_str())
        .collect();
    let known = |id: &str| messages.iter().any(|m| m.message_id() == Some(id));
    if failed.iter().any(|id| id.is_empty() || !known(id)) {
        return Vec::new();
    }
    messages
        .iter()
        .filter(|m| !failed.contains(&m.message_id().unwrap_or_default()))
        .collect()
}

async fn delete(source: &SqsSource, done: &[&aws_sdk_sqs::types::Message]) {
    let entries: Vec<DeleteMessageBatchRequestEntry> = done
        .iter()
        .enumerate()
        .filter_map(|(index, message)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .build()
                .ok()
        })
        .collect();
    if entries.is_empty() {
        return;
    }
    if let Err(error) = source
        .client
        .delete_message_batch()
        .queue_url(&source.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "local SQS event source: delete failed (the messages come back)");
    }
}

async fn queue_arn(source: &SqsSource) -> String {
    source
        .client
        .get_queue_attributes()
        .queue_url(&source.queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .ok()
        .and_then(|output| output.attributes?.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_else(|| format!("arn:aws:sqs:us-east-1:000000000000:{}", source.queue_url))
}

/// One record of the Lambda event for a received message.
fn lambda_record(message: &aws_sdk_sqs::types::Message, arn: &str, region: &str) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id.clone();
    record.receipt_handle = message.receipt_handle.clone();
    record.body = message.body.clone();
    record.md5_of_body = message.md5_of_body.clone();
    record.md5_of_message_attributes = message.md5_of_message_attributes.clone();
    record.attributes = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    record.message_attributes = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    let mut attribute = SqsMessageAttribute::default();
                    attribute.string_value = value.string_value.clone();
                    attribute.data_type = Some(value.data_type.clone());
                    (name.clone(), attribute)
                })
                .collect::<HashMap<_, _>>()
        })
        .unwrap_or_default();
    record.event_source = Some("aws:sqs".to_owned());
    record.event_source_arn = Some(arn.to_owned());
    record.aws_region = Some(region.to_owned());
    record
}

/// Invokes `function` with an EventBridge "Scheduled Event" every `every` (the first after one
/// period) until the local Lambda stops; a failed run is logged, the next comes on time.
pub(super) async fn schedule(
    invoker: Invoker,
    function: String,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        let event = json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "us-east-1",
            "resources": [format!("arn:aws:events:us-east-1:000000000000:rule/{function}-schedule")],
            "detail": {},
        });
        if let Err(error) = invoker
            .invoke(&function, Bytes::from(event.to_string()))
            .await
        {
            tracing::warn!(%function, %error, "local schedule: the run failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::Message;

    fn batch() -> Vec<Message> {
        ["m1", "m2", "m3"]
            .map(|id| Message::builder().message_id(id).build())
            .to_vec()
    }

    fn ids(messages: &[&Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| m.message_id().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn an_empty_or_null_answer_deletes_the_whole_batch() {
        let messages = batch();
        for answer in [
            "",
            "null",
            "{}",
            r#"{"batchItemFailures": []}"#,
            r#"{"batchItemFailures": null}"#,
        ] {
            assert_eq!(
                ids(&succeeded(&messages, answer.as_bytes())),
                ["m1", "m2", "m3"],
                "{answer}"
            );
        }
    }

    #[test]
    fn the_named_failures_stay_on_the_queue() {
        let messages = batch();
        let answer = r#"{"batchItemFailures": [{"itemIdentifier": "m2"}]}"#;
        assert_eq!(ids(&succeeded(&messages, answer.as_bytes())), ["m1", "m3"]);
    }

    #[test]
    fn an_invalid_answer_or_an_unknown_or_empty_id_fails_the_whole_batch() {
        let messages = batch();
        for answer in [
            "not json",
            r#"{"batchItemFailures": [{"itemIdentifier": "m9"}]}"#,
            r#"{"batchItemFailures": [{"itemIdentifier": ""}]}"#,
            r#"{"batchItemFailures": [{"id": "m1"}]}"#,
        ] {
            assert!(
                succeeded(&messages, answer.as_bytes()).is_empty(),
                "{answer}"
            );
        }
    }
}
