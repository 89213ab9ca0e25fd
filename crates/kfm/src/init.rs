//! `kfm init`: create a workspace without ever overwriting anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use kfm_core::{Config, Environment, EnvironmentPins};
use serde::Serialize;

use crate::cli::{Format, InitArgs};
use crate::failure::Failure;
use crate::output::print_json;
use crate::workspace::{CONFIG_FILE, Workspace};

#[derive(Serialize)]
pub struct InitReport {
    pub workspace: PathBuf,
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

/// Creates whatever of the workspace is missing in `dir`; never modifies an
/// existing file. An existing kfm.toml must be valid, or nothing is done.
pub fn create(dir: &Path) -> Result<InitReport, Failure> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| Failure::input(format!("cannot create {}: {e}", p.display())))
    };
    mkdir(dir)?;
    if dir.join(CONFIG_FILE).exists() {
        // Validate before touching anything else.
        Workspace::open(dir)?;
    }
    let mut report = InitReport {
        workspace: dir.to_path_buf(),
        created: Vec::new(),
        existing: Vec::new(),
    };
    let files: [(&str, String); 3] = [
        (CONFIG_FILE, Config::default_toml().to_owned()),
        (
            "environments/dev.toml",
            EnvironmentPins::default_toml(Environment::Dev),
        ),
        (
            ".gitignore",
            "# The store holds data; keep it out of git.\n/store/\n/keys/\n".to_owned(),
        ),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(content.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
                report.created.push(rel.to_owned());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                report.existing.push(rel.to_owned())
            }
            Err(e) => {
                return Err(Failure::input(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
    }
    for rel in ["datasets", "store"] {
        let path = dir.join(rel);
        if path.is_dir() {
            report.existing.push(format!("{rel}/"));
        } else {
            mkdir(&path)?;
            report.created.push(format!("{rel}/"));
        }
    }
    Ok(report)
}

pub fn run(args: &InitArgs, fmt: Format) -> Result<u8, Failure> {
    let report = create(&args.dir)?;
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human if report.created.is_empty() => {
            println!(
                "workspace already initialised at {}; nothing changed",
                args.dir.display()
            );
        }
        Format::Human => {
            println!("initialised KFM workspace at {}", args.dir.display());
            for c in &report.created {
                println!("  created  {c}");
            }
            for c in &report.existing {
                println!("  kept     {c} (already there)");
            }
            println!(
                "next: put dataset specs in datasets/, then `kfm spec check` and `kfm ingest datasets/<id>.yaml`"
            );
        }
    }
    Ok(0)
}
