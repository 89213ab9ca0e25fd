//! License identifiers as written in dataset specs.
//!
//! A spec names its license by SPDX identifier. We accept an id from the SPDX
//! license list (checked against the list the `spdx` crate ships), a
//! `LicenseRef-…` for rights the list has no id for (for example U.S.
//! Government works), or the SPDX sentinels `NOASSERTION` / `NONE`, which
//! parse so that a spec can be written honestly but never pass the licensing
//! gate.

use std::fmt;

use serde::Serialize;

#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct LicenseId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown SPDX license id {0:?}: use an id from https://spdx.org/licenses/ (for example CC-BY-4.0), or LicenseRef-<name> for rights without an SPDX id"
)]
pub struct LicenseIdError(pub String);

impl LicenseId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `NOASSERTION` or `NONE`: the rights are not known, so nothing may be
    /// exported or published under this id.
    pub fn is_unknown(&self) -> bool {
        matches!(self.0.as_str(), "NOASSERTION" | "NONE")
    }

    /// Licenses whose terms require the user to credit the source. Exports
    /// of data under these carry attribution text, so a spec must give it.
    pub fn requires_attribution(&self) -> bool {
        let id = self.0.as_str();
        id.starts_with("CC-BY-")
            || id.starts_with("ODC-By-")
            || id.starts_with("ODbL-")
            || id.starts_with("OGL-")
            || id.starts_with("Apache-")
            || id.starts_with("BSD-")
            || matches!(id, "MIT" | "ISC")
    }
}

impl TryFrom<String> for LicenseId {
    type Error = LicenseIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let is_ref = s.strip_prefix("LicenseRef-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        });
        let known = spdx::license_id(&s).is_some();
        if is_ref || known || s == "NOASSERTION" || s == "NONE" {
            Ok(Self(s))
        } else {
            Err(LicenseIdError(s))
        }
    }
}

impl From<LicenseId> for String {
    fn from(id: LicenseId) -> Self {
        id.0
    }
}

impl fmt::Display for LicenseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LicenseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LicenseId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ref_and_sentinels_parse_others_do_not() {
        for ok in [
            "CC-BY-4.0",
            "CC0-1.0",
            "MIT",
            "LicenseRef-PublicDomain-USGov",
            "NOASSERTION",
        ] {
            assert!(LicenseId::try_from(ok.to_owned()).is_ok(), "{ok}");
        }
        for bad in [
            "cc-by",
            "CC-BY-9.9",
            "LicenseRef-",
            "LicenseRef-a b",
            "public domain",
            "",
        ] {
            assert!(LicenseId::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert!(LicenseId::try_from("NONE".to_owned()).unwrap().is_unknown());
        assert!(
            LicenseId::try_from("CC-BY-4.0".to_owned())
                .unwrap()
                .requires_attribution()
        );
        assert!(
            !LicenseId::try_from("CC0-1.0".to_owned())
                .unwrap()
                .requires_attribution()
        );
    }
}

deserialize_via_try_from_string!(LicenseId, "an SPDX license id");
