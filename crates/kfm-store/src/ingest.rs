//! Streaming a source into `raw/`, hashing in the same pass.
//!
//! The content address (`raw/<dataset>/<sha256>/…`) is only known once every
//! byte has been read, yet the source may be read only once and memory must
//! stay flat. So the bytes are streamed into a staging object in `work/`
//! while a reader thread hashes them, and the finished staging object is
//! then published under its digest by a create-only copy: a hard link on a
//! directory (no second copy of the bytes), a conditional multipart copy on
//! S3. A crash at any point leaves at most a staging object in `work/`;
//! `raw/` only ever shows complete objects whose digest was computed from
//! exactly the bytes stored.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kfm_core::{DatasetId, Digest, Hasher, Zone};
use object_store::{ObjectStoreExt, WriteMultipart};

use crate::error::{Result, StoreError};
use crate::zones::Raw;
use crate::{Backend, Store, WriteOnce};

/// Bytes read from the source per chunk handed from the reader thread to the
/// uploader.
const CHUNK: usize = 1 << 20;
/// Multipart part size (S3 requires at least 5 MiB for all but the last).
const PART: usize = 8 << 20;
/// Chunks buffered between reader and writer, and (S3) parts in flight:
/// memory stays below `CHANNEL*CHUNK + (IN_FLIGHT+1)*PART` = 28 MiB,
/// whatever the file size.
const CHANNEL: usize = 4;
const IN_FLIGHT: usize = 2;

/// Receives the number of bytes read so far (drives a progress bar).
pub type IngestProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// The result of streaming a source into `raw/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedIngest {
    pub digest: Digest,
    pub size: u64,
    /// Zone-relative key of the raw object: `<dataset>/<hex>/<file_name>`.
    pub key: String,
    /// False when identical bytes were already stored (nothing was written).
    pub created: bool,
}

impl WriteOnce<Raw> {
    /// Streams `source` into `raw/<dataset>/<sha256>/<file_name>`.
    ///
    /// `what` names the source in errors. An empty source is refused (there
    /// is nothing to acquire). On any error nothing appears under `raw/`.
    pub async fn ingest_stream<R: Read + Send + 'static>(
        &self,
        dataset: &DatasetId,
        file_name: &str,
        source: R,
        what: &str,
        progress: IngestProgress,
    ) -> Result<StagedIngest> {
        let store = &self.io.store;
        let work = store.work();
        let staging_key = format!("{dataset}/ingest-{}/{file_name}", uuid::Uuid::new_v4());
        let staging = work.io.path(&staging_key)?;
        let os = self.io.os().clone();

        let staged = match &store.inner.backend {
            Backend::Local { dir } => {
                let path = dir.join(staging.as_ref());
                let what = what.to_owned();
                tokio::task::spawn_blocking(move || stage_file(&path, source, &what, progress))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: staging_key.clone(),
                        source: std::io::Error::other(e),
                    })?
            }
            Backend::S3 => {
                stage_multipart(&os, &staging, &staging_key, source, what, progress).await
            }
        };
        let (digest, size) = match staged {
            Ok(v) => v,
            Err(e) => {
                let _ = work.delete(&staging_key).await;
                return Err(e);
            }
        };

        let key = format!("{dataset}/{}/{file_name}", digest.hex());
        let final_path = self.io.path(&key)?;
        let created = match os.copy_if_not_exists(&staging, &final_path).await {
            Ok(()) => true,
            Err(object_store::Error::AlreadyExists { .. }) => false,
            Err(e) => {
                let _ = work.delete(&staging_key).await;
                return Err(StoreError::backend("publish", Zone::Raw, &key, e));
            }
        };
        if let Err(e) = work.delete(&staging_key).await {
            tracing::warn!(error = %e, key = %staging_key, "could not remove staging object; it will be swept later");
        }
        if let Backend::Local { dir } = &store.inner.backend
            && let Some(parent) = dir.join(staging.as_ref()).parent()
        {
            // The per-ingest staging directory is empty now; a failure here
            // only leaves an empty directory for the sweep.
            let _ = std::fs::remove_dir(parent);
        }
        Ok(StagedIngest {
            digest,
            size,
            key,
            created,
        })
    }
}

/// Reads `source` once in `CHUNK`s, hashing each and handing it to `send`,
/// until EOF or until `send` returns false (the consumer failed; its error
/// is the one reported). Returns the digest and length of what was read.
fn read_and_hash(
    source: &mut impl Read,
    progress: &IngestProgress,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    loop {
        let mut buf = Vec::with_capacity(CHUNK);
        source.take(CHUNK as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            break;
        }
        hasher.update(&buf);
        progress(hasher.len());
        if !send(buf) {
            break;
        }
    }
    let len = hasher.len();
    Ok((hasher.finish(), len))
}

fn empty_source(what: String) -> StoreError {
    StoreError::Read {
        what,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the source is empty (0 bytes): nothing to acquire",
        ),
    }
}

/// Local backend: a reader thread reads and hashes, this thread writes the
/// staging file. Writeback to disk is started behind the writer
/// (`sync_file_range`) so that the final `fdatasync` finds little left to
/// do: durability costs almost nothing over the copy itself.
fn stage_file<R: Read + Send>(
    path: &std::path::Path,
    mut source: R,
    what: &str,
    progress: IngestProgress,
) -> Result<(Digest, u64)> {
    use std::io::Write;
    let io_err = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHANNEL);

    std::thread::scope(|scope| {
        let reader =
            scope.spawn(move || read_and_hash(&mut source, &progress, |buf| tx.send(buf).is_ok()));

        let mut writeback = Writeback::default();
        let mut write_err = None;
        for buf in rx {
            if let Err(e) = file.write_all(&buf) {
                write_err = Some(e);
                break;
            }
            writeback.advance(&file, buf.len() as u64);
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
        if let Some(e) = write_err {
            return Err(io_err(e));
        }
        let (digest, size) = read.map_err(|source| StoreError::Read {
            what: what.to_owned(),
            source,
        })?;
        if size == 0 {
            return Err(empty_source(what.to_owned()));
        }
        file.sync_data().map_err(io_err)?;
        Ok((digest, size))
    })
}

/// Starts writeback of each window as soon as it is written and waits for
/// the one before it, bounding dirty pages to two windows.
#[derive(Default)]
struct Writeback {
    written: u64,
    started: u64,
    previous: u64,
}

impl Writeback {
    const WINDOW: u64 = 8 << 20;

    fn advance(&mut self, file: &std::fs::File, n: u64) {
        self.written += n;
        if self.written - self.started >= Self::WINDOW {
            sync_range(file, self.previous, self.started - self.previous, true);
            sync_range(file, self.started, self.written - self.started, false);
            self.previous = self.started;
            self.started = self.written;
        }
    }
}

/// `sync_file_range`: start writeback of a byte range (and, with `wait`,
/// wait for it). A hint for speed only: durability comes from the
/// `fdatasync` that follows, so failures are ignored.
#[cfg(target_os = "linux")]
fn sync_range(file: &std::fs::File, offset: u64, len: u64, wait: bool) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: the descriptor is borrowed from a live `File` for the duration
    // of the call; sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_range(_: &std::fs::File, _: u64, _: u64, _: bool) {}

/// S3 backend: a reader thread reads and hashes; parts are uploaded as they
/// fill, with a bounded number in flight.
async fn stage_multipart<R: Read + Send + 'static>(
    os: &std::sync::Arc<dyn object_store::ObjectStore>,
    staging: &object_store::path::Path,
    staging_key: &str,
    source: R,
    what: &str,
    progress: IngestProgress,
) -> Result<(Digest, u64)> {
    let upload = os
        .put_multipart(staging)
        .await
        .map_err(|e| StoreError::backend("put_multipart", Zone::Work, staging_key, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL);
    let reader = tokio::task::spawn_blocking(move || {
        let mut source = source;
        read_and_hash(&mut source, &progress, |buf| {
            tx.blocking_send(Bytes::from(buf)).is_ok()
        })
    });

    let mut upload_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.wait_for_capacity(IN_FLIGHT).await {
            upload_err = Some(e);
            break;
        }
        writer.put(chunk);
    }
    drop(rx);
    let read = reader.await.map_err(|e| StoreError::Read {
        what: what.to_owned(),
        source: std::io::Error::other(e),
    })?;
    if let Some(e) = upload_err {
        let _ = writer.abort().await;
        return Err(StoreError::backend("upload", Zone::Work, staging_key, e));
    }
    let (digest, size) = match read {
        Ok(v) => v,
        Err(source) => {
            let _ = writer.abort().await;
            return Err(StoreError::Read {
                what: what.to_owned(),
                source,
            });
        }
    };
    if size == 0 {
        let _ = writer.abort().await;
        return Err(empty_source(what.to_owned()));
    }
    writer
        .finish()
        .await
        .map_err(|e| StoreError::backend("complete upload", Zone::Work, staging_key, e))?;
    Ok((digest, size))
}

impl Store {
    /// Removes ingest staging left in `work/<dataset>/` by crashed or killed
    /// ingests older than `min_age` (younger ones may belong to an ingest
    /// still running). Returns how many were removed.
    ///
    /// On S3, abandoned multipart uploads are invisible to listing; a bucket
    /// lifecycle rule (AbortIncompleteMultipartUpload) cleans those.
    pub async fn sweep_abandoned_ingests(
        &self,
        dataset: &DatasetId,
        min_age: Duration,
    ) -> Result<usize> {
        match &self.inner.backend {
            Backend::Local { dir } => {
                let ds_dir = dir.join(Zone::Work.prefix()).join(dataset.as_str());
                tokio::task::spawn_blocking(move || sweep_local(&ds_dir, min_age))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: "work/".into(),
                        source: std::io::Error::other(e),
                    })?
            }
            Backend::S3 => {
                let work = self.work();
                let cutoff = chrono_like_cutoff(min_age);
                let mut removed = 0;
                let p = work.io.path(dataset.as_str())?;
                let objects: Vec<_> =
                    futures::TryStreamExt::try_collect(self.inner.os.list(Some(&p)))
                        .await
                        .map_err(|e| {
                            StoreError::backend("list", Zone::Work, dataset.as_str(), e)
                        })?;
                for m in objects {
                    let rel = m.location.as_ref().trim_start_matches("work/").to_owned();
                    let is_staging = rel
                        .split('/')
                        .nth(1)
                        .is_some_and(|s| s.starts_with("ingest-"));
                    if is_staging && m.last_modified.timestamp() < cutoff {
                        work.delete(&rel).await?;
                        removed += 1;
                    }
                }
                Ok(removed)
            }
        }
    }
}

fn chrono_like_cutoff(min_age: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - min_age.as_secs() as i64
}

fn sweep_local(ds_dir: &std::path::Path, min_age: Duration) -> Result<usize> {
    let io = |source, path: &std::path::Path| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let entries = match std::fs::read_dir(ds_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e, ds_dir)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io(e, ds_dir))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("ingest-") {
            continue;
        }
        let path = entry.path();
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age >= min_age {
            std::fs::remove_dir_all(&path).map_err(|e| io(e, &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}
