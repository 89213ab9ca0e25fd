//! Signed checkpoints: C2SP `tlog-checkpoint` bodies (origin, size, root)
//! in C2SP `signed-note` envelopes, signed with ed25519.
//!
//! A checkpoint is what an auditor keeps: with it, inclusion and
//! consistency proofs can be checked offline. The formats are the Go
//! reference's (`golang.org/x/mod/sumdb/note`), via the `tlog_tiles` and
//! `signed_note` crates, so standard tlog tooling can read them.

use base64::Engine;
use signed_note::{Note, Signer as _, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::checkpoint::Checkpoint;
use tlog_tiles::tlog;

use crate::merkle::Hash;

/// Why a key or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "the ledger key is not a signed-note private key (PRIVATE+KEY+<name>+<id>+<base64>): {0}"
    )]
    BadKey(String),
    #[error("{0:?} cannot name a ledger key: use a non-empty name without spaces or '+'")]
    BadKeyName(String),
    #[error("the checkpoint is not a valid signed note: {0}")]
    BadNote(String),
    #[error("the checkpoint signature does not verify with key {key}: {reason}")]
    BadSignature { key: String, reason: String },
    #[error("the checkpoint body is malformed (expected origin, size and base64 root lines)")]
    BadBody,
    #[error("the checkpoint is for origin {found:?}, expected {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

/// The ledger's signing key, loaded from its private-key text.
pub struct LedgerSigner {
    /// The key text it was loaded from, for [`LedgerSigner::try_clone`].
    text: String,
    signer: StandardSigner,
    name: String,
    verifier_key: String,
    seed: [u8; 32],
}

impl std::fmt::Debug for LedgerSigner {
    // The private key never appears in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerSigner")
            .field("verifier_key", &self.verifier_key)
            .finish_non_exhaustive()
    }
}

/// Generates a new ed25519 ledger key named `name`: returns the private-key
/// text (to be stored as a secret) and the public verifier key.
pub fn generate_key(name: &str) -> Result<(String, String), CheckpointError> {
    if !signed_note::is_key_name_valid(name) {
        return Err(CheckpointError::BadKeyName(name.to_owned()));
    }
    Ok(signed_note::generate_key(&mut rand_core::OsRng, name))
}

impl LedgerSigner {
    /// Loads a private key in signed-note form. Surrounding whitespace (a
    /// trailing newline in a key file) is ignored.
    pub fn from_key_text(text: &str) -> Result<Self, CheckpointError> {
        let text = text.trim();
        let signer =
            StandardSigner::new(text).map_err(|e| CheckpointError::BadKey(e.to_string()))?;
        // PRIVATE+KEY+<name>+<id>+<base64(alg || seed)>: derive the public key.
        let b64 = text.splitn(5, '+').nth(4).unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
        let seed: [u8; 32] = raw
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| CheckpointError::BadKey("not an ed25519 key".into()))?;
        let vk = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let name = signer.name().to_owned();
        let verifier_key = signed_note::new_ed25519_verifier_key(&name, &vk);
        Ok(Self {
            text: text.to_owned(),
            signer,
            name,
            verifier_key,
            seed,
        })
    }

    /// A second signer with the same key (a process that takes over as the
    /// ledger's writer needs its own).
    pub fn try_clone(&self) -> Result<Self, CheckpointError> {
        Self::from_key_text(&self.text)
    }

    /// The public key that verifies this signer's checkpoints.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The same ed25519 key, for signing receipts and release manifests
    /// (DSSE): one workspace key signs the ledger and what is recorded in it.
    pub fn signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.seed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs the checkpoint `origin / size / root`.
    pub fn sign(&self, origin: &str, size: u64, root: &Hash) -> Result<Vec<u8>, CheckpointError> {
        let body = Checkpoint::new(origin, size, tlog::Hash(*root), "")
            .map_err(|_| CheckpointError::BadBody)?;
        let mut note = Note::new(&body.to_bytes(), &[])
            .map_err(|e| CheckpointError::BadNote(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| CheckpointError::BadNote(e.to_string()))?;
        Ok(note.to_bytes())
    }
}

/// A checkpoint whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Verifies a signed checkpoint against a verifier key and, when given, the
/// expected origin; returns what it attests.
pub fn verify_checkpoint(
    note: &[u8],
    verifier_key: &str,
    origin: Option<&str>,
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let verifier =
        StandardVerifier::new(verifier_key).map_err(|e| CheckpointError::BadKey(e.to_string()))?;
    let parsed = Note::from_bytes(note).map_err(|e| CheckpointError::BadNote(e.to_string()))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::BadSignature {
            key: verifier_key.to_owned(),
            reason: e.to_string(),
        })?;
    let body = Checkpoint::from_bytes(parsed.text()).map_err(|_| CheckpointError::BadBody)?;
    if let Some(expected) = origin
        && body.origin() != expected
    {
        return Err(CheckpointError::WrongOrigin {
            expected: expected.to_owned(),
            found: body.origin().to_owned(),
        });
    }
    Ok(VerifiedCheckpoint {
        origin: body.origin().to_owned(),
        size: body.size(),
        root: body.hash().0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse_tampering() {
        let (skey, vkey) = generate_key("kfm.local/dev").unwrap();
        let signer = LedgerSigner::from_key_text(&format!("{skey}\n")).unwrap();
        assert_eq!(signer.verifier_key(), vkey);
        let root = [7u8; 32];
        let note = signer.sign("kfm.local/dev", 42, &root).unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("kfm.local/dev\n42\n"), "{text}");
        assert!(!format!("{signer:?}").contains(&skey[20..]));

        let v = verify_checkpoint(&note, &vkey, Some("kfm.local/dev")).unwrap();
        assert_eq!((v.size, v.root), (42, root));
        assert!(matches!(
            verify_checkpoint(&note, &vkey, Some("other")),
            Err(CheckpointError::WrongOrigin { .. })
        ));

        // Any single flipped byte of the note is refused.
        for i in 0..note.len() {
            let mut bad = note.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_checkpoint(&bad, &vkey, Some("kfm.local/dev")).is_err(),
                "flip at byte {i} accepted"
            );
        }
        // Another key's signature is refused.
        let (_, other) = generate_key("kfm.local/dev").unwrap();
        assert!(verify_checkpoint(&note, &other, None).is_err());
        assert!(LedgerSigner::from_key_text("not a key").is_err());
        assert!(generate_key("has space").is_err());
    }
}
