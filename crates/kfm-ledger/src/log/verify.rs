//! Offline verification: every file the checkpoint covers, every journal
//! record, the guards, and (for an auditor who kept one) consistency with
//! an earlier checkpoint.

use kfm_store::Audit;

use super::load::{Loaded, load_all};
use super::{CHECKPOINT, Guards, LedgerError, corrupt, hex};
use crate::checkpoint::verify_checkpoint;
use crate::merkle::{Hash, verify_consistency};
use crate::tiles::{TILE_WIDTH, entries_path, new_hash_tiles, parse_bundle};

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub size: u64,
    pub root: Hash,
    pub bundles: u64,
    pub hash_tiles: u64,
    /// Entries durable in the journal and not yet written as tiles.
    pub journal_entries: u64,
    /// The witnessed checkpoint's size, when there is a witness.
    pub witnessed: Option<u64>,
}

/// Verifies a whole ledger offline: the checkpoint's signature, every entry
/// bundle, every hash tile against the hashes recomputed from the entries,
/// the root against the checkpoint, every journal record (signature and
/// continuity), what lies beyond the checkpoint object, and the guards
/// (witness, references). Returns the first problem found, naming the file
/// (and the entry index where there is one).
pub async fn verify(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
    guards: &Guards,
) -> Result<VerifyReport, LedgerError> {
    verify_found(audit, verifier_key, origin, guards)
        .await
        .map(|(r, _)| r)
}

async fn verify_found(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
    guards: &Guards,
) -> Result<(VerifyReport, Loaded), LedgerError> {
    let found = match load_all(audit, verifier_key, origin, guards).await {
        // A root mismatch means an entry was altered: find which, via the
        // level-0 hash tiles, for a precise message.
        Err(LedgerError::Corrupt { place, what }) if place == "tile/entries" => {
            return Err(locate_altered_entry(audit, verifier_key, origin)
                .await
                .unwrap_or(corrupt(place, what)));
        }
        other => other?,
    };
    let loaded = &found;
    let stored = loaded.stored_size;
    let tiles = new_hash_tiles(0, stored);
    for t in &tiles {
        let path = t.path();
        let want = t
            .to_tlog()
            .read_data(&loaded.tree)
            .map_err(|e| corrupt(&path, e.to_string()))?;
        let have = audit
            .get_opt(&path)
            .await?
            .ok_or_else(|| corrupt(&path, "missing"))?;
        if have != want {
            let first = first_diff_hash(&have, &want);
            return Err(corrupt(
                &path,
                format!(
                    "hash {first} of this tile does not match the hash recomputed from the entries (the tile was altered)"
                ),
            ));
        }
    }
    check_superseded_partials(audit, stored).await?;
    let size = loaded.tree.size();
    let witnessed = match &guards.witness {
        Some(p) => crate::witness::read_witness(p, verifier_key, origin)?.map(|w| w.size),
        None => None,
    };
    let report = VerifyReport {
        size,
        root: loaded.tree.root(),
        bundles: stored.div_ceil(TILE_WIDTH),
        hash_tiles: tiles.len() as u64,
        journal_entries: size - stored,
        witnessed,
    };
    Ok((report, found))
}

/// What `verify_against` proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extends {
    pub old_size: u64,
    pub new_size: u64,
    /// The consistency proof, verified.
    pub proof: Vec<Hash>,
}

/// For an auditor who kept an earlier signed checkpoint: verifies the
/// whole ledger ([`verify`]), then that it extends that checkpoint (a
/// consistency proof from its size to the current one, checked against both
/// roots). A log that was truncated, rolled back or rewritten since fails.
pub async fn verify_against(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
    guards: &Guards,
    kept: &[u8],
) -> Result<(VerifyReport, Extends), LedgerError> {
    let old = verify_checkpoint(kept, verifier_key, Some(origin))?;
    let (report, found) = verify_found(audit, verifier_key, origin, guards).await?;
    let tree = &found.tree;
    let size = tree.size();
    if old.size > size {
        return Err(LedgerError::Refused(format!(
            "the kept checkpoint covers {} entries but the ledger holds {size}: it was truncated or rolled back",
            old.size
        )));
    }
    let old_root = tree.root_at(old.size)?;
    if old_root != old.root {
        return Err(LedgerError::Refused(format!(
            "the ledger's first {} entries hash to {}, but the kept checkpoint says {}: its history was rewritten",
            old.size,
            hex(&old_root),
            hex(&old.root)
        )));
    }
    let proof = tree.prove_consistency(old.size, size)?;
    verify_consistency(old.size, size, &proof, &old.root, &tree.root())?;
    Ok((
        report,
        Extends {
            old_size: old.size,
            new_size: size,
            proof,
        },
    ))
}

/// Partial tiles and bundles an earlier round wrote, below the width the
/// checkpoint now needs, stay in the store (nothing is ever deleted from
/// the audit zone). Each must be a byte prefix of the tile that superseded
/// it (or, torn by a crash, a shorter prefix): a C2SP reader may fetch
/// either, so an altered one is an altered ledger.
async fn check_superseded_partials(audit: &Audit, stored: u64) -> Result<(), LedgerError> {
    use std::collections::HashMap;
    // (level, n) -> the width the current tree uses there.
    let mut current: HashMap<(Option<u8>, u64), u64> = new_hash_tiles(0, stored)
        .into_iter()
        .map(|t| ((Some(t.level), t.n), t.width))
        .collect();
    for n in 0..stored.div_ceil(TILE_WIDTH) {
        current.insert((None, n), (stored - n * TILE_WIDTH).min(TILE_WIDTH));
    }
    let path_of = |level: Option<u8>, n: u64, width: u64| match level {
        Some(l) => crate::tiles::hash_tile_path(l, n, width),
        None => entries_path(n, width),
    };
    let mut wanted: HashMap<(Option<u8>, u64), bytes::Bytes> = HashMap::new();
    for obj in audit.list("tile").await? {
        let Some((level, n, width)) = super::guard::parse_tile_key(&obj.key) else {
            continue; // refused by the guards already
        };
        let Some(&now) = current.get(&(level, n)) else {
            continue; // beyond the checkpoint: the guards judge it
        };
        if width >= now {
            continue; // the current tile (checked above), or beyond it
        }
        let full = match wanted.get(&(level, n)) {
            Some(b) => b.clone(),
            None => {
                let b = audit.get(&path_of(level, n, now)).await?;
                wanted.insert((level, n), b.clone());
                b
            }
        };
        let have = audit.get(&obj.key).await?;
        let prefix_len = match level {
            Some(_) => (width * 32) as usize,
            None => {
                // The first `width` entries of the current bundle.
                let entries = parse_bundle(&full)
                    .ok_or_else(|| corrupt(path_of(level, n, now), "malformed entry bundle"))?;
                entries
                    .iter()
                    .take(width as usize)
                    .map(|e| 2 + e.len())
                    .sum()
            }
        };
        // A round cut short by a crash or a full disk may have left the file
        // shorter (a torn write only truncates); any byte that differs is
        // an alteration.
        if have.len() > prefix_len || full.get(..have.len()) != Some(&have[..]) {
            return Err(corrupt(
                &obj.key,
                format!(
                    "a superseded partial tile that is not a prefix of {} (it was altered)",
                    path_of(level, n, now)
                ),
            ));
        }
    }
    Ok(())
}

fn first_diff_hash(a: &[u8], b: &[u8]) -> usize {
    a.chunks(32)
        .zip(b.chunks(32))
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()) / 32)
}

/// With the root wrong, compares each bundle's entries with the leaf hashes
/// stored in the level-0 tiles to name the altered entry.
async fn locate_altered_entry(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
) -> Option<LedgerError> {
    let cp = audit.read_checkpoint(CHECKPOINT).await.ok()??;
    let size = verify_checkpoint(&cp.bytes, verifier_key, Some(origin))
        .ok()?
        .size;
    for n in 0..size.div_ceil(TILE_WIDTH) {
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let bundle = audit.get(&entries_path(n, width)).await.ok()?;
        let leaves = audit
            .get(&crate::tiles::hash_tile_path(0, n, width))
            .await
            .ok()?;
        for (i, e) in parse_bundle(&bundle)?.iter().enumerate() {
            let stored = leaves.get(i * 32..i * 32 + 32)?;
            if crate::merkle::leaf_hash(e)[..] != *stored {
                return Some(corrupt(
                    entries_path(n, width),
                    format!(
                        "entry {} does not match its leaf hash (the entry or tile/0 was altered)",
                        n * TILE_WIDTH + i as u64
                    ),
                ));
            }
        }
    }
    None
}
