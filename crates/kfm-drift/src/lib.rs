//! Drift of the live platform: what runs, read through each engine's own
//! API, compared with the desired state in git ([`kfm_infra::platform`]).
//!
//! - [`detect`] is read-only, always: it connects to JetStream, PostgreSQL
//!   and S3, reads their state and returns a [`Report`] of every
//!   difference, the worst first. An engine it cannot reach or read makes
//!   the whole run an error ([`DriftError`]): an unreachable engine is
//!   never "no drift".
//! - [`reconcile`] applies, for each drifted resource, the smallest change
//!   that restores git's state and reads the resource again, returning a
//!   [`Fixed`] (before and after digests) for the caller to receipt. It
//!   never removes a resource git does not name (that is reported only),
//!   and removes one only where git says `ensure: absent`.
//!
//! This crate never decides whether it may change anything (the caller
//! checks delivery mode first) and never holds a signing key.
//!
//! Comparison semantics: a resource is reduced to the settings git
//! states, as plain JSON ([`Want::fields`]); the live side is reduced the
//! same way. Settings git leaves out are never compared, which is how
//! server-filled defaults (a stream's `max_consumers`, a role's
//! connection limit, the owner's own privileges) stay out of the report.

pub mod jetstream;
pub mod kube;
pub mod postgres;
pub mod s3;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use kfm_infra::platform::{Ensure, Platform, ignore::Ignore};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// How long an engine may take to answer before it counts as unreachable.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a run could not be evaluated (exit 2): nothing is reported clean.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("{engine}: cannot evaluate: {reason}")]
    Unreachable { engine: Engine, reason: String },
    #[error("{engine}: {what}: {reason}")]
    Engine {
        engine: Engine,
        what: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    /// A fix was made but could not be recorded.
    #[error("recording a fix: {0}")]
    Record(String),
}

impl DriftError {
    pub(crate) fn unreachable(engine: Engine, reason: impl std::fmt::Display) -> Self {
        DriftError::Unreachable {
            engine,
            reason: reason.to_string(),
        }
    }
    pub(crate) fn engine(engine: Engine, what: &str, reason: impl std::fmt::Display) -> Self {
        DriftError::Engine {
            engine,
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Jetstream,
    Postgres,
    S3,
    Kubernetes,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Jetstream => "jetstream",
            Engine::Postgres => "postgres",
            Engine::S3 => "s3",
            Engine::Kubernetes => "kubernetes",
        })
    }
}

/// How bad a drift is. Ordered worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Precise coordinates opened to the public, a bucket made public, a
    /// role that bypasses row-level security: fix now.
    Critical,
    /// A protection weakened or a declared resource missing.
    High,
    /// A setting differs.
    Medium,
    /// Something git does not name.
    Low,
}

/// Grades one differing field: `(field, desired, live)`. A closure, so
/// that it can know what the field is about (a precise schema, the
/// public role).
#[derive(Clone)]
pub struct Grade(pub std::sync::Arc<GradeFn>);

/// `(field, desired, live) -> severity`.
pub type GradeFn = dyn Fn(&str, &Value, &Value) -> Severity + Send + Sync;

impl Grade {
    pub fn new(f: impl Fn(&str, &Value, &Value) -> Severity + Send + Sync + 'static) -> Self {
        Grade(std::sync::Arc::new(f))
    }
    pub fn of(&self, field: &str, desired: &Value, live: &Value) -> Severity {
        (self.0)(field, desired, live)
    }
}

impl std::fmt::Debug for Grade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grade")
    }
}

/// One resource as git wants it, reduced to the settings git states.
#[derive(Debug, Clone)]
pub struct Want {
    pub engine: Engine,
    /// `stream/KFM_AUDIT_DEV`, `table/kfm_data.t`, `bucket/kfm-dev-raw`.
    pub resource: String,
    pub ensure: Ensure,
    pub fields: Map<String, Value>,
    /// The files that declare it.
    pub source: String,
    pub grade: Grade,
}

/// What one engine showed: git's wants (some, like tables, found live and
/// judged by rule) and the live state of each resource, by name.
#[derive(Debug, Default)]
pub struct Observed {
    pub wants: Vec<Want>,
    pub live: BTreeMap<String, Map<String, Value>>,
    /// Live resources under an owned prefix that git does not name.
    pub unmanaged: Vec<String>,
    /// Differences an engine's own tool found (Kubernetes: the server-side
    /// dry run), added as they are.
    pub drifts: Vec<Drift>,
}

/// One difference.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub severity: Severity,
    pub engine: Engine,
    pub resource: String,
    /// The setting, or `exists` (missing or present against git) or
    /// `unmanaged` (not in git).
    pub field: String,
    pub desired: Value,
    pub live: Value,
    pub message: String,
    /// Where git states it (empty for an unmanaged resource).
    pub source: String,
    /// Whether `reconcile` would change it (unmanaged resources: never).
    pub fixable: bool,
    /// When this drift was first seen, if the caller keeps a record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// The ignore entry that excuses it (then it is not a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<IgnoredBy>,
}

impl Drift {
    /// A stable key for "since when" bookkeeping.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.engine, self.resource, self.field)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IgnoredBy {
    pub owner: String,
    pub reason: String,
    pub expires: NaiveDate,
    pub line: usize,
}

/// A run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub env: String,
    /// Resources compared, per engine.
    pub compared: BTreeMap<Engine, usize>,
    /// Failing drifts, worst first.
    pub drifts: Vec<Drift>,
    /// Drifts an ignore entry excuses.
    pub ignored: Vec<Drift>,
    pub elapsed_ms: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.drifts.is_empty()
    }
}

/// Where the engines are, resolved (credentials read from the environment
/// variables the desired state names).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub nats: Option<jetstream::Conn>,
    pub postgres: Option<postgres::Conn>,
    pub s3: Option<s3::Conn>,
    pub kubernetes: Option<kube::Conn>,
}

/// Overrides of the engines' addresses (command-line flags; tests).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub nats: Option<String>,
    pub postgres: Option<String>,
    pub s3: Option<String>,
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The repository root the Kubernetes overlay path is relative to.
    pub repo: std::path::PathBuf,
}

fn secret(var: &str, what: &str) -> Result<String, DriftError> {
    std::env::var(var).map_err(|_| {
        DriftError::Config(format!(
            "{what}: the environment variable {var} (named in the desired state's engines) is not set"
        ))
    })
}

impl Endpoints {
    /// Resolves each engine the desired state has resources for. An
    /// engine with resources but no address, or a credential variable that
    /// is not set, cannot be evaluated.
    pub fn resolve(p: &Platform, o: &Overrides) -> Result<Self, DriftError> {
        let mut e = Endpoints::default();
        let js = &p.jetstream;
        if !(js.streams.is_empty() && js.kv.is_empty() && js.consumers.is_empty()) {
            let declared = p.engines.nats.as_ref();
            let url = o
                .nats
                .clone()
                .or_else(|| declared.map(|n| n.url.clone()))
                .ok_or_else(|| DriftError::Config("jetstream: no engines.nats.url".into()))?;
            let creds = match declared.and_then(|n| n.creds_env.as_deref()) {
                Some(v) if o.nats.is_none() => Some(secret(v, "jetstream")?.into()),
                _ => None,
            };
            e.nats = Some(jetstream::Conn { url, creds });
        }
        if let Some(pg) = &p.postgres {
            let declared = p.engines.postgres.as_ref();
            let dsn = o
                .postgres
                .clone()
                .or_else(|| declared.map(|d| d.dsn.clone()))
                .ok_or_else(|| DriftError::Config("postgres: no engines.postgres.dsn".into()))?;
            let password = match declared.and_then(|d| d.password_env.as_deref()) {
                Some(v) if o.postgres.is_none() => Some(secret(v, "postgres")?),
                _ => None,
            };
            e.postgres = Some(postgres::Conn {
                dsn,
                password,
                database: pg.database.clone(),
            });
        }
        if !p.s3.buckets.is_empty() {
            let declared = p
                .engines
                .s3
                .as_ref()
                .ok_or_else(|| DriftError::Config("s3: no engines.s3".into()))?;
            e.s3 = Some(s3::Conn {
                endpoint: o.s3.clone().unwrap_or_else(|| declared.endpoint.clone()),
                region: declared.region.clone(),
                access_key: secret(&declared.access_key_env, "s3")?,
                secret_key: secret(&declared.secret_key_env, "s3")?,
            });
        }
        if let Some(k) = &p.engines.kubernetes {
            let kubeconfig = match &o.kubeconfig {
                Some(k) => k.clone(),
                None => secret(&k.kubeconfig_env, "kubernetes")?.into(),
            };
            e.kubernetes = Some(kube::Conn {
                kubeconfig,
                context: k.context.clone(),
                overlay: o.repo.join(&k.overlay),
                kubectl: "kubectl".into(),
            });
        }
        Ok(e)
    }
}

/// Reads every engine at once. The first engine that cannot be read
/// fails the run.
pub async fn observe(
    p: &Platform,
    e: &Endpoints,
) -> Result<BTreeMap<Engine, Observed>, DriftError> {
    let (a, b, c, d) = tokio::join!(
        async {
            match &e.nats {
                Some(c) => jetstream::observe(p, c).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &e.postgres {
                Some(c) => postgres::observe(p, c).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &e.s3 {
                Some(c) => s3::observe(p, c).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &e.kubernetes {
                Some(c) => kube::observe(p, c).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let mut out = BTreeMap::new();
    for (engine, r) in [
        (Engine::Jetstream, a),
        (Engine::Postgres, b),
        (Engine::S3, c),
        (Engine::Kubernetes, d),
    ] {
        if let Some(o) = r? {
            out.insert(engine, o);
        }
    }
    Ok(out)
}

/// The differences between one want and what runs.
pub fn compare(w: &Want, live: Option<&Map<String, Value>>) -> Vec<Drift> {
    let drift = |severity, field: &str, desired: Value, live: Value, message: String| Drift {
        severity,
        engine: w.engine,
        resource: w.resource.clone(),
        field: field.to_owned(),
        desired,
        live,
        message,
        source: w.source.clone(),
        // Kubernetes objects are the GitOps controller's to apply.
        fixable: w.engine != Engine::Kubernetes,
        since: None,
        ignored: None,
    };
    match (w.ensure, live) {
        (Ensure::Absent, None) => Vec::new(),
        (Ensure::Absent, Some(_)) => vec![drift(
            Severity::High,
            "exists",
            Value::Bool(false),
            Value::Bool(true),
            format!("{} exists; git says ensure: absent", w.resource),
        )],
        (Ensure::Present, None) => vec![drift(
            Severity::High,
            "exists",
            Value::Bool(true),
            Value::Bool(false),
            format!("{} does not exist", w.resource),
        )],
        (Ensure::Present, Some(l)) => w
            .fields
            .iter()
            .filter_map(|(k, want)| {
                let got = l.get(k).cloned().unwrap_or(Value::Null);
                (got != *want).then(|| {
                    drift(
                        w.grade.of(k, want, &got),
                        k,
                        want.clone(),
                        got.clone(),
                        format!("{} {k} is {got}; git says {want}", w.resource),
                    )
                })
            })
            .collect(),
    }
}

/// Compares everything observed, applies the ignore entries and sorts the
/// result worst first.
pub fn diff(
    env: &str,
    observed: &BTreeMap<Engine, Observed>,
    ignores: &[Ignore],
    today: NaiveDate,
    started: Instant,
) -> Report {
    let mut drifts = Vec::new();
    let mut compared = BTreeMap::new();
    for (engine, o) in observed {
        compared.insert(*engine, o.wants.len());
        for w in &o.wants {
            drifts.extend(compare(w, o.live.get(&w.resource)));
        }
        drifts.extend(o.drifts.iter().cloned());
        for u in &o.unmanaged {
            drifts.push(Drift {
                severity: Severity::Low,
                engine: *engine,
                resource: u.clone(),
                field: "unmanaged".into(),
                desired: Value::Null,
                live: Value::Bool(true),
                message: format!(
                    "{u} exists under a prefix this state owns but git does not name it: add it to infra/platform (kfm drift adopt) or declare it ensure: absent; reconcile never removes it on its own"
                ),
                source: String::new(),
                fixable: false,
                since: None,
                ignored: None,
            });
        }
    }
    let (mut ignored, mut failing): (Vec<Drift>, Vec<Drift>) = drifts.into_iter().partition(|d| {
        // Invariant: a critical drift (precise data opened to the
        // public) is never excused by an ignore entry.
        d.severity != Severity::Critical
            && ignores
                .iter()
                .any(|i| i.covers(env, &d.resource, &d.field, today))
    });
    for d in &mut ignored {
        if let Some(i) = ignores
            .iter()
            .find(|i| i.covers(env, &d.resource, &d.field, today))
        {
            d.ignored = Some(IgnoredBy {
                owner: i.owner.clone(),
                reason: i.reason.clone(),
                expires: i.expires,
                line: i.line,
            });
        }
    }
    let order = |a: &Drift, b: &Drift| {
        (a.severity, a.engine, &a.resource, &a.field).cmp(&(
            b.severity,
            b.engine,
            &b.resource,
            &b.field,
        ))
    };
    failing.sort_by(order);
    ignored.sort_by(order);
    Report {
        env: env.to_owned(),
        compared,
        drifts: failing,
        ignored,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// `kfm drift detect`'s work: observe, compare, sort. Read-only.
pub async fn detect(
    p: &Platform,
    e: &Endpoints,
    ignores: &[Ignore],
    today: NaiveDate,
) -> Result<Report, DriftError> {
    let started = Instant::now();
    let observed = observe(p, e).await?;
    Ok(diff(&p.env, &observed, ignores, today, started))
}

/// The SHA-256 of a resource's state as canonical JSON (`absent` hashes
/// the JSON `null`): what a drift-fix receipt records before and after.
pub fn digest(state: Option<&Map<String, Value>>) -> Result<String, DriftError> {
    let v = state
        .map(|m| Value::Object(m.clone()))
        .unwrap_or(Value::Null);
    let bytes = serde_json_canonicalizer::to_vec(&v)
        .map_err(|e| DriftError::Config(format!("cannot canonicalise a resource's state: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
}

/// One resource restored.
#[derive(Debug, Clone, Serialize)]
pub struct Fixed {
    pub engine: Engine,
    pub resource: String,
    /// The fields that differed.
    pub fields: Vec<String>,
    /// What was done, in the engine's own terms (SQL, API calls).
    pub actions: Vec<String>,
    pub before: String,
    pub after: String,
    pub desired: String,
    /// The state after, as read back (the receipt's `after` digest is of this).
    pub after_state: Option<Map<String, Value>>,
}

/// What a reconcile run did, and what it left.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciled {
    pub fixed: Vec<Fixed>,
    /// Drifts it will not change (unmanaged resources, ignored ones).
    pub left: Vec<Drift>,
}

/// Where each fix is recorded the moment it is made (the CLI: a signed
/// receipt appended to the ledger).
pub trait FixSink {
    fn record(&mut self, f: &Fixed) -> impl std::future::Future<Output = Result<(), DriftError>>;
}

/// Restores every fixable drift of `report` (drifts an ignore entry
/// excuses are left alone), one resource at a time, and reads each back.
/// A fix that fails stops the run with the error; fixes already made
/// stand (and were given to `sink`, so each is receipted the moment it
/// is made).
pub async fn reconcile<S: FixSink>(
    p: &Platform,
    e: &Endpoints,
    report: &Report,
    sink: &mut S,
) -> Result<Reconciled, DriftError> {
    let observed = observe(p, e).await?;
    let mut by_resource: BTreeMap<(Engine, String), Vec<&Drift>> = BTreeMap::new();
    let mut left = Vec::new();
    for d in &report.drifts {
        if d.fixable {
            by_resource
                .entry((d.engine, d.resource.clone()))
                .or_default()
                .push(d);
        } else {
            left.push(d.clone());
        }
    }
    left.extend(report.ignored.iter().cloned());
    let mut fixed = Vec::new();
    // What others depend on first (a role before the schema it owns, a
    // stream before its consumer), then worst first: the report is sorted.
    let mut order: Vec<(Engine, String)> = Vec::new();
    for d in &report.drifts {
        let k = (d.engine, d.resource.clone());
        if by_resource.contains_key(&k) && !order.contains(&k) {
            order.push(k);
        }
    }
    order.sort_by_key(|(_, r)| dependency_rank(r));
    for key in order {
        let (engine, resource) = &key;
        let Some(o) = observed.get(engine) else {
            continue;
        };
        let Some(w) = o.wants.iter().find(|w| &w.resource == resource) else {
            continue;
        };
        let before = o.live.get(resource);
        // The live state may have moved since the report: compare again.
        if compare(w, before).is_empty() {
            continue;
        }
        let missing = || DriftError::Config(format!("{engine}: no connection"));
        let actions = match engine {
            Engine::Jetstream => {
                jetstream::fix(p, e.nats.as_ref().ok_or_else(missing)?, w, before).await?
            }
            Engine::Postgres => {
                postgres::fix(p, e.postgres.as_ref().ok_or_else(missing)?, w, before).await?
            }
            Engine::S3 => s3::fix(p, e.s3.as_ref().ok_or_else(missing)?, w, before).await?,
            // Never fixable (see `compare`): Flux or Argo CD apply objects.
            Engine::Kubernetes => continue,
        };
        let after = read_back(p, e, *engine, resource).await?;
        let remaining = compare(w, after.as_ref());
        if !remaining.is_empty() {
            return Err(DriftError::engine(
                *engine,
                resource,
                format!(
                    "still differs after the fix ({}): the engine did not take the change",
                    remaining
                        .iter()
                        .map(|d| d.field.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let f = Fixed {
            engine: *engine,
            resource: resource.clone(),
            fields: by_resource[&key].iter().map(|d| d.field.clone()).collect(),
            actions,
            before: digest(before)?,
            after: digest(after.as_ref())?,
            desired: digest(Some(&w.fields))?,
            after_state: after,
        };
        sink.record(&f).await?;
        fixed.push(f);
    }
    Ok(Reconciled { fixed, left })
}

/// One resource's live state, read again after its fix (only that
/// resource where the engine allows; PostgreSQL's catalogs are read in a
/// fixed handful of queries whatever their size).
async fn read_back(
    p: &Platform,
    e: &Endpoints,
    engine: Engine,
    resource: &str,
) -> Result<Option<Map<String, Value>>, DriftError> {
    let missing = || DriftError::Config(format!("{engine}: no connection"));
    match engine {
        Engine::Jetstream => {
            jetstream::read_one(e.nats.as_ref().ok_or_else(missing)?, resource).await
        }
        Engine::Postgres => {
            let c = e.postgres.as_ref().ok_or_else(missing)?;
            Ok(postgres::observe(p, c).await?.live.remove(resource))
        }
        Engine::S3 => {
            let c = e.s3.as_ref().ok_or_else(missing)?;
            let name = resource.strip_prefix("bucket/").unwrap_or(resource);
            s3::Client::new(c)?.settings(name).await
        }
        Engine::Kubernetes => Err(DriftError::Config(format!(
            "{resource}: Kubernetes objects are applied by the GitOps controller"
        ))),
    }
}

/// Creation order of resource kinds: what a kind depends on comes first.
fn dependency_rank(resource: &str) -> u8 {
    match resource.split('/').next() {
        Some("extension" | "role" | "stream" | "kv" | "bucket") => 0,
        Some("schema" | "consumer") => 1,
        _ => 2,
    }
}

/// Reads a JSON object's field as a string list, sorted (set semantics).
pub(crate) fn sorted(v: impl IntoIterator<Item = String>) -> Value {
    let mut xs: Vec<String> = v.into_iter().collect();
    xs.sort();
    xs.dedup();
    Value::Array(xs.into_iter().map(Value::String).collect())
}

/// Everything that differs is of medium severity.
pub(crate) fn medium() -> Grade {
    Grade::new(|_, _, _| Severity::Medium)
}

/// The join of a desired state's source files, for a drift's `source`.
pub(crate) fn sources(p: &Platform) -> String {
    p.sources.join(" + ")
}
