//! A ledger round's objects (tiles and entry bundles), created together
//! and made durable together.

use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use kfm_core::{Digest, Zone};
use kfm_store::{Audit, Result, StoreError, check_key};

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
pub async fn create_all_durable(audit: &Audit, objects: Vec<(String, Bytes)>) -> Result<()> {
    match audit.local_root().zip(audit.local_dir()) {
        Some((root, zone_dir)) => {
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
                let path = zone_dir.join(&key);
                files.push((key, path, bytes));
            }
            // The store's root exists from the start (a zone directory may
            // not yet): the sync goes through it.
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || create_files_durable(&root, files))
                .await
                .map_err(|e| StoreError::Io {
                    path: zone_dir.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?
        }
        _ => {
            use futures::StreamExt as _;
            let writes =
                futures::stream::iter(objects.into_iter().map(|(key, bytes)| async move {
                    let want = Digest::of(&bytes);
                    match audit.create(&key, bytes).await {
                        Err(StoreError::AlreadyExists { zone, key: k }) => {
                            if Digest::of(&audit.get(&key).await?) == want {
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

/// The blocking half of [`create_all_durable`] on a directory.
fn create_files_durable(root: &FsPath, files: Vec<(String, PathBuf, Bytes)>) -> Result<()> {
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
                        zone: Zone::Audit,
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
