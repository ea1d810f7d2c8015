//! The sandbox's in-memory world. One mutex guards everything: the sandbox is a test
//! double, clarity beats throughput, and no handler holds the lock across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use crate::SandboxConfig;
use std::collections::HashSet;

use crate::auth::TokenStore;
use crate::delivery::DeliveryLog;
use crate::faults::{FaultList, RequestLog, Service};
use crate::pki::Pki;
use crate::{dataverse, partner_center, salesforce};

/// Shared handle passed to every axum handler.
pub type AppState = Arc<Sandbox>;

/// One sandbox instance.
#[derive(Debug)]
pub struct Sandbox {
    pub config: SandboxConfig,
    pub pki: Pki,
    /// Client used to deliver webhooks.
    pub http: reqwest::Client,
    world: Mutex<World>,
}

/// Everything a test can observe or reset.
#[derive(Debug, Default)]
pub struct World {
    /// Offset added to the wall clock (`POST /_sandbox/clock`), so tests can expire
    /// tokens or move "today" without sleeping.
    pub clock_offset: ChronoDuration,
    pub tokens: TokenStore,
    pub faults: FaultList,
    pub requests: RequestLog,
    pub deliveries: DeliveryLog,
    /// Services whose webhooks are switched off (`POST /_sandbox/webhooks`).
    pub disabled_webhooks: HashSet<Service>,
    pub partner_center: partner_center::State,
    pub dataverse: dataverse::State,
    pub salesforce: salesforce::State,
}

impl World {
    /// The sandbox's notion of "now" (wall clock + test offset).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> AppState {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            config,
            pki: Pki::embedded(),
            http,
            world: Mutex::new(World::default()),
        })
    }

    /// Locks the world. A poisoned lock (a handler panicked) is recovered: the sandbox
    /// keeps serving so a test reports the real failure, not a cascade.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current sandbox time.
    pub fn now(&self) -> DateTime<Utc> {
        self.world().now()
    }

    /// Forgets every record, token, fault, request and registration.
    pub fn reset(&self) {
        *self.world() = World::default();
    }
}
