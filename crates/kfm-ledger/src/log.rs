//! The ledger on the store: entry bundles and hash tiles (C2SP tlog-tiles)
//! plus a signed checkpoint, with group commit, a single writer, recovery of
//! a torn tail, and full offline verification.
//!
//! Durability order: no appender learns its index before its entry is
//! durable. On a directory that is when the journal record holding its
//! batch (and the batch's signed checkpoint) has been synced; tiles and
//! bundles follow once a second, made durable together before the
//! checkpoint object moves to cover them. On S3 every tile and bundle of
//! the batch is acknowledged before the checkpoint is swapped in by
//! compare-and-swap. Either way a crash leaves, beyond the checkpoint
//! object, only objects no checkpoint covers: the next writer discards them
//! on open and rewrites them from the journal.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use kfm_store::{Audit, FreshJournal, Journal, PointerVersion, StoreError, WriterLock};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{CheckpointError, LedgerSigner, verify_checkpoint};
use crate::merkle::{Hash, MerkleTree, ProofError};
use crate::tiles::{MAX_ENTRY, TILE_WIDTH, entries_path, new_hash_tiles, parse_bundle, push_entry};

/// Key of the checkpoint inside the audit zone.
pub const CHECKPOINT: &str = "checkpoint";

/// Why a ledger operation failed. Each variant names the place involved.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "entry of {len} bytes refused: the ledger takes entries up to {MAX_ENTRY} bytes; store large payloads by digest and append the digest"
    )]
    EntryTooLarge { len: usize },
    #[error(
        "another writer holds this ledger; only one writer may append (history must never fork)"
    )]
    Locked,
    #[error(
        "the checkpoint was moved by another writer since this one opened the ledger; this writer stops (reopen to continue)"
    )]
    Superseded,
    #[error("{place}: {what}")]
    Corrupt { place: String, what: String },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error(
        "the ledger writer stopped after an earlier failure ({0}); reopen the ledger to recover"
    )]
    Failed(String),
}

fn corrupt(place: impl Into<String>, what: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        place: place.into(),
        what: what.into(),
    }
}

/// Group-commit settings.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Ledger origin: the first line of every checkpoint.
    pub origin: String,
    /// Most entries committed in one batch.
    pub batch_max: usize,
    /// Longest a batch waits for more entries once it has one.
    pub max_wait: Duration,
}

impl LedgerOptions {
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            batch_max: 1024,
            max_wait: Duration::from_micros(200),
        }
    }
}

/// What an acknowledged (durable) append returns.
#[derive(Debug, Clone)]
pub struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
    /// Tree size of the checkpoint that covers this entry.
    pub size: u64,
    /// That checkpoint, a signed note.
    pub checkpoint: Arc<Vec<u8>>,
}

/// An inclusion proof with the signed checkpoint it verifies against.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: Arc<Vec<u8>>,
}

/// A ledger loaded from the store (and, on a directory, its journal) and
/// checked against the signed checkpoints.
struct Loaded {
    tree: MerkleTree,
    /// First index held in `tail`: the start of the bundle that holds entry
    /// `stored_size` (a multiple of the tile width).
    tail_from: u64,
    /// Entries from `tail_from` to the end of the tree.
    tail: Vec<Vec<u8>>,
    /// Signed checkpoint for the whole tree (empty for an empty ledger).
    checkpoint: Vec<u8>,
    /// Version of the checkpoint object in the store.
    version: Option<PointerVersion>,
    /// Size covered by the checkpoint object: entries written as tiles.
    stored_size: u64,
}

/// Reads the checkpoint and every entry bundle it covers, rebuilds the tree
/// and checks its root against the checkpoint's.
async fn load(audit: &Audit, verifier_key: &str, origin: &str) -> Result<Loaded, LedgerError> {
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

/// Reads the records of every journal file (current and retired) beyond
/// `floor`, the size the tiles hold, in tree order. A torn final write and
/// stale records are left out. A record read twice (a rotation while
/// reading) counts once; two different records for the same entries are
/// corruption.
fn read_journal(audit: &Audit, floor: u64) -> Result<Vec<crate::journal::Record>, LedgerError> {
    let mut all = Vec::new();
    let ended = |b: &[u8]| crate::journal::ends_within(b, floor);
    for (name, bytes) in audit.journal_files(ended)? {
        let d = crate::journal::decode(&bytes, floor).map_err(|e| corrupt(&name, e))?;
        all.extend(
            d.records
                .into_iter()
                .filter(|r| r.new_size() > floor)
                .map(|r| (name.clone(), r)),
        );
    }
    all.sort_by_key(|(_, r)| r.old_size);
    let mut out: Vec<crate::journal::Record> = Vec::with_capacity(all.len());
    for (name, r) in all {
        match out.last() {
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
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// Applies journal records beyond what the store holds, checking that each
/// continues the tree and carries a valid signed checkpoint for its size.
fn apply_journal(
    loaded: &mut Loaded,
    records: Vec<crate::journal::Record>,
    verifier_key: &str,
    origin: &str,
) -> Result<(), LedgerError> {
    for (i, r) in records.into_iter().enumerate() {
        if r.new_size() <= loaded.stored_size {
            continue; // already written as tiles
        }
        let size = loaded.tree.size();
        if r.old_size != size {
            return Err(corrupt(
                "journal",
                format!(
                    "record {i} starts at entry {} but the ledger has {size}",
                    r.old_size
                ),
            ));
        }
        for e in &r.entries {
            loaded.tree.push(e);
        }
        loaded.tail.extend(r.entries);
        let cp = verify_checkpoint(&r.note, verifier_key, Some(origin))
            .map_err(|e| corrupt("journal", format!("record {i}: {e}")))?;
        if cp.size != loaded.tree.size() || cp.root != loaded.tree.root() {
            return Err(corrupt(
                "journal",
                format!("record {i}: its signed checkpoint does not match its entries"),
            ));
        }
        loaded.checkpoint = r.note;
    }
    Ok(())
}

/// Loads the store and applies the journal read-only (readers). A live
/// writer may write tiles, swap the checkpoint and cut the journal between
/// these reads; if the checkpoint object changed meanwhile, read again, so
/// that the result holds at least everything durable when this began.
async fn load_all(audit: &Audit, verifier_key: &str, origin: &str) -> Result<Loaded, LedgerError> {
    let mut attempt = 0;
    loop {
        let mut loaded = load(audit, verifier_key, origin).await?;
        // A writer may restart or reuse a journal file once its tiles are
        // written: what was read is judged only if the checkpoint did not
        // move meanwhile.
        let records = read_journal(audit, loaded.stored_size);
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
        apply_journal(&mut loaded, records?, verifier_key, origin)?;
        return Ok(loaded);
    }
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub size: u64,
    pub root: Hash,
    pub bundles: u64,
    pub hash_tiles: u64,
    /// Entries durable in the journal and not yet written as tiles.
    pub journal_entries: u64,
}

/// Verifies a whole ledger offline: the checkpoint's signature, every entry
/// bundle, every hash tile against the hashes recomputed from the entries,
/// the root against the checkpoint, and every journal record (signature and
/// continuity). Returns the first problem found, naming the file (and the
/// entry index where there is one).
pub async fn verify(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
) -> Result<VerifyReport, LedgerError> {
    let loaded = match load_all(audit, verifier_key, origin).await {
        // A root mismatch means an entry was altered: find which, via the
        // level-0 hash tiles, for a precise message.
        Err(LedgerError::Corrupt { place, what }) if place == "tile/entries" => {
            return Err(locate_altered_entry(audit, verifier_key, origin)
                .await
                .unwrap_or(corrupt(place, what)));
        }
        other => other?,
    };
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
    let size = loaded.tree.size();
    Ok(VerifyReport {
        size,
        root: loaded.tree.root(),
        bundles: stored.div_ceil(TILE_WIDTH),
        hash_tiles: tiles.len() as u64,
        journal_entries: size - stored,
    })
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

/// Anything that can hand back a ledger entry by index: a [`LedgerView`]
/// (a reader) or the [`Ledger`] itself (the writer, for a process such as
/// the API that holds the writer and must read entries back).
pub trait EntrySource: Sync {
    fn entry(
        &self,
        index: u64,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, LedgerError>> + Send;
}

impl EntrySource for LedgerView {
    async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        LedgerView::entry(self, index).await
    }
}

impl EntrySource for Ledger {
    async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        Ledger::entry(self, index).await
    }
}

/// Reads entry `index` from its (full) entry bundle in the store.
async fn entry_from_bundle(audit: &Audit, index: u64, width: u64) -> Result<Vec<u8>, LedgerError> {
    let n = index / TILE_WIDTH;
    let path = entries_path(n, width);
    let bytes = audit.get(&path).await?;
    let entries = parse_bundle(&bytes).ok_or_else(|| corrupt(&path, "malformed entry bundle"))?;
    entries
        .get((index - n * TILE_WIDTH) as usize)
        .map(|e| e.to_vec())
        .ok_or_else(|| corrupt(&path, format!("has no entry {index}")))
}

/// Read-only view for proofs: loads and checks the ledger (store and
/// journal), then answers proof queries from memory and reads entries on
/// demand.
pub struct LedgerView {
    audit: Audit,
    loaded: Loaded,
}

impl LedgerView {
    pub async fn open(
        audit: &Audit,
        verifier_key: &str,
        origin: &str,
    ) -> Result<Self, LedgerError> {
        Ok(Self {
            audit: audit.clone(),
            loaded: load_all(audit, verifier_key, origin).await?,
        })
    }

    /// The entry at `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let l = &self.loaded;
        let size = l.tree.size();
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size }.into());
        }
        if index >= l.tail_from {
            return Ok(l.tail[(index - l.tail_from) as usize].clone());
        }
        let n = index / TILE_WIDTH;
        let width = (l.stored_size - n * TILE_WIDTH).min(TILE_WIDTH);
        entry_from_bundle(&self.audit, index, width).await
    }

    /// The index of the first entry whose leaf hash is `leaf`.
    pub fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        let t = &self.loaded.tree;
        (0..t.size()).find(|&i| t.leaf(i).as_ref() == Some(leaf))
    }

    pub fn size(&self) -> u64 {
        self.loaded.tree.size()
    }

    pub fn root(&self) -> Hash {
        self.loaded.tree.root()
    }

    /// The signed checkpoint for the whole tree (empty for an empty ledger).
    pub fn checkpoint(&self) -> &[u8] {
        &self.loaded.checkpoint
    }

    pub fn tree(&self) -> &MerkleTree {
        &self.loaded.tree
    }
}

struct Request {
    entry: Vec<u8>,
    /// Hashed by the appender, in parallel, not by the single writer.
    leaf: Hash,
    done: oneshot::Sender<Result<Appended, String>>,
}

struct Shared {
    /// Every durable leaf (and, during a commit, the batch's own).
    tree: MerkleTree,
    /// Durable size: what proofs and `size` report.
    committed: u64,
    checkpoint: Arc<Vec<u8>>,
    batches: u64,
    /// Journal syncs since open (directory stores).
    syncs: u64,
    /// The current journal file is more than half full: the tile writer
    /// should not wait out its interval before rotating it.
    journal_pressure: bool,
    tail_from: u64,
    /// Shared, not copied, with the tile writer's bundles.
    tail: Vec<Bytes>,
    /// Size written as tiles with its checkpoint object.
    materialized: u64,
    failed: Option<String>,
}

/// The journal with the size its last record reaches.
struct JournalState {
    journal: Journal,
    last_size: u64,
    /// Size the retired file's last record reaches, while there is one.
    retired: Option<u64>,
}

/// The single writer of a ledger. Appends are group-committed by a
/// background task; each returns once its batch is durable.
///
/// On a directory a batch is durable when its journal record is synced (one
/// `fdatasync`, shared by every batch queued meanwhile, on the journal
/// thread); a second task then writes tiles and the checkpoint object,
/// coalescing batches. On S3 each batch writes its tiles and checkpoint
/// before answering.
pub struct Ledger {
    tx: Option<mpsc::Sender<Request>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<RwLock<Shared>>,
    /// Held by this value and by both background tasks: dropping the
    /// `Ledger` without `close` keeps the lock until the tasks end.
    _lock: Arc<WriterLock>,
    /// For [`Ledger::view`].
    audit: Audit,
    verifier_key: String,
    origin: String,
}

impl Ledger {
    /// Opens the ledger for writing: takes the writer lock, verifies the
    /// checkpoint and the entries it covers, discards a torn tail, replays
    /// the journal and writes what it held as tiles.
    pub async fn open(
        audit: Audit,
        signer: LedgerSigner,
        opts: LedgerOptions,
    ) -> Result<Self, LedgerError> {
        let lock = match audit.lock_writer() {
            Ok(l) => l,
            Err(StoreError::Conflict { .. }) => return Err(LedgerError::Locked),
            Err(e) => return Err(e.into()),
        };
        let vkey = signer.verifier_key().to_owned();
        let origin = opts.origin.clone();
        let mut loaded = load(&audit, &vkey, &opts.origin).await?;
        discard_torn_tail(&audit, loaded.stored_size).await?;
        let records = read_journal(&audit, loaded.stored_size)?;
        apply_journal(&mut loaded, records, &vkey, &opts.origin)?;
        let journal = audit.journal()?;
        let size = loaded.tree.size();
        let shared = Arc::new(RwLock::new(Shared {
            tree: loaded.tree,
            committed: size,
            checkpoint: Arc::new(loaded.checkpoint),
            batches: 0,
            syncs: 0,
            journal_pressure: false,
            tail_from: loaded.tail_from,
            tail: loaded.tail.into_iter().map(Bytes::from).collect(),
            materialized: loaded.stored_size,
            failed: None,
        }));
        let mut mat = Materializer {
            audit: audit.clone(),
            shared: shared.clone(),
            version: loaded.version,
        };
        mat.catch_up().await?;
        if let Ok(mut s) = shared.write() {
            // Loading rebuilt every hash; keep only what tiles do not hold.
            let m = s.materialized;
            s.tree.prune(m);
        }
        let (journal, spare) = match journal {
            Some(mut j) => {
                // Everything both files held is now in tiles: start again
                // at the beginning of the current one (what follows is
                // stale, a torn last record included), and have the spare
                // ready: the retired file, or one left from before, or (on
                // a new store, once) a new one.
                j.restart()?;
                let spare = FreshJournal::prepare(j.path(), j.allocated(), true)?;
                let st = JournalState {
                    journal: j,
                    last_size: size,
                    retired: None,
                };
                (Some(Arc::new(std::sync::Mutex::new(st))), Some(spare))
            }
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(opts.batch_max.max(1) * 4);
        let notify = Arc::new(tokio::sync::Notify::new());
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lock = Arc::new(lock);
        let mut tasks = Vec::new();
        let inline = match &journal {
            Some(j) => {
                let (j, n, c, l) = (j.clone(), notify.clone(), closing.clone(), lock.clone());
                tasks.push(tokio::spawn(async move {
                    mat.run(j, spare, n, c).await;
                    drop(l);
                }));
                None
            }
            None => Some(mat),
        };
        let writer = Writer {
            signer,
            opts,
            shared: shared.clone(),
            journal,
            inline,
            notify,
            closing,
        };
        let l = lock.clone();
        tasks.insert(
            0,
            tokio::spawn(async move {
                writer.run(rx).await;
                drop(l);
            }),
        );
        Ok(Self {
            tx: Some(tx),
            tasks,
            shared,
            _lock: lock,
            audit,
            verifier_key: vkey,
            origin,
        })
    }

    /// A read-only view of everything acknowledged so far, checked like any
    /// reader's (for callers that must read entries back while writing,
    /// such as verifying the release pointer a promotion builds on).
    pub async fn view(&self) -> Result<LedgerView, LedgerError> {
        LedgerView::open(&self.audit, &self.verifier_key, &self.origin).await
    }

    /// Appends one entry; returns once it is durable, with its index, leaf
    /// hash and the signed checkpoint that covers it.
    pub async fn append(&self, entry: Vec<u8>) -> Result<Appended, LedgerError> {
        if entry.len() > MAX_ENTRY {
            return Err(LedgerError::EntryTooLarge { len: entry.len() });
        }
        let (done, rx) = oneshot::channel();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| LedgerError::Failed("closed".into()))?;
        let leaf = crate::merkle::leaf_hash(&entry);
        tx.send(Request { entry, leaf, done })
            .await
            .map_err(|_| LedgerError::Failed("writer stopped".into()))?;
        match rx.await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) if e == SUPERSEDED => Err(LedgerError::Superseded),
            Ok(Err(e)) => Err(LedgerError::Failed(e)),
            Err(_) => Err(LedgerError::Failed("writer stopped".into())),
        }
    }

    /// The durable entry at `index`: from memory for the unbundled tail,
    /// else from its full entry bundle in the store.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        {
            let s = self
                .shared
                .read()
                .map_err(|_| LedgerError::Failed("lock poisoned".into()))?;
            if index >= s.committed {
                return Err(ProofError::IndexOutOfRange {
                    index,
                    size: s.committed,
                }
                .into());
            }
            if index >= s.tail_from {
                return s
                    .tail
                    .get((index - s.tail_from) as usize)
                    .map(|e| e.to_vec())
                    .ok_or_else(|| LedgerError::Failed(format!("entry {index} not in memory")));
            }
        }
        // Below `tail_from` every bundle is full and written.
        entry_from_bundle(&self.audit, index, TILE_WIDTH).await
    }

    /// The index of the first durable entry whose leaf hash is `leaf`.
    /// Four bytes of every leaf hash stay in memory; candidates are
    /// confirmed against the full hash, read from the leaf tile for pruned
    /// ones.
    pub async fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        let (held, pruned): (Vec<(u64, Option<Hash>)>, u64) = {
            let s = self.shared.read().ok()?;
            let c = s
                .tree
                .candidates(leaf)
                .take_while(|&i| i < s.committed)
                .map(|i| (i, s.tree.leaf(i)))
                .collect();
            (c, s.tree.pruned())
        };
        for (i, h) in held {
            let full = match h {
                Some(h) => Some(h),
                None if i < pruned => self
                    .leaf_tile(i / TILE_WIDTH)
                    .await
                    .ok()
                    .and_then(|t| t.get((i % TILE_WIDTH) as usize).copied()),
                None => None,
            };
            if full.as_ref() == Some(leaf) {
                return Some(i);
            }
        }
        None
    }

    /// The 256 leaf hashes of a full leaf tile, from the store.
    async fn leaf_tile(&self, n: u64) -> Result<Vec<Hash>, LedgerError> {
        let path = crate::tiles::hash_tile_path(0, n, TILE_WIDTH);
        let bytes = self.audit.get(&path).await?;
        if bytes.len() as u64 != TILE_WIDTH * 32 {
            return Err(corrupt(
                &path,
                format!("{} bytes, not {}", bytes.len(), TILE_WIDTH * 32),
            ));
        }
        Ok(bytes
            .chunks(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }

    /// Whether the writer has failed (every later append would be refused).
    pub fn failure(&self) -> Option<String> {
        self.shared.read().ok().and_then(|s| s.failed.clone())
    }

    /// Batches committed since this writer opened: with [`Ledger::size`],
    /// how well group commit is batching.
    pub fn batches(&self) -> u64 {
        self.shared.read().map(|s| s.batches).unwrap_or(0)
    }

    /// Journal syncs since this writer opened (directory stores; zero on
    /// S3): with [`Ledger::size`], how many entries each device flush
    /// carried.
    pub fn syncs(&self) -> u64 {
        self.shared.read().map(|s| s.syncs).unwrap_or(0)
    }

    /// Size of the tree covered by the latest durable checkpoint.
    pub fn size(&self) -> u64 {
        self.shared.read().map(|s| s.committed).unwrap_or(0)
    }

    /// Inclusion proof for `index` against the latest durable checkpoint.
    /// Hashes the writer pruned are read back from their leaf tile and
    /// checked against the subtree root it kept.
    pub async fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let mut extra = HashMap::new();
        // Pruning can advance between reading tiles and proving: a few
        // rounds at most (each round prunes at most what was just read).
        for _ in 0..4 {
            let missing = {
                let s = self.shared.read().map_err(|_| poisoned())?;
                if index >= s.committed {
                    return Err(ProofError::IndexOutOfRange {
                        index,
                        size: s.committed,
                    }
                    .into());
                }
                let missing: Vec<u64> = s
                    .tree
                    .missing_for_inclusion(index, s.committed)
                    .into_iter()
                    .filter(|m| !extra.contains_key(m))
                    .collect();
                if missing.is_empty() {
                    let proof = s.tree.prove_inclusion_with(index, s.committed, &extra)?;
                    return Ok(InclusionProof {
                        index,
                        size: s.committed,
                        proof,
                        checkpoint: s.checkpoint.clone(),
                    });
                }
                missing
            };
            let mut tiles: Vec<u64> = missing
                .iter()
                .map(|&m| MerkleTree::leaf_tile_of(m))
                .collect();
            tiles.sort_unstable();
            tiles.dedup();
            for t in tiles {
                let leaves = self.leaf_tile(t).await?;
                let s = self.shared.read().map_err(|_| poisoned())?;
                extra.extend(s.tree.hashes_from_leaf_tile(t, &leaves, &missing)?);
            }
        }
        Err(LedgerError::Failed(format!(
            "could not assemble the inclusion proof of entry {index}: the writer kept pruning"
        )))
    }

    /// Stops accepting appends, waits for every pending batch to be durable,
    /// then releases the writer lock.
    pub async fn close(mut self) {
        self.tx.take();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

const SUPERSEDED: &str = "superseded";

/// After a round of tiles (`done`: the size they now hold), keeps the
/// journal bounded: the retired file, once the tiles hold all it had,
/// becomes the spare; then the current file is restarted in place if the
/// tiles hold all of it too, or else retired, the writer continuing in the
/// spare. The slow part (a zero-fill, the first time only) runs outside
/// the journal's lock; under it there are at most two renames and a
/// directory sync.
async fn journal_upkeep(
    journal: &Arc<std::sync::Mutex<JournalState>>,
    path: &std::path::Path,
    done: u64,
    spare: &mut Option<FreshJournal>,
) -> Result<(), LedgerError> {
    let (retired, want) = {
        let st = journal.lock().map_err(|_| poisoned())?;
        let want = st.journal.allocated();
        (st.retired, want)
    };
    let reuse = retired.is_some_and(|r| r <= done);
    let too_small = spare.as_ref().is_some_and(|s| s.allocated() < want);
    if reuse || too_small || spare.is_none() {
        // Reusing the retired file replaces any spare there is.
        spare.take();
        let p = path.to_path_buf();
        let fresh = tokio::task::spawn_blocking(move || FreshJournal::prepare(&p, want, reuse))
            .await
            .map_err(|e| LedgerError::Failed(format!("journal spare task failed: {e}")))??;
        *spare = Some(fresh);
        if reuse {
            journal.lock().map_err(|_| poisoned())?.retired = None;
        }
    }
    let j = journal.clone();
    let taken = spare.take();
    let kept = tokio::task::spawn_blocking(move || -> Result<Option<FreshJournal>, LedgerError> {
        let mut st = j.lock().map_err(|_| poisoned())?;
        if st.journal.is_empty() {
            return Ok(taken);
        }
        if st.last_size == done {
            // The tiles hold every record in it: no need to move.
            st.journal.restart()?;
            return Ok(taken);
        }
        match (st.retired, taken) {
            (None, Some(fresh)) => {
                st.journal.rotate(fresh)?;
                st.retired = Some(st.last_size);
                Ok(None)
            }
            (_, taken) => Ok(taken),
        }
    })
    .await
    .map_err(|e| LedgerError::Failed(format!("journal rotation task failed: {e}")))?;
    *spare = kept?;
    Ok(())
}

/// How long the tile writer lets committed batches accumulate (directory
/// stores): bounds how far tiles lag behind the journal under load. A
/// round's sync flushes everything it wrote, and journal syncs meanwhile
/// wait behind it: smaller, more frequent rounds trade a little more work
/// (partial tiles, one `syncfs` each) for short stalls instead of long ones
/// (measured here: 1 s rounds stalled appends for 100–170 ms each, 200 ms
/// rounds for 20–50 ms). Readers on the same store apply the journal, so
/// they see every durable entry whatever the lag.
const MATERIALIZE_EVERY: Duration = Duration::from_millis(200);

struct Writer {
    signer: LedgerSigner,
    opts: LedgerOptions,
    shared: Arc<RwLock<Shared>>,
    /// Directory stores: the journal, and the signal for the tile writer.
    journal: Option<Arc<std::sync::Mutex<JournalState>>>,
    notify: Arc<tokio::sync::Notify>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// S3: tiles and checkpoint are written inline, before answering.
    inline: Option<Materializer>,
}

/// Batches prepared but not yet handed to the journal thread, at most.
/// Bounds memory when the disk falls behind: the writer then waits, and so
/// do appenders.
const JOURNAL_QUEUE: usize = 16;

/// One batch on its way to the journal: its record, and who to answer
/// once it is durable.
struct Prepared {
    record: Vec<u8>,
    new_size: u64,
    note: Arc<Vec<u8>>,
    answers: Vec<(oneshot::Sender<Result<Appended, String>>, Appended)>,
}

impl Prepared {
    fn fail(self, msg: &str) {
        for (tx, _) in self.answers {
            let _ = tx.send(Err(msg.to_owned()));
        }
    }
}

/// The journal thread (directory stores): writes every batch the writer has
/// prepared since its last sync with one `pwrite` and one `fdatasync`, then
/// marks them committed and hands them to `answer`, a task on the runtime
/// that answers their appenders in order. (Waking sixty tasks from inside
/// the runtime costs a fraction of waking them from this thread, and this
/// thread is free for the next sync sooner.)
///
/// Why a thread of its own: the writer prepares the next batches (hashing,
/// signing) while the disk syncs the previous ones, so the sync, which is
/// most of an append's latency, is no longer followed by the CPU work in
/// series. A batch is answered only after a sync that began after its
/// record was written, so every acknowledged entry is durable.
///
/// Why it lingers: the appenders a sync answers usually append again at
/// once. Syncing straight away would carry only the few who were already
/// waiting, leaving the answered ones for the sync after, so under steady
/// load every sync carried about half the appenders. So for up to
/// `max_wait` after a sync ends, the thread waits until as many entries are
/// queued as that sync answered, then syncs them together: twice the
/// entries per sync for a few microseconds of waiting. After an idle spell
/// (past `max_wait`) nothing waits, and a lone appender is synced at once
/// once the expectation has fallen to one.
fn journal_thread(
    mut rx: mpsc::Receiver<Prepared>,
    journal: Arc<std::sync::Mutex<JournalState>>,
    shared: Arc<RwLock<Shared>>,
    notify: Arc<tokio::sync::Notify>,
    max_wait: Duration,
    answer: mpsc::UnboundedSender<Vec<Prepared>>,
) {
    let mut bytes = Vec::new();
    // Entries the last sync answered, and when it ended.
    let mut expect = 0usize;
    let mut synced_at = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut queued = first.answers.len();
        let mut group = vec![first];
        let mut gather = |group: &mut Vec<Prepared>, queued: &mut usize| {
            while let Ok(p) = rx.try_recv() {
                *queued += p.answers.len();
                group.push(p);
            }
        };
        gather(&mut group, &mut queued);
        let deadline = synced_at + max_wait;
        while queued < expect {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            // The writer unparks this thread after each batch it queues.
            std::thread::park_timeout(deadline - now);
            gather(&mut group, &mut queued);
        }
        let failed = shared.read().ok().and_then(|s| s.failed.clone());
        if let Some(f) = failed {
            group.into_iter().for_each(|p| p.fail(&f));
            continue;
        }
        bytes.clear();
        for p in &group {
            bytes.extend_from_slice(&p.record);
        }
        let last = group.last().map(|p| (p.new_size, p.note.clone()));
        let written = match (journal.lock(), last.as_ref()) {
            (Ok(mut st), Some((new, _))) => st.journal.append_durable(&bytes).map(|()| {
                st.last_size = *new;
                st.journal.len() * 2 > st.journal.allocated()
            }),
            (Err(_), _) => Err(StoreError::Io {
                path: "journal".into(),
                source: std::io::Error::other("journal lock poisoned"),
            }),
            (_, None) => Ok(false),
        };
        synced_at = std::time::Instant::now();
        expect = queued;
        match (written, last) {
            (Ok(pressure), Some((new, note))) => {
                if let Ok(mut s) = shared.write() {
                    s.committed = new;
                    s.checkpoint = note;
                    s.batches += group.len() as u64;
                    s.syncs += 1;
                    s.journal_pressure = pressure;
                }
                notify.notify_one();
                if let Err(mpsc::error::SendError(group)) = answer.send(group) {
                    answer_all(group);
                }
            }
            (Ok(_), None) => {}
            (Err(e), _) => {
                let msg = e.to_string();
                tracing::error!(error = %e, "ledger journal write failed; the writer stops");
                if let Ok(mut s) = shared.write() {
                    s.failed = Some(msg.clone());
                }
                group.into_iter().for_each(|p| p.fail(&msg));
            }
        }
    }
}

fn answer_all(group: Vec<Prepared>) {
    for p in group {
        for (tx, a) in p.answers {
            let _ = tx.send(Ok(a));
        }
    }
}

fn poisoned() -> LedgerError {
    LedgerError::Failed("ledger state lock poisoned".into())
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let (jtx, jthread) = match &self.journal {
            Some(j) => {
                let (tx, jrx) = mpsc::channel(JOURNAL_QUEUE);
                let (j, sh, n) = (j.clone(), self.shared.clone(), self.notify.clone());
                let wait = self.opts.max_wait;
                let (atx, mut arx) = mpsc::unbounded_channel::<Vec<Prepared>>();
                tokio::spawn(async move {
                    while let Some(group) = arx.recv().await {
                        answer_all(group);
                    }
                });
                match std::thread::Builder::new()
                    .name("kfm-ledger-journal".into())
                    .spawn(move || journal_thread(jrx, j, sh, n, wait, atx))
                {
                    Ok(h) => (Some(tx), Some(h)),
                    Err(e) => {
                        let e = LedgerError::Failed(format!(
                            "could not start the ledger journal thread: {e}"
                        ));
                        // Refuse every append rather than answer undurably.
                        while let Some(r) = rx.recv().await {
                            self.stop(&e, vec![r]);
                        }
                        return;
                    }
                }
            }
            None => (None, None),
        };
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            // Gather what is already queued, yielding so that appenders that
            // are runnable get to submit; stop once a yield brings nothing new
            // (or at `max_wait`). Tokio timers tick in milliseconds, far too
            // coarse to wait on here.
            let started = std::time::Instant::now();
            let mut idle_yields = 0;
            while batch.len() < self.opts.batch_max {
                match rx.try_recv() {
                    Ok(r) => {
                        batch.push(r);
                        idle_yields = 0;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if idle_yields >= 2 || started.elapsed() >= self.opts.max_wait {
                            break;
                        }
                        idle_yields += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
            let failed = self.shared.read().ok().and_then(|s| s.failed.clone());
            if let Some(f) = failed {
                for r in batch {
                    let _ = r.done.send(Err(f.clone()));
                }
                continue;
            }
            let entries: Vec<(Bytes, Hash)> = batch
                .iter_mut()
                .map(|r| (Bytes::from(std::mem::take(&mut r.entry)), r.leaf))
                .collect();
            if let Some(jtx) = &jtx {
                let prepared = match self.prepare(entries, batch) {
                    Ok(p) => p,
                    Err((e, batch)) => {
                        self.stop(&e, batch);
                        continue;
                    }
                };
                if let Err(mpsc::error::SendError(p)) = jtx.send(prepared).await {
                    p.fail("ledger journal thread stopped");
                }
                if let Some(h) = &jthread {
                    h.thread().unpark();
                }
                continue;
            }
            match self.commit(entries).await {
                Ok(results) => {
                    for (r, a) in batch.into_iter().zip(results) {
                        let _ = r.done.send(Ok(a));
                    }
                }
                Err(e) => self.stop(&e, batch),
            }
        }
        // No more appends: every prepared batch goes to disk first.
        drop(jtx);
        if let Some(h) = jthread {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        // Then let the tile writer finish and stop.
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Records a failure that stops the writer and answers `batch` with it.
    fn stop(&self, e: &LedgerError, batch: Vec<Request>) {
        let msg = if matches!(e, LedgerError::Superseded) {
            SUPERSEDED.to_owned()
        } else {
            e.to_string()
        };
        tracing::error!(error = %e, "ledger commit failed; the writer stops");
        if let Ok(mut s) = self.shared.write() {
            s.failed = Some(msg.clone());
        }
        for r in batch {
            let _ = r.done.send(Err(msg.clone()));
        }
    }

    /// Adds a batch to the tree and signs its checkpoint (directory
    /// stores): the journal thread makes it durable and answers it.
    #[allow(clippy::result_large_err)]
    fn prepare(
        &mut self,
        entries: Vec<(Bytes, Hash)>,
        batch: Vec<Request>,
    ) -> Result<Prepared, (LedgerError, Vec<Request>)> {
        let (old, new, root, (entries, leaves)) = {
            let Ok(mut s) = self.shared.write() else {
                return Err((poisoned(), batch));
            };
            let old = s.tree.size();
            let (entries, leaves): (Vec<Bytes>, Vec<Hash>) = entries.into_iter().unzip();
            for l in &leaves {
                s.tree.push_leaf_hash(*l);
            }
            s.tail.extend(entries.iter().cloned());
            (old, s.tree.size(), s.tree.root(), (entries, leaves))
        };
        let note = match self.signer.sign(&self.opts.origin, new, &root) {
            Ok(n) => Arc::new(n),
            Err(e) => return Err((e.into(), batch)),
        };
        let record = crate::journal::encode(old, &entries, &leaves, &note);
        let answers = batch
            .into_iter()
            .zip(leaves)
            .enumerate()
            .map(|(i, (r, leaf_hash))| {
                (
                    r.done,
                    Appended {
                        index: old + i as u64,
                        leaf_hash,
                        size: new,
                        checkpoint: note.clone(),
                    },
                )
            })
            .collect();
        Ok(Prepared {
            record,
            new_size: new,
            note,
            answers,
        })
    }

    /// Makes one batch durable, then reports it committed (S3: tiles and
    /// checkpoint are written before answering).
    async fn commit(&mut self, entries: Vec<(Bytes, Hash)>) -> Result<Vec<Appended>, LedgerError> {
        let (old, new, root, leaves) = {
            let mut s = self.shared.write().map_err(|_| poisoned())?;
            let old = s.tree.size();
            let mut leaves = Vec::with_capacity(entries.len());
            for (e, l) in entries {
                s.tree.push_leaf_hash(l);
                s.tail.push(e);
                leaves.push(l);
            }
            (old, s.tree.size(), s.tree.root(), leaves)
        };
        let note = Arc::new(self.signer.sign(&self.opts.origin, new, &root)?);
        if let Some(m) = self.inline.as_mut() {
            m.materialize_to(new, note.clone()).await?;
        }
        {
            let mut s = self.shared.write().map_err(|_| poisoned())?;
            s.committed = new;
            s.checkpoint = note.clone();
            s.batches += 1;
        }
        self.notify.notify_one();
        Ok(leaves
            .into_iter()
            .enumerate()
            .map(|(i, leaf_hash)| Appended {
                index: old + i as u64,
                leaf_hash,
                size: new,
                checkpoint: note.clone(),
            })
            .collect())
    }
}

/// Writes committed entries as tiles and bundles, then swaps in the
/// checkpoint object: inline (S3) or in the background, coalescing every
/// batch committed meanwhile (directory, behind the journal).
struct Materializer {
    audit: Audit,
    shared: Arc<RwLock<Shared>>,
    version: Option<PointerVersion>,
}

impl Materializer {
    /// Writes everything committed but not yet written.
    async fn catch_up(&mut self) -> Result<(), LedgerError> {
        loop {
            let (target, note, done) = {
                let s = self.shared.read().map_err(|_| poisoned())?;
                (s.committed, s.checkpoint.clone(), s.materialized)
            };
            if target <= done {
                return Ok(());
            }
            self.materialize_to(target, note).await?;
        }
    }

    /// Writes everything committed so far (not what is committed while
    /// writing).
    async fn round(&mut self) -> Result<(), LedgerError> {
        let (target, note, done) = {
            let s = self.shared.read().map_err(|_| poisoned())?;
            (s.committed, s.checkpoint.clone(), s.materialized)
        };
        if target > done {
            self.materialize_to(target, note).await?;
        }
        Ok(())
    }

    /// Writes tiles and bundles for `materialized..target`, then swaps the
    /// checkpoint object to `note` (the signed checkpoint for `target`).
    async fn materialize_to(&mut self, target: u64, note: Arc<Vec<u8>>) -> Result<(), LedgerError> {
        // Under the lock only what is cheap: the bundles' entries (shared
        // buffers) and the hash tiles. Bundles are assembled after it, so
        // appends are not held up while a round copies megabytes.
        let (bundles, tiles) = {
            let s = self.shared.read().map_err(|_| poisoned())?;
            let from = s.materialized;
            let mut bundles: Vec<(String, Vec<Bytes>)> = Vec::new();
            for n in from / TILE_WIDTH..target.div_ceil(TILE_WIDTH) {
                let start = n * TILE_WIDTH;
                let end = target.min(start + TILE_WIDTH);
                let held =
                    s.tail[(start - s.tail_from) as usize..(end - s.tail_from) as usize].to_vec();
                bundles.push((entries_path(n, end - start), held));
            }
            let mut objects: Vec<(String, Bytes)> = Vec::new();
            for t in new_hash_tiles(from, target) {
                let data = t
                    .to_tlog()
                    .read_data(&s.tree)
                    .map_err(|e| corrupt(t.path(), e.to_string()))?;
                objects.push((t.path(), Bytes::from(data)));
            }
            (bundles, objects)
        };
        let mut objects: Vec<(String, Bytes)> = Vec::with_capacity(bundles.len() + tiles.len());
        for (key, held) in bundles {
            let mut bundle = Vec::with_capacity(held.iter().map(|e| 2 + e.len()).sum());
            for e in &held {
                push_entry(&mut bundle, e);
            }
            objects.push((key, Bytes::from(bundle)));
        }
        objects.extend(tiles);
        if let Err(e) = self.audit.create_all_durable(objects).await {
            // Objects of another writer at our keys mean the checkpoint moved
            // on without us: this writer is stale, and must not go further.
            let now = self
                .audit
                .read_checkpoint(CHECKPOINT)
                .await?
                .map(|p| p.version);
            return Err(if now != self.version {
                LedgerError::Superseded
            } else if let StoreError::AlreadyExists { key, .. } = e {
                corrupt(key, "already exists with different bytes")
            } else {
                e.into()
            });
        }
        let bytes = Bytes::from(note.as_ref().clone());
        self.version = Some(
            match self
                .audit
                .swap_checkpoint(CHECKPOINT, self.version.as_ref(), bytes)
                .await
            {
                Ok(v) => v,
                Err(StoreError::Conflict { .. }) => return Err(LedgerError::Superseded),
                Err(e) => return Err(e.into()),
            },
        );
        let mut s = self.shared.write().map_err(|_| poisoned())?;
        s.materialized = target;
        // What the store now holds as full tiles need not stay in memory.
        s.tree.prune(target);
        let keep_from = (target / TILE_WIDTH) * TILE_WIDTH;
        let drop_n = (keep_from - s.tail_from) as usize;
        let written: Vec<Bytes> = s.tail.drain(..drop_n).collect();
        s.tail_from = keep_from;
        drop(s);
        // Freed after the lock is released.
        drop(written);
        Ok(())
    }

    /// Background loop (directory stores): write tiles whenever batches
    /// were committed (at most once per [`MATERIALIZE_EVERY`], unless the
    /// journal file is filling up), then rotate the journal.
    async fn run(
        mut self,
        journal: Arc<std::sync::Mutex<JournalState>>,
        mut spare: Option<FreshJournal>,
        notify: Arc<tokio::sync::Notify>,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let journal_path = match journal.lock() {
            Ok(st) => st.journal.path().to_path_buf(),
            Err(_) => {
                if let Ok(mut s) = self.shared.write() {
                    s.failed = Some("journal lock poisoned".into());
                }
                return;
            }
        };

        loop {
            notify.notified().await;
            // Let batches accumulate: one round of tile writes then covers
            // many of them, and its file system work does not compete with
            // every journal sync (the journal already made them durable).
            let since = std::time::Instant::now();
            while since.elapsed() < MATERIALIZE_EVERY
                && !closing.load(std::sync::atomic::Ordering::SeqCst)
                && !self.shared.read().is_ok_and(|s| s.journal_pressure)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // One round: what is committed now. Under unbroken load there
            // is always more; it waits for the next round, after the
            // journal's upkeep.
            if let Err(e) = self.round().await {
                tracing::error!(error = %e, "writing ledger tiles failed; the writer stops");
                if let Ok(mut s) = self.shared.write() {
                    s.failed = Some(if matches!(e, LedgerError::Superseded) {
                        SUPERSEDED.into()
                    } else {
                        e.to_string()
                    });
                }
                return;
            }
            let done = self.shared.read().map(|s| s.materialized).unwrap_or(0);
            if let Err(e) = journal_upkeep(&journal, &journal_path, done, &mut spare).await {
                tracing::warn!(error = %e, "could not rotate the ledger journal; it will be rotated later");
            }
            if closing.load(std::sync::atomic::Ordering::SeqCst) {
                let caught_up = self
                    .shared
                    .read()
                    .map(|s| s.materialized >= s.committed)
                    .unwrap_or(true);
                if caught_up {
                    return;
                }
                notify.notify_one();
            }
        }
    }
}

/// Parses `tile/<L|entries>/<x…/NNN>[.p/W]` into (level or None for
/// entries, index, width).
fn parse_tile_key(key: &str) -> Option<(Option<u8>, u64, u64)> {
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

/// How many entries (level None) or level-L hashes a tree of `size` has in
/// tile `n`.
fn covered_width(level: Option<u8>, n: u64, size: u64) -> u64 {
    let count = match level {
        None => size,
        Some(l) => size.checked_shr(8 * u32::from(l)).unwrap_or(0),
    };
    count.saturating_sub(n * TILE_WIDTH).min(TILE_WIDTH)
}

/// Removes every tile or bundle beyond what the checkpoint of `size`
/// covers: what a writer that crashed mid-batch left behind.
async fn discard_torn_tail(audit: &Audit, size: u64) -> Result<(), LedgerError> {
    for obj in audit.list("tile").await? {
        let Some((level, n, width)) = parse_tile_key(&obj.key) else {
            return Err(corrupt(
                &obj.key,
                "not a tile path; the audit zone holds only the ledger",
            ));
        };
        if width > covered_width(level, n, size) {
            tracing::warn!(key = %obj.key, size, "discarding a torn tail left by an interrupted batch");
            audit.discard_uncommitted(&obj.key).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_keys_parse_and_coverage() {
        assert_eq!(
            parse_tile_key("tile/entries/x001/234.p/5"),
            Some((None, 1234, 5))
        );
        assert_eq!(parse_tile_key("tile/2/007"), Some((Some(2), 7, 256)));
        assert_eq!(parse_tile_key("tile/0/7"), None);
        assert_eq!(parse_tile_key("tile/0/000.p/256"), None);
        assert_eq!(covered_width(None, 0, 300), 256);
        assert_eq!(covered_width(None, 1, 300), 44);
        assert_eq!(covered_width(None, 2, 300), 0);
        assert_eq!(covered_width(Some(1), 0, 300), 1);
    }
}
