//! The command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  a rule or gate failed (for example an invalid spec in `kfm spec check`)
  2  cannot evaluate: bad input, missing file, unreadable store, bad configuration";

/// KFM (Kansas Frontier Matrix): a governed data platform. Datasets travel a
/// truth path (RAW -> WORK -> PROCESSED -> CATALOG -> PUBLISHED) through
/// fail-closed gates, and every step can be proven afterwards.
#[derive(Parser, Debug)]
#[command(name = "kfm", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Workspace directory (default: the nearest directory upward holding kfm.toml).
    #[arg(long, global = true, env = "KFM_WORKSPACE", value_name = "DIR")]
    pub workspace: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a workspace: kfm.toml, environments/dev.toml, datasets/ and the store.
    #[command(
        after_help = "Example:\n  kfm init my-workspace\n\nRunning it again on an existing workspace changes nothing and says so."
    )]
    Init(InitArgs),

    /// Quickstart: a local workspace with the bundled samples taken through the truth path.
    #[command(
        after_help = "Example:\n  kfm up            # workspace in ./kfm-up\n  kfm up --dir /tmp/demo\n\n\
Today `up` creates the workspace, installs the bundled sample specs (ks-counties, ks-places)\n\
and ingests them into RAW. Promotion and serving join it as they land."
    )]
    Up(UpArgs),

    /// Dataset specs.
    Spec {
        #[command(subcommand)]
        command: SpecCommand,
    },

    /// Stream a dataset's source into RAW, content-addressed, with an acquisition record.
    #[command(after_help = "Example:\n  kfm ingest datasets/ks-places.yaml\n\n\
Identical bytes again are a no-op that reports the earlier acquisition; different bytes are a\n\
new acquisition. A missing or unreadable source, or a bad spec: exit 2, nothing written.")]
    Ingest(IngestArgs),

    /// The audit ledger: append, verify, prove, consistency, tail.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },

    /// Each dataset's position on the truth path and its acquisitions.
    #[command(after_help = "Example:\n  kfm status\n  kfm status --format json")]
    Status(StatusArgs),
}

#[derive(Subcommand, Debug)]
pub enum SpecCommand {
    /// Validate dataset specs strictly (unknown keys are errors).
    #[command(
        after_help = "Example:\n  kfm spec check                  # every spec in the workspace's datasets/\n  kfm spec check datasets/a.yaml other/\n\n\
Exit 1 if any spec is invalid, 2 if a path cannot be read or holds no spec."
    )]
    Check(SpecCheckArgs),
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Append an entry (a file, or stdin); returns once it is durable.
    #[command(
        after_help = "Examples:\n  kfm ledger append receipt.json\n  echo '{\"event\":\"x\"}' | kfm ledger append\n  \
producer | kfm ledger append --lines     # one entry per line, acknowledged as each is durable\n\n\
Entries over 65535 bytes are refused (exit 2): store large payloads by digest.\n\
A second writer on the same ledger is refused (exit 1)."
    )]
    Append(LedgerAppendArgs),
    /// Recompute every hash and check the checkpoint signature; exit 1 naming the first bad file.
    #[command(
        after_help = "Example:\n  kfm ledger verify\n  kfm ledger verify --verifier-key auditor/ledger.pub --format json"
    )]
    Verify(LedgerReadArgs),
    /// Inclusion proof for an entry, by index or leaf hash.
    #[command(
        after_help = "Example:\n  kfm ledger prove 41\n  kfm ledger prove 9f2c…(64 hex digits) --format json"
    )]
    Prove(LedgerProveArgs),
    /// Consistency proof between two tree sizes.
    #[command(after_help = "Example:\n  kfm ledger consistency 10 250")]
    Consistency(LedgerConsistencyArgs),
    /// The last entries.
    #[command(after_help = "Example:\n  kfm ledger tail -n 20")]
    Tail(LedgerTailArgs),
}

#[derive(Args, Debug)]
pub struct LedgerAppendArgs {
    /// File holding the entry (default: stdin).
    pub file: Option<PathBuf>,
    /// Read stdin as one entry per line.
    #[arg(long, conflicts_with = "file")]
    pub lines: bool,
    /// Most entries per group-commit batch (default: ledger.batch_max in kfm.toml).
    #[arg(long)]
    pub batch_max: Option<usize>,
}

#[derive(Args, Debug)]
pub struct LedgerReadArgs {
    /// File holding the ledger's verifier (public) key (default: keys/ledger.pub).
    #[arg(long, value_name = "FILE")]
    pub verifier_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LedgerProveArgs {
    /// Entry index, or its 64-hex-digit leaf hash.
    pub target: String,
    #[command(flatten)]
    pub read: LedgerReadArgs,
}

#[derive(Args, Debug)]
pub struct LedgerConsistencyArgs {
    pub old_size: u64,
    pub new_size: u64,
    #[command(flatten)]
    pub read: LedgerReadArgs,
}

#[derive(Args, Debug)]
pub struct LedgerTailArgs {
    /// How many entries.
    #[arg(short, default_value_t = 10)]
    pub n: u64,
    #[command(flatten)]
    pub read: LedgerReadArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to create the workspace in.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Workspace directory for the quickstart.
    #[arg(long, default_value = "kfm-up")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct SpecCheckArgs {
    /// Spec files or directories (default: the workspace's datasets/).
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// The dataset spec (YAML) whose source to ingest.
    pub spec: PathBuf,
    /// Who is acquiring, for the record (default: $KFM_ACTOR, then $USER).
    #[arg(long, env = "KFM_ACTOR")]
    pub actor: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {}
