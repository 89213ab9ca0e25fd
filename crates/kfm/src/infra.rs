//! `kfm infra …`: wiring the gate's library to files, git, the ledger and
//! exit codes.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use kfm_core::{Signer, to_canonical_json};
use kfm_infra::receipt::{
    self, Actor, ApplyReceipt, ENVIRONMENTS, Mode, PlanReceipt, ReceiptError, Tool,
};
use kfm_infra::{Options, render};
use serde::Serialize;

use crate::cli::{ApplyArgs, Format, InfraCheckArgs, InfraCommand, PlanArgs, ReceiptCommand};
use crate::failure::{EXIT_RULE, Failure};
use crate::ledger::signer;
use crate::output::print_json;
use crate::workspace::Workspace;

/// The payload type of signed apply receipts in the ledger.
pub const APPLY_PAYLOAD_TYPE: &str = "application/vnd.kfm.infra.apply-receipt+json";

/// The default waiver file, relative to where the gate runs.
const DEFAULT_WAIVERS: &str = "infra/waivers.yaml";

impl From<ReceiptError> for Failure {
    fn from(e: ReceiptError) -> Self {
        Failure::input(e.to_string())
    }
}

fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

pub async fn run(ws: Option<&Path>, cmd: &InfraCommand, fmt: Format) -> Result<u8, Failure> {
    match cmd {
        InfraCommand::Check(a) => check(a, fmt),
        InfraCommand::Mode { repo } => mode(repo, fmt),
        InfraCommand::Render { path } => render_kustomization(path, fmt),
        InfraCommand::Receipt {
            command: ReceiptCommand::Plan(a),
        } => plan(a, fmt),
        InfraCommand::Receipt {
            command: ReceiptCommand::Apply(a),
        } => apply(ws, a, fmt).await,
    }
}

fn load_rules(p: Option<&Path>) -> Result<Vec<kfm_infra::secrets::SecretRule>, Failure> {
    match p {
        None => Ok(Vec::new()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", p.display())))?;
            kfm_infra::secrets::gitleaks_rules(&text, &p.display().to_string())
                .map_err(|e| Failure::input(e.to_string()))
        }
    }
}

fn check(a: &InfraCheckArgs, fmt: Format) -> Result<u8, Failure> {
    // Every --output is checked before anything is read or written.
    let mut outputs = Vec::new();
    for o in &a.outputs {
        let (f, path) = o.split_once('=').ok_or_else(|| {
            Failure::input(format!("--output {o}: expected FORMAT=PATH"))
                .hint("for example --output sarif=infra.sarif")
        })?;
        let f: kfm_infra::Format = f
            .parse()
            .map_err(|e: String| Failure::input(format!("--output {o}: {e}")))?;
        outputs.push((f, PathBuf::from(path)));
    }
    let extra_rules = load_rules(a.rules.as_deref())?;
    let waivers = a.waivers.clone().or_else(|| {
        let d = PathBuf::from(DEFAULT_WAIVERS);
        d.is_file().then_some(d)
    });
    let report = kfm_infra::check(
        &a.paths,
        Options {
            extra_rules,
            waivers,
            today: today(),
        },
    )
    .map_err(|e| Failure::input(e.to_string()))?;
    for (f, path) in &outputs {
        std::fs::write(path, render(&report, *f))
            .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
    }
    let stdout = match fmt {
        Format::Human => kfm_infra::Format::Human,
        Format::Json => kfm_infra::Format::Json,
    };
    print!("{}", render(&report, stdout));
    Ok(if report.findings.is_empty() {
        0
    } else {
        EXIT_RULE
    })
}

fn render_kustomization(path: &Path, fmt: Format) -> Result<u8, Failure> {
    let shown = path.to_string_lossy().replace('\\', "/");
    let file = if path.is_dir() {
        kfm_infra::render::kustomization_in(&shown).ok_or_else(|| {
            Failure::input(format!("{shown}: no kustomization.yaml in this directory"))
        })?
    } else {
        shown
    };
    let objects = kfm_infra::render::render(&file)
        .map_err(|e| Failure::input(e.to_string()))?
        .ok_or_else(|| {
            Failure::input(format!(
                "{file}: not a Kustomize Kustomization (kustomize.config.k8s.io)"
            ))
        })?;
    let digest =
        kfm_infra::render::digest(&file, &objects).map_err(|e| Failure::input(e.to_string()))?;
    match fmt {
        Format::Json => print_json(&serde_json::json!({
            "kustomization": digest.kustomization,
            "digest": digest.digest,
            "objects": objects.iter().map(|o| &o.doc.value).collect::<Vec<_>>(),
        }))?,
        Format::Human => {
            println!(
                "# {} renders {} objects, {}",
                file, digest.objects, digest.digest
            );
            print!("{}", kfm_infra::render::to_yaml(&objects));
        }
    }
    Ok(0)
}

fn mode(repo: &Path, fmt: Format) -> Result<u8, Failure> {
    let m = receipt::change_control(repo, today());
    match fmt {
        Format::Json => print_json(&m)?,
        Format::Human => match &m {
            Mode::Delivery {
                approver,
                change,
                expires,
            } => println!(
                "delivery mode: approved by {approver}{}{}",
                change
                    .as_ref()
                    .map(|c| format!(", change {c}"))
                    .unwrap_or_default(),
                expires.map(|e| format!(", until {e}")).unwrap_or_default()
            ),
            Mode::Analysis { reason } => {
                println!("analysis mode (read-only): {reason}")
            }
        },
    }
    Ok(if m.is_delivery() { 0 } else { EXIT_RULE })
}

fn plan(a: &PlanArgs, fmt: Format) -> Result<u8, Failure> {
    let base = receipt::commit(&a.repo, &a.base)?;
    let head = receipt::commit(&a.repo, &a.head)?;
    let changed = receipt::changed_files(&a.repo, &base, &head)?;
    // The gate judges the head commit's tree, exported to a scratch
    // directory, not whatever the working tree holds.
    let scratch = tempfile::tempdir()
        .map_err(|e| Failure::input(format!("cannot create a scratch directory: {e}")))?;
    receipt::export_tree(&a.repo, &head, scratch.path())?;
    let wanted: Vec<PathBuf> = if a.paths.is_empty() {
        vec![PathBuf::from("infra"), PathBuf::from(".github")]
    } else {
        a.paths.clone()
    };
    let mut checked = Vec::new();
    let mut paths = Vec::new();
    for p in &wanted {
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Failure::input(format!(
                "{}: give paths inside the repository, relative to its root",
                p.display()
            )));
        }
        if scratch.path().join(p).exists() {
            checked.push(p.display().to_string());
            paths.push(p.clone());
        }
    }
    let waivers = Path::new(DEFAULT_WAIVERS);
    // Findings name paths as they are in the repository.
    let prev = std::env::current_dir().map_err(|e| Failure::input(e.to_string()))?;
    std::env::set_current_dir(scratch.path())
        .map_err(|e| Failure::input(format!("cannot enter the scratch tree: {e}")))?;
    let report = kfm_infra::check(
        &paths,
        Options {
            extra_rules: Vec::new(),
            waivers: waivers.is_file().then(|| waivers.to_path_buf()),
            today: today(),
        },
    );
    std::env::set_current_dir(&prev).map_err(|e| Failure::input(e.to_string()))?;
    let report = report.map_err(|e| Failure::input(format!("at {head}: {e}")))?;
    let receipt = PlanReceipt {
        kind: "kfm.infra.PlanReceipt",
        repo: a
            .repo
            .canonicalize()
            .unwrap_or(a.repo.clone())
            .display()
            .to_string(),
        base,
        head,
        changed,
        checked,
        rendered: report.rendered.clone(),
        findings: report.findings.clone(),
        waived: report.waived.len(),
        tooling: receipt::base_tools(&a.repo),
        mode: receipt::change_control(&a.repo, today()),
        created: Utc::now(),
    };
    let json = serde_json::to_string_pretty(&receipt).map_err(|e| Failure::input(e.to_string()))?;
    if let Some(out) = &a.out {
        std::fs::write(out, format!("{json}\n"))
            .map_err(|e| Failure::input(format!("cannot write {}: {e}", out.display())))?;
    }
    match fmt {
        Format::Json => println!("{json}"),
        Format::Human => {
            println!("plan {}..{}", &receipt.base[..12], &receipt.head[..12]);
            for c in &receipt.changed {
                println!("  {}  {}", c.digest, c.path);
            }
            for r in &receipt.rendered {
                println!(
                    "  rendered {}  {} ({} objects)",
                    r.digest, r.kustomization, r.objects
                );
            }
            println!(
                "gate on {}: {} findings, {} waived",
                if receipt.checked.is_empty() {
                    "nothing (no infra/ or .github/ at head)".to_owned()
                } else {
                    receipt.checked.join(", ")
                },
                receipt.findings.len(),
                receipt.waived
            );
            for f in &receipt.findings {
                println!("  {}:{}  {}  {}", f.file, f.line, f.rule, f.message);
            }
            match &receipt.mode {
                Mode::Delivery { approver, .. } => {
                    println!("mode: delivery (approved by {approver})")
                }
                Mode::Analysis { reason } => println!("mode: analysis ({reason})"),
            }
        }
    }
    Ok(if receipt.findings.is_empty() {
        0
    } else {
        EXIT_RULE
    })
}

fn parse_time(s: Option<&str>, what: &str) -> Result<DateTime<Utc>, Failure> {
    match s {
        None => Ok(Utc::now()),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Failure::input(format!("--{what} {s:?}: {e}"))
                    .hint("use RFC 3339, for example 2026-11-22T17:01:02Z")
            }),
    }
}

#[derive(Serialize)]
struct ApplyOut<'a> {
    recorded: bool,
    mode: &'a Mode,
    receipt: &'a ApplyReceipt,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf_hash: Option<String>,
}

async fn apply(ws: Option<&Path>, a: &ApplyArgs, fmt: Format) -> Result<u8, Failure> {
    if !ENVIRONMENTS.contains(&a.env.as_str()) {
        return Err(Failure::input(format!(
            "--env {}: use dev, stage or prod",
            a.env
        )));
    }
    let started = parse_time(a.started.as_deref(), "started")?;
    let finished = parse_time(a.finished.as_deref(), "finished")?;
    if finished < started {
        return Err(Failure::input("--finished is before --started"));
    }
    let mut tooling = receipt::base_tools(&a.repo);
    for t in &a.tools {
        let (name, version) = t
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| Failure::input(format!("--tool {t}: expected NAME=VERSION")))?;
        tooling.push(Tool {
            name: name.into(),
            version: version.into(),
        });
    }
    let actor = a
        .actor
        .clone()
        .or_else(|| {
            std::env::var("GITHUB_ACTOR")
                .ok()
                .map(|u| format!("github:{u}"))
        })
        .unwrap_or_else(|| {
            format!(
                "user:{}",
                whoami::username().unwrap_or_else(|_| "unknown".into())
            )
        });
    let mode = receipt::change_control(&a.repo, today());
    let (approved_by, change) = match &mode {
        Mode::Delivery {
            approver, change, ..
        } => (approver.clone(), change.clone()),
        Mode::Analysis { .. } => (String::new(), None),
    };
    let r = ApplyReceipt {
        kind: "kfm.infra.ApplyReceipt".into(),
        env: a.env.clone(),
        repo: receipt::repo_ref(&a.repo)?,
        actor: Actor {
            principal: actor,
            method: a.method.clone(),
        },
        tooling,
        inputs: receipt::digest_files(&a.inputs)?,
        outputs: receipt::digest_files(&a.outputs)?,
        started,
        finished,
        approved_by,
        change,
    };
    if let Mode::Analysis { reason } = &mode {
        // Read-only: show what would be recorded, record nothing.
        match fmt {
            Format::Json => print_json(&ApplyOut {
                recorded: false,
                mode: &mode,
                receipt: &r,
                ledger_index: None,
                leaf_hash: None,
            })?,
            Format::Human => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| Failure::input(e.to_string()))?
                );
                eprintln!("analysis mode: nothing recorded ({reason})");
            }
        }
        return Ok(EXIT_RULE);
    }
    let ws = Workspace::find(ws)?;
    let ls = signer(&ws)?;
    let payload = to_canonical_json(&r).map_err(|e| Failure::input(e.to_string()))?;
    let envelope = Signer::new(ls.signing_key()).sign(APPLY_PAYLOAD_TYPE, &payload);
    let store = ws.store()?;
    let opts = ws.ledger_options(&store).await?;
    let ledger = ws.open_ledger(&store, ls, opts, "urn:kfm:infra").await?;
    let bytes = envelope
        .to_bytes()
        .map_err(|e| Failure::input(e.to_string()))?;
    let appended = ledger.append(bytes).await;
    ledger.close().await;
    let appended = appended?;
    let leaf = hex::encode(appended.leaf_hash);
    match fmt {
        Format::Json => print_json(&ApplyOut {
            recorded: true,
            mode: &mode,
            receipt: &r,
            ledger_index: Some(appended.index),
            leaf_hash: Some(leaf),
        })?,
        Format::Human => println!(
            "recorded apply to {} at {} ({}) by {} via {}: ledger index {}, leaf {}",
            r.env,
            &r.repo.commit[..12.min(r.repo.commit.len())],
            r.repo.branch,
            r.actor.principal,
            r.actor.method,
            appended.index,
            leaf
        ),
    }
    Ok(0)
}
