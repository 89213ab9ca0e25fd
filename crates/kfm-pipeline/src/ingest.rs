//! Ingest: a dataset spec and its source in, one raw acquisition out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use kfm_core::{
    ACQUISITION_KIND, Acquisition, DatasetId, DatasetSpec, Digest, SourceLocation, SpecError, Tool,
    to_canonical_json,
};
use kfm_store::{IngestProgress, Store, StoreError};

/// Why an ingest could not be done. Nothing was written under `raw/` in any
/// of these cases, except where a variant says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read dataset spec {path}: {source}")]
    SpecRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error(
        "{spec}: source.uri uses the {scheme}:// scheme, which kfm ingest cannot fetch; download the file and point source.uri at its path"
    )]
    UnsupportedSource { spec: String, scheme: String },
    #[error("{spec}: source {path} cannot be read: {source}")]
    Source {
        spec: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{spec}: source {path} is not a regular file")]
    SourceNotFile { spec: String, path: String },
    #[error(
        "{spec}: source {path} is outside the workspace {workspace}: a spec names only files under its workspace unless acquiring from elsewhere is asked for explicitly"
    )]
    SourceOutsideWorkspace {
        spec: String,
        path: String,
        workspace: String,
    },
    #[error("{spec}: source {path} is empty (0 bytes): nothing to acquire")]
    SourceEmpty { spec: String, path: String },
    /// The store failed or refused. Objects created before the failure are
    /// complete (write-once), never partial.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An existing acquisition record disagrees with the object it describes.
    #[error("raw/{key} does not describe the object beside it: {reason}")]
    CorruptRecord { key: String, reason: String },
}

/// What to ingest and on whose behalf.
pub struct IngestRequest<'a> {
    pub spec_path: &'a Path,
    /// The source must resolve inside this directory (the workspace);
    /// `None` allows any path (asked for explicitly).
    pub within: Option<&'a Path>,
    /// Who is acquiring (recorded in acquisition.json).
    pub actor: String,
    /// Called once with the source size; returns the per-chunk progress sink.
    pub progress: Box<dyn FnOnce(u64) -> IngestProgress + Send + 'a>,
}

/// The result of an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// New bytes: a new acquisition was recorded.
    New(Acquisition),
    /// These exact bytes were acquired before; nothing was written.
    Existing(Acquisition),
    /// The bytes were stored by an earlier ingest that stopped before writing
    /// its record; the record has now been written.
    Completed(Acquisition),
}

impl IngestOutcome {
    pub fn acquisition(&self) -> &Acquisition {
        match self {
            IngestOutcome::New(a) | IngestOutcome::Existing(a) | IngestOutcome::Completed(a) => a,
        }
    }
}

/// Reads and parses a spec file; also returns the digest of its bytes.
pub fn load_spec(path: &Path) -> Result<(DatasetSpec, Digest), IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::SpecRead {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.display().to_string();
    let text = std::str::from_utf8(&bytes).map_err(|e| SpecError {
        file: name.clone(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        column: 1,
        message: "the file is not valid UTF-8".into(),
    })?;
    Ok((DatasetSpec::parse(text, &name)?, Digest::of(&bytes)))
}

/// Staging objects older than this are from ingests that died.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Streams the spec's source into `raw/<dataset>/<sha256>/source.<ext>`,
/// reading it once and hashing in the same pass, then records the
/// acquisition. Identical bytes again are a no-op that reports the earlier
/// acquisition.
pub async fn ingest(store: &Store, req: IngestRequest<'_>) -> Result<IngestOutcome, IngestError> {
    let (spec, spec_digest) = load_spec(req.spec_path)?;
    let spec_name = req.spec_path.display().to_string();
    let spec_dir = req.spec_path.parent().unwrap_or(Path::new("."));

    let path: PathBuf = match spec.source.resolve(spec_dir) {
        SourceLocation::File(p) => p,
        SourceLocation::Unsupported { scheme } => {
            return Err(IngestError::UnsupportedSource {
                spec: spec_name,
                scheme,
            });
        }
    };
    let src_err = |source| IngestError::Source {
        spec: spec_name.clone(),
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(src_err)?;
    let meta = file.metadata().map_err(src_err)?;
    if !meta.is_file() {
        return Err(IngestError::SourceNotFile {
            spec: spec_name,
            path: path.display().to_string(),
        });
    }
    if meta.len() == 0 {
        return Err(IngestError::SourceEmpty {
            spec: spec_name,
            path: path.display().to_string(),
        });
    }
    let abs = path.canonicalize().unwrap_or_else(|_| path.clone());
    if let Some(root) = req.within {
        // Symlinks resolved on both sides: a link inside the workspace to
        // a file outside it is outside.
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if !abs.starts_with(&root) {
            return Err(IngestError::SourceOutsideWorkspace {
                spec: spec_name,
                path: abs.display().to_string(),
                workspace: root.display().to_string(),
            });
        }
    }

    match store
        .sweep_abandoned_ingests(&spec.id, ABANDONED_AFTER)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(dataset = %spec.id, removed = n, "swept abandoned ingest staging"),
        Err(e) => {
            tracing::warn!(dataset = %spec.id, error = %e, "could not sweep abandoned ingest staging")
        }
    }

    let progress = (req.progress)(meta.len());
    let file_name = format!("source.{}", spec.source.format.extension());
    let staged = store
        .raw()
        .ingest_stream(
            &spec.id,
            &file_name,
            file,
            &path.display().to_string(),
            progress,
        )
        .await
        .map_err(|e| match e {
            StoreError::Read { source, .. } => src_err(source),
            e => IngestError::Store(e),
        })?;

    let record_key = format!("{}/{}/acquisition.json", spec.id, staged.digest.hex());
    let raw = store.raw();
    if !staged.created
        && let Some(existing) = raw.get_opt(&record_key).await?
    {
        let a = parse_record(&record_key, &existing)?;
        check_record(&record_key, &a, &staged.digest, staged.size)?;
        return Ok(IngestOutcome::Existing(a));
    }

    let acquisition = Acquisition {
        kind: ACQUISITION_KIND.into(),
        dataset: spec.id.clone(),
        digest: staged.digest,
        size: staged.size,
        object: format!("raw/{}", staged.key),
        format: spec.source.format,
        media_type: spec.source.format.media_type().into(),
        source_uri: format!("file://{}", abs.display()),
        spec_digest,
        actor: req.actor,
        acquired_at: Utc::now(),
        tool: Tool::kfm(),
    };
    let bytes = to_canonical_json(&acquisition).map_err(|e| IngestError::CorruptRecord {
        key: record_key.clone(),
        reason: e.to_string(),
    })?;
    match raw.create(&record_key, Bytes::from(bytes)).await {
        Ok(()) if staged.created => Ok(IngestOutcome::New(acquisition)),
        Ok(()) => Ok(IngestOutcome::Completed(acquisition)),
        // A concurrent ingest of the same bytes recorded first: report its record.
        Err(StoreError::AlreadyExists { .. }) => {
            let a = parse_record(&record_key, &raw.get(&record_key).await?)?;
            check_record(&record_key, &a, &staged.digest, staged.size)?;
            Ok(IngestOutcome::Existing(a))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_record(key: &str, bytes: &[u8]) -> Result<Acquisition, IngestError> {
    serde_json::from_slice(bytes).map_err(|e| IngestError::CorruptRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn check_record(key: &str, a: &Acquisition, digest: &Digest, size: u64) -> Result<(), IngestError> {
    if a.digest != *digest || a.size != size {
        return Err(IngestError::CorruptRecord {
            key: key.to_owned(),
            reason: format!(
                "record says {} ({} bytes), object is {} ({} bytes)",
                a.digest, a.size, digest, size
            ),
        });
    }
    Ok(())
}

/// One acquisition as found in `raw/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquisitionEntry {
    Recorded(Box<Acquisition>),
    /// Bytes are stored but the record is missing or unreadable (an ingest
    /// stopped between the two writes). Re-running the ingest completes it.
    Incomplete {
        digest: String,
        reason: String,
    },
}

/// Every acquisition of a dataset, oldest first (incomplete ones last).
pub async fn acquisitions(
    store: &Store,
    dataset: &DatasetId,
) -> Result<Vec<AcquisitionEntry>, StoreError> {
    let raw = store.raw();
    let mut recorded = Vec::new();
    let mut incomplete = Vec::new();
    for hex in raw.list_dirs(dataset.as_str()).await? {
        let key = format!("{dataset}/{hex}/acquisition.json");
        match raw.get_opt(&key).await? {
            Some(bytes) => match serde_json::from_slice::<Acquisition>(&bytes) {
                Ok(a) => recorded.push(Box::new(a)),
                Err(e) => incomplete.push(AcquisitionEntry::Incomplete {
                    digest: hex,
                    reason: format!("unreadable record: {e}"),
                }),
            },
            None => incomplete.push(AcquisitionEntry::Incomplete {
                digest: hex,
                reason: "no acquisition.json (re-run kfm ingest to complete it)".into(),
            }),
        }
    }
    recorded.sort_by(|a, b| {
        a.acquired_at
            .cmp(&b.acquired_at)
            .then(a.digest.cmp(&b.digest))
    });
    Ok(recorded
        .into_iter()
        .map(AcquisitionEntry::Recorded)
        .chain(incomplete)
        .collect())
}

/// A progress sink that ignores progress.
pub fn no_progress() -> IngestProgress {
    Arc::new(|_| {})
}
