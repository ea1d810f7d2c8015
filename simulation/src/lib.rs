//! A deterministic simulation of the sync core, in the style of FoundationDB's simulation
//! testing and TigerBeetle's VOPR: one seed drives a simulated Partner Center and CRM, users
//! editing both sides, webhook deliveries (late, reordered, duplicated, dropped), retry jobs,
//! reconciliation, injected faults (5xx, 429, 412, timeouts after a write, crashes between
//! any two port calls) and the interleaving of concurrent syncs. After quiescence the
//! invariants are checked; a failing seed replays exactly.
//!
//! | Module | Holds |
//! |---|---|
//! | [`world`] | the Partner Center and CRM models, the simulated clock |
//! | [`faults`] | [`faults::FaultyPorts`], the fault-injecting decorator over any `Ports` |
//! | [`sim`] | the scheduler, [`sim::run_seed`], the invariants |

mod check;
pub mod exec;
pub mod faults;
pub mod sim;
pub mod world;

pub use sim::{Config, Invariant, Report, UndoneFix, Violation, first_failing, run_seed};
