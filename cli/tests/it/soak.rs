//! The stack soak at a CI-sized count, for each CRM: the four real function binaries (those
//! `cargo test --workspace` builds for the functions' own tests) on the sandbox's local Lambda,
//! the sandbox and moto; changes in both directions with duplicates and sellers' closes, CRM
//! 503 / 429, Entra 503,
//! access tokens expiring every 20 s and killed instances; then nothing lost, duplicated or diverged. `cosell soak`
//! runs the same at 10,000 changes (figures in the README).

use std::time::Duration;

use cosell_cli::demo::Crm;
use cosell_cli::soak::{self, SoakOptions};
use cosell_cli::stack::{Stack, default_bin_dir};
use cosell_testkit::local_lambda::ScratchDir;

async fn soak(crm: Crm, events: usize, seed: u64) {
    let moto = cosell_testkit::moto::endpoint();
    let bin_dir = default_bin_dir();
    assert!(
        bin_dir.join("retry-worker").is_file() && bin_dir.join("reconcile").is_file(),
        "the function binaries are not in {}: run the whole workspace's tests (scripts/test.sh \
         or cargo test --workspace), which builds them",
        bin_dir.display()
    );
    let scratch = ScratchDir::new("cosell-soak");
    let options = soak::stack_options(crm, bin_dir, scratch.path("logs"), moto);
    let stack = Stack::start(options).await.unwrap();
    let report = soak::run(
        &stack,
        &SoakOptions {
            events,
            seed,
            concurrency: 8,
            faults: true,
            settle_timeout: Duration::from_secs(300),
        },
    )
    .await
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}\n{}\n{}",
            stack.lambda.log_tail("partner-center-events", 20),
            stack.lambda.log_tail("retry-worker", 20)
        )
    });
    soak::print(&report);
    assert!(
        report.passed(),
        "{report:#?}\n{}",
        soak::problem_logs(&stack, &report)
    );
    assert!(
        report.referrals_created > 0
            && report.referrals_updated > 0
            && report.duplicates > 0
            && report.opportunities_synced > 0
            && report.opportunities_closed > 0,
        "every kind of change was sent: {report:#?}"
    );
    assert!(report.deliveries >= events, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dataverse_soak_loses_duplicates_and_diverges_nothing() {
    soak(Crm::Dynamics, 240, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_salesforce_soak_loses_duplicates_and_diverges_nothing() {
    soak(Crm::Salesforce, 120, 8).await;
}
