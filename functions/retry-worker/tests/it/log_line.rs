//! The handler's log: one JSON line per message, never a body. A test binary of its own: the
//! capturing subscriber is thread-local, and tracing caches callsite interest process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::sample_harness;

use std::sync::Mutex;

use sample_harness::{Harness, REFERRAL, SECOND_REFERRAL, sample};
use serde_json::Value;

/// Captures what the handler logs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_message_logs_one_json_line_without_its_body() {
    let h = Harness::start().await;
    h.seed(REFERRAL).await;
    h.seed(SECOND_REFERRAL).await;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let event = sample("batch-with-malformed-body");

    let guard = tracing::subscriber::set_default(subscriber);
    let failures = h.handle(&event).await;
    drop(guard);

    assert!(failures.is_empty());
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| line["fields"]["message"] == "retry job")
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let summary: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|line| {
            let field = |name: &str| line["fields"][name].as_str().unwrap_or_default().to_owned();
            (
                field("correlation_id"),
                field("referral_id"),
                field("event_name"),
                field("outcome"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "5f0c3c2e-7a1b-4c55-9e21-0d6b1c9a0011".to_owned(),
                REFERRAL.to_owned(),
                "referral-created".to_owned(),
                "created".to_owned()
            ),
            (
                "5f0c3c2e-7a1b-4c55-9e21-0d6b1c9a0012".to_owned(),
                String::new(),
                String::new(),
                "malformed".to_owned()
            ),
            (
                "5f0c3c2e-7a1b-4c55-9e21-0d6b1c9a0013".to_owned(),
                SECOND_REFERRAL.to_owned(),
                "referral-created".to_owned(),
                "created".to_owned()
            ),
        ]
    );
    assert_eq!(lines[1]["level"], "ERROR");
    assert!(
        !text.contains("\\\"key\\\":"),
        "the malformed body is not logged: {text}"
    );
}
