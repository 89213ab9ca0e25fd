//! What every run of the truth path shares (a promotion, a rollback, the
//! bookkeeping of runs): its id, how it writes times, the policy it runs
//! under, and what a promotion is asked and answers (`promote.rs` drives
//! it, `publish.rs` finishes it). Its own module so that those modules
//! depend on it and not on each other.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use kfm_core::dsse::Signer;
use kfm_core::{DatasetId, Digest};
use kfm_ledger::Ledger;
use kfm_store::Store;
use serde::Serialize;

use crate::catalog::Artifact;
use crate::gates::{Gate, GateResult};
use crate::records::{LedgerRef, ReleasePointer};

/// The policy bundle in force, as gate B and G need it.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub digest: Digest,
    pub revision: String,
    /// `data.kfm.licenses`: license id → `{attribution: bool}`.
    pub licenses: serde_json::Value,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A sortable, unique run id: UTC time to the millisecond (runs of one
/// dataset are ordered by it, and several fit in a second), then 8 random
/// hex digits.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%S%3fZ"), &r[..8])
}

/// Everything a run needs from outside. Each dependency that may be
/// missing is a `Result`, so that its absence becomes a gate's
/// "cannot evaluate" with the reason, not an early exit.
pub struct PromoteRequest<'a> {
    pub store: &'a Store,
    pub spec_path: &'a Path,
    pub dataset: &'a DatasetId,
    /// A specific acquisition (digest); default the newest.
    pub acquisition: Option<Digest>,
    pub actor: String,
    pub policy: Result<PolicyInfo, String>,
    pub signer: Result<&'a Signer, String>,
    pub ledger: Result<&'a Ledger, String>,
    /// The run's clock: timestamps and embargo dates.
    pub now: DateTime<Utc>,
    /// How long a run's scratch under work/ is kept; older runs' scratch
    /// is removed when a run of the dataset starts.
    pub work_keep: chrono::Duration,
    /// Called as each gate starts (progress display; tests use it to act
    /// at a precise point of the run).
    pub on_gate: &'a (dyn Fn(Gate) + Sync),
}

/// The outcome of a run that started.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteOutcome {
    pub run_id: String,
    pub dataset: String,
    pub published: bool,
    /// The version this run produced (published) or attempted.
    pub version: u64,
    pub version_id: String,
    pub acquisition: String,
    pub gates: Vec<GateResult>,
    /// `quarantine/<ds>/<run_id>/report.json` when quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_report: Option<String>,
    /// Where this run's receipt sits in the ledger, if it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<LedgerRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<ReleasePointer>,
    pub artifacts: Vec<Artifact>,
    /// Earlier runs of this dataset found interrupted, recorded as aborted
    /// (in the ledger) before this one began.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<crate::runs::AbortedRecord>,
}
