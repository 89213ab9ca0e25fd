//! The ledger's single sequencer: reads the audit stream in order and
//! integrates its entries into the Merkle log in the store.
//!
//! Exactly one is active. A lease, one key in the environment's JetStream
//! bucket holding `{holder, expires_ms, position}`, decides who: a
//! sequencer takes it when it is absent or expired, with compare-and-set
//! on the key's revision, and renews it (compare-and-set again) before
//! every batch it integrates and after it, recording the stream position
//! the log now holds. A renewal that fails means another took over: this
//! one closes its ledger and stands by. A leader paused past its lease
//! (SIGSTOP, a long GC-like stall, a partition) therefore finds its next
//! renewal refused before it writes; and should it be paused between a
//! renewal and its write, the store fences it: on S3 the checkpoint moves
//! only by compare-and-swap against the version this writer read, on a
//! directory the writer lock is held by one process at a time. History
//! cannot fork.
//!
//! Each batch is integrated in stream order. An event already in the log
//! (its leaf hash is there: a redelivery after a takeover, a publish
//! retried past the duplicate window) changes nothing, so the log is a
//! function of the stream alone, which is what [`crate::replay`] relies on.
//! An event that fails its checks goes to the dead-letter subject with the
//! reason and is never sequenced; the sequencer keeps going.
//!
//! Clocks: lease expiry is wall-clock time, so the machines running
//! sequencers must agree on the time to well within the lease (NTP).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use kfm_core::config::Environment;
use kfm_ledger::{Hash, LedgerError, LocalLedger};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::envelope::{self, Rejected};
use crate::producer::publish_once;
use crate::reader::{Incoming, Reader};
use crate::streams::Names;
use crate::{EventsError, js_err};

/// The lease key in the sequencer bucket.
pub const LEASE_KEY: &str = "lease";

/// Settings of one sequencer process.
#[derive(Debug, Clone)]
pub struct SequencerOptions {
    pub names: Names,
    /// Who this is, for the lease and the logs (`host:pid:random`).
    pub holder: String,
    /// How long a lease lasts without renewal: a standby takes over this
    /// long after the active sequencer stopped renewing.
    pub lease: Duration,
    /// Most events integrated in one batch.
    pub batch_max: usize,
}

impl SequencerOptions {
    pub fn new(names: Names, holder: impl Into<String>) -> Self {
        Self {
            names,
            holder: holder.into(),
            lease: Duration::from_secs(2),
            batch_max: 1024,
        }
    }
}

/// What the lease key holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Unix milliseconds after which the lease may be taken.
    expires_ms: u64,
    /// The last stream sequence the log holds (every earlier event was
    /// integrated, skipped as a duplicate, or dead-lettered).
    position: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters a caller (the CLI, a test, a benchmark) can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries this process appended to the log.
    pub integrated: AtomicU64,
    /// Events skipped because the log already held them.
    pub duplicates: AtomicU64,
    /// Events sent to the dead-letter subject.
    pub dead: AtomicU64,
    /// Events the stream's consumer skipped, fetched by number from the
    /// stream leader (the reader of the audit stream passes over none).
    pub refetched: AtomicU64,
    /// Times this process became the active sequencer.
    pub terms: AtomicU64,
    /// Whether this process is the active sequencer now (0 or 1).
    pub active: AtomicU64,
}

/// One batch, sorted: what to append (in order), what to dead-letter.
pub(crate) struct Sorted {
    pub entries: Vec<Vec<u8>>,
    pub dead: Vec<Dead>,
    pub duplicates: u64,
    pub last_seq: u64,
}

pub(crate) struct Dead {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    pub reason: Rejected,
}

/// What the log holds, for deduplication at stream speed: the first four
/// bytes of every leaf hash (a hit is confirmed against the full hash by
/// the ledger; a miss is certain).
pub(crate) struct Seen(HashSet<u32>);

impl Seen {
    pub fn of(ledger: &LocalLedger) -> Self {
        Self(ledger.leaf_prefixes().into_iter().collect())
    }

    async fn holds(&self, ledger: &LocalLedger, leaf: &Hash) -> bool {
        self.0.contains(&kfm_ledger::merkle::prefix(leaf)) && ledger.find_leaf(leaf).await.is_some()
    }

    fn add(&mut self, leaf: &Hash) {
        self.0.insert(kfm_ledger::merkle::prefix(leaf));
    }
}

/// Checks each event of a batch and drops what the log (or the batch)
/// already holds.
pub(crate) async fn sort(
    batch: Vec<Incoming>,
    env: Environment,
    ledger: &LocalLedger,
    seen: &mut Seen,
) -> Result<Sorted, EventsError> {
    let mut out = Sorted {
        entries: Vec::with_capacity(batch.len()),
        dead: Vec::new(),
        duplicates: 0,
        last_seq: 0,
    };
    let mut in_batch: HashSet<Hash> = HashSet::with_capacity(batch.len());
    for m in batch {
        out.last_seq = m.seq;
        match envelope::check(&m.payload, m.msg_id.as_deref(), env) {
            Ok(checked) => {
                for c in checked {
                    // Invariant: an entry is integrated once, whatever the
                    // stream holds twice (redelivery after a takeover, a
                    // retry past the duplicate window or under a re-send
                    // id, the same entry in two batches).
                    if !in_batch.insert(c.leaf) || seen.holds(ledger, &c.leaf).await {
                        out.duplicates += 1;
                    } else {
                        seen.add(&c.leaf);
                        out.entries.push(c.entry);
                    }
                }
            }
            Err(reason) => out.dead.push(Dead {
                seq: m.seq,
                subject: m.subject,
                payload: m.payload,
                reason,
            }),
        }
    }
    Ok(out)
}

/// Sends rejected events to the dead-letter subject, with the reason.
async fn dead_letter(
    js: &jetstream::Context,
    names: &Names,
    dead: &[Dead],
) -> Result<(), EventsError> {
    for d in dead {
        let mut h = HeaderMap::new();
        let id = format!("dl-{}-{}", names.audit_stream, d.seq);
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        h.insert("Kfm-Reason", d.reason.code());
        let detail: String = d
            .reason
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(400)
            .collect();
        h.insert("Kfm-Detail", detail.as_str());
        h.insert("Kfm-Stream-Seq", d.seq.to_string().as_str());
        h.insert("Kfm-Subject", d.subject.as_str());
        let ack = js
            .publish_with_headers(names.dead_subject.clone(), h, d.payload.clone())
            .await
            .map_err(|e| js_err("dead-lettering", e))?;
        ack.await.map_err(|e| js_err("dead-lettering", e))?;
        tracing::warn!(
            seq = d.seq,
            reason = d.reason.code(),
            "event dead-lettered, not sequenced"
        );
    }
    Ok(())
}

/// Why an active term ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Another sequencer holds the lease, or this one could not renew it.
    Lost(String),
}

struct Term<'a> {
    kv: &'a kv::Store,
    opts: &'a SequencerOptions,
    revision: u64,
    position: u64,
}

impl Term<'_> {
    /// Renews the lease by compare-and-set, recording `position`.
    async fn renew(&mut self) -> Result<(), Ended> {
        let lease = Lease {
            holder: self.opts.holder.clone(),
            expires_ms: now_ms() + self.opts.lease.as_millis() as u64,
            position: self.position,
        };
        let value = serde_json::to_vec(&lease).map_err(|e| Ended::Lost(e.to_string()))?;
        match self.kv.update(LEASE_KEY, value.into(), self.revision).await {
            Ok(rev) => {
                self.revision = rev;
                Ok(())
            }
            Err(e) => Err(Ended::Lost(format!("lease renewal refused: {e}"))),
        }
    }
}

/// Tries once to take the lease: `Some((revision, position))` if taken.
async fn acquire(
    kv: &kv::Store,
    opts: &SequencerOptions,
) -> Result<Option<(u64, u64)>, EventsError> {
    let fresh = |position: u64| {
        serde_json::to_vec(&Lease {
            holder: opts.holder.clone(),
            expires_ms: now_ms() + opts.lease.as_millis() as u64,
            position,
        })
        .map(Bytes::from)
        .map_err(|e| EventsError::Refused(e.to_string()))
    };
    let entry = kv
        .entry(LEASE_KEY)
        .await
        .map_err(|e| js_err("reading the lease", e))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let held: Lease = serde_json::from_slice(&e.value).map_err(|err| {
                EventsError::Refused(format!(
                    "the sequencer lease in bucket {} is not KFM's ({err}); nothing was sequenced: inspect it, then delete the key if it is debris",
                    opts.names.bucket
                ))
            })?;
            if now_ms() <= held.expires_ms {
                return Ok(None);
            }
            match kv
                .update(LEASE_KEY, fresh(held.position)?, e.revision)
                .await
            {
                Ok(rev) => Ok(Some((rev, held.position))),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(err) => Err(js_err("taking the lease", err)),
            }
        }
        _ => match kv.create(LEASE_KEY, fresh(0)?).await {
            Ok(rev) => Ok(Some((rev, 0))),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(err) => Err(js_err("taking the lease", err)),
        },
    }
}

/// Runs a sequencer until `stop` turns true: stands by until it holds the
/// lease, then integrates the stream, and stands by again if it loses it.
/// `open` opens the ledger for writing (each time this process becomes
/// active; a writer lock still held by a paused predecessor is waited
/// out).
pub async fn run<F, Fut>(
    js: &jetstream::Context,
    opts: &SequencerOptions,
    open: F,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<(), EventsError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<LocalLedger, LedgerError>>,
{
    let kv = js
        .get_key_value(&opts.names.bucket)
        .await
        .map_err(|e| js_err(&format!("bucket {}", opts.names.bucket), e))?;
    let poll = (opts.lease / 8).max(Duration::from_millis(25));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        // A lease that is not KFM's stops the sequencer (nothing is
        // sequenced until someone looks); a NATS that cannot answer right
        // now (a node lost, a leader being elected) is waited out.
        let got = match acquire(&kv, opts).await {
            Ok(got) => got,
            Err(e @ EventsError::Refused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(holder = %opts.holder, error = %e, "cannot read or take the lease; trying again");
                None
            }
        };
        let Some((revision, position)) = got else {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        stats.terms.fetch_add(1, Ordering::Relaxed);
        tracing::info!(holder = %opts.holder, position, "became the active sequencer");
        let mut term = Term {
            kv: &kv,
            opts,
            revision,
            position,
        };
        let ended = lead(js, &mut term, &open, &mut stop, &stats).await;
        stats.active.store(0, Ordering::Relaxed);
        match ended {
            Ok(Ended::Stopped) => {
                // Hand over at once: an expired lease (position kept).
                let lease = Lease {
                    holder: opts.holder.clone(),
                    expires_ms: 0,
                    position: term.position,
                };
                if let Ok(v) = serde_json::to_vec(&lease) {
                    let _ = kv.update(LEASE_KEY, v.into(), term.revision).await;
                }
                return Ok(());
            }
            Ok(Ended::Lost(why)) => {
                tracing::warn!(holder = %opts.holder, reason = %why, "no longer the active sequencer; standing by");
            }
            Err(e) => {
                tracing::error!(holder = %opts.holder, error = %e, "the sequencer's term failed; standing by");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

async fn lead<F, Fut>(
    js: &jetstream::Context,
    term: &mut Term<'_>,
    open: &F,
    stop: &mut watch::Receiver<bool>,
    stats: &Stats,
) -> Result<Ended, EventsError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<LocalLedger, LedgerError>>,
{
    let renew_every = (term.opts.lease / 3).max(Duration::from_millis(50));
    let ledger = loop {
        if let Err(e) = term.renew().await {
            return Ok(e);
        }
        match open().await {
            Ok(l) => break l,
            // A predecessor (paused, or still closing) holds the writer lock.
            Err(LedgerError::Locked) => {
                tokio::time::sleep(renew_every.min(Duration::from_millis(200))).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    stats.active.store(1, Ordering::Relaxed);
    let result = integrate(js, term, &ledger, renew_every, stop, stats).await;
    let closed = ledger.close().await;
    if let Some(f) = closed.failed {
        tracing::warn!(failure = %f, "the ledger closed with a failure");
    }
    result
}

async fn integrate(
    js: &jetstream::Context,
    term: &mut Term<'_>,
    ledger: &LocalLedger,
    renew_every: Duration,
    stop: &mut watch::Receiver<bool>,
    stats: &Stats,
) -> Result<Ended, EventsError> {
    let names = &term.opts.names;
    let mut reader = Reader::open(js, names, term.position).await?;
    let mut seen = Seen::of(ledger);
    let mut refetched = 0;
    loop {
        if *stop.borrow() {
            return Ok(Ended::Stopped);
        }
        let batch = tokio::select! {
            b = reader.next_batch(term.opts.batch_max, renew_every) => b?,
            _ = stop.changed() => return Ok(Ended::Stopped),
        };
        stats
            .refetched
            .fetch_add(reader.refetched - refetched, Ordering::Relaxed);
        refetched = reader.refetched;
        if batch.is_empty() {
            if let Err(e) = term.renew().await {
                return Ok(e);
            }
            continue;
        }
        // Invariant: nothing is written unless the lease was renewed
        // (compare-and-set) just before; a paused leader's stale renewal
        // is refused here, and its write by the store's fence. The
        // renewal also records the position the log holds.
        if let Err(e) = term.renew().await {
            return Ok(e);
        }
        let sorted = sort(batch, names.env, ledger, &mut seen).await?;
        dead_letter(js, names, &sorted.dead).await?;
        let n = sorted.entries.len() as u64;
        if n > 0 {
            match ledger.append_in_order(sorted.entries).await {
                Ok(_) => {}
                Err(LedgerError::Superseded) => {
                    return Ok(Ended::Lost(
                        "another sequencer moved the checkpoint (fenced)".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        stats.integrated.fetch_add(n, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(sorted.duplicates, Ordering::Relaxed);
        stats
            .dead
            .fetch_add(sorted.dead.len() as u64, Ordering::Relaxed);
        term.position = sorted.last_seq;
    }
}

/// Sends one raw message to the audit stream (tests and tools that must
/// publish something a producer would never build).
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: Bytes,
) -> Result<(), EventsError> {
    publish_once(js, subject, msg_id, payload, Duration::from_secs(10))
        .await
        .map_err(|e| js_err("publishing", e))
}
