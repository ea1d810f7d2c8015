//! What the sync core is given: the six ports, the mapping and the settings ([`Deps`]), and the
//! facts of one delivery ([`Delivery`]).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::outcome::RetryPolicy;
use crate::mapping::MappingConfig;
use crate::ports::Ports;
use crate::referral::{Member, Referral, ReferralQualification, ReferralType};

/// The ports, the mapping and the settings one sync runs with. Built once per cold start in a
/// function's `main` from borrowed adapters; cheap to copy.
///
/// `X` names the six port types ([`Ports`]); `Deps` lends one value of each.
pub struct Deps<'a, X: Ports> {
    /// The Partner Center Referrals API.
    pub partner_center: &'a X::PartnerCenter,
    /// The CRM.
    pub crm: &'a X::Crm,
    /// The idempotency table.
    pub idempotency: &'a X::Idempotency,
    /// The retry queue.
    pub retry_queue: &'a X::RetryQueue,
    /// The audit log.
    pub audit: &'a X::Audit,
    /// The referral ⇄ CRM link table.
    pub links: &'a X::Links,
    /// The field mapping.
    pub mapping: &'a MappingConfig,
    /// The sync settings.
    pub settings: &'a SyncSettings,
}

impl<X: Ports> Clone for Deps<'_, X> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<X: Ports> Copy for Deps<'_, X> {}

impl<X: Ports> fmt::Debug for Deps<'_, X> {
    /// The settings only: the ports are adapters holding clients and credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deps")
            .field("settings", self.settings)
            .finish_non_exhaustive()
    }
}

/// How the sync behaves, per deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// How long a processed delivery is remembered, so a redelivery is skipped (Powertools'
    /// default: 3600 s).
    pub idempotency_ttl: Duration,
    /// Which Partner Center referrals go to the CRM.
    pub referral_scope: ReferralScope,
    /// The partner's own Partner Center organization id (`organizationId` of its referrals).
    /// Tells the partner's referral of an engagement from Microsoft's; without it, the
    /// partner's referral is the one that is linked to a CRM record.
    pub partner_organization_id: Option<String>,
    /// The last retry attempt: a sync that still fails transiently after it needs attention
    /// instead of another retry. 8 attempts wait 30 s, 1, 2, 4, 8 and three times 15 min
    /// (about an hour in all).
    pub max_attempts: u32,
    /// The CRM user the connector writes as (the Dataverse application user's `systemuserid`,
    /// the Salesforce integration user's id). A CRM change made by this user is the connector's
    /// own write coming back and is skipped without any Partner Center call
    /// (docs/dataverse.md#loop-prevention, docs/salesforce.md#loop-prevention). `None`: echoes are
    /// recognised by their fingerprint only.
    pub crm_connector_user_id: Option<String>,
    /// The partner's own sales team, put on every referral created from the CRM (Partner Center
    /// wants at least one member with name, phone and email). `Debug` redacts it.
    pub partner_team: Vec<Member>,
    /// Who runs a sync again after a retryable failure: the sync itself through the retry
    /// queue (the webhook functions, the default) or the caller (the retry worker).
    pub retry_policy: RetryPolicy,
}

impl SyncSettings {
    /// Powertools' default expiry of an idempotency record.
    pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(3600);
    /// The default last retry attempt.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

    /// Whether a CRM change written by `writer` is the connector's own write: `writer` is the
    /// configured [`SyncSettings::crm_connector_user_id`] (GUIDs compared by value, Salesforce
    /// ids in their 15- or 18-character form).
    pub fn is_connector_write(&self, writer: Option<&str>) -> bool {
        let (Some(writer), Some(own)) = (writer, self.crm_connector_user_id.as_deref()) else {
            return false;
        };
        let (writer, own) = (writer.trim(), own.trim());
        if writer.is_empty() || own.is_empty() {
            return false;
        }
        if writer == own {
            return true;
        }
        if let (Ok(a), Ok(b)) = (Uuid::parse_str(writer), Uuid::parse_str(own)) {
            return a == b;
        }
        // A Salesforce id: the 18-character form is the 15-character (case-sensitive) one plus a
        // case checksum, and is itself compared case-insensitively.
        match (writer.len(), own.len()) {
            (18, 18) => writer.eq_ignore_ascii_case(own),
            (18, 15) => writer.get(..15) == Some(own),
            (15, 18) => own.get(..15) == Some(writer),
            _ => false,
        }
    }

    /// Whether `referral` belongs to the partner: `Some(true)` when its `organizationId` is
    /// the configured partner organization (or it carries none), `Some(false)` when it is
    /// another organization's, `None` when no partner organization is configured.
    pub fn is_partners(&self, referral: &Referral) -> Option<bool> {
        let partner = self.partner_organization_id.as_deref()?.trim();
        Some(
            referral
                .organization_id
                .as_deref()
                .is_none_or(|org| org.trim().eq_ignore_ascii_case(partner)),
        )
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            idempotency_ttl: Self::DEFAULT_IDEMPOTENCY_TTL,
            referral_scope: ReferralScope::default(),
            partner_organization_id: None,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            crm_connector_user_id: None,
            partner_team: Vec::new(),
            retry_policy: RetryPolicy::default(),
        }
    }
}

/// Which Partner Center referrals are synced to the CRM: the connector's "Sync Co-sell
/// opportunity" setting (docs/partner-center.md#sync-scope). It decides only whether a referral
/// that is not yet linked gets an opportunity; a linked referral always syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReferralScope {
    /// Co-sell opportunities only ("Sync Co-sell opportunity: yes"); marketplace and qualified
    /// leads stay in Partner Center.
    #[default]
    CoSellOnly,
    /// Leads too ("no"). The connector keeps no CRM leads, so a lead becomes an opportunity.
    All,
}

impl ReferralScope {
    /// Whether this scope syncs `referral`.
    pub fn includes(&self, referral: &Referral) -> bool {
        match self {
            Self::All => true,
            Self::CoSellOnly => ReferralCategory::of(referral) == ReferralCategory::CoSell,
        }
    }
}

/// What kind of referral it is, by `type`, `qualification` and
/// `inviteContext.invitedBy.organizationId` (docs/partner-center.md#referral-category).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReferralCategory {
    /// Independent, Direct, invited by `msft` or nobody.
    MarketplaceLead,
    /// Independent, Sales- or MarketingQualified, invited by `msft`.
    QualifiedLead,
    /// Everything else: shared deals, deals invited by a partner, the partner's own deals.
    CoSell,
}

impl ReferralCategory {
    /// The category of `referral`.
    pub fn of(referral: &Referral) -> Self {
        let inviter = referral
            .invite_context
            .as_ref()
            .and_then(|i| i.invited_by.as_ref())
            .and_then(|by| by.organization_id.as_deref())
            .map(str::trim)
            .filter(|org| !org.is_empty());
        let by_microsoft = inviter.is_some_and(|org| org.eq_ignore_ascii_case("msft"));
        if referral.referral_type != Some(ReferralType::Independent) {
            return Self::CoSell;
        }
        match referral.qualification {
            Some(ReferralQualification::Direct) if by_microsoft || inviter.is_none() => {
                Self::MarketplaceLead
            }
            Some(
                ReferralQualification::SalesQualified | ReferralQualification::MarketingQualified,
            ) if by_microsoft => Self::QualifiedLead,
            _ => Self::CoSell,
        }
    }
}

/// The facts of one delivery (a webhook request or a retry-queue message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The request / message id, carried into the audit log.
    pub correlation_id: Option<String>,
    /// The Lambda deadline: until then the idempotency key is held `INPROGRESS`; after it
    /// another invocation may take the delivery over.
    pub deadline: DateTime<Utc>,
    /// The current instant, read once by the caller (the core never reads the clock).
    pub now: DateTime<Utc>,
}

/// `at + duration`, saturating at the latest representable instant.
pub(crate) fn later(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| at.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
