//! Audit records for every request, appended to the ledger.
//!
//! The record is built after the handler answered (it holds the status and
//! the policy decision) and before the answer leaves. When the decision
//! carries `audit_durable` (restricted reads, every export, every audit
//! read) the answer waits until the record is durable; if the ledger
//! cannot take it, the answer is withheld (503). Other records join the
//! ledger's next group commit without holding the answer back: the window
//! in which such a record could be lost is the batch interval, exported as
//! `kfm_audit_loss_window_seconds`.
//!
//! The audit reference returned in `Kfm-Audit-Ref` is the record's RFC 9162
//! leaf hash (hex): known before the append completes, and enough for
//! `/audit/{ref}` or `kfm ledger prove` to find the entry and its proof.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use kfm_ledger::{Hash, Ledger, leaf_hash};
use kfm_policy::DecisionRecord;
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::metrics::Metrics;

/// Record `kind`.
pub const ACCESS_KIND: &str = "kfm.api.Access";

/// What a handler tells the audit layer about its answer.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// `read`, `export`, `audit`, or `none` for ungoverned routes.
    pub action: &'static str,
    pub dataset: Option<String>,
    pub version_id: Option<String>,
    /// Shared: the decision layer keeps a copy of the note for an answer
    /// whose handler leaves none, and that copy must not cost a deep clone
    /// on every request.
    pub decision: Option<std::sync::Arc<DecisionRecord>>,
    /// The decision obliged a durable record before answering.
    pub durable: bool,
}

/// One request, as the ledger keeps it. Holds no token, no response body
/// and no feature data.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub kind: &'static str,
    pub request_id: String,
    pub time: String,
    pub subject: &'a str,
    pub roles: &'a [String],
    pub auth: &'static str,
    pub method: &'a str,
    /// The route template (`/collections/{id}/items`), and the path asked.
    pub route: &'a str,
    pub path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    pub status: u16,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'a DecisionRecord>,
}

impl AccessRecord<'_> {
    /// The record as RFC 8785 canonical JSON (the ledger entry).
    ///
    /// Written field by field with the keys in canonical order, rather than
    /// through a general canonicaliser that buffers and sorts every member
    /// of every object (a fifth of the server's CPU under load). Every value
    /// here is a string, an integer, a bool or an array of strings, which
    /// serde_json writes exactly as RFC 8785 does; the obligations (which
    /// may hold floats) go through the canonicaliser. The test
    /// `entries_match_the_general_canonicaliser` holds the two equal.
    ///
    /// Fails only if the obligations cannot be canonicalised (a number
    /// RFC 8785 cannot write): the caller then withholds the answer rather
    /// than sign a record with a hole in it.
    pub fn to_entry(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(1024);
        let mut o = Obj::new(&mut out);
        o.field("action", self.action);
        o.field("auth", self.auth);
        if let Some(d) = self.dataset {
            o.field("dataset", d);
        }
        if let Some(d) = self.decision {
            o.key("decision");
            let mut r = Obj::new(o.out);
            r.field("allow", &d.allow);
            r.field("bundle_digest", &d.bundle_digest);
            r.field("bundle_revision", &d.bundle_revision);
            r.field("decision_id", &d.decision_id);
            r.field("input_digest", &d.input_digest);
            r.field("kind", &d.kind);
            r.key("obligations");
            let obligations = kfm_core::to_canonical_json(&d.obligations)?;
            r.out.extend_from_slice(&obligations);
            r.field("reason", &d.reason);
            r.field("time", &d.time);
            r.end();
        }
        o.field("kind", self.kind);
        o.field("method", self.method);
        o.field("path", self.path);
        if let Some(q) = self.query {
            o.field("query", q);
        }
        o.field("request_id", &self.request_id);
        o.field("roles", self.roles);
        o.field("route", self.route);
        o.field("status", &self.status);
        o.field("subject", self.subject);
        o.field("time", &self.time);
        if let Some(v) = self.version_id {
            o.field("version_id", v);
        }
        o.end();
        Ok(out)
    }
}

/// A JSON object written member by member; the caller gives keys in
/// canonical (sorted) order.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // Writing strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, k);
        self.out.push(b':');
    }

    fn field<T: Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        self.key(k);
        let _ = serde_json::to_writer(&mut *self.out, v);
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// Most records that may wait for the ledger without holding an answer
/// back; past it, answers wait (back-pressure instead of unbounded memory).
const MAX_PENDING: usize = 65_536;

/// The API's side of the ledger.
pub struct AuditSink {
    ledger: Arc<Ledger>,
    /// Batched records on their way to the ledger, and a signal each time
    /// some of them settle (for [`AuditSink::settle`]).
    pending: Mutex<HashSet<Hash>>,
    settled_now: Notify,
    /// The one task that hands batched records to the ledger and settles
    /// them (started by the first batched record).
    collector: OnceLock<mpsc::UnboundedSender<Batched>>,
    slots: Arc<Semaphore>,
    failed: AtomicBool,
    metrics: Arc<Metrics>,
    /// Records handed to the ledger, and what became of them: shutdown
    /// reports exactly how many were recorded and how many were not.
    started: AtomicU64,
    recorded: AtomicU64,
    refused: AtomicU64,
    /// With an event backbone: refs this process recorded (durable in the
    /// stream) that the sequencer may not have integrated yet, so that
    /// `/audit/{ref}` can answer "pending" for them. Two generations of at
    /// most [`AWAITING`] each: bounded memory.
    awaiting: Mutex<(HashSet<Hash>, HashSet<Hash>)>,
}

/// Size of one generation of [`AuditSink::awaiting`].
const AWAITING: usize = 100_000;

/// What became of the access records of one server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditTally {
    /// Handed to the ledger.
    pub started: u64,
    /// Durable in the ledger.
    pub recorded: u64,
    /// Refused by the ledger (its writer had failed).
    pub refused: u64,
}

impl AuditTally {
    /// Still on their way when the count was taken (at shutdown: never
    /// recorded).
    pub fn unsettled(&self) -> u64 {
        self.started.saturating_sub(self.recorded + self.refused)
    }
}

/// The ledger refused or lost a record.
#[derive(Debug, thiserror::Error)]
#[error("the audit ledger did not take the record: {0}")]
pub struct AuditError(pub String);

impl AuditSink {
    pub fn new(ledger: Arc<Ledger>, metrics: Arc<Metrics>) -> Self {
        Self {
            ledger,
            pending: Mutex::new(HashSet::new()),
            settled_now: Notify::new(),
            collector: OnceLock::new(),
            slots: Arc::new(Semaphore::new(MAX_PENDING)),
            failed: AtomicBool::new(false),
            metrics,
            started: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            awaiting: Mutex::new((HashSet::new(), HashSet::new())),
        }
    }

    /// How many records were handed to the ledger, recorded, refused.
    pub fn tally(&self) -> AuditTally {
        AuditTally {
            started: self.started.load(Ordering::SeqCst),
            recorded: self.recorded.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }

    fn awaits_sequencer(&self, leaf: Hash) {
        if !self.ledger.is_published() {
            return;
        }
        if let Ok(mut a) = self.awaiting.lock() {
            if a.0.len() >= AWAITING {
                a.1 = std::mem::take(&mut a.0);
            }
            a.0.insert(leaf);
        }
    }

    /// Whether `leaf` is a record this process made durable in the event
    /// stream recently (it may still be on its way into the log).
    pub fn awaiting_sequencer(&self, leaf: &Hash) -> bool {
        self.awaiting
            .lock()
            .map(|a| a.0.contains(leaf) || a.1.contains(leaf))
            .unwrap_or(false)
    }

    fn settled(&self, ok: bool) {
        if ok {
            self.recorded.fetch_add(1, Ordering::SeqCst);
        } else {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// False once the ledger writer has given up (or an append was
    /// refused): the process can no longer account for answers and should
    /// be restarted (`/healthz` says so).
    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && self.ledger.failure().is_none()
    }

    /// Why appends cannot be made durable right now, while the writer
    /// retries (a full disk, no descriptors): governed answers are withheld
    /// (503) until they can.
    pub fn unavailable(&self) -> Option<String> {
        let h = self.ledger.health();
        if let Some(f) = h.failed {
            return Some(format!("the ledger writer gave up: {f}"));
        }
        h.appends_retrying.map(|(e, for_)| {
            format!(
                "ledger writes have failed for {:.0} s and are being retried: {e}",
                for_.as_secs_f64()
            )
        })
    }

    /// Appends and waits until the record is durable.
    pub async fn append_durable(&self, entry: Vec<u8>) -> Result<(), AuditError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let r = self.ledger.record(entry).await;
        self.settled(r.is_ok());
        match r {
            Ok(leaf) => {
                self.awaits_sequencer(leaf);
                self.metrics.audit_append("durable", true);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                self.metrics.audit_append("durable", false);
                tracing::error!(error = %e, "audit append failed");
                Err(AuditError(e.to_string()))
            }
        }
    }

    /// Hands the record to the ledger's next batch and returns at once
    /// (or, when too many are in flight, once there is room).
    pub async fn append_batched(self: &Arc<Self>, entry: Vec<u8>, leaf: Hash) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Saturated: fall back to waiting, which slows callers down.
                let _ = self.append_durable(entry).await;
                return;
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.insert(leaf);
        }
        self.metrics.audit_pending.inc();
        self.started.fetch_add(1, Ordering::SeqCst);
        let tx = self.collector.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(Arc::downgrade(self), self.ledger.clone(), rx));
            tx
        });
        if let Err(mpsc::error::SendError(b)) = tx.send(Batched {
            entry,
            leaf,
            _permit: permit,
        }) {
            // The collector is gone (the runtime is shutting down): the
            // record is refused, never silently dropped from the tally.
            self.batched_settled(b.leaf, Err("the audit collector stopped".into()));
        }
    }

    /// What became of one batched record.
    fn batched_settled(&self, leaf: Hash, r: Result<(), String>) {
        self.settled(r.is_ok());
        match &r {
            Ok(()) => self.awaits_sequencer(leaf),
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "batched audit append failed");
            }
        }
        self.metrics.audit_append("batched", r.is_ok());
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&leaf);
        }
        self.metrics.audit_pending.dec();
    }

    /// Waits (bounded) for a batched record still on its way to the ledger.
    pub async fn settle(&self, leaf: &Hash) {
        let wait = async {
            loop {
                // Registered before the check, so a settlement between the
                // two is not missed.
                let n = self.settled_now.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if !self
                    .pending
                    .lock()
                    .map(|p| p.contains(leaf))
                    .unwrap_or(false)
                {
                    return;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
    }

    /// Waits (at most `within`) until every batched record has been
    /// appended (shutdown), and returns what became of all of them.
    pub async fn drain(&self, within: std::time::Duration) -> AuditTally {
        let _ = tokio::time::timeout(within, self.slots.acquire_many(MAX_PENDING as u32)).await;
        self.tally()
    }
}

/// One batched record on its way; its permit counts it in flight until
/// it settles.
struct Batched {
    entry: Vec<u8>,
    leaf: Hash,
    _permit: OwnedSemaphorePermit,
}

/// Hands batched records to the ledger, all of them at once (the ledger
/// groups them into its commits), and settles each as its append answers.
///
/// Why one task: a task and a channel per record cost every public read a
/// spawn, a wake-up on another thread and a notification; here a busy
/// server wakes this task about once per ledger commit.
async fn collect(
    sink: Weak<AuditSink>,
    ledger: Arc<Ledger>,
    mut rx: mpsc::UnboundedReceiver<Batched>,
) {
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            b = rx.recv() => match b {
                Some(b) => {
                    let ledger = ledger.clone();
                    inflight.push(async move {
                        let r = ledger.record(b.entry).await.map(|_| ()).map_err(|e| e.to_string());
                        (b.leaf, r, b._permit)
                    });
                }
                // The sink is gone: finish what is on its way, then stop.
                None => break,
            },
            Some((leaf, r, permit)) = inflight.next(), if !inflight.is_empty() => {
                settle_one(&sink, leaf, r, permit);
            }
        }
    }
    while let Some((leaf, r, permit)) = inflight.next().await {
        settle_one(&sink, leaf, r, permit);
    }
}

/// Records what became of one batched record and wakes whoever waits.
fn settle_one(
    sink: &Weak<AuditSink>,
    leaf: Hash,
    r: Result<(), String>,
    permit: OwnedSemaphorePermit,
) {
    if let Some(sink) = sink.upgrade() {
        sink.batched_settled(leaf, r);
        // Invariant: a record's slot is given back only once it is
        // settled (drain waits for every slot).
        drop(permit);
        sink.settled_now.notify_waiters();
    }
}

/// The audit reference for an entry.
pub fn reference(entry: &[u8]) -> (Hash, String) {
    let h = leaf_hash(entry);
    (h, hex::encode(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfm_core::Digest;
    use kfm_policy::{Generalization, Obligation};

    fn decision(reason: &str, obligations: Vec<Obligation>) -> DecisionRecord {
        DecisionRecord {
            kind: "kfm.policy.Decision".into(),
            decision_id: "0f1e2d3c-4b5a-4697-8877-665544332211".into(),
            bundle_digest: Digest::of(b"bundle"),
            bundle_revision: "rev \"7\"".into(),
            input_digest: Digest::of(b"input"),
            allow: true,
            reason: reason.into(),
            obligations,
            time: "2026-11-23T02:03:04.123456Z".into(),
        }
    }

    #[test]
    fn entries_match_the_general_canonicaliser() {
        let roles = vec!["public".to_owned(), "réseau \u{1F600}".to_owned()];
        let strings = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "controls \u{0} \u{8} \t \n \u{c} \r \u{1f} \u{7f}",
            "unicode é 漢 \u{2028} \u{2029} \u{FEFF} \u{1F600}",
            "<script>&amp;</script>",
        ];
        let decisions = [
            decision("allowed", Vec::new()),
            decision(
                "generalized",
                vec![
                    Obligation::Generalize {
                        how: Generalization::Grid { degrees: 1.0 },
                    },
                    Obligation::Generalize {
                        how: Generalization::Grid { degrees: 0.1 },
                    },
                    Obligation::Generalize {
                        how: Generalization::H3 { resolution: 7 },
                    },
                    Obligation::Attribution {
                        license: "CC-BY-4.0".into(),
                        text: "© GeoNames \u{2028}".into(),
                    },
                    Obligation::RedactFields {
                        fields: vec!["owner".into(), "b\"c".into()],
                    },
                    Obligation::AuditDurable {},
                ],
            ),
        ];
        let mut checked = 0;
        for s in strings {
            for (i, d) in [None, Some(&decisions[0]), Some(&decisions[1])]
                .into_iter()
                .enumerate()
            {
                let r = AccessRecord {
                    kind: ACCESS_KIND,
                    request_id: s.to_owned(),
                    time: "2026-11-23T02:03:04.000001Z".into(),
                    subject: s,
                    roles: &roles,
                    auth: "token",
                    method: "GET",
                    route: "/collections/{collectionId}/items",
                    path: s,
                    query: (i != 1).then_some(s),
                    status: [200, 404, 503][i],
                    action: "read",
                    dataset: (i != 0).then_some(s),
                    version_id: (i == 2).then_some("ks-places@v1"),
                    decision: d,
                };
                let want = kfm_core::to_canonical_json(&r).unwrap();
                assert_eq!(
                    String::from_utf8(r.to_entry().unwrap()).unwrap(),
                    String::from_utf8(want).unwrap()
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 18);
    }
}
