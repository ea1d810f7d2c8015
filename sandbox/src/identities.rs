//! The sandbox's built-in tenant, apps and users. These are the "embedded defaults"
//! the demo and the tests use; none of them is a secret (nothing here reaches a real
//! service).

/// Entra ID tenant of the sandbox partner.
pub const TENANT_ID: &str = "5a9d9c2e-0000-4000-8000-00000000c05e";

/// Audience of the referrals API (`https://api.partner.microsoft.com`).
pub const PC_REFERRALS_AUDIENCE: &str = "https://api.partner.microsoft.com";
/// Audience of the webhook registration API (`https://api.partnercenter.microsoft.com`).
pub const PC_WEBHOOKS_AUDIENCE: &str = "https://api.partnercenter.microsoft.com";

/// The partner's Entra app used for Partner Center (delegated refresh-token flow) and
/// for the webhook registration API (app-only allowed there).
pub const PC_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
pub const PC_CLIENT_SECRET: &str = "sandbox-partner-center-secret";
/// The refresh token the sandbox starts with, consented by [`PC_USER_UPN`].
pub const PC_REFRESH_TOKEN: &str = "sandbox-refresh-token-referrals-admin";
/// The Partner Center user (Referrals admin) behind the delegated tokens.
pub const PC_USER_UPN: &str = "referrals.admin@partner.sandbox";
pub const PC_USER_ID: &str = "22222222-2222-4222-8222-222222222222";
/// The partner organization that owns referrals created through the API.
pub const PC_ORGANIZATION_ID: &str = "7d23e5ca-19dc-4eaa-aac8-5e6b559f0d1d";
pub const PC_ORGANIZATION_NAME: &str = "Contoso Company";

/// The Entra app + Dataverse application user the connector uses (client credentials).
pub const DATAVERSE_CLIENT_ID: &str = "33333333-3333-4333-8333-333333333333";
pub const DATAVERSE_CLIENT_SECRET: &str = "sandbox-dataverse-secret";
/// `systemuserid` of the connector's application user (webhook `UserId` of its writes).
pub const DATAVERSE_APP_USER_ID: &str = "44444444-4444-4444-8444-444444444444";
/// `systemuserid` of a human seller (the default writer of seeded records).
pub const DATAVERSE_SELLER_USER_ID: &str = "55555555-5555-4555-8555-555555555555";
/// Dataverse organization id and business unit, as carried in webhook bodies.
pub const DATAVERSE_ORGANIZATION_ID: &str = "4ef5b371-e89e-e711-8122-000d3aa2331c";
pub const DATAVERSE_BUSINESS_UNIT_ID: &str = "e2b9dd85-e89e-e711-8122-000d3aa2331c";

/// Salesforce org, connected app and users.
pub const SALESFORCE_ORG_ID: &str = "00D5g000004Sbx1EAC";
pub const SALESFORCE_CONSUMER_KEY: &str = "3MVG9sandboxConsumerKey.cosellsync";
/// Username of the integration user the connector signs in as (JWT `sub`).
pub const SALESFORCE_INTEGRATION_USERNAME: &str = "integration@partner.sandbox";
/// User id of that integration user (`LastModifiedById` of the connector's writes).
/// 18 characters: 15-character id + case-checksum suffix.
pub const SALESFORCE_INTEGRATION_USER_ID: &str = "0055g0000Integ1AQA";
/// Username of a human seller (also allowed to sign in with the JWT bearer flow).
pub const SALESFORCE_SELLER_USERNAME: &str = "seller@partner.sandbox";
/// User id of a human seller (the default writer of seeded records).
pub const SALESFORCE_SELLER_USER_ID: &str = "0055g000Seller1AIA";
