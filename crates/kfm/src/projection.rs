//! `kfm projection run|rebuild|verify`: wiring the workspace into the
//! projector (the work is in `kfm-projection`).

use std::time::Duration;

use kfm_core::SecretRef;
use kfm_core::dsse::Signer;
use kfm_projection::{PgTarget, ProjectionError, Projector, SyncReport, VerifyReport, Zones};
use serde::Serialize;

use crate::cli::{Format, ProjectionCommand, ProjectionRunArgs};
use crate::failure::{EXIT_INPUT, EXIT_RULE, Failure};
use crate::output::print_json;
use crate::workspace::Workspace;

impl From<ProjectionError> for Failure {
    fn from(e: ProjectionError) -> Self {
        let (code, hint) = match &e {
            ProjectionError::Connect(_) => (
                EXIT_INPUT,
                Some("check [postgres] url (or KFM_POSTGRES_URL) and that the server is running"),
            ),
            ProjectionError::Setup(_) => (EXIT_INPUT, None),
            ProjectionError::Artifact(_) | ProjectionError::Catalog(_) => (EXIT_RULE, None),
            _ => (EXIT_INPUT, None),
        };
        Failure {
            code,
            message: e.to_string(),
            hint: hint.map(str::to_owned),
        }
    }
}

/// The configured PostgreSQL, its password resolved from its reference
/// (or PostgreSQL's own PGPASSWORD); never printed.
pub(crate) fn target(ws: &Workspace) -> Result<PgTarget, Failure> {
    let Some(pg) = &ws.config.postgres else {
        return Err(Failure::input("no PostgreSQL configured: [postgres] url is not set").hint(
            "set [postgres] url = \"postgres://USER@HOST:5432/DATABASE\" in kfm.toml, or KFM_POSTGRES_URL",
        ));
    };
    let password = match &pg.password {
        Some(r) => Some(resolve(ws, r, "postgres.password")?),
        None => std::env::var("PGPASSWORD").ok(),
    };
    Ok(PgTarget {
        url: pg.url.clone(),
        password,
    })
}

/// A password given by reference in `key`, read now; never printed.
pub(crate) fn resolve(ws: &Workspace, r: &SecretRef, key: &str) -> Result<String, Failure> {
    match r {
        SecretRef::Env(name) => std::env::var(name)
            .map_err(|_| Failure::input(format!("{key} refers to ${name}, which is not set"))),
        SecretRef::File(p) => {
            let path = if p.is_relative() {
                ws.dir.join(p)
            } else {
                p.clone()
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::input(format!(
                    "cannot read the password file {} ({key}): {e}",
                    path.display()
                ))
            })?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

/// `KFM_PROJECTION_WHOLE_MAX` (bytes): artifacts up to it are read whole,
/// larger ones streamed (default 256 MiB; less for a host short of memory).
pub(crate) fn tuned(p: Projector) -> Result<Projector, Failure> {
    const VAR: &str = "KFM_PROJECTION_WHOLE_MAX";
    match std::env::var(VAR) {
        Err(_) => Ok(p),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|n| p.read_whole_up_to(n))
            .map_err(|_| {
                Failure::input(format!("{VAR}={v:?} is not a number of bytes")).hint(format!(
                    "unset {VAR} for the default (256 MiB), or give bytes, e.g. {VAR}=67108864"
                ))
            }),
    }
}

#[derive(Serialize)]
struct LayerOut<'a> {
    layer: &'a str,
    table: String,
    rows: u64,
    projection_digest: &'a str,
}

#[derive(Serialize)]
struct LoadedOut<'a> {
    dataset: &'a str,
    version: &'a str,
    layers: Vec<LayerOut<'a>>,
}

#[derive(Serialize)]
struct PassOut<'a> {
    loaded: Vec<LoadedOut<'a>>,
    dropped: Vec<&'a str>,
    unchanged: &'a [String],
    recorded: usize,
    problems: &'a [String],
    seconds: f64,
}

fn print_pass(r: &SyncReport, seconds: f64, fmt: Format) -> Result<(), Failure> {
    let out = PassOut {
        loaded: r
            .loaded
            .iter()
            .map(|(ds, v, ls)| LoadedOut {
                dataset: ds,
                version: v,
                layers: ls
                    .iter()
                    .map(|l| LayerOut {
                        layer: l.layer.as_str(),
                        table: format!("{}.{}", l.schema, l.table),
                        rows: l.rows,
                        projection_digest: &l.digest,
                    })
                    .collect(),
            })
            .collect(),
        dropped: r.dropped.iter().map(|(d, _)| d.as_str()).collect(),
        unchanged: &r.unchanged,
        recorded: r.recorded,
        problems: &r.problems,
        seconds,
    };
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::to_string(&out).map_err(|e| Failure::input(e.to_string()))?
        ),
        Format::Human => {
            for l in &out.loaded {
                for t in &l.layers {
                    println!(
                        "projected {} {}: {} ({} rows, {})",
                        l.version, t.layer, t.table, t.rows, t.projection_digest
                    );
                }
            }
            for (d, why) in &r.dropped {
                println!("dropped the projection of {d}: {why}");
            }
            for p in &r.problems {
                eprintln!("not projected: {p}");
            }
            println!(
                "{} loaded, {} unchanged, {} dropped, {} ledger record(s), in {seconds:.2} s",
                out.loaded.len(),
                out.unchanged.len(),
                out.dropped.len(),
                out.recorded
            );
        }
    }
    Ok(())
}

/// The ledger (as this workspace runs it) and the zones a projection reads.
pub(crate) async fn open(
    ws: &Workspace,
    store: &kfm_store::Store,
    signer: kfm_ledger::LedgerSigner,
    source: &str,
) -> Result<(kfm_ledger::Ledger, Zones), Failure> {
    let opts = ws.ledger_options(store).await?;
    let ledger = ws
        .open_ledger(store, signer, opts, source)
        .await
        .map_err(|e| Failure::input(format!("cannot open the ledger: {e}")))?;
    let zones = Zones {
        published: store.reader(),
        processed: store.reader(),
        catalog: store.reader(),
    };
    Ok((ledger, zones))
}

pub(crate) async fn run(
    ws: Option<&std::path::Path>,
    cmd: &ProjectionCommand,
    fmt: Format,
) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let target = target(&ws)?;
    let ls = crate::ledger::signer(&ws)?;
    let signer = Signer::new(ls.signing_key());
    let key = crate::ledger::dsse_key(ls.verifier_key())?;
    let store = ws.store()?;
    let (ledger, zones) = open(&ws, &store, ls, "urn:kfm:projector").await?;
    let result = async {
        let client = kfm_projection::connect(&target).await?;
        let mut projector = tuned(Projector::new(client, zones, key, signer).await?)?;
        match cmd {
            ProjectionCommand::Run(a) => run_passes(&mut projector, &ledger, a, fmt).await,
            ProjectionCommand::Rebuild => {
                let t = std::time::Instant::now();
                let r = projector.rebuild(&ledger).await?;
                print_pass(&r, t.elapsed().as_secs_f64(), fmt)?;
                Ok(if r.problems.is_empty() { 0 } else { EXIT_RULE })
            }
            ProjectionCommand::Verify => {
                let r = projector.verify(&ledger).await?;
                print_verify(&r, fmt)?;
                Ok(if r.ok() { 0 } else { EXIT_RULE })
            }
        }
    }
    .await;
    ledger.close().await;
    result
}

async fn run_passes(
    p: &mut Projector,
    ledger: &kfm_ledger::Ledger,
    a: &ProjectionRunArgs,
    fmt: Format,
) -> Result<u8, Failure> {
    let mut events = Some(ledger.events());
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let t = std::time::Instant::now();
        let r = p.sync(ledger).await?;
        print_pass(&r, t.elapsed().as_secs_f64(), fmt)?;
        if a.once {
            return Ok(if r.problems.is_empty() { 0 } else { EXIT_RULE });
        }
        // A moved pointer is announced to every process sharing the
        // ledger; the interval catches what an announcement missed.
        // A closed channel (the ledger went) leaves the interval alone,
        // never a busy loop.
        let moved = async {
            match &mut events {
                Some(rx) => !matches!(
                    rx.recv().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed)
                ),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return Ok(0),
            open = moved => if !open { events = None },
            () = tokio::time::sleep(Duration::from_secs(a.interval_s)) => {},
        }
    }
}

#[derive(Serialize)]
struct CheckOut<'a> {
    dataset: &'a str,
    layer: &'a str,
    table: &'a str,
    rows: u64,
    projection_digest: &'a str,
    equal: bool,
    problem: Option<&'a str>,
}

#[derive(Serialize)]
struct VerifyOut<'a> {
    ok: bool,
    layers: Vec<CheckOut<'a>>,
    problems: &'a [String],
}

fn print_verify(r: &VerifyReport, fmt: Format) -> Result<(), Failure> {
    match fmt {
        Format::Json => print_json(&VerifyOut {
            ok: r.ok(),
            layers: r
                .layers
                .iter()
                .map(|l| CheckOut {
                    dataset: &l.dataset,
                    layer: &l.layer,
                    table: &l.table,
                    rows: l.rows,
                    projection_digest: &l.digest,
                    equal: l.problem.is_none(),
                    problem: l.problem.as_deref(),
                })
                .collect(),
            problems: &r.problems,
        }),
        Format::Human => {
            for l in &r.layers {
                match &l.problem {
                    None => println!(
                        "equal    {} {}: {} ({} rows, {})",
                        l.dataset, l.layer, l.table, l.rows, l.digest
                    ),
                    Some(p) => println!("DIFFERS  {} {}: {}: {p}", l.dataset, l.layer, l.table),
                }
            }
            for p in &r.problems {
                println!("PROBLEM  {p}");
            }
            println!(
                "{}",
                if r.ok() {
                    "every projected table equals its canonical artifact"
                } else {
                    "the projections do NOT match the canonical store (see above)"
                }
            );
            Ok(())
        }
    }
}
