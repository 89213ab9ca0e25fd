//! Prometheus metrics. Every label is policy-safe by construction: route
//! templates (never the ids in a path), HTTP status, decision and action.
//! No dataset id, feature id, subject or coordinate is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppendLabels {
    pub mode: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub latency: Family<DurationLabels, Histogram>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub appends: Family<AppendLabels, Counter>,
    pub audit_pending: Gauge,
    pub loss_window_us: Gauge,
    pub ready: Gauge,
    pub releases: Gauge,
    pub connections: Gauge,
    pub connection_cap: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ])
        });
        let decisions = Family::<DecisionLabels, Counter>::default();
        let appends = Family::<AppendLabels, Counter>::default();
        let audit_pending = Gauge::default();
        let loss_window_us = Gauge::default();
        let ready = Gauge::default();
        let releases = Gauge::default();
        let connections = Gauge::default();
        let connection_cap = Gauge::default();
        registry.register(
            "kfm_http_connections",
            "Client connections open now",
            connections.clone(),
        );
        registry.register(
            "kfm_http_connection_limit",
            "Most client connections served at once (kept below the descriptor limit, with descriptors reserved for the ledger and the store)",
            connection_cap.clone(),
        );
        registry.register(
            "kfm_http_requests",
            "Requests answered, by route template and status",
            requests.clone(),
        );
        registry.register(
            "kfm_http_request_duration_seconds",
            "Time to answer, audit append included, by route template",
            latency.clone(),
        );
        registry.register(
            "kfm_policy_decisions",
            "Policy decisions taken by the enforcement point",
            decisions.clone(),
        );
        registry.register(
            "kfm_audit_appends",
            "Audit records appended to the ledger (durable: the answer waited)",
            appends.clone(),
        );
        registry.register(
            "kfm_audit_pending_records",
            "Batched audit records not yet durable",
            audit_pending.clone(),
        );
        registry.register(
            "kfm_audit_loss_window_microseconds",
            "Upper bound on how long a batched (public read) audit record waits for its group commit",
            loss_window_us.clone(),
        );
        registry.register(
            "kfm_ready",
            "1 when the pinned policy is loaded and the ledger is open and healthy",
            ready.clone(),
        );
        registry.register(
            "kfm_releases_served",
            "Published releases that verified and are being served",
            releases.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            decisions,
            appends,
            audit_pending,
            loss_window_us,
            ready,
            releases,
            connections,
            connection_cap,
        }
    }

    pub fn decision(&self, allow: bool, action: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: if allow { "allow" } else { "deny" },
                action,
            })
            .inc();
    }

    pub fn audit_append(&self, mode: &'static str, ok: bool) {
        self.appends
            .get_or_create(&AppendLabels {
                mode,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
