//! Reading the quarantine zone: which runs failed, and their reports.

use kfm_store::{Store, StoreError};
use serde::Serialize;

use crate::gates::{GateResult, Status};

/// One quarantined run, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedRun {
    pub dataset: String,
    pub run_id: String,
    pub operation: String,
    /// `quarantine/<ds>/<run_id>/report.json`.
    pub report: String,
    /// Gates that did not pass (fail or cannot evaluate).
    pub failed: Vec<GateResult>,
    pub finished_at: Option<String>,
}

/// Every quarantined run, of one dataset or all, oldest first.
pub async fn list(store: &Store, dataset: Option<&str>) -> Result<Vec<QuarantinedRun>, StoreError> {
    let q = store.quarantine();
    let datasets: Vec<String> = match dataset {
        Some(d) => vec![d.to_owned()],
        None => q
            .list_dirs("")
            .await?
            .into_iter()
            .map(|d| {
                d.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect(),
    };
    let mut out = Vec::new();
    for ds in datasets {
        for run in q.list_dirs(&ds).await? {
            let run_id = run
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let key = format!("{ds}/{run_id}/report.json");
            let Some(bytes) = q.get_opt(&key).await? else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let gates: Vec<GateResult> =
                serde_json::from_value(v["gates"].clone()).unwrap_or_default();
            out.push(QuarantinedRun {
                dataset: ds.clone(),
                run_id,
                operation: v["operation"].as_str().unwrap_or("promote").to_owned(),
                report: format!("quarantine/{key}"),
                failed: gates
                    .into_iter()
                    .filter(|g| matches!(g.status, Status::Fail | Status::CannotEvaluate))
                    .collect(),
                finished_at: v["finished_at"].as_str().map(str::to_owned),
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
) -> Result<Option<(String, serde_json::Value)>, StoreError> {
    for r in list(store, None).await? {
        if r.run_id == run_id {
            let key = r
                .report
                .strip_prefix("quarantine/")
                .unwrap_or(&r.report)
                .to_owned();
            let bytes = store.quarantine().get(&key).await?;
            let v = serde_json::from_slice(&bytes).unwrap_or_default();
            return Ok(Some((r.report, v)));
        }
    }
    Ok(None)
}
