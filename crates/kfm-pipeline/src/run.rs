//! What every run of the truth path shares (a promotion, a rollback, the
//! bookkeeping of runs): its id, how it writes times, and the policy it
//! runs under. Its own module so that those modules depend on it and not
//! on each other.

use chrono::{DateTime, SecondsFormat, Utc};
use kfm_core::Digest;

/// The policy bundle in force, as gate B and G need it.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub digest: Digest,
    pub revision: String,
    /// `data.kfm.licenses`: license id → `{attribution: bool}`.
    pub licenses: serde_json::Value,
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A sortable, unique run id: UTC time to the millisecond (runs of one
/// dataset are ordered by it, and several fit in a second), then 8 random
/// hex digits.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%S%3fZ"), &r[..8])
}
