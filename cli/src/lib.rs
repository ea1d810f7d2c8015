//! `cosell`: the operator CLI of cosell-sync, as a library (the binary is `src/main.rs`).
//!
//! | Module | Holds |
//! |---|---|
//! | [`demo`] | `cosell demo`: the local walk-through against the sandbox ([`demo::run_demo`]) |
//! | [`context`] | what every operator command shares: configuration from the environment, clients, `--json` output, exit codes |
//! | [`register_webhook`] | `cosell register-webhook`: register / replace the Partner Center webhook, validate it |
//! | [`doctor`] | `cosell doctor`: one line per check, with the exact fix |
//! | [`redrive`] | `cosell redrive`: move the dead-letter queue's retry jobs back, `--dry-run` lists them |
//! | [`audit`] | `cosell audit`: one referral's timeline; `--needs-attention` |
//! | [`reconcile`] | `cosell reconcile`: queue the syncs whose webhook never arrived; `--since` backfills, `--dry-run` lists |
//! | [`status`] | `cosell status`: API calls today against the budget, queue depths, last reconcile |
//! | [`stack`] | `cosell dev`: the deployed topology on this machine (the real function binaries on the sandbox's local Lambda, moto) |
//! | [`soak`] | `cosell soak`: that stack under load and faults, then lost / duplicated / diverged counts |

pub mod audit;
pub mod context;
pub mod demo;
pub mod doctor;
pub mod reconcile;
pub mod redrive;
pub mod register_webhook;
pub mod soak;
pub mod stack;
pub mod status;
