//! Runs over time: the claim a run makes before gate F, the history of what
//! release pointers named, and what became of every run — published,
//! quarantined, or visibly interrupted (and then recorded as aborted).
//!
//! Store layout (all create-only):
//! * `catalog/<ds>/v<N>/claim.json`: a promotion's claim on version N,
//!   made after gates A–E pass and before its receipt is appended (F). The
//!   version directory then exists, so N is never numbered again, and two
//!   runs racing for N are decided here, before either appends a receipt.
//! * `catalog/<ds>/v<N>/rollback-<run_id>.json`: a rollback's record,
//!   before its receipt.
//! * `catalog/<ds>/v<N>/aborted-<run_id>.json`: an interrupted run, and the
//!   "aborted" record appended to the ledger for it.
//! * `published/<ds>/history/<ledger index>.json`: every pointer state
//!   after the pointer moved to it (the current pointer may lack its entry
//!   if a crash came right after the swap; the next run adds it).
//!
//! A run is *published* when a pointer named it (its record in the history,
//! or the current pointer), *quarantined* when its report exists, *aborted*
//! once a later run recorded it so, and otherwise *interrupted*.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kfm_core::dsse::IN_TOTO_PAYLOAD_TYPE;
use kfm_core::{Digest, Signer};
use kfm_ledger::Ledger;
use kfm_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::records::{
    self, LedgerRef, RECEIPT_PREDICATE, ReleasePointer, RunPredicate, STATEMENT_TYPE, Statement,
    ToolVersion,
};
use crate::run::ts;

pub const CLAIM_KIND: &str = "kfm.run-claim/v1";
pub const HISTORY_KIND: &str = "kfm.release-history/v1";
pub const ABORTED_KIND: &str = "kfm.run-aborted/v1";

/// What a run records before its receipt: who, what, which version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunClaim {
    pub kind: String,
    pub run_id: String,
    pub dataset: String,
    /// `promote` or `rollback`.
    pub operation: String,
    /// The version a promotion claims, or a rollback restores.
    pub version: u64,
    pub actor: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquisition: Option<String>,
}

/// One pointer state, kept once the pointer moved to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HistoryRecord {
    pub kind: String,
    pub pointer: ReleasePointer,
    pub recorded_at: String,
}

/// A run found interrupted, and the ledger record that says so.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AbortedRecord {
    pub kind: String,
    pub run_id: String,
    pub dataset: String,
    pub operation: String,
    pub version: u64,
    /// The "aborted" receipt in the ledger.
    pub receipt: LedgerRef,
    /// The run that found it.
    pub found_by: String,
    /// What it had written under processed/ and catalog/ (never pointed to).
    pub left: Vec<String>,
    pub recorded_at: String,
}

pub fn claim_key(ds: &str, v: u64) -> String {
    format!("{ds}/v{v}/claim.json")
}
fn rollback_key(ds: &str, v: u64, run_id: &str) -> String {
    format!("{ds}/v{v}/rollback-{run_id}.json")
}
fn aborted_key(ds: &str, v: u64, run_id: &str) -> String {
    format!("{ds}/v{v}/aborted-{run_id}.json")
}
fn history_key(ds: &str, ledger_index: u64) -> String {
    format!("{ds}/history/{ledger_index:020}.json")
}

fn json(v: &impl Serialize) -> Result<Bytes, serde_json::Error> {
    crate::records::record_bytes(v).map(Bytes::from)
}

/// Why a claim was not made.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("v{version} of {dataset} was claimed by another run since this one numbered it")]
    Taken { dataset: String, version: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the claim cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Records a run's claim (create-only). A promotion's claim on a version
/// that another run claimed first fails with [`ClaimError::Taken`].
pub async fn claim(store: &Store, c: &RunClaim) -> Result<(), ClaimError> {
    let key = if c.operation == "rollback" {
        rollback_key(&c.dataset, c.version, &c.run_id)
    } else {
        claim_key(&c.dataset, c.version)
    };
    match store.catalog().create(&key, json(c)?).await {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => Err(ClaimError::Taken {
            dataset: c.dataset.clone(),
            version: c.version,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Adds the pointer's state to the dataset's release history (nothing if
/// it is there already).
pub async fn record_release(store: &Store, p: &ReleasePointer) -> Result<(), String> {
    let rec = HistoryRecord {
        kind: HISTORY_KIND.into(),
        pointer: p.clone(),
        recorded_at: ts(Utc::now()),
    };
    let key = history_key(&p.dataset, p.ledger_index);
    match store
        .published()
        .compare_and_swap(&key, None, json(&rec).map_err(|e| e.to_string())?)
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Every pointer state of a dataset's history, oldest first.
pub async fn history(store: &Store, ds: &str) -> Result<Vec<HistoryRecord>, StoreError> {
    let published = store.published();
    let mut out = Vec::new();
    for obj in published.list(&format!("{ds}/history")).await? {
        let Some(b) = published.get_opt(&obj.key).await? else {
            continue;
        };
        match serde_json::from_slice::<HistoryRecord>(&b) {
            Ok(r) if r.kind == HISTORY_KIND && r.pointer.dataset == ds => out.push(r),
            // A record that does not read names no release: the version it
            // would vouch for is refused, never served on its word.
            _ => tracing::warn!(key = %obj.key, "not a release history record; ignored"),
        }
    }
    out.sort_by_key(|r| r.pointer.ledger_index);
    Ok(out)
}

/// The current pointer, parsed (`None`: nothing published, or a pointer
/// that does not parse; `kfm status` reports the latter).
pub async fn current_pointer(
    store: &Store,
    ds: &str,
) -> Result<Option<ReleasePointer>, StoreError> {
    Ok(store
        .published()
        .get_opt(&records::pointer_key(ds))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Whether a release pointer ever named version `v` of `ds`.
pub async fn ever_released(store: &Store, ds: &str, v: u64) -> Result<bool, StoreError> {
    if current_pointer(store, ds)
        .await?
        .is_some_and(|p| p.version == v)
    {
        return Ok(true);
    }
    Ok(history(store, ds)
        .await?
        .iter()
        .any(|r| r.pointer.version == v))
}

/// What became of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RunState {
    Published,
    Quarantined {
        report: String,
    },
    Aborted {
        receipt: LedgerRef,
    },
    /// Claimed, never published or quarantined: the run stopped after
    /// gate A–E passed (possibly after its receipt) and before its pointer
    /// moved. `left`: what it wrote under processed/ and catalog/.
    Interrupted {
        left: Vec<String>,
    },
    /// Its dataset's run lock is held: it may be running now.
    InProgress,
}

/// One run that claimed a version (a promotion) or recorded a rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub operation: String,
    pub version: u64,
    pub started_at: String,
    #[serde(flatten)]
    pub state: RunState,
}

/// Every claimed run of `ds`, oldest first, with what became of it.
/// `locked`: whether a run of the dataset holds its lock right now (a
/// claim without an outcome is then in progress, not interrupted).
pub async fn runs(store: &Store, ds: &str, locked: bool) -> Result<Vec<RunInfo>, StoreError> {
    let catalog = store.catalog();
    let current = current_pointer(store, ds).await?;
    let history = history(store, ds).await?;
    let pointed = |run_id: &str, version: u64, op: &str| {
        current
            .iter()
            .chain(history.iter().map(|h| &h.pointer))
            .any(|p| {
                p.run_id.as_deref() == Some(run_id)
                    || (p.run_id.is_none()
                        && op == "promote"
                        && p.operation == "promote"
                        && p.version == version)
            })
    };
    let mut out = Vec::new();
    for dir in catalog.list_dirs(ds).await? {
        let Some(v) = kfm_store::dir_name(&dir)
            .strip_prefix('v')
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let objects = catalog.list(&format!("{ds}/v{v}")).await?;
        let mut claims: Vec<RunClaim> = Vec::new();
        let mut aborted: Vec<AbortedRecord> = Vec::new();
        for o in &objects {
            let name = o.key.rsplit('/').next().unwrap_or_default();
            let is_claim = name == "claim.json" || name.starts_with("rollback-");
            if !(is_claim || name.starts_with("aborted-")) {
                continue;
            }
            let Some(b) = catalog.get_opt(&o.key).await? else {
                continue;
            };
            if is_claim {
                if let Ok(c) = serde_json::from_slice::<RunClaim>(&b) {
                    claims.push(c);
                }
            } else if let Ok(a) = serde_json::from_slice::<AbortedRecord>(&b) {
                aborted.push(a);
            }
        }
        for c in claims {
            let report = crate::quarantine::report_key(ds, &c.run_id);
            let state = if pointed(&c.run_id, v, &c.operation) {
                RunState::Published
            } else if store.quarantine().head(&report).await?.is_some() {
                RunState::Quarantined {
                    report: format!("quarantine/{report}"),
                }
            } else if let Some(a) = aborted.iter().find(|a| a.run_id == c.run_id) {
                RunState::Aborted {
                    receipt: a.receipt.clone(),
                }
            } else if locked {
                RunState::InProgress
            } else {
                RunState::Interrupted {
                    left: left_by(store, ds, v, &c).await?,
                }
            };
            out.push(RunInfo {
                run_id: c.run_id,
                operation: c.operation,
                version: v,
                started_at: c.started_at,
                state,
            });
        }
    }
    out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(out)
}

/// What an interrupted run wrote under processed/ and catalog/ besides its
/// claim (a rollback writes nothing else).
async fn left_by(store: &Store, ds: &str, v: u64, c: &RunClaim) -> Result<Vec<String>, StoreError> {
    if c.operation != "promote" {
        return Ok(Vec::new());
    }
    let mut left = Vec::new();
    for o in store.processed().list(&format!("{ds}/v{v}")).await? {
        left.push(format!("processed/{}", o.key));
    }
    for o in store.catalog().list(&format!("{ds}/v{v}")).await? {
        let name = o.key.rsplit('/').next().unwrap_or_default();
        if name != "claim.json" && !name.starts_with("rollback-") && !name.starts_with("aborted-") {
            left.push(format!("catalog/{}", o.key));
        }
    }
    Ok(left)
}

/// What a run does before its own work, under its dataset's run lock: the
/// current pointer's state is added to the history if a crash kept it out,
/// and every interrupted run gets an "aborted" receipt in the ledger and
/// a record beside its claim. Returns the runs recorded as aborted.
pub async fn settle(
    store: &Store,
    ledger: &Ledger,
    signer: &Signer,
    ds: &str,
    run_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<AbortedRecord>, String> {
    // Only a pointer that verifies end to end joins the history: a
    // hand-edited one is reported by status and refused by gate G, never
    // recorded as released.
    if current_pointer(store, ds)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        let view = ledger.view().await.map_err(|e| e.to_string())?;
        if let Ok(Some(v)) =
            crate::release::verify_release(store, &view, ds, &signer.verifying_key()).await
        {
            record_release(store, &v.pointer).await?;
        }
    }
    let mut out = Vec::new();
    for r in runs(store, ds, false).await.map_err(|e| e.to_string())? {
        let RunState::Interrupted { left } = r.state else {
            continue;
        };
        let statement = Statement {
            type_: STATEMENT_TYPE.into(),
            subject: Vec::new(),
            predicate_type: RECEIPT_PREDICATE.into(),
            predicate: RunPredicate {
                run_id: r.run_id.clone(),
                operation: r.operation.clone(),
                outcome: "aborted".into(),
                dataset: ds.to_owned(),
                version_id: Some(format!("{ds}@v{}", r.version)),
                inputs: Vec::new(),
                parameters: serde_json::json!({
                    "version": r.version,
                    "found_by": run_id,
                    "left": left,
                    "why": "the run claimed its version and stopped before its release pointer moved or a quarantine report was written",
                }),
                tools: vec![ToolVersion {
                    name: "kfm".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }],
                gates: Vec::new(),
                policy: None,
                actor: actor.to_owned(),
                started_at: r.started_at.clone(),
                finished_at: ts(now),
            },
        };
        let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
        let bytes = signer
            .sign(IN_TOTO_PAYLOAD_TYPE, &payload)
            .to_bytes()
            .map_err(|e| e.to_string())?;
        let a = ledger.append(bytes.clone()).await.map_err(|e| {
            format!(
                "the ledger refused the aborted record of run {}: {e}",
                r.run_id
            )
        })?;
        let rec = AbortedRecord {
            kind: ABORTED_KIND.into(),
            run_id: r.run_id.clone(),
            dataset: ds.to_owned(),
            operation: r.operation,
            version: r.version,
            receipt: LedgerRef {
                digest: Digest::of(&bytes).to_string(),
                ledger_index: a.index,
            },
            found_by: run_id.to_owned(),
            left,
            recorded_at: ts(now),
        };
        store
            .catalog()
            .create(
                &aborted_key(ds, r.version, &r.run_id),
                json(&rec).map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(run = %r.run_id, version = r.version, "an interrupted run was recorded as aborted");
        out.push(rec);
    }
    Ok(out)
}

/// Removes `work/<ds>/<run_id>/` of runs older than `keep` (run ids start
/// with their UTC start time), never `current`. Returns how many runs'
/// scratch was removed.
pub async fn sweep_work(
    store: &Store,
    ds: &str,
    keep: chrono::Duration,
    now: DateTime<Utc>,
    current: &str,
) -> Result<usize, StoreError> {
    let work = store.work();
    let mut swept = 0;
    for dir in work.list_dirs(ds).await? {
        let run = kfm_store::dir_name(&dir).to_owned();
        if run == current {
            continue;
        }
        let Some(started) = run
            .get(..18)
            .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%3f").ok())
        else {
            continue; // not a run's scratch (an ingest's staging is swept by ingest)
        };
        if now.naive_utc() - started < keep {
            continue;
        }
        for o in work.list(&format!("{ds}/{run}")).await? {
            work.delete(&o.key).await?;
        }
        swept += 1;
    }
    Ok(swept)
}

/// Whether a run can record what it does: a ledger and a signing key.
///
/// Invariant: without either nothing can be recorded, so a run that lacks
/// one writes nothing at all (no claim, no scratch, no quarantine report):
/// the operator's problem, not the dataset's.
pub(crate) fn can_record(
    ledger: &Result<&Ledger, String>,
    signer: &Result<&Signer, String>,
) -> Result<(), crate::error::PromoteError> {
    use crate::error::PromoteError;
    if let Err(e) = ledger {
        return Err(PromoteError::Ledger(format!(
            "the ledger is not available: {e}"
        )));
    }
    if let Err(e) = signer {
        return Err(PromoteError::Ledger(format!(
            "receipts cannot be signed: {e}"
        )));
    }
    Ok(())
}

/// What [`before_run`] needs.
pub struct RunStart<'a> {
    pub store: &'a Store,
    /// Without a ledger or key there is nothing to record with: the run's
    /// gate F will say so, and nothing is settled or swept.
    pub ledger: Option<&'a Ledger>,
    pub signer: Option<&'a Signer>,
    pub dataset: &'a str,
    pub run_id: &'a str,
    pub actor: &'a str,
    pub now: DateTime<Utc>,
    /// How long runs' scratch under work/ is kept.
    pub work_keep: chrono::Duration,
}

/// What every run (promotion or rollback) does first, under its dataset's
/// run lock: [`settle`] (the history up to date, interrupted runs recorded
/// as aborted), then sweep what interrupted writes and old runs left.
pub async fn before_run(r: RunStart<'_>) -> Result<Vec<AbortedRecord>, crate::PromoteError> {
    let (Some(ledger), Some(signer)) = (r.ledger, r.signer) else {
        return Ok(Vec::new());
    };
    let aborted = settle(r.store, ledger, signer, r.dataset, r.run_id, r.actor, r.now)
        .await
        .map_err(|why| crate::PromoteError::Settle {
            dataset: r.dataset.to_owned(),
            why,
        })?;
    let removed = r
        .store
        .sweep_temporaries(r.dataset, std::time::Duration::from_secs(3600))
        .await?;
    for p in &removed {
        tracing::warn!(path = %p, "removed a temporary file an interrupted write left");
    }
    sweep_work(r.store, r.dataset, r.work_keep, r.now, r.run_id).await?;
    Ok(aborted)
}
