//! The data the sync tests share: ids, a co-sell invitation and Microsoft's side of it,
//! webhook events, errors and money.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use crate::ports::{PortError, Service};
use crate::referral::Referral;
use crate::values::{CurrencyCode, Money};
use crate::webhook::WebhookEvent;

pub(super) const PARTNER_ORG: &str = "7d23e5ca-0000-4000-8000-000000000001";
pub(super) const MICROSOFT_ORG: &str = "a5d7fd06-0000-4000-8000-00000000beef";
pub(super) const REFERRAL: &str = "4111fffc-f9ee-4d53-bba6-569135228642";
pub(super) const ENGAGEMENT: &str = "37ef26aa-1d15-4533-9f93-a69bd33ab1e5";
pub(super) const MICROSOFT_REFERRAL: &str = "0a7a9a4e-6c1b-4a4e-9d65-7f1b0c0de001";

pub(super) fn transient(service: Service, retry_after: Option<u64>) -> PortError {
    PortError::Transient {
        service,
        reason: "503 Service Unavailable".into(),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

/// A Microsoft co-sell invitation to the partner, as the sandbox seeds it: New/Pending, Shared,
/// owned by the partner's organization.
pub(super) fn co_sell_referral() -> Referral {
    serde_json::from_value(json!({
        "id": REFERRAL,
        "engagementId": ENGAGEMENT,
        "organizationId": PARTNER_ORG,
        "organizationName": "Fabrikam Partner",
        "name": "Contoso ERP",
        "status": "New",
        "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Shared",
        "direction": "Incoming",
        "target": [ { "type": "SolutionProfile", "id": "SOL-34104-EBB" } ],
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": {
                "addressLine1": "One Microsoft Way",
                "city": "Redmond",
                "state": "WA",
                "postalCode": "98052",
                "country": "US"
            },
            "team": [ {
                "firstName": "Sue",
                "lastName": "Smith",
                "phoneNumber": "1234567890",
                "email": "sue.smith@contoso.com"
            } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": {
            "notes": "Supply chain",
            "dealValue": 50000,
            "currency": "USD",
            "closingDateTime": "2027-06-30T00:00:00Z"
        },
        "inviteContext": { "invitedBy": { "organizationId": "msft", "organizationName": "Microsoft" } }
    }))
    .unwrap()
}

/// Microsoft's own referral of the same engagement, accepted, carrying its CRM id.
pub(super) fn microsoft_referral() -> Referral {
    serde_json::from_value(json!({
        "id": MICROSOFT_REFERRAL,
        "engagementId": ENGAGEMENT,
        "organizationId": MICROSOFT_ORG,
        "organizationName": "Microsoft",
        "externalReferenceId": "7-3FHL2QZ9X",
        "status": "Active",
        "substatus": "Accepted",
        "type": "Shared",
        "direction": "Outgoing"
    }))
    .unwrap()
}

pub(super) fn webhook(name: &str, referral: &str, changed: DateTime<Utc>) -> WebhookEvent {
    serde_json::from_value(json!({
        "EventName": name,
        "ResourceUri": format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral}"),
        "ResourceName": "referral",
        "AuditUri": null,
        "ResourceChangeUtcDate": changed.to_rfc3339()
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------------------------

pub(super) fn usd(amount: i64) -> Money {
    Money::new(
        Decimal::from(amount),
        CurrencyCode::try_from("USD").unwrap(),
    )
}
