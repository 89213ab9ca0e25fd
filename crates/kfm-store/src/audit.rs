//! The audit zone: the ledger's write-once tiles and bundles, its
//! compare-and-swap checkpoint and its single-writer lock.

use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use kfm_core::Zone;
use object_store::{ObjectStoreExt, PutMode};

use crate::{Backend, Pointer, PointerVersion, Result, StoreError, ZoneIo, lock_file};
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

    /// The directory store's root (`None` on S3): where the ledger keeps
    /// what lives beside the zones, its journal (`.kfm-journal/`).
    pub fn local_root(&self) -> Option<&FsPath> {
        match &self.io.store.inner.backend {
            Backend::Local { dir } => Some(dir),
            Backend::S3 => None,
        }
    }

    /// The directory holding this zone's objects on a directory store
    /// (`None` on S3): the ledger creates a round's objects there in place
    /// and syncs them together. A key `k` of this zone is the file
    /// `local_dir()/k`.
    pub fn local_dir(&self) -> Option<PathBuf> {
        Some(self.local_root()?.join(self.io.zone.prefix()))
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
