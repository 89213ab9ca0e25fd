//! `kfm`: the one binary. Command-line wiring only: parsing arguments,
//! finding the workspace, calling the library crates and reporting results.
//! No rule of the platform lives here.

mod cli;
mod default_policy;
mod dr;
mod drift;
mod events;
mod failure;
mod infra;
mod ingest;
mod init;
mod ledger;
mod output;
mod policy;
mod projection;
mod promote;
mod samples;
mod serve;
mod spec;
mod status;
mod up;
mod workspace;

use std::process::ExitCode;

/// The server allocates per request (records, JSON, decisions): glibc's
/// malloc took ~20% of its CPU under load (perf, bench/api.sh); mimalloc's
/// thread-local free lists cost a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{
    Cli, Command, DriftCommand, Format, InfraCommand, PolicyCommand, ReceiptCommand, SpecCommand,
};
use crate::failure::Failure;

/// Why `cmd` would ignore an explicit `--workspace` (it works on the
/// directories it is given, or on none), if it would.
fn ignores_workspace(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::Init(_) => Some("kfm init creates the workspace named by its argument"),
        Command::Up(_) => Some("kfm up works in the workspace named by --dir"),
        Command::Openapi => {
            Some("kfm openapi prints the API's document, which no workspace changes")
        }
        Command::Spec {
            command: SpecCommand::Check(a),
        } if !a.paths.is_empty() => Some("kfm spec check checks the paths it is given"),
        Command::Infra { command } => match command {
            InfraCommand::Receipt {
                command: ReceiptCommand::Apply(_),
            } => None,
            _ => Some(
                "kfm infra check, mode, render and receipt plan work on a repository, not a workspace",
            ),
        },
        Command::Drift {
            command: DriftCommand::Detect(_) | DriftCommand::Adopt(_),
        } => Some(
            "kfm drift detect and adopt read the live platform and the repository, not a workspace",
        ),
        Command::Policy { command } => match command {
            PolicyCommand::Diff(_) => Some("kfm policy diff compares the two bundles it is given"),
            PolicyCommand::Test(a) if a.dir.is_some() => {
                Some("kfm policy test with a bundle directory tests that bundle")
            }
            PolicyCommand::Digest(a) if a.dir.is_some() => {
                Some("kfm policy digest with a bundle directory digests that bundle")
            }
            PolicyCommand::Sign(a) if a.dir.is_some() => {
                Some("kfm policy sign with a bundle directory signs that bundle")
            }
            PolicyCommand::Eval(a) if a.bundle.is_some() => {
                Some("kfm policy eval --bundle evaluates that bundle")
            }
            _ => None,
        },
        _ => None,
    }
}

/// Why `cmd` has no JSON output, if it has none.
fn no_json(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::Serve(_) => Some(
            "kfm serve prints one line when it starts; its state is JSON at /readyz and /healthz",
        ),
        _ => None,
    }
}

/// Refuses (exit 2) a global option the command would otherwise ignore.
fn check_globals(cli: &Cli, workspace_given: bool) -> Result<(), Failure> {
    if workspace_given && let Some(why) = ignores_workspace(&cli.command) {
        return Err(
            Failure::input(format!("--workspace is not used here: {why}"))
                .hint("drop --workspace: this command does not read a workspace"),
        );
    }
    if cli.format == Format::Json
        && let Some(why) = no_json(&cli.command)
    {
        return Err(Failure::input(format!(
            "--format json is not available here: {why}"
        )));
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_tracing();
    // Only an explicit --workspace is refused where it would be ignored;
    // KFM_WORKSPACE set for a whole session is not.
    let workspace_given = matches.value_source("workspace") == Some(ValueSource::CommandLine);
    if let Err(f) = check_globals(&cli, workspace_given) {
        f.report();
        return ExitCode::from(f.code);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // File I/O runs on blocking threads (one per object write in a
        // ledger tile round): unbounded, a busy server grew ~180 of them,
        // each with its own allocator heap (RSS +100 MB under load). Two
        // cores gain nothing from more.
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            f.report();
            ExitCode::from(f.code)
        }
    }
}

/// Runs one command; `Ok(code)` for commands whose findings decide the exit
/// code (for example `spec check`), `Err` for failures.
async fn run(cli: Cli) -> Result<u8, Failure> {
    let fmt = cli.format;
    let ws = cli.workspace.as_deref();
    match cli.command {
        Command::Init(a) => init::run(&a, fmt),
        Command::Up(a) => up::run(&a, fmt).await,
        Command::Spec {
            command: SpecCommand::Check(a),
        } => spec::check(ws, &a, fmt),
        Command::Ingest(a) => ingest::run(ws, &a, fmt).await,
        Command::Status(a) => status::run(ws, &a, fmt).await,
        Command::Promote(a) => promote::promote(ws, &a, fmt).await,
        Command::Rollback(a) => promote::rollback(ws, &a, fmt).await,
        Command::Catalog { command } => promote::catalog(ws, &command, fmt).await,
        Command::Infra { command } => infra::run(ws, &command, fmt).await,
        Command::Drift { command } => drift::run(ws, &command, fmt).await,
        Command::Quarantine { command } => promote::quarantine(ws, &command, fmt).await,
        Command::Ledger { command } => ledger::run(ws, &command, fmt).await,
        Command::Events { command } => events::run(ws, &command, fmt).await,
        Command::Projection { command } => projection::run(ws, &command, fmt).await,
        Command::Dr { command } => dr::run(ws, &command, fmt).await,
        Command::Policy { command } => policy::run(ws, &command, fmt),
        Command::Serve(a) => serve::serve(ws, &a).await,
        Command::Token { command } => serve::token(ws, &command, fmt),
        Command::Openapi => {
            print!("{}", kfm_api::openapi::document());
            Ok(0)
        }
    }
}

/// Logs go to stderr, filtered by `KFM_LOG` (default: warnings). They never
/// carry secrets or restricted coordinates.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KFM_LOG")
        // geo's relate warns about invalid rings it is handed; gate E
        // reports those geometries itself, by feature.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,geo=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
