//! `kfm events …` and `kfm ledger sequencer`: the event backbone's
//! commands (wiring only; the work is in `kfm-events`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kfm_core::config::EventsConfig;
use kfm_events::async_nats::jetstream;
use kfm_events::sequencer::{SequencerOptions, Stats};
use kfm_events::streams::{self, Declared};
use kfm_events::{EventsError, Names};
use kfm_ledger::LocalLedger;
use kfm_store::Store;
use serde::Serialize;

use crate::cli::{EventsCommand, Format, SequencerArgs};
use crate::failure::{EXIT_INPUT, EXIT_RULE, Failure};
use crate::ledger::signer;
use crate::output::print_json;
use crate::workspace::Workspace;

impl From<EventsError> for Failure {
    fn from(e: EventsError) -> Self {
        let code = match e {
            EventsError::Declaration(_) | EventsError::Refused(_) => EXIT_RULE,
            EventsError::Ledger(ref l) => {
                Failure::from(kfm_ledger::LedgerError::Failed(l.to_string())).code
            }
            _ => EXIT_INPUT,
        };
        Failure {
            code,
            message: e.to_string(),
            hint: None,
        }
    }
}

fn events_config(ws: &Workspace) -> Result<&EventsConfig, Failure> {
    ws.config.events.as_ref().ok_or_else(|| {
        Failure::input("no event backbone configured: [events] url is not set")
            .hint("set [events] url = \"nats://HOST:4222\" in kfm.toml, or KFM_EVENTS_URL; the embedded default needs neither streams nor a sequencer")
    })
}

async fn context(ws: &Workspace) -> Result<(jetstream::Context, Declared), Failure> {
    let ev = events_config(ws)?;
    let client = kfm_events::connect(ev, &ws.dir).await?;
    let names = Names::with_prefix(ws.config.environment, &ev.prefix);
    Ok((jetstream::new(client), Declared::new(names, ev.replicas)))
}

#[derive(Serialize)]
struct CheckOut {
    environment: String,
    replicas: usize,
    durable: bool,
    warning: Option<String>,
    differences: Vec<String>,
}

pub async fn run(ws: Option<&Path>, cmd: &EventsCommand, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    match cmd {
        EventsCommand::Check | EventsCommand::Ensure => {
            let (js, decl) = context(&ws).await?;
            if matches!(cmd, EventsCommand::Ensure) {
                streams::ensure(&js, &decl).await?;
            }
            let (durable, warning) = match decl.durability() {
                Ok(w) => (w.is_none(), w),
                Err(e) => (false, Some(e.to_string())),
            };
            let refused = decl.durability().is_err();
            let differences: Vec<String> = streams::check(&js, &decl)
                .await?
                .iter()
                .map(|d| d.to_string())
                .collect();
            let out = CheckOut {
                environment: ws.config.environment.to_string(),
                replicas: decl.replicas,
                durable,
                warning,
                differences,
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => {
                    for d in &out.differences {
                        println!("differs: {d}");
                    }
                    if let Some(w) = &out.warning {
                        println!("{}: {w}", if refused { "refused" } else { "warning" });
                    }
                    if out.differences.is_empty() && !refused {
                        println!(
                            "streams and bucket of {} as declared ({} replica(s))",
                            out.environment, out.replicas
                        );
                    }
                }
            }
            Ok(if out.differences.is_empty() && !refused {
                0
            } else {
                EXIT_RULE
            })
        }
        EventsCommand::Replay => {
            let (js, decl) = context(&ws).await?;
            let store = ws.store()?;
            let mut opts = ws.ledger_options(&store).await?;
            opts.socket = None;
            let ledger = LocalLedger::open(store.audit(), signer(&ws)?, opts).await?;
            let r = kfm_events::replay::replay(&js, &decl.names, &ledger).await;
            let size = ledger.size();
            let view = ledger.view().await;
            let closed = ledger.close().await;
            let r = r?;
            if let Some(f) = closed.failed {
                return Err(Failure::input(format!(
                    "the replayed ledger did not close cleanly: {f}"
                )));
            }
            let root = hex::encode(view?.root());
            #[derive(Serialize)]
            struct Out {
                last_seq: u64,
                entries: u64,
                duplicates: u64,
                rejected: u64,
                size: u64,
                root: String,
            }
            let out = Out {
                last_seq: r.last_seq,
                entries: r.entries,
                duplicates: r.duplicates,
                rejected: r.rejected,
                size,
                root,
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => println!(
                    "replayed {} entries from {} events ({} duplicates, {} rejected): size {}, root {}",
                    out.entries, out.last_seq, out.duplicates, out.rejected, out.size, out.root
                ),
            }
            Ok(0)
        }
    }
}

/// `kfm ledger sequencer`.
pub async fn sequencer(ws: &Workspace, store: &Store, a: &SequencerArgs) -> Result<u8, Failure> {
    let (js, decl) = context(ws).await?;
    streams::ensure(&js, &decl).await?;
    let holder = a.holder.clone().unwrap_or_else(|| {
        format!(
            "{}:{}:{}",
            whoami::hostname().unwrap_or_else(|_| "host".into()),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let mut opts = ws.ledger_options(store).await?;
    // The sequencer is the log's only writer: no socket for other
    // processes (they publish to the stream).
    opts.socket = None;
    let key = signer(ws)?;
    let mut sopts = SequencerOptions::new(decl.names.clone(), holder.clone());
    sopts.lease = Duration::from_millis(a.lease_ms);
    sopts.batch_max = ws.config.ledger_batch_max.max(1);
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let s2 = stats.clone();
    let h2 = holder.clone();
    let reporter = tokio::spawn(async move {
        let mut was = 0;
        loop {
            let now = s2.active.load(Ordering::Relaxed);
            if now != was {
                let state = if now == 1 { "active" } else { "standby" };
                println!(
                    "{{\"event\":\"{state}\",\"holder\":{},\"integrated\":{}}}",
                    serde_json::Value::String(h2.clone()),
                    s2.integrated.load(Ordering::Relaxed)
                );
                was = now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let audit = store.audit();
    let open = || {
        let audit = audit.clone();
        let key = key.try_clone();
        let opts = opts.clone();
        async move { LocalLedger::open(audit, key?, opts).await }
    };
    let r = kfm_events::sequencer::run(&js, &sopts, open, stop_rx, stats.clone()).await;
    reporter.abort();
    r?;
    eprintln!(
        "sequencer {holder} stopped: {} integrated, {} duplicates skipped, {} dead-lettered, {} term(s) active",
        stats.integrated.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.dead.load(Ordering::Relaxed),
        stats.terms.load(Ordering::Relaxed)
    );
    Ok(0)
}
