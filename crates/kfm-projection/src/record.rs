//! What the projector writes into the ledger: one signed record per
//! projected layer, so that an auditor can
//! prove, from the ledger alone, which table held which canonical artifact.

use kfm_core::Envelope;
use kfm_core::canonical::to_canonical_json;
use kfm_core::dsse::Signer;
use kfm_ledger::Ledger;
use serde::{Deserialize, Serialize};

use crate::ProjectionError;

/// DSSE payload type of a projection record.
pub const PAYLOAD_TYPE: &str = "application/vnd.kfm.projection+json";
pub const KIND: &str = "kfm.projection/v1";

/// A projection record. It holds no time and no run id: the same table
/// with the same content is the same record, byte for byte (ed25519
/// signatures are deterministic), so a projector that resumes after a
/// crash finds the record it already appended instead of appending it twice.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProjectionRecord {
    pub kind: String,
    /// `load` (the only operation recorded: a projection dropped because
    /// its pointer moved or stopped verifying is explained by the entry
    /// that moved it, or by the failed verification).
    pub operation: String,
    pub dataset: String,
    pub version: u64,
    pub version_id: String,
    pub manifest_digest: String,
    /// `precise` or `generalized`.
    pub layer: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub rows: Option<u64>,
    pub projection_digest: Option<String>,
    pub artifact: Option<String>,
    pub artifact_digest: Option<String>,
}

/// Appends `record` unless the ledger already holds it; returns its index
/// and whether this call appended it.
pub async fn append_once(
    ledger: &Ledger,
    signer: &Signer,
    record: &ProjectionRecord,
) -> Result<(u64, bool), ProjectionError> {
    let payload = to_canonical_json(record).map_err(|e| ProjectionError::Record(e.to_string()))?;
    let envelope: Envelope = signer.sign(PAYLOAD_TYPE, &payload);
    let bytes = envelope
        .to_bytes()
        .map_err(|e| ProjectionError::Record(e.to_string()))?;
    let leaf = kfm_ledger::leaf_hash(&bytes);
    if let Some(i) = ledger.find_leaf(&leaf).await {
        return Ok((i, false));
    }
    let a = ledger
        .append(bytes)
        .await
        .map_err(|e| ProjectionError::Ledger(e.to_string()))?;
    Ok((a.index, true))
}

/// The record at ledger entry `index`, its signature checked.
pub async fn read(
    ledger: &Ledger,
    key: &ed25519_dalek::VerifyingKey,
    index: u64,
) -> Result<ProjectionRecord, ProjectionError> {
    let bytes = ledger
        .entry(index)
        .await
        .map_err(|e| ProjectionError::Ledger(format!("entry {index}: {e}")))?;
    let env = Envelope::parse(&bytes)
        .map_err(|e| ProjectionError::Ledger(format!("entry {index}: {e}")))?;
    let payload = env
        .verify(PAYLOAD_TYPE, key)
        .map_err(|e| ProjectionError::Ledger(format!("entry {index}: {e}")))?;
    serde_json::from_slice(&payload).map_err(|e| {
        ProjectionError::Ledger(format!("entry {index}: not a projection record: {e}"))
    })
}
