//! cosell-testkit: what the workspace's integration tests share (a dev-dependency only) — moto
//! for DynamoDB and SQS ([`moto`]), names no other run uses ([`unique`]), and the end-to-end
//! tests' harness for a function's real binary on the sandbox's local Lambda ([`local_lambda`]),
//! and the reading of the CloudWatch metrics documents a function printed ([`emf`]).
//!
//! A missing prerequisite is never skipped silently: the test panics with one message naming
//! the command to run ([`RUN_TEST_SH`]).

use std::sync::atomic::{AtomicU64, Ordering};

pub mod emf;
pub mod local_lambda;
pub mod moto;

/// What to run when a prerequisite is missing.
pub const RUN_TEST_SH: &str = "run scripts/test.sh (it installs moto when missing, starts moto and exports COSELL_MOTO_ENDPOINT, \
                               AWS_ENDPOINT_URL, dummy credentials and AWS_REGION); or start \
                               `python3 scripts/moto_server.py -H 127.0.0.1 -p 5055` yourself \
                               and export COSELL_MOTO_ENDPOINT=http://127.0.0.1:5055";

/// A name no other run and no other call uses: `<prefix>-<pid>-<nanos>-<n>` (letters, digits
/// and hyphens: a valid table and queue name).
pub fn unique(prefix: &str) -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        CALLS.fetch_add(1, Ordering::Relaxed)
    )
}
