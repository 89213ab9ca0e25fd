//! `kfm serve`, `kfm token`, `kfm openapi`: wiring the workspace into the
//! governed API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kfm_api::{ApiConfig, AppState, Backend, Releases, Tokens, Zones};
use kfm_core::{Environment, ServeBackend};
use kfm_ledger::Ledger;
use kfm_policy::{Bundle, DecisionPoint, Options};
use serde::Serialize;

use crate::cli::{Format, ServeArgs, TokenCommand};
use crate::failure::Failure;
use crate::output::print_json;
use crate::workspace::Workspace;

/// Where a workspace keeps its API token hashes.
pub(crate) fn tokens_path(ws: &Workspace) -> PathBuf {
    ws.dir.join("auth").join("tokens.json")
}

/// A prepared server: state, its ledger (to close after shutdown) and the
/// address to bind.
pub(crate) struct Prepared {
    pub state: Arc<AppState>,
    pub ledger: Arc<Ledger>,
    pub listen: SocketAddr,
    /// Bound already when the port was left to the system (`:0`), so that
    /// the links the API writes name the port it really serves on.
    pub bound: Option<std::net::TcpListener>,
    pub limits: kfm_api::ServeLimits,
    /// The descriptor limit the connection cap was derived from.
    pub descriptors: u64,
}

/// Loads policy (with the parity check), key, ledger, releases and tokens.
/// In stage and prod a policy that is not the pinned one stops the start;
/// in dev the server starts but stays unready.
pub(crate) async fn prepare(
    ws: &Workspace,
    listen: Option<SocketAddr>,
    base_url: Option<&str>,
    jwt: Option<kfm_api::auth::JwtConfig>,
) -> Result<Prepared, Failure> {
    let jwt = jwt
        .map(|c| kfm_api::auth::JwtVerifier::load(&c))
        .transpose()
        .map_err(|e| {
            Failure::input(e.to_string())
                .hint("--jwks takes the identity provider's JWKS (asymmetric keys)")
        })?;
    let env = ws.config.environment;
    let bundle_dir = ws.dir.join(&ws.config.policy_bundle);
    let bundle = Bundle::load(&bundle_dir).map_err(|e| {
        let hint = e.hint().to_owned();
        Failure::input(format!("policy bundle {}: {e}", bundle_dir.display())).hint(hint)
    })?;
    let pins = crate::policy::read_pins(ws, env)?;
    let policy_problem = match kfm_policy::check_pin(&bundle, env, &pins) {
        Ok(()) => None,
        Err(e) if env == Environment::Dev => {
            eprintln!(
                "warning: {e}\n  the server will start but stay NOT READY (503) until: {}",
                e.hint()
            );
            Some(e.to_string())
        }
        Err(e) => {
            let hint = e.hint();
            return Err(Failure::input(format!("refusing to start in {env}: {e}")).hint(hint));
        }
    };
    let policy = DecisionPoint::new(
        &bundle,
        Options {
            budget: ws.config.policy_budget,
            ..Options::default()
        },
    )
    .map_err(|e| Failure::input(e.to_string()))?;
    let signer = crate::ledger::signer(ws)?;
    let verifier = signer.verifier_key().to_owned();
    let key = crate::ledger::dsse_key(&verifier)?;
    let store = ws.store()?;
    let opts = ws.ledger_options(&store).await?;
    let ledger = ws
        .open_ledger(&store, signer, opts, "urn:kfm:api")
        .await
        .map_err(|e| Failure::input(format!("cannot open the ledger: {e}")))?;
    let ledger = Arc::new(ledger);
    let zones = Zones {
        published: store.reader(),
        processed: store.reader(),
        catalog: store.reader(),
        quarantine: store.reader(),
    };
    let mut listen = listen.unwrap_or(ws.config.listen);
    // Port 0: bind now, so that links (and the maps' tile URLs) carry the
    // port the system chose rather than ":0".
    let bound = if listen.port() == 0 {
        let l = std::net::TcpListener::bind(listen).map_err(|e| {
            Failure::input(format!("cannot listen on {listen}: {e}"))
                .hint("pass --listen 127.0.0.1:PORT (or set server.listen in kfm.toml)")
        })?;
        listen = l.local_addr().map_err(|e| Failure::input(e.to_string()))?;
        Some(l)
    } else {
        None
    };
    let base_url = base_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("http://{listen}"));
    let config = ApiConfig {
        environment: env,
        policy_problem,
        base_url,
        request_timeout: ws.config.server_request_timeout,
        // A safety net: moved pointers are announced as events.
        refresh_every: Duration::from_secs(30),
        batch_interval: ws.config.ledger_max_wait,
        ledger_origin: ws.config.ledger_origin.clone(),
        verifier_key: verifier,
        basemap: ws.config.serve_basemap.clone(),
    };
    let backend = backend(ws).await?;
    let state = AppState::new(
        config,
        policy,
        Releases::new(zones, key, backend),
        ledger.clone(),
        match jwt {
            Some(j) => Tokens::new(tokens_path(ws)).with_jwt(j),
            None => Tokens::new(tokens_path(ws)),
        },
    );
    for p in kfm_api::refresh_once(&state).await {
        eprintln!("warning: not serving {p}");
    }
    let (max_connections, descriptors) = kfm_api::connection_cap(ws.config.server_max_connections);
    Ok(Prepared {
        state,
        ledger,
        listen,
        bound,
        limits: kfm_api::ServeLimits {
            max_connections,
            header_timeout: ws.config.server_header_timeout,
            drain: ws.config.server_drain,
        },
        descriptors,
    })
}

/// Where the server reads features from: memory, or the projections in
/// PostgreSQL as KFM's API roles (`[serve] backend`).
async fn backend(ws: &Workspace) -> Result<Backend, Failure> {
    match ws.config.serve_backend {
        ServeBackend::Memory => Ok(Backend::Memory),
        ServeBackend::Postgis => {
            let target = crate::projection::target(ws)?;
            let pg = ws.config.postgres.as_ref();
            let api_password = pg
                .and_then(|p| p.api_password.as_ref())
                .map(|r| crate::projection::resolve(ws, r, "postgres.api_password"))
                .transpose()?;
            let precise_password = pg
                .and_then(|p| p.api_precise_password.as_ref())
                .map(|r| crate::projection::resolve(ws, r, "postgres.api_precise_password"))
                .transpose()?;
            let reader =
                kfm_projection::read::Reader::connect(&kfm_projection::read::ReaderConfig {
                    target,
                    api_password,
                    precise_password,
                    pool_size: 8,
                    statement_timeout: ws.config.server_request_timeout,
                })
                .await?;
            Ok(Backend::Postgis(Arc::new(reader)))
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds, serves until SIGINT/SIGTERM, drains, and closes the ledger.
pub(crate) async fn run_prepared(p: Prepared, announce: bool) -> Result<u8, Failure> {
    let listener = match p.bound {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l)),
        None => tokio::net::TcpListener::bind(p.listen).await,
    }
    .map_err(|e| {
        Failure::input(format!("cannot listen on {}: {e}", p.listen))
            .hint("pass --listen 127.0.0.1:PORT (or set server.listen in kfm.toml)")
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::input(e.to_string()))?;
    if announce {
        let ready = if p.state.ready() {
            "ready"
        } else {
            "NOT READY (see /readyz)"
        };
        println!(
            "serving the governed API on http://{addr} ({ready}, {} release(s), features from {}); Ctrl-C stops it",
            p.state.releases.all().len(),
            match p.state.releases.backend() {
                Backend::Memory => "memory",
                Backend::Postgis(_) => "PostGIS",
            }
        );
    }
    if announce {
        println!(
            "  at most {} connections at once (descriptor limit {}); a request head must arrive within {} s",
            p.limits.max_connections,
            p.descriptors,
            p.limits.header_timeout.as_secs()
        );
    }
    let drain = p.limits.drain;
    let served = kfm_api::serve(p.state.clone(), listener, shutdown_signal(), p.limits).await;
    // Every batched audit record still on its way gets the drain deadline
    // to become durable; then the ledger is closed. What was and was not
    // recorded is counted, not assumed.
    let tally = p.state.audit.drain(drain).await;
    drop(p.state);
    let mut ledger = p.ledger;
    let mut closed = None;
    for _ in 0..100 {
        match Arc::try_unwrap(ledger) {
            Ok(l) => {
                closed = Some(l.close().await);
                break;
            }
            Err(l) => {
                ledger = l;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let served = served.map_err(|e| Failure::input(format!("server error: {e}")))?;
    if announce {
        report_shutdown(&served, &tally, closed.as_ref());
    }
    Ok(0)
}

/// Says exactly what was and was not recorded.
fn report_shutdown(
    served: &kfm_api::Served,
    tally: &kfm_api::audit::AuditTally,
    closed: Option<&kfm_ledger::Closed>,
) {
    if served.cut > 0 {
        println!(
            "stopped: {} connection(s) still running at the drain deadline were closed",
            served.cut
        );
    }
    let lost = tally.refused + tally.unsettled();
    println!(
        "stopped: {} access record(s) durable in the ledger{}",
        tally.recorded,
        if lost == 0 {
            String::new()
        } else {
            format!(
                "; {lost} NOT recorded ({} refused by the ledger, {} still on their way at the deadline)",
                tally.refused,
                tally.unsettled()
            )
        }
    );
    match closed {
        Some(c) if !c.writer => println!(
            "ledger: this server appended through the workspace's writer (another process), which holds {} entries",
            c.size
        ),
        Some(c) => {
            let journal = c.size - c.in_tiles.min(c.size);
            println!(
                "ledger closed at {} entries{}{}",
                c.size,
                if journal > 0 {
                    format!(
                        " ({journal} durable in the journal, written as tiles when the ledger next opens)"
                    )
                } else {
                    String::new()
                },
                c.failed
                    .as_deref()
                    .map(|f| format!("; its writer had failed: {f}"))
                    .unwrap_or_default()
            );
        }
        None => println!(
            "ledger not closed cleanly (still in use at exit); every acknowledged entry is durable and the next writer recovers it"
        ),
    }
}

pub async fn serve(ws: Option<&Path>, a: &ServeArgs) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let jwt = match (&a.jwks, &a.jwt_issuer, &a.jwt_audience) {
        (Some(j), Some(i), Some(au)) => Some(kfm_api::auth::JwtConfig {
            jwks: j.clone(),
            issuer: i.clone(),
            audience: au.clone(),
        }),
        _ => None,
    };
    let p = prepare(&ws, a.listen, a.base_url.as_deref(), jwt).await?;
    run_prepared(p, true).await
}

#[derive(Serialize)]
struct Created<'a> {
    token: &'a str,
    #[serde(flatten)]
    record: &'a kfm_api::auth::TokenRecord,
}

pub fn token(ws: Option<&Path>, cmd: &TokenCommand, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let path = tokens_path(&ws);
    let err = |e: kfm_api::auth::TokenError| Failure::input(e.to_string());
    match cmd {
        TokenCommand::Create {
            role,
            name,
            approve,
        } => {
            let name = name.clone().unwrap_or_else(|| role.clone());
            let (tok, rec) = kfm_api::auth::create(&path, &name, role, approve).map_err(err)?;
            match fmt {
                Format::Json => print_json(&Created {
                    token: &tok,
                    record: &rec,
                })?,
                Format::Human => {
                    println!("{tok}");
                    eprintln!(
                        "token {} ({}, role {}{}) created; it is shown once and stored only as a hash",
                        rec.id,
                        rec.name,
                        rec.role,
                        if rec.approved_access.is_empty() {
                            String::new()
                        } else {
                            format!(", approved for {}", rec.approved_access.join(", "))
                        }
                    );
                }
            }
        }
        TokenCommand::List => {
            let list = kfm_api::auth::list(&path).map_err(err)?;
            match fmt {
                Format::Json => print_json(&list)?,
                Format::Human => {
                    if list.is_empty() {
                        println!("no tokens (create one: kfm token create --role researcher)");
                    }
                    for t in list {
                        println!(
                            "{}  {:<12} {:<10} {}{}",
                            t.id,
                            t.name,
                            t.role,
                            t.created_at,
                            t.revoked_at
                                .map(|r| format!("  REVOKED {r}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let rec = kfm_api::auth::revoke(&path, id).map_err(err)?;
            match fmt {
                Format::Json => print_json(&rec)?,
                Format::Human => println!("revoked {} ({})", rec.id, rec.name),
            }
        }
    }
    Ok(0)
}
