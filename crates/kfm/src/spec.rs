//! `kfm spec check`: validate dataset specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kfm_pipeline::{IngestError, load_spec};
use serde::Serialize;

use crate::cli::{Format, SpecCheckArgs};
use crate::failure::{EXIT_RULE, Failure};
use crate::output::print_json;
use crate::workspace::Workspace;

#[derive(Serialize)]
struct Checked {
    file: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Spec files under `paths` (files as given, directories: their *.yaml/*.yml).
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p)
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", p.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Failure::input(format!("{} does not exist", p.display())));
        }
    }
    Ok(out)
}

pub fn check(ws: Option<&Path>, args: &SpecCheckArgs, fmt: Format) -> Result<u8, Failure> {
    let paths = if args.paths.is_empty() {
        vec![Workspace::find(ws)?.datasets_dir()]
    } else {
        args.paths.clone()
    };
    let files = collect(&paths)?;
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Failure::input(format!(
            "no dataset specs (*.yaml) found in {}",
            shown.join(", ")
        )));
    }
    let mut results = Vec::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let file = f.display().to_string();
        match load_spec(f) {
            Ok((spec, _)) => {
                let id = spec.id.to_string();
                if let Some(first) = ids.insert(id.clone(), file.clone()) {
                    results.push(Checked {
                        file: file.clone(),
                        ok: false,
                        id: Some(id.clone()),
                        error: Some(format!("{file}: dataset id {id} is already declared by {first}; ids must be unique")),
                    });
                } else {
                    results.push(Checked {
                        file,
                        ok: true,
                        id: Some(id),
                        error: None,
                    });
                }
            }
            Err(IngestError::SpecRead { path, source }) => {
                return Err(Failure::input(format!("cannot read {path}: {source}")));
            }
            Err(e) => results.push(Checked {
                file,
                ok: false,
                id: None,
                error: Some(e.to_string()),
            }),
        }
    }
    let bad = results.iter().filter(|r| !r.ok).count();
    match fmt {
        Format::Json => print_json(&results)?,
        Format::Human => {
            for r in &results {
                match (&r.error, &r.id) {
                    (None, Some(id)) => println!("ok     {} ({id})", r.file),
                    (Some(e), _) => println!("error  {e}"),
                    (None, None) => {}
                }
            }
            println!("{} spec(s) checked, {} invalid", results.len(), bad);
        }
    }
    Ok(if bad > 0 { EXIT_RULE } else { 0 })
}
