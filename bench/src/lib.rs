//! `cosell-bench`: the benchmark of `partner-center-events` and, the other way, `crm-events`
//! ([`crm_events`]).
//!
//! The real [`partner_center_events::handler::handle`] runs on signed Function URL requests
//! against the sandbox (started as a **separate process**, so this process's CPU time is the
//! handler's own work and its client stack) with the real DynamoDB stores and SQS retry queue
//! on moto. Per kind of event — `new`, `updated`, `duplicate`, `echo`, `concurrent_duplicate`
//! — it reports throughput, latency percentiles, Partner Center / CRM / token calls per event
//! (the sandbox's request log), DynamoDB / SQS calls per event (a counting decorator around
//! the store ports, and an SDK interceptor for the requests on the wire), CPU per event (split
//! into the handler's own and the part inside port calls, [`counting::IoGauge`]) and the peak
//! RSS, and checks the targets (see [`report::evaluate`]).
//!
//! ```sh
//! python3 scripts/moto_server.py -H 127.0.0.1 -p 5058 &  # moto, patched (see the script)
//! export COSELL_MOTO_ENDPOINT=http://127.0.0.1:5058
//! cargo run --release -p cosell-bench -- --crm both --events 200
//! ```
//!
//! | Module | Holds |
//! |---|---|
//! | [`scenario`] | [`scenario::run`]: the measurement itself |
//! | [`stats`] | one [`stats::EventSample`] per event, [`stats::KindReport`] per kind (percentiles, means) |
//! | [`report`] | the JSON [`report::Report`], the targets and the human table |
//! | [`counting`] | the counting store decorator, the CPU gauge around the ports and the AWS request interceptor |
//! | [`crm_events`] | the other direction: `crm-events` on the sandbox's own CRM notifications |
//! | [`sandbox`] | the sandbox process and its control API |
//! | [`events`] | signed webhook requests |
//! | [`system`] | process CPU time, peak RSS, the machine line |

pub mod counting;
pub mod crm_events;
pub mod events;
pub mod report;
pub mod sandbox;
pub mod scenario;
pub mod stats;
pub mod system;

pub use report::Report;
pub use scenario::{Options, run};
