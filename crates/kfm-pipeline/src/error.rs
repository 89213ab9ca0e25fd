//! Why a run of the truth path (a promotion or a rollback) could not start.
//!
//! Its own module so that the modules of a run (`promote`, `release`,
//! `rollback`) depend on it and not on each other.

use kfm_store::StoreError;

use crate::ingest::IngestError;

/// Why a run could not start (exit 2): nothing was evaluated or written.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Spec(#[from] IngestError),
    #[error("{spec} declares dataset {declared}, not {requested}")]
    WrongDataset {
        spec: String,
        declared: String,
        requested: String,
    },
    #[error("dataset {0} has no acquisition in raw/: run `kfm ingest` first")]
    NoAcquisition(String),
    #[error("dataset {dataset} has no acquisition {digest} in raw/")]
    UnknownAcquisition { dataset: String, digest: String },
    #[error(
        "dataset {dataset} has no version v{version} (no catalog/{dataset}/v{version}/release.dsse.json)"
    )]
    UnknownVersion { dataset: String, version: u64 },
    #[error("{dataset} has no version v{version} that a release pointer ever named: {why}")]
    NeverReleased {
        dataset: String,
        version: u64,
        why: String,
    },
    #[error("before this run, interrupted runs of {dataset} must be recorded, and were not: {why}")]
    Settle { dataset: String, why: String },
    /// The ledger could not take the run's receipt: nothing about the
    /// dataset was judged, so no quarantine report is written. The run's
    /// claim shows it as interrupted until the next run records it as
    /// aborted.
    #[error("cannot evaluate: {0}; the run stopped before publishing anything")]
    Ledger(String),
    #[error(transparent)]
    Quarantine(#[from] crate::quarantine::ReportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
