//! `POST /services/oauth2/token` with the OAuth 2.0 JWT bearer grant
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`).
//!
//! The assertion must be RS256-signed with the connected app's key (the public key in
//! `sandbox/certs/salesforce-connected-app.pub.pem`; tests sign with
//! `pki::SALESFORCE_APP_KEY_PEM`) and carry:
//! * `iss` = the consumer key, else `invalid_client_id` / "client identifier invalid";
//! * `aud` = `https://login.salesforce.com`, `https://test.salesforce.com` or the
//!   sandbox's base URL (standing in for My Domain / an Experience Cloud site), else
//!   `invalid_grant` / "audience is invalid";
//! * `exp` in the future by the sandbox clock, else "expired authorization code" (the
//!   real service's wording for an expired assertion), and at most
//!   [`MAX_ASSERTION_LIFETIME_SECS`] ahead, else "invalid assertion". The real maximum is
//!   UNKNOWN ("a few minutes" in secondary sources; the sandbox picks 5 minutes);
//! * `sub` = the username of an active user, else "user hasn't approved this consumer"
//!   (the sandbox treats every active user as pre-authorised by profile).
//!
//! A bad signature, a malformed JWT or another algorithm is "invalid assertion". Success
//! answers `{access_token, scope: "api", instance_url, id, token_type: "Bearer",
//! issued_at}` — no refresh token, as in the real flow. The token's subject is the user
//! id, its audience [`super::TOKEN_AUDIENCE`], its lifetime `SandboxConfig::token_lifetime`.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::TOKEN_AUDIENCE;
use crate::auth::TokenInfo;
use crate::errors;
use crate::faults::Service;
use crate::identities;
use crate::state::AppState;

/// The grant type of the JWT bearer flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Longest accepted assertion lifetime (`exp` − now). UNKNOWN in the official text; 5 min.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Production and sandbox login hosts.
pub const LOGIN_AUDIENCES: [&str; 2] = [
    "https://login.salesforce.com",
    "https://test.salesforce.com",
];

/// The connected app's certificate public key.
const APP_PUBLIC_KEY_PEM: &str = include_str!("../../certs/salesforce-connected-app.pub.pem");

static APP_KEY: LazyLock<Option<DecodingKey>> =
    LazyLock::new(|| DecodingKey::from_rsa_pem(APP_PUBLIC_KEY_PEM.as_bytes()).ok());

pub fn routes() -> Router<AppState> {
    Router::new().route("/services/oauth2/token", post(token))
}

fn oauth_error(error: &str, description: &str) -> Response {
    errors::oauth(
        Service::SalesforceAuth,
        StatusCode::BAD_REQUEST,
        error,
        description,
    )
}

fn invalid_grant(description: &str) -> Response {
    oauth_error("invalid_grant", description)
}

/// Verifies the signature and algorithm only; claims are checked by hand against the
/// sandbox clock.
fn verified_claims(assertion: &str) -> Option<Value> {
    let key = APP_KEY.as_ref()?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(assertion, key, &validation)
        .ok()
        .map(|data| data.claims)
}

async fn token(State(state): State<AppState>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER_GRANT) => {}
        _ => return oauth_error("unsupported_grant_type", "grant type not supported"),
    }
    let Some(claims) = form.get("assertion").and_then(|a| verified_claims(a)) else {
        return invalid_grant("invalid assertion");
    };
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if text("iss") != identities::SALESFORCE_CONSUMER_KEY {
        return oauth_error("invalid_client_id", "client identifier invalid");
    }
    let base_url = state.config.base_url.trim_end_matches('/');
    let audience_ok = |aud: &str| {
        let aud = aud.trim_end_matches('/');
        LOGIN_AUDIENCES.contains(&aud) || aud.eq_ignore_ascii_case(base_url)
    };
    let audience_valid = match claims.get("aud") {
        Some(Value::String(aud)) => audience_ok(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(audience_ok),
        _ => false,
    };
    if !audience_valid {
        return invalid_grant("audience is invalid");
    }
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return invalid_grant("invalid assertion");
    };
    let mut world = state.world();
    let now = world.now();
    if exp <= now.timestamp() {
        return invalid_grant("expired authorization code");
    }
    if exp > now.timestamp() + MAX_ASSERTION_LIFETIME_SECS {
        return invalid_grant("invalid assertion");
    }
    let Some(user_id) = world.salesforce.active_user_by_username(text("sub")) else {
        return invalid_grant("user hasn't approved this consumer");
    };
    let lifetime = chrono::Duration::from_std(state.config.token_lifetime)
        .unwrap_or_else(|_| chrono::Duration::hours(1));
    let access_token = world.tokens.issue(TokenInfo {
        audience: TOKEN_AUDIENCE.to_owned(),
        subject: user_id.clone(),
        delegated: true,
        expires_at: now + lifetime,
    });
    Json(json!({
        "access_token": access_token,
        "scope": "api",
        "instance_url": state.config.base_url,
        "id": format!(
            "{}/id/{}/{user_id}",
            state.config.base_url,
            identities::SALESFORCE_ORG_ID
        ),
        "token_type": "Bearer",
        "issued_at": now.timestamp_millis().to_string(),
    }))
    .into_response()
}
