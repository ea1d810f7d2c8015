//! The sync core against in-memory stores and test fakes of Partner Center and the CRM.
//!
//! | File | Holds |
//! |---|---|
//! | `tests/fakes.rs` | the fakes of Partner Center and the CRM, and the [`World`] a test runs in |
//! | `tests/fixtures.rs` | ids, referrals, webhook events, errors and money the tests share |
//! | `tests/to_crm.rs` | Partner Center → CRM: creation, redeliveries, echoes, updates, 412s |
//! | `tests/failures.rs` | Partner Center → CRM when a service or store fails |
//! | `tests/scope.rs` | which referrals and events are synced, ignored or flagged |
//! | `tests/related.rs` | related referrals (Microsoft's side of an engagement) |
//! | `tests/retry_jobs.rs` | retry jobs |
//! | `tests/redeliver.rs` | the retry worker's redeliver mode |
//! | `tests/keys_and_outcomes.rs` | keys, outcomes, categories, settings |
//! | `tests/to_pc.rs` | CRM → Partner Center |
//! | `tests/conflicts.rs` | edits on both sides at once: the conflict policy |
//! | `tests/budget.rs` | the calls a sync makes, settled per service against the daily API budget |

mod fakes;
mod fixtures;

mod budget;
mod conflicts;
mod failures;
mod keys_and_outcomes;
mod redeliver;
mod related;
mod retry_jobs;
mod scope;
mod to_crm;
mod to_pc;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::*;
use crate::ids::{CrmRecordId, ReferralId};
use crate::in_memory::InMemoryLinkStore;
use crate::opportunity::{
    Account, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityStage,
};
use crate::ports::{
    AuditEvent, IdempotencyRecord, IdempotencyStatus, Link, PortError, RetryJob, RetrySource,
    Service,
};
use crate::referral::{PatchOp, Referral};
use crate::status::{ReferralStatus, ReferralSubstatus};
use crate::webhook::WebhookEvent;

use fakes::*;
use fixtures::*;
