//! The tile writer: entry bundles and hash tiles for what is committed,
//! the checkpoint object swapped in to cover them, and the journal kept
//! bounded behind them.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kfm_store::{Audit, PointerVersion, StoreError};

use crate::durable::{self, FreshJournal};

use super::commit::SUPERSEDED;
use super::writer::{JournalState, Shared, Signals, Trouble, backoff};
use super::{CHECKPOINT, LedgerError, corrupt, poisoned};
use crate::tiles::{TILE_WIDTH, entries_path, new_hash_tiles, push_entry};

/// Whether a failed round may succeed if tried again: an I/O error of the
/// store (a full disk, no descriptors left, a network error), not a
/// conflict with another writer or damage.
pub(super) fn transient(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::Store(
            StoreError::Io { .. } | StoreError::Backend { .. } | StoreError::Read { .. }
        )
    )
}

/// What the background tile writer needs besides the [`Materializer`].
pub(super) struct TilesTask {
    pub journal: Arc<Mutex<JournalState>>,
    pub spare: Option<FreshJournal>,
    pub signals: Arc<Signals>,
}

/// How long the tile writer lets committed batches accumulate (directory
/// stores): bounds how far tiles lag behind the journal under load. A
/// round's sync flushes everything it wrote, and journal syncs meanwhile
/// wait behind it: smaller, more frequent rounds trade a little more work
/// (partial tiles, one `syncfs` each) for short stalls instead of long ones
/// (measured here: 1 s rounds stalled appends for 100–170 ms each, 200 ms
/// rounds for 20–50 ms). Readers on the same store apply the journal, so
/// they see every durable entry whatever the lag.
pub(super) const MATERIALIZE_EVERY: Duration = Duration::from_millis(200);

/// Writes committed entries as tiles and bundles, then swaps in the
/// checkpoint object: inline (S3) or in the background, coalescing every
/// batch committed meanwhile (directory, behind the journal).
pub(super) struct Materializer {
    pub audit: Audit,
    pub shared: Arc<RwLock<Shared>>,
    pub version: Option<PointerVersion>,
    /// The witness file, synced after each round (so that what it holds
    /// survives a power failure as well as the tiles do).
    pub witness: Option<std::fs::File>,
}

impl Materializer {
    /// Writes everything committed but not yet written.
    pub async fn catch_up(&mut self) -> Result<(), LedgerError> {
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
    pub async fn materialize_to(
        &mut self,
        target: u64,
        note: Arc<Vec<u8>>,
    ) -> Result<(), LedgerError> {
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
        if let Err(e) = durable::create_all_durable(&self.audit, objects).await {
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
    /// journal file is filling up), then rotate the journal. A round that
    /// fails on an I/O error (a full disk, no descriptors left) is retried
    /// with back-off until it succeeds or the writer gives up; appends stay
    /// durable in the journal meanwhile.
    pub async fn run(mut self, task: TilesTask) {
        let TilesTask {
            journal,
            mut spare,
            signals,
        } = task;
        let journal_path = match journal.lock() {
            Ok(st) => st.journal.path().to_path_buf(),
            Err(_) => {
                if let Ok(mut s) = self.shared.write() {
                    s.failed = Some("journal lock poisoned".into());
                }
                return;
            }
        };
        let closing = || signals.closing.load(std::sync::atomic::Ordering::SeqCst);
        let mut delay = Duration::ZERO;
        let mut failing: Option<Instant> = None;
        loop {
            if failing.is_none() {
                signals.notify.notified().await;
                // Let batches accumulate: one round of tile writes then
                // covers many of them, and its file system work does not
                // compete with every journal sync (the journal already made
                // them durable).
                let since = Instant::now();
                while since.elapsed() < signals.tile_every
                    && !closing()
                    && !self.shared.read().is_ok_and(|s| s.journal_pressure)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // One round: what is committed now. Under unbroken load there
            // is always more; it waits for the next round, after the
            // journal's upkeep.
            match self.round().await {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::warn!("ledger tile writes succeed again");
                        if let Ok(mut s) = self.shared.write() {
                            s.tiles_retrying = None;
                        }
                    }
                    delay = Duration::ZERO;
                }
                Err(e) if transient(&e) => {
                    let start = *failing.get_or_insert_with(Instant::now);
                    if signals.give_up(start) {
                        let msg = format!(
                            "ledger tiles could not be written for {:.1} s: {e}",
                            start.elapsed().as_secs_f64()
                        );
                        tracing::error!(error = %msg, "the ledger's tile writer gives up (every acknowledged entry is durable in the journal)");
                        if let Ok(mut s) = self.shared.write() {
                            s.failed = Some(msg);
                        }
                        return;
                    }
                    if delay.is_zero() {
                        tracing::error!(error = %e, "writing ledger tiles failed; retrying (entries stay durable in the journal)");
                    }
                    if let Ok(mut s) = self.shared.write() {
                        s.tiles_retrying = Some(Trouble {
                            error: e.to_string(),
                            since: start,
                        });
                    }
                    delay = backoff(delay);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => {
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
            }
            if let Some(w) = &self.witness
                && let Err(e) = w.sync_data()
            {
                tracing::warn!(error = %e, "cannot sync the witness file");
            }
            let done = self.shared.read().map(|s| s.materialized).unwrap_or(0);
            if let Err(e) = journal_upkeep(&journal, &journal_path, done, &mut spare).await {
                tracing::warn!(error = %e, "could not rotate the ledger journal; it will be rotated later");
            }
            if closing() {
                let caught_up = self
                    .shared
                    .read()
                    .map(|s| s.materialized >= s.committed)
                    .unwrap_or(true);
                if caught_up {
                    return;
                }
                signals.notify.notify_one();
            }
        }
    }
}

/// After a round of tiles (`done`: the size they now hold), keeps the
/// journal bounded: the retired file, once the tiles hold all it had,
/// becomes the spare; then the current file is restarted in place if the
/// tiles hold all of it too, or else retired, the writer continuing in the
/// spare. The slow part (a zero-fill, the first time only) runs outside
/// the journal's lock; under it there are at most two renames and a
/// directory sync.
async fn journal_upkeep(
    journal: &Arc<Mutex<JournalState>>,
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
