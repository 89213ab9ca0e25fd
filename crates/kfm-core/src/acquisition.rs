//! The acquisition record written beside every raw object
//! (`raw/<dataset>/<hex>/acquisition.json`): who brought which bytes in,
//! from where, when, and with which tool.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::DatasetId;
use crate::spec::SourceFormat;

/// Schema tag, so that later readers can tell record versions apart.
pub const ACQUISITION_KIND: &str = "kfm.acquisition/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acquisition {
    pub kind: String,
    pub dataset: DatasetId,
    /// Digest of the exact bytes received.
    pub digest: Digest,
    pub size: u64,
    /// Store key of the raw object.
    pub object: String,
    pub format: SourceFormat,
    pub media_type: String,
    /// Where the bytes came from, as a URI.
    pub source_uri: String,
    /// Digest of the dataset spec file used for this ingest.
    pub spec_digest: Digest,
    pub actor: String,
    pub acquired_at: DateTime<Utc>,
    pub tool: Tool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Tool {
    /// This build of KFM.
    pub fn kfm() -> Self {
        Self {
            name: "kfm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}
