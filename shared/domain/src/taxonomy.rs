//! The FY26 co-sell taxonomy a referral created from the CRM carries: its **Solution Area**,
//! **Solution Play** and **Partner Role**
//! (docs/partner-center.md#solution-area-solution-play-and-partner-role).
//!
//! Partner Center's create page names the three members (`partnerRole`, `solutionArea`,
//! `solutionPlay`, "required for services co-sell referrals") but publishes neither their values
//! nor their JSON shape (UNKNOWN). The robust reading taken here:
//!
//! - the allowed values are **configuration** ([`TaxonomyConfig`], `taxonomy` of
//!   `MAPPING_CONFIG_JSON`), with defaults an operator replaces with what Partner Center's deal
//!   form offers; a play belongs to one area;
//! - a CRM value is matched against them ignoring case, spaces and punctuation, and the
//!   configured spelling is what is sent;
//! - the members are sent as JSON strings, like every other documented referral enum;
//! - since what makes a referral "services co-sell" is not documented either, every referral
//!   the connector creates carries all three, and a missing or unknown value is refused before
//!   any Partner Center call (`validation::validate_new_referral`).
//!
//! The value types are built only through `TryFrom` (shape: one line of text) and, for a CRM
//! value, through [`TaxonomyConfig`] (membership).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::macros::wire_key;

/// The longest accepted taxonomy value.
const MAX_LEN: usize = 200;

const EXPECTED: &str = "one line of text of at most 200 characters";

/// Defines a taxonomy value newtype: trimmed, non-empty, at most [`MAX_LEN`] characters, no
/// control characters.
macro_rules! taxonomy_value {
    ($(#[$meta:meta])* $name:ident, $label:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The value as text (as configured, and as sent to Partner Center).
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `text` names this value (ignoring case, spaces and punctuation).
            pub fn matches(&self, text: &str) -> bool {
                let key = wire_key(text);
                !key.is_empty() && key == wire_key(&self.0)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;
            fn try_from(text: &str) -> Result<Self, ParseError> {
                let t = text.trim();
                if t.is_empty() {
                    return Err(ParseError::empty($label, EXPECTED));
                }
                if t.chars().count() > MAX_LEN
                    || t.chars().any(char::is_control)
                    || wire_key(t).is_empty()
                {
                    return Err(ParseError::invalid($label, text, EXPECTED));
                }
                Ok(Self(t.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(text: String) -> Result<Self, ParseError> {
                Self::try_from(text.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

taxonomy_value!(
    /// A Solution Area (FY26 taxonomy), e.g. `Security`.
    SolutionArea,
    "solution area"
);
taxonomy_value!(
    /// A Solution Play of a Solution Area (FY26 taxonomy).
    SolutionPlay,
    "solution play"
);
taxonomy_value!(
    /// The partner's role in the deal.
    PartnerRole,
    "partner role"
);

/// One of the three taxonomy members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxonomyField {
    /// Solution Area.
    SolutionArea,
    /// Solution Play.
    SolutionPlay,
    /// Partner Role.
    PartnerRole,
}

impl TaxonomyField {
    /// All three, in the order messages list them.
    pub const ALL: [TaxonomyField; 3] = [Self::SolutionArea, Self::SolutionPlay, Self::PartnerRole];

    /// The label Partner Center's pages use.
    pub fn label(self) -> &'static str {
        match self {
            Self::SolutionArea => "Solution Area",
            Self::SolutionPlay => "Solution Play",
            Self::PartnerRole => "Partner Role",
        }
    }

    /// The referral member it is sent as (camelCase, like every documented member).
    pub fn partner_center_member(self) -> &'static str {
        match self {
            Self::SolutionArea => "solutionArea",
            Self::SolutionPlay => "solutionPlay",
            Self::PartnerRole => "partnerRole",
        }
    }
}

impl fmt::Display for TaxonomyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A Solution Area and the plays that belong to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaOption {
    /// The area.
    pub area: SolutionArea,
    /// Its plays (at least one).
    pub plays: Vec<SolutionPlay>,
}

/// The allowed taxonomy values (`taxonomy` of `MAPPING_CONFIG_JSON`):
///
/// ```json
/// {"taxonomy": {"solution_areas": [{"area": "Security", "plays": ["Data Security"]}],
///               "partner_roles": ["Implementation"]}}
/// ```
///
/// Partner Center does not publish the values (UNKNOWN): the defaults are Microsoft's three
/// FY26 solution areas with plays and roles to start from; replace them with the lists
/// Partner Center's deal form offers. A configuration with an empty list, an area without
/// plays, or two values that differ only in case or punctuation is refused when it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTaxonomyConfig")]
pub struct TaxonomyConfig {
    solution_areas: Vec<AreaOption>,
    partner_roles: Vec<PartnerRole>,
}

/// [`TaxonomyConfig`] before its lists are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaxonomyConfig {
    #[serde(default = "default_areas")]
    solution_areas: Vec<AreaOption>,
    #[serde(default = "default_roles")]
    partner_roles: Vec<PartnerRole>,
}

/// Why a taxonomy configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaxonomyConfigError {
    /// A list is empty.
    #[error("taxonomy.{0} is empty; list at least one value")]
    Empty(&'static str),
    /// An area has no plays.
    #[error("taxonomy.solution_areas: the area {0:?} has no plays; list at least one")]
    NoPlays(String),
    /// Two values of one list differ only in case, spaces or punctuation.
    #[error("taxonomy.{list}: {first:?} and {second:?} differ only in case, spaces or punctuation")]
    Duplicate {
        /// The list.
        list: &'static str,
        /// The first value.
        first: String,
        /// The second.
        second: String,
    },
}

impl TryFrom<RawTaxonomyConfig> for TaxonomyConfig {
    type Error = TaxonomyConfigError;
    fn try_from(raw: RawTaxonomyConfig) -> Result<Self, TaxonomyConfigError> {
        Self::new(raw.solution_areas, raw.partner_roles)
    }
}

fn first_duplicate<'a>(
    list: &'static str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(), TaxonomyConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for value in values {
        if let Some(first) = seen.iter().find(|s| wire_key(s) == wire_key(value)) {
            return Err(TaxonomyConfigError::Duplicate {
                list,
                first: (*first).to_owned(),
                second: value.to_owned(),
            });
        }
        seen.push(value);
    }
    Ok(())
}

/// Microsoft's three FY26 solution areas, with plays to start from (Partner Center does not
/// publish the values its API takes: docs/partner-center.md#solution-area-solution-play-and-partner-role).
const DEFAULT_AREAS: &[(&str, &[&str])] = &[
    (
        "AI Business Solutions",
        &[
            "Copilot and Agents at Work",
            "Sales Transformation with AI",
            "Service Transformation with AI",
            "Finance and Supply Chain Transformation with AI",
        ],
    ),
    (
        "Cloud & AI Platforms",
        &[
            "Migrate and Modernize Your Estate",
            "Unify Your Data Platform",
            "Innovate with Azure AI Apps and Agents",
        ],
    ),
    (
        "Security",
        &[
            "Data Security",
            "Modern SecOps with Unified Platform",
            "Protect Cloud, AI Platform and Apps",
        ],
    ),
];

/// Partner roles to start from (UNKNOWN values, see [`DEFAULT_AREAS`]).
const DEFAULT_ROLES: &[&str] = &[
    "Advisory",
    "Implementation",
    "Managed Services",
    "Licensing",
];

fn default_areas() -> Vec<AreaOption> {
    DEFAULT_AREAS
        .iter()
        .filter_map(|(area, plays)| {
            Some(AreaOption {
                area: SolutionArea::try_from(*area).ok()?,
                plays: plays
                    .iter()
                    .filter_map(|p| SolutionPlay::try_from(*p).ok())
                    .collect(),
            })
        })
        .collect()
}

fn default_roles() -> Vec<PartnerRole> {
    DEFAULT_ROLES
        .iter()
        .filter_map(|r| PartnerRole::try_from(*r).ok())
        .collect()
}

impl Default for TaxonomyConfig {
    fn default() -> Self {
        Self {
            solution_areas: default_areas(),
            partner_roles: default_roles(),
        }
    }
}

impl TaxonomyConfig {
    /// A configuration from its lists, checked (see the type's documentation).
    pub fn new(
        solution_areas: Vec<AreaOption>,
        partner_roles: Vec<PartnerRole>,
    ) -> Result<Self, TaxonomyConfigError> {
        if solution_areas.is_empty() {
            return Err(TaxonomyConfigError::Empty("solution_areas"));
        }
        if partner_roles.is_empty() {
            return Err(TaxonomyConfigError::Empty("partner_roles"));
        }
        if let Some(bare) = solution_areas.iter().find(|a| a.plays.is_empty()) {
            return Err(TaxonomyConfigError::NoPlays(bare.area.as_str().to_owned()));
        }
        first_duplicate(
            "solution_areas",
            solution_areas.iter().map(|a| a.area.as_str()),
        )?;
        for option in &solution_areas {
            first_duplicate(
                "solution_areas.plays",
                option.plays.iter().map(|p| p.as_str()),
            )?;
        }
        first_duplicate("partner_roles", partner_roles.iter().map(|r| r.as_str()))?;
        Ok(Self {
            solution_areas,
            partner_roles,
        })
    }

    /// The areas and their plays.
    pub fn solution_areas(&self) -> &[AreaOption] {
        &self.solution_areas
    }

    /// The partner roles.
    pub fn partner_roles(&self) -> &[PartnerRole] {
        &self.partner_roles
    }

    /// The configured area `text` names.
    pub fn solution_area(&self, text: &str) -> Option<&SolutionArea> {
        self.solution_areas
            .iter()
            .map(|o| &o.area)
            .find(|a| a.matches(text))
    }

    /// The configured play `text` names: one of `area`'s plays when the area is known, else
    /// any area's.
    pub fn solution_play(&self, area: Option<&SolutionArea>, text: &str) -> Option<&SolutionPlay> {
        self.plays_of(area).into_iter().find(|p| p.matches(text))
    }

    /// The configured role `text` names.
    pub fn partner_role(&self, text: &str) -> Option<&PartnerRole> {
        self.partner_roles.iter().find(|r| r.matches(text))
    }

    /// The plays allowed with `area` (every play when the area is not known).
    fn plays_of(&self, area: Option<&SolutionArea>) -> Vec<&SolutionPlay> {
        let chosen = area.and_then(|area| self.solution_areas.iter().find(|o| o.area == *area));
        match chosen {
            Some(option) => option.plays.iter().collect(),
            None => self
                .solution_areas
                .iter()
                .flat_map(|o| o.plays.iter())
                .collect(),
        }
    }

    /// The first allowed value of each member (the first area, its first play, the first
    /// role): a complete taxonomy this configuration accepts, for examples and tests.
    pub fn first_allowed(&self) -> TaxonomyValues {
        let first = self.solution_areas.first();
        TaxonomyValues {
            solution_area: first.map(|o| o.area.clone()),
            solution_play: first.and_then(|o| o.plays.first().cloned()),
            partner_role: self.partner_roles.first().cloned(),
        }
    }

    /// The allowed values of `field`, as messages list them (a play's: those of `area` when
    /// it is known).
    pub fn allowed(&self, field: TaxonomyField, area: Option<&SolutionArea>) -> Vec<String> {
        match field {
            TaxonomyField::SolutionArea => self
                .solution_areas
                .iter()
                .map(|o| o.area.as_str().to_owned())
                .collect(),
            TaxonomyField::SolutionPlay => self
                .plays_of(area)
                .into_iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            TaxonomyField::PartnerRole => self
                .partner_roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
        }
    }
}

/// The taxonomy a CRM record holds, each value one the configuration allows (or `None`:
/// missing, or not allowed and recorded as rejected next to it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaxonomyValues {
    /// Solution Area.
    pub solution_area: Option<SolutionArea>,
    /// Solution Play (one of the area's).
    pub solution_play: Option<SolutionPlay>,
    /// Partner Role.
    pub partner_role: Option<PartnerRole>,
}

impl TaxonomyValues {
    /// All three values, when all three are there.
    pub fn complete(&self) -> Option<Taxonomy> {
        Some(Taxonomy {
            solution_area: self.solution_area.clone()?,
            solution_play: self.solution_play.clone()?,
            partner_role: self.partner_role.clone()?,
        })
    }

    /// Whether `field` holds a value.
    pub fn has(&self, field: TaxonomyField) -> bool {
        match field {
            TaxonomyField::SolutionArea => self.solution_area.is_some(),
            TaxonomyField::SolutionPlay => self.solution_play.is_some(),
            TaxonomyField::PartnerRole => self.partner_role.is_some(),
        }
    }
}

/// A complete taxonomy: what a referral created from the CRM carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Taxonomy {
    /// Solution Area.
    pub solution_area: SolutionArea,
    /// Solution Play, one of the area's.
    pub solution_play: SolutionPlay,
    /// Partner Role.
    pub partner_role: PartnerRole,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn values_are_one_trimmed_line() {
        assert_eq!(
            SolutionArea::try_from("  Security ").unwrap().as_str(),
            "Security"
        );
        assert!(matches!(
            SolutionPlay::try_from("   "),
            Err(ParseError::Empty { .. })
        ));
        for bad in ["Data\nSecurity", "&&", &"x".repeat(201)] {
            let error = PartnerRole::try_from(bad).unwrap_err();
            assert_eq!(error.field(), "partner role");
        }
    }

    #[test]
    fn crm_text_matches_ignoring_case_spaces_and_punctuation() {
        let config = TaxonomyConfig::default();
        let area = config.solution_area("cloud and ai platforms");
        assert_eq!(area, None, "'and' is not '&'");
        let area = config.solution_area("CLOUD & AI PLATFORMS").unwrap();
        assert_eq!(area.as_str(), "Cloud & AI Platforms");
        assert_eq!(
            config
                .solution_play(Some(area), "unify-your-data-platform")
                .map(SolutionPlay::as_str),
            Some("Unify Your Data Platform")
        );
        assert_eq!(
            config
                .partner_role("managed_services")
                .map(PartnerRole::as_str),
            Some("Managed Services")
        );
        assert_eq!(config.partner_role("Reseller"), None);
    }

    #[test]
    fn a_play_must_belong_to_the_area() {
        let config = TaxonomyConfig::default();
        let security = config.solution_area("Security").unwrap();
        assert_eq!(
            config.solution_play(Some(security), "Unify Your Data Platform"),
            None
        );
        assert!(
            config
                .solution_play(None, "Unify Your Data Platform")
                .is_some()
        );
        let allowed = config.allowed(TaxonomyField::SolutionPlay, Some(security));
        assert_eq!(
            allowed,
            [
                "Data Security",
                "Modern SecOps with Unified Platform",
                "Protect Cloud, AI Platform and Apps"
            ]
        );
        assert_eq!(
            config.allowed(TaxonomyField::SolutionArea, None),
            ["AI Business Solutions", "Cloud & AI Platforms", "Security"]
        );
    }

    #[test]
    fn the_configuration_is_read_from_json_and_checked() {
        let config: TaxonomyConfig = serde_json::from_value(json!({
            "solution_areas": [{ "area": "Security", "plays": ["Data Security"] }],
            "partner_roles": ["Implementation"]
        }))
        .unwrap();
        assert_eq!(
            config.allowed(TaxonomyField::PartnerRole, None),
            ["Implementation"]
        );
        let partial: TaxonomyConfig =
            serde_json::from_value(json!({ "partner_roles": ["Advisory"] })).unwrap();
        assert_eq!(partial.solution_areas().len(), 3);

        for (bad, says) in [
            (
                json!({ "solution_areas": [] }),
                "taxonomy.solution_areas is empty",
            ),
            (
                json!({ "partner_roles": [] }),
                "taxonomy.partner_roles is empty",
            ),
            (
                json!({ "solution_areas": [{ "area": "Security", "plays": [] }] }),
                "has no plays",
            ),
            (
                json!({ "partner_roles": ["Managed Services", "managed-services"] }),
                "differ only in case",
            ),
            (json!({ "partner_roles": [""] }), "partner role is empty"),
            (json!({ "roles": ["x"] }), "unknown field"),
        ] {
            let error = serde_json::from_value::<TaxonomyConfig>(bad.clone()).unwrap_err();
            assert!(error.to_string().contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn the_first_allowed_values_are_complete_and_allowed() {
        let config = TaxonomyConfig::default();
        let taxonomy = config.first_allowed().complete().unwrap();
        assert_eq!(taxonomy.solution_area.as_str(), "AI Business Solutions");
        assert!(
            config
                .solution_play(
                    Some(&taxonomy.solution_area),
                    taxonomy.solution_play.as_str()
                )
                .is_some()
        );
        assert_eq!(taxonomy.partner_role.as_str(), "Advisory");
    }

    #[test]
    fn complete_needs_all_three() {
        let config = TaxonomyConfig::default();
        let mut values = TaxonomyValues {
            solution_area: config.solution_area("Security").cloned(),
            solution_play: config.solution_play(None, "Data Security").cloned(),
            partner_role: None,
        };
        assert!(values.complete().is_none());
        assert!(!values.has(TaxonomyField::PartnerRole));
        values.partner_role = config.partner_role("Advisory").cloned();
        let taxonomy = values.complete().unwrap();
        assert_eq!(taxonomy.solution_play.as_str(), "Data Security");
    }

    proptest! {
        /// Any text: a value or a `ParseError` naming the field, never a panic; a value is
        /// trimmed and matches the text it came from.
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,300}") {
            match SolutionArea::try_from(text.as_str()) {
                Ok(area) => {
                    prop_assert_eq!(area.as_str(), text.trim());
                    prop_assert!(area.matches(&text));
                }
                Err(error) => prop_assert_eq!(error.field(), "solution area"),
            }
            let config = TaxonomyConfig::default();
            let _ = config.solution_area(&text);
            let _ = config.solution_play(None, &text);
            let _ = config.partner_role(&text);
        }

        /// Any JSON as a configuration: a checked configuration or an error, never a panic.
        #[test]
        fn any_json_configuration_is_read_or_refused(value in crate::proptest_support::json_value()) {
            if let Ok(config) = serde_json::from_value::<TaxonomyConfig>(value) {
                prop_assert!(!config.solution_areas().is_empty());
                prop_assert!(!config.partner_roles().is_empty());
            }
        }
    }
}
