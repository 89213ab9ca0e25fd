//! The group-commit task: takes appends in batches, signs each batch's
//! checkpoint, has it made durable (the journal thread on a directory, the
//! tiles and checkpoint inline on S3) and answers the appenders.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::sync::{JOURNAL_QUEUE, Prepared, answer_all, journal_thread, witness_failed};
use super::tiles::Materializer;
use super::writer::{JournalState, Request, Shared, Signals, Trouble, backoff};
use super::{Appended, LedgerError, LedgerOptions, poisoned};
use crate::checkpoint::LedgerSigner;
use crate::journal::BATCH_BYTES;
use crate::merkle::Hash;
use crate::witness::Witness;

pub(super) const SUPERSEDED: &str = "superseded";

pub(super) struct Writer {
    pub(super) signer: LedgerSigner,
    pub(super) opts: LedgerOptions,
    pub(super) shared: Arc<RwLock<Shared>>,
    /// Directory stores: the journal.
    pub(super) journal: Option<Arc<Mutex<JournalState>>>,
    pub(super) signals: Arc<Signals>,
    /// S3: tiles and checkpoint are written inline, before answering.
    pub(super) inline: Option<Materializer>,
    pub(super) witness: Option<Arc<Mutex<Witness>>>,
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let (jtx, jthread) = match &self.journal {
            Some(j) => {
                let (tx, jrx) = mpsc::channel(JOURNAL_QUEUE);
                let (j, sh, sg) = (j.clone(), self.shared.clone(), self.signals.clone());
                let wait = self.opts.max_wait;
                let (atx, mut arx) = mpsc::unbounded_channel::<Vec<Prepared>>();
                let witness = self.witness.clone();
                tokio::spawn(async move {
                    while let Some(group) = arx.recv().await {
                        answer_all(group, witness.as_deref());
                    }
                });
                match std::thread::Builder::new()
                    .name("kfm-ledger-journal".into())
                    .spawn(move || journal_thread(jrx, j, sh, sg, wait, atx))
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
            let mut bytes = first.entry.len();
            let mut batch = vec![first];
            // Gather what is already queued, yielding so that appenders that
            // are runnable get to submit; stop once a yield brings nothing new
            // (or at `max_wait`, or once the batch holds a megabyte: records
            // stay small enough for a reader to bound its search). Tokio
            // timers tick in milliseconds, far too coarse to wait on here.
            let started = Instant::now();
            let mut idle_yields = 0;
            while batch.len() < self.opts.batch_max && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.entry.len();
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
            // Invariant (S3): an appender is answered only after its batch's
            // bundles and tiles were created and the checkpoint object
            // covering it was swapped in by compare-and-swap.
            match self.commit(entries).await {
                Ok(results) => {
                    if let Some(w) = &self.witness
                        && let (Some(a), Ok(mut w)) = (results.last(), w.lock())
                        && let Err(e) = w.record(a.size, &a.checkpoint)
                    {
                        witness_failed(&e);
                    }
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
        self.signals.closing.store(true, Ordering::SeqCst);
        self.signals.notify.notify_one();
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
    /// checkpoint are written before answering, retried with back-off
    /// while the store refuses them).
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
            let mut delay = Duration::ZERO;
            let mut since: Option<Instant> = None;
            loop {
                match m.materialize_to(new, note.clone()).await {
                    Ok(()) => break,
                    Err(e) if super::tiles::transient(&e) => {
                        let start = *since.get_or_insert_with(Instant::now);
                        if self.signals.give_up(start) {
                            return Err(e);
                        }
                        if let Ok(mut s) = self.shared.write() {
                            s.appends_retrying = Some(Trouble {
                                error: e.to_string(),
                                since: start,
                            });
                        }
                        delay = backoff(delay);
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        {
            let mut s = self.shared.write().map_err(|_| poisoned())?;
            s.committed = new;
            s.checkpoint = note.clone();
            s.batches += 1;
            s.appends_retrying = None;
        }
        self.signals.notify.notify_one();
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
