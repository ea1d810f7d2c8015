//! The functions' CloudWatch metrics in Embedded Metric Format (docs/aws.md#embedded-metric-format):
//! counted through the `metrics` facade while an invocation runs (the outcomes here, the calls
//! per service in the adapters), printed to stdout as **one JSON document per invocation** by
//! [`flush`] — CloudWatch Logs turns it into metrics, no metric API call is made.
//!
//! The metrics, their units and the namespace are the domain's catalogue
//! ([`cosell_domain::metrics`]); every document carries the two dimensions `Function` (the
//! function's name) and `Crm` (`dataverse` / `salesforce`), nothing per record.
//!
//! | Call | When |
//! |---|---|
//! | [`start`] | once per cold start (`App::build`, through [`Boot::start_metrics`](crate::Boot::start_metrics)): installs the recorder |
//! | [`outcome`], [`count`] | as the invocation goes |
//! | [`flush`] | at the end of every invocation: the handler latency, the budget as last seen, then the document |
//!
//! Until [`start`] ran (handler tests, the CLI, the benchmark) every call is a no-op.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::Utc;
use cosell_adapters::aws::budget::last_seen;
use cosell_domain::CrmKind;
use cosell_domain::budget::utc_day;
use cosell_domain::metrics::{
    CRM_DIMENSION, FUNCTION_DIMENSION, Kind, Metric, MetricSpec, NAMESPACE, Unit, catalogue,
};
use cosell_domain::sync::Outcome;
use metrics_cloudwatch_embedded::{Builder, Collector};

/// The installed collector and what the budget's percentage is of.
struct Emitter {
    collector: &'static Collector,
    daily_budget: u64,
}

static EMITTER: OnceLock<Emitter> = OnceLock::new();

/// Install the recorder for `function` on `crm` with the daily budget `daily_budget`
/// (`DAILY_API_BUDGET`), once per process; later calls change nothing. A recorder that cannot
/// be installed (another one is) is logged and leaves the metrics off: it never stops the
/// function.
pub fn start(function: &'static str, crm: CrmKind, daily_budget: u64) {
    if EMITTER.get().is_some() {
        return;
    }
    let installed = Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .with_dimension(FUNCTION_DIMENSION, function)
        .with_dimension(CRM_DIMENSION, crm.as_str())
        .init();
    match installed {
        Ok(collector) => {
            catalogue().iter().for_each(describe);
            let _ = EMITTER.set(Emitter {
                collector,
                daily_budget,
            });
        }
        Err(error) => tracing::warn!(%error, "metrics are off: the recorder was not installed"),
    }
}

/// Whether [`start`] installed the recorder.
pub fn started() -> bool {
    EMITTER.get().is_some()
}

/// Give the metric its unit (the document's `Unit`).
fn describe(spec: &MetricSpec) {
    let unit = match spec.unit {
        Unit::Count => metrics::Unit::Count,
        Unit::Milliseconds => metrics::Unit::Milliseconds,
        Unit::Percent => metrics::Unit::Percent,
    };
    match spec.kind {
        Kind::Counter => metrics::describe_counter!(spec.name, unit, spec.counts),
        // Gauges are recorded as one value per invocation that knows them (a histogram of one
        // value): a gauge would repeat a value from an earlier invocation, or day, forever.
        Kind::Gauge | Kind::Histogram => {
            metrics::describe_histogram!(spec.name, unit, spec.counts);
        }
    }
}

/// Count one outcome of the sync core ([`Outcome::metric_name`]).
pub fn outcome(outcome: &Outcome) {
    metrics::counter!(outcome.metric_name()).increment(1);
}

/// Add `n` to a counter of the catalogue.
pub fn count(metric: Metric, n: u64) {
    metrics::counter!(metric.name()).increment(n);
}

/// End the invocation: record its `latency` and the budget as last seen, and print the
/// document (one line on stdout, written at once). A no-op before [`start`].
pub fn flush(latency: Duration) {
    let Some(emitter) = EMITTER.get() else {
        return;
    };
    let mut document = Vec::with_capacity(2048);
    if write_document(emitter, latency, &mut document).is_err() || document.is_empty() {
        return;
    }
    // One `write` of the whole line, so instances sharing a log file never interleave.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&document).and_then(|()| out.flush());
}

fn write_document(emitter: &Emitter, latency: Duration, out: &mut Vec<u8>) -> std::io::Result<()> {
    // Whole milliseconds as f64: an invocation is far shorter than 2^53 ms.
    #[allow(clippy::cast_precision_loss)]
    let millis = latency.as_millis() as f64;
    metrics::histogram!(Metric::HandlerLatency.name()).record(millis);
    if let Some(used) = last_seen::count(utc_day(Utc::now())) {
        #[allow(clippy::cast_precision_loss)]
        let (used, budget) = (used as f64, emitter.daily_budget.max(1) as f64);
        metrics::histogram!(Metric::ApiCallsToday.name()).record(used);
        metrics::histogram!(Metric::ApiBudgetUsedPercent.name())
            .record((used * 100.0 / budget * 100.0).round() / 100.0);
    }
    emitter.collector.flush(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};

    fn documents(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The only test installing the process-wide recorder (the metrics of other tests in this
    /// binary would mix in otherwise): the document's shape, then an invocation without syncs.
    #[test]
    fn one_invocation_prints_one_emf_document_with_the_namespace_dimensions_units_and_counts() {
        start("partner-center-events", CrmKind::Dataverse, 10_000);
        start("crm-events", CrmKind::Salesforce, 1); // a second start changes nothing
        assert!(started());
        let emitter = EMITTER.get().unwrap();
        let crm = cosell_domain::CrmRecordId::try_from("salesforce:006000000000001AAA").unwrap();
        outcome(&Outcome::Created { crm });
        outcome(&Outcome::DuplicateSkipped);
        outcome(&Outcome::DuplicateSkipped);
        count(Metric::Rejected, 1);
        metrics::counter!(Metric::PartnerCenterCalls.name()).increment(2);
        last_seen::record(utc_day(Utc::now()), 8_000);

        let mut out = Vec::new();
        write_document(emitter, Duration::from_millis(42), &mut out).unwrap();
        let docs = documents(&out);
        assert_eq!(docs.len(), 1, "one document per flush: {docs:?}");
        let doc = &docs[0];
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert!(doc["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(directive["Namespace"], "CosellSync");
        assert_eq!(directive["Dimensions"], json!([["Function", "Crm"]]));
        assert_eq!(doc["Function"], "partner-center-events");
        assert_eq!(doc["Crm"], "dataverse");
        assert_eq!(doc["Created"], 1);
        assert_eq!(doc["DuplicateSkipped"], 2);
        assert_eq!(doc["Rejected"], 1);
        assert_eq!(doc["PartnerCenterCalls"], 2);
        assert_eq!(doc["HandlerLatency"], json!([42.0]));
        assert_eq!(doc["ApiCallsToday"], json!([8000.0]));
        assert_eq!(doc["ApiBudgetUsedPercent"], json!([80.0]));
        let units: Vec<(String, String)> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().to_owned(),
                    m["Unit"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (name, unit) in [
            ("Created", "Count"),
            ("DuplicateSkipped", "Count"),
            ("HandlerLatency", "Milliseconds"),
            ("ApiBudgetUsedPercent", "Percent"),
        ] {
            assert!(
                units.contains(&(name.to_owned(), unit.to_owned())),
                "{name} {unit} in {units:?}"
            );
        }
        // Every value the document carries is declared in its directive, and vice versa.
        let declared: Vec<&str> = units.iter().map(|(name, _)| name.as_str()).collect();
        for (key, _) in doc.as_object().unwrap() {
            if !["_aws", "Function", "Crm"].contains(&key.as_str()) {
                assert!(declared.contains(&key.as_str()), "{key} undeclared");
            }
        }
        // No referral, record or contact value anywhere.
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("006000000000001AAA"), "{text}");

        // The next invocation: counters start again from zero and are left out when zero.
        let mut out = Vec::new();
        write_document(emitter, Duration::from_millis(3), &mut out).unwrap();
        let doc = &documents(&out)[0];
        assert_eq!(doc["HandlerLatency"], json!([3.0]));
        assert!(doc.get("Created").is_none(), "{doc}");
    }
}
