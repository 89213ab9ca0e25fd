//! What a run leaves behind to be proven later: the run receipt (an in-toto
//! Statement in a DSSE envelope), the release manifest (DSSE too), and the
//! release pointer that names a manifest and the ledger entry that
//! justified moving it.

use kfm_core::dsse::IN_TOTO_PAYLOAD_TYPE;
use kfm_core::{Digest, Envelope};
use serde::{Deserialize, Serialize};

use crate::catalog::Artifact;
use crate::gates::GateResult;

/// in-toto Statement v1 type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate of a KFM run receipt.
pub const RECEIPT_PREDICATE: &str = "https://kfm.dev/attestations/run-receipt/v1";
/// DSSE payload type of a release manifest.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.kfm.release-manifest+json";
pub const MANIFEST_KIND: &str = "kfm.release/v1";
pub const POINTER_KIND: &str = "kfm.release-pointer/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DigestSet {
    pub sha256: String,
}

impl From<&Digest> for DigestSet {
    fn from(d: &Digest) -> Self {
        Self { sha256: d.hex() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceDescriptor {
    pub name: String,
    pub digest: DigestSet,
}

/// An in-toto Statement whose predicate is a [`RunPredicate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: RunPredicate,
}

/// The run, in the spirit of SLSA provenance v1: what went in, with which
/// parameters and tools, what every gate said, under which policy, who ran
/// it and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPredicate {
    pub run_id: String,
    /// `promote` or `rollback`.
    pub operation: String,
    /// `published`, `quarantined` or (before the release step) `pending-release`.
    pub outcome: String,
    pub dataset: String,
    /// `<dataset>@v<N>` this run produced or restored, if it got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub inputs: Vec<ResourceDescriptor>,
    pub parameters: serde_json::Value,
    pub tools: Vec<ToolVersion>,
    pub gates: Vec<GateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    pub actor: String,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolVersion {
    pub name: String,
    pub version: String,
}

/// The policy bundle in force: digest and revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRef {
    pub digest: String,
    pub revision: String,
}

/// Where the run receipt sits in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LedgerRef {
    /// Digest of the exact ledger entry bytes.
    pub digest: String,
    pub ledger_index: u64,
}

/// The release manifest: the identity of a dataset version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub kind: String,
    pub dataset: String,
    pub version: u64,
    pub version_id: String,
    pub run_id: String,
    pub policy_label: String,
    /// For `embargoed` data: the date before which it may not be served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embargo_until: Option<chrono::NaiveDate>,
    pub license: String,
    /// Attribution text the license requires, as the spec gave it: the
    /// governed API attaches it to every answer that carries the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
    /// `mirror` or `metadata-only`: a metadata-only release is never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// The spec's generalisation plan (`{"method": "grid", "degrees": 0.1}`
    /// or `{"method": "h3", "resolution": 6}`): the policy input the API
    /// builds for this version carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generalization: Option<serde_json::Value>,
    /// The feature property holding each feature's date or date-time
    /// (the spec's `temporal_extent.property`): what `datetime=` filters on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_property: Option<String>,
    pub artifacts: Vec<Artifact>,
    pub catalog: Vec<Artifact>,
    pub policy: PolicyRef,
    pub receipt: LedgerRef,
    pub created_at: String,
}

/// `published/<dataset>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleasePointer {
    pub kind: String,
    pub dataset: String,
    pub version: u64,
    pub version_id: String,
    /// Store key of the signed manifest (`catalog/<ds>/v<N>/release.dsse.json`).
    pub manifest: String,
    pub manifest_digest: String,
    /// The ledger entry that moved the pointer here: the manifest itself
    /// after a promotion, a rollback receipt after a rollback.
    pub ledger_index: u64,
    pub ledger_entry_digest: String,
    pub operation: String,
    pub moved_at: String,
    /// The run that moved the pointer (absent in pointers written before
    /// runs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A record as KFM stores it: pretty JSON and a newline. Fallible in type
/// (our records have string keys only), so that a record that could not be
/// encoded is never stored as a default.
pub fn record_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}

pub fn manifest_key(ds: &str, v: u64) -> String {
    format!("catalog/{ds}/v{v}/release.dsse.json")
}
pub fn receipt_key(ds: &str, v: u64) -> String {
    format!("catalog/{ds}/v{v}/receipt.dsse.json")
}
pub fn pointer_key(ds: &str) -> String {
    format!("{ds}.json")
}

/// Reads the statement inside a verified receipt envelope.
pub fn statement_of(
    env: &Envelope,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Statement, String> {
    let payload = env
        .verify(IN_TOTO_PAYLOAD_TYPE, key)
        .map_err(|e| e.to_string())?;
    let s: Statement =
        serde_json::from_slice(&payload).map_err(|e| format!("not a run receipt: {e}"))?;
    if s.type_ != STATEMENT_TYPE || s.predicate_type != RECEIPT_PREDICATE {
        return Err(format!(
            "not a KFM run receipt (type {}, predicate {})",
            s.type_, s.predicate_type
        ));
    }
    Ok(s)
}

/// Reads the manifest inside a verified manifest envelope.
pub fn manifest_of(env: &Envelope, key: &ed25519_dalek::VerifyingKey) -> Result<Manifest, String> {
    let payload = env
        .verify(MANIFEST_PAYLOAD_TYPE, key)
        .map_err(|e| e.to_string())?;
    let m: Manifest =
        serde_json::from_slice(&payload).map_err(|e| format!("not a release manifest: {e}"))?;
    if m.kind != MANIFEST_KIND {
        return Err(format!(
            "manifest kind is {:?}, expected {MANIFEST_KIND}",
            m.kind
        ));
    }
    Ok(m)
}

/// Type of the event announced when a release pointer moves (CloudEvents
/// `type`; the version is part of it).
pub const RELEASE_MOVED: &str = "kfm.release.moved.v1";

/// Its schema, committed under `contracts/events/` (CloudEvents
/// `dataschema`).
pub const RELEASE_MOVED_SCHEMA: &str = "urn:kfm:contracts:events:kfm.release.moved.v1";

/// The event every process sharing the ledger receives when a pointer has
/// moved to `pointer` (written as `pointer_bytes`): a CloudEvents 1.0
/// envelope whose id is the digest of the pointer's bytes, so that the
/// same move announced twice is one event.
pub fn release_moved(
    pointer: &ReleasePointer,
    pointer_bytes: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let v = serde_json::json!({
        "specversion": "1.0",
        "id": kfm_core::Digest::of(pointer_bytes).to_string(),
        "source": "urn:kfm:pipeline",
        "type": RELEASE_MOVED,
        "dataschema": RELEASE_MOVED_SCHEMA,
        "subject": pointer.dataset,
        "time": pointer.moved_at,
        "datacontenttype": "application/json",
        "data": {
            "dataset": pointer.dataset,
            "version": pointer.version,
            "version_id": pointer.version_id,
            "manifest_digest": pointer.manifest_digest,
            "ledger_index": pointer.ledger_index,
            "operation": pointer.operation,
        },
    });
    serde_json::to_vec(&v)
}

/// Announces that a pointer moved. Advisory: a server that misses it
/// catches up at its next periodic check.
pub(crate) async fn announce_release(
    ledger: &kfm_ledger::Ledger,
    pointer: &ReleasePointer,
    pointer_bytes: &[u8],
) {
    let sent = match release_moved(pointer, pointer_bytes) {
        Ok(ev) => ledger.announce(ev).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "the moved pointer could not be announced; servers pick it up at their next check");
    }
}
