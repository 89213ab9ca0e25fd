//! The versioned events that carry ledger entries: CloudEvents 1.0
//! envelopes (structured JSON), one JSON Schema per type under
//! `contracts/events/`, and the checks the sequencer makes before an
//! event may become a ledger entry.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kfm_core::config::Environment;
use kfm_ledger::{Hash, leaf_hash, tiles::MAX_ENTRY};
use serde_json::{Value, json};

/// The event types, their schemas and what they carry.
pub const ACCESS: &str = "kfm.ledger.access.v1";
pub const ATTESTATION: &str = "kfm.ledger.attestation.v1";
pub const ENTRY: &str = "kfm.ledger.entry.v1";

const SCHEMAS: [(&str, &str); 3] = [
    (
        ACCESS,
        include_str!("../../../contracts/events/kfm.ledger.access.v1.json"),
    ),
    (
        ATTESTATION,
        include_str!("../../../contracts/events/kfm.ledger.attestation.v1.json"),
    ),
    (
        ENTRY,
        include_str!("../../../contracts/events/kfm.ledger.entry.v1.json"),
    ),
];

/// The largest envelope the sequencer reads: an entry of [`MAX_ENTRY`]
/// bytes in base64 plus the envelope's own attributes. The audit stream
/// refuses larger messages outright.
pub const MAX_EVENT: usize = 4 * MAX_ENTRY.div_ceil(3) + 4096;

/// The `dataschema` of an event type.
pub fn dataschema(kind: &str) -> String {
    format!("urn:kfm:contracts:events:{kind}")
}

/// Which event type carries `entry`: an access record, a DSSE attestation,
/// or (anything else) opaque bytes.
pub fn classify(entry: &[u8]) -> (&'static str, &'static str) {
    if entry.first() == Some(&b'{')
        && let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(entry)
    {
        if o.get("kind").and_then(Value::as_str) == Some("kfm.api.Access") {
            return (ACCESS, "application/json");
        }
        if o.contains_key("payloadType") && o.contains_key("signatures") {
            return (ATTESTATION, "application/json");
        }
    }
    (ENTRY, "application/octet-stream")
}

/// The envelope for `entry`, whose identity is its leaf hash.
pub fn envelope(
    entry: &[u8],
    leaf: &Hash,
    env: Environment,
    source: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let (kind, content_type) = classify(entry);
    let doc = json!({
        "specversion": "1.0",
        "id": hex::encode(leaf),
        "source": source,
        "type": kind,
        "dataschema": dataschema(kind),
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": content_type,
        "data_base64": STANDARD.encode(entry),
        "kfmenv": env.as_str(),
    });
    serde_json::to_vec(&doc)
}

/// An event that passed every check: the entry it carries.
#[derive(Debug, Clone)]
pub struct Checked {
    pub kind: &'static str,
    pub leaf: Hash,
    pub entry: Vec<u8>,
}

/// Why an event is never sequenced (sent to the dead-letter subject).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(
        "oversized: {len} bytes; an event is at most {max} bytes and its entry at most {MAX_ENTRY}"
    )]
    Oversized { len: usize, max: usize },
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("unknown event type {0:?}: this sequencer knows {ACCESS}, {ATTESTATION} and {ENTRY}")]
    UnknownType(String),
    #[error("fails its schema {schema}: {errors}")]
    Schema { schema: String, errors: String },
    #[error("for the {found} environment; this sequencer serves {expected}")]
    WrongEnvironment { found: String, expected: String },
    #[error("its id {id} is not the leaf hash of its data ({actual})")]
    Identity { id: String, actual: String },
    #[error("its Nats-Msg-Id {header:?} is not its id {id}")]
    MsgId { header: String, id: String },
}

impl Rejected {
    /// A short machine-readable reason (the `Kfm-Reason` header).
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::Oversized { .. } => "oversized",
            Rejected::NotJson(_) => "not-json",
            Rejected::UnknownType(_) => "unknown-type",
            Rejected::Schema { .. } => "schema",
            Rejected::WrongEnvironment { .. } => "wrong-environment",
            Rejected::Identity { .. } => "identity",
            Rejected::MsgId { .. } => "msg-id",
        }
    }
}

struct Compiled {
    kind: &'static str,
    envelope: jsonschema::Validator,
    data: Option<jsonschema::Validator>,
}

/// The committed schemas, compiled once. `Err` only if a committed schema
/// does not compile (a build defect, reported as such).
fn compiled() -> Result<&'static [Compiled], &'static str> {
    static C: OnceLock<Result<Vec<Compiled>, String>> = OnceLock::new();
    C.get_or_init(|| {
        let mut out = Vec::new();
        for (kind, text) in SCHEMAS {
            let schema: Value = serde_json::from_str(text).map_err(|e| format!("{kind}: {e}"))?;
            let envelope = jsonschema::options()
                .build(&schema)
                .map_err(|e| format!("{kind}: {e}"))?;
            let data = match schema.pointer("/$defs/data") {
                Some(d) if kind != ENTRY => {
                    let mut d = d.clone();
                    if let Value::Object(o) = &mut d {
                        o.insert(
                            "$schema".into(),
                            json!("https://json-schema.org/draft/2020-12/schema"),
                        );
                    }
                    Some(
                        jsonschema::options()
                            .build(&d)
                            .map_err(|e| format!("{kind} data: {e}"))?,
                    )
                }
                _ => None,
            };
            out.push(Compiled {
                kind,
                envelope,
                data,
            });
        }
        Ok(out)
    })
    .as_ref()
    .map(|v| v.as_slice())
    .map_err(|e| e.as_str())
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Option<String> {
    let errs: Vec<String> = v
        .iter_errors(doc)
        .take(3)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// Checks an event as it arrived (its bytes and its `Nats-Msg-Id`
/// header) for the sequencer of `env`.
pub fn check(payload: &[u8], msg_id: Option<&str>, env: Environment) -> Result<Checked, Rejected> {
    if payload.len() > MAX_EVENT {
        return Err(Rejected::Oversized {
            len: payload.len(),
            max: MAX_EVENT,
        });
    }
    let doc: Value =
        serde_json::from_slice(payload).map_err(|e| Rejected::NotJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(Rejected::NotJson("not an object".into()));
    }
    let kind = doc.get("type").and_then(Value::as_str).unwrap_or("");
    let schemas = compiled().map_err(|e| Rejected::Schema {
        schema: "(committed schemas)".into(),
        errors: e.to_owned(),
    })?;
    let Some(c) = schemas.iter().find(|c| c.kind == kind) else {
        return Err(Rejected::UnknownType(kind.chars().take(80).collect()));
    };
    if let Some(d) = doc.get("data_base64").and_then(Value::as_str)
        && d.len() > 4 * MAX_ENTRY.div_ceil(3)
    {
        return Err(Rejected::Oversized {
            len: d.len() / 4 * 3,
            max: MAX_ENTRY,
        });
    }
    if let Some(errors) = schema_errors(&c.envelope, &doc) {
        return Err(Rejected::Schema {
            schema: dataschema(c.kind),
            errors,
        });
    }
    let found = doc.get("kfmenv").and_then(Value::as_str).unwrap_or("");
    if found != env.as_str() {
        return Err(Rejected::WrongEnvironment {
            found: found.to_owned(),
            expected: env.as_str().to_owned(),
        });
    }
    let data = doc
        .get("data_base64")
        .and_then(Value::as_str)
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| Rejected::Schema {
            schema: dataschema(c.kind),
            errors: "data_base64 is not base64".into(),
        })?;
    if data.len() > MAX_ENTRY {
        return Err(Rejected::Oversized {
            len: data.len(),
            max: MAX_ENTRY,
        });
    }
    if let Some(v) = &c.data {
        let value: Value = serde_json::from_slice(&data).map_err(|e| Rejected::Schema {
            schema: dataschema(c.kind),
            errors: format!("data is not JSON: {e}"),
        })?;
        if let Some(errors) = schema_errors(v, &value) {
            return Err(Rejected::Schema {
                schema: dataschema(c.kind),
                errors: format!("data: {errors}"),
            });
        }
    }
    let leaf = leaf_hash(&data);
    let id = doc.get("id").and_then(Value::as_str).unwrap_or("");
    if id != hex::encode(leaf) {
        return Err(Rejected::Identity {
            id: id.to_owned(),
            actual: hex::encode(leaf),
        });
    }
    if let Some(h) = msg_id
        && h != id
    {
        return Err(Rejected::MsgId {
            header: h.chars().take(80).collect(),
            id: id.to_owned(),
        });
    }
    Ok(Checked {
        kind: c.kind,
        leaf,
        entry: data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_schema_compiles() {
        assert_eq!(compiled().map(|c| c.len()), Ok(3));
    }

    #[test]
    fn an_envelope_passes_its_own_checks_for_every_type() {
        let entries: [&[u8]; 3] = [
            br#"{"action":"read","auth":"anonymous","kind":"kfm.api.Access","method":"GET","path":"/","request_id":"r1","roles":[],"route":"/","status":200,"subject":"anonymous","time":"2026-12-03T00:00:00Z"}"#,
            br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"k","sig":"c2ln"}]}"#,
            b"\x00\xffnot json",
        ];
        for (e, kind) in entries.iter().zip([ACCESS, ATTESTATION, ENTRY]) {
            let leaf = leaf_hash(e);
            let env = envelope(e, &leaf, Environment::Dev, "urn:kfm:test").unwrap();
            let c = check(&env, Some(&hex::encode(leaf)), Environment::Dev).unwrap();
            assert_eq!((c.kind, c.entry.as_slice()), (kind, *e));
        }
    }
}
