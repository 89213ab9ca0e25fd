//! DSSE envelopes (Dead Simple Signing Envelope, v1) signed with ed25519.
//!
//! Receipts and release manifests are signed this way so that anyone holding
//! the public key can check them with any DSSE implementation: the signature
//! covers the pre-authentication encoding (PAE) of the payload type and the
//! payload bytes, never a re-serialisation of the payload.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::Digest;

/// Payload type of an in-toto Statement (run receipts).
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Why an envelope could not be read or verified.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsseError {
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("payload type is {found:?}, expected {expected:?}")]
    WrongType { expected: String, found: String },
    #[error("no signature by key {0} verifies this envelope")]
    BadSignature(String),
    #[error("the envelope cannot be encoded: {0}")]
    Encode(String),
}

/// A DSSE envelope as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: String,
    /// Base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// An ed25519 key that signs envelopes. Its key id is the digest of the
/// public key, so a verifier can tell which key a signature claims.
pub struct Signer {
    key: SigningKey,
    keyid: String,
}

impl std::fmt::Debug for Signer {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

/// The key id of a public key: `sha256:<hex of the 32 key bytes' digest>`.
pub fn key_id(key: &VerifyingKey) -> String {
    Digest::of(key.as_bytes()).to_string()
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        let keyid = key_id(&key.verifying_key());
        Self { key, keyid }
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `payload` as `payload_type`.
    pub fn sign(&self, payload_type: &str, payload: &[u8]) -> Envelope {
        let sig = self.key.sign(&pae(payload_type, payload));
        Envelope {
            payload: B64.encode(payload),
            payload_type: payload_type.to_owned(),
            signatures: vec![EnvelopeSignature {
                keyid: self.keyid.clone(),
                sig: B64.encode(sig.to_bytes()),
            }],
        }
    }
}

impl Envelope {
    /// Parses stored envelope bytes (strict: unknown fields are refused).
    pub fn parse(bytes: &[u8]) -> Result<Self, DsseError> {
        serde_json::from_slice(bytes).map_err(|e| DsseError::Malformed(e.to_string()))
    }

    /// The envelope as stored: compact JSON with a trailing newline.
    /// Fallible in type only (every field is a string), so that nothing
    /// signed is ever stored from a default.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DsseError> {
        let mut v = serde_json::to_vec(self).map_err(|e| DsseError::Encode(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Checks that `key` signed this envelope as `payload_type`, and returns
    /// the payload bytes. Nothing in an envelope is trusted before this.
    pub fn verify(&self, payload_type: &str, key: &VerifyingKey) -> Result<Vec<u8>, DsseError> {
        if self.payload_type != payload_type {
            return Err(DsseError::WrongType {
                expected: payload_type.to_owned(),
                found: self.payload_type.clone(),
            });
        }
        let payload = B64
            .decode(&self.payload)
            .map_err(|e| DsseError::Malformed(format!("payload is not base64: {e}")))?;
        let message = pae(&self.payload_type, &payload);
        let keyid = key_id(key);
        let ok = self.signatures.iter().any(|s| {
            s.keyid == keyid
                && B64
                    .decode(&s.sig)
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                    .is_some_and(|b| key.verify(&message, &Signature::from_bytes(&b)).is_ok())
        });
        if ok {
            Ok(payload)
        } else {
            Err(DsseError::BadSignature(keyid))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(SigningKey::from_bytes(&[7u8; 32]))
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn round_trip_and_every_tamper_is_refused() {
        let s = signer();
        let env = s.sign(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}");
        let bytes = env.to_bytes().unwrap();
        let back = Envelope::parse(&bytes).unwrap();
        assert_eq!(
            back.verify(IN_TOTO_PAYLOAD_TYPE, &s.verifying_key())
                .unwrap(),
            b"{\"a\":1}"
        );
        // Another payload type.
        assert!(matches!(
            back.verify("application/json", &s.verifying_key()),
            Err(DsseError::WrongType { .. })
        ));
        // Another key.
        let other = Signer::new(SigningKey::from_bytes(&[8u8; 32]));
        assert!(
            back.verify(IN_TOTO_PAYLOAD_TYPE, &other.verifying_key())
                .is_err()
        );
        // A changed payload.
        let mut t = back.clone();
        t.payload = B64.encode(b"{\"a\":2}");
        assert!(t.verify(IN_TOTO_PAYLOAD_TYPE, &s.verifying_key()).is_err());
        // A flipped signature byte.
        let mut t = back.clone();
        let mut sig = B64.decode(&t.signatures[0].sig).unwrap();
        sig[5] ^= 1;
        t.signatures[0].sig = B64.encode(sig);
        assert!(t.verify(IN_TOTO_PAYLOAD_TYPE, &s.verifying_key()).is_err());
        // A changed type with the signature kept.
        let mut t = back;
        t.payload_type = "x".into();
        assert!(t.verify("x", &s.verifying_key()).is_err());
    }
}
