//! The journal thread (directory stores): groups of prepared batches made
//! durable with one write each, retried while the write fails, then
//! witnessed and answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Appended;
use super::writer::{JournalState, Shared, Signals, Trouble, backoff};
use crate::witness::Witness;

/// Batches prepared but not yet handed to the journal thread, at most.
/// Bounds memory when the disk falls behind: the writer then waits, and so
/// do appenders.
pub(super) const JOURNAL_QUEUE: usize = 16;

/// One batch on its way to the journal: its record, and who to answer
/// once it is durable.
pub(super) struct Prepared {
    pub record: Vec<u8>,
    pub new_size: u64,
    pub note: Arc<Vec<u8>>,
    pub answers: Vec<(oneshot::Sender<Result<Appended, String>>, Appended)>,
}

impl Prepared {
    pub(super) fn fail(self, msg: &str) {
        for (tx, _) in self.answers {
            let _ = tx.send(Err(msg.to_owned()));
        }
    }
}

/// Writes one group of records to the journal, retrying with back-off
/// while the write fails (a full disk, no descriptors, an I/O error), until
/// it succeeds or the writer gives up. Appenders wait meanwhile: nothing is
/// acknowledged that is not durable, and nothing is dropped that was asked.
/// Returns whether the journal file is more than half full.
pub(super) fn write_with_retry(
    journal: &Mutex<JournalState>,
    bytes: &[u8],
    new_size: u64,
    shared: &RwLock<Shared>,
    signals: &Signals,
) -> Result<bool, String> {
    let mut delay = Duration::ZERO;
    let mut since: Option<Instant> = None;
    loop {
        let r = match journal.lock() {
            Ok(mut st) => st.journal.append_durable(bytes).map(|()| {
                st.last_size = new_size;
                st.journal.len() * 2 > st.journal.allocated()
            }),
            Err(_) => return Err("journal lock poisoned".into()),
        };
        match r {
            Ok(pressure) => {
                if since.is_some() {
                    tracing::warn!("ledger journal writes succeed again; appends resume");
                    if let Ok(mut s) = shared.write() {
                        s.appends_retrying = None;
                    }
                }
                return Ok(pressure);
            }
            Err(e) => {
                let start = *since.get_or_insert_with(Instant::now);
                if signals.give_up(start) {
                    return Err(format!(
                        "journal writes failed for {:.1} s: {e}",
                        start.elapsed().as_secs_f64()
                    ));
                }
                if delay.is_zero() {
                    tracing::error!(error = %e, "ledger journal write failed; appends wait while it is retried");
                }
                if let Ok(mut s) = shared.write() {
                    s.appends_retrying = Some(Trouble {
                        error: e.to_string(),
                        since: start,
                    });
                }
                delay = backoff(delay);
                std::thread::sleep(delay);
            }
        }
    }
}

/// The journal thread (directory stores): writes every batch the writer has
/// prepared since its last sync with one durable write, then marks them
/// committed and hands them to `answer`, a task on the runtime that
/// records the witness and answers their appenders in order. (Waking sixty
/// tasks from inside the runtime costs a fraction of waking them from this
/// thread, and this thread is free for the next sync sooner.)
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
pub(super) fn journal_thread(
    mut rx: mpsc::Receiver<Prepared>,
    journal: Arc<Mutex<JournalState>>,
    shared: Arc<RwLock<Shared>>,
    signals: Arc<Signals>,
    max_wait: Duration,
    answer: mpsc::UnboundedSender<Vec<Prepared>>,
) {
    let mut bytes = Vec::new();
    // Entries the last sync answered, and when it ended.
    let mut expect = 0usize;
    let mut synced_at = Instant::now();
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
            let now = Instant::now();
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
        let Some((new, note)) = group.last().map(|p| (p.new_size, p.note.clone())) else {
            continue;
        };
        let written = write_with_retry(&journal, &bytes, new, &shared, &signals);
        synced_at = Instant::now();
        expect = queued;
        match written {
            Ok(pressure) => {
                if let Ok(mut s) = shared.write() {
                    s.committed = new;
                    s.checkpoint = note;
                    s.batches += group.len() as u64;
                    s.syncs += 1;
                    s.journal_pressure = pressure;
                }
                signals.notify.notify_one();
                if let Err(mpsc::error::SendError(group)) = answer.send(group) {
                    answer_all(group, None);
                }
            }
            Err(msg) => {
                tracing::error!(error = %msg, "the ledger writer gives up; it stops (restart the process: reopening recovers every durable entry)");
                if let Ok(mut s) = shared.write() {
                    s.failed = Some(msg.clone());
                    s.appends_retrying = None;
                }
                group.into_iter().for_each(|p| p.fail(&msg));
            }
        }
    }
}

/// Records the group's checkpoint as witnessed, then answers its appenders:
/// an appender never holds an index the witness does not cover.
pub(super) fn answer_all(group: Vec<Prepared>, witness: Option<&Mutex<Witness>>) {
    // Invariant (directory stores): an appender is answered only here, for
    // a group whose journal record a completed durable write holds (one
    // `O_DIRECT | O_DSYNC` write, or `pwrite` + `fdatasync`, that began after
    // the record was prepared), after the witness was asked to record the
    // group's checkpoint. A witness that cannot write is said, not fatal:
    // the journal and the tiles still hold every entry.
    if let (Some(w), Some(last)) = (witness, group.last())
        && let Ok(mut w) = w.lock()
        && let Err(e) = w.record(last.new_size, &last.note)
    {
        witness_failed(&e);
    }
    for p in group {
        for (tx, a) in p.answers {
            let _ = tx.send(Ok(a));
        }
    }
}

/// A witness record that could not be written (its file is preallocated,
/// so only an I/O error gets here): said once, not once per batch.
pub(super) fn witness_failed(e: &crate::witness::WitnessError) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::error!(error = %e, "cannot record the witnessed checkpoint; appends continue (the journal and tiles still hold every entry)");
    }
}
