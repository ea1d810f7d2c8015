//! Error bodies in each service's documented shape.
//!
//! * Partner Center: `{ "statusCode": 429, "message": "..." }` (api-throttling-guidance sample).
//! * Entra ID: `{ "error": "invalid_grant", "error_description": "..." }` (OAuth 2.0).
//! * Dataverse: `{ "error": { "code": "...", "message": "..." } }` (Web API error format).
//! * Salesforce: `[ { "message": "...", "errorCode": "..." } ]` (REST error array).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::faults::Service;

/// An error response shaped as `service` documents it.
pub fn service_error(
    service: Service,
    status: StatusCode,
    code: Option<&str>,
    message: &str,
) -> Response {
    let body = match service {
        Service::PartnerCenter | Service::PartnerCenterWebhooks => json!({
            "statusCode": status.as_u16(),
            "message": message,
        }),
        Service::Entra | Service::SalesforceAuth => json!({
            "error": code.unwrap_or("invalid_request"),
            "error_description": message,
        }),
        Service::Dataverse => json!({
            "error": { "code": code.unwrap_or(""), "message": message }
        }),
        Service::Salesforce => json!([{
            "message": message,
            "errorCode": code.unwrap_or(default_salesforce_code(status)),
        }]),
    };
    (status, Json(body)).into_response()
}

fn default_salesforce_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "INVALID_SESSION_ID",
        StatusCode::FORBIDDEN => "INSUFFICIENT_ACCESS",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::BAD_REQUEST => "JSON_PARSER_ERROR",
        StatusCode::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        _ => "SERVER_UNAVAILABLE",
    }
}

/// Partner Center error.
pub fn partner_center(status: StatusCode, message: &str) -> Response {
    service_error(Service::PartnerCenter, status, None, message)
}

/// Dataverse error.
pub fn dataverse(status: StatusCode, code: &str, message: &str) -> Response {
    service_error(Service::Dataverse, status, Some(code), message)
}

/// Salesforce error.
pub fn salesforce(status: StatusCode, code: &str, message: &str) -> Response {
    service_error(Service::Salesforce, status, Some(code), message)
}

/// OAuth token endpoint error (Entra ID and Salesforce share the RFC 6749 shape).
pub fn oauth(service: Service, status: StatusCode, error: &str, description: &str) -> Response {
    service_error(service, status, Some(error), description)
}
