//! The sync core: one delivery (a webhook event or a retry-queue job) in, one [`Outcome`] out,
//! exactly once.
//!
//! Everything here is generic over the port traits and runtime-free: it never reads the clock
//! (the caller passes [`Delivery::now`] and the Lambda deadline) and never spawns.
//!
//! | Item | What |
//! |---|---|
//! | [`handle_partner_center_event`] | Partner Center → CRM, for the `partner-center-events` function |
//! | [`run_retry_job`] | the same sync for a [`RetryJob`] of a Partner Center event, for the retry worker |
//! | [`partner_center_event_key`] | the idempotency key of a Partner Center event |
//! | [`Deps`], [`SyncSettings`], [`ReferralScope`], [`Delivery`] | what a run is given |
//! | [`Outcome`], [`Handled`], [`SyncError`] | how it ended, and its HTTP status |
//!
//! The exactly-once machinery (idempotency key, retry scheduling, failure policy, audit
//! journal) lives in `runner` and is shared with the CRM → Partner Center direction.
//!
//! [`RetryJob`]: crate::ports::RetryJob

mod deps;
mod outcome;
mod runner;
mod to_crm;

pub(crate) use deps::later;
pub use deps::{Delivery, Deps, ReferralCategory, ReferralScope, SyncSettings};
pub use outcome::{Handled, Outcome, SyncError};
pub use to_crm::{handle_partner_center_event, partner_center_event_key, run_retry_job};

#[cfg(test)]
mod tests;
