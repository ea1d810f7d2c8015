//! Reading the CloudWatch Embedded Metric Format documents a function printed (its stdout, where
//! Lambda's log stream is: docs/aws.md#embedded-metric-format), and checking them against the
//! metrics catalogue (`cosell_domain::metrics`).

use std::collections::BTreeMap;

use cosell_domain::metrics::{DIMENSIONS, NAMESPACE, catalogue};
use serde_json::Value;

/// The EMF documents among `output`'s lines: the JSON objects with an `_aws` member (the log
/// lines around them are JSON too, without it).
pub fn documents(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter(|line| line.contains("\"_aws\""))
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(|doc| doc.get("_aws").is_some())
        .collect()
}

/// Each metric's total over `docs`: a number is added, a list of values adds up its values.
pub fn totals(docs: &[Value]) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for doc in docs {
        for name in declared(doc) {
            let value = match &doc[name.as_str()] {
                Value::Array(values) => values.iter().filter_map(Value::as_f64).sum(),
                other => other.as_f64().unwrap_or_default(),
            };
            *totals.entry(name).or_insert(0.0) += value;
        }
    }
    totals
}

/// How many values each metric has over `docs` (a number is one; a list, its length): for a
/// latency, the invocations measured.
pub fn samples(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut samples = BTreeMap::new();
    for doc in docs {
        for name in declared(doc) {
            let n = match &doc[name.as_str()] {
                Value::Array(values) => values.len(),
                _ => 1,
            };
            *samples.entry(name).or_insert(0) += n;
        }
    }
    samples
}

fn declared(doc: &Value) -> Vec<String> {
    doc["_aws"]["CloudWatchMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|directive| directive["Metrics"].as_array().into_iter().flatten())
        .filter_map(|metric| metric["Name"].as_str().map(str::to_owned))
        .collect()
}

/// The totals of a run's documents, after checking them: each of `function` on `crm`
/// ([`assert_shape`]), one latency per document (one document per invocation), and each of
/// `metrics` counted at least once.
pub fn assert_counted(
    docs: &[Value],
    function: &str,
    crm: &str,
    metrics: &[&str],
) -> BTreeMap<String, f64> {
    assert_shape(docs, function, crm);
    assert_eq!(
        samples(docs)["HandlerLatency"],
        docs.len(),
        "one latency per document, one document per invocation"
    );
    let totals = totals(docs);
    for metric in metrics {
        assert!(
            totals.get(*metric).is_some_and(|n| *n >= 1.0),
            "{metric} was not counted: {totals:?}"
        );
    }
    totals
}

/// Panics unless every document is one of `function` on `crm`: the namespace, the one
/// dimension set (`Function`, `Crm`) with those values, a timestamp, and only metrics of the
/// catalogue, each with its unit and a value.
pub fn assert_shape(docs: &[Value], function: &str, crm: &str) {
    assert!(!docs.is_empty(), "no metrics document was printed");
    let units: BTreeMap<&str, &str> = catalogue()
        .iter()
        .map(|spec| (spec.name, spec.unit.as_str()))
        .collect();
    for doc in docs {
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_u64().is_some(), "no Timestamp: {doc}");
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .expect("CloudWatchMetrics");
        assert_eq!(directives.len(), 1, "{doc}");
        let directive = &directives[0];
        assert_eq!(directive["Namespace"], NAMESPACE, "{doc}");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([DIMENSIONS]),
            "{doc}"
        );
        assert_eq!(doc["Function"], function, "{doc}");
        assert_eq!(doc["Crm"], crm, "{doc}");
        for metric in directive["Metrics"].as_array().expect("Metrics") {
            let name = metric["Name"].as_str().expect("Name");
            let unit = units
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in the catalogue: {doc}"));
            assert_eq!(metric["Unit"], *unit, "{doc}");
            assert!(!doc[name].is_null(), "{name} has no value: {doc}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_told_from_log_lines_and_added_up() {
        let output = concat!(
            r#"{"level":"INFO","fields":{"message":"handled"}}"#,
            "\n",
            r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"CosellSync","Dimensions":[["Function","Crm"]],"Metrics":[{"Name":"Created","Unit":"Count"},{"Name":"HandlerLatency","Unit":"Milliseconds"}]}]},"Function":"crm-events","Crm":"salesforce","Created":2,"HandlerLatency":[3.0,4.0]}"#,
            "\n",
            "not json\n",
            r#"{"_aws":{"Timestamp":2,"CloudWatchMetrics":[{"Namespace":"CosellSync","Dimensions":[["Function","Crm"]],"Metrics":[{"Name":"Created","Unit":"Count"}]}]},"Function":"crm-events","Crm":"salesforce","Created":1}"#,
            "\n",
        );
        let docs = documents(output);
        assert_eq!(docs.len(), 2);
        assert_shape(&docs, "crm-events", "salesforce");
        let totals = totals(&docs);
        assert_eq!(totals["Created"], 3.0);
        assert_eq!(totals["HandlerLatency"], 7.0);
        assert_eq!(samples(&docs)["HandlerLatency"], 2);
    }
}
