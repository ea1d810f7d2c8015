//! `reconcile`: the Lambda function an EventBridge schedule runs (every 15 minutes, say) to
//! catch up on changes whose webhook never arrived. It reads the Partner Center referrals and
//! CRM opportunities changed since its checkpoint and queues a retry job for every record whose
//! version differs from its link ([`cosell_domain::reconcile`]); the retry worker runs them.
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the shared variables of `partner-center-events` plus the reconciliation and budget ones |
//! | [`app`] | [`App`]: the clients and stores built once per cold start |
//! | [`handler`] | [`handler::handle`]: one scheduled event in, one run's summary out |

pub mod app;
pub mod config;
pub mod handler;

pub use app::{App, Deployed, Local};
pub use config::Config;
