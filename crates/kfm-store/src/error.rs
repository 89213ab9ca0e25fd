use kfm_core::Zone;

/// What went wrong in the store. Every variant names the key involved, so a
/// message can always say which object is affected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write-once zone already holds an object at this key. Write-once
    /// zones never overwrite: this is the invariant, not a transient error.
    #[error(
        "refused: {zone}/{key} already exists and the {zone} zone is write-once (objects there are never overwritten)"
    )]
    AlreadyExists { zone: Zone, key: String },

    /// A compare-and-swap lost: the pointer changed since it was read.
    #[error(
        "conflict: {zone}/{key} changed since it was read (another writer moved it first); re-read and retry"
    )]
    Conflict { zone: Zone, key: String },

    #[error("not found: {zone}/{key}")]
    NotFound { zone: Zone, key: String },

    /// A key that could escape its zone or is otherwise unusable.
    #[error("invalid store key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// The source being streamed in could not be read.
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The backend failed (disk, network, permissions, server).
    #[error("store backend error during {op} on {key}: {source}")]
    Backend {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },

    /// The store could not be opened.
    #[error("cannot open store {url}: {reason}")]
    Open { url: String, reason: String },

    #[error("local store I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn backend(
        op: &'static str,
        zone: Zone,
        key: &str,
        source: object_store::Error,
    ) -> Self {
        let key_s = key.to_owned();
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { zone, key: key_s },
            object_store::Error::AlreadyExists { .. } => {
                StoreError::AlreadyExists { zone, key: key_s }
            }
            object_store::Error::Precondition { .. } => StoreError::Conflict { zone, key: key_s },
            source => StoreError::Backend {
                op,
                key: format!("{zone}/{key}"),
                source,
            },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
