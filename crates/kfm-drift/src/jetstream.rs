//! JetStream: streams, durable consumers and key-value buckets, read and
//! changed through the JetStream API (`$JS.API.*`, via async-nats).
//!
//! A key-value bucket is a stream named `KV_<bucket>` (NATS ADR-8): its
//! history is the stream's messages per subject, its TTL the stream's
//! maximum age, its value size limit the stream's message size limit.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use kfm_infra::platform::{self, Ensure, Platform};
use serde_json::{Map, Value, json};

use crate::{DriftError, ENGINE_TIMEOUT, Engine, Grade, Observed, Severity, Want, sorted, sources};

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct Conn {
    pub url: String,
    /// A `.creds` file (from the variable the desired state names).
    pub creds: Option<PathBuf>,
}

fn err(what: &str, e: impl std::fmt::Display) -> DriftError {
    DriftError::engine(Engine::Jetstream, what, e)
}

/// Connects, failing within [`ENGINE_TIMEOUT`] if the server is not there.
pub async fn connect(c: &Conn) -> Result<jetstream::Context, DriftError> {
    let mut opts = async_nats::ConnectOptions::new()
        .connection_timeout(ENGINE_TIMEOUT)
        .request_timeout(Some(ENGINE_TIMEOUT))
        .max_reconnects(Some(1));
    if let Some(p) = &c.creds {
        opts = opts.credentials_file(p).await.map_err(|e| {
            DriftError::unreachable(
                Engine::Jetstream,
                format!("credentials {}: {e}", p.display()),
            )
        })?;
    }
    let client = tokio::time::timeout(ENGINE_TIMEOUT, opts.connect(&c.url))
        .await
        .map_err(|_| {
            DriftError::unreachable(
                Engine::Jetstream,
                format!("{}: no answer in {ENGINE_TIMEOUT:?}", c.url),
            )
        })?
        .map_err(|e| DriftError::unreachable(Engine::Jetstream, format!("{}: {e}", c.url)))?;
    // The first JetStream request of the caller fails within the request
    // timeout if the server has no JetStream.
    Ok(jetstream::new(client))
}

fn dur(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn want_dur(s: &str) -> Result<Value, DriftError> {
    platform::duration(s).map(dur).map_err(DriftError::Config)
}

fn enum_str<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Settings that make a stream less durable or less tamper-evident are
/// high; anything else medium.
fn grade_stream(field: &str, _: &Value, _: &Value) -> Severity {
    match field {
        "deny_delete" | "deny_purge" | "replicas" | "storage" | "max_age" | "discard" => {
            Severity::High
        }
        _ => Severity::Medium,
    }
}

fn stream_live(c: &stream::Config) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("subjects".into(), sorted(c.subjects.iter().cloned()));
    m.insert("storage".into(), enum_str(&c.storage));
    m.insert("retention".into(), enum_str(&c.retention));
    m.insert("discard".into(), enum_str(&c.discard));
    m.insert("replicas".into(), json!(c.num_replicas));
    m.insert("max_age".into(), dur(c.max_age));
    m.insert("max_bytes".into(), json!(c.max_bytes));
    m.insert("max_msgs".into(), json!(c.max_messages));
    m.insert("max_msg_size".into(), json!(c.max_message_size));
    m.insert("duplicate_window".into(), dur(c.duplicate_window));
    m.insert("deny_delete".into(), json!(c.deny_delete));
    m.insert("deny_purge".into(), json!(c.deny_purge));
    m.insert("allow_rollup".into(), json!(c.allow_rollup));
    m
}

fn stream_want(s: &platform::Stream) -> Result<Map<String, Value>, DriftError> {
    let mut m = Map::new();
    if s.ensure == Ensure::Absent {
        return Ok(m);
    }
    m.insert("subjects".into(), sorted(s.subjects.iter().cloned()));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("storage", s.storage.as_ref().map(enum_str));
    put("retention", s.retention.as_ref().map(enum_str));
    put("discard", s.discard.as_ref().map(enum_str));
    put("replicas", s.replicas.map(|r| json!(r)));
    put("max_bytes", s.max_bytes.map(|r| json!(r)));
    put("max_msgs", s.max_msgs.map(|r| json!(r)));
    put("max_msg_size", s.max_msg_size.map(|r| json!(r)));
    put("deny_delete", s.deny_delete.map(|r| json!(r)));
    put("deny_purge", s.deny_purge.map(|r| json!(r)));
    put("allow_rollup", s.allow_rollup.map(|r| json!(r)));
    if let Some(d) = &s.max_age {
        m.insert("max_age".into(), want_dur(d)?);
    }
    if let Some(d) = &s.duplicate_window {
        m.insert("duplicate_window".into(), want_dur(d)?);
    }
    Ok(m)
}

fn consumer_live(c: &consumer::Config) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ack_policy".into(), enum_str(&c.ack_policy));
    m.insert("filter_subject".into(), json!(c.filter_subject));
    m.insert("max_deliver".into(), json!(c.max_deliver));
    m.insert("ack_wait".into(), dur(c.ack_wait));
    m
}

fn consumer_want(c: &platform::Consumer) -> Result<Map<String, Value>, DriftError> {
    let mut m = Map::new();
    if c.ensure == Ensure::Absent {
        return Ok(m);
    }
    if let Some(a) = &c.ack_policy {
        m.insert("ack_policy".into(), enum_str(a));
    }
    if let Some(f) = &c.filter_subject {
        m.insert("filter_subject".into(), json!(f));
    }
    if let Some(d) = c.max_deliver {
        m.insert("max_deliver".into(), json!(d));
    }
    if let Some(d) = &c.ack_wait {
        m.insert("ack_wait".into(), want_dur(d)?);
    }
    Ok(m)
}

fn kv_live(c: &stream::Config) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("history".into(), json!(c.max_messages_per_subject));
    m.insert("replicas".into(), json!(c.num_replicas));
    m.insert("storage".into(), enum_str(&c.storage));
    m.insert("max_value_size".into(), json!(c.max_message_size));
    m.insert("ttl".into(), dur(c.max_age));
    m
}

fn kv_want(k: &platform::KeyValue) -> Result<Map<String, Value>, DriftError> {
    let mut m = Map::new();
    if k.ensure == Ensure::Absent {
        return Ok(m);
    }
    if let Some(h) = k.history {
        m.insert("history".into(), json!(h));
    }
    if let Some(r) = k.replicas {
        m.insert("replicas".into(), json!(r));
    }
    if let Some(s) = &k.storage {
        m.insert("storage".into(), enum_str(s));
    }
    if let Some(v) = k.max_value_size {
        m.insert("max_value_size".into(), json!(v));
    }
    if let Some(t) = &k.ttl {
        m.insert("ttl".into(), want_dur(t)?);
    }
    Ok(m)
}

fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

async fn stream_config(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Config>, DriftError> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s.cached_info().config.clone())),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(err(&format!("stream {name}"), e)),
    }
}

/// Reads every stream, consumer and bucket git names, and lists the
/// owned ones it does not.
pub async fn observe(p: &Platform, c: &Conn) -> Result<Observed, DriftError> {
    let js = connect(c).await?;
    tokio::time::timeout(ENGINE_TIMEOUT * 3, observe_with(p, &js))
        .await
        .map_err(|_| {
            DriftError::unreachable(Engine::Jetstream, "reading the streams took too long")
        })?
}

async fn observe_with(p: &Platform, js: &jetstream::Context) -> Result<Observed, DriftError> {
    let src = sources(p);
    let mut o = Observed::default();
    // Stream and bucket infos are independent requests: up to 32 in flight.
    let streams = futures::stream::iter(
        p.jetstream
            .streams
            .iter()
            .map(|s| stream_config(js, &s.name)),
    )
    .buffered(32)
    .collect::<Vec<_>>()
    .await;
    for (s, cfg) in p.jetstream.streams.iter().zip(streams) {
        let resource = format!("stream/{}", s.name);
        if let Some(cfg) = cfg? {
            o.live.insert(resource.clone(), stream_live(&cfg));
        }
        o.wants.push(Want {
            engine: Engine::Jetstream,
            resource,
            ensure: s.ensure,
            fields: stream_want(s)?,
            source: src.clone(),
            grade: Grade::new(grade_stream),
        });
    }
    let buckets = futures::stream::iter(p.jetstream.kv.iter().map(|k| {
        let name = kv_stream(&k.bucket);
        async move { stream_config(js, &name).await }
    }))
    .buffered(32)
    .collect::<Vec<_>>()
    .await;
    for (k, cfg) in p.jetstream.kv.iter().zip(buckets) {
        let resource = format!("kv/{}", k.bucket);
        if let Some(cfg) = cfg? {
            o.live.insert(resource.clone(), kv_live(&cfg));
        }
        o.wants.push(Want {
            engine: Engine::Jetstream,
            resource,
            ensure: k.ensure,
            fields: kv_want(k)?,
            source: src.clone(),
            grade: Grade::new(grade_stream),
        });
    }
    for cn in &p.jetstream.consumers {
        let resource = format!("consumer/{}/{}", cn.stream, cn.name);
        if let Ok(st) = js.get_stream_no_info(&cn.stream).await {
            match st.consumer_info(&cn.name).await {
                Ok(info) => {
                    o.live.insert(resource.clone(), consumer_live(&info.config));
                }
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(err(&resource, e)),
            }
        }
        o.wants.push(Want {
            engine: Engine::Jetstream,
            resource,
            ensure: cn.ensure,
            fields: consumer_want(cn)?,
            source: src.clone(),
            grade: crate::medium(),
        });
    }
    if !p.jetstream.owns.is_empty() {
        let named: std::collections::BTreeSet<String> = p
            .jetstream
            .streams
            .iter()
            .map(|s| s.name.clone())
            .chain(p.jetstream.kv.iter().map(|k| kv_stream(&k.bucket)))
            .collect();
        let mut names = js.stream_names();
        while let Some(n) = names.next().await {
            let n = n.map_err(|e| err("listing streams", e))?;
            let bare = n.strip_prefix("KV_").unwrap_or(&n);
            let owned = p
                .jetstream
                .owns
                .iter()
                .any(|pre| n.starts_with(pre) || bare.starts_with(pre));
            if owned && !named.contains(&n) {
                o.unmanaged.push(match n.strip_prefix("KV_") {
                    Some(b) => format!("kv/{b}"),
                    None => format!("stream/{n}"),
                });
            }
        }
        o.unmanaged.sort();
    }
    Ok(o)
}

/// Applies git's settings over the live ones (settings git does not
/// state are kept as they are).
fn apply_stream(cfg: &mut stream::Config, s: &platform::Stream) -> Result<(), DriftError> {
    let parse = |d: &str| platform::duration(d).map_err(DriftError::Config);
    cfg.subjects = s.subjects.clone();
    if let Some(v) = s.storage {
        cfg.storage = match v {
            platform::Storage::File => stream::StorageType::File,
            platform::Storage::Memory => stream::StorageType::Memory,
        };
    }
    if let Some(v) = s.retention {
        cfg.retention = match v {
            platform::Retention::Limits => stream::RetentionPolicy::Limits,
            platform::Retention::Interest => stream::RetentionPolicy::Interest,
            platform::Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        };
    }
    if let Some(v) = s.discard {
        cfg.discard = match v {
            platform::Discard::Old => stream::DiscardPolicy::Old,
            platform::Discard::New => stream::DiscardPolicy::New,
        };
    }
    if let Some(v) = s.replicas {
        cfg.num_replicas = v;
    }
    if let Some(v) = &s.max_age {
        cfg.max_age = parse(v)?;
    }
    if let Some(v) = &s.duplicate_window {
        cfg.duplicate_window = parse(v)?;
    }
    if let Some(v) = s.max_bytes {
        cfg.max_bytes = v;
    }
    if let Some(v) = s.max_msgs {
        cfg.max_messages = v;
    }
    if let Some(v) = s.max_msg_size {
        cfg.max_message_size = v;
    }
    if let Some(v) = s.deny_delete {
        cfg.deny_delete = v;
    }
    if let Some(v) = s.deny_purge {
        cfg.deny_purge = v;
    }
    if let Some(v) = s.allow_rollup {
        cfg.allow_rollup = v;
    }
    Ok(())
}

fn apply_kv(cfg: &mut stream::Config, k: &platform::KeyValue) -> Result<(), DriftError> {
    if let Some(h) = k.history {
        cfg.max_messages_per_subject = h;
    }
    if let Some(r) = k.replicas {
        cfg.num_replicas = r;
    }
    if let Some(s) = k.storage {
        cfg.storage = match s {
            platform::Storage::File => stream::StorageType::File,
            platform::Storage::Memory => stream::StorageType::Memory,
        };
    }
    if let Some(v) = k.max_value_size {
        cfg.max_message_size = v;
    }
    if let Some(t) = &k.ttl {
        cfg.max_age = platform::duration(t).map_err(DriftError::Config)?;
    }
    Ok(())
}

/// Restores one resource. Returns what was done.
pub async fn fix(
    p: &Platform,
    c: &Conn,
    w: &Want,
    live: Option<&Map<String, Value>>,
) -> Result<Vec<String>, DriftError> {
    let js = connect(c).await?;
    let (kind, name) = w.resource.split_once('/').unwrap_or(("", &w.resource));
    match kind {
        "stream" => {
            let s = p
                .jetstream
                .streams
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    DriftError::Config(format!("{}: not in the desired state", w.resource))
                })?;
            if s.ensure == Ensure::Absent {
                // Only because git says so explicitly.
                js.delete_stream(name)
                    .await
                    .map_err(|e| err(&w.resource, e))?;
                return Ok(vec![format!("DELETE stream {name} (ensure: absent)")]);
            }
            match (live, stream_config(&js, name).await?) {
                (Some(_), Some(mut cfg)) => {
                    apply_stream(&mut cfg, s)?;
                    js.update_stream(cfg)
                        .await
                        .map_err(|e| err(&w.resource, e))?;
                    Ok(vec![format!("UPDATE stream {name}")])
                }
                _ => {
                    let mut cfg = stream::Config {
                        name: name.to_owned(),
                        ..Default::default()
                    };
                    apply_stream(&mut cfg, s)?;
                    js.create_stream(cfg)
                        .await
                        .map_err(|e| err(&w.resource, e))?;
                    Ok(vec![format!("CREATE stream {name}")])
                }
            }
        }
        "kv" => {
            let k = p
                .jetstream
                .kv
                .iter()
                .find(|k| k.bucket == name)
                .ok_or_else(|| {
                    DriftError::Config(format!("{}: not in the desired state", w.resource))
                })?;
            let sname = kv_stream(name);
            if k.ensure == Ensure::Absent {
                js.delete_stream(&sname)
                    .await
                    .map_err(|e| err(&w.resource, e))?;
                return Ok(vec![format!("DELETE bucket {name} (ensure: absent)")]);
            }
            match stream_config(&js, &sname).await? {
                Some(mut cfg) => {
                    apply_kv(&mut cfg, k)?;
                    js.update_stream(cfg)
                        .await
                        .map_err(|e| err(&w.resource, e))?;
                    Ok(vec![format!("UPDATE bucket {name}")])
                }
                None => {
                    // Laid out as the key-value convention (ADR-8) has it.
                    let mut cfg = stream::Config {
                        name: sname,
                        subjects: vec![format!("$KV.{name}.>")],
                        max_messages_per_subject: 1,
                        discard: stream::DiscardPolicy::New,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        ..Default::default()
                    };
                    apply_kv(&mut cfg, k)?;
                    js.create_stream(cfg)
                        .await
                        .map_err(|e| err(&w.resource, e))?;
                    Ok(vec![format!("CREATE bucket {name}")])
                }
            }
        }
        "consumer" => {
            let cn = p
                .jetstream
                .consumers
                .iter()
                .find(|cn| format!("{}/{}", cn.stream, cn.name) == name)
                .ok_or_else(|| {
                    DriftError::Config(format!("{}: not in the desired state", w.resource))
                })?;
            let st = js
                .get_stream_no_info(&cn.stream)
                .await
                .map_err(|e| err(&w.resource, e))?;
            if cn.ensure == Ensure::Absent {
                st.delete_consumer(&cn.name)
                    .await
                    .map_err(|e| err(&w.resource, e))?;
                return Ok(vec![format!("DELETE consumer {name} (ensure: absent)")]);
            }
            let mut cfg = match st.consumer_info(&cn.name).await {
                Ok(info) => info.config,
                Err(_) => consumer::Config {
                    durable_name: Some(cn.name.clone()),
                    ..Default::default()
                },
            };
            if let Some(a) = cn.ack_policy {
                cfg.ack_policy = match a {
                    platform::AckPolicy::Explicit => consumer::AckPolicy::Explicit,
                    platform::AckPolicy::None => consumer::AckPolicy::None,
                    platform::AckPolicy::All => consumer::AckPolicy::All,
                };
            }
            if let Some(f) = &cn.filter_subject {
                cfg.filter_subject = f.clone();
            }
            if let Some(d) = cn.max_deliver {
                cfg.max_deliver = d;
            }
            if let Some(d) = &cn.ack_wait {
                cfg.ack_wait = platform::duration(d).map_err(DriftError::Config)?;
            }
            let action = if live.is_some() { "UPDATE" } else { "CREATE" };
            // A durable consumer's create is create-or-update (the API of
            // every server from 2.9, which has no separate update).
            st.create_consumer(cfg)
                .await
                .map_err(|e| err(&w.resource, e))?;
            Ok(vec![format!("{action} consumer {name}")])
        }
        _ => Err(DriftError::Config(format!(
            "{}: not a JetStream resource",
            w.resource
        ))),
    }
}

/// The live state of one resource, read again after a fix.
pub async fn read_one(c: &Conn, resource: &str) -> Result<Option<Map<String, Value>>, DriftError> {
    let js = connect(c).await?;
    let (kind, name) = resource.split_once('/').unwrap_or(("", resource));
    Ok(match kind {
        "stream" => stream_config(&js, name).await?.map(|c| stream_live(&c)),
        "kv" => stream_config(&js, &kv_stream(name))
            .await?
            .map(|c| kv_live(&c)),
        "consumer" => {
            let (st, cn) = name.split_once('/').unwrap_or((name, ""));
            match js.get_stream_no_info(st).await {
                Err(_) => None,
                Ok(stream) => match stream.consumer_info(cn).await {
                    Ok(info) => Some(consumer_live(&info.config)),
                    Err(e) if e.to_string().contains("not found") => None,
                    Err(e) => return Err(err(resource, e)),
                },
            }
        }
        _ => {
            return Err(DriftError::Config(format!(
                "{resource}: not a JetStream resource"
            )));
        }
    })
}
