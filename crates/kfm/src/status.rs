//! `kfm status`: every dataset the workspace knows, and where it stands.

use std::collections::BTreeMap;
use std::path::Path;

use kfm_core::DatasetId;
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
    /// `quarantined` (last run failed, nothing published) or `published`.
    pub stage: &'static str,
    pub acquisitions: Vec<AcquisitionStatus>,
    /// The release pointer, verified end to end (manifest digest and
    /// signature, ledger entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,
    /// The most recent run (promotion or rollback) and its gates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunStatus>,
}

#[derive(Serialize)]
pub struct ReleaseStatus {
    pub version_id: Option<String>,
    pub verified: bool,
    /// Why the pointer does not verify (hand-edited, missing manifest, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_index: Option<u64>,
    /// What moved the pointer last: `promote` or `rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

#[derive(Serialize)]
pub struct RunStatus {
    pub run_id: String,
    pub outcome: &'static str,
    /// `A pass`, `B fail`, …
    pub gates: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
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
    Ok(Some(match result {
        Ok(Some(r)) => ReleaseStatus {
            version_id: Some(r.pointer.version_id),
            verified: true,
            problem: None,
            manifest_digest: Some(r.pointer.manifest_digest),
            ledger_index: Some(r.pointer.ledger_index),
            operation: Some(r.pointer.operation),
        },
        Ok(None) => return Ok(None),
        Err(problem) => ReleaseStatus {
            version_id: claimed.as_ref().map(|p| p.version_id.clone()),
            verified: false,
            problem: Some(problem),
            manifest_digest: claimed.as_ref().map(|p| p.manifest_digest.clone()),
            ledger_index: claimed.as_ref().map(|p| p.ledger_index),
            operation: claimed.map(|p| p.operation),
        },
    }))
}

async fn last_run(store: &kfm_store::Store, ds: &DatasetId) -> Result<Option<RunStatus>, Failure> {
    let quarantined = kfm_pipeline::quarantine::list(store, Some(ds.as_str())).await?;
    let mut best: Option<RunStatus> = quarantined.into_iter().last().map(|q| RunStatus {
        run_id: q.run_id,
        outcome: "quarantined",
        gates: q
            .failed
            .iter()
            .map(|g| format!("{:?} {}", g.gate, g.status.as_str()))
            .collect(),
        report: Some(q.report),
    });
    // The newest version's manifest names the run that published it.
    let versions = kfm_pipeline::release::existing_versions(store, ds).await?;
    for v in versions.iter().rev() {
        let key = kfm_pipeline::records::manifest_key(ds.as_str(), *v);
        let rel = key.strip_prefix("catalog/").unwrap_or(&key);
        let Some(bytes) = store.catalog().get_opt(rel).await? else {
            continue;
        };
        // Read without verifying: `release` above is the verified view.
        let run_id = kfm_core::Envelope::parse(&bytes)
            .ok()
            .and_then(|e| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(e.payload)
                    .ok()
            })
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|m| m["run_id"].as_str().map(str::to_owned));
        if let Some(run_id) = run_id
            && best.as_ref().is_none_or(|b| run_id > b.run_id)
        {
            best = Some(RunStatus {
                run_id,
                outcome: "published",
                gates: vec!["A-G pass".into()],
                report: Some(key),
            });
        }
        break;
    }
    Ok(best)
}

/// A verified pointer last moved by a rollback: that run, from its receipt
/// in the ledger.
async fn rollback_run(v: &Verifier, release: Option<&ReleaseStatus>) -> Option<RunStatus> {
    let r = release.filter(|r| r.verified && r.operation.as_deref() == Some("rollback"))?;
    let (view, key) = v.as_ref().ok()?;
    let entry = view.entry(r.ledger_index?).await.ok()?;
    let env = kfm_core::Envelope::parse(&entry).ok()?;
    let s = kfm_pipeline::records::statement_of(&env, key).ok()?;
    Some(RunStatus {
        run_id: s.predicate.run_id,
        outcome: "rolled back",
        gates: s
            .predicate
            .gates
            .iter()
            .map(|g| format!("{:?} {}", g.gate, g.status.as_str()))
            .collect(),
        report: Some(format!("ledger entry {}", r.ledger_index?)),
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
        let mut last_run = last_run(&store, &dsid).await?;
        if let Some(r) = rollback_run(&verifier, release.as_ref()).await
            && last_run.as_ref().is_none_or(|l| r.run_id > l.run_id)
        {
            last_run = Some(r);
        }
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
            Some(r) if r.verified => println!(
                "  release: {} (verified: manifest {}, ledger index {})",
                r.version_id.as_deref().unwrap_or("?"),
                r.manifest_digest.as_deref().unwrap_or("?"),
                r.ledger_index.unwrap_or(0)
            ),
            Some(r) => println!(
                "  release: POINTER DOES NOT VERIFY (claims {}): {}",
                r.version_id.as_deref().unwrap_or("?"),
                r.problem.as_deref().unwrap_or("?")
            ),
            None => {}
        }
        if let Some(r) = &d.last_run {
            println!(
                "  last run: {} {}  [{}]{}",
                r.run_id,
                r.outcome,
                r.gates.join(", "),
                r.report
                    .as_deref()
                    .map(|k| format!("  {k}"))
                    .unwrap_or_default()
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
    // A release pointer that does not verify is a finding: exit 1.
    let broken = report
        .datasets
        .iter()
        .any(|d| d.release.as_ref().is_some_and(|r| !r.verified));
    Ok(if broken { crate::failure::EXIT_RULE } else { 0 })
}
