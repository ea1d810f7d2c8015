//! cosell-sync's domain: the Partner Center referral and CRM opportunity models, the field
//! mapping both ways, validation, the referral state machine and the port traits the adapters
//! implement.
//!
//! Pure: no AWS SDK, no HTTP client, no async runtime. Wire types ([`referral`], [`webhook`])
//! are tolerant readers; they are converted into validated domain types ([`ids`], [`values`],
//! [`opportunity`]) at the edge by [`mapping`].
//!
//! | Module | Holds |
//! |---|---|
//! | [`ids`] | `ReferralId`, `EngagementId`, `SolutionId`, `DataverseId`, `SalesforceId`, `CrmRecordId`, `ETag` |
//! | [`values`] | `CountryCode`, `CurrencyCode`, `Money`, `DealValue` |
//! | [`referral`] | the Referral wire model, `ReferralPage`, `PatchOp` |
//! | [`webhook`] | `WebhookEvent`, `EventName`, registration and validation-event payloads |
//! | [`status`] | `ReferralStatus`, `ReferralSubstatus`, `ReferralState` and its transition table |
//! | [`opportunity`] | the canonical `Opportunity` and its fingerprint |
//! | [`mapping`] | `MappingConfig` and the mapping functions for Partner Center, Dataverse, Salesforce |
//! | [`taxonomy`] | `SolutionArea`, `SolutionPlay`, `PartnerRole`, the allowed values (`TaxonomyConfig`) |
//! | [`validation`] | `validate_for_partner_center` → `ValidatedOpportunity`, `validate_new_referral` → `NewReferral`, or every problem |
//! | [`ports`] | `PartnerCenter`, `CrmStore`, `IdempotencyStore`, `RetryQueue`, `AuditLog`, `LinkStore`, `PortError` |
//! | [`sync`] | the sync core: `handle_partner_center_event`, `handle_crm_change`, `run_retry_job`, `Outcome`, exactly once |
//! | [`metrics`] | the CloudWatch metrics as plain data: namespace, dimensions, names, units |
//! | [`in_memory`] | in-memory idempotency store, audit log, link store and retry queue |
//! | [`error`] | `ParseError`, `TransitionError`, `ValidationProblem` |
//! | [`serde_helpers`], [`datetime`] | tolerant serde helpers (decimal from number or string, lenient dates) |

pub(crate) mod macros;

pub mod budget;
pub mod datetime;
pub mod error;
pub mod ids;
pub mod in_memory;
pub mod mapping;
pub mod metrics;
pub mod opportunity;
pub mod ports;
pub mod reconcile;
pub mod referral;
pub mod serde_helpers;
pub mod status;
pub mod sync;
pub mod taxonomy;
pub mod validation;
pub mod values;
pub mod webhook;

/// Property-test strategies for parsers of outside input (the adapters' tests use them too).
#[cfg(any(test, feature = "proptest"))]
pub mod proptest_support;

pub use datetime::WireDateTime;
pub use error::ParseError;
pub use ids::{
    CrmKind, CrmRecordId, DataverseId, ETag, EngagementId, ReferralId, SalesforceId, SolutionId,
};
pub use mapping::{
    BodyScope, DataverseLinks, DataverseRecord, MappingConfig, SalesforceRecord, StageNames,
    dataverse_account_body, dataverse_contact_body, dataverse_opportunity_body,
    opportunity_from_dataverse, opportunity_from_salesforce, referral_create_body, referral_patch,
    referral_to_opportunity, salesforce_account_body, salesforce_contact_body,
    salesforce_opportunity_body,
};
pub use opportunity::{
    Account, AssistanceRequest, Contact, CrmOpportunity, LostReason, Opportunity, OpportunityStage,
    RecordRef,
};
pub use ports::{
    AcquireOutcome, AuditEntry, AuditEvent, AuditLog, Claim, Commit, CrmSeen, CrmStore,
    IdempotencyKey, IdempotencyRecord, IdempotencyState, IdempotencyStatus, IdempotencyStore,
    KeyAfter, Link, LinkStore, OpportunityWrite, PartnerCenter, Patched, PortError, Ports,
    ReferralQuery, RetryJob, RetryQueue, RetrySource, Service, SyncDirection, Upserted,
};
pub use referral::{PatchOp, PatchOperation, Referral, ReferralPage};
pub use status::TransitionError;
pub use status::{ReferralState, ReferralStatus, ReferralSubstatus};
pub use taxonomy::{
    PartnerRole, SolutionArea, SolutionPlay, Taxonomy, TaxonomyConfig, TaxonomyField,
    TaxonomyValues,
};
pub use validation::ValidationProblem;
pub use validation::{
    NewReferral, ValidatedOpportunity, validate_for_partner_center, validate_new_referral,
};
pub use values::{CountryCode, CurrencyCode, DealValue, Money};
pub use webhook::{EventName, WebhookEvent, WebhookRegistration};
