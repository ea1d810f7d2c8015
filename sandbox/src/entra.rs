//! Microsoft Entra ID token endpoint stand-in (the `login.microsoftonline.com` part the
//! connector uses).
//!
//! # Endpoints
//!
//! | Method | Path | Notes |
//! |---|---|---|
//! | `POST` | `/{tenant}/oauth2/v2.0/token` | v2 endpoint, `scope` parameter (`https://api.partner.microsoft.com/.default`, `<dataverse url>/.default`, OIDC scopes ignored) |
//! | `POST` | `/{tenant}/oauth2/token` | v1 endpoint, `resource` parameter; the response adds `resource`, `expires_on`, `not_before`, and `expires_in` is a **string** (`"3600"`), as in the documented sample |
//!
//! Form-encoded (`application/x-www-form-urlencoded`); client credentials in the body
//! (`client_id` + `client_secret`) or as HTTP Basic. Grants:
//!
//! * `refresh_token` — the Partner Center app ([`PC_CLIENT_ID`]) + secret + a refresh token
//!   → a **delegated** (app + user) token for the user the refresh token belongs to
//!   ([`PC_USER_UPN`] for the built-in [`PC_REFRESH_TOKEN`]), for either Partner Center
//!   audience. A rotated refresh token comes back each time; older ones stay valid until
//!   revoked (as Entra's do). Tenant `common` / `organizations` is accepted for this grant.
//! * `client_credentials` — the Partner Center app → app-only token for either Partner Center
//!   audience; the Dataverse app ([`DATAVERSE_CLIENT_ID`]) with scope
//!   `{base_url}/.default` (or v1 `resource={base_url}`) → app-only token whose audience is
//!   the sandbox base URL (trailing slashes ignored), subject [`DATAVERSE_APP_USER_ID`].
//! * `password` (ROPC, the documented sample) — refused with `AADSTS50076` (MFA required),
//!   which is what Partner Center's MFA enforcement produces.
//!
//! Errors use the Entra body (`error`, `error_description`, `error_codes`, `timestamp`,
//! `trace_id`, `correlation_id`):
//!
//! * wrong tenant, unknown client, wrong or missing secret → `401 invalid_client`
//!   (`AADSTS90002`, `AADSTS700016`, `AADSTS7000215` / `AADSTS7000218`);
//! * revoked refresh token → `400 invalid_grant` with `AADSTS50173: The provided grant has
//!   expired due to it being revoked, a fresh auth token is needed. The user might have changed
//!   or reset their password.` (the "password expired" case partners hit);
//! * unknown / malformed refresh token → `400 invalid_grant` `AADSTS70000` (the real service
//!   does not claim a revocation for a token it never issued);
//! * unknown resource → `400 invalid_resource` (`AADSTS500011`); a client asking for a
//!   resource it has no consent for → `400 invalid_grant` (`AADSTS65001`); client credentials
//!   without `/.default` → `400 invalid_scope` (`AADSTS1002012`); missing parameter →
//!   `400 invalid_request` (`AADSTS900144`); other grants → `400 unsupported_grant_type`.
//!
//! Access tokens live [`crate::SandboxConfig::token_lifetime`] and expire by the sandbox clock
//! ([`crate::state::World::now`]), so `POST /_sandbox/clock {"advance_secs": 3700}` expires them.
//!
//! # Control endpoints (merged through `partner_center::control_routes`)
//!
//! | Method | Path | Notes |
//! |---|---|---|
//! | `POST` | `/_sandbox/entra/revoke-refresh-tokens` | optional body `{"upn": "..."}` (default: every user); simulates a password reset. → `200 {"revoked": n}` |
//! | `POST` | `/_sandbox/entra/refresh-tokens` | optional body `{"upn": "..."}` (default [`PC_USER_UPN`]); issues a fresh refresh token for a Partner Center user (e.g. after a revocation, like a re-consent). → `201 {"refresh_token", "upn", "user_id"}`, `404` for an unknown user |

// Handlers return `Result<_, Response>` (the axum idiom); the error path is a short
// response, so a 128-byte `Err` is fine.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::TokenInfo;
use crate::identities::{
    DATAVERSE_APP_USER_ID, DATAVERSE_CLIENT_ID, DATAVERSE_CLIENT_SECRET, PC_CLIENT_ID,
    PC_CLIENT_SECRET, PC_REFERRALS_AUDIENCE, PC_REFRESH_TOKEN, PC_USER_ID, PC_USER_UPN,
    PC_WEBHOOKS_AUDIENCE, TENANT_ID,
};
use crate::state::{AppState, World};

/// The refresh tokens Entra has issued. Lives inside `partner_center::State` (the only
/// app with a delegated flow is the Partner Center one), so the skeleton's `World` is unchanged.
#[derive(Debug)]
pub struct State {
    refresh_tokens: HashMap<String, RefreshGrant>,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    /// Partner Center user id the grant acts for.
    user_id: String,
    /// App the grant was issued to.
    client_id: String,
    revoked: bool,
}

impl Default for State {
    fn default() -> Self {
        let mut refresh_tokens = HashMap::new();
        refresh_tokens.insert(
            PC_REFRESH_TOKEN.to_owned(),
            RefreshGrant {
                user_id: PC_USER_ID.to_owned(),
                client_id: PC_CLIENT_ID.to_owned(),
                revoked: false,
            },
        );
        Self { refresh_tokens }
    }
}

impl State {
    /// Issues a new refresh token for `user_id` (to the Partner Center app).
    pub fn issue_refresh_token(&mut self, user_id: &str) -> String {
        let token = format!("0.sbx-rt.{}", uuid::Uuid::new_v4().simple());
        self.refresh_tokens.insert(
            token.clone(),
            RefreshGrant {
                user_id: user_id.to_owned(),
                client_id: PC_CLIENT_ID.to_owned(),
                revoked: false,
            },
        );
        token
    }

    /// Revokes every refresh token (of `user_id` only, when given). Returns how many were
    /// still valid.
    pub fn revoke(&mut self, user_id: Option<&str>) -> usize {
        let mut revoked = 0;
        for grant in self.refresh_tokens.values_mut() {
            if !grant.revoked && user_id.is_none_or(|u| grant.user_id.eq_ignore_ascii_case(u)) {
                grant.revoked = true;
                revoked += 1;
            }
        }
        revoked
    }
}

/// Token endpoint routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
}

async fn token_v2(
    state: AxumState<AppState>,
    tenant: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(state, tenant, headers, body, Version::V2).await
}

async fn token_v1(
    state: AxumState<AppState>,
    tenant: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(state, tenant, headers, body, Version::V1).await
}

/// Control routes under `/_sandbox/entra/`.
pub fn control_routes() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/entra/revoke-refresh-tokens", post(revoke))
        .route("/_sandbox/entra/refresh-tokens", post(seed_refresh_token))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// An Entra error response.
#[derive(Debug)]
struct EntraError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl EntraError {
    fn new(status: StatusCode, error: &'static str, code: u32, description: String) -> Self {
        Self {
            status,
            error,
            code,
            description,
        }
    }

    fn bad_request(error: &'static str, code: u32, description: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, description)
    }

    fn invalid_client(code: u32, description: String) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    }

    fn missing(parameter: &str) -> Self {
        Self::bad_request(
            "invalid_request",
            900144,
            format!(
                "AADSTS900144: The request body must contain the following parameter: '{parameter}'."
            ),
        )
    }

    fn into_response(self, now: DateTime<Utc>) -> Response {
        let trace_id = uuid::Uuid::new_v4();
        let correlation_id = uuid::Uuid::new_v4();
        let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
        let description = format!(
            "{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.description
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        no_store(&mut response);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"login.microsoftonline.com\""),
            );
        }
        response
    }
}

fn no_store(response: &mut Response) {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// What a token request resolved to.
#[derive(Debug)]
struct Grant {
    info: TokenInfo,
    refresh_token: Option<String>,
    /// Resource (v1 `resource` echo).
    resource: String,
    /// v2 `scope` echo.
    scope: String,
}

async fn token(
    AxumState(state): AxumState<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    version: Version,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut world = state.world();
    let now = world.now();
    match grant(&state, &mut world, &tenant, &headers, &form, version) {
        Ok(grant) => {
            let lifetime = state.config.token_lifetime.as_secs();
            let expires_at = grant.info.expires_at;
            let access_token = world.tokens.issue(grant.info);
            drop(world);
            let mut body = match version {
                Version::V2 => json!({
                    "token_type": "Bearer",
                    "scope": grant.scope,
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": access_token,
                }),
                Version::V1 => json!({
                    "token_type": "Bearer",
                    "scope": "user_impersonation",
                    // Strings, as in the documented v1 sample (`"expires_in":"3600"`).
                    "expires_in": lifetime.to_string(),
                    "ext_expires_in": lifetime.to_string(),
                    "expires_on": expires_at.timestamp().to_string(),
                    "not_before": now.timestamp().to_string(),
                    "resource": grant.resource,
                    "access_token": access_token,
                }),
            };
            if let (Some(refresh), Some(object)) = (grant.refresh_token, body.as_object_mut()) {
                object.insert("refresh_token".into(), Value::String(refresh));
            }
            let mut response = (StatusCode::OK, Json(body)).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => {
            drop(world);
            error.into_response(now)
        }
    }
}

/// The OpenID Connect scopes Entra accepts next to a resource scope.
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

fn grant(
    state: &AppState,
    world: &mut World,
    tenant: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    version: Version,
) -> Result<Grant, EntraError> {
    let grant_type = form
        .get("grant_type")
        .map(String::as_str)
        .ok_or_else(|| EntraError::missing("grant_type"))?;
    let tenant_ok = tenant.eq_ignore_ascii_case(TENANT_ID)
        || (grant_type == "refresh_token"
            && (tenant.eq_ignore_ascii_case("common")
                || tenant.eq_ignore_ascii_case("organizations")));
    if !tenant_ok {
        return Err(EntraError::invalid_client(
            90002,
            format!(
                "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the \
                 correct tenant ID and are signing into the correct cloud. (The sandbox tenant \
                 is '{TENANT_ID}'; 'common' is accepted only for the refresh_token grant.)"
            ),
        ));
    }
    let (client_id, client_secret) = client_credentials(headers, form);
    let client_id = client_id.ok_or_else(|| EntraError::missing("client_id"))?;
    let expected_secret = if client_id.eq_ignore_ascii_case(PC_CLIENT_ID) {
        PC_CLIENT_SECRET
    } else if client_id.eq_ignore_ascii_case(DATAVERSE_CLIENT_ID) {
        DATAVERSE_CLIENT_SECRET
    } else {
        return Err(EntraError::invalid_client(
            700016,
            format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the \
                 directory '{TENANT_ID}'. This can happen if the application has not been \
                 installed by the administrator of the tenant or consented to by any user in the \
                 tenant. You may have sent your authentication request to the wrong tenant."
            ),
        ));
    };
    match client_secret {
        None => {
            return Err(EntraError::invalid_client(
                7000218,
                "AADSTS7000218: The request body must contain the following parameter: \
                 'client_assertion' or 'client_secret'."
                    .into(),
            ));
        }
        Some(secret) if secret != expected_secret => {
            return Err(EntraError::invalid_client(
                7000215,
                format!(
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent \
                     in the request is the client secret value, not the client secret ID, for a \
                     secret added to app '{client_id}'."
                ),
            ));
        }
        Some(_) => {}
    }
    let is_pc_client = client_id.eq_ignore_ascii_case(PC_CLIENT_ID);
    let expires_at = world.now()
        + chrono::Duration::from_std(state.config.token_lifetime)
            .unwrap_or_else(|_| chrono::Duration::hours(1));

    match grant_type {
        "client_credentials" => {
            let (resource, scope) = requested_resource(form, version, true)?;
            let resource = canonical_resource(state, &resource, tenant)?;
            let allowed = match resource {
                Resource::PartnerCenter(_) => is_pc_client,
                Resource::Dataverse(_) => !is_pc_client,
            };
            if !allowed {
                return Err(no_consent(&client_id, resource.audience()));
            }
            let subject = if is_pc_client {
                PC_CLIENT_ID.to_owned()
            } else {
                DATAVERSE_APP_USER_ID.to_owned()
            };
            let audience = resource.audience().to_owned();
            Ok(Grant {
                info: TokenInfo {
                    audience: audience.clone(),
                    subject,
                    delegated: false,
                    expires_at,
                },
                refresh_token: None,
                resource: audience,
                scope,
            })
        }
        "refresh_token" => {
            let presented = form
                .get("refresh_token")
                .ok_or_else(|| EntraError::missing("refresh_token"))?;
            let pc = &mut world.partner_center;
            let grant = pc.entra.refresh_tokens.get(presented).cloned();
            let Some(grant) = grant else {
                return Err(EntraError::bad_request(
                    "invalid_grant",
                    70000,
                    "AADSTS70000: Provided grant is invalid or malformed.".into(),
                ));
            };
            if grant.revoked {
                return Err(EntraError::bad_request(
                    "invalid_grant",
                    50173,
                    "AADSTS50173: The provided grant has expired due to it being revoked, a \
                     fresh auth token is needed. The user might have changed or reset their \
                     password."
                        .into(),
                ));
            }
            if !grant.client_id.eq_ignore_ascii_case(&client_id) {
                return Err(EntraError::bad_request(
                    "invalid_grant",
                    70000,
                    "AADSTS70000: Provided grant is invalid or malformed: the refresh token was \
                     issued to a different client."
                        .into(),
                ));
            }
            let (resource, scope) = requested_resource(form, version, false)?;
            let resource = canonical_resource(state, &resource, tenant)?;
            if !matches!(resource, Resource::PartnerCenter(_)) {
                return Err(no_consent(&client_id, resource.audience()));
            }
            let refresh_token = pc.entra.issue_refresh_token(&grant.user_id);
            let audience = resource.audience().to_owned();
            Ok(Grant {
                info: TokenInfo {
                    audience: audience.clone(),
                    subject: grant.user_id,
                    delegated: true,
                    expires_at,
                },
                refresh_token: Some(refresh_token),
                resource: audience,
                scope,
            })
        }
        "password" => {
            let (resource, _) = requested_resource(form, version, false)?;
            Err(EntraError::bad_request(
                "invalid_grant",
                50076,
                format!(
                    "AADSTS50076: Due to a configuration change made by your administrator, or \
                     because you moved to a new location, you must use multi-factor \
                     authentication to access '{resource}'."
                ),
            ))
        }
        other => Err(EntraError::bad_request(
            "unsupported_grant_type",
            70003,
            format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        )),
    }
}

fn no_consent(client_id: &str, resource: &str) -> EntraError {
    EntraError::bad_request(
        "invalid_grant",
        65001,
        format!(
            "AADSTS65001: The user or administrator has not consented to use the application \
             with ID '{client_id}' for the resource '{resource}'. (Sandbox: the Partner Center \
             app gets Partner Center tokens, the Dataverse app gets Dataverse tokens.)"
        ),
    )
}

/// `client_id` / `client_secret` from the form, or from HTTP Basic (`client_secret_basic`).
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|b| b.1));
    (id, secret)
}

/// The resource a request asks for, and the scope string to echo.
fn requested_resource(
    form: &HashMap<String, String>,
    version: Version,
    app_only: bool,
) -> Result<(String, String), EntraError> {
    match version {
        Version::V1 => {
            // A v1 refresh without `resource` is for the resource of the original grant; the
            // only delegated resource the connector uses is the referrals API.
            let resource = match form.get("resource") {
                Some(resource) => resource.clone(),
                None if !app_only => PC_REFERRALS_AUDIENCE.to_owned(),
                None => return Err(EntraError::missing("resource")),
            };
            Ok((resource, "user_impersonation".into()))
        }
        Version::V2 => {
            let scope = form
                .get("scope")
                .ok_or_else(|| EntraError::missing("scope"))?;
            let resources: Vec<&str> = scope
                .split_whitespace()
                .filter(|s| !OIDC_SCOPES.iter().any(|o| o.eq_ignore_ascii_case(s)))
                .collect();
            let [resource_scope] = resources.as_slice() else {
                return Err(EntraError::bad_request(
                    "invalid_scope",
                    28000,
                    format!(
                        "AADSTS28000: Provided value for the input parameter scope is not valid \
                         because it must contain exactly one resource scope: '{scope}'."
                    ),
                ));
            };
            let Some((resource, permission)) = resource_scope.rsplit_once('/') else {
                return Err(EntraError::bad_request(
                    "invalid_scope",
                    70011,
                    format!(
                        "AADSTS70011: The provided request must include a 'scope' input \
                         parameter. The provided value for the input parameter 'scope' is not \
                         valid: '{resource_scope}'."
                    ),
                ));
            };
            if app_only && permission != ".default" {
                return Err(EntraError::bad_request(
                    "invalid_scope",
                    1002012,
                    format!(
                        "AADSTS1002012: The provided value for scope {resource_scope} is not \
                         valid. Client credential flows must have a scope value with /.default \
                         suffixed to the resource identifier (application ID URI)."
                    ),
                ));
            }
            Ok((resource.to_owned(), scope.clone()))
        }
    }
}

#[derive(Debug)]
enum Resource {
    PartnerCenter(&'static str),
    Dataverse(String),
}

impl Resource {
    fn audience(&self) -> &str {
        match self {
            Self::PartnerCenter(a) => a,
            Self::Dataverse(a) => a,
        }
    }
}

/// Maps a requested resource to the audience the APIs check (trailing slashes ignored, so
/// `https://org.crm.dynamics.com//.default` works as in the Dataverse docs).
fn canonical_resource(
    state: &AppState,
    resource: &str,
    tenant: &str,
) -> Result<Resource, EntraError> {
    let wanted = resource.trim_end_matches('/');
    for audience in [PC_REFERRALS_AUDIENCE, PC_WEBHOOKS_AUDIENCE] {
        if wanted.eq_ignore_ascii_case(audience) {
            return Ok(Resource::PartnerCenter(audience));
        }
    }
    let dataverse = state.config.base_url.trim_end_matches('/');
    if !dataverse.is_empty() && wanted.eq_ignore_ascii_case(dataverse) {
        return Ok(Resource::Dataverse(dataverse.to_owned()));
    }
    Err(EntraError::bad_request(
        "invalid_resource",
        500011,
        format!(
            "AADSTS500011: The resource principal named {resource} was not found in the tenant \
             named {tenant}. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You might \
             have sent your authentication request to the wrong tenant. (Sandbox resources: \
             {PC_REFERRALS_AUDIENCE}, {PC_WEBHOOKS_AUDIENCE}, {dataverse}.)"
        ),
    ))
}

#[derive(Debug, Default, Deserialize)]
struct UserSelector {
    #[serde(default)]
    upn: Option<String>,
}

fn selector(body: &Bytes) -> Result<UserSelector, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(UserSelector::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("invalid body: {e}") })),
        )
            .into_response()
    })
}

/// `POST /_sandbox/entra/revoke-refresh-tokens` — a password reset: every refresh token (of
/// one user when `upn` is given) stops working with `AADSTS50173`. Access tokens already
/// issued stay valid until they expire, as with Entra.
async fn revoke(AxumState(state): AxumState<AppState>, body: Bytes) -> Response {
    let selector = match selector(&body) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let mut world = state.world();
    let pc = &mut world.partner_center;
    let user_id = match &selector.upn {
        None => None,
        Some(upn) => match pc.user(upn) {
            Some(user) => Some(user.id.clone()),
            None => return unknown_user(upn),
        },
    };
    let revoked = pc.entra.revoke(user_id.as_deref());
    Json(json!({ "revoked": revoked })).into_response()
}

/// `POST /_sandbox/entra/refresh-tokens` — a fresh refresh token for a user (as after the user
/// consents again).
async fn seed_refresh_token(AxumState(state): AxumState<AppState>, body: Bytes) -> Response {
    let selector = match selector(&body) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let upn = selector.upn.unwrap_or_else(|| PC_USER_UPN.to_owned());
    let mut world = state.world();
    let pc = &mut world.partner_center;
    let Some(user) = pc.user(&upn).cloned() else {
        return unknown_user(&upn);
    };
    let token = pc.entra.issue_refresh_token(&user.id);
    (
        StatusCode::CREATED,
        Json(json!({ "refresh_token": token, "upn": user.upn, "user_id": user.id })),
    )
        .into_response()
}

fn unknown_user(upn: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": format!("no Partner Center user '{upn}' (create it with PUT /_sandbox/partner-center/users/{{upn}})")
        })),
    )
        .into_response()
}
