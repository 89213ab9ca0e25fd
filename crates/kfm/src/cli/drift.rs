//! The grammar of `kfm drift …` (GitOps drift of the live platform).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Where the desired state is and how to reach the engines (every drift
/// command takes these).
#[derive(Args, Debug, Clone)]
pub struct DriftTarget {
    /// The environment: its overlay is merged over the base.
    #[arg(long, default_value = "dev")]
    pub env: String,
    /// The repository root (git, DELIVERY_APPROVED.yaml).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The desired-state tree (default: REPO/infra/platform).
    #[arg(long, value_name = "DIR")]
    pub platform: Option<PathBuf>,
    /// The reviewed ignore file (default: PLATFORM/drift-ignore.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub ignore: Option<PathBuf>,
    /// Use this NATS server instead of the overlay's engines.nats.url.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Use this PostgreSQL connection string instead of engines.postgres.dsn.
    #[arg(long, value_name = "DSN")]
    pub postgres: Option<String>,
    /// Use this S3 endpoint instead of engines.s3.endpoint.
    #[arg(long, value_name = "URL")]
    pub s3: Option<String>,
    /// Use this kubeconfig instead of the file engines.kubernetes.kubeconfig_env names.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Where first-seen times and the last clean commit are kept
    /// (default: REPO/.kfm-drift/ENV.json).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Also write FORMAT (human, json, sarif) to PATH; repeatable.
    #[arg(long = "output", value_name = "FORMAT=PATH")]
    pub outputs: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Compare the live platform with git; read-only, always.
    #[command(
        after_help = "Examples:\n  kfm drift detect --env prod\n  kfm drift detect --env dev --format json --output sarif=drift.sarif\n\n\
Reads JetStream (the JetStream API), PostgreSQL (the system catalogs of the managed database),\n\
S3 (bucket versioning, public-access block, encryption, object lock) and, with\n\
engines.kubernetes, the rendered overlay against the live objects (kubectl diff --server-side:\n\
what the API server defaults is not drift), and lists every\n\
difference from infra/platform/, worst first: a precise table or schema opened to the public\n\
role is critical. Settings git does not state are not compared. Entries of the ignore file\n\
(owner, reason, expiry) excuse a drift until they expire; a critical drift is never excused.\n\
Exit 0 no drift, 1 drift, 2 cannot evaluate (an engine unreachable or unreadable, a\n\
desired-state file that does not parse, a credential variable not set)."
    )]
    Detect(DriftTarget),
    /// Restore git's state with the smallest change; delivery mode only; each fix receipted.
    #[command(
        after_help = "Example:\n  kfm drift reconcile --env prod --actor ci:drift\n\n\
Mutating: runs only in delivery mode (DELIVERY_APPROVED.yaml; see `kfm infra mode`). In\n\
analysis mode it prints what it would change, changes nothing and exits 1. Never removes a\n\
stream, table, role or bucket git does not name (reported only); removes one only where git\n\
says ensure: absent. Each fix is appended to the ledger as a signed drift-fix receipt (before\n\
and after digests, actor, commit, tool version): needs a workspace. Exit 0 when nothing is\n\
left, 1 drift left (or analysis mode), 2 cannot evaluate or a fix failed."
    )]
    Reconcile(DriftReconcileArgs),
    /// Turn live changes made during an incident into a desired-state overlay for review.
    #[command(
        after_help = "Example:\n  kfm drift adopt --env prod --incident INC-2041\n  git diff infra/platform/   # review, then commit\n\n\
Writes overlays/ENV/incident-ID.yaml with the live value of every drifted setting that git\n\
can state, and the incident record (id, time, who). Critical drift is never adopted: fix it.\n\
Exit 0 written, 1 nothing to adopt (or only critical drift), 2 cannot evaluate."
    )]
    Adopt(DriftAdoptArgs),
    /// Detect (and, in delivery mode with --reconcile, correct) at a fixed interval, with metrics.
    #[command(
        after_help = "Example:\n  kfm drift watch --env prod --interval 5m --metrics 0.0.0.0:9465\n\n\
One JSON line on stdout per run. Prometheus metrics on --metrics at /metrics:\n\
kfm_drift_open (drift now, by severity), kfm_drift_found_total, kfm_drift_fixed_total,\n\
kfm_drift_runs_total{result}, kfm_drift_last_success_timestamp_seconds. An interval over 5m\n\
is refused (exit 2): git is reconciled at least every five minutes. Stops on SIGTERM/SIGINT."
    )]
    Watch(DriftWatchArgs),
}

#[derive(Args, Debug)]
pub struct DriftReconcileArgs {
    #[command(flatten)]
    pub target: DriftTarget,
    /// Who is reconciling (default: ci:$GITHUB_ACTOR, else user:NAME).
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Args, Debug)]
pub struct DriftAdoptArgs {
    #[command(flatten)]
    pub target: DriftTarget,
    /// The incident record the live change was made under.
    #[arg(long)]
    pub incident: String,
    /// Who is adopting (default: user:NAME).
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Args, Debug)]
pub struct DriftWatchArgs {
    #[command(flatten)]
    pub target: DriftTarget,
    /// Time between runs, at most 5m (for example 30s, 5m).
    #[arg(long, default_value = "5m")]
    pub interval: String,
    /// Serve Prometheus metrics at ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Also reconcile each drift found (delivery mode only; each fix receipted).
    #[arg(long)]
    pub reconcile: bool,
    /// Who is reconciling, with --reconcile.
    #[arg(long)]
    pub actor: Option<String>,
    /// Stop after this many runs (default: run until stopped).
    #[arg(long)]
    pub runs: Option<u64>,
}
