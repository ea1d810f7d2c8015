//! The outbound clients, built once per cold start from the configuration: one shared HTTP
//! client, the token providers, the Partner Center and CRM adapters.

use std::sync::Arc;

use cosell_adapters::aws::secrets::SecretWriter;
use cosell_adapters::http::crm::AnyCrm;
use cosell_adapters::http::dataverse::{DataverseConfig, DataverseStore};
use cosell_adapters::http::salesforce::{SalesforceConfig, SalesforceStore};
use cosell_adapters::http::tokens::{
    DEFAULT_SALESFORCE_SESSION_LIFETIME, PARTNER_CENTER_REFERRALS_SCOPE, dataverse_scope,
};
use cosell_adapters::http::{
    EntraClientCredentials, EntraClientCredentialsConfig, EntraRefreshToken,
    EntraRefreshTokenConfig, HttpAdapterError, HttpClientOptions, HttpPartnerCenter,
    SalesforceJwtBearer, SalesforceJwtBearerConfig, build_client,
};
use cosell_domain::mapping::MappingConfig;
use cosell_domain::ports::Ports;

use crate::config::{CrmConfig, PartnerCenterConfig, SyncConfig};

/// The Partner Center and CRM clients of port set `X`.
pub struct Clients<X: Ports> {
    /// The Partner Center referrals API.
    pub partner_center: X::PartnerCenter,
    /// The CRM.
    pub crm: X::Crm,
}

impl<X: Ports> std::fmt::Debug for Clients<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl<X: Ports<PartnerCenter = HttpPartnerCenter, Crm = AnyCrm>> Clients<X> {
    /// One shared HTTP client, the token providers and the Partner Center and CRM adapters.
    /// No request is sent: tokens are fetched on first use.
    pub fn from_config(config: &SyncConfig) -> Result<Self, BuildError> {
        let http = http_client()?;
        Ok(Self {
            partner_center: partner_center(http.clone(), &config.partner_center)?,
            crm: crm(http, &config.crm, &config.mapping)?,
        })
    }
}

/// The HTTP client every adapter of a function shares.
pub fn http_client() -> Result<reqwest::Client, BuildError> {
    Ok(build_client(&HttpClientOptions::default())?)
}

/// The Partner Center referrals adapter, with a delegated token from the refresh token.
pub fn partner_center(
    http: reqwest::Client,
    config: &PartnerCenterConfig,
) -> Result<HttpPartnerCenter, BuildError> {
    let tokens = EntraRefreshToken::new(
        http.clone(),
        EntraRefreshTokenConfig {
            authority: config.entra_authority.clone(),
            tenant: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            refresh_token: config.refresh_token.clone(),
            scope: PARTNER_CENTER_REFERRALS_SCOPE.to_owned(),
            credential_label: Some(
                "the Partner Center refresh token (PC_REFRESH_TOKEN, app PC_CLIENT_ID)".into(),
            ),
            keep_rotated_in: match config.refresh_token_secret.as_deref() {
                Some(arn) => SecretWriter::for_reference("PC_REFRESH_TOKEN", arn)
                    .map_err(|error| HttpAdapterError::Config(error.to_string()))?
                    .map(Arc::new),
                None => None,
            },
        },
    )?;
    Ok(HttpPartnerCenter::new(http, tokens, &config.api_base_url)?)
}

/// The configured CRM adapter.
pub fn crm(
    http: reqwest::Client,
    config: &CrmConfig,
    mapping: &MappingConfig,
) -> Result<AnyCrm, BuildError> {
    Ok(match config {
        CrmConfig::Dataverse {
            url,
            authority,
            tenant_id,
            client_id,
            client_secret,
        } => {
            let tokens = EntraClientCredentials::new(
                http.clone(),
                EntraClientCredentialsConfig {
                    authority: authority.clone(),
                    tenant: tenant_id.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scope: dataverse_scope(url),
                    credential_label: Some(
                        "the Dataverse app secret (DATAVERSE_CLIENT_SECRET, app \
                         DATAVERSE_CLIENT_ID)"
                            .into(),
                    ),
                },
            )?;
            DataverseStore::new(http, tokens, DataverseConfig::new(url, mapping.clone()))?.into()
        }
        CrmConfig::Salesforce {
            login_url,
            consumer_key,
            username,
            private_key_pem,
        } => {
            let tokens = SalesforceJwtBearer::new(
                http.clone(),
                SalesforceJwtBearerConfig {
                    login_url: login_url.clone(),
                    consumer_key: consumer_key.clone(),
                    username: username.clone(),
                    private_key_pem: private_key_pem.clone(),
                    session_lifetime: DEFAULT_SALESFORCE_SESSION_LIFETIME,
                    credential_label: Some(
                        "the Salesforce connected app key (SALESFORCE_PRIVATE_KEY, \
                         SALESFORCE_CONSUMER_KEY, SALESFORCE_USERNAME)"
                            .into(),
                    ),
                },
            )?;
            SalesforceStore::new(http, tokens, SalesforceConfig::new(mapping.clone()))?.into()
        }
    })
}

/// A client (or a function's webhook verifier) could not be built: a configuration problem its message names
/// (an unusable URL, key or certificate bundle).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BuildError(Box<HttpAdapterError>);

impl From<HttpAdapterError> for BuildError {
    fn from(error: HttpAdapterError) -> Self {
        Self(Box::new(error))
    }
}
