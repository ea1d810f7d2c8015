//! `cosell`: the operator CLI of cosell-sync.
//!
//! Today: `cosell demo`, a local walk-through against the sandbox with no AWS account and
//! no Partner Center tenant. `register-webhook`, `doctor`, `audit`, `redrive`,
//! `reconcile` and `status` arrive with the functions they operate.

mod demo;

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
    /// Salesforce; nothing leaves this machine.
    Demo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => demo::run().await,
    }
}
