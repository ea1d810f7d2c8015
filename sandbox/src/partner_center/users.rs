//! Partner Center users, their roles, and the bearer checks of the two Partner Center APIs.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::auth::{TokenInfo, TokenRejection};
use crate::errors;
use crate::identities::{PC_REFERRALS_AUDIENCE, PC_USER_ID, PC_USER_UPN, PC_WEBHOOKS_AUDIENCE};
use crate::state::World;

/// Can create, update and read referrals.
pub const REFERRAL_ADMIN: &str = "ReferralAdmin";
/// Can read referrals.
pub const REFERRAL_USER: &str = "ReferralUser";

/// A Partner Center user and its roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub upn: String,
    pub roles: Vec<String>,
}

impl User {
    /// [`PC_USER_UPN`], a Referral admin.
    pub fn builtin() -> Self {
        Self {
            id: PC_USER_ID.to_owned(),
            upn: PC_USER_UPN.to_owned(),
            roles: vec![REFERRAL_ADMIN.to_owned()],
        }
    }

    fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The canonical spelling of a role ("Referrals admin", "referral_admin" → `ReferralAdmin`);
/// other roles are kept as given.
pub fn canonical_role(role: &str) -> String {
    let key: String = role
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match key.as_str() {
        "referraladmin" | "referralsadmin" => REFERRAL_ADMIN.to_owned(),
        "referraluser" | "referralsuser" => REFERRAL_USER.to_owned(),
        _ => role.trim().to_owned(),
    }
}

/// What a referrals request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The referrals API's check: a valid delegated token for [`PC_REFERRALS_AUDIENCE`] whose user
/// holds a role allowing `access`.
///
/// An app-only token is refused with `403`: the docs say "This scenario supports
/// authentication with App+User credentials" and "supports only user access"; the real status
/// code is UNKNOWN (401 or 403). 403 is the robust reading: the token is valid, retrying with
/// a fresh one of the same kind cannot help, and a connector must not loop on it.
///
/// A Referral user may read every referral here; the (unverified, non-English) note that
/// Referral users only see referrals whose team includes them is not modelled.
pub fn authorize_referrals(
    world: &World,
    headers: &HeaderMap,
    access: Access,
) -> Result<User, Response> {
    let token = world
        .tokens
        .check(headers, PC_REFERRALS_AUDIENCE, world.now())
        .map_err(|r| unauthorized(r, PC_REFERRALS_AUDIENCE))?;
    if !token.delegated {
        return Err(errors::partner_center(
            StatusCode::FORBIDDEN,
            "The referrals API supports only App+User (delegated) tokens; app-only tokens are \
             not supported. Acquire the token with a refresh token of a user who holds the \
             ReferralAdmin or ReferralUser role.",
        ));
    }
    let Some(user) = world.partner_center.user(&token.subject) else {
        return Err(errors::partner_center(
            StatusCode::FORBIDDEN,
            &format!(
                "The user '{}' is not a Partner Center user of this partner and does not have \
                 the required role: ReferralAdmin or ReferralUser.",
                token.subject
            ),
        ));
    };
    let allowed = match access {
        Access::Read => user.has(REFERRAL_ADMIN) || user.has(REFERRAL_USER),
        Access::Write => user.has(REFERRAL_ADMIN),
    };
    if allowed {
        return Ok(user.clone());
    }
    let message = match access {
        Access::Read => format!(
            "The user '{}' does not have the required role: ReferralAdmin or ReferralUser \
             (current roles: {}).",
            user.upn,
            roles_text(user)
        ),
        Access::Write => format!(
            "The user '{}' does not have the required role: ReferralAdmin. Creating or updating \
             referrals needs the ReferralAdmin role; ReferralUser may only read (current roles: \
             {}).",
            user.upn,
            roles_text(user)
        ),
    };
    Err(errors::partner_center(StatusCode::FORBIDDEN, &message))
}

fn roles_text(user: &User) -> String {
    if user.roles.is_empty() {
        "none".to_owned()
    } else {
        user.roles.join(", ")
    }
}

/// The webhook registration API's check: any valid token (app-only or delegated) for
/// [`PC_WEBHOOKS_AUDIENCE`].
pub fn authorize_webhooks(world: &World, headers: &HeaderMap) -> Result<TokenInfo, Response> {
    world
        .tokens
        .check(headers, PC_WEBHOOKS_AUDIENCE, world.now())
        .map_err(|r| unauthorized(r, PC_WEBHOOKS_AUDIENCE))
}

fn unauthorized(rejection: TokenRejection, audience: &str) -> Response {
    let (error, message) = match rejection {
        TokenRejection::Missing => (
            "invalid_request",
            "Authorization has been denied for this request: no bearer token was sent \
             (Authorization: Bearer <token>)."
                .to_owned(),
        ),
        TokenRejection::Unknown => (
            "invalid_token",
            "Authorization has been denied for this request: the bearer token is not valid."
                .to_owned(),
        ),
        TokenRejection::Expired => (
            "invalid_token",
            "Authorization has been denied for this request: the bearer token has expired."
                .to_owned(),
        ),
        TokenRejection::WrongAudience => (
            "invalid_token",
            format!(
                "Authorization has been denied for this request: the token's audience is not \
                 valid for this API (expected '{audience}')."
            ),
        ),
    };
    let mut response = errors::partner_center(StatusCode::UNAUTHORIZED, &message);
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer error=\"{error}\"")) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
