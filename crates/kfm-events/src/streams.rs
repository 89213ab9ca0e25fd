//! Streams as code: the JetStream streams and key-value bucket KFM uses,
//! declared here, created when missing and checked against what runs.
//!
//! Durability: a JetStream acknowledgement means the message is on disk
//! only if the stream is replicated (the ack waits for a quorum of
//! replicas) or the server syncs every write; a single nats-server
//! flushes to disk only every couple of minutes by default. KFM cannot
//! read a server's sync setting through the JetStream API, so stage and
//! prod require three replicas, and dev warns about fewer.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use kfm_core::config::Environment;

use crate::envelope::MAX_EVENT;
use crate::{EventsError, env_upper, js_err};

/// The names of one environment's streams, subjects and bucket.
#[derive(Debug, Clone)]
pub struct Names {
    pub env: Environment,
    /// Every ledger entry, in order: `KFM_AUDIT_<ENV>`.
    pub audit_stream: String,
    /// `kfm.<env>.audit.>`
    pub audit_subjects: String,
    /// Events never sequenced, with the reason: `KFM_DEADLETTER_<ENV>`.
    pub dead_stream: String,
    /// `kfm.<env>.deadletter`
    pub dead_subject: String,
    /// The sequencer's lease (and where it has got to): `KFM_SEQUENCER_<ENV>`.
    pub bucket: String,
    /// Advisory: a release pointer moved (core NATS, not stored).
    pub release_subject: String,
}

impl Names {
    pub fn new(env: Environment) -> Self {
        Self::with_prefix(env, "")
    }

    /// Names under a prefix (tests: one set per test on a shared server).
    pub fn with_prefix(env: Environment, prefix: &str) -> Self {
        let up = env_upper(env);
        let lo = env.as_str();
        let p_up = prefix.to_ascii_uppercase().replace(['.', '-'], "_");
        let p_lo = if prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", prefix.to_ascii_lowercase())
        };
        Self {
            env,
            audit_stream: format!("{p_up}KFM_AUDIT_{up}"),
            audit_subjects: format!("{p_lo}kfm.{lo}.audit.>"),
            dead_stream: format!("{p_up}KFM_DEADLETTER_{up}"),
            dead_subject: format!("{p_lo}kfm.{lo}.deadletter"),
            bucket: format!("{p_up}KFM_SEQUENCER_{up}"),
            release_subject: format!("{p_lo}kfm.{lo}.release.moved"),
        }
    }

    /// The subject an event of `kind` (`kfm.ledger.access.v1`) goes to.
    pub fn audit_subject(&self, kind: &str) -> String {
        let short = kind
            .strip_prefix("kfm.ledger.")
            .and_then(|k| k.split('.').next())
            .unwrap_or("entry");
        format!("{}.{short}", self.audit_subjects.trim_end_matches(".>"))
    }
}

/// How long JetStream remembers a `Nats-Msg-Id`: longer than a publisher
/// ever retries ([`crate::producer::RETRY_FOR`]), so that every retry of
/// a publish that did land is dropped as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How long dead letters are kept for someone to look at.
pub const DEAD_LETTER_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the declaration asks for.
#[derive(Debug, Clone)]
pub struct Declared {
    pub names: Names,
    pub replicas: usize,
}

impl Declared {
    pub fn new(names: Names, replicas: usize) -> Self {
        Self { names, replicas }
    }

    /// The audit stream: file storage, kept forever (limits retention with
    /// no limits, refusing new messages rather than dropping old ones if
    /// one is ever set), no deletes or purges, the duplicate window above.
    pub fn audit(&self) -> stream::Config {
        stream::Config {
            name: self.names.audit_stream.clone(),
            description: Some("KFM ledger entries in sequencing order".into()),
            subjects: vec![self.names.audit_subjects.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            max_messages: -1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            max_message_size: MAX_EVENT as i32,
            num_replicas: self.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            deny_delete: true,
            deny_purge: true,
            allow_rollup: false,
            ..Default::default()
        }
    }

    /// The dead-letter stream: file storage, kept a month.
    pub fn dead_letters(&self) -> stream::Config {
        stream::Config {
            name: self.names.dead_stream.clone(),
            description: Some("KFM events that were never sequenced, with the reason".into()),
            subjects: vec![self.names.dead_subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages: -1,
            max_bytes: -1,
            max_age: DEAD_LETTER_AGE,
            max_message_size: (MAX_EVENT + 4096) as i32,
            num_replicas: self.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }

    /// The sequencer's bucket: one key, the lease (history 1: only the
    /// newest holder matters; compare-and-set on its revision).
    pub fn bucket(&self) -> kv::Config {
        kv::Config {
            bucket: self.names.bucket.clone(),
            description: "KFM ledger sequencer lease".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Whether the declaration is durable enough for its environment:
    /// `Err` refuses it (stage, prod), `Ok(Some(warning))` allows it (dev).
    pub fn durability(&self) -> Result<Option<String>, EventsError> {
        if self.replicas >= 3 {
            return Ok(None);
        }
        let why = format!(
            "the {} streams have {} replica(s): a JetStream acknowledgement is on disk only with 3 replicas (or a server that syncs every write, which KFM cannot check); a single nats-server flushes every few minutes, so a crash can lose acknowledged ledger entries",
            self.names.env, self.replicas
        );
        match self.names.env {
            Environment::Dev => Ok(Some(why)),
            _ => Err(EventsError::Declaration(format!(
                "{why}. Refused in {}: set events.replicas = 3 on a 3-node JetStream cluster",
                self.names.env
            ))),
        }
    }
}

/// A setting that differs between the declaration and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub resource: String,
    pub setting: &'static str,
    pub declared: String,
    pub live: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is {} (declared: {})",
            self.resource, self.setting, self.live, self.declared
        )
    }
}

fn compare(want: &stream::Config, live: &stream::Config, out: &mut Vec<Difference>) {
    let mut d = |setting: &'static str, a: String, b: String| {
        if a != b {
            out.push(Difference {
                resource: format!("stream {}", want.name),
                setting,
                declared: a,
                live: b,
            });
        }
    };
    d(
        "subjects",
        format!("{:?}", want.subjects),
        format!("{:?}", live.subjects),
    );
    d(
        "storage",
        format!("{:?}", want.storage),
        format!("{:?}", live.storage),
    );
    d(
        "retention",
        format!("{:?}", want.retention),
        format!("{:?}", live.retention),
    );
    d(
        "discard",
        format!("{:?}", want.discard),
        format!("{:?}", live.discard),
    );
    d(
        "max_age",
        format!("{:?}", want.max_age),
        format!("{:?}", live.max_age),
    );
    d(
        "max_messages",
        want.max_messages.to_string(),
        live.max_messages.to_string(),
    );
    d(
        "max_bytes",
        want.max_bytes.to_string(),
        live.max_bytes.to_string(),
    );
    d(
        "max_message_size",
        want.max_message_size.to_string(),
        live.max_message_size.to_string(),
    );
    d(
        "num_replicas",
        want.num_replicas.max(1).to_string(),
        live.num_replicas.max(1).to_string(),
    );
    d(
        "duplicate_window",
        format!("{:?}", want.duplicate_window),
        format!("{:?}", live.duplicate_window),
    );
    d(
        "deny_delete",
        want.deny_delete.to_string(),
        live.deny_delete.to_string(),
    );
    d(
        "deny_purge",
        want.deny_purge.to_string(),
        live.deny_purge.to_string(),
    );
    d(
        "allow_rollup",
        want.allow_rollup.to_string(),
        live.allow_rollup.to_string(),
    );
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Compares what runs with the declaration; a missing stream or bucket is
/// a difference too.
pub async fn check(
    js: &jetstream::Context,
    decl: &Declared,
) -> Result<Vec<Difference>, EventsError> {
    let mut out = Vec::new();
    let kv_stream = format!("KV_{}", decl.names.bucket);
    let bucket = decl.bucket();
    for want in [decl.audit(), decl.dead_letters()] {
        match js.get_stream(&want.name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| js_err("stream info", e))?;
                compare(&want, &info.config, &mut out);
            }
            Err(e) if not_found(&e) => {
                out.push(Difference {
                    resource: format!("stream {}", want.name),
                    setting: "exists",
                    declared: "true".into(),
                    live: "false".into(),
                });
            }
            Err(e) => return Err(js_err(&format!("stream {}", want.name), e)),
        }
    }
    match js.get_stream(&kv_stream).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| js_err("bucket info", e))?;
            let c = &info.config;
            let mut d = |setting: &'static str, a: String, b: String| {
                if a != b {
                    out.push(Difference {
                        resource: format!("bucket {}", bucket.bucket),
                        setting,
                        declared: a,
                        live: b,
                    });
                }
            };
            d(
                "history",
                bucket.history.to_string(),
                c.max_messages_per_subject.to_string(),
            );
            d(
                "storage",
                format!("{:?}", bucket.storage),
                format!("{:?}", c.storage),
            );
            d(
                "num_replicas",
                bucket.num_replicas.max(1).to_string(),
                c.num_replicas.max(1).to_string(),
            );
        }
        Err(e) if not_found(&e) => {
            out.push(Difference {
                resource: format!("bucket {}", bucket.bucket),
                setting: "exists",
                declared: "true".into(),
                live: "false".into(),
            });
        }
        Err(e) => return Err(js_err(&format!("bucket {}", bucket.bucket), e)),
    }
    Ok(out)
}

/// Creates what is missing, then checks: anything that still differs is
/// refused (KFM does not silently rewrite a stream someone changed; see
/// the drift tooling for that).
pub async fn ensure(js: &jetstream::Context, decl: &Declared) -> Result<(), EventsError> {
    if let Some(w) = decl.durability()? {
        tracing::warn!("{w}");
    }
    for want in [decl.audit(), decl.dead_letters()] {
        match js.get_stream(&want.name).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => {
                js.create_stream(want.clone())
                    .await
                    .map_err(|e| js_err(&format!("creating stream {}", want.name), e))?;
            }
            Err(e) => return Err(js_err(&format!("stream {}", want.name), e)),
        }
    }
    let kv_stream = format!("KV_{}", decl.names.bucket);
    match js.get_stream(&kv_stream).await {
        Ok(_) => {}
        Err(e) if not_found(&e) => {
            // The bucket's backing stream, laid out as the key-value
            // convention (NATS ADR-8) has it; created directly because
            // `create_key_value` misreads nats-server 2.9's answer.
            let b = decl.bucket();
            js.create_stream(stream::Config {
                name: kv_stream.clone(),
                description: Some(b.description.clone()),
                subjects: vec![format!("$KV.{}.>", b.bucket)],
                max_messages_per_subject: b.history,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                storage: b.storage,
                num_replicas: b.num_replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&format!("creating bucket {}", decl.names.bucket), e))?;
        }
        Err(e) => return Err(js_err(&format!("bucket {}", decl.names.bucket), e)),
    }
    let diffs = check(js, decl).await?;
    if !diffs.is_empty() {
        let list: Vec<String> = diffs.iter().map(|d| d.to_string()).collect();
        return Err(EventsError::Declaration(format!(
            "the live JetStream resources differ from KFM's declaration: {}",
            list.join("; ")
        )));
    }
    Ok(())
}
