//! What vouches for the ledger from outside the audit zone, and the checks
//! every writer and reader makes against it before trusting the log.
//!
//! Deleting the checkpoint object, the audit zone, the journal, or
//! restoring an older copy of them all leave a log that looks smaller but
//! intact. Three things outside it say how large it must be:
//! * the objects themselves: tiles and bundles beyond the checkpoint are
//!   justified only by journal records that cover them (or, on S3, as the
//!   objects of the one batch whose checkpoint never landed);
//! * the witness, the newest checkpoint a writer acknowledged, kept outside
//!   the store ([`crate::witness`]);
//! * references: ledger indexes that release pointers name.
//!
//! A log smaller than any of these, or inconsistent with the witness, is
//! refused ([`LedgerError::Refused`]) before anything is written or
//! deleted.

use kfm_store::Audit;

use super::load::{JournalRead, Loaded};
use super::{Guards, LedgerError, corrupt, hex};
use crate::checkpoint::VerifiedCheckpoint;
use crate::tiles::TILE_WIDTH;
use crate::witness::read_witness;

/// A tile or entry bundle that the checkpoint object does not cover.
#[derive(Debug, Clone)]
pub(super) struct Uncovered {
    pub key: String,
    /// `None` for an entry bundle, else the hash tile's level.
    pub level: Option<u8>,
    pub n: u64,
    pub width: u64,
    /// The smallest tree that holds it.
    pub need: u64,
}

/// Parses `tile/<L|entries>/<x…/NNN>[.p/W]` into (level or None for
/// entries, index, width).
pub(super) fn parse_tile_key(key: &str) -> Option<(Option<u8>, u64, u64)> {
    let rest = key.strip_prefix("tile/")?;
    let (kind, rest) = rest.split_once('/')?;
    let level = if kind == "entries" {
        None
    } else {
        Some(kind.parse::<u8>().ok()?)
    };
    let (idx, width) = match rest.split_once(".p/") {
        Some((i, w)) => (
            i,
            w.parse::<u64>()
                .ok()
                .filter(|w| (1..TILE_WIDTH).contains(w))?,
        ),
        None => (rest, TILE_WIDTH),
    };
    let mut n: u64 = 0;
    let parts: Vec<&str> = idx.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let digits = if i + 1 < parts.len() {
            p.strip_prefix('x')?
        } else {
            p
        };
        if digits.len() != 3 {
            return None;
        }
        n = n
            .checked_mul(1000)?
            .checked_add(digits.parse::<u64>().ok()?)?;
    }
    Some((level, n, width))
}

/// The smallest tree size that has `width` entries (level None) or
/// level-L hashes in tile `n`.
pub(super) fn need(level: Option<u8>, n: u64, width: u64) -> u64 {
    let count = n.saturating_mul(TILE_WIDTH).saturating_add(width);
    match level {
        None => count,
        Some(l) => {
            let shift = 8 * u32::from(l);
            if shift >= 64 || count.leading_zeros() < shift {
                u64::MAX
            } else {
                count << shift
            }
        }
    }
}

/// Every tile or bundle beyond what a checkpoint of `size` covers. Every
/// hash tile the checkpoint covers must be there (its bundles are read
/// whole when loading): a missing one is refused here, by writers too.
pub(super) async fn uncovered(audit: &Audit, size: u64) -> Result<Vec<Uncovered>, LedgerError> {
    let mut out = Vec::new();
    let listed = audit.list("tile").await?;
    let keys: std::collections::HashSet<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    for t in crate::tiles::new_hash_tiles(0, size) {
        let key = t.path();
        if !keys.contains(key.as_str()) {
            return Err(corrupt(
                key,
                format!("missing: the checkpoint covers {size} entries"),
            ));
        }
    }
    for obj in &listed {
        let Some((level, n, width)) = parse_tile_key(&obj.key) else {
            return Err(corrupt(
                &obj.key,
                "not a tile path; the audit zone holds only the ledger",
            ));
        };
        let need = need(level, n, width);
        if need > size {
            out.push(Uncovered {
                key: obj.key.clone(),
                level,
                n,
                width,
                need,
            });
        }
    }
    Ok(out)
}

/// The witnessed checkpoint, if a witness is configured and holds one.
pub(super) fn witnessed(
    guards: &Guards,
    verifier_key: &str,
    origin: &str,
) -> Result<Option<VerifiedCheckpoint>, LedgerError> {
    match &guards.witness {
        None => Ok(None),
        Some(p) => Ok(read_witness(p, verifier_key, origin)?),
    }
}

/// What [`check`] decided about the objects beyond the checkpoint object.
#[derive(Debug, Default)]
pub(super) struct Checked {
    /// Covered by the journal: must hold what it says (or a prefix).
    pub justified: Vec<Uncovered>,
    /// The objects of one S3 batch whose checkpoint never landed: never
    /// acknowledged, to be removed before that batch is written again.
    pub torn_batch: Vec<Uncovered>,
}

/// Checks the loaded log (store plus journal) against the objects beyond
/// its checkpoint, the witness and the references. `batch_cap`: on a
/// store without a journal (S3), how many entries one unacknowledged batch
/// may have left beyond the checkpoint (0 for readers, which discard
/// nothing and so accept no such objects either).
pub(super) fn check(
    loaded: &Loaded,
    journal: &JournalRead,
    uncovered: &[Uncovered],
    guards: &Guards,
    witnessed: Option<&VerifiedCheckpoint>,
    batch_cap: u64,
) -> Result<Checked, LedgerError> {
    let stored = loaded.stored_size;
    let size = loaded.tree.size();
    let witnessed_size = witnessed.map_or(0, |w| w.size);
    let mut out = Checked::default();
    let mut beyond: Vec<&Uncovered> = Vec::new();
    for u in uncovered {
        if u.need <= size {
            out.justified.push(u.clone());
        } else if !journal.kept
            && batch_cap > 0
            && u.need <= stored + batch_cap
            && witnessed_size <= stored
        {
            out.torn_batch.push(u.clone());
        } else {
            beyond.push(u);
        }
    }
    if let Some(first) = beyond.first() {
        let what = if beyond.len() == 1 {
            format!("{} (needs {} entries)", first.key, first.need)
        } else {
            format!(
                "{} objects such as {} (needs {} entries)",
                beyond.len(),
                first.key,
                first.need
            )
        };
        let holds = if !loaded.has_checkpoint() {
            "but no checkpoint: the checkpoint object was deleted".to_owned()
        } else if journal.kept {
            format!(
                "beyond the {size} entries its checkpoint and journal hold: the checkpoint was replaced by an older one, or the journal was lost"
            )
        } else {
            format!(
                "beyond the {size} entries its checkpoint holds: the checkpoint was replaced by an older one"
            )
        };
        return Err(LedgerError::Refused(format!(
            "the audit zone holds {what} {holds}"
        )));
    }
    if let (Some(w), Some(path)) = (witnessed, &guards.witness) {
        if w.size > size {
            let mut why = Vec::new();
            if !loaded.has_checkpoint() {
                why.push("there is no checkpoint object".to_owned());
            } else if stored < w.size {
                why.push(format!("the checkpoint object covers {stored}"));
            }
            if journal.kept {
                if journal.files.is_empty() {
                    why.push("the journal is missing".into());
                } else if size == stored {
                    why.push(format!(
                        "the journal holds no record beyond entry {stored} (deleted, zeroed or truncated)"
                    ));
                }
                for (file, s) in &journal.stops {
                    let end = s
                        .claimed
                        .map(|c| format!("..{}", s.offset + c))
                        .unwrap_or_default();
                    why.push(format!(
                        "{file}: the bytes at {}{end} are not an intact record",
                        s.offset
                    ));
                }
            }
            return Err(LedgerError::Refused(format!(
                "the ledger holds {size} entries but the checkpoint witnessed at {} covers {}: entries {size}..{} were acknowledged and are missing ({})",
                path.display(),
                w.size,
                w.size,
                if why.is_empty() {
                    "the audit zone was restored from an older copy".to_owned()
                } else {
                    why.join("; ")
                }
            )));
        }
        let root = loaded.tree.root_at(w.size)?;
        if root != w.root {
            return Err(LedgerError::Refused(format!(
                "the ledger's first {} entries hash to {}, but the checkpoint witnessed at {} says {}: its history was rewritten",
                w.size,
                hex(&root),
                path.display(),
                hex(&w.root)
            )));
        }
    }
    if let Some(r) = guards.references.iter().max_by_key(|r| r.index)
        && r.index >= size
    {
        return Err(LedgerError::Refused(format!(
            "{} names ledger entry {}, but the ledger holds {size} entries",
            r.what, r.index
        )));
    }
    // What a crash left that the checks above allow: said, never silent.
    for (file, s) in &journal.stops {
        if s.after_record {
            tracing::warn!(
                journal = %file,
                offset = s.offset,
                "journal: a write torn by a crash was dropped; it was never acknowledged (every witnessed entry is present)"
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_keys_parse_and_the_size_they_need() {
        assert_eq!(
            parse_tile_key("tile/entries/x001/234.p/5"),
            Some((None, 1234, 5))
        );
        assert_eq!(parse_tile_key("tile/2/007"), Some((Some(2), 7, 256)));
        assert_eq!(parse_tile_key("tile/0/7"), None);
        assert_eq!(parse_tile_key("tile/0/000.p/256"), None);
        assert_eq!(need(None, 0, 256), 256);
        assert_eq!(need(None, 1, 44), 300);
        assert_eq!(need(Some(0), 1, 44), 300);
        assert_eq!(need(Some(1), 0, 1), 256);
        assert_eq!(need(Some(1), 0, 2), 512);
        assert_eq!(need(Some(8), 0, 1), u64::MAX);
    }
}
