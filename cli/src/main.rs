//! `cosell`: the operator CLI of cosell-sync.
//!
//! Today: `cosell demo`, a local walk-through against the sandbox with no AWS account and
//! no Partner Center tenant. `register-webhook`, `doctor`, `audit`, `redrive`,
//! `reconcile` and `status` arrive with the functions they operate.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate and diagnose a cosell-sync deployment.
#[derive(Debug, Parser)]
#[command(name = "cosell", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local demo: the sandbox stands in for Partner Center, Dataverse and
    /// Salesforce; nothing leaves this machine. Exits 1 if anything is not as expected
    /// (the demo doubles as a smoke test).
    Demo,
    /// Register (or replace) the Partner Center webhook for the four referral events and
    /// `test-created`, read it back and send a validation event.
    RegisterWebhook(cosell_cli::register_webhook::Args),
    /// Check the deployment: configuration, credentials, roles, CRM fields, currency, stages,
    /// webhook registration, table, queues, API budget. Exit 0 healthy, 1 problems, 2 could
    /// not check.
    Doctor(cosell_cli::doctor::Args),
    /// The timeline of one referral (by referral id or CRM record id), or every record that
    /// needs attention.
    Audit(cosell_cli::audit::Args),
    /// Move the retry jobs in the dead-letter queue back to the retry queue (after fixing
    /// their cause); `--dry-run` lists them. Exit 0 moved, 1 some failed, 2 could not check.
    Redrive(cosell_cli::redrive::Args),
    /// Queue a sync for every referral and opportunity whose version differs from its link
    /// (as the scheduled function does); `--since` backfills from a date, `--dry-run` lists.
    Reconcile(cosell_cli::reconcile::Args),
    /// API calls used today against the budget, retry queue and dead-letter queue depth, last
    /// reconcile. Exit 0 healthy, 1 problems, 2 could not read.
    Status(cosell_cli::status::Args),
    /// Run the deployed topology on this machine: the four function binaries on a local Lambda
    /// (Function URLs, the retry queue's event source, the reconcile schedule), the sandbox and
    /// moto. Ctrl-C stops it.
    Dev(cosell_cli::stack::DevArgs),
    /// Soak that stack: thousands of changes in both directions with duplicates, faults, token
    /// expiry and killed instances, then count what was lost, duplicated or diverged. Exit 0
    /// none, 1 some, 2 could not run.
    Soak(cosell_cli::soak::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo => {
            let mut out = std::io::stdout();
            match cosell_cli::demo::run_demo(&mut out).await {
                Ok(_summary) => ExitCode::SUCCESS,
                Err(error) => {
                    let _ = out.flush();
                    eprintln!("\ndemo FAILED: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RegisterWebhook(args) => cosell_cli::register_webhook::main(args).await,
        Command::Doctor(args) => cosell_cli::doctor::main(args).await,
        Command::Audit(args) => cosell_cli::audit::main(args).await,
        Command::Redrive(args) => cosell_cli::redrive::main(args).await,
        Command::Reconcile(args) => cosell_cli::reconcile::main(args).await,
        Command::Status(args) => cosell_cli::status::main(args).await,
        Command::Dev(args) => cosell_cli::stack::dev(args).await,
        Command::Soak(args) => cosell_cli::soak::main(args).await,
    }
}
