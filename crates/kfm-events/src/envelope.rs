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
/// Several entries of the types above in one event (see [`batch_envelope`]).
pub const BATCH: &str = "kfm.ledger.batch.v1";

/// The most entries one batch event carries (its schema's `maxItems`).
pub const MAX_BATCH: usize = 256;

const SCHEMAS: [(&str, &str); 4] = [
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
    (
        BATCH,
        include_str!("../../../contracts/events/kfm.ledger.batch.v1.json"),
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
///
/// Only the top-level keys are looked at, without building the document
/// (every entry a producer publishes goes through this).
pub fn classify(entry: &[u8]) -> (&'static str, &'static str) {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "payloadType", default)]
        payload_type: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        signatures: Option<serde::de::IgnoredAny>,
    }
    if entry.first() == Some(&b'{')
        && let Ok(p) = serde_json::from_slice::<Probe>(entry)
    {
        if p.kind.as_deref() == Some("kfm.api.Access") {
            return (ACCESS, "application/json");
        }
        if p.payload_type.is_some() && p.signatures.is_some() {
            return (ATTESTATION, "application/json");
        }
    }
    (ENTRY, "application/octet-stream")
}

/// The envelope for `entry`, whose identity is its leaf hash, and its
/// event type.
pub fn envelope(
    entry: &[u8],
    leaf: &Hash,
    env: Environment,
    source: &str,
) -> Result<(Vec<u8>, &'static str), serde_json::Error> {
    let (kind, content_type) = classify(entry);
    let doc = Single {
        specversion: "1.0",
        id: &hex::encode(leaf),
        source,
        kind,
        dataschema: &dataschema(kind),
        time: &now(),
        datacontenttype: content_type,
        data_base64: &STANDARD.encode(entry),
        kfmenv: env.as_str(),
    };
    Ok((serde_json::to_vec(&doc)?, kind))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A single-entry envelope as it is written (the attributes in the order
/// of its schema).
#[derive(serde::Serialize)]
struct Single<'a> {
    specversion: &'a str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    dataschema: &'a str,
    time: &'a str,
    datacontenttype: &'a str,
    data_base64: &'a str,
    kfmenv: &'a str,
}

#[derive(serde::Serialize)]
struct Batch<'a> {
    specversion: &'a str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    dataschema: &'a str,
    time: &'a str,
    datacontenttype: &'a str,
    data: Members<'a>,
    kfmenv: &'a str,
}

#[derive(serde::Serialize)]
struct Members<'a> {
    entries: Vec<Member<'a>>,
}

#[derive(serde::Serialize)]
struct Member<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data_base64: String,
}

/// Separates batch identities from every other SHA-256 input.
const BATCH_TAG: &[u8] = b"kfm.ledger.batch.v1\n";

/// A batch event's identity: SHA-256 over [`BATCH_TAG`] and its members'
/// leaf hashes in order. The same entries in the same order give the same
/// id, so a retried publish of a batch is dropped by JetStream like a
/// retried single entry.
pub fn batch_id(leaves: &[Hash]) -> Hash {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(BATCH_TAG);
    for l in leaves {
        h.update(l);
    }
    h.finalize().into()
}

/// Roughly how many bytes `entry` adds to a batch envelope: what a
/// producer counts to keep a batch under [`MAX_EVENT`].
pub fn batch_cost(entry: &[u8]) -> usize {
    4 * entry.len().div_ceil(3) + 64
}

/// Envelope attributes and framing of a batch, apart from its members.
pub const BATCH_OVERHEAD: usize = 1024;

/// The envelope for several entries (at most [`MAX_BATCH`], whose
/// [`batch_cost`]s and [`BATCH_OVERHEAD`] stay within [`MAX_EVENT`]), and
/// its identity ([`batch_id`]).
pub fn batch_envelope(
    entries: &[(&[u8], Hash)],
    env: Environment,
    source: &str,
) -> Result<(Vec<u8>, Hash), serde_json::Error> {
    let leaves: Vec<Hash> = entries.iter().map(|(_, l)| *l).collect();
    let id = batch_id(&leaves);
    let doc = Batch {
        specversion: "1.0",
        id: &hex::encode(id),
        source,
        kind: BATCH,
        dataschema: &dataschema(BATCH),
        time: &now(),
        datacontenttype: "application/json",
        data: Members {
            entries: entries
                .iter()
                .map(|(e, _)| Member {
                    kind: classify(e).0,
                    data_base64: STANDARD.encode(e),
                })
                .collect(),
        },
        kfmenv: env.as_str(),
    };
    Ok((serde_json::to_vec(&doc)?, id))
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
    /// The same refusal, said of member `i` of a batch.
    fn member(self, i: usize) -> Self {
        match self {
            Rejected::Schema { schema, errors } => Rejected::Schema {
                schema,
                errors: format!("batch member {i}: {errors}"),
            },
            other => other,
        }
    }

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
    // The usual answer, found without collecting errors.
    if v.is_valid(doc) {
        return None;
    }
    let errs: Vec<String> = v
        .iter_errors(doc)
        .take(3)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    (!errs.is_empty()).then(|| errs.join("; "))
}

/// Checks an event as it arrived (its bytes and its `Nats-Msg-Id`
/// header) for the sequencer of `env`: the entries it carries, in order
/// (one, or a batch's members).
pub fn check(
    payload: &[u8],
    msg_id: Option<&str>,
    env: Environment,
) -> Result<Vec<Checked>, Rejected> {
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
    let (checked, identity) = if c.kind == BATCH {
        let members = doc
            .pointer("/data/entries")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let Some(mc) = schemas.iter().find(|c| c.kind == kind && c.kind != BATCH) else {
                return Err(Rejected::UnknownType(kind.chars().take(80).collect()));
            };
            let data = decode(m.get("data_base64"), mc.kind).map_err(|e| e.member(i))?;
            out.push(check_entry(mc, data).map_err(|e| e.member(i))?);
        }
        let leaves: Vec<Hash> = out.iter().map(|c| c.leaf).collect();
        let id = batch_id(&leaves);
        (out, id)
    } else {
        let data = decode(doc.get("data_base64"), c.kind)?;
        let one = check_entry(c, data)?;
        let leaf = one.leaf;
        (vec![one], leaf)
    };
    let id = doc.get("id").and_then(Value::as_str).unwrap_or("");
    if id != hex::encode(identity) {
        return Err(Rejected::Identity {
            id: id.to_owned(),
            actual: hex::encode(identity),
        });
    }
    if let Some(h) = msg_id
        && !msg_id_names(h, id)
    {
        return Err(Rejected::MsgId {
            header: h.chars().take(80).collect(),
            id: id.to_owned(),
        });
    }
    Ok(checked)
}

/// What separates an event's id from a re-send's number in its
/// `Nats-Msg-Id` (`<id>-r2`).
///
/// Why a re-send may need another message id: a JetStream server stages a
/// message id in its duplicate window *before* the message is stored, and
/// a server older than 2.10 answers a later publish with that id "duplicate"
/// (at sequence 0) even when the staged message was lost with a leader that
/// died. The same id would then be refused for the whole window although
/// nothing is stored; the producer sends the same bytes under `<id>-rN`
/// instead. The stream may then hold an event twice, which the sequencer's
/// per-leaf check integrates once.
pub const RESEND_MARK: &str = "-r";

/// The `Nats-Msg-Id` of re-send `n` of the event `id` (`n` = 0: `id`).
pub fn resend_msg_id(id: &str, n: u32) -> String {
    if n == 0 {
        id.to_owned()
    } else {
        format!("{id}{RESEND_MARK}{n}")
    }
}

/// Whether a `Nats-Msg-Id` header names the event `id`: the id itself, or
/// a re-send of it ([`RESEND_MARK`] and a number).
fn msg_id_names(header: &str, id: &str) -> bool {
    match header.strip_prefix(id) {
        Some("") => true,
        Some(rest) => rest.strip_prefix(RESEND_MARK).is_some_and(|n| {
            (1..=4).contains(&n.len())
                && n.bytes().all(|b| b.is_ascii_digit())
                && !n.starts_with('0')
        }),
        None => false,
    }
}

/// An entry's bytes from its `data_base64`, at most [`MAX_ENTRY`].
fn decode(v: Option<&Value>, kind: &'static str) -> Result<Vec<u8>, Rejected> {
    let data = v
        .and_then(Value::as_str)
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| Rejected::Schema {
            schema: dataschema(kind),
            errors: "data_base64 is not base64".into(),
        })?;
    if data.len() > MAX_ENTRY {
        return Err(Rejected::Oversized {
            len: data.len(),
            max: MAX_ENTRY,
        });
    }
    Ok(data)
}

/// Checks one entry against its type's data schema.
fn check_entry(c: &Compiled, data: Vec<u8>) -> Result<Checked, Rejected> {
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
    Ok(Checked {
        kind: c.kind,
        leaf: leaf_hash(&data),
        entry: data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_schema_compiles() {
        assert_eq!(compiled().map(|c| c.len()), Ok(4));
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
            let (env, k) = env;
            assert_eq!(k, kind);
            let c = check(&env, Some(&hex::encode(leaf)), Environment::Dev).unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!((c[0].kind, c[0].entry.as_slice()), (kind, *e));
        }
    }

    #[test]
    fn a_resend_may_carry_a_numbered_msg_id_and_nothing_else() {
        let e = br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"k","sig":"c2ln"}]}"#;
        let leaf = leaf_hash(e);
        let (body, _) = envelope(e, &leaf, Environment::Dev, "urn:kfm:test").unwrap();
        let id = hex::encode(leaf);
        for n in [1, 2, 9999] {
            let h = resend_msg_id(&id, n);
            assert!(check(&body, Some(&h), Environment::Dev).is_ok(), "{h}");
        }
        assert_eq!(resend_msg_id(&id, 0), id);
        let other = hex::encode(leaf_hash(b"another entry"));
        for h in [
            format!("{id}-r"),
            format!("{id}-r0"),
            format!("{id}-r01"),
            format!("{id}-r12345"),
            format!("{id}-rx"),
            format!("{id}-r1 "),
            format!("{id}x"),
            format!("{other}-r1"),
            id[..10].to_owned(),
        ] {
            assert_eq!(
                check(&body, Some(&h), Environment::Dev).unwrap_err().code(),
                "msg-id",
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_batch_carries_its_members_in_order_and_refuses_any_altered_one() {
        let access = br#"{"action":"read","auth":"anonymous","kind":"kfm.api.Access","method":"GET","path":"/","request_id":"r1","roles":[],"route":"/","status":200,"subject":"anonymous","time":"2026-12-03T00:00:00Z"}"#;
        let opaque: &[u8] = b"\x00\xffnot json";
        let members: Vec<(&[u8], Hash)> = [&access[..], opaque, &access[..]]
            .iter()
            .map(|e| (*e, leaf_hash(e)))
            .collect();
        let (body, id) = batch_envelope(&members, Environment::Dev, "urn:kfm:test").unwrap();
        let got = check(&body, Some(&hex::encode(id)), Environment::Dev).unwrap();
        let kinds: Vec<&str> = got.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ACCESS, ENTRY, ACCESS]);
        assert!(
            got.iter()
                .zip(&members)
                .all(|(c, (e, l))| c.entry == *e && c.leaf == *l)
        );

        // Another id, or members swapped: the identity no longer holds.
        let swapped: Vec<(&[u8], Hash)> = vec![members[1], members[0], members[2]];
        let (other, _) = batch_envelope(&swapped, Environment::Dev, "urn:kfm:test").unwrap();
        let mut doc: Value = serde_json::from_slice(&other).unwrap();
        doc["id"] = json!(hex::encode(id));
        let forged = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            check(&forged, None, Environment::Dev).unwrap_err().code(),
            "identity"
        );

        // A member that fails its type's schema: the batch is refused,
        // naming the member.
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        doc["data"]["entries"][2]["data_base64"] =
            json!(STANDARD.encode(br#"{"kind":"kfm.api.Access"}"#));
        let e = check(&serde_json::to_vec(&doc).unwrap(), None, Environment::Dev).unwrap_err();
        assert_eq!(e.code(), "schema");
        assert!(e.to_string().contains("batch member 2"), "{e}");

        // A batch nested in a batch, an empty batch, another environment.
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        doc["data"]["entries"][0]["type"] = json!(BATCH);
        let e = check(&serde_json::to_vec(&doc).unwrap(), None, Environment::Dev).unwrap_err();
        assert_eq!(e.code(), "schema");
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        doc["data"]["entries"] = json!([]);
        let e = check(&serde_json::to_vec(&doc).unwrap(), None, Environment::Dev).unwrap_err();
        assert_eq!(e.code(), "schema");
        assert_eq!(
            check(&body, None, Environment::Prod).unwrap_err().code(),
            "wrong-environment"
        );
    }
}
