//! [`AnyCrm`]: the configured CRM, one of the closed set [`DataverseStore`] /
//! [`SalesforceStore`], as a single [`CrmStore`] by enum dispatch (no `dyn`), so a handler
//! generic over `CrmStore` is built once for whichever CRM the deployment uses.

use cosell_domain::ids::{CrmKind, CrmRecordId, ReferralId};
use cosell_domain::opportunity::{Account, Contact, CrmOpportunity};
use cosell_domain::ports::{
    ApiRequest, CombinedOperation, CrmStore, FoundCustomer, OpportunityPage, OpportunityQuery,
    OpportunityWrite, PortError, Upserted,
};

use super::dataverse::DataverseStore;
use super::salesforce::SalesforceStore;

/// The configured CRM. Cheap to clone.
#[derive(Debug, Clone)]
pub enum AnyCrm {
    /// Dynamics 365 / Dataverse.
    Dataverse(DataverseStore),
    /// Salesforce.
    Salesforce(SalesforceStore),
}

impl From<DataverseStore> for AnyCrm {
    fn from(store: DataverseStore) -> Self {
        Self::Dataverse(store)
    }
}

impl From<SalesforceStore> for AnyCrm {
    fn from(store: SalesforceStore) -> Self {
        Self::Salesforce(store)
    }
}

impl CrmStore for AnyCrm {
    fn kind(&self) -> CrmKind {
        match self {
            Self::Dataverse(store) => store.kind(),
            Self::Salesforce(store) => store.kind(),
        }
    }

    async fn find_opportunity_by_referral(
        &self,
        referral_id: &ReferralId,
    ) -> Result<Option<CrmOpportunity>, PortError> {
        match self {
            Self::Dataverse(store) => store.find_opportunity_by_referral(referral_id).await,
            Self::Salesforce(store) => store.find_opportunity_by_referral(referral_id).await,
        }
    }

    async fn get_opportunity(&self, id: &CrmRecordId) -> Result<CrmOpportunity, PortError> {
        match self {
            Self::Dataverse(store) => store.get_opportunity(id).await,
            Self::Salesforce(store) => store.get_opportunity(id).await,
        }
    }

    async fn upsert_opportunity(
        &self,
        write: &OpportunityWrite<'_>,
    ) -> Result<Upserted, PortError> {
        match self {
            Self::Dataverse(store) => store.upsert_opportunity(write).await,
            Self::Salesforce(store) => store.upsert_opportunity(write).await,
        }
    }

    async fn find_account(
        &self,
        name: &str,
        postal_code: Option<&str>,
    ) -> Result<Option<CrmRecordId>, PortError> {
        match self {
            Self::Dataverse(store) => store.find_account(name, postal_code).await,
            Self::Salesforce(store) => store.find_account(name, postal_code).await,
        }
    }

    async fn create_account(&self, account: &Account) -> Result<CrmRecordId, PortError> {
        match self {
            Self::Dataverse(store) => store.create_account(account).await,
            Self::Salesforce(store) => store.create_account(account).await,
        }
    }

    async fn find_contact_by_email(&self, email: &str) -> Result<Option<CrmRecordId>, PortError> {
        match self {
            Self::Dataverse(store) => store.find_contact_by_email(email).await,
            Self::Salesforce(store) => store.find_contact_by_email(email).await,
        }
    }

    async fn create_contact(
        &self,
        contact: &Contact,
        account: Option<&CrmRecordId>,
    ) -> Result<CrmRecordId, PortError> {
        match self {
            Self::Dataverse(store) => store.create_contact(contact, account).await,
            Self::Salesforce(store) => store.create_contact(contact, account).await,
        }
    }

    async fn write_audit(&self, opportunity: &CrmRecordId, text: &str) -> Result<(), PortError> {
        match self {
            Self::Dataverse(store) => store.write_audit(opportunity, text).await,
            Self::Salesforce(store) => store.write_audit(opportunity, text).await,
        }
    }

    async fn list_opportunities(
        &self,
        query: &OpportunityQuery,
    ) -> Result<OpportunityPage, PortError> {
        match self {
            Self::Dataverse(store) => store.list_opportunities(query).await,
            Self::Salesforce(store) => store.list_opportunities(query).await,
        }
    }

    async fn find_customer(
        &self,
        account: Option<(&str, Option<&str>)>,
        email: Option<&str>,
    ) -> Result<FoundCustomer, PortError> {
        match self {
            Self::Dataverse(store) => store.find_customer(account, email).await,
            Self::Salesforce(store) => store.find_customer(account, email).await,
        }
    }

    fn combined_request(&self, operation: CombinedOperation) -> Option<ApiRequest> {
        match self {
            Self::Dataverse(store) => store.combined_request(operation),
            Self::Salesforce(store) => store.combined_request(operation),
        }
    }
}
