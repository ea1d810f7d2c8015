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
    }
}
