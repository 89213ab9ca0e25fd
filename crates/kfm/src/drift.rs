//! `kfm drift …`: wiring the drift library to the repository, the
//! change-control mode, the ledger, exit codes and metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use kfm_core::{Signer, to_canonical_json};
use kfm_drift::{DriftError, Endpoints, Fixed, Overrides, Report, Severity};
use kfm_infra::platform::{self, Platform, ignore::Ignore};
use kfm_infra::receipt::{self, Actor, Mode, RepoRef, Tool};
use serde::{Deserialize, Serialize};

use crate::cli::{DriftCommand, DriftReconcileArgs, DriftTarget, Format};
use crate::failure::{EXIT_INPUT, EXIT_RULE, Failure};
use crate::ledger::signer;
use crate::output::print_json;
use crate::workspace::Workspace;

mod adopt;
mod render;
mod watch;

/// The payload type of signed drift-fix receipts in the ledger.
pub const FIX_PAYLOAD_TYPE: &str = "application/vnd.kfm.drift.fix-receipt+json";

impl From<DriftError> for Failure {
    fn from(e: DriftError) -> Self {
        let hint = match &e {
            DriftError::Unreachable { .. } => Some(
                "an engine that cannot be read is never \"no drift\": start it, or point --nats/--postgres/--s3 at it",
            ),
            DriftError::Config(_) => {
                Some("fix infra/platform/ (see `kfm infra check infra/platform`)")
            }
            _ => None,
        };
        let f = Failure::input(e.to_string());
        match hint {
            Some(h) => f.hint(h),
            None => f,
        }
    }
}

fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

pub async fn run(ws: Option<&Path>, cmd: &DriftCommand, fmt: Format) -> Result<u8, Failure> {
    match cmd {
        DriftCommand::Detect(t) => detect(t, fmt).await,
        DriftCommand::Reconcile(a) => reconcile(ws, a, fmt).await,
        DriftCommand::Adopt(a) => adopt::run(a, fmt).await,
        DriftCommand::Watch(a) => watch::run(ws, a).await,
    }
}

/// Everything a drift command needs before it touches an engine.
pub(crate) struct Loaded {
    pub platform: Platform,
    pub root: PathBuf,
    pub ignores: Vec<Ignore>,
    pub endpoints: Endpoints,
    pub outputs: Vec<(render::Out, PathBuf)>,
    pub state_path: PathBuf,
}

pub(crate) fn load(t: &DriftTarget) -> Result<Loaded, Failure> {
    let mut outputs = Vec::new();
    for o in &t.outputs {
        let (f, path) = o.split_once('=').ok_or_else(|| {
            Failure::input(format!("--output {o}: expected FORMAT=PATH"))
                .hint("for example --output sarif=drift.sarif")
        })?;
        outputs.push((render::Out::parse(f)?, PathBuf::from(path)));
    }
    let root = t
        .platform
        .clone()
        .unwrap_or_else(|| t.repo.join("infra/platform"));
    let platform = platform::load(&root, &t.env).map_err(|e| {
        Failure::input(e.to_string())
            .hint("check the desired state with `kfm infra check infra/platform`")
    })?;
    let ignore_path = t.ignore.clone().or_else(|| {
        let d = root.join("drift-ignore.yaml");
        d.is_file().then_some(d)
    });
    let ignores = match &ignore_path {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", p.display())))?;
            platform::ignore::parse(&p.display().to_string(), &text)
                .map_err(|e| Failure::input(e.to_string()))?
        }
    };
    let endpoints = Endpoints::resolve(
        &platform,
        &Overrides {
            nats: t.nats.clone(),
            postgres: t.postgres.clone(),
            s3: t.s3.clone(),
            kubeconfig: t.kubeconfig.clone(),
            repo: t.repo.clone(),
        },
    )?;
    let state_path = t
        .state
        .clone()
        .unwrap_or_else(|| t.repo.join(".kfm-drift").join(format!("{}.json", t.env)));
    Ok(Loaded {
        platform,
        root,
        ignores,
        endpoints,
        outputs,
        state_path,
    })
}

/// What is remembered between runs: when each drift was first seen, and
/// the last commit at which the platform matched git.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    first_seen: BTreeMap<String, DateTime<Utc>>,
    last_clean: Option<KnownGood>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KnownGood {
    pub commit: String,
    pub at: DateTime<Utc>,
}

impl State {
    fn read(p: &Path) -> State {
        // A state file that cannot be read only loses "since" times: the
        // drift itself is read from the engines every time.
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Stamps each drift with when it was first seen and records a clean
    /// run's commit. Written atomically (temporary file, rename).
    pub(crate) fn update(p: &Path, report: &mut Report, commit: Option<&str>) -> Option<KnownGood> {
        let mut s = State::read(p);
        let now = Utc::now();
        let mut seen = BTreeMap::new();
        for d in report.drifts.iter_mut().chain(report.ignored.iter_mut()) {
            let t = *s.first_seen.get(&d.key()).unwrap_or(&now);
            d.since = Some(t);
            seen.insert(d.key(), t);
        }
        s.first_seen = seen;
        if report.is_clean()
            && let Some(c) = commit
        {
            s.last_clean = Some(KnownGood {
                commit: c.to_owned(),
                at: now,
            });
        }
        let write = || -> std::io::Result<()> {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = p.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, p)
        };
        if let Err(e) = write() {
            eprintln!("warning: cannot record drift times in {}: {e}", p.display());
        }
        s.last_clean
    }
}

/// HEAD of the repository, if it is one.
fn head(repo: &Path) -> Option<String> {
    receipt::commit(repo, "HEAD").ok()
}

/// Detects, records first-seen times, writes every output and prints.
pub(crate) async fn detect_once(
    t: &DriftTarget,
    l: &Loaded,
    fmt: Format,
) -> Result<Report, Failure> {
    let mut report = kfm_drift::detect(&l.platform, &l.endpoints, &l.ignores, today()).await?;
    let commit = head(&t.repo);
    let good = State::update(&l.state_path, &mut report, commit.as_deref());
    let doc = render::Doc {
        report: &report,
        commit: commit.as_deref(),
        last_known_good: good.as_ref(),
        root: &l.root,
    };
    for (f, path) in &l.outputs {
        std::fs::write(path, doc.render(*f))
            .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
    }
    print!(
        "{}",
        doc.render(match fmt {
            Format::Human => render::Out::Human,
            Format::Json => render::Out::Json,
        })
    );
    Ok(report)
}

async fn detect(t: &DriftTarget, fmt: Format) -> Result<u8, Failure> {
    let l = load(t)?;
    let report = detect_once(t, &l, fmt).await?;
    Ok(if report.is_clean() { 0 } else { EXIT_RULE })
}

/// A signed record of one drift fix.
#[derive(Debug, Serialize)]
pub(crate) struct FixReceipt<'a> {
    pub kind: &'static str,
    pub env: &'a str,
    pub engine: kfm_drift::Engine,
    pub resource: &'a str,
    pub fields: &'a [String],
    pub actions: &'a [String],
    /// SHA-256 of the resource's state (canonical JSON) before and after,
    /// and of the state git asks for.
    pub before: &'a str,
    pub after: &'a str,
    pub desired: &'a str,
    pub actor: Actor,
    pub repo: RepoRef,
    pub tooling: Vec<Tool>,
    pub approved_by: String,
    pub change: Option<String>,
    pub fixed_at: DateTime<Utc>,
}

pub(crate) fn actor(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("GITHUB_ACTOR")
                .ok()
                .map(|u| format!("ci:{u}"))
        })
        .unwrap_or_else(|| {
            format!(
                "user:{}",
                whoami::username().unwrap_or_else(|_| "unknown".into())
            )
        })
}

/// Appends each fix's receipt to the ledger as it is made.
pub(crate) struct LedgerSink {
    pub ledger: kfm_ledger::Ledger,
    pub signing: ed25519_dalek::SigningKey,
    pub env: String,
    pub actor: String,
    pub repo: RepoRef,
    pub tooling: Vec<Tool>,
    pub approved_by: String,
    pub change: Option<String>,
    pub recorded: Vec<(u64, String)>,
}

impl kfm_drift::FixSink for LedgerSink {
    async fn record(&mut self, f: &Fixed) -> Result<(), DriftError> {
        let r = FixReceipt {
            kind: "kfm.drift.FixReceipt",
            env: &self.env,
            engine: f.engine,
            resource: &f.resource,
            fields: &f.fields,
            actions: &f.actions,
            before: &f.before,
            after: &f.after,
            desired: &f.desired,
            actor: Actor {
                principal: self.actor.clone(),
                method: "kfm drift reconcile".into(),
            },
            repo: self.repo.clone(),
            tooling: self.tooling.clone(),
            approved_by: self.approved_by.clone(),
            change: self.change.clone(),
            fixed_at: Utc::now(),
        };
        let payload = to_canonical_json(&r).map_err(|e| DriftError::Record(e.to_string()))?;
        let envelope = Signer::new(self.signing.clone()).sign(FIX_PAYLOAD_TYPE, &payload);
        let bytes = envelope
            .to_bytes()
            .map_err(|e| DriftError::Record(e.to_string()))?;
        let a = self
            .ledger
            .append(bytes)
            .await
            .map_err(|e| DriftError::Record(e.to_string()))?;
        self.recorded.push((a.index, hex::encode(a.leaf_hash)));
        Ok(())
    }
}

/// Opens the ledger and builds the sink, before anything is changed: a
/// fix that could not be receipted is never made.
pub(crate) async fn open_sink(
    ws: Option<&Path>,
    t: &DriftTarget,
    mode: &Mode,
    actor_name: &str,
) -> Result<LedgerSink, Failure> {
    let (approved_by, change) = match mode {
        Mode::Delivery {
            approver, change, ..
        } => (approver.clone(), change.clone()),
        Mode::Analysis { .. } => {
            return Err(Failure::input("analysis mode: nothing may be changed"));
        }
    };
    let ws = Workspace::find(ws)?;
    let ls = signer(&ws)?;
    let signing = ls.signing_key();
    let store = ws.store()?;
    let opts = ws.ledger_options(&store).await?;
    let ledger = ws.open_ledger(&store, ls, opts, "urn:kfm:drift").await?;
    let repo = receipt::repo_ref(&t.repo).map_err(|e| {
        Failure::input(e.to_string()).hint("run from a git repository, or pass --repo")
    })?;
    let mut tooling = receipt::base_tools(&t.repo);
    tooling.push(Tool {
        name: "kfm-drift".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    });
    Ok(LedgerSink {
        ledger,
        signing,
        env: t.env.clone(),
        actor: actor_name.to_owned(),
        repo,
        tooling,
        approved_by,
        change,
        recorded: Vec::new(),
    })
}

#[derive(Serialize)]
struct ReconcileOut<'a> {
    mode: &'a Mode,
    changed: bool,
    fixed: &'a [Fixed],
    receipts: Vec<serde_json::Value>,
    left: &'a [kfm_drift::Drift],
}

async fn reconcile(ws: Option<&Path>, a: &DriftReconcileArgs, fmt: Format) -> Result<u8, Failure> {
    let t = &a.target;
    let l = load(t)?;
    let mode = receipt::change_control(&t.repo, today());
    if let Mode::Analysis { reason } = &mode {
        // Read-only: what would change, and nothing changes.
        let report = detect_once(t, &l, fmt).await?;
        let fixable = report.drifts.iter().filter(|d| d.fixable).count();
        eprintln!(
            "analysis mode: nothing changed ({reason}); in delivery mode reconcile would restore {fixable} drifted setting(s)"
        );
        return Ok(EXIT_RULE);
    }
    let report = kfm_drift::detect(&l.platform, &l.endpoints, &l.ignores, today()).await?;
    if !report.drifts.iter().any(|d| d.fixable) {
        // Nothing this command would change: no ledger is opened.
        return finish(&mode, &report, &[], &[], fmt);
    }
    let actor_name = actor(a.actor.as_deref());
    let mut sink = open_sink(ws, t, &mode, &actor_name).await?;
    let result = kfm_drift::reconcile(&l.platform, &l.endpoints, &report, &mut sink).await;
    sink.ledger.close().await;
    let done = result?;
    // What is left, read again.
    let after = kfm_drift::detect(&l.platform, &l.endpoints, &l.ignores, today()).await?;
    finish(&mode, &after, &done.fixed, &sink.recorded, fmt)
}

/// Prints what reconcile fixed (with each receipt's ledger index) and
/// what is left; exit 0 only when nothing is left.
fn finish(
    mode: &Mode,
    after: &Report,
    fixed: &[Fixed],
    recorded: &[(u64, String)],
    fmt: Format,
) -> Result<u8, Failure> {
    let receipts: Vec<serde_json::Value> = recorded
        .iter()
        .map(|(i, leaf)| serde_json::json!({"ledger_index": i, "leaf_hash": leaf}))
        .collect();
    match fmt {
        Format::Json => print_json(&ReconcileOut {
            mode,
            changed: !fixed.is_empty(),
            fixed,
            receipts,
            left: &after.drifts,
        })?,
        Format::Human => {
            for (f, (i, _)) in fixed.iter().zip(recorded) {
                println!(
                    "fixed {} {} ({}): {}; receipt at ledger index {i}",
                    f.engine,
                    f.resource,
                    f.fields.join(", "),
                    f.actions.join("; ")
                );
            }
            if fixed.is_empty() {
                println!("nothing to fix");
            }
            for d in &after.drifts {
                println!(
                    "left: {} {} {}: {}",
                    render::severity(d.severity),
                    d.engine,
                    d.resource,
                    d.message
                );
            }
        }
    }
    Ok(if after.is_clean() { 0 } else { EXIT_RULE })
}

/// Exit code of a watch run's error (for the JSON line).
pub(crate) fn failure_code(f: &Failure) -> u8 {
    if f.code == 0 { EXIT_INPUT } else { f.code }
}

/// Counts by severity, worst first (for the human summary and metrics).
pub(crate) fn by_severity(r: &Report) -> BTreeMap<Severity, usize> {
    let mut m = BTreeMap::new();
    for d in &r.drifts {
        *m.entry(d.severity).or_insert(0) += 1;
    }
    m
}
