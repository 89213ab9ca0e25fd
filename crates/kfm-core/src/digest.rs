//! Content digests: `sha256:<64 lowercase hex>` of the exact bytes.
//!
//! Bytes are never normalised before hashing: a digest names one
//! exact byte string, so two files that differ only in line endings are two
//! different acquisitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest. Displays and serialises as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestParseError {
    #[error("digest must start with `sha256:` (got {0:?})")]
    MissingAlgorithm(String),
    #[error("digest must have exactly 64 lowercase hex characters after `sha256:` (got {0:?})")]
    BadHex(String),
}

impl Digest {
    /// The digest of a byte string held in memory.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps raw digest bytes (for example the output of a streaming hasher).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters without the `sha256:` prefix; this is
    /// the form used in store keys (`raw/<dataset>/<hex>/…`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the bare 64-hex form used in store keys.
    pub fn from_hex(s: &str) -> Result<Self, DigestParseError> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestParseError::BadHex(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError::BadHex(s.to_owned()))?;
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestParseError::MissingAlgorithm(s.to_owned()))?;
        Self::from_hex(hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 for data that arrives in chunks (streams, large files).
///
/// Uses the CPU's SHA extensions when present (the `sha2` crate detects them
/// at run time), which is what lets ingest hash at copy speed.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.inner.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest(self.inner.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_matches_known_value() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Hasher::new();
        for chunk in data.chunks(333) {
            h.update(chunk);
        }
        assert_eq!(h.len(), data.len() as u64);
        assert_eq!(h.finish(), Digest::of(&data));
    }

    #[test]
    fn parse_refuses_uppercase_short_and_prefixless() {
        let good = Digest::of(b"x").to_string();
        assert_eq!(good.parse::<Digest>().unwrap().to_string(), good);
        assert!(good.to_uppercase().parse::<Digest>().is_err());
        assert!(good[..70].parse::<Digest>().is_err());
        assert!(
            good.trim_start_matches("sha256:")
                .parse::<Digest>()
                .is_err()
        );
        assert!(format!("sha512:{}", &good[7..]).parse::<Digest>().is_err());
    }
}
