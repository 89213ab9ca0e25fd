//! `kfm drift watch`: the loop. Detects at a fixed interval of at most
//! five minutes, reconciles in delivery mode when asked, prints one JSON
//! line per run and serves Prometheus metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{by_severity, load, open_sink};
use crate::cli::DriftWatchArgs;
use crate::failure::Failure;

/// The longest interval allowed: git is reconciled at least this often.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabel {
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// The loop's metrics.
struct Metrics {
    registry: Registry,
    open: Family<SeverityLabel, Gauge>,
    found: Counter,
    fixed: Counter,
    runs: Family<ResultLabel, Counter>,
    last_success: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let open = Family::<SeverityLabel, Gauge>::default();
        let found = Counter::default();
        let fixed = Counter::default();
        let runs = Family::<ResultLabel, Counter>::default();
        let last_success = Gauge::default();
        registry.register(
            "kfm_drift_open",
            "Drift found by the last run, by severity",
            open.clone(),
        );
        registry.register(
            "kfm_drift_found",
            "Drifts found, summed over runs",
            found.clone(),
        );
        registry.register(
            "kfm_drift_fixed",
            "Drifts fixed by reconcile (each with a ledger receipt)",
            fixed.clone(),
        );
        registry.register(
            "kfm_drift_runs",
            "Runs, by result (clean, drift, error)",
            runs.clone(),
        );
        registry.register(
            "kfm_drift_last_success_timestamp_seconds",
            "Unix time of the last run that could evaluate every engine",
            last_success.clone(),
        );
        Self {
            registry,
            open,
            found,
            fixed,
            runs,
            last_success,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }
}

pub fn parse_interval(s: &str) -> Result<Duration, Failure> {
    let d = humantime::parse_duration(s).map_err(|e| {
        Failure::input(format!("--interval {s:?}: {e}")).hint("for example 30s or 5m")
    })?;
    if d > MAX_INTERVAL {
        return Err(Failure::input(format!(
            "--interval {s}: more than 5m is refused; drift must be looked for at least every five minutes"
        )));
    }
    if d < Duration::from_secs(1) {
        return Err(Failure::input(format!("--interval {s}: at least 1s")));
    }
    Ok(d)
}

pub async fn run(ws: Option<&Path>, a: &DriftWatchArgs) -> Result<u8, Failure> {
    let interval = parse_interval(&a.interval)?;
    // The first load checks the tree and the engines' references before
    // the loop starts; each run loads again, so a pulled commit is used.
    load(&a.target)?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = a.metrics {
        let m = metrics.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let m = m.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            m.encode(),
                        )
                    }
                }),
            )
            .route("/livez", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::input(format!("--metrics {addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "drift watch: the metrics server stopped");
            }
        });
    }
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    let mut n = 0u64;
    loop {
        n += 1;
        let started = Instant::now();
        let line = one_run(ws, a, &metrics).await;
        let mut line = line;
        line["run"] = serde_json::json!(n);
        line["at"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
        line["elapsed_ms"] = serde_json::json!(started.elapsed().as_millis() as u64);
        println!("{line}");
        if a.runs.is_some_and(|r| n >= r) {
            return Ok(0);
        }
        // The next run starts one interval after this one started.
        let wait = interval.saturating_sub(started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return Ok(0),
        }
    }
}

async fn one_run(ws: Option<&Path>, a: &DriftWatchArgs, m: &Metrics) -> serde_json::Value {
    let result = async {
        let l = load(&a.target)?;
        let mut report =
            kfm_drift::detect(&l.platform, &l.endpoints, &l.ignores, super::today()).await?;
        let commit = super::head(&a.target.repo);
        super::State::update(&l.state_path, &mut report, commit.as_deref());
        let mut fixed = 0usize;
        if a.reconcile && !report.is_clean() {
            let mode = kfm_infra::receipt::change_control(&a.target.repo, super::today());
            if mode.is_delivery() {
                let who = super::actor(a.actor.as_deref());
                let mut sink = open_sink(ws, &a.target, &mode, &who).await?;
                let r = kfm_drift::reconcile(&l.platform, &l.endpoints, &report, &mut sink).await;
                sink.ledger.close().await;
                fixed = r?.fixed.len();
            }
        }
        Ok::<_, Failure>((report, fixed))
    }
    .await;
    match result {
        Ok((report, fixed)) => {
            let sev = by_severity(&report);
            for s in ["critical", "high", "medium", "low"] {
                let count = sev
                    .iter()
                    .find(|(k, _)| super::render::severity(**k).eq_ignore_ascii_case(s))
                    .map_or(0, |(_, v)| *v);
                m.open
                    .get_or_create(&SeverityLabel { severity: s.into() })
                    .set(count as i64);
            }
            m.found.inc_by(report.drifts.len() as u64);
            m.fixed.inc_by(fixed as u64);
            let result = if report.is_clean() { "clean" } else { "drift" };
            m.runs
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc();
            m.last_success.set(chrono::Utc::now().timestamp());
            serde_json::json!({
                "result": result,
                "drifts": report.drifts.len(),
                "fixed": fixed,
                "found": report.drifts.iter().map(|d| format!("{} {}", d.resource, d.field)).collect::<Vec<_>>(),
            })
        }
        Err(f) => {
            m.runs
                .get_or_create(&ResultLabel {
                    result: "error".into(),
                })
                .inc();
            serde_json::json!({
                "result": "error",
                "exit": super::failure_code(&f),
                "error": f.message,
            })
        }
    }
}
