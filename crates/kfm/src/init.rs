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
    // The default policy bundle, pinned for dev: parity from the first run.
    let policy: std::collections::BTreeMap<String, Vec<u8>> = crate::default_policy::FILES
        .iter()
        .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
        .collect();
    let policy_digest = kfm_policy::bundle::digest_of(&policy);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            CONFIG_FILE.to_owned(),
            Config::default_toml().as_bytes().to_vec(),
        ),
        (
            "environments/dev.toml".to_owned(),
            EnvironmentPins::default_toml(Environment::Dev, Some(&policy_digest)).into_bytes(),
        ),
        (
            ".gitignore".to_owned(),
            b"# The store holds data; keep it out of git (and keys, the ledger witness,\n# and run/, where the ledger's writer listens).\n/store/\n/keys/\n/ledger-witness/\n/run/\n".to_vec(),
        ),
    ];
    files.extend(policy.into_iter().map(|(p, b)| (format!("policy/{p}"), b)));
    for (rel, content) in files {
        let rel = rel.as_str();
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
                f.write_all(&content)
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
    create_dev_key(dir, &mut report)?;
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

/// The development ledger key: `keys/ledger.key` (private, mode 0600) and
/// `keys/ledger.pub` (its verifier key). kfm.toml records only the path.
fn create_dev_key(dir: &Path, report: &mut InitReport) -> Result<(), Failure> {
    let key = dir.join(DEV_KEY);
    let public = dir.join(DEV_PUB);
    if key.exists() {
        report.existing.push(DEV_KEY.to_owned());
        return Ok(());
    }
    if public.exists() {
        return Err(Failure::input(format!(
            "{} exists without {}",
            public.display(),
            key.display()
        ))
        .hint("restore the private key, or remove the stale public key and run `kfm init` again"));
    }
    let ws = Workspace::open(dir)?;
    let (skey, vkey) = kfm_ledger::generate_key(&ws.config.ledger_origin).map_err(|e| {
        Failure::input(format!("cannot generate a ledger key: {e}"))
            .hint("set ledger.origin to a name without spaces or '+'")
    })?;
    write_new(&key, format!("{skey}\n").as_bytes(), 0o600)?;
    write_new(&public, format!("{vkey}\n").as_bytes(), 0o644)?;
    report.created.push(DEV_KEY.to_owned());
    report.created.push(DEV_PUB.to_owned());
    Ok(())
}

const DEV_KEY: &str = "keys/ledger.key";
const DEV_PUB: &str = "keys/ledger.pub";

/// Creates a file that must not exist yet, with `mode` from the start (a
/// private key is never readable by others, not even for a moment).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::input(format!("cannot create {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(fail)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(fail)
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
