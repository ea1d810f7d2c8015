//! Status / substatus rules of a referral PATCH, using the domain crate's transition table
//! (docs/partner-center.md#referral-status-rules), so the sandbox and the connector agree on one
//! reading of it.

use axum::http::StatusCode;
use cosell_domain::TransitionError;
use cosell_domain::status::{ReferralState, ReferralStatus, ReferralSubstatus};
use serde_json::{Map, Value};

/// The state a referral carries; `None` when it has no status (a seeded raw referral).
/// The wire value `None` (documented enum member meaning "not set") counts as absent.
pub fn state_of(referral: &Map<String, Value>) -> Option<ReferralState> {
    let text = |name: &str| {
        member(referral, name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("none"))
    };
    let status = ReferralStatus::parse(text("status")?);
    let substatus = text("substatus").map(ReferralSubstatus::parse);
    Some(ReferralState::new(status, substatus))
}

/// Whether no change at all is accepted any more (Closed, or Won / Lost / Declined / Expired).
pub fn is_terminal(state: &ReferralState) -> bool {
    state.is_terminal()
}

/// The error of any change to a terminal referral. The real status code is UNKNOWN; the
/// sandbox answers `409 Conflict`: the request is well-formed but conflicts with the
/// referral's state ("Deals can't be modified after they move into a terminal state").
pub fn terminal_error(from: &ReferralState, requested: String) -> (StatusCode, String) {
    let error = TransitionError::Terminal {
        from: from.clone(),
        requested,
    };
    (StatusCode::CONFLICT, capitalise(&error.to_string()))
}

/// Checks a status / substatus change. A terminal origin → `409`; a move the table does not
/// allow (e.g. Active → New, Active/Won) → `400` (the request asks for an invalid value; the
/// real code is UNKNOWN).
pub fn check(
    from: Option<&ReferralState>,
    to: Option<&ReferralState>,
) -> Result<(), (StatusCode, String)> {
    match (from, to) {
        (_, None) if from.is_some() => Err((
            StatusCode::BAD_REQUEST,
            "The referral status cannot be removed; status must be one of New, Active, Closed."
                .to_owned(),
        )),
        (None, _) | (_, None) => Ok(()),
        (Some(from), Some(to)) => from.transition(to).map_err(|error| {
            let status = match error {
                TransitionError::Terminal { .. } => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, capitalise(&error.to_string()))
        }),
    }
}

/// Rewrites `status` / `substatus` in their documented spelling (`closed` → `Closed`);
/// undocumented values stay as sent.
pub fn canonicalise(referral: &mut Map<String, Value>) {
    if let Some(Value::String(status)) = referral.get_mut("status") {
        let parsed = ReferralStatus::parse(status);
        if parsed.is_known() {
            *status = parsed.as_str().to_owned();
        }
    }
    if let Some(Value::String(substatus)) = referral.get_mut("substatus") {
        let parsed = ReferralSubstatus::parse(substatus);
        if parsed.is_known() {
            *substatus = parsed.as_str().to_owned();
        }
    }
}

fn member<'a>(referral: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    referral.get(name).or_else(|| {
        referral
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
