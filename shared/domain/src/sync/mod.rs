//! The sync core: one delivery (a webhook event or a retry-queue job) in, one [`Outcome`] out,
//! exactly once.
//!
//! Everything here is generic over the port traits and runtime-free: it never reads the clock
//! (the caller passes [`Delivery::now`] and the Lambda deadline) and never spawns.
//!
//! | Item | What |
//! |---|---|
//! | [`handle_partner_center_event`] | Partner Center → CRM, for the `partner-center-events` function |
//! | [`handle_crm_change`] | CRM → Partner Center, for the `crm-events` function |
//! | [`run_retry_job`] | the same syncs for a [`RetryJob`] (either direction, by its source), for the retry worker |
//! | [`partner_center_event_key`] | the idempotency key of a Partner Center event |
//! | [`CrmChange`], [`dataverse_change_key`], [`salesforce_change_key`] | a CRM change and its idempotency key |
//! | [`Deps`], [`SyncSettings`], [`ReferralScope`], [`Delivery`] | what a run is given |
//! | [`Outcome`], [`Handled`], [`SyncError`] | how it ended, and its HTTP status |
//! | [`RetryPolicy`] | who runs a sync again after a retryable failure (the sync, or the retry worker) |
//! | [`CONFLICT_POLICY`], [`Merge`], [`SharedField`], [`Side`] | the conflict policy: the per-field three-way merge of both directions (docs/conflicts.md#the-policy) |
//!
//! The exactly-once machinery (idempotency key, retry scheduling, failure policy, audit
//! journal) lives in `runner` and is shared with the CRM → Partner Center direction.
//!
//! [`RetryJob`]: crate::ports::RetryJob

mod deps;
mod merge;
mod outcome;
mod retry;
mod runner;
mod to_crm;
mod to_pc;

pub(crate) use deps::later;
pub use deps::{Delivery, Deps, ReferralCategory, ReferralScope, SyncSettings};
pub use merge::{
    CONFLICT_POLICY, FieldConflict, Merge, NOT_AGREED, Resolution, SharedField, Side,
    agreed_fields, conflict_text, field_hashes,
};
pub use outcome::{Handled, Outcome, RetryPolicy, SyncError};
pub use retry::run_retry_job;
pub use to_crm::{handle_partner_center_event, partner_center_event_key};
pub use to_pc::{CrmChange, dataverse_change_key, handle_crm_change, salesforce_change_key};
pub(crate) use to_pc::{
    handle_crm_change_known, is_own_write, is_read_only, refused_by_a_closed_row,
};

#[cfg(test)]
mod tests;
