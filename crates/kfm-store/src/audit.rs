//! The audit zone: the ledger's write-once tiles and bundles, its
//! compare-and-swap checkpoint and its single-writer lock.

use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use kfm_core::{Digest, Zone};
use object_store::{ObjectStoreExt, PutMode};

use crate::{Backend, Pointer, PointerVersion, Result, StoreError, ZoneIo, check_key, lock_file};
/// Exclusive right to write one log, held for as long as this value lives.
#[derive(Debug)]
pub struct WriterLock {
    _file: Option<std::fs::File>,
}

/// The audit zone, owned by the ledger: its objects (tiles, entry bundles)
/// are created once; its checkpoint moves only by compare-and-swap.
#[derive(Clone, Debug)]
pub struct Audit {
    pub(crate) io: ZoneIo,
}

impl Audit {
    read_methods!();

    /// Creates an object; refused if anything is already at `key`.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.io
            .put_mode(key, bytes, PutMode::Create)
            .await
            .map(|_| ())
    }

    /// Creates many write-once objects (a ledger round's tiles and
    /// bundles) and returns once all of them are durable. An object already
    /// at its key with exactly the same bytes is accepted (a retry after a
    /// crash); one holding a prefix of them (a write a crash or a full disk
    /// cut short) is completed; different bytes are refused with
    /// `AlreadyExists`.
    ///
    /// Why not [`Audit::create`] in a loop: on a directory, object_store
    /// stages every object in a temporary file, fsyncs it, hard-links it and
    /// unlinks the staging file. Three inode operations per object and a
    /// stream of deleted inodes make ext4's inode allocator the ledger's
    /// largest CPU cost under load. Here each object is created in place
    /// (`O_EXCL`), written, and the round is made durable with one sync of
    /// the file system holding it (data, inodes and directory entries
    /// together).
    ///
    /// The price: after a crash, an object of an unfinished round may be
    /// present but short. That is safe only for objects that no checkpoint
    /// covers yet, which is how the ledger uses this (its checkpoint moves
    /// after this returns, and its recovery completes such objects from its
    /// journal). A reader never relies on anything beyond the checkpoint.
    pub async fn create_all_durable(&self, objects: Vec<(String, Bytes)>) -> Result<()> {
        match &self.io.store.inner.backend {
            Backend::Local { dir } => {
                let mut files = Vec::with_capacity(objects.len());
                for (key, bytes) in objects {
                    check_key(&key)?;
                    if !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                    {
                        return Err(StoreError::InvalidKey {
                            key,
                            reason: "bulk-created keys are limited to [A-Za-z0-9._/-]",
                        });
                    }
                    let path = dir.join(self.io.zone.prefix()).join(&key);
                    files.push((key, path, bytes));
                }
                let zone = self.io.zone;
                let root = dir.clone();
                tokio::task::spawn_blocking(move || create_files_durable(&root, zone, files))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: dir.display().to_string(),
                        source: std::io::Error::other(e.to_string()),
                    })?
            }
            Backend::S3 => {
                use futures::StreamExt as _;
                let writes =
                    futures::stream::iter(objects.into_iter().map(|(key, bytes)| async move {
                        let want = Digest::of(&bytes);
                        match self.create(&key, bytes).await {
                            Err(StoreError::AlreadyExists { zone, key: k }) => {
                                if Digest::of(&self.io.get(&key).await?) == want {
                                    Ok(())
                                } else {
                                    Err(StoreError::AlreadyExists { zone, key: k })
                                }
                            }
                            r => r,
                        }
                    }))
                    .buffer_unordered(8);
                writes.try_collect::<Vec<()>>().await.map(|_| ())
            }
        }
    }

    /// Reads the checkpoint object and its version.
    pub async fn read_checkpoint(&self, key: &str) -> Result<Option<Pointer>> {
        self.io.cas_read(key).await
    }

    /// Replaces the checkpoint only if it is still at `expected`.
    pub async fn swap_checkpoint(
        &self,
        key: &str,
        expected: Option<&PointerVersion>,
        new: Bytes,
    ) -> Result<PointerVersion> {
        self.io.cas_swap(key, expected, new).await
    }

    /// Removes an object that no signed checkpoint covers: on S3, where a
    /// batch writes its tiles before its checkpoint, the objects of a batch
    /// whose checkpoint never landed. The ledger calls this only during
    /// recovery, after checking that nothing (a journal record, the
    /// witnessed checkpoint, a release pointer) vouches for the object.
    pub async fn discard_uncommitted(&self, key: &str) -> Result<()> {
        let p = self.io.path(key)?;
        match self.io.os().delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend("delete", Zone::Audit, key, e)),
        }
    }

    /// Takes the exclusive writer lock for this store's ledger. On a local
    /// directory a second writer is refused at once (the OS lock dies with
    /// its process); on S3 there is no lock service, and the checkpoint's
    /// compare-and-swap alone guarantees that history cannot fork.
    pub fn lock_writer(&self) -> Result<WriterLock> {
        match &self.io.store.inner.backend {
            Backend::Local { dir } => match lock_file(dir, "audit-writer", true)? {
                Some(f) => Ok(WriterLock { _file: Some(f) }),
                None => Err(StoreError::Conflict {
                    zone: Zone::Audit,
                    key: "writer lock".into(),
                }),
            },
            Backend::S3 => Ok(WriterLock { _file: None }),
        }
    }
}

/// The blocking half of [`Audit::create_all_durable`] on a directory.
fn create_files_durable(
    root: &FsPath,
    zone: Zone,
    files: Vec<(String, PathBuf, Bytes)>,
) -> Result<()> {
    use std::io::Write as _;
    let io = |path: &FsPath| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    for (key, path, bytes) in &files {
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                open()
            }
            r => r,
        };
        match file {
            Ok(mut f) => f.write_all(bytes).map_err(io(path))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let have = std::fs::read(path).map_err(io(path))?;
                if have == bytes.as_ref() {
                    continue;
                }
                if !bytes.starts_with(&have) {
                    return Err(StoreError::AlreadyExists {
                        zone,
                        key: key.clone(),
                    });
                }
                // A write cut short (by a crash, or a full disk): finish
                // it with the bytes it was always going to hold.
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io(path))?;
                f.write_all_at(&bytes[have.len()..], have.len() as u64)
                    .map_err(io(path))?;
            }
            Err(e) => return Err(io(path)(e)),
        }
    }
    if !files.is_empty() {
        // One sync for the round: every file's data, its inode and its
        // directory entry, and any directory just created.
        let d = std::fs::File::open(root).map_err(io(root))?;
        // SAFETY: `syncfs` takes a file descriptor we own for the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
            return Err(io(root)(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
