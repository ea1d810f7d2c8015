//! The simulation over many seeds. The CI tests assert the invariants that hold; each known
//! defect has an ignored test that fails with the first seed finding it
//! (`cargo test -p cosell-simulation -- --ignored`).

use cosell_simulation::{Config, Invariant, Report, first_failing, run_seed};

/// Seeds the CI test runs.
const CI_SEEDS: u64 = 10_000;
/// Steps per seed in the CI test (a debug build runs about 110 seeds/s at this length; the
/// command line runs the default 60 steps).
const CI_STEPS: u32 = 20;
/// Seeds an ignored defect test searches.
const SEARCH_SEEDS: u64 = 20_000;

/// The invariants that hold today, faults, crashes, timeouts and reordering included.
const HOLDING: [Invariant; 3] = [
    Invariant::MissingCounterpart,
    Invariant::AuditWithoutFix,
    Invariant::TooManyCalls,
];

fn replay(report: &Report, flag: &str) -> String {
    let violations: Vec<String> = report
        .violations
        .iter()
        .map(|v| format!("{:?}: {}", v.invariant, v.detail))
        .collect();
    format!(
        "seed {} breaks an invariant:\n  {}\nreplay: cargo run -p cosell-simulation --release -- --seed {}{flag}",
        report.seed,
        violations.join("\n  "),
        report.seed
    )
}

fn assert_holds(cfg: &Config, seeds: std::ops::Range<u64>, invariants: &[Invariant], flag: &str) {
    for seed in seeds {
        let report = run_seed(seed, cfg);
        if report
            .violations
            .iter()
            .any(|v| invariants.contains(&v.invariant))
        {
            panic!("{}", replay(&report, flag));
        }
    }
}

#[test]
fn ten_thousand_seeds_keep_the_invariants_that_hold() {
    let cfg = Config {
        steps: CI_STEPS,
        ..Config::without_known_defects()
    };
    assert_holds(
        &cfg,
        0..CI_SEEDS,
        &HOLDING,
        " --without-known-defects --steps 20",
    );
}

#[test]
fn dropped_webhooks_are_recovered_by_reconciliation() {
    let cfg = Config {
        drop_webhooks: 300,
        ..Config::without_known_defects()
    };
    assert_holds(
        &cfg,
        0..1_000,
        &[Invariant::MissingCounterpart],
        " --without-known-defects --drop 300",
    );
}

#[test]
fn without_reconciliation_a_dropped_webhook_is_a_lost_change() {
    let cfg = Config {
        drop_webhooks: 300,
        reconcile: false,
        ..Config::without_known_defects()
    };
    let found = first_failing(0..200, &cfg, Some(Invariant::MissingCounterpart));
    assert!(
        found.is_some(),
        "the simulation should see the change a dropped webhook loses"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = Config {
        trace: true,
        ..Config::default()
    };
    let a = run_seed(42, &cfg);
    let b = run_seed(42, &cfg);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.api_calls, b.api_calls);
}

fn search(cfg: &Config, invariant: Invariant, flag: &str) {
    if let Some(report) = first_failing(0..SEARCH_SEEDS, cfg, Some(invariant)) {
        panic!("{}", replay(&report, flag));
    }
}

#[test]
#[ignore = "finds defect 1 (partly fixed: a redelivery of a record delivered before now looks for the referral an earlier attempt created; about 3 seeds in 1,000 still end with a second referral, not yet analysed)"]
fn defect_1_no_second_referral_for_an_opportunity() {
    search(&Config::default(), Invariant::DuplicateReferral, "");
}

#[test]
#[ignore = "defect 5 partly fixed (per-field merge, audited conflicts, conditional Dataverse writes): about 1 seed in 4 still diverges, from causes outside the conflict policy: a seller's save between a create's webhook copy and the connector's write-back is hidden from reconcile (the connector wrote last), and unlinked creation races"]
fn defect_5_no_lost_edit_without_an_audited_conflict() {
    search(&Config::default(), Invariant::Diverged, "");
}

#[test]
#[ignore = "finds a new defect: two opportunities carry one referral id"]
fn no_second_opportunity_for_a_referral() {
    search(&Config::default(), Invariant::DuplicateOpportunity, "");
}

#[test]
#[ignore = "finds an unanalysed failure: for about 2 seeds in 10,000 the queues do not drain"]
fn every_seed_quiesces() {
    search(
        &Config::without_known_defects(),
        Invariant::NoQuiescence,
        " --without-known-defects",
    );
}
