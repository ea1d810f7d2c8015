//! (being written)

use axum::Router;

use crate::state::AppState;

/// In-memory state of this service.
#[derive(Debug, Default)]
pub struct State {}

/// API routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}

/// Seeding routes under `/_sandbox/`.
pub fn control_routes() -> Router<AppState> {
    Router::new()
}
