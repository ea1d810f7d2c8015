//! Access tokens issued by the sandbox's Entra ID and Salesforce token endpoints, and
//! the bearer check every API handler performs.

use std::collections::HashMap;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};

/// Who a token was issued to and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Resource / audience the token is valid for, e.g. `https://api.partner.microsoft.com`,
    /// the Dataverse environment URL, or `salesforce`.
    pub audience: String,
    /// The user or application the token acts as (sandbox user id).
    pub subject: String,
    /// `true` for delegated (app + user) tokens, `false` for app-only tokens.
    pub delegated: bool,
    pub expires_at: DateTime<Utc>,
}

/// Issued tokens by their opaque value.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: HashMap<String, TokenInfo>,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Missing,
    Unknown,
    Expired,
    WrongAudience,
}

impl TokenStore {
    /// Issues a new opaque token.
    pub fn issue(&mut self, info: TokenInfo) -> String {
        let token = format!("sbx.{}", uuid::Uuid::new_v4().simple());
        self.tokens.insert(token.clone(), info);
        token
    }

    /// Checks the `Authorization: Bearer` header against `audience` at time `now`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenInfo, TokenRejection> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(TokenRejection::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenRejection::Missing)?
            .trim();
        let info = self.tokens.get(token).ok_or(TokenRejection::Unknown)?;
        if info.expires_at <= now {
            return Err(TokenRejection::Expired);
        }
        if !info.audience.eq_ignore_ascii_case(audience) {
            return Err(TokenRejection::WrongAudience);
        }
        Ok(info.clone())
    }
}
