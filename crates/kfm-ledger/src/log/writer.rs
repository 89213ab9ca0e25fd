//! The single writer: opening (recovery and guards), appends, reads and
//! proofs, and what the writer reports about itself. Its group-commit task
//! is in `commit.rs`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kfm_store::{Audit, StoreError, WriterLock};

use crate::durable::{self, FreshJournal, Journal};
use tokio::sync::{mpsc, oneshot};

use super::commit::{SUPERSEDED, Writer};
use super::guard;
use super::load::{Fits, apply_journal, fits, load, read_journal};
use super::tiles::{Materializer, TilesTask};
use super::view::{LedgerView, entry_from_bundle};
use super::{Appended, Guards, InclusionProof, LedgerError, LedgerOptions, corrupt, poisoned};
use crate::checkpoint::LedgerSigner;
use crate::merkle::{Hash, MerkleTree, ProofError};
use crate::tiles::{MAX_ENTRY, TILE_WIDTH};
use crate::witness::Witness;

pub(super) struct Request {
    pub entry: Vec<u8>,
    /// Hashed by the appender, in parallel, not by the single writer.
    pub leaf: Hash,
    pub done: oneshot::Sender<Result<Appended, String>>,
}

/// A write that keeps failing, and since when.
#[derive(Debug, Clone)]
pub(super) struct Trouble {
    pub error: String,
    pub since: Instant,
}

pub(super) struct Shared {
    /// Every durable leaf (and, during a commit, the batch's own).
    pub tree: MerkleTree,
    /// Durable size: what proofs and `size` report.
    pub committed: u64,
    pub checkpoint: Arc<Vec<u8>>,
    pub batches: u64,
    /// Journal syncs since open (directory stores).
    pub syncs: u64,
    /// The current journal file is more than half full: the tile writer
    /// should not wait out its interval before rotating it.
    pub journal_pressure: bool,
    pub tail_from: u64,
    /// Shared, not copied, with the tile writer's bundles.
    pub tail: Vec<Bytes>,
    /// Size written as tiles with its checkpoint object.
    pub materialized: u64,
    /// The writer gave up, or met something it must not go past.
    pub failed: Option<String>,
    /// Appends cannot be made durable right now (the journal, or on S3 the
    /// store, refuses writes); the writer retries.
    pub appends_retrying: Option<Trouble>,
    /// Tiles cannot be written right now; appends are still durable in
    /// the journal; the tile writer retries.
    pub tiles_retrying: Option<Trouble>,
}

/// How the writer is doing (for probes and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Entries acknowledged (durable).
    pub committed: u64,
    /// Entries written as tiles under the checkpoint object.
    pub in_tiles: u64,
    /// The writer stopped for good: every later append is refused and the
    /// process should be restarted (reopening recovers what is durable).
    pub failed: Option<String>,
    /// Appends wait: durable writes fail and are being retried (error, and
    /// for how long).
    pub appends_retrying: Option<(String, Duration)>,
    /// Tiles lag: their writes fail and are being retried.
    pub tiles_retrying: Option<(String, Duration)>,
}

/// What [`crate::Ledger::close`] left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Entries durable in the ledger.
    pub size: u64,
    /// Of those, in tiles; the rest are in the journal and are written as
    /// tiles by the next writer that opens it.
    pub in_tiles: u64,
    /// Why the writer stopped early, if it did.
    pub failed: Option<String>,
    /// Whether this process was the ledger's writer (else its entries were
    /// appended by the workspace's writer, another process, and the sizes
    /// are the last it saw).
    pub writer: bool,
}

/// The journal with the size its last record reaches.
pub(super) struct JournalState {
    pub journal: Journal,
    pub last_size: u64,
    /// Size the retired file's last record reaches, while there is one.
    pub retired: Option<u64>,
}

/// Signals shared by the writer's tasks.
pub(super) struct Signals {
    pub notify: tokio::sync::Notify,
    pub closing: AtomicBool,
    /// When `close` began: retries stop once [`CLOSE_GRACE`] has passed.
    pub closing_since: Mutex<Option<Instant>>,
    pub give_up_after: Duration,
    /// Accumulation time before a round of tiles.
    pub tile_every: Duration,
}

/// How long a closing writer keeps retrying writes that fail before it
/// reports what it could not write.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl Signals {
    /// Whether a write failing since `since` should no longer be retried.
    pub fn give_up(&self, since: Instant) -> bool {
        if since.elapsed() >= self.give_up_after {
            return true;
        }
        self.closing_since
            .lock()
            .ok()
            .and_then(|c| *c)
            .is_some_and(|c| c.elapsed() >= CLOSE_GRACE)
    }
}

/// Next back-off delay: doubling from 10 ms, at most one second.
pub(super) fn backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The single writer of a ledger. Appends are group-committed by a
/// background task; each returns once its batch is durable.
///
/// On a directory a batch is durable when its journal record is synced (one
/// direct synchronous write, shared by every batch queued meanwhile, on the
/// journal thread); a second task then writes tiles and the checkpoint
/// object, coalescing batches. On S3 each batch writes its tiles and
/// checkpoint before answering.
pub struct LocalLedger {
    tx: Option<mpsc::Sender<Request>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<RwLock<Shared>>,
    signals: Arc<Signals>,
    /// Held by this value and by both background tasks: dropping the
    /// `Ledger` without `close` keeps the lock until the tasks end.
    _lock: Arc<WriterLock>,
    /// For [`LocalLedger::view`].
    audit: Audit,
    verifier_key: String,
    origin: String,
    guards: Guards,
}

impl LocalLedger {
    /// Opens the ledger for writing: takes the writer lock, verifies the
    /// checkpoint and the entries it covers, reads the journal, checks the
    /// log against what is beyond its checkpoint, the witness and the
    /// references (refusing, with nothing changed, a log that shrank or
    /// vanished), completes what a torn tile round left short, writes what
    /// the journal held as tiles, and records the checkpoint as witnessed.
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
        let witnessed = guard::witnessed(&opts.guards, &vkey, &origin)?;
        let mut loaded = load(&audit, &vkey, &origin).await?;
        let uncovered = guard::uncovered(&audit, loaded.stored_size).await?;
        let journal = read_journal(&audit, loaded.stored_size)?;
        apply_journal(&mut loaded, &journal.records, &vkey, &origin)?;
        let batch_cap = opts.batch_max.max(1) as u64;
        let checked = guard::check(
            &loaded,
            &journal,
            &uncovered,
            &opts.guards,
            witnessed.as_ref(),
            batch_cap,
        )?;
        let mut completions = Vec::new();
        for u in &checked.justified {
            match fits(&audit, &loaded, u).await? {
                Fits::Exactly => {}
                Fits::Prefix(want) => completions.push((u.key.clone(), want)),
                Fits::Differs => {
                    return Err(corrupt(
                        &u.key,
                        format!(
                            "beyond the checkpoint object and does not hold what the journal says it must (entries up to {})",
                            u.need
                        ),
                    ));
                }
            }
        }
        // Everything is checked: from here on this writer changes the store.
        for u in &checked.torn_batch {
            // Invariant: only objects of one unacknowledged S3 batch (no
            // journal, nothing witnessed beyond the checkpoint) are ever
            // removed from the audit zone.
            tracing::warn!(key = %u.key, "discarding an object of a batch whose checkpoint never landed (never acknowledged)");
            audit.discard_uncommitted(&u.key).await?;
        }
        if !completions.is_empty() {
            tracing::warn!(
                objects = completions.len(),
                "completing tiles a crash cut short (the journal holds their entries)"
            );
            durable::create_all_durable(&audit, completions).await?;
        }
        let journal = durable::open_journal(&audit)?;
        let size = loaded.tree.size();
        let witness = match &opts.guards.witness {
            Some(p) => {
                let mut w = Witness::open(p)?;
                if size > 0 {
                    w.record(size, &loaded.checkpoint)?;
                    w.sync()?;
                }
                Some(Arc::new(Mutex::new(w)))
            }
            None => None,
        };
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
            appends_retrying: None,
            tiles_retrying: None,
        }));
        let signals = Arc::new(Signals {
            notify: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            closing_since: Mutex::new(None),
            give_up_after: opts.give_up_after,
            tile_every: opts.tile_every,
        });
        let mut mat = Materializer {
            audit: audit.clone(),
            shared: shared.clone(),
            version: loaded.version,
            witness: witness
                .as_ref()
                .and_then(|w| w.lock().ok().and_then(|w| w.sync_handle().ok())),
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
                (Some(Arc::new(Mutex::new(st))), Some(spare))
            }
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(opts.batch_max.max(1) * 4);
        let lock = Arc::new(lock);
        let mut tasks = Vec::new();
        let inline = match &journal {
            Some(j) => {
                let task = TilesTask {
                    journal: j.clone(),
                    spare,
                    signals: signals.clone(),
                };
                let l = lock.clone();
                tasks.push(tokio::spawn(async move {
                    mat.run(task).await;
                    drop(l);
                }));
                None
            }
            None => Some(mat),
        };
        let writer = Writer {
            signer,
            opts: opts.clone(),
            shared: shared.clone(),
            journal,
            inline,
            signals: signals.clone(),
            witness,
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
            signals,
            _lock: lock,
            audit,
            verifier_key: vkey,
            origin,
            guards: opts.guards,
        })
    }

    /// A read-only view of everything acknowledged so far, checked like any
    /// reader's (for callers that must read entries back while writing,
    /// such as verifying the release pointer a promotion builds on).
    pub async fn view(&self) -> Result<LedgerView, LedgerError> {
        LedgerView::open(&self.audit, &self.verifier_key, &self.origin, &self.guards).await
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

    /// Appends `entries` in their order (the sequencer's: the log must hold
    /// them as the stream does) and returns once every one is durable. All
    /// are checked before any is sent.
    pub async fn append_in_order(
        &self,
        entries: Vec<Vec<u8>>,
    ) -> Result<Vec<Appended>, LedgerError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY) {
            return Err(LedgerError::EntryTooLarge { len: e.len() });
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| LedgerError::Failed("closed".into()))?;
        let mut answers = Vec::with_capacity(entries.len());
        for entry in entries {
            let (done, rx) = oneshot::channel();
            let leaf = crate::merkle::leaf_hash(&entry);
            // Invariant: one sender, awaited in turn, so the channel (and
            // the batches the writer forms from it) keeps this order.
            tx.send(Request { entry, leaf, done })
                .await
                .map_err(|_| LedgerError::Failed("writer stopped".into()))?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(match rx.await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) if e == SUPERSEDED => return Err(LedgerError::Superseded),
                Ok(Err(e)) => return Err(LedgerError::Failed(e)),
                Err(_) => return Err(LedgerError::Failed("writer stopped".into())),
            });
        }
        Ok(out)
    }

    /// Appends `entry`, unless `retry` says it may have been appended
    /// already (its sender lost the answer with its connection to an
    /// earlier writer): then an entry with the same leaf hash already in
    /// the log is answered instead, so that a retried append is recorded
    /// once.
    pub async fn append_once(&self, entry: Vec<u8>, retry: bool) -> Result<Appended, LedgerError> {
        if retry {
            let leaf = crate::merkle::leaf_hash(&entry);
            if let Some(index) = self.find_leaf(&leaf).await {
                let s = self.shared.read().map_err(|_| poisoned())?;
                return Ok(Appended {
                    index,
                    leaf_hash: leaf,
                    size: s.committed,
                    checkpoint: s.checkpoint.clone(),
                });
            }
        }
        self.append(entry).await
    }

    /// The durable entry at `index`: from memory for the unbundled tail,
    /// else from its full entry bundle in the store.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        {
            let s = self.shared.read().map_err(|_| poisoned())?;
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

    /// The first four bytes of every durable leaf hash, in order.
    pub fn leaf_prefixes(&self) -> Vec<u32> {
        match self.shared.read() {
            Ok(s) => {
                let n = (s.committed as usize).min(s.tree.prefixes().len());
                s.tree.prefixes()[..n].to_vec()
            }
            Err(_) => Vec::new(),
        }
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

    /// Whether the writer has failed for good (every later append is
    /// refused).
    pub fn failure(&self) -> Option<String> {
        self.shared.read().ok().and_then(|s| s.failed.clone())
    }

    /// How the writer is doing: what is durable, what is in tiles, and any
    /// write it is retrying or gave up on.
    pub fn health(&self) -> Health {
        let Ok(s) = self.shared.read() else {
            return Health {
                failed: Some("ledger state lock poisoned".into()),
                ..Health::default()
            };
        };
        let t = |t: &Option<Trouble>| t.as_ref().map(|t| (t.error.clone(), t.since.elapsed()));
        Health {
            committed: s.committed,
            in_tiles: s.materialized,
            failed: s.failed.clone(),
            appends_retrying: t(&s.appends_retrying),
            tiles_retrying: t(&s.tiles_retrying),
        }
    }

    /// Batches committed since this writer opened: with [`LocalLedger::size`],
    /// how well group commit is batching.
    pub fn batches(&self) -> u64 {
        self.shared.read().map(|s| s.batches).unwrap_or(0)
    }

    /// Journal syncs since this writer opened (directory stores; zero on
    /// S3): with [`LocalLedger::size`], how many entries each device flush
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

    /// Stops accepting appends, waits for every pending batch to be durable
    /// (writes that keep failing are retried for a few seconds more, then
    /// given up), lets the tile writer catch up, then releases the writer
    /// lock. Reports what is durable and what is in tiles.
    pub async fn close(mut self) -> Closed {
        if let Ok(mut c) = self.signals.closing_since.lock() {
            *c = Some(Instant::now());
        }
        self.tx.take();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let h = self.health();
        Closed {
            size: h.committed,
            in_tiles: h.in_tiles,
            failed: h.failed,
            writer: true,
        }
    }
}
