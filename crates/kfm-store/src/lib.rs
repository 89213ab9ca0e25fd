//! The canonical store: KFM's zones over the `object_store` crate.
//!
//! The same keys live in a local directory (the embedded default) or an
//! S3-compatible bucket (the scale path), and the zone rules hold on both:
//!
//! * `raw`, `processed`, `catalog` and `quarantine` are **write-once**. Their
//!   handle ([`WriteOnce`]) has no overwrite and no delete method at all, and
//!   its one write, [`WriteOnce::create`], is a conditional create-only put
//!   (a hard link on a directory, `If-None-Match: *` on S3), so neither a
//!   second process nor a concurrent writer can replace an object.
//! * `published` holds release pointers that change only by
//!   compare-and-swap ([`Published::compare_and_swap`]).
//! * `work` is scratch ([`Work`]): overwrite and delete are allowed there.
//!
//! Callers get zone-typed handles from [`Store`]; the underlying
//! `ObjectStore` is never handed out, so there is no side door.
//!
//! ```compile_fail
//! // A write-once zone offers no way to delete…
//! # async fn f(store: kfm_store::Store) {
//! store.raw().delete("ks/abc/source.csv").await;
//! # }
//! ```
//! ```compile_fail
//! // …and no way to overwrite.
//! # async fn f(store: kfm_store::Store) {
//! store.processed().put("ks/v1/a.json", bytes::Bytes::new()).await;
//! # }
//! ```

mod error;
mod ingest;
mod key;
#[cfg(feature = "testing")]
pub mod testing;

use std::marker::PhantomData;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use kfm_core::{Digest, StoreUrl, Zone};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use error::{Result, StoreError};
pub use ingest::{IngestProgress, StagedIngest};
pub use key::check_key;

/// Marker types naming a zone at the type level, so that a handle's zone
/// (and therefore what it may do) is fixed when it is created.
pub mod zones {
    use kfm_core::Zone;

    /// A zone, named by a type.
    pub trait ZoneMarker: Send + Sync + 'static {
        const ZONE: Zone;
    }
    /// Zones whose objects are created once and never changed or deleted.
    pub trait WriteOnceZone: ZoneMarker {}

    macro_rules! zone {
        ($name:ident, $zone:expr, $write_once:expr) => {
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl ZoneMarker for $name {
                const ZONE: Zone = $zone;
            }
        };
    }
    zone!(Raw, Zone::Raw, true);
    zone!(Work, Zone::Work, false);
    zone!(Quarantine, Zone::Quarantine, true);
    zone!(Processed, Zone::Processed, true);
    zone!(Catalog, Zone::Catalog, true);
    zone!(Published, Zone::Published, false);

    impl WriteOnceZone for Raw {}
    impl WriteOnceZone for Quarantine {}
    impl WriteOnceZone for Processed {}
    impl WriteOnceZone for Catalog {}
}
use zones::{WriteOnceZone, ZoneMarker};

/// Connection settings for an S3-compatible store. Credentials are passed
/// in from the environment by the caller; they are never read from
/// `kfm.toml`.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    // Never print credentials, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Reads endpoint, region and credentials from the standard AWS
    /// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`).
    pub fn from_env(bucket: &str, prefix: &str, env: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")),
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            access_key_id: env("AWS_ACCESS_KEY_ID"),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
            session_token: env("AWS_SESSION_TOKEN"),
            allow_http: env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"),
        }
    }
}

#[derive(Debug)]
enum Backend {
    /// A directory; its path is kept for the few operations object_store
    /// cannot express atomically there (pointer locks, staging sweeps).
    Local { dir: PathBuf },
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    S3,
}

#[derive(Debug)]
struct Inner {
    os: Arc<dyn ObjectStore>,
    backend: Backend,
    url: String,
}

/// An open canonical store. Cheap to clone; hands out zone-typed handles.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens the store a workspace points at. Relative `file://` paths must
    /// already be resolved against the workspace.
    pub fn open(url: &StoreUrl, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        match url {
            StoreUrl::File(dir) => Self::open_local(dir),
            StoreUrl::S3 { bucket, prefix } => {
                Self::open_s3(S3Settings::from_env(bucket, prefix, env))
            }
        }
    }

    /// Opens (creating if needed) a store in a local directory. Writes are
    /// fsynced: an acknowledged write survives a crash of the machine.
    pub fn open_local(dir: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| StoreError::Open {
                url: format!("file://{}", dir.display()),
                reason: e.to_string(),
            })?
            .with_fsync(true);
        Ok(Self {
            inner: Arc::new(Inner {
                os: Arc::new(fs),
                url: format!("file://{}", dir.display()),
                backend: Backend::Local { dir },
            }),
        })
    }

    /// Opens a store in an S3-compatible bucket. Conditional writes are
    /// required of the server: `If-None-Match: *` on put (write-once zones),
    /// `If-Match` on put (pointer compare-and-swap), and conditional
    /// completion of multipart uploads (atomic publication of large raw
    /// objects).
    #[cfg(feature = "s3")]
    pub fn open_s3(s: S3Settings) -> Result<Self> {
        use object_store::aws::{AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
        let url = if s.prefix.is_empty() {
            format!("s3://{}", s.bucket)
        } else {
            format!("s3://{}/{}", s.bucket, s.prefix)
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(s.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            .with_allow_http(s.allow_http);
        if let Some(e) = &s.endpoint {
            if e.starts_with("http://") && !s.allow_http {
                return Err(StoreError::Open {
                    url,
                    reason: format!(
                        "endpoint {e} is plain http: set AWS_ALLOW_HTTP=true to allow it"
                    ),
                });
            }
            b = b.with_endpoint(e);
        }
        if let Some(k) = &s.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(t) = &s.session_token {
            b = b.with_token(t);
        }
        let s3 = b.build().map_err(|e| StoreError::Open {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let os: Arc<dyn ObjectStore> = if s.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                s3,
                s.prefix.as_str(),
            ))
        };
        Ok(Self {
            inner: Arc::new(Inner {
                os,
                backend: Backend::S3,
                url,
            }),
        })
    }

    #[cfg(not(feature = "s3"))]
    pub fn open_s3(s: S3Settings) -> Result<Self> {
        Err(StoreError::Open {
            url: format!("s3://{}/{}", s.bucket, s.prefix),
            reason: "this build of kfm has no S3 support (built without the `s3` feature)".into(),
        })
    }

    /// The store's location, for messages (never contains credentials).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn raw(&self) -> WriteOnce<zones::Raw> {
        WriteOnce::new(self)
    }
    pub fn processed(&self) -> WriteOnce<zones::Processed> {
        WriteOnce::new(self)
    }
    pub fn catalog(&self) -> WriteOnce<zones::Catalog> {
        WriteOnce::new(self)
    }
    pub fn quarantine(&self) -> WriteOnce<zones::Quarantine> {
        WriteOnce::new(self)
    }
    pub fn work(&self) -> Work {
        Work {
            io: ZoneIo::new(self, Zone::Work),
        }
    }
    pub fn published(&self) -> Published {
        Published {
            io: ZoneIo::new(self, Zone::Published),
        }
    }
    /// The audit zone, for the ledger.
    pub fn audit(&self) -> Audit {
        Audit {
            io: ZoneIo::new(self, Zone::Audit),
        }
    }

    /// A read-only handle on any zone. This is what a serving process gets
    /// for `published`, `processed` and `catalog`.
    pub fn reader<Z: ZoneMarker>(&self) -> ReadOnly<Z> {
        ReadOnly {
            io: ZoneIo::new(self, Z::ZONE),
            _z: PhantomData,
        }
    }
}

/// Metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Zone-relative key.
    pub key: String,
    pub size: u64,
}

/// The zone-scoped plumbing shared by every handle. Private: handles expose
/// only what their zone allows.
#[derive(Clone, Debug)]
struct ZoneIo {
    store: Store,
    zone: Zone,
}

impl ZoneIo {
    fn new(store: &Store, zone: Zone) -> Self {
        Self {
            store: store.clone(),
            zone,
        }
    }

    fn os(&self) -> &Arc<dyn ObjectStore> {
        &self.store.inner.os
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        Path::parse(format!("{}/{}", self.zone.prefix(), key)).map_err(|_| StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "not a valid object path",
        })
    }

    fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> StoreError {
        let zone = self.zone;
        let key = key.to_owned();
        move |e| StoreError::backend(op, zone, &key, e)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let p = self.path(key)?;
        let r = self.os().get(&p).await.map_err(self.err("get", key))?;
        r.bytes().await.map_err(self.err("get", key))
    }

    async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let p = self.path(key)?;
        match self.os().head(&p).await {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: m.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::backend("head", self.zone, key, e)),
        }
    }

    /// Every object under `prefix` (zone-relative, may be empty), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let zone_prefix = self.zone.prefix();
        let p = if prefix.is_empty() {
            Path::from(zone_prefix)
        } else {
            self.path(prefix.trim_end_matches('/'))?
        };
        let strip = format!("{zone_prefix}/");
        let mut out: Vec<ObjectInfo> = self
            .os()
            .list(Some(&p))
            .map_ok(|m| ObjectInfo {
                key: m.location.as_ref().trim_start_matches(&strip).to_owned(),
                size: m.size,
            })
            .try_collect()
            .await
            .map_err(self.err("list", prefix))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The immediate child "directories" under `prefix`.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let zone_prefix = self.zone.prefix();
        let p = if prefix.is_empty() {
            Path::from(zone_prefix)
        } else {
            self.path(prefix.trim_end_matches('/'))?
        };
        let res = self
            .os()
            .list_with_delimiter(Some(&p))
            .await
            .map_err(self.err("list", prefix))?;
        let mut dirs: Vec<String> = res
            .common_prefixes
            .iter()
            .filter_map(|d| d.filename().map(str::to_owned))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    async fn put_mode(
        &self,
        key: &str,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<object_store::PutResult> {
        let p = self.path(key)?;
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.os()
            .put_opts(&p, PutPayload::from(bytes), opts)
            .await
            .map_err(self.err("put", key))
    }
}

/// Read access common to every handle.
macro_rules! read_methods {
    () => {
        /// The whole object. `NotFound` if absent.
        pub async fn get(&self, key: &str) -> Result<Bytes> {
            self.io.get(key).await
        }
        /// The whole object, or `None` if absent.
        pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
            self.io.get_opt(key).await
        }
        /// Size of the object, or `None` if absent.
        pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
            self.io.head(key).await
        }
        /// Every object under a zone-relative prefix (empty: the whole zone), sorted by key.
        pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.io.list(prefix).await
        }
        /// Names of the immediate sub-prefixes of a zone-relative prefix.
        pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
            self.io.list_dirs(prefix).await
        }
        /// The zone this handle is bound to.
        pub fn zone(&self) -> Zone {
            self.io.zone
        }
    };
}

/// Read-only access to one zone.
#[derive(Clone, Debug)]
pub struct ReadOnly<Z: ZoneMarker> {
    io: ZoneIo,
    _z: PhantomData<Z>,
}

impl<Z: ZoneMarker> ReadOnly<Z> {
    read_methods!();
}

/// Outcome of [`WriteOnce::create_or_verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// This call created the object.
    Created,
    /// The object already existed with exactly these bytes.
    AlreadyIdentical,
}

/// A write-once zone: objects are created once and never overwritten or
/// deleted. There is deliberately no `put`, `delete` or `copy` here.
#[derive(Clone, Debug)]
pub struct WriteOnce<Z: WriteOnceZone> {
    io: ZoneIo,
    _z: PhantomData<Z>,
}

impl<Z: WriteOnceZone> WriteOnce<Z> {
    fn new(store: &Store) -> Self {
        Self {
            io: ZoneIo::new(store, Z::ZONE),
            _z: PhantomData,
        }
    }

    read_methods!();

    /// Creates the object; fails with [`StoreError::AlreadyExists`] if any
    /// object is already at `key`, whoever wrote it and whatever it holds.
    /// The check and the write are one atomic operation in the backend.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.io
            .put_mode(key, bytes, PutMode::Create)
            .await
            .map(|_| ())
    }

    /// Creates the object, or accepts an existing one holding exactly the
    /// same bytes (compared by digest), which makes retries idempotent.
    /// Different bytes at the key are refused with `AlreadyExists`.
    pub async fn create_or_verify(&self, key: &str, bytes: Bytes) -> Result<CreateOutcome> {
        let want = Digest::of(&bytes);
        match self.create(key, bytes).await {
            Ok(()) => Ok(CreateOutcome::Created),
            Err(StoreError::AlreadyExists { zone, key: k }) => {
                let have = self.io.get(key).await?;
                if Digest::of(&have) == want {
                    Ok(CreateOutcome::AlreadyIdentical)
                } else {
                    Err(StoreError::AlreadyExists { zone, key: k })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A read-only view of this zone.
    pub fn reader(&self) -> ReadOnly<Z> {
        ReadOnly {
            io: self.io.clone(),
            _z: PhantomData,
        }
    }
}

/// The scratch zone: free to overwrite and delete.
#[derive(Clone, Debug)]
pub struct Work {
    io: ZoneIo,
}

impl Work {
    read_methods!();

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.io
            .put_mode(key, bytes, PutMode::Overwrite)
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let p = self.io.path(key)?;
        match self.io.os().delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend("delete", Zone::Work, key, e)),
        }
    }
}

/// Opaque version of a release pointer, from the read that a
/// compare-and-swap is conditioned on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerVersion(String);

/// A release pointer as read, with its version.
#[derive(Clone, Debug)]
pub struct Pointer {
    pub bytes: Bytes,
    pub version: PointerVersion,
}

/// Release pointers (`published/<name>`): they move only by
/// compare-and-swap, so two promotions racing for one dataset cannot both
/// win and cannot be merged.
#[derive(Clone, Debug)]
pub struct Published {
    io: ZoneIo,
}

impl Published {
    read_methods!();

    /// Reads a pointer and the version to condition a swap on.
    pub async fn read(&self, key: &str) -> Result<Option<Pointer>> {
        self.io.cas_read(key).await
    }

    /// Replaces the pointer only if it is still at `expected` (`None`: only
    /// if it does not exist yet). Returns the new version, or
    /// [`StoreError::Conflict`] if another writer moved it first.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&PointerVersion>,
        new: Bytes,
    ) -> Result<PointerVersion> {
        self.io.cas_swap(key, expected, new).await
    }
}

impl ZoneIo {
    async fn cas_read(&self, key: &str) -> Result<Option<Pointer>> {
        match &self.store.inner.backend {
            Backend::Local { .. } => Ok(self.get_opt(key).await?.map(|bytes| Pointer {
                version: PointerVersion(Digest::of(&bytes).hex()),
                bytes,
            })),
            Backend::S3 => {
                let p = self.path(key)?;
                match self.os().get(&p).await {
                    Ok(r) => {
                        let etag = r.meta.e_tag.clone().unwrap_or_default();
                        let bytes = r.bytes().await.map_err(self.err("get", key))?;
                        Ok(Some(Pointer {
                            bytes,
                            version: PointerVersion(etag),
                        }))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(StoreError::backend("get", self.zone, key, e)),
                }
            }
        }
    }

    async fn cas_swap(
        &self,
        key: &str,
        expected: Option<&PointerVersion>,
        new: Bytes,
    ) -> Result<PointerVersion> {
        let conflict = || StoreError::Conflict {
            zone: self.zone,
            key: key.to_owned(),
        };
        self.path(key)?;
        match &self.store.inner.backend {
            Backend::Local { dir } => {
                // A directory has no conditional overwrite, so the swap runs
                // under an exclusive OS lock held across read-compare-write.
                // The lock dies with its process: a crashed writer never
                // blocks the next one.
                let lock = lock_file(dir, &format!("{}/{}", self.zone.prefix(), key), false)?;
                let current = self
                    .get_opt(key)
                    .await?
                    .map(|b| PointerVersion(Digest::of(&b).hex()));
                if current.as_ref() != expected {
                    return Err(conflict());
                }
                let version = PointerVersion(Digest::of(&new).hex());
                self.put_mode(key, new, PutMode::Overwrite).await?;
                drop(lock);
                Ok(version)
            }
            Backend::S3 => {
                let mode = match expected {
                    None => PutMode::Create,
                    Some(v) => PutMode::Update(object_store::UpdateVersion {
                        e_tag: Some(v.0.clone()),
                        version: None,
                    }),
                };
                match self.put_mode(key, new, mode).await {
                    Ok(r) => Ok(PointerVersion(r.e_tag.unwrap_or_default())),
                    Err(StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }) => {
                        Err(conflict())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Takes an exclusive OS lock named `name` under the store directory
/// (`.kfm-locks/`, outside every zone). `try_only`: fail at once if held
/// instead of waiting. The lock is released when the file is dropped or the
/// process dies.
fn lock_file(dir: &FsPath, name: &str, try_only: bool) -> Result<Option<std::fs::File>> {
    let path = dir
        .join(".kfm-locks")
        .join(format!("{}.lock", name.replace('/', "%2F")));
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    if try_only {
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    } else {
        f.lock().map_err(io)?;
        Ok(Some(f))
    }
}

/// Exclusive right to write one log, held for as long as this value lives.
#[derive(Debug)]
pub struct WriterLock {
    _file: Option<std::fs::File>,
}

/// The audit zone, owned by the ledger: its objects (tiles, entry bundles)
/// are created once; its checkpoint moves only by compare-and-swap.
#[derive(Clone, Debug)]
pub struct Audit {
    io: ZoneIo,
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
    /// crash); different bytes are refused with `AlreadyExists`.
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
    /// after this returns, and its recovery discards objects beyond the
    /// checkpoint). A reader never reads beyond the checkpoint.
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

    /// Removes an object that no signed checkpoint covers: the torn tail a
    /// crashed writer left (a tile or bundle written for a batch whose
    /// checkpoint never landed). The ledger calls this only during recovery,
    /// after proving the object lies beyond its last signed checkpoint.
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

/// A local append-only journal kept beside the audit zone (directory
/// backend only), so that the ledger can make a batch durable with a single
/// `fdatasync` and write its tiles afterwards. It lives in
/// `.kfm-journal/audit.journal` under the store directory, outside every
/// zone: a copy of the store that leaves it out loses only appends not yet
/// written as tiles.
///
/// Two files take turns, so the journal stays bounded under unbroken load:
/// the writer continues in a spare while the tiles catch up with the file
/// it retired (`audit.journal.old`), and a retired file the tiles hold
/// entirely becomes the next spare. Files are reused, never shrunk: after
/// the first, nothing is zero-filled again.
///
/// Every byte an append overwrites was written before (zeros, or records of
/// an earlier use), so `fdatasync` flushes data only, without a file-system
/// journal commit for a size change. What follows the last record may
/// therefore be zeros or stale records; the record format must tell those
/// from its own (the ledger's records chain by tree size).
///
/// Where the file system allows it (Linux, not tmpfs), appends go through a
/// second descriptor opened `O_DIRECT | O_DSYNC`: one system call that
/// returns once the bytes are on disk, without a copy into the page cache
/// and its writeback first (measured here: 20% more synced writes per
/// second than `pwrite` + `fdatasync`). Direct writes must cover whole
/// aligned blocks, so each one starts at the block holding the journal's
/// end and rewrites that block's earlier bytes unchanged; a write torn by
/// a crash leaves those bytes as they were either way.
#[derive(Debug)]
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
    /// Logical end: where the next record goes.
    len: u64,
    /// Bytes allocated (written with zeros or records) so far.
    allocated: u64,
    /// The direct descriptor, if the file system took one.
    direct: Option<std::fs::File>,
    /// Direct writes: the bytes of the journal's last, partial block
    /// (`len` rounded down to [`DIRECT_ALIGN`] up to `len`).
    block: Vec<u8>,
    /// Direct writes: the buffer, over-allocated so an aligned run of it
    /// can be used.
    scratch: Vec<u8>,
}

/// Alignment of direct writes: offsets, lengths and memory. 4096 suits
/// both 512-byte and 4 KiB logical blocks.
const DIRECT_ALIGN: u64 = 4096;

/// The journal at `path`, opened again for direct synchronous writes, or
/// `None` where that is not supported (the journal then uses `pwrite` and
/// `fdatasync`).
fn open_direct(path: &FsPath) -> Option<std::fs::File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "journal: no direct writes here; using fdatasync");
                None
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Written after the last record: a zero length, which readers take as
/// the end.
const END_MARK: [u8; 4] = [0; 4];

/// The smallest journal file, and the step it grows by when a round of
/// appends does not fit.
pub const JOURNAL_STEP: u64 = 64 << 20;

impl Journal {
    fn io(&self) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Where the next record goes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the file holds, records and padding: how large a spare must be
    /// to take over from it without growing.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Whether appends use direct synchronous writes (see [`Journal`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends with `pwrite` and `fdatasync` from now on (tests compare the
    /// two ways of writing).
    #[doc(hidden)]
    pub fn disable_direct(&mut self) {
        self.direct = None;
    }

    /// Appends `bytes` and waits until they are on disk.
    ///
    /// Four zero bytes follow them in the same write, overwritten by the
    /// next append: in a reused file, readers then find the end at a zero
    /// length instead of in stale bytes, which they could only tell from
    /// damage by scanning the rest of the file. (Direct writes pad the rest
    /// of their last block with zeros too.)
    pub fn append_durable(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self.len + bytes.len() as u64;
        let mut reach = end + END_MARK.len() as u64;
        if self.direct.is_some() {
            reach = reach.next_multiple_of(DIRECT_ALIGN);
        }
        if reach > self.allocated {
            // Rare: the tile writer rotates files long before this; only a
            // burst larger than a whole file gets here.
            let target = reach.div_ceil(JOURNAL_STEP) * JOURNAL_STEP;
            zero_fill(&self.file, self.allocated, target).map_err(self.io())?;
            self.file.sync_all().map_err(self.io())?;
            self.allocated = target;
        }
        if self.direct.is_some() {
            match self.append_direct(bytes) {
                Ok(()) => {
                    self.len = end;
                    return Ok(());
                }
                // The file system refused the alignment after all: write
                // this and every later record the buffered way.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "journal: direct write refused; using fdatasync");
                    self.direct = None;
                }
                Err(e) => return Err(self.io()(e)),
            }
        }
        use std::os::unix::fs::FileExt;
        let mut framed = Vec::with_capacity(bytes.len() + END_MARK.len());
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(&END_MARK);
        self.file
            .write_all_at(&framed, self.len)
            .map_err(self.io())?;
        self.file.sync_data().map_err(self.io())?;
        self.len = end;
        Ok(())
    }

    /// One direct synchronous write from the block holding `len`: that
    /// block's earlier bytes, `bytes`, then zeros to the next block end.
    fn append_direct(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some(direct) = &self.direct else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let align = DIRECT_ALIGN as usize;
        let start = self.len - self.len % DIRECT_ALIGN;
        let prefix = self.block.len();
        debug_assert_eq!(start + prefix as u64, self.len);
        let used = prefix + bytes.len() + END_MARK.len();
        let total = used.next_multiple_of(align);
        self.scratch.clear();
        self.scratch.resize(total + align, 0);
        let at = self.scratch.as_ptr().align_offset(align);
        let Some(buf) = self.scratch.get_mut(at..at + total) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        buf[..prefix].copy_from_slice(&self.block);
        buf[prefix..prefix + bytes.len()].copy_from_slice(bytes);
        direct.write_all_at(buf, start)?;
        // The new last block's bytes, for the next write.
        let end = prefix + bytes.len();
        let keep = end - end % align;
        self.block.clear();
        self.block.extend_from_slice(&buf[keep..end]);
        Ok(())
    }

    /// Starts writing again at the beginning of this same file. The caller
    /// guarantees that every record in it is held elsewhere (in tiles):
    /// what follows the new records is then stale, and readers stop there.
    ///
    /// A zero length goes at the start (not synced: should a crash undo
    /// it, readers find the old records, all held in tiles already), so
    /// that readers of an idle journal stop at once instead of reading the
    /// earlier use's records.
    pub fn restart(&mut self) -> Result<()> {
        self.len = 0;
        self.block.clear();
        self.mark_empty()
    }

    fn mark_empty(&self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&END_MARK, 0).map_err(self.io())
    }

    /// Where the journal lives (for [`FreshJournal`]).
    pub fn path(&self) -> &FsPath {
        &self.path
    }

    /// Retires this file as `audit.journal.old` and continues in `spare`:
    /// two renames and a directory sync, so the writer's lock on the
    /// journal is held only briefly. Refused while a retired file exists
    /// (its records may not be in tiles yet).
    pub fn rotate(&mut self, spare: FreshJournal) -> Result<()> {
        let old = retired_path(&self.path);
        let io = |p: &FsPath| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        if old.exists() {
            return Err(io(&old)(std::io::Error::other(
                "a retired journal is still waiting for its tiles",
            )));
        }
        std::fs::rename(&self.path, &old).map_err(io(&self.path))?;
        std::fs::rename(&spare.path, &self.path).map_err(io(&spare.path))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.file = spare.file;
        self.allocated = spare.allocated;
        self.direct = spare.direct;
        self.len = 0;
        self.block.clear();
        // A reused spare holds an earlier use's records (in tiles).
        self.mark_empty()
    }
}

fn retired_path(journal: &FsPath) -> PathBuf {
    journal.with_extension("journal.old")
}

fn spare_path(journal: &FsPath) -> PathBuf {
    journal.with_extension("journal.new")
}

/// A journal file ready to take over ([`Journal::rotate`]): beside the
/// journal as `audit.journal.new`, every byte written, its size synced.
/// Making one costs a zero-fill the first time and nothing after (a retired
/// file is reused), and it is done ahead, outside the writer's lock, so it
/// never stalls an append.
#[derive(Debug)]
pub struct FreshJournal {
    file: std::fs::File,
    path: PathBuf,
    allocated: u64,
    direct: Option<std::fs::File>,
}

impl FreshJournal {
    /// Bytes it holds: how much the writer can append before it grows.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// A spare of at least `min_len` bytes: the retired file when
    /// `reuse_retired` (the caller knows the tiles hold all its records),
    /// else a leftover spare, else a new zero-filled file.
    pub fn prepare(journal: &FsPath, min_len: u64, reuse_retired: bool) -> Result<Self> {
        let path = spare_path(journal);
        let io = |p: &FsPath| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        let old = retired_path(journal);
        if reuse_retired && old.exists() {
            // No sync needed: after a crash either name holds only records
            // the tiles already have.
            std::fs::rename(&old, &path).map_err(io(&old))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let have = file.metadata().map_err(io(&path))?.len();
        let want = min_len.max(JOURNAL_STEP).div_ceil(JOURNAL_STEP) * JOURNAL_STEP;
        let allocated = if have < want {
            zero_fill(&file, have, want).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            want
        } else {
            have
        };
        let direct = open_direct(&path);
        Ok(Self {
            file,
            path,
            allocated,
            direct,
        })
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
                if have != bytes.as_ref() {
                    return Err(StoreError::AlreadyExists {
                        zone,
                        key: key.clone(),
                    });
                }
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

/// Writes zeros over `[from, to)` (real blocks, not a hole or an unwritten
/// extent, so later overwrites need no metadata change).
fn zero_fill(f: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Audit {
    /// The audit journal on a directory store (`None` on S3, where every
    /// object write is durable on return and there is no local disk), for
    /// its writer: created (zero-filled) if missing. Its content is not
    /// interpreted here: read it with [`Audit::journal_files`].
    pub fn journal(&self) -> Result<Option<Journal>> {
        let Some(path) = self.journal_path() else {
            return Ok(None);
        };
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut allocated = file.metadata().map_err(io)?.len();
        if allocated < JOURNAL_STEP {
            zero_fill(&file, allocated, JOURNAL_STEP).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            allocated = JOURNAL_STEP;
        }
        let direct = open_direct(&path);
        Ok(Some(Journal {
            file,
            path,
            len: 0,
            allocated,
            direct,
            block: Vec::new(),
            scratch: Vec::new(),
        }))
    }

    /// The bytes of every journal file there is (directory stores): the
    /// current one first, then the retired one, each named. Read in that
    /// order, a rotation in between shows records twice rather than not
    /// at all.
    ///
    /// Files are preallocated (64 MiB and up) and usually hold far fewer
    /// records, so each is read in growing chunks until `enough` says the
    /// bytes so far hold all that matters (the caller's records have
    /// ended): opening or verifying a ledger then reads what the journal
    /// holds, not the whole file.
    pub fn journal_files(&self, enough: impl Fn(&[u8]) -> bool) -> Result<Vec<(String, Vec<u8>)>> {
        use std::io::Read;
        let Some(path) = self.journal_path() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for p in [path.clone(), retired_path(&path)] {
            let io = |source| StoreError::Io {
                path: p.display().to_string(),
                source,
            };
            let mut file = match std::fs::File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            let mut bytes = Vec::new();
            let mut chunk: u64 = 1 << 20;
            loop {
                let got = (&mut file)
                    .take(chunk)
                    .read_to_end(&mut bytes)
                    .map_err(io)?;
                if (got as u64) < chunk || enough(&bytes) {
                    break;
                }
                chunk = (chunk * 2).min(JOURNAL_STEP);
            }
            out.push((format!(".kfm-journal/{}", file_name(&p)), bytes));
        }
        Ok(out)
    }

    /// Whether a retired journal file exists (its records may still be
    /// waiting for their tiles).
    pub fn journal_retired(&self) -> bool {
        self.journal_path()
            .is_some_and(|p| retired_path(&p).exists())
    }

    fn journal_path(&self) -> Option<PathBuf> {
        let Backend::Local { dir } = &self.io.store.inner.backend else {
            return None;
        };
        Some(dir.join(".kfm-journal").join("audit.journal"))
    }
}

fn file_name(p: &FsPath) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
