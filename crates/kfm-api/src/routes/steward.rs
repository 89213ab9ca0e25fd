//! The stewards' page for the truth path: every dataset the store knows of,
//! where it stands (published, or quarantined with nothing published), the
//! gate table of its last run, and each quarantine report with the reasons
//! its gates gave.
//!
//! For stewards only, by the policy's decision (action `steward`), recorded
//! durably like every staff read. What it says is read, never assumed: the
//! published run's gates from its signed receipt in the ledger (a receipt
//! that does not verify is said, not shown as a pass), the failed runs'
//! from their reports in the quarantine zone (a report that does not read
//! as one is listed as a problem, never skipped).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use kfm_pipeline::gates::GateResult;
use kfm_pipeline::quarantine::{QUARANTINE_KIND, QuarantineReport, report_key};
use serde::Serialize;

use super::{Html, JSON, json_answer, not_ready, note, with_note};
use crate::auth::Principal;
use crate::{AppState, enforce, error, html, not_found};

/// One dataset on the truth path.
#[derive(Debug, Serialize)]
pub struct DatasetPath {
    pub dataset: String,
    /// `published` (a release is served) or `quarantined` (runs failed
    /// their gates and nothing is published).
    pub stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    /// The newest run: the published one or the newest quarantined one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Run>,
    /// Every quarantined run, newest first.
    pub quarantined: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub struct Published {
    pub version_id: String,
    pub manifest_digest: String,
    pub policy_label: String,
    pub license: String,
    pub published_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub run_id: String,
    /// `promote` or `rollback`.
    pub operation: String,
    /// `published` or `quarantined`.
    pub outcome: &'static str,
    pub version: u64,
    pub finished_at: String,
    /// Every gate's result, as the run recorded it.
    pub gates: Vec<GateResult>,
    /// Why the gate table could not be read (then `gates` is empty: a
    /// table that cannot be shown is never shown as passing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates_unavailable: Option<String>,
    /// The quarantine report's key in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

#[utoipa::path(get, path = "/steward", tag = "Stewards",
    params(("f" = Option<String>, Query, description = "json or html")),
    responses((status = 200, description = "Every dataset's stage on the truth path, its last run's gate table and the quarantine reports (stewards only)", content_type = "application/json"),
        (status = 404, description = "Not available to this caller (the same answer as any missing resource)")))]
pub(crate) async fn steward(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Html(wants_html): Html,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("steward"));
    }
    let (allow, n) = enforce::steward_read(&st, &who);
    if !allow {
        return not_found(n);
    }
    let (datasets, problems) = match truth_path(&st).await {
        Ok(x) => x,
        Err(e) => {
            // Names a store key at most, never data.
            tracing::warn!(error = %e, "the quarantine zone could not be read");
            return with_note(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "the quarantine zone could not be read just now; retry",
                ),
                n,
            );
        }
    };
    if wants_html {
        return with_note(html::steward(super::base(&st), &datasets, &problems), n);
    }
    let doc = serde_json::json!({ "datasets": datasets, "problems": problems });
    json_answer(StatusCode::OK, JSON, &doc, n)
}

/// Every dataset with a served release or a quarantine report, by id, and
/// the reports that could not be read.
async fn truth_path(
    st: &AppState,
) -> Result<(Vec<DatasetPath>, Vec<String>), kfm_store::StoreError> {
    let (mut runs, problems) = quarantined_runs(st).await?;
    let mut out: BTreeMap<String, DatasetPath> = BTreeMap::new();
    for rel in st.releases.all() {
        let m = &rel.manifest;
        let (gates, gates_unavailable) = match kfm_pipeline::release::receipt_at(
            st.audit.ledger().as_ref(),
            m.receipt.ledger_index,
            st.releases.key(),
        )
        .await
        {
            Ok(s) => (s.predicate.gates, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let run = Run {
            run_id: m.run_id.clone(),
            operation: "promote".into(),
            outcome: "published",
            version: m.version,
            finished_at: m.created_at.clone(),
            gates,
            gates_unavailable,
            report: None,
        };
        let quarantined = runs.remove(&rel.dataset).unwrap_or_default();
        // Run ids sort in the order runs started.
        let last = match quarantined.first() {
            Some(q) if q.run_id > run.run_id => q.clone(),
            _ => run,
        };
        out.insert(
            rel.dataset.clone(),
            DatasetPath {
                dataset: rel.dataset.clone(),
                stage: "published",
                published: Some(Published {
                    version_id: rel.version_id.clone(),
                    manifest_digest: rel.manifest_digest.clone(),
                    policy_label: m.policy_label.clone(),
                    license: m.license.clone(),
                    published_at: m.created_at.clone(),
                }),
                last_run: Some(last),
                quarantined,
            },
        );
    }
    for (ds, quarantined) in runs {
        out.insert(
            ds.clone(),
            DatasetPath {
                dataset: ds,
                stage: "quarantined",
                published: None,
                last_run: quarantined.first().cloned(),
                quarantined,
            },
        );
    }
    Ok((out.into_values().collect(), problems))
}

/// The quarantine zone's reports by dataset, newest first; reports that do
/// not read as one, as problems naming their key.
async fn quarantined_runs(
    st: &AppState,
) -> Result<(BTreeMap<String, Vec<Run>>, Vec<String>), kfm_store::StoreError> {
    let zone = &st.releases.zones().quarantine;
    let mut out: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    let mut problems = Vec::new();
    for d in zone.list_dirs("").await? {
        let ds = kfm_store::dir_name(&d).to_owned();
        for r in zone.list_dirs(&ds).await? {
            let key = report_key(&ds, kfm_store::dir_name(&r));
            let Some(bytes) = zone.get_opt(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<QuarantineReport>(&bytes) {
                Ok(rep) if rep.kind == QUARANTINE_KIND && rep.dataset == ds => {
                    out.entry(ds.clone()).or_default().push(Run {
                        run_id: rep.run_id,
                        operation: rep.operation,
                        outcome: "quarantined",
                        version: rep.version_attempted,
                        finished_at: rep.finished_at,
                        gates: rep.gates,
                        gates_unavailable: None,
                        report: Some(format!("quarantine/{key}")),
                    });
                }
                Ok(_) => problems.push(format!(
                    "quarantine/{key}: not a {QUARANTINE_KIND} of dataset {ds}"
                )),
                Err(e) => problems.push(format!("quarantine/{key}: {e}")),
            }
        }
    }
    for runs in out.values_mut() {
        runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    }
    Ok((out, problems))
}
