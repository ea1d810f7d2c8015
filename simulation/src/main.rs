//! `cosell-simulation --seed N [--trace]` replays one seed verbosely;
//! `cosell-simulation --seeds COUNT [--from N]` runs many with a progress line.
//! `--known-defects off` turns the triggers of the known defects off; `--no-reconcile`
//! runs without reconciliation; `--no-concurrent-edits` keeps each deal's users on one side;
//! `--undo-fix-of-defect-4` keys Dataverse changes as before defect 4's fix;
//! `--undo-fix-of-defect-1` hides a record's earlier deliveries from webhook deliveries;
//! `--no-seller-closes` keeps every deal open; `--no-faults` injects none.

use std::time::Instant;

use cosell_simulation::{Config, UndoneFix, run_seed};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut cfg = if args.iter().any(|a| a == "--without-known-defects") {
        Config::without_known_defects()
    } else {
        Config::default()
    };
    if args.iter().any(|a| a == "--no-reconcile") {
        cfg.reconcile = false;
    }
    if args.iter().any(|a| a == "--no-concurrent-edits") {
        cfg.concurrent_edits = false;
    }
    if args.iter().any(|a| a == "--no-seller-closes") {
        cfg.seller_closes = false;
    }
    if args.iter().any(|a| a == "--no-faults") {
        cfg.faults = cosell_simulation::faults::FaultRates::none();
    }
    if args.iter().any(|a| a == "--undo-fix-of-defect-4") {
        cfg.undone_fix = Some(UndoneFix::NilOperationId);
    }
    if args.iter().any(|a| a == "--undo-fix-of-defect-1") {
        cfg.undone_fix = Some(UndoneFix::EarlierDeliveries);
    }
    if let Some(drop) = value("--drop") {
        cfg.drop_webhooks = u32::try_from(drop).unwrap_or(1000);
    }
    if let Some(steps) = value("--steps") {
        cfg.steps = u32::try_from(steps).unwrap_or(u32::MAX);
    }
    if let Some(seed) = value("--seed") {
        cfg.trace = true;
        let report = run_seed(seed, &cfg);
        for line in &report.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} changes, {} API calls, {} faults",
            report.changes, report.api_calls, report.faults
        );
        for violation in &report.violations {
            println!("VIOLATION {:?}: {}", violation.invariant, violation.detail);
        }
        if !report.violations.is_empty() {
            std::process::exit(1);
        }
        return;
    }
    let count = value("--seeds").unwrap_or(1000);
    let from = value("--from").unwrap_or(0);
    let started = Instant::now();
    let mut failing: Vec<(u64, String)> = Vec::new();
    let mut by_invariant = std::collections::BTreeMap::new();
    for (i, seed) in (from..from.saturating_add(count)).enumerate() {
        let report = run_seed(seed, &cfg);
        if let Some(first) = report.violations.first() {
            for v in &report.violations {
                *by_invariant
                    .entry(format!("{:?}", v.invariant))
                    .or_insert(0u64) += 1;
            }
            if failing.len() < 10 {
                failing.push((seed, format!("{:?}: {}", first.invariant, first.detail)));
            }
        }
        let done = i as u64 + 1;
        if done.is_multiple_of(1000) || done == count {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{count} seeds, {:.0} seeds/s, failing seeds by invariant: {by_invariant:?}",
                done as f64 / secs.max(1e-9)
            );
        }
    }
    for (seed, first) in &failing {
        println!(
            "seed {seed}: {first}\n  replay: cargo run -p cosell-simulation --release -- --seed {seed}{}",
            if cfg == Config::without_known_defects() {
                " --without-known-defects"
            } else {
                ""
            }
        );
    }
    if !failing.is_empty() {
        std::process::exit(1);
    }
}
