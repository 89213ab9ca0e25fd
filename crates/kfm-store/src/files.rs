//! Large objects as local files: a run reads its raw object from a file and
//! writes its artifacts to files, then publishes them create-only, so that
//! no object is ever held in memory whole.
//!
//! On a directory store everything stays on the store's file system: the
//! raw object is read where it lies, a run's scratch is `work/<key>/`, and
//! publishing is a hard link (no second copy of the bytes). On S3 the raw
//! object is downloaded into the scratch directory (a local temporary
//! directory, removed when the scratch is dropped), and publishing uploads
//! to `work/.staging/` and then copies create-only into place.

use std::path::{Path as FsPath, PathBuf};

use futures::StreamExt;
use kfm_core::Zone;
use object_store::ObjectStoreExt;

use crate::zones::WriteOnceZone;
use crate::{Backend, Result, STAGING, Store, StoreError, WriteOnce, check_key};

/// A local directory for a run's files ([`Store::scratch`]).
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    /// Removed when dropped (S3's temporary directories; a directory
    /// store's work/ is swept by the runs that follow).
    temporary: bool,
}

impl Scratch {
    pub fn dir(&self) -> &FsPath {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An object readable as a local file ([`WriteOnce::local_object`]).
#[derive(Debug)]
pub struct LocalObject {
    pub path: PathBuf,
}

fn io(path: &FsPath) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// A local directory for the files of a run: `work/<work_key>/` on a
    /// directory store (so that publishing a file is a hard link), a
    /// temporary directory on S3.
    pub fn scratch(&self, work_key: &str) -> Result<Scratch> {
        check_key(work_key)?;
        match &self.inner.backend {
            Backend::Local { dir } => {
                let d = dir.join(Zone::Work.prefix()).join(work_key);
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                Ok(Scratch {
                    dir: d,
                    temporary: false,
                })
            }
            Backend::S3 => {
                let d = std::env::temp_dir()
                    .join("kfm-scratch")
                    .join(uuid::Uuid::new_v4().simple().to_string());
                std::fs::create_dir_all(&d).map_err(io(&d))?;
                Ok(Scratch {
                    dir: d,
                    temporary: true,
                })
            }
        }
    }
}

impl<Z: WriteOnceZone> WriteOnce<Z> {
    /// The object at `key` as a local file: where it lies on a directory
    /// store; downloaded (streamed, in bounded memory) into `scratch` on S3.
    pub async fn local_object(&self, key: &str, scratch: &Scratch) -> Result<LocalObject> {
        let p = self.io.path(key)?;
        match &self.io.store.inner.backend {
            Backend::Local { dir } => {
                let path = dir.join(p.as_ref());
                if !path.is_file() {
                    return Err(StoreError::NotFound {
                        zone: Z::ZONE,
                        key: key.to_owned(),
                    });
                }
                Ok(LocalObject { path })
            }
            Backend::S3 => {
                use std::io::Write as _;
                let got = self
                    .io
                    .os()
                    .get(&p)
                    .await
                    .map_err(self.io.err("get", key))?;
                let path = scratch
                    .dir()
                    .join(format!("download-{}", uuid::Uuid::new_v4().simple()));
                let mut f =
                    std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(self.io.err("get", key))?;
                    f.write_all(&chunk).map_err(io(&path))?;
                }
                f.flush().map_err(io(&path))?;
                Ok(LocalObject { path })
            }
        }
    }

    /// Creates `key` from a finished local file, create-only like
    /// [`WriteOnce::create`] (`AlreadyExists` if anything is there). On a
    /// directory store the file must be a scratch file of this store: it
    /// is synced and hard-linked into place. On S3 it is uploaded to
    /// `work/.staging/` in parts and copied into place only if nothing is
    /// there.
    pub async fn create_from_file(&self, key: &str, file: &FsPath) -> Result<()> {
        let p = self.io.path(key)?;
        match &self.io.store.inner.backend {
            Backend::Local { dir } => {
                let target = dir.join(p.as_ref());
                let file = file.to_path_buf();
                let key = key.to_owned();
                let zone = Z::ZONE;
                tokio::task::spawn_blocking(move || {
                    std::fs::File::open(&file)
                        .and_then(|f| f.sync_all())
                        .map_err(io(&file))?;
                    let parent = target.parent().unwrap_or(&target).to_path_buf();
                    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                    match std::fs::hard_link(&file, &target) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Err(StoreError::AlreadyExists { zone, key });
                        }
                        Err(e) => return Err(io(&target)(e)),
                    }
                    std::fs::File::open(&parent)
                        .and_then(|d| d.sync_all())
                        .map_err(io(&parent))
                })
                .await
                .map_err(|e| StoreError::Io {
                    path: key_path(&p),
                    source: std::io::Error::other(e.to_string()),
                })?
            }
            Backend::S3 => {
                use object_store::WriteMultipart;
                use std::io::Read as _;
                let staging_key = format!(
                    "{}/{}",
                    STAGING.trim_start_matches("work/"),
                    uuid::Uuid::new_v4().simple()
                );
                let staging = self.io.store.work().io.path(&staging_key)?;
                let os = self.io.os().clone();
                let upload = os.put_multipart(&staging).await.map_err(|e| {
                    StoreError::backend("put_multipart", Zone::Work, &staging_key, e)
                })?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
                let mut f = std::fs::File::open(file).map_err(io(file))?;
                let mut buf = vec![0u8; 4 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io(file))?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(2)
                        .await
                        .map_err(|e| StoreError::backend("upload", Zone::Work, &staging_key, e))?;
                    w.write(&buf[..n]);
                }
                w.finish().await.map_err(|e| {
                    StoreError::backend("complete upload", Zone::Work, &staging_key, e)
                })?;
                let copied = os.copy_if_not_exists(&staging, &p).await;
                let _ = os.delete(&staging).await;
                copied.map_err(|e| StoreError::backend("publish", Z::ZONE, key, e))
            }
        }
    }
}

fn key_path(p: &object_store::path::Path) -> String {
    p.as_ref().to_owned()
}
