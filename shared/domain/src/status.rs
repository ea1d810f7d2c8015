//! Referral status, substatus and the documented transition table
//! (docs/partner-center.md#referral-status-rules).
//!
//! | Status | Allowed status transition | Allowed substatus |
//! |---|---|---|
//! | New | New, Active, Closed | Pending, Received |
//! | Active | Active, Closed | Accepted |
//! | Closed | Closed | Won, Lost, Declined, Expired |
//!
//! Won, lost, declined and expired are terminal: "Deals can't be modified after they move into a
//! terminal state." The wire value `None` means "not set" and is read as `Option::None`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::macros::wire_enum;

wire_enum! {
    /// `status` of a referral. The wire value `None` is read as "not set".
    pub enum ReferralStatus {
        /// A new referral.
        New => "New",
        /// An active (accepted) referral.
        Active => "Active",
        /// A closed referral.
        Closed => "Closed",
    }
}

wire_enum! {
    /// `substatus` of a referral. Undocumented values (the UI's "Close as Error" shows up as
    /// `Error` in CSV exports; its API value is UNKNOWN) are kept in `Other`.
    pub enum ReferralSubstatus {
        /// New, pending.
        Pending => "Pending",
        /// New, received.
        Received => "Received",
        /// Active, accepted.
        Accepted => "Accepted",
        /// Closed, won.
        Won => "Won",
        /// Closed, lost.
        Lost => "Lost",
        /// Closed, declined.
        Declined => "Declined",
        /// Closed, expired (Partner Center expires referrals nobody answered within 14 days).
        Expired => "Expired",
    }
}

impl ReferralSubstatus {
    /// Won, lost, declined or expired.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Won | Self::Lost | Self::Declined | Self::Expired
        )
    }
}

/// A referral's status and substatus together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReferralState {
    /// The status.
    pub status: ReferralStatus,
    /// The substatus; `None` when the referral does not carry one.
    pub substatus: Option<ReferralSubstatus>,
}

impl ReferralState {
    /// A state from its parts.
    pub fn new(status: ReferralStatus, substatus: Option<ReferralSubstatus>) -> Self {
        Self { status, substatus }
    }

    /// New / Pending.
    pub fn new_pending() -> Self {
        Self::new(ReferralStatus::New, Some(ReferralSubstatus::Pending))
    }

    /// Active / Accepted: where partner-created referrals start.
    pub fn accepted() -> Self {
        Self::new(ReferralStatus::Active, Some(ReferralSubstatus::Accepted))
    }

    /// Closed with the given substatus.
    pub fn closed(substatus: ReferralSubstatus) -> Self {
        Self::new(ReferralStatus::Closed, Some(substatus))
    }

    /// Whether no change at all is allowed any more: the status is Closed (every documented
    /// Closed substatus is terminal, and an undocumented one under Closed is treated the same),
    /// or the substatus is won, lost, declined or expired whatever the status says.
    pub fn is_terminal(&self) -> bool {
        self.status == ReferralStatus::Closed
            || self
                .substatus
                .as_ref()
                .is_some_and(ReferralSubstatus::is_terminal)
    }

    /// Check a move to `to` against the documented table.
    ///
    /// Staying in the same state is always allowed (it is not a change). Otherwise a terminal
    /// state rejects everything, the status must be reachable, and the target substatus must
    /// belong to the target status.
    pub fn transition(&self, to: &ReferralState) -> Result<(), TransitionError> {
        if self == to {
            return Ok(());
        }
        if self.is_terminal() {
            return Err(TransitionError::Terminal {
                from: self.clone(),
                requested: to.to_string(),
            });
        }
        if let ReferralStatus::Other(status) = &self.status {
            return Err(TransitionError::UnknownState {
                from: self.clone(),
                to: to.clone(),
                unknown: format!("the current status {status:?}"),
            });
        }
        if let ReferralStatus::Other(status) = &to.status {
            return Err(TransitionError::UnknownState {
                from: self.clone(),
                to: to.clone(),
                unknown: format!("the requested status {status:?}"),
            });
        }
        if !status_allowed(&self.status, &to.status) {
            return Err(TransitionError::StatusNotAllowed {
                from: self.clone(),
                to: to.clone(),
                allowed: allowed_statuses(&self.status),
            });
        }
        match &to.substatus {
            Some(substatus) if substatus_allowed(&to.status, substatus) => Ok(()),
            _ => Err(TransitionError::SubstatusNotAllowed {
                from: self.clone(),
                to: to.clone(),
                allowed: allowed_substatuses(&to.status),
            }),
        }
    }
}

impl fmt::Display for ReferralState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.substatus {
            Some(substatus) => write!(f, "{}/{}", self.status, substatus),
            None => write!(f, "{} (no substatus)", self.status),
        }
    }
}

fn status_allowed(from: &ReferralStatus, to: &ReferralStatus) -> bool {
    use ReferralStatus::{Active, Closed, New};
    matches!(
        (from, to),
        (New, New | Active | Closed) | (Active, Active | Closed) | (Closed, Closed)
    )
}

fn allowed_statuses(from: &ReferralStatus) -> &'static str {
    match from {
        ReferralStatus::New => "New, Active or Closed",
        ReferralStatus::Active => "Active or Closed",
        ReferralStatus::Closed => "Closed",
        ReferralStatus::Other(_) => "no documented status",
    }
}

fn substatus_allowed(status: &ReferralStatus, substatus: &ReferralSubstatus) -> bool {
    use ReferralSubstatus::{Accepted, Declined, Expired, Lost, Pending, Received, Won};
    match status {
        ReferralStatus::New => matches!(substatus, Pending | Received),
        ReferralStatus::Active => matches!(substatus, Accepted),
        ReferralStatus::Closed => matches!(substatus, Won | Lost | Declined | Expired),
        ReferralStatus::Other(_) => false,
    }
}

fn allowed_substatuses(status: &ReferralStatus) -> &'static str {
    match status {
        ReferralStatus::New => "Pending or Received",
        ReferralStatus::Active => "Accepted",
        ReferralStatus::Closed => "Won, Lost, Declined or Expired",
        ReferralStatus::Other(_) => "a documented substatus",
    }
}

/// A referral state change that Partner Center does not allow
/// (docs/partner-center.md#referral-status-rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The referral is closed (won, lost, declined, expired, or an undocumented closed substatus).
    #[error(
        "referral is {from}, a terminal state: Partner Center does not accept any change to won, \
         lost, declined or expired referrals (requested: {requested}). Fix: leave the referral \
         as it is; if the deal is still alive, share it again as a new opportunity"
    )]
    Terminal {
        /// The current state.
        from: ReferralState,
        /// What was requested: a target state or the list of changed fields.
        requested: String,
    },
    /// The target status is not reachable from the current status.
    #[error(
        "referral status cannot move from {from} to {to}: from {from_status} Partner Center \
         allows only {allowed}. Fix: set the CRM stage to one that maps to {allowed}",
        from_status = from.status
    )]
    StatusNotAllowed {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// The statuses allowed from there, e.g. `"Active or Closed"`.
        allowed: &'static str,
    },
    /// The target substatus does not belong to the target status.
    #[error(
        "referral cannot move from {from} to {to}: with status {to_status} the substatus must be \
         {allowed}. Fix: pick a substatus that belongs to {to_status}",
        to_status = to.status
    )]
    SubstatusNotAllowed {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// The substatuses allowed with it, e.g. `"Won, Lost, Declined or Expired"`.
        allowed: &'static str,
    },
    /// One side is not a documented state (for example a status added by Partner Center later).
    #[error(
        "referral cannot move from {from} to {to}: {unknown} is not a documented Partner Center \
         state. Fix: check the referral in Partner Center and change its state there"
    )]
    UnknownState {
        /// The current state.
        from: ReferralState,
        /// The requested state.
        to: ReferralState,
        /// Which of the two is unknown, spelled out.
        unknown: String,
    },
    /// The current referral carries no status at all, so no change can be checked.
    #[error(
        "referral has no status, so the change to {to} cannot be checked. Fix: re-read the \
         referral from Partner Center and try again"
    )]
    MissingState {
        /// The requested state.
        to: ReferralState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented table (docs/partner-center.md#referral-status-rules), written as text so the
    /// test does not reuse the code's matchers.
    const TABLE: &[(&str, &[&str], &[&str])] = &[
        (
            "New",
            &["New", "Active", "Closed"],
            &["Pending", "Received"],
        ),
        ("Active", &["Active", "Closed"], &["Accepted"]),
        (
            "Closed",
            &["Closed"],
            &["Won", "Lost", "Declined", "Expired"],
        ),
    ];
    const TERMINAL_SUBSTATUSES: &[&str] = &["Won", "Lost", "Declined", "Expired"];

    fn all_states() -> Vec<ReferralState> {
        let statuses = ["New", "Active", "Closed", "Archived"];
        let substatuses = [
            None,
            Some("Pending"),
            Some("Received"),
            Some("Accepted"),
            Some("Won"),
            Some("Lost"),
            Some("Declined"),
            Some("Expired"),
            Some("Error"),
        ];
        let mut states = Vec::new();
        for status in statuses {
            for substatus in substatuses {
                states.push(ReferralState::new(
                    ReferralStatus::parse(status),
                    substatus.map(ReferralSubstatus::parse),
                ));
            }
        }
        states
    }

    fn expected_allowed(from: &ReferralState, to: &ReferralState) -> bool {
        if from == to {
            return true;
        }
        let from_status = from.status.as_str();
        let from_sub = from.substatus.as_ref().map(|s| s.as_str());
        let terminal =
            from_status == "Closed" || from_sub.is_some_and(|s| TERMINAL_SUBSTATUSES.contains(&s));
        if terminal {
            return false;
        }
        let Some((_, next, _)) = TABLE.iter().find(|(status, ..)| *status == from_status) else {
            return false;
        };
        let to_status = to.status.as_str();
        if !next.contains(&to_status) {
            return false;
        }
        let Some((_, _, subs)) = TABLE.iter().find(|(status, ..)| *status == to_status) else {
            return false;
        };
        to.substatus
            .as_ref()
            .is_some_and(|s| subs.contains(&s.as_str()))
    }

    #[test]
    fn every_pair_of_states_follows_the_documented_transition_table() {
        let states = all_states();
        let mut allowed = 0;
        for from in &states {
            for to in &states {
                let result = from.transition(to);
                assert_eq!(
                    result.is_ok(),
                    expected_allowed(from, to),
                    "{from} -> {to}: {result:?}"
                );
                if result.is_ok() {
                    allowed += 1;
                }
            }
        }
        // 36 states map to themselves; the rest are real moves out of New and Active.
        assert!(allowed > states.len());
    }

    #[test]
    fn new_can_be_accepted_declined_or_closed() {
        let new = ReferralState::new_pending();
        assert!(new.transition(&ReferralState::accepted()).is_ok());
        assert!(
            new.transition(&ReferralState::closed(ReferralSubstatus::Declined))
                .is_ok()
        );
        assert!(
            new.transition(&ReferralState::closed(ReferralSubstatus::Won))
                .is_ok()
        );
        let received = ReferralState::new(ReferralStatus::New, Some(ReferralSubstatus::Received));
        assert!(new.transition(&received).is_ok());
    }

    #[test]
    fn active_cannot_go_back_to_new() {
        let err = ReferralState::accepted()
            .transition(&ReferralState::new_pending())
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TransitionError::StatusNotAllowed { .. }));
        assert!(
            message.contains("Active/Accepted") && message.contains("New/Pending"),
            "{message}"
        );
        assert!(message.contains("Fix:"), "{message}");
    }

    #[test]
    fn terminal_states_reject_any_change_and_say_so() {
        for sub in ["Won", "Lost", "Declined", "Expired", "Error"] {
            let closed = ReferralState::closed(ReferralSubstatus::parse(sub));
            assert!(closed.is_terminal());
            let err = closed.transition(&ReferralState::accepted()).unwrap_err();
            assert!(matches!(err, TransitionError::Terminal { .. }), "{sub}");
            let message = err.to_string();
            assert!(message.contains(&format!("Closed/{sub}")), "{message}");
            assert!(
                message.contains("Active/Accepted") && message.contains("Fix:"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_substatus_must_belong_to_its_status() {
        let err = ReferralState::new_pending()
            .transition(&ReferralState::new(
                ReferralStatus::Active,
                Some(ReferralSubstatus::Won),
            ))
            .unwrap_err();
        assert!(matches!(err, TransitionError::SubstatusNotAllowed { .. }));
        assert!(err.to_string().contains("must be Accepted"), "{err}");
    }

    #[test]
    fn undocumented_statuses_are_reported_not_guessed() {
        let odd = ReferralState::new(ReferralStatus::parse("Archived"), None);
        let err = odd.transition(&ReferralState::accepted()).unwrap_err();
        assert!(matches!(err, TransitionError::UnknownState { .. }));
        assert!(err.to_string().contains("\"Archived\""), "{err}");
    }

    #[test]
    fn wire_values_parse_case_insensitively_and_keep_unknown_values() {
        assert_eq!(ReferralStatus::parse("active"), ReferralStatus::Active);
        assert_eq!(ReferralSubstatus::parse(" WON "), ReferralSubstatus::Won);
        let odd = ReferralSubstatus::parse("Error");
        assert_eq!(odd, ReferralSubstatus::Other("Error".into()));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"Error\"");
        assert_eq!(ReferralStatus::KNOWN.len(), 3);
    }
}
