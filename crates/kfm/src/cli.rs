//! The command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod drift;
pub use drift::*;

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

    /// Quickstart: a local workspace, the bundled samples through the truth path, then serve.
    #[command(
        after_help = "Examples:\n  kfm up                 # workspace in ./kfm-demo, serves on 127.0.0.1:8080\n  kfm up --dir /tmp/demo --listen 127.0.0.1:9090\n  kfm up --no-serve      # everything but the server\n\n\
`up` creates the workspace, installs the bundled samples (ks-counties, ks-places, the\n\
SYNTHETIC ks-sites-synthetic and ks-markers-unlicensed) and ingests them into RAW, loads the\n\
policy bundle for the workspace's environment (exit 2 if its digest is not the pinned one),\n\
promotes every sample not yet published through gates A-G, runs the policy tests, creates\n\
demo tokens (public, researcher, auditor), prints a tour and serves the governed API until\n\
Ctrl-C. Exit 1 if a policy test fails or a sample does not end as expected (only\n\
ks-markers-unlicensed belongs in quarantine)."
    )]
    Up(UpArgs),

    /// Serve the governed API (OGC API - Features, catalog, exports, evidence, audit).
    #[command(
        after_help = "Example:\n  kfm serve\n  kfm serve --listen 127.0.0.1:9090\n\n\
Every request is authenticated (Bearer token, else role public), decided by the pinned policy,\n\
its obligations applied, and recorded in the ledger (Kfm-Audit-Ref header). /readyz stays 503\n\
until the policy digest matches the environment's pin; in stage and prod a mismatch stops the\n\
start (exit 2). Promotions, rollbacks and more servers on the same workspace append through\n\
the running writer (run/ledger.sock); with [events] url, every entry is published to JetStream\n\
and `kfm ledger sequencer` writes the log."
    )]
    Serve(ServeArgs),

    /// API tokens: create (shown once, stored as a hash), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },

    /// Print the API's OpenAPI document (generated from the code).
    #[command(after_help = "Example:\n  kfm openapi > contracts/openapi.json")]
    Openapi,

    /// Dataset specs.
    Spec {
        #[command(subcommand)]
        command: SpecCommand,
    },

    /// Stream a dataset's source into RAW, content-addressed, with an acquisition record.
    #[command(
        after_help = "Examples:\n  kfm ingest datasets/ks-places.yaml\n  kfm ingest datasets/big.yaml --allow-outside-workspace   # source.uri: /data/big.csv\n\n\
Identical bytes again are a no-op that reports the earlier acquisition (and, when they are\n\
not the newest acquisition, the `kfm promote --acquisition` that promotes them); different\n\
bytes are a new acquisition. A source outside the workspace needs --allow-outside-workspace.\n\
A missing or unreadable source, a source outside the workspace, or a bad spec: exit 2,\n\
nothing written."
    )]
    Ingest(IngestArgs),

    /// Take a dataset's newest acquisition through gates A-G: published, or quarantined.
    #[command(
        after_help = "Examples:\n  kfm promote ks-places\n  kfm promote ks-places --acquisition sha256:3f2a… --format json\n\n\
Reads datasets/<dataset>.yaml and the newest acquisition in RAW, normalises it into WORK and\n\
evaluates gates A (identity, determinism), B (license), C (sensitivity), D (catalog triplet),\n\
E (QA), F (signed receipt in the ledger) and G (signed manifest, pointer compare-and-swap).\n\
Exit 0 published, 1 quarantined (report under quarantine/<dataset>/<run_id>/), 2 cannot start\n\
(bad spec, no acquisition)."
    )]
    Promote(PromoteArgs),

    /// Move a dataset's release pointer back to an earlier version, through the same gates.
    #[command(after_help = "Example:\n  kfm rollback ks-places --to v1\n\n\
Re-verifies every artifact of that version, re-judges its license and label under the current\n\
policy, re-checks its catalog, appends a rollback receipt to the ledger, then moves the pointer\n\
by compare-and-swap. Exit 0 rolled back, 1 refused (quarantined), 2 no such version.")]
    Rollback(RollbackArgs),

    /// The catalog: re-verify a version's catalog triplet and artifacts.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },

    /// The infrastructure gate: Kubernetes, NetworkPolicy, Terraform, CI workflows, secrets; receipts.
    Infra {
        #[command(subcommand)]
        command: InfraCommand,
    },

    /// GitOps drift of the live platform (JetStream, PostgreSQL, S3) against infra/platform/.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },

    /// Runs that failed a gate, and their reports.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },

    /// The audit ledger: append, verify, prove, consistency, tail.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },

    /// The event backbone (NATS JetStream, with [events] url): check and create its
    /// streams, replay the audit stream into an empty store.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },

    /// Rebuildable projections in PostgreSQL/PostGIS ([postgres] url): load what is
    /// published, rebuild from zero, prove every table equal to its artifact.
    Projection {
        #[command(subcommand)]
        command: ProjectionCommand,
    },

    /// Disaster recovery: the drill that proves the platform can be rebuilt from its
    /// canonical store alone.
    Dr {
        #[command(subcommand)]
        command: DrCommand,
    },

    /// Policy as code: test, digest, pin, eval, diff and sign the policy bundle.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },

    /// Each dataset's position on the truth path and its acquisitions.
    #[command(after_help = "Example:\n  kfm status\n  kfm status --format json")]
    Status(StatusArgs),
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Compare KFM's streams and bucket on the server with their declaration (read-only).
    #[command(
        after_help = "Example:\n  KFM_EVENTS_URL=nats://127.0.0.1:4222 kfm events check\n\n\
Exit 0: as declared and durable enough; 1: a setting differs, something is missing, or the\n\
replicas are too few for stage or prod (an acknowledgement is on disk only with 3 replicas);\n\
2: no [events] url, or NATS cannot be reached (never reported as \"as declared\")."
    )]
    Check,
    /// Create what is missing of KFM's streams and bucket, then check them.
    #[command(after_help = "Example:\n  kfm events ensure\n\nExit codes as for check.")]
    Ensure,
    /// Rebuild the ledger from the audit stream into this workspace's (empty) store.
    #[command(
        after_help = "Example:\n  kfm events replay\n\nRefused (exit 1, nothing changed) if the store's ledger is not empty.\n\
Prints the entries replayed and the root, which equals the sequencer's for the same stream."
    )]
    Replay,
}

#[derive(Subcommand, Debug)]
pub enum ProjectionCommand {
    /// Keep PostgreSQL holding exactly what is published: load each new version (binary COPY,
    /// a table per layer, switched in atomically), drop what is withdrawn, record each
    /// table's projection digest in the ledger.
    #[command(
        after_help = "Example:\n  KFM_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/kfm kfm projection run --once\n\n\
Without --once it runs until SIGTERM/SIGINT, passing again whenever a release pointer moves\n\
(and every --interval-s). Prints one JSON line per pass. Exit 0; 1: a dataset could not be\n\
projected (its pointer or artifact does not verify; the rest is); 2: PostgreSQL, the store or the\n\
ledger cannot be reached (nothing half-visible is left: every load is one transaction)."
    )]
    Run(ProjectionRunArgs),
    /// Drop every projected table, then project everything published from zero.
    #[command(after_help = "Example:\n  kfm projection rebuild\n\nExit codes as for run.")]
    Rebuild,
    /// Prove every table equal to its canonical artifact: the digest of its rows as the
    /// database returns them, of the artifact the signed manifest names, and the ledger's record.
    #[command(after_help = "Example:\n  kfm projection verify --format json\n\n\
Exit 0: every published version is projected and equal; 1: a table differs, is missing, is\n\
stale, unrecorded or not named by any projection; 2: cannot evaluate.")]
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum DrCommand {
    /// From the canonical store alone: verify the ledger and every release pointer, rebuild
    /// every projection into an empty database, compare every digest, check the pinned
    /// policy, resolve evidence for a sample of features of every layer; report RTO and RPO
    /// and append the signed receipt to the ledger.
    #[command(
        after_help = "Example:\n  kfm dr drill                      # into a scratch database on [postgres]'s server, dropped after\n  kfm dr drill --into postgres://kfm@db2:5432/kfm --keep\n\n\
Exit 0: the drill passed; 1: it ran and something did not verify (the receipt, recorded all\n\
the same, says what) or --into names a database that is not empty; 2: cannot evaluate\n\
(PostgreSQL, the store or the ledger unreachable: no receipt)."
    )]
    Drill(DrillArgs),
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Rebuild into this (empty) database instead of a scratch one; its password as for
    /// [postgres] (postgres.password or PGPASSWORD).
    #[arg(long, value_name = "URL")]
    pub into: Option<String>,
    /// Keep the scratch database afterwards (it is dropped by default).
    #[arg(long)]
    pub keep: bool,
    /// Features traced back to the canonical store per layer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub sample: u64,
}

#[derive(Args, Debug)]
pub struct ProjectionRunArgs {
    /// One pass, then exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between passes when no pointer moved.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub interval_s: u64,
}

#[derive(Args, Debug)]
pub struct SequencerArgs {
    /// Name of this sequencer in the lease (default: host:pid:random).
    #[arg(long)]
    pub holder: Option<String>,
    /// Lease duration in milliseconds (a standby takes over this long after renewals stop).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(200..=60000))]
    pub lease_ms: u64,
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
pub enum PolicyCommand {
    /// Run the bundle's Rego `test_` rules and YAML fixtures (exit 1 on any failure).
    #[command(
        after_help = "Examples:\n  kfm policy test                       # the workspace's bundle\n  \
kfm policy test policy/ --run export --coverage\n  \
kfm policy test policy/ --junit report.xml --fail-on-empty\n\n\
Fixtures are tests/**/*.yaml: `cases: [{name, input, expect: {allow, reason, obligations}}]`.\n\
They run through the same decision point the runtime uses."
    )]
    Test(PolicyTestArgs),
    /// Print the bundle's content digest (what environments pin).
    #[command(after_help = "Example:\n  kfm policy digest policy/\n\n\
The digest is sha256 over the sorted lines `<sha256 of file>  <path>` of every file but\n\
.signature.json; recompute it without KFM:\n  \
(cd policy && find . -type f ! -name .signature.json | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum)")]
    Digest(PolicyDigestArgs),
    /// Pin the bundle's digest for an environment (environments/<env>.toml).
    #[command(after_help = "Example:\n  kfm policy pin --env stage\n\n\
A runtime whose bundle digest differs from its environment's pin refuses to start or\n\
become ready. Review the change with `kfm policy diff` first.")]
    Pin(PolicyPinArgs),
    /// Evaluate one decision input; --explain shows which rules produced it.
    #[command(
        after_help = "Examples:\n  kfm policy eval --input request.json --explain\n  \
echo '{\"subject\":{\"id\":\"a\",\"roles\":[\"public\"]},\"action\":\"read\",…}' | kfm policy eval --input - --now\n\n\
Without --bundle the workspace's bundle is used, and only if its digest is pinned for the\n\
workspace's environment. Exit 0 allow, 1 deny, 2 cannot evaluate."
    )]
    Eval(PolicyEvalArgs),
    /// Replay recorded decision inputs against two bundles; list every decision that changes.
    #[command(
        after_help = "Example:\n  kfm policy diff --from old-policy/ --to policy/ --inputs decisions.jsonl\n\n\
Inputs: a JSON array or JSON Lines. Exit 0 when nothing changes, 1 when something does."
    )]
    Diff(PolicyDiffArgs),
    /// Sign the bundle (ed25519 over its digest, written to .signature.json).
    #[command(
        after_help = "Example:\n  head -c32 /dev/urandom | base64 > keys/policy.key && chmod 600 keys/policy.key\n  \
kfm policy sign policy/ --key file:keys/policy.key\n\n\
A signed bundle whose signature fails is refused everywhere, `kfm policy test` included."
    )]
    Sign(PolicySignArgs),
}

#[derive(Args, Debug)]
pub struct PolicyTestArgs {
    /// Bundle directory (default: policy.bundle of the workspace).
    pub dir: Option<PathBuf>,
    /// Run only cases whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub run: Option<String>,
    /// Fail (exit 1) when no case ran.
    #[arg(long)]
    pub fail_on_empty: bool,
    /// Report line coverage of the Rego files.
    #[arg(long)]
    pub coverage: bool,
    /// Also write a JUnit XML report to this file (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PolicyDigestArgs {
    /// Bundle directory (default: policy.bundle of the workspace).
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PolicyPinArgs {
    /// The environment to pin: dev, stage or prod.
    #[arg(long)]
    pub env: kfm_core::Environment,
    /// Bundle directory (default: policy.bundle of the workspace).
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PolicyEvalArgs {
    /// The decision input (JSON); `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Show the rules that produced the decision and the obligations.
    #[arg(long)]
    pub explain: bool,
    /// Set context.time to the current time (as the runtime does).
    #[arg(long)]
    pub now: bool,
    /// Evaluate this bundle directory instead of the workspace's pinned one.
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PolicyDiffArgs {
    /// The current bundle.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The proposed bundle.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Recorded decision inputs (JSON array or JSON Lines).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
}

#[derive(Args, Debug)]
pub struct PolicySignArgs {
    /// Bundle directory (default: policy.bundle of the workspace).
    pub dir: Option<PathBuf>,
    /// The signing key reference: env:NAME or file:PATH (base64 of a 32-byte ed25519 seed).
    #[arg(long)]
    pub key: String,
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
        after_help = "Examples:\n  kfm ledger verify\n  kfm ledger verify --verifier-key auditor/ledger.pub --format json\n  \
cp store/audit/checkpoint ~/kept-checkpoint     # an auditor keeps any checkpoint…\n  \
kfm ledger verify --against ~/kept-checkpoint   # …and later proves the log still extends it\n\n\
Also refused (exit 1, nothing changed): tiles or bundles beyond the checkpoint that no journal\n\
record covers, a log smaller than (or inconsistent with) the checkpoint witnessed in\n\
ledger.witness, journal damage that loses acknowledged entries, and a release pointer naming\n\
an entry the log does not hold. Exit 2: the store or the witness cannot be read."
    )]
    Verify(LedgerVerifyArgs),
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
    /// Run the ledger's sequencer: integrate the audit stream into the log in the store.
    #[command(
        after_help = "Example:\n  kfm ledger sequencer            # on two machines: one active, one standby\n\n\
Exactly one sequencer is active: a lease in the JetStream bucket decides who, renewed before\n\
every batch; a standby takes over within about twice --lease-ms of the active one dying. Events\n\
that fail their schema, are oversized, of an unknown type or for another environment go to\n\
kfm.<env>.deadletter with the reason. Prints one JSON line on stdout each time this process\n\
becomes active or stands by. Stops on SIGTERM/SIGINT, handing the lease over."
    )]
    Sequencer(SequencerArgs),
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
pub struct LedgerVerifyArgs {
    #[command(flatten)]
    pub read: LedgerReadArgs,
    /// A signed checkpoint kept earlier (a copy of store/audit/checkpoint,
    /// or of any acknowledgement): also prove, by a consistency proof, that
    /// the log extends it. A truncated, rolled-back or rewritten log fails.
    #[arg(long, value_name = "CHECKPOINT_FILE")]
    pub against: Option<PathBuf>,
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
    #[arg(long, default_value = "kfm-demo")]
    pub dir: PathBuf,
    /// Stop after the truth path and the demo tokens; do not serve.
    #[arg(long)]
    pub no_serve: bool,
    /// Address to serve on (default: server.listen, 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default: server.listen in kfm.toml, 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Absolute base URL for links, when behind a proxy (default: http://ADDR).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Also accept OIDC/JWT bearer tokens signed by a key in this JWKS file
    /// (roles from the `roles` claim, approved datasets from `approved_access`).
    #[arg(long, value_name = "FILE", env = "KFM_AUTH_JWKS", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub jwks: Option<PathBuf>,
    /// The `iss` every JWT must carry.
    #[arg(long, value_name = "URL", env = "KFM_AUTH_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every JWT must carry.
    #[arg(long, value_name = "AUD", env = "KFM_AUTH_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it once.
    #[command(
        after_help = "Examples:\n  kfm token create --role auditor --name alice\n  kfm token create --role researcher --approve ks-sites-synthetic\n\n\
Roles: public, researcher, steward, auditor, engineer, admin. --approve grants approved access\n\
to a dataset (repeatable): what the policy asks before precise sensitive coordinates."
    )]
    Create {
        #[arg(long)]
        role: String,
        /// A name for the token's holder (default: the role).
        #[arg(long)]
        name: Option<String>,
        /// Dataset this token holds approved access to (repeatable).
        #[arg(long, value_name = "DATASET")]
        approve: Vec<String>,
    },
    /// List tokens (ids, names, roles; never the tokens).
    #[command(
        after_help = "Examples:\n  kfm token list\n  kfm token list --format json\n\n\
Lists id, name, role, creation time and, for revoked tokens, when. The tokens themselves\n\
are never stored, only their sha256."
    )]
    List,
    /// Revoke a token by id; takes effect on the server's next request.
    #[command(
        after_help = "Example:\n  kfm token list                 # find the id\n  kfm token revoke 3f9c2a1b\n\n\
A running server refuses the token from its next request on (401). Exit 2 for an unknown id."
    )]
    Revoke { id: String },
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
    /// Acquire a source.uri that resolves outside the workspace (refused
    /// otherwise: a reviewed spec should not reach into the rest of the
    /// machine unnoticed).
    #[arg(long)]
    pub allow_outside_workspace: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The dataset id (its spec is datasets/<dataset>.yaml).
    pub dataset: String,
    /// Promote this acquisition (sha256:<hex>) instead of the newest.
    #[arg(long, value_name = "DIGEST")]
    pub acquisition: Option<String>,
    /// Who is promoting, for the receipt (default: $KFM_ACTOR, then $USER).
    #[arg(long, env = "KFM_ACTOR")]
    pub actor: Option<String>,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The dataset id.
    pub dataset: String,
    /// The version to restore, for example v1.
    #[arg(long, value_name = "vN")]
    pub to: String,
    /// Who is rolling back, for the receipt (default: $KFM_ACTOR, then $USER).
    #[arg(long, env = "KFM_ACTOR")]
    pub actor: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Check a version (default: the published one) without changing anything.
    #[command(
        after_help = "Examples:\n  kfm catalog validate ks-places\n  kfm catalog validate ks-places --version v1 --format json\n\n\
Checks the release manifest's signature, every artifact and catalog document against the\n\
digests it records, the DCAT/STAC/PROV cross-links and the STAC 1.1.0 schemas (offline).\n\
Exit 0 valid, 1 problems found (listed), 2 no such version or nothing published."
    )]
    Validate {
        /// The dataset id.
        dataset: String,
        /// The version to check, for example v2 (default: the published one).
        #[arg(long, value_name = "vN")]
        version: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum InfraCommand {
    /// Check whole trees, hermetically and deterministically.
    #[command(
        after_help = "Examples:\n  kfm infra check infra/ .github/\n  kfm infra check . --rules gitleaks.toml --output sarif=infra.sarif --output junit=infra.xml\n\n\
Rules: Kubernetes workloads (probes, requests/limits, non-root, no privilege escalation, not\n\
privileged, no host namespaces, hostPath only for CA/time-zone paths, images pinned by full\n\
sha256 digest, secret-looking env only by reference) in Deployments, StatefulSets, DaemonSets,\n\
ReplicaSets, Jobs, CronJobs and Pods (containers, init and ephemeral); Secrets with data or\n\
stringData; default-deny NetworkPolicy per namespace and the UI -> data reachability proof\n\
(namespaces classed by the label kfm.io/tier); Terraform/OpenTofu public buckets, encryption\n\
at rest and literal secrets (AWS, GCP, Azure, MinIO); GitHub Actions gate workflows (name or\n\
file containing \"gate\"): no path/branch filters, no skippable jobs, an always-running\n\
summary that fails on skipped or cancelled; secrets in any text file (gitleaks rule files\n\
with --rules). Secrets are masked in every output.\n\
Kustomize: every kustomization.yaml is also rendered (resources, patches, namespace, labels,\n\
images, replicas) and the rules run on what it would apply; a finding a patch causes points\n\
at the patch. See `kfm infra render`.\n\
Waivers: infra/waivers.yaml (or --waivers FILE): rule, target (glob), reason, owner, expires.\n\
Exit 0 clean, 1 findings (or an expired waiver), 2 cannot evaluate (unreadable file, YAML or\n\
HCL that does not parse, an unrendered template, an unknown field in a known Kubernetes kind,\n\
a CNI-specific policy, a malformed waiver or rule file, a kustomization it cannot render)."
    )]
    Check(InfraCheckArgs),

    /// Print what a kustomization renders to (what `kfm infra check` judges), with its digest.
    #[command(
        after_help = "Example:\n  kfm infra render infra/k8s/overlays/prod\n\n\
Renders resources (files and kustomization directories), patches (JSON 6902 and strategic\n\
merge, by target or by kind and name), namespace, labels, commonLabels, commonAnnotations,\n\
images and replicas, from local files only. Generators, components, Helm charts, name\n\
prefixes/suffixes, replacements, remote resources and a patch that selects nothing are\n\
refused (exit 2, naming the field and line): render those with kustomize and check its output.\n\
Each object is preceded by a comment naming the file and line it came from."
    )]
    Render {
        /// A kustomization directory, or its kustomization.yaml.
        path: PathBuf,
    },

    /// Say whether mutating commands may run (DELIVERY_APPROVED.yaml) or the repository is in read-only analysis mode.
    #[command(after_help = "Example:\n  kfm infra mode --repo .\n\n\
Delivery mode needs DELIVERY_APPROVED.yaml at the repository root with\n\
  delivery:\n    approved: true\n    approver: NAME\n    change: CHG-123      # optional\n    expires: 2026-12-31  # optional\n\
Anything else (missing, malformed, false, expired) is analysis mode. Exit 0 delivery, 1 analysis.")]
    Mode {
        /// The repository root.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },

    /// Plan and apply receipts.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReceiptCommand {
    /// What a change is: commits, changed files with digests, the gate's findings on the head tree.
    #[command(
        after_help = "Example:\n  kfm infra receipt plan --base origin/main --head HEAD --out plan.json\n\n\
The head commit's tree (not the working tree) is checked: infra/ and .github/ unless paths\n\
are given. Read-only in any mode. Exit 0 clean, 1 findings, 2 cannot evaluate."
    )]
    Plan(PlanArgs),

    /// Record an apply (kind kfm.infra.ApplyReceipt): signed, appended to the ledger.
    #[command(
        after_help = "Example:\n  kfm infra receipt apply --env prod --method gitops/flux --actor ci:deploy \\\n      --input infra/k8s/overlays/prod/kustomization.yaml --output rendered.yaml\n\n\
Mutating: runs only in delivery mode (see `kfm infra mode`); in analysis mode it prints the\n\
receipt it would record, records nothing and exits 1. Needs a workspace (its signing key and\n\
ledger). Exit 0 recorded, 1 refused by change control, 2 cannot evaluate."
    )]
    Apply(ApplyArgs),
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The base revision.
    #[arg(long)]
    pub base: String,
    /// The head revision.
    #[arg(long, default_value = "HEAD")]
    pub head: String,
    /// The repository root.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Paths (in the repository) to check; default infra and .github.
    pub paths: Vec<PathBuf>,
    /// Also write the receipt to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The environment applied to: dev, stage or prod.
    #[arg(long)]
    pub env: String,
    /// The repository root.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Who applied (default: $GITHUB_ACTOR, else the local user).
    #[arg(long)]
    pub actor: Option<String>,
    /// How it was applied (gitops/flux, gitops/argocd, kubectl, tofu apply, ...).
    #[arg(long, default_value = "manual")]
    pub method: String,
    /// A tool used, as NAME=VERSION; repeatable.
    #[arg(long = "tool", value_name = "NAME=VERSION")]
    pub tools: Vec<String>,
    /// A file that went in (digested); repeatable.
    #[arg(long = "input", value_name = "FILE")]
    pub inputs: Vec<PathBuf>,
    /// A file that came out (digested); repeatable.
    #[arg(long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,
    /// When the apply started (RFC 3339; default now).
    #[arg(long)]
    pub started: Option<String>,
    /// When it finished (RFC 3339; default now).
    #[arg(long)]
    pub finished: Option<String>,
}

#[derive(Args, Debug)]
pub struct InfraCheckArgs {
    /// Directories or files to check.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Extra secret rules in gitleaks TOML format.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// The waiver file (default infra/waivers.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub waivers: Option<PathBuf>,
    /// Also write FORMAT (human, json, sarif, junit) to PATH; repeatable.
    #[arg(long = "output", value_name = "FORMAT=PATH")]
    pub outputs: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// List quarantined runs (oldest first) with the gates that stopped them.
    #[command(
        after_help = "Example:\n  kfm quarantine list\n  kfm quarantine list ks-unlicensed --format json"
    )]
    List {
        /// Only this dataset.
        dataset: Option<String>,
    },
    /// Show one run's report: every gate with its reasons.
    #[command(after_help = "Example:\n  kfm quarantine show 20261122T170102417Z-1a2b3c4d")]
    Show {
        /// The run id (`kfm quarantine list` shows them).
        run_id: String,
    },
}
