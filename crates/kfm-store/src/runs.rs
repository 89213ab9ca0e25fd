//! Runs taking turns, and the hygiene of a directory store: the lock a
//! run of one dataset holds, and sweeping what interrupted writes of
//! earlier versions left inside zones.

use std::path::Path as FsPath;

use crate::{Backend, Result, STAGING, Store, StoreError, check_key, lock_file};

impl Store {
    /// Waits for, then holds, the lock on runs of one dataset, so that its
    /// runs take turns (a run reads the pointer and the versions, claims
    /// one and moves the pointer; a run that finds another's claim without
    /// an outcome may then call it interrupted). On a directory an OS lock,
    /// released when its holder exits or dies; on S3 there is no lock
    /// service, and the version claim (create-only) and the pointer's
    /// compare-and-swap decide between concurrent runs.
    pub async fn lock_runs(&self, dataset: &str) -> Result<RunLock> {
        check_key(dataset)?;
        match &self.inner.backend {
            Backend::Local { dir } => {
                let (dir, name) = (dir.clone(), format!("runs/{dataset}"));
                let f = tokio::task::spawn_blocking(move || lock_file(&dir, &name, false))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: ".kfm-locks".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                Ok(RunLock { _file: f })
            }
            Backend::S3 => Ok(RunLock { _file: None }),
        }
    }

    /// Whether a run of `dataset` holds its lock right now (directory
    /// stores; `None` on S3, which cannot tell).
    pub fn runs_locked(&self, dataset: &str) -> Result<Option<bool>> {
        check_key(dataset)?;
        match &self.inner.backend {
            Backend::Local { dir } => Ok(Some(
                lock_file(dir, &format!("runs/{dataset}"), true)?.is_none(),
            )),
            Backend::S3 => Ok(None),
        }
    }

    /// Removes what an interrupted write could leave inside a zone on a
    /// directory store: files of an earlier version's staging scheme
    /// (`<name>#<digits>`, invisible to listing and never a valid key)
    /// under `processed/<dataset>`, `catalog/<dataset>` and `published/`,
    /// and staging files in `work/.staging` older than `min_age`. Returns
    /// the store-relative paths removed. (S3 writes are atomic: nothing to
    /// do there.)
    pub async fn sweep_temporaries(
        &self,
        dataset: &str,
        min_age: std::time::Duration,
    ) -> Result<Vec<String>> {
        check_key(dataset)?;
        let Backend::Local { dir } = &self.inner.backend else {
            return Ok(Vec::new());
        };
        let dir = dir.clone();
        let ds = dataset.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for sub in [
                format!("processed/{ds}"),
                format!("catalog/{ds}"),
                "published".to_owned(),
            ] {
                sweep_hash_temporaries(&dir, &dir.join(&sub), &mut removed)?;
            }
            let staging = dir.join(STAGING);
            if let Ok(entries) = std::fs::read_dir(&staging) {
                for e in entries.flatten() {
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= min_age);
                    if old && std::fs::remove_file(e.path()).is_ok() {
                        removed.push(format!("{STAGING}/{}", e.file_name().to_string_lossy()));
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| StoreError::Io {
            path: "store".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

/// Held while a run of one dataset is under way ([`Store::lock_runs`]).
#[derive(Debug)]
pub struct RunLock {
    _file: Option<std::fs::File>,
}

/// Removes `name#<digits>` files under `path` (recursively).
fn sweep_hash_temporaries(root: &FsPath, path: &FsPath, removed: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            sweep_hash_temporaries(root, &p, removed)?;
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let staging = name
            .rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if staging && std::fs::remove_file(&p).is_ok() {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            removed.push(rel.display().to_string());
        }
    }
    Ok(())
}
