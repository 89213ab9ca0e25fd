//! Policy labels: a controlled vocabulary (public, restricted, sensitive-location, …).
//!
//! The enum is closed on purpose: a label that is not listed here does not
//! parse, so an unknown label can never reach the policy engine as if it
//! were a known one (unknown label = deny).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyLabel {
    Public,
    PublicGeneralized,
    Restricted,
    RestrictedSensitiveLocation,
    Internal,
    Embargoed,
    Quarantine,
}

impl PolicyLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyLabel::Public => "public",
            PolicyLabel::PublicGeneralized => "public_generalized",
            PolicyLabel::Restricted => "restricted",
            PolicyLabel::RestrictedSensitiveLocation => "restricted_sensitive_location",
            PolicyLabel::Internal => "internal",
            PolicyLabel::Embargoed => "embargoed",
            PolicyLabel::Quarantine => "quarantine",
        }
    }
}

impl fmt::Display for PolicyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PolicyLabel {
    type Err = String;
    /// Only the vocabulary's exact spellings parse.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [PolicyLabel; 7] = [
            PolicyLabel::Public,
            PolicyLabel::PublicGeneralized,
            PolicyLabel::Restricted,
            PolicyLabel::RestrictedSensitiveLocation,
            PolicyLabel::Internal,
            PolicyLabel::Embargoed,
            PolicyLabel::Quarantine,
        ];
        ALL.into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown policy label {s:?}"))
    }
}
