//! The platform's desired state in git: the JetStream streams, consumers
//! and key-value buckets, the PostgreSQL extensions, roles, schema grants
//! and row-level security, and the S3 bucket settings that `kfm drift`
//! compares with what runs.
//!
//! Files live under `infra/platform/`: one base (`kind: PlatformState`)
//! and, per environment, an overlay directory whose files
//! (`kind: PlatformOverlay`) are merged over it in name order. Merging is
//! by identity: a list item with the same `name` (or `bucket`) as one in
//! the base is merged field by field, a new one is added, and an item
//! with `ensure: absent` says explicitly that the resource must not exist
//! (the only way git ever asks for something to be removed). `${env}`
//! and `${ENV}` in strings are the environment's name, lower and upper
//! case.
//!
//! Parsing is strict: an unknown field, a wrong type or a missing required
//! setting stops the run with the file and line (fail closed). A setting
//! left out is not managed by git and never compared, except where
//! leaving it out would be unsafe: role attributes default to the least
//! privilege (`false`), and every bucket must state its versioning,
//! public-access block and encryption.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The `apiVersion` of every desired-state file.
pub const API_VERSION: &str = "kfm.dev/platform/v1";
/// The environments an overlay may be for.
pub const ENVIRONMENTS: [&str; 3] = ["dev", "stage", "prod"];

/// Why the desired state cannot be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}:{column}: {reason}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Whether a YAML text is a desired-state file (by its `apiVersion`).
pub fn is_platform_file(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with("apiVersion:") && l.contains(API_VERSION))
}

pub use model::*;

// ---------------------------------------------------------------------------
// Files as written (before merging).

#[derive(Deserialize)]
struct FileHead {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    env: Option<String>,
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// Where a platform tree's base and overlays are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub base: PathBuf,
    pub overlays: PathBuf,
}

impl Layout {
    /// `infra/platform` → `infra/platform/base`, `infra/platform/overlays`.
    pub fn new(root: &Path) -> Self {
        Self {
            base: root.join("base"),
            overlays: root.join("overlays"),
        }
    }

    pub fn overlay_dir(&self, env: &str) -> PathBuf {
        self.overlays.join(env)
    }
}

fn display(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, PlatformError> {
    let rd = std::fs::read_dir(dir).map_err(|e| PlatformError::Read {
        path: display(dir),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| PlatformError::Read {
            path: display(dir),
            reason: e.to_string(),
        })?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file() {
            out.push(p);
        }
    }
    // An overlay directory's platform.yaml comes first, then the rest
    // (incident adoptions) in name order, so that an adoption wins.
    out.sort_by_key(|p| {
        (
            p.file_name().is_none_or(|n| n != "platform.yaml"),
            p.clone(),
        )
    });
    Ok(out)
}

/// Reads one file: parses it, checks its head and, for a base, that it
/// resolves on its own. Returns the document with the head keys removed.
pub fn read_file(path: &Path) -> Result<(String, Value), PlatformError> {
    let shown = display(path);
    let text = std::fs::read_to_string(path).map_err(|e| PlatformError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse_text(&shown, &text)
}

/// A YAML error at its line and column, with `hint` after the parser's
/// own words.
pub(crate) fn yaml_error(shown: &str, e: &serde_yaml_ng::Error, hint: &str) -> PlatformError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    PlatformError::Parse {
        path: shown.to_owned(),
        line,
        column,
        reason: format!("{e}{hint}"),
    }
}

/// [`read_file`] on text already read (the gate reads every file once).
pub fn parse_text(shown: &str, text: &str) -> Result<(String, Value), PlatformError> {
    let parse_err = |e: serde_yaml_ng::Error| yaml_error(shown, &e, "");
    let head: FileHead = serde_yaml_ng::from_str(text).map_err(parse_err)?;
    if head.api_version != API_VERSION {
        return Err(PlatformError::Invalid {
            path: shown.to_owned(),
            reason: format!(
                "apiVersion is {:?}; expected {API_VERSION}",
                head.api_version
            ),
        });
    }
    let mut v: Value = serde_yaml_ng::from_str(text).map_err(parse_err)?;
    match head.kind.as_str() {
        "PlatformState" => {
            if head.env.is_some() {
                return Err(PlatformError::Invalid {
                    path: shown.to_owned(),
                    reason: "a PlatformState (the base) names no env; put per-environment settings in overlays/<env>/".into(),
                });
            }
        }
        "PlatformOverlay" => {
            let env = head.env.as_deref().unwrap_or("");
            if !ENVIRONMENTS.contains(&env) {
                return Err(PlatformError::Invalid {
                    path: shown.to_owned(),
                    reason: format!("env is {env:?}; a PlatformOverlay is for dev, stage or prod"),
                });
            }
        }
        other => {
            return Err(PlatformError::Invalid {
                path: shown.to_owned(),
                reason: format!("kind is {other:?}; expected PlatformState or PlatformOverlay"),
            });
        }
    }
    if let Value::Mapping(m) = &mut v {
        for k in ["apiVersion", "kind", "env"] {
            m.remove(k);
        }
    }
    // Every field is checked against the model now, with this file's line
    // numbers: an overlay is resolved as if it were a whole state.
    check_fields(shown, text, &v, head.kind == "PlatformOverlay")?;
    Ok((head.kind, v))
}

/// Checks a file's fields against the model (unknown fields, types). An
/// overlay may leave required settings to the base, so it is checked with
/// them filled in from a permissive template.
fn check_fields(shown: &str, text: &str, v: &Value, overlay: bool) -> Result<(), PlatformError> {
    let mut probe = v.clone();
    if let Value::Mapping(m) = &mut probe {
        m.insert("env".into(), "dev".into());
        if overlay {
            fill_required(&mut probe);
        }
    }
    serde_yaml_ng::from_value::<Platform>(probe)
        .map(|_| ())
        .map_err(|e| {
            // Values carry no positions: point at the first line naming the
            // offending field.
            let msg = e.to_string();
            let line = msg
                .split('`')
                .nth(1)
                .and_then(|field| {
                    text.lines().position(|l| {
                        l.trim_start()
                            .trim_start_matches("- ")
                            .starts_with(&format!("{field}:"))
                    })
                })
                .map(|i| i + 1)
                .unwrap_or(1);
            PlatformError::Parse {
                path: shown.to_owned(),
                line,
                column: 1,
                reason: msg,
            }
        })
}

/// Gives an overlay's partial items the required fields the base will
/// supply, so that only unknown fields and wrong types fail the check.
fn fill_required(v: &mut Value) {
    let Value::Mapping(m) = v else { return };
    if let Some(Value::Mapping(s3)) = m.get_mut("s3")
        && let Some(Value::Sequence(bs)) = s3.get_mut("buckets")
    {
        for b in bs {
            if let Value::Mapping(b) = b {
                let pab: Value = serde_yaml_ng::from_str(
                    "{block_public_acls: true, ignore_public_acls: true, block_public_policy: true, restrict_public_buckets: true}",
                )
                .unwrap_or(Value::Null);
                b.entry("versioning".into()).or_insert("Enabled".into());
                b.entry("public_access_block".into()).or_insert(pab);
                b.entry("encryption".into()).or_insert("AES256".into());
            }
        }
    }
    if let Some(Value::Mapping(pg)) = m.get_mut("postgres") {
        pg.entry("database".into()).or_insert("overlay".into());
        if let Some(Value::Sequence(ss)) = pg.get_mut("schemas") {
            for s in ss {
                if let Value::Mapping(s) = s
                    && let Some(Value::Mapping(t)) = s.get_mut("tables")
                {
                    t.entry("row_level_security".into()).or_insert(true.into());
                }
            }
        }
    }
}

/// Merges `over` into `base`: mappings key by key, lists of named items
/// by name (`name`, else `bucket`, with `stream` for consumers), anything
/// else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) if o.iter().all(|i| identity(i).is_some()) => {
            for item in o {
                let id = identity(&item);
                match b.iter_mut().find(|x| identity(x) == id) {
                    Some(x) => merge(x, item),
                    None => b.push(item),
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn identity(v: &Value) -> Option<String> {
    let m = v.as_mapping()?;
    let get = |k: &str| m.get(k).and_then(|x| x.as_str());
    let name = get("name").or_else(|| get("bucket"))?;
    Some(match get("stream") {
        Some(s) => format!("{s}/{name}"),
        None => name.to_owned(),
    })
}

fn substitute(v: &mut Value, env: &str) {
    match v {
        Value::String(s) if s.contains("${") => {
            *s = s
                .replace("${env}", env)
                .replace("${ENV}", &env.to_ascii_uppercase());
        }
        Value::Sequence(xs) => xs.iter_mut().for_each(|x| substitute(x, env)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, x)| substitute(x, env)),
        _ => {}
    }
}

/// Loads one environment's desired state from `root` (`infra/platform`):
/// the base merged with every file of `overlays/<env>/`, checked.
pub fn load(root: &Path, env: &str) -> Result<Platform, PlatformError> {
    if !ENVIRONMENTS.contains(&env) {
        return Err(PlatformError::Invalid {
            path: display(root),
            reason: format!("environment {env:?}: use dev, stage or prod"),
        });
    }
    let layout = Layout::new(root);
    let mut sources = Vec::new();
    let mut merged: Option<Value> = None;
    for f in yaml_files(&layout.base)? {
        let (kind, v) = read_file(&f)?;
        if kind != "PlatformState" {
            return Err(PlatformError::Invalid {
                path: display(&f),
                reason: format!("{kind} in base/: the base holds PlatformState files only"),
            });
        }
        sources.push(display(&f));
        // Names are made concrete before merging, so that an overlay can
        // name KFM_AUDIT_PROD where the base says KFM_AUDIT_${ENV}.
        let mut v = v;
        substitute(&mut v, env);
        match &mut merged {
            None => merged = Some(v),
            Some(m) => merge(m, v),
        }
    }
    let Some(mut merged) = merged else {
        return Err(PlatformError::Invalid {
            path: display(&layout.base),
            reason: "no PlatformState file here: the desired state needs a base".into(),
        });
    };
    let od = layout.overlay_dir(env);
    if od.is_dir() {
        for f in yaml_files(&od)? {
            let text = std::fs::read_to_string(&f).map_err(|e| PlatformError::Read {
                path: display(&f),
                reason: e.to_string(),
            })?;
            let (kind, mut v) = parse_text(&display(&f), &text)?;
            substitute(&mut v, env);
            let file_env: Option<String> = serde_yaml_ng::from_str::<FileHead>(&text)
                .ok()
                .and_then(|h| h.env);
            if kind != "PlatformOverlay" || file_env.as_deref() != Some(env) {
                return Err(PlatformError::Invalid {
                    path: display(&f),
                    reason: format!(
                        "overlays/{env}/ holds PlatformOverlay files with env: {env} only"
                    ),
                });
            }
            // Incidents accumulate across overlay files.
            let incidents = match &mut v {
                Value::Mapping(m) => m.remove("incidents"),
                _ => None,
            };
            merge(&mut merged, v);
            if let (Some(Value::Sequence(new)), Value::Mapping(m)) = (incidents, &mut merged) {
                match m.get_mut("incidents") {
                    Some(Value::Sequence(old)) => old.extend(new),
                    _ => {
                        m.insert("incidents".into(), Value::Sequence(new));
                    }
                }
            }
            sources.push(display(&f));
        }
    }
    if let Value::Mapping(m) = &mut merged {
        m.insert("env".into(), env.into());
        m.insert(
            "sources".into(),
            Value::Sequence(sources.iter().map(|s| Value::from(s.as_str())).collect()),
        );
    }
    let shown = sources.join(" + ");
    let p: Platform = serde_yaml_ng::from_value(merged).map_err(|e| PlatformError::Invalid {
        path: shown.clone(),
        reason: format!("environment {env}: {e}"),
    })?;
    validate(&p).map_err(|reason| PlatformError::Invalid {
        path: shown,
        reason: format!("environment {env}: {reason}"),
    })?;
    Ok(p)
}

/// Parses a duration as written in the desired state (`10m`, `30d`, `0s`).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write 10m, 2h, 30d or 0s"))
}

/// Rules the types cannot say.
fn validate(p: &Platform) -> Result<(), String> {
    // Invariant: credentials are references, never in the desired state.
    if let Some(pg) = &p.engines.postgres {
        let d = pg.dsn.to_ascii_lowercase();
        let url_password = d
            .split_once("://")
            .and_then(|(_, rest)| rest.split('@').next().filter(|_| rest.contains('@')))
            .is_some_and(|userinfo| userinfo.contains(':'));
        if d.contains("password") || url_password {
            return Err(
                "engines.postgres.dsn holds a password: name the environment variable that holds it in password_env instead".into(),
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &p.jetstream.streams {
        if !seen.insert(format!("stream/{}", s.name)) {
            return Err(format!("stream {} is declared twice", s.name));
        }
        if s.ensure.is_present() && s.subjects.is_empty() {
            return Err(format!("stream {}: subjects is required", s.name));
        }
        if s.replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(format!("stream {}: replicas must be 1 to 5", s.name));
        }
        for d in [&s.max_age, &s.duplicate_window].into_iter().flatten() {
            duration(d).map_err(|e| format!("stream {}: {e}", s.name))?;
        }
    }
    for c in &p.jetstream.consumers {
        if !p
            .jetstream
            .streams
            .iter()
            .any(|s| s.name == c.stream && s.ensure.is_present())
        {
            return Err(format!(
                "consumer {}: its stream {} is not declared (present)",
                c.name, c.stream
            ));
        }
        if let Some(d) = &c.ack_wait {
            duration(d).map_err(|e| format!("consumer {}: {e}", c.name))?;
        }
    }
    for k in &p.jetstream.kv {
        if let Some(d) = &k.ttl {
            duration(d).map_err(|e| format!("kv bucket {}: {e}", k.bucket))?;
        }
        if k.history.is_some_and(|h| !(1..=64).contains(&h)) {
            return Err(format!("kv bucket {}: history must be 1 to 64", k.bucket));
        }
    }
    if let Some(pg) = &p.postgres {
        let roles: std::collections::BTreeSet<&str> = pg
            .roles
            .iter()
            .filter(|r| r.ensure.is_present())
            .map(|r| r.name.as_str())
            .collect();
        let known = |r: &str| r == "PUBLIC" || roles.contains(r);
        for r in &pg.roles {
            if !ident(&r.name) {
                return Err(format!(
                    "role {:?}: not a plain identifier (a-z, 0-9, _)",
                    r.name
                ));
            }
            for m in &r.member_of {
                if !known(m) {
                    return Err(format!(
                        "role {}: member_of names {m}, which is not declared",
                        r.name
                    ));
                }
            }
        }
        for e in &pg.extensions {
            if !ident(&e.name) {
                return Err(format!("extension {:?}: not a plain identifier", e.name));
            }
        }
        for s in &pg.schemas {
            if !ident(&s.name) {
                return Err(format!("schema {:?}: not a plain identifier", s.name));
            }
            let granted = s
                .usage
                .iter()
                .chain(s.tables.iter().flat_map(|t| t.select.iter()));
            for g in granted.chain(s.owner.iter()) {
                if !known(g) {
                    return Err(format!(
                        "schema {}: names role {g}, which is not declared",
                        s.name
                    ));
                }
            }
            if s.precise {
                let public: Vec<&str> = pg
                    .roles
                    .iter()
                    .filter(|r| r.public)
                    .map(|r| r.name.as_str())
                    .chain(["PUBLIC"])
                    .collect();
                let opened = s
                    .usage
                    .iter()
                    .chain(s.tables.iter().flat_map(|t| t.select.iter()))
                    .find(|g| public.contains(&g.as_str()));
                if let Some(g) = opened {
                    return Err(format!(
                        "schema {} holds precise coordinates and git grants it to the public role {g}: refused",
                        s.name
                    ));
                }
                if s.tables.as_ref().is_none_or(|t| !t.row_level_security) {
                    return Err(format!(
                        "schema {} holds precise coordinates: its tables need row_level_security: true",
                        s.name
                    ));
                }
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for b in &p.s3.buckets {
        let ok = (3..=63).contains(&b.name.len())
            && b.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && b.name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "bucket {:?}: not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')",
                b.name
            ));
        }
        if !names.insert(&b.name) {
            return Err(format!("bucket {} is declared twice", b.name));
        }
        if b.object_lock.is_some() && b.versioning != Versioning::Enabled {
            return Err(format!(
                "bucket {}: object lock needs versioning: Enabled",
                b.name
            ));
        }
        if b.object_lock.is_some_and(|l| l.days == 0) {
            return Err(format!(
                "bucket {}: object_lock.days must be at least 1",
                b.name
            ));
        }
    }
    Ok(())
}

/// A plain lower-case SQL identifier: what KFM's names are, and all that
/// is ever put into a statement unquoted.
pub fn ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks every environment that has an overlay (and the base alone):
/// what `kfm infra check` runs over an `infra/platform` tree.
pub fn check_tree(root: &Path) -> Result<Vec<String>, PlatformError> {
    let layout = Layout::new(root);
    let mut envs = Vec::new();
    for env in ENVIRONMENTS {
        if layout.overlay_dir(env).is_dir() {
            load(root, env)?;
            envs.push(env.to_owned());
        }
    }
    if envs.is_empty() {
        load(root, "dev")?;
        envs.push("dev".into());
    }
    Ok(envs)
}

pub mod ignore;
mod model;

#[cfg(test)]
mod tests;
