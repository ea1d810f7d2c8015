//! The function's typed configuration, read once per cold start.
//!
//! The Partner Center, CRM, mapping and store variables are `partner-center-events`' own
//! ([`SyncConfig`]); this module adds:
//!
//! | Variable | Required | Default | Meaning |
//! |---|---|---|---|
//! | `RECONCILE_MAX_ITEMS` | no | `500` | records examined per side and run (a run finishes its page) |
//! | `RECONCILE_PAGE_SIZE` | no | `100` | Partner Center page size (`$top`) |
//! | `RECONCILE_OVERLAP_SECS` | no | `300` | how far before the checkpoint a pass starts (clock skew, late commits) |
//! | `RECONCILE_FIRST_LOOKBACK_SECS` | no | `86400` | how far back the first run reads |
//! | `DAILY_API_BUDGET` | no | `10000` | Partner Center + CRM calls per UTC day |
//! | `WEBHOOK_RESERVED_SHARE` | no | `0.2` | the share only webhook syncs may use; background work stops before it |
//! | `API_CALLS_PER_SYNC` | no | `8` | the calls one sync is assumed to make when admitted |
//! | `DATAVERSE_CONNECTOR_USER_ID` / `SALESFORCE_CONNECTOR_USER_ID` | no | | the connector's CRM user: its own writes are in sync without a read |

use std::time::Duration;

use cosell_domain::budget::BudgetPolicy;
use cosell_domain::reconcile::ReconcileSettings;
use cosell_domain::sync::SyncSettings;
use cosell_runtime::config::CrmConfig;
use cosell_runtime::{ConfigError, Env, SyncConfig};

/// The configuration of `reconcile`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Partner Center, the CRM, the mapping, the stores and the sync options.
    pub sync: SyncConfig,
    /// How much one run does.
    pub reconcile: ReconcileSettings,
    /// The daily API budget.
    pub budget: BudgetPolicy,
    /// The connector's CRM user, when configured.
    pub crm_connector_user_id: Option<String>,
}

impl Config {
    /// The configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration from `lookup` (a variable name → its value); tests pass a map.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let env = Env(lookup);
        let sync = SyncConfig::from_env(&env)?;
        let defaults = ReconcileSettings::default();
        let max_items = env.number(
            "RECONCILE_MAX_ITEMS",
            u64::try_from(defaults.max_items).unwrap_or(u64::MAX),
        )?;
        let page_size = env.number("RECONCILE_PAGE_SIZE", u64::from(defaults.page_size))?;
        let reconcile = ReconcileSettings {
            max_items: usize::try_from(max_items).unwrap_or(usize::MAX),
            page_size: u32::try_from(page_size).map_err(|_| ConfigError::Invalid {
                name: "RECONCILE_PAGE_SIZE",
                reason: "too large".to_owned(),
            })?,
            overlap: Duration::from_secs(
                env.number("RECONCILE_OVERLAP_SECS", defaults.overlap.as_secs())?,
            ),
            first_lookback: Duration::from_secs(env.number(
                "RECONCILE_FIRST_LOOKBACK_SECS",
                defaults.first_lookback.as_secs(),
            )?),
        };
        let budget = BudgetPolicy::from_lookup(|name| env.optional(name)).map_err(|error| {
            ConfigError::Invalid {
                name: "DAILY_API_BUDGET / WEBHOOK_RESERVED_SHARE / API_CALLS_PER_SYNC",
                reason: error.to_string(),
            }
        })?;
        let crm_connector_user_id = match sync.crm {
            CrmConfig::Dataverse { .. } => env.optional("DATAVERSE_CONNECTOR_USER_ID"),
            CrmConfig::Salesforce { .. } => env.optional("SALESFORCE_CONNECTOR_USER_ID"),
        };
        Ok(Self {
            sync,
            reconcile,
            budget,
            crm_connector_user_id,
        })
    }

    /// The sync settings (referral scope, partner organization, connector user).
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            crm_connector_user_id: self.crm_connector_user_id.clone(),
            ..self.sync.sync_settings()
        }
    }
}
