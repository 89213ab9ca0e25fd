//! Identifiers that appear in store keys, URLs and records.
//!
//! They are validated once, at the edge, so that everything downstream can
//! splice them into a path without re-checking for traversal or odd bytes.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A dataset id: 2–64 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit and not ending with `-`. Used verbatim as a store key
/// segment (`raw/<dataset>/…`) and as a URL path segment, which is why it is
/// so narrow.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct DatasetId(String);

/// Why a string is not a dataset id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid dataset id {0:?}: use 2-64 characters of a-z, 0-9 and '-', starting with a letter or digit and not ending with '-'"
)]
pub struct DatasetIdError(pub String);

impl DatasetId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatasetId {
    type Err = DatasetIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (2..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DatasetIdError(s.to_owned()))
        }
    }
}

impl TryFrom<String> for DatasetId {
    type Error = DatasetIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DatasetId> for String {
    fn from(id: DatasetId) -> Self {
        id.0
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatasetId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for good in ["ks-counties", "a1", "x-2-y", "0a"] {
            assert!(good.parse::<DatasetId>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "-a",
            "a-",
            "A-b",
            "a_b",
            "a/b",
            "..",
            "a.b",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<DatasetId>().is_err(), "{bad}");
        }
    }
}

deserialize_via_try_from_string!(DatasetId, "a dataset id");
