//! Webhook delivery with the services' retry behaviour. Each delivery runs in its own
//! task (so, like the real services, deliveries may overlap and arrive out of order)
//! and every attempt is recorded for `GET /_sandbox/deliveries`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::faults::Service;
use crate::state::AppState;

/// When an attempt counts as delivered and whether a failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acceptance {
    /// Partner Center: any 2xx; retry anything else.
    Any2xx,
    /// Dataverse: any 2xx; retry only 502/503/504 ("one more attempt only when these
    /// error codes are returned").
    Any2xxRetryGatewayErrors,
    /// Salesforce: a 2xx whose body contains `<Ack>true</Ack>`; retry anything else.
    SoapAck,
}

/// One webhook to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub service: Service,
    /// What is delivered, e.g. `referral-created` or `opportunity Update` (for the log).
    pub label: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub max_attempts: u32,
    pub acceptance: Acceptance,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Transport error or the reason the response was not accepted.
    pub error: Option<String>,
    pub accepted: bool,
}

/// A delivery and its attempts so far.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub id: u64,
    pub service: Service,
    pub label: String,
    pub url: String,
    pub attempts: Vec<Attempt>,
    /// `true` once an attempt was accepted.
    pub delivered: bool,
    /// `true` once no further attempt will be made.
    pub finished: bool,
}

/// Every delivery since the last reset.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    records: Vec<DeliveryRecord>,
}

impl DeliveryLog {
    pub fn all(&self) -> &[DeliveryRecord] {
        &self.records
    }

    pub fn get(&self, id: u64) -> Option<&DeliveryRecord> {
        self.records.iter().find(|r| r.id == id)
    }

    fn start(&mut self, delivery: &Delivery) -> u64 {
        let id = self.records.len() as u64 + 1;
        self.records.push(DeliveryRecord {
            id,
            service: delivery.service,
            label: delivery.label.clone(),
            url: delivery.url.clone(),
            attempts: Vec::new(),
            delivered: false,
            finished: false,
        });
        id
    }

    fn record(&mut self, id: u64, attempt: Attempt, finished: bool) {
        if let Some(record) = self.records.iter_mut().find(|r| r.id == id) {
            record.delivered |= attempt.accepted;
            record.attempts.push(attempt);
            record.finished = finished;
        }
    }
}

/// Starts delivering in the background; returns the delivery id. Nothing is sent while
/// webhooks of that service are switched off (`POST /_sandbox/webhooks`): the event is
/// recorded as finished with no attempt, as if the endpoint had been unreachable for good.
pub fn spawn(state: &AppState, delivery: Delivery) -> u64 {
    let (id, disabled) = {
        let mut world = state.world();
        let id = world.deliveries.start(&delivery);
        (id, world.disabled_webhooks.contains(&delivery.service))
    };
    if disabled {
        // Read the clock first: `state.now()` locks the world, which must not already be held.
        let at = state.now();
        state.world().deliveries.record(
            id,
            Attempt {
                at,
                status: None,
                error: Some("webhook delivery switched off".into()),
                accepted: false,
            },
            true,
        );
        return id;
    }
    let state = state.clone();
    tokio::spawn(async move { run(&state, id, &delivery).await });
    id
}

async fn run(state: &AppState, id: u64, delivery: &Delivery) {
    for attempt_no in 1..=delivery.max_attempts.max(1) {
        let attempt = attempt_once(state, delivery).await;
        let retryable = match (&attempt, delivery.acceptance) {
            (a, _) if a.accepted => false,
            (a, Acceptance::Any2xxRetryGatewayErrors) => {
                matches!(a.status, Some(502..=504))
            }
            _ => true,
        };
        let last = !retryable || attempt_no == delivery.max_attempts.max(1);
        state.world().deliveries.record(id, attempt, last);
        if last {
            return;
        }
        tokio::time::sleep(state.config.retry_backoff * attempt_no).await;
    }
}

async fn attempt_once(state: &AppState, delivery: &Delivery) -> Attempt {
    let mut request = state.http.post(&delivery.url).body(delivery.body.clone());
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }
    let at = state.now();
    match request.send().await {
        Err(error) => Attempt {
            at,
            status: None,
            error: Some(error.to_string()),
            accepted: false,
        },
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let acked = match delivery.acceptance {
                Acceptance::SoapAck => soap_acknowledged(&body),
                _ => true,
            };
            let accepted = status.is_success() && acked;
            let error = (!accepted).then(|| {
                if status.is_success() {
                    "response carried no <Ack>true</Ack>".to_owned()
                } else {
                    format!("HTTP {status}")
                }
            });
            Attempt {
                at,
                status: Some(status.as_u16()),
                error,
                accepted,
            }
        }
    }
}

/// `true` when a SOAP `notificationsResponse` says `<Ack>true</Ack>` (any prefix).
fn soap_acknowledged(body: &str) -> bool {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    let mut reader = Reader::from_str(body);
    let mut in_ack = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => in_ack = e.local_name().as_ref() == "Ack",
            Ok(Event::Text(t)) if in_ack => {
                return t.xml10_content().trim().eq_ignore_ascii_case("true");
            }
            Ok(Event::End(_)) => in_ack = false,
            Ok(Event::Eof) | Err(_) => return false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::soap_acknowledged;

    #[test]
    fn recognises_the_documented_acknowledgement() {
        let ack = include_str!("../tests/data/salesforce-outbound-ack-response.xml");
        assert!(soap_acknowledged(ack));
        assert!(!soap_acknowledged(&ack.replace("true", "false")));
        assert!(!soap_acknowledged("<html>OK</html>"));
    }
}
