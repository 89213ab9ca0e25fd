//! The governed API: KFM's trust membrane: the only way to the published data.
//!
//! Every request passes the tower layers of [`layers`]: metrics, audit,
//! authentication, and on the routes of one collection the policy decision;
//! the handlers apply the decision's obligations. The audit layer appends a
//! record to the ledger for every answer (waiting for it when the decision
//! says `audit_durable`) and stamps `Kfm-Audit-Ref` on it. Handlers hold read handles on `published`, `processed` and
//! `catalog` only ([`releases::Zones`]); they cannot name `raw` or `work`.
//!
//! A denied resource and a nonexistent one answer with the same status and
//! the same bytes ([`not_found`]); only the audit reference differs.

pub mod audit;
pub mod auth;
mod enforce;
mod html;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod releases;
mod routes;
mod tiles;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kfm_core::Environment;
use kfm_ledger::Ledger;
use kfm_policy::DecisionPoint;

pub use audit::{AuditNote, AuditSink};
pub use auth::{Principal, Tokens};
pub use metrics::Metrics;
pub use releases::{Backend, Releases, Zones};

/// The response header that carries the audit reference.
pub const AUDIT_HEADER: &str = "kfm-audit-ref";

/// How the server was configured (from the workspace, by the CLI).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub environment: Environment,
    /// Why the loaded policy is not the pinned one (None: it is). In dev the
    /// server runs but is not ready; stage and prod refuse to start.
    pub policy_problem: Option<String>,
    /// Absolute base for links (`http://127.0.0.1:8080`).
    pub base_url: String,
    pub request_timeout: Duration,
    /// How often published pointers are re-read.
    pub refresh_every: Duration,
    /// The ledger's group-commit wait: the loss window of batched records.
    pub batch_interval: Duration,
    pub ledger_origin: String,
    pub verifier_key: String,
    /// The collection the HTML views' maps draw beneath the data.
    pub basemap: Option<String>,
}

/// Everything a handler may use.
pub struct AppState {
    pub config: ApiConfig,
    pub policy: DecisionPoint,
    pub releases: Releases,
    pub audit: Arc<AuditSink>,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    decisions: enforce::DecisionCache,
    /// Releases the last refresh did not serve, and why (for /readyz).
    pub not_served: std::sync::RwLock<Vec<String>>,
}

impl AppState {
    pub fn new(
        config: ApiConfig,
        policy: DecisionPoint,
        releases: Releases,
        ledger: Arc<Ledger>,
        tokens: Tokens,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        metrics
            .loss_window_us
            .set(config.batch_interval.as_micros() as i64);
        Arc::new(Self {
            audit: Arc::new(AuditSink::new(ledger, metrics.clone())),
            config,
            policy,
            releases,
            tokens,
            metrics,
            started: Instant::now(),
            decisions: enforce::DecisionCache::default(),
            not_served: std::sync::RwLock::new(Vec::new()),
        })
    }

    /// Why the server is not ready, if it is not.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(p) = &self.config.policy_problem {
            why.push(format!("policy: {p}"));
        }
        if !self.audit.healthy() {
            why.push(
                "ledger: an audit append failed; the server can no longer account for answers"
                    .into(),
            );
        } else if let Some(u) = self.audit.unavailable() {
            why.push(format!("ledger: {u}"));
        }
        if let Some((e, for_)) = self.audit.ledger().health().tiles_retrying {
            // Not a reason to stop serving (entries are durable in the
            // journal), but said.
            tracing::debug!(error = %e, secs = for_.as_secs(), "ledger tiles lag");
        }
        why
    }

    pub fn ready(&self) -> bool {
        self.config.policy_problem.is_none()
            && self.audit.healthy()
            && self.audit.unavailable().is_none()
    }
}

/// An error answer in the OGC API exception shape. Messages are written for
/// the client and never carry restricted metadata.
pub(crate) fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({"code": code, "description": description});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The one answer for "no such thing" and "not for you": same status, same
/// bytes. Recorded durably either way, so timing does not tell them apart.
pub(crate) fn not_found(note: AuditNote) -> Response {
    let mut r = error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such resource, or it is not available to you",
    );
    r.extensions_mut().insert(AuditNote {
        durable: true,
        ..note
    });
    r
}

/// The full router with its layers (see [`layers`] for what each does and
/// why in this order; the decision layer sits on the collection routes
/// themselves, in [`routes::api`]).
pub fn router(st: Arc<AppState>) -> Router {
    use axum::middleware::from_fn_with_state;
    use tower_http::timeout::TimeoutLayer;
    let timeout = st.config.request_timeout;
    let (routes, _) = routes::api().split_for_parts();
    routes
        .fallback(routes::fallback)
        .layer(from_fn_with_state(st.clone(), layers::authenticate))
        // For the decision layer, whose own state is its action.
        .layer(axum::Extension(st.clone()))
        .layer(from_fn_with_state(st.clone(), layers::audit))
        .layer(from_fn_with_state(st.clone(), layers::measure))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        // GET-only API: a request body is never needed.
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(st)
}

/// Keeps releases in step with the published zone: at once when any
/// process of the workspace announces an event through the ledger (a
/// pointer moved), and every `refresh_every` in case an announcement was
/// missed (the process that moved a pointer died before announcing it, or
/// the ledger's writer was changing hands).
pub fn spawn_refresh(st: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = Some(st.audit.ledger().events());
        loop {
            // A release whose projection is still being loaded is looked
            // for every second, so it is served soon after it lands.
            let every = if st.releases.pending() {
                Duration::from_secs(1).min(st.config.refresh_every)
            } else {
                st.config.refresh_every
            };
            match events.as_mut() {
                Some(rx) => tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    ev = rx.recv() => match ev {
                        Ok(ev) if !is_release_moved(&ev) => continue,
                        // Several events, one refresh.
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            while rx.try_recv().is_ok() {}
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => events = None,
                    },
                },
                None => tokio::time::sleep(every).await,
            }
            refresh_once(&st).await;
        }
    })
}

/// Whether an announced event says a release pointer moved. Only its type
/// is read: the refresh that follows reads and verifies the pointers
/// themselves, so a forged event can cost a refresh, never change what is
/// served.
fn is_release_moved(ev: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(ev)
        .ok()
        .is_some_and(|v| v["type"] == kfm_pipeline::records::RELEASE_MOVED)
}

/// Re-reads every release pointer once.
pub async fn refresh_once(st: &AppState) -> Vec<String> {
    let problems = st.releases.refresh(st.audit.ledger()).await;
    for p in &problems {
        // Problems name datasets and store keys, never data.
        tracing::warn!(problem = %p, "release not served");
    }
    st.metrics.releases.set(st.releases.all().len() as i64);
    st.metrics.ready.set(i64::from(st.ready()));
    if let Ok(mut n) = st.not_served.write() {
        n.clone_from(&problems);
    }
    problems
}

/// Limits that keep one client from taking the server down.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Most connections served at once; past it, new connections wait in
    /// the listen queue until one closes.
    pub max_connections: usize,
    /// Longest a connection may take to deliver a complete request head,
    /// counted from when it is accepted or its previous answer went out:
    /// it bounds slow header senders (slowloris) and idle keep-alive
    /// connections alike.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight (a long export)
    /// before it closes their connections.
    pub drain: Duration,
}

/// Descriptors kept out of the connection cap: the ledger (journal,
/// witness, a round of tile files), the store's reads, the policy bundle,
/// the listener and the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The connection cap: `configured` (0 = automatic), never above the
/// process's descriptor limit minus [`RESERVED_DESCRIPTORS`], never below 1.
/// Returns the cap and the descriptor limit it was derived from.
pub fn connection_cap(configured: usize) -> (usize, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    let room = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    let cap = match configured {
        0 => room,
        n => (n as u64).min(room),
    };
    (usize::try_from(cap).unwrap_or(usize::MAX), soft)
}

/// How serving ended.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// Every request in flight finished within the drain deadline.
    pub drained: bool,
    /// Connections closed at the deadline, their requests unfinished.
    pub cut: usize,
}

/// Serves until `shutdown` resolves, then drains requests in flight (at
/// most `limits.drain`; what is still running then is closed). Batched
/// audit records are the caller's to drain, with [`AuditSink::drain`].
pub async fn serve(
    st: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<Served> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let refresher = spawn_refresh(st.clone());
    let service = hyper_util::service::TowerToHyperService::new(router(st.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    st.metrics.connection_cap.set(limits.max_connections as i64);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        // Invariant: at most `max_connections` are open, so descriptors
        // stay for the ledger and the store whatever clients do.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors (something else took them), or a
                // connection reset before it was accepted: wait a little
                // rather than spin, and keep serving.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service.clone()));
        let metrics = st.metrics.clone();
        metrics.connections.inc();
        conns.spawn(async move {
            let _ = conn.await;
            metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    refresher.abort();
    let drained = tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_ok();
    let cut = usize::try_from(st.metrics.connections.get()).unwrap_or(0);
    // Invariant: shutdown is never held up by a client: what did not
    // finish within the drain deadline is closed.
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Ok(Served { drained, cut })
}

/// A body from bytes with a content type.
pub(crate) fn bytes_response(
    status: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}
