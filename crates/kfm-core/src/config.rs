//! Workspace configuration: `kfm.toml` plus `KFM_<SECTION>_<KEY>` overrides.
//!
//! Secrets never live in this file. The signing key is a *reference*
//! (`env:NAME` or `file:PATH`); object-store credentials come from the
//! standard AWS environment variables. A literal secret is refused with an
//! error that names the key, because a config file is committed, copied and
//! pasted far more often than anyone remembers.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::pins::{EnvironmentPins, PolicyPin};
pub use crate::secret::SecretRef;
use crate::secret::check_no_literal_secrets;

pub use crate::environment::{Environment, StoreUrl};

/// The file as written (every field optional, so defaults fill the gaps).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    workspace: RawWorkspace,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    work: RawWork,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    postgres: RawPostgres,
    #[serde(default)]
    serve: RawServe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    password: Option<String>,
    api_password: Option<String>,
    api_precise_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    backend: Option<String>,
    basemap: Option<String>,
}

/// Where `kfm serve` reads features from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeBackend {
    /// Each published version's artifacts, held in memory (the default:
    /// no service needed).
    Memory,
    /// The projections in PostgreSQL/PostGIS (`[postgres] url`): memory
    /// does not grow with what is published.
    Postgis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    url: Option<String>,
    credentials: Option<String>,
    max_in_flight: Option<u64>,
    replicas: Option<u64>,
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWork {
    keep_hours: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    environment: Option<String>,
}
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    origin: Option<String>,
    batch_max: Option<u64>,
    max_wait_us: Option<u64>,
    witness: Option<String>,
    give_up_after_s: Option<u64>,
    tile_interval_ms: Option<u64>,
    reach_writer_s: Option<u64>,
}
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    key: Option<String>,
}
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    bundle: Option<String>,
    budget_ms: Option<u64>,
}
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_connections: Option<u64>,
    header_timeout_s: Option<u64>,
    request_timeout_s: Option<u64>,
    drain_s: Option<u64>,
}

/// The effective configuration of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub environment: Environment,
    pub store_url: StoreUrl,
    /// Ledger origin name (the first line of every signed checkpoint).
    pub ledger_origin: String,
    /// Most entries the ledger commits in one group-commit batch.
    pub ledger_batch_max: usize,
    /// Longest a batch waits for more entries once it has one.
    pub ledger_max_wait: std::time::Duration,
    /// Where writers keep the newest checkpoint they acknowledged, outside
    /// the store (relative paths: to the workspace).
    pub ledger_witness: PathBuf,
    /// How long the ledger writer retries failing writes before giving up.
    pub ledger_give_up_after: std::time::Duration,
    /// How long a process waits to reach the workspace's ledger writer
    /// (another process), or to become it, before its command fails.
    pub ledger_reach_writer: std::time::Duration,
    /// How long committed entries wait in the journal before a round of
    /// tiles writes them to the audit zone (directory stores).
    pub ledger_tile_interval: std::time::Duration,
    pub signing_key: Option<SecretRef>,
    /// Policy bundle directory, relative to the workspace.
    pub policy_bundle: PathBuf,
    /// Longest one policy evaluation may run; past it the decision is a deny.
    pub policy_budget: std::time::Duration,
    pub listen: SocketAddr,
    /// Most client connections served at once (0: as many as the
    /// descriptor limit allows, less those reserved for the ledger).
    pub server_max_connections: usize,
    /// Longest a connection may take to deliver a request head (from its
    /// accept or its previous answer): slow and idle clients are closed.
    pub server_header_timeout: std::time::Duration,
    /// Longest a handler may take to produce its answer (503 after).
    pub server_request_timeout: std::time::Duration,
    /// How long shutdown waits for requests in flight before closing them.
    pub server_drain: std::time::Duration,
    /// How long a run's scratch under work/ is kept before a later run of
    /// its dataset removes it.
    pub work_keep: std::time::Duration,
    /// The event backbone (NATS JetStream); `None`: the embedded default,
    /// where the workspace's own writer process writes the ledger.
    pub events: Option<EventsConfig>,
    /// Where the projections live (PostgreSQL with PostGIS); `None`: no
    /// projection is configured.
    pub postgres: Option<PostgresConfig>,
    /// Where `kfm serve` reads features from.
    pub serve_backend: ServeBackend,
    /// The collection the HTML views' maps draw beneath the data (a KFM
    /// layer, governed like any other; no outside basemap is ever
    /// fetched). `None`: maps without a base layer.
    pub serve_basemap: Option<String>,
}

/// The PostgreSQL that holds KFM's projections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password.
    pub url: String,
    /// The password, by reference; else PostgreSQL's own `PGPASSWORD`.
    pub password: Option<SecretRef>,
    /// The passwords of KFM's two API roles (`kfm_api`, `kfm_api_precise`)
    /// that `kfm serve` logs in as, by reference; none with trust or peer
    /// authentication.
    pub api_password: Option<SecretRef>,
    pub api_precise_password: Option<SecretRef>,
}

/// Where every ledger entry is published when the platform runs
/// distributed, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// `nats://host:port[,nats://…]` (or `tls://`), without credentials.
    pub url: String,
    /// A NATS credentials file (`.creds`) or an nkey seed, by reference.
    pub credentials: Option<SecretRef>,
    /// Most publishes awaiting their acknowledgement at once; more wait
    /// (back-pressure rather than unbounded memory).
    pub max_in_flight: usize,
    /// Replicas of every stream and bucket (3 on a 3-node cluster; stage
    /// and prod refuse fewer, see `kfm events check`).
    pub replicas: usize,
    /// Namespaces every stream, subject and bucket name (several platforms,
    /// or test runs, sharing one NATS account); empty by default.
    pub prefix: String,
}

/// A configuration that could not be accepted. `line` is 0 when the value
/// came from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}{}: {key}: {message}", if *.line > 0 { format!(":{}", .line) } else { String::new() })]
pub struct ConfigError {
    /// The file name, or the environment variable the value came from.
    pub source_name: String,
    pub line: usize,
    /// Dotted key, for example `store.url`.
    pub key: String,
    pub message: String,
}

/// The keys of kfm.toml with their environment variable names, used by the
/// CLI to document overrides.
pub const ENV_KEYS: [(&str, &str); 29] = [
    ("workspace.environment", "KFM_WORKSPACE_ENVIRONMENT"),
    ("store.url", "KFM_STORE_URL"),
    ("ledger.origin", "KFM_LEDGER_ORIGIN"),
    ("ledger.batch_max", "KFM_LEDGER_BATCH_MAX"),
    ("ledger.max_wait_us", "KFM_LEDGER_MAX_WAIT_US"),
    ("ledger.witness", "KFM_LEDGER_WITNESS"),
    ("ledger.give_up_after_s", "KFM_LEDGER_GIVE_UP_AFTER_S"),
    ("ledger.tile_interval_ms", "KFM_LEDGER_TILE_INTERVAL_MS"),
    ("ledger.reach_writer_s", "KFM_LEDGER_REACH_WRITER_S"),
    ("signing.key", "KFM_SIGNING_KEY"),
    ("policy.bundle", "KFM_POLICY_BUNDLE"),
    ("policy.budget_ms", "KFM_POLICY_BUDGET_MS"),
    ("server.listen", "KFM_SERVER_LISTEN"),
    ("server.max_connections", "KFM_SERVER_MAX_CONNECTIONS"),
    ("server.header_timeout_s", "KFM_SERVER_HEADER_TIMEOUT_S"),
    ("server.request_timeout_s", "KFM_SERVER_REQUEST_TIMEOUT_S"),
    ("server.drain_s", "KFM_SERVER_DRAIN_S"),
    ("work.keep_hours", "KFM_WORK_KEEP_HOURS"),
    ("events.url", "KFM_EVENTS_URL"),
    ("events.credentials", "KFM_EVENTS_CREDENTIALS"),
    ("events.max_in_flight", "KFM_EVENTS_MAX_IN_FLIGHT"),
    ("events.replicas", "KFM_EVENTS_REPLICAS"),
    ("events.prefix", "KFM_EVENTS_PREFIX"),
    ("postgres.url", "KFM_POSTGRES_URL"),
    ("postgres.password", "KFM_POSTGRES_PASSWORD"),
    ("postgres.api_password", "KFM_POSTGRES_API_PASSWORD"),
    (
        "postgres.api_precise_password",
        "KFM_POSTGRES_API_PRECISE_PASSWORD",
    ),
    ("serve.backend", "KFM_SERVE_BACKEND"),
    ("serve.basemap", "KFM_SERVE_BASEMAP"),
];

impl Config {
    /// Parses `kfm.toml` text and applies environment overrides looked up
    /// through `env` (injected so that this stays free of I/O and testable).
    pub fn parse(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source_name: file.to_owned(),
            line: locate_toml_key(text, key),
            key: key.to_owned(),
            message,
        };

        // First pass: a loose parse to look for secrets, so that a secret
        // under an unknown key is reported as a secret, not as a typo.
        let loose: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            ConfigError {
                source_name: file.to_owned(),
                line,
                key: "(syntax)".into(),
                message: e.message().to_owned(),
            }
        })?;
        check_no_literal_secrets(&loose, "", &err)?;

        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            ConfigError {
                source_name: file.to_owned(),
                line,
                key: "(schema)".into(),
                message: e.message().to_owned(),
            }
        })?;

        // Each value: the environment wins over the file.
        let pick =
            |key: &str, file_value: Option<String>| -> (Option<String>, Option<&'static str>) {
                let var = ENV_KEYS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
                match var.and_then(|v| env(v).map(|val| (val, v))) {
                    Some((val, v)) => (Some(val), Some(v)),
                    None => (file_value, None),
                }
            };
        let err_at = |key: &str, from_env: Option<&'static str>, message: String| match from_env {
            Some(var) => ConfigError {
                source_name: var.to_owned(),
                line: 0,
                key: key.to_owned(),
                message,
            },
            None => err(key, message),
        };

        let (v, src) = pick("workspace.environment", raw.workspace.environment);
        let environment = match v {
            None => Environment::Dev,
            Some(s) => Environment::parse(&s).ok_or_else(|| {
                err_at(
                    "workspace.environment",
                    src,
                    format!("unknown environment {s:?}: use dev, stage or prod"),
                )
            })?,
        };

        let (v, src) = pick("store.url", raw.store.url);
        let store_url = StoreUrl::parse(v.as_deref().unwrap_or("file://store"))
            .map_err(|m| err_at("store.url", src, m))?;

        let (v, src) = pick("ledger.origin", raw.ledger.origin);
        let ledger_origin = v.unwrap_or_else(|| format!("kfm.local/{environment}"));
        if ledger_origin.trim().is_empty() || ledger_origin.contains('\n') {
            return Err(err_at(
                "ledger.origin",
                src,
                "the origin must be one non-empty line".into(),
            ));
        }
        let number = |key: &'static str,
                      file: Option<u64>,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>| {
            let (v, src) = pick(key, file.map(|n| n.to_string()));
            match v {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        err_at(
                            key,
                            src,
                            format!(
                                "{text:?} is not a whole number from {} to {}",
                                range.start(),
                                range.end()
                            ),
                        )
                    }),
            }
        };
        let ledger_batch_max =
            number("ledger.batch_max", raw.ledger.batch_max, 1024, 1..=65536)? as usize;
        let ledger_max_wait = std::time::Duration::from_micros(number(
            "ledger.max_wait_us",
            raw.ledger.max_wait_us,
            200,
            0..=1_000_000,
        )?);

        let (v, src) = pick("ledger.witness", raw.ledger.witness);
        let ledger_witness = PathBuf::from(v.unwrap_or_else(|| "ledger-witness/checkpoint".into()));
        if ledger_witness.as_os_str().is_empty() {
            return Err(err_at(
                "ledger.witness",
                src,
                "give a file path (outside the store directory)".into(),
            ));
        }
        if let StoreUrl::File(store_dir) = &store_url
            && (ledger_witness.starts_with(store_dir) || store_dir.as_os_str() == ".")
        {
            return Err(err_at(
                "ledger.witness",
                src,
                format!(
                    "{} is inside the store directory {}: the witness must live outside the store, or deleting the store would delete it too",
                    ledger_witness.display(),
                    store_dir.display()
                ),
            ));
        }
        let ledger_give_up_after = std::time::Duration::from_secs(number(
            "ledger.give_up_after_s",
            raw.ledger.give_up_after_s,
            120,
            1..=86_400,
        )?);
        let ledger_reach_writer = std::time::Duration::from_secs(number(
            "ledger.reach_writer_s",
            raw.ledger.reach_writer_s,
            60,
            1..=3_600,
        )?);
        let ledger_tile_interval = std::time::Duration::from_millis(number(
            "ledger.tile_interval_ms",
            raw.ledger.tile_interval_ms,
            200,
            1..=86_400_000,
        )?);

        let (v, src) = pick("signing.key", raw.signing.key);
        let signing_key = match v {
            None => None,
            Some(s) => Some(SecretRef::parse(&s).ok_or_else(|| {
                err_at(
                    "signing.key",
                    src,
                    "a literal key is refused: give a reference, env:NAME (the key is in that environment variable) or file:PATH".into(),
                )
            })?),
        };

        let (v, _) = pick("policy.bundle", raw.policy.bundle);
        let policy_bundle = PathBuf::from(v.unwrap_or_else(|| "policy".into()));
        let policy_budget = std::time::Duration::from_millis(number(
            "policy.budget_ms",
            raw.policy.budget_ms,
            50,
            1..=10_000,
        )?);

        let (v, src) = pick("server.listen", raw.server.listen);
        let listen_text = v.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|_| {
            err_at(
                "server.listen",
                src,
                format!("{listen_text:?} is not an address such as 127.0.0.1:8080"),
            )
        })?;

        let server_max_connections = number(
            "server.max_connections",
            raw.server.max_connections,
            0,
            0..=1_000_000,
        )? as usize;
        let secs = |key: &'static str, file: Option<u64>, default: u64| {
            number(key, file, default, 1..=3600).map(std::time::Duration::from_secs)
        };
        let server_header_timeout =
            secs("server.header_timeout_s", raw.server.header_timeout_s, 15)?;
        let server_request_timeout =
            secs("server.request_timeout_s", raw.server.request_timeout_s, 30)?;
        let server_drain = secs("server.drain_s", raw.server.drain_s, 10)?;
        let work_keep = std::time::Duration::from_secs(
            3600 * number("work.keep_hours", raw.work.keep_hours, 168, 0..=87_600)?,
        );

        let (v, src) = pick("events.url", raw.events.url);
        let events = match v.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => {
                for part in url.split(',') {
                    let part = part.trim();
                    let rest = part
                        .strip_prefix("nats://")
                        .or_else(|| part.strip_prefix("tls://"))
                        .ok_or_else(|| {
                            err_at(
                                "events.url",
                                src,
                                format!("{part:?} is not a NATS URL: use nats://host:port (several: comma-separated)"),
                            )
                        })?;
                    if rest.contains('@') {
                        return Err(err_at(
                            "events.url",
                            src,
                            "credentials in the URL are refused: give them by reference in events.credentials (env:NAME or file:PATH of a NATS .creds file or nkey seed)".into(),
                        ));
                    }
                }
                let (c, csrc) = pick("events.credentials", raw.events.credentials);
                let credentials = match c {
                    None => None,
                    Some(c) => Some(SecretRef::parse(&c).ok_or_else(|| {
                        err_at(
                            "events.credentials",
                            csrc,
                            "a literal credential is refused: give a reference, env:NAME or file:PATH (a NATS .creds file or an nkey seed)".into(),
                        )
                    })?),
                };
                let max_in_flight = number(
                    "events.max_in_flight",
                    raw.events.max_in_flight,
                    4096,
                    1..=1_000_000,
                )? as usize;
                let default_replicas = if environment == Environment::Dev {
                    1
                } else {
                    3
                };
                let replicas = number(
                    "events.replicas",
                    raw.events.replicas,
                    default_replicas,
                    1..=5,
                )? as usize;
                let (p, psrc) = pick("events.prefix", raw.events.prefix);
                let prefix = p.unwrap_or_default();
                if prefix.len() > 32
                    || !prefix
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(err_at(
                        "events.prefix",
                        psrc,
                        format!("{prefix:?}: at most 32 lowercase letters and digits"),
                    ));
                }
                Some(EventsConfig {
                    url,
                    credentials,
                    max_in_flight,
                    replicas,
                    prefix,
                })
            }
        };

        let (v, src) = pick("postgres.url", raw.postgres.url);
        let postgres = match v.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => {
                let rest = url
                    .strip_prefix("postgres://")
                    .or_else(|| url.strip_prefix("postgresql://"))
                    .ok_or_else(|| {
                        err_at(
                            "postgres.url",
                            src,
                            format!("{url:?} is not a PostgreSQL URL: use postgres://USER@HOST:PORT/DATABASE"),
                        )
                    })?;
                let authority = rest.split(['/', '?']).next().unwrap_or("");
                if let Some((userinfo, _)) = authority.rsplit_once('@')
                    && userinfo.contains(':')
                {
                    return Err(err_at(
                        "postgres.url",
                        src,
                        "a password in the URL is refused: give it by reference in postgres.password (env:NAME or file:PATH), or in PGPASSWORD".into(),
                    ));
                }
                if rest.contains("password=") {
                    return Err(err_at(
                        "postgres.url",
                        src,
                        "a password in the URL is refused: give it by reference in postgres.password (env:NAME or file:PATH), or in PGPASSWORD".into(),
                    ));
                }
                let reference = |key: &'static str, v: Option<String>| {
                    let (p, psrc) = pick(key, v);
                    match p {
                        None => Ok(None),
                        Some(p) => SecretRef::parse(&p).map(Some).ok_or_else(|| {
                            err_at(
                                key,
                                psrc,
                                "a literal password is refused: give a reference, env:NAME or file:PATH".into(),
                            )
                        }),
                    }
                };
                Some(PostgresConfig {
                    url,
                    password: reference("postgres.password", raw.postgres.password)?,
                    api_password: reference("postgres.api_password", raw.postgres.api_password)?,
                    api_precise_password: reference(
                        "postgres.api_precise_password",
                        raw.postgres.api_precise_password,
                    )?,
                })
            }
        };

        let (v, src) = pick("serve.backend", raw.serve.backend);
        let serve_backend = match v.as_deref().map(str::trim) {
            None | Some("memory") => ServeBackend::Memory,
            Some("postgis") if postgres.is_some() => ServeBackend::Postgis,
            Some("postgis") => {
                return Err(err_at(
                    "serve.backend",
                    src,
                    "postgis needs the database: set [postgres] url (or KFM_POSTGRES_URL), or use memory".into(),
                ));
            }
            Some(o) => {
                return Err(err_at(
                    "serve.backend",
                    src,
                    format!("{o:?} is not a backend: use memory (the default) or postgis"),
                ));
            }
        };

        let (v, src) = pick("serve.basemap", raw.serve.basemap);
        let serve_basemap = match v.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(id)
                if id.len() <= 128
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                Some(id.to_owned())
            }
            Some(o) => {
                return Err(err_at(
                    "serve.basemap",
                    src,
                    format!(
                        "{:?} is not a collection id: give a dataset id (letters, digits, '-', '_', '.'), or \"\" for no base layer",
                        o.chars().take(40).collect::<String>()
                    ),
                ));
            }
        };

        Ok(Config {
            environment,
            store_url,
            ledger_origin,
            ledger_batch_max,
            ledger_max_wait,
            ledger_witness,
            ledger_give_up_after,
            ledger_reach_writer,
            ledger_tile_interval,
            signing_key,
            policy_bundle,
            policy_budget,
            listen,
            server_max_connections,
            server_header_timeout,
            server_request_timeout,
            server_drain,
            work_keep,
            events,
            postgres,
            serve_backend,
            serve_basemap,
        })
    }

    /// The text `kfm init` writes: every key with its default and a comment
    /// saying why it is there.
    pub fn default_toml() -> &'static str {
        DEFAULT_TOML
    }
}

/// The documented default kfm.toml, kept as a file of its own (it is
/// read as TOML, and reviewed as one).
const DEFAULT_TOML: &str = include_str!("default_kfm.toml");

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of `key` (dotted: `section.name`) in TOML text, 0 if not found.
fn locate_toml_key(text: &str, dotted: &str) -> usize {
    let (section, name) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_owned();
            continue;
        }
        if current == section
            && let Some((k, _)) = t.split_once('=')
            && k.trim().trim_matches('"') == name
        {
            return i + 1;
        }
    }
    0
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
