//! A job from the retry queue, in either direction: a Partner Center job runs the same sync as
//! the event it carries ([`super::to_crm`]), a Dataverse or Salesforce job the CRM → Partner
//! Center sync of the record it names ([`super::to_pc`]). Each runs under a key of its own
//! attempt, so a replayed message changes nothing twice.

use super::deps::{Delivery, Deps};
use super::outcome::{Handled, SyncError};
use super::to_crm::run_partner_center_retry_job;
use super::to_pc::run_crm_retry_job;
use crate::ports::{Ports, RetryJob, RetrySource};

/// Run a job from the retry queue (see the module docs). A job that carries no Partner Center
/// referral event (or no CRM record) needs attention and is not retried.
pub async fn run_retry_job<X: Ports>(
    deps: &Deps<'_, X>,
    job: &RetryJob,
    meta: &Delivery,
) -> Result<Handled, SyncError> {
    match job.source {
        RetrySource::Dataverse | RetrySource::Salesforce => {
            run_crm_retry_job(deps, job, meta).await
        }
        _ => run_partner_center_retry_job(deps, job, meta).await,
    }
}
