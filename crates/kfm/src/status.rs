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
    /// Furthest zone reached on the truth path: `specified` (spec only) or `raw`.
    pub stage: &'static str,
    pub acquisitions: Vec<AcquisitionStatus>,
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

pub async fn collect(ws: &Workspace) -> Result<StatusReport, Failure> {
    let store = ws.store()?;
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
        let stage = if acqs.is_empty() { "specified" } else { "raw" };
        datasets.push(DatasetStatus {
            id,
            spec,
            stage,
            acquisitions: acqs,
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
    Ok(0)
}
