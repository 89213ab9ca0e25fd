//! What the API serves: published releases, verified end to end, and the
//! views of their features each class of caller gets.
//!
//! A release is served only after its pointer verifies (manifest digest and
//! signature, the ledger entries it names). With the in-memory backend
//! every artifact is read back, checked against the digest its signed
//! manifest records and held in memory; with the PostGIS backend only the
//! catalog documents are read, and the features come from the projection
//! of exactly that manifest (the projector checked the artifacts before
//! loading them). A pointer that stops verifying takes its dataset out of
//! service (fail closed) until it verifies again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use geojson::{Feature, GeoJson, JsonValue};
use kfm_core::Digest;
use kfm_ledger::Ledger;
use kfm_pipeline::generalize::Plan;
use kfm_pipeline::records::{self, Manifest};
use kfm_projection::read::{Projection, Reader};
use kfm_store::{ReadOnly, zones};

pub use crate::view::{PageCache, Shape, View};
use crate::view::{PgView, ViewData, shape_features};

/// Read handles on exactly the zones the API may read (published, catalog,
/// processed, and quarantine for the stewards' view): it has no way to
/// name `raw` or `work`, and none of these can write. Features are only
/// ever loaded from processed and catalog artifacts a signed manifest
/// lists, never from the quarantine zone.
#[derive(Clone)]
pub struct Zones {
    pub published: ReadOnly<zones::Published>,
    pub processed: ReadOnly<zones::Processed>,
    pub catalog: ReadOnly<zones::Catalog>,
    pub quarantine: ReadOnly<zones::Quarantine>,
}

/// One features artifact, parsed.
pub struct Layer {
    pub features: Vec<Feature>,
    /// Store key and digest, for evidence.
    pub path: String,
    pub digest: String,
}

/// A verified dataset version.
pub struct Release {
    pub dataset: String,
    pub version_id: String,
    pub manifest: Manifest,
    pub manifest_digest: String,
    /// Ledger index of the entry that moved the pointer here (None for a
    /// version read directly through the evidence resolver).
    pub pointer_ledger_index: Option<u64>,
    pub stac: JsonValue,
    pub dcat: JsonValue,
    pub prov: JsonValue,
    pub title: String,
    pub description: String,
    pub bbox: Option<[f64; 4]>,
    pub precise: Option<Layer>,
    pub generalized: Option<Layer>,
    /// The property holding each feature's time, if the dataset has one.
    pub temporal: Option<String>,
    /// Whether the manifest publishes features at all (a metadata-only
    /// release does not).
    pub has_features: bool,
    /// With the PostGIS backend: the projection of this manifest, once the
    /// projector has loaded it.
    projection: RwLock<Option<Arc<Projection>>>,
    backend: Backend,
    views: Mutex<HashMap<String, Arc<View>>>,
}

/// Where a server's features come from.
#[derive(Clone)]
pub enum Backend {
    /// Each release's artifacts, read and held in memory.
    Memory,
    /// The projections in PostgreSQL/PostGIS, read as KFM's API roles.
    Postgis(Arc<Reader>),
}

/// Why a view cannot be served now. Said only to a caller the policy
/// allowed (a denied one gets the same 404 as for nothing at all).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ViewError {
    /// The projector has not loaded this version yet (a promotion just
    /// moved the pointer): retry shortly.
    #[error("this version is being projected into the database; retry shortly")]
    Pending,
    /// The view cannot be built as the policy asks from what is stored.
    #[error("{0}")]
    Unservable(String),
}

impl Release {
    /// The features as a caller under `shape` may see them. Generalised
    /// views start from the generalised derivative when promotion made one
    /// (the precise layer is then never touched) and apply the obligation
    /// again: defence in depth, so a derivative built under an older plan
    /// is still served as the policy says now.
    pub fn view(&self, shape: &Shape) -> Result<Arc<View>, ViewError> {
        let key = shape.key();
        if let Ok(v) = self.views.lock()
            && let Some(view) = v.get(&key)
        {
            return Ok(view.clone());
        }
        let view = Arc::new(match &self.backend {
            _ if !self.has_features => View::empty(),
            Backend::Memory => self.memory_view(shape)?,
            Backend::Postgis(reader) => self.postgis_view(reader, shape)?,
        });
        if let Ok(mut v) = self.views.lock() {
            // A handful of shapes exist per release; bound it all the same.
            if v.len() >= 16 {
                v.clear();
            }
            v.insert(key, view.clone());
        }
        Ok(view)
    }

    fn memory_view(&self, shape: &Shape) -> Result<View, ViewError> {
        let (base, derived) = match (&shape.generalize, &self.generalized, &self.precise) {
            (Some(_), Some(g), _) => (&g.features, true),
            (_, _, Some(p)) => (&p.features, false),
            _ => return Ok(View::empty()),
        };
        let features = shape_features(base.clone(), shape, derived);
        View::memory(
            features,
            shape.generalize.is_some(),
            self.temporal
                .as_deref()
                .filter(|t| !shape.redact.iter().any(|r| r == t)),
        )
        .ok_or_else(|| {
            ViewError::Unservable("a feature of this release could not be encoded".into())
        })
    }

    fn postgis_view(&self, reader: &Arc<Reader>, shape: &Shape) -> Result<View, ViewError> {
        let projection = self
            .projection
            .read()
            .ok()
            .and_then(|p| p.clone())
            .ok_or(ViewError::Pending)?;
        let layer = match &shape.generalize {
            Some(plan) => {
                let layer = projection
                    .layer(kfm_projection::Layer::Generalized)
                    .ok_or_else(|| {
                        ViewError::Unservable(
                            "the policy asks for generalised coordinates and this version has no generalised layer to serve them from".into(),
                        )
                    })?;
                // Invariant: a generalised view reads only the derivative,
                // and only when it was built under the plan the policy asks
                // for now; filters then run on the geometry as served.
                if self.derivative_plan().as_ref() != Some(plan) {
                    return Err(ViewError::Unservable(
                        "the policy's generalisation differs from the one this version was published with; it can be served once promoted again".into(),
                    ));
                }
                layer
            }
            None => projection
                .layer(kfm_projection::Layer::Precise)
                .ok_or_else(|| ViewError::Unservable("this version has no data layer".into()))?,
        };
        let queryables = layer.queryables.without(&shape.redact);
        let temporal = self
            .temporal
            .as_deref()
            .filter(|t| queryables.kind(t).is_some())
            .map(str::to_owned);
        Ok(View {
            generalized: shape.generalize.is_some(),
            queryables,
            temporal,
            rows: layer.rows,
            extent: layer.extent,
            pages: PageCache::default(),
            tiles: Default::default(),
            data: ViewData::Postgis(PgView {
                reader: reader.clone(),
                layer: layer.clone(),
                shape: shape.clone(),
                derived: shape.generalize.is_some(),
            }),
        })
    }

    /// The plan the generalised derivative was built under (the manifest's).
    fn derivative_plan(&self) -> Option<Plan> {
        let g: kfm_core::spec::Generalization =
            serde_json::from_value(self.manifest.generalization.clone()?).ok()?;
        Plan::from_spec(&g).ok()
    }

    /// Whether this release waits for its projection.
    pub fn pending(&self) -> bool {
        matches!(self.backend, Backend::Postgis(_))
            && self.has_features
            && self.projection.read().is_ok_and(|p| p.is_none())
    }

    /// Looks up this release's projection (PostGIS backend).
    async fn find_projection(&self) -> Result<(), String> {
        let Backend::Postgis(reader) = &self.backend else {
            return Ok(());
        };
        if !self.has_features {
            return Ok(());
        }
        match reader
            .projection(&self.dataset, &self.manifest_digest)
            .await
        {
            Ok(p) => {
                if let Ok(mut cur) = self.projection.write() {
                    *cur = p.map(Arc::new);
                }
                Ok(())
            }
            Err(e) => Err(format!(
                "{}: the projection cannot be read: {e}",
                self.dataset
            )),
        }
    }

    /// The generalisation plan the spec recorded, as policy input.
    pub fn generalization(&self) -> Option<&JsonValue> {
        self.manifest.generalization.as_ref()
    }
}

/// Why a release could not be loaded. Logged and counted, never sent to a
/// client (it may name restricted datasets).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

async fn read_verified(zones: &Zones, path: &str, digest: &str) -> Result<Bytes, LoadError> {
    let (zone, rel) = path
        .split_once('/')
        .ok_or_else(|| LoadError(format!("artifact path {path} has no zone")))?;
    let bytes = match zone {
        "processed" => zones.processed.get(rel).await,
        "catalog" => zones.catalog.get(rel).await,
        _ => return Err(LoadError(format!("{path}: not a zone the API may read"))),
    }
    .map_err(|e| LoadError(format!("{path}: {e}")))?;
    let want: Digest = digest
        .parse()
        .map_err(|e| LoadError(format!("{path}: the manifest's digest {digest:?}: {e}")))?;
    kfm_pipeline::release::check_artifact(path, &bytes, &want).map_err(LoadError)?;
    Ok(bytes)
}

fn parse_layer(bytes: &[u8], path: &str, digest: &str) -> Result<Layer, LoadError> {
    let gj: GeoJson = std::str::from_utf8(bytes)
        .map_err(|e| LoadError(format!("{path}: {e}")))?
        .parse()
        .map_err(|e| LoadError(format!("{path}: {e}")))?;
    let GeoJson::FeatureCollection(mut fc) = gj else {
        return Err(LoadError(format!("{path}: not a FeatureCollection")));
    };
    // Served in the normal form the PostGIS backend serves too.
    for f in &mut fc.features {
        if let Some(p) = f.properties.as_mut() {
            kfm_query::normal::object(p);
        }
    }
    Ok(Layer {
        features: fc.features,
        path: path.to_owned(),
        digest: digest.to_owned(),
    })
}

/// Loads a version from its signed manifest: every catalog document (and,
/// with the in-memory backend, every artifact) is read back and checked
/// against the manifest's digests.
pub async fn load_version(
    zones: &Zones,
    backend: &Backend,
    manifest: Manifest,
    manifest_digest: String,
    pointer_ledger_index: Option<u64>,
) -> Result<Release, LoadError> {
    let mut precise = None;
    let mut generalized = None;
    let has_features = manifest
        .artifacts
        .iter()
        .any(|a| matches!(a.role.as_str(), "data" | "generalized"));
    let in_memory = matches!(backend, Backend::Memory);
    for a in &manifest.artifacts {
        let digest = a.digest.to_string();
        match a.role.as_str() {
            _ if !in_memory => {}
            "data" => {
                let b = read_verified(zones, &a.path, &digest).await?;
                precise = Some(parse_layer(&b, &a.path, &digest)?);
            }
            "generalized" => {
                let b = read_verified(zones, &a.path, &digest).await?;
                generalized = Some(parse_layer(&b, &a.path, &digest)?);
            }
            _ => {}
        }
    }
    let mut docs: HashMap<&str, JsonValue> = HashMap::new();
    for c in &manifest.catalog {
        let name = if c.path.ends_with("/dcat.jsonld") {
            "dcat"
        } else if c.path.ends_with("/stac/collection.json") {
            "stac"
        } else if c.path.ends_with("/prov.json") {
            "prov"
        } else {
            continue;
        };
        let b = read_verified(zones, &c.path, &c.digest.to_string()).await?;
        let v: JsonValue =
            serde_json::from_slice(&b).map_err(|e| LoadError(format!("{}: {e}", c.path)))?;
        docs.insert(name, v);
    }
    let (Some(stac), Some(dcat), Some(prov)) = (
        docs.remove("stac"),
        docs.remove("dcat"),
        docs.remove("prov"),
    ) else {
        return Err(LoadError(format!(
            "{}: the manifest lacks part of the catalog triplet",
            manifest.version_id
        )));
    };
    let title = stac["title"]
        .as_str()
        .unwrap_or(&manifest.dataset)
        .to_owned();
    let description = stac["description"].as_str().unwrap_or("").to_owned();
    let bbox = stac["extent"]["spatial"]["bbox"][0]
        .as_array()
        .and_then(|a| {
            let v: Vec<f64> = a.iter().filter_map(JsonValue::as_f64).collect();
            (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
        });
    let temporal = manifest.temporal_property.clone();
    let release = Release {
        dataset: manifest.dataset.clone(),
        version_id: manifest.version_id.clone(),
        manifest,
        manifest_digest,
        pointer_ledger_index,
        stac,
        dcat,
        prov,
        title,
        description,
        bbox,
        precise,
        generalized,
        temporal,
        has_features,
        projection: RwLock::new(None),
        backend: backend.clone(),
        views: Mutex::new(HashMap::new()),
    };
    Ok(release)
}

/// The served releases, refreshed from the published zone.
pub struct Releases {
    zones: Zones,
    key: VerifyingKey,
    backend: Backend,
    current: RwLock<HashMap<String, Arc<Release>>>,
    /// Versions read through the evidence resolver.
    versions: Mutex<HashMap<String, Arc<Release>>>,
    /// Every pointer state a dataset's release history records, by its
    /// store key (records are written once, so each is read once): the
    /// versions a pointer ever named, and how.
    history: RwLock<HashMap<String, records::ReleasePointer>>,
}

impl Releases {
    pub fn new(zones: Zones, key: VerifyingKey, backend: Backend) -> Self {
        Self {
            zones,
            key,
            backend,
            current: RwLock::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            history: RwLock::new(HashMap::new()),
        }
    }

    /// The pointer state that once named `dataset` at `version`, if the
    /// release history has one.
    fn historical(&self, dataset: &str, version: u64) -> Option<records::ReleasePointer> {
        self.history
            .read()
            .ok()?
            .values()
            .filter(|p| p.dataset == dataset && p.version == version)
            .max_by_key(|p| p.ledger_index)
            .cloned()
    }

    /// Reads the history records not read before.
    async fn read_history(&self, keys: Vec<String>) {
        for key in keys {
            if self.history.read().is_ok_and(|h| h.contains_key(&key)) {
                continue;
            }
            let Ok(bytes) = self.zones.published.get(&key).await else {
                continue;
            };
            match serde_json::from_slice::<kfm_pipeline::runs::HistoryRecord>(&bytes) {
                Ok(r) if key.starts_with(&format!("{}/history/", r.pointer.dataset)) => {
                    if let Ok(mut h) = self.history.write() {
                        h.insert(key, r.pointer);
                    }
                }
                _ => tracing::warn!(key = %key, "not a release history record; ignored"),
            }
        }
    }

    pub fn zones(&self) -> &Zones {
        &self.zones
    }

    /// The key release manifests and run receipts are verified with.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether a served release still waits for its projection.
    pub fn pending(&self) -> bool {
        self.all().iter().any(|r| r.pending())
    }

    /// The published release of `dataset`, if it is being served.
    pub fn get(&self, dataset: &str) -> Option<Arc<Release>> {
        self.current.read().ok()?.get(dataset).cloned()
    }

    /// Every served release, sorted by dataset id.
    pub fn all(&self) -> Vec<Arc<Release>> {
        let mut v: Vec<_> = match self.current.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        v.sort_by(|a, b| a.dataset.cmp(&b.dataset));
        v
    }

    /// Re-reads every pointer; (re)loads those that changed. Returns the
    /// problems met (a dataset whose pointer fails is no longer served).
    pub async fn refresh(&self, ledger: &Ledger) -> Vec<String> {
        let mut problems = Vec::new();
        let listed = match self.zones.published.list("").await {
            Ok(l) => l,
            Err(e) => return vec![format!("cannot list published/: {e}")],
        };
        let mut next: HashMap<String, Arc<Release>> = HashMap::new();
        let history: Vec<String> = listed
            .iter()
            .filter(|o| o.key.split('/').nth(1) == Some("history"))
            .map(|o| o.key.clone())
            .collect();
        self.read_history(history).await;
        for obj in listed {
            let Some(ds) = obj.key.strip_suffix(".json") else {
                continue;
            };
            if ds.contains('/') {
                continue;
            }
            let bytes = match self.zones.published.get(&obj.key).await {
                Ok(b) => b,
                Err(e) => {
                    // The pointer could not be read (an I/O error, no
                    // descriptors left): what was verified before stays
                    // served; only a pointer that reads and fails to
                    // verify is taken out of service.
                    problems.push(format!("{ds}: the release pointer cannot be read: {e}"));
                    if let Some(cur) = self.get(ds) {
                        next.insert(ds.to_owned(), cur);
                    }
                    continue;
                }
            };
            let digest_now = serde_json::from_slice::<records::ReleasePointer>(&bytes)
                .map(|p| p.manifest_digest)
                .ok();
            if let Some(cur) = self.get(ds)
                && Some(&cur.manifest_digest) == digest_now.as_ref()
            {
                if cur.pending()
                    && let Err(e) = cur.find_projection().await
                {
                    problems.push(e);
                }
                next.insert(ds.to_owned(), cur);
                continue;
            }
            let verified = match kfm_pipeline::verify_pointer(
                &self.zones.catalog,
                ledger,
                ds,
                &bytes,
                &self.key,
            )
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{ds}: release pointer does not verify: {e}"));
                    continue;
                }
            };
            let p = verified.pointer;
            match load_version(
                &self.zones,
                &self.backend,
                verified.manifest,
                p.manifest_digest.clone(),
                Some(p.ledger_index),
            )
            .await
            {
                Ok(r) => {
                    if let Err(e) = r.find_projection().await {
                        problems.push(e);
                    }
                    tracing::info!(version = %r.version_id, "serving release");
                    next.insert(ds.to_owned(), Arc::new(r));
                }
                Err(e) => problems.push(format!("{ds}: {e}")),
            }
        }
        if let Ok(mut cur) = self.current.write() {
            *cur = next;
        }
        problems
    }

    /// A version of a dataset that a release pointer named: the current
    /// one, or a withdrawn (superseded) one from the release history, its
    /// historical pointer verified end to end like a current one. A version
    /// no pointer ever named (a run interrupted before its pointer moved)
    /// is never served, whatever files it left.
    pub async fn version(
        &self,
        ledger: &Ledger,
        dataset: &str,
        version: u64,
    ) -> Option<Arc<Release>> {
        if let Some(cur) = self.get(dataset)
            && cur.manifest.version == version
        {
            return Some(cur);
        }
        // Invariant: only versions a pointer named are resolvable.
        let pointer = self.historical(dataset, version)?;
        let vid = format!("{dataset}@v{version}");
        if let Ok(m) = self.versions.lock()
            && let Some(r) = m.get(&vid)
        {
            return Some(r.clone());
        }
        let bytes = serde_json::to_vec(&pointer).ok()?;
        let verified = kfm_pipeline::verify_pointer(
            &self.zones.catalog,
            ledger,
            dataset,
            &bytes,
            &self.key,
        )
        .await
        .map_err(
            |e| tracing::warn!(version = %vid, error = %e, "withdrawn version does not verify"),
        )
        .ok()?;
        let m = verified.manifest;
        // A withdrawn version is not projected: its evidence is read from
        // the store (see `routes::catalog::evidence`), in memory either way.
        let r = load_version(
            &self.zones,
            &Backend::Memory,
            m,
            pointer.manifest_digest.clone(),
            Some(pointer.ledger_index),
        )
        .await
        .map_err(|e| tracing::warn!(error = %e, "version not servable"))
        .ok()?;
        let r = Arc::new(r);
        if let Ok(mut m) = self.versions.lock() {
            if m.len() >= 64 {
                m.clear();
            }
            m.insert(vid, r.clone());
        }
        Some(r)
    }
}
