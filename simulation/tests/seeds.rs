//! The simulation over many seeds. The CI tests assert every invariant over 10,000 seeds of 20
//! steps and 1,500 of 60, and show that the simulation finds defects 1 and 4 when their fixes
//! are undone. A failing seed prints its replay command.

use cosell_simulation::faults::FaultRates;
use cosell_simulation::{Config, Invariant, Report, UndoneFix, first_failing, run_seed};

/// Seeds the CI test runs.
const CI_SEEDS: u64 = 10_000;
/// Steps per seed in the CI test (a debug build runs about 110 seeds/s at this length; the
/// command line runs the default 60 steps).
const CI_STEPS: u32 = 20;
/// Seeds the defect 1 test runs at 60 steps, with and without the fix (about 1 in 75 finds it
/// without).
const DEFECT_1_SEEDS: u64 = 600;
/// Seeds the defect 5 test runs at 60 steps (a debug build runs about 35 a second).
const DEFECT_5_SEEDS: u64 = 1_500;

/// The invariants that hold, faults, crashes, timeouts, lost create answers, reordering,
/// edits on both sides at once and sellers' closes included: all of them.
const HOLDING: [Invariant; 8] = [
    Invariant::Diverged,
    Invariant::CloseNotKept,
    Invariant::DuplicateReferral,
    Invariant::DuplicateOpportunity,
    Invariant::MissingCounterpart,
    Invariant::AuditWithoutFix,
    Invariant::TooManyCalls,
    Invariant::NoQuiescence,
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
        ..Config::default()
    };
    assert_holds(&cfg, 0..CI_SEEDS, &HOLDING, " --steps 20");
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

/// Defect 4 was fixed before the simulation existed; undoing its fix in the simulation's model
/// of a Dataverse delivery (keyed by a nil `OperationId`, as before the fix) shows the
/// simulation finds it: a seller's later save is skipped as a duplicate of an earlier one and
/// lost. Reconcile repairs most such losses (the record changed after its last sync), so the
/// webhook path is shown alone: no reconcile, no injected faults, no dropped webhooks — where
/// about ten times as many seeds diverge without the fix.
#[test]
fn the_simulation_finds_defect_4_when_its_fix_is_undone() {
    let fixed = Config {
        faults: FaultRates::none(),
        drop_webhooks: 0,
        reconcile: false,
        ..Config::without_known_defects()
    };
    let undone = Config {
        undone_fix: Some(UndoneFix::NilOperationId),
        ..fixed.clone()
    };
    let diverged = |r: &Report| {
        r.violations
            .iter()
            .any(|v| v.invariant == Invariant::Diverged)
    };
    let (mut diverged_fixed, mut diverged_undone, mut found) = (0, 0, Vec::new());
    for seed in 0..300 {
        let with_fix = run_seed(seed, &fixed);
        let without_fix = run_seed(seed, &undone);
        diverged_fixed += u32::from(diverged(&with_fix));
        diverged_undone += u32::from(diverged(&without_fix));
        if with_fix.violations.is_empty() && diverged(&without_fix) {
            found.push(seed);
        }
    }
    assert!(
        found.len() >= 20,
        "seeds that lose a change only with defect 4's fix undone: {found:?}"
    );
    assert!(
        diverged_undone >= 4 * diverged_fixed,
        "undoing the fix should make several times more seeds diverge: {diverged_undone} vs \
         {diverged_fixed} of 300"
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

/// Defect 1: a `POST /referrals` whose answer was lost (a timeout, a killed instance) was
/// looked for only by retry jobs, so the next webhook delivery of the opportunity created a
/// second referral. The fix: the delivery's `Received` entry is durable before the POST, and a
/// delivery that finds an earlier one in the record's audit trail looks for the referral first.
/// With that lookup undone (the audit log answers no entries of the record), seeds end with a
/// second referral; with it, none of the same seeds do.
#[test]
fn the_simulation_finds_defect_1_when_its_fix_is_undone() {
    let fixed = Config::default();
    let undone = Config {
        undone_fix: Some(UndoneFix::EarlierDeliveries),
        ..fixed.clone()
    };
    let duplicated = |r: &Report| {
        r.violations
            .iter()
            .any(|v| v.invariant == Invariant::DuplicateReferral)
    };
    let mut found = Vec::new();
    for seed in 0..DEFECT_1_SEEDS {
        let with_fix = run_seed(seed, &fixed);
        assert!(!duplicated(&with_fix), "{}", replay(&with_fix, ""));
        if duplicated(&run_seed(seed, &undone)) {
            found.push(seed);
        }
    }
    assert!(
        found.len() >= 3,
        "seeds with a second referral only with defect 1's fix undone: {found:?}"
    );
}

/// Defect 5 (no conflict policy: edits of one deal on both sides at once diverged, or one was
/// lost unaudited) was found by the simulation at seed 0, before the policy existed. With the
/// policy and the fixes the simulation found since (README, "Simulation"), no seed diverges:
/// asserted here at the command line's 60 steps, the length at which the last of them showed.
#[test]
fn defect_5_no_seed_diverges_at_sixty_steps() {
    assert_holds(
        &Config::default(),
        0..DEFECT_5_SEEDS,
        &[Invariant::Diverged],
        "",
    );
}

/// Seed 5849 with no faults, no reconcile, no dropped webhooks and one user per deal: a
/// Partner Center → CRM run that read its link before a CRM → Partner Center run saved a newer
/// one merged the record, read again, against the older base: the seller's notes the other run
/// had just sent counted as a change of both sides, and Partner Center's older notes won and
/// were written over them, with nothing after to heal it. The run now reads the link again
/// with the referral.
#[test]
fn a_merge_planned_again_uses_the_link_as_it_is_then() {
    let cfg = Config {
        faults: FaultRates::none(),
        drop_webhooks: 0,
        reconcile: false,
        concurrent_edits: false,
        ..Config::default()
    };
    let report = run_seed(5849, &cfg);
    assert!(
        report.violations.is_empty(),
        "{}",
        replay(
            &report,
            " --no-faults --no-reconcile --drop 0 --no-concurrent-edits"
        )
    );
}

/// Since the simulated Dataverse keeps a won or lost row read-only (as Dataverse does), these
/// seeds broke invariants: a seller's close made while the deal's first sync ran had its
/// write-back refused, reported as the partner's to fix ("reopen it") and never sent to the
/// referral (695 and others: `MissingCounterpart`, `CloseNotKept`); and Partner Center's change
/// to a closed row was retried forever (212, 1443, 2832: `TooManyCalls`). The refused write now
/// runs the sync again, which sends the close; a closed row takes no write and the audit log
/// says so once.
#[test]
fn closes_made_while_a_sync_runs_reach_their_referral_and_nothing_loops() {
    let cfg = Config::default();
    for seed in [695, 792, 805, 847, 869, 1017, 1052, 1136, 212, 1443, 2832] {
        assert_holds(&cfg, seed..seed + 1, &HOLDING, "");
    }
}
