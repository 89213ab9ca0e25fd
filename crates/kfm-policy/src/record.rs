//! Decision records, shaped for the ledger.
//!
//! A record proves *that* a decision was taken, under which bundle, on
//! which input, without holding the input: inputs can carry a subject's
//! attributes and a restricted resource's metadata, so only their digest
//! (over RFC 8785 canonical JSON, so equal inputs hash equal) is kept.

use kfm_core::{Digest, to_canonical_json};
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, DecisionPoint};
use crate::obligation::Obligation;

/// The `kind` of a decision record.
pub const DECISION_KIND: &str = "kfm.policy.Decision";

/// One decision, ready to append to the ledger as canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    pub kind: String,
    pub decision_id: String,
    pub bundle_digest: Digest,
    pub bundle_revision: String,
    /// sha256 of the canonical JSON of the input.
    pub input_digest: Digest,
    pub allow: bool,
    pub reason: String,
    pub obligations: Vec<Obligation>,
    /// RFC 3339, UTC.
    pub time: String,
}

impl DecisionRecord {
    /// Records `decision`, taken by `point` on `input`, at `time`.
    pub fn new(
        point: &DecisionPoint,
        input: &serde_json::Value,
        decision: &Decision,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::for_input_digest(
            point,
            input_digest(input)?,
            decision,
            time,
        ))
    }

    /// Records a decision whose input digest the caller already holds (an
    /// enforcement point that reuses a decision for an identical input).
    pub fn for_input_digest(
        point: &DecisionPoint,
        input_digest: Digest,
        decision: &Decision,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Self {
            kind: DECISION_KIND.to_owned(),
            decision_id: uuid::Uuid::new_v4().to_string(),
            bundle_digest: *point.digest(),
            bundle_revision: point.revision().to_owned(),
            input_digest,
            allow: decision.allow,
            reason: decision.reason.clone(),
            obligations: decision.obligations.clone(),
            time: time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }

    /// The bytes to append to the ledger (canonical JSON, RFC 8785).
    ///
    /// An error is returned, never empty bytes: a record that cannot be
    /// encoded must not be signed into the ledger as something else.
    pub fn to_ledger_entry(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_canonical_json(self)
    }
}

/// sha256 over the canonical JSON of `input`.
///
/// Fails (rather than hashing empty bytes) when the input has no canonical
/// form, so that two different inputs can never share a digest by accident.
pub fn input_digest(input: &serde_json::Value) -> Result<Digest, serde_json::Error> {
    Ok(Digest::of(&to_canonical_json(input)?))
}
