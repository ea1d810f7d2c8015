//! The error of building a domain value from outside input ([`ParseError`]). A leaf: it
//! imports no other module of the crate. The errors of moving a referral between states
//! (`status::TransitionError`) and of checking an opportunity
//! (`validation::ValidationProblem`) live with the rules they report.
//!
//! None of these carry customer contact data: only identifiers, opportunity and account names,
//! and the offending value of non-personal fields (a country code, a currency, a solution ID).

/// The longest offending value quoted back in a [`ParseError`]; longer input is cut.
const MAX_QUOTED: usize = 80;

/// A value could not be turned into a domain type. Names the field and the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value was empty or only whitespace.
    #[error("{field} is empty; expected {expected}")]
    Empty {
        /// What was being parsed, e.g. `"referral id"`.
        field: &'static str,
        /// The expected format, e.g. `"a GUID such as 4111fffc-f9ee-4d53-bba6-569135228642"`.
        expected: &'static str,
    },
    /// The value did not have the expected format.
    #[error("{field} {found:?} is not valid; expected {expected}")]
    Invalid {
        /// What was being parsed.
        field: &'static str,
        /// The value that was found (cut to 80 characters).
        found: String,
        /// The expected format.
        expected: &'static str,
    },
}

impl ParseError {
    /// The error for an empty value.
    pub(crate) fn empty(field: &'static str, expected: &'static str) -> Self {
        Self::Empty { field, expected }
    }

    /// The error for a malformed value; `found` is quoted back, cut to a sane length.
    pub(crate) fn invalid(field: &'static str, found: &str, expected: &'static str) -> Self {
        let found = if found.chars().count() > MAX_QUOTED {
            let mut cut: String = found.chars().take(MAX_QUOTED).collect();
            cut.push('…');
            cut
        } else {
            found.to_owned()
        };
        Self::Invalid {
            field,
            found,
            expected,
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field, .. } | Self::Invalid { field, .. } => field,
        }
    }
}

/// Cut a quoted value so a message stays readable.
pub(crate) fn quoted(value: &str) -> String {
    if value.chars().count() > MAX_QUOTED {
        let mut cut: String = value.chars().take(MAX_QUOTED).collect();
        cut.push('…');
        cut
    } else {
        value.to_owned()
    }
}
