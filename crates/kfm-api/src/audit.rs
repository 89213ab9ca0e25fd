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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kfm_ledger::{Hash, Ledger, leaf_hash};
use kfm_policy::DecisionRecord;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

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
    pub decision: Option<DecisionRecord>,
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

/// Most records that may wait for the ledger without holding an answer
/// back; past it, answers wait (back-pressure instead of unbounded memory).
const MAX_PENDING: usize = 65_536;

/// The API's side of the ledger.
pub struct AuditSink {
    ledger: Arc<Ledger>,
    pending: Mutex<HashMap<Hash, watch::Receiver<bool>>>,
    slots: Arc<Semaphore>,
    failed: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The ledger refused or lost a record.
#[derive(Debug, thiserror::Error)]
#[error("the audit ledger did not take the record: {0}")]
pub struct AuditError(pub String);

impl AuditSink {
    pub fn new(ledger: Arc<Ledger>, metrics: Arc<Metrics>) -> Self {
        Self {
            ledger,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_PENDING)),
            failed: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// False once any append failed: the server stops answering governed
    /// requests (it could no longer account for them).
    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && self.ledger.failure().is_none()
    }

    /// Appends and waits until the record is durable.
    pub async fn append_durable(&self, entry: Vec<u8>) -> Result<(), AuditError> {
        match self.ledger.append(entry).await {
            Ok(_) => {
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
        let (tx, rx) = watch::channel(false);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(leaf, rx);
        }
        self.metrics.audit_pending.inc();
        let me = self.clone();
        tokio::spawn(async move {
            let ok = me.ledger.append(entry).await;
            if let Err(e) = &ok {
                me.failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "batched audit append failed");
            }
            me.metrics.audit_append("batched", ok.is_ok());
            let _ = tx.send(true);
            if let Ok(mut p) = me.pending.lock() {
                p.remove(&leaf);
            }
            me.metrics.audit_pending.dec();
            drop(permit);
        });
    }

    /// Waits (bounded) for a batched record still on its way to the ledger.
    pub async fn settle(&self, leaf: &Hash) {
        let rx = self.pending.lock().ok().and_then(|p| p.get(leaf).cloned());
        if let Some(mut rx) = rx {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|done| *done))
                    .await;
        }
    }

    /// Waits until every batched record has been appended (shutdown).
    pub async fn drain(&self) {
        let _ = self.slots.acquire_many(MAX_PENDING as u32).await;
    }
}

/// The audit reference for an entry.
pub fn reference(entry: &[u8]) -> (Hash, String) {
    let h = leaf_hash(entry);
    (h, hex::encode(h))
}
