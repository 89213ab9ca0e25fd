//! The ledger on the store: entry bundles and hash tiles (C2SP tlog-tiles)
//! plus a signed checkpoint, with group commit, a single writer, recovery of
//! a torn tail, and full offline verification.
//!
//! Durability order for each batch: every tile and bundle of the batch is
//! created (fsynced on a directory; acknowledged by S3), then the new
//! checkpoint is signed and swapped in by compare-and-swap, and only then
//! does any appender learn its index. A crash before the swap leaves objects
//! no checkpoint covers: the next writer discards them on open.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use kfm_store::{Audit, PointerVersion, StoreError, WriterLock};
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

/// A ledger loaded from the store and checked against its checkpoint.
struct Loaded {
    tree: MerkleTree,
    /// Entries of the last, incomplete bundle.
    tail: Vec<Vec<u8>>,
    checkpoint: Vec<u8>,
    version: Option<PointerVersion>,
}

/// Reads the checkpoint and every entry bundle it covers, rebuilds the tree
/// and checks its root against the checkpoint's.
async fn load(audit: &Audit, verifier_key: &str, origin: &str) -> Result<Loaded, LedgerError> {
    let Some(cp) = audit.read_checkpoint(CHECKPOINT).await? else {
        return Ok(Loaded {
            tree: MerkleTree::new(),
            tail: Vec::new(),
            checkpoint: Vec::new(),
            version: None,
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
        tail,
        checkpoint: cp.bytes.to_vec(),
        version: Some(cp.version),
    })
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
}

/// Verifies a whole ledger offline: the checkpoint's signature, every entry
/// bundle, every hash tile against the hashes recomputed from the entries,
/// and the root against the checkpoint. Returns the first problem found,
/// naming the file (and the entry index where there is one).
pub async fn verify(
    audit: &Audit,
    verifier_key: &str,
    origin: &str,
) -> Result<VerifyReport, LedgerError> {
    let loaded = match load(audit, verifier_key, origin).await {
        // A root mismatch means an entry was altered: find which, via the
        // level-0 hash tiles, for a precise message.
        Err(LedgerError::Corrupt { place, what }) if place == "tile/entries" => {
            return Err(locate_altered_entry(audit, verifier_key, origin)
                .await
                .unwrap_or(corrupt(place, what)));
        }
        other => other?,
    };
    let size = loaded.tree.size();
    let tiles = new_hash_tiles(0, size);
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
    Ok(VerifyReport {
        size,
        root: loaded.tree.root(),
        bundles: size.div_ceil(TILE_WIDTH),
        hash_tiles: tiles.len() as u64,
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

/// Read-only view for proofs: loads and checks the ledger, then answers
/// proof queries from memory and reads entries on demand.
pub struct LedgerView {
    audit: Audit,
    tree: MerkleTree,
    checkpoint: Vec<u8>,
}

impl LedgerView {
    pub async fn open(
        audit: &Audit,
        verifier_key: &str,
        origin: &str,
    ) -> Result<Self, LedgerError> {
        let l = load(audit, verifier_key, origin).await?;
        Ok(Self {
            audit: audit.clone(),
            tree: l.tree,
            checkpoint: l.checkpoint,
        })
    }

    /// The entry at `index`, read from its bundle.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let size = self.tree.size();
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size }.into());
        }
        let n = index / TILE_WIDTH;
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let path = entries_path(n, width);
        let bytes = self.audit.get(&path).await?;
        let entries =
            parse_bundle(&bytes).ok_or_else(|| corrupt(&path, "malformed entry bundle"))?;
        entries
            .get((index - n * TILE_WIDTH) as usize)
            .map(|e| e.to_vec())
            .ok_or_else(|| corrupt(&path, format!("has no entry {index}")))
    }

    /// The index of the first entry whose leaf hash is `leaf`.
    pub fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        (0..self.tree.size()).find(|&i| self.tree.leaf(i).as_ref() == Some(leaf))
    }

    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// The signed checkpoint (empty for an empty ledger).
    pub fn checkpoint(&self) -> &[u8] {
        &self.checkpoint
    }

    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }
}

struct Request {
    entry: Vec<u8>,
    done: oneshot::Sender<Result<Appended, String>>,
}

struct Shared {
    tree: MerkleTree,
    committed: u64,
    batches: u64,
    checkpoint: Arc<Vec<u8>>,
}

/// The single writer of a ledger. Appends are group-committed by a
/// background task; each returns once its batch is durable.
pub struct Ledger {
    tx: Option<mpsc::Sender<Request>>,
    task: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<RwLock<Shared>>,
    _lock: WriterLock,
}

impl Ledger {
    /// Opens the ledger for writing: takes the writer lock, verifies the
    /// checkpoint and the entries it covers, and discards a torn tail.
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
        let loaded = load(&audit, signer.verifier_key(), &opts.origin).await?;
        discard_torn_tail(&audit, loaded.tree.size()).await?;
        let shared = Arc::new(RwLock::new(Shared {
            tree: loaded.tree.clone(),
            committed: loaded.tree.size(),
            batches: 0,
            checkpoint: Arc::new(loaded.checkpoint.clone()),
        }));
        let (tx, rx) = mpsc::channel(opts.batch_max.max(1) * 4);
        let writer = Writer {
            audit,
            signer,
            opts,
            tree: loaded.tree,
            tail: loaded.tail,
            version: loaded.version,
            shared: shared.clone(),
            failed: None,
        };
        let task = tokio::spawn(writer.run(rx));
        Ok(Self {
            tx: Some(tx),
            task: Some(task),
            shared,
            _lock: lock,
        })
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
        tx.send(Request { entry, done })
            .await
            .map_err(|_| LedgerError::Failed("writer stopped".into()))?;
        match rx.await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) if e == SUPERSEDED => Err(LedgerError::Superseded),
            Ok(Err(e)) => Err(LedgerError::Failed(e)),
            Err(_) => Err(LedgerError::Failed("writer stopped".into())),
        }
    }

    /// Batches committed since this writer opened: with [`Ledger::size`],
    /// how well group commit is batching.
    pub fn batches(&self) -> u64 {
        self.shared.read().map(|s| s.batches).unwrap_or(0)
    }

    /// Size of the tree covered by the latest durable checkpoint.
    pub fn size(&self) -> u64 {
        self.shared.read().map(|s| s.committed).unwrap_or(0)
    }

    /// Inclusion proof for `index` against the latest durable checkpoint.
    pub fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let s = self
            .shared
            .read()
            .map_err(|_| LedgerError::Failed("lock poisoned".into()))?;
        let proof = s.tree.prove_inclusion(index, s.committed)?;
        Ok(InclusionProof {
            index,
            size: s.committed,
            proof,
            checkpoint: s.checkpoint.clone(),
        })
    }

    /// Stops accepting appends, waits for every pending batch to be durable,
    /// then releases the writer lock.
    pub async fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

const SUPERSEDED: &str = "superseded";

struct Writer {
    audit: Audit,
    signer: LedgerSigner,
    opts: LedgerOptions,
    tree: MerkleTree,
    tail: Vec<Vec<u8>>,
    version: Option<PointerVersion>,
    shared: Arc<RwLock<Shared>>,
    failed: Option<String>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.opts.max_wait;
            while batch.len() < self.opts.batch_max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            _ => break,
                        }
                    }
                }
            }
            if let Some(f) = &self.failed {
                for r in batch {
                    let _ = r.done.send(Err(f.clone()));
                }
                continue;
            }
            let entries: Vec<Vec<u8>> = batch
                .iter_mut()
                .map(|r| std::mem::take(&mut r.entry))
                .collect();
            match self.commit(entries).await {
                Ok(results) => {
                    for (r, a) in batch.into_iter().zip(results) {
                        let _ = r.done.send(Ok(a));
                    }
                }
                Err(e) => {
                    let msg = if matches!(e, LedgerError::Superseded) {
                        SUPERSEDED.to_owned()
                    } else {
                        e.to_string()
                    };
                    tracing::error!(error = %e, "ledger commit failed; the writer stops");
                    self.failed = Some(msg.clone());
                    for r in batch {
                        let _ = r.done.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    /// Makes one batch durable: bundles and tiles, then the checkpoint.
    async fn commit(&mut self, entries: Vec<Vec<u8>>) -> Result<Vec<Appended>, LedgerError> {
        let old = self.tree.size();
        let mut leaves = Vec::with_capacity(entries.len());
        for e in &entries {
            leaves.push(self.tree.push(e).1);
        }
        let new = self.tree.size();
        let base = (old / TILE_WIDTH) * TILE_WIDTH;
        self.tail.extend(entries);

        let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
        for n in old / TILE_WIDTH..new.div_ceil(TILE_WIDTH) {
            let start = n * TILE_WIDTH;
            let end = new.min(start + TILE_WIDTH);
            let mut bundle = Vec::new();
            for e in &self.tail[(start - base) as usize..(end - base) as usize] {
                push_entry(&mut bundle, e);
            }
            objects.push((entries_path(n, end - start), bundle));
        }
        for t in new_hash_tiles(old, new) {
            let data = t
                .to_tlog()
                .read_data(&self.tree)
                .map_err(|e| corrupt(t.path(), e.to_string()))?;
            objects.push((t.path(), data));
        }
        let writes = objects
            .into_iter()
            .map(|(k, b)| create_or_same(&self.audit, k, b));
        futures::future::try_join_all(writes).await?;
        let keep_from = ((new / TILE_WIDTH) * TILE_WIDTH - base) as usize;
        self.tail.drain(..keep_from);

        let root = self.tree.root();
        let note = self.signer.sign(&self.opts.origin, new, &root)?;
        let version = match self
            .audit
            .swap_checkpoint(CHECKPOINT, self.version.as_ref(), Bytes::from(note.clone()))
            .await
        {
            Ok(v) => v,
            Err(StoreError::Conflict { .. }) => return Err(LedgerError::Superseded),
            Err(e) => return Err(e.into()),
        };
        self.version = Some(version);
        let checkpoint = Arc::new(note);
        if let Ok(mut s) = self.shared.write() {
            for l in &leaves {
                s.tree.push_leaf_hash(*l);
            }
            s.committed = new;
            s.batches += 1;
            s.checkpoint = checkpoint.clone();
        }
        Ok(leaves
            .into_iter()
            .enumerate()
            .map(|(i, leaf_hash)| Appended {
                index: old + i as u64,
                leaf_hash,
                size: new,
                checkpoint: checkpoint.clone(),
            })
            .collect())
    }
}

/// Creates an object, accepting one already there with the same bytes (a
/// retry); different bytes mean a torn tail recovery missed.
async fn create_or_same(audit: &Audit, key: String, bytes: Vec<u8>) -> Result<(), LedgerError> {
    match audit.create(&key, Bytes::from(bytes.clone())).await {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => {
            let have = audit.get(&key).await?;
            if have == bytes {
                Ok(())
            } else {
                Err(corrupt(key, "already exists with different bytes"))
            }
        }
        Err(e) => Err(e.into()),
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
