//! `kfm promote`, `kfm rollback`, `kfm quarantine`: wiring the workspace's
//! store, key, ledger and pinned policy into the pipeline, and reporting.

use std::io::IsTerminal;
use std::path::Path;

use chrono::Utc;
use kfm_core::{DatasetId, Digest, Signer};
use kfm_ledger::{Ledger, LedgerError};
use kfm_pipeline::gates::table;
use kfm_pipeline::{Gate, PolicyInfo, PromoteError, PromoteRequest, RollbackRequest};

use crate::cli::{CatalogCommand, Format, PromoteArgs, QuarantineCommand, RollbackArgs};
use crate::failure::{EXIT_INPUT, EXIT_RULE, Failure};
use crate::ingest::default_actor;
use crate::ledger::signer;
use crate::output::print_json;
use crate::workspace::Workspace;

impl From<PromoteError> for Failure {
    fn from(e: PromoteError) -> Self {
        match e {
            PromoteError::Spec(s) => s.into(),
            PromoteError::Store(s) => s.into(),
            PromoteError::NoAcquisition(ref ds) => {
                let hint = format!("ingest it first: kfm ingest datasets/{ds}.yaml");
                Failure::input(e.to_string()).hint(hint)
            }
            PromoteError::UnknownVersion { ref dataset, .. } => {
                let hint = format!("`kfm status` lists the versions of {dataset}");
                Failure::input(e.to_string()).hint(hint)
            }
            PromoteError::NeverReleased { ref dataset, .. } => {
                let hint = format!("`kfm status` shows what each run of {dataset} became");
                Failure::input(e.to_string()).hint(hint)
            }
            PromoteError::Quarantine(q) => q.into(),
            PromoteError::Ledger(_) => Failure::input(e.to_string()).hint(
                "the run is shown as interrupted by `kfm status`; run it again once `kfm ledger verify` passes",
            ),
            other => Failure::input(other.to_string()),
        }
    }
}

impl From<kfm_pipeline::quarantine::ReportError> for Failure {
    fn from(e: kfm_pipeline::quarantine::ReportError) -> Self {
        match e {
            kfm_pipeline::quarantine::ReportError::Store(s) => s.into(),
            other => Failure {
                code: EXIT_RULE,
                message: other.to_string(),
                hint: None,
            },
        }
    }
}

/// The workspace's pinned policy, as gates B and G need it. A bundle that
/// is missing, broken or not the pinned one is the reason, not an exit.
fn policy_info(ws: &Workspace) -> Result<PolicyInfo, String> {
    let (bundle, _) = crate::policy::load_pinned(ws).map_err(|f| f.message)?;
    Ok(PolicyInfo {
        digest: *bundle.digest(),
        revision: bundle.revision().to_owned(),
        licenses: bundle.data()["kfm"]["licenses"].clone(),
    })
}

/// Everything a run borrows from the workspace.
pub(crate) struct Deps {
    datasets_dir: std::path::PathBuf,
    store: kfm_store::Store,
    signer: Result<Signer, String>,
    ledger: Result<Ledger, String>,
    policy: Result<PolicyInfo, String>,
    work_keep: chrono::Duration,
}

impl Deps {
    /// Flushes and releases the ledger.
    pub(crate) async fn close(self) {
        if let Ok(l) = self.ledger {
            l.close().await;
        }
    }
}

pub(crate) async fn deps(ws: &Workspace) -> Result<Deps, Failure> {
    let store = ws.store()?;
    let (signer, ledger) = match signer(ws) {
        Err(f) => (Err(f.message.clone()), Err(f.message)),
        Ok(ls) => {
            let dsse = Signer::new(ls.signing_key());
            let opts = ws.ledger_options(&store).await?;
            let ledger = match ws.open_ledger(&store, ls, opts, "urn:kfm:pipeline").await {
                Ok(l) => Ok(l),
                // A ledger that shrank, vanished or is damaged stops every
                // run before its first gate: no run may build on it, and
                // its failure is not the dataset's.
                Err(e @ (LedgerError::Refused(_) | LedgerError::Corrupt { .. })) => {
                    return Err(Failure::from(e));
                }
                // Not the dataset's failure either: cannot evaluate, and
                // nothing is written (no quarantine report).
                Err(e) => {
                    return Err(Failure::input(format!(
                        "cannot evaluate: the ledger cannot be opened or reached ({e}); nothing was written"
                    ))
                    .hint("`kfm ledger verify` says whether the ledger is sound; a running `kfm serve` shares it through run/ledger.sock"));
                }
            };
            (Ok(dsse), ledger)
        }
    };
    Ok(Deps {
        datasets_dir: ws.datasets_dir(),
        store,
        signer,
        ledger,
        policy: policy_info(ws),
        work_keep: chrono::Duration::from_std(ws.config.work_keep)
            .unwrap_or(chrono::Duration::days(7)),
    })
}

fn progress(fmt: Format) -> impl Fn(Gate) + Sync {
    let show = fmt == Format::Human && std::io::stderr().is_terminal();
    move |g: Gate| {
        if show {
            eprint!("\r  gate {g:?}: {}…{:20}\r", g.title(), "");
        }
    }
}

pub async fn promote(ws: Option<&Path>, a: &PromoteArgs, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let dataset: DatasetId = a
        .dataset
        .parse()
        .map_err(|e: kfm_core::DatasetIdError| Failure::input(e.to_string()))?;
    let acquisition = match &a.acquisition {
        None => None,
        Some(s) => {
            let s = if s.starts_with("sha256:") {
                s.clone()
            } else {
                format!("sha256:{s}")
            };
            Some(s.parse::<Digest>().map_err(|e| {
                Failure::input(format!("--acquisition {s}: {e}"))
                    .hint("give the digest `kfm status` lists, sha256:<64 hex>")
            })?)
        }
    };
    let d = deps(&ws).await?;
    let out = run_promote(
        &d,
        &dataset,
        acquisition,
        default_actor(a.actor.as_deref()),
        fmt,
    )
    .await;
    d.close().await;
    let out = out?;
    match fmt {
        Format::Json => print_json(&out)?,
        Format::Human => print_outcome(&out),
    }
    Ok(if out.published { 0 } else { EXIT_RULE })
}

/// One promotion with the workspace's dependencies.
pub(crate) async fn run_promote(
    d: &Deps,
    dataset: &DatasetId,
    acquisition: Option<Digest>,
    actor: String,
    fmt: Format,
) -> Result<kfm_pipeline::PromoteOutcome, Failure> {
    let spec_path = d.datasets_dir.join(format!("{dataset}.yaml"));
    let on_gate = progress(fmt);
    Ok(kfm_pipeline::promote(PromoteRequest {
        store: &d.store,
        spec_path: &spec_path,
        dataset,
        acquisition,
        actor,
        policy: d.policy.clone(),
        signer: d.signer.as_ref().map_err(Clone::clone),
        ledger: d.ledger.as_ref().map_err(Clone::clone),
        now: Utc::now(),
        work_keep: d.work_keep,
        on_gate: &on_gate,
    })
    .await?)
}

/// The gate table and the result, for a terminal.
pub(crate) fn print_outcome(out: &kfm_pipeline::PromoteOutcome) {
    print_aborted(&out.aborted);
    println!(
        "{} run {}  acquisition {}",
        out.version_id, out.run_id, out.acquisition
    );
    print!("{}", table(&out.gates));
    if out.published {
        println!("PUBLISHED {}", out.version_id);
        for art in &out.artifacts {
            println!("  {}  {}", art.digest, art.path);
        }
    } else {
        println!(
            "QUARANTINED: report {}",
            out.quarantine_report.as_deref().unwrap_or("?")
        );
    }
    if let Some(r) = &out.receipt {
        println!("receipt: ledger index {} ({})", r.ledger_index, r.digest);
    }
}

/// Earlier runs that a run found interrupted and recorded as aborted.
fn print_aborted(aborted: &[kfm_pipeline::runs::AbortedRecord]) {
    for a in aborted {
        println!(
            "recorded run {} ({} of v{}) as ABORTED: it stopped before its pointer moved; ledger index {}{}",
            a.run_id,
            a.operation,
            a.version,
            a.receipt.ledger_index,
            if a.left.is_empty() {
                String::new()
            } else {
                format!("; it left {} object(s) never pointed to", a.left.len())
            }
        );
    }
}

pub async fn rollback(ws: Option<&Path>, a: &RollbackArgs, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let dataset: DatasetId = a
        .dataset
        .parse()
        .map_err(|e: kfm_core::DatasetIdError| Failure::input(e.to_string()))?;
    let to =
        a.to.strip_prefix('v')
            .unwrap_or(&a.to)
            .parse::<u64>()
            .map_err(|_| Failure::input(format!("--to {}: expected a version such as v3", a.to)))?;
    let d = deps(&ws).await?;
    let on_gate = progress(fmt);
    let out = kfm_pipeline::rollback(RollbackRequest {
        store: &d.store,
        dataset: &dataset,
        to,
        actor: default_actor(a.actor.as_deref()),
        policy: d.policy.clone(),
        signer: d.signer.as_ref().map_err(Clone::clone),
        ledger: d.ledger.as_ref().map_err(Clone::clone),
        now: Utc::now(),
        work_keep: d.work_keep,
        on_gate: &on_gate,
    })
    .await;
    d.close().await;
    let out = out?;
    match fmt {
        Format::Json => print_json(&out)?,
        Format::Human => {
            print_aborted(&out.aborted);
            println!(
                "rollback of {} to {}  run {}",
                dataset, out.version_id, out.run_id
            );
            print!("{}", table(&out.gates));
            if out.rolled_back {
                println!(
                    "ROLLED BACK: published/{dataset}.json names {}",
                    out.version_id
                );
            } else {
                println!(
                    "REFUSED (quarantined): report {}",
                    out.quarantine_report.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(if out.rolled_back { 0 } else { EXIT_RULE })
}

pub async fn quarantine(
    ws: Option<&Path>,
    cmd: &QuarantineCommand,
    fmt: Format,
) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let store = ws.store()?;
    match cmd {
        QuarantineCommand::List { dataset } => {
            let runs = kfm_pipeline::quarantine::list(&store, dataset.as_deref()).await?;
            match fmt {
                Format::Json => print_json(&runs)?,
                Format::Human => {
                    if runs.is_empty() {
                        println!("no quarantined runs");
                    }
                    for r in &runs {
                        let failed: Vec<String> = r
                            .failed
                            .iter()
                            .map(|g| format!("{:?} {}", g.gate, g.status.as_str()))
                            .collect();
                        println!(
                            "{}  {}  {}  {}",
                            r.run_id,
                            r.dataset,
                            r.operation,
                            failed.join(", ")
                        );
                    }
                }
            }
            Ok(0)
        }
        QuarantineCommand::Show { run_id } => {
            let Some((key, report)) = kfm_pipeline::quarantine::show(&store, run_id).await? else {
                return Err(Failure {
                    code: EXIT_INPUT,
                    message: format!("no quarantined run {run_id}"),
                    hint: Some("`kfm quarantine list` shows the run ids".into()),
                });
            };
            match fmt {
                Format::Json => print_json(&report)?,
                Format::Human => {
                    println!(
                        "{key}\nrun {}  dataset {}  operation {}  version attempted v{}",
                        report.run_id, report.dataset, report.operation, report.version_attempted
                    );
                    print!("{}", table(&report.gates));
                    if let Some(r) = &report.receipt {
                        println!("receipt: ledger index {}", r.ledger_index);
                    }
                    if !report.left_behind.is_empty() {
                        println!(
                            "left behind (never pointed to): {}",
                            report.left_behind.join(", ")
                        );
                    }
                }
            }
            Ok(0)
        }
    }
}

fn parse_version(s: &str) -> Result<u64, Failure> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse::<u64>()
        .map_err(|_| Failure::input(format!("{s}: expected a version such as v3")))
}

pub async fn catalog(ws: Option<&Path>, cmd: &CatalogCommand, fmt: Format) -> Result<u8, Failure> {
    let CatalogCommand::Validate { dataset, version } = cmd;
    let ws = Workspace::find(ws)?;
    let store = ws.store()?;
    let id: DatasetId = dataset
        .parse()
        .map_err(|e: kfm_core::DatasetIdError| Failure::input(e.to_string()))?;
    let key = crate::ledger::dsse_key(&crate::ledger::verifier_key(&ws, None)?)?;
    let v = match version {
        Some(v) => parse_version(v)?,
        None => {
            let ptr = store
                .published()
                .read(&kfm_pipeline::records::pointer_key(dataset))
                .await?
                .ok_or_else(|| {
                    Failure::input(format!("{dataset} has nothing published"))
                        .hint("give --version vN, or promote it first")
                })?;
            serde_json::from_slice::<kfm_pipeline::records::ReleasePointer>(&ptr.bytes)
                .map_err(|e| {
                    Failure::input(format!(
                        "published/{dataset}.json is not a release pointer: {e}"
                    ))
                    .hint("`kfm status` says more; `kfm rollback` restores a verified pointer")
                })?
                .version
        }
    };
    let out = kfm_pipeline::release::check_version(&store, &id, v, &key).await?;
    match fmt {
        Format::Json => print_json(&out)?,
        Format::Human => {
            if out.problems.is_empty() {
                println!(
                    "{}: valid ({} artifacts and documents re-verified; DCAT, STAC and PROV agree; STAC 1.1.0 schema ok)",
                    out.version_id, out.artifacts_checked
                );
            } else {
                println!("{}: {} problems", out.version_id, out.problems.len());
                for p in &out.problems {
                    println!("  - {p}");
                }
            }
        }
    }
    Ok(if out.problems.is_empty() {
        0
    } else {
        EXIT_RULE
    })
}
