//! The witness: the newest signed checkpoint a writer acknowledged, kept
//! outside the audit zone (by default in the workspace, beside the store
//! directory, never inside it).
//!
//! Why: everything in the audit zone and the journal can be deleted,
//! truncated or restored from an older copy by someone with access to the
//! store. Without a copy elsewhere, a ledger with its checkpoint removed
//! looks like an empty one, and one restored from last week's backup looks
//! like a shorter honest one. Every writer and reader compares what it
//! finds with the witness and refuses a log that is smaller than, or
//! inconsistent with, what was witnessed (see `guard`).
//!
//! The writer records a checkpoint here before it answers the appenders
//! it covers, so "acknowledged" implies "witnessed" whenever the process
//! is killed (the write is in the page cache). It is made durable with each
//! tile round; after a power failure it may lag by a round, which only
//! weakens the check to what the tiles already prove.
//!
//! Format: two 4 KiB slots, written alternately, each `magic | u32 length
//! | signed checkpoint note`. A write torn by a crash damages at most one;
//! a reader takes the valid slot with the larger size. Two valid slots for
//! one size with different roots are a fork, and refused.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::{VerifiedCheckpoint, verify_checkpoint};

const SLOT: u64 = 4096;
const MAGIC: &[u8; 16] = b"kfm-witness v1\n\0";

/// Why the witness could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: the witness holds no valid signed checkpoint ({why}); it was damaged or written by another key: restore it from a copy, or remove it if this ledger is known to be intact"
    )]
    Unreadable { path: String, why: String },
    #[error(
        "{path}: two different checkpoints were witnessed for size {size}: the ledger's history forked"
    )]
    Fork { path: String, size: u64 },
    #[error("the checkpoint note is {0} bytes, too long for a witness slot")]
    TooLong(usize),
}

/// The witness file a writer keeps up to date.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    file: std::fs::File,
    /// The slot the next record goes to.
    next: u64,
    /// Size of the last checkpoint recorded (records only move forward).
    last: u64,
}

impl Witness {
    /// Opens (creating, with its directory) the witness file at `path`.
    pub fn open(path: &Path) -> Result<Self, WitnessError> {
        let io = |source| WitnessError::Io {
            path: path.display().to_string(),
            source,
        };
        // Real zeros, not a hole: recording later must never need a block
        // the file system may not have (a full disk).
        let (file, _) = crate::durable::open_zero_filled(path, 2 * SLOT).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            next: 0,
            last: 0,
        })
    }

    /// Records `note` (a signed checkpoint for `size`) in the next slot.
    /// Not synced: see the module docs and [`Witness::sync`]. A size not
    /// above the last one recorded is skipped.
    pub fn record(&mut self, size: u64, note: &[u8]) -> Result<(), WitnessError> {
        if size <= self.last && self.last > 0 {
            return Ok(());
        }
        if note.len() as u64 > SLOT - 20 {
            return Err(WitnessError::TooLong(note.len()));
        }
        let mut slot = Vec::with_capacity(20 + note.len());
        slot.extend_from_slice(MAGIC);
        slot.extend_from_slice(&(note.len() as u32).to_be_bytes());
        slot.extend_from_slice(note);
        self.file
            .write_all_at(&slot, self.next * SLOT)
            .map_err(|source| WitnessError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.next ^= 1;
        self.last = size;
        Ok(())
    }

    /// Makes what was recorded durable.
    pub fn sync(&self) -> Result<(), WitnessError> {
        self.file.sync_data().map_err(|source| WitnessError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// A second handle on the file, to sync it without holding whoever
    /// records into it.
    pub fn sync_handle(&self) -> Result<std::fs::File, WitnessError> {
        self.file.try_clone().map_err(|source| WitnessError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The newest checkpoint witnessed at `path`, verified with the ledger's
/// key and origin; `None` when there is no witness yet (no file, or empty
/// slots).
pub fn read_witness(
    path: &Path,
    verifier_key: &str,
    origin: &str,
) -> Result<Option<VerifiedCheckpoint>, WitnessError> {
    let name = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(WitnessError::Io { path: name, source }),
    };
    let mut valid: Vec<VerifiedCheckpoint> = Vec::new();
    let mut problems = Vec::new();
    let mut written = 0;
    for (i, slot) in bytes.chunks(SLOT as usize).take(2).enumerate() {
        if slot.iter().all(|&b| b == 0) {
            continue;
        }
        written += 1;
        let note = slot
            .strip_prefix(&MAGIC[..])
            .and_then(|rest| {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                rest.get(4..4 + len)
            })
            .ok_or_else(|| format!("slot {i} is not a witness record"));
        match note.and_then(|n| {
            verify_checkpoint(n, verifier_key, Some(origin)).map_err(|e| format!("slot {i}: {e}"))
        }) {
            Ok(cp) => valid.push(cp),
            Err(e) => problems.push(e),
        }
    }
    if written == 0 {
        return Ok(None);
    }
    if valid.is_empty() {
        return Err(WitnessError::Unreadable {
            path: name,
            why: problems.join("; "),
        });
    }
    valid.sort_by_key(|c| c.size);
    if let [a, b] = &valid[..]
        && a.size == b.size
        && a.root != b.root
    {
        return Err(WitnessError::Fork {
            path: name,
            size: a.size,
        });
    }
    Ok(valid.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{LedgerSigner, generate_key};

    #[test]
    fn the_newest_valid_slot_wins_and_damage_or_forks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/checkpoint");
        let (skey, vkey) = generate_key("kfm.test/w").unwrap();
        let s = LedgerSigner::from_key_text(&skey).unwrap();
        assert!(read_witness(&path, &vkey, "kfm.test/w").unwrap().is_none());
        let mut w = Witness::open(&path).unwrap();
        assert!(read_witness(&path, &vkey, "kfm.test/w").unwrap().is_none());
        for size in 1..=5u64 {
            w.record(
                size,
                &s.sign("kfm.test/w", size, &[size as u8; 32]).unwrap(),
            )
            .unwrap();
            let got = read_witness(&path, &vkey, "kfm.test/w").unwrap().unwrap();
            assert_eq!(got.size, size);
        }
        // Never backwards.
        w.record(2, &s.sign("kfm.test/w", 2, &[2; 32]).unwrap())
            .unwrap();
        assert_eq!(
            read_witness(&path, &vkey, "kfm.test/w")
                .unwrap()
                .unwrap()
                .size,
            5
        );
        // A torn newest slot: the other one answers.
        let mut bytes = std::fs::read(&path).unwrap();
        let (a, b) = bytes.split_at_mut(4096);
        let size_of = |slot: &[u8]| {
            verify_checkpoint(
                &slot[20..20 + u32::from_be_bytes(slot[16..20].try_into().unwrap()) as usize],
                &vkey,
                None,
            )
            .unwrap()
            .size
        };
        let (na, nb) = (size_of(a), size_of(b));
        let torn = if na > nb { &mut *a } else { &mut *b };
        torn[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            read_witness(&path, &vkey, "kfm.test/w")
                .unwrap()
                .unwrap()
                .size,
            na.min(nb)
        );
        // Both damaged: refused, not taken as "no witness".
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 2;
        bytes[4096 + 30] ^= 2;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_witness(&path, &vkey, "kfm.test/w"),
            Err(WitnessError::Unreadable { .. })
        ));
        // Another key's checkpoints: refused.
        let (other_s, _) = generate_key("kfm.test/w").unwrap();
        let o = LedgerSigner::from_key_text(&other_s).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut w = Witness::open(&path).unwrap();
        w.record(3, &o.sign("kfm.test/w", 3, &[3; 32]).unwrap())
            .unwrap();
        assert!(read_witness(&path, &vkey, "kfm.test/w").is_err());
        // Two checkpoints of one size with different roots: a fork.
        std::fs::remove_file(&path).unwrap();
        let mut w = Witness::open(&path).unwrap();
        w.record(3, &s.sign("kfm.test/w", 3, &[3; 32]).unwrap())
            .unwrap();
        w.last = 0;
        w.record(3, &s.sign("kfm.test/w", 3, &[4; 32]).unwrap())
            .unwrap();
        assert!(matches!(
            read_witness(&path, &vkey, "kfm.test/w"),
            Err(WitnessError::Fork { size: 3, .. })
        ));
    }
}
