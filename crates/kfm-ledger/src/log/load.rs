//! Reading the ledger: the checkpoint object and the bundles it covers,
//! what lies beyond it, and the journal's records.

use bytes::Bytes;
use kfm_store::{Audit, PointerVersion};

use super::guard::{self, Uncovered};
use super::{CHECKPOINT, Guards, LedgerError, corrupt, hex};
use crate::checkpoint::verify_checkpoint;
use crate::journal::{Record, Stop};
use crate::merkle::MerkleTree;
use crate::tiles::{HashTile, TILE_WIDTH, entries_path, parse_bundle, push_entry};

/// A ledger loaded from the store (and, on a directory, its journal) and
/// checked against the signed checkpoints.
pub(super) struct Loaded {
    pub tree: MerkleTree,
    /// First index held in `tail`: the start of the bundle that holds entry
    /// `stored_size` (a multiple of the tile width).
    pub tail_from: u64,
    /// Entries from `tail_from` to the end of the tree.
    pub tail: Vec<Vec<u8>>,
    /// Signed checkpoint for the whole tree (empty for an empty ledger).
    pub checkpoint: Vec<u8>,
    /// Version of the checkpoint object in the store.
    pub version: Option<PointerVersion>,
    /// Size covered by the checkpoint object: entries written as tiles.
    pub stored_size: u64,
}

impl Loaded {
    pub fn has_checkpoint(&self) -> bool {
        self.version.is_some()
    }
}

/// Reads the checkpoint and every entry bundle it covers, rebuilds the tree
/// and checks its root against the checkpoint's.
pub(super) async fn load(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
) -> Result<Loaded, LedgerError> {
    let Some(cp) = audit.read_checkpoint(CHECKPOINT).await? else {
        return Ok(Loaded {
            tree: MerkleTree::new(),
            tail_from: 0,
            tail: Vec::new(),
            checkpoint: Vec::new(),
            version: None,
            stored_size: 0,
        });
    };
    let signed = verify_checkpoint(&cp.bytes, verifier_key, Some(origin))?;
    let size = signed.size;
    let mut tree = MerkleTree::new();
    let mut tail = Vec::new();
    let bundles = size.div_ceil(TILE_WIDTH);
    for n in 0..bundles {
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let path = entries_path(n, width);
        let bytes = audit.get_opt(&path).await?.ok_or_else(|| {
            corrupt(
                &path,
                format!("missing: the checkpoint covers {size} entries"),
            )
        })?;
        let entries = parse_bundle(&bytes).ok_or_else(|| {
            corrupt(
                &path,
                "malformed entry bundle (truncated or trailing bytes)",
            )
        })?;
        if entries.len() as u64 != width {
            return Err(corrupt(
                &path,
                format!("holds {} entries, its name says {width}", entries.len()),
            ));
        }
        for e in &entries {
            tree.push(e);
        }
        if width < TILE_WIDTH {
            tail = entries.iter().map(|e| e.to_vec()).collect();
        }
    }
    let root = tree.root();
    if root != signed.root {
        return Err(corrupt(
            "tile/entries",
            format!(
                "the {size} entries hash to root {}, the signed checkpoint says {}",
                hex(&root),
                hex(&signed.root)
            ),
        ));
    }
    Ok(Loaded {
        tree,
        tail_from: (size / TILE_WIDTH) * TILE_WIDTH,
        tail,
        checkpoint: cp.bytes.to_vec(),
        version: Some(cp.version),
        stored_size: size,
    })
}

/// What the journal files hold beyond the tiles.
#[derive(Debug, Default)]
pub(super) struct JournalRead {
    /// Records beyond the tiles, in tree order.
    pub records: Vec<Record>,
    /// Whether this store keeps a journal at all (directory stores).
    pub kept: bool,
    /// Names of the journal files found.
    pub files: Vec<String>,
    /// Where a file's chain stopped at bytes that are not a record.
    pub stops: Vec<(String, Stop)>,
}

/// Reads the records of every journal file (current and retired) beyond
/// `floor`, the size the tiles hold, in tree order. A record read twice (a
/// rotation while reading) counts once; two different records for the same
/// entries are corruption.
pub(super) fn read_journal(audit: &Audit, floor: u64) -> Result<JournalRead, LedgerError> {
    let mut all = Vec::new();
    let mut out = JournalRead {
        kept: crate::durable::journal_path(audit).is_some(),
        ..JournalRead::default()
    };
    for file in crate::durable::journal_files(audit)? {
        let d = crate::journal::decode(&file, floor).map_err(|e| corrupt(&file.name, e))?;
        out.files.push(file.name.clone());
        if let Some(s) = d.stopped {
            out.stops.push((file.name.clone(), s));
        }
        all.extend(
            d.records
                .into_iter()
                .filter(|r| r.new_size() > floor)
                .map(|r| (file.name.clone(), r)),
        );
    }
    all.sort_by_key(|(_, r)| r.old_size);
    for (name, r) in all {
        match out.records.last() {
            Some(prev) if prev.old_size == r.old_size => {
                if *prev != r {
                    return Err(corrupt(
                        name,
                        format!(
                            "two different journal records start at entry {}",
                            r.old_size
                        ),
                    ));
                }
            }
            _ => out.records.push(r),
        }
    }
    Ok(out)
}

/// Applies journal records beyond what the store holds, checking that each
/// continues the tree and carries a valid signed checkpoint for its size.
pub(super) fn apply_journal(
    loaded: &mut Loaded,
    records: &[Record],
    verifier_key: &str,
    origin: &str,
) -> Result<(), LedgerError> {
    for (i, r) in records.iter().enumerate() {
        if r.new_size() <= loaded.stored_size {
            continue; // already written as tiles
        }
        let size = loaded.tree.size();
        if r.old_size != size {
            let whose = if loaded.has_checkpoint() {
                format!("the audit zone's checkpoint covers {size}")
            } else {
                "the audit zone has no checkpoint".to_owned()
            };
            return Err(LedgerError::Refused(format!(
                "the journal continues the ledger from entry {}, but {whose}: entries {size}..{} are missing from the audit zone",
                r.old_size, r.old_size
            )));
        }
        for e in &r.entries {
            loaded.tree.push(e);
        }
        loaded.tail.extend(r.entries.iter().cloned());
        let cp = verify_checkpoint(&r.note, verifier_key, Some(origin))
            .map_err(|e| corrupt("journal", format!("record {i}: {e}")))?;
        if cp.size != loaded.tree.size() || cp.root != loaded.tree.root() {
            return Err(corrupt(
                "journal",
                format!("record {i}: its signed checkpoint does not match its entries"),
            ));
        }
        loaded.checkpoint = r.note.clone();
    }
    Ok(())
}

/// The bytes a tile or bundle beyond the checkpoint object must hold (or
/// begin with, if a crash cut its write short), given the whole tree.
pub(super) fn expected_object(loaded: &Loaded, u: &Uncovered) -> Option<Vec<u8>> {
    match u.level {
        None => {
            let start = u.n * TILE_WIDTH;
            let from = start.checked_sub(loaded.tail_from)? as usize;
            let entries = loaded.tail.get(from..from + u.width as usize)?;
            let mut bundle = Vec::new();
            for e in entries {
                push_entry(&mut bundle, e);
            }
            Some(bundle)
        }
        Some(level) => HashTile {
            level,
            n: u.n,
            width: u.width,
        }
        .to_tlog()
        .read_data(&loaded.tree)
        .ok(),
    }
}

/// How an object beyond the checkpoint compares with what it must hold.
pub(super) enum Fits {
    Exactly,
    /// A prefix (a round a crash cut short): the writer completes it.
    Prefix(Bytes),
    Differs,
}

pub(super) async fn fits(
    audit: &Audit,
    loaded: &Loaded,
    u: &Uncovered,
) -> Result<Fits, LedgerError> {
    let Some(want) = expected_object(loaded, u) else {
        return Ok(Fits::Differs);
    };
    let have = audit.get(&u.key).await?;
    Ok(if have[..] == want[..] {
        Fits::Exactly
    } else if want.starts_with(&have) {
        Fits::Prefix(Bytes::from(want))
    } else {
        Fits::Differs
    })
}

/// How many times a reader reads the journal again when what it read
/// looked damaged (see [`read_journal_settled`]).
const JOURNAL_REREADS: u32 = 6;

/// [`read_journal`] for a reader, which may run beside a live writer.
///
/// Invariant: a live writer's write is not damage. A reader's `pread`
/// copies page by page while the writer appends (direct writes land in any
/// order within a write), so a read that overlaps one can find a record
/// half old, half new, and an intact later record after it. Real damage
/// stays; a write in flight completes within milliseconds: the journal
/// (only the journal: the tiles read before it are not read again) is read
/// again before it is called damaged.
async fn read_journal_settled(audit: &Audit, floor: u64) -> Result<JournalRead, LedgerError> {
    let mut rereads = 0u32;
    loop {
        match read_journal(audit, floor) {
            Err(LedgerError::Corrupt { .. }) if rereads < JOURNAL_REREADS => {
                rereads += 1;
                tokio::time::sleep(std::time::Duration::from_millis(25 * u64::from(rereads))).await;
            }
            other => return other,
        }
    }
}

/// Loads the store and applies the journal read-only (readers), then
/// checks the result against the guards. A live writer may write tiles,
/// swap the checkpoint and cut the journal between these reads; if the
/// checkpoint object changed meanwhile, read again, so that the result
/// holds at least everything durable when this began.
pub(super) async fn load_all(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
    guards: &Guards,
) -> Result<Loaded, LedgerError> {
    // The witness first: a writer records it only after the journal holds
    // what it covers, so reading it before the rest never finds it ahead
    // of a live, intact ledger.
    let witnessed = guard::witnessed(guards, verifier_key, origin)?;
    let mut attempt = 0;
    loop {
        let mut loaded = load(audit, verifier_key, origin).await?;
        // Tiles before the journal: a round writes tiles only for entries
        // the journal already holds, so none listed here lies beyond what
        // the journal read next covers.
        let uncovered = guard::uncovered(audit, loaded.stored_size).await;
        let journal = read_journal_settled(audit, loaded.stored_size).await;
        let now = audit.read_checkpoint(CHECKPOINT).await?.map(|p| p.version);
        if now != loaded.version {
            attempt += 1;
            if attempt >= 50 {
                return Err(LedgerError::Failed(
                    "the ledger's checkpoint kept moving while it was read (a busy writer); try again".into(),
                ));
            }
            continue;
        }
        let journal = journal?;
        let uncovered = uncovered?;
        apply_journal(&mut loaded, &journal.records, verifier_key, origin)?;
        let checked = guard::check(&loaded, &journal, &uncovered, guards, witnessed.as_ref(), 0)?;
        // A reader changes nothing: objects a torn round left short are
        // the writer's to complete; any that differ are damage.
        for u in &checked.justified {
            if let Fits::Differs = fits(audit, &loaded, u).await? {
                return Err(corrupt(
                    &u.key,
                    format!(
                        "beyond the checkpoint object and does not hold what the journal says it must (entries up to {})",
                        u.need
                    ),
                ));
            }
        }
        return Ok(loaded);
    }
}
