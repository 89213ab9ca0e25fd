//! `kfm status`: every dataset the workspace knows, and where it stands.
//!
//! What it says is derived, never assumed: "published" from the release
//! pointer verified end to end (and the sizes of every file its manifest
//! lists), each run's fate from the store's run records (published,
//! quarantined, aborted, or interrupted with what it left), and it says
//! what it did not check.

use std::collections::BTreeMap;
use std::path::Path;

use kfm_core::DatasetId;
use kfm_pipeline::runs::{RunInfo, RunState};
use kfm_pipeline::{AcquisitionEntry, acquisitions, load_spec};
use serde::Serialize;

use crate::cli::{Format, StatusArgs};
use crate::failure::Failure;
use crate::output::{human_size, print_json};
use crate::workspace::Workspace;

#[derive(Serialize)]
pub struct StatusReport {
    pub workspace: String,
    pub store: String,
    pub datasets: Vec<DatasetStatus>,
}

#[derive(Serialize)]
pub struct DatasetStatus {
    pub id: String,
    /// The spec file declaring this dataset, if any.
    pub spec: Option<String>,
    /// Position on the truth path: `specified` (spec only), `raw`,
    /// `quarantined` (last run failed, nothing published) or `published`
    /// (a release pointer names a version).
    pub stage: &'static str,
    pub acquisitions: Vec<AcquisitionStatus>,
    /// The release pointer, verified end to end (manifest digest and
    /// signature, ledger entries, artifact sizes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,
    /// The most recent run (promotion or rollback) and its outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunStatus>,
    /// Runs that claimed a version and stopped before their pointer moved
    /// (the next run of the dataset records each as aborted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interrupted: Vec<RunStatus>,
}

#[derive(Serialize)]
pub struct ReleaseStatus {
    pub version_id: Option<String>,
    pub verified: bool,
    /// Why the release does not verify (hand-edited pointer, missing
    /// manifest, a truncated artifact, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_index: Option<u64>,
    /// What moved the pointer last: `promote` or `rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// What "verified" covers, and what it does not.
    pub checked: Vec<String>,
    pub not_checked: Vec<String>,
}

#[derive(Serialize)]
pub struct RunStatus {
    pub run_id: String,
    pub operation: String,
    /// `published`, `rolled back`, `quarantined`, `aborted`, `interrupted`
    /// or `in progress`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `A pass`, `B fail`, …
    pub gates: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// What an interrupted run left under processed/ and catalog/.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

#[derive(Serialize)]
pub struct AcquisitionStatus {
    pub digest: String,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What verifying releases needs: the ledger (read-only) and the key.
type Verifier = Result<(kfm_ledger::LedgerView, ed25519_dalek::VerifyingKey), String>;

async fn verifier(ws: &Workspace, store: &kfm_store::Store) -> Verifier {
    let vk = crate::ledger::verifier_key(ws, None).map_err(|f| f.message)?;
    let key = crate::ledger::dsse_key(&vk).map_err(|f| f.message)?;
    let view = ws
        .ledger_view(store, &vk)
        .await
        .map_err(|f| format!("the ledger cannot be read: {}", f.message))?;
    Ok((view, key))
}

const CHECKED: [&str; 4] = [
    "pointer",
    "manifest digest and signature",
    "ledger entries (manifest or rollback receipt, run receipt)",
    "every listed file present with its recorded size",
];

async fn release_status(
    store: &kfm_store::Store,
    v: &Verifier,
    ds: &str,
) -> Result<Option<ReleaseStatus>, Failure> {
    let key = kfm_pipeline::records::pointer_key(ds);
    let Some(ptr) = store.published().read(&key).await? else {
        return Ok(None);
    };
    let claimed = serde_json::from_slice::<kfm_pipeline::records::ReleasePointer>(&ptr.bytes).ok();
    let result = match v {
        Err(e) => Err(format!("cannot verify: {e}")),
        Ok((view, key)) => kfm_pipeline::verify_release(store, view, ds, key).await,
    };
    let not_checked = vec![format!(
        "file digests (not re-hashed here; `kfm catalog validate {ds}` re-hashes every file)"
    )];
    let failed = |problem: String| ReleaseStatus {
        version_id: claimed.as_ref().map(|p| p.version_id.clone()),
        verified: false,
        problem: Some(problem),
        manifest_digest: claimed.as_ref().map(|p| p.manifest_digest.clone()),
        ledger_index: claimed.as_ref().map(|p| p.ledger_index),
        operation: claimed.as_ref().map(|p| p.operation.clone()),
        checked: Vec::new(),
        not_checked: not_checked.clone(),
    };
    Ok(Some(match result {
        Ok(Some(r)) => {
            let (problems, files) = kfm_pipeline::release::check_sizes(store, &r.manifest).await?;
            if problems.is_empty() {
                let mut checked: Vec<String> = CHECKED.iter().map(|s| (*s).to_owned()).collect();
                checked[3] = format!("{} ({files} files)", CHECKED[3]);
                ReleaseStatus {
                    version_id: Some(r.pointer.version_id),
                    verified: true,
                    problem: None,
                    manifest_digest: Some(r.pointer.manifest_digest),
                    ledger_index: Some(r.pointer.ledger_index),
                    operation: Some(r.pointer.operation),
                    checked,
                    not_checked,
                }
            } else {
                failed(problems.join("; "))
            }
        }
        Ok(None) => return Ok(None),
        Err(problem) => failed(problem),
    }))
}

fn gate_list(gates: &[kfm_pipeline::GateResult]) -> Vec<String> {
    gates
        .iter()
        .map(|g| format!("{:?} {}", g.gate, g.status.as_str()))
        .collect()
}

/// A run record's state, for a terminal and for JSON.
fn run_status(r: &RunInfo, gates: Vec<String>) -> RunStatus {
    let (outcome, report, left) = match &r.state {
        RunState::Published if r.operation == "rollback" => ("rolled back", None, Vec::new()),
        RunState::Published => ("published", None, Vec::new()),
        RunState::Quarantined { report } => ("quarantined", Some(report.clone()), Vec::new()),
        RunState::Aborted { receipt } => (
            "aborted",
            Some(format!("ledger entry {}", receipt.ledger_index)),
            Vec::new(),
        ),
        RunState::Interrupted { left } => ("interrupted", None, left.clone()),
        RunState::InProgress => ("in progress", None, Vec::new()),
    };
    RunStatus {
        run_id: r.run_id.clone(),
        operation: r.operation.clone(),
        outcome,
        version: Some(r.version),
        gates,
        report,
        left,
    }
}

/// The newest run, and the interrupted ones: from the run records (every
/// run that reached gate F), the quarantine reports (runs stopped at A–E
/// have no record), and, for a release made before runs were recorded,
/// the manifest its pointer names.
async fn runs_of(
    store: &kfm_store::Store,
    ds: &DatasetId,
    release: Option<&ReleaseStatus>,
    v: &Verifier,
) -> Result<(Option<RunStatus>, Vec<RunStatus>), Failure> {
    let dsn = ds.as_str();
    let locked = store.runs_locked(dsn)?.unwrap_or(false);
    let runs = kfm_pipeline::runs::runs(store, dsn, locked).await?;
    let quarantined = kfm_pipeline::quarantine::list(store, Some(dsn)).await?;
    let mut all: Vec<RunStatus> = Vec::new();
    for r in &runs {
        let gates = match &r.state {
            RunState::Published if r.operation == "promote" => vec!["A-G pass".into()],
            RunState::Published => rollback_gates(v, release).await.unwrap_or_default(),
            RunState::Quarantined { .. } => quarantined
                .iter()
                .find(|q| q.run_id == r.run_id)
                .map(|q| gate_list(&q.failed))
                .unwrap_or_default(),
            _ => vec!["A-E pass".into(), "F started".into()],
        };
        all.push(run_status(r, gates));
    }
    for q in &quarantined {
        if !runs.iter().any(|r| r.run_id == q.run_id) {
            all.push(RunStatus {
                run_id: q.run_id.clone(),
                operation: q.operation.clone(),
                outcome: "quarantined",
                version: Some(q.version_attempted),
                gates: gate_list(&q.failed),
                report: Some(q.report.clone()),
                left: Vec::new(),
            });
        }
    }
    if let Some(rel) = release.filter(|r| r.verified)
        && !runs.iter().any(|r| r.state == RunState::Published)
        && let Some(run) = legacy_release_run(store, v, rel).await
    {
        all.push(run);
    }
    all.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let interrupted = all
        .iter()
        .filter(|r| r.outcome == "interrupted")
        .map(|r| RunStatus {
            run_id: r.run_id.clone(),
            operation: r.operation.clone(),
            outcome: r.outcome,
            version: r.version,
            gates: r.gates.clone(),
            report: r.report.clone(),
            left: r.left.clone(),
        })
        .collect();
    Ok((all.pop(), interrupted))
}

/// The gates of the rollback receipt the pointer names.
async fn rollback_gates(v: &Verifier, release: Option<&ReleaseStatus>) -> Option<Vec<String>> {
    let r = release.filter(|r| r.verified && r.operation.as_deref() == Some("rollback"))?;
    let (view, key) = v.as_ref().ok()?;
    let s = kfm_pipeline::release::receipt_at(view, r.ledger_index?, key)
        .await
        .ok()?;
    Some(gate_list(&s.predicate.gates))
}

/// A release made before runs were recorded: its run, from the manifest
/// (promotion) or the rollback receipt the pointer names.
async fn legacy_release_run(
    store: &kfm_store::Store,
    v: &Verifier,
    rel: &ReleaseStatus,
) -> Option<RunStatus> {
    let (view, key) = v.as_ref().ok()?;
    if rel.operation.as_deref() == Some("rollback") {
        let s = kfm_pipeline::release::receipt_at(view, rel.ledger_index?, key)
            .await
            .ok()?;
        return Some(RunStatus {
            run_id: s.predicate.run_id,
            operation: "rollback".into(),
            outcome: "rolled back",
            version: None,
            gates: gate_list(&s.predicate.gates),
            report: Some(format!("ledger entry {}", rel.ledger_index?)),
            left: Vec::new(),
        });
    }
    let vid = rel.version_id.as_deref()?;
    let (ds, n) = vid.split_once("@v")?;
    let (mkey, m) = kfm_pipeline::release::manifest_at(store, ds, n.parse().ok()?, key)
        .await
        .ok()??;
    Some(RunStatus {
        run_id: m.run_id,
        operation: "promote".into(),
        outcome: "published",
        version: Some(m.version),
        gates: vec!["A-G pass".into()],
        report: Some(mkey),
        left: Vec::new(),
    })
}

pub async fn collect(ws: &Workspace) -> Result<StatusReport, Failure> {
    let store = ws.store()?;
    let verifier = verifier(ws, &store).await;
    let mut specs: BTreeMap<String, Option<String>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(ws.datasets_dir()) {
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        {
            // Invalid specs are `kfm spec check`'s business; status shows what it can.
            if let Ok((spec, _)) = load_spec(f) {
                specs.insert(spec.id.to_string(), Some(f.display().to_string()));
            }
        }
    }
    for d in store.raw().list_dirs("").await? {
        specs.entry(d).or_insert(None);
    }
    let mut datasets = Vec::new();
    for (id, spec) in specs {
        let Ok(dsid) = id.parse::<DatasetId>() else {
            continue;
        };
        let acqs: Vec<AcquisitionStatus> = acquisitions(&store, &dsid)
            .await?
            .into_iter()
            .map(|e| match e {
                AcquisitionEntry::Recorded(a) => AcquisitionStatus {
                    digest: a.digest.to_string(),
                    complete: true,
                    size: Some(a.size),
                    acquired_at: Some(a.acquired_at.to_rfc3339()),
                    actor: Some(a.actor),
                    source_uri: Some(a.source_uri),
                    note: None,
                },
                AcquisitionEntry::Incomplete { digest, reason } => AcquisitionStatus {
                    digest: format!("sha256:{digest}"),
                    complete: false,
                    size: None,
                    acquired_at: None,
                    actor: None,
                    source_uri: None,
                    note: Some(reason),
                },
            })
            .collect();
        let release = release_status(&store, &verifier, dsid.as_str()).await?;
        let (last_run, interrupted) = runs_of(&store, &dsid, release.as_ref(), &verifier).await?;
        let stage = match (&release, &last_run) {
            (Some(_), _) => "published",
            (None, Some(r)) if r.outcome == "quarantined" => "quarantined",
            _ if acqs.is_empty() => "specified",
            _ => "raw",
        };
        datasets.push(DatasetStatus {
            id,
            spec,
            stage,
            acquisitions: acqs,
            release,
            last_run,
            interrupted,
        });
    }
    Ok(StatusReport {
        workspace: ws.dir.display().to_string(),
        store: store.url().to_owned(),
        datasets,
    })
}

pub fn print_human(r: &StatusReport) {
    println!("workspace {}  store {}", r.workspace, r.store);
    if r.datasets.is_empty() {
        println!(
            "no datasets yet: add a spec under datasets/ and run `kfm ingest datasets/<id>.yaml`"
        );
        return;
    }
    for d in &r.datasets {
        let spec = d.spec.as_deref().unwrap_or("(no spec in datasets/)");
        println!(
            "\n{}  stage: {}  spec: {}",
            d.id,
            d.stage.to_uppercase(),
            spec
        );
        match &d.release {
            Some(r) if r.verified => {
                println!(
                    "  release: {} (verified: manifest {}, ledger index {})",
                    r.version_id.as_deref().unwrap_or("?"),
                    r.manifest_digest.as_deref().unwrap_or("?"),
                    r.ledger_index.unwrap_or(0)
                );
                println!("    checked: {}", r.checked.join("; "));
                println!("    not checked: {}", r.not_checked.join("; "));
            }
            Some(r) => println!(
                "  release: DOES NOT VERIFY (the pointer claims {}): {}",
                r.version_id.as_deref().unwrap_or("?"),
                r.problem.as_deref().unwrap_or("?")
            ),
            None => {}
        }
        if let Some(r) = &d.last_run {
            println!(
                "  last run: {} {} {}{}  [{}]{}",
                r.run_id,
                r.operation,
                r.outcome,
                r.version.map(|v| format!(" (v{v})")).unwrap_or_default(),
                r.gates.join(", "),
                r.report
                    .as_deref()
                    .map(|k| format!("  {k}"))
                    .unwrap_or_default()
            );
        }
        for i in &d.interrupted {
            println!(
                "  INTERRUPTED run {} ({} of v{}): stopped after claiming its version, before its pointer moved; never released{}. The next run of {} records it as aborted.",
                i.run_id,
                i.operation,
                i.version.unwrap_or(0),
                if i.left.is_empty() {
                    String::new()
                } else {
                    format!("; it left {}", i.left.join(", "))
                },
                d.id
            );
        }
        if d.acquisitions.is_empty() {
            println!("  no acquisitions");
        }
        for a in &d.acquisitions {
            if a.complete {
                println!(
                    "  {}  {:>10}  {}  by {}",
                    a.digest,
                    human_size(a.size.unwrap_or(0)),
                    a.acquired_at.as_deref().unwrap_or("?"),
                    a.actor.as_deref().unwrap_or("?")
                );
            } else {
                println!(
                    "  {}  INCOMPLETE: {}",
                    a.digest,
                    a.note.as_deref().unwrap_or("")
                );
            }
        }
    }
}

pub async fn run(ws: Option<&Path>, _args: &StatusArgs, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let report = collect(&ws).await?;
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human => print_human(&report),
    }
    // A release that does not verify is a finding: exit 1.
    let broken = report
        .datasets
        .iter()
        .any(|d| d.release.as_ref().is_some_and(|r| !r.verified));
    Ok(if broken { crate::failure::EXIT_RULE } else { 0 })
}
