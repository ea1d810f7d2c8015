//! One measured event ([`EventSample`]) and the per-kind summary of many ([`KindReport`]):
//! latency percentiles, throughput, calls per event, CPU per event.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Outcomes that changed the CRM (an event "applied").
pub const APPLIED_OUTCOMES: [&str; 2] = ["created", "updated"];

/// Reads (`GET`/`HEAD`) and writes (anything else) of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadWrite {
    /// `GET` / `HEAD` requests.
    pub reads: u64,
    /// `POST` / `PATCH` / `PUT` / `DELETE` requests.
    pub writes: u64,
}

impl ReadWrite {
    /// Reads + writes.
    pub fn total(self) -> u64 {
        self.reads + self.writes
    }

    fn add(&mut self, method: &str) {
        if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
            self.reads += 1;
        } else {
            self.writes += 1;
        }
    }
}

/// The API requests the sandbox logged for one event (its `/_sandbox/requests` delta).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExternalCalls {
    /// The Partner Center referrals API.
    pub partner_center: ReadWrite,
    /// The CRM's API (Dataverse Web API or Salesforce REST).
    pub crm: ReadWrite,
    /// Token endpoints (Entra ID, Salesforce OAuth).
    pub tokens: u64,
    /// Anything else (e.g. the webhook registration API).
    pub other: u64,
}

impl ExternalCalls {
    /// Classify the request log entries (`{"service", "method", …}`); `crm_service` is the
    /// log's name of the CRM under test (`dataverse` / `salesforce`).
    pub fn from_log(requests: &[Value], crm_service: &str) -> Self {
        let mut calls = Self::default();
        for request in requests {
            let service = request["service"].as_str().unwrap_or_default();
            let method = request["method"].as_str().unwrap_or_default();
            match service {
                "partner-center" => calls.partner_center.add(method),
                "entra" | "salesforce-auth" => calls.tokens += 1,
                _ if service == crm_service => calls.crm.add(method),
                _ => calls.other += 1,
            }
        }
        calls
    }

    /// Partner Center + CRM requests (the sync's own reads and writes).
    pub fn pc_crm(&self) -> u64 {
        self.partner_center.total() + self.crm.total()
    }

    /// Every request that left for an external service, tokens included.
    pub fn total(&self) -> u64 {
        self.pc_crm() + self.tokens + self.other
    }
}

/// One measured event: one handler call, or for concurrent duplicates the `k` copies fired
/// at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventSample {
    /// Wall time of the handler call (all copies, for concurrent duplicates).
    pub latency: Duration,
    /// Process CPU time spent meanwhile.
    pub cpu: Duration,
    /// Of it, the time while at least one port call was in flight (the union of the calls'
    /// intervals, see [`crate::counting::IoGauge`]).
    pub io_cpu: Duration,
    /// The `status` (or error `code`) each handler call answered.
    pub outcomes: Vec<String>,
    /// What the sandbox logged.
    pub external: ExternalCalls,
    /// Store port calls, `dynamodb:<store>.<method>` / `sqs:<store>.<method>` → count.
    pub stores: BTreeMap<String, u64>,
    /// AWS API requests on the wire (retries included), `<service>:<Operation>` → count.
    pub aws_requests: BTreeMap<String, u64>,
}

impl EventSample {
    /// The CPU time spent while no port call was in flight: the handler's and the domain's
    /// own work.
    pub fn own_cpu(&self) -> Duration {
        self.cpu.saturating_sub(self.io_cpu)
    }

    /// How many of the calls changed the CRM.
    pub fn applied(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| APPLIED_OUTCOMES.contains(&outcome.as_str()))
            .count()
    }
}

/// `p`-th percentile (0–100) of sorted values, nearest-rank: the smallest value with at least
/// `p` % of the values at or below it. `None` for no values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Rounded to 3 decimals (JSON stays readable; nothing measured here is that precise).
/// Never `-0.0` (an empty `f64` sum is `-0.0`) and never NaN or infinite.
pub fn round3(value: f64) -> f64 {
    if value.is_finite() {
        // Adding +0.0 turns -0.0 into 0.0.
        (value * 1000.0).round() / 1000.0 + 0.0
    } else {
        0.0
    }
}

fn millis(duration: Duration) -> f64 {
    round3(duration.as_secs_f64() * 1000.0)
}

/// Latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencyMs {
    /// The distribution of `values`.
    pub fn of(values: &[Duration]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let at = |p| percentile(&sorted, p).map_or(0.0, millis);
        let sum: Duration = sorted.iter().sum();
        Self {
            p50: at(50.0),
            p99: at(99.0),
            max: at(100.0),
            mean: mean(sum.as_secs_f64() * 1000.0, sorted.len()),
        }
    }
}

fn mean(sum: f64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { round3(sum / n as f64) }
}

/// Calls of one external service per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServiceCalls {
    /// Mean reads per event.
    pub reads: f64,
    /// Mean writes per event.
    pub writes: f64,
    /// Mean reads + writes per event.
    pub total: f64,
    /// Most reads + writes of one event.
    pub max: u64,
}

impl ServiceCalls {
    fn of(values: impl Iterator<Item = ReadWrite> + Clone, n: usize) -> Self {
        Self {
            reads: mean(values.clone().map(|c| c.reads as f64).sum(), n),
            writes: mean(values.clone().map(|c| c.writes as f64).sum(), n),
            total: mean(values.clone().map(|c| c.total() as f64).sum(), n),
            max: values.map(ReadWrite::total).max().unwrap_or_default(),
        }
    }
}

/// A count per event: mean and most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Mean per event.
    pub mean: f64,
    /// Most of one event.
    pub max: u64,
}

impl Spread {
    fn of(values: impl Iterator<Item = u64> + Clone, n: usize) -> Self {
        Self {
            mean: mean(values.clone().map(|v| v as f64).sum(), n),
            max: values.max().unwrap_or_default(),
        }
    }
}

/// DynamoDB / SQS calls per event, by service and by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AwsCalls {
    /// Mean DynamoDB calls per event.
    pub dynamodb: f64,
    /// Mean SQS calls per event.
    pub sqs: f64,
    /// Mean of both per event.
    pub total: f64,
    /// Most of both in one event.
    pub max: u64,
    /// Most DynamoDB calls in one event.
    pub dynamodb_max: u64,
    /// Mean per event of each key (`dynamodb:idempotency.acquire`, `dynamodb:PutItem`, …).
    pub by_call: BTreeMap<String, f64>,
}

impl AwsCalls {
    fn of<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>> + Clone, n: usize) -> Self {
        let service_sum = |prefix: &str| -> f64 {
            maps.clone()
                .flat_map(|map| map.iter())
                .filter(|(key, _)| service_of(key).eq_ignore_ascii_case(prefix))
                .map(|(_, count)| *count as f64)
                .sum()
        };
        let mut by_call: BTreeMap<String, f64> = BTreeMap::new();
        for (key, count) in maps.clone().flat_map(|map| map.iter()) {
            *by_call.entry(key.clone()).or_default() += *count as f64;
        }
        for value in by_call.values_mut() {
            *value = mean(*value, n);
        }
        let dynamodb = service_sum("dynamodb");
        let sqs = service_sum("sqs");
        Self {
            dynamodb: mean(dynamodb, n),
            sqs: mean(sqs, n),
            total: mean(dynamodb + sqs, n),
            max: maps
                .clone()
                .map(|map| {
                    map.iter()
                        .filter(|(key, _)| {
                            let service = service_of(key);
                            service.eq_ignore_ascii_case("dynamodb")
                                || service.eq_ignore_ascii_case("sqs")
                        })
                        .map(|(_, count)| *count)
                        .sum::<u64>()
                })
                .max()
                .unwrap_or_default(),
            dynamodb_max: maps
                .map(|map| {
                    map.iter()
                        .filter(|(key, _)| service_of(key).eq_ignore_ascii_case("dynamodb"))
                        .map(|(_, count)| *count)
                        .sum::<u64>()
                })
                .max()
                .unwrap_or_default(),
            by_call,
        }
    }
}

/// `dynamodb` of `dynamodb:PutItem`.
fn service_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(service, _)| service)
}

/// For concurrent duplicates: how many of each event's copies changed the CRM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Copies fired at once per event.
    pub copies: usize,
    /// Copies that changed the CRM, over all events.
    pub total: usize,
    /// Events applied by exactly one copy.
    pub exactly_once: usize,
    /// Events applied by more than one copy (a duplicate opportunity or update).
    pub more_than_once: usize,
    /// Events no copy applied.
    pub none: usize,
}

impl Applied {
    fn of(samples: &[EventSample], copies: usize) -> Self {
        let mut applied = Self {
            copies,
            ..Self::default()
        };
        for sample in samples {
            let n = sample.applied();
            applied.total += n;
            match n {
                0 => applied.none += 1,
                1 => applied.exactly_once += 1,
                _ => applied.more_than_once += 1,
            }
        }
        applied
    }
}

/// The summary of one kind of event.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindReport {
    /// `new`, `updated`, `duplicate`, `echo`, `concurrent_duplicate`.
    pub kind: String,
    /// Events measured.
    pub events: usize,
    /// Handler calls made (events × copies).
    pub handler_calls: usize,
    /// Time spent in the handler, all events.
    pub busy_ms: f64,
    /// Events per second of handler time (one invocation at a time; for concurrent
    /// duplicates, one group of copies at a time).
    pub events_per_sec: f64,
    /// Per-event wall time of the handler (all copies, for concurrent duplicates).
    pub latency_ms: LatencyMs,
    /// Handler answers (`status`, or the error `code`) → count.
    pub outcomes: BTreeMap<String, usize>,
    /// Partner Center referrals API requests per event.
    pub partner_center_per_event: ServiceCalls,
    /// CRM API requests per event.
    pub crm_per_event: ServiceCalls,
    /// Token requests per event (Entra ID, Salesforce OAuth).
    pub token_calls_per_event: Spread,
    /// Partner Center + CRM requests per event.
    pub pc_crm_per_event: Spread,
    /// Every external request per event (Partner Center, CRM, tokens, other).
    pub external_per_event: Spread,
    /// Store port calls per event (the counting decorator): DynamoDB and SQS.
    pub store_calls_per_event: AwsCalls,
    /// AWS API requests per event on the wire (SDK interceptor, retries included).
    pub aws_requests_per_event: AwsCalls,
    /// Process CPU time per event, µs (the handler and its client stack; the sandbox and
    /// moto run in other processes).
    pub cpu_us_per_event: f64,
    /// Of it, the CPU time while at least one port call was in flight, µs per event (the
    /// adapters, the AWS SDK / HTTP client stacks, the kernel's network stack).
    pub io_cpu_us_per_event: f64,
    /// The rest: the CPU time while no port call was in flight, µs per event (the handler's
    /// and the domain's own code).
    pub own_cpu_us_per_event: f64,
    /// Concurrent duplicates only: how often each event was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
}

impl KindReport {
    /// Summarise `samples` of `kind`; `copies` > 1 marks concurrent duplicates.
    pub fn summarize(kind: &str, copies: usize, samples: &[EventSample]) -> Self {
        let n = samples.len();
        let latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        let busy: Duration = latencies.iter().sum();
        let cpu: Duration = samples.iter().map(|s| s.cpu).sum();
        let own_cpu: Duration = samples.iter().map(EventSample::own_cpu).sum();
        let io_cpu: Duration = samples.iter().map(|s| s.cpu - s.own_cpu()).sum();
        let mut outcomes = BTreeMap::new();
        for outcome in samples.iter().flat_map(|s| &s.outcomes) {
            *outcomes.entry(outcome.clone()).or_default() += 1;
        }
        let external = samples.iter().map(|s| s.external);
        Self {
            kind: kind.to_owned(),
            events: n,
            handler_calls: samples.iter().map(|s| s.outcomes.len()).sum(),
            busy_ms: millis(busy),
            events_per_sec: if busy.is_zero() {
                0.0
            } else {
                round3(n as f64 / busy.as_secs_f64())
            },
            latency_ms: LatencyMs::of(&latencies),
            outcomes,
            partner_center_per_event: ServiceCalls::of(
                external.clone().map(|e| e.partner_center),
                n,
            ),
            crm_per_event: ServiceCalls::of(external.clone().map(|e| e.crm), n),
            token_calls_per_event: Spread::of(external.clone().map(|e| e.tokens), n),
            pc_crm_per_event: Spread::of(external.clone().map(|e| e.pc_crm()), n),
            external_per_event: Spread::of(external.map(|e| e.total()), n),
            store_calls_per_event: AwsCalls::of(samples.iter().map(|s| &s.stores), n),
            aws_requests_per_event: AwsCalls::of(samples.iter().map(|s| &s.aws_requests), n),
            cpu_us_per_event: mean(cpu.as_secs_f64() * 1e6, n),
            io_cpu_us_per_event: mean(io_cpu.as_secs_f64() * 1e6, n),
            own_cpu_us_per_event: mean(own_cpu.as_secs_f64() * 1e6, n),
            applied: (copies > 1).then(|| Applied::of(samples, copies)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(ms(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(ms(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(ms(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(ms(1)));
        let few = [ms(3), ms(7), ms(9)];
        assert_eq!(percentile(&few, 50.0), Some(ms(7)));
        assert_eq!(percentile(&few, 99.0), Some(ms(9)));
        assert_eq!(percentile(&[ms(4)], 99.0), Some(ms(4)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn rounding_keeps_three_decimals_and_no_negative_zero() {
        assert_eq!(round3(1.23456), 1.235);
        let empty: f64 = std::iter::empty::<f64>().sum();
        assert!(round3(empty).is_sign_positive());
        assert_eq!(serde_json::to_string(&round3(-0.0)).expect("JSON"), "0.0");
        assert_eq!(round3(f64::NAN), 0.0);
    }

    #[test]
    fn latency_is_summarised_in_milliseconds_whatever_the_order() {
        let values = [ms(9), ms(1), Duration::from_micros(4_500), ms(2)];
        let latency = LatencyMs::of(&values);
        assert_eq!(latency.p50, 2.0);
        assert_eq!(latency.p99, 9.0);
        assert_eq!(latency.max, 9.0);
        assert_eq!(latency.mean, 4.125);
        assert_eq!(LatencyMs::of(&[]), LatencyMs::default());
    }

    #[test]
    fn the_request_log_is_classified_by_service_and_method() {
        let log = [
            json!({"seq": 1, "service": "entra", "method": "POST", "path": "/t/oauth2/v2.0/token"}),
            json!({"seq": 2, "service": "partner-center", "method": "GET"}),
            json!({"seq": 3, "service": "dataverse", "method": "GET"}),
            json!({"seq": 4, "service": "dataverse", "method": "POST"}),
            json!({"seq": 5, "service": "dataverse", "method": "PATCH"}),
            json!({"seq": 6, "service": "partner-center", "method": "PATCH"}),
            json!({"seq": 7, "service": "partner-center-webhooks", "method": "GET"}),
            json!({"seq": 8, "service": "salesforce", "method": "GET"}),
        ];
        let calls = ExternalCalls::from_log(&log, "dataverse");
        assert_eq!(
            calls.partner_center,
            ReadWrite {
                reads: 1,
                writes: 1
            }
        );
        assert_eq!(
            calls.crm,
            ReadWrite {
                reads: 1,
                writes: 2
            }
        );
        assert_eq!(calls.tokens, 1);
        assert_eq!(calls.other, 2, "another CRM's request is not this CRM's");
        assert_eq!(calls.pc_crm(), 5);
        assert_eq!(calls.total(), 8);
    }

    fn sample(latency_ms: u64, outcomes: &[&str], pc: (u64, u64), crm: (u64, u64)) -> EventSample {
        EventSample {
            latency: ms(latency_ms),
            cpu: Duration::from_micros(1_500),
            io_cpu: Duration::from_micros(1_100),
            outcomes: outcomes.iter().map(|o| (*o).to_owned()).collect(),
            external: ExternalCalls {
                partner_center: ReadWrite {
                    reads: pc.0,
                    writes: pc.1,
                },
                crm: ReadWrite {
                    reads: crm.0,
                    writes: crm.1,
                },
                tokens: 0,
                other: 0,
            },
            stores: BTreeMap::from([
                ("dynamodb:idempotency.acquire".to_owned(), 1),
                ("dynamodb:audit.append".to_owned(), 2),
            ]),
            aws_requests: BTreeMap::from([("dynamodb:PutItem".to_owned(), 3)]),
        }
    }

    #[test]
    fn a_kind_is_summarised_per_event() {
        let samples = [
            sample(10, &["created"], (1, 1), (2, 3)),
            sample(30, &["created"], (1, 1), (2, 2)),
        ];
        let report = KindReport::summarize("new", 1, &samples);
        assert_eq!(report.events, 2);
        assert_eq!(report.handler_calls, 2);
        assert_eq!(report.busy_ms, 40.0);
        assert_eq!(report.events_per_sec, 50.0);
        assert_eq!(report.latency_ms.p50, 10.0);
        assert_eq!(report.latency_ms.max, 30.0);
        assert_eq!(report.outcomes, BTreeMap::from([("created".to_owned(), 2)]));
        assert_eq!(report.partner_center_per_event.total, 2.0);
        assert_eq!(report.crm_per_event.reads, 2.0);
        assert_eq!(report.crm_per_event.writes, 2.5);
        assert_eq!(report.crm_per_event.max, 5);
        assert_eq!(report.pc_crm_per_event, Spread { mean: 6.5, max: 7 });
        assert_eq!(report.store_calls_per_event.dynamodb, 3.0);
        assert_eq!(report.store_calls_per_event.sqs, 0.0);
        assert_eq!(report.store_calls_per_event.max, 3);
        assert_eq!(
            report.store_calls_per_event.by_call["dynamodb:audit.append"],
            2.0
        );
        assert_eq!(report.aws_requests_per_event.total, 3.0);
        assert_eq!(report.cpu_us_per_event, 1500.0);
        assert_eq!(report.io_cpu_us_per_event, 1100.0);
        assert_eq!(report.own_cpu_us_per_event, 400.0);
        assert_eq!(report.applied, None);
    }

    #[test]
    fn concurrent_duplicates_count_how_often_each_event_applied() {
        let samples = [
            sample(
                5,
                &["created", "in_progress", "in_progress"],
                (1, 1),
                (1, 1),
            ),
            sample(
                5,
                &["created", "created", "duplicate_skipped"],
                (2, 2),
                (2, 2),
            ),
            sample(
                5,
                &["in_progress", "in_progress", "in_progress"],
                (0, 0),
                (0, 0),
            ),
        ];
        let report = KindReport::summarize("concurrent_duplicate", 3, &samples);
        assert_eq!(report.handler_calls, 9);
        assert_eq!(
            report.applied,
            Some(Applied {
                copies: 3,
                total: 3,
                exactly_once: 1,
                more_than_once: 1,
                none: 1,
            })
        );
        assert_eq!(report.outcomes["in_progress"], 5);
    }

    #[test]
    fn own_cpu_is_what_the_port_calls_leave_and_never_negative() {
        let mut samples = [
            sample(10, &["created"], (1, 1), (2, 3)),
            sample(10, &["created"], (1, 1), (2, 3)),
        ];
        samples[1].cpu = Duration::from_micros(900);
        samples[1].io_cpu = Duration::from_micros(1_000);
        assert_eq!(samples[1].own_cpu(), Duration::ZERO);
        let report = KindReport::summarize("new", 1, &samples);
        assert_eq!(report.cpu_us_per_event, 1200.0);
        // (1100 + 900) / 2: a sample's port share is capped at its CPU.
        assert_eq!(report.io_cpu_us_per_event, 1000.0);
        assert_eq!(report.own_cpu_us_per_event, 200.0);
    }

    #[test]
    fn no_samples_make_an_empty_report_not_a_division_by_zero() {
        let report = KindReport::summarize("echo", 1, &[]);
        assert_eq!(report.events, 0);
        assert_eq!(report.events_per_sec, 0.0);
        assert_eq!(report.cpu_us_per_event, 0.0);
        assert_eq!(report.own_cpu_us_per_event, 0.0);
        assert_eq!(report.pc_crm_per_event, Spread::default());
    }
}
