//! `retry-worker`: the Lambda function (SQS event source with `ReportBatchItemFailures`) that
//! runs the retry jobs of `partner-center-events` and `crm-events` again through the shared
//! sync core ([`run_retry_job`]), exactly once per job.
//!
//! A retryable failure is not queued again as a new message: the job's idempotency key is
//! released, the message is reported as a batch item failure and hidden for an exponential
//! backoff with jitter ([`backoff`]); after the queue's `maxReceiveCount` SQS moves it to the
//! dead-letter queue, from which `cosell redrive` brings it back.
//!
//! | Module | Holds |
//! |---|---|
//! | [`config`] | [`Config`]: the typed configuration from the environment (the variable table) |
//! | [`app`] | [`App`]: the clients, stores and queue calls built once per cold start |
//! | [`backoff`] | [`Backoff`]: the visibility timeout of a failed job; [`Jitter`] sources |
//! | [`queue`] | [`WorkerQueues`]: visibility changes and dead-lettering, on SQS |
//! | [`handler`] | [`handler::handle`]: one batch in, the batch item failures out, one log line per message |
//!
//! [`run_retry_job`]: cosell_domain::sync::run_retry_job

pub mod app;
pub mod backoff;
pub mod config;
pub mod handler;
pub mod queue;

pub use app::App;
pub use backoff::{Backoff, FixedJitter, Jitter, RandomJitter};
pub use config::{Config, WorkerSettings};
pub use handler::{Invocation, handle};
pub use queue::{SqsWorkerQueues, WorkerQueues};
