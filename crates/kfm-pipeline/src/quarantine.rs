//! The quarantine zone: the one report shape every run that failed a gate
//! writes (`quarantine/<ds>/<run_id>/report.json`), and reading it back.
//!
//! One typed report, written and read only here, so that a promotion and a
//! rollback cannot drift into two shapes and `kfm quarantine show` reads
//! what either wrote.

use bytes::Bytes;
use kfm_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::gates::{GateResult, Status};
use crate::records::{LedgerRef, ResourceDescriptor};

pub const QUARANTINE_KIND: &str = "kfm.quarantine-report/v1";

/// Why a run was quarantined, with everything it was judged on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineReport {
    pub kind: String,
    pub run_id: String,
    pub dataset: String,
    /// `promote` or `rollback`.
    pub operation: String,
    /// The acquisition a promotion read (a rollback reads none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquisition: Option<ResourceDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    pub version_attempted: u64,
    pub gates: Vec<GateResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<serde_json::Value>,
    /// The run's receipt in the ledger, if one was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<LedgerRef>,
    /// Objects a failed release step had already created (never pointed to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: String,
}

/// Zone-relative key of a run's report.
pub fn report_key(dataset: &str, run_id: &str) -> String {
    format!("{dataset}/{run_id}/report.json")
}

/// A report that could not be read as one.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("quarantine/{key} is not a quarantine report: {reason}")]
    Malformed { key: String, reason: String },
}

impl QuarantineReport {
    /// Writes the report (create-only: a run's report is written once).
    /// Returns its store key (`quarantine/<ds>/<run_id>/report.json`).
    pub async fn write(&self, store: &Store) -> Result<String, StoreError> {
        let key = report_key(&self.dataset, &self.run_id);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Io {
            path: format!("quarantine/{key}"),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        store.quarantine().create(&key, Bytes::from(bytes)).await?;
        Ok(format!("quarantine/{key}"))
    }

    /// Reads and checks the report at zone-relative `key`.
    pub async fn read(store: &Store, key: &str) -> Result<Self, ReportError> {
        let bytes = store.quarantine().get(key).await?;
        let r: Self = serde_json::from_slice(&bytes).map_err(|e| ReportError::Malformed {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        if r.kind != QUARANTINE_KIND {
            return Err(ReportError::Malformed {
                key: key.to_owned(),
                reason: format!("kind {:?}, expected {QUARANTINE_KIND}", r.kind),
            });
        }
        Ok(r)
    }
}

/// One quarantined run, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedRun {
    pub dataset: String,
    pub run_id: String,
    pub operation: String,
    /// `quarantine/<ds>/<run_id>/report.json`.
    pub report: String,
    pub version_attempted: u64,
    /// Gates that did not pass (fail or cannot evaluate).
    pub failed: Vec<GateResult>,
    pub finished_at: String,
}

/// Every quarantined run, of one dataset or all, oldest first. A report
/// that does not read as one is an error naming it (never skipped).
pub async fn list(
    store: &Store,
    dataset: Option<&str>,
) -> Result<Vec<QuarantinedRun>, ReportError> {
    let q = store.quarantine();
    let datasets: Vec<String> = match dataset {
        Some(d) => vec![d.to_owned()],
        None => q
            .list_dirs("")
            .await?
            .iter()
            .map(|d| kfm_store::dir_name(d).to_owned())
            .collect(),
    };
    let mut out = Vec::new();
    for ds in datasets {
        for run in q.list_dirs(&ds).await? {
            let run_id = kfm_store::dir_name(&run).to_owned();
            let key = report_key(&ds, &run_id);
            if q.head(&key).await?.is_none() {
                continue;
            }
            let r = QuarantineReport::read(store, &key).await?;
            out.push(QuarantinedRun {
                dataset: ds.clone(),
                run_id,
                operation: r.operation,
                report: format!("quarantine/{key}"),
                version_attempted: r.version_attempted,
                failed: r
                    .gates
                    .into_iter()
                    .filter(|g| matches!(g.status, Status::Fail | Status::CannotEvaluate))
                    .collect(),
                finished_at: r.finished_at,
            });
        }
    }
    out.sort_by(|a, b| a.run_id.cmp(&b.run_id).then(a.dataset.cmp(&b.dataset)));
    Ok(out)
}

/// The report of one run (`run_id` alone is enough: run ids are unique).
pub async fn show(
    store: &Store,
    run_id: &str,
) -> Result<Option<(String, QuarantineReport)>, ReportError> {
    for r in list(store, None).await? {
        if r.run_id == run_id {
            let key = r
                .report
                .strip_prefix("quarantine/")
                .unwrap_or(&r.report)
                .to_owned();
            return Ok(Some((r.report, QuarantineReport::read(store, &key).await?)));
        }
    }
    Ok(None)
}
