//! The connector's CloudWatch metrics as plain data: the namespace, the dimensions, and every
//! metric's name, unit and what it counts (docs/aws.md#embedded-metric-format). No I/O here:
//! `cosell_runtime::metrics` prints them as Embedded Metric Format documents, and
//! `infra/metrics.json` — compared with [`catalogue_json`] by a test — is the list the template
//! check holds the dashboard and the alarms to.
//!
//! | Group | Metrics |
//! |---|---|
//! | outcomes of the sync core | one per [`Outcome`] variant ([`Outcome::metric_name`], listed in [`OUTCOMES`]) |
//! | calls per service | [`Metric::PartnerCenterCalls`], [`Metric::DataverseCalls`], [`Metric::SalesforceCalls`], [`Metric::EntraCalls`] |
//! | the daily API budget | [`Metric::ApiCallsToday`], [`Metric::ApiBudgetUsedPercent`] |
//! | the edge and the queues | [`Metric::Rejected`], [`Metric::DeliveryFailed`], [`Metric::InternalError`], [`Metric::DeadLettered`], [`Metric::MalformedJob`] |
//! | reconciliation | [`Metric::ReconcileEnqueued`], [`Metric::ReconcileInSync`] |
//! | latency | [`Metric::HandlerLatency`] |
//!
//! Dimensions are the function and the CRM only: never a referral or record id (one metric
//! per value would be created) and never contact data.
//!
//! [`Outcome`]: crate::sync::Outcome
//! [`Outcome::metric_name`]: crate::sync::Outcome::metric_name

use serde_json::{Value, json};

use crate::ports::Service;

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "CosellSync";
/// The dimension naming the function (one of [`FUNCTIONS`]).
pub const FUNCTION_DIMENSION: &str = "Function";
/// The dimension naming the CRM (`dataverse` or `salesforce`).
pub const CRM_DIMENSION: &str = "Crm";
/// The one dimension set every metric is published with.
pub const DIMENSIONS: [&str; 2] = [FUNCTION_DIMENSION, CRM_DIMENSION];
/// The values of [`FUNCTION_DIMENSION`]: the functions' names (their binaries).
pub const FUNCTIONS: [&str; 4] = [
    "partner-center-events",
    "crm-events",
    "retry-worker",
    "reconcile",
];

/// A metric's CloudWatch unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count.
    Count,
    /// Milliseconds.
    Milliseconds,
    /// A percentage (0–100).
    Percent,
}

impl Unit {
    /// The unit's name in CloudWatch.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
            Self::Percent => "Percent",
        }
    }
}

/// How a metric's values are recorded within one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Added up over the invocation (one value per document: the sum).
    Counter,
    /// The latest value (the budget's).
    Gauge,
    /// Every value (a list in the document).
    Histogram,
}

/// One metric: name, unit, kind and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSpec {
    /// The metric name.
    pub name: &'static str,
    /// Its unit.
    pub unit: Unit,
    /// How it is recorded.
    pub kind: Kind,
    /// What it counts (README and docs).
    pub counts: &'static str,
}

const fn counter(name: &'static str, counts: &'static str) -> MetricSpec {
    MetricSpec {
        name,
        unit: Unit::Count,
        kind: Kind::Counter,
        counts,
    }
}

/// One metric per [`Outcome`](crate::sync::Outcome) variant, named by
/// [`Outcome::metric_name`](crate::sync::Outcome::metric_name): deliveries, CRM notifications
/// or retry jobs that ended so.
pub const OUTCOMES: [MetricSpec; 12] = [
    counter(
        "Acknowledged",
        "Partner Center validation events (test-created) acknowledged",
    ),
    counter(
        "Ignored",
        "events not for this connector (unknown event, lead out of scope, closed referral, sync off)",
    ),
    counter(
        "DuplicateSkipped",
        "redeliveries of a delivery already processed, skipped without a call",
    ),
    counter(
        "InProgress",
        "deliveries another invocation is still processing (the sender delivers again)",
    ),
    counter(
        "EchoSkipped",
        "the connector's own write-back coming back as an event, skipped",
    ),
    counter(
        "UnchangedSkipped",
        "changes with no mapped field changed since the last sync, skipped",
    ),
    counter(
        "HeldUntilAccepted",
        "CRM changes held until Microsoft accepts the referral",
    ),
    counter(
        "Created",
        "opportunities created from referrals, or referrals created from opportunities",
    ),
    counter(
        "Updated",
        "opportunities or referrals updated from the other side",
    ),
    counter(
        "RetryEnqueued",
        "syncs put on the retry queue (a service unavailable, or the budget spent)",
    ),
    counter(
        "RetryLater",
        "retry jobs left for SQS to deliver again after a backoff (retry-worker)",
    ),
    counter(
        "NeedsAttention",
        "syncs that failed in a way only a person can fix (audited with the fix)",
    ),
];

/// Every metric besides the outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Requests to the Partner Center API.
    PartnerCenterCalls,
    /// Requests to the Dataverse Web API.
    DataverseCalls,
    /// Requests to Salesforce (REST and its OAuth token endpoint).
    SalesforceCalls,
    /// Token requests to Microsoft Entra ID.
    EntraCalls,
    /// The day's API call counter, as last seen by the invocation.
    ApiCallsToday,
    /// [`Metric::ApiCallsToday`] as a percentage of `DAILY_API_BUDGET`.
    ApiBudgetUsedPercent,
    /// Requests refused before the sync core (method, size, authentication, body).
    Rejected,
    /// Deliveries that could not be taken on or parked (answered 503 / redelivered).
    DeliveryFailed,
    /// Events whose processing panicked (caught, answered as a failure).
    InternalError,
    /// Retry jobs still failing on their last receive: they go to the dead-letter queue.
    DeadLettered,
    /// Retry queue messages that are no retry job (sent to the dead-letter queue as they are).
    MalformedJob,
    /// Syncs queued by a reconciliation run.
    ReconcileEnqueued,
    /// Records a reconciliation run found in sync.
    ReconcileInSync,
    /// How long the handler took.
    HandlerLatency,
}

impl Metric {
    /// Every metric besides the outcomes, in catalogue order.
    pub const ALL: [Self; 14] = [
        Self::PartnerCenterCalls,
        Self::DataverseCalls,
        Self::SalesforceCalls,
        Self::EntraCalls,
        Self::ApiCallsToday,
        Self::ApiBudgetUsedPercent,
        Self::Rejected,
        Self::DeliveryFailed,
        Self::InternalError,
        Self::DeadLettered,
        Self::MalformedJob,
        Self::ReconcileEnqueued,
        Self::ReconcileInSync,
        Self::HandlerLatency,
    ];

    /// The metric's name, unit, kind and description.
    pub fn spec(self) -> MetricSpec {
        match self {
            Self::PartnerCenterCalls => counter(
                "PartnerCenterCalls",
                "requests sent to the Partner Center API",
            ),
            Self::DataverseCalls => {
                counter("DataverseCalls", "requests sent to the Dataverse Web API")
            }
            Self::SalesforceCalls => counter(
                "SalesforceCalls",
                "requests sent to Salesforce (REST API and OAuth token endpoint)",
            ),
            Self::EntraCalls => counter(
                "EntraCalls",
                "token requests sent to Microsoft Entra ID (Partner Center, Dataverse)",
            ),
            Self::ApiCallsToday => MetricSpec {
                name: "ApiCallsToday",
                unit: Unit::Count,
                kind: Kind::Gauge,
                counts: "the UTC day's Partner Center and CRM call counter (the daily API budget's), as last seen",
            },
            Self::ApiBudgetUsedPercent => MetricSpec {
                name: "ApiBudgetUsedPercent",
                unit: Unit::Percent,
                kind: Kind::Gauge,
                counts: "ApiCallsToday as a percentage of DAILY_API_BUDGET",
            },
            Self::Rejected => counter(
                "Rejected",
                "requests refused before any sync: wrong method, too large, unauthenticated, malformed",
            ),
            Self::DeliveryFailed => counter(
                "DeliveryFailed",
                "deliveries not taken on (idempotency store down, retry not schedulable): the sender delivers again",
            ),
            Self::InternalError => counter(
                "InternalError",
                "events whose processing panicked (caught; the sender delivers again)",
            ),
            Self::DeadLettered => counter(
                "DeadLettered",
                "retry jobs failing on their last receive, moved to the dead-letter queue",
            ),
            Self::MalformedJob => counter(
                "MalformedJob",
                "retry queue messages that are no retry job, sent to the dead-letter queue",
            ),
            Self::ReconcileEnqueued => counter(
                "ReconcileEnqueued",
                "syncs a reconciliation run queued (a change whose webhook never arrived)",
            ),
            Self::ReconcileInSync => counter(
                "ReconcileInSync",
                "records a reconciliation run found in sync (nothing queued)",
            ),
            Self::HandlerLatency => MetricSpec {
                name: "HandlerLatency",
                unit: Unit::Milliseconds,
                kind: Kind::Histogram,
                counts: "time from the invocation's start to its answer",
            },
        }
    }

    /// The metric's name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The metric counting requests to `service`, when it is one of the counted services.
    pub fn calls_to(service: &Service) -> Option<Self> {
        match service {
            Service::PartnerCenter | Service::PartnerCenterWebhooks => {
                Some(Self::PartnerCenterCalls)
            }
            Service::Dataverse => Some(Self::DataverseCalls),
            Service::Salesforce => Some(Self::SalesforceCalls),
            Service::Identity => Some(Self::EntraCalls),
            Service::IdempotencyStore
            | Service::RetryQueue
            | Service::AuditLog
            | Service::LinkStore
            | Service::Other(_) => None,
        }
    }
}

/// Every metric: the outcomes, then [`Metric::ALL`].
pub fn catalogue() -> Vec<MetricSpec> {
    OUTCOMES
        .iter()
        .copied()
        .chain(Metric::ALL.iter().map(|metric| metric.spec()))
        .collect()
}

/// The catalogue as `infra/metrics.json` holds it: the namespace, the dimensions, the
/// functions and each metric's name, unit, kind and description.
pub fn catalogue_json() -> Value {
    let metrics: Vec<Value> = catalogue()
        .iter()
        .map(|spec| {
            json!({
                "name": spec.name,
                "unit": spec.unit.as_str(),
                "kind": match spec.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                },
                "counts": spec.counts,
            })
        })
        .collect();
    json!({
        "namespace": NAMESPACE,
        "dimensions": DIMENSIONS,
        "functions": FUNCTIONS,
        "metrics": metrics,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::ids::CrmRecordId;
    use crate::sync::Outcome;

    /// One outcome of each variant. The match below is exhaustive: a new variant does not
    /// compile until it is added here (and so to [`OUTCOMES`], or the test fails).
    fn one_of_each() -> Vec<Outcome> {
        let crm = CrmRecordId::try_from("salesforce:006000000000001AAA").unwrap();
        let all = vec![
            Outcome::Acknowledged,
            Outcome::Ignored { reason: "x".into() },
            Outcome::DuplicateSkipped,
            Outcome::InProgress,
            Outcome::EchoSkipped,
            Outcome::UnchangedSkipped,
            Outcome::HeldUntilAccepted { crm: crm.clone() },
            Outcome::Created { crm: crm.clone() },
            Outcome::Updated { crm },
            Outcome::RetryEnqueued {
                attempt: 1,
                delay: Duration::from_secs(1),
            },
            Outcome::RetryLater {
                retry_after: None,
                reason: "x".into(),
                referral_id: None,
                crm: None,
            },
            Outcome::NeedsAttention {
                code: "x",
                message: "x".into(),
            },
        ];
        for outcome in &all {
            match outcome {
                Outcome::Acknowledged
                | Outcome::Ignored { .. }
                | Outcome::DuplicateSkipped
                | Outcome::InProgress
                | Outcome::EchoSkipped
                | Outcome::UnchangedSkipped
                | Outcome::HeldUntilAccepted { .. }
                | Outcome::Created { .. }
                | Outcome::Updated { .. }
                | Outcome::RetryEnqueued { .. }
                | Outcome::RetryLater { .. }
                | Outcome::NeedsAttention { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_outcome_has_its_own_listed_metric() {
        let listed: BTreeSet<&str> = OUTCOMES.iter().map(|spec| spec.name).collect();
        let named: BTreeSet<&str> = one_of_each().iter().map(Outcome::metric_name).collect();
        assert_eq!(named.len(), one_of_each().len(), "one metric per outcome");
        assert_eq!(named, listed);
    }

    #[test]
    fn metric_names_are_unique_pascal_case_and_metric_all_is_complete() {
        let names: Vec<&str> = catalogue().iter().map(|spec| spec.name).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in names {
            assert!(
                name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "{name}"
            );
        }
        // The match is exhaustive: a new variant does not compile until it is listed here,
        // with its place in `Metric::ALL`.
        for (at, metric) in Metric::ALL.iter().enumerate() {
            let place = match metric {
                Metric::PartnerCenterCalls => 0,
                Metric::DataverseCalls => 1,
                Metric::SalesforceCalls => 2,
                Metric::EntraCalls => 3,
                Metric::ApiCallsToday => 4,
                Metric::ApiBudgetUsedPercent => 5,
                Metric::Rejected => 6,
                Metric::DeliveryFailed => 7,
                Metric::InternalError => 8,
                Metric::DeadLettered => 9,
                Metric::MalformedJob => 10,
                Metric::ReconcileEnqueued => 11,
                Metric::ReconcileInSync => 12,
                Metric::HandlerLatency => 13,
            };
            assert_eq!(place, at, "{metric:?}");
        }
    }

    #[test]
    fn audit_events_name_outcome_metrics() {
        use crate::ports::AuditEvent;
        let listed: BTreeSet<&str> = OUTCOMES.iter().map(|spec| spec.name).collect();
        for event in [
            AuditEvent::DuplicateSkipped,
            AuditEvent::UnchangedSkipped,
            AuditEvent::EchoSkipped,
            AuditEvent::Created,
            AuditEvent::Updated,
            AuditEvent::RetryEnqueued { attempt: 1 },
            AuditEvent::Failed {
                reason: "x".into(),
                fix: "y".into(),
            },
        ] {
            let name = event.metric_name().unwrap();
            assert!(listed.contains(name), "{name}");
        }
        assert_eq!(AuditEvent::Received.metric_name(), None);
    }

    #[test]
    fn calls_are_counted_per_service_and_never_for_the_stores() {
        assert_eq!(
            Metric::calls_to(&Service::PartnerCenter),
            Some(Metric::PartnerCenterCalls)
        );
        assert_eq!(
            Metric::calls_to(&Service::Dataverse),
            Some(Metric::DataverseCalls)
        );
        assert_eq!(
            Metric::calls_to(&Service::Salesforce),
            Some(Metric::SalesforceCalls)
        );
        assert_eq!(
            Metric::calls_to(&Service::Identity),
            Some(Metric::EntraCalls)
        );
        assert_eq!(Metric::calls_to(&Service::IdempotencyStore), None);
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        for spec in catalogue() {
            let row = format!("| `{}` | {} |", spec.name, spec.unit.as_str());
            assert!(readme.contains(&row), "README.md has no row {row}");
        }
    }

    #[test]
    fn the_repository_list_of_metrics_is_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/metrics.json");
        let expected = serde_json::to_string_pretty(&catalogue_json()).unwrap() + "\n";
        let found = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            found == expected,
            "infra/metrics.json differs from cosell_domain::metrics::catalogue_json(); write \
             this to it:\n{expected}"
        );
    }
}
