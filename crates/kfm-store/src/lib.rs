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

pub use audit::{Audit, WriterLock};
pub use error::{Result, StoreError};
pub use ingest::{IngestProgress, StagedIngest};
pub use key::check_key;

/// The last segment of a prefix `list_dirs` returned (`ds/v3/` → `v3`):
/// the name callers compare, whatever the backend's prefix looks like.
pub fn dir_name(prefix: &str) -> &str {
    prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

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
        if let Backend::Local { dir } = &self.store.inner.backend {
            // Invariant: no temporary file is ever left in a zone. The
            // bytes are staged in work/.staging and only then linked
            // (create-only) or renamed (replace) into place: a crash
            // leaves at most a staging file in work/, which is swept.
            let root = dir.clone();
            let target = dir.join(p.as_ref());
            let (zone, key) = (self.zone, key.to_owned());
            let create = matches!(mode, PutMode::Create);
            return tokio::task::spawn_blocking(move || {
                staged_write(&root, &target, &bytes, create).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { zone, key },
                    _ => StoreError::Io {
                        path: target.display().to_string(),
                        source: e,
                    },
                })
            })
            .await
            .map_err(|e| StoreError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map(|()| object_store::PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            });
        }
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
        pub async fn head(&self, key: &str) -> Result<Option<crate::ObjectInfo>> {
            self.io.head(key).await
        }
        /// Every object under a zone-relative prefix (empty: the whole zone), sorted by key.
        pub async fn list(&self, prefix: &str) -> Result<Vec<crate::ObjectInfo>> {
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

/// Where a directory store stages bytes before linking or renaming them
/// into a zone (inside `work/`, so on the same file system, and swept).
pub(crate) const STAGING: &str = "work/.staging";

/// Writes `bytes` to a staging file, syncs it, then links it at `target`
/// (`create`: fails with `AlreadyExists` if anything is there) or renames
/// it over `target`, and syncs the directory that now names it.
fn staged_write(root: &FsPath, target: &FsPath, bytes: &[u8], create: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = root.join(STAGING);
    std::fs::create_dir_all(&dir)?;
    let staging = dir.join(uuid::Uuid::new_v4().simple().to_string());
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let parent = target.parent().unwrap_or(root);
        std::fs::create_dir_all(parent)?;
        if create {
            std::fs::hard_link(&staging, target)?;
        } else {
            std::fs::rename(&staging, target)?;
        }
        std::fs::File::open(parent)?.sync_all()
    })();
    if create || result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
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

// After `read_methods!`, which they use.
mod audit;
mod files;
mod runs;
mod stream;

pub use files::{LocalObject, Scratch};
pub use runs::RunLock;
